//! The durable raft log of the metadata quorum: openraft's `RaftLogStorage` + `RaftLogReader`
//! (the v2 storage API) over a few plain files in one directory.
//!
//! Files in the directory:
//!
//! - `log`: the raft log, append-only. It is a sequence of records, each
//!   `[u32 LE payload length][u32 LE crc32c of payload][payload]`. The first record is a header
//!   (format version and the last purged log id, as JSON); every following record is one log
//!   entry as JSON, in index order, without holes. `append` writes a whole batch with one
//!   write and one fdatasync. `truncate` and `purge` (rare) rewrite the whole file from memory:
//!   write `log.tmp`, fsync it, rename it over `log`, fsync the directory.
//! - `vote`: the vote, one record, replaced atomically (temp file, fsync, rename, fsync dir)
//!   before `save_vote` returns.
//! - `committed`: the last committed log id, one record, replaced like `vote` but without the
//!   directory fsync: losing the newest rename in a crash leaves an older committed id, which
//!   is safe (openraft only uses it to re-apply entries that are known to be committed).
//!
//! All entries are also kept in memory (metadata logs are small); reads never touch the disk.
//!
//! Opening checks the log: a bad record (short header, length 0 or above [`MAX_RECORD_LEN`],
//! payload running past the end of the file, checksum mismatch) with no valid record anywhere
//! after it is a torn tail, left by a crash during an append that was never acknowledged: the
//! file is cut back to the last good record. A bad record followed by a valid record means
//! the file is damaged, and opening fails rather than silently drop acknowledged entries.
//! Opening also fails on a record whose checksum matches but whose payload does not decode, on
//! a header that does not check out, and on entries that are not consecutive.
//!
//! A write that fails (or whose fsync fails) leaves the store refusing every later write: the
//! state of the file is unknown after that, and raft stops on a storage error anyway.
//! Reopening the directory recovers from the file.
//!
//! File I/O is blocking `std::fs`: the store runs on the metadata quorum's dedicated control
//! thread.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader,
    RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use format::{
    encode_json_record, parse_log, read_small_file, sync_dir, write_log_file, write_small_file,
    ParsedLog,
};

/// Largest record payload written or accepted on open: 64 MiB.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// Version of the `log` file's layout, kept in its header record.
const FORMAT_VERSION: u32 = 1;
/// Length of a record's header: payload length and checksum.
const RECORD_HEADER_LEN: usize = 8;

const LOG_FILE: &str = "log";
const LOG_TMP: &str = "log.tmp";
const VOTE_FILE: &str = "vote";
const VOTE_TMP: &str = "vote.tmp";
const COMMITTED_FILE: &str = "committed";
const COMMITTED_TMP: &str = "committed.tmp";

/// A durable raft log in one directory. Cheap to clone: clones share the same log (openraft's
/// log readers are clones).
pub struct FileLogStore<C: RaftTypeConfig> {
    inner: Arc<Mutex<Inner<C>>>,
}

impl<C: RaftTypeConfig> Clone for FileLogStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The first record of the `log` file.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct LogHeader<C: RaftTypeConfig> {
    format: u32,
    last_purged_log_id: Option<LogId<C::NodeId>>,
}

struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    /// The `log` file, opened for appending.
    file: File,
    /// Every entry after `last_purged_log_id`, by index; consecutive.
    log: BTreeMap<u64, C::Entry>,
    last_purged_log_id: Option<LogId<C::NodeId>>,
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    /// Set by a failed write; every later write is refused with it.
    failed: Option<String>,
    /// fdatasyncs of the `log` file by `append`, for tests.
    #[cfg(test)]
    append_syncs: u64,
}

impl<C> FileLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    /// Opens the log in `dir`, creating the directory and an empty log if missing. Cuts a torn
    /// tail off the log file; fails if the files are damaged (see the module documentation).
    pub fn open(dir: &Path) -> Result<Self, String> {
        let inner = Inner::open(dir)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }
}

