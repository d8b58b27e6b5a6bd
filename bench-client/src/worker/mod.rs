//! One pinned worker thread: a hand-rolled poll(2) loop over its own producer and consumer
//! connections. Nothing on the send or receive path is shared with other workers; the only
//! shared state is a few control-plane atomics read once per loop turn (stop, abort, the
//! offsets consumers must reach) and a channel that carries one snapshot per second.
//!
//! Producers pipeline up to `inflight_max` Produce requests per connection, one batch of one
//! partition each, encoded in place in the send buffer. With a target rate they run open loop:
//! message k of a connection is due at `start + k / rate`, and its latency is measured from
//! that intended time, so a stalled broker cannot hide its stall (coordinated omission).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::Compression;

use crate::batch::{batch_bytes, encode_batch, encode_batch_compressed, BatchSpec, Payloads};
use crate::proto::{self, decode_response_header, encode_request, take_frame, topic_name};
use crate::stats::{new_histogram, record_ns, Snapshot};
use crate::verify::{Ack, Faults, PartitionCheck};

/// Unsent bytes a producer connection may hold before it stops encoding more.
const OUT_BYTES_MAX: usize = 8 << 20;
/// Bytes asked of the kernel per read.
const READ_BYTES: usize = 1 << 20;
/// Longest sleep in poll, so stop flags and reports are seen promptly.
const POLL_MS_MAX: i32 = 5;

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
}

struct InFlight {
    correlation_id: i32,
    partition: i32,
    first_sequence: u64,
    count: u32,
    /// Index of the batch's first message in this connection's stream (open loop timing).
    first_index: u64,
    created_ns: u64,
    bytes: u64,
}

struct ProducerConn {
    stream: TcpStream,
    producer_id: u32,
    partitions: Vec<i32>,
    sequences: Vec<u64>,
    next_partition: usize,
    /// Batches encoded so far (picks each one's size with `--large-message-bytes`).
    batches: u64,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: BytesMut,
    inflight: VecDeque<InFlight>,
    correlation_id: i32,
    generated: u64,
    messages_max: Option<u64>,
    ns_per_message: Option<f64>,
    start_ns: u64,
    done: bool,
}

struct ConsumerPartition {
    partition: i32,
    check: PartitionCheck,
}

struct ConsumerConn {
    stream: TcpStream,
    parts: Vec<ConsumerPartition>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: BytesMut,
    inflight: Option<(i32, u64)>,
    correlation_id: i32,
    consumed: u64,
    messages_max: Option<u64>,
    done: bool,
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
    let stream = proto::connect_with_deadline(address, std::time::Duration::from_secs(10))?;
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

impl ProducerConn {
    fn intended_ns(&self, index: u64, fallback: u64) -> u64 {
        match self.ns_per_message {
            Some(ns) => self.start_ns + (index as f64 * ns) as u64,
            None => fallback,
        }
    }

    /// Encodes as many batches as are due and fit the in-flight window.
    fn generate(&mut self, now: u64, w: &Workload, shared: &Shared) -> Result<bool> {
        let mut progress = false;
        while (self.inflight.len() < w.inflight_max || w.acks == 0)
            && self.out.len() - self.out_pos < OUT_BYTES_MAX
            && !shared.stop_producing.load(Ordering::Relaxed)
        {
            let (_, batch_records) = w.size_of_batch(self.batches);
            let mut available = match self.ns_per_message {
                None => batch_records as u64,
                Some(ns) => {
                    let due = (now.saturating_sub(self.start_ns) as f64 / ns) as u64 + 1;
                    due.saturating_sub(self.generated)
                }
            };
            if let Some(max) = self.messages_max {
                available = available.min(max - self.generated);
            }
            if available == 0 {
                break;
            }
            let count = available.min(batch_records as u64) as usize;
            if count < batch_records && self.ns_per_message.is_some() {
                let first_due = self.intended_ns(self.generated, now);
                let full = self
                    .messages_max
                    .is_some_and(|m| self.generated + count as u64 == m);
                if now < first_due + w.linger_ns && !full {
                    break; // wait for more messages to come due, up to the linger time
                }
            }
            self.encode(now, count, w)?;
            progress = true;
        }
        Ok(progress)
    }

