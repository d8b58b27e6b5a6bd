//! Storage engine: one segmented, append-only commit log per partition, written with
//! O_DIRECT through io_uring (glommio `DmaFile`), with group commit and crash recovery.
//!
//! This module owns the files of a partition directory (`<base offset>.log`, `.index`,
//! `.timeindex`, the producer-state snapshot, the leader epoch checkpoint and the
//! clean-shutdown marker), the aligned write buffers, the tail cache, the per-producer
//! idempotence state and the leader epoch cache. It stamps leader epochs, cuts itself back
//! and limits consumers' reads to a high watermark when told to, but knows nothing of
//! replication: who leads, the ISR and the high watermark's value are decided above it.
//!
//! It must never know Kafka requests: it sees only RecordBatch v2 headers (see [`batch`]),
//! never decodes or decompresses records, and never shares state across shards (every type
//! here is `!Send`, used from one glommio executor). `Bytes` it hands out are backed by
//! heap memory that may cross threads, never by an `Rc`.
//!
//! ```no_run
//! use shardlog::log::{LogConfig, PartitionLog};
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
//!     .io_memory(512 << 10)
//!     .spawn(|| async move {
//!         let (log, report) = PartitionLog::open("/tmp/topic-0", LogConfig::default()).await.unwrap();
//!         println!("{report}");
//!         # let batch = bytes::Bytes::new();
//!         let info = log.append(batch, 0).await.unwrap();
//!         log.flush().await.unwrap();
//!         let read = log.read(info.base_offset, 1 << 20).await.unwrap();
//!         assert!(read.bytes > 0);
//!         log.close().await.unwrap();
//!     })
//!     .unwrap()
//!     .join()
//!     .unwrap();
//! ```

pub mod batch;
pub mod cleaner;
mod epochs;
pub(crate) mod event;
mod files;
mod partition;
mod producer;
mod segment;
mod shard;

#[cfg(test)]
mod cleaner_tests;
#[cfg(test)]
mod epoch_tests;
#[cfg(test)]
mod order_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod truncate_tests;

pub use cleaner::{CleanStats, CleanerSettings, CompactionConfig};
pub use epochs::EpochCache;
pub use partition::PartitionLog;
pub use segment::probe_direct_io;
pub use shard::{ShardStorage, RETENTION_CHECK_INTERVAL_MS_DEFAULT};

use std::fmt;

/// Per-partition storage settings; `Default` gives Kafka's defaults.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Roll to a new segment once the active one would exceed this size.
    pub segment_bytes: u64,
    /// Roll to a new segment once the active one is older than this.
    pub segment_ms: u64,
    /// One sparse index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Delete whole segments whose newest batch is older than this; -1 = unlimited.
    pub retention_ms: i64,
    /// Delete oldest segments while the log is larger than this; -1 = unlimited.
    pub retention_bytes: i64,
    /// Largest accepted batch, log overhead included (Kafka `max.message.bytes`).
    pub max_batch_bytes: u32,
    /// Recent batches kept in memory for readers near the head. Batches not yet written to
    /// the device always stay (they have no other copy), so the cache may exceed this by up
    /// to two staging buffers. Cached batches are slices of the appended `Bytes`.
    pub tail_cache_bytes: usize,
    /// Size of one aligned staging buffer and of a full write. A change applies from the
    /// next segment roll.
    pub write_buffer_bytes: usize,
    /// Sealed buffers on their way to the device while the next one fills (one more while
    /// a flush or roll is in progress); when that many are unfinished, `append` waits.
    pub max_writes_in_flight: usize,
    /// Files grow in steps of this size, so most writes need no block allocation.
    pub preallocate_bytes: u64,
    /// Stamp each appended batch with the append time (Kafka `message.timestamp.type` =
    /// LogAppendTime): timestamp-type attribute, MaxTimestamp and CRC rewritten in the header.
    pub log_append_time: bool,
    /// Log compaction (`cleanup.policy=compact` and its tuning); see [`cleaner`].
    pub compaction: CompactionConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_batch_bytes: 1_048_588,
            tail_cache_bytes: 8 << 20,
            write_buffer_bytes: 1 << 20,
            max_writes_in_flight: 4,
            preallocate_bytes: 64 << 20,
            log_append_time: false,
            compaction: CompactionConfig::default(),
        }
    }
}

