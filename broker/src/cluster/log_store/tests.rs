use std::io::Cursor;
use std::sync::Mutex as StdMutex;

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StoredMembership,
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
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
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
        *store = Store::open(&self.dir).map_err(|e| StorageIOError::read(AnyError::error(e)))?;
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
        store.blocking_append([ent(5, 0)]).await.unwrap();
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

#[test]
fn a_log_missing_committed_entries_is_refused_not_cut() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let mut store = Store::open(dir.path()).unwrap();
        store.blocking_append(ents(1, 0..5)).await.unwrap();
        store.save_committed(Some(lid(1, 4))).await.unwrap();
    });
    // Damage inside the last record: alone, it would look like a torn append and be cut,
    // but index 4 was committed, so it was durable here: this is damage.
    let path = dir.path().join(LOG_FILE);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("damaged") && err.contains("committed"),
        "{err}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "a refused log is left as it was"
    );
}
