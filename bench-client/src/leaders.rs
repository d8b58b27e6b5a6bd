//! Where each partition of the run's topic is led, as the cluster last said: the Metadata
//! from the bootstrap brokers (or any broker seen since), refreshed on demand with a bounded
//! backoff, and the control-plane requests that must go to each partition's leader
//! (ListOffsets). Blocking: the main thread owns one, and each worker one that it only
//! touches after a leader change or a lost connection, so a run against a single broker
//! never opens its control connection at all.
//!
//! ```text
//! let mut leaders = Leaders::new("127.0.0.1:9092,127.0.0.1:9093", "t", layout.leaders);
//! // a produce answered NOT_LEADER_OR_FOLLOWER at time t:
//! leaders.want_refresh();
//! leaders.poll(now_ns());             // asks Metadata once the backoff allows
//! if leaders.refreshed_ns > t { route(leaders.leader(partition)) }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::proto::{retriable, Control};
use crate::worker::now_ns;

/// First wait between two Metadata refreshes; doubles while leaders stay unknown.
const REFRESH_BACKOFF_MIN_NS: u64 = 50_000_000;
/// Longest wait between two Metadata refreshes.
const REFRESH_BACKOFF_MAX_NS: u64 = 1_000_000_000;
/// Connect and request deadline of a control connection after a failure: short, since a
/// broker that does not answer in this long is treated as down and the next one is asked.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// The leaders of one topic's partitions and the means to learn them again.
pub struct Leaders {
    topic: String,
    /// Addresses to ask for Metadata: the bootstrap list, then every broker seen.
    addresses: Vec<String>,
    control: Option<Control>,
    /// Leader address per partition index; empty when the partition has no leader.
    by_partition: Vec<String>,
    /// Control connections to leaders, for ListOffsets.
    at_leader: HashMap<String, Control>,
    wanted: bool,
    /// Time of the last Metadata answer (monotonic ns): leaders learned after a failure are
    /// those with `refreshed_ns` past it.
    pub refreshed_ns: u64,
    next_refresh_ns: u64,
    backoff_ns: u64,
    /// Metadata requests answered.
    pub refreshes: u64,
}

impl Leaders {
    /// Starts from the leaders the plan saw; asks nothing until a refresh is wanted.
    pub fn new(bootstrap: &str, topic: &str, by_partition: Vec<String>) -> Leaders {
        Leaders {
            topic: topic.to_string(),
            addresses: bootstrap
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect(),
            control: None,
            by_partition,
            at_leader: HashMap::new(),
            wanted: false,
            refreshed_ns: now_ns(),
            next_refresh_ns: 0,
            backoff_ns: REFRESH_BACKOFF_MIN_NS,
            refreshes: 0,
        }
    }

    /// The leader of `partition` as last heard; None when it has none.
    pub fn leader(&self, partition: i32) -> Option<&str> {
        self.by_partition
            .get(partition as usize)
            .map(String::as_str)
            .filter(|a| !a.is_empty())
    }

    /// Asks for a refresh at the next `poll` the backoff allows.
    pub fn want_refresh(&mut self) {
        self.wanted = true;
    }

    /// Refreshes if one is wanted and the backoff has passed; true when leaders were learned.
    /// A broker that does not answer is dropped and the next address is asked; when none
    /// answers, the backoff grows and the leaders stay as they were.
    pub fn poll(&mut self, now: u64) -> bool {
        if !self.wanted || now < self.next_refresh_ns {
            return false;
        }
        let learned = self.refresh();
        let all_led = self.by_partition.iter().all(|a| !a.is_empty());
        self.backoff_ns = if learned && all_led {
            REFRESH_BACKOFF_MIN_NS
        } else {
            (self.backoff_ns * 2).min(REFRESH_BACKOFF_MAX_NS)
        };
        self.next_refresh_ns = now_ns() + self.backoff_ns;
        if learned {
            self.wanted = false;
        }
        learned
    }

    /// One Metadata round trip, to the current control connection or the first address that
    /// answers; false when no broker answered.
    fn refresh(&mut self) -> bool {
        for _ in 0..=self.addresses.len() {
            if self.control.is_none() {
                self.control = self
                    .addresses
                    .iter()
                    .find_map(|a| Control::connect(a, CONTROL_TIMEOUT).ok());
            }
            let Some(control) = &mut self.control else {
                return false;
            };
            match control.metadata(&self.topic) {
                Ok(Some(layout)) => {
                    for b in layout.brokers {
                        if !self.addresses.contains(&b) {
                            self.addresses.push(b);
                        }
                    }
                    if layout.leaders.is_empty() {
                        self.by_partition.iter_mut().for_each(String::clear);
                    } else {
                        self.by_partition = layout.leaders;
                    }
                    self.refreshed_ns = now_ns();
                    self.refreshes += 1;
                    return true;
                }
                Ok(None) | Err(_) => {
                    // Unknown topic (a broker not caught up) or no answer: ask another.
                    self.control = None;
                    self.addresses.rotate_left(1);
                }
            }
        }
        false
    }

    /// Offsets of `partitions` at `timestamp` (-1 latest, -2 earliest), each asked of its
    /// leader; retries through leader changes until `timeout`.
    pub fn list_offsets(
        &mut self,
        partitions: &[i32],
        timestamp: i64,
        timeout: Duration,
    ) -> Result<Vec<i64>> {
        let deadline_ns = now_ns() + timeout.as_nanos() as u64;
        let mut out: Vec<Option<i64>> = vec![None; partitions.len()];
        loop {
            let mut by_leader: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, &p) in partitions.iter().enumerate() {
                if out[i].is_none() {
                    match self.leader(p) {
                        Some(a) => by_leader.entry(a.to_string()).or_default().push(i),
                        None => self.wanted = true,
                    }
                }
            }
            for (address, indexes) in by_leader {
                let asked: Vec<i32> = indexes.iter().map(|&i| partitions[i]).collect();
                match self.list_offsets_at(&address, &asked, timestamp) {
                    Ok(answers) => {
                        for (&i, answer) in indexes.iter().zip(answers) {
                            match answer {
                                Ok(offset) => out[i] = Some(offset),
                                Err(code) if retriable(code) => self.wanted = true,
                                Err(code) => bail!(
                                    "ListOffsets {}/{}: error {code}",
                                    self.topic,
                                    partitions[i]
                                ),
                            }
                        }
                    }
                    Err(_) => {
                        self.at_leader.remove(&address);
                        self.wanted = true;
                    }
                }
            }
            if out.iter().all(Option::is_some) {
                return Ok(out.into_iter().flatten().collect());
            }
            ensure!(
                now_ns() < deadline_ns,
                "ListOffsets of {}: no leader answered for every partition within {timeout:?}",
                self.topic
            );
            std::thread::sleep(Duration::from_nanos(
                self.next_refresh_ns.saturating_sub(now_ns()),
            ));
            self.poll(now_ns());
        }
    }

    fn list_offsets_at(
        &mut self,
        address: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<std::result::Result<i64, i16>>> {
        if !self.at_leader.contains_key(address) {
            let control = Control::connect(address, CONTROL_TIMEOUT)?;
            self.at_leader.insert(address.to_string(), control);
        }
        let control = self.at_leader.get_mut(address).expect("inserted above");
        control.list_offsets_each(&self.topic, partitions, timestamp)
    }
}
