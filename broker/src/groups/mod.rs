//! Consumer groups and committed offsets (Kafka's classic group protocol).
//!
//! Each group has one coordinator shard, `coordinator_shard(group_id, nr_shards)`, a stable
//! hash of the id. Every group request is forwarded there (`Shard::call`); the group's
//! members, generation and committed offsets live only on that shard, in its
//! [`GroupCoordinator`] (`Rc`/`RefCell`, no lock: nothing here is shared across shards).
//!
//! - [`group`]: the state machine of one group (members, generations, rebalances, offsets in
//!   memory). Pure: no I/O, time is passed in, so it is unit-tested directly.
//! - [`offsets_log`]: how commits are written to the coordinator shard's internal offsets log
//!   (`<data_dir>/__consumer_offsets/<shard>`), one RecordBatch v2 per commit, and read back.
//! - [`coordinator`]: the per-shard coordinator: groups by id and the timer tick (session
//!   expiry, join deadlines); its `offsets_store` owns the offsets log (append, wait durable,
//!   replay at start, compaction, hand-over after a change of `cores`, offset expiry).
//!
//! What this module must never do: touch a partition log of a user topic, or keep state for a
//! group it does not coordinate.
//!
//! ```
//! use shardlog::groups::coordinator_shard;
//! let shard = coordinator_shard("orders", 4);
//! assert!(shard < 4);
//! assert_eq!(shard, coordinator_shard("orders", 4)); // stable across runs and shards
//! ```

pub mod coordinator;
pub mod group;
pub mod offsets_log;

pub use coordinator::GroupCoordinator;

use crate::catalog::Catalog;

/// Coordinator shard of a group: FNV-1a of the id modulo the shard count. Stable across
/// processes (unlike std's randomized hasher), so the offsets of a group are found in the
/// same shard's log after a restart with the same `cores`.
pub fn coordinator_shard(group_id: &str, nr_shards: usize) -> usize {
    (fnv1a(group_id) % nr_shards.max(1) as u64) as usize
}

/// The broker that coordinates a group: the live brokers by id, picked by the group id's
/// hash (a different mix of it than the shard's, so the two choices do not correlate).
/// When the live brokers change, some groups move; their committed offsets stay on the old
/// coordinator's disk (until the offsets move to a replicated topic) and come back with it.
pub fn coordinator_node(group_id: &str, catalog: &Catalog) -> Option<i32> {
    let live: Vec<i32> = catalog.live_brokers().map(|b| b.id).collect();
    if live.is_empty() {
        return None;
    }
    let mixed = fnv1a(group_id)
        .rotate_right(17)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Some(live[(mixed % live.len() as u64) as usize])
}

fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
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
    /// A shard's offsets log is compacted (live offsets rewritten, the rest dropped) once it
    /// holds this many records and four times more than are live.
    #[arg(long, env = "SHARDLOG_OFFSETS_COMPACT_MIN_RECORDS")]
    pub offsets_compact_min_records: Option<u64>,
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
    pub offsets_compact_min_records: u64,
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
            offsets_compact_min_records: 100_000,
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
            offsets_compact_min_records: pick!(
                offsets_compact_min_records,
                d.offsets_compact_min_records
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
            config.offsets_compact_min_records >= 1,
            "offsets_compact_min_records: must be at least 1",
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
    fn coordinator_shard_is_stable_and_in_range() {
        // FNV-1a of "" is the offset basis; pinning two values guards against a hasher change
        // that would strand committed offsets in another shard's log.
        assert_eq!(
            coordinator_shard("", 7),
            (0xcbf2_9ce4_8422_2325u64 % 7) as usize
        );
        assert_eq!(
            coordinator_shard("a", 1000),
            (0xaf63_dc4c_8601_ec8cu64 % 1000) as usize
        );
        for n in 1..9 {
            for g in ["", "g", "orders", "a-much-longer-group-name"] {
                assert!(coordinator_shard(g, n) < n);
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
