//! What a partition leader knows about its followers: each follower's durable end offset
//! and when it last caught up, from which the high watermark and ISR changes follow.
//!
//! Pure bookkeeping, kept per shard for the partitions it owns and leads: no I/O, no clock
//! of its own, no control plane. The shard feeds it follower fetches (`on_fetch`) and its own
//! fsyncs; the replication layer above asks it which ISR changes to propose.
//!
//! Invariants:
//! - A follower's offset counts only once it is durable there: followers fetch from their
//!   fdatasynced end, so a fetch offset is a durable offset (Kafka's KIP-966 loss came from
//!   counting unflushed data).
//! - The high watermark is the least durable end over the ISR, the leader's own included,
//!   with proposed additions counted as members; it never moves back, and it does not move
//!   at all while the committed ISR is smaller than `min.insync.replicas` (KAFKA-15583).
//! - A follower with no fetch yet in this leader epoch holds the high watermark where it is.
//! - State belongs to one leader epoch: a new epoch starts from nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::catalog::Placement;

/// One follower as its leader sees it.
#[derive(Clone, Copy, Debug)]
struct Follower {
    /// Its durable log end offset (its last fetch offset).
    durable: i64,
    /// When it was last caught up with the leader's log end (Kafka's lastCaughtUpTimeMs).
    caught_up_ms: i64,
    /// The time and the leader's log end at its previous fetch.
    last_fetch_ms: i64,
    last_fetch_leader_end: i64,
}

/// A partition this shard leads.
#[derive(Debug)]
struct Led {
    epoch: i32,
    /// When this leadership began here (followers not heard from count as caught up then).
    since_ms: i64,
    followers: BTreeMap<i32, Follower>,
    /// The ISR of an AlterIsr in flight.
    proposed: Option<Vec<i32>>,
}

/// An ISR change to propose for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
}

/// The led partitions of one shard.
#[derive(Default)]
pub struct Leaders {
    led: RefCell<HashMap<(String, i32), Led>>,
    /// Partitions whose leader is syncing for its followers (one such sync at a time).
    syncing: RefCell<HashSet<(String, i32)>>,
}

impl Leaders {
    /// Run `f` on the partition's state for leader epoch `epoch`, starting it afresh when
    /// the epoch changed.
    fn with<R>(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
        now_ms: i64,
        f: impl FnOnce(&mut Led) -> R,
    ) -> R {
        let mut led = self.led.borrow_mut();
        let key = (topic.to_string(), partition);
        let entry = led.entry(key).or_insert_with(|| Led {
            epoch,
            since_ms: now_ms,
            followers: BTreeMap::new(),
            proposed: None,
        });
        if entry.epoch != epoch {
            *entry = Led {
                epoch,
                since_ms: now_ms,
                followers: BTreeMap::new(),
                proposed: None,
            };
        }
        f(entry)
    }

    /// A follower fetched from `fetch_offset` (its durable end) while the leader's log ended
    /// at `leader_end`. Returns whether it is now caught up.
    pub fn on_fetch(
        &self,
        (topic, partition): (&str, i32),
        epoch: i32,
        follower: i32,
        fetch_offset: i64,
        leader_end: i64,
        now_ms: i64,
    ) {
        self.with(topic, partition, epoch, now_ms, |led| {
            let since = led.since_ms;
            let f = led.followers.entry(follower).or_insert(Follower {
                durable: -1,
                caught_up_ms: since,
                last_fetch_ms: now_ms,
                last_fetch_leader_end: -1,
            });
            // Kafka's rule: caught up now if it asked from the leader's end, or caught up
            // as of its previous fetch if it asked from where the leader ended then.
            if fetch_offset >= leader_end {
                f.caught_up_ms = now_ms;
            } else if fetch_offset >= f.last_fetch_leader_end && f.last_fetch_leader_end >= 0 {
                f.caught_up_ms = f.caught_up_ms.max(f.last_fetch_ms);
            }
            f.durable = f.durable.max(fetch_offset);
            f.last_fetch_ms = now_ms;
            f.last_fetch_leader_end = leader_end;
        })
    }

