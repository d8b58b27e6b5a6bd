//! The cluster's control plane: the metadata quorum (openraft) and broker membership.
//!
//! Every node runs one control thread (`node.rs`) with its own raft instance: a voter if its
//! id is in `--controller-quorum-voters`, else a learner that the leader adds when the node
//! registers. The quorum's log holds every metadata change (`metadata.rs`); its state machine
//! (`state_machine.rs`) is the catalog, which each node hands its shards as an immutable copy.
//! Raft traffic and broker requests share the controller port (`rpc.rs`, `network.rs`); the
//! raft log (`log_store.rs`) and snapshots are fsynced in `<data_dir>/metadata/`.
//!
//! Nothing outside this module imports openraft: the rest of the broker sees `ControlHandle`
//! (propose a change, watch the catalog) and the metadata command types.

mod log_store;
mod meta_properties;
pub mod metadata;
mod network;
mod node;
pub mod rpc;
mod state_machine;
mod types;

pub use metadata::{Command, Growth, NewTopicSpec, Reply};
pub use node::{start, Applied, ClusterConfig, ControlHandle, ProposeError};
