//! Behaviour tests of the partition log and shard storage: append/read, durability,
//! recovery after crashes and damage, idempotence, retention, group commit, and a
//! model-based test against an in-memory log.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use kafka_protocol::records::Compression;

use super::batch::tests::{encode_batch, plain};
use super::batch::BatchHeader;
use super::{LogConfig, LogError, PartitionLog, ShardStorage};

/// Runs a test body on its own glommio executor. 512 KiB of registered I/O memory fits
/// this machine's 8 MiB RLIMIT_MEMLOCK even with two tests running at once.
pub(crate) fn run<G, F>(body: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(body)
        .expect("executor")
        .join()
        .expect("test body");
}

#[test]
fn direct_reads_work_once_the_io_poll_probe_ran() {
    let dir = tempdir();
    let path = dir.path().join("f");
    run(move || async move {
        super::probe_direct_io(dir_of(&path)).await.unwrap();
        let f = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&path)
            .await
            .unwrap();
        let mut b = f.alloc_dma_buffer(8192);
        b.as_bytes_mut().fill(7);
        f.write_at(b, 0).await.unwrap();
        assert_eq!(f.read_at(0, 100).await.unwrap().len(), 100);
        assert_eq!(f.read_at(4096, 900).await.unwrap().len(), 900);
        assert_eq!(f.read_at(0, 300 << 10).await.unwrap().len(), 8192);
        f.truncate(5000).await.unwrap();
        assert_eq!(f.read_at(0, 65536).await.unwrap()[4999], 7);
    });
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap()
}

pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        tail_cache_bytes: 16 << 10,
        write_buffer_bytes: 16 << 10,
        preallocate_bytes: 256 << 10,
        ..LogConfig::default()
    }
}

/// The bytes a batch has in the log once stamped with `base_offset`.
pub(crate) fn stamped(batch: &Bytes, base_offset: i64) -> Vec<u8> {
    let mut v = batch.to_vec();
    v[..8].copy_from_slice(&base_offset.to_be_bytes());
    v
}

/// Compares byte strings without printing megabytes on failure.
macro_rules! assert_bytes {
    ($got:expr, $want:expr) => {
        assert_bytes!($got, $want, "")
    };
    ($got:expr, $want:expr, $($ctx:tt)+) => {{
        let (got, want): (&[u8], &[u8]) = (&$got, &$want);
        if got != want {
            let at = got.iter().zip(want.iter()).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            panic!("bytes differ at {at}: got {} bytes, want {}: {}", got.len(), want.len(), format!($($ctx)+));
        }
    }};
}

pub(crate) fn concat(chunks: &[Bytes]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// Reads the whole log from its start, batch by batch, stopping at the first error.
pub(crate) async fn read_all(log: &PartitionLog) -> (Vec<u8>, Option<LogError>) {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        match log.read(offset, 1).await {
            Ok(r) => {
                assert!(!r.chunks.is_empty(), "no batch at {offset}");
                let bytes = concat(&r.chunks);
                let h = BatchHeader::parse(&bytes).unwrap();
                assert_eq!(h.total_bytes(), bytes.len(), "one whole batch");
                offset = h.last_offset() + 1;
                out.extend_from_slice(&bytes);
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn appended_batches_get_consecutive_offsets_and_read_back_stamped() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert_eq!((report.log_start_offset, report.log_end_offset), (0, 0));
        let a = plain(3, 1000);
        let b = plain(5, 2000);
        let first = log.append(a.clone(), 0).await.unwrap();
        let second = log.append(b.clone(), 0).await.unwrap();
        assert_eq!(
            (first.base_offset, first.last_offset, first.duplicate),
            (0, 2, false)
        );
        assert_eq!((second.base_offset, second.last_offset), (3, 7));
        assert_eq!(log.log_end_offset(), 8);
        let r = log.read(0, 1 << 20).await.unwrap();
        let mut want = stamped(&a, 0);
        want.extend(stamped(&b, 3));
        assert_bytes!(concat(&r.chunks), want);
        assert_eq!(r.bytes, want.len());
        // An offset inside a batch returns the whole batch holding it.
        let r = log.read(5, 1).await.unwrap();
        assert_bytes!(concat(&r.chunks), stamped(&b, 3));
        // At the end: nothing; past it or below the start: out of range.
        assert!(log.read(8, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(9, 100).await,
            Err(LogError::OffsetOutOfRange {
                requested: 9,
                start: 0,
                end: 8
            })
        ));
        assert!(matches!(
            log.read(-1, 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
    });
}

#[test]
fn a_rejected_append_appends_nothing() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        let good = plain(2, 1);
        let mut bad = plain(2, 1).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut both = good.to_vec();
        both.extend_from_slice(&bad);
        assert!(matches!(
            log.append(Bytes::from(both), 0).await,
            Err(LogError::CorruptBatch(_))
        ));
        assert_eq!(log.log_end_offset(), 0);
        let mut config = small_config();
        config.max_batch_bytes = 100;
        log.set_config(config);
        assert!(matches!(
            log.append(good, 0).await,
            Err(LogError::BatchTooLarge { .. })
        ));
        assert_eq!(log.log_end_offset(), 0);
        log.close().await.unwrap();
    });
}

#[test]
fn max_bytes_limits_a_read_but_never_below_one_batch() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        let b = plain(4, 1);
        for _ in 0..10 {
            log.append(b.clone(), 0).await.unwrap();
        }
        let one = log.read(0, 1).await.unwrap();
        assert_eq!(one.bytes, b.len());
        let three = log.read(4, 3 * b.len() + 10).await.unwrap();
        assert_eq!(three.bytes, 3 * b.len());
        assert_eq!(concat(&three.chunks)[..8], 4i64.to_be_bytes());
        log.close().await.unwrap();
    });
}

