//! Consumer groups and committed offsets (Kafka's classic group protocol).
//!
//! Committed offsets live in the replicated, compacted internal topic `__consumer_offsets`.
//! A group belongs to partition [`partition_for`]`(group_id, partitions)` of it (Kafka's own
//! formula, so tools agree), and its coordinator is that partition's leader; within the
//! leader's node, the shard that owns the partition. The group's members, generation and
//! committed offsets live only there, in that shard's [`GroupCoordinator`] (`Rc`/`RefCell`,
//! no lock: nothing here is shared across shards).
//!
//! - [`group`]: the state machine of one group (members, generations, rebalances, offsets in
//!   memory). Pure: no I/O, time is passed in, so it is unit-tested directly.
//! - [`offsets_log`]: the record format of the offsets topic (Kafka's offset-commit key v1
//!   and value v3), one RecordBatch v2 per commit, and how it is read back.
//! - [`coordinator`]: the per-shard coordinator: groups by id, which offsets partitions it
//!   serves (loading, loaded), the timer tick (session expiry, join deadlines, offset
//!   expiry); it appends through an [`OffsetsAppender`] the shard gives it.
//! - [`legacy`]: the per-shard offsets logs of earlier versions, read once to be imported.
//!
//! Layering: this module keeps the state machine and the record format; it does not know
//! the shard, the mesh or replication. The shard (`shard/groups.rs`) drives it: it loads a
//! partition when this node becomes its leader, unloads it when it stops leading, and
//! appends with acks=all semantics through the [`OffsetsAppender`] it implements.
//!
//! What this module must never do: touch a partition log of a user topic, or keep state for a
//! group whose offsets partition this shard does not lead.
//!
//! ```
//! use shardlog::groups::partition_for;
//! // Kafka's Utils.abs("orders".hashCode()) % 50
//! assert_eq!(partition_for("orders", 50), 31);
//! ```

pub mod coordinator;
pub mod group;
pub mod legacy;
pub mod offsets_log;

pub use coordinator::{GroupCoordinator, OffsetsAppender};

pub use crate::catalog::OFFSETS_TOPIC;

/// Java's `String.hashCode` (over UTF-16 code units, wrapping), as Kafka hashes group ids.
pub fn java_string_hash(text: &str) -> i32 {
    text.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The offsets partition of a group: Kafka's `Utils.abs(groupId.hashCode) % partitions`
/// (`Utils.abs` maps `i32::MIN` to 0), so Kafka tools find the same partition.
pub fn partition_for(group_id: &str, partitions: usize) -> i32 {
    let hash = java_string_hash(group_id);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    (i64::from(abs) % partitions.max(1) as i64) as i32
}

/// Limits and timings of the group coordinator (`--group-*`, `--offsets-*` flags, or a
/// `[groups]` table in the TOML file).
#[derive(clap::Args, Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsArgs {
    /// Smallest session timeout a member may ask for (Kafka: group.min.session.timeout.ms).
    #[arg(long, env = "SHARDLOG_GROUP_MIN_SESSION_TIMEOUT_MS")]
    pub group_min_session_timeout_ms: Option<u32>,
    /// Largest session timeout a member may ask for (Kafka: group.max.session.timeout.ms).
    #[arg(long, env = "SHARDLOG_GROUP_MAX_SESSION_TIMEOUT_MS")]
    pub group_max_session_timeout_ms: Option<u32>,
    /// How long the first rebalance of an empty group waits for more members
    /// (Kafka: group.initial.rebalance.delay.ms).
    #[arg(long, env = "SHARDLOG_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u32>,
    /// Members per group; a join beyond it gets GROUP_MAX_SIZE_REACHED (Kafka: group.max.size).
    #[arg(long, env = "SHARDLOG_GROUP_MAX_MEMBERS")]
    pub group_max_members: Option<u32>,
    /// Groups one shard coordinates; a new group beyond it gets COORDINATOR_NOT_AVAILABLE
    /// (clients retry) until empty groups expire.
    #[arg(long, env = "SHARDLOG_MAX_GROUPS_PER_SHARD")]
    pub max_groups_per_shard: Option<u32>,
    /// Committed partitions per group; commits of further partitions get
    /// INVALID_COMMIT_OFFSET_SIZE.
    #[arg(long, env = "SHARDLOG_MAX_OFFSETS_PER_GROUP")]
    pub max_offsets_per_group: Option<u32>,
    /// Longest metadata string of a commit (Kafka: offset.metadata.max.bytes).
    #[arg(long, env = "SHARDLOG_OFFSET_METADATA_MAX_BYTES")]
    pub offset_metadata_max_bytes: Option<u32>,
    /// Offsets of a group that has been empty this long expire (Kafka: offsets.retention.minutes).
    #[arg(long, env = "SHARDLOG_OFFSETS_RETENTION_MS")]
    pub offsets_retention_ms: Option<u64>,
    /// How often expired offsets are looked for (Kafka: offsets.retention.check.interval.ms).
    #[arg(long, env = "SHARDLOG_OFFSETS_RETENTION_CHECK_INTERVAL_MS")]
    pub offsets_retention_check_interval_ms: Option<u64>,
    /// Ignored since offsets moved to the compacted `__consumer_offsets` topic (the log
    /// cleaner bounds it); accepted so that older configs still start.
    #[arg(long, env = "SHARDLOG_OFFSETS_COMPACT_MIN_RECORDS", hide = true)]
    pub offsets_compact_min_records: Option<u64>,
    /// Partitions of the internal `__consumer_offsets` topic, fixed when it is created
    /// (Kafka: offsets.topic.num.partitions).
    #[arg(long, env = "SHARDLOG_OFFSETS_TOPIC_NUM_PARTITIONS")]
    pub offsets_topic_num_partitions: Option<i32>,
    /// Replication factor of `__consumer_offsets` at its creation, capped at the live brokers
    /// then (Kafka: offsets.topic.replication.factor).
    #[arg(long, env = "SHARDLOG_OFFSETS_TOPIC_REPLICATION_FACTOR")]
    pub offsets_topic_replication_factor: Option<i32>,
}