/// Everything the storage engine can answer instead of a result.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A batch failed validation (length, record count, CRC).
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// A batch is larger than `max_batch_bytes`.
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    /// Only magic 2 (RecordBatch v2) is stored.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// The offset is outside `[log_start_offset, log_end_offset]`.
    #[error("offset {requested} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    /// Part of a multi-batch append repeats sequences already written.
    #[error("producer {producer_id}: duplicate sequence {base_sequence} mixed with new batches")]
    DuplicateSequence {
        producer_id: i64,
        base_sequence: i32,
    },
    /// The batch's base sequence is not the one after the producer's last batch.
    #[error("producer {producer_id}: expected sequence {expected}, got {received}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    /// A follower got batches that do not continue its log (it must truncate or refetch).
    #[error("replica gap: the log ends at {log_end} but the next batch starts at {batch_base}")]
    ReplicaGap { log_end: i64, batch_base: i64 },
    /// The batch carries an epoch older than the producer's current one.
    #[error("producer {producer_id}: epoch {received} is older than {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        received: i16,
    },
    /// A file held fewer bytes than the log knows it wrote there (e.g. truncated under a
    /// running broker): the data is gone, which is a storage error, never a panic.
    #[error("short read: {wanted} bytes wanted at byte {position} of a segment, {got} there")]
    ShortRead {
        position: u64,
        wanted: usize,
        got: usize,
    },
    /// The device or file system failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The log was closed or deleted.
    #[error("log is closed")]
    Closed,
    /// An earlier background write failed; the log accepts nothing until reopened.
    #[error("log failed after an earlier I/O error: {0}")]
    Failed(String),
}

impl<T> From<glommio::GlommioError<T>> for LogError {
    fn from(e: glommio::GlommioError<T>) -> Self {
        LogError::Io(e.into())
    }
}

/// Where an append landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record of the first batch.
    pub base_offset: i64,
    /// Offset of the last record of the last batch.
    pub last_offset: i64,
    /// The time stamped into the batches under `log_append_time`; -1 when they keep the
    /// producer's CreateTime (or the append was a duplicate).
    pub log_append_time_ms: i64,
    /// Log start offset after the append.
    pub log_start_offset: i64,
    /// The batch was a retry of one already written; nothing was appended.
    pub duplicate: bool,
    /// The leader epoch the log was stamping when it took the batch (-1: none set): a
    /// replicated acknowledgement is only valid while the partition is still led in it.
    pub leader_epoch: i32,
}

/// Whole batches read from the log, as slices ready for a vectored send.
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    /// Concatenated, the chunks are one or more whole record batches.
    pub chunks: Vec<bytes::Bytes>,
    /// Sum of the chunk lengths.
    pub bytes: usize,
    /// Log start offset at the time of the read.
    pub log_start_offset: i64,
    /// Log end offset at the time of the read.
    pub log_end_offset: i64,
    /// High watermark at the time of the read (the log end for a log that is not
    /// replicated): what a Fetch reports to consumers and followers alike.
    pub high_watermark: i64,
}

/// What `open` found on disk and what it did about it.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The previous run closed the log cleanly: no segment was scanned.
    pub clean_shutdown: bool,
    /// Segments found on disk.
    pub segments: usize,
    /// Base offset of the segment that was scanned, if any.
    pub scanned_segment: Option<i64>,
    /// File position the scan started at (a validated index entry).
    pub scanned_from_bytes: u64,
    /// Bytes of batches validated by the scan.
    pub scanned_bytes: u64,
    /// Batches validated by the scan.
    pub scanned_batches: u64,
    /// Bytes cut off after the last valid batch: the torn or corrupt batch and whatever
    /// followed it in the file, preallocated space included.
    pub truncated_bytes: u64,
    /// Why the scan stopped before the end of the file, if it found something invalid.
    pub truncated_reason: Option<String>,
    /// Segments whose index files were missing or damaged and were rebuilt.
    pub rebuilt_indexes: Vec<i64>,
    /// Offset the producer state snapshot was taken at, if one was loaded.
    pub producer_snapshot_offset: Option<i64>,
    /// Batches read to bring producer state up to the log end.
    pub producer_batches_replayed: u64,
    /// Log start and end offsets after recovery.
    pub log_start_offset: i64,
    /// Log end offset after recovery.
    pub log_end_offset: i64,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segment(s), offsets [{}, {}), {}",
            self.segments,
            self.log_start_offset,
            self.log_end_offset,
            if self.clean_shutdown {
                "clean shutdown"
            } else {
                "unclean shutdown"
            }
        )?;
        if let Some(base) = self.scanned_segment {
            write!(
                f,
                "; scanned segment {base} from byte {}: {} batch(es), {} bytes valid",
                self.scanned_from_bytes, self.scanned_batches, self.scanned_bytes
            )?;
        }
        if self.truncated_bytes > 0 || self.truncated_reason.is_some() {
            write!(f, "; truncated {} bytes", self.truncated_bytes)?;
            if let Some(reason) = &self.truncated_reason {
                write!(f, " ({reason})")?;
            }
        }
        if !self.rebuilt_indexes.is_empty() {
            write!(
                f,
                "; rebuilt indexes of segments {:?}",
                self.rebuilt_indexes
            )?;
        }
        if let Some(offset) = self.producer_snapshot_offset {
            write!(f, "; producer snapshot at {offset}")?;
        }
        if self.producer_batches_replayed > 0 {
            write!(f, ", {} batch(es) replayed", self.producer_batches_replayed)?;
        }
        Ok(())
    }
}
