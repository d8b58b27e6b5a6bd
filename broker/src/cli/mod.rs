//! The command-line tools of the `shardlog` binary (`shardlog topics ...`, `groups ...`,
//! `cluster describe`, `produce`, `consume`): clients of a running cluster, built on the
//! `shardlog-client` crate (a blocking Kafka client).
//!
//! - this module: the clap subcommand types and [`run`], which `main.rs` calls.
//! - [`session`]: the connections of one run (bootstrap, partition leaders, coordinators)
//!   and Kafka's error names.
//! - [`output`]: tables, or `--format json`.
//! - [`topics`]: `list | describe | create | alter | delete`.
//! - [`cluster`]: `cluster describe`.
//! - [`records`]: `produce` (stdin lines) and `consume` (by offset).
//! - [`groups`]: `list | describe | delete | reset-offsets` of consumer groups.
//! - [`datetime`]: the `--to-datetime` parser (jiff: calendar-checked, UTC without an offset).
//!
//! What this module must never do: reach into the server's state or modules (it talks to a
//! broker only over the Kafka protocol, as any client would), or create a topic as a side
//! effect of asking about it.
//!
//! ```
//! use clap::Parser;
//! use shardlog::cli::{Command, GroupsAction, TopicsAction};
//!
//! #[derive(Parser)]
//! struct Main {
//!     #[command(subcommand)]
//!     command: Command,
//! }
//! // --bootstrap goes before or after the action.
//! let main = Main::parse_from(["shardlog", "groups", "--bootstrap", "h:1", "describe", "g"]);
//! let Command::Groups(groups) = main.command else { panic!() };
//! assert_eq!(groups.common.bootstrap, "h:1");
//! assert!(matches!(groups.action, GroupsAction::Describe { group } if group == "g"));
//! let main = Main::parse_from(["shardlog", "topics", "describe", "t", "--bootstrap", "h:2"]);
//! let Command::Topics(topics) = main.command else { panic!() };
//! assert_eq!(topics.common.bootstrap, "h:2");
//! assert!(matches!(topics.action, TopicsAction::Describe { topic } if topic == "t"));
//! ```

pub mod cluster;
pub mod datetime;
pub mod groups;
pub mod output;
pub mod records;
pub mod session;
pub mod topics;

use std::time::Duration;

use output::Format;

/// How long a tool keeps trying to connect to the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a tool waits for one response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The tools: subcommands of `shardlog`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Topics: list, describe, create, alter, delete.
    Topics(TopicsCommand),
    /// The cluster: its id, controller and brokers.
    Cluster(ClusterCommand),
    /// Produce lines of stdin to a topic, one record per line.
    Produce(ProduceCommand),
    /// Print a topic's records, one per line.
    Consume(ConsumeCommand),
    /// Consumer groups of a running broker: list, describe, reset-offsets, delete.
    Groups(GroupsCommand),
}

/// Flags every tool takes, before or after its action.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Broker to talk to first, HOST:PORT (any broker of the cluster).
    #[arg(
        long,
        global = true,
        env = "SHARDLOG_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Output: readable tables, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `shardlog topics`.
#[derive(clap::Args, Debug)]
pub struct TopicsCommand {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub action: TopicsAction,
}

/// What `shardlog topics` does.
#[derive(clap::Subcommand, Debug)]
pub enum TopicsAction {
    /// Every topic with its partition count and replication factor.
    List,
    /// Partitions (leader, replicas, ISR, log start and end offsets) and config overrides.
    Describe { topic: String },
    /// Create a topic.
    Create {
        topic: String,
        /// Number of partitions (-1: the broker's --num-partitions).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        partitions: i32,
        /// Replicas per partition (-1: the broker's --default-replication-factor).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        replication_factor: i16,
        /// A topic config, NAME=VALUE (Kafka's names: retention.ms=3600000); repeatable.
        #[arg(long, value_parser = topics::parse_config)]
        config: Vec<(String, String)>,
    },
    /// Set or remove topic configs.
    Alter {
        topic: String,
        /// Set a topic config, NAME=VALUE; repeatable.
        #[arg(long, value_parser = topics::parse_config)]
        config: Vec<(String, String)>,
        /// Remove a topic config (back to the broker's default); repeatable.
        #[arg(long)]
        delete_config: Vec<String>,
    },
    /// Delete topics and their data.
    Delete { topics: Vec<String> },
}

