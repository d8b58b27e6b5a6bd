//! `compare`: the same workload against two broker binaries in turn (A B A B ...), each started
//! fresh on a temporary data dir and an ephemeral port, and the ratio of their medians.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::run::{self, Mode, WorkloadArgs};

/// Options of `compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Broker binary A (the baseline).
    #[arg(long)]
    pub a: PathBuf,
    /// Broker binary B (the candidate).
    #[arg(long)]
    pub b: PathBuf,
    /// Runs of each binary.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// produce, consume (after a produce of the same size) or e2e.
    #[arg(long, default_value = "produce")]
    pub mode: String,
    /// Core to pin each broker to (with taskset); none to leave it unpinned.
    #[arg(long)]
    pub broker_core: Option<usize>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// A broker process on a temporary data dir, killed and cleaned up on drop.
pub struct Broker {
    child: Child,
    dir: PathBuf,
    pub address: String,
}

impl Broker {
    /// Starts `binary` and waits until its port accepts connections.
    pub fn start(binary: &Path, core: Option<usize>) -> Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let dir =
            std::env::temp_dir().join(format!("shardlog-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = match core {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c.to_string()).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("--data-dir")
            .arg(&dir)
            .arg("--listen")
            .arg(&address)
            .arg("--advertise")
            .arg(&address)
            .arg("--cores")
            .arg("1");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut broker = Broker {
            child,
            dir,
            address,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(&broker.address).is_ok() {
                return Ok(broker);
            }
            if let Some(status) = broker.child.try_wait()? {
                bail!("{} exited with {status} before listening", binary.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} within 30 s",
                    binary.display(),
                    broker.address
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the comparison; Ok(false) if any run failed verification.
pub fn compare(args: &CompareArgs) -> Result<bool> {
    let mode = match args.mode.as_str() {
        "produce" => Mode::Produce,
        "consume" => Mode::Consume,
        "e2e" => Mode::EndToEnd,
        m => bail!("--mode {m:?}: produce, consume or e2e"),
    };
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut all_verified = true;
    for round in 0..args.rounds.max(1) {
        for (side, binary) in [&args.a, &args.b].into_iter().enumerate() {
            let broker = Broker::start(binary, args.broker_core)?;
            let mut w = args.workload.clone();
            w.bootstrap = broker.address.clone();
            w.quiet = true;
            if mode == Mode::Consume {
                let filled = run::run(&w, Mode::Produce)?;
                all_verified &= filled.verified;
            }
            let r = run::run(&w, mode)?;
            all_verified &= r.verified;
            let rate = r.headline().map(|s| s.messages_per_s()).unwrap_or(0.0);
            let p99 = r
                .headline()
                .map(|s| s.latency.value_at_percentile(99.0))
                .unwrap_or(0);
            eprintln!(
                "round {} {}: {:.0} msg/s, p99 {} µs, {}",
                round + 1,
                ["A", "B"][side],
                rate,
                p99,
                if r.verified {
                    "verified"
                } else {
                    "VERIFICATION FAILED"
                }
            );
            rates[side].push(rate);
            drop(broker);
        }
    }
    let ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| b / a).collect();
    let (mut a, mut b, mut r) = (rates[0].clone(), rates[1].clone(), ratios.clone());
    let (ma, mb) = (median(&mut a), median(&mut b));
    let spread = |v: &[f64], m: f64| {
        (
            v.iter().cloned().fold(f64::MAX, f64::min) / m,
            v.iter().cloned().fold(0.0, f64::max) / m,
        )
    };
    let (a_lo, a_hi) = spread(&a, ma);
    let (b_lo, b_hi) = spread(&b, mb);
    println!(
        "A {}: median {:.0} msg/s (runs {:.2}..{:.2} of median)",
        args.a.display(),
        ma,
        a_lo,
        a_hi
    );
    println!(
        "B {}: median {:.0} msg/s (runs {:.2}..{:.2} of median)",
        args.b.display(),
        mb,
        b_lo,
        b_hi
    );
    println!(
        "B/A ratio of medians {:.3}; per-round ratios {:.3}..{:.3} (median {:.3})",
        mb / ma,
        r.iter().cloned().fold(f64::MAX, f64::min),
        r.iter().cloned().fold(0.0, f64::max),
        median(&mut r)
    );
    if args.workload.json {
        println!(
            "{{\"a_median_messages_per_s\":{ma:.1},\"b_median_messages_per_s\":{mb:.1},\"ratio\":{:.4},\"ratios\":{:?},\"verified\":{all_verified}}}",
            mb / ma,
            ratios
        );
    }
    Ok(all_verified)
}
