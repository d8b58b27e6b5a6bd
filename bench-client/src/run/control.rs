//! The control loop of a run, on the calling thread while the workers run: progress each
//! second, stopping producers at the deadline or message count, the end offsets consumers
//! must reach, and the drain timeout. Never touches a message: it only flips the shared
//! control-plane atomics and reads the workers' snapshots.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Result;

use super::plan::Plan;
use super::{Mode, Window, WorkloadArgs};
use crate::stats::{fmt_rate, fmt_us, Snapshot};
use crate::worker::{now_ns, Shared};

/// Runs until every worker has finished (their report channel closes).
pub(super) fn control_loop(
    args: &WorkloadArgs,
    mode: Mode,
    plan: &mut Plan,
    shared: &Shared,
    window: &Window,
    rx: mpsc::Receiver<Snapshot>,
) -> Result<()> {
    let Window {
        start_ns,
        measure_from_ns,
        duration_s,
        warmup_s,
        ..
    } = *window;
    let (produce, producer_conns) = (plan.produce, plan.producer_conns);
    let (leaders, partitions) = (&mut plan.leaders, &plan.partitions);
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
                let timeout = Duration::from_secs_f64(args.retry_timeout_s);
                let ends = leaders.list_offsets(partitions, -1, timeout)?;
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
    Ok(())
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
