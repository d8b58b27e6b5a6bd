//! One producer of a worker: a producer identity (the id its messages carry) with its
//! partitions, each a stream of sequence numbers, sent over one link (connection) per broker
//! that leads one of them. Generates batches (open loop when rated), encodes Produce requests
//! in place in a link's send buffer, pipelines up to `inflight_max` per link, and matches the
//! responses to what it sent (acks, latencies, errors). Never reads from a topic and never
//! blocks, except to connect to a new leader.
//!
//! Leader changes: a retriable error for a batch, or a lost link, puts the batch back in its
//! partition's resend queue (in sequence order) and takes the partition off its link; once
//! Metadata newer than the failure names a leader, the partition is routed to a link to it
//! (opened if needed) and its queue is sent again before anything new of it. A batch is
//! re-encoded from what `InFlight` keeps (sequence, count, send times), so the fast path
//! keeps no copy of what it sent. Resent ranges are recorded for the verifier: the broker may
//! hold a resent batch twice (its first ack was lost) or after a later one.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::Compression;

use super::{
    flush, now_ns, open, read_available, wall_ms, ProducerPlan, Recovery, Shared, Tally,
    WorkerResult, Workload, OUT_BYTES_MAX, READ_BYTES, RECONNECT_TIMEOUT,
};
use crate::batch::{batch_bytes, encode_batch, encode_batch_compressed, BatchSpec, Payloads};
use crate::leaders::Leaders;
use crate::proto::{self, decode_response_header, retriable, take_frame};
use crate::verify::Ack;

/// A batch sent and not yet acknowledged, with what it takes to encode it again.
pub(super) struct InFlight {
    correlation_id: i32,
    /// Index of its partition in the producer's `slots`.
    slot: usize,
    first_sequence: u64,
    count: u32,
    /// Index of the batch's first message in this producer's stream (open loop timing).
    first_index: u64,
    /// When the batch was made: latency counts from here, across resends.
    created_ns: u64,
    /// When it was last sent: the request timeout counts from here.
    sent_ns: u64,
    bytes: u64,
    /// Values of `--large-message-bytes` (the mixed-size cycle).
    large: bool,
}

/// One connection of a producer, to one broker.
pub(super) struct Link {
    address: String,
    /// None once lost; reopened when a partition is routed here again.
    pub(super) stream: Option<TcpStream>,
    pub(super) out: Vec<u8>,
    out_pos: usize,
    inbuf: BytesMut,
    inflight: VecDeque<InFlight>,
    correlation_id: i32,
}

impl Link {
    fn new(address: String, stream: TcpStream) -> Link {
        Link {
            address,
            stream: Some(stream),
            out: Vec::with_capacity(OUT_BYTES_MAX),
            out_pos: 0,
            inbuf: BytesMut::with_capacity(READ_BYTES),
            inflight: VecDeque::new(),
            correlation_id: 0,
        }
    }

    #[inline]
    fn has_room(&self, w: &Workload) -> bool {
        (self.inflight.len() < w.inflight_max || w.acks == 0)
            && self.out.len() - self.out_pos < OUT_BYTES_MAX
            && self.stream.is_some()
    }
}

/// One partition of a producer: its sequence stream and where it is sent.
struct Slot {
    partition: i32,
    next_sequence: u64,
    /// Index in `links`; None while the partition waits for a leader.
    link: Option<usize>,
    /// Batches to send again, in sequence order, before anything new of this partition.
    resend: VecDeque<InFlight>,
    /// Last time the partition failed to find a route: only Metadata newer than this routes it.
    unrouted_ns: u64,
    /// Start of the current run of failed routing, for the retry bound; 0 when routed.
    stalled_since_ns: u64,
    /// Batches in flight or queued for resend.
    outstanding: u32,
    /// Since when the partition has had something outstanding with no acknowledgement.
    waiting_since_ns: u64,
}

pub(super) struct ProducerConn {
    producer_id: u32,
    slots: Vec<Slot>,
    next_slot: usize,
    /// Slots with no link.
    unrouted: usize,
    /// Batches in all resend queues.
    resends: usize,
    /// Batches encoded so far (picks each one's size with `--large-message-bytes`).
    batches: u64,
    pub(super) links: Vec<Link>,
    generated: u64,
    messages_max: Option<u64>,
    ns_per_message: Option<f64>,
    start_ns: u64,
    refresh_wanted: bool,
    pub(super) recovery: Recovery,
    /// Batches sent again: (partition, first sequence, end sequence).
    resent: Vec<(i32, u64, u64)>,
    pub(super) done: bool,
}

