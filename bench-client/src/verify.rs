//! Verification: what consumers and producer acks must show for a run to pass.
//!
//! Consumers check, per partition, that offsets follow each other and that each producer's
//! sequence numbers arrive exactly once and in order, and that every payload matches its
//! checksum. A gap is held as missing until the end: still missing then, it is lost; filled
//! by a message arriving late, that message is reordered. A sequence seen before is a
//! duplicate. Producers check that the offsets the broker acknowledged tile each partition
//! without holes or overlaps.
//!
//! A producer that resends what was not acknowledged (after a leader change or a lost
//! connection) may have the broker store a batch twice, or a later batch before the resent
//! one: the checks record every late arrival as a range (`StepBack`), and the run forgives
//! exactly those covered by the producers' resent ranges (`forgive_resends`), reporting them
//! as duplicates from resends instead of faults. Owns no I/O; workers feed it and the run
//! merges the results.

use std::collections::HashMap;
use std::fmt;

use anyhow::Result;
use bytes::Bytes;

use crate::batch::{read_value, walk_batches};

/// Counts of everything that went wrong; a run passes only if all are zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Messages missing: sequence gaps, or acked messages never consumed.
    pub lost: u64,
    /// Messages seen again within a partition.
    pub duplicated: u64,
    /// Messages that arrived after later messages of their producer in the same partition.
    pub reordered: u64,
    /// Payload checksum or batch CRC mismatches, unreadable values.
    pub corrupted: u64,
    /// Holes or overlaps in offsets (consumed, or acknowledged by the broker).
    pub offset_errors: u64,
    /// Requests the broker answered with an error, or that failed.
    pub request_errors: u64,
}

impl Faults {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Faults) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
        self.offset_errors += other.offset_errors;
        self.request_errors += other.request_errors;
    }

    /// Sum of all faults.
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.corrupted
            + self.offset_errors
            + self.request_errors
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost {} duplicated {} reordered {} corrupted {} offset errors {} request errors {}",
            self.lost,
            self.duplicated,
            self.reordered,
            self.corrupted,
            self.offset_errors,
            self.request_errors
        )
    }
}

/// What a consumer has seen of one partition.
#[derive(Debug)]
pub struct PartitionCheck {
    /// Next offset expected.
    pub next_offset: i64,
    /// Whether a producer seen for the first time must start at sequence 0 (reading from the
    /// log start of a log that starts at offset 0), or may start anywhere.
    strict_start: bool,
    /// Next sequence expected per producer id.
    pub next_sequence: HashMap<u32, u64>,
    pub faults: Faults,
    pub messages: u64,
    /// Bytes of the values of `messages`.
    pub value_bytes: u64,
    /// Samples are reported to this with the message's send time.
    last_producer: Option<(u32, u64)>,
    /// Sequence ranges skipped over, per producer: lost unless they arrive later.
    missing: Vec<SequenceRange>,
    /// Messages that arrived late (reordered) or again (duplicated), as ranges.
    pub steps_back: Vec<StepBack>,
}

/// Sequences `first..end` of one producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    pub producer_id: u32,
    pub first: u64,
    pub end: u64,
}

/// Messages of one producer that arrived after a later message of theirs: `filled` when they
/// filled a gap (reordered), else seen before (duplicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBack {
    pub range: SequenceRange,
    pub filled: bool,
}

impl PartitionCheck {
    /// Starts checking a partition from `start_offset`.
    pub fn new(start_offset: i64, strict_start: bool) -> PartitionCheck {
        PartitionCheck {
            next_offset: start_offset,
            strict_start,
            next_sequence: HashMap::new(),
            faults: Faults::default(),
            messages: 0,
            value_bytes: 0,
            last_producer: None,
            missing: Vec::new(),
            steps_back: Vec::new(),
        }
    }