    /// The high watermark the partition may have now: at least `current`; the least of
    /// `leader_durable` and every ISR member's durable end (proposed members included), or
    /// `current` while the ISR is below `min_isr`.
    pub fn high_watermark(
        &self,
        (topic, partition): (&str, i32),
        placement: &Placement,
        leader_durable: i64,
        current: i64,
        min_isr: usize,
        now_ms: i64,
    ) -> i64 {
        if placement.isr.len() < min_isr {
            return current;
        }
        self.with(topic, partition, placement.leader_epoch, now_ms, |led| {
            let proposed = led.proposed.as_deref().unwrap_or(&[]);
            let mut hw = leader_durable;
            for r in placement.isr.iter().chain(proposed) {
                if *r == placement.leader {
                    continue;
                }
                let durable = led.followers.get(r).map_or(-1, |f| f.durable);
                hw = hw.min(durable);
            }
            hw.max(current)
        })
    }

    /// The smallest durable end among followers, if any fetched (the leader syncs up to it
    /// so the high watermark is not held back by its own page-cache-only tail).
    pub fn best_follower_durable(&self, topic: &str, partition: i32, epoch: i32) -> i64 {
        let led = self.led.borrow();
        let Some(l) = led.get(&(topic.to_string(), partition)) else {
            return -1;
        };
        if l.epoch != epoch {
            return -1;
        }
        l.followers.values().map(|f| f.durable).max().unwrap_or(-1)
    }

    /// The ISR change partition needs now, if any and none is in flight: members that have
    /// not caught up within `lag_max_ms` leave; replicas whose durable end reached the high
    /// watermark join. `live` says whether a broker may join (registered and not fenced).
    #[allow(clippy::too_many_arguments)]
    pub fn isr_change(
        &self,
        (topic, partition): (&str, i32),
        placement: &Placement,
        high_watermark: i64,
        lag_max_ms: i64,
        now_ms: i64,
        live: impl Fn(i32) -> bool,
    ) -> Option<IsrChange> {
        self.with(topic, partition, placement.leader_epoch, now_ms, |led| {
            if led.proposed.is_some() {
                return None;
            }
            let mut isr: Vec<i32> = Vec::with_capacity(placement.replicas.len());
            for &r in &placement.replicas {
                let keep = if r == placement.leader {
                    true
                } else if placement.isr.contains(&r) {
                    let caught_up = led
                        .followers
                        .get(&r)
                        .map_or(led.since_ms, |f| f.caught_up_ms);
                    now_ms - caught_up <= lag_max_ms
                } else {
                    live(r)
                        && led.followers.get(&r).is_some_and(|f| {
                            f.durable >= high_watermark && now_ms - f.caught_up_ms <= lag_max_ms
                        })
                };
                if keep {
                    isr.push(r);
                }
            }
            if isr == placement.isr {
                return None;
            }
            led.proposed = Some(isr.clone());
            Some(IsrChange {
                topic: topic.to_string(),
                partition,
                leader_epoch: placement.leader_epoch,
                isr,
            })
        })
    }

    /// The proposal for this partition was answered (applied or refused).
    pub fn proposal_done(&self, topic: &str, partition: i32, epoch: i32) {
        if let Some(led) = self
            .led
            .borrow_mut()
            .get_mut(&(topic.to_string(), partition))
        {
            if led.epoch == epoch {
                led.proposed = None;
            }
        }
    }

    /// Claim the partition's leader sync for followers; false if one is running.
    pub fn start_sync(&self, topic: &str, partition: i32) -> bool {
        self.syncing
            .borrow_mut()
            .insert((topic.to_string(), partition))
    }

    pub fn sync_done(&self, topic: &str, partition: i32) {
        self.syncing
            .borrow_mut()
            .remove(&(topic.to_string(), partition));
    }