/// `shardlog cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterCommand {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub action: ClusterAction,
}

/// What `shardlog cluster` does.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterAction {
    /// Cluster id, controller, and every broker with its address.
    Describe,
}

/// `shardlog produce TOPIC`.
#[derive(clap::Args, Debug)]
pub struct ProduceCommand {
    #[command(flatten)]
    pub common: Common,
    pub topic: String,
    /// Split each line at the first SEP: key before, value after.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every record to this partition (else keyed by murmur2, unkeyed round-robin).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Acknowledgements to wait for: -1 (all in-sync replicas), 1 (the leader), 0 (none).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i16).range(-1..=1))]
    pub acks: i16,
}

/// `shardlog consume TOPIC`.
#[derive(clap::Args, Debug)]
pub struct ConsumeCommand {
    #[command(flatten)]
    pub common: Common,
    pub topic: String,
    /// Start at each partition's log start (else at its log end: only new records).
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after printing N records.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Stop once every partition is read up to its log end.
    #[arg(long)]
    pub exit_at_end: bool,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Print keys too: KEY SEP VALUE.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
}

/// `shardlog groups`: consumer-group administration against a running broker.
#[derive(clap::Args, Debug)]
pub struct GroupsCommand {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub action: GroupsAction,
}

/// What `shardlog groups` does.
#[derive(clap::Subcommand, Debug)]
pub enum GroupsAction {
    /// List every consumer group with its state.
    List,
    /// Show a group's state, members, committed offsets and lag.
    Describe { group: String },
    /// Move a group's committed offsets of one topic (the group must have no members).
    ResetOffsets(ResetArgs),
    /// Delete groups with no members, and their committed offsets.
    Delete { groups: Vec<String> },
}

/// `shardlog groups reset-offsets`.
#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    pub group: String,
    /// Topic whose offsets move (every partition).
    #[arg(long)]
    pub topic: String,
    #[command(flatten)]
    pub target: ResetTarget,
    /// Commit the new offsets (without it, as in Kafka's tool, they are only shown).
    #[arg(long, conflicts_with = "dry_run")]
    pub execute: bool,
    /// Only show the new offsets (the default; kept for Kafka's tool's habit).
    #[arg(long)]
    pub dry_run: bool,
}

/// Where to move the offsets: exactly one.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// The log start of each partition.
    #[arg(long)]
    pub to_earliest: bool,
    /// The log end of each partition.
    #[arg(long)]
    pub to_latest: bool,
    /// This offset in every partition (clamped to the partition's range).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// The first message at or after this time (the log end where there is none):
    /// YYYY-MM-DDTHH:MM[:SS[.fff]], optionally followed by Z or an offset (+HH:MM, -HHMM,
    /// +HH), or milliseconds since the epoch. A time without an offset is UTC, as in Kafka's
    /// kafka-consumer-groups, not the local time zone. Invalid dates (2026-02-31) are refused.
    #[arg(long, value_name = "DATETIME", value_parser = datetime::parse_epoch_ms)]
    pub to_datetime: Option<i64>,
    /// Move each committed offset by N (negative: back), clamped to the partition's range;
    /// a partition without a commit starts from its earliest offset.
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
}

/// Runs one tool; prints its output to stdout and its error to stderr. Returns the exit
/// status: 0 on success, 1 on failure.
pub fn run(command: Command) -> i32 {
    let (name, result) = match command {
        Command::Topics(c) => ("topics", topics::run(c)),
        Command::Cluster(c) => ("cluster", cluster::run(c)),
        Command::Produce(c) => ("produce", records::produce(c)),
        Command::Consume(c) => ("consume", records::consume(c)),
        Command::Groups(c) => ("groups", groups::run(c)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shardlog {name}: {e:#}");
            1
        }
    }
}
