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
        } = parse_log::<C>(&bytes)
            .map_err(|e| format!("raft log {} is damaged: {e}", path.display()))?;

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

/// The contents of a `log` file.
struct ParsedLog<C: RaftTypeConfig> {
    header: LogHeader<C>,
    log: BTreeMap<u64, C::Entry>,
    /// Length of the good prefix: shorter than the file when it ends in a torn tail.
    good_len: usize,
}

/// Parses a whole `log` file.
fn parse_log<C>(bytes: &[u8]) -> Result<ParsedLog<C>, String>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    let (payload, mut pos) =
        frame_at(bytes, 0).map_err(|why| format!("bad header record at offset 0: {why}"))?;
    let header: LogHeader<C> = serde_json::from_slice(payload)
        .map_err(|e| format!("header record does not decode: {e}"))?;
    if header.format != FORMAT_VERSION {
        return Err(format!(
            "unknown log format version {} (this build reads {FORMAT_VERSION})",
            header.format
        ));
    }

    let mut log = BTreeMap::new();
    let mut expected = header
        .last_purged_log_id
        .as_ref()
        .map(|id| id.index.saturating_add(1));
    while pos < bytes.len() {
        let (payload, next) = match frame_at(bytes, pos) {
            Ok(frame) => frame,
            Err(why) => {
                if let Some(at) = next_valid_record(bytes, pos + 1) {
                    return Err(format!(
                        "bad record at offset {pos} ({why}) followed by a valid record at offset \
                         {at}: refusing to drop the log after it"
                    ));
                }
                // A torn tail: nothing valid after it.
                return Ok(ParsedLog {
                    header,
                    log,
                    good_len: pos,
                });
            }
        };
        let entry: C::Entry = serde_json::from_slice(payload).map_err(|e| {
            format!(
                "record at offset {pos} has a good checksum but does not decode as an entry: {e}"
            )
        })?;
        let index = entry.get_log_id().index;
        if let Some(want) = expected {
            if index != want {
                return Err(format!(
                    "record at offset {pos} holds entry {} where index {want} was expected \
                     (entries must be consecutive)",
                    entry.get_log_id()
                ));
            }
        }
        expected = Some(index.saturating_add(1));
        log.insert(index, entry);
        pos = next;
    }
    Ok(ParsedLog {
        header,
        log,
        good_len: pos,
    })
}

/// The payload of the record at `pos` and the offset after it, or why there is no valid
/// record there.
fn frame_at(bytes: &[u8], pos: usize) -> Result<(&[u8], usize), String> {
    let rest = bytes.get(pos..).unwrap_or_default();
    if rest.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "{} bytes left, short of a record header",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(format!("record length {len} outside 1..={MAX_RECORD_LEN}"));
    }
    let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
        return Err(format!(
            "record length {len} runs past the end of the file ({} bytes left)",
            rest.len() - RECORD_HEADER_LEN
        ));
    };
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    Ok((payload, pos + RECORD_HEADER_LEN + len))
}

/// The first offset at or after `from` where a valid record starts, if any.
fn next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    let last = bytes.len().checked_sub(RECORD_HEADER_LEN)?;
    (from..=last).find(|&at| frame_at(bytes, at).is_ok())
}

