//! Behaviour tests of log compaction: the record reader and batch rewrite for every codec,
//! a pass over a real log (latest value per key, offsets kept, tombstones, lag, passes when
//! the keys do not fit the offset map, producer fields), crashes at every step of a swap,
//! and a model-based test with random produces, passes, reopens and crashes.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::batch::BatchHeader;
use super::cleaner::records::{every_record_has_a_key, filter_batch};
use super::cleaner::swap::FinishStep;
use super::cleaner::{CleanerSettings, CompactionConfig};
use super::partition::clean::StopAt;
use super::tests::run;
use super::{LogConfig, PartitionLog};

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// Records of one batch as (key, value): `None` key is a keyless record, `None` value a
/// tombstone.
type Kv = (Option<u32>, Option<u32>);

fn keyed(records: &[Kv], ts: i64, producer: (i64, i16, i32), compression: Compression) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: producer.0,
            producer_epoch: producer.1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if producer.0 < 0 {
                i as i32 - 1
            } else {
                producer.2 + i as i32
            },
            timestamp: ts + i as i64,
            key: k.map(|k| Bytes::from(format!("key-{k}"))),
            value: v.map(|v| Bytes::from(format!("value-{v}-{}", "x".repeat(v as usize % 40)))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
    buf.freeze()
}

fn plain(records: &[Kv], ts: i64) -> Bytes {
    keyed(records, ts, (-1, -1, -1), Compression::None)
}

/// Every record of the log, decoded: (offset, key, value).
type Row = (i64, Option<Bytes>, Option<Bytes>);

/// Reads the whole log batch by batch, decoding (and so CRC-checking) every batch, and
/// checks that offsets only increase.
async fn read_rows(log: &PartitionLog) -> (Vec<Row>, Vec<BatchHeader>) {
    let mut rows: Vec<Row> = Vec::new();
    let mut headers = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 20).await.expect("read");
        assert!(!r.chunks.is_empty(), "no batch at {offset}");
        let mut bytes = Bytes::from(
            r.chunks
                .iter()
                .flat_map(|c| c.to_vec())
                .collect::<Vec<u8>>(),
        );
        while !bytes.is_empty() {
            let h = BatchHeader::parse(&bytes).expect("header");
            let mut one = bytes.split_to(h.total_bytes());
            let set = RecordBatchDecoder::decode(&mut one).expect("decodable batch");
            assert_eq!(set.records.len(), h.record_count() as usize);
            for rec in set.records {
                assert!(rec.offset >= h.base_offset() && rec.offset <= h.last_offset());
                assert!(
                    rows.last().is_none_or(|r| r.0 < rec.offset),
                    "offsets increase"
                );
                rows.push((rec.offset, rec.key, rec.value));
            }
            if h.last_offset() >= offset {
                offset = h.last_offset() + 1;
            }
            headers.push(h);
        }
    }
    (rows, headers)
}

fn key(k: u32) -> Option<Bytes> {
    Some(Bytes::from(format!("key-{k}")))
}

fn compacted(segment_bytes: u64, delete_retention_ms: i64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        tail_cache_bytes: 4 << 10,
        write_buffer_bytes: 16 << 10,
        preallocate_bytes: 64 << 10,
        compaction: CompactionConfig {
            compact: true,
            delete_retention_ms,
            ..CompactionConfig::default()
        },
        ..LogConfig::default()
    }
}

fn settings() -> CleanerSettings {
    CleanerSettings {
        dedupe_buffer_bytes: 1 << 20,
        ..CleanerSettings::default()
    }
}

