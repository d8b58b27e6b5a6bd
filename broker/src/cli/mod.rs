//! The command-line tools of the `shardlog` binary (`shardlog groups ...`): clients of a
//! running broker, built on the `shardlog-client` crate (a blocking Kafka client).
//!
//! - this module: the clap subcommand types and [`run`], which `main.rs` calls.
//! - [`groups`]: `list | describe | delete | reset-offsets` of consumer groups.
//! - [`datetime`]: the `--to-datetime` parser (jiff: calendar-checked, UTC without an offset).
//!
//! What this module must never do: reach into the server's state or modules (it talks to a
//! broker only over the Kafka protocol, as any client would), or create a topic as a side
//! effect of asking about it.
//!
//! ```
//! use clap::Parser;
//! use shardlog::cli::{Command, GroupsAction};
//!
//! #[derive(Parser)]
//! struct Main {
//!     #[command(subcommand)]
//!     command: Command,
//! }
//! let main = Main::parse_from(["shardlog", "groups", "--bootstrap", "h:1", "describe", "g"]);
//! let Command::Groups(groups) = main.command;
//! assert_eq!(groups.bootstrap, "h:1");
//! assert!(matches!(groups.action, GroupsAction::Describe { group } if group == "g"));
//! ```

pub mod datetime;
pub mod groups;

use std::time::Duration;

/// How long a tool keeps trying to connect to the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a tool waits for one response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The tools: subcommands of `shardlog`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Consumer groups of a running broker: list, describe, reset-offsets, delete.
    Groups(GroupsCommand),
}

/// `shardlog groups`: consumer-group administration against a running broker.
#[derive(clap::Args, Debug)]
pub struct GroupsCommand {
    /// Broker to talk to, HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SHARDLOG_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
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
    /// Print the new offsets without committing them.
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
    match command {
        Command::Groups(groups) => match groups::run(groups) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("shardlog groups: {e:#}");
                1
            }
        },
    }
}