impl ProducerConn {
    /// Connects to the plan's broker (the leader of all its partitions at the start);
    /// nothing is sent until the first `step`.
    pub(super) fn new(p: ProducerPlan, start_ns: u64) -> Result<ProducerConn> {
        let link = Link::new(p.address.clone(), open(&p.address)?);
        Ok(ProducerConn {
            producer_id: p.producer_id,
            slots: p
                .partitions
                .iter()
                .map(|&partition| Slot {
                    partition,
                    next_sequence: 0,
                    link: Some(0),
                    resend: VecDeque::new(),
                    unrouted_ns: 0,
                    stalled_since_ns: 0,
                    outstanding: 0,
                    waiting_since_ns: 0,
                })
                .collect(),
            next_slot: 0,
            unrouted: 0,
            resends: 0,
            batches: 0,
            links: vec![link],
            generated: 0,
            messages_max: p.messages_max,
            ns_per_message: p.rate_per_s.map(|r| 1e9 / r),
            start_ns,
            refresh_wanted: false,
            recovery: Recovery::default(),
            resent: Vec::new(),
            done: false,
        })
    }

    fn intended_ns(&self, index: u64, fallback: u64) -> u64 {
        match self.ns_per_message {
            Some(ns) => self.start_ns + (index as f64 * ns) as u64,
            None => fallback,
        }
    }

    /// Sends queued resends, then encodes as many new batches as are due and fit the
    /// in-flight windows of the partitions' links.
    fn generate(&mut self, now: u64, w: &Workload, shared: &Shared) -> Result<bool> {
        let mut progress = false;
        if self.resends > 0 {
            progress |= self.send_resends(now, w, shared)?;
        }
        let n = self.slots.len();
        let mut skipped = 0;
        while skipped < n && !shared.stop_producing.load(Ordering::Relaxed) {
            let s = self.next_slot;
            let slot = &self.slots[s];
            let link = match slot.link {
                Some(l) if slot.resend.is_empty() && self.links[l].has_room(w) => l,
                _ => {
                    if self.links.len() == 1 && self.unrouted == 0 && self.resends == 0 {
                        break; // the only link is full: nothing else can go anywhere
                    }
                    self.next_slot = (s + 1) % n;
                    skipped += 1;
                    continue;
                }
            };
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
            self.encode_new(now, s, link, count, w)?;
            skipped = 0;
            progress = true;
        }
        Ok(progress)
    }

    /// A new batch of `count` messages for slot `s`, sent on link `l`.
    fn encode_new(
        &mut self,
        now: u64,
        s: usize,
        l: usize,
        count: usize,
        w: &Workload,
    ) -> Result<()> {
        let large = w.large.is_some() && super::is_large_batch(self.batches);
        self.batches += 1;
        self.next_slot = (s + 1) % self.slots.len();
        let slot = &mut self.slots[s];
        let (payloads, _) = w.size_of_batch(self.batches - 1);
        let f = InFlight {
            correlation_id: 0,
            slot: s,
            first_sequence: slot.next_sequence,
            count: count as u32,
            first_index: self.generated,
            created_ns: now,
            sent_ns: now,
            bytes: (count * payloads.value_bytes()) as u64,
            large,
        };
        slot.next_sequence += count as u64;
        if slot.outstanding == 0 {
            slot.waiting_since_ns = now;
        }
        slot.outstanding += 1;
        self.generated += count as u64;
        self.send(l, f, now, w)
    }

