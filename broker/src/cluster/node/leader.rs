//! The quorum leader's side of the control plane: bootstrap, broker liveness (fencing),
//! and the requests brokers send the leader (register, heartbeat, propose).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::{fatal, new_id, Applied, Controller, ProposeError, LIVENESS_TICK, PROPOSE_TIMEOUT};
use crate::catalog;
use crate::cluster::metadata::{Command, LegacyImport, Registration};
use crate::cluster::rpc::{ControllerAnswer, Request};
use crate::cluster::types::NodeId;
use crate::codes;

impl Controller {
    // --- the quorum leader's duties ----------------------------------------------------

    pub(super) fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.me())
    }

    /// While leader: bootstrap the cluster once, and fence brokers whose sessions expired.
    pub(super) async fn leader_duties(self: Arc<Self>) {
        let mut interval = tokio::time::interval(LIVENESS_TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if !self.is_leader() {
                *self.leader_since.lock().unwrap() = None;
                continue;
            }
            let term = self.raft.metrics().borrow().current_term;
            let since = {
                let mut since = self.leader_since.lock().unwrap();
                match *since {
                    Some((t, at)) if t == term => at,
                    _ => {
                        let now = Instant::now();
                        *since = Some((term, now));
                        self.sessions.lock().unwrap().clear();
                        now
                    }
                }
            };
            let catalog = self.catalog();
            if catalog.cluster_id.is_empty() {
                let legacy = match catalog::load_legacy(&self.config.data_dir) {
                    Ok(legacy) => legacy,
                    Err(e) => fatal(&e),
                };
                let command = Command::Bootstrap {
                    cluster_id: new_id(),
                    node_id: self.config.node_id,
                    legacy: legacy.map(|l| LegacyImport {
                        topics: l
                            .topics
                            .into_values()
                            .map(|t| (t.name, t.id, t.owners, t.configs))
                            .collect(),
                        next_producer_id: l.next_producer_id,
                    }),
                };
                if let Err(e) = self.write(command).await {
                    tracing::debug!("bootstrap: {e:?}");
                }
                continue;
            }
            let now = Instant::now();
            let expired: Vec<(i32, u64, Duration)> = {
                let sessions = self.sessions.lock().unwrap();
                catalog
                    .live_brokers()
                    .filter_map(|b| {
                        let last = sessions.get(&b.id).copied().unwrap_or(since).max(since);
                        let silent = now.duration_since(last);
                        (silent > self.config.session_timeout).then_some((b.id, b.epoch, silent))
                    })
                    .collect()
            };
            self.rebalance_leaders(&catalog).await;
            for (id, epoch, silent) in expired {
                tracing::warn!(
                    "fencing broker {id}: no heartbeat for {} ms (broker-session-timeout-ms {})",
                    silent.as_millis(),
                    self.config.session_timeout.as_millis()
                );
                if let Err(e) = self.write(Command::FenceBroker { id, epoch }).await {
                    tracing::warn!("fencing broker {id}: {}", e.message);
                }
            }
        }
    }

    /// Every `leader_rebalance_interval`: give partitions back to their preferred leaders
    /// where those are live and in sync (Kafka's auto leader rebalance).
    async fn rebalance_leaders(&self, catalog: &catalog::Catalog) {
        let Some(interval) = self.config.leader_rebalance_interval else {
            return;
        };
        {
            let mut last = self.last_rebalance.lock().unwrap();
            let now = Instant::now();
            match *last {
                Some(at) if now.duration_since(at) < interval => return,
                _ => *last = Some(now),
            }
        }
        if crate::cluster::metadata::leaders_imbalanced(catalog) {
            tracing::info!("giving partitions back to their preferred leaders");
            if let Err(e) = self.write(Command::ElectPreferredLeaders).await {
                tracing::warn!("preferred leader election: {}", e.message);
            }
        }
    }

    /// Commit a record through the local raft, which must be the leader.
    pub(super) async fn write(&self, command: Command) -> Result<Applied, ProposeError> {
        match tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(Applied {
                reply: response.data,
                index: response.log_id.index,
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ProposeError {
                    code: codes::NOT_CONTROLLER,
                    message: "this node is not the quorum leader".into(),
                })
            }
            Ok(Err(e)) => Err(ProposeError {
                code: codes::REQUEST_TIMED_OUT,
                message: format!("metadata change failed: {e}"),
            }),
            Err(_) => Err(ProposeError {
                code: codes::REQUEST_TIMED_OUT,
                message: format!(
                    "metadata change not committed within {} ms (is a majority of the \
                     quorum up?)",
                    PROPOSE_TIMEOUT.as_millis()
                ),
            }),
        }
    }

    // --- requests to the leader -----------------------------------------------------------

    /// Answer a controller request here, as the leader, or say who the leader is.
    pub(super) async fn answer(&self, request: Request) -> ControllerAnswer {
        if !self.is_leader() {
            return self.not_leader();
        }
        match request {
            Request::Register {
                registration,
                cluster_id,
            } => self.register(registration, cluster_id).await,
            Request::Heartbeat { id, epoch } => self.heartbeat(id, epoch).await,
            Request::Propose(command) => match self.write(command).await {
                Ok(Applied { reply, index }) => ControllerAnswer::Applied { reply, index },
                Err(e) if e.code == codes::NOT_CONTROLLER => self.not_leader(),
                Err(e) => ControllerAnswer::Refused {
                    code: e.code,
                    message: e.message,
                    retriable: true,
                },
            },
            _ => ControllerAnswer::Refused {
                code: codes::INVALID_REQUEST,
                message: "not a controller request".into(),
                retriable: false,
            },
        }
    }

    pub(super) fn not_leader(&self) -> ControllerAnswer {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.filter(|l| *l != self.me());
        let addr = leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        ControllerAnswer::NotLeader { leader, addr }
    }

    pub(super) fn session_live(&self, id: i32) -> bool {
        let since = self.leader_since.lock().unwrap().map(|(_, at)| at);
        let last = self.sessions.lock().unwrap().get(&id).copied().or(since);
        last.is_some_and(|t| t.elapsed() <= self.config.session_timeout)
    }

    pub(super) async fn register(
        &self,
        r: Registration,
        cluster_id: Option<String>,
    ) -> ControllerAnswer {
        let catalog = self.catalog();
        let refuse = |code, message: String, retriable| ControllerAnswer::Refused {
            code,
            message,
            retriable,
        };
        if catalog.cluster_id.is_empty() {
            return refuse(
                codes::REQUEST_TIMED_OUT,
                "the cluster is not bootstrapped yet".into(),
                true,
            );
        }
        if let Some(theirs) = cluster_id.filter(|c| *c != catalog.cluster_id) {
            return refuse(
                codes::INCONSISTENT_CLUSTER_ID,
                format!(
                    "the data dir of node {} belongs to cluster id {theirs}, but the quorum at \
                     --controller-quorum-voters has cluster id {}",
                    r.id, catalog.cluster_id
                ),
                false,
            );
        }
        if let Some(b) = catalog.brokers.get(&r.id) {
            if b.incarnation != r.incarnation && !b.fenced && self.session_live(r.id) {
                return refuse(
                    codes::DUPLICATE_BROKER_REGISTRATION,
                    format!(
                        "node id {} (--node-id) is already registered by another live broker \
                         (data dir {}); waiting until its session expires \
                         (broker-session-timeout-ms)",
                        r.id, b.incarnation
                    ),
                    true,
                );
            }
        }
        if !self.config.voters.contains_key(&r.id) {
            if let Err(e) = self.ensure_learner(r.id, &r.controller_addr).await {
                return refuse(codes::REQUEST_TIMED_OUT, e, true);
            }
        }
        let id = r.id;
        match self.write(Command::RegisterBroker(r)).await {
            Ok(Applied { reply, index }) => {
                self.sessions.lock().unwrap().insert(id, Instant::now());
                tracing::info!("broker {id} registered (epoch {index})");
                ControllerAnswer::Applied { reply, index }
            }
            Err(e) => refuse(e.code, e.message, true),
        }
    }

    /// A broker-only node receives the metadata log as a raft learner.
    pub(super) async fn ensure_learner(&self, id: i32, addr: &str) -> Result<(), String> {
        let known = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&(id as NodeId))
                .map(|n| n.addr.clone())
        };
        let node = BasicNode::new(addr);
        let result = match known {
            Some(current) if current == addr => return Ok(()),
            Some(_) => {
                let nodes = BTreeMap::from([(id as NodeId, node)]);
                tokio::time::timeout(
                    PROPOSE_TIMEOUT,
                    self.raft
                        .change_membership(ChangeMembers::SetNodes(nodes), true),
                )
                .await
            }
            None => {
                tokio::time::timeout(
                    PROPOSE_TIMEOUT,
                    self.raft.add_learner(id as NodeId, node, false),
                )
                .await
            }
        };
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("adding node {id} as a learner: {e}")),
            Err(_) => Err(format!("adding node {id} as a learner timed out")),
        }
    }

    pub(super) async fn heartbeat(&self, id: i32, epoch: u64) -> ControllerAnswer {
        let catalog = self.catalog();
        let Some(broker) = catalog.brokers.get(&id).filter(|b| b.epoch == epoch) else {
            return ControllerAnswer::Alive { fenced: true };
        };
        self.sessions.lock().unwrap().insert(id, Instant::now());
        if broker.fenced {
            tracing::info!("unfencing broker {id}: heartbeats are back");
            if let Err(e) = self.write(Command::UnfenceBroker { id, epoch }).await {
                tracing::warn!("unfencing broker {id}: {}", e.message);
            }
        }
        ControllerAnswer::Alive { fenced: false }
    }
}
