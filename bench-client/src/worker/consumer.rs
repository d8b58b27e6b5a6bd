//! One consumer connection of a worker: one Fetch in flight at a time over its
//! partitions, and every fetched record set through the verifier (`PartitionCheck`). Never
//! produces and never blocks: every call does what the socket allows now.
//!
//! Leader changes: a partition answered with a retriable error, or every partition of a
//! connection that was lost, leaves the connection as an `Orphan` with its check (so it
//! resumes at the offset it reached); the worker hands it to a connection to its new leader
//! once Metadata newer than the failure names one (`Orphan::since_ns`).

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
use crate::proto::{decode_response_header, encode_request, retriable, take_frame, topic_name};
use crate::stats::record_ns;
use crate::verify::PartitionCheck;

pub(super) struct ConsumerPartition {
    pub(super) partition: i32,
    pub(super) check: PartitionCheck,
}

/// A partition waiting for a connection to its leader.
pub(super) struct Orphan {
    pub(super) part: ConsumerPartition,
    /// Last failure: only Metadata newer than this may route it.
    pub(super) since_ns: u64,
    /// First failure, for the retry bound.
    pub(super) stalled_since_ns: u64,
}

pub(super) struct ConsumerConn {
    pub(super) address: String,
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
        let parts = c
            .partitions
            .iter()
            .map(|&(partition, start, strict)| ConsumerPartition {
                partition,
                check: PartitionCheck::new(start, strict),
            })
            .collect();
        let stream = open(&c.address)?;
        Ok(ConsumerConn::over(c.address, stream, parts, c.messages_max))
    }

    /// A connection to a partition's new leader, with no partitions yet.
    pub(super) fn reconnect(address: &str) -> Result<ConsumerConn> {
        let stream = super::open_with(address, super::RECONNECT_TIMEOUT)?;
        Ok(ConsumerConn::over(
            address.to_string(),
            stream,
            Vec::new(),
            None,
        ))
    }

    fn over(
        address: String,
        stream: TcpStream,
        parts: Vec<ConsumerPartition>,
        messages_max: Option<u64>,
    ) -> ConsumerConn {
        ConsumerConn {
            address,
            stream,
            parts,
            out: Vec::new(),
            out_pos: 0,
            inbuf: BytesMut::with_capacity(READ_BYTES),
            inflight: None,
            correlation_id: 0,
            consumed: 0,
            messages_max,
            done: false,
        }
    }

    /// The connection failed: every partition leaves it, and it is done.
    #[cold]
    fn lose(&mut self, why: &str, orphans: &mut Vec<Orphan>) {
        eprintln!(
            "consumer: connection to {} lost ({why}); {} partitions will be fetched again at their leaders",
            self.address,
            self.parts.len()
        );
        let now = now_ns();
        orphans.extend(self.parts.drain(..).map(|part| Orphan {
            part,
            since_ns: now,
            stalled_since_ns: now,
        }));
        self.inflight = None;
        self.done = true;
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
        orphans: &mut Vec<Orphan>,
    ) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let open = read_available(&self.stream, &mut self.inbuf);
        let mut progress = self.handle_responses(w, shared, tally, orphans)?;
        match open {
            Ok(true) => {}
            Ok(false) => {
                self.lose("closed by the broker", orphans);
                return Ok(true);
            }
            Err(e) => {
                self.lose(&format!("{e:#}"), orphans);
                return Ok(true);
            }
        }
        if let Some((_, sent_ns)) = self.inflight {
            let timeout_ns = (w.fetch_max_wait_ms.max(0) as u64 + 30_000) * 1_000_000;
            if now_ns().saturating_sub(sent_ns) > timeout_ns {
                self.lose("a Fetch went unanswered", orphans);
                return Ok(true);
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
        match flush(&mut self.stream, &mut self.out, &mut self.out_pos) {
            Ok(p) => progress |= p,
            Err(e) => self.lose(&format!("{e:#}"), orphans),
        }
        Ok(progress)
    }

    /// Checks every complete Fetch response; partitions answered with a retriable error
    /// become orphans.
    fn handle_responses(
        &mut self,
        w: &Workload,
        shared: &Shared,
        tally: &mut Tally,
        orphans: &mut Vec<Orphan>,
    ) -> Result<bool> {
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
            let mut moved: Vec<i32> = Vec::new();
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
                    if retriable(pd.error_code) {
                        moved.push(pd.partition_index);
                        continue;
                    }
                    // OFFSET_OUT_OF_RANGE where this consumer has read before: the leader's log
                    // now ends below what it served (a failover to a replica that was behind,
                    // or a crash that took back what was served before it was durable).
                    ensure!(
                        pd.error_code != 1 || part.check.messages == 0,
                        "Fetch of partition {} at offset {}: OFFSET_OUT_OF_RANGE, but this consumer \
                         already read up to there: the leader no longer holds offsets it served",
                        pd.partition_index,
                        part.check.next_offset
                    );
                    // Any other error ends the run, counted.
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
            if !moved.is_empty() {
                self.orphan(&moved, now, orphans);
            }
        }
        Ok(progress)
    }

    /// Partitions `moved` leave this connection to be fetched at their new leaders.
    #[cold]
    fn orphan(&mut self, moved: &[i32], now: u64, orphans: &mut Vec<Orphan>) {
        let (gone, kept): (Vec<ConsumerPartition>, Vec<ConsumerPartition>) = self
            .parts
            .drain(..)
            .partition(|p| moved.contains(&p.partition));
        self.parts = kept;
        orphans.extend(gone.into_iter().map(|part| Orphan {
            part,
            since_ns: now,
            stalled_since_ns: now,
        }));
    }
}
