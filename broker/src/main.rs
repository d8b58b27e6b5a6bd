//! `shardlog`: parse the command line, load and validate the config, run the broker.

use clap::Parser;

fn main() {
    let cli = shardlog::config::Cli::parse();
    let config = match shardlog::config::Config::load(cli) {
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
