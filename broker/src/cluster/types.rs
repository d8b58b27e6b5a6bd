//! The raft type configuration of the metadata quorum. Every openraft type the rest of
//! `cluster/` names is spelled once, here.

use std::io::Cursor;

use openraft::BasicNode;

use crate::cluster::metadata::{Command, Reply};

/// A node's id: Kafka's `node.id` (an i32 on the wire), widened for openraft.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The metadata quorum: entries are metadata commands, applied to the catalog.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