#[test]
fn old_data_is_read_from_disk_after_the_tail_cache_evicts_it() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            tail_cache_bytes: 0,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        let mut want = Vec::new();
        for i in 0..200 {
            let b = plain(1 + i % 7, i as i64);
            let info = log.append(b.clone(), 0).await.unwrap();
            want.extend(stamped(&b, info.base_offset));
        }
        // Unflushed batches stay readable from the cache even with a zero-byte budget.
        let (got, err) = read_all(&log).await;
        assert!(err.is_none());
        assert_bytes!(got, want);
        log.flush().await.unwrap();
        assert_eq!(log.cache_bytes(), 0, "everything on disk is evicted");
        let (got, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        assert_bytes!(got, want);
        assert!(log.segment_bases().len() > 1, "segments rolled");
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_append_time_log_serves_stamped_batches_from_cache_and_disk_alike() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            tail_cache_bytes: 0,
            log_append_time: true,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let a = encode_batch(3, 50, 1_000, (-1, -1, -1), Compression::Gzip);
        let info = log.append(a.clone(), 1_700_000_000_000).await.unwrap();
        assert_eq!(info.log_append_time_ms, 1_700_000_000_000);
        log.set_config(LogConfig {
            log_append_time: false,
            ..config
        });
        let b = plain(2, 2_000);
        let info = log.append(b.clone(), 1_700_000_000_500).await.unwrap();
        assert_eq!(
            info.log_append_time_ms, -1,
            "CreateTime again after the change"
        );

        let (cached, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        log.flush().await.unwrap();
        assert_eq!(log.cache_bytes(), 0, "the next read comes from disk");
        let (on_disk, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        assert_bytes!(on_disk, cached);

        let first = BatchHeader::validate(&on_disk, 1 << 20).expect("CRC-32C valid");
        assert_eq!(first.base_offset(), 0);
        assert_eq!(
            first.attributes() & 0x08,
            0x08,
            "timestamp type LogAppendTime"
        );
        assert_eq!(first.max_timestamp(), 1_700_000_000_000);
        assert_eq!(first.total_bytes(), a.len());
        assert_bytes!(
            on_disk[a.len()..],
            stamped(&b, 3),
            "a CreateTime batch as received"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn closed_segments_read_and_find_timestamps_through_their_thinned_indexes() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 400 << 10,
            index_interval_bytes: 512,
            tail_cache_bytes: 0,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let batches = fill(&log, 2000, 9).await;
        assert!(log.segment_bases().len() >= 3);
        for reopen in [false, true] {
            let log = if reopen {
                log.close().await.unwrap();
                PartitionLog::open(&path, config.clone()).await.unwrap().0
            } else {
                log.clone()
            };
            let want: Vec<u8> = batches.iter().flat_map(|b| b.1.iter().copied()).collect();
            assert_bytes!(read_all(&log).await.0, want);
            for i in [0usize, 1, 777, 1500, 1999] {
                let ts = BatchHeader::parse(&batches[i].1).unwrap().max_timestamp();
                let first = batches
                    .iter()
                    .position(|b| BatchHeader::parse(&b.1).unwrap().max_timestamp() >= ts)
                    .unwrap();
                assert_eq!(
                    log.offset_for_timestamp(ts).await.unwrap().map(|f| f.0),
                    Some(batches[first].0)
                );
            }
            if reopen {
                log.close().await.unwrap();
            }
        }
    });
}

#[test]
fn batches_larger_than_the_write_buffer_straddle_buffers_and_survive_reopen() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            write_buffer_bytes: 8 << 10,
            tail_cache_bytes: 0,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let mut want = Vec::new();
        for i in 0..20 {
            let b = encode_batch(30 + i, 700, 10, (-1, -1, -1), Compression::None);
            let info = log.append(b.clone(), 0).await.unwrap();
            want.extend(stamped(&b, info.base_offset));
        }
        assert_bytes!(read_all(&log).await.0, want);
        log.close().await.unwrap();
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert!(report.clean_shutdown);
        assert_bytes!(read_all(&log).await.0, want);
        log.close().await.unwrap();
    });
}

#[test]
fn flush_makes_everything_durable_and_dirty_bytes_drop_to_zero() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        let b = plain(10, 1);
        log.append(b.clone(), 0).await.unwrap();
        log.append(b.clone(), 0).await.unwrap();
        assert_eq!(log.durable_offset(), 0);
        assert_eq!(log.dirty_bytes(), 2 * b.len() as u64);
        assert_eq!(log.flush().await.unwrap(), 20);
        assert_eq!(log.durable_offset(), 20);
        assert_eq!(log.dirty_bytes(), 0);
        // The partial last page is rewritten whole by the next flush.
        log.append(b.clone(), 0).await.unwrap();
        assert_eq!(log.flush().await.unwrap(), 30);
        log.crash().await;
        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert!(!report.clean_shutdown);
        assert_eq!(log.log_end_offset(), 30);
        assert!(report.truncated_reason.is_none(), "{report}");
        log.close().await.unwrap();
    });
}

#[test]
fn a_clean_reopen_scans_nothing_and_keeps_appending() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        let mut want = Vec::new();
        for i in 0..100 {
            let b = plain(1 + i % 5, 1000 + i as i64);
            let info = log.append(b.clone(), 0).await.unwrap();
            want.extend(stamped(&b, info.base_offset));
        }
        let end = log.log_end_offset();
        log.close().await.unwrap();
        assert!(matches!(
            log.append(plain(1, 1), 0).await,
            Err(LogError::Closed)
        ));
        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert!(report.clean_shutdown, "{report}");
        assert_eq!(report.scanned_segment, None);
        assert!(report.rebuilt_indexes.is_empty(), "{report}");
        assert_eq!(report.producer_batches_replayed, 0);
        assert_eq!(log.log_end_offset(), end);
        let b = plain(2, 5);
        log.append(b.clone(), 0).await.unwrap();
        want.extend(stamped(&b, end));
        assert_bytes!(read_all(&log).await.0, want);
        log.close().await.unwrap();
    });
}