    /// Checks one consumed record; returns its send time if it is one of ours and new.
    #[inline]
    pub fn record(&mut self, offset: i64, value: &[u8]) -> Option<u64> {
        if offset < self.next_offset {
            return None; // earlier records of a batch that straddles the fetch offset
        }
        if offset > self.next_offset {
            self.faults.offset_errors += 1;
        }
        self.next_offset = offset + 1;
        self.messages += 1;
        self.value_bytes += value.len() as u64;
        let Some(v) = read_value(value) else {
            self.faults.corrupted += 1;
            return None;
        };
        if !v.intact {
            self.faults.corrupted += 1;
        }
        // A batch holds one producer's consecutive sequences: skip the map lookup in that case.
        let expected = match self.last_producer {
            Some((pid, next)) if pid == v.producer_id => next,
            _ => {
                if let Some((pid, next)) = self.last_producer {
                    self.next_sequence.insert(pid, next);
                }
                match self.next_sequence.get(&v.producer_id) {
                    Some(&next) => next,
                    None if self.strict_start => 0,
                    None => v.sequence,
                }
            }
        };
        if v.sequence > expected {
            self.missing.push(SequenceRange {
                producer_id: v.producer_id,
                first: expected,
                end: v.sequence,
            });
        } else if v.sequence < expected {
            self.stepped_back(v.producer_id, v.sequence);
        }
        let next = if v.sequence >= expected {
            v.sequence + 1
        } else {
            expected
        };
        self.last_producer = Some((v.producer_id, next));
        Some(v.send_time_ns)
    }

    /// Checks every record of one fetched record set of this partition and moves past it;
    /// calls `sent` with the send time of each new message of ours. Returns how many records
    /// were checked. Errors only when the record set cannot be parsed at all.
    pub fn fetched(&mut self, records: &Bytes, mut sent: impl FnMut(u64)) -> Result<u64> {
        let before = self.messages;
        let outcome = walk_batches(records, |r| {
            if let Some(t) = self.record(r.offset, r.value) {
                sent(t);
            }
        })?;
        self.faults.corrupted += outcome.crc_errors;
        if let Some(next) = outcome.next_offset {
            self.next_offset = self.next_offset.max(next);
        }
        Ok(self.messages - before)
    }

    /// A message older than its producer's next expected sequence: fills a gap or repeats.
    #[cold]
    fn stepped_back(&mut self, producer_id: u32, sequence: u64) {
        let gap = self
            .missing
            .iter()
            .position(|m| m.producer_id == producer_id && (m.first..m.end).contains(&sequence));
        let filled = match gap {
            Some(i) => {
                let m = self.missing[i];
                self.missing.swap_remove(i);
                for (first, end) in [(m.first, sequence), (sequence + 1, m.end)] {
                    if first < end {
                        self.missing.push(SequenceRange {
                            producer_id,
                            first,
                            end,
                        });
                    }
                }
                self.faults.reordered += 1;
                true
            }
            None => {
                self.faults.duplicated += 1;
                false
            }
        };
        match self.steps_back.last_mut() {
            Some(s)
                if s.filled == filled
                    && s.range.producer_id == producer_id
                    && s.range.end == sequence =>
            {
                s.range.end += 1
            }
            _ => self.steps_back.push(StepBack {
                range: SequenceRange {
                    producer_id,
                    first: sequence,
                    end: sequence + 1,
                },
                filled,
            }),
        }
    }

    /// Flushes the cached producer into the map and counts what is still missing as lost;
    /// call once, after the last fetch, before reading `next_sequence` or `faults`.
    pub fn settle(&mut self) {
        if let Some((pid, next)) = self.last_producer.take() {
            self.next_sequence.insert(pid, next);
        }
        self.faults.lost += self.missing.drain(..).map(|m| m.end - m.first).sum::<u64>();
    }
}

/// What the producers resent, per (partition, producer id): the sequence ranges of batches
/// sent again after a leader change or a lost connection.
pub type Resent = HashMap<(i32, u32), Vec<(u64, u64)>>;

