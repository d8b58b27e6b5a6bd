//! Broker configuration: command-line flags, each with an environment-variable fallback,
//! and an optional TOML file. Precedence: flag > environment > file > default.
//!
//! Every limit has a name with its unit last (`max_frame_bytes`, `flush_interval_ms`) and is
//! validated at start: an invalid value stops the broker with a message naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

mod validate;
/// Command line of `shardlog`. Every flag can also come from `SHARDLOG_<NAME>` or the TOML file.
///
/// Each setting is declared once, here: the TOML file deserializes into this same struct
/// (same names; the group settings in a `[groups]` table), and defaults come from the
/// config structs of the layers that own them (`LogConfig`, `GroupsConfig`).
#[derive(Parser, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[command(
    name = "shardlog",
    version,
    about = "A Kafka-compatible, thread-per-core message broker"
)]
pub struct Cli {
    /// Optional TOML file with any of the settings below (same names, snake_case).
    #[arg(long, env = "SHARDLOG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory holding topics, logs and the catalog.
    #[arg(long, env = "SHARDLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to bind, HOST:PORT.
    #[arg(long, env = "SHARDLOG_LISTEN")]
    pub listen: Option<String>,
    /// Address Metadata tells clients to connect to, HOST:PORT (default: the listen address).
    #[arg(long, env = "SHARDLOG_ADVERTISE")]
    pub advertise: Option<String>,
    /// Number of shards (one pinned executor per core); default: every core.
    #[arg(long, env = "SHARDLOG_CORES")]
    pub cores: Option<usize>,
    /// First CPU to pin shard 0 to; shard i runs on CPU first_cpu + i.
    #[arg(long, env = "SHARDLOG_FIRST_CPU")]
    pub first_cpu: Option<usize>,
    /// Broker id reported in Metadata.
    #[arg(long, env = "SHARDLOG_NODE_ID")]
    pub node_id: Option<i32>,
    /// Controller port, HOST:PORT: raft traffic of the metadata quorum and broker
    /// registrations (Kafka: the CONTROLLER listener). Required on a voter; a broker-only
    /// node without it listens on an ephemeral port of its listen host.
    #[arg(long, env = "SHARDLOG_CONTROLLER_LISTEN")]
    pub controller_listen: Option<String>,
    /// The metadata quorum's voters, `id@host:port,...` (Kafka: controller.quorum.voters).
    /// A node whose id is listed is a voter and a broker; others are brokers only. Without
    /// it, the node is a one-node cluster.
    #[arg(long, env = "SHARDLOG_CONTROLLER_QUORUM_VOTERS")]
    pub controller_quorum_voters: Option<String>,
    /// Replication factor of topics created without one, auto-created topics included
    /// (Kafka: default.replication.factor).
    #[arg(long, env = "SHARDLOG_DEFAULT_REPLICATION_FACTOR")]
    pub default_replication_factor: Option<i32>,
    /// A broker whose heartbeats stop for this long is fenced: it leads nothing and clients
    /// are not told of it (Kafka: broker.session.timeout.ms).
    #[arg(long, env = "SHARDLOG_BROKER_SESSION_TIMEOUT_MS")]
    pub broker_session_timeout_ms: Option<u64>,
    /// How often a broker heartbeats the quorum leader (Kafka: broker.heartbeat.interval.ms).
    #[arg(long, env = "SHARDLOG_BROKER_HEARTBEAT_INTERVAL_MS")]
    pub broker_heartbeat_interval_ms: Option<u64>,
    /// Fewest in-sync replicas an acks=all produce needs, for topics that do not set
    /// `min.insync.replicas` (Kafka: min.insync.replicas).
    #[arg(long, env = "SHARDLOG_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<usize>,
    /// A follower that has not caught up with its leader for this long leaves the ISR
    /// (Kafka: replica.lag.time.max.ms).
    #[arg(long, env = "SHARDLOG_REPLICA_LAG_TIME_MAX_MS")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// Bytes a follower asks its leader for per partition and fetch (Kafka:
    /// replica.fetch.max.bytes; a larger first batch still comes whole).
    #[arg(long, env = "SHARDLOG_REPLICA_FETCH_MAX_BYTES")]
    pub replica_fetch_max_bytes: Option<u32>,
    /// Bytes a follower asks for per fetch over all its partitions of one leader (Kafka:
    /// replica.fetch.response.max.bytes).
    #[arg(long, env = "SHARDLOG_REPLICA_FETCH_RESPONSE_MAX_BYTES")]
    pub replica_fetch_response_max_bytes: Option<u32>,
    /// How long a leader holds a follower's fetch when it has nothing new (Kafka:
    /// replica.fetch.wait.max.ms).
    #[arg(long, env = "SHARDLOG_REPLICA_FETCH_WAIT_MAX_MS")]
    pub replica_fetch_wait_max_ms: Option<u32>,
    /// How often the metadata quorum's leader gives partitions back to their preferred
    /// leaders (Kafka: leader.imbalance.check.interval.seconds, with
    /// auto.leader.rebalance.enable); 0 turns it off.
    #[arg(long, env = "SHARDLOG_LEADER_IMBALANCE_CHECK_INTERVAL_MS")]
    pub leader_imbalance_check_interval_ms: Option<u64>,
    /// Create a topic when a client asks Metadata or Produce for an unknown one.
    #[arg(long, env = "SHARDLOG_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic.
    #[arg(long, env = "SHARDLOG_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// Largest request frame accepted; larger frames close the connection.
    #[arg(long, env = "SHARDLOG_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Requests read from one connection before its responses are written (pipelining bound).
    #[arg(long, env = "SHARDLOG_MAX_INFLIGHT_REQUESTS")]
    pub max_inflight_requests: Option<usize>,
    /// Request bytes a shard holds at once across its connections; when reached, it stops
    /// reading sockets until responses are written.
    #[arg(long, env = "SHARDLOG_MAX_BUFFERED_BYTES_PER_SHARD")]
    pub max_buffered_bytes_per_shard: Option<usize>,
    /// Open connections per shard; further connections are closed at accept.
    #[arg(long, env = "SHARDLOG_MAX_CONNECTIONS_PER_SHARD")]
    pub max_connections_per_shard: Option<usize>,
    /// Partitions the broker holds in all (each keeps at least one file open); creations
    /// beyond it are refused with INVALID_PARTITIONS.
    #[arg(long, env = "SHARDLOG_MAX_PARTITIONS")]
    pub max_partitions: Option<usize>,
    /// A connection that sends nothing for this long is closed.
    #[arg(long, env = "SHARDLOG_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Segment size at which a new segment is rolled (Kafka: log.segment.bytes).
    #[arg(long, env = "SHARDLOG_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Segment age at which a new segment is rolled (Kafka: log.roll.ms).
    #[arg(long, env = "SHARDLOG_SEGMENT_MS")]
    pub segment_ms: Option<u64>,
    /// Bytes between two sparse offset-index entries.
    #[arg(long, env = "SHARDLOG_INDEX_INTERVAL_BYTES")]
    pub index_interval_bytes: Option<u32>,
    /// Delete segments older than this; -1 keeps forever (Kafka: retention.ms).
    #[arg(long, env = "SHARDLOG_RETENTION_MS", allow_hyphen_values = true)]
    pub retention_ms: Option<i64>,
    /// Delete old segments beyond this partition size; -1 is unlimited.
    #[arg(long, env = "SHARDLOG_RETENTION_BYTES", allow_hyphen_values = true)]
    pub retention_bytes: Option<i64>,
    /// Largest record batch accepted (Kafka: max.message.bytes).
    #[arg(long, env = "SHARDLOG_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u32>,
    /// Recently appended bytes kept in memory per partition for consumers near the head.
    #[arg(long, env = "SHARDLOG_TAIL_CACHE_BYTES")]
    pub tail_cache_bytes: Option<usize>,
    /// Log files grow in steps of this many bytes, so most writes need no block allocation.
    #[arg(long, env = "SHARDLOG_PREALLOCATE_BYTES")]
    pub preallocate_bytes: Option<u64>,
    /// Size of one partition write: appends are copied into an aligned buffer this large,
    /// which is written to the log file with one direct I/O when full (multiple of 4096).
    #[arg(long, env = "SHARDLOG_WRITE_BUFFER_BYTES")]
    pub write_buffer_bytes: Option<usize>,
    /// Full write buffers per partition on their way to the disk while the next one fills;
    /// when that many are unfinished, appends to the partition wait.
    #[arg(long, env = "SHARDLOG_MAX_WRITES_IN_FLIGHT")]
    pub max_writes_in_flight: Option<usize>,
    /// Background flush period for data whose producers did not ask for acks=all.
    #[arg(long, env = "SHARDLOG_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Unflushed bytes per shard that trigger a background flush before the interval.
    #[arg(long, env = "SHARDLOG_FLUSH_BYTES")]
    pub flush_bytes: Option<u64>,
    /// How often retention is applied.
    #[arg(long, env = "SHARDLOG_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Default cleanup.policy of topics: delete, compact, or compact,delete.
    #[arg(long, env = "SHARDLOG_LOG_CLEANUP_POLICY")]
    pub log_cleanup_policy: Option<String>,
    /// Default min.cleanable.dirty.ratio: clean a compacted log once this share is dirty.
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_MIN_CLEANABLE_RATIO")]
    pub log_cleaner_min_cleanable_ratio: Option<f64>,
    /// Default min.compaction.lag.ms: records younger than this are never cleaned.
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_MIN_COMPACTION_LAG_MS")]
    pub log_cleaner_min_compaction_lag_ms: Option<i64>,
    /// Default max.compaction.lag.ms: a dirty segment older than this is cleaned regardless.
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_MAX_COMPACTION_LAG_MS")]
    pub log_cleaner_max_compaction_lag_ms: Option<i64>,
    /// Default delete.retention.ms: how long tombstones stay on compacted topics.
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_DELETE_RETENTION_MS")]
    pub log_cleaner_delete_retention_ms: Option<i64>,
    /// Memory of each shard's cleaner offset map (16-byte key hash + offset per key).
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_DEDUPE_BUFFER_BYTES")]
    pub log_cleaner_dedupe_buffer_bytes: Option<usize>,
    /// I/O (read + written) each shard's cleaner may do per second; 0 = unlimited.
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_IO_BYTES_PER_S")]
    pub log_cleaner_io_bytes_per_s: Option<u64>,
    /// Pause between the cleaner's looks for a log to clean.
    #[arg(long, env = "SHARDLOG_LOG_CLEANER_BACKOFF_MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `shardlog=debug`.
    #[arg(long, env = "SHARDLOG_LOG")]
    pub log: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics and readiness at /health
    /// (default: off).
    #[arg(long, env = "SHARDLOG_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    pub groups: crate::groups::GroupsArgs,
}

