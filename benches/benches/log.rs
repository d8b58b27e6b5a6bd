//! Storage engine throughput on one shard, against a raw sequential `DmaFile` write of the
//! same block size on the same disk, measured in the same run.
//!
//! `cargo bench -p shardlog-benches --bench log` (pin with `taskset -c 1` if useful).
//!
//! Criterion runs on the main thread; every measurement runs on one glommio executor
//! thread that receives "run N iterations" commands and answers with the elapsed time.
//! Each append iteration re-appends the same batch of 1000 records of 100 B, built once
//! with kafka-protocol's encoder; each raw iteration writes the same number of bytes.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shardlog::log::{probe_direct_io, LogConfig, PartitionLog, ShardStorage};

const RECORDS_PER_BATCH: usize = 1000;
const RECORD_VALUE_BYTES: usize = 100;
/// Staging buffer and raw write block: the same size, so the baseline is like for like.
const BLOCK_BYTES: usize = 1 << 20;
/// Segments and raw files roll at this size; old ones are deleted to bound disk use.
const FILE_BYTES: u64 = 128 << 20;
const PREALLOCATE_BYTES: u64 = 64 << 20;
/// Producers waiting for durability at once in the acks=all bench.
const ACKS_ALL_PRODUCERS: usize = 32;
/// Data written before the read benches, and the read size per fetch.
const READ_SET_BYTES: u64 = 128 << 20;
const FETCH_BYTES: usize = 1 << 20;

fn batch() -> Bytes {
    let records: Vec<Record> = (0..RECORDS_PER_BATCH)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(vec![b'x'; RECORD_VALUE_BYTES])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
    buf.freeze()
}

#[derive(Clone, Copy, Debug)]
enum Bench {
    Raw,
    Append,
    AppendGroupCommit5ms,
    AppendAcksAll,
    ReadTailCache,
    ReadDisk,
}

struct Command {
    bench: Bench,
    iters: u64,
    reply: mpsc::Sender<Duration>,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: FILE_BYTES,
        retention_bytes: FILE_BYTES as i64,
        retention_ms: -1,
        write_buffer_bytes: BLOCK_BYTES,
        preallocate_bytes: PREALLOCATE_BYTES,
        tail_cache_bytes: 8 << 20,
        ..LogConfig::default()
    }
}

/// Sequential O_DIRECT writes of `BLOCK_BYTES` into files preallocated in the same steps,
/// one write in flight, rolling files like segments: the log's writer minus everything else.
struct RawWriter {
    dir: PathBuf,
    file: Option<DmaFile>,
    files: u64,
    pos: u64,
    allocated: u64,
    buf: Option<Rc<glommio::io::DmaBuffer>>,
}

impl RawWriter {
    async fn write_block(&mut self) {
        if self.file.is_none() || self.pos + BLOCK_BYTES as u64 > FILE_BYTES {
            if let Some(old) = self.file.take() {
                old.close().await.unwrap();
            }
            let path = self.dir.join(format!("raw-{}", self.files));
            self.files += 1;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .dma_open(&path)
                .await
                .unwrap();
            self.file = Some(f);
            self.pos = 0;
            self.allocated = 0;
        }
        let f = self.file.as_ref().unwrap();
        if self.pos + BLOCK_BYTES as u64 > self.allocated {
            self.allocated += PREALLOCATE_BYTES;
            f.pre_allocate(self.allocated, false).await.unwrap();
        }
        // One buffer, filled once and reused: the baseline pays no allocation or copy.
        let buf = match self.buf.take() {
            Some(buf) => buf,
            None => {
                let mut buf = f.alloc_dma_buffer(BLOCK_BYTES);
                buf.as_bytes_mut().fill(0x5a);
                Rc::new(buf)
            }
        };
        f.write_rc_at(buf.clone(), self.pos).await.unwrap();
        self.buf = Some(buf);
        self.pos += BLOCK_BYTES as u64;
    }

    /// Deletes all but the last two files, outside the timed part like log retention.
    fn cleanup(&self) {
        for old in 0..self.files.saturating_sub(2) {
            let _ = std::fs::remove_file(self.dir.join(format!("raw-{old}")));
        }
    }
}

async fn fill(log: &PartitionLog, batch: &Bytes, bytes: u64) {
    let mut written = 0;
    while written < bytes {
        log.append(batch.clone(), 0).await.unwrap();
        written += batch.len() as u64;
    }
    log.flush().await.unwrap();
}

async fn open(dir: &Path, name: &str, config: LogConfig) -> Rc<PartitionLog> {
    let (log, _) = PartitionLog::open(dir.join(name), config).await.unwrap();
    log
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// CPU time of the calling thread (user, system), from /proc, in clock ticks of 10 ms.
fn thread_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    (
        Duration::from_millis(ticks(11) * 10),
        Duration::from_millis(ticks(12) * 10),
    )
}

