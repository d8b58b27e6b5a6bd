//! The per-shard cleaner loop: every `backoff_ms`, it picks among the shard's compacted
//! logs the one with the highest dirty ratio at or above its `min_cleanable_dirty_ratio`
//! (or one a pass is due for whatever the ratio) and cleans it, paced by the I/O budget.
//! Spawned on its own low-priority task queue, so request handling always runs first.
//! Must never run two passes of one shard at once (one offset map per shard).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::CleanerSettings;
use crate::clock::now_ms;
use crate::log::{PartitionLog, ShardStorage};

/// Longest sleep between checks of `stop`, so a shard's shutdown is not held up.
const STOP_CHECK_MS: u64 = 100;

/// The log most in need of a pass, if any is due.
fn pick(logs: &[Rc<PartitionLog>], now_ms: i64) -> Option<Rc<PartitionLog>> {
    let mut best: Option<(f64, &Rc<PartitionLog>)> = None;
    for log in logs {
        if !log.is_compacted() || log.is_closed() || log.is_failed() {
            continue;
        }
        let (ratio, forced) = log.dirty_ratio(now_ms);
        let min = log.config().compaction.min_cleanable_dirty_ratio;
        if !forced && (ratio <= 0.0 || ratio < min) {
            continue;
        }
        // A forced pass (max lag, expired tombstones) comes before any ratio.
        let score = ratio + if forced { 1.0 } else { 0.0 };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, log));
        }
    }
    best.map(|(_, log)| log.clone())
}

impl ShardStorage {
    /// The cleaner loop of this shard; returns after `stop`.
    pub async fn run_cleaner(self: Rc<Self>, settings: CleanerSettings) {
        let backoff = Duration::from_millis(settings.backoff_ms.max(1));
        let mut last = Instant::now();
        while !self.is_stopped() {
            glommio::timer::sleep(backoff.min(Duration::from_millis(STOP_CHECK_MS))).await;
            if last.elapsed() < backoff {
                continue;
            }
            last = Instant::now();
            // Passes back to back while a log is due; an error waits for the next round.
            while !self.is_stopped() {
                let Some(log) = pick(&self.logs(), now_ms()) else {
                    break;
                };
                match log.clean(&settings, now_ms()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(dir = %log.dir().display(), error = %e, "cleaning pass failed");
                        break;
                    }
                }
            }
        }
    }
}
