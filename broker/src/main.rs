//! `shardlog`: run the broker (`shardlog --data-dir D --listen H:P ...`), or administer a
//! running one (`shardlog groups list|describe|reset-offsets ...`).

use clap::{Parser, Subcommand};

/// The command line: broker flags, or a subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "shardlog",
    version,
    about = "A Kafka-compatible, thread-per-core message broker",
    args_conflicts_with_subcommands = true
)]
struct Main {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    broker: shardlog::config::Cli,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consumer groups of a running broker: list, describe, reset-offsets.
    Groups(shardlog::groups::admin::GroupsCommand),
}

fn main() {
    let main = Main::parse();
    if let Some(Command::Groups(command)) = main.command {
        if let Err(e) = shardlog::groups::admin::run(command) {
            eprintln!("shardlog groups: {e}");
            std::process::exit(1);
        }
        return;
    }
    let config = match shardlog::config::Config::load(main.broker) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shardlog: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = shardlog::server::run(config) {
        eprintln!("shardlog: {e:#}");
        std::process::exit(1);
    }
}