    /// Encodes `f` into link `l`'s send buffer under a new correlation id.
    fn send(&mut self, l: usize, mut f: InFlight, now: u64, w: &Workload) -> Result<()> {
        let payloads: &Payloads = match (&w.large, f.large) {
            (Some(large), true) => &large.payloads,
            _ => &w.payloads,
        };
        let partition = self.slots[f.slot].partition;
        let link = &mut self.links[l];
        link.correlation_id = link.correlation_id.wrapping_add(1);
        f.correlation_id = link.correlation_id;
        f.sent_ns = now;
        let (start_ns, ns_per, first_index, created_ns) = (
            self.start_ns,
            self.ns_per_message,
            f.first_index,
            f.created_ns,
        );
        let send_time = move |i: usize| match ns_per {
            Some(ns) => start_ns + ((first_index + i as u64) as f64 * ns) as u64,
            None => created_ns,
        };
        let spec = BatchSpec {
            producer_id: self.producer_id,
            first_sequence: f.first_sequence,
            count: f.count as usize,
            timestamp_ms: wall_ms(),
            send_time_ns: &send_time,
        };
        let correlation_id = f.correlation_id;
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
            let records_bytes = batch_bytes(payloads, spec.count);
            prefix(&mut link.out, records_bytes);
            let batch_start = link.out.len();
            encode_batch(&mut link.out, payloads, &spec);
            debug_assert_eq!(link.out.len() - batch_start, records_bytes);
        } else {
            let mut batch = Vec::new();
            encode_batch_compressed(&mut batch, payloads, &spec, w.compression)?;
            prefix(&mut link.out, batch.len());
            link.out.extend_from_slice(&batch);
        }
        link.out
            .extend_from_slice(proto::produce_suffix(w.produce_version));
        link.inflight.push_back(f);
        Ok(())
    }

    /// Sends the resend queues of routed partitions, oldest first, as their links allow.
    #[cold]
    fn send_resends(&mut self, now: u64, w: &Workload, shared: &Shared) -> Result<bool> {
        let mut progress = false;
        for s in 0..self.slots.len() {
            let Some(l) = self.slots[s].link else {
                continue;
            };
            while self.links[l].has_room(w) && !shared.abort.load(Ordering::Relaxed) {
                let Some(f) = self.slots[s].resend.pop_front() else {
                    break;
                };
                self.resends -= 1;
                self.recovery.resent_batches += 1;
                self.resent.push((
                    self.slots[s].partition,
                    f.first_sequence,
                    f.first_sequence + f.count as u64,
                ));
                self.send(l, f, now, w)?;
                progress = true;
            }
        }
        Ok(progress)
    }

    /// Puts `f` back in its partition's resend queue, in sequence order.
    fn requeue(&mut self, f: InFlight) {
        let queue = &mut self.slots[f.slot].resend;
        let at = queue.partition_point(|q| q.first_sequence < f.first_sequence);
        queue.insert(at, f);
        self.resends += 1;
    }

    /// Takes slot `s` off its link until Metadata newer than `now` names its leader.
    fn unroute(&mut self, s: usize, now: u64) {
        let slot = &mut self.slots[s];
        if slot.link.take().is_some() {
            self.unrouted += 1;
            if slot.stalled_since_ns == 0 {
                slot.stalled_since_ns = now;
            }
        }
        slot.unrouted_ns = now;
        self.refresh_wanted = true;
    }

    /// Link `l` failed (closed, reset, timed out): everything in flight on it goes back to
    /// its partition's queue, and its partitions wait for a leader.
    #[cold]
    fn lose_link(&mut self, l: usize, now: u64, why: &str, w: &Workload) {
        let link = &mut self.links[l];
        if link.stream.take().is_none() {
            return;
        }
        eprintln!(
            "producer {}: connection to {} lost ({why}); {} requests in flight will be resent",
            self.producer_id,
            link.address,
            link.inflight.len()
        );
        link.out.clear();
        link.out_pos = 0;
        link.inbuf.clear();
        let lost: Vec<InFlight> = link.inflight.drain(..).collect();
        for f in lost {
            if w.acks == 0 {
                self.slots[f.slot].outstanding -= 1; // never acknowledged, never verified
            } else {
                self.requeue(f);
            }
        }
        for s in 0..self.slots.len() {
            if self.slots[s].link == Some(l) {
                self.unroute(s, now);
            }
        }
    }

    /// Routes the partitions waiting for a leader whose Metadata has come since they failed;
    /// opens a link to a leader not connected yet. Fails a partition that found no reachable
    /// leader for the retry bound.
    #[cold]
    fn route(&mut self, now: u64, leaders: &Leaders, w: &Workload) -> Result<bool> {
        let mut progress = false;
        let mut unreachable: Vec<String> = Vec::new();
        for s in 0..self.slots.len() {
            let (partition, unrouted_ns) = match &self.slots[s] {
                slot if slot.link.is_none() => (slot.partition, slot.unrouted_ns),
                _ => continue,
            };
            let fresh = leaders.refreshed_ns > unrouted_ns;
            let leader = leaders.leader(partition).filter(|_| fresh);
            let routed = match leader {
                Some(a) if !unreachable.iter().any(|u| u == a) => match self.link_to(a) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        eprintln!(
                            "producer {}: leader {a} of partition {partition} unreachable: {e:#}",
                            self.producer_id
                        );
                        unreachable.push(a.to_string());
                        None
                    }
                },
                _ => None,
            };
            let slot = &mut self.slots[s];
            match routed {
                Some(l) => {
                    slot.link = Some(l);
                    slot.stalled_since_ns = 0;
                    self.unrouted -= 1;
                    progress = true;
                }
                None => {
                    if fresh {
                        slot.unrouted_ns = now; // this Metadata did not help: wait for the next
                    }
                    self.refresh_wanted = true;
                    if now.saturating_sub(slot.stalled_since_ns) > w.retry_timeout_ns {
                        bail!(
                            "partition {} found no reachable leader for {:.1} s (--retry-timeout-s)",
                            slot.partition,
                            w.retry_timeout_ns as f64 / 1e9
                        );
                    }
                }
            }
        }
        Ok(progress)
    }

    /// The link to `address`, reopened or opened if needed.
    fn link_to(&mut self, address: &str) -> Result<usize> {
        let found = self.links.iter().position(|l| l.address == address);
        if let Some(l) = found {
            if self.links[l].stream.is_some() {
                return Ok(l);
            }
        }
        let stream = super::open_with(address, RECONNECT_TIMEOUT)?;
        self.recovery.reconnects += 1;
        Ok(match found {
            Some(l) => {
                self.links[l].stream = Some(stream);
                l
            }
            None => {
                self.links.push(Link::new(address.to_string(), stream));
                self.links.len() - 1
            }
        })
    }

    /// Handles every complete response on link `l`.
    fn handle_responses(
        &mut self,
        l: usize,
        w: &Workload,
        shared: &Shared,
        tally: &mut Tally,
        result: &mut WorkerResult,
    ) -> Result<bool> {
        let mut progress = false;
        let mut failed: Vec<InFlight> = Vec::new();
        let link = &mut self.links[l];
        while let Some(mut frame) = take_frame(&mut link.inbuf)? {
            progress = true;
            let now = now_ns();
            let f = link
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
            let slot = &mut self.slots[f.slot];
            let p = response
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == slot.partition)
                .ok_or_else(|| anyhow!("Produce response lacks partition {}", slot.partition))?;
            if p.error_code != 0 {
                if retriable(p.error_code) {
                    failed.push(f);
                    continue;
                }
                slot.outstanding -= 1; // given up: counted as a fault
                result.faults.request_errors += 1;
                if result.faults.request_errors <= 5 {
                    eprintln!(
                        "produce error {} on partition {} ({} records): {:?}",
                        p.error_code,
                        slot.partition,
                        f.count,
                        p.error_message.as_ref().map(|m| m.as_str())
                    );
                }
                continue;
            }
            result.acks.push(Ack {
                partition: slot.partition,
                base_offset: p.base_offset,
                count: f.count,
            });
            let end = f.first_sequence + f.count as u64;
            result
                .acked_next
                .entry((slot.partition, self.producer_id))
                .and_modify(|e| *e = (*e).max(end))
                .or_insert(end);
            let stall = now.saturating_sub(slot.waiting_since_ns);
            if stall > self.recovery.stall_ns_max {
                self.recovery.stall_ns_max = stall;
                self.recovery.stall_partition = slot.partition;
            }
            slot.outstanding -= 1;
            slot.waiting_since_ns = now;
            let in_window = shared.in_window(now);
            tally.count_produced(in_window, f.count as u64, f.bytes);
            match self.ns_per_message {
                None => tally.produce_latency_n(
                    in_window,
                    now.saturating_sub(f.created_ns),
                    f.count as u64,
                ),
                Some(ns) => {
                    for i in 0..f.count as u64 {
                        let intended = self.start_ns + ((f.first_index + i) as f64 * ns) as u64;
                        tally.produce_latency_n(in_window, now.saturating_sub(intended), 1);
                    }
                }
            }
        }
        if !failed.is_empty() {
            self.fail_batches(failed);
        }
        Ok(progress)
    }

    /// Batches answered with a retriable error: queued again, their partitions rerouted.
    #[cold]
    fn fail_batches(&mut self, failed: Vec<InFlight>) {
        let now = now_ns();
        for f in failed {
            let s = f.slot;
            self.requeue(f);
            self.unroute(s, now);
        }
    }

    /// With acks=0 there are no responses: a batch counts once it has left the socket buffer.
    fn count_unacknowledged(&mut self, l: usize, shared: &Shared, tally: &mut Tally) {
        let link = &mut self.links[l];
        if link.out.is_empty() {
            let now = now_ns();
            while let Some(f) = link.inflight.pop_front() {
                self.slots[f.slot].outstanding -= 1;
                tally.count_produced(shared.in_window(now), f.count as u64, f.bytes);
            }
        }
    }

    pub(super) fn step(
        &mut self,
        w: &Workload,
        shared: &Shared,
        tally: &mut Tally,
        result: &mut WorkerResult,
        leaders: &mut Leaders,
    ) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let mut progress = false;
        for l in 0..self.links.len() {
            let link = &mut self.links[l];
            let Some(stream) = &link.stream else {
                continue;
            };
            if w.acks == 0 {
                continue;
            }
            let open = read_available(stream, &mut link.inbuf);
            progress |= self.handle_responses(l, w, shared, tally, result)?;
            match open {
                Ok(true) => {}
                Ok(false) => self.lose_link(l, now_ns(), "closed by the broker", w),
                Err(e) => self.lose_link(l, now_ns(), &format!("{e:#}"), w),
            }
        }
        let now = now_ns();
        if self.unrouted > 0 {
            progress |= self.route(now, leaders, w)?;
        }
        progress |= self.generate(now, w, shared)?;
        for l in 0..self.links.len() {
            let link = &mut self.links[l];
            let Some(stream) = &mut link.stream else {
                continue;
            };
            match flush(stream, &mut link.out, &mut link.out_pos) {
                Ok(p) => progress |= p,
                Err(e) => self.lose_link(l, now, &format!("{e:#}"), w),
            }
            if w.acks == 0 {
                self.count_unacknowledged(l, shared, tally);
            }
            let timeout_ns = w.request_timeout_ms as u64 * 1_000_000 + 5_000_000_000;
            if let Some(f) = self.links[l].inflight.front() {
                if now.saturating_sub(f.sent_ns) >= timeout_ns {
                    let why = format!("no answer in {} ms", timeout_ns / 1_000_000);
                    self.lose_link(l, now, &why, w);
                }
            }
        }
        if self.refresh_wanted {
            leaders.want_refresh();
            self.refresh_wanted = false;
        }
        let finished = shared.stop_producing.load(Ordering::Relaxed)
            || self.messages_max.is_some_and(|m| self.generated >= m);
        if finished
            && self.resends == 0
            && self
                .links
                .iter()
                .all(|l| l.inflight.is_empty() && l.out.is_empty())
        {
            self.done = true;
            shared.producers_done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(progress)
    }

    /// Nanoseconds until this producer next has something due, for the poll timeout.
    pub(super) fn next_due_ns(&self, now: u64, w: &Workload) -> Option<u64> {
        let ns = self.ns_per_message?;
        if self.done || self.links.iter().all(|l| !l.has_room(w)) {
            return None;
        }
        let full_due =
            self.start_ns + ((self.generated + w.batch_records as u64 - 1) as f64 * ns) as u64;
        let linger_due = self.intended_ns(self.generated, now) + w.linger_ns;
        Some(full_due.min(linger_due).saturating_sub(now))
    }

    /// What was resent, per partition: (partition, first sequence, end sequence).
    pub(super) fn resent(&self) -> impl Iterator<Item = (i32, u32, u64, u64)> + '_ {
        self.resent
            .iter()
            .map(|&(p, first, end)| (p, self.producer_id, first, end))
    }
}