    fn encode(&mut self, now: u64, count: usize, w: &Workload) -> Result<()> {
        let slot = self.next_partition;
        self.next_partition = (self.next_partition + 1) % self.partitions.len();
        let (payloads, _) = w.size_of_batch(self.batches);
        self.batches += 1;
        let partition = self.partitions[slot];
        let first_sequence = self.sequences[slot];
        let first_index = self.generated;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let (start_ns, ns_per) = (self.start_ns, self.ns_per_message);
        let send_time = move |i: usize| match ns_per {
            Some(ns) => start_ns + ((first_index + i as u64) as f64 * ns) as u64,
            None => now,
        };
        let spec = BatchSpec {
            producer_id: self.producer_id,
            first_sequence,
            count,
            timestamp_ms: wall_ms(),
            send_time_ns: &send_time,
        };
        let correlation_id = self.correlation_id;
        let prefix = |out: &mut Vec<u8>, records_bytes: usize| {
            proto::produce_prefix(
                out,
                w.produce_version,
                correlation_id,
                w.acks,
                w.request_timeout_ms,
                &w.topic,
                partition,
                records_bytes,
            )
        };
        if w.compression == Compression::None {
            // Encoded straight into the send buffer: the size is known before the bytes.
            let records_bytes = batch_bytes(payloads, count);
            prefix(&mut self.out, records_bytes);
            let batch_start = self.out.len();
            encode_batch(&mut self.out, payloads, &spec);
            debug_assert_eq!(self.out.len() - batch_start, records_bytes);
        } else {
            let mut batch = Vec::new();
            encode_batch_compressed(&mut batch, payloads, &spec, w.compression)?;
            prefix(&mut self.out, batch.len());
            self.out.extend_from_slice(&batch);
        }
        self.out
            .extend_from_slice(proto::produce_suffix(w.produce_version));
        self.sequences[slot] += count as u64;
        self.generated += count as u64;
        self.inflight.push_back(InFlight {
            correlation_id: self.correlation_id,
            partition,
            first_sequence,
            count: count as u32,
            first_index,
            created_ns: now,
            bytes: (count * payloads.value_bytes()) as u64,
        });
        Ok(())
    }

    fn handle_responses(
        &mut self,
        w: &Workload,
        shared: &Shared,
        tally: &mut Tally,
        result: &mut WorkerResult,
    ) -> Result<bool> {
        let mut progress = false;
        if w.acks == 0 {
            // No responses: a batch counts once it has left the socket buffer.
            if self.out.is_empty() {
                let now = now_ns();
                while let Some(f) = self.inflight.pop_front() {
                    tally.count_produced(shared.in_window(now), f.count as u64, f.bytes);
                }
            }
            return Ok(false);
        }
        while let Some(mut frame) = take_frame(&mut self.inbuf)? {
            progress = true;
            let now = now_ns();
            let f = self
                .inflight
                .pop_front()
                .ok_or_else(|| anyhow!("Produce response with nothing in flight"))?;
            decode_response_header::<ProduceRequest>(
                &mut frame,
                w.produce_version,
                f.correlation_id,
            )?;
            let response = ProduceResponse::decode(&mut frame, w.produce_version)
                .context("decoding ProduceResponse")?;
            let p = response
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == f.partition)
                .ok_or_else(|| anyhow!("Produce response lacks partition {}", f.partition))?;
            if p.error_code != 0 {
                result.faults.request_errors += 1;
                if result.faults.request_errors <= 5 {
                    eprintln!(
                        "produce error {} on partition {} ({} records): {:?}",
                        p.error_code,
                        f.partition,
                        f.count,
                        p.error_message.as_ref().map(|m| m.as_str())
                    );
                }
                continue;
            }
            result.acks.push(Ack {
                partition: f.partition,
                base_offset: p.base_offset,
                count: f.count,
            });
            result.acked_next.insert(
                (f.partition, self.producer_id),
                f.first_sequence + f.count as u64,
            );
            let in_window = shared.in_window(now);
            tally.count_produced(in_window, f.count as u64, f.bytes);
            match self.ns_per_message {
                None => tally.produce_latency_n(
                    in_window,
                    now.saturating_sub(f.created_ns),
                    f.count as u64,
                ),
                Some(_) => {
                    for i in 0..f.count as u64 {
                        let intended = self.intended_ns(f.first_index + i, f.created_ns);
                        tally.produce_latency_n(in_window, now.saturating_sub(intended), 1);
                    }
                }
            }
        }
        Ok(progress)
    }

