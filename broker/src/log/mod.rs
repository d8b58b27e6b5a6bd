//! TEMPORARY in-memory stand-in with the storage engine's API, so the front end can be
//! built and exercised before the real engine (branch `log`) is merged. Replaced at merge.
#![allow(dead_code, clippy::all)]

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_batch_bytes: u32,
    pub tail_cache_bytes: usize,
    pub write_buffer_bytes: usize,
    pub preallocate_bytes: u64,
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_batch_bytes: 1048588,
            tail_cache_bytes: 8 << 20,
            write_buffer_bytes: 1 << 20,
            preallocate_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("corrupt batch: {0}")]
    CorruptBatch(String),
    #[error("batch too large: {size} > {max}")]
    BatchTooLarge { size: usize, max: usize },
    #[error("unsupported magic {0}")]
    UnsupportedMagic(i8),
    #[error("offset {requested} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    #[error("duplicate sequence")]
    DuplicateSequence { producer_id: i64 },
    #[error("out of order sequence")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("invalid producer epoch")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed")]
    Closed,
}

#[derive(Debug, Clone)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub duplicate: bool,
}
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub chunks: Vec<Bytes>,
    pub bytes: usize,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}
#[derive(Debug, Default)]
pub struct RecoveryReport;
impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in-memory")
    }
}

pub struct PartitionLog {
    batches: RefCell<Vec<(i64, i64, Bytes)>>,
    end: Cell<i64>,
    config: RefCell<LogConfig>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl PartitionLog {
    pub async fn open(
        _dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<(Rc<PartitionLog>, RecoveryReport), LogError> {
        Ok((
            Rc::new(PartitionLog {
                batches: RefCell::new(vec![]),
                end: Cell::new(0),
                config: RefCell::new(config),
                waiters: RefCell::new(vec![]),
            }),
            RecoveryReport,
        ))
    }
    pub async fn append(&self, batches: Bytes, now_ms: i64) -> Result<AppendInfo, LogError> {
        let mut pos = 0;
        let base = self.end.get();
        let mut parsed = vec![];
        while pos < batches.len() {
            if batches.len() - pos < 61 {
                return Err(LogError::CorruptBatch("short".into()));
            }
            let len =
                i32::from_be_bytes(batches[pos + 8..pos + 12].try_into().unwrap()) as usize + 12;
            if pos + len > batches.len() {
                return Err(LogError::CorruptBatch("length".into()));
            }
            if batches[pos + 16] != 2 {
                return Err(LogError::UnsupportedMagic(batches[pos + 16] as i8));
            }
            let crc = u32::from_be_bytes(batches[pos + 17..pos + 21].try_into().unwrap());
            if crc32c::crc32c(&batches[pos + 21..pos + len]) != crc {
                return Err(LogError::CorruptBatch("crc".into()));
            }
            if len > self.config.borrow().max_batch_bytes as usize {
                return Err(LogError::BatchTooLarge {
                    size: len,
                    max: self.config.borrow().max_batch_bytes as usize,
                });
            }
            let delta = i32::from_be_bytes(batches[pos + 23..pos + 27].try_into().unwrap()) as i64;
            parsed.push((pos, len, delta));
            pos += len;
        }
        let mut next = base;
        for (pos, len, delta) in parsed {
            let mut b = batches.slice(pos..pos + len).to_vec();
            b[0..8].copy_from_slice(&next.to_be_bytes());
            self.batches
                .borrow_mut()
                .push((next, next + delta, Bytes::from(b)));
            next += delta + 1;
        }
        self.end.set(next);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        Ok(AppendInfo {
            base_offset: base,
            last_offset: next - 1,
            log_append_time_ms: now_ms,
            log_start_offset: 0,
            duplicate: false,
        })
    }
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, LogError> {
        if offset < 0 || offset > self.end.get() {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start: 0,
                end: self.end.get(),
            });
        }
        let mut r = ReadResult {
            log_end_offset: self.end.get(),
            ..Default::default()
        };
        for (base, last, b) in self.batches.borrow().iter() {
            let _ = base;
            if *last < offset {
                continue;
            }
            if !r.chunks.is_empty() && r.bytes + b.len() > max_bytes {
                break;
            }
            r.bytes += b.len();
            r.chunks.push(b.clone());
        }
        Ok(r)
    }
    pub fn log_start_offset(&self) -> i64 {
        0
    }
    pub fn log_end_offset(&self) -> i64 {
        self.end.get()
    }
    pub fn durable_offset(&self) -> i64 {
        self.end.get()
    }
    pub async fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<(i64, i64)>, LogError> {
        for (base, _, b) in self.batches.borrow().iter() {
            let max_ts = i64::from_be_bytes(b[35..43].try_into().unwrap());
            if max_ts >= ts_ms {
                return Ok(Some((*base, max_ts)));
            }
        }
        Ok(None)
    }
    pub async fn wait_for_data(&self, offset: i64, deadline: Instant) -> bool {
        loop {
            if self.end.get() > offset {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let waiters = &self.waiters;
            let wait = std::future::poll_fn(|cx| {
                waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Ready(())
            });
            wait.await;
            let _ =
                glommio::timer::sleep((deadline - now).min(std::time::Duration::from_millis(5)))
                    .await;
        }
    }
    pub async fn flush(&self) -> Result<i64, LogError> {
        Ok(self.end.get())
    }
    pub fn dirty_bytes(&self) -> u64 {
        0
    }
    pub async fn apply_retention(&self, _now_ms: i64) -> Result<usize, LogError> {
        Ok(0)
    }
    pub fn set_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
    }
    pub async fn close(&self) -> Result<(), LogError> {
        Ok(())
    }
    pub async fn delete(&self) -> Result<(), LogError> {
        Ok(())
    }
}

pub struct ShardStorage;
impl ShardStorage {
    pub fn new(_flush_interval_ms: u64, _flush_bytes: u64) -> Rc<ShardStorage> {
        Rc::new(ShardStorage)
    }
    pub fn register(&self, _log: &Rc<PartitionLog>) {}
    pub fn unregister(&self, _log: &Rc<PartitionLog>) {}
    pub async fn wait_durable(
        &self,
        _log: &Rc<PartitionLog>,
        _offset: i64,
    ) -> Result<(), LogError> {
        Ok(())
    }
    pub async fn run_background(self: Rc<Self>, _retention_check_interval_ms: u64) {}
}