/// Validated group settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupsConfig {
    pub min_session_timeout_ms: u32,
    pub max_session_timeout_ms: u32,
    pub initial_rebalance_delay_ms: u32,
    pub max_members: u32,
    pub max_groups_per_shard: u32,
    pub max_offsets_per_group: u32,
    pub offset_metadata_max_bytes: u32,
    pub offsets_retention_ms: u64,
    pub offsets_retention_check_interval_ms: u64,
    pub offsets_topic_num_partitions: i32,
    pub offsets_topic_replication_factor: i32,
}

impl Default for GroupsConfig {
    /// Kafka's defaults where Kafka has one.
    fn default() -> Self {
        GroupsConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_members: 1_000,
            max_groups_per_shard: 100_000,
            max_offsets_per_group: 100_000,
            offset_metadata_max_bytes: 4_096,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: 3,
        }
    }
}

impl GroupsConfig {
    /// Merge flags over the file's `[groups]` table over defaults, then validate.
    pub fn load(cli: &GroupsArgs, file: Option<&GroupsArgs>) -> Result<GroupsConfig, String> {
        let d = GroupsConfig::default();
        macro_rules! pick {
            ($name:ident, $default:expr) => {
                cli.$name.or(file.and_then(|f| f.$name)).unwrap_or($default)
            };
        }
        let config = GroupsConfig {
            min_session_timeout_ms: pick!(group_min_session_timeout_ms, d.min_session_timeout_ms),
            max_session_timeout_ms: pick!(group_max_session_timeout_ms, d.max_session_timeout_ms),
            initial_rebalance_delay_ms: pick!(
                group_initial_rebalance_delay_ms,
                d.initial_rebalance_delay_ms
            ),
            max_members: pick!(group_max_members, d.max_members),
            max_groups_per_shard: pick!(max_groups_per_shard, d.max_groups_per_shard),
            max_offsets_per_group: pick!(max_offsets_per_group, d.max_offsets_per_group),
            offset_metadata_max_bytes: pick!(
                offset_metadata_max_bytes,
                d.offset_metadata_max_bytes
            ),
            offsets_retention_ms: pick!(offsets_retention_ms, d.offsets_retention_ms),
            offsets_retention_check_interval_ms: pick!(
                offsets_retention_check_interval_ms,
                d.offsets_retention_check_interval_ms
            ),
            offsets_topic_num_partitions: pick!(
                offsets_topic_num_partitions,
                d.offsets_topic_num_partitions
            ),
            offsets_topic_replication_factor: pick!(
                offsets_topic_replication_factor,
                d.offsets_topic_replication_factor
            ),
        };
        let check = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_string()) };
        check(
            config.min_session_timeout_ms >= 1
                && config.min_session_timeout_ms <= config.max_session_timeout_ms,
            "group_min_session_timeout_ms: must be at least 1 and at most group_max_session_timeout_ms",
        )?;
        check(
            config.max_members >= 1,
            "group_max_members: must be at least 1",
        )?;
        check(
            config.max_groups_per_shard >= 1,
            "max_groups_per_shard: must be at least 1",
        )?;
        check(
            config.max_offsets_per_group >= 1,
            "max_offsets_per_group: must be at least 1",
        )?;
        check(
            config.offset_metadata_max_bytes as usize <= offsets_log::STRING_MAX_BYTES,
            "offset_metadata_max_bytes: must be at most 32767 (the offsets log stores \
             metadata with a 16-bit length, as Kafka does)",
        )?;
        check(
            config.offsets_retention_ms >= 1,
            "offsets_retention_ms: must be at least 1",
        )?;
        check(
            (1..=1000).contains(&config.offsets_topic_num_partitions),
            "offsets_topic_num_partitions: must be between 1 and 1000",
        )?;
        check(
            config.offsets_topic_replication_factor >= 1,
            "offsets_topic_replication_factor: must be at least 1",
        )?;
        check(
            config.offsets_retention_check_interval_ms >= 1,
            "offsets_retention_check_interval_ms: must be at least 1",
        )?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_the_offsets_partition_kafka_computes() {
        // Values of Java's "...".hashCode(), and Kafka's partitionFor with 50 partitions.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("orders"), -1008770331);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("orders", 50), 31);
        assert_eq!(
            partition_for("polygenelubricants", 50),
            0,
            "Utils.abs(MIN) is 0"
        );
        // UTF-16 code units, as Java: a character outside the BMP is two units.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
        for n in 1..60 {
            for g in ["", "g", "orders", "a-much-longer-group-name"] {
                assert!((0..n as i32).contains(&partition_for(g, n)));
            }
        }
    }

    #[test]
    fn invalid_group_settings_are_refused_naming_the_setting() {
        let args = GroupsArgs {
            group_min_session_timeout_ms: Some(10),
            group_max_session_timeout_ms: Some(5),
            ..GroupsArgs::default()
        };
        let err = GroupsConfig::load(&args, None).unwrap_err();
        assert!(err.starts_with("group_min_session_timeout_ms"), "{err}");
        let file = GroupsArgs {
            group_max_members: Some(3),
            ..GroupsArgs::default()
        };
        let config = GroupsConfig::load(&GroupsArgs::default(), Some(&file)).unwrap();
        assert_eq!(config.max_members, 3);
        assert_eq!(config.min_session_timeout_ms, 6_000);
    }
}
