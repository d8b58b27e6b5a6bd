//! One pinned worker thread: a hand-rolled poll(2) loop over its own producer and consumer
//! connections. Nothing on the send or receive path is shared with other workers; the only
//! shared state is a few control-plane atomics read once per loop turn (stop, abort, the
//! offsets consumers must reach) and a channel that carries one snapshot per second.
//!
//! Producers pipeline up to `inflight_max` Produce requests per connection, one batch of one
//! partition each, encoded in place in the send buffer. With a target rate they run open loop:
//! message k of a connection is due at `start + k / rate`, and its latency is measured from
//! that intended time, so a stalled broker cannot hide its stall (coordinated omission).
//!
//! Clusters: each partition is produced and fetched at its leader. A worker keeps its own
//! view of the leaders (`Leaders`), asked for Metadata only after a retriable error or a lost
//! connection; producers reroute and resend (`producer`), and consumer partitions move to a
//! connection to their new leader (`consumer::Orphan`, re-homed here). Against one broker
//! none of that runs: the loop is the same poll over the same connections as before.
//!
//! This file holds the workload, the plans and results, the socket helpers and the loop;
//! the connections themselves are `producer::ProducerConn` and `consumer::ConsumerConn`.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use kafka_protocol::records::Compression;

use crate::batch::Payloads;
use crate::leaders::Leaders;
use crate::proto;
use crate::stats::{new_histogram, record_ns, Snapshot};
use crate::verify::{Ack, Faults, StepBack};

use consumer::{ConsumerConn, Orphan};
use producer::ProducerConn;

mod consumer;
mod producer;

/// Unsent bytes a producer connection may hold before it stops encoding more.
const OUT_BYTES_MAX: usize = 8 << 20;
/// Bytes asked of the kernel per read.
const READ_BYTES: usize = 1 << 20;
/// Longest sleep in poll, so stop flags and reports are seen promptly.
const POLL_MS_MAX: i32 = 5;
/// Connect deadline when following a leader: a broker that does not accept in this long
/// counts as unreachable until the next Metadata.
const RECONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Monotonic clock in nanoseconds, comparable across threads and processes of this machine.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall clock in milliseconds, for record timestamps.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Settings every connection of a run shares.
pub struct Workload {
    pub topic: String,
    pub acks: i16,
    pub request_timeout_ms: i32,
    pub batch_records: usize,
    pub linger_ns: u64,
    pub compression: Compression,
    pub inflight_max: usize,
    pub payloads: Payloads,
    /// Large batches mixed in (`--large-message-bytes`), if any; see [`is_large_batch`].
    pub large: Option<SizeClass>,
    pub produce_version: i16,
    pub fetch_version: i16,
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    pub fetch_max_wait_ms: i32,
    /// Consumers measure latency from each message's send time (e2e) rather than per fetch.
    pub end_to_end: bool,
    /// Where to ask for Metadata after a leader change (comma-separated).
    pub bootstrap: String,
    /// Leader address per partition when the run was planned.
    pub leaders_at_start: Vec<String>,
    /// How long a partition may go without a reachable leader before the run fails.
    pub retry_timeout_ns: u64,
}

/// Values of one size and the records a batch of them carries.
pub struct SizeClass {
    pub payloads: Payloads,
    pub batch_records: usize,
}

/// Batches per phase of the mixed-size cycle: small, large, then alternating.
const MIX_PHASE_BATCHES: u64 = 8;

/// Whether a connection's batch number `n` is a large one in the mixed-size cycle.
pub fn is_large_batch(n: u64) -> bool {
    match (n / MIX_PHASE_BATCHES) % 3 {
        0 => false,
        1 => true,
        _ => n % 2 == 1,
    }
}

impl Workload {
    /// The values and batch size of a connection's batch number `n`.
    fn size_of_batch(&self, n: u64) -> (&Payloads, usize) {
        match &self.large {
            Some(large) if is_large_batch(n) => (&large.payloads, large.batch_records),
            _ => (&self.payloads, self.batch_records),
        }
    }
}