#[test]
fn an_empty_log_reopens_cleanly_and_orphaned_files_are_removed() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        log.close().await.unwrap();
        // What a crash in the middle of retention would leave behind.
        std::fs::write(path.join(format!("{:020}.index", 77)), b"").unwrap();
        std::fs::write(path.join("producer.snapshot.tmp"), b"x").unwrap();
        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert!(
            report.clean_shutdown && report.rebuilt_indexes.is_empty(),
            "{report}"
        );
        assert!(!path.join(format!("{:020}.index", 77)).exists());
        assert!(!path.join("producer.snapshot.tmp").exists());
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
        log.close().await.unwrap();
    });
}

#[test]
fn a_long_poll_wakes_on_append_and_times_out_without_one() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        let started = Instant::now();
        assert!(
            !log.wait_for_data(0, Instant::now() + Duration::from_millis(30))
                .await
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        let writer = log.clone();
        let task = glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            writer.append(plain(1, 1), 0).await.unwrap();
        });
        assert!(
            log.wait_for_data(0, Instant::now() + Duration::from_secs(10))
                .await
        );
        task.await;
        assert!(
            log.wait_for_data(0, Instant::now()).await,
            "data already there"
        );
        let closer = log.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            closer.close().await.unwrap();
        })
        .detach();
        assert!(
            !log.wait_for_data(1, Instant::now() + Duration::from_secs(10))
                .await
        );
    });
}

#[test]
fn timestamps_are_found_through_the_time_index_across_segments() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 8 << 10,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let mut bases = Vec::new();
        for i in 0..100i64 {
            // 3 records: max timestamp = base + 2.
            let info = log.append(plain(3, 10_000 + i * 100), 0).await.unwrap();
            bases.push(info.base_offset);
        }
        assert!(log.segment_bases().len() > 3);
        for close in [false, true] {
            assert_eq!(
                log.offset_for_timestamp(0).await.unwrap(),
                Some((0, 10_002))
            );
            assert_eq!(
                log.offset_for_timestamp(10_002).await.unwrap(),
                Some((0, 10_002))
            );
            assert_eq!(
                log.offset_for_timestamp(10_003).await.unwrap(),
                Some((bases[1], 10_102))
            );
            assert_eq!(
                log.offset_for_timestamp(15_050).await.unwrap(),
                Some((bases[51], 15_102))
            );
            assert_eq!(
                log.offset_for_timestamp(19_902).await.unwrap(),
                Some((bases[99], 19_902))
            );
            assert_eq!(log.offset_for_timestamp(19_903).await.unwrap(), None);
            if close {
                break;
            }
        }
        log.close().await.unwrap();
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        assert_eq!(
            log.offset_for_timestamp(15_050).await.unwrap(),
            Some((bases[51], 15_102))
        );
        log.close().await.unwrap();
    });
}

#[test]
fn retention_deletes_whole_old_segments_and_moves_the_start() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 4 << 10,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        for i in 0..60i64 {
            log.append(plain(3, i * 1000), 0).await.unwrap();
        }
        let segments = log.segment_bases();
        assert!(segments.len() >= 4);
        // Nothing is old enough at time 0 with 7 days of retention.
        assert_eq!(log.apply_retention(0).await.unwrap(), 0);
        // By time: segments whose newest batch is older than retention go.
        log.set_config(LogConfig {
            retention_ms: 1000,
            ..config.clone()
        });
        let deleted = log.apply_retention(30_000).await.unwrap();
        assert!(deleted >= 1);
        let start = log.log_start_offset();
        assert_eq!(start, log.segment_bases()[0]);
        assert!(matches!(
            log.read(start - 1, 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(log.read(start, 100).await.is_ok());
        // By size: keep at most ~one segment; the active one is never deleted.
        log.set_config(LogConfig {
            retention_bytes: 1,
            ..config.clone()
        });
        log.apply_retention(0).await.unwrap();
        assert_eq!(log.segment_bases().len(), 1);
        let start = log.log_start_offset();
        assert_eq!(start, *segments.last().unwrap());
        log.close().await.unwrap();
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        log.delete().await.unwrap();
        assert!(!path.exists());
    });
}

#[test]
fn segments_roll_on_age() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_ms: 1000,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        log.append(plain(1, 1), 0).await.unwrap();
        log.append(plain(1, 1), 999).await.unwrap();
        assert_eq!(log.segment_bases(), vec![0]);
        log.append(plain(1, 1), 1000).await.unwrap();
        assert_eq!(log.segment_bases(), vec![0, 2]);
        log.close().await.unwrap();
    });
}

