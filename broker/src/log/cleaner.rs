//! Log compaction (`cleanup.policy=compact`): the settings, the bounded offset map, the I/O
//! budget and the statistics of a cleaning pass. The pass itself runs inside the partition
//! log (`partition/clean.rs`), the record reader is `cleaner/records.rs`, and the
//! crash-safe swap of cleaned segments is `cleaner/swap.rs`.
//!
//! A pass keeps, for every key, the record with the newest offset; drops older records of
//! the key, keyless records, and tombstones older than `delete_retention_ms`; never
//! changes an offset (what it removes leaves a gap); keeps every batch's header fields but
//! Length, RecordCount and CRC (so LastOffsetDelta, timestamps and the producer's id, epoch
//! and sequences survive); keeps each cleaned segment's last batch and each producer's
//! newest batch even when empty, so a segment still ends where the next one starts and
//! producer state replays the same. Never touches the active segment nor one still being
//! finished, never reads inside batches on the append or read paths, and never shares
//! anything across shards.
//!
//! ```
//! use shardlog::log::CompactionConfig;
//! let c = CompactionConfig { compact: true, ..CompactionConfig::default() };
//! assert!(c.compact && c.min_cleanable_dirty_ratio == 0.5);
//! ```

mod background;
pub(crate) mod records;
pub(crate) mod swap;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

pub use records::every_record_has_a_key;

/// Per-partition compaction settings (Kafka's topic configs of the same names).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionConfig {
    /// `cleanup.policy` holds `compact`.
    pub compact: bool,
    /// `cleanup.policy` holds `delete`: time and size retention apply.
    pub delete: bool,
    /// Clean a log once this share of its closed bytes is dirty (not yet cleaned).
    pub min_cleanable_dirty_ratio: f64,
    /// Records younger than this are never cleaned (segment granularity, as Kafka).
    pub min_compaction_lag_ms: i64,
    /// A dirty segment older than this is cleaned whatever the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// Tombstones are kept this long after their timestamp, then removed.
    pub delete_retention_ms: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            compact: false,
            delete: true,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

/// Per-shard cleaner settings (broker flags).
#[derive(Clone, Debug)]
pub struct CleanerSettings {
    /// Memory of the offset map (Kafka `log.cleaner.dedupe.buffer.size`); when a log's
    /// dirty keys do not fit, a pass cleans up to where they did and the next goes on.
    pub dedupe_buffer_bytes: usize,
    /// Bytes read plus written per second (Kafka `log.cleaner.io.max.bytes.per.second`).
    pub io_bytes_per_s: u64,
    /// Pause between looks for a log to clean (Kafka `log.cleaner.backoff.ms`).
    pub backoff_ms: u64,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            dedupe_buffer_bytes: 128 << 20,
            io_bytes_per_s: u64::MAX,
            backoff_ms: 15_000,
        }
    }
}

/// What one cleaning pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments rewritten (before grouping).
    pub segments_cleaned: usize,
    /// Segment files after grouping.
    pub segments_written: usize,
    /// Bytes of batches read: the offset map's dirty part plus the segments rewritten.
    pub bytes_read: u64,
    /// Bytes of cleaned segments written.
    pub bytes_written: u64,
    /// Records read while rewriting.
    pub records_read: u64,
    /// Records removed (older values, keyless records, expired tombstones).
    pub records_removed: u64,
    /// Distinct keys in the offset map.
    pub keys: usize,
    /// Offsets below this are clean after the pass.
    pub clean_offset: i64,
    /// Wall time of the pass.
    pub duration_ms: u64,
}

/// Estimated memory of one offset-map entry: a 16-byte key hash, an 8-byte offset, and the
/// hash table's control byte and spare capacity.
pub const OFFSET_MAP_ENTRY_BYTES: usize = 32;

/// The keys are already hashes: the table uses their low bits as they are.
#[derive(Default)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// Newest offset of each key, keyed by a 128-bit hash of the key (as Kafka's
/// SkimpyOffsetMap keys by MD5), with a fixed capacity.
pub(crate) struct OffsetMap {
    map: HashMap<u128, i64, BuildHasherDefault<PassThroughHasher>>,
    capacity: usize,
}

/// A 128-bit hash of a key: two SipHash-2-4 passes with different prefixes. A collision
/// would drop a record of another key, so 64 bits are not enough for billions of keys.
pub(crate) fn key_hash(key: &[u8]) -> u128 {
    use std::hash::Hash;
    let half = |salt: u8| {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(0x5348_4152_444c_4f47, salt as u64);
        key.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

impl OffsetMap {
    /// A map holding at most what `bytes` of memory hold (at least one key).
    pub(crate) fn with_memory(bytes: usize) -> OffsetMap {
        OffsetMap {
            map: HashMap::default(),
            capacity: (bytes / OFFSET_MAP_ENTRY_BYTES).max(1),
        }
    }

    /// Keys the map can still take for sure.
    pub(crate) fn room(&self) -> usize {
        self.capacity - self.map.len()
    }

    /// Records `offset` as the newest of `key` (offsets arrive in increasing order).
    pub(crate) fn insert(&mut self, key: &[u8], offset: i64) {
        debug_assert!(self.map.len() < self.capacity || self.map.contains_key(&key_hash(key)));
        self.map.insert(key_hash(key), offset);
    }

    /// Newest offset of `key` in the mapped range.
    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        self.map.get(&key_hash(key)).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Paces a pass to `bytes_per_s` of I/O by sleeping whenever it gets ahead.
pub(crate) struct IoBudget {
    bytes_per_s: u64,
    started: Instant,
    spent: u64,
}

impl IoBudget {
    pub(crate) fn new(bytes_per_s: u64) -> IoBudget {
        IoBudget {
            bytes_per_s: bytes_per_s.max(1),
            started: Instant::now(),
            spent: 0,
        }
    }

    /// Accounts `bytes` and waits until the pass is back within its rate.
    pub(crate) async fn spend(&mut self, bytes: u64) {
        if self.bytes_per_s == u64::MAX {
            return;
        }
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / self.bytes_per_s as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            glommio::timer::sleep(due - elapsed).await;
        }
    }
}
