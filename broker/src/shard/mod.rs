//! A shard: one pinned executor, the partitions it owns, its copy of the catalog, and the
//! mesh to every other shard.
//!
//! Each partition is owned by exactly one shard; only that shard touches its log. Work for a
//! partition owned elsewhere travels as a [`Job`] (a `Send` closure) over glommio's channel
//! mesh and runs on the owner, which answers over a oneshot channel. Nothing on the data path
//! is shared between shards: no lock, no atomic, no shared map.
//!
//! ```text
//! connection shard                 owner shard
//!   Shard::call(owner, f) ──Job──▶  mesh receiver task ─▶ f(owner_shard).await
//!         ▲                                                      │
//!         └──────────────── oneshot reply ◀──────────────────────┘
//! ```
//!
//! Shard 0 is also the controller of the catalog (see `catalog/`): it applies topic changes,
//! persists them, and pushes a copy to every shard with [`Shard::apply_catalog`].

mod groups;
mod leading;
pub mod ops;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::catalog::{self, Catalog};
use crate::cluster::ControlHandle;
use crate::config::Config;
use crate::groups::GroupCoordinator;
use crate::log::{PartitionLog, ShardStorage};
use crate::sync::Turn;

/// Work sent to another shard: called there with that shard's state as it is dequeued,
/// returning the rest of the work as a task.
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The result of a call handed to a shard with [`Shard::submit`].
pub type Answer<R> = Pin<Box<dyn Future<Output = Result<R, ShardGone>>>>;

/// Test hook: a shard panics when it opens a partition of the topic this names. The
/// end-to-end tests use it to prove that a panic on a shard thread ends the whole process.
const PANIC_ON_TOPIC_ENV: &str = "SHARDLOG_TEST_PANIC_ON_TOPIC";

