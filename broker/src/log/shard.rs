//! Per-shard storage coordination: group commit across every partition log of the shard,
//! and the background flusher and retention loop.
//!
//! Owns the list of registered logs and the state of the current sync round. Must never
//! be shared between shards: each shard has its own, and a partition registers only with
//! the shard that owns it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::clock::now_ms;

use super::event::Event;
use super::{LogError, PartitionLog};

/// How often the background loop looks at dirty bytes between interval flushes: short
/// enough that `flush_bytes` is noticed quickly, long enough to cost nothing when idle.
const BACKGROUND_TICK_MS_MAX: u64 = 5;

/// Retention check interval callers pass to `run_background` unless configured (5 min).
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 5 * 60 * 1000;

/// One per shard: group commit and the background flusher.
pub struct ShardStorage {
    flush_interval_ms: u64,
    flush_bytes: u64,
    logs: RefCell<Vec<Rc<PartitionLog>>>,
    round_in_progress: Cell<bool>,
    round_done: Event,
    stopped: Cell<bool>,
    rounds: Cell<u64>,
}

impl ShardStorage {
    /// A shard's storage coordinator: flush every `flush_interval_ms`, or sooner once the
    /// registered logs hold more than `flush_bytes` not yet durable.
    pub fn new(flush_interval_ms: u64, flush_bytes: u64) -> Rc<ShardStorage> {
        Rc::new(ShardStorage {
            flush_interval_ms: flush_interval_ms.max(1),
            flush_bytes,
            logs: RefCell::new(Vec::new()),
            round_in_progress: Cell::new(false),
            round_done: Event::default(),
            stopped: Cell::new(false),
            rounds: Cell::new(0),
        })
    }

    /// Adds a log to group commit, background flushes and retention.
    pub fn register(&self, log: &Rc<PartitionLog>) {
        let mut logs = self.logs.borrow_mut();
        if !logs.iter().any(|l| Rc::ptr_eq(l, log)) {
            logs.push(log.clone());
        }
    }

    /// Removes a log (before it is closed or deleted).
    pub fn unregister(&self, log: &Rc<PartitionLog>) {
        self.logs.borrow_mut().retain(|l| !Rc::ptr_eq(l, log));
    }

    /// Number of sync rounds run so far (each is one fdatasync per dirty log).
    pub fn rounds(&self) -> u64 {
        self.rounds.get()
    }

    /// Resolves once `offset` (inclusive) of `log` is durable (acks=all). Callers waiting
    /// at the same moment share one round of fdatasyncs, one per dirty log, issued
    /// concurrently.
    pub async fn wait_durable(&self, log: &Rc<PartitionLog>, offset: i64) -> Result<(), LogError> {
        if offset >= log.log_end_offset() {
            // Not appended yet: no sync could ever cover it, so refuse instead of spinning.
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start: log.log_start_offset(),
                end: log.log_end_offset(),
            });
        }
        loop {
            if log.durable_offset() > offset {
                return Ok(());
            }
            if log.is_closed() {
                return Err(LogError::Closed);
            }
            if self.round_in_progress.get() {
                // The running round may have started before our batch was appended: wait
                // for it, then check again or start the next one.
                self.round_done.listen().await;
                continue;
            }
            self.run_round(Some(log)).await?;
        }
    }

    /// Flushes every dirty registered log (and `extra`) concurrently; returns `extra`'s
    /// result, since other logs' errors belong to their own waiters.
    async fn run_round(&self, extra: Option<&Rc<PartitionLog>>) -> Result<(), LogError> {
        self.round_in_progress.set(true);
        let mut targets: Vec<Rc<PartitionLog>> = self
            .logs
            .borrow()
            .iter()
            .filter(|l| l.dirty_bytes() > 0 && !l.is_closed())
            .cloned()
            .collect();
        if let Some(log) = extra {
            if !targets.iter().any(|l| Rc::ptr_eq(l, log)) {
                targets.push(log.clone());
            }
        }
        let tasks: Vec<_> = targets
            .iter()
            .map(|log| {
                let log = log.clone();
                glommio::spawn_local(async move { log.flush().await })
            })
            .collect();
        let mut mine = Ok(());
        for (log, task) in targets.iter().zip(tasks) {
            let result = task.await;
            if extra.is_some_and(|e| Rc::ptr_eq(e, log)) {
                mine = result.map(|_| ());
            } else if let Err(e) = result {
                tracing::warn!(dir = %log.dir().display(), error = %e, "background flush failed");
            }
        }
        self.rounds.set(self.rounds.get() + 1);
        self.round_in_progress.set(false);
        self.round_done.notify();
        mine
    }

    /// The registered logs, as they are now.
    pub(super) fn logs(&self) -> Vec<Rc<PartitionLog>> {
        self.logs.borrow().clone()
    }

    /// True once `stop` was called.
    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Asks `run_background` (and `run_cleaner`) to return at its next tick.
    pub fn stop(&self) {
        self.stopped.set(true);
    }

    /// Background loop, to spawn on its own task queue: every `flush_interval_ms`, or when
    /// dirty bytes exceed `flush_bytes`, flushes every registered log; every
    /// `retention_check_interval_ms` applies retention. Returns after `stop`.
    pub async fn run_background(self: Rc<Self>, retention_check_interval_ms: u64) {
        let tick = Duration::from_millis(self.flush_interval_ms.min(BACKGROUND_TICK_MS_MAX));
        let flush_interval = Duration::from_millis(self.flush_interval_ms);
        let retention_interval = Duration::from_millis(retention_check_interval_ms.max(1));
        let mut last_flush = Instant::now();
        let mut last_retention = Instant::now();
        while !self.stopped.get() {
            glommio::timer::sleep(tick).await;
            let dirty: u64 = self.logs.borrow().iter().map(|l| l.dirty_bytes()).sum();
            let due = last_flush.elapsed() >= flush_interval;
            if (due && dirty > 0) || dirty >= self.flush_bytes.max(1) {
                if !self.round_in_progress.get() {
                    let _ = self.run_round(None).await;
                }
                last_flush = Instant::now();
            } else if due {
                last_flush = Instant::now();
            }
            if last_retention.elapsed() >= retention_interval {
                last_retention = Instant::now();
                let logs: Vec<_> = self.logs.borrow().clone();
                for log in logs {
                    if let Err(e) = log.apply_retention(now_ms()).await {
                        tracing::warn!(dir = %log.dir().display(), error = %e, "retention failed");
                    }
                }
            }
        }
    }
}