/// Moves the duplicates and reorderings that resends explain out of `faults`: returns how
/// many messages were forgiven (each was resent, so the broker may hold it twice or late).
pub fn forgive_resends(
    faults: &mut Faults,
    steps_back: &[(i32, StepBack)],
    resent: &Resent,
) -> u64 {
    let mut forgiven = 0;
    for (partition, s) in steps_back {
        let Some(ranges) = resent.get(&(*partition, s.range.producer_id)) else {
            continue;
        };
        let covered: u64 = ranges
            .iter()
            .map(|&(first, end)| {
                end.min(s.range.end)
                    .saturating_sub(first.max(s.range.first))
            })
            .sum::<u64>()
            .min(s.range.end - s.range.first);
        if s.filled {
            faults.reordered -= covered.min(faults.reordered);
        } else {
            faults.duplicated -= covered.min(faults.duplicated);
        }
        forgiven += covered;
    }
    forgiven
}

/// One acknowledged batch: broker-assigned base offset and how many records it covered.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub partition: i32,
    pub base_offset: i64,
    pub count: u32,
}

/// Checks that the acked ranges of each partition tile it: sorted, each starts where the
/// previous ended. Only meaningful when this run was the partition's only writer. A hole is
/// no fault in a partition listed in `resent`: a batch whose acknowledgement was lost was
/// stored, then resent and acknowledged at later offsets. An overlap always is.
pub fn check_acks(acks: &mut [Ack], resent: &std::collections::HashSet<i32>) -> Faults {
    let mut faults = Faults::default();
    acks.sort_unstable_by_key(|a| (a.partition, a.base_offset));
    for w in acks.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.partition != b.partition {
            continue;
        }
        let end = a.base_offset + a.count as i64;
        if b.base_offset < end || (b.base_offset > end && !resent.contains(&a.partition)) {
            faults.offset_errors += 1;
        }
    }
    faults
}

