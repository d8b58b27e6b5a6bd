//! The control thread of one node: its raft instance (voter or learner), the controller
//! port, the quorum leader's duties (bootstrap, registrations, broker liveness), and this
//! node's own broker session (register, heartbeat).
//!
//! It runs on its own OS thread with a tokio current-thread runtime, so nothing on the data
//! path can delay a heartbeat or an election, and talks to the shards only by message: jobs
//! in (`ControlHandle::propose`), catalogs out (`ControlHandle::view`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::log_store::FileLogStore;
use super::meta_properties::MetaProperties;
use super::metadata::{Command, LegacyImport, Registration, Reply};
use super::network::Network;
use super::rpc::{self, ControllerAnswer, Peer, Request, Response};
use super::state_machine::StateMachine;
use super::types::{NodeId, Raft, TypeConfig};
use crate::catalog::{self, Catalog, NO_LEADER};
use crate::codes;

/// How long a metadata change may take before the proposer is told REQUEST_TIMED_OUT.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the quorum leader looks for expired broker sessions.
const LIVENESS_TICK: Duration = Duration::from_millis(100);
/// A waiting log line is repeated at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Everything the control plane needs from the broker's configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: i32,
    /// Voters and their controller addresses. One voter with an empty address: a one-node
    /// cluster (no cluster flags given), which needs no controller port.
    pub voters: BTreeMap<i32, String>,
    /// Where to listen for controller traffic (None: the one-node cluster).
    pub controller_listen: Option<String>,
    /// Kafka address clients are told.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub data_dir: PathBuf,
}

impl ClusterConfig {
    pub fn is_voter(&self) -> bool {
        self.voters.contains_key(&self.node_id)
    }

    fn voters_text(&self) -> String {
        self.voters
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A metadata change that could not be made: a Kafka error code and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposeError {
    pub code: i16,
    pub message: String,
}

/// A committed change: the reply of applying it and its log index (the catalog version
/// that holds it).
#[derive(Debug, Clone)]
pub struct Applied {
    pub reply: Reply,
    pub index: u64,
}

enum Job {
    Propose(Command, oneshot::Sender<Result<Applied, ProposeError>>),
}

/// The shards' side of the control plane (Send + Sync; each shard may hold a clone).
#[derive(Clone)]
pub struct ControlHandle {
    jobs: mpsc::UnboundedSender<Job>,
    view: watch::Receiver<Arc<Catalog>>,
    pub node_id: i32,
    /// The data dir's identity, as registered.
    pub incarnation: String,
}

impl ControlHandle {
    /// Propose a metadata change to the quorum leader and wait until it is committed (not
    /// necessarily applied on this node yet: wait for `view().version >= index` for that).
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ProposeError {
            code: codes::REQUEST_TIMED_OUT,
            message: "the control plane has stopped".into(),
        };
        self.jobs
            .send(Job::Propose(command, tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The catalog as this node last applied it, with the quorum leader filled in.
    pub fn view(&self) -> watch::Receiver<Arc<Catalog>> {
        self.view.clone()
    }

    /// True once this node is registered, unfenced, under its own incarnation.
    pub fn is_serving(&self, catalog: &Catalog) -> bool {
        !catalog.cluster_id.is_empty()
            && catalog
                .brokers
                .get(&self.node_id)
                .is_some_and(|b| !b.fenced && b.incarnation == self.incarnation)
    }
}

/// Start the control thread. Returns once the controller port is bound and raft runs (not
/// when the quorum is reachable: see `ControlHandle::is_serving`).
pub fn start(config: ClusterConfig) -> Result<ControlHandle, String> {
    let meta = MetaProperties::open(&config)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("control thread runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match Controller::start(config, meta).await {
                    Ok((handle, controller, jobs)) => {
                        let _ = ready_tx.send(Ok(handle));
                        controller.run(jobs).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| format!("starting the control thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the control thread ended during start".to_string())?
}

struct Controller {
    config: ClusterConfig,
    raft: Raft,
    /// The state machine's catalog (no controller id).
    applied: watch::Receiver<Arc<Catalog>>,
    /// What the shards see.
    view: watch::Sender<Arc<Catalog>>,
    meta: Mutex<MetaProperties>,
    /// Leader only: when each broker last sent a heartbeat.
    sessions: Mutex<HashMap<i32, Instant>>,
    /// Leader only: when this term's leadership began (a broker not heard from since gets
    /// one session timeout of grace).
    leader_since: Mutex<Option<(u64, Instant)>>,
    peers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Peer>>>>,
}

impl Controller {
    async fn start(
        config: ClusterConfig,
        meta: MetaProperties,
    ) -> Result<(ControlHandle, Arc<Controller>, mpsc::UnboundedReceiver<Job>), String> {
        let dir = config.data_dir.join("metadata");
        let log_store = FileLogStore::<TypeConfig>::open(&dir.join("log"))?;
        let (state_machine, applied) = StateMachine::open(&dir)?;
        let raft_config = openraft::Config {
            cluster_name: "shardlog".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft config: {e}"))?;
        let raft = Raft::new(
            config.node_id as NodeId,
            Arc::new(raft_config),
            Network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| format!("starting raft: {e}"))?;

        let listener = match &config.controller_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                format!("cannot bind controller-listen {addr}: {e} (is it in use?)")
            })?),
            None => None,
        };
        let mut config = config;
        if let Some(listener) = &listener {
            // A broker-only node may listen on port 0: tell the quorum the real port.
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            config.controller_listen = Some(bound.to_string());
            tracing::info!("controller port open at {bound}");
        }

        if config.is_voter() && !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let members: BTreeMap<NodeId, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id as NodeId, BasicNode::new(addr)))
                .collect();
            // Every voter initializes with the same members; all but the first are refused
            // harmlessly (openraft: NotAllowed once a log exists).
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!("raft initialize: {e}");
            }
        }