#[test]
fn the_tail_cache_stays_within_its_budget_once_data_is_written() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            tail_cache_bytes: 4096,
            segment_bytes: 1 << 30,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let b = plain(5, 1);
        for _ in 0..300 {
            log.append(b.clone(), 0).await.unwrap();
            // Unwritten bytes are bounded by the write queue and the filling buffer plus
            // one batch.
            let buffers = config.max_writes_in_flight + 1;
            assert!(log.cache_bytes() <= 4096 + buffers * config.write_buffer_bytes + b.len());
        }
        log.flush().await.unwrap();
        assert!(log.cache_bytes() <= 4096);
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_appends_flushes_and_reads_keep_every_batch_whole_and_in_offset_order() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        // Tiny buffers and segments: backpressure, straddling batches and rolls all happen.
        let config = LogConfig {
            write_buffer_bytes: 8 << 10,
            tail_cache_bytes: 2 << 10,
            segment_bytes: 32 << 10,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for writer in 0..4 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut mine = Vec::new();
                for i in 0..40 {
                    let b = encode_batch(
                        1 + (i % 5),
                        300 + writer * 50,
                        writer as i64,
                        (-1, -1, -1),
                        Compression::None,
                    );
                    let info = log.append(b.clone(), 0).await.unwrap();
                    mine.push((info.base_offset, stamped(&b, info.base_offset)));
                }
                mine
            }));
        }
        let flusher = log.clone();
        let flushing = glommio::spawn_local(async move {
            for _ in 0..30 {
                flusher.flush().await.unwrap();
                glommio::executor().yield_task_queue_now().await;
            }
        });
        let reader = log.clone();
        let reading = glommio::spawn_local(async move {
            for _ in 0..50 {
                let (_, err) = read_all(&reader).await;
                assert!(err.is_none(), "{err:?}");
                glommio::executor().yield_task_queue_now().await;
            }
        });
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await);
        }
        flushing.await;
        reading.await;
        all.sort_by_key(|b| b.0);
        let want: Vec<u8> = all.iter().flat_map(|b| b.1.iter().copied()).collect();
        assert_bytes!(read_all(&log).await.0, want);
        log.flush().await.unwrap();
        log.crash().await;
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert!(report.truncated_reason.is_none(), "{report}");
        assert_bytes!(read_all(&log).await.0, want);
        log.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Idempotence

pub(crate) fn idem(producer_id: i64, epoch: i16, sequence: i32, records: usize) -> Bytes {
    encode_batch(
        records,
        20,
        1,
        (producer_id, epoch, sequence),
        Compression::None,
    )
}

#[test]
fn a_retried_batch_is_answered_with_its_original_offsets_and_not_appended() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        // A producer the log does not know may start at any sequence.
        assert_eq!(
            log.append(idem(9, 4, 700, 3), 0).await.unwrap().base_offset,
            0
        );
        assert!(log.append(idem(9, 4, 700, 3), 0).await.unwrap().duplicate);
        let first = log.append(idem(7, 0, 0, 10), 0).await.unwrap();
        let second = log.append(idem(7, 0, 10, 5), 0).await.unwrap();
        assert_eq!((second.base_offset, second.last_offset), (13, 17));
        let retry = log.append(idem(7, 0, 0, 10), 0).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            (retry.base_offset, retry.last_offset),
            (first.base_offset, first.last_offset)
        );
        assert_eq!(log.log_end_offset(), 18);
        // A gap is out of order; an older epoch is fenced; a new epoch restarts at 0.
        assert!(matches!(
            log.append(idem(7, 0, 20, 1), 0).await,
            Err(LogError::OutOfOrderSequence {
                producer_id: 7,
                expected: 15,
                received: 20
            })
        ));
        assert!(log.append(idem(7, 1, 0, 1), 0).await.is_ok());
        assert!(matches!(
            log.append(idem(7, 0, 15, 1), 0).await,
            Err(LogError::InvalidProducerEpoch {
                producer_id: 7,
                current: 1,
                received: 0
            })
        ));
        assert!(matches!(
            log.append(idem(7, 2, 5, 1), 0).await,
            Err(LogError::OutOfOrderSequence { .. })
        ));
        // Producer id -1 is never checked.
        log.append(plain(1, 1), 0).await.unwrap();
        log.append(plain(1, 1), 0).await.unwrap();
        assert_eq!(log.log_end_offset(), 21);
        log.close().await.unwrap();
    });
}

#[test]
fn only_the_last_five_batches_are_recognised_as_duplicates() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        for i in 0..6 {
            log.append(idem(3, 0, i * 10, 10), 0).await.unwrap();
        }
        assert!(log.append(idem(3, 0, 10, 10), 0).await.unwrap().duplicate);
        assert!(matches!(
            log.append(idem(3, 0, 0, 10), 0).await,
            Err(LogError::OutOfOrderSequence { .. })
        ));
        log.close().await.unwrap();
    });
}

#[test]
fn producer_state_survives_a_clean_reopen_and_a_crash() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 4096,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        for p in 0..3 {
            for i in 0..10 {
                log.append(idem(100 + p, 0, i * 5, 5), 0).await.unwrap();
            }
        }
        let retry_offsets = log.append(idem(101, 0, 45, 5), 0).await.unwrap();
        assert!(retry_offsets.duplicate);
        log.close().await.unwrap();

        let (log, report) = PartitionLog::open(&path, config.clone()).await.unwrap();
        assert_eq!(report.producer_batches_replayed, 0, "{report}");
        assert_eq!(log.producer_count(), 3);
        assert_eq!(
            log.append(idem(101, 0, 45, 5), 0).await.unwrap(),
            retry_offsets
        );
        log.append(idem(102, 0, 50, 5), 0).await.unwrap();
        log.flush().await.unwrap();
        log.crash().await;

        // No snapshot covers the last appends: they are replayed from the log.
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert!(!report.clean_shutdown);
        assert!(report.producer_batches_replayed >= 1, "{report}");
        assert!(log.append(idem(102, 0, 50, 5), 0).await.unwrap().duplicate);
        assert!(log.append(idem(101, 0, 45, 5), 0).await.unwrap().duplicate);
        assert!(matches!(
            log.append(idem(100, 0, 99, 5), 0).await,
            Err(LogError::OutOfOrderSequence { .. })
        ));
        log.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Group commit

