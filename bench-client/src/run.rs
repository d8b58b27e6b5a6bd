//! One run of a workload (produce, consume or e2e): plan connections over workers, start the
//! pinned workers, print progress each second, stop, merge and verify.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use crate::batch::{parse_compression, Payloads, VALUE_HEADER_BYTES};
use crate::proto::Control;
use crate::stats::{fmt_rate, fmt_us, new_histogram, RunResult, SideResult};
use crate::verify::{check_acks, check_consumed_all, Faults};
use crate::worker::{self, now_ns, ConsumerPlan, ProducerPlan, Shared, SizeClass, Workload};

/// What to run and how hard.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// Broker address to bootstrap from.
    #[arg(
        long,
        env = "SHARDLOG_BENCH_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Topic; created with --partitions if missing.
    #[arg(long, default_value = "shardlog-bench")]
    pub topic: String,
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Bytes of each message value (at least 24: producer id, sequence, send time, checksum).
    #[arg(long, default_value_t = 100)]
    pub message_bytes: usize,
    /// Mixed sizes on every connection: besides batches of --message-bytes values, send
    /// batches of values this large, in a repeating cycle of 8 small batches, 8 large ones,
    /// then 8 alternating (small then large, and interleaved). 0: one size only. With many
    /// requests in flight this is the pattern that makes a large append wait for the disk
    /// while later requests arrive: the run checks they are still stored in send order.
    #[arg(long, default_value_t = 0)]
    pub large_message_bytes: usize,
    /// Records per batch (capped so a batch stays under --batch-bytes-max).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_bytes_max: usize,
    /// With --rate: send a partial batch once its first message has waited this long.
    #[arg(long, default_value_t = 1.0)]
    pub linger_ms: f64,
    /// 0, 1, or all (-1).
    #[arg(long, default_value = "1")]
    pub acks: String,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Connections per producer; each connection is a producer identity with its own partitions.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Consumer connections; partitions are split among them.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 4)]
    pub inflight: usize,
    /// Measured seconds (after warm-up). Default 10 for produce and e2e; consume reads to the end.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Total messages to produce (or consume) instead of a duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds before measuring starts (default 1 with a duration, else 0).
    #[arg(long)]
    pub warmup_s: Option<f64>,
    /// Target messages per second over all producers: open loop, latency from intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Worker threads, one pinned per core of those this process may use.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    #[arg(long, default_value_t = 32 << 20)]
    pub fetch_max_bytes: i32,
    #[arg(long, default_value_t = 4 << 20)]
    pub partition_max_bytes: i32,
    #[arg(long, default_value_t = 100)]
    pub fetch_max_wait_ms: i32,
    /// Seconds to wait for in-flight requests and consumers to catch up after producing stops.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout_s: f64,
    /// produce/e2e: write what the broker acknowledged here; consume: check that all of it is
    /// read back (for durability tests across a broker crash and restart).
    #[arg(long)]
    pub manifest: Option<std::path::PathBuf>,
    /// Cap the negotiated Produce version (to exercise a broker's older versions).
    #[arg(long)]
    pub max_produce_version: Option<i16>,
    /// Cap the negotiated Fetch version.
    #[arg(long)]
    pub max_fetch_version: Option<i16>,
    /// Print the result as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Which sides run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Produce,
    Consume,
    EndToEnd,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::EndToEnd => "e2e",
        }
    }
}

fn parse_acks(s: &str) -> Result<i16> {
    Ok(match s {
        "all" | "-1" => -1,
        "0" => 0,
        "1" => 1,
        other => bail!("--acks {other:?}: 0, 1 or all"),
    })
}

