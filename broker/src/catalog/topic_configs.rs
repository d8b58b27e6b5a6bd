//! Topic configs: every name Kafka 3.9 defines for a topic, with its type, Kafka's default,
//! the check a value must pass (Kafka's own types and ranges, from its `LogConfig`), and
//! whether shardlog acts on it. Control plane only: the data path sees only the
//! `LogConfig` that [`topic_log_config`] derives.
//!
//! A config shardlog has no machinery for (flush policy, replication,
//! tiered storage) is still accepted, validated, stored and described, so that tools and
//! clients that set it work; README.md ("Topic configs") lists which ones have no effect.
//! A name Kafka does not define is refused, as Kafka refuses it.
//!
//! ```
//! use shardlog::catalog::{topic_config, validate_topic_config};
//! assert!(validate_topic_config("min.cleanable.dirty.ratio", "0.3").is_ok());
//! assert!(validate_topic_config("min.cleanable.dirty.ratio", "1.5").is_err());
//! assert_eq!(topic_config("flush.ms").unwrap().default, "9223372036854775807");
//! ```

use std::collections::BTreeMap;

use super::Topic;
// Short names for the table below.
use Check as C;
use ConfigType as T;
use Effect::{Applied, StoredOnly};

/// A config's Kafka type, which DescribeConfigs (v3+) reports as a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

impl ConfigType {
    /// The code DescribeConfigs uses for this type.
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

/// What shardlog does with a config's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The log acts on it (see [`topic_log_config`]).
    Applied,
    /// Validated, stored and described; nothing in shardlog reads it.
    StoredOnly,
}

/// How a value is checked. Integer ranges are inclusive.
#[derive(Clone, Copy, Debug)]
enum Check {
    Int(i32, i32),
    Long(i64, i64),
    Double(f64, f64),
    Boolean,
    /// Exactly one of these strings.
    OneOf(&'static [&'static str]),
    /// A comma-separated list, every element one of these (an empty list is valid).
    ListOf(&'static [&'static str]),
    /// `*` or a list of `partition:broker` pairs (Kafka's ThrottledReplicaListValidator).
    ThrottledReplicas,
    /// gzip levels: 1..=9, or -1 for the codec's default.
    GzipLevel,
    /// shardlog's segment limits: at least 64 KiB (one index step and a staging buffer),
    /// at most what a u32 file position reaches.
    SegmentBytes,
    /// A Kafka release or inter-broker protocol version (Kafka's MetadataVersionValidator).
    MessageFormatVersion,
    /// Only `false`: shardlog has no tiered storage, so it answers as Kafka does when
    /// `remote.log.storage.system.enable` is off.
    RemoteStorage,
}

/// One topic config Kafka 3.9 defines.
#[derive(Clone, Copy, Debug)]
pub struct TopicConfig {
    pub name: &'static str,
    pub kind: ConfigType,
    /// Kafka's default; the broker's own setting replaces it for the few configs that have
    /// one (described by the protocol layer, which knows the broker config).
    pub default: &'static str,
    pub effect: Effect,
    check: Check,
}

const fn spec(
    name: &'static str,
    kind: ConfigType,
    default: &'static str,
    effect: Effect,
    check: Check,
) -> TopicConfig {
    TopicConfig {
        name,
        kind,
        default,
        effect,
        check,
    }
}

const LONG_MAX: &str = "9223372036854775807";
const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];