#[test]
fn concurrent_durability_waiters_share_sync_rounds_across_partitions() {
    let dir = tempdir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let shard = ShardStorage::new(1000, 1 << 30);
        let mut logs = Vec::new();
        for p in 0..2 {
            let (log, _) = PartitionLog::open(root.join(format!("p{p}")), small_config())
                .await
                .unwrap();
            shard.register(&log);
            logs.push(log);
        }
        let mut tasks = Vec::new();
        for i in 0..20 {
            let log = logs[i % 2].clone();
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                let info = log.append(plain(2, 1), 0).await.unwrap();
                shard.wait_durable(&log, info.last_offset).await.unwrap();
                assert!(log.durable_offset() > info.last_offset);
            }));
        }
        for t in tasks {
            t.await;
        }
        assert!(
            shard.rounds() < 20,
            "{} rounds for 20 waiters",
            shard.rounds()
        );
        for log in &logs {
            assert_eq!(log.durable_offset(), 20);
            assert_eq!(log.dirty_bytes(), 0);
        }
        // The background loop flushes data nobody waits for.
        let background = ShardStorage::new(5, 1 << 30);
        background.register(&logs[0]);
        let looping = glommio::spawn_local(background.clone().run_background(60_000));
        logs[0].append(plain(2, 1), 0).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while logs[0].durable_offset() < 22 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(logs[0].durable_offset(), 22);
        background.stop();
        looping.await;
        for log in logs {
            shard.unregister(&log);
            log.close().await.unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------
// Crashes and damage

/// Opens the log, fills it (see [`fill`]), makes it durable, then stops it as a crash
/// would: the common start of every crash-recovery test.
async fn fill_flush_crash(
    path: &std::path::Path,
    config: &LogConfig,
    count: usize,
    seed: u64,
) -> Vec<(i64, Vec<u8>)> {
    let (log, _) = PartitionLog::open(path, config.clone()).await.unwrap();
    let batches = fill(&log, count, seed).await;
    log.flush().await.unwrap();
    log.crash().await;
    batches
}

/// Writes `count` batches over several segments and returns each batch's stamped bytes.
async fn fill(log: &PartitionLog, count: usize, seed: u64) -> Vec<(i64, Vec<u8>)> {
    let mut batches = Vec::new();
    for i in 0..count {
        let records = 1 + ((seed as usize + i * 7) % 9);
        let b = encode_batch(
            records,
            50 + (i * 31) % 400,
            1000 + i as i64,
            (-1, -1, -1),
            Compression::None,
        );
        let info = log.append(b.clone(), 0).await.unwrap();
        batches.push((info.base_offset, stamped(&b, info.base_offset)));
    }
    batches
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir).pop().unwrap()
}

/// Batches of `batches` stored in the last segment, with their file positions.
fn positions_in_last_segment(
    batches: &[(i64, Vec<u8>)],
    last_base: i64,
) -> Vec<(u64, usize, usize)> {
    let mut pos = 0u64;
    let mut out = Vec::new();
    for (i, (base, bytes)) in batches.iter().enumerate() {
        if *base >= last_base {
            out.push((pos, bytes.len(), i));
            pos += bytes.len() as u64;
        }
    }
    out
}

fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move |bound| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound.max(1)
    }
}

#[test]
fn cutting_the_last_segment_anywhere_keeps_exactly_the_whole_batches_before_the_cut() {
    for seed in 0..12u64 {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let mut next = rng(seed);
            let config = LogConfig {
                segment_bytes: 16 << 10,
                index_interval_bytes: 512,
                ..small_config()
            };
            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let batches = fill(&log, 80, seed).await;
            match seed % 3 {
                // A clean stop, then the file is cut: the marker must not vouch for it.
                0 => log.close().await.unwrap(),
                1 => {
                    log.close().await.unwrap();
                    std::fs::remove_file(path.join("clean_shutdown")).unwrap();
                }
                _ => {
                    log.flush().await.unwrap();
                    log.crash().await;
                }
            }
            let seg_path = last_segment(&path);
            let last_base: i64 = seg_path
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let in_last = positions_in_last_segment(&batches, last_base);
            let data_len = in_last.last().map_or(0, |(p, l, _)| p + *l as u64);
            let cut = next(data_len + 1);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&seg_path)
                .unwrap();
            f.set_len(cut).unwrap();
            drop(f);

            let (log, report) = PartitionLog::open(&path, config).await.unwrap();
            let surviving = in_last
                .iter()
                .take_while(|(p, l, _)| p + *l as u64 <= cut)
                .count();
            let kept = in_last
                .first()
                .map_or(batches.len(), |(_, _, first)| first + surviving);
            let want_end = batches.get(kept).map_or(
                batches.last().map_or(0, |b| {
                    let h = BatchHeader::parse(&b.1).unwrap();
                    h.last_offset() + 1
                }),
                |b| b.0,
            );
            assert_eq!(
                log.log_end_offset(),
                want_end,
                "seed {seed} cut {cut}: {report}"
            );
            let (got, err) = read_all(&log).await;
            assert!(err.is_none(), "{err:?}");
            let want: Vec<u8> = batches[..kept]
                .iter()
                .flat_map(|b| b.1.iter().copied())
                .collect();
            assert_bytes!(got, want, "seed {seed}");
            // The log keeps working after recovery.
            log.append(plain(1, 1), 0).await.unwrap();
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_flipped_byte_is_never_returned_and_the_scan_truncates_at_it() {
    for seed in 0..16u64 {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let mut next = rng(seed + 1000);
            let config = LogConfig {
                segment_bytes: 16 << 10,
                index_interval_bytes: 512,
                ..small_config()
            };
            let batches = fill_flush_crash(&path, &config, 80, seed).await;
            // Flip one byte anywhere in any segment's data.
            let mut segs: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            segs.sort();
            let seg_path = segs[next(segs.len() as u64) as usize].clone();
            let seg_base: i64 = seg_path
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let next_base = batches.iter().map(|b| b.0).find(|&b| {
                b > seg_base
                    && segs.iter().any(|s| {
                        s.file_stem()
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .parse::<i64>()
                            .unwrap()
                            == b
                    })
            });
            let in_seg: Vec<_> = batches
                .iter()
                .enumerate()
                .filter(|(_, b)| b.0 >= seg_base && next_base.is_none_or(|n| b.0 < n))
                .collect();
            let data_len: usize = in_seg.iter().map(|(_, b)| b.1.len()).sum();
            let at = next(data_len as u64) as usize;
            let mut raw = std::fs::read(&seg_path).unwrap();
            raw[at] ^= 1 << next(8);
            std::fs::write(&seg_path, &raw).unwrap();
            // Which batch was hit, and was it a byte the CRC does not cover?
            let mut pos = 0;
            let mut hit = 0;
            let mut hit_offset_in_batch = 0;
            for (i, b) in &in_seg {
                if at < pos + b.1.len() {
                    hit = *i;
                    hit_offset_in_batch = at - pos;
                    break;
                }
                pos += b.1.len();
            }
            let uncovered = (12..16).contains(&hit_offset_in_batch);

            let (log, report) = PartitionLog::open(&path, config).await.unwrap();
            let (got, err) = read_all(&log).await;
            let mut want: Vec<u8> = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                if i == hit && uncovered {
                    // PartitionLeaderEpoch is outside the CRC, as in Kafka: it survives as is.
                    let mut v = b.1.clone();
                    v[hit_offset_in_batch] = raw[at];
                    want.extend(v);
                    continue;
                }
                if i == hit {
                    break;
                }
                want.extend_from_slice(&b.1);
            }
            if uncovered {
                assert_bytes!(got, want, "seed {seed}: {report}");
            } else {
                // Every batch returned is exactly what was appended, and reading stops at the
                // damaged one: truncated by the scan, or refused by the read's CRC check.
                assert_bytes!(got, want, "seed {seed} at {at} hit {hit}: {report} {err:?}");
                assert!(
                    err.is_some() || log.log_end_offset() == batches[hit].0,
                    "seed {seed}: {report}"
                );
            }
            log.close().await.unwrap();
        });
    }
}

