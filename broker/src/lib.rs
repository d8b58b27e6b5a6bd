//! shardlog: a Kafka-compatible, thread-per-core message broker.
//!
//! Data flows `net` (frames) -> `protocol` (Kafka APIs) -> `shard` (owner routing over the
//! mesh) -> `log` (the storage engine). `catalog` holds topics and placement; `sync` holds the
//! ordering primitives the layers share. `cli` holds the command-line tools (`shardlog groups`),
//! plain Kafka clients of a running broker. See ARCHITECTURE.md at the repository root.

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod codes;
pub mod config;
pub mod groups;
pub mod log;
pub mod metrics;
pub mod metrics_http;
pub mod net;
pub mod protocol;
pub mod replicas;
pub mod replication;
pub mod server;
pub mod shard;
pub mod startup;
pub mod sync;
