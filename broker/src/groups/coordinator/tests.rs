//! The coordinator's durable half against a test double of its [`OffsetsAppender`]: loading
//! (replay, tombstones, the LOAD_IN_PROGRESS state machine, legacy imports), commits applied
//! only once acknowledged, unloading, expiry. The double keeps what was appended as an
//! in-memory log whose bytes a reload replays, so every round trip also goes through the
//! record format; one test replays a real `PartitionLog` to cover `read_log`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_lite::future::{block_on, poll_once};

use super::*;
use crate::groups::group::JoinArgs;
use crate::groups::offsets_log::decode_batches;
use crate::log::{LogConfig, PartitionLog};

/// What a test makes of the next appends.
#[derive(Clone, Copy, PartialEq)]
enum Ack {
    /// Acknowledged at once (the high watermark covers them).
    Now,
    /// Held until the test acknowledges them (`FakeAppender::release`).
    Held,
    /// Refused with this error, nothing appended.
    Refused(i16),
}

/// The shard's appender as the coordinator sees it: assigns offsets and keeps the batches
/// of each offsets partition, acknowledging as the test says.
struct FakeAppender {
    ack: Cell<Ack>,
    /// Per offsets partition: the batches appended, stamped with their base offsets.
    logs: RefCell<HashMap<i32, BytesMut>>,
    next_offset: RefCell<HashMap<i32, i64>>,
    held: RefCell<Vec<oneshot::Sender<Result<(), i16>>>>,
    appends: Cell<usize>,
}

impl FakeAppender {
    fn new() -> Rc<FakeAppender> {
        Rc::new(FakeAppender {
            ack: Cell::new(Ack::Now),
            logs: RefCell::default(),
            next_offset: RefCell::default(),
            held: RefCell::default(),
            appends: Cell::new(0),
        })
    }

    /// Answer every held append with `answer`.
    fn release(&self, answer: Result<(), i16>) {
        for sender in self.held.borrow_mut().drain(..) {
            let _ = sender.send(answer);
        }
    }

    /// Every record appended to `partition`, with its offset, as a load reads them.
    fn records(&self, partition: i32) -> Vec<(i64, OffsetRecord)> {
        let bytes = self
            .logs
            .borrow()
            .get(&partition)
            .cloned()
            .unwrap_or_default();
        decode_batches(bytes.freeze()).expect("the appended batches decode")
    }
}

impl OffsetsAppender for FakeAppender {
    fn append(
        &self,
        partition: i32,
        batch: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<i64, i16>>>> {
        if let Ack::Refused(code) = self.ack.get() {
            return Box::pin(async move { Err(code) });
        }
        self.appends.set(self.appends.get() + 1);
        let count = decode_batches(batch.clone()).expect("a valid batch").len() as i64;
        let mut next = self.next_offset.borrow_mut();
        let base = *next.entry(partition).or_default();
        next.insert(partition, base + count);
        // BaseOffset is outside the CRC: stamping it is what the log does.
        let mut stamped = BytesMut::from(&batch[..]);
        stamped[..8].copy_from_slice(&base.to_be_bytes());
        self.logs
            .borrow_mut()
            .entry(partition)
            .or_default()
            .extend_from_slice(&stamped);
        if self.ack.get() == Ack::Held {
            let (sender, receiver) = oneshot::channel();
            self.held.borrow_mut().push(sender);
            return Box::pin(async move {
                match receiver.await {
                    Ok(Ok(())) => Ok(base),
                    Ok(Err(code)) => Err(code),
                    Err(_) => Err(codes::COORDINATOR_NOT_AVAILABLE),
                }
            });
        }
        Box::pin(async move { Ok(base) })
    }
}

fn coordinator(
    appender: &Rc<FakeAppender>,
    partitions: usize,
    config: GroupsConfig,
) -> Rc<GroupCoordinator> {
    let c = GroupCoordinator::new(0, config, appender.clone());
    c.set_partition_count(partitions);
    c
}

/// A coordinator with one offsets partition (0), loaded at epoch 1 from an empty log.
fn loaded(appender: &Rc<FakeAppender>, config: GroupsConfig) -> Rc<GroupCoordinator> {
    let c = coordinator(appender, 1, config);
    assert!(c.begin_load(0, 1));
    block_on(c.replay(0, 1, Vec::new(), Vec::new())).expect("load");
    c
}

/// Load `partition` at `epoch` from what the appender holds for it.
fn reload(c: &GroupCoordinator, appender: &FakeAppender, partition: i32, epoch: i32) {
    assert!(c.begin_load(partition, epoch));
    block_on(c.replay(partition, epoch, appender.records(partition), Vec::new())).expect("load");
}

fn entry(topic: &str, partition: i32, offset: i64) -> CommitEntry {
    CommitEntry {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: 2,
        metadata: Some(format!("m{offset}")),
    }
}

fn commit_record(group: &str, topic: &str, partition: i32, offset: i64) -> OffsetRecord {
    OffsetRecord {
        group: group.into(),
        topic: topic.into(),
        partition,
        value: Some(OffsetValue {
            offset,
            leader_epoch: 2,
            metadata: format!("m{offset}"),
            commit_time_ms: now_ms(),
        }),
    }
}

fn tombstone(group: &str, topic: &str, partition: i32) -> OffsetRecord {
    OffsetRecord {
        value: None,
        ..commit_record(group, topic, partition, 0)
    }
}

fn simple_commit<'a>(
    c: &'a GroupCoordinator,
    group: &str,
    entries: Vec<CommitEntry>,
) -> impl Future<Output = Vec<i16>> + 'a {
    c.commit(group.into(), String::new(), None, -1, entries, |_, _| true)
}