/// The disk here is shared with other work and its speed swings by several times within
/// a minute, so criterion's one-after-the-other figures are compared to a baseline taken
/// at another moment. This alternates short rounds of raw writes and appends of the same
/// byte count, so each ratio compares runs seconds apart.
async fn interleaved(
    raw: &mut RawWriter,
    plain: &PartitionLog,
    grouped: &PartitionLog,
    batch: &Bytes,
) {
    const ROUNDS: usize = 24;
    const ROUND_BYTES: u64 = 32 << 20;
    let mut times = [Duration::ZERO; 3];
    let mut append_cpu = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        // Rotate the order so no kind always follows file deletions or another's leftovers.
        for kind in (0..3).map(|k| (k + round) % 3) {
            let cpu = thread_cpu();
            let started = Instant::now();
            if kind == 0 {
                for _ in 0..ROUND_BYTES / BLOCK_BYTES as u64 {
                    raw.write_block().await;
                }
            } else {
                let log = if kind == 1 { plain } else { grouped };
                let mut written = 0;
                while written < ROUND_BYTES {
                    log.append(batch.clone(), 0).await.unwrap();
                    written += batch.len() as u64;
                }
            }
            times[kind] += started.elapsed();
            if kind == 1 {
                let now = thread_cpu();
                append_cpu.0 += now.0 - cpu.0;
                append_cpu.1 += now.1 - cpu.1;
            }
        }
        plain.apply_retention(now_ms()).await.unwrap();
        grouped.apply_retention(now_ms()).await.unwrap();
        raw.cleanup();
    }
    let rate =
        |t: Duration| (ROUNDS as u64 * ROUND_BYTES) as f64 / t.as_secs_f64() / (1 << 20) as f64;
    println!("\ninterleaved: {ROUNDS} rounds of {} MiB each (raw write, append, append with 5 ms group commit; order rotated)", ROUND_BYTES >> 20);
    println!("  raw_dma_write           {:>8.1} MiB/s", rate(times[0]));
    println!(
        "  append_no_fsync         {:>8.1} MiB/s  {:.2} x raw",
        rate(times[1]),
        times[0].as_secs_f64() / times[1].as_secs_f64()
    );
    println!(
        "  append_group_commit_5ms {:>8.1} MiB/s  {:.2} x raw",
        rate(times[2]),
        times[0].as_secs_f64() / times[2].as_secs_f64()
    );
    let gib = (ROUNDS as u64 * ROUND_BYTES) as f64 / (1u64 << 30) as f64;
    println!(
        "  append CPU on the shard thread per GiB appended: user {:.2} s, system {:.2} s (wall {:.2} s)",
        append_cpu.0.as_secs_f64() / gib,
        append_cpu.1.as_secs_f64() / gib,
        times[1].as_secs_f64() / gib
    );
}

