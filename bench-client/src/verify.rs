//! Verification: what consumers and producer acks must show for a run to pass.
//!
//! Consumers check, per partition, that offsets follow each other and that each producer's
//! sequence numbers arrive exactly once and in order (a gap is a loss, a step back is a
//! duplicate or a reordering), and that every payload matches its checksum. Producers check
//! that the offsets the broker acknowledged tile each partition without holes or overlaps.
//! Owns no I/O; workers feed it and the run merges the results.

use std::collections::HashMap;
use std::fmt;

use crate::batch::read_value;

/// Counts of everything that went wrong; a run passes only if all are zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Messages missing: sequence gaps, or acked messages never consumed.
    pub lost: u64,
    /// Messages seen again, or out of order, within a partition.
    pub duplicated: u64,
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
        self.corrupted += other.corrupted;
        self.offset_errors += other.offset_errors;
        self.request_errors += other.request_errors;
    }

    /// Sum of all faults.
    pub fn total(&self) -> u64 {
        self.lost + self.duplicated + self.corrupted + self.offset_errors + self.request_errors
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost {} duplicated/reordered {} corrupted {} offset errors {} request errors {}",
            self.lost, self.duplicated, self.corrupted, self.offset_errors, self.request_errors
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
    /// Samples are reported to this with the message's send time.
    last_producer: Option<(u32, u64)>,
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
            last_producer: None,
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
            self.faults.lost += v.sequence - expected;
        } else if v.sequence < expected {
            self.faults.duplicated += 1;
        }
        let next = if v.sequence >= expected {
            v.sequence + 1
        } else {
            expected
        };
        self.last_producer = Some((v.producer_id, next));
        Some(v.send_time_ns)
    }

    /// Flushes the cached producer into the map; call before reading `next_sequence`.
    pub fn settle(&mut self) {
        if let Some((pid, next)) = self.last_producer.take() {
            self.next_sequence.insert(pid, next);
        }
    }
}

/// One acknowledged batch: broker-assigned base offset and how many records it covered.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub partition: i32,
    pub base_offset: i64,
    pub count: u32,
}

/// Checks that the acked ranges of each partition tile it: sorted, each starts where the
/// previous ended. Only meaningful when this run was the partition's only writer.
pub fn check_acks(acks: &mut [Ack]) -> Faults {
    let mut faults = Faults::default();
    acks.sort_unstable_by_key(|a| (a.partition, a.base_offset));
    for w in acks.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.partition != b.partition {
            continue;
        }
        let end = a.base_offset + a.count as i64;
        if b.base_offset != end {
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
    use crate::batch::Payloads;

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
        assert_eq!(
            c.faults,
            Faults {
                lost: 2,
                duplicated: 1,
                corrupted: 2,
                offset_errors: 1,
                request_errors: 0
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
        assert_eq!(check_acks(&mut good).total(), 0);
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
        assert_eq!(check_acks(&mut hole).offset_errors, 1);
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
        assert_eq!(check_acks(&mut overlap).offset_errors, 1);
    }

    #[test]
    fn acked_but_unconsumed_messages_are_lost() {
        let acked: HashMap<(i32, u32), u64> = [((0, 1), 100), ((1, 1), 50)].into_iter().collect();
        let consumed: HashMap<(i32, u32), u64> =
            [((0, 1), 100), ((1, 1), 40)].into_iter().collect();
        assert_eq!(check_consumed_all(&acked, &consumed).lost, 10);
    }
}