impl<C> Inner<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    fn open(dir: &Path) -> Result<Self, String> {
        if !dir.exists() {
            fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create raft log directory {}: {e}", dir.display()))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| format!("cannot fsync {}: {e}", parent.display()))?;
            }
        }
        // Leftovers of a crash before a rename: the real files are intact.
        for tmp in [LOG_TMP, VOTE_TMP, COMMITTED_TMP] {
            let _ = fs::remove_file(dir.join(tmp));
        }

        let vote = read_small_file::<Vote<C::NodeId>>(&dir.join(VOTE_FILE))?;
        let committed =
            read_small_file::<Option<LogId<C::NodeId>>>(&dir.join(COMMITTED_FILE))?.flatten();

        let path = dir.join(LOG_FILE);
        if !path.exists() {
            let header = LogHeader::<C> {
                format: FORMAT_VERSION,
                last_purged_log_id: None,
            };
            write_log_file::<C>(dir, &header, std::iter::empty())
                .map_err(|e| format!("cannot create raft log {}: {e}", path.display()))?;
        }
        let bytes =
            fs::read(&path).map_err(|e| format!("cannot read raft log {}: {e}", path.display()))?;
        let ParsedLog {
            header,
            log,
            good_len,
        } = parse_log::<C>(&bytes).map_err(|e| {
            format!(
                "raft log {} is damaged: {e}; refusing to start rather than forget metadata",
                path.display()
            )
        })?;

        let kept_last = log
            .keys()
            .next_back()
            .copied()
            .or(header.last_purged_log_id.as_ref().map(|l| l.index));
        if let Some(c) = committed
            .as_ref()
            .filter(|c| kept_last.is_none_or(|k| k < c.index))
        {
            // A committed entry was durable here before its commit was recorded: a bad
            // record at or before it is damage, not a torn append.
            return Err(format!(
                "raft log {} is damaged: it ends at index {kept_last:?} but index {} was \
                 committed; refusing to start rather than forget metadata",
                path.display(),
                c.index
            ));
        }
        if good_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                good_len,
                file_len = bytes.len(),
                "raft log: cutting a torn tail (an append interrupted by a crash, never acknowledged)"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len(good_len as u64)?;
                    f.sync_all()?;
                    Ok(f)
                })
                .map_err(|e| format!("cannot cut the torn tail of {}: {e}", path.display()))?;
            drop(f);
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open raft log {}: {e}", path.display()))?;

        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            log,
            last_purged_log_id: header.last_purged_log_id,
            vote,
            committed,
            failed: None,
            #[cfg(test)]
            append_syncs: 0,
        })
    }

    /// Fails once a write has failed.
    fn check_usable(&self) -> Result<(), String> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(format!(
                "raft log store refuses writes after an earlier failed write: {why}"
            )),
        }
    }

    /// Marks the store unusable after a failed write; returns the error for the caller.
    fn fail(&mut self, what: &str, e: &io::Error) -> String {
        let why = format!("{what}: {e}");
        tracing::error!(dir = %self.dir.display(), "raft log store: {why}");
        self.failed = Some(why.clone());
        why
    }

    /// Index the next appended entry must have, or None when any index is fine (nothing was
    /// ever appended or purged).
    fn next_index(&self) -> Option<u64> {
        match self.log.last_key_value() {
            Some((index, _)) => Some(index.saturating_add(1)),
            None => self
                .last_purged_log_id
                .as_ref()
                .map(|id| id.index.saturating_add(1)),
        }
    }

    fn last_log_id(&self) -> Option<LogId<C::NodeId>> {
        match self.log.last_key_value() {
            Some((_, entry)) => Some(entry.get_log_id().clone()),
            None => self.last_purged_log_id.clone(),
        }
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Vec<C::Entry> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Vec::new(),
            },
            Bound::Unbounded => 0,
        };
        // Exclusive end; None: unbounded.
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        match end {
            Some(end) if start >= end => Vec::new(),
            Some(end) => self.log.range(start..end).map(|(_, e)| e.clone()).collect(),
            None => self.log.range(start..).map(|(_, e)| e.clone()).collect(),
        }
    }

    /// Writes `entries` with one write and one fdatasync, then adds them to memory. Leading
    /// entries at or below the last purged index are skipped (they are already in the state
    /// machine; openraft's conformance suite appends such entries, openraft itself does not).
    /// Anything else that does not follow the last entry is refused.
    fn append(&mut self, mut entries: Vec<C::Entry>) -> Result<(), io::Error> {
        if let Some(purged) = &self.last_purged_log_id {
            let skip = entries
                .iter()
                .take_while(|e| e.get_log_id().index <= purged.index)
                .count();
            if skip > 0 {
                tracing::warn!(
                    skipped = skip,
                    last_purged = %purged,
                    "raft log: skipping appended entries that are already purged"
                );
                entries.drain(..skip);
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut expected = self.next_index();
        for entry in &entries {
            let index = entry.get_log_id().index;
            if let Some(want) = expected {
                if index != want {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "append of entry {} would leave a hole or overwrite: the next index is {want}",
                            entry.get_log_id()
                        ),
                    ));
                }
            }
            expected = Some(index.saturating_add(1));
        }

        let mut buf = Vec::new();
        for entry in &entries {
            encode_json_record(&mut buf, entry)?;
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            let why = self.fail("append to the raft log failed", &e);
            return Err(io::Error::new(e.kind(), why));
        }
        #[cfg(test)]
        {
            self.append_syncs += 1;
        }
        for entry in entries {
            self.log.insert(entry.get_log_id().index, entry);
        }
        Ok(())
    }

    /// Takes the result of rewriting the log file: the new file, opened for appending.
    fn install(&mut self, written: io::Result<File>) -> Result<(), String> {
        match written {
            Ok(file) => {
                self.file = file;
                Ok(())
            }
            Err(e) => Err(self.fail("rewriting the raft log failed", &e)),
        }
    }

    fn truncate(&mut self, since: u64) -> Result<(), String> {
        if self.log.range(since..).next().is_none() {
            return Ok(());
        }
        let header = LogHeader::<C> {
            format: FORMAT_VERSION,
            last_purged_log_id: self.last_purged_log_id.clone(),
        };
        let written =
            write_log_file::<C>(&self.dir, &header, self.log.range(..since).map(|(_, e)| e));
        self.install(written)?;
        self.log.split_off(&since);
        Ok(())
    }

    fn purge(&mut self, upto: LogId<C::NodeId>) -> Result<(), String> {
        if self.last_purged_log_id.as_ref() >= Some(&upto) {
            return Ok(());
        }
        let index = upto.index;
        let header = LogHeader::<C> {
            format: FORMAT_VERSION,
            last_purged_log_id: Some(upto.clone()),
        };
        let kept = self
            .log
            .range((Bound::Excluded(index), Bound::Unbounded))
            .map(|(_, e)| e);
        let written = write_log_file::<C>(&self.dir, &header, kept);
        self.install(written)?;
        let mut kept = self.log.split_off(&index);
        kept.remove(&index);
        self.log = kept;
        self.last_purged_log_id = Some(upto);
        Ok(())
    }
}