/// (partition, offset) of every committed offset of `group` on topic "t".
fn offsets(c: &GroupCoordinator, group: &str) -> Vec<(i32, i64)> {
    c.fetch_offsets(group, None)
        .into_iter()
        .filter(|(topic, _)| topic == "t")
        .flat_map(|(_, partitions)| partitions.into_iter().map(|p| (p.0, p.1)))
        .collect()
}

/// A group id whose offsets partition is `partition` of `count`.
fn group_in(partition: i32, count: usize) -> String {
    (0..)
        .map(|i| format!("group-{i}"))
        .find(|g| partition_for(g, count) == partition)
        .expect("some group maps there")
}

#[test]
fn a_loading_partition_answers_load_in_progress_and_serves_once_replayed() {
    let appender = FakeAppender::new();
    let c = coordinator(&appender, 1, GroupsConfig::default());
    assert_eq!(c.serving("g"), Err(codes::NOT_COORDINATOR), "not led here");
    assert!(c.begin_load(0, 4));
    assert_eq!(c.serving("g"), Err(codes::COORDINATOR_LOAD_IN_PROGRESS));
    assert!(!c.begin_load(0, 4), "the same epoch is not loaded twice");
    assert_eq!(c.partition_state(0), Some(Serving::Loading(4)));
    let records = vec![(0, commit_record("g", "t", 0, 5))];
    assert_eq!(block_on(c.replay(0, 4, records, Vec::new())), Ok(0));
    assert_eq!(c.serving("g"), Ok(0));
    assert_eq!(c.partition_state(0), Some(Serving::Loaded(4)));
    assert!(!c.begin_load(0, 4), "a loaded epoch stays loaded");
    assert_eq!(offsets(&c, "g"), vec![(0, 5)]);
}

#[test]
fn a_replay_keeps_each_keys_last_record_and_tombstones_delete() {
    let appender = FakeAppender::new();
    let c = coordinator(&appender, 1, GroupsConfig::default());
    assert!(c.begin_load(0, 1));
    let records = vec![
        (0, commit_record("g", "t", 0, 5)),
        (1, commit_record("g", "t", 1, 10)),
        (2, commit_record("g", "t", 0, 7)),
        (3, tombstone("g", "t", 1)),
        (4, commit_record("gone", "t", 0, 3)),
        (5, tombstone("gone", "t", 0)),
        (6, tombstone("never-committed", "t", 0)),
    ];
    block_on(c.replay(0, 1, records, Vec::new())).expect("load");
    assert_eq!(offsets(&c, "g"), vec![(0, 7)]);
    let fetched = c.fetch_offsets("g", Some(vec![("t".into(), vec![0, 1])]));
    assert_eq!(
        fetched,
        vec![(
            "t".to_string(),
            vec![
                (0, 7, 2, "m7".to_string(), 0),
                (1, -1, -1, String::new(), 0)
            ]
        )]
    );
    let listed: Vec<String> = c.list().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(
        listed,
        vec!["g"],
        "a group with no offset left is forgotten"
    );
    assert_eq!(appender.appends.get(), 0, "a replay writes nothing");
}