#[test]
fn a_filtered_batch_keeps_offsets_codec_and_producer_fields_for_every_codec() {
    for codec in CODECS {
        let records: Vec<Kv> = (0..10).map(|i| (Some(i % 4), Some(i))).collect();
        let batch = keyed(&records, 1000, (42, 3, 17), codec);
        let h = BatchHeader::parse(&batch).unwrap();
        let mut out = Vec::new();
        let kept = filter_batch(&batch, &h, |r| r.offset_delta % 3 == 0, false, &mut out).unwrap();
        assert_eq!(kept, 4);
        let nh = BatchHeader::parse(&out).unwrap();
        assert_eq!(nh.total_bytes(), out.len());
        assert_eq!(
            (nh.base_offset(), nh.last_offset()),
            (h.base_offset(), h.last_offset())
        );
        assert_eq!(nh.attributes(), h.attributes(), "{codec:?}");
        assert_eq!((nh.producer_id(), nh.producer_epoch()), (42, 3));
        assert_eq!((nh.base_sequence(), nh.last_sequence()), (17, 26));
        assert_eq!(
            (nh.base_timestamp(), nh.max_timestamp()),
            (h.base_timestamp(), h.max_timestamp())
        );
        assert_eq!(nh.record_count(), 4);
        let set = RecordBatchDecoder::decode(&mut Bytes::from(out)).expect("CRC and records");
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![0, 3, 6, 9], "{codec:?}");
        assert_eq!(set.records[1].key, key(3));
        assert_eq!(set.compression, codec);
    }
}

#[test]
fn a_batch_filtered_to_nothing_is_dropped_or_kept_as_an_empty_header() {
    let batch = keyed(
        &[(Some(1), Some(1)), (Some(2), None)],
        5,
        (7, 0, 0),
        Compression::Lz4,
    );
    let h = BatchHeader::parse(&batch).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        filter_batch(&batch, &h, |_| false, false, &mut out).unwrap(),
        0
    );
    assert!(out.is_empty());
    filter_batch(&batch, &h, |_| false, true, &mut out).unwrap();
    let nh = BatchHeader::parse(&out).unwrap();
    assert_eq!(
        (nh.record_count(), nh.last_offset(), nh.base_sequence()),
        (0, 1, 0)
    );
    assert_eq!(nh.total_bytes(), out.len());
    let set = RecordBatchDecoder::decode(&mut Bytes::from(out)).expect("valid empty batch");
    assert!(set.records.is_empty());
}

#[test]
fn keyless_records_are_found_in_plain_and_compressed_batches() {
    for codec in CODECS {
        let ok = keyed(
            &[(Some(1), Some(1)), (Some(2), None)],
            0,
            (-1, -1, -1),
            codec,
        );
        let bad = keyed(
            &[(Some(1), Some(1)), (None, Some(2))],
            0,
            (-1, -1, -1),
            codec,
        );
        assert!(every_record_has_a_key(&ok).unwrap());
        assert!(!every_record_has_a_key(&bad).unwrap());
        let both = [ok.to_vec(), bad.to_vec()].concat();
        assert!(!every_record_has_a_key(&both).unwrap());
    }
}

/// Appends `rounds` rounds of every key in `0..keys`, one batch per `per_batch` keys, and
/// returns the latest value of each key.
async fn fill(
    log: &PartitionLog,
    keys: u32,
    rounds: u32,
    per_batch: u32,
    codec: Compression,
) -> BTreeMap<u32, u32> {
    let mut latest = BTreeMap::new();
    for round in 0..rounds {
        for first in (0..keys).step_by(per_batch as usize) {
            let recs: Vec<Kv> = (first..(first + per_batch).min(keys))
                .map(|k| (Some(k), Some(round * 1000 + k)))
                .collect();
            log.append(keyed(&recs, 1000, (-1, -1, -1), codec), 0)
                .await
                .unwrap();
            for (k, v) in &recs {
                latest.insert(k.unwrap(), v.unwrap());
            }
        }
    }
    log.flush().await.unwrap();
    latest
}

/// Every key reads its latest value, and the closed part holds each key once.
async fn assert_latest(log: &PartitionLog, latest: &BTreeMap<u32, u32>) -> usize {
    let (rows, _) = read_rows(log).await;
    let mut seen: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
    for (_, k, v) in &rows {
        seen.insert(k.clone().expect("keyed"), v.clone());
    }
    for (k, v) in latest {
        let want = format!("value-{v}-{}", "x".repeat(*v as usize % 40));
        assert_eq!(
            seen.get(&key(*k).unwrap()),
            Some(&Some(Bytes::from(want))),
            "key {k}"
        );
    }
    rows.len()
}