/// Validated configuration of a running broker.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where `/metrics` and `/health` are served (None: off).
    pub metrics_listen: Option<SocketAddr>,
    pub listen: SocketAddr,
    pub advertise_host: String,
    pub advertise_port: u16,
    pub cores: usize,
    pub first_cpu: usize,
    pub node_id: i32,
    /// Where this node listens for controller traffic (None: a one-node cluster).
    pub controller_listen: Option<String>,
    /// Voters by id with their controller addresses; `{node_id: ""}` for a one-node cluster.
    pub voters: std::collections::BTreeMap<i32, String>,
    pub default_replication_factor: i32,
    pub broker_session_timeout_ms: u64,
    pub broker_heartbeat_interval_ms: u64,
    pub min_insync_replicas: usize,
    pub replica_lag_time_max_ms: u64,
    pub leader_imbalance_check_interval_ms: u64,
    pub replica_fetch_max_bytes: u32,
    pub replica_fetch_response_max_bytes: u32,
    pub replica_fetch_wait_max_ms: u32,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub max_frame_bytes: usize,
    pub max_inflight_requests: usize,
    pub max_buffered_bytes_per_shard: usize,
    pub max_connections_per_shard: usize,
    pub max_partitions: usize,
    pub idle_timeout_ms: u64,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: u32,
    pub tail_cache_bytes: usize,
    pub preallocate_bytes: u64,
    pub write_buffer_bytes: usize,
    pub max_writes_in_flight: usize,
    pub flush_interval_ms: u64,
    pub flush_bytes: u64,
    pub retention_check_interval_ms: u64,
    /// Broker defaults of the compaction topic configs (`cleanup.policy` and its tuning).
    pub compaction: crate::log::CompactionConfig,
    /// The per-shard cleaner (offset map memory, I/O budget, backoff).
    pub cleaner: crate::log::CleanerSettings,
    pub log: String,
    pub groups: crate::groups::GroupsConfig,
}

