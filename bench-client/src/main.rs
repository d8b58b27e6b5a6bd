//! `shardlog-bench`: a Kafka-protocol load generator that verifies every message.
//!
//! It speaks Kafka with the `kafka-protocol` crate and knows nothing of the shardlog crate, so
//! it measures any Kafka-compatible broker. Exit status: 0 when every check passed, 1 when
//! verification failed, 2 on a usage or setup error. Throughput figures never fail a run.
//!
//! ```text
//! shardlog-bench produce --bootstrap 127.0.0.1:9092 --message-bytes 100 --acks 1 --duration-s 30
//! shardlog-bench consume --bootstrap 127.0.0.1:9092
//! shardlog-bench e2e --rate 2000000 --json
//! shardlog-bench compare --a old/shardlog --b target/release/shardlog --rounds 5
//! ```

mod batch;
mod compare;
mod leaders;
mod proto;
mod raw;
mod run;
mod stats;
#[cfg(test)]
mod test_broker;
mod verify;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::run::{Mode, WorkloadArgs};

#[derive(Parser, Debug)]
#[command(
    name = "shardlog-bench",
    version,
    about = "Kafka-protocol load generator that verifies every message"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce and verify the acknowledged offsets.
    Produce(WorkloadArgs),
    /// Read the topic from its start to its current end and verify every message.
    Consume(WorkloadArgs),
    /// Produce and consume together; latency from intended send time to receipt.
    E2e(WorkloadArgs),
    /// The same workload against two broker binaries in turn; ratio of medians.
    Compare(compare::CompareArgs),
    /// Raw loopback TCP bandwidth (baseline).
    RawLoopback(raw::LoopbackArgs),
    /// Raw O_DIRECT disk write bandwidth (baseline).
    RawDisk(raw::DiskArgs),
}

fn workload(args: &WorkloadArgs, mode: Mode) -> anyhow::Result<bool> {
    let result = run::run(args, mode)?;
    if args.json {
        println!("{}", result.to_json());
    } else {
        result.print_table();
    }
    Ok(result.verified)
}

fn baseline(name: &str, json: bool, bytes_per_s: f64) -> bool {
    if json {
        println!("{{\"baseline\":\"{name}\",\"bytes_per_s\":{bytes_per_s:.1}}}");
    } else {
        println!("{name}: {:.1} MB/s", bytes_per_s / 1e6);
    }
    true
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Produce(a) => workload(a, Mode::Produce),
        Command::Consume(a) => workload(a, Mode::Consume),
        Command::E2e(a) => workload(a, Mode::EndToEnd),
        Command::Compare(a) => compare::compare(a),
        Command::RawLoopback(a) => raw::loopback(a).map(|b| baseline("raw-loopback", a.json, b)),
        Command::RawDisk(a) => raw::disk(a).map(|b| baseline("raw-disk", a.json, b)),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("shardlog-bench: verification FAILED");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("shardlog-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