#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 16 << 10,
            index_interval_bytes: 512,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let batches = fill(&log, 80, 3).await;
        log.close().await.unwrap();
        let mut indexes: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "index"))
            .collect();
        indexes.sort();
        std::fs::remove_file(&indexes[0]).unwrap();
        std::fs::write(&indexes[1], b"garbage").unwrap();
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert_eq!(report.rebuilt_indexes.len(), 2, "{report}");
        let want: Vec<u8> = batches.iter().flat_map(|b| b.1.iter().copied()).collect();
        assert_bytes!(read_all(&log).await.0, want);
        let first_at_1040 = batches
            .iter()
            .find(|b| BatchHeader::parse(&b.1).unwrap().max_timestamp() >= 1040)
            .unwrap();
        assert_eq!(
            log.offset_for_timestamp(1040).await.unwrap().unwrap().0,
            first_at_1040.0
        );
        log.close().await.unwrap();
    });
}

#[test]
fn a_closed_segment_cut_at_rest_answers_corrupt_instead_of_nothing() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 16 << 10,
            index_interval_bytes: 512,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let batches = fill(&log, 80, 5).await;
        log.close().await.unwrap();
        let segs = segment_files(&path);
        assert!(segs.len() >= 3);
        // Cut the first segment in the middle of its third batch.
        let cut = (batches[0].1.len() + batches[1].1.len() + 10) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segs[0])
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        let (got, err) = read_all(&log).await;
        let want: Vec<u8> = batches[..2]
            .iter()
            .flat_map(|b| b.1.iter().copied())
            .collect();
        assert_bytes!(got, want);
        assert!(matches!(err, Some(LogError::CorruptBatch(_))), "{err:?}");
        // Later segments are unaffected.
        let second = base_of(&segs[1]);
        assert!(log.read(second, 1).await.is_ok());
        log.close().await.unwrap();
    });
}

#[test]
fn a_cut_or_garbled_index_of_the_last_segment_costs_only_a_rescan() {
    for seed in 0..6u64 {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let mut next = rng(seed + 77);
            let config = LogConfig {
                segment_bytes: 1 << 30,
                index_interval_bytes: 512,
                ..small_config()
            };
            let batches = fill_flush_crash(&path, &config, 60, seed).await;
            let index = path.join(format!("{:020}.index", 0));
            let mut raw = std::fs::read(&index).unwrap();
            if seed % 2 == 0 {
                raw.truncate(next(raw.len() as u64 + 1) as usize);
            } else {
                let at = next(raw.len() as u64) as usize;
                raw[at] ^= 0x80;
            }
            std::fs::write(&index, &raw).unwrap();
            let (log, report) = PartitionLog::open(&path, config).await.unwrap();
            assert!(report.truncated_reason.is_none(), "seed {seed}: {report}");
            let want: Vec<u8> = batches.iter().flat_map(|b| b.1.iter().copied()).collect();
            assert_bytes!(read_all(&log).await.0, want, "seed {seed}: {report}");
            log.close().await.unwrap();
        });
    }
}

#[test]
fn an_unclean_reopen_scans_only_from_the_last_index_entry() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 1 << 30,
            index_interval_bytes: 4096,
            ..small_config()
        };
        let batches = fill_flush_crash(&path, &config, 400, 1).await;
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        let total: u64 = batches.iter().map(|b| b.1.len() as u64).sum();
        assert!(report.scanned_from_bytes > 0, "{report}");
        assert!(report.scanned_bytes < total / 4, "{report}");
        assert_eq!(report.scanned_from_bytes + report.scanned_bytes, total);
        assert_eq!(
            log.log_end_offset(),
            BatchHeader::parse(&batches.last().unwrap().1)
                .unwrap()
                .last_offset()
                + 1
        );
        log.close().await.unwrap();
    });
}