#[test]
fn a_pass_keeps_the_latest_value_of_every_key_at_its_offset() {
    for codec in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        run(move || async move {
            let (log, _) = PartitionLog::open(&path, compacted(2048, 1000))
                .await
                .unwrap();
            let latest = fill(&log, 50, 10, 5, codec).await;
            let before = read_rows(&log).await.0;
            let end = log.log_end_offset();
            let stats = log
                .clean(&settings(), 10_000)
                .await
                .unwrap()
                .expect("a pass");
            assert!(stats.records_removed > 0 && stats.bytes_written < stats.bytes_read);
            assert_eq!(log.log_end_offset(), end, "offsets never change");
            let after = read_rows(&log).await.0;
            for row in &after {
                assert!(
                    before.contains(row),
                    "{codec:?}: a kept record is an original one, at its offset"
                );
            }
            // Closed segments hold each key once; the active one is untouched.
            let clean: Vec<_> = after.iter().filter(|r| r.0 < log.clean_offset()).collect();
            let mut keys: Vec<_> = clean.iter().map(|r| r.1.clone()).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), clean.len(), "{codec:?}");
            assert_latest(&log, &latest).await;
            // Reopened, the cleaned log is the same.
            log.close().await.unwrap();
            let (log, report) = PartitionLog::open(&path, compacted(2048, 1000))
                .await
                .unwrap();
            assert!(report.clean_shutdown);
            assert_eq!(read_rows(&log).await.0, after);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_fetch_of_a_removed_offset_returns_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, compacted(512, 1000))
            .await
            .unwrap();
        let latest = fill(&log, 4, 30, 1, Compression::None).await;
        log.clean(&settings(), 10_000)
            .await
            .unwrap()
            .expect("a pass");
        assert_latest(&log, &latest).await;
        let r = log.read(0, 1).await.unwrap();
        let h = BatchHeader::parse(&r.chunks.concat()).unwrap();
        assert!(
            h.last_offset() > 0,
            "offset 0 was superseded: the next batch comes back"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn tombstones_remove_their_key_and_are_removed_after_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, compacted(1024, 5_000))
            .await
            .unwrap();
        fill(&log, 10, 3, 10, Compression::None).await;
        log.append(plain(&[(Some(3), None), (Some(4), None)], 2_000), 0)
            .await
            .unwrap();
        fill(&log, 0, 0, 1, Compression::None).await;
        // Roll past the tombstones so their segment is closed.
        for i in 0..20 {
            log.append(plain(&[(Some(100 + i), Some(i))], 2_000), 0)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        let has = |rows: &[Row], k: u32| rows.iter().filter(|r| r.1 == key(k)).count();
        log.clean(&settings(), 3_000)
            .await
            .unwrap()
            .expect("a pass");
        let rows = read_rows(&log).await.0;
        assert_eq!(
            (has(&rows, 3), has(&rows, 4)),
            (1, 1),
            "the tombstones, and nothing else"
        );
        assert!(rows.iter().any(|r| r.1 == key(3) && r.2.is_none()));
        assert!(
            !log.dirty_ratio(3_000).1 && log.dirty_ratio(7_000).1,
            "due once they expire"
        );
        log.clean(&settings(), 7_001)
            .await
            .unwrap()
            .expect("a pass");
        let rows = read_rows(&log).await.0;
        assert_eq!((has(&rows, 3), has(&rows, 4), has(&rows, 5)), (0, 0, 1));
        log.close().await.unwrap();
    });
}

#[test]
fn records_younger_than_min_compaction_lag_are_not_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let mut config = compacted(1024, 1000);
        config.compaction.min_compaction_lag_ms = 60_000;
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        fill(&log, 10, 10, 10, Compression::None).await;
        let before = read_rows(&log).await.0;
        assert!(
            log.clean(&settings(), 2_000).await.unwrap().is_none(),
            "all too young"
        );
        assert_eq!(read_rows(&log).await.0, before);
        assert!(log.clean(&settings(), 100_000).await.unwrap().is_some());
        assert!(read_rows(&log).await.0.len() < before.len());
        log.close().await.unwrap();
    });
}

#[test]
fn keys_beyond_the_offset_map_are_cleaned_over_several_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, compacted(4096, 1000))
            .await
            .unwrap();
        let latest = fill(&log, 200, 5, 10, Compression::Zstd).await;
        // Room for 60 keys: each pass maps what fits and cleans up to there.
        let small = CleanerSettings {
            dedupe_buffer_bytes: 60 * 32,
            ..settings()
        };
        let mut passes = 0;
        while log.dirty_ratio(10_000).0 > 0.0 {
            let stats = log.clean(&small, 10_000).await.unwrap().expect("a pass");
            assert!(stats.keys <= 60);
            passes += 1;
            assert!(passes < 100);
        }
        assert!(passes > 1);
        assert_latest(&log, &latest).await;
        // One full pass leaves each key once in the closed part.
        log.clean(&settings(), 10_000).await.unwrap();
        let rows = read_rows(&log).await.0;
        let clean = rows.iter().filter(|r| r.0 < log.clean_offset()).count();
        assert!(clean <= 200, "{clean} records for 200 keys");
        log.close().await.unwrap();
    });
}