    /// Forget partitions this shard no longer leads.
    pub fn retain(&self, mut leads: impl FnMut(&str, i32, i32) -> bool) {
        self.led
            .borrow_mut()
            .retain(|(topic, partition), led| leads(topic, *partition, led.epoch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(isr: Vec<i32>) -> Placement {
        Placement {
            replicas: vec![1, 2, 3],
            leader: 1,
            leader_epoch: 4,
            isr,
        }
    }

    const P: (&str, i32) = ("t", 0);

    #[test]
    fn high_watermark_is_the_least_durable_end_over_the_isr() {
        let l = Leaders::default();
        let p = placement(vec![1, 2, 3]);
        // Nobody fetched yet: the high watermark stays.
        assert_eq!(l.high_watermark(P, &p, 100, 0, 1, 0), 0);
        l.on_fetch(P, 4, 2, 80, 100, 1);
        assert_eq!(
            l.high_watermark(P, &p, 100, 0, 1, 1),
            0,
            "3 has not fetched"
        );
        l.on_fetch(P, 4, 3, 90, 100, 2);
        assert_eq!(l.high_watermark(P, &p, 100, 0, 1, 2), 80);
        // The leader's own durable end counts too.
        l.on_fetch(P, 4, 2, 100, 100, 3);
        assert_eq!(l.high_watermark(P, &p, 85, 80, 1, 3), 85);
        // Never backwards.
        assert_eq!(l.high_watermark(P, &p, 50, 85, 1, 3), 85);
        // A member outside the ISR does not hold it back.
        let shrunk = placement(vec![1, 2]);
        assert_eq!(l.high_watermark(P, &shrunk, 100, 85, 1, 4), 100);
    }

    #[test]
    fn below_min_insync_the_high_watermark_does_not_move() {
        let l = Leaders::default();
        let p = placement(vec![1]);
        assert_eq!(l.high_watermark(P, &p, 100, 10, 2, 0), 10);
        assert_eq!(l.high_watermark(P, &p, 100, 10, 1, 0), 100);
    }

    #[test]
    fn a_lagging_follower_leaves_and_a_caught_up_one_joins() {
        let l = Leaders::default();
        let p = placement(vec![1, 2, 3]);
        let live = |_| true;
        // Within the lag time nobody leaves, even without fetching.
        assert_eq!(l.isr_change(P, &p, 0, 1000, 500, live), None);
        l.on_fetch(P, 4, 2, 100, 100, 900);
        // 3 never caught up within 1000 ms of the leadership's start.
        let change = l.isr_change(P, &p, 100, 1000, 1501, live).expect("shrink");
        assert_eq!(change.isr, vec![1, 2]);
        // One proposal at a time.
        assert_eq!(l.isr_change(P, &p, 100, 1000, 1600, live), None);
        l.proposal_done("t", 0, 4);
        let p = placement(vec![1, 2]);
        // 3 fetched, but below the high watermark: not yet.
        l.on_fetch(P, 4, 3, 50, 120, 1700);
        assert_eq!(l.isr_change(P, &p, 100, 1000, 1700, live), None);
        l.on_fetch(P, 4, 3, 120, 120, 1800);
        let change = l.isr_change(P, &p, 100, 1000, 1800, live).expect("expand");
        assert_eq!(change.isr, vec![1, 2, 3]);
        // Counted in the high watermark while the addition is in flight.
        l.on_fetch(P, 4, 2, 130, 140, 1800);
        assert_eq!(l.high_watermark(P, &p, 140, 100, 1, 1800), 120);
        // A fenced broker does not join.
        l.proposal_done("t", 0, 4);
        assert_eq!(l.isr_change(P, &p, 100, 1000, 1800, |r| r != 3), None);
    }

    #[test]
    fn a_new_epoch_starts_afresh() {
        let l = Leaders::default();
        let p = placement(vec![1, 2]);
        l.on_fetch(P, 4, 2, 100, 100, 0);
        assert_eq!(l.high_watermark(P, &p, 100, 0, 1, 0), 100);
        let mut next = p.clone();
        next.leader_epoch = 5;
        assert_eq!(l.high_watermark(P, &next, 200, 100, 1, 0), 100);
    }
}
