//! The catalog: the cluster's metadata as every shard sees it: brokers, topics, their
//! partitions (replicas, leader, leader epoch, ISR, owner shard on this node), configs, the
//! next producer id. Control plane only.
//!
//! The catalog is the state of the metadata quorum (`cluster/`): it changes only by applying
//! committed metadata commands, in log order, on every node. Each node hands every shard an
//! immutable copy; the data path reads only its shard's copy.
//!
//! `legacy.rs` reads the `catalog.bin` file that single-node versions wrote, which becomes
//! the first metadata record when such a data dir is opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod legacy;
mod topic_configs;

pub use legacy::load_legacy;
pub use topic_configs::{
    alter_list, topic_config, topic_log_config, validate_topic_config, validate_topic_configs,
    ConfigType, Effect, ListOp, TopicConfig, TOPIC_CONFIGS,
};

/// Kafka's "no leader".
pub const NO_LEADER: i32 = -1;

/// The internal topic holding committed offsets (Kafka's name, so tools recognise it).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Whether clients see a topic as internal: Metadata marks it, Produce and DeleteTopics
/// refuse it (Kafka's `Topic.isInternal` is by name too).
pub fn is_internal(topic: &str) -> bool {
    topic == OFFSETS_TOPIC
}

/// Where one partition lives and who leads it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Brokers holding a replica, the preferred leader first.
    pub replicas: Vec<i32>,
    /// The current leader, or `NO_LEADER` when no replica is alive.
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// In-sync replicas.
    pub isr: Vec<i32>,
}

/// One topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Topic {
    pub name: String,
    pub id: [u8; 16],
    /// Owner shard of each partition, indexed by partition number: a hint each node reduces
    /// modulo its own shard count (nodes may have different core counts).
    pub owners: Vec<u32>,
    /// Placement of each partition, indexed by partition number.
    pub placement: Vec<Placement>,
    /// Topic-level config overrides (Kafka names), validated when set.
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    pub fn partition_count(&self) -> usize {
        self.owners.len()
    }
}

/// One registered broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    pub id: i32,
    /// Identity of the broker's data dir (its `meta.properties`): a wiped or different data
    /// dir under the same node id is another incarnation.
    pub incarnation: String,
    /// Kafka address clients are told.
    pub host: String,
    pub port: u16,
    /// Address of its controller listener (the metadata log reaches it there).
    pub controller_addr: String,
    /// Bumped (to the registration's log index) on every registration.
    pub epoch: u64,
    /// A fenced broker missed its heartbeats: it leads nothing and clients are not told of it.
    pub fenced: bool,
}

/// Everything the catalog holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    /// Set by the cluster's first record; empty until then.
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, Broker>,
    pub topics: BTreeMap<String, Topic>,
    pub next_producer_id: i64,
    /// Index of the last metadata record applied: shards ignore older copies.
    pub version: u64,
    /// Not replicated: the quorum leader as this node last saw it (`NO_LEADER` if none),
    /// filled in when the copy is handed to the shards.
    #[serde(skip)]
    pub controller_id: i32,
}

impl Catalog {
    /// Brokers clients may use: registered and not fenced, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn placement(&self, topic: &str, partition: i32) -> Option<&Placement> {
        self.topics
            .get(topic)?
            .placement
            .get(usize::try_from(partition).ok()?)
    }

    /// The controller id to tell clients (Metadata, DescribeCluster): the quorum leader when
    /// it is a live broker; else, during an election or while the leader's broker is fenced,
    /// `me` (any broker takes admin requests and forwards them to the quorum, as KRaft
    /// brokers do). Never -1: librdkafka then waits for a controller without asking again.
    pub fn controller_for_clients(&self, me: i32) -> i32 {
        match self.brokers.get(&self.controller_id) {
            Some(b) if !b.fenced => b.id,
            _ => me,
        }
    }

    pub fn partition_total(&self) -> usize {
        self.topics.values().map(Topic::partition_count).sum()
    }
}

/// Directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

/// Kafka's rule for topic names: 1..=249 of [a-zA-Z0-9._-], not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A random topic id (UUID v4 layout), from the OS random source.
pub fn new_topic_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut id);
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic_name("orders.v1_x-2"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }
}