#[test]
fn a_producers_last_batch_survives_as_an_empty_header_and_its_sequence_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, compacted(512, 1000))
            .await
            .unwrap();
        log.append(
            keyed(
                &[(Some(1), Some(1)), (Some(2), Some(2))],
                0,
                (9, 0, 0),
                Compression::Gzip,
            ),
            0,
        )
        .await
        .unwrap();
        fill(&log, 3, 10, 3, Compression::None).await;
        log.clean(&settings(), 10_000)
            .await
            .unwrap()
            .expect("a pass");
        let (_, headers) = read_rows(&log).await;
        let kept = headers
            .iter()
            .find(|h| h.producer_id() == 9)
            .expect("kept header");
        assert_eq!(
            (
                kept.record_count(),
                kept.base_offset(),
                kept.last_sequence()
            ),
            (0, 0, 1)
        );
        // Replayed from the log after a crash, the producer goes on at sequence 2 and a
        // retry of its last batch is still a duplicate.
        log.crash().await;
        std::fs::remove_file(path.join("producer.snapshot")).ok();
        let (log, _) = PartitionLog::open(&path, compacted(512, 1000))
            .await
            .unwrap();
        let retry = log
            .append(
                keyed(
                    &[(Some(1), Some(1)), (Some(2), Some(2))],
                    0,
                    (9, 0, 0),
                    Compression::Gzip,
                ),
                0,
            )
            .await
            .unwrap();
        assert!(retry.duplicate);
        log.append(
            keyed(&[(Some(5), Some(5))], 0, (9, 0, 2), Compression::None),
            0,
        )
        .await
        .unwrap();
        log.close().await.unwrap();
    });
}

const STOPS: [StopAt; 6] = [
    StopAt::CleanedWritten,
    StopAt::MarkerWritten,
    StopAt::MemorySwapped,
    StopAt::Finish(FinishStep::Removed),
    StopAt::Finish(FinishStep::Renamed),
    StopAt::Finish(FinishStep::Done),
];