    fn step(
        &mut self,
        w: &Workload,
        shared: &Shared,
        tally: &mut Tally,
        result: &mut WorkerResult,
    ) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        if w.acks != 0 && !read_available(&self.stream, &mut self.inbuf)? {
            bail!("broker closed a producer connection");
        }
        let mut progress = self.handle_responses(w, shared, tally, result)?;
        let now = now_ns();
        progress |= self.generate(now, w, shared)?;
        progress |= flush(&mut self.stream, &mut self.out, &mut self.out_pos)?;
        if w.acks == 0 {
            progress |= self.handle_responses(w, shared, tally, result)?;
        }
        if let Some(f) = self.inflight.front() {
            let timeout_ns = w.request_timeout_ms as u64 * 1_000_000 + 5_000_000_000;
            ensure!(
                now.saturating_sub(f.created_ns) < timeout_ns,
                "Produce request {} unanswered after {} ms",
                f.correlation_id,
                timeout_ns / 1_000_000
            );
        }
        let finished = shared.stop_producing.load(Ordering::Relaxed)
            || self.messages_max.is_some_and(|m| self.generated >= m);
        if finished && self.inflight.is_empty() && self.out.is_empty() {
            self.done = true;
            shared.producers_done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(progress)
    }

    /// Nanoseconds until this connection next has something due, for the poll timeout.
    fn next_due_ns(&self, now: u64, w: &Workload) -> Option<u64> {
        let ns = self.ns_per_message?;
        if self.done || self.inflight.len() >= w.inflight_max {
            return None;
        }
        let full_due =
            self.start_ns + ((self.generated + w.batch_records as u64 - 1) as f64 * ns) as u64;
        let linger_due = self.intended_ns(self.generated, now) + w.linger_ns;
        Some(full_due.min(linger_due).saturating_sub(now))
    }
}

