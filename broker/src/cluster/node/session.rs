//! This node's side of the control plane: its broker session with the quorum leader
//! (register, heartbeat), and reaching the leader from any node (redirects, voters in turn).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{fatal, Applied, Controller, ProposeError, LOG_EVERY, PROPOSE_TIMEOUT};
use crate::cluster::metadata::{Command, Registration, Reply};
use crate::cluster::rpc::{self, ControllerAnswer, Peer, Request, Response};
use crate::codes;

impl Controller {
    /// Send a controller request to the quorum leader (this node, or over the network),
    /// following redirects, until `deadline`.
    pub(super) async fn to_leader(
        &self,
        request: Request,
        deadline: Instant,
    ) -> Result<ControllerAnswer, String> {
        let frame = rpc::encode(&request);
        let mut hint: Option<String> = None;
        let mut voter_turn = 0usize;
        let mut last_error = String::from("no quorum leader known");
        while Instant::now() < deadline {
            if self.is_leader() {
                let request: Request = rpc::decode(&frame[4..]).expect("own encoding");
                match self.answer(request).await {
                    ControllerAnswer::NotLeader { .. } => {}
                    answer => return Ok(answer),
                }
            }
            let target = match hint.take().or_else(|| match self.not_leader() {
                ControllerAnswer::NotLeader { addr: Some(a), .. } => Some(a),
                _ => None,
            }) {
                Some(addr) => addr,
                None => {
                    // No leader known (a broker-only node before it joined): ask the voters
                    // in turn.
                    let voters: Vec<&String> = self
                        .config
                        .voters
                        .iter()
                        .filter(|(id, addr)| **id != self.config.node_id && !addr.is_empty())
                        .map(|(_, addr)| addr)
                        .collect();
                    if voters.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    voter_turn += 1;
                    voters[voter_turn % voters.len()].clone()
                }
            };
            let peer = self.peer(&target);
            let left = deadline.saturating_duration_since(Instant::now());
            let request: Request = rpc::decode(&frame[4..]).expect("own encoding");
            let outcome = peer.lock().await.call(&request, left).await;
            match outcome {
                Ok(Response::Controller(ControllerAnswer::NotLeader { addr, .. })) => {
                    last_error = format!("{target} is not the quorum leader");
                    hint = addr.filter(|a| *a != target);
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(Response::Controller(answer)) => return Ok(answer),
                Ok(other) => last_error = format!("{target} answered {other:?}"),
                Err(e) => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last_error)
    }

    pub(super) fn peer(&self, addr: &str) -> Arc<tokio::sync::Mutex<Peer>> {
        self.peers
            .lock()
            .unwrap()
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Peer::new(addr))))
            .clone()
    }

    pub(super) async fn propose_anywhere(&self, command: Command) -> Result<Applied, ProposeError> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        match self.to_leader(Request::Propose(command), deadline).await {
            Ok(ControllerAnswer::Applied { reply, index }) => Ok(Applied { reply, index }),
            Ok(ControllerAnswer::Refused { code, message, .. }) => {
                Err(ProposeError { code, message })
            }
            Ok(other) => Err(ProposeError {
                code: codes::NOT_CONTROLLER,
                message: format!("unexpected answer {other:?}"),
            }),
            Err(e) => Err(ProposeError {
                code: codes::REQUEST_TIMED_OUT,
                message: format!(
                    "no quorum leader answered within {} ms: {e}",
                    PROPOSE_TIMEOUT.as_millis()
                ),
            }),
        }
    }

    // --- this node's broker session ---------------------------------------------------------

    pub(super) async fn broker_session(self: Arc<Self>) {
        let registration = Registration {
            id: self.config.node_id,
            incarnation: self.meta.lock().unwrap().directory_id.clone(),
            host: self.config.advertised_host.clone(),
            port: self.config.advertised_port,
            controller_addr: self.config.controller_listen.clone().unwrap_or_default(),
        };
        let mut last_log: Option<Instant> = None;
        let mut say = |text: String| {
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                tracing::warn!("{text}");
                last_log = Some(Instant::now());
            }
        };
        loop {
            if self.is_stopping() {
                return;
            }
            let cluster_id = self.meta.lock().unwrap().cluster_id.clone();
            let request = Request::Register {
                registration: registration.clone(),
                cluster_id,
            };
            let deadline = Instant::now() + Duration::from_secs(2);
            let epoch = match self.to_leader(request, deadline).await {
                Ok(ControllerAnswer::Applied {
                    reply: Reply::Registered { epoch },
                    ..
                }) => epoch,
                Ok(ControllerAnswer::Refused {
                    message,
                    retriable: false,
                    ..
                }) => fatal(&message),
                Ok(ControllerAnswer::Refused { message, .. }) => {
                    say(format!("registration refused for now, retrying: {message}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(other) => {
                    say(format!("registration: unexpected answer {other:?}"));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Err(e) => {
                    say(format!(
                        "waiting for the metadata quorum (controller-quorum-voters {}): {e}",
                        self.config.voters_text()
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            tracing::info!(
                "registered with the metadata quorum as broker {} (epoch {epoch})",
                self.config.node_id
            );
            loop {
                tokio::time::sleep(self.config.heartbeat_interval).await;
                if self.is_stopping() {
                    return;
                }
                let deadline = Instant::now() + self.config.heartbeat_interval * 2;
                let request = Request::Heartbeat {
                    id: self.config.node_id,
                    epoch,
                };
                match self.to_leader(request, deadline).await {
                    Ok(ControllerAnswer::Alive { fenced: true }) => {
                        tracing::warn!(
                            "the quorum no longer knows this broker's session; registering again"
                        );
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => say(format!("heartbeat not answered: {e}")),
                }
            }
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Controlled shutdown: no more heartbeats (which would unfence this broker again),
    /// then a ShutdownBroker record for the current registration, applied on this node.
    pub(super) async fn shut_down(&self) -> Result<(), String> {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let id = self.config.node_id;
        let Some(epoch) = self.catalog().brokers.get(&id).map(|b| b.epoch) else {
            return Ok(());
        };
        let applied = self
            .propose_anywhere(Command::ShutdownBroker { id, epoch })
            .await
            .map_err(|e| e.message)?;
        let mut view = self.view.subscribe();
        while view.borrow_and_update().version < applied.index {
            if view.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }
}