/// Every topic config of Kafka 3.9 (its `LogConfig` definitions), sorted by name.
#[rustfmt::skip]
pub const TOPIC_CONFIGS: &[TopicConfig] = &[
    spec("cleanup.policy", T::List, "delete", Applied, C::ListOf(&["compact", "delete"])),
    spec("compression.gzip.level", T::Int, "-1", StoredOnly, C::GzipLevel),
    spec("compression.lz4.level", T::Int, "9", StoredOnly, C::Int(1, 17)),
    // Only `producer` behaves as Kafka: batches are stored as the producer sent them, never
    // recompressed, so another codec named here changes nothing.
    spec("compression.type", T::String, "producer", StoredOnly, C::OneOf(COMPRESSION_TYPES)),
    spec("compression.zstd.level", T::Int, "3", StoredOnly, C::Int(-131072, 22)),
    spec("delete.retention.ms", T::Long, "86400000", Applied, C::Long(0, i64::MAX)),
    spec("file.delete.delay.ms", T::Long, "60000", StoredOnly, C::Long(0, i64::MAX)),
    spec("flush.messages", T::Long, LONG_MAX, StoredOnly, C::Long(1, i64::MAX)),
    spec("flush.ms", T::Long, LONG_MAX, StoredOnly, C::Long(0, i64::MAX)),
    spec("follower.replication.throttled.replicas", T::List, "", StoredOnly, C::ThrottledReplicas),
    spec("index.interval.bytes", T::Int, "4096", Applied, C::Int(0, i32::MAX)),
    spec("leader.replication.throttled.replicas", T::List, "", StoredOnly, C::ThrottledReplicas),
    spec("local.retention.bytes", T::Long, "-2", StoredOnly, C::Long(-2, i64::MAX)),
    spec("local.retention.ms", T::Long, "-2", StoredOnly, C::Long(-2, i64::MAX)),
    spec("max.compaction.lag.ms", T::Long, LONG_MAX, Applied, C::Long(1, i64::MAX)),
    spec("max.message.bytes", T::Int, "1048588", Applied, C::Int(0, i32::MAX)),
    spec("message.downconversion.enable", T::Boolean, "true", StoredOnly, C::Boolean),
    // Ignored by Kafka 3.x too: every batch is stored in the format it arrived in (v2).
    spec("message.format.version", T::String, "3.0-IV1", StoredOnly, C::MessageFormatVersion),
    spec("message.timestamp.after.max.ms", T::Long, LONG_MAX, StoredOnly, C::Long(0, i64::MAX)),
    spec("message.timestamp.before.max.ms", T::Long, LONG_MAX, StoredOnly, C::Long(0, i64::MAX)),
    spec("message.timestamp.difference.max.ms", T::Long, LONG_MAX, StoredOnly, C::Long(0, i64::MAX)),
    spec("message.timestamp.type", T::String, "CreateTime", Applied, C::OneOf(TIMESTAMP_TYPES)),
    spec("min.cleanable.dirty.ratio", T::Double, "0.5", Applied, C::Double(0.0, 1.0)),
    spec("min.compaction.lag.ms", T::Long, "0", Applied, C::Long(0, i64::MAX)),
    spec("min.insync.replicas", T::Int, "1", Applied, C::Int(1, i32::MAX)),
    spec("preallocate", T::Boolean, "false", StoredOnly, C::Boolean),
    spec("remote.log.copy.disable", T::Boolean, "false", StoredOnly, C::Boolean),
    spec("remote.log.delete.on.disable", T::Boolean, "false", StoredOnly, C::Boolean),
    spec("remote.storage.enable", T::Boolean, "false", StoredOnly, C::RemoteStorage),
    // Kafka puts no bound on retention.bytes: every negative value means unlimited.
    spec("retention.bytes", T::Long, "-1", Applied, C::Long(i64::MIN, i64::MAX)),
    spec("retention.ms", T::Long, "604800000", Applied, C::Long(-1, i64::MAX)),
    spec("segment.bytes", T::Int, "1073741824", Applied, C::SegmentBytes),
    spec("segment.index.bytes", T::Int, "10485760", StoredOnly, C::Int(4, i32::MAX)),
    spec("segment.jitter.ms", T::Long, "0", StoredOnly, C::Long(0, i64::MAX)),
    spec("segment.ms", T::Long, "604800000", Applied, C::Long(1, i64::MAX)),
    spec("unclean.leader.election.enable", T::Boolean, "false", Applied, C::Boolean),
];

/// The definition of a topic config, if Kafka defines one by that name.
pub fn topic_config(name: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|c| c.name == name)
}

