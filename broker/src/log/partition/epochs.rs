//! Leader epochs of a partition's log: the epoch producer appends stamp into their batches,
//! and the epoch cache (see `log::epochs`) kept in step with the batches and persisted as
//! `leader-epoch-checkpoint`. The log knows nothing of who leads: the replication layer
//! sets the epoch, and the log only stamps it and remembers where each epoch starts.
//!
//! Invariants: the cache changes only in the append line (appends, truncation, reset) or in
//! `open`, so checkpoint writes never race; a batch's epoch is in the durable checkpoint
//! before any byte of the batch is handed to the device, so a crash can lose an epoch only
//! with the file itself (recovery then rebuilds what its scan and replay see). Costs one
//! comparison per batch, and one checkpoint write per append that starts a new epoch.

use super::PartitionLog;
use crate::log::batch::BatchHeader;
use crate::log::epochs::EpochCache;
use crate::log::files;
use crate::log::LogError;

impl PartitionLog {
    /// Sets the epoch producer appends stamp into the PartitionLeaderEpoch field of every
    /// batch (on disk and in the tail cache); -1 (the default) stamps nothing and batches
    /// keep what the producer sent. Follower appends (`append_replica`) never stamp.
    pub fn set_leader_epoch(&self, epoch: i32) {
        self.leader_epoch.set(epoch.max(-1));
    }

    /// The epoch producer appends stamp, -1 for none.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    /// The newest leader epoch among this log's batches, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.borrow().latest()
    }

    /// Kafka's end offset for a leader epoch (OffsetsForLeaderEpoch): for the latest epoch
    /// (epoch, log end offset); for an older one, the largest cached epoch at or below it and
    /// the start offset of the next cached epoch; (-1, -1) below the first cached epoch,
    /// above the latest one, or when no batch carried an epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs
            .borrow()
            .end_offset_for(epoch, self.log_end_offset.get())
    }

    /// The epoch cache's entries, oldest first (tests, diagnostics).
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.epochs.borrow().entries().to_vec()
    }

    /// Notes the epochs of batches about to be written from `base_offset` on (`stamp` when
    /// they get ours, else each batch's own), and persists the cache when one is new. The
    /// caller holds the append line and has written none of the batches yet.
    pub(super) async fn note_epochs(
        &self,
        parsed: &[(usize, BatchHeader)],
        stamp: Option<i32>,
        base_offset: i64,
    ) -> Result<(), LogError> {
        let mut latest = self.epochs.borrow().latest().unwrap_or(-1);
        let mut offset = base_offset;
        let mut changed = false;
        for (_, h) in parsed {
            let epoch = stamp.unwrap_or(h.partition_leader_epoch());
            if epoch > latest {
                changed |= self.epochs.borrow_mut().assign(epoch, offset);
                latest = epoch;
            }
            offset += h.last_offset_delta() as i64 + 1;
        }
        if changed {
            self.persist_epochs().await.inspect_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Replaces the checkpoint with the cache (temp file, fsync, rename, directory sync), off
    /// the shard's thread. The caller holds the append line, so writes never overlap.
    pub(super) async fn persist_epochs(&self) -> Result<(), LogError> {
        let text = self.epochs.borrow().encode();
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || files::write_atomic(&dir, files::LEADER_EPOCH_FILE, &text))
            .await?;
        Ok(())
    }
}

/// The checkpoint in `dir`: empty when missing, and when damaged (with a warning: recovery
/// rebuilds what it scans).
pub(super) fn load_epochs(dir: &std::path::Path) -> EpochCache {
    let path = dir.join(files::LEADER_EPOCH_FILE);
    match std::fs::read(&path) {
        Ok(text) => EpochCache::decode(&text).unwrap_or_else(|| {
            tracing::warn!(path = %path.display(), "damaged leader epoch checkpoint; rebuilding from the scanned tail");
            EpochCache::default()
        }),
        Err(_) => EpochCache::default(),
    }
}

/// Adds the epochs recovery saw in batch headers, `(epoch, base offset)` where a batch's
/// epoch was above every earlier one seen by the same pass, to `cache`, oldest offset
/// first. Returns true when the cache changed.
pub(super) fn recover_epochs(cache: &mut EpochCache, mut seen: Vec<(i32, i64)>) -> bool {
    seen.sort_by_key(|e| e.1);
    let mut changed = false;
    for (epoch, offset) in seen {
        changed |= cache.assign(epoch, offset);
    }
    changed
}