#[test]
fn commits_are_reloaded_from_what_was_appended_after_a_new_epoch() {
    let appender = FakeAppender::new();
    let c = loaded(&appender, GroupsConfig::default());
    for n in 0..5 {
        let codes = block_on(simple_commit(
            &c,
            "g",
            vec![entry("t", 0, n), entry("t", 1, 100 + n)],
        ));
        assert_eq!(codes, vec![0, 0]);
    }
    assert_eq!(block_on(c.delete_group("g")), codes::NONE, "an empty group");
    block_on(simple_commit(&c, "h", vec![entry("t", 0, 42)]));
    // A new leader epoch (this node lost and regained the partition): state from the log.
    reload(&c, &appender, 0, 2);
    assert_eq!(
        offsets(&c, "g"),
        Vec::new(),
        "the deletion's tombstones replayed"
    );
    assert_eq!(offsets(&c, "h"), vec![(0, 42)]);
    let fetched = c.fetch_offsets("h", None);
    assert_eq!(fetched[0].1[0].3, "m42", "metadata survives the round trip");
}

#[test]
fn a_commit_is_applied_only_once_its_append_is_acknowledged() {
    let appender = FakeAppender::new();
    let c = loaded(&appender, GroupsConfig::default());
    appender.ack.set(Ack::Held);
    let mut commit = Box::pin(simple_commit(&c, "g", vec![entry("t", 0, 9)]));
    assert_eq!(block_on(poll_once(&mut commit)), None, "waits for the ISR");
    assert_eq!(appender.appends.get(), 1, "appended already");
    assert_eq!(
        offsets(&c, "g"),
        Vec::new(),
        "not visible before the acknowledgement"
    );
    appender.release(Ok(()));
    assert_eq!(block_on(commit), vec![codes::NONE]);
    assert_eq!(offsets(&c, "g"), vec![(0, 9)]);
}

#[test]
fn a_refused_append_answers_its_error_and_changes_nothing() {
    let appender = FakeAppender::new();
    let c = loaded(&appender, GroupsConfig::default());
    block_on(simple_commit(&c, "g", vec![entry("t", 0, 1)]));
    appender
        .ack
        .set(Ack::Refused(codes::COORDINATOR_NOT_AVAILABLE));
    let codes = block_on(simple_commit(
        &c,
        "g",
        vec![entry("t", 0, 2), entry("t", 1, 2)],
    ));
    assert_eq!(codes, vec![codes::COORDINATOR_NOT_AVAILABLE; 2]);
    assert_eq!(offsets(&c, "g"), vec![(0, 1)]);
    // An acknowledged append that failed after all (the ISR shrank) is not applied either.
    appender.ack.set(Ack::Held);
    let mut commit = Box::pin(simple_commit(&c, "g", vec![entry("t", 0, 3)]));
    assert_eq!(block_on(poll_once(&mut commit)), None);
    appender.release(Err(codes::NOT_COORDINATOR));
    assert_eq!(block_on(commit), vec![codes::NOT_COORDINATOR]);
    assert_eq!(offsets(&c, "g"), vec![(0, 1)]);
}

#[test]
fn a_coordinator_deposed_while_its_append_waits_answers_not_coordinator() {
    let appender = FakeAppender::new();
    let c = loaded(&appender, GroupsConfig::default());
    appender.ack.set(Ack::Held);
    let mut commit = Box::pin(simple_commit(&c, "g", vec![entry("t", 0, 9)]));
    assert_eq!(block_on(poll_once(&mut commit)), None);
    c.unload(0);
    appender.release(Ok(()));
    assert_eq!(
        block_on(commit),
        vec![codes::NOT_COORDINATOR],
        "the client retries at the new coordinator"
    );
    assert_eq!(
        offsets(&c, "g"),
        Vec::new(),
        "nothing applied after the unload"
    );
    assert_eq!(c.serving("g"), Err(codes::NOT_COORDINATOR));
}