        let (view, view_rx) = watch::channel(applied.borrow().clone());
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let handle = ControlHandle {
            jobs: jobs_tx,
            view: view_rx,
            node_id: config.node_id,
            incarnation: meta.directory_id.clone(),
        };
        let controller = Arc::new(Controller {
            config,
            raft,
            applied,
            view,
            meta: Mutex::new(meta),
            sessions: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
        });
        if let Some(listener) = listener {
            tokio::spawn(controller.clone().accept(listener));
        }
        Ok((handle, controller, jobs_rx))
    }

    async fn run(self: Arc<Self>, mut jobs: mpsc::UnboundedReceiver<Job>) {
        tokio::spawn(self.clone().publish_views());
        tokio::spawn(self.clone().leader_duties());
        tokio::spawn(self.clone().broker_session());
        while let Some(job) = jobs.recv().await {
            let this = self.clone();
            tokio::spawn(async move {
                match job {
                    Job::Propose(command, reply) => {
                        let _ = reply.send(this.propose_anywhere(command).await);
                    }
                }
            });
        }
    }

    fn me(&self) -> NodeId {
        self.config.node_id as NodeId
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.applied.borrow().clone()
    }

    // --- views for the shards ---------------------------------------------------------

    /// Merge the applied catalog and the current quorum leader into what shards see, and
    /// record the cluster id in the data dir the first time it is known.
    async fn publish_views(self: Arc<Self>) {
        let mut applied = self.applied.clone();
        let mut metrics = self.raft.metrics();
        loop {
            let catalog = applied.borrow_and_update().clone();
            let leader = metrics.borrow_and_update().current_leader;
            if !catalog.cluster_id.is_empty() {
                let outcome = self
                    .meta
                    .lock()
                    .unwrap()
                    .record_cluster_id(&catalog.cluster_id);
                if let Err(message) = outcome {
                    fatal(&message);
                }
            }
            let controller_id = leader.map_or(NO_LEADER, |l| l as i32);
            let current = self.view.borrow().clone();
            if current.version != catalog.version
                || current.controller_id != controller_id
                || current.cluster_id != catalog.cluster_id
            {
                let mut next = (*catalog).clone();
                next.controller_id = controller_id;
                self.view.send_replace(Arc::new(next));
            }
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                r = metrics.changed() => if r.is_err() { return },
            }
        }
    }

    // --- the quorum leader's duties ----------------------------------------------------

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.me())
    }

    /// While leader: bootstrap the cluster once, and fence brokers whose sessions expired.
    async fn leader_duties(self: Arc<Self>) {
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

    /// Commit a record through the local raft, which must be the leader.
    async fn write(&self, command: Command) -> Result<Applied, ProposeError> {
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
    async fn answer(&self, request: Request) -> ControllerAnswer {
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

    fn not_leader(&self) -> ControllerAnswer {
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

    fn session_live(&self, id: i32) -> bool {
        let since = self.leader_since.lock().unwrap().map(|(_, at)| at);
        let last = self.sessions.lock().unwrap().get(&id).copied().or(since);
        last.is_some_and(|t| t.elapsed() <= self.config.session_timeout)
    }

    async fn register(&self, r: Registration, cluster_id: Option<String>) -> ControllerAnswer {
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
    async fn ensure_learner(&self, id: i32, addr: &str) -> Result<(), String> {
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

    async fn heartbeat(&self, id: i32, epoch: u64) -> ControllerAnswer {
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

    /// Send a controller request to the quorum leader (this node, or over the network),
    /// following redirects, until `deadline`.
    async fn to_leader(
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

    fn peer(&self, addr: &str) -> Arc<tokio::sync::Mutex<Peer>> {
        self.peers
            .lock()
            .unwrap()
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Peer::new(addr))))
            .clone()
    }

    async fn propose_anywhere(&self, command: Command) -> Result<Applied, ProposeError> {
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

    async fn broker_session(self: Arc<Self>) {
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

    // --- the controller port ----------------------------------------------------------------

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.serve(stream).await {
                            tracing::debug!("controller connection from {peer} closed: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("controller accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve(&self, mut stream: tokio::net::TcpStream) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        while let Some(payload) = rpc::read_frame(&mut stream).await? {
            let request: Request = rpc::decode(&payload)?;
            let response = match request {
                Request::AppendEntries(r) => {
                    Response::AppendEntries(self.raft.append_entries(r).await)
                }
                Request::Vote(r) => Response::Vote(self.raft.vote(r).await),
                Request::InstallSnapshot(r) => {
                    Response::InstallSnapshot(self.raft.install_snapshot(r).await)
                }
                other => Response::Controller(self.answer(other).await),
            };
            stream
                .write_all(&rpc::encode(&response))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A random id (UUID v4 layout, hex).
pub fn new_id() -> String {
    let id = catalog::new_topic_id();
    uuid::Uuid::from_bytes(id).to_string()
}

/// A setting or data dir that cannot work: say why and stop the process.
fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    eprintln!("shardlog: {message}");
    std::process::exit(1)
}