/// Runs the workload and returns its verified result.
pub fn run(args: &WorkloadArgs, mode: Mode) -> Result<RunResult> {
    let acks = parse_acks(&args.acks)?;
    let compression = parse_compression(&args.compression)?;
    ensure!(
        args.message_bytes >= VALUE_HEADER_BYTES,
        "--message-bytes must be at least {VALUE_HEADER_BYTES}"
    );
    ensure!(
        args.large_message_bytes == 0 || args.large_message_bytes >= VALUE_HEADER_BYTES,
        "--large-message-bytes must be 0 or at least {VALUE_HEADER_BYTES}"
    );
    let records_per_batch = |message_bytes: usize| {
        let record_bytes_max = message_bytes + 16;
        args.batch_records
            .min((args.batch_bytes_max / record_bytes_max).max(1))
            .max(1)
    };
    let batch_records = records_per_batch(args.message_bytes);
    let large = match args.large_message_bytes {
        0 => None,
        bytes => Some(SizeClass {
            payloads: Payloads::new(bytes)?,
            batch_records: records_per_batch(bytes),
        }),
    };
    let mut control = Control::connect(&args.bootstrap, Duration::from_secs(10))?;
    let layout = control.ensure_topic(&args.topic, args.partitions, Duration::from_secs(30))?;
    let partitions: Vec<i32> = (0..layout.leaders.len() as i32).collect();
    let mut v = control.versions;
    if let Some(max) = args.max_produce_version {
        ensure!(
            (3..=v.produce).contains(&max),
            "--max-produce-version {max}: the bench and broker share 3..{}",
            v.produce
        );
        v.produce = max;
    }
    if let Some(max) = args.max_fetch_version {
        ensure!(
            (4..=v.fetch).contains(&max),
            "--max-fetch-version {max}: the bench and broker share 4..{}",
            v.fetch
        );
        v.fetch = max;
    }
    let produce = mode != Mode::Consume;
    let consume = mode != Mode::Produce;

    let cores: Vec<Option<core_affinity::CoreId>> = match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids
            .into_iter()
            .cycle()
            .take(args.cores.max(1))
            .map(Some)
            .collect(),
        _ => vec![None; args.cores.max(1)],
    };
    let workers = cores.len();

    // Producer connections: partitions split over producers, then over each producer's
    // connections, never mixing leaders on one connection.
    let mut producer_plans: Vec<Vec<ProducerPlan>> = (0..workers).map(|_| Vec::new()).collect();
    let mut producer_conns = 0usize;
    if produce {
        let mut plans = Vec::new();
        for p in 0..args.producers.max(1) {
            let mine: Vec<i32> = if partitions.len() >= args.producers {
                partitions
                    .iter()
                    .copied()
                    .filter(|q| *q as usize % args.producers == p)
                    .collect()
            } else {
                vec![partitions[p % partitions.len()]]
            };
            let mut by_leader: HashMap<&str, Vec<i32>> = HashMap::new();
            for q in mine {
                by_leader
                    .entry(layout.leaders[q as usize].as_str())
                    .or_default()
                    .push(q);
            }
            for (leader, qs) in by_leader {
                let conns = args.connections.max(1).min(qs.len());
                for c in 0..conns {
                    let subset: Vec<i32> = qs
                        .iter()
                        .copied()
                        .enumerate()
                        .filter(|(i, _)| i % conns == c)
                        .map(|(_, q)| q)
                        .collect();
                    plans.push((leader.to_string(), subset));
                }
            }
        }
        producer_conns = plans.len();
        let pid_base = (now_ns() as u32 ^ (std::process::id() << 20)) & !0xfff;
        for (i, (address, subset)) in plans.into_iter().enumerate() {
            let messages_max = args.messages.map(|m| {
                m / producer_conns as u64 + u64::from((i as u64) < m % producer_conns as u64)
            });
            producer_plans[i % workers].push(ProducerPlan {
                address,
                producer_id: pid_base.wrapping_add(i as u32),
                partitions: subset,
                rate_per_s: args.rate.map(|r| r / producer_conns as f64),
                messages_max,
            });
        }
    }

    // Consumers start at the log start (consume) or at the end (e2e: only this run's messages).
    let start_offsets = if consume {
        control.list_offsets(
            &args.topic,
            &partitions,
            if mode == Mode::Consume { -2 } else { -1 },
        )?
    } else {
        Vec::new()
    };
    let targets: Vec<AtomicI64> = partitions
        .iter()
        .map(|_| AtomicI64::new(i64::MAX))
        .collect();
    if mode == Mode::Consume {
        let ends = control.list_offsets(&args.topic, &partitions, -1)?;
        for (t, e) in targets.iter().zip(&ends) {
            t.store(*e, Ordering::Relaxed);
        }
        let available: i64 = ends.iter().zip(&start_offsets).map(|(e, s)| e - s).sum();
        ensure!(
            available > 0,
            "topic {} is empty: run produce first",
            args.topic
        );
    }
    let mut consumer_plans: Vec<Vec<ConsumerPlan>> = (0..workers).map(|_| Vec::new()).collect();
    if consume {
        let n = args.consumers.max(1).min(partitions.len());
        let mut plans = Vec::new();
        for c in 0..n {
            let mut by_leader: HashMap<&str, Vec<(i32, i64, bool)>> = HashMap::new();
            for &q in partitions.iter().filter(|q| **q as usize % n == c) {
                let start = start_offsets[q as usize];
                // From offset 0 every producer must start at sequence 0; mid-log, anywhere.
                let strict = start == 0 || mode == Mode::EndToEnd;
                by_leader
                    .entry(layout.leaders[q as usize].as_str())
                    .or_default()
                    .push((q, start, strict));
            }
            for (leader, qs) in by_leader {
                plans.push((leader.to_string(), qs));
            }
        }
        let consumer_conns = plans.len() as u64;
        for (i, (address, parts)) in plans.into_iter().enumerate() {
            let messages_max = if mode == Mode::Consume {
                args.messages.map(|m| m.div_ceil(consumer_conns))
            } else {
                None
            };
            // Spread consumers away from the producers' workers when there are several.
            consumer_plans[(i + producer_conns) % workers].push(ConsumerPlan {
                address,
                partitions: parts,
                messages_max,
            });
        }
    }

    let workload = Arc::new(Workload {
        topic: args.topic.clone(),
        acks,
        request_timeout_ms: 30_000,
        batch_records,
        linger_ns: (args.linger_ms * 1e6) as u64,
        compression,
        inflight_max: args.inflight.max(1),
        payloads: Payloads::new(args.message_bytes)?,
        large,
        produce_version: v.produce,
        fetch_version: v.fetch,
        fetch_max_bytes: args.fetch_max_bytes,
        partition_max_bytes: args.partition_max_bytes,
        fetch_max_wait_ms: args.fetch_max_wait_ms,
        end_to_end: mode == Mode::EndToEnd,
    });
    let duration_s = match (args.duration_s, args.messages, mode) {
        (Some(d), _, _) => Some(d),
        (None, None, Mode::Produce | Mode::EndToEnd) => Some(10.0),
        _ => None,
    };
    let warmup_s = args
        .warmup_s
        .unwrap_or(if duration_s.is_some() { 1.0 } else { 0.0 });
    let cpu_start_s = cpu_seconds();
    let start_ns = now_ns();
    let measure_from_ns = start_ns + (warmup_s * 1e9) as u64;
    let shared = Arc::new(Shared {
        stop_producing: AtomicBool::new(false),
        stop_consuming: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        consume_targets: targets,
        measure_from_ns,
        measure_until_ns: AtomicU64::new(u64::MAX),
        producers_done: AtomicUsize::new(0),
    });
    if !args.quiet {
        eprintln!(
            "{} {} on {} ({} partitions): {} B messages, {} records/batch, acks {}, {} producer and {} consumer connections on {} workers; versions produce v{} fetch v{} metadata v{}",
            mode.name(),
            args.topic,
            args.bootstrap,
            partitions.len(),
            args.message_bytes,
            batch_records,
            acks,
            producer_conns,
            consumer_plans.iter().map(Vec::len).sum::<usize>(),
            workers,
            v.produce,
            v.fetch,
            v.metadata
        );
    }

    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, ((core, pp), cp)) in cores
        .into_iter()
        .zip(producer_plans)
        .zip(consumer_plans)
        .enumerate()
    {
        let (w, s, tx) = (workload.clone(), shared.clone(), tx.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-worker-{i}"))
                .spawn(move || worker::run(i, core, pp, cp, w, s, tx))
                .context("spawning a worker")?,
        );
    }
    drop(tx);

    // Control loop: progress each second, stop producing at the deadline, then drain.
    let stop_at_ns = duration_s.map(|d| measure_from_ns + (d * 1e9) as u64);
    let mut stopped_ns: Option<u64> = None;
    let mut second = 0u64;
    let mut acc = Progress::default();
    let mut drain_deadline_ns = u64::MAX;
    loop {
        let now = now_ns();
        if let (Some(stop), None) = (stop_at_ns, stopped_ns) {
            if now >= stop {
                shared.measure_until_ns.store(stop, Ordering::Relaxed);
                shared.stop_producing.store(true, Ordering::Relaxed);
                if mode == Mode::Consume {
                    shared.stop_consuming.store(true, Ordering::Relaxed);
                }
                stopped_ns = Some(stop);
            }
        }
        if produce
            && stopped_ns.is_none()
            && shared.producers_done.load(Ordering::Relaxed) == producer_conns
        {
            // A message count was reached: the window ends now.
            shared.measure_until_ns.store(now, Ordering::Relaxed);
            shared.stop_producing.store(true, Ordering::Relaxed);
            stopped_ns = Some(now);
        }
        if let Some(stop) = stopped_ns {
            if drain_deadline_ns == u64::MAX {
                drain_deadline_ns = stop + (args.drain_timeout_s * 1e9) as u64;
            }
            if mode == Mode::EndToEnd
                && shared.producers_done.load(Ordering::Relaxed) == producer_conns
                && shared
                    .consume_targets
                    .iter()
                    .any(|t| t.load(Ordering::Relaxed) == i64::MAX)
            {
                let ends = control.list_offsets(&args.topic, &partitions, -1)?;
                for (t, e) in shared.consume_targets.iter().zip(&ends) {
                    t.store(*e, Ordering::Relaxed);
                }
            }
        } else if mode == Mode::Consume && duration_s.is_none() && drain_deadline_ns == u64::MAX {
            drain_deadline_ns =
                start_ns + ((warmup_s + args.drain_timeout_s.max(60.0)) * 1e9) as u64;
        }
        if now >= drain_deadline_ns {
            eprintln!("drain timeout: aborting; unfinished work counts as lost");
            shared.abort.store(true, Ordering::Relaxed);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(s) => acc.add(s),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let elapsed_s = (now_ns() - start_ns) / 1_000_000_000;
        if elapsed_s > second {
            if !args.quiet {
                acc.print(second + 1, now_ns() < measure_from_ns);
            }
            acc = Progress::default();
            second = elapsed_s;
        }
    }
    let end_ns = now_ns();
    let results: Vec<worker::WorkerResult> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();

    // Merge and verify.
    let mut faults = Faults::default();
    let mut acks_all = Vec::new();
    let mut acked_next = HashMap::new();
    let mut consumed_next = HashMap::new();
    let mut consumed_offsets = HashMap::new();
    let mut produce_side = SideResult {
        name: "produce",
        messages: 0,
        bytes: 0,
        seconds: 0.0,
        latency: new_histogram(),
        latency_meaning: "",
    };
    let mut consume_side = SideResult {
        name: "consume",
        messages: 0,
        bytes: 0,
        seconds: 0.0,
        latency: new_histogram(),
        latency_meaning: "",
    };
    let mut checked = 0;
    let mut last_consume_ns = 0;
    for r in results {
        if let Some(e) = &r.error {
            eprintln!("worker error: {e}");
        }
        faults.add(&r.faults);
        acks_all.extend(r.acks);
        acked_next.extend(r.acked_next);
        consumed_next.extend(r.consumed_next);
        consumed_offsets.extend(r.consumed_offsets);
        produce_side.messages += r.produced;
        produce_side.bytes += r.produced_bytes;
        consume_side.messages += r.consumed;
        consume_side.bytes += r.consumed_bytes;
        if let Some(h) = r.produce_latency {
            produce_side.latency.add(h).ok();
        }
        if let Some(h) = r.consume_latency {
            consume_side.latency.add(h).ok();
        }
        checked += r.checked;
        last_consume_ns = last_consume_ns.max(r.last_consume_ns);
    }
    let window_end = shared.measure_until_ns.load(Ordering::Relaxed).min(end_ns);
    produce_side.seconds = window_end.saturating_sub(measure_from_ns) as f64 / 1e9;
    consume_side.seconds = window_end
        .min(last_consume_ns.max(measure_from_ns))
        .saturating_sub(measure_from_ns) as f64
        / 1e9;
    produce_side.latency_meaning = if args.rate.is_some() {
        "ack - intended send time"
    } else {
        "ack - batch creation"
    };
    consume_side.latency_meaning = if mode == Mode::EndToEnd {
        "receipt - intended send time"
    } else {
        "fetch round trip"
    };

    if produce && acks != 0 {
        faults.add(&check_acks(&mut acks_all));
    }
    if mode == Mode::EndToEnd {
        faults.add(&check_consumed_all(&acked_next, &consumed_next));
    }
    if let Some(path) = &args.manifest {
        if produce {
            write_manifest(path, &acked_next)?;
        } else {
            let acked = read_manifest(path)?;
            let missing = check_consumed_all(&acked, &consumed_next);
            if missing.lost > 0 {
                eprintln!(
                    "{} acknowledged messages of {} were not read back",
                    missing.lost,
                    path.display()
                );
            }
            faults.add(&missing);
        }
    }
    if consume {
        for (&p, target) in partitions.iter().zip(shared.consume_targets.iter()) {
            let target = target.load(Ordering::Relaxed);
            let reached = consumed_offsets.get(&p).copied().unwrap_or(0);
            // Stopped by --messages or --duration-s: the rest of the log was never asked for.
            if mode == Mode::Consume
                && args.messages.is_none()
                && !shared.stop_consuming.load(Ordering::Relaxed)
                && target != i64::MAX
                && reached < target
            {
                faults.lost += (target - reached) as u64;
            }
        }
    }
    let aborted = shared.abort.load(Ordering::Relaxed);
    let something_checked = match mode {
        Mode::Produce => acks == 0 || !acks_all.is_empty(),
        _ => checked > 0,
    };
    let mut sides = Vec::new();
    if produce {
        sides.push(produce_side);
    }
    if consume {
        sides.push(consume_side);
    }
    let handled = acks_all.iter().map(|a| a.count as u64).sum::<u64>() + checked;
    Ok(RunResult {
        bench_cpu_s: cpu_seconds() - cpu_start_s,
        handled,
        mode: mode.name().to_string(),
        sides,
        verified: faults.total() == 0 && !aborted && something_checked,
        faults,
        checked,
    })
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Manifest lines: `partition producer_id next_sequence`, one per acknowledged stream.
fn write_manifest(path: &std::path::Path, acked: &HashMap<(i32, u32), u64>) -> Result<()> {
    let mut text = String::new();
    for ((partition, pid), next) in acked {
        text.push_str(&format!("{partition} {pid} {next}\n"));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_manifest(path: &std::path::Path) -> Result<HashMap<(i32, u32), u64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 3, "bad manifest line {line:?}");
        out.insert((f[0].parse()?, f[1].parse()?), f[2].parse()?);
    }
    Ok(out)
}