#[test]
fn an_unload_drops_only_its_partitions_groups_and_stops_serving_them() {
    let appender = FakeAppender::new();
    let c = coordinator(&appender, 2, GroupsConfig::default());
    let (left, kept) = (group_in(0, 2), group_in(1, 2));
    for p in 0..2 {
        assert!(c.begin_load(p, 1));
        block_on(c.replay(p, 1, Vec::new(), Vec::new())).expect("load");
    }
    for g in [&left, &kept] {
        assert_eq!(
            block_on(simple_commit(&c, g, vec![entry("t", 0, 1)])),
            vec![0]
        );
    }
    c.unload(0);
    assert_eq!(c.serving(&left), Err(codes::NOT_COORDINATOR));
    assert_eq!(c.serving(&kept), Ok(1));
    assert_eq!(offsets(&c, &left), Vec::new());
    assert_eq!(offsets(&c, &kept), vec![(0, 1)]);
    let listed: Vec<String> = c.list().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(listed, vec![kept.clone()]);
    assert_eq!(c.held_partitions(), vec![1]);
    c.unload(0); // unloading what is not held does nothing
}

#[test]
fn a_load_overtaken_by_an_unload_or_a_new_epoch_serves_nothing() {
    let appender = FakeAppender::new();
    let c = coordinator(&appender, 1, GroupsConfig::default());
    assert!(c.begin_load(0, 1));
    c.unload(0);
    let records = vec![(0, commit_record("g", "t", 0, 5))];
    assert!(block_on(c.replay(0, 1, records.clone(), Vec::new())).is_err());
    assert_eq!(c.partition_state(0), None);
    assert_eq!(offsets(&c, "g"), Vec::new());

    assert!(c.begin_load(0, 1));
    assert!(c.begin_load(0, 2), "a new epoch restarts the load");
    assert!(block_on(c.replay(0, 1, records.clone(), Vec::new())).is_err());
    assert_eq!(c.serving("g"), Err(codes::COORDINATOR_LOAD_IN_PROGRESS));
    block_on(c.replay(0, 2, records, Vec::new())).expect("the current load");
    assert_eq!(c.serving("g"), Ok(0));
}

#[test]
fn a_new_epoch_drops_what_the_old_one_held_before_replaying() {
    let appender = FakeAppender::new();
    let c = loaded(&appender, GroupsConfig::default());
    block_on(simple_commit(&c, "g", vec![entry("t", 0, 1)]));
    assert!(c.begin_load(0, 2));
    assert_eq!(offsets(&c, "g"), Vec::new(), "dropped until replayed");
    assert_eq!(c.serving("g"), Err(codes::COORDINATOR_LOAD_IN_PROGRESS));
    // The new epoch's log lacks the commit (the old leader's tail was truncated).
    block_on(c.replay(0, 2, Vec::new(), Vec::new())).expect("load");
    assert_eq!(offsets(&c, "g"), Vec::new());
}

#[test]
fn legacy_imports_are_written_only_for_keys_the_partition_lacks() {
    let appender = FakeAppender::new();
    let c = coordinator(&appender, 1, GroupsConfig::default());
    assert!(c.begin_load(0, 1));
    let records = vec![(0, commit_record("g", "t", 0, 50))];
    let imports = vec![
        commit_record("g", "t", 0, 5), // the partition has a newer one
        commit_record("g", "t", 1, 6),
        commit_record("old", "t", 0, 7),
        tombstone("old", "t", 1), // nothing to import
    ];
    assert_eq!(block_on(c.replay(0, 1, records, imports)), Ok(2));
    assert_eq!(offsets(&c, "g"), vec![(0, 50), (1, 6)]);
    assert_eq!(offsets(&c, "old"), vec![(0, 7)]);
    let written: Vec<(String, i32)> = appender
        .records(0)
        .into_iter()
        .map(|(_, r)| (r.group, r.partition))
        .collect();
    assert_eq!(written, vec![("g".into(), 1), ("old".into(), 0)]);
    // A failed import fails the load; the shard retries it.
    let c = coordinator(&appender, 1, GroupsConfig::default());
    appender.ack.set(Ack::Refused(codes::NOT_ENOUGH_REPLICAS));
    assert!(c.begin_load(0, 1));
    let imports = vec![commit_record("new", "t", 0, 1)];
    assert!(block_on(c.replay(0, 1, Vec::new(), imports)).is_err());
    assert_eq!(c.serving("new"), Err(codes::COORDINATOR_LOAD_IN_PROGRESS));
}