/// Check one topic config value; Err names what is wrong (Kafka answers INVALID_CONFIG).
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let Some(config) = topic_config(name) else {
        return Err(format!("unknown topic config '{name}'"));
    };
    // Kafka parses every type from the trimmed text.
    let text = value.trim();
    let invalid = |why: &str| Err(format!("{name}: invalid value '{value}': {why}"));
    match config.check {
        Check::Int(min, max) => match text.parse::<i32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(()),
            Ok(_) => invalid(&format!("must be in [{min}, {max}]")),
            Err(_) => invalid("not a 32-bit integer"),
        },
        Check::Long(min, max) => match text.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(()),
            Ok(_) => invalid(&format!("must be in [{min}, {max}]")),
            Err(_) => invalid("not a 64-bit integer"),
        },
        Check::Double(min, max) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(()),
            Ok(_) => invalid(&format!("must be in [{min}, {max}]")),
            Err(_) => invalid("not a number"),
        },
        Check::Boolean => match parse_bool(text) {
            Some(_) => Ok(()),
            None => invalid("must be true or false"),
        },
        Check::OneOf(allowed) if allowed.contains(&text) => Ok(()),
        Check::OneOf(allowed) => invalid(&format!("must be one of {}", allowed.join(", "))),
        Check::ListOf(allowed) => match list_items(text).find(|x| !allowed.contains(x)) {
            None => Ok(()),
            Some(_) => invalid(&format!("each item must be one of {}", allowed.join(", "))),
        },
        Check::ThrottledReplicas => {
            let pair = |x: &str| {
                x.is_empty()
                    || x.split_once(':').is_some_and(|(p, b)| {
                        [p, b]
                            .iter()
                            .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                    })
            };
            if text == "*" || text.split(',').map(str::trim).all(pair) {
                Ok(())
            } else {
                invalid("must be '*' or a list of [partitionId]:[brokerId]")
            }
        }
        Check::GzipLevel => match text.parse::<i32>() {
            Ok(v) if v == -1 || (1..=9).contains(&v) => Ok(()),
            _ => invalid("must be in [1, 9] or -1"),
        },
        Check::SegmentBytes => match text.parse::<u64>() {
            Ok(v) if (65536..=u32::MAX as u64).contains(&v) => Ok(()),
            _ => invalid("must be in [65536, 4294967295]"),
        },
        Check::MessageFormatVersion if is_message_format_version(text) => Ok(()),
        Check::MessageFormatVersion => invalid("not a Kafka version (such as 3.0-IV1 or 2.8)"),
        Check::RemoteStorage => match parse_bool(text) {
            Some(false) => Ok(()),
            Some(true) => Err(format!(
                "{name}: tiered storage is not available in this broker, so a topic cannot \
                 be configured with remote log storage"
            )),
            None => invalid("must be true or false"),
        },
    }
}

/// Check a topic's whole set of configs: each value, then the rules between values that
/// Kafka's `LogConfig.validateValues` adds. Err names what is wrong (INVALID_CONFIG).
pub fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in configs {
        validate_topic_config(name, value)?;
    }
    let long = |name: &str| -> i64 {
        let text = configs
            .get(name)
            .map_or(topic_config(name).map_or("", |c| c.default), |v| v);
        text.trim().parse().unwrap_or_default()
    };
    let (min_lag, max_lag) = (long("min.compaction.lag.ms"), long("max.compaction.lag.ms"));
    if min_lag > max_lag {
        return Err(format!(
            "min.compaction.lag.ms ({min_lag}) must not exceed max.compaction.lag.ms ({max_lag})"
        ));
    }
    Ok(())
}

/// IncrementalAlterConfigs on a list config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListOp {
    /// Add each given item that the list lacks, at the end.
    Append,
    /// Remove one occurrence of each given item.
    Subtract,
}