/// Sums of one second of snapshots.
#[derive(Default)]
struct Progress {
    produced: u64,
    produced_bytes: u64,
    consumed: u64,
    consumed_bytes: u64,
    produce_latency: Option<hdrhistogram::Histogram<u64>>,
    consume_latency: Option<hdrhistogram::Histogram<u64>>,
}

impl Progress {
    fn add(&mut self, s: crate::stats::Snapshot) {
        self.produced += s.produced;
        self.produced_bytes += s.produced_bytes;
        self.consumed += s.consumed;
        self.consumed_bytes += s.consumed_bytes;
        match &mut self.produce_latency {
            Some(h) => drop(h.add(&s.produce_latency)),
            None => self.produce_latency = Some(s.produce_latency),
        }
        match &mut self.consume_latency {
            Some(h) => drop(h.add(&s.consume_latency)),
            None => self.consume_latency = Some(s.consume_latency),
        }
    }

    fn print(&self, second: u64, warmup: bool) {
        let p99 = |h: &Option<hdrhistogram::Histogram<u64>>| {
            h.as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| fmt_us(h.value_at_percentile(99.0)))
                .unwrap_or_else(|| "-".into())
        };
        eprintln!(
            "[{second:>3}s]{} produce {:>8} msg/s {:>8.1} MB/s p99 {:>9} | consume {:>8} msg/s {:>8.1} MB/s p99 {:>9}",
            if warmup { " warmup" } else { "       " },
            fmt_rate(self.produced as f64),
            self.produced_bytes as f64 / 1e6,
            p99(&self.produce_latency),
            fmt_rate(self.consumed as f64),
            self.consumed_bytes as f64 / 1e6,
            p99(&self.consume_latency),
        );
    }
}