#[test]
fn a_crash_at_any_step_of_a_pass_leaves_the_old_or_the_new_segments() {
    for stop in STOPS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        run(move || async move {
            let (log, _) = PartitionLog::open(&path, compacted(2048, 1000))
                .await
                .unwrap();
            let latest = fill(&log, 30, 8, 6, Compression::Snappy).await;
            let end = log.log_end_offset();
            let before = read_rows(&log).await.0;
            let stats = log
                .clean_until(&settings(), 10_000, Some(stop))
                .await
                .unwrap();
            assert!(stats.is_some(), "{stop:?}");
            log.crash().await;
            let (log, _) = PartitionLog::open(&path, compacted(2048, 1000))
                .await
                .unwrap();
            assert_eq!(
                log.log_end_offset(),
                end,
                "{stop:?}: nothing acknowledged is lost"
            );
            let after = read_rows(&log).await.0;
            assert!(after.iter().all(|r| before.contains(r)), "{stop:?}");
            assert_latest(&log, &latest).await;
            let leftovers: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".cleaned") || n == "cleaner.swap")
                .collect();
            assert!(leftovers.is_empty(), "{stop:?}: {leftovers:?}");
            // And a full pass after the crash finishes the job.
            log.clean(&settings(), 10_000).await.unwrap();
            assert_latest(&log, &latest).await;
            log.close().await.unwrap();
        });
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Produce {
            records: Vec<(u8, Option<u8>)>,
            codec: usize,
        },
        Clean {
            small_map: bool,
        },
        Reopen,
        Crash {
            stop: Option<usize>,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let record = (0u8..24, proptest::option::weighted(0.85, any::<u8>()));
        prop_oneof![
            8 => (proptest::collection::vec(record, 1..8), 0usize..5)
                .prop_map(|(records, codec)| Op::Produce { records, codec }),
            3 => any::<bool>().prop_map(|small_map| Op::Clean { small_map }),
            1 => Just(Op::Reopen),
            1 => proptest::option::of(0usize..STOPS.len()).prop_map(|stop| Op::Crash { stop }),
        ]
    }

    /// The model: every record appended, in offset order.
    async fn check(log: &PartitionLog, appended: &[(i64, u8, Option<u8>)], expired: bool) {
        let (rows, _) = read_rows(log).await;
        let mut latest: BTreeMap<u8, (i64, Option<u8>)> = BTreeMap::new();
        for (o, k, v) in appended {
            latest.insert(*k, (*o, *v));
        }
        let as_row = |(o, k, v): &(i64, u8, Option<u8>)| -> Row {
            (
                *o,
                key(*k as u32),
                v.map(|v| Bytes::from(format!("value-{v}-{}", "x".repeat(v as usize % 40)))),
            )
        };
        let want: Vec<Row> = appended.iter().map(as_row).collect();
        for row in &rows {
            assert!(
                want.binary_search_by_key(&row.0, |r| r.0)
                    .is_ok_and(|i| &want[i] == row),
                "an original record at its offset: {row:?}"
            );
        }
        for (k, (o, v)) in &latest {
            let present = rows.iter().any(|r| r.0 == *o);
            // The newest record of a key stays, except a tombstone once its retention passed.
            assert!(
                present || (v.is_none() && expired),
                "key {k}: newest record at {o} is gone"
            );
            assert!(rows
                .iter()
                .filter(|r| r.1 == key(*k as u32))
                .all(|r| r.0 <= *o));
        }
        let last = appended.last().map_or(-1, |a| a.0);
        assert!(log.log_end_offset() > last);
    }

    fn run_ops(ops: Vec<Op>, expired: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let retention = if expired { 0 } else { i64::MAX / 4 };
        run(move || async move {
            let config = compacted(1024, retention);
            let (mut log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let mut appended: Vec<(i64, u8, Option<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Produce { records, codec } => {
                        let kv: Vec<Kv> = records
                            .iter()
                            .map(|(k, v)| (Some(*k as u32), v.map(u32::from)))
                            .collect();
                        let info = log
                            .append(keyed(&kv, 1_000, (-1, -1, -1), CODECS[codec]), 0)
                            .await
                            .unwrap();
                        for (i, (k, v)) in records.iter().enumerate() {
                            appended.push((info.base_offset + i as i64, *k, *v));
                        }
                    }
                    Op::Clean { small_map } => {
                        let s = CleanerSettings {
                            dedupe_buffer_bytes: if small_map { 10 * 32 } else { 1 << 20 },
                            ..settings()
                        };
                        let stats = log.clean(&s, 1_000_000).await.unwrap();
                        if stats.is_some() && !small_map {
                            // A full pass leaves each key at most once below the clean point.
                            let (rows, _) = read_rows(&log).await;
                            let mut keys: Vec<_> = rows
                                .iter()
                                .filter(|r| r.0 < log.clean_offset())
                                .map(|r| r.1.clone())
                                .collect();
                            let n = keys.len();
                            keys.sort();
                            keys.dedup();
                            assert_eq!(
                                keys.len(),
                                n,
                                "duplicate keys below {}",
                                log.clean_offset()
                            );
                        }
                    }
                    Op::Reopen => {
                        log.close().await.unwrap();
                        log = PartitionLog::open(&path, config.clone()).await.unwrap().0;
                    }
                    Op::Crash { stop } => {
                        log.flush().await.unwrap();
                        if let Some(stop) = stop {
                            log.clean_until(&settings(), 1_000_000, Some(STOPS[stop]))
                                .await
                                .unwrap();
                        }
                        log.crash().await;
                        log = PartitionLog::open(&path, config.clone()).await.unwrap().0;
                    }
                }
                check(&log, &appended, expired).await;
            }
            let log: Rc<PartitionLog> = log;
            log.close().await.unwrap();
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            max_shrink_iters: 200,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn every_key_reads_its_latest_value_through_passes_reopens_and_crashes(
            ops in proptest::collection::vec(op(), 1..50),
            expired in any::<bool>(),
        ) {
            run_ops(ops, expired);
        }
    }
}