/// The new value of list config `name` after `op` with `items` (comma-separated), from its
/// `current` value (the topic's override; Kafka's default when None). Err for a config
/// that is not a list, which Kafka answers with INVALID_CONFIG. Follows Kafka 3.9's
/// controller: empty items of the old value are dropped, the new one is joined with ",".
pub fn alter_list(
    name: &str,
    current: Option<&str>,
    op: ListOp,
    items: &str,
) -> Result<String, String> {
    let config = topic_config(name).filter(|c| c.kind == ConfigType::List);
    let Some(config) = config else {
        return Err(format!(
            "can't {} to {name} because its type is not LIST",
            match op {
                ListOp::Append => "APPEND",
                ListOp::Subtract => "SUBTRACT",
            }
        ));
    };
    let mut list: Vec<&str> = current
        .unwrap_or(config.default)
        .split(',')
        .filter(|x| !x.is_empty())
        .collect();
    for item in items.split(',') {
        match op {
            ListOp::Append if !list.contains(&item) => list.push(item),
            ListOp::Append => {}
            ListOp::Subtract => {
                if let Some(at) = list.iter().position(|x| *x == item) {
                    list.remove(at);
                }
            }
        }
    }
    Ok(list.join(","))
}

/// The storage config of a topic's partitions: broker defaults overridden by topic configs.
pub fn topic_log_config(base: &crate::log::LogConfig, topic: &Topic) -> crate::log::LogConfig {
    let mut config = base.clone();
    for (name, value) in &topic.configs {
        let value = value.trim();
        match name.as_str() {
            "retention.ms" => config.retention_ms = value.parse().unwrap_or(config.retention_ms),
            "retention.bytes" => {
                config.retention_bytes = value.parse().unwrap_or(config.retention_bytes)
            }
            "segment.bytes" => config.segment_bytes = value.parse().unwrap_or(config.segment_bytes),
            "segment.ms" => config.segment_ms = value.parse().unwrap_or(config.segment_ms),
            "max.message.bytes" => {
                config.max_batch_bytes = value.parse().unwrap_or(config.max_batch_bytes)
            }
            "index.interval.bytes" => {
                config.index_interval_bytes = value.parse().unwrap_or(config.index_interval_bytes)
            }
            "message.timestamp.type" => config.log_append_time = value == "LogAppendTime",
            "min.cleanable.dirty.ratio" => {
                let c = &mut config.compaction;
                c.min_cleanable_dirty_ratio = value.parse().unwrap_or(c.min_cleanable_dirty_ratio)
            }
            "min.compaction.lag.ms" => {
                let c = &mut config.compaction;
                c.min_compaction_lag_ms = value.parse().unwrap_or(c.min_compaction_lag_ms)
            }
            "max.compaction.lag.ms" => {
                let c = &mut config.compaction;
                c.max_compaction_lag_ms = value.parse().unwrap_or(c.max_compaction_lag_ms)
            }
            "delete.retention.ms" => {
                let c = &mut config.compaction;
                c.delete_retention_ms = value.parse().unwrap_or(c.delete_retention_ms)
            }
            _ => {}
        }
    }
    // The topic's cleanup.policy, else the broker default (`--log-cleanup-policy`). A
    // compacted topic without "delete" keeps every key's latest record forever, as in
    // Kafka: time or size retention never deletes it; the cleaner compacts it.
    if let Some(policy) = topic.configs.get("cleanup.policy") {
        config.compaction.compact = list_items(policy.trim()).any(|p| p == "compact");
        config.compaction.delete = list_items(policy.trim()).any(|p| p == "delete");
    }
    if !config.compaction.delete {
        config.retention_ms = -1;
        config.retention_bytes = -1;
    }
    if super::is_internal(&topic.name) {
        // Dozens of partitions of small records, read at a coordinator's load only: the
        // broker's buffer, cache and preallocation sizes (made for user topics) would cost
        // every node hundreds of MiB for them.
        config.tail_cache_bytes = config.tail_cache_bytes.min(256 << 10);
        config.write_buffer_bytes = config.write_buffer_bytes.min(64 << 10);
        config.preallocate_bytes = config.preallocate_bytes.min(256 << 10);
    }
    config
}

