//! The report of a run, once its workers have finished: merges their results, checks
//! acknowledgements, what was consumed against what was acknowledged (also across runs,
//! through the manifest), and computes the rates and latencies. Never talks to the broker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::{ensure, Context, Result};

use super::plan::Plan;
use super::{Mode, Window, WorkloadArgs};
use crate::stats::{new_histogram, RunResult, SideResult};
use crate::verify::{check_acks, check_consumed_all, forgive_resends, Faults, Resent};
use crate::worker::{Recovery, Shared, WorkerResult};

/// Merges the workers' results and verifies them.
pub(super) fn report(
    args: &WorkloadArgs,
    mode: Mode,
    plan: &Plan,
    shared: &Shared,
    window: &Window,
    end_ns: u64,
    results: Vec<WorkerResult>,
) -> Result<RunResult> {
    let Window {
        measure_from_ns,
        cpu_start_s,
        ..
    } = *window;
    let (acks, produce, consume, partitions) =
        (plan.acks, plan.produce, plan.consume, &plan.partitions);
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
    let mut recovery = Recovery::default();
    let mut resent: Resent = HashMap::new();
    let mut steps_back = Vec::new();
    for r in results {
        recovery.add(&r.recovery);
        for (partition, pid, first, end) in r.resent {
            resent
                .entry((partition, pid))
                .or_default()
                .push((first, end));
        }
        steps_back.extend(r.steps_back);
        if let Some(e) = &r.error {
            eprintln!("worker error: {e}");
        }
        faults.add(&r.faults);
        acks_all.extend(r.acks);
        for (key, next) in r.acked_next {
            let e = acked_next.entry(key).or_insert(next);
            *e = (*e).max(next);
        }
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
        let resent_partitions: HashSet<i32> = resent.keys().map(|(p, _)| *p).collect();
        faults.add(&check_acks(&mut acks_all, &resent_partitions));
    }
    if mode == Mode::EndToEnd {
        faults.add(&check_consumed_all(&acked_next, &consumed_next));
    }
    if let (Some(path), false) = (&args.manifest, produce) {
        // The producing run's resends explain what this run reads twice or late.
        let (_, resent_then) = read_manifest(path)?;
        for (key, ranges) in resent_then {
            resent.entry(key).or_default().extend(ranges);
        }
    }
    let resend_duplicates = forgive_resends(&mut faults, &steps_back, &resent);
    if let Some(path) = &args.manifest {
        if produce {
            write_manifest(path, &acked_next, &resent)?;
        } else {
            let (acked, _) = read_manifest(path)?;
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
        recovery,
        resend_duplicates,
    })
}

/// User + system CPU seconds of this process so far.
pub(super) fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Manifest lines: `partition producer_id next_sequence`, one per acknowledged stream, then
/// `resent partition producer_id first end` per resent range (what a reader may see twice).
fn write_manifest(path: &std::path::Path, acked: &AckedNext, resent: &Resent) -> Result<()> {
    let mut text = String::new();
    for ((partition, pid), next) in acked {
        text.push_str(&format!("{partition} {pid} {next}\n"));
    }
    for ((partition, pid), ranges) in resent {
        for (first, end) in ranges {
            text.push_str(&format!("resent {partition} {pid} {first} {end}\n"));
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Next sequence after the last acknowledged message, per (partition, producer id).
type AckedNext = HashMap<(i32, u32), u64>;

fn read_manifest(path: &std::path::Path) -> Result<(AckedNext, Resent)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut acked = HashMap::new();
    let mut resent: Resent = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "resent" {
            ensure!(f.len() == 5, "bad manifest line {line:?}");
            resent
                .entry((f[1].parse()?, f[2].parse()?))
                .or_default()
                .push((f[3].parse()?, f[4].parse()?));
        } else {
            ensure!(f.len() == 3, "bad manifest line {line:?}");
            acked.insert((f[0].parse()?, f[1].parse()?), f[2].parse()?);
        }
    }
    Ok((acked, resent))
}
