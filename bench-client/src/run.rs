//! One run of a workload (produce, consume or e2e): plan connections over workers, start the
//! pinned workers, print progress each second, stop, merge and verify.
//!
//! In data-flow order: `plan` (checks, topic, versions, assignment), the workers started
//! here, `control` (the loop that stops and drains them), `report` (merge and verify). This
//! file holds the arguments and `run`, which strings them together.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::stats::RunResult;
use crate::worker::{self, now_ns, Shared};

use report::cpu_seconds;

mod control;
mod plan;
mod report;

/// What to run and how hard.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// Broker addresses to bootstrap from (comma-separated). Each partition is then produced
    /// and fetched at its leader, which Metadata names, following leader changes.
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
    /// Seconds a partition may go without a reachable leader (a broker down, a failover)
    /// before the run fails; until then its unacknowledged batches wait and are resent.
    #[arg(long, default_value_t = 30.0)]
    pub retry_timeout_s: f64,
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

/// The measurement window of a run, fixed when its workers start.
#[derive(Clone, Copy)]
struct Window {
    start_ns: u64,
    /// End of the warm-up: only what happens after it is measured.
    measure_from_ns: u64,
    duration_s: Option<f64>,
    warmup_s: f64,
    cpu_start_s: f64,
}

/// Runs the workload and returns its verified result.
pub fn run(args: &WorkloadArgs, mode: Mode) -> Result<RunResult> {
    let mut plan = plan::plan(args, mode)?;
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
        consume_targets: std::mem::take(&mut plan.targets),
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
            plan.partitions.len(),
            args.message_bytes,
            plan.batch_records,
            plan.acks,
            plan.producer_conns,
            plan.consumer_plans.iter().map(Vec::len).sum::<usize>(),
            plan.cores.len(),
            plan.versions.produce,
            plan.versions.fetch,
            plan.versions.metadata
        );
    }

    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, ((core, pp), cp)) in std::mem::take(&mut plan.cores)
        .into_iter()
        .zip(std::mem::take(&mut plan.producer_plans))
        .zip(std::mem::take(&mut plan.consumer_plans))
        .enumerate()
    {
        let (w, s, tx) = (plan.workload.clone(), shared.clone(), tx.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-worker-{i}"))
                .spawn(move || worker::run(i, core, pp, cp, w, s, tx))
                .context("spawning a worker")?,
        );
    }
    drop(tx);

    let window = Window {
        start_ns,
        measure_from_ns,
        duration_s,
        warmup_s,
        cpu_start_s,
    };
    control::control_loop(args, mode, &mut plan, &shared, &window, rx)?;
    let end_ns = now_ns();
    let results: Vec<worker::WorkerResult> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();
    report::report(args, mode, &plan, &shared, &window, end_ns, results)
}

// End-to-end against the real broker, each test on its own fresh one. What a faulty broker
// would do (lose, repeat, reorder, corrupt) is proved on crafted record sets in verify.rs.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SideResult;
    use crate::test_broker::TestBroker;
    use crate::verify::Faults;
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