/// The items of a list value as Kafka's ConfigDef reads it: empty text is an empty list,
/// otherwise split at commas with the white space around them dropped.
fn list_items(text: &str) -> impl Iterator<Item = &str> {
    let items = (!text.is_empty()).then(|| text.split(',').map(str::trim));
    items.into_iter().flatten()
}

fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Kafka 3.9's releases with the highest inter-broker protocol step of each (`IV<n>`); the
/// 0.8 and 0.9 releases have none.
const KAFKA_RELEASES: &[(&str, Option<u8>)] = &[
    ("0.8.0", None),
    ("0.8.1", None),
    ("0.8.2", None),
    ("0.9.0", None),
    ("0.10.0", Some(1)),
    ("0.10.1", Some(2)),
    ("0.10.2", Some(0)),
    ("0.11.0", Some(2)),
    ("1.0", Some(0)),
    ("1.1", Some(0)),
    ("2.0", Some(1)),
    ("2.1", Some(2)),
    ("2.2", Some(1)),
    ("2.3", Some(1)),
    ("2.4", Some(1)),
    ("2.5", Some(0)),
    ("2.6", Some(0)),
    ("2.7", Some(2)),
    ("2.8", Some(1)),
    ("3.0", Some(1)),
    ("3.1", Some(0)),
    ("3.2", Some(0)),
    ("3.3", Some(3)),
    ("3.4", Some(0)),
    ("3.5", Some(2)),
    ("3.6", Some(2)),
    ("3.7", Some(4)),
    ("3.8", Some(0)),
    ("3.9", Some(0)),
];

