//! The leader epoch cache of one partition (Kafka's `LeaderEpochFileCache`): for each leader
//! epoch seen in the log's batches, the offset of its first batch, ascending. Followers use
//! it to find where their log diverged from a new leader's (KIP-101, KIP-279).
//!
//! Owns the list and its text encoding (Kafka's `leader-epoch-checkpoint` format: a version
//! line `0`, a count line, then one `epoch start_offset` line per entry). Must never do I/O
//! itself: the partition log decides when to persist it and feeds it batch headers.
//!
//! ```
//! # use shardlog::log::EpochCache;
//! let mut cache = EpochCache::default();
//! assert!(cache.assign(3, 0));
//! assert!(!cache.assign(3, 10), "an epoch already seen changes nothing");
//! assert!(cache.assign(5, 40));
//! assert_eq!(cache.end_offset_for(3, 100), (3, 40));
//! assert_eq!(cache.end_offset_for(5, 100), (5, 100));
//! assert_eq!(cache.end_offset_for(2, 100), (-1, -1));
//! ```

/// Epoch or offset Kafka answers when it knows none.
pub const UNDEFINED: i32 = -1;

/// Leader epochs and the offsets they start at, ascending in both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

/// Version line of the checkpoint file, as Kafka writes it.
const CHECKPOINT_VERSION: &str = "0";
/// A checkpoint claiming more entries than this is damaged, not a log's history: one entry
/// per leader change, and no partition changes leader billions of times.
const CHECKPOINT_ENTRIES_MAX: usize = 1 << 20;

impl EpochCache {
    /// The newest epoch, if any.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than the latest epoch
    /// (and not negative: -1 means no epoch). Entries starting at or after `start_offset`
    /// conflict with it and go, as in Kafka. Returns true when the cache changed.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest().is_some_and(|latest| epoch <= latest) {
            return false;
        }
        self.entries.retain(|e| e.1 < start_offset);
        self.entries.push((epoch, start_offset));
        true
    }

    /// Drops the entries of epochs starting at or after `end_offset` (the log was cut
    /// there). Returns true when the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.1 < end_offset);
        self.entries.len() != before
    }

    /// Drops every entry. Returns true when the cache changed.
    pub fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }

    /// Kafka's `endOffsetFor`: where `epoch` ends in this log. For the latest epoch, the log
    /// end; for an older one, the largest cached epoch E at or below it and the start of
    /// the first epoch after E; (-1, -1) when `epoch` is below the first cached epoch,
    /// above the latest, or the cache is empty.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> (i32, i64) {
        let undefined = (UNDEFINED, UNDEFINED as i64);
        if epoch < 0 {
            return undefined;
        }
        if self.latest() == Some(epoch) {
            return (epoch, log_end_offset);
        }
        let after = self.entries.partition_point(|e| e.0 <= epoch);
        match (after.checked_sub(1), self.entries.get(after)) {
            (Some(floor), Some(next)) => (self.entries[floor].0, next.1),
            _ => undefined,
        }
    }

    /// The checkpoint file's text.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            out.push_str(&format!("{epoch} {offset}\n"));
        }
        out.into_bytes()
    }

    /// Parses a checkpoint file; `None` when it is not one (wrong version, count, order, or
    /// a line that is not two numbers): the caller rebuilds what it can from the log.
    pub fn decode(text: &[u8]) -> Option<EpochCache> {
        let text = std::str::from_utf8(text).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim() != CHECKPOINT_VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        if count > CHECKPOINT_ENTRIES_MAX {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let mut fields = lines.next()?.split_whitespace();
            let epoch: i32 = fields.next()?.parse().ok()?;
            let offset: i64 = fields.next()?.parse().ok()?;
            if fields.next().is_some() || epoch < 0 || offset < 0 {
                return None;
            }
            entries.push((epoch, offset));
        }
        if lines.any(|l| !l.trim().is_empty()) {
            return None;
        }
        let ascending = entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        ascending.then_some(EpochCache { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        EpochCache {
            entries: entries.to_vec(),
        }
    }

    #[test]
    fn only_newer_epochs_are_assigned_and_conflicting_entries_go() {
        let mut c = EpochCache::default();
        assert!(!c.assign(-1, 0), "no epoch");
        assert!(c.assign(0, 0));
        assert!(!c.assign(0, 5));
        assert!(c.assign(2, 10));
        assert!(!c.assign(1, 20), "older than the latest");
        assert_eq!(c.entries(), &[(0, 0), (2, 10)]);
        // A newer epoch starting before the latest entry's start replaces that entry.
        assert!(c.assign(4, 10));
        assert_eq!(c.entries(), &[(0, 0), (4, 10)]);
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let c = cache(&[(1, 0), (3, 50), (6, 120)]);
        assert_eq!(c.end_offset_for(6, 200), (6, 200), "latest: the log end");
        assert_eq!(c.end_offset_for(3, 200), (3, 120));
        assert_eq!(c.end_offset_for(1, 200), (1, 50));
        assert_eq!(
            c.end_offset_for(4, 200),
            (3, 120),
            "between: the floor epoch"
        );
        assert_eq!(c.end_offset_for(5, 200), (3, 120));
        assert_eq!(c.end_offset_for(0, 200), (-1, -1), "below the first");
        assert_eq!(c.end_offset_for(7, 200), (-1, -1), "above the latest");
        assert_eq!(c.end_offset_for(-1, 200), (-1, -1));
        assert_eq!(EpochCache::default().end_offset_for(0, 200), (-1, -1));
    }

    #[test]
    fn truncation_drops_epochs_starting_at_or_after_the_cut() {
        let mut c = cache(&[(1, 0), (3, 50), (6, 120)]);
        assert!(!c.truncate_from_end(121));
        assert!(c.truncate_from_end(120));
        assert_eq!(c.entries(), &[(1, 0), (3, 50)]);
        assert!(c.truncate_from_end(0));
        assert_eq!(c.latest(), None);
    }

    #[test]
    fn the_checkpoint_text_is_kafkas_and_round_trips() {
        let c = cache(&[(1, 0), (3, 50)]);
        assert_eq!(c.encode(), b"0\n2\n1 0\n3 50\n");
        assert_eq!(EpochCache::decode(&c.encode()), Some(c));
        assert_eq!(
            EpochCache::decode(b"0\n0\n"),
            Some(EpochCache::default()),
            "empty"
        );
    }

    #[test]
    fn a_damaged_checkpoint_is_refused() {
        for bad in [
            &b""[..],
            b"1\n0\n",
            b"0\n2\n1 0\n",
            b"0\n1\n1 0 7\n",
            b"0\n1\nx 0\n",
            b"0\n2\n3 0\n1 50\n",
            b"0\n2\n1 50\n3 50\n",
            b"0\n1\n1 0\n2 5\n",
            b"0\n99999999999\n",
            b"0\n1\n-1 0\n",
        ] {
            assert_eq!(
                EpochCache::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