/// The `.log` files of a partition directory, oldest first.
pub(crate) fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn base_of(segment: &Path) -> i64 {
    segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A roll finishes the old segment in the background. A crash before the finish leaves
/// it with its preallocated zero tail and without its last index entries: an unclean
/// reopen scans it, trims the tail, and loses nothing.
#[test]
fn a_segment_left_unfinished_by_a_crash_during_a_roll_is_trimmed_and_kept_whole() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = small_config();
        let batches = fill_flush_crash(&path, &config, 300, 3).await;
        let segs = segment_files(&path);
        assert!(segs.len() >= 3, "{segs:?}");
        let unfinished = &segs[segs.len() - 2];
        let data_bytes = std::fs::metadata(unfinished).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(unfinished)
            .unwrap();
        f.set_len(config.preallocate_bytes).unwrap();
        f.sync_all().unwrap();
        std::fs::write(unfinished.with_extension("index"), b"").unwrap();
        std::fs::write(unfinished.with_extension("timeindex"), b"").unwrap();

        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let (got, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        let want: Vec<u8> = batches.iter().flat_map(|b| b.1.iter().copied()).collect();
        assert_bytes!(got, want);
        assert_eq!(std::fs::metadata(unfinished).unwrap().len(), data_bytes);
        assert_eq!(segment_files(&path), segs);
        log.close().await.unwrap();
    });
}

/// A roll writes into a file made ahead and names it in its background finish. A crash
/// before that leaves the newest segment under the temporary name: it never held data
/// reported durable, and the reopened log ends where the named segments end.
#[test]
fn a_segment_file_never_named_by_its_roll_is_dropped_on_reopen() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = small_config();
        let batches = fill_flush_crash(&path, &config, 300, 5).await;
        let segs = segment_files(&path);
        assert!(segs.len() >= 3, "{segs:?}");
        let last = segs.last().unwrap();
        let last_base = base_of(last);
        std::fs::rename(last, path.join(super::files::NEXT_SEGMENT_FILE)).unwrap();
        for ext in ["index", "timeindex"] {
            let _ = std::fs::remove_file(last.with_extension(ext));
        }

        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), last_base);
        let (got, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        let kept = batches
            .iter()
            .position(|(base, _)| *base >= last_base)
            .unwrap();
        let want: Vec<u8> = batches[..kept]
            .iter()
            .flat_map(|b| b.1.iter().copied())
            .collect();
        assert_bytes!(got, want);
        // Appending goes on from there, and rolls keep working through made-ahead files.
        let more = fill(&log, 100, 6).await;
        assert_eq!(more[0].0, last_base);
        log.close().await.unwrap();
        assert!(!path.join(super::files::NEXT_SEGMENT_FILE).exists());
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert!(report.clean_shutdown, "{report}");
        let (got, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        let want: Vec<u8> = batches[..kept]
            .iter()
            .chain(more.iter())
            .flat_map(|b| b.1.iter().copied())
            .collect();
        assert_bytes!(got, want);
        log.close().await.unwrap();
    });
}