impl Config {
    /// Merge flags, environment (already folded into `cli` by clap) and the TOML file, then validate.
    pub fn load(cli: Cli) -> Result<Config, String> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("config: cannot read {}: {e}", path.display()))?;
                toml::from_str::<Cli>(&text)
                    .map_err(|e| format!("config: {}: {e}", path.display()))?
            }
            None => Cli::default(),
        };
        let storage = crate::log::LogConfig::default();
        macro_rules! pick {
            ($name:ident, $default:expr) => {
                cli.$name.or(file.$name).unwrap_or_else(|| $default)
            };
        }
        let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let listen_text = pick!(listen, "127.0.0.1:9092".to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| format!("listen: '{listen_text}' is not HOST:PORT ({e})"))?;
        let advertise_text = pick!(advertise, listen_text.clone());
        let (advertise_host, advertise_port) = split_host_port(&advertise_text)
            .ok_or_else(|| format!("advertise: '{advertise_text}' is not HOST:PORT"))?;
        let node_id = pick!(node_id, 0);
        let voters_text = cli
            .controller_quorum_voters
            .clone()
            .or(file.controller_quorum_voters.clone());
        let controller_listen = cli
            .controller_listen
            .clone()
            .or(file.controller_listen.clone());
        let (voters, controller_listen) = match voters_text {
            None => {
                if let Some(addr) = controller_listen {
                    return Err(format!(
                        "controller-listen: '{addr}' given without controller-quorum-voters \
                         (a one-node cluster needs neither)"
                    ));
                }
                (
                    std::collections::BTreeMap::from([(node_id, String::new())]),
                    None,
                )
            }
            Some(text) => {
                let voters = parse_voters(&text)?;
                let listen = match controller_listen {
                    Some(addr) => {
                        let (_, port) = split_host_port(&addr).ok_or_else(|| {
                            format!("controller-listen: '{addr}' is not HOST:PORT")
                        })?;
                        if let Some(entry) = voters.get(&node_id) {
                            let voter_port = split_host_port(entry).map(|(_, p)| p);
                            if voter_port != Some(port) {
                                return Err(format!(
                                    "controller-listen: '{addr}' is not the port of this node's \
                                     entry {node_id}@{entry} in controller-quorum-voters"
                                ));
                            }
                        }
                        addr
                    }
                    None if voters.contains_key(&node_id) => {
                        return Err(format!(
                            "controller-listen: node {node_id} is a voter in \
                             controller-quorum-voters, so it needs --controller-listen (its \
                             entry there says {})",
                            voters[&node_id]
                        ))
                    }
                    None => format!("{}:0", listen.ip()),
                };
                (voters, Some(listen))
            }
        };
        let metrics_listen = match cli.metrics_listen.clone().or(file.metrics_listen.clone()) {
            None => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| format!("metrics_listen: '{text}' is not HOST:PORT ({e})"))?,
            ),
        };
        let config = Config {
            metrics_listen,
            data_dir: pick!(data_dir, PathBuf::from("./data")),
            controller_listen,
            voters,
            default_replication_factor: pick!(default_replication_factor, 1),
            broker_session_timeout_ms: pick!(broker_session_timeout_ms, 1500),
            broker_heartbeat_interval_ms: pick!(broker_heartbeat_interval_ms, 250),
            min_insync_replicas: pick!(min_insync_replicas, 1),
            replica_lag_time_max_ms: pick!(replica_lag_time_max_ms, 10_000),
            leader_imbalance_check_interval_ms: pick!(leader_imbalance_check_interval_ms, 30_000),
            replica_fetch_max_bytes: pick!(replica_fetch_max_bytes, 4 << 20),
            replica_fetch_response_max_bytes: pick!(replica_fetch_response_max_bytes, 32 << 20),
            replica_fetch_wait_max_ms: pick!(replica_fetch_wait_max_ms, 250),
            listen,
            advertise_host,
            advertise_port,
            cores: pick!(cores, cores_available),
            first_cpu: pick!(first_cpu, 0),
            node_id,
            auto_create_topics: pick!(auto_create_topics, true),
            num_partitions: pick!(num_partitions, 1),
            max_frame_bytes: pick!(max_frame_bytes, 100 << 20),
            max_inflight_requests: pick!(max_inflight_requests, 64),
            max_buffered_bytes_per_shard: pick!(max_buffered_bytes_per_shard, 256 << 20),
            max_connections_per_shard: pick!(max_connections_per_shard, 10_000),
            max_partitions: pick!(max_partitions, 10_000),
            idle_timeout_ms: pick!(idle_timeout_ms, 600_000),
            segment_bytes: pick!(segment_bytes, storage.segment_bytes),
            segment_ms: pick!(segment_ms, storage.segment_ms),
            index_interval_bytes: pick!(index_interval_bytes, storage.index_interval_bytes),
            retention_ms: pick!(retention_ms, storage.retention_ms),
            retention_bytes: pick!(retention_bytes, storage.retention_bytes),
            max_message_bytes: pick!(max_message_bytes, storage.max_batch_bytes),
            tail_cache_bytes: pick!(tail_cache_bytes, storage.tail_cache_bytes),
            preallocate_bytes: pick!(preallocate_bytes, storage.preallocate_bytes),
            write_buffer_bytes: pick!(write_buffer_bytes, storage.write_buffer_bytes),
            max_writes_in_flight: pick!(max_writes_in_flight, storage.max_writes_in_flight),
            flush_interval_ms: pick!(flush_interval_ms, 1000),
            flush_bytes: pick!(flush_bytes, 64 << 20),
            retention_check_interval_ms: pick!(
                retention_check_interval_ms,
                crate::log::RETENTION_CHECK_INTERVAL_MS_DEFAULT
            ),
            compaction: {
                let policy = pick!(log_cleanup_policy, "delete".to_string());
                let items: Vec<&str> = policy.split(',').map(str::trim).collect();
                if items.iter().any(|p| *p != "compact" && *p != "delete") {
                    return Err(format!(
                        "log_cleanup_policy: '{policy}' is not delete, compact or compact,delete"
                    ));
                }
                let d = crate::log::CompactionConfig::default();
                crate::log::CompactionConfig {
                    compact: items.contains(&"compact"),
                    delete: items.contains(&"delete"),
                    min_cleanable_dirty_ratio: pick!(
                        log_cleaner_min_cleanable_ratio,
                        d.min_cleanable_dirty_ratio
                    ),
                    min_compaction_lag_ms: pick!(
                        log_cleaner_min_compaction_lag_ms,
                        d.min_compaction_lag_ms
                    ),
                    max_compaction_lag_ms: pick!(
                        log_cleaner_max_compaction_lag_ms,
                        d.max_compaction_lag_ms
                    ),
                    delete_retention_ms: pick!(
                        log_cleaner_delete_retention_ms,
                        d.delete_retention_ms
                    ),
                }
            },
            cleaner: {
                let d = crate::log::CleanerSettings::default();
                crate::log::CleanerSettings {
                    dedupe_buffer_bytes: pick!(
                        log_cleaner_dedupe_buffer_bytes,
                        d.dedupe_buffer_bytes
                    ),
                    io_bytes_per_s: match pick!(log_cleaner_io_bytes_per_s, 0) {
                        0 => u64::MAX,
                        n => n,
                    },
                    backoff_ms: pick!(log_cleaner_backoff_ms, d.backoff_ms),
                }
            },
            log: pick!(log, "info".to_string()),
            groups: crate::groups::GroupsConfig::load(&cli.groups, Some(&file.groups))?,
        };
        config.validate(cores_available)?;
        Ok(config)
    }

    /// The storage settings every new partition starts from (topic configs may override).
    pub fn log_config(&self) -> crate::log::LogConfig {
        crate::log::LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            index_interval_bytes: self.index_interval_bytes,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            max_batch_bytes: self.max_message_bytes,
            tail_cache_bytes: self.tail_cache_bytes,
            preallocate_bytes: self.preallocate_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
            max_writes_in_flight: self.max_writes_in_flight,
            // A topic setting (message.timestamp.type); the broker default is CreateTime.
            log_append_time: false,
            compaction: self.compaction.clone(),
        }
    }
}