/// Shortest time between two attempts to reopen a failed log on one shard.
const REOPEN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Bytes available to the broker on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and st a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Error returned when a peer shard is gone (only during shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardGone;

/// State of one shard. Lives on its executor only (`!Send`).
pub struct Shard {
    pub id: usize,
    pub nr_shards: usize,
    pub config: Rc<Config>,
    catalog: RefCell<Rc<Catalog>>,
    /// Logs of the partitions this shard owns, by topic then partition number.
    logs: RefCell<HashMap<String, Vec<Option<Rc<PartitionLog>>>>>,
    pub storage: Rc<ShardStorage>,
    senders: Senders<Job>,
    /// This node's control plane (the metadata quorum): proposals go there, catalogs come
    /// from there.
    pub control: ControlHandle,
    /// Notified whenever this shard adopts a new catalog.
    pub(crate) catalog_event: crate::log::event::Event,
    /// Version of the last catalog whose logs this shard has opened (or deleted).
    pub(crate) adopted_version: Cell<u64>,
    /// One `apply_catalog` at a time: two would both open a new partition's log.
    adopting: glommio::sync::Semaphore,
    /// Serialises taking producer-id blocks.
    pub(crate) controller_lock: glommio::sync::Semaphore,
    /// This shard's block of producer ids: (next, end).
    pub(crate) producer_ids: Cell<(i64, i64)>,
    pub(crate) shutting_down: Cell<bool>,
    /// Notified when the shutdown begins (wakes long polls).
    pub(crate) shutdown_event: crate::log::event::Event,
    /// Coordinator of the groups of the offsets partitions this shard owns and this node
    /// leads (set once at start; see `groups.rs`).
    pub groups: std::cell::OnceCell<Rc<GroupCoordinator>>,
    /// Shard 0: committed offsets of an earlier version, until imported into the topic.
    legacy_offsets: RefCell<Option<crate::groups::legacy::LegacyOffsets>>,
    /// Shard 0: set once `legacy_offsets` was read at start (`legacy_event` tells waiters);
    /// a load that asked before would import nothing and never import its share.
    legacy_read: Cell<bool>,
    legacy_event: crate::log::event::Event,
    /// Requests being handled on this shard right now (for a clean shutdown).
    pub(crate) requests_in_flight: Cell<usize>,
    /// When this shard last tried to reopen a failed log.
    last_reopen: Cell<Option<std::time::Instant>>,
    /// This shard's counters for `/metrics` (see `crate::metrics`).
    pub metrics: crate::metrics::ShardMetrics,
    /// What this shard, as leader of partitions, knows of their followers.
    pub leaders: crate::replicas::Leaders,
}

impl Shard {
    pub fn new(
        id: usize,
        config: Rc<Config>,
        senders: Senders<Job>,
        control: ControlHandle,
    ) -> Rc<Shard> {
        let storage = ShardStorage::new(config.flush_interval_ms, config.flush_bytes);
        Rc::new(Shard {
            id,
            nr_shards: config.cores,
            config,
            catalog: RefCell::new(Rc::new(Catalog::default())),
            logs: RefCell::new(HashMap::new()),
            storage,
            senders,
            control,
            catalog_event: Default::default(),
            adopted_version: Cell::new(0),
            adopting: glommio::sync::Semaphore::new(1),
            controller_lock: glommio::sync::Semaphore::new(1),
            producer_ids: Cell::new((0, 0)),
            shutting_down: Cell::new(false),
            shutdown_event: Default::default(),
            groups: std::cell::OnceCell::new(),
            legacy_offsets: RefCell::new(None),
            legacy_read: Cell::new(false),
            legacy_event: Default::default(),
            requests_in_flight: Cell::new(0),
            last_reopen: Cell::new(None),
            metrics: Default::default(),
            leaders: Default::default(),
        })
    }

    /// Run `f` on shard `target` and return its result. Local calls run inline.
    pub async fn call<R, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> Result<R, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        self.submit(target, f).await?.await
    }

    /// Hands `f` to shard `target` and returns, once it is handed over, the future of its
    /// result. Handing over keeps call order: on this shard `f` is called before `submit`
    /// returns; on another, `f` is queued behind every job this shard submitted there
    /// before, and the owner calls each job's `f` as it dequeues it, in that order. So what
    /// `f` does before its first await (a produce taking its places in partition append
    /// lines) happens in `submit` order, on any shard.
    pub async fn submit<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        f: F,
    ) -> Result<Answer<R>, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            let run = f(self.clone());
            return Ok(Box::pin(async move { Ok(run.await) }));
        }
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |shard| {
            let run = f(shard);
            Box::pin(async move {
                // The asker may have gone (connection closed): nothing to do then.
                let _ = reply.send(run.await);
            })
        });
        self.senders
            .send_to(target, job)
            .await
            .map_err(|_| ShardGone)?;
        Ok(Box::pin(async move { answer.await.map_err(|_| ShardGone) }))
    }

    /// Like [`call`](Self::call), but the work on `target` stops as soon as the caller drops
    /// the returned future (the request it served was answered or abandoned): for waits,
    /// such as a long poll, whose answer may no longer be wanted. Only for work that is safe
    /// to stop at any await point.
    pub async fn call_until_dropped<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        f: F,
    ) -> Result<R, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(f(self.clone()).await);
        }
        let (mut reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |shard| {
            let run = f(shard);
            Box::pin(async move {
                let run = std::pin::pin!(run);
                let value = match futures_util::future::select(run, reply.cancellation()).await {
                    futures_util::future::Either::Left((value, _)) => value,
                    futures_util::future::Either::Right(_) => return, // the asker is gone
                };
                let _ = reply.send(value);
            })
        });
        self.senders
            .send_to(target, job)
            .await
            .map_err(|_| ShardGone)?;
        answer.await.map_err(|_| ShardGone)
    }

    /// Fans work out to the owner shards and joins the answers: `items` are (owner, item)
    /// pairs; each owner gets one call of `f` with all its items, in their order, and must
    /// answer one result per item. Returns the results in the order of `items` (an owner
    /// that is gone answers `ShardGone` for each of its items).
    ///
    /// With a `turn`, the calls are handed over only once every earlier turn of the
    /// connection has finished, and the turn finishes once they are (see [`Shard::submit`]):
    /// what `f` does before its first await then follows the connection's request order.
    pub async fn fan_out<T, R, F, Fut>(
        self: &Rc<Self>,
        items: Vec<(usize, T)>,
        turn: Option<Turn>,
        f: F,
    ) -> Vec<Result<R, ShardGone>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(Rc<Shard>, Vec<T>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Vec<R>> + 'static,
    {
        let count = items.len();
        // The common case, every item on one owner: one call, no regrouping.
        if let Some(&(owner, _)) = items.first() {
            if items.iter().all(|(o, _)| *o == owner) {
                if let Some(turn) = &turn {
                    turn.wait().await;
                }
                let work: Vec<T> = items.into_iter().map(|(_, item)| item).collect();
                let answer = self.submit(owner, move |s| f(s, work)).await;
                drop(turn);
                let values = match answer {
                    Ok(pending) => pending.await,
                    Err(gone) => Err(gone),
                };
                return match values {
                    Ok(values) if values.len() == count => values.into_iter().map(Ok).collect(),
                    _ => (0..count).map(|_| Err(ShardGone)).collect(),
                };
            }
        }
        let mut per_owner: BTreeMap<usize, (Vec<usize>, Vec<T>)> = BTreeMap::new();
        for (at, (owner, item)) in items.into_iter().enumerate() {
            let work = per_owner.entry(owner).or_default();
            work.0.push(at);
            work.1.push(item);
        }
        if let Some(turn) = &turn {
            turn.wait().await;
        }
        let mut answers = Vec::with_capacity(per_owner.len());
        for (owner, (slots, work)) in per_owner {
            let f = f.clone();
            let answer = self.submit(owner, move |s| f(s, work)).await;
            answers.push((slots, answer));
        }
        drop(turn);
        let joined = answers.into_iter().map(|(slots, answer)| async move {
            match answer {
                Ok(pending) => (slots, pending.await),
                Err(gone) => (slots, Err(gone)),
            }
        });
        let mut results: Vec<Option<Result<R, ShardGone>>> = (0..count).map(|_| None).collect();
        for (slots, answer) in futures_util::future::join_all(joined).await {
            match answer {
                Ok(values) => {
                    debug_assert_eq!(values.len(), slots.len(), "one result per item");
                    for (slot, value) in slots.into_iter().zip(values) {
                        results[slot] = Some(Ok(value));
                    }
                }
                Err(ShardGone) => {
                    for slot in slots {
                        results[slot] = Some(Err(ShardGone));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ShardGone)))
            .collect()
    }

    /// Serve jobs that other shards send here, each as its own task so a slow job (a long
    /// poll, an fsync) never holds up the next one.
    pub fn spawn_mesh_receivers(self: &Rc<Self>, mut receivers: Receivers<Job>) {
        for (_, stream) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(job) = stream.recv().await {
                    // `job(..)` runs the job's synchronous start here, in arrival order
                    // (see `submit`); only the rest runs as its own task.
                    glommio::spawn_local(job(shard.clone())).detach();
                }
            })
            .detach();
        }
    }

    /// This shard's copy of the catalog.
    pub fn catalog(&self) -> Rc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// This node's broker id.
    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// Leader of a partition as this shard's catalog says (`NO_LEADER` if it has none),
    /// None if topic or partition do not exist.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        Some(self.catalog.borrow().placement(topic, partition)?.leader)
    }

    /// Where a Produce, Fetch or ListOffsets for a partition goes: its owner shard if this
    /// node leads it; else the Kafka error to answer (UNKNOWN_TOPIC_OR_PARTITION,
    /// NOT_LEADER_OR_FOLLOWER, or LEADER_NOT_AVAILABLE when it has no leader).
    pub fn route(&self, topic: &str, partition: i32) -> Result<usize, i16> {
        use crate::codes;
        // One topic lookup per partition on the data path (this runs for every partition
        // of every Produce, Fetch and ListOffsets).
        let catalog = self.catalog.borrow();
        let index = usize::try_from(partition).map_err(|_| codes::UNKNOWN_TOPIC_OR_PARTITION)?;
        let t = catalog
            .topics
            .get(topic)
            .ok_or(codes::UNKNOWN_TOPIC_OR_PARTITION)?;
        let (Some(placement), Some(owner)) = (t.placement.get(index), t.owners.get(index)) else {
            return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
        };
        match placement.leader {
            catalog::NO_LEADER => Err(codes::LEADER_NOT_AVAILABLE),
            leader if leader != self.config.node_id => Err(codes::NOT_LEADER_OR_FOLLOWER),
            _ => Ok(*owner as usize % self.nr_shards),
        }
    }

    /// Owner shard of a partition, if topic and partition exist.
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let catalog = self.catalog.borrow();
        let owners = &catalog.topics.get(topic)?.owners;
        let owner = *owners.get(usize::try_from(partition).ok()?)?;
        Some(owner as usize % self.nr_shards)
    }

    /// The log of a partition this shard owns.
    pub fn log(&self, topic: &str, partition: i32) -> Option<Rc<PartitionLog>> {
        let logs = self.logs.borrow();
        logs.get(topic)?
            .get(usize::try_from(partition).ok()?)?
            .clone()
    }

    /// A copy of this shard's metrics, with the offsets of the partitions it owns.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let mut snapshot = self.metrics.snapshot(self.id);
        for (topic, logs) in self.logs.borrow().iter() {
            for (p, log) in logs.iter().enumerate() {
                if let Some(log) = log {
                    let (start, end) = (log.log_start_offset(), log.log_end_offset());
                    snapshot
                        .partitions
                        .push((topic.clone(), p as i32, start, end));
                }
            }
        }
        let me = self.node_id();
        for (name, topic) in &self.catalog().topics {
            for (p, placement) in topic.placement.iter().enumerate() {
                if placement.leader != me || placement.replicas.len() < 2 {
                    continue;
                }
                if let Some(log) = self.log(name, p as i32) {
                    snapshot.led.push((
                        name.clone(),
                        p as i32,
                        log.high_watermark(),
                        placement.isr.len(),
                        placement.replicas.len(),
                    ));
                }
            }
        }
        snapshot
    }

    /// Every log this shard owns.
    pub fn all_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.logs
            .borrow()
            .values()
            .flatten()
            .flatten()
            .cloned()
            .collect()
    }

    /// Adopt a new catalog: open the logs of partitions this shard now owns, delete those of
    /// topics that are gone, and pass changed topic configs to the logs.
    pub async fn apply_catalog(self: &Rc<Self>, catalog: Catalog) -> Result<(), String> {
        let _one_at_a_time = self.adopting.acquire_permit(1).await;
        if catalog.version < self.catalog.borrow().version {
            return Ok(());
        }
        let catalog = Rc::new(catalog);
        let base = self.config.log_config();
        // Topics removed (or re-created under the same name with a new id): delete their logs.
        let old = self.catalog.replace(catalog.clone());
        // Leader epochs change with the catalog, before anything awaits: an append routed
        // by this catalog is stamped with its epoch (logs opened below get theirs at the end).
        self.adopt_roles(&catalog);
        for (name, old_topic) in &old.topics {
            let gone = catalog
                .topics
                .get(name)
                .is_none_or(|t| t.id != old_topic.id);
            if gone {
                let logs = self.logs.borrow_mut().remove(name).unwrap_or_default();
                for log in logs.into_iter().flatten() {
                    self.storage.unregister(&log);
                    if let Err(e) = log.delete().await {
                        tracing::warn!(topic = %name, "deleting partition log failed: {e}");
                    }
                }
            }
        }
        let me = self.config.node_id;
        for (name, topic) in &catalog.topics {
            let log_config = catalog::topic_log_config(&base, topic);
            for (partition, owner) in topic.owners.iter().enumerate() {
                if *owner as usize % self.nr_shards != self.id {
                    continue;
                }
                // Only replicas on this node have a log here.
                let replica = topic
                    .placement
                    .get(partition)
                    .is_some_and(|p| p.replicas.contains(&me));
                if !replica {
                    continue;
                }
                let partition = partition as i32;
                if let Some(log) = self.log(name, partition) {
                    log.set_config(log_config.clone());
                    continue;
                }
                if std::env::var_os(PANIC_ON_TOPIC_ENV).is_some_and(|t| t == name.as_str()) {
                    panic!("{PANIC_ON_TOPIC_ENV}: opening a partition of topic {name}");
                }
                let dir = catalog::partition_dir(&self.config.data_dir, name, partition);
                let (log, report) = PartitionLog::open(&dir, log_config.clone())
                    .await
                    .map_err(|e| format!("opening {}: {e}", dir.display()))?;
                tracing::debug!(topic = %name, partition, "opened log: {report}");
                if let Some(placement) = topic.placement.get(partition as usize) {
                    self.adopt_role(&log, placement);
                }
                self.storage.register(&log);
                let mut logs = self.logs.borrow_mut();
                let slots = logs.entry(name.clone()).or_default();
                if slots.len() <= partition as usize {
                    slots.resize(partition as usize + 1, None);
                }
                slots[partition as usize] = Some(log);
            }
        }
        self.adopt_roles(&catalog);
        self.adopt_offsets_partitions(&catalog);
        self.adopted_version
            .set(self.adopted_version.get().max(catalog.version));
        self.catalog_event.notify();
        Ok(())
    }

    /// Wait (at most `max`) until this shard has adopted catalog `version` or a later one.
    pub(crate) async fn wait_adopted(&self, version: u64, max: std::time::Duration) -> bool {
        self.wait_until(|s| s.adopted_version.get() >= version, max)
            .await
    }

    /// Wait (at most `max` per shard) until every shard of this node has adopted catalog
    /// `version` or a later one, so what this shard answers next is what every shard serves.
    pub(crate) async fn wait_node_adopted(self: &Rc<Self>, version: u64, max: std::time::Duration) {
        for target in 0..self.nr_shards {
            let _ = self
                .call(target, move |s| async move {
                    s.wait_adopted(version, max).await
                })
                .await;
        }
    }

    /// Wait (at most `max`) until this shard's catalog satisfies `ready`; whether it does.
    pub(crate) async fn wait_catalog(
        &self,
        ready: impl Fn(&Catalog) -> bool,
        max: std::time::Duration,
    ) -> bool {
        self.wait_until(|s| ready(&s.catalog.borrow()), max).await
    }

    /// Wait (at most `max`) until `ready` holds for this shard, checked at each catalog
    /// adoption (and every 100 ms); whether it does.
    async fn wait_until(&self, ready: impl Fn(&Shard) -> bool, max: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + max;
        while !ready(self) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let wait = self.catalog_event.listen();
            let _ =
                glommio::timer::timeout(left.min(std::time::Duration::from_millis(100)), async {
                    wait.await;
                    Ok(())
                })
                .await;
        }
        true
    }

    /// Shard 0 only: follow the control plane, handing every new catalog to every shard in
    /// order (a burst of changes is handed over as its latest state).
    pub fn follow_control_plane(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let mut view = shard.control.view();
            loop {
                if view.changed().await.is_err() {
                    return;
                }
                let catalog = (**view.borrow_and_update()).clone();
                if let Err(e) = shard.broadcast_catalog(&catalog).await {
                    tracing::error!("adopting metadata version {}: {e}", catalog.version);
                }
            }
        })
        .detach();
    }

    /// Push a catalog to every shard (including this one) and wait until all adopted it.
    pub async fn broadcast_catalog(self: &Rc<Self>, catalog: &Catalog) -> Result<(), String> {
        for target in 0..self.nr_shards {
            let copy = catalog.clone();
            self.call(target, move |shard| async move {
                shard.apply_catalog(copy).await
            })
            .await
            .map_err(|_| "shard gone".to_string())??;
        }
        Ok(())
    }

    /// Gives a partition whose log failed a write (typically a full disk) a fresh start once
    /// the file system has room again: the failed log is closed without a clean-shutdown
    /// marker and opened anew, so recovery keeps every durable batch and cuts what never
    /// reached the disk (no producer was told it was durable). Until then the failed log
    /// keeps serving reads and refusing appends with KAFKA_STORAGE_ERROR. Tried at most once
    /// per `REOPEN_INTERVAL` per shard, so a full disk costs one statvfs per interval.
    pub async fn reopen_if_failed(&self, topic: &str, partition: i32) {
        let Some(old) = self.log(topic, partition) else {
            return;
        };
        if !old.is_failed() || old.is_closed() {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .last_reopen
            .get()
            .is_some_and(|t| now.duration_since(t) < REOPEN_INTERVAL)
        {
            return;
        }
        self.last_reopen.set(Some(now));
        let config = old.config();
        let needed = 2 * config.preallocate_bytes;
        match free_bytes(old.dir()) {
            Ok(free) if free >= needed => {}
            Ok(free) => {
                tracing::warn!(
                    topic,
                    partition,
                    free,
                    needed,
                    "log failed; waiting for free space to reopen it"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(topic, partition, "cannot read free space: {e}");
                return;
            }
        }
        self.storage.unregister(&old);
        let _ = old.close().await; // fails at its flush: no marker, so the open below scans
        let dir = old.dir().to_path_buf();
        let reopened = match PartitionLog::open(&dir, config).await {
            Ok((log, report)) => {
                tracing::warn!(topic, partition, %report, "reopened a failed log");
                log
            }
            Err(e) => {
                tracing::error!(topic, partition, "reopening a failed log failed: {e}");
                return;
            }
        };
        self.storage.register(&reopened);
        let mut logs = self.logs.borrow_mut();
        if let Some(slot) = logs
            .get_mut(topic)
            .and_then(|slots| slots.get_mut(partition as usize))
        {
            *slot = Some(reopened);
        }
    }

    /// Begins a shutdown: connections take no new requests, and long polls waiting on this
    /// shard's partitions answer now.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        self.shutdown_event.notify();
    }

    /// Whether a shutdown has begun: connections take no new requests.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Flush and close every log this shard owns (clean shutdown).
    pub async fn close_logs(&self) {
        for log in self.all_logs() {
            if let Err(e) = log.close().await {
                tracing::error!(shard = self.id, "closing a log failed: {e}");
            }
        }
    }
}
