//! One consumer connection of a worker: one Fetch in flight at a time over its
//! partitions, and every fetched record set through the verifier (`PartitionCheck`). Never
//! produces and never blocks: every call does what the socket allows now.

use std::net::TcpStream;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::BytesMut;
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    BrokerId, FetchRequest, FetchResponse,
};
use kafka_protocol::protocol::Decodable;

use super::{
    flush, now_ns, open, read_available, ConsumerPlan, Shared, Tally, Workload, READ_BYTES,
};
use crate::proto::{decode_response_header, encode_request, take_frame, topic_name};
use crate::stats::record_ns;
use crate::verify::PartitionCheck;

pub(super) struct ConsumerPartition {
    pub(super) partition: i32,
    pub(super) check: PartitionCheck,
}

pub(super) struct ConsumerConn {
    pub(super) stream: TcpStream,
    pub(super) parts: Vec<ConsumerPartition>,
    pub(super) out: Vec<u8>,
    out_pos: usize,
    inbuf: BytesMut,
    inflight: Option<(i32, u64)>,
    correlation_id: i32,
    consumed: u64,
    messages_max: Option<u64>,
    pub(super) done: bool,
}

impl ConsumerConn {
    /// Connects to the plan's broker; nothing is sent until the first `step`.
    pub(super) fn new(c: ConsumerPlan) -> Result<ConsumerConn> {
        Ok(ConsumerConn {
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
        })
    }

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

    pub(super) fn step(
        &mut self,
        w: &Workload,
        shared: &Shared,
        tally: &mut Tally,
    ) -> Result<bool> {
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
