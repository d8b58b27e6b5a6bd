//! Idempotent-producer state: per producer id, its epoch and the last five batches'
//! sequence ranges and offsets, as Kafka keeps them, rebuilt from batch headers only.
//!
//! Owns the in-memory map and its rkyv snapshot encoding. Must never do I/O itself: the
//! partition log decides when to snapshot and replays headers into it on recovery.

use std::collections::{HashMap, VecDeque};

use super::batch::BatchHeader;
use super::LogError;

/// Kafka keeps the last five batches per producer so that up to five in-flight requests
/// per connection can be retried and recognised as duplicates.
pub(crate) const PRODUCER_BATCHES_MAX: usize = 5;

/// One batch already written for a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct BatchMeta {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// A producer's epoch and its most recent batches, oldest first.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub(crate) struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
}

/// The persisted form: the state as of `log_end_offset`.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct ProducerSnapshot {
    pub log_end_offset: i64,
    pub producers: Vec<(i64, ProducerEntry)>,
}

/// What the sequence check decided for one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Not seen before: append it.
    Fresh,
    /// A retry of a batch already written at these offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// All producers of one partition.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

/// Epoch of a producer the log has no state for.
const UNKNOWN_EPOCH: i16 = i16::MIN;

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

impl ProducerEntry {
    fn check(&self, producer_id: i64, h: &BatchHeader) -> Result<SequenceCheck, LogError> {
        let epoch = h.producer_epoch();
        if epoch < self.epoch {
            return Err(LogError::InvalidProducerEpoch {
                producer_id,
                current: self.epoch,
                received: epoch,
            });
        }
        if epoch > self.epoch || self.batches.is_empty() {
            // A known producer's new epoch restarts sequences at 0. A producer this log has
            // no state for (new, or its batches were deleted) may start anywhere, as in Kafka.
            if epoch > self.epoch && self.epoch != UNKNOWN_EPOCH && h.base_sequence() != 0 {
                return Err(LogError::OutOfOrderSequence {
                    producer_id,
                    expected: 0,
                    received: h.base_sequence(),
                });
            }
            return Ok(SequenceCheck::Fresh);
        }
        if let Some(b) = self
            .batches
            .iter()
            .find(|b| b.first_sequence == h.base_sequence() && b.last_sequence == h.last_sequence())
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = next_sequence(self.batches.back().expect("not empty").last_sequence);
        if h.base_sequence() != expected {
            return Err(LogError::OutOfOrderSequence {
                producer_id,
                expected,
                received: h.base_sequence(),
            });
        }
        Ok(SequenceCheck::Fresh)
    }

    fn record(&mut self, h: &BatchHeader, base_offset: i64) {
        if h.producer_epoch() != self.epoch {
            self.epoch = h.producer_epoch();
            self.batches.clear();
        }
        if self.batches.len() == PRODUCER_BATCHES_MAX {
            self.batches.pop_front();
        }
        self.batches.push_back(BatchMeta {
            first_sequence: h.base_sequence(),
            last_sequence: h.last_sequence(),
            base_offset,
            last_offset: base_offset + h.last_offset_delta() as i64,
        });
    }
}

impl ProducerStates {
    /// Checks a whole append (one or more batches) in order, as if each earlier batch had
    /// been written, without changing the state.
    pub(crate) fn check_all(
        &self,
        headers: &[BatchHeader],
    ) -> Result<Vec<SequenceCheck>, LogError> {
        let mut scratch: HashMap<i64, ProducerEntry> = HashMap::new();
        let mut out = Vec::with_capacity(headers.len());
        for h in headers {
            let pid = h.producer_id();
            if pid < 0 {
                out.push(SequenceCheck::Fresh);
                continue;
            }
            let entry = scratch.entry(pid).or_insert_with(|| {
                self.producers.get(&pid).cloned().unwrap_or(ProducerEntry {
                    epoch: UNKNOWN_EPOCH,
                    batches: VecDeque::new(),
                })
            });
            let check = entry.check(pid, h)?;
            if check == SequenceCheck::Fresh {
                entry.record(h, 0);
            }
            out.push(check);
        }
        Ok(out)
    }

    /// Records a batch written at `base_offset` (its header's own base offset is ignored).
    pub(crate) fn record(&mut self, h: &BatchHeader, base_offset: i64) {
        if h.producer_id() < 0 {
            return;
        }
        self.producers
            .entry(h.producer_id())
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch(),
                batches: VecDeque::new(),
            })
            .record(h, base_offset);
    }

    /// Drops every batch at or above `offset` (after truncation).
    pub(crate) fn truncate_from(&mut self, offset: i64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < offset);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    pub(crate) fn to_snapshot(&self, log_end_offset: i64) -> ProducerSnapshot {
        let mut producers: Vec<_> = self
            .producers
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        producers.sort_by_key(|p| p.0);
        ProducerSnapshot {
            log_end_offset,
            producers,
        }
    }

    pub(crate) fn from_snapshot(snapshot: ProducerSnapshot) -> ProducerStates {
        ProducerStates {
            producers: snapshot.producers.into_iter().collect(),
        }
    }
}

impl ProducerStates {
    /// Last offset of the newest batch the log holds for `producer_id`, if it has state:
    /// the cleaner keeps that batch (at least its header) so the state survives a replay.
    pub(crate) fn last_offset_of(&self, producer_id: i64) -> Option<i64> {
        self.producers
            .get(&producer_id)
            .and_then(|p| p.batches.back())
            .map(|b| b.last_offset)
    }
}