/// Control-plane state shared by the main thread and the workers.
pub struct Shared {
    pub stop_producing: AtomicBool,
    /// `consume` with a duration: stop fetching once the current fetch is answered.
    pub stop_consuming: AtomicBool,
    pub abort: AtomicBool,
    /// Offset each partition's consumer must reach; i64::MAX until known.
    pub consume_targets: Vec<AtomicI64>,
    /// Measurement window, monotonic ns: samples outside it are verified but not counted.
    pub measure_from_ns: u64,
    pub measure_until_ns: AtomicU64,
    /// Producer connections that have finished (stopped and drained).
    pub producers_done: AtomicUsize,
}

impl Shared {
    fn in_window(&self, t: u64) -> bool {
        t >= self.measure_from_ns && t < self.measure_until_ns.load(Ordering::Relaxed)
    }
}

/// A producer connection to set up.
pub struct ProducerPlan {
    pub address: String,
    pub producer_id: u32,
    pub partitions: Vec<i32>,
    pub rate_per_s: Option<f64>,
    pub messages_max: Option<u64>,
}

/// A consumer connection to set up.
pub struct ConsumerPlan {
    pub address: String,
    /// (partition, start offset, strict start)
    pub partitions: Vec<(i32, i64, bool)>,
    pub messages_max: Option<u64>,
}

/// What a worker hands back when it ends.
#[derive(Default)]
pub struct WorkerResult {
    pub acks: Vec<Ack>,
    /// Next sequence after the last acknowledged message, per (partition, producer id).
    pub acked_next: HashMap<(i32, u32), u64>,
    /// Next sequence after the last consumed message, per (partition, producer id).
    pub consumed_next: HashMap<(i32, u32), u64>,
    /// Offset reached per partition by this worker's consumers.
    pub consumed_offsets: Vec<(i32, i64)>,
    pub faults: Faults,
    pub produced: u64,
    pub produced_bytes: u64,
    pub produce_latency: Option<Histogram<u64>>,
    pub consumed: u64,
    pub consumed_bytes: u64,
    pub consume_latency: Option<Histogram<u64>>,
    pub checked: u64,
    pub last_consume_ns: u64,
    pub error: Option<String>,
    pub recovery: Recovery,
    /// Batches producers sent again: (partition, producer id, first sequence, end sequence).
    pub resent: Vec<(i32, u32, u64, u64)>,
    /// Messages consumers saw late or again, per partition (see `verify::StepBack`).
    pub steps_back: Vec<(i32, StepBack)>,
}

/// What following leaders took: retries, reconnects, refreshes, and the longest stall.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovery {
    /// Produce batches sent again after a retriable error or a lost connection.
    pub resent_batches: u64,
    /// Partitions whose fetching moved to another connection.
    pub fetch_retries: u64,
    /// Connections opened to follow a leader.
    pub reconnects: u64,
    /// Metadata requests answered after a failure.
    pub metadata_refreshes: u64,
    /// Longest time one partition had batches outstanding and no acknowledgement arrived.
    pub stall_ns_max: u64,
    /// The partition of that stall.
    pub stall_partition: i32,
}

impl Recovery {
    /// Adds `other` into `self`, keeping the longest stall.
    pub fn add(&mut self, other: &Recovery) {
        self.resent_batches += other.resent_batches;
        self.fetch_retries += other.fetch_retries;
        self.reconnects += other.reconnects;
        self.metadata_refreshes += other.metadata_refreshes;
        if other.stall_ns_max > self.stall_ns_max {
            self.stall_ns_max = other.stall_ns_max;
            self.stall_partition = other.stall_partition;
        }
    }

    /// Every retry of either side.
    pub fn retries(&self) -> u64 {
        self.resent_batches + self.fetch_retries
    }
}