/// If the unfinished segment lost its last batch (written out of order, never synced) while
/// the next segment has data, the log ends at the hole: the later segment is removed, no
/// offset is skipped, and appends continue from the hole.
#[test]
fn a_hole_at_the_end_of_an_unfinished_segment_ends_the_log_there() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = small_config();
        let batches = fill_flush_crash(&path, &config, 300, 4).await;
        let segs = segment_files(&path);
        assert!(segs.len() >= 3, "{segs:?}");
        let unfinished = &segs[segs.len() - 2];
        let next_base = base_of(&segs[segs.len() - 1]);
        // The unfinished segment's last batch: the one just before the next segment.
        let lost = batches
            .iter()
            .rposition(|(base, _)| *base < next_base)
            .unwrap();
        let len = std::fs::metadata(unfinished).unwrap().len();
        let lost_bytes = batches[lost].1.len() as u64;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(unfinished)
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![0u8; lost_bytes as usize], len - lost_bytes)
            .unwrap();
        f.set_len(config.preallocate_bytes).unwrap();
        f.sync_all().unwrap();

        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), batches[lost].0);
        let (got, err) = read_all(&log).await;
        assert!(err.is_none(), "{err:?}");
        let want: Vec<u8> = batches[..lost]
            .iter()
            .flat_map(|b| b.1.iter().copied())
            .collect();
        assert_bytes!(got, want);
        assert_eq!(segment_files(&path), segs[..segs.len() - 1].to_vec());
        let info = log.append(plain(3, 10), 0).await.unwrap();
        assert_eq!(info.base_offset, batches[lost].0);
        log.close().await.unwrap();

        // And the result is a log like any other: it reopens cleanly with the new batch.
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert!(report.clean_shutdown, "{report}");
        assert_eq!(log.log_end_offset(), batches[lost].0 + 3);
        log.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Model-based test

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            batches: u8,
            records: u8,
            value_bytes: u16,
        },
        Read {
            at: u16,
            max_bytes: u16,
        },
        Flush,
        Advance {
            ms: u16,
        },
        Retention,
        Reopen {
            clean: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..3, 1u8..20, 1u16..600).prop_map(|(batches, records, value_bytes)| Op::Append { batches, records, value_bytes }),
            4 => (any::<u16>(), 1u16..20_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
            1 => Just(Op::Flush),
            1 => (0u16..3000).prop_map(|ms| Op::Advance { ms }),
            1 => Just(Op::Retention),
            1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        ]
    }

    /// The model: every batch ever appended with its stamped bytes, and the start offset.
    struct Model {
        batches: Vec<(i64, i64, Vec<u8>)>,
        start: i64,
    }

    impl Model {
        fn end(&self) -> i64 {
            self.batches.last().map_or(self.start, |b| b.1 + 1)
        }
    }

    fn check(ops: Vec<Op>, seed: u64) {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = LogConfig {
                segment_bytes: 6 << 10,
                segment_ms: 5000,
                index_interval_bytes: 700,
                retention_ms: 20_000,
                retention_bytes: 40 << 10,
                tail_cache_bytes: 3 << 10,
                write_buffer_bytes: 8 << 10,
                preallocate_bytes: 32 << 10,
                ..LogConfig::default()
            };
            let (mut log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let mut model = Model {
                batches: Vec::new(),
                start: 0,
            };
            let mut now = 0i64;
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append {
                        batches,
                        records,
                        value_bytes,
                    } => {
                        let mut input = Vec::new();
                        let mut parts = Vec::new();
                        for i in 0..batches {
                            let b = encode_batch(
                                records as usize + i as usize,
                                value_bytes as usize,
                                now,
                                (-1, -1, -1),
                                Compression::None,
                            );
                            input.extend_from_slice(&b);
                            parts.push(b);
                        }
                        let info = log.append(Bytes::from(input), now).await.unwrap();
                        assert_eq!(info.base_offset, model.end(), "step {step}");
                        let mut offset = info.base_offset;
                        for b in parts {
                            let last =
                                BatchHeader::parse(&b).unwrap().last_offset_delta() as i64 + offset;
                            model.batches.push((offset, last, stamped(&b, offset)));
                            offset = last + 1;
                        }
                        assert_eq!(info.last_offset, offset - 1);
                    }
                    Op::Read { at, max_bytes } => {
                        let span = (model.end() - model.start + 1) as u64;
                        let offset = model.start + (at as u64 % span) as i64;
                        let r = log.read(offset, max_bytes as usize).await.unwrap();
                        assert_eq!(r.log_end_offset, model.end());
                        if offset == model.end() {
                            assert!(r.chunks.is_empty());
                            continue;
                        }
                        let got = concat(&r.chunks);
                        let first = model.batches.iter().position(|b| b.1 >= offset).unwrap();
                        let mut want = Vec::new();
                        let mut n = 0;
                        for b in &model.batches[first..] {
                            if want.len() >= got.len() {
                                break;
                            }
                            want.extend_from_slice(&b.2);
                            n += 1;
                        }
                        assert_bytes!(got, want, "step {step}: read({offset}, {max_bytes})");
                        assert!(n >= 1);
                        assert!(
                            n == 1 || got.len() <= max_bytes as usize,
                            "step {step}: {} > {max_bytes}",
                            got.len()
                        );
                    }
                    Op::Flush => {
                        assert_eq!(log.flush().await.unwrap(), model.end());
                        assert_eq!(log.dirty_bytes(), 0);
                    }
                    Op::Advance { ms } => now += ms as i64,
                    Op::Retention => {
                        log.apply_retention(now).await.unwrap();
                        let start = log.log_start_offset();
                        assert!(start >= model.start && start <= model.end());
                        assert!(start == model.end() || model.batches.iter().any(|b| b.0 == start));
                        model.batches.retain(|b| b.0 >= start);
                        model.start = start;
                    }
                    Op::Reopen { clean } => {
                        let durable = log.durable_offset();
                        if clean {
                            log.close().await.unwrap();
                        } else {
                            log.crash().await;
                        }
                        drop(log);
                        let (reopened, report) =
                            PartitionLog::open(&path, config.clone()).await.unwrap();
                        log = reopened;
                        assert_eq!(report.clean_shutdown, clean);
                        // A crash may leave a torn batch behind the last whole one: cut on reopen.
                        assert!(
                            !clean || report.truncated_reason.is_none(),
                            "step {step}: {report}"
                        );
                        let end = log.log_end_offset();
                        if clean {
                            assert_eq!(end, model.end());
                        } else {
                            assert!(
                                end >= durable && end <= model.end(),
                                "step {step}: {end} vs {durable}..{}",
                                model.end()
                            );
                            model.batches.retain(|b| b.1 < end);
                            assert_eq!(end, model.end(), "a crash keeps whole batches only");
                        }
                        assert_eq!(log.log_start_offset(), model.start);
                    }
                }
                let _ = seed;
            }
            let (got, err) = read_all(&log).await;
            assert!(err.is_none(), "{err:?}");
            let want: Vec<u8> = model
                .batches
                .iter()
                .flat_map(|b| b.2.iter().copied())
                .collect();
            assert_bytes!(got, want);
            log.close().await.unwrap();
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 24,
            max_shrink_iters: 200,
            // No regression files: the crate must not grow files outside src/log.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn the_log_agrees_with_an_in_memory_model(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
            check(ops, seed);
        }
    }
}

#[test]
fn a_segment_truncated_under_a_running_log_reads_as_a_storage_error_not_a_panic() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        // More than the tail cache holds, so the first batches are read from the file.
        let mut bases = Vec::new();
        for i in 0..30 {
            bases.push(log.append(plain(10, i), 0).await.unwrap().base_offset);
        }
        log.flush().await.unwrap();
        let first_len = plain(10, 0).len() as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(last_segment(&path))
            .unwrap()
            .set_len(first_len + 100)
            .unwrap();
        // What is still whole is served; what is gone is an error the fetch can answer.
        let read = log.read(0, 1 << 20).await.unwrap();
        assert!(
            read.bytes >= first_len as usize,
            "the valid prefix is served"
        );
        let gone = log.read(bases[5], 1 << 20).await;
        assert!(
            matches!(gone, Err(LogError::ShortRead { .. })),
            "{:?}",
            gone.map(|r| r.bytes)
        );
        // The log stays usable for appends.
        log.append(plain(1, 99), 0).await.unwrap();
    });
}