/// Kafka's `MetadataVersion.fromVersionString`: the first two dot-separated parts (three
/// for 0.x) must name a release, or a release and one of its `-IV<n>` steps.
fn is_message_format_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    let wanted = if text.starts_with("0.") { 3 } else { 2 };
    let key = if wanted >= parts.len() {
        text.to_string()
    } else {
        parts[..wanted].join(".")
    };
    KAFKA_RELEASES.iter().any(|(release, steps)| {
        key == *release
            || key
                .strip_prefix(release)
                .and_then(|rest| rest.strip_prefix("-IV"))
                .and_then(|n| n.parse::<u8>().ok())
                .is_some_and(|n| steps.is_some_and(|max| n <= max))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_unique_and_each_default_passes_its_own_check() {
        let names: Vec<&str> = TOPIC_CONFIGS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        for c in TOPIC_CONFIGS {
            assert!(
                validate_topic_config(c.name, c.default).is_ok(),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn every_kafka_3_9_topic_config_is_accepted_and_no_other() {
        // Kafka 3.9's LogConfig, as its "Topic-Level Configs" documentation lists them.
        let kafka_3_9 = [
            "cleanup.policy",
            "compression.gzip.level",
            "compression.lz4.level",
            "compression.type",
            "compression.zstd.level",
            "delete.retention.ms",
            "file.delete.delay.ms",
            "flush.messages",
            "flush.ms",
            "follower.replication.throttled.replicas",
            "index.interval.bytes",
            "leader.replication.throttled.replicas",
            "local.retention.bytes",
            "local.retention.ms",
            "max.compaction.lag.ms",
            "max.message.bytes",
            "message.downconversion.enable",
            "message.format.version",
            "message.timestamp.after.max.ms",
            "message.timestamp.before.max.ms",
            "message.timestamp.difference.max.ms",
            "message.timestamp.type",
            "min.cleanable.dirty.ratio",
            "min.compaction.lag.ms",
            "min.insync.replicas",
            "preallocate",
            "remote.log.copy.disable",
            "remote.log.delete.on.disable",
            "remote.storage.enable",
            "retention.bytes",
            "retention.ms",
            "segment.bytes",
            "segment.index.bytes",
            "segment.jitter.ms",
            "segment.ms",
            "unclean.leader.election.enable",
        ];
        let names: Vec<&str> = TOPIC_CONFIGS.iter().map(|c| c.name).collect();
        assert_eq!(names, kafka_3_9);
        for name in ["no.such", "log.retention.ms", "retention.MS", ""] {
            let err = validate_topic_config(name, "1").unwrap_err();
            assert!(err.contains("unknown topic config"), "{name}: {err}");
        }
    }

    #[test]
    fn values_are_checked_with_kafkas_types_and_ranges() {
        let cases = [
            ("retention.ms", "-1", true),
            ("retention.ms", "-2", false),
            ("retention.ms", "abc", false),
            ("retention.bytes", "-5", true),
            ("segment.bytes", "100", false),
            ("max.message.bytes", "0", true),
            ("max.message.bytes", "2147483648", false),
            ("index.interval.bytes", " 128 ", true),
            ("flush.messages", "0", false),
            ("flush.messages", "9223372036854775807", true),
            ("local.retention.ms", "-2", true),
            ("local.retention.ms", "-3", false),
            ("min.insync.replicas", "0", false),
            ("segment.index.bytes", "3", false),
            ("min.cleanable.dirty.ratio", "0.99", true),
            ("min.cleanable.dirty.ratio", "1.01", false),
            ("min.cleanable.dirty.ratio", "NaN", false),
            ("preallocate", "TRUE", true),
            ("preallocate", "yes", false),
            ("cleanup.policy", "compact", true),
            ("cleanup.policy", "compact, delete", true),
            ("cleanup.policy", "", true),
            ("cleanup.policy", "compact,", false),
            ("cleanup.policy", "Delete", false),
            ("compression.type", "zstd", true),
            ("compression.type", "none", false),
            ("compression.gzip.level", "-1", true),
            ("compression.gzip.level", "0", false),
            ("compression.zstd.level", "-131072", true),
            ("compression.lz4.level", "18", false),
            ("message.timestamp.type", "LogAppendTime", true),
            ("message.timestamp.type", "logappendtime", false),
            ("leader.replication.throttled.replicas", "*", true),
            ("leader.replication.throttled.replicas", "0:1, 1:1", true),
            ("leader.replication.throttled.replicas", "", true),
            ("follower.replication.throttled.replicas", "0-1", false),
            ("follower.replication.throttled.replicas", "*,0:1", false),
            ("message.format.version", "3.0-IV1", true),
            ("message.format.version", "2.8", true),
            ("message.format.version", "2.8.1", true),
            ("message.format.version", "0.10.2-IV0", true),
            ("message.format.version", "0.8.2.1", true),
            ("message.format.version", "3.3-IV4", false),
            ("message.format.version", "5.0", false),
            ("message.format.version", "latest", false),
            ("remote.storage.enable", "false", true),
            ("remote.storage.enable", "true", false),
        ];
        for (name, value, ok) in cases {
            assert_eq!(
                validate_topic_config(name, value).is_ok(),
                ok,
                "{name}={value:?}: {:?}",
                validate_topic_config(name, value)
            );
        }
    }

    #[test]
    fn min_compaction_lag_may_not_exceed_max_compaction_lag() {
        let mut configs = BTreeMap::new();
        configs.insert("min.compaction.lag.ms".to_string(), "5000".to_string());
        assert!(
            validate_topic_configs(&configs).is_ok(),
            "max defaults to i64::MAX"
        );
        configs.insert("max.compaction.lag.ms".to_string(), "4999".to_string());
        assert!(validate_topic_configs(&configs).is_err());
        configs.insert("max.compaction.lag.ms".to_string(), "5000".to_string());
        assert!(validate_topic_configs(&configs).is_ok());
    }

    #[test]
    fn append_adds_missing_items_and_subtract_removes_them_as_kafka_does() {
        use ListOp::{Append, Subtract};
        let policy = "cleanup.policy";
        assert_eq!(
            alter_list(policy, None, Append, "compact").unwrap(),
            "delete,compact"
        );
        assert_eq!(
            alter_list(policy, Some("delete"), Append, "delete").unwrap(),
            "delete"
        );
        assert_eq!(
            alter_list(policy, Some("compact,delete"), Subtract, "delete").unwrap(),
            "compact"
        );
        assert_eq!(alter_list(policy, None, Subtract, "delete").unwrap(), "");
        assert_eq!(
            alter_list(policy, Some("compact"), Subtract, "delete").unwrap(),
            "compact"
        );
        let throttled = "leader.replication.throttled.replicas";
        assert_eq!(
            alter_list(throttled, None, Append, "0:0,1:0").unwrap(),
            "0:0,1:0"
        );
        assert_eq!(
            alter_list(throttled, Some("0:0,1:0"), Subtract, "0:0").unwrap(),
            "1:0"
        );
        for name in ["retention.ms", "no.such"] {
            let err = alter_list(name, None, Append, "1").unwrap_err();
            assert!(err.contains("not LIST"), "{name}: {err}");
        }
    }

    fn topic(configs: &[(&str, &str)]) -> Topic {
        Topic {
            name: "t".into(),
            id: [0; 16],
            owners: vec![0],
            placement: vec![Default::default()],
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn applied_configs_reach_the_log_config() {
        let base = crate::log::LogConfig::default();
        let config = topic_log_config(
            &base,
            &topic(&[
                ("index.interval.bytes", "128"),
                ("message.timestamp.type", "LogAppendTime"),
                ("max.message.bytes", "5000"),
                ("flush.ms", "10"),
            ]),
        );
        assert_eq!(config.index_interval_bytes, 128);
        assert!(config.log_append_time);
        assert_eq!(config.max_batch_bytes, 5000);
        let config = topic_log_config(&base, &topic(&[("message.timestamp.type", "CreateTime")]));
        assert!(!config.log_append_time);
    }

    #[test]
    fn compaction_configs_reach_the_log_config() {
        let base = crate::log::LogConfig::default();
        assert!(!topic_log_config(&base, &topic(&[])).compaction.compact);
        let t = topic(&[
            ("cleanup.policy", "compact,delete"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("min.compaction.lag.ms", "5"),
            ("max.compaction.lag.ms", "600"),
            ("delete.retention.ms", "70"),
        ]);
        let c = topic_log_config(&base, &t).compaction;
        assert!(c.compact && c.delete);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.1);
        assert_eq!(
            (
                c.min_compaction_lag_ms,
                c.max_compaction_lag_ms,
                c.delete_retention_ms
            ),
            (5, 600, 70)
        );
        // The broker default policy applies to topics that do not set one.
        let mut compact_only = base.clone();
        compact_only.compaction.compact = true;
        compact_only.compaction.delete = false;
        let config = topic_log_config(&compact_only, &topic(&[("retention.ms", "1000")]));
        assert!(config.compaction.compact);
        assert_eq!(config.retention_ms, -1);
        let config = topic_log_config(&compact_only, &topic(&[("cleanup.policy", "delete")]));
        assert!(!config.compaction.compact);
        assert_eq!(config.retention_ms, base.retention_ms);
    }

    #[test]
    fn compacted_topics_are_never_deleted_by_retention() {
        let base = crate::log::LogConfig::default();
        let config = topic_log_config(&base, &topic(&[("retention.ms", "1000")]));
        assert_eq!(config.retention_ms, 1000);
        for policy in ["compact", ""] {
            let t = topic(&[("retention.ms", "1000"), ("cleanup.policy", policy)]);
            let config = topic_log_config(&base, &t);
            assert_eq!(
                (config.retention_ms, config.retention_bytes),
                (-1, -1),
                "{policy:?}"
            );
        }
        let t = topic(&[
            ("retention.ms", "1000"),
            ("cleanup.policy", "compact, delete"),
        ]);
        assert_eq!(topic_log_config(&base, &t).retention_ms, 1000);
    }

    #[test]
    fn the_readme_says_what_each_topic_config_does() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let table = readme
            .split("## Topic configs")
            .nth(1)
            .expect("README.md has a Topic configs section");
        for c in TOPIC_CONFIGS {
            assert!(
                table.contains(&format!("`{}`", c.name)),
                "{} missing",
                c.name
            );
        }
    }
}
