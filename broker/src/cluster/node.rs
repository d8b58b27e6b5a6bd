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

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

mod leader;
mod session;

use super::log_store::FileLogStore;
use super::meta_properties::MetaProperties;
use super::metadata::{Command, Reply};
use super::network::Network;
use super::rpc::{self, Peer, Request, Response};
use super::state_machine::StateMachine;
use super::types::{NodeId, Raft, TypeConfig};
use crate::catalog::{self, Catalog, NO_LEADER};
use crate::codes;

/// How long a metadata change may take before the proposer is told REQUEST_TIMED_OUT.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the quorum leader looks for expired broker sessions.
const LIVENESS_TICK: Duration = Duration::from_millis(100);
/// A follower that has not heard its leader for this long (the longest election timeout)
/// stops naming it as the controller.
const LEADER_SILENCE: Duration = Duration::from_millis(600);
/// A waiting log line is repeated at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Everything the control plane needs from the broker's configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: i32,
    /// How often the quorum leader gives partitions back to their preferred leaders
    /// (None: never).
    pub leader_rebalance_interval: Option<Duration>,
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
    /// Controlled shutdown: stop heartbeating, then give up this broker's leaderships.
    Shutdown(std::sync::mpsc::Sender<Result<(), String>>),
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

    /// Controlled shutdown (blocking; call from a plain thread): stop this broker's
    /// heartbeats and have the quorum fence it at once, so its leaderships move to other
    /// in-sync replicas and it leaves every ISR while it still serves what is in flight.
    /// Waits (at most `max`) until this node applied the change. A node that is the only
    /// live broker skips it: there is nowhere to move leaderships to.
    pub fn controlled_shutdown(&self, max: Duration) -> Result<(), String> {
        let catalog = self.view.borrow().clone();
        let others = catalog.live_brokers().any(|b| b.id != self.node_id);
        if !others {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send(Job::Shutdown(tx))
            .map_err(|_| "the control plane has stopped".to_string())?;
        match rx.recv_timeout(max) {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("not done within {} ms", max.as_millis())),
        }
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
    /// When a leader's AppendEntries (or heartbeat) last arrived here.
    last_append: Mutex<Option<Instant>>,
    /// A controlled shutdown began: no more heartbeats or registrations.
    stopping: std::sync::atomic::AtomicBool,
    /// Leader only: when leaders were last given back to their preferred replicas.
    last_rebalance: Mutex<Option<Instant>>,
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
            // A follower starts an election once it has heard nothing for a random 300 to
            // 600 ms (after the old leader's lease, which openraft ties to the same
            // timeout): a SIGKILLed leader is replaced in about a second. Heartbeats every
            // 75 ms leave a loaded machine several chances before a needless election.
            heartbeat_interval: 75,
            election_timeout_min: 300,
            election_timeout_max: 600,
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
            last_append: Mutex::new(None),
            stopping: Default::default(),
            last_rebalance: Mutex::new(None),
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
                    Job::Shutdown(reply) => {
                        let _ = reply.send(this.shut_down().await);
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
            // A follower that has not heard its leader for an election timeout no longer
            // names it (it is probably gone: clients would wait on a dead controller).
            let silent = self
                .last_append
                .lock()
                .unwrap()
                .is_none_or(|t| t.elapsed() > LEADER_SILENCE);
            let leader = leader.filter(|l| *l == self.me() || !silent);
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
                _ = tokio::time::sleep(LIVENESS_TICK) => {}
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
                    *self.last_append.lock().unwrap() = Some(Instant::now());
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
