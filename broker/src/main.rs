//! `shardlog`: run the broker (`shardlog --data-dir D --listen H:P ...`), or administer a
//! running one (`shardlog groups list|describe|reset-offsets|delete ...`, in `cli/`).

use clap::Parser;

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
    command: Option<shardlog::cli::Command>,
    #[command(flatten)]
    broker: shardlog::config::Cli,
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

/// A panic anywhere ends the process at once, non-zero, with the panic in the log.
///
/// A panicking shard thread would otherwise die alone: the process would live on with its
/// listening sockets open, connections would queue in the kernel's backlog unanswered, and a
/// supervisor would see a running process and never restart it. Exiting right away (no
/// unwinding into other shards, no destructors) leaves the data dir as a crash does, which
/// recovery handles.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("panic: {info}; exiting");
        // SAFETY: _exit ends the process without running anything else; nothing to uphold.
        unsafe { libc::_exit(PANIC_EXIT_CODE) };
    }));
}

/// The exit status after a panic (what an uncaught panic gives on the main thread).
const PANIC_EXIT_CODE: i32 = 101;

/// Command-line tools die quietly on a closed pipe (`shardlog groups list | head -1`), as
/// other command-line tools do, instead of panicking in `println!`.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    let main = Main::parse();
    exit_on_panic();
    if let Some(command) = main.command {
        default_sigpipe();
        std::process::exit(shardlog::cli::run(command));
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
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter(&config.log)))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a file or journald they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = shardlog::server::run(config) {
        eprintln!("shardlog: {e:#}");
        std::process::exit(1);
    }
}

/// The log filter: the configured one, with openraft's own chatter (every vote and
/// membership step at info) lowered to warnings unless the filter names openraft itself.
fn log_filter(configured: &str) -> String {
    if configured.contains("openraft") {
        configured.to_string()
    } else {
        format!("{configured},openraft=warn")
    }
}