/// Split "host:port" (or "[v6]:port") into its parts.
/// `id@host:port,...` (Kafka's controller.quorum.voters): 1 to 9 distinct non-negative ids,
/// each with a HOST:PORT.
fn parse_voters(text: &str) -> Result<std::collections::BTreeMap<i32, String>, String> {
    let bad = |why: String| {
        Err(format!(
            "controller-quorum-voters: '{text}' is not id@host:port,... ({why})"
        ))
    };
    let mut voters = std::collections::BTreeMap::new();
    for entry in text.split(',').map(str::trim) {
        let Some((id, addr)) = entry.split_once('@') else {
            return bad(format!("'{entry}' has no '@'"));
        };
        let Ok(id) = id.trim().parse::<i32>() else {
            return bad(format!("'{id}' is not a node id"));
        };
        if id < 0 {
            return bad(format!("node id {id} is negative"));
        }
        if split_host_port(addr.trim()).is_none() {
            return bad(format!("'{addr}' is not HOST:PORT"));
        }
        if voters.insert(id, addr.trim().to_string()).is_some() {
            return bad(format!("node id {id} is listed twice"));
        }
    }
    if voters.len() > 9 {
        return bad(format!("{} voters; at most 9", voters.len()));
    }
    Ok(voters)
}

fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut full = vec!["shardlog"];
        full.extend_from_slice(args);
        Cli::parse_from(full)
    }

    #[test]
    fn defaults_listen_on_9092_with_data_in_dot_data() {
        let config = Config::load(cli(&["--cores", "1"])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.advertise_host, "127.0.0.1");
        assert_eq!(config.advertise_port, 9092);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.segment_bytes, 1 << 30);
    }

    #[test]
    fn invalid_values_are_refused_naming_the_setting() {
        let err = Config::load(cli(&["--cores", "1", "--num-partitions", "0"])).unwrap_err();
        assert!(err.starts_with("num_partitions:"), "{err}");
        let err = Config::load(cli(&["--cores", "1", "--listen", "nowhere"])).unwrap_err();
        assert!(err.starts_with("listen:"), "{err}");
        let err = Config::load(cli(&["--cores", "4096"])).unwrap_err();
        assert!(err.starts_with("cores:"), "{err}");
        let err = Config::load(cli(&["--cores", "1", "--write-buffer-bytes", "5000"])).unwrap_err();
        assert!(err.starts_with("write_buffer_bytes:"), "{err}");
        let err = Config::load(cli(&["--cores", "1", "--max-writes-in-flight", "0"])).unwrap_err();
        assert!(err.starts_with("max_writes_in_flight:"), "{err}");
        let config = Config::load(cli(&[
            "--cores",
            "1",
            "--write-buffer-bytes",
            "4194304",
            "--max-writes-in-flight",
            "8",
        ]))
        .unwrap();
        let log = config.log_config();
        assert_eq!(
            (log.write_buffer_bytes, log.max_writes_in_flight),
            (4 << 20, 8)
        );
    }

    #[test]
    fn cluster_flags_are_checked_naming_the_setting() {
        let one = Config::load(cli(&["--cores", "1"])).unwrap();
        assert_eq!(one.voters, BTreeMap::from([(0, String::new())]));
        assert_eq!(one.controller_listen, None);
        let voters = "1@127.0.0.1:9093,2@127.0.0.1:9193";
        let ok = Config::load(cli(&[
            "--cores",
            "1",
            "--node-id",
            "1",
            "--controller-quorum-voters",
            voters,
            "--controller-listen",
            "127.0.0.1:9093",
        ]))
        .unwrap();
        assert_eq!(ok.voters.len(), 2);
        // A broker-only node gets an ephemeral controller port on its listen host.
        let broker = Config::load(cli(&[
            "--cores",
            "1",
            "--node-id",
            "7",
            "--controller-quorum-voters",
            voters,
        ]))
        .unwrap();
        assert_eq!(broker.controller_listen.as_deref(), Some("127.0.0.1:0"));
        for (args, setting) in [
            (
                vec!["--controller-quorum-voters", "1@nohost"],
                "controller-quorum-voters",
            ),
            (
                vec!["--controller-quorum-voters", "x@127.0.0.1:1"],
                "controller-quorum-voters",
            ),
            (
                vec!["--controller-quorum-voters", "1@h:1,1@h:2"],
                "controller-quorum-voters",
            ),
            (
                vec!["--node-id", "1", "--controller-quorum-voters", voters],
                "controller-listen",
            ),
            (
                vec![
                    "--node-id",
                    "1",
                    "--controller-quorum-voters",
                    voters,
                    "--controller-listen",
                    "127.0.0.1:9999",
                ],
                "controller-listen",
            ),
            (
                vec!["--controller-listen", "127.0.0.1:9093"],
                "controller-listen",
            ),
            (
                vec!["--default-replication-factor", "0"],
                "default_replication_factor",
            ),
            (
                vec!["--broker-session-timeout-ms", "100"],
                "broker_session_timeout_ms",
            ),
            (
                vec!["--replica-fetch-max-bytes", "100"],
                "replica_fetch_response_max_bytes",
            ),
            (
                vec!["--replica-fetch-wait-max-ms", "20000"],
                "replica_fetch_wait_max_ms",
            ),
            (vec!["--min-insync-replicas", "0"], "min_insync_replicas"),
        ] {
            let mut all = vec!["--cores", "1"];
            all.extend(args.iter().copied());
            let err = Config::load(cli(&all)).unwrap_err();
            assert!(err.starts_with(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn cluster_settings_come_from_the_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "node_id = 2\ncontroller_quorum_voters = \"2@127.0.0.1:9193\"\n\
             controller_listen = \"127.0.0.1:9193\"\nbroker_session_timeout_ms = 3000\n",
        )
        .unwrap();
        let config =
            Config::load(cli(&["--cores", "1", "--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.controller_listen.as_deref(), Some("127.0.0.1:9193"));
        assert_eq!(config.broker_session_timeout_ms, 3000);
    }

    #[test]
    fn file_values_apply_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shardlog.toml");
        std::fs::write(
            &path,
            "num_partitions = 3\nsegment_bytes = 1048576\ncores = 1\n",
        )
        .unwrap();
        let path_text = path.to_str().unwrap();
        let config = Config::load(cli(&["--config", path_text, "--num-partitions", "5"])).unwrap();
        assert_eq!(config.num_partitions, 5);
        assert_eq!(config.segment_bytes, 1 << 20);
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let err = Config::load(cli(&["--config", path_text])).unwrap_err();
        assert!(err.contains("no_such_setting"), "{err}");
    }
}