/// Appends one record holding `value` as JSON to `buf`.
fn encode_json_record(buf: &mut Vec<u8>, value: &impl Serialize) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    serde_json::to_writer(&mut *buf, value).map_err(io::Error::other)?;
    let len = buf.len() - start - RECORD_HEADER_LEN;
    if len > MAX_RECORD_LEN {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record of {len} bytes is over the {MAX_RECORD_LEN} byte limit"),
        ));
    }
    let crc = crc32c::crc32c(&buf[start + RECORD_HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Writes a complete `log` file (header and entries) atomically and returns it opened for
/// appending.
fn write_log_file<'a, C>(
    dir: &Path,
    header: &LogHeader<C>,
    entries: impl Iterator<Item = &'a C::Entry>,
) -> io::Result<File>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + 'a,
{
    let mut buf = Vec::new();
    encode_json_record(&mut buf, header)?;
    for entry in entries {
        encode_json_record(&mut buf, entry)?;
    }
    replace_file(dir, LOG_TMP, LOG_FILE, &buf, true)?;
    OpenOptions::new().append(true).open(dir.join(LOG_FILE))
}

/// Replaces `dir/name` with `contents`: writes `dir/tmp`, fsyncs it, renames it over `name`,
/// and fsyncs `dir` when `sync_dir` (without it the rename may be lost in a crash, leaving
/// the previous file).
fn replace_file(
    dir: &Path,
    tmp: &str,
    name: &str,
    contents: &[u8],
    sync_dir_after: bool,
) -> io::Result<()> {
    let tmp = dir.join(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    if sync_dir_after {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a one-record file (`vote`, `committed`) atomically.
fn write_small_file(
    dir: &Path,
    tmp: &str,
    name: &str,
    value: &impl Serialize,
    sync_dir_after: bool,
) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_json_record(&mut buf, value)?;
    replace_file(dir, tmp, name, &buf, sync_dir_after)
}

/// Reads a one-record file; None when it does not exist.
fn read_small_file<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let (payload, end) =
        frame_at(&bytes, 0).map_err(|why| format!("{} is damaged: {why}", path.display()))?;
    if end != bytes.len() {
        return Err(format!(
            "{} is damaged: {} bytes after its record",
            path.display(),
            bytes.len() - end
        ));
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| format!("{} is damaged: does not decode: {e}", path.display()))
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::Mutex as StdMutex;

    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{
        BasicNode, CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder, Snapshot,
        SnapshotMeta, StoredMembership,
    };
    use tempfile::TempDir;

    use super::*;

    openraft::declare_raft_types!(
        pub TestConfig: D = String, R = String
    );

    type Store = FileLogStore<TestConfig>;
    type Ent = Entry<TestConfig>;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn lid(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn ent(term: u64, index: u64) -> Ent {
        Entry {
            log_id: lid(term, index),
            payload: EntryPayload::Normal(format!("cmd-{index}")),
        }
    }

    fn ents(term: u64, indexes: std::ops::Range<u64>) -> Vec<Ent> {
        indexes.map(|i| ent(term, i)).collect()
    }

    async fn all(store: &mut Store) -> Vec<Ent> {
        store.try_get_log_entries(..).await.unwrap()
    }

    fn log_path(dir: &TempDir) -> PathBuf {
        dir.path().join(LOG_FILE)
    }

    /// Length of `entry`'s record in the log file.
    fn record_len(entry: &Ent) -> usize {
        let mut buf = Vec::new();
        encode_json_record(&mut buf, entry).unwrap();
        buf.len()
    }

    /// A log file made of the given header and entries, written record by record.
    fn craft_log(dir: &TempDir, purged: Option<LogId<u64>>, entries: &[Ent]) -> Vec<u8> {
        let mut buf = Vec::new();
        let header = LogHeader::<TestConfig> {
            format: FORMAT_VERSION,
            last_purged_log_id: purged,
        };
        encode_json_record(&mut buf, &header).unwrap();
        for e in entries {
            encode_json_record(&mut buf, e).unwrap();
        }
        fs::write(log_path(dir), &buf).unwrap();
        buf
    }

    fn open_err(dir: &Path) -> String {
        match Store::open(dir) {
            Ok(_) => panic!("open of a damaged log succeeded"),
            Err(e) => e,
        }
    }

    // ---- openraft's own conformance suite ----

    /// A trivial in-memory state machine: the suite tests a log store and a state machine
    /// together.
    #[derive(Clone, Default)]
    struct MemSm(Arc<StdMutex<SmState>>);

    #[derive(Default)]
    struct SmState {
        last_applied: Option<LogId<u64>>,
        membership: StoredMembership<u64, BasicNode>,
        snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    }

    impl RaftSnapshotBuilder<TestConfig> for MemSm {
        async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
            let mut st = self.0.lock().unwrap();
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id: format!("{:?}", st.last_applied),
            };
            let data = serde_json::to_vec(&(st.last_applied, &st.membership)).unwrap();
            st.snapshot = Some((meta.clone(), data.clone()));
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        }
    }

    impl RaftStateMachine<TestConfig> for MemSm {
        type SnapshotBuilder = Self;

        async fn applied_state(
            &mut self,
        ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>>
        {
            let st = self.0.lock().unwrap();
            Ok((st.last_applied, st.membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<u64>>
        where
            I: IntoIterator<Item = Ent> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut st = self.0.lock().unwrap();
            let mut replies = Vec::new();
            for e in entries {
                st.last_applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = &e.payload {
                    st.membership = StoredMembership::new(Some(e.log_id), m.clone());
                }
                replies.push(String::new());
            }
            Ok(replies)
        }

        async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
            self.clone()
        }

        async fn begin_receiving_snapshot(
            &mut self,
        ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
            Ok(Box::new(Cursor::new(Vec::new())))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta<u64, BasicNode>,
            snapshot: Box<Cursor<Vec<u8>>>,
        ) -> Result<(), StorageError<u64>> {
            let mut st = self.0.lock().unwrap();
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            st.snapshot = Some((meta.clone(), snapshot.into_inner()));
            Ok(())
        }

        async fn get_current_snapshot(
            &mut self,
        ) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
            let st = self.0.lock().unwrap();
            Ok(st.snapshot.as_ref().map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(data.clone())),
            }))
        }
    }

    struct Builder;

    impl StoreBuilder<TestConfig, Store, MemSm, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, Store, MemSm), StorageError<u64>> {
            let dir = TempDir::new().unwrap();
            let store = Store::open(dir.path()).unwrap();
            Ok((dir, store, MemSm::default()))
        }
    }

    /// openraft's storage conformance suite, on a freshly opened store per test.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    /// A log store that drops its `FileLogStore` and reopens the directory after every write,
    /// so that every read sees only what reached the files.
    #[derive(Clone)]
    struct Reopening {
        dir: PathBuf,
        store: Arc<Mutex<Store>>,
    }

    impl Reopening {
        async fn reopened<T>(
            &self,
            result: Result<T, StorageError<u64>>,
        ) -> Result<T, StorageError<u64>> {
            let mut store = self.store.lock().await;
            *store =
                Store::open(&self.dir).map_err(|e| StorageIOError::read(AnyError::error(e)))?;
            result
        }
    }

    impl RaftLogReader<TestConfig> for Reopening {
        async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
            &mut self,
            range: RB,
        ) -> Result<Vec<Ent>, StorageError<u64>> {
            self.store.lock().await.try_get_log_entries(range).await
        }
    }

    impl RaftLogStorage<TestConfig> for Reopening {
        type LogReader = Self;

        async fn get_log_state(&mut self) -> Result<LogState<TestConfig>, StorageError<u64>> {
            self.store.lock().await.get_log_state().await
        }

        async fn get_log_reader(&mut self) -> Self::LogReader {
            self.clone()
        }

        async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
            let result = self.store.lock().await.save_vote(vote).await;
            self.reopened(result).await
        }

        async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
            self.store.lock().await.read_vote().await
        }

        async fn save_committed(
            &mut self,
            committed: Option<LogId<u64>>,
        ) -> Result<(), StorageError<u64>> {
            let result = self.store.lock().await.save_committed(committed).await;
            self.reopened(result).await
        }

        async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
            self.store.lock().await.read_committed().await
        }

        async fn append<I>(
            &mut self,
            entries: I,
            callback: LogFlushed<TestConfig>,
        ) -> Result<(), StorageError<u64>>
        where
            I: IntoIterator<Item = Ent> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let result = self.store.lock().await.append(entries, callback).await;
            self.reopened(result).await
        }

        async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
            let result = self.store.lock().await.truncate(log_id).await;
            self.reopened(result).await
        }

        async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
            let result = self.store.lock().await.purge(log_id).await;
            self.reopened(result).await
        }
    }

    struct ReopeningBuilder;

    impl StoreBuilder<TestConfig, Reopening, MemSm, TempDir> for ReopeningBuilder {
        async fn build(&self) -> Result<(TempDir, Reopening, MemSm), StorageError<u64>> {
            let dir = TempDir::new().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let store = Reopening {
                dir: dir.path().to_path_buf(),
                store: Arc::new(Mutex::new(store)),
            };
            Ok((dir, store, MemSm::default()))
        }
    }

    /// The suite again, reading only what every write left on disk.
    #[test]
    fn openraft_storage_suite_reopening_after_every_write() {
        Suite::test_all(ReopeningBuilder).unwrap();
    }

    // ---- durability ----

    #[test]
    fn append_read_back_and_reopen() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(
                store.get_log_state().await.unwrap(),
                LogState {
                    last_purged_log_id: None,
                    last_log_id: None
                }
            );
            assert_eq!(store.read_vote().await.unwrap(), None);
            assert_eq!(store.read_committed().await.unwrap(), None);

            store.blocking_append(ents(1, 0..3)).await.unwrap();
            store.blocking_append(ents(2, 3..7)).await.unwrap();
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            store.save_committed(Some(lid(2, 5))).await.unwrap();

            let mut reader = store.get_log_reader().await;
            let expected: Vec<Ent> = ents(1, 0..3).into_iter().chain(ents(2, 3..7)).collect();
            assert_eq!(all(&mut reader).await, expected);
            assert_eq!(
                reader.try_get_log_entries(2..4).await.unwrap(),
                expected[2..4].to_vec()
            );
            drop((store, reader));

            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(all(&mut store).await, expected);
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
            assert_eq!(store.read_committed().await.unwrap(), Some(lid(2, 5)));
            assert_eq!(
                store.get_log_state().await.unwrap(),
                LogState {
                    last_purged_log_id: None,
                    last_log_id: Some(lid(2, 6))
                }
            );

            // A committed vote and a cleared committed id survive too.
            store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
            store.save_committed(None).await.unwrap();
            drop(store);
            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(
                store.read_vote().await.unwrap(),
                Some(Vote::new_committed(3, 1))
            );
            assert_eq!(store.read_committed().await.unwrap(), None);
            store.blocking_append([ent(3, 7)]).await.unwrap();
            assert_eq!(all(&mut store).await.len(), 8);
        });
    }

    #[test]
    fn one_fdatasync_per_append_batch() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..100)).await.unwrap();
            assert_eq!(store.inner.lock().await.append_syncs, 1);
            store.blocking_append(ents(1, 100..105)).await.unwrap();
            assert_eq!(store.inner.lock().await.append_syncs, 2);
            store.blocking_append(Vec::new()).await.unwrap();
            assert_eq!(store.inner.lock().await.append_syncs, 2);
        });
    }

    #[test]
    fn truncate_and_purge_survive_reopen() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..10)).await.unwrap();
            store.purge(lid(1, 3)).await.unwrap();
            store.truncate(lid(1, 8)).await.unwrap();
            assert_eq!(all(&mut store).await, ents(1, 4..8));
            drop(store);

            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(all(&mut store).await, ents(1, 4..8));
            assert_eq!(
                store.get_log_state().await.unwrap(),
                LogState {
                    last_purged_log_id: Some(lid(1, 3)),
                    last_log_id: Some(lid(1, 7))
                }
            );
            // The log continues after the truncation point, in a new term.
            store.blocking_append(ents(2, 8..10)).await.unwrap();
            // Purging an older id again is a no-op.
            store.purge(lid(1, 2)).await.unwrap();
            drop(store);

            let mut store = Store::open(dir.path()).unwrap();
            let expected: Vec<Ent> = ents(1, 4..8).into_iter().chain(ents(2, 8..10)).collect();
            assert_eq!(all(&mut store).await, expected);
            assert_eq!(
                store.get_log_state().await.unwrap().last_purged_log_id,
                Some(lid(1, 3))
            );

            // Truncating everything leaves the purged id as the last log id.
            store.truncate(lid(1, 4)).await.unwrap();
            drop(store);
            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(all(&mut store).await, Vec::new());
            assert_eq!(
                store.get_log_state().await.unwrap(),
                LogState {
                    last_purged_log_id: Some(lid(1, 3)),
                    last_log_id: Some(lid(1, 3))
                }
            );
            store.blocking_append([ent(3, 4)]).await.unwrap();
        });
    }

    #[test]
    fn purge_past_the_last_entry_survives_reopen() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..5)).await.unwrap();
            // As after installing a snapshot that is ahead of the log.
            store.purge(lid(4, 20)).await.unwrap();
            drop(store);

            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(all(&mut store).await, Vec::new());
            assert_eq!(
                store.get_log_state().await.unwrap(),
                LogState {
                    last_purged_log_id: Some(lid(4, 20)),
                    last_log_id: Some(lid(4, 20))
                }
            );
            assert!(
                store.blocking_append([ent(4, 22)]).await.is_err(),
                "hole after the purge"
            );
            // Entries at or below the purge point are already applied: skipped, not written.
            store.blocking_append([ent(4, 5)]).await.unwrap();
            store.blocking_append(ents(4, 19..23)).await.unwrap();
            assert_eq!(all(&mut store).await, ents(4, 21..23));
            drop(store);
            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(all(&mut store).await, ents(4, 21..23));
        });
    }

    #[test]
    fn append_refuses_holes_and_overwrites() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            // The first entry may have any index.
            store.blocking_append(ents(1, 1..4)).await.unwrap();
            assert!(store.blocking_append([ent(1, 5)]).await.is_err(), "hole");
            assert!(
                store.blocking_append([ent(1, 3)]).await.is_err(),
                "overwrite"
            );
            assert!(
                store.blocking_append([ent(1, 4), ent(1, 6)]).await.is_err(),
                "hole in batch"
            );
            // A refused append writes nothing and does not poison the store.
            store.blocking_append([ent(1, 4)]).await.unwrap();
            drop(store);
            let mut store = Store::open(dir.path()).unwrap();
            assert_eq!(all(&mut store).await, ents(1, 1..5));
        });
    }

    #[test]
    fn reads_take_any_range_without_panicking() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..10)).await.unwrap();
            assert_eq!(store.try_get_log_entries(3..3).await.unwrap(), Vec::new());
            #[allow(clippy::reversed_empty_ranges)]
            let reversed = 7..3;
            assert_eq!(
                store.try_get_log_entries(reversed).await.unwrap(),
                Vec::new()
            );
            assert_eq!(
                store.try_get_log_entries(8..=u64::MAX).await.unwrap(),
                ents(1, 8..10)
            );
            assert_eq!(
                store.try_get_log_entries(..=1).await.unwrap(),
                ents(1, 0..2)
            );
            let excluded = (Bound::Excluded(3), Bound::Excluded(3));
            assert_eq!(
                store.try_get_log_entries(excluded).await.unwrap(),
                Vec::new()
            );
            let excluded = (Bound::Excluded(u64::MAX), Bound::Unbounded);
            assert_eq!(
                store.try_get_log_entries(excluded).await.unwrap(),
                Vec::new()
            );
            assert_eq!(
                store.try_get_log_entries(5..100).await.unwrap(),
                ents(1, 5..10)
            );
        });
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = TempDir::new().unwrap();
        let nested = dir.path().join("a/b/raft");
        rt().block_on(async {
            let mut store = Store::open(&nested).unwrap();
            store.blocking_append(ents(1, 0..2)).await.unwrap();
            drop(store);
            let mut store = Store::open(&nested).unwrap();
            assert_eq!(all(&mut store).await, ents(1, 0..2));
        });
    }

    // ---- torn tails and damage ----

    /// Writes entries 0..5 (two appends), applies `mutilate` to the log file, reopens: the log
    /// must come back as entries `0..kept`, the file cut to exactly their records, and take
    /// further appends that survive another reopen.
    fn check_torn_tail(what: &str, kept: u64, mutilate: impl FnOnce(&Path, &[u8])) {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            store.blocking_append(ents(1, 0..3)).await.unwrap();
            store.blocking_append(ents(1, 3..5)).await.unwrap();
            drop(store);
            let good = fs::read(log_path(&dir)).unwrap();
            mutilate(&log_path(&dir), &good);

            let mut store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(all(&mut store).await, ents(1, 0..kept), "{what}");
            let dropped: usize = (kept..5).map(|i| record_len(&ent(1, i))).sum();
            let file_len = fs::metadata(log_path(&dir)).unwrap().len() as usize;
            assert_eq!(
                file_len,
                good.len() - dropped,
                "{what}: file cut to its good prefix"
            );

            store
                .blocking_append(ents(2, kept..kept + 2))
                .await
                .unwrap();
            drop(store);
            let mut store = Store::open(dir.path()).unwrap();
            let expected: Vec<Ent> = ents(1, 0..kept)
                .into_iter()
                .chain(ents(2, kept..kept + 2))
                .collect();
            assert_eq!(all(&mut store).await, expected, "{what}: after reopen");
        });
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn torn_tails_are_cut_back_to_the_last_good_record() {
        let last = record_len(&ent(1, 4));
        check_torn_tail("short record header", 5, |p, _| append_bytes(p, &[7, 0, 0]));
        check_torn_tail("payload past the end", 5, |p, _| {
            let mut rec = 100u32.to_le_bytes().to_vec();
            rec.extend_from_slice(&[1, 2, 3, 4, b'{', b'"']);
            append_bytes(p, &rec);
        });
        check_torn_tail("zero-filled tail", 5, |p, _| append_bytes(p, &[0; 4096]));
        check_torn_tail("length over the limit at the tail", 5, |p, _| {
            append_bytes(p, &[0xff, 0xff, 0xff, 0xff, 9, 9, 9, 9, b'x'])
        });
        check_torn_tail("cut mid-payload", 4, |p, good| {
            fs::write(p, &good[..good.len() - 5]).unwrap()
        });
        check_torn_tail("cut mid-header", 4, |p, good| {
            fs::write(p, &good[..good.len() - last + 3]).unwrap()
        });
        check_torn_tail("checksum mismatch in the last record", 4, |p, good| {
            let mut bytes = good.to_vec();
            let at = bytes.len() - 3;
            bytes[at] ^= 0x01;
            fs::write(p, bytes).unwrap()
        });
        check_torn_tail("last record torn, garbage after it", 4, |p, good| {
            let mut bytes = good[..good.len() - 5].to_vec();
            bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            fs::write(p, bytes).unwrap()
        });
    }

    /// Entries 0..5 in a crafted file, with `mutilate` applied at the record of entry 1.
    fn check_damaged(what: &str, mutilate: impl FnOnce(&mut Vec<u8>, usize)) {
        let dir = TempDir::new().unwrap();
        let mut bytes = craft_log(&dir, None, &ents(1, 0..5));
        let header_len = {
            let mut buf = Vec::new();
            let header = LogHeader::<TestConfig> {
                format: FORMAT_VERSION,
                last_purged_log_id: None,
            };
            encode_json_record(&mut buf, &header).unwrap();
            buf.len()
        };
        let record_1 = header_len + record_len(&ent(1, 0));
        mutilate(&mut bytes, record_1);
        fs::write(log_path(&dir), &bytes).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains("damaged"), "{what}: {err}");
        // The file is left alone for a person to look at.
        assert_eq!(fs::read(log_path(&dir)).unwrap(), bytes, "{what}");
    }

    #[test]
    fn damage_before_valid_records_is_refused() {
        check_damaged("flipped payload byte", |b, at| b[at + 10] ^= 0x20);
        check_damaged("flipped checksum byte", |b, at| b[at + 5] ^= 0x01);
        check_damaged("length shortened", |b, at| b[at] -= 1);
        check_damaged("length lengthened", |b, at| b[at] += 1);
        check_damaged("length over the limit", |b, at| {
            b[at..at + 4].copy_from_slice(&(MAX_RECORD_LEN as u32 + 1).to_le_bytes())
        });
        check_damaged("zeroed record", |b, at| {
            let len = record_len(&ent(1, 1));
            b[at..at + len].fill(0)
        });
        check_damaged("flipped byte in the header record", |b, _| b[12] ^= 0x01);
    }

    #[test]
    fn holes_and_undecodable_records_are_refused() {
        let dir = TempDir::new().unwrap();

        craft_log(&dir, None, &[ent(1, 0), ent(1, 2)]);
        let err = open_err(dir.path());
        assert!(err.contains("consecutive"), "{err}");

        craft_log(&dir, None, &[ent(1, 0), ent(1, 1), ent(1, 1)]);
        let err = open_err(dir.path());
        assert!(err.contains("consecutive"), "{err}");

        // After a purge up to 3 the log must go on at 4.
        craft_log(&dir, Some(lid(1, 3)), &[ent(1, 5)]);
        let err = open_err(dir.path());
        assert!(err.contains("consecutive"), "{err}");
        craft_log(&dir, Some(lid(1, 3)), &[ent(1, 4)]);
        Store::open(dir.path()).unwrap();

        // A record with a good checksum that is not an entry is not a torn write.
        let mut bytes = craft_log(&dir, None, &[ent(1, 0)]);
        encode_json_record(&mut bytes, &"not an entry").unwrap();
        fs::write(log_path(&dir), &bytes).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains("does not decode"), "{err}");

        // An unknown format version.
        let mut bytes = Vec::new();
        let header = LogHeader::<TestConfig> {
            format: 99,
            last_purged_log_id: None,
        };
        encode_json_record(&mut bytes, &header).unwrap();
        fs::write(log_path(&dir), &bytes).unwrap();
        let err = open_err(dir.path());
        assert!(err.contains("format"), "{err}");

        // An empty log file has no header: the file is written atomically, so this is damage.
        fs::write(log_path(&dir), b"").unwrap();
        let err = open_err(dir.path());
        assert!(err.contains("header"), "{err}");
    }

    #[test]
    fn damaged_vote_and_committed_files_are_refused() {
        let dir = TempDir::new().unwrap();
        rt().block_on(async {
            let mut store = Store::open(dir.path()).unwrap();
            store.save_vote(&Vote::new(5, 1)).await.unwrap();
            store.save_committed(Some(lid(5, 0))).await.unwrap();
        });
        for name in [VOTE_FILE, COMMITTED_FILE] {
            let path = dir.path().join(name);
            let good = fs::read(&path).unwrap();
            let mut bad = good.clone();
            let at = bad.len() - 2;
            bad[at] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let err = open_err(dir.path());
            assert!(err.contains(name) && err.contains("damaged"), "{err}");
            let mut long = good.clone();
            long.push(0);
            fs::write(&path, &long).unwrap();
            let err = open_err(dir.path());
            assert!(err.contains("damaged"), "{err}");
            fs::write(&path, &good).unwrap();
        }
        Store::open(dir.path()).unwrap();
    }
}
