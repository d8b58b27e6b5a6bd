//! The plan of a run, made before any worker starts: argument checks, topic setup (created
//! if missing), version negotiation with the broker, and the assignment of partitions to
//! producer and consumer connections and of connections to workers. Never sends a message
//! of the workload and never starts a thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};

use super::{Mode, WorkloadArgs};
use crate::batch::{parse_compression, Payloads, VALUE_HEADER_BYTES};
use crate::leaders::Leaders;
use crate::proto::{Control, Versions};
use crate::worker::{now_ns, ConsumerPlan, ProducerPlan, SizeClass, Workload};

/// Everything a run decided before its workers start.
pub(super) struct Plan {
    pub(super) acks: i16,
    /// The leaders, kept for the offsets the control loop asks of them later.
    pub(super) leaders: Leaders,
    pub(super) partitions: Vec<i32>,
    /// Versions both sides speak, after --max-produce-version/--max-fetch-version.
    pub(super) versions: Versions,
    pub(super) produce: bool,
    pub(super) consume: bool,
    /// One entry per worker: the core it is pinned to, if any.
    pub(super) cores: Vec<Option<core_affinity::CoreId>>,
    pub(super) producer_plans: Vec<Vec<ProducerPlan>>,
    pub(super) producer_conns: usize,
    pub(super) consumer_plans: Vec<Vec<ConsumerPlan>>,
    /// Offset each partition's consumers must reach (i64::MAX: not known yet).
    pub(super) targets: Vec<AtomicI64>,
    pub(super) workload: Arc<Workload>,
    pub(super) batch_records: usize,
}

fn parse_acks(s: &str) -> Result<i16> {
    Ok(match s {
        "all" | "-1" => -1,
        "0" => 0,
        "1" => 1,
        other => bail!("--acks {other:?}: 0, 1 or all"),
    })
}

/// Checks the arguments, sets the topic up and plans every connection.
pub(super) fn plan(args: &WorkloadArgs, mode: Mode) -> Result<Plan> {
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
    let mut control = Control::connect_any(&args.bootstrap, Duration::from_secs(10))?;
    let layout = control.ensure_topic(&args.topic, args.partitions, Duration::from_secs(30))?;
    let mut leaders = Leaders::new(&args.bootstrap, &args.topic, layout.leaders.clone());
    let offsets_timeout = Duration::from_secs_f64(args.retry_timeout_s);
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

    let (producer_plans, producer_conns) = if produce {
        assign_producers(args, &partitions, &layout.leaders, workers)
    } else {
        ((0..workers).map(|_| Vec::new()).collect(), 0)
    };

    // Consumers start at the log start (consume) or at the end (e2e: only this run's messages).
    let start_offsets = if consume {
        leaders.list_offsets(
            &partitions,
            if mode == Mode::Consume { -2 } else { -1 },
            offsets_timeout,
        )?
    } else {
        Vec::new()
    };
    let targets: Vec<AtomicI64> = partitions
        .iter()
        .map(|_| AtomicI64::new(i64::MAX))
        .collect();
    if mode == Mode::Consume {
        let ends = leaders.list_offsets(&partitions, -1, offsets_timeout)?;
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
    let consumer_plans = if consume {
        assign_consumers(
            args,
            mode,
            &partitions,
            &layout.leaders,
            &start_offsets,
            workers,
            producer_conns,
        )
    } else {
        (0..workers).map(|_| Vec::new()).collect()
    };

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
        bootstrap: args.bootstrap.clone(),
        leaders_at_start: layout.leaders.clone(),
        retry_timeout_ns: (args.retry_timeout_s * 1e9) as u64,
    });
    Ok(Plan {
        acks,
        leaders,
        partitions,
        versions: v,
        produce,
        consume,
        cores,
        producer_plans,
        producer_conns,
        consumer_plans,
        targets,
        workload,
        batch_records,
    })
}

/// Producer connections: partitions split over producers, then over each producer's
/// connections, never mixing leaders on one connection. Returns the plans of each worker
/// and the number of connections.
fn assign_producers(
    args: &WorkloadArgs,
    partitions: &[i32],
    leaders: &[String],
    workers: usize,
) -> (Vec<Vec<ProducerPlan>>, usize) {
    let mut producer_plans: Vec<Vec<ProducerPlan>> = (0..workers).map(|_| Vec::new()).collect();
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
                .entry(leaders[q as usize].as_str())
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
    let producer_conns = plans.len();
    let pid_base = (now_ns() as u32 ^ (std::process::id() << 20)) & !0xfff;
    for (i, (address, subset)) in plans.into_iter().enumerate() {
        let messages_max = args
            .messages
            .map(|m| m / producer_conns as u64 + u64::from((i as u64) < m % producer_conns as u64));
        producer_plans[i % workers].push(ProducerPlan {
            address,
            producer_id: pid_base.wrapping_add(i as u32),
            partitions: subset,
            rate_per_s: args.rate.map(|r| r / producer_conns as f64),
            messages_max,
        });
    }
    (producer_plans, producer_conns)
}

/// Consumer connections: partitions split over consumers, one connection per consumer and
/// leader, spread over the workers after the producers' connections.
fn assign_consumers(
    args: &WorkloadArgs,
    mode: Mode,
    partitions: &[i32],
    leaders: &[String],
    start_offsets: &[i64],
    workers: usize,
    producer_conns: usize,
) -> Vec<Vec<ConsumerPlan>> {
    let mut consumer_plans: Vec<Vec<ConsumerPlan>> = (0..workers).map(|_| Vec::new()).collect();
    let n = args.consumers.max(1).min(partitions.len());
    let mut plans = Vec::new();
    for c in 0..n {
        let mut by_leader: HashMap<&str, Vec<(i32, i64, bool)>> = HashMap::new();
        for &q in partitions.iter().filter(|q| **q as usize % n == c) {
            let start = start_offsets[q as usize];
            // From offset 0 every producer must start at sequence 0; mid-log, anywhere.
            let strict = start == 0 || mode == Mode::EndToEnd;
            by_leader
                .entry(leaders[q as usize].as_str())
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
    consumer_plans
}
