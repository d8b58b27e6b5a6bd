//! One producer connection of a worker: generates batches (open loop when rated), encodes
//! Produce requests in place in its send buffer, pipelines up to `inflight_max`, and
//! matches the responses to what it sent (acks, latencies, errors). Never reads from a
//! topic and never blocks: every call does what the socket allows now.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::BytesMut;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::Compression;

use super::{
    flush, now_ns, open, read_available, wall_ms, ProducerPlan, Shared, Tally, WorkerResult,
    Workload, OUT_BYTES_MAX, READ_BYTES,
};
use crate::batch::{batch_bytes, encode_batch, encode_batch_compressed, BatchSpec};
use crate::proto::{self, decode_response_header, take_frame};
use crate::verify::Ack;

pub(super) struct InFlight {
    correlation_id: i32,
    partition: i32,
    first_sequence: u64,
    count: u32,
    /// Index of the batch's first message in this connection's stream (open loop timing).
    first_index: u64,
    created_ns: u64,
    bytes: u64,
}

pub(super) struct ProducerConn {
    pub(super) stream: TcpStream,
    producer_id: u32,
    partitions: Vec<i32>,
    sequences: Vec<u64>,
    next_partition: usize,
    /// Batches encoded so far (picks each one's size with `--large-message-bytes`).
    batches: u64,
    pub(super) out: Vec<u8>,
    out_pos: usize,
    inbuf: BytesMut,
    inflight: VecDeque<InFlight>,
    correlation_id: i32,
    generated: u64,
    messages_max: Option<u64>,
    ns_per_message: Option<f64>,
    start_ns: u64,
    pub(super) done: bool,
}

impl ProducerConn {
    /// Connects to the plan's broker; nothing is sent until the first `step`.
    pub(super) fn new(p: ProducerPlan, start_ns: u64) -> Result<ProducerConn> {
        Ok(ProducerConn {
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
        })
    }

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

    pub(super) fn step(
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
    pub(super) fn next_due_ns(&self, now: u64, w: &Workload) -> Option<u64> {
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