// End-to-end against the real broker, each test on its own fresh one. What a faulty broker
// would do (lose, repeat, reorder, corrupt) is proved on crafted record sets in verify.rs.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::TestBroker;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        w: WorkloadArgs,
    }

    fn args(address: &str, extra: &[&str]) -> WorkloadArgs {
        let mut v = vec![
            "t",
            "--bootstrap",
            address,
            "--quiet",
            "--warmup-s",
            "0",
            "--drain-timeout-s",
            "5",
            "--partitions",
            "3",
            "--batch-records",
            "50",
        ];
        v.extend_from_slice(extra);
        T::parse_from(v).w
    }

    fn side<'a>(r: &'a RunResult, name: &str) -> &'a SideResult {
        r.sides.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn produce_then_consume_verifies_every_message() {
        let broker = TestBroker::start();
        let a = &broker.address;
        let extra = [
            "--messages",
            "20000",
            "--producers",
            "2",
            "--connections",
            "2",
        ];
        let p = run(&args(a, &extra), Mode::Produce).unwrap();
        assert!(p.verified, "{}", p.faults);
        assert_eq!(side(&p, "produce").messages, 20000);
        assert_eq!(p.handled, 20000, "every message acknowledged");
        let c = run(&args(a, &["--consumers", "2"]), Mode::Consume).unwrap();
        assert!(c.verified, "{}", c.faults);
        assert_eq!(c.checked, 20000);
    }

    #[test]
    fn consume_with_a_manifest_fails_when_acknowledged_messages_are_missing() {
        let broker = TestBroker::start();
        let a = &broker.address;
        let dir =
            std::env::temp_dir().join(format!("shardlog-bench-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("acked");
        let m = manifest.to_str().unwrap();
        let p = run(
            &args(a, &["--messages", "1000", "--manifest", m]),
            Mode::Produce,
        )
        .unwrap();
        assert!(p.verified, "{}", p.faults);
        let c = run(&args(a, &["--manifest", m]), Mode::Consume).unwrap();
        assert!(c.verified, "{}", c.faults);
        assert_eq!(c.checked, 1000);
        // Claim one more acknowledged message than the broker holds: a lost acked write.
        let text = std::fs::read_to_string(&manifest).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let f: Vec<u64> = lines[0].split(' ').map(|x| x.parse().unwrap()).collect();
        lines[0] = format!("{} {} {}", f[0], f[1], f[2] + 1);
        std::fs::write(&manifest, lines.join("\n")).unwrap();
        let r = run(&args(a, &["--manifest", m]), Mode::Consume).unwrap();
        assert!(!r.verified);
        assert_eq!(
            r.faults,
            Faults {
                lost: 1,
                ..Faults::default()
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn e2e_at_a_rate_consumes_every_acknowledged_message() {
        let broker = TestBroker::start();
        let extra = [
            "--messages",
            "20000",
            "--rate",
            "20000",
            "--acks",
            "all",
            "--message-bytes",
            "300",
        ];
        let r = run(&args(&broker.address, &extra), Mode::EndToEnd).unwrap();
        assert!(r.verified, "{}", r.faults);
        assert_eq!(r.checked, 20000);
        assert_eq!(side(&r, "produce").messages, 20000);
    }

    #[test]
    fn every_produce_and_fetch_version_round_trips() {
        let broker = TestBroker::start();
        for (p, f) in [(3, 4), (7, 11), (8, 10), (9, 12)] {
            let (p, f) = (p.to_string(), f.to_string());
            let topic = format!("v{p}-{f}");
            let extra = [
                "--messages",
                "2000",
                "--max-produce-version",
                &p,
                "--max-fetch-version",
                &f,
                "--topic",
                &topic,
            ];
            let r = run(&args(&broker.address, &extra), Mode::EndToEnd).unwrap();
            assert!(r.verified, "produce v{p} fetch v{f}: {}", r.faults);
            assert_eq!(r.checked, 2000);
        }
    }

    #[test]
    fn compressed_batches_verify() {
        let broker = TestBroker::start();
        for c in ["gzip", "zstd", "lz4", "snappy"] {
            let extra = ["--messages", "3000", "--compression", c, "--topic", c];
            let r = run(&args(&broker.address, &extra), Mode::EndToEnd).unwrap();
            assert!(r.verified, "{c}: {}", r.faults);
            assert_eq!(r.checked, 3000);
        }
    }
}