impl<C> RaftLogReader<C> for FileLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        Ok(self.inner.lock().await.entries(range))
    }
}

impl<C> RaftLogStorage<C> for FileLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let inner = self.inner.lock().await;
        Ok(LogState {
            last_purged_log_id: inner.last_purged_log_id.clone(),
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut inner = self.inner.lock().await;
        inner
            .check_usable()
            .map_err(|why| StorageIOError::write_vote(AnyError::error(why)))?;
        if let Err(e) = write_small_file(&inner.dir, VOTE_TMP, VOTE_FILE, vote, true) {
            let why = inner.fail("saving the vote failed", &e);
            return Err(StorageIOError::write_vote(AnyError::error(why)).into());
        }
        inner.vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.inner.lock().await.vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let mut inner = self.inner.lock().await;
        inner
            .check_usable()
            .map_err(|why| StorageIOError::write(AnyError::error(why)))?;
        if inner.committed == committed {
            return Ok(());
        }
        if let Err(e) =
            write_small_file(&inner.dir, COMMITTED_TMP, COMMITTED_FILE, &committed, false)
        {
            let why = inner.fail("saving the committed log id failed", &e);
            return Err(StorageIOError::write(AnyError::error(why)).into());
        }
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.inner.lock().await.committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let mut inner = self.inner.lock().await;
        let result = inner
            .check_usable()
            .and_then(|()| inner.append(entries).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(why) => {
                callback.log_io_completed(Err(io::Error::other(why.clone())));
                Err(StorageIOError::write_logs(AnyError::error(why)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut inner = self.inner.lock().await;
        inner
            .check_usable()
            .and_then(|()| inner.truncate(log_id.index))
            .map_err(|why| {
                StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, AnyError::error(why))
                    .into()
            })
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut inner = self.inner.lock().await;
        inner
            .check_usable()
            .and_then(|()| inner.purge(log_id))
            .map_err(|why| {
                StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, AnyError::error(why))
                    .into()
            })
    }
}

mod format;
#[cfg(test)]
mod tests;