/// Compares what producers had acknowledged with what consumers saw: per (partition,
/// producer), the next sequence after the last acked message must have been reached.
pub fn check_consumed_all(
    acked: &HashMap<(i32, u32), u64>,
    consumed: &HashMap<(i32, u32), u64>,
) -> Faults {
    let mut faults = Faults::default();
    for (key, &acked_next) in acked {
        let seen = consumed.get(key).copied().unwrap_or(0);
        if seen < acked_next {
            faults.lost += acked_next - seen;
        }
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_batch, BatchSpec, Payloads};
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use std::collections::HashSet;

    fn value(p: &Payloads, pid: u32, seq: u64) -> Vec<u8> {
        let mut v = Vec::new();
        p.write_value(&mut v, pid, seq, 99);
        v
    }

    #[test]
    fn in_order_messages_of_two_producers_pass() {
        let p = Payloads::new(40).unwrap();
        let mut c = PartitionCheck::new(10, true);
        let mut offset = 10;
        for (pid, seqs) in [(1, 0..5), (2, 0..3), (1, 5..8)] {
            for s in seqs {
                assert_eq!(c.record(offset, &value(&p, pid, s)), Some(99));
                offset += 1;
            }
        }
        c.settle();
        assert_eq!(c.faults, Faults::default());
        assert_eq!(c.messages, 11);
        assert_eq!(c.next_sequence[&1], 8);
        assert_eq!(c.next_sequence[&2], 3);
    }

    #[test]
    fn gaps_duplicates_offset_holes_and_corruption_are_counted() {
        let p = Payloads::new(40).unwrap();
        let mut c = PartitionCheck::new(0, true);
        c.record(0, &value(&p, 1, 0));
        c.record(1, &value(&p, 1, 3)); // 1 and 2 lost
        c.record(2, &value(&p, 1, 3)); // duplicate
        c.record(5, &value(&p, 1, 4)); // offset hole
        let mut bad = value(&p, 1, 5);
        bad[30] ^= 1;
        c.record(6, &bad);
        c.record(7, b"short");
        assert_eq!(
            c.record(3, &value(&p, 1, 9)),
            None,
            "offsets already seen are skipped"
        );
        c.settle();
        assert_eq!(
            c.faults,
            Faults {
                lost: 2,
                duplicated: 1,
                corrupted: 2,
                offset_errors: 1,
                ..Faults::default()
            }
        );
    }

    #[test]
    fn a_producer_first_seen_mid_stream_is_accepted_when_not_strict() {
        let p = Payloads::new(40).unwrap();
        let mut c = PartitionCheck::new(500, false);
        c.record(500, &value(&p, 3, 77));
        c.record(501, &value(&p, 3, 78));
        assert_eq!(c.faults.total(), 0);
        let mut strict = PartitionCheck::new(0, true);
        strict.record(0, &value(&p, 3, 77));
        strict.settle();
        assert_eq!(strict.faults.lost, 77);
    }

    #[test]
    fn acks_must_tile_each_partition() {
        let mut good = vec![
            Ack {
                partition: 0,
                base_offset: 10,
                count: 5,
            },
            Ack {
                partition: 1,
                base_offset: 0,
                count: 3,
            },
            Ack {
                partition: 0,
                base_offset: 0,
                count: 10,
            },
        ];
        assert_eq!(check_acks(&mut good, &HashSet::new()).total(), 0);
        let mut hole = vec![
            Ack {
                partition: 0,
                base_offset: 0,
                count: 10,
            },
            Ack {
                partition: 0,
                base_offset: 11,
                count: 1,
            },
        ];
        assert_eq!(check_acks(&mut hole, &HashSet::new()).offset_errors, 1);
        // A batch stored twice after a resend leaves a hole no ack covers: not a fault.
        let resent_in_0: HashSet<i32> = [0].into_iter().collect();
        assert_eq!(check_acks(&mut hole, &resent_in_0).offset_errors, 0);
        let mut overlap = vec![
            Ack {
                partition: 0,
                base_offset: 0,
                count: 10,
            },
            Ack {
                partition: 0,
                base_offset: 5,
                count: 10,
            },
        ];
        assert_eq!(check_acks(&mut overlap, &resent_in_0).offset_errors, 1);
    }

    #[test]
    fn acked_but_unconsumed_messages_are_lost() {
        let acked: HashMap<(i32, u32), u64> = [((0, 1), 100), ((1, 1), 50)].into_iter().collect();
        let consumed: HashMap<(i32, u32), u64> =
            [((0, 1), 100), ((1, 1), 40)].into_iter().collect();
        assert_eq!(check_consumed_all(&acked, &consumed).lost, 10);
    }

    // Fetched record sets, crafted in memory: good batches from the bench's own encoder, then
    // the fault a broker could commit (drop, repeat, reorder, flip a byte), fed to the check a
    // consumer runs on each fetched partition.

    /// One uncompressed batch of ten messages of `producer_id`, as the broker would serve
    /// it at `base_offset` (the base offset is outside the CRC, so stamping keeps it valid).
    fn batch(p: &Payloads, base_offset: i64, producer_id: u32, first_sequence: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let spec = BatchSpec {
            producer_id,
            first_sequence,
            count: 10,
            timestamp_ms: 1_700_000_000_000,
            send_time_ns: &|i| 1_000 + i as u64,
        };
        encode_batch(&mut out, p, &spec);
        out[..8].copy_from_slice(&base_offset.to_be_bytes());
        out
    }

    fn fetch(batches: &[&[u8]]) -> Bytes {
        Bytes::from(batches.concat())
    }

    /// Feeds each fetch in turn to a partition read from offset 0, as a consumer does.
    fn consume(fetches: &[Bytes]) -> PartitionCheck {
        let mut c = PartitionCheck::new(0, true);
        for f in fetches {
            c.fetched(f, |_| {}).unwrap();
        }
        c.settle();
        c
    }

    fn faults(lost: u64, duplicated: u64, corrupted: u64, offset_errors: u64) -> Faults {
        Faults {
            lost,
            duplicated,
            corrupted,
            offset_errors,
            ..Faults::default()
        }
    }

    #[test]
    fn fetched_batches_in_order_pass_and_report_every_send_time() {
        let p = Payloads::new(64).unwrap();
        let (a, b, c) = (
            batch(&p, 0, 1, 0),
            batch(&p, 10, 2, 0),
            batch(&p, 20, 1, 10),
        );
        let mut check = PartitionCheck::new(0, true);
        let mut sent = Vec::new();
        assert_eq!(
            check.fetched(&fetch(&[&a, &b]), |t| sent.push(t)).unwrap(),
            20
        );
        assert_eq!(check.fetched(&fetch(&[&c]), |t| sent.push(t)).unwrap(), 10);
        check.settle();
        assert_eq!(check.faults, Faults::default());
        assert_eq!((check.messages, check.next_offset), (30, 30));
        assert_eq!((check.next_sequence[&1], check.next_sequence[&2]), (20, 10));
        assert_eq!(sent.len(), 30);
        assert_eq!(sent[..3], [1_000, 1_001, 1_002]);
    }

    #[test]
    fn a_batch_served_again_at_its_own_offsets_is_not_a_fault() {
        // A fetch may start inside a batch already read: those records are skipped.
        let p = Payloads::new(64).unwrap();
        let (a, b) = (batch(&p, 0, 1, 0), batch(&p, 10, 1, 10));
        let c = consume(&[fetch(&[&a]), fetch(&[&a, &b])]);
        assert_eq!(c.faults, Faults::default());
        assert_eq!((c.messages, c.next_offset), (20, 20));
    }

    #[test]
    fn a_lost_batch_whose_offsets_stay_in_use_counts_its_messages_and_one_offset_hole() {
        let p = Payloads::new(64).unwrap();
        let (a, c) = (batch(&p, 0, 1, 0), batch(&p, 20, 1, 20));
        let check = consume(&[fetch(&[&a, &c])]);
        assert_eq!(check.faults, faults(10, 0, 0, 1));
        assert_eq!((check.messages, check.next_offset), (20, 30));
    }

    #[test]
    fn a_lost_batch_whose_offsets_were_reused_counts_only_its_messages() {
        let p = Payloads::new(64).unwrap();
        let (a, c) = (batch(&p, 0, 1, 0), batch(&p, 10, 1, 20));
        assert_eq!(consume(&[fetch(&[&a, &c])]).faults, faults(10, 0, 0, 0));
    }

    #[test]
    fn a_batch_appended_twice_counts_each_repeated_message_duplicated() {
        let p = Payloads::new(64).unwrap();
        let (a, again, b) = (
            batch(&p, 0, 1, 0),
            batch(&p, 10, 1, 0),
            batch(&p, 20, 1, 10),
        );
        let c = consume(&[fetch(&[&a, &again]), fetch(&[&b])]);
        assert_eq!(c.faults, faults(0, 10, 0, 0));
        assert_eq!(
            c.next_sequence[&1], 20,
            "the stream continues after the repeat"
        );
    }

    #[test]
    fn swapped_batches_count_each_late_message_reordered_and_none_lost() {
        let p = Payloads::new(64).unwrap();
        let (second, first) = (batch(&p, 0, 1, 10), batch(&p, 10, 1, 0));
        let c = consume(&[fetch(&[&second, &first])]);
        assert_eq!(
            c.faults,
            Faults {
                reordered: 10,
                ..Faults::default()
            }
        );
        assert_eq!(c.next_sequence[&1], 20);
    }

    #[test]
    fn resends_explain_exactly_the_duplicates_and_reorderings_of_resent_sequences() {
        // Stored: 0..10, 10..20, then 0..10 again (its ack was lost, so it was resent), then
        // 30..40 before the resent 20..30: all explained by resending 0..10 and 20..30.
        let p = Payloads::new(64).unwrap();
        let batches = [
            batch(&p, 0, 1, 0),
            batch(&p, 10, 1, 10),
            batch(&p, 20, 1, 0),
            batch(&p, 30, 1, 30),
            batch(&p, 40, 1, 20),
        ];
        let c = consume(&[fetch(
            &batches.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        )]);
        let mut f = c.faults;
        assert_eq!(
            f,
            Faults {
                duplicated: 10,
                reordered: 10,
                ..Faults::default()
            }
        );
        let steps: Vec<(i32, StepBack)> = c.steps_back.iter().map(|s| (0, *s)).collect();
        // Resending only 0..10 leaves the reordering of 20..30 unexplained: still a fault.
        let only_first: Resent = [((0, 1), vec![(0, 10)])].into_iter().collect();
        let mut g = f;
        assert_eq!(forgive_resends(&mut g, &steps, &only_first), 10);
        assert_eq!((g.duplicated, g.reordered), (0, 10));
        // Another producer's resends explain nothing here.
        let other: Resent = [((0, 2), vec![(0, 40)])].into_iter().collect();
        let mut h = f;
        assert_eq!(forgive_resends(&mut h, &steps, &other), 0);
        assert_eq!(h, f);
        let both: Resent = [((0, 1), vec![(0, 10), (20, 30)])].into_iter().collect();
        assert_eq!(forgive_resends(&mut f, &steps, &both), 20);
        assert_eq!(f.total(), 0);
    }

    #[test]
    fn a_flipped_payload_byte_under_a_resealed_crc_counts_one_corrupted_message() {
        let p = Payloads::new(64).unwrap();
        let mut bad = batch(&p, 10, 1, 10);
        let at = bad.len() - 10; // inside the last record's payload
        bad[at] ^= 0x01;
        let crc = crc32c::crc32c(&bad[21..]);
        bad[17..21].copy_from_slice(&crc.to_be_bytes());
        let c = consume(&[fetch(&[&batch(&p, 0, 1, 0), &bad, &batch(&p, 20, 1, 20)])]);
        assert_eq!(c.faults, faults(0, 0, 1, 0));
        assert_eq!(c.messages, 30);
    }

    #[test]
    fn a_batch_failing_its_crc_counts_once_as_corrupted_and_its_messages_as_lost() {
        let p = Payloads::new(64).unwrap();
        let (a, c) = (batch(&p, 0, 1, 0), batch(&p, 20, 1, 20));
        let mut bad = batch(&p, 10, 1, 10);
        bad[100] ^= 0x01;
        // The same whether the bad batch ends a fetch or has good batches after it.
        for fetches in [
            vec![fetch(&[&a, &bad]), fetch(&[&c])],
            vec![fetch(&[&a, &bad, &c]), fetch(&[&c])],
        ] {
            let check = consume(&fetches);
            assert_eq!(check.faults, faults(10, 0, 1, 0));
            assert_eq!((check.messages, check.next_offset), (20, 30));
        }
    }

    #[test]
    fn a_record_missing_from_a_compressed_batch_is_lost_and_leaves_an_offset_hole() {
        let p = Payloads::new(64).unwrap();
        let records: Vec<Record> = (0..10u64)
            .filter(|s| *s != 4)
            .map(|s| {
                let mut value = Vec::new();
                p.write_value(&mut value, 1, s, 0);
                Record {
                    transactional: false,
                    control: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: s as i64,
                    // One batch: the crate starts a new one when offset - sequence changes.
                    sequence: s as i32 - 1,
                    timestamp: 0,
                    key: None,
                    value: Some(Bytes::from(value)),
                    headers: Default::default(),
                    delete_horizon: false,
                }
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Zstd,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        let c = consume(&[buf.freeze()]);
        assert_eq!(c.faults, faults(1, 0, 0, 1));
        assert_eq!((c.messages, c.next_offset), (9, 10));
    }
}
