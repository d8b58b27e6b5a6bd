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

/// Keep large allocations (request frames, I/O buffers) on the heap instead of fresh mmaps.
///
/// glibc serves allocations above 128 KiB with mmap and returns them with munmap, so every
/// 1 MiB produce request cost page faults, zeroed pages and TLB shootdowns: a quarter of the
/// broker's CPU in a profile of produce at 1.4M msg/s. With a high threshold the memory is
/// reused from the heap once warm.
fn tune_allocator() {
    // SAFETY: mallopt only changes glibc tunables; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
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
    tune_allocator();
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
