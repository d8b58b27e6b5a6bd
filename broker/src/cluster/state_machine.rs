//! The quorum's state machine: the catalog, changed only by `metadata::apply` on committed
//! records. Every applied batch publishes an `Arc<Catalog>` on a watch channel, which the
//! control thread hands to the shards.
//!
//! Durability: the state is not written per record; snapshots are (`snapshot.json`, written
//! to a temp file, fsynced, renamed, directory fsynced). At start the state machine holds the
//! last snapshot and openraft re-applies the committed records after it from the raft log,
//! which the log store keeps durably with the committed index.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use super::metadata::{self, Reply};
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::catalog::Catalog;

const SNAPSHOT_FILE: &str = "snapshot.json";

/// What a snapshot holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct State {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    catalog: Catalog,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: State,
}

struct Inner {
    state: State,
    /// The last snapshot (built or installed), as stored.
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    published: Arc<watch::Sender<Arc<Catalog>>>,
}

impl StateMachine {
    /// Open from the last snapshot in `dir`, if any. Returns the state machine and a receiver
    /// of every catalog it publishes (starting with the snapshot's).
    pub fn open(dir: &Path) -> Result<(StateMachine, watch::Receiver<Arc<Catalog>>), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(SNAPSHOT_FILE);
        let (state, snapshot) = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "metadata snapshot {} is damaged ({e}); refusing to start",
                        path.display()
                    )
                })?;
                (stored.state, Some((stored.meta, bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::default(), None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let (tx, rx) = watch::channel(Arc::new(state.catalog.clone()));
        Ok((
            StateMachine {
                dir: dir.to_path_buf(),
                inner: Arc::new(Mutex::new(Inner {
                    state,
                    snapshot,
                    snapshots_built: 0,
                })),
                published: Arc::new(tx),
            },
            rx,
        ))
    }

    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

fn io_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut inner = self.inner.lock().await;
        inner.snapshots_built += 1;
        let snapshot_id = match inner.state.last_applied {
            Some(last) => format!(
                "{}-{}-{}",
                last.leader_id, last.index, inner.snapshots_built
            ),
            None => format!("--{}", inner.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.state.last_applied,
            last_membership: inner.state.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: inner.state.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(io_error)?;
        self.save(&bytes).map_err(io_error)?;
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let inner = self.inner.lock().await;
        Ok((inner.state.last_applied, inner.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
    {
        let mut inner = self.inner.lock().await;
        let mut replies = Vec::new();
        for entry in entries {
            inner.state.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::Done,
                EntryPayload::Normal(ref command) => {
                    metadata::apply(&mut inner.state.catalog, entry.log_id.index, command)
                }
                EntryPayload::Membership(ref m) => {
                    inner.state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Reply::Done
                }
            };
            inner.state.catalog.version = entry.log_id.index;
            replies.push(reply);
        }
        self.published
            .send_replace(Arc::new(inner.state.catalog.clone()));
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.save(&bytes).map_err(io_error)?;
        let mut inner = self.inner.lock().await;
        inner.state = stored.state;
        inner.state.last_applied = meta.last_log_id;
        inner.state.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), bytes));
        self.published
            .send_replace(Arc::new(inner.state.catalog.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