/// The executor thread: owns every log and file, runs commands until the channel closes.
async fn serve(dir: PathBuf, commands: mpsc::Receiver<Command>) {
    probe_direct_io(&dir).await.unwrap();
    let batch = batch();
    let mut raw = RawWriter {
        dir: dir.join("raw"),
        file: None,
        files: 0,
        pos: 0,
        allocated: 0,
        buf: None,
    };
    std::fs::create_dir_all(&raw.dir).unwrap();
    let plain = open(&dir, "append", config()).await;
    let grouped = open(&dir, "group", config()).await;
    let acks = open(&dir, "acks", config()).await;
    let background = ShardStorage::new(5, u64::MAX);
    background.register(&grouped);
    let background_task = glommio::spawn_local(background.clone().run_background(u64::MAX / 2));
    let acks_storage = ShardStorage::new(5, u64::MAX);
    acks_storage.register(&acks);
    let cached = open(
        &dir,
        "cached",
        LogConfig {
            tail_cache_bytes: 64 << 20,
            ..config()
        },
    )
    .await;
    fill(&cached, &batch, 48 << 20).await;
    let cold = open(
        &dir,
        "cold",
        LogConfig {
            tail_cache_bytes: 0,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            ..config()
        },
    )
    .await;
    fill(&cold, &batch, READ_SET_BYTES).await;
    let mut cached_offset = cached.log_start_offset();
    let mut cold_offset = cold.log_start_offset();

    let mut totals: std::collections::BTreeMap<String, (u64, Duration)> = Default::default();
    while let Ok(Command {
        bench,
        iters,
        reply,
    }) = commands.recv()
    {
        let started = Instant::now();
        let mut bytes = iters * batch.len() as u64;
        match bench {
            Bench::Raw => {
                for _ in 0..iters {
                    raw.write_block().await;
                }
                bytes = iters * BLOCK_BYTES as u64;
            }
            Bench::Append => {
                for _ in 0..iters {
                    plain.append(batch.clone(), 0).await.unwrap();
                }
            }
            Bench::AppendGroupCommit5ms => {
                for _ in 0..iters {
                    grouped.append(batch.clone(), 0).await.unwrap();
                }
            }
            Bench::AppendAcksAll => {
                let tasks: Vec<_> = (0..ACKS_ALL_PRODUCERS as u64)
                    .map(|p| {
                        let (log, storage, batch) =
                            (acks.clone(), acks_storage.clone(), batch.clone());
                        let n = iters / ACKS_ALL_PRODUCERS as u64
                            + u64::from(p < iters % ACKS_ALL_PRODUCERS as u64);
                        glommio::spawn_local(async move {
                            for _ in 0..n {
                                let info = log.append(batch.clone(), 0).await.unwrap();
                                storage.wait_durable(&log, info.last_offset).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            }
            Bench::ReadTailCache => {
                let mut fetched = 0;
                for _ in 0..iters {
                    if cached_offset >= cached.log_end_offset() {
                        cached_offset = cached.log_start_offset();
                    }
                    let r = cached.read(cached_offset, FETCH_BYTES).await.unwrap();
                    fetched += r.bytes as u64;
                    cached_offset += (r.bytes / batch.len()) as i64 * RECORDS_PER_BATCH as i64;
                }
                bytes = fetched;
            }
            Bench::ReadDisk => {
                let mut fetched = 0;
                for _ in 0..iters {
                    if cold_offset >= cold.log_end_offset() {
                        cold_offset = cold.log_start_offset();
                    }
                    let r = cold.read(cold_offset, FETCH_BYTES).await.unwrap();
                    fetched += r.bytes as u64;
                    cold_offset += (r.bytes / batch.len()) as i64 * RECORDS_PER_BATCH as i64;
                }
                bytes = fetched;
            }
        }
        let elapsed = started.elapsed();
        let total = totals
            .entry(format!("{bench:?}"))
            .or_insert((0u64, Duration::ZERO));
        total.0 += bytes;
        total.1 += elapsed;
        // Keep disk use bounded; outside the timed part.
        raw.cleanup();
        for log in [&plain, &grouped, &acks] {
            log.apply_retention(now_ms()).await.unwrap();
        }
        reply.send(elapsed).unwrap();
    }
    interleaved(&mut raw, &plain, &grouped, &batch).await;
    // Every iteration criterion ran, warm-up included, summed per bench: the ratios
    // against the raw baseline of this same run.
    let rate =
        |(bytes, time): (u64, Duration)| bytes as f64 / time.as_secs_f64() / (1 << 20) as f64;
    let raw_rate = totals.get("Raw").map(|t| rate(*t)).unwrap_or(f64::NAN);
    println!("\nsummary (all iterations, MiB/s and ratio to raw_dma_write of this run):");
    for (name, total) in &totals {
        println!(
            "  {name:<22} {:>9.1} MiB/s  {:>6.2} x raw",
            rate(*total),
            rate(*total) / raw_rate
        );
    }
    background.stop();
    background_task.await;
    for log in [plain, grouped, acks, cached, cold] {
        log.delete().await.unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let (tx, rx) = mpsc::channel::<Command>();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .name("bench-shard")
        .spawn(move || serve(dir, rx))
        .expect("executor");
    let batch_bytes = batch().len() as u64;
    let run = |bench: Bench, iters: u64| {
        let (reply, answer) = mpsc::channel();
        tx.send(Command {
            bench,
            iters,
            reply,
        })
        .unwrap();
        answer.recv().unwrap()
    };

    let mut group = c.benchmark_group("log");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    group.bench_function("raw_dma_write_1MiB_blocks", |b| {
        b.iter_custom(|iters| run(Bench::Raw, iters))
    });
    group.throughput(Throughput::Bytes(batch_bytes));
    for (name, bench) in [
        ("append_no_fsync", Bench::Append),
        ("append_group_commit_5ms", Bench::AppendGroupCommit5ms),
        ("append_acks_all_32_producers", Bench::AppendAcksAll),
    ] {
        group.bench_function(name, |b| b.iter_custom(|iters| run(bench, iters)));
    }
    // A fetch returns whole batches up to FETCH_BYTES.
    group.throughput(Throughput::Bytes(
        (FETCH_BYTES as u64 / batch_bytes).max(1) * batch_bytes,
    ));
    group.bench_function("read_tail_cache_1MiB", |b| {
        b.iter_custom(|iters| run(Bench::ReadTailCache, iters))
    });
    group.bench_function("read_disk_1MiB", |b| {
        b.iter_custom(|iters| run(Bench::ReadDisk, iters))
    });
    // The disk is shared: measure the baseline again at the end; the summary averages both.
    group.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    group.bench_function("raw_dma_write_1MiB_blocks_again", |b| {
        b.iter_custom(|iters| run(Bench::Raw, iters))
    });
    group.finish();
    drop(tx);
    executor.join().expect("bench executor");
}

criterion_group!(log_benches, benches);
criterion_main!(log_benches);