impl ConsumerConn {
    fn send_fetch(&mut self, w: &Workload, shared: &Shared) -> Result<()> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let partitions = self
            .parts
            .iter()
            .filter(|p| {
                p.check.next_offset
                    < shared.consume_targets[p.partition as usize].load(Ordering::Relaxed)
            })
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p.partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(p.check.next_offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(w.partition_max_bytes)
            })
            .collect();
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(w.fetch_max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(w.fetch_max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(&w.topic))
                .with_partitions(partitions)]);
        let mut buf = BytesMut::new();
        encode_request(&mut buf, self.correlation_id, w.fetch_version, &request)?;
        self.out.extend_from_slice(&buf);
        self.inflight = Some((self.correlation_id, now_ns()));
        Ok(())
    }

    fn reached_targets(&self, shared: &Shared) -> bool {
        shared.stop_consuming.load(Ordering::Relaxed)
            || self.messages_max.is_some_and(|m| self.consumed >= m)
            || self.parts.iter().all(|p| {
                p.check.next_offset
                    >= shared.consume_targets[p.partition as usize].load(Ordering::Relaxed)
            })
    }

    fn step(&mut self, w: &Workload, shared: &Shared, tally: &mut Tally) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        if !read_available(&self.stream, &mut self.inbuf)? {
            bail!("broker closed a consumer connection");
        }
        let mut progress = false;
        while let Some(mut frame) = take_frame(&mut self.inbuf)? {
            progress = true;
            let (correlation_id, sent_ns) = self
                .inflight
                .take()
                .ok_or_else(|| anyhow!("Fetch response with nothing in flight"))?;
            decode_response_header::<FetchRequest>(&mut frame, w.fetch_version, correlation_id)?;
            let response = FetchResponse::decode(&mut frame, w.fetch_version)
                .context("decoding FetchResponse")?;
            ensure!(
                response.error_code == 0,
                "Fetch error {}",
                response.error_code
            );
            let now = now_ns();
            let in_window = shared.in_window(now);
            for t in &response.responses {
                for pd in &t.partitions {
                    let Some(part) = self
                        .parts
                        .iter_mut()
                        .find(|p| p.partition == pd.partition_index)
                    else {
                        bail!(
                            "Fetch response for partition {} not asked for",
                            pd.partition_index
                        );
                    };
                    // A bench consumer has no recovery policy: an error ends the run, counted.
                    ensure!(
                        pd.error_code == 0,
                        "Fetch error {} on partition {} at offset {}",
                        pd.error_code,
                        pd.partition_index,
                        part.check.next_offset
                    );
                    let Some(records) = &pd.records else { continue };
                    let e2e = w.end_to_end;
                    let lat = &mut tally.consume_latency;
                    let ilat = &mut tally.i_consume_latency;
                    let bytes_before = part.check.value_bytes;
                    let n = part.check.fetched(records, |sent| {
                        if e2e {
                            let ns = now.saturating_sub(sent);
                            if in_window {
                                record_ns(lat, ns, 1);
                            }
                            record_ns(ilat, ns, 1);
                        }
                    })?;
                    self.consumed += n;
                    if !w.end_to_end && n > 0 {
                        tally.consume_latency_n(in_window, now.saturating_sub(sent_ns), n);
                    }
                    let bytes = part.check.value_bytes - bytes_before;
                    tally.count_consumed(in_window, n, bytes, now);
                }
            }
        }
        if self.inflight.is_none() {
            if self.reached_targets(shared) {
                self.done = true;
                return Ok(true);
            }
            if !shared.abort.load(Ordering::Relaxed) {
                self.send_fetch(w, shared)?;
                progress = true;
            }
        }
        progress |= flush(&mut self.stream, &mut self.out, &mut self.out_pos)?;
        Ok(progress)
    }
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
        producers.push(ProducerConn {
            stream: open(&p.address)?,
            producer_id: p.producer_id,
            sequences: vec![0; p.partitions.len()],
            partitions: p.partitions,
            next_partition: 0,
            batches: 0,
            out: Vec::with_capacity(OUT_BYTES_MAX),
            out_pos: 0,
            inbuf: BytesMut::with_capacity(READ_BYTES),
            inflight: VecDeque::new(),
            correlation_id: 0,
            generated: 0,
            messages_max: p.messages_max,
            ns_per_message: p.rate_per_s.map(|r| 1e9 / r),
            start_ns,
            done: false,
        });
    }
    let mut consumers = Vec::new();
    for c in consumer_plans {
        consumers.push(ConsumerConn {
            stream: open(&c.address)?,
            parts: c
                .partitions
                .iter()
                .map(|&(partition, start, strict)| ConsumerPartition {
                    partition,
                    check: PartitionCheck::new(start, strict),
                })
                .collect(),
            out: Vec::new(),
            out_pos: 0,
            inbuf: BytesMut::with_capacity(READ_BYTES),
            inflight: None,
            correlation_id: 0,
            consumed: 0,
            messages_max: c.messages_max,
            done: false,
        });
    }
    let mut next_report_ns = start_ns + 1_000_000_000;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let mut progress = false;
        for p in producers.iter_mut() {
            progress |= p.step(w, shared, tally, result)?;
        }
        for c in consumers.iter_mut() {
            progress |= c.step(w, shared, tally)?;
        }
        let now = now_ns();
        if now >= next_report_ns {
            let _ = reports.send(tally.snapshot(index));
            next_report_ns += 1_000_000_000;
        }
        if producers.iter().all(|p| p.done) && consumers.iter().all(|c| c.done) {
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
            let events = libc::POLLIN | if p.out.is_empty() { 0 } else { libc::POLLOUT };
            fds.push(libc::pollfd {
                fd: p.stream.as_raw_fd(),
                events,
                revents: 0,
            });
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
    for c in consumers.iter_mut() {
        for p in c.parts.iter_mut() {
            p.check.settle();
            result.faults.add(&p.check.faults);
            result.checked += p.check.messages;
            result
                .consumed_offsets
                .push((p.partition, p.check.next_offset));
            for (&pid, &next) in &p.check.next_sequence {
                result.consumed_next.insert((p.partition, pid), next);
            }
        }
    }
    Ok(())
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