/// Per-worker counters and histograms.
struct Tally {
    produced: u64,
    produced_bytes: u64,
    consumed: u64,
    consumed_bytes: u64,
    produce_latency: Histogram<u64>,
    consume_latency: Histogram<u64>,
    // since the last snapshot
    i_produced: u64,
    i_produced_bytes: u64,
    i_consumed: u64,
    i_consumed_bytes: u64,
    i_produce_latency: Histogram<u64>,
    i_consume_latency: Histogram<u64>,
    last_consume_ns: u64,
}

fn open(address: &str) -> Result<TcpStream> {
    open_with(address, std::time::Duration::from_secs(10))
}

fn open_with(address: &str, timeout: std::time::Duration) -> Result<TcpStream> {
    let stream = proto::connect_with_deadline(address, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Reads what the socket has into `buf`; false when the peer closed.
fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> Result<bool> {
    loop {
        buf.reserve(READ_BYTES);
        let spare = buf.spare_capacity_mut();
        // SAFETY: reading into uninitialised spare capacity; set_len covers only what was written.
        let n = unsafe {
            libc::read(
                stream.as_raw_fd(),
                spare.as_mut_ptr() as *mut libc::c_void,
                spare.len(),
            )
        };
        if n > 0 {
            unsafe { buf.set_len(buf.len() + n as usize) };
            if (n as usize) < READ_BYTES / 2 {
                return Ok(true);
            }
        } else if n == 0 {
            return Ok(false);
        } else {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                ErrorKind::WouldBlock => return Ok(true),
                ErrorKind::Interrupted => continue,
                _ => return Err(e).context("reading from broker"),
            }
        }
    }
}

/// Writes what it can of `out[*pos..]`; resets the buffer once all is written.
fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, pos: &mut usize) -> Result<bool> {
    let mut progress = false;
    while *pos < out.len() {
        match stream.write(&out[*pos..]) {
            Ok(0) => bail!("broker closed the connection"),
            Ok(n) => {
                *pos += n;
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("writing to broker"),
        }
    }
    if *pos == out.len() {
        out.clear();
        *pos = 0;
    }
    Ok(progress)
}

impl Tally {
    fn new() -> Tally {
        Tally {
            produced: 0,
            produced_bytes: 0,
            consumed: 0,
            consumed_bytes: 0,
            produce_latency: new_histogram(),
            consume_latency: new_histogram(),
            i_produced: 0,
            i_produced_bytes: 0,
            i_consumed: 0,
            i_consumed_bytes: 0,
            i_produce_latency: new_histogram(),
            i_consume_latency: new_histogram(),
            last_consume_ns: 0,
        }
    }

    fn count_produced(&mut self, in_window: bool, n: u64, bytes: u64) {
        if in_window {
            self.produced += n;
            self.produced_bytes += bytes;
        }
        self.i_produced += n;
        self.i_produced_bytes += bytes;
    }

    fn count_consumed(&mut self, in_window: bool, n: u64, bytes: u64, now: u64) {
        if in_window {
            self.consumed += n;
            self.consumed_bytes += bytes;
        }
        if n > 0 {
            self.last_consume_ns = now;
        }
        self.i_consumed += n;
        self.i_consumed_bytes += bytes;
    }

    fn produce_latency_n(&mut self, in_window: bool, ns: u64, n: u64) {
        if in_window {
            record_ns(&mut self.produce_latency, ns, n);
        }
        record_ns(&mut self.i_produce_latency, ns, n);
    }

    fn consume_latency_n(&mut self, in_window: bool, ns: u64, n: u64) {
        if in_window {
            record_ns(&mut self.consume_latency, ns, n);
        }
        record_ns(&mut self.i_consume_latency, ns, n);
    }

    fn snapshot(&mut self, worker: usize) -> Snapshot {
        let s = Snapshot {
            worker,
            produced: self.i_produced,
            produced_bytes: self.i_produced_bytes,
            consumed: self.i_consumed,
            consumed_bytes: self.i_consumed_bytes,
            produce_latency: std::mem::replace(&mut self.i_produce_latency, new_histogram()),
            consume_latency: std::mem::replace(&mut self.i_consume_latency, new_histogram()),
        };
        self.i_produced = 0;
        self.i_produced_bytes = 0;
        self.i_consumed = 0;
        self.i_consumed_bytes = 0;
        s
    }
}

/// Runs one worker to completion: connects, loops until its connections are done or the run
/// aborts, and returns what it saw. Errors abort the whole run.
pub fn run(
    index: usize,
    core: Option<core_affinity::CoreId>,
    producers: Vec<ProducerPlan>,
    consumers: Vec<ConsumerPlan>,
    w: Arc<Workload>,
    shared: Arc<Shared>,
    reports: Sender<Snapshot>,
) -> WorkerResult {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let mut result = WorkerResult::default();
    let mut tally = Tally::new();
    let outcome = run_loop(
        index,
        producers,
        consumers,
        &w,
        &shared,
        &reports,
        &mut tally,
        &mut result,
    );
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
        result.faults.request_errors += 1;
        shared.abort.store(true, Ordering::Relaxed);
    }
    let _ = reports.send(tally.snapshot(index));
    result.produced = tally.produced;
    result.produced_bytes = tally.produced_bytes;
    result.consumed = tally.consumed;
    result.consumed_bytes = tally.consumed_bytes;
    result.last_consume_ns = tally.last_consume_ns;
    result.produce_latency = Some(tally.produce_latency);
    result.consume_latency = Some(tally.consume_latency);
    result
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    index: usize,
    producer_plans: Vec<ProducerPlan>,
    consumer_plans: Vec<ConsumerPlan>,
    w: &Workload,
    shared: &Shared,
    reports: &Sender<Snapshot>,
    tally: &mut Tally,
    result: &mut WorkerResult,
) -> Result<()> {
    let start_ns = now_ns();
    let mut producers = Vec::new();
    for p in producer_plans {
        ensure!(!p.partitions.is_empty(), "producer without partitions");
        producers.push(ProducerConn::new(p, start_ns)?);
    }
    let mut consumers = Vec::new();
    for c in consumer_plans {
        consumers.push(ConsumerConn::new(c)?);
    }
    let mut leaders = Leaders::new(&w.bootstrap, &w.topic, w.leaders_at_start.clone());
    let mut orphans: Vec<Orphan> = Vec::new();
    let mut next_report_ns = start_ns + 1_000_000_000;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let outcome = (|| -> Result<()> {
        loop {
            if shared.abort.load(Ordering::Relaxed) {
                break;
            }
            let mut progress = false;
            for p in producers.iter_mut() {
                progress |= p.step(w, shared, tally, result, &mut leaders)?;
            }
            for c in consumers.iter_mut() {
                let before = orphans.len();
                progress |= c.step(w, shared, tally, &mut orphans)?;
                result.recovery.fetch_retries += (orphans.len() - before) as u64;
            }
            let now = now_ns();
            if !orphans.is_empty() {
                progress |= rehome(&mut orphans, &mut consumers, &mut leaders, w, now, result)?;
            }
            leaders.poll(now);
            if now >= next_report_ns {
                let _ = reports.send(tally.snapshot(index));
                next_report_ns += 1_000_000_000;
            }
            if producers.iter().all(|p| p.done)
                && consumers.iter().all(|c| c.done)
                && orphans.is_empty()
            {
                break;
            }
            if progress {
                continue;
            }
            let mut timeout_ns = POLL_MS_MAX as u64 * 1_000_000;
            for p in &producers {
                if let Some(due) = p.next_due_ns(now, w) {
                    timeout_ns = timeout_ns.min(due);
                }
            }
            fds.clear();
            for p in producers.iter().filter(|p| !p.done) {
                for link in &p.links {
                    if let Some(stream) = &link.stream {
                        let out = if link.out.is_empty() {
                            0
                        } else {
                            libc::POLLOUT
                        };
                        fds.push(libc::pollfd {
                            fd: stream.as_raw_fd(),
                            events: libc::POLLIN | out,
                            revents: 0,
                        });
                    }
                }
            }
            for c in consumers.iter().filter(|c| !c.done) {
                let events = libc::POLLIN | if c.out.is_empty() { 0 } else { libc::POLLOUT };
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            let timeout_ms = timeout_ns.div_ceil(1_000_000) as i32;
            if timeout_ms > 0 || fds.is_empty() {
                // SAFETY: fds is a valid array of pollfd for the duration of the call.
                unsafe {
                    libc::poll(
                        fds.as_mut_ptr(),
                        fds.len() as libc::nfds_t,
                        timeout_ms.max(1),
                    )
                };
            }
        }
        Ok(())
    })();
    // What was checked counts even when the loop failed: the run reports it with the error.
    for p in &producers {
        result.recovery.add(&p.recovery);
        result.resent.extend(p.resent());
    }
    result.recovery.metadata_refreshes += leaders.refreshes;
    let parts = consumers
        .iter_mut()
        .flat_map(|c| c.parts.iter_mut())
        .chain(orphans.iter_mut().map(|o| &mut o.part));
    for p in parts {
        p.check.settle();
        result.faults.add(&p.check.faults);
        result.checked += p.check.messages;
        result
            .consumed_offsets
            .push((p.partition, p.check.next_offset));
        for (&pid, &next) in &p.check.next_sequence {
            result.consumed_next.insert((p.partition, pid), next);
        }
        result
            .steps_back
            .extend(p.check.steps_back.iter().map(|s| (p.partition, *s)));
    }
    outcome
}

/// Hands each orphaned consumer partition to a connection to its leader, once Metadata newer
/// than its failure names one: a live connection of this worker to that broker, or a new one.
/// Fails a partition that found no reachable leader for the retry bound.
#[cold]
fn rehome(
    orphans: &mut Vec<Orphan>,
    consumers: &mut Vec<ConsumerConn>,
    leaders: &mut Leaders,
    w: &Workload,
    now: u64,
    result: &mut WorkerResult,
) -> Result<bool> {
    let mut progress = false;
    let mut waiting = Vec::new();
    for mut o in orphans.drain(..) {
        let fresh = leaders.refreshed_ns > o.since_ns;
        let leader = leaders.leader(o.part.partition).filter(|_| fresh);
        let conn = match leader {
            None => None,
            Some(a) => match consumers.iter().position(|c| c.address == a && !c.done) {
                Some(i) => Some(i),
                None => match ConsumerConn::reconnect(a) {
                    Ok(c) => {
                        result.recovery.reconnects += 1;
                        consumers.push(c);
                        Some(consumers.len() - 1)
                    }
                    Err(e) => {
                        eprintln!(
                            "consumer: leader {a} of partition {} unreachable: {e:#}",
                            o.part.partition
                        );
                        None
                    }
                },
            },
        };
        match conn {
            Some(i) => {
                consumers[i].parts.push(o.part);
                progress = true;
            }
            None => {
                if fresh {
                    o.since_ns = now;
                }
                leaders.want_refresh();
                if now.saturating_sub(o.stalled_since_ns) > w.retry_timeout_ns {
                    bail!(
                        "partition {} found no reachable leader to fetch from for {:.1} s (--retry-timeout-s)",
                        o.part.partition,
                        w.retry_timeout_ns as f64 / 1e9
                    );
                }
                waiting.push(o);
            }
        }
    }
    *orphans = waiting;
    Ok(progress)
}

#[cfg(test)]
mod size_mix_tests {
    use super::is_large_batch;

    #[test]
    fn the_mixed_size_cycle_is_small_runs_large_runs_then_alternating() {
        let cycle: String = (0..24)
            .map(|n| if is_large_batch(n) { 'L' } else { 's' })
            .collect();
        assert_eq!(cycle, "ssssssssLLLLLLLLsLsLsLsL");
        assert!(!is_large_batch(24), "the cycle repeats");
    }
}