#[test]
fn refused_commits_get_kafkas_errors_and_reach_no_log() {
    let appender = FakeAppender::new();
    let c = loaded(&appender, GroupsConfig::default());
    let unknown_member = block_on(c.commit(
        "g".into(),
        "m".into(),
        None,
        3,
        vec![entry("t", 0, 1)],
        |_, _| true,
    ));
    assert_eq!(unknown_member, vec![codes::ILLEGAL_GENERATION]);
    let unknown_topic = block_on(c.commit(
        "g".into(),
        String::new(),
        None,
        -1,
        vec![entry("t", 0, 1)],
        |_, _| false,
    ));
    assert_eq!(unknown_topic, vec![codes::UNKNOWN_TOPIC_OR_PARTITION]);
    let mut big = entry("t", 0, 1);
    big.metadata = Some("x".repeat(5000));
    assert_eq!(
        block_on(simple_commit(&c, "g", vec![big])),
        vec![codes::OFFSET_METADATA_TOO_LARGE]
    );
    assert_eq!(appender.appends.get(), 0, "nothing refused reached the log");
}

#[test]
fn offsets_of_empty_groups_expire_with_a_tombstone_that_a_reload_honours() {
    let appender = FakeAppender::new();
    let config = GroupsConfig {
        offsets_retention_ms: 60_000,
        ..GroupsConfig::default()
    };
    let c = loaded(&appender, config);
    block_on(simple_commit(&c, "old", vec![entry("t", 0, 5)]));
    block_on(c.expire_offsets(now_ms() + 30_000));
    assert_eq!(offsets(&c, "old"), vec![(0, 5)], "not yet expired");
    block_on(c.expire_offsets(now_ms() + 61_000));
    assert_eq!(offsets(&c, "old"), Vec::new());
    assert!(
        c.list().is_empty(),
        "a group with nothing left is forgotten"
    );
    reload(&c, &appender, 0, 2);
    assert_eq!(offsets(&c, "old"), Vec::new(), "the expiry is durable");
}

#[test]
fn a_new_group_beyond_max_groups_per_shard_is_refused() {
    let appender = FakeAppender::new();
    let config = GroupsConfig {
        max_groups_per_shard: 1,
        ..GroupsConfig::default()
    };
    let c = loaded(&appender, config);
    assert_eq!(
        block_on(simple_commit(&c, "first", vec![entry("t", 0, 1)])),
        vec![0]
    );
    assert_eq!(
        block_on(simple_commit(&c, "second", vec![entry("t", 0, 1)])),
        vec![codes::COORDINATOR_NOT_AVAILABLE]
    );
    let args = JoinArgs {
        session_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::new())],
        ..JoinArgs::default()
    };
    let joined = block_on(c.join("third".into(), args));
    assert_eq!(joined.error, codes::COORDINATOR_NOT_AVAILABLE);
}

/// Appends to a real partition log, as the shard's appender does once acknowledged.
struct LogAppender {
    log: Rc<PartitionLog>,
}

impl OffsetsAppender for LogAppender {
    fn append(
        &self,
        _partition: i32,
        batch: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<i64, i16>>>> {
        let log = self.log.clone();
        Box::pin(async move {
            log.append(batch, now_ms())
                .await
                .map(|info| info.base_offset)
                .map_err(|_| codes::KAFKA_STORAGE_ERROR)
        })
    }
}

#[test]
fn a_load_replays_a_partition_log_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("__consumer_offsets-0");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let config = LogConfig {
                segment_bytes: 16 << 10,
                index_interval_bytes: 1024,
                tail_cache_bytes: 4 << 10,
                write_buffer_bytes: 16 << 10,
                preallocate_bytes: 64 << 10,
                ..LogConfig::default()
            };
            let (log, _) = PartitionLog::open(&path, config).await.expect("open");
            let appender = Rc::new(LogAppender { log: log.clone() });
            let c = GroupCoordinator::new(0, GroupsConfig::default(), appender);
            c.set_partition_count(1);
            assert!(c.begin_load(0, 1));
            c.load(0, 1, log.clone(), Vec::new())
                .await
                .expect("empty load");
            for n in 0..300 {
                let entries = vec![entry("t", 0, n), entry("t", 1, 1000 + n)];
                let codes = c
                    .commit("g".into(), String::new(), None, -1, entries, |_, _| true)
                    .await;
                assert_eq!(codes, vec![0, 0]);
            }
            c.delete_offsets("g", vec![("t".into(), vec![1])]).await;
            assert!(log.segment_bases().len() > 1, "the log rolled");
            assert!(c.begin_load(0, 2));
            c.load(0, 2, log.clone(), Vec::new()).await.expect("reload");
            assert_eq!(offsets(&c, "g"), vec![(0, 299)]);
            log.close().await.expect("close");
        })
        .expect("executor")
        .join()
        .expect("test body");
}
