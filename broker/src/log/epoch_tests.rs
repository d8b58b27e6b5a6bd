//! Behaviour tests of leader epochs and the high watermark: epochs stamped into produced
//! batches (disk and tail cache alike, CRC intact), kept byte for byte on a follower, the
//! epoch cache through appends, reopens and crashes that lose its checkpoint, and reads
//! and long polls limited by the high watermark.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::batch::tests::plain;
use super::batch::BatchHeader;
use super::tests::{concat, read_all, run, small_config, tempdir};
use super::{LogConfig, PartitionLog};

/// The bytes a batch has in the log once stamped with `base_offset` and `epoch`.
pub(crate) fn stamped_with(batch: &Bytes, base_offset: i64, epoch: i32) -> Vec<u8> {
    let mut v = batch.to_vec();
    v[..8].copy_from_slice(&base_offset.to_be_bytes());
    v[12..16].copy_from_slice(&epoch.to_be_bytes());
    v
}

/// Every batch of `bytes` (concatenated whole batches), each checked against its CRC.
fn headers(bytes: &[u8]) -> Vec<BatchHeader> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let h = BatchHeader::validate(&bytes[at..], usize::MAX).expect("valid batch, CRC ok");
        at += h.total_bytes();
        out.push(h);
    }
    out
}

fn leader_epoch_file(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("leader-epoch-checkpoint")).unwrap_or_default()
}

#[test]
fn a_set_leader_epoch_is_stamped_into_every_produced_batch_in_cache_and_on_disk() {
    for log_append_time in [false, true] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = LogConfig {
                log_append_time,
                ..small_config()
            };
            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let a = plain(3, 1000);
            let mut two = BytesMut::new();
            two.extend_from_slice(&plain(2, 2000));
            two.extend_from_slice(&plain(4, 3000));
            assert_eq!(log.leader_epoch(), -1);
            log.append(a.clone(), 5).await.unwrap();
            log.set_leader_epoch(7);
            log.append(two.freeze(), 5).await.unwrap();

            let cached = concat(&log.read(0, 1 << 20).await.unwrap().chunks);
            let epochs: Vec<i32> = headers(&cached)
                .iter()
                .map(|h| h.partition_leader_epoch())
                .collect();
            assert_eq!(
                epochs,
                vec![0, 7, 7],
                "unset: the producer's own epoch stays"
            );
            if !log_append_time {
                assert_eq!(cached[..a.len()], stamped_with(&a, 0, 0)[..]);
            }
            log.close().await.unwrap();
            let (log, _) = PartitionLog::open(&path, config).await.unwrap();
            let (on_disk, err) = read_all(&log).await;
            assert!(err.is_none(), "{err:?}");
            assert_eq!(on_disk, cached, "disk and cache serve the same bytes");
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_follower_keeps_the_leaders_epochs_byte_for_byte() {
    let dir = tempdir();
    let (leader_path, follower_path) = (dir.path().join("l"), dir.path().join("f"));
    run(move || async move {
        let (leader, _) = PartitionLog::open(&leader_path, small_config())
            .await
            .unwrap();
        let (follower, _) = PartitionLog::open(&follower_path, small_config())
            .await
            .unwrap();
        leader.set_leader_epoch(3);
        leader.append(plain(3, 1), 0).await.unwrap();
        leader.set_leader_epoch(4);
        leader.append(plain(2, 2), 0).await.unwrap();
        let fetched = concat(&leader.read(0, 1 << 20).await.unwrap().chunks);
        // A follower's own epoch, if someone set one, is never stamped on fetched batches.
        follower.set_leader_epoch(9);

        follower
            .append_replica(Bytes::from(fetched.clone()), 0)
            .await
            .unwrap();

        assert_eq!(
            concat(&follower.read(0, 1 << 20).await.unwrap().chunks),
            fetched
        );
        assert_eq!(follower.epoch_entries(), vec![(3, 0), (4, 3)]);
        assert_eq!(follower.epoch_entries(), leader.epoch_entries());
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

#[test]
fn the_epoch_cache_records_where_each_newer_epoch_starts_and_survives_a_reopen() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert_eq!(log.latest_epoch(), None);
        assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
        log.set_leader_epoch(2);
        log.append(plain(3, 1), 0).await.unwrap();
        log.append(plain(2, 1), 0).await.unwrap();
        log.set_leader_epoch(5);
        log.append(plain(4, 1), 0).await.unwrap();
        // A replica batch carrying an older epoch adds nothing.
        let old = Bytes::from(stamped_with(&plain(1, 1), 9, 4));
        log.append_replica(old, 0).await.unwrap();

        assert_eq!(log.epoch_entries(), vec![(2, 0), (5, 5)]);
        assert_eq!(log.latest_epoch(), Some(5));
        assert_eq!(log.end_offset_for_epoch(5), (5, 10), "latest: the log end");
        assert_eq!(log.end_offset_for_epoch(2), (2, 5));
        assert_eq!(
            log.end_offset_for_epoch(3),
            (2, 5),
            "between: the floor epoch"
        );
        assert_eq!(log.end_offset_for_epoch(1), (-1, -1), "below the first");
        assert_eq!(log.end_offset_for_epoch(6), (-1, -1), "above the latest");
        assert_eq!(leader_epoch_file(&path), "0\n2\n2 0\n5 5\n");
        log.close().await.unwrap();

        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(2, 0), (5, 5)]);
        assert_eq!(
            log.leader_epoch(),
            -1,
            "the stamping epoch is not persisted"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn an_epoch_whose_checkpoint_was_lost_is_recovered_from_the_log_after_a_crash() {
    for lost in ["deleted", "stale", "garbled"] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
            log.set_leader_epoch(2);
            log.append(plain(3, 1), 0).await.unwrap();
            let stale = leader_epoch_file(&path);
            log.set_leader_epoch(5);
            log.append(plain(4, 1), 0).await.unwrap();
            log.flush().await.unwrap();
            log.crash().await;
            drop(log);
            let file = path.join("leader-epoch-checkpoint");
            match lost {
                "deleted" => std::fs::remove_file(&file).unwrap(),
                "stale" => std::fs::write(&file, stale).unwrap(),
                _ => std::fs::write(&file, "0\n7\n1 x\n").unwrap(),
            }

            let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();

            assert_eq!(log.epoch_entries(), vec![(2, 0), (5, 3)], "{lost}");
            assert_eq!(leader_epoch_file(&path), "0\n2\n2 0\n5 3\n", "{lost}");
            log.close().await.unwrap();
        });
    }
}

#[test]
fn epochs_of_batches_a_crash_cut_off_leave_the_cache() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        log.set_leader_epoch(2);
        log.append(plain(3, 1), 0).await.unwrap();
        log.flush().await.unwrap();
        log.set_leader_epoch(5);
        // Checkpointed before its bytes reach the device, then lost with the staging buffer.
        log.append(plain(4, 1), 0).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(2, 0), (5, 3)]);
        log.crash().await;
        drop(log);

        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();

        assert_eq!(report.log_end_offset, 3);
        assert_eq!(log.epoch_entries(), vec![(2, 0)]);
        assert_eq!(log.end_offset_for_epoch(2), (2, 3));
        assert_eq!(leader_epoch_file(&path), "0\n1\n2 0\n");
        log.close().await.unwrap();
    });
}

#[test]
fn consumers_read_only_whole_batches_below_the_high_watermark() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        for n in [3, 5, 2] {
            log.append(plain(n, 1), 0).await.unwrap(); // offsets 0-2, 3-7, 8-9
        }
        let batch_counts = |r: &super::ReadResult| headers(&concat(&r.chunks)).len();
        // Not replicated: the log end is the limit.
        assert_eq!(log.high_watermark(), 10);
        assert!(!log.has_high_watermark());
        assert_eq!(log.read(0, 1 << 20).await.unwrap().high_watermark, 10);

        for reopened in [false, true] {
            let log = if reopened {
                // The same from disk: the tail cache is empty after a reopen.
                log.close().await.unwrap();
                PartitionLog::open(&path, small_config()).await.unwrap().0
            } else {
                log.clone()
            };
            log.set_high_watermark(Some(3));
            assert!(log.has_high_watermark());
            assert_eq!(log.high_watermark(), 3);
            let hw = log.high_watermark();
            let r = log.read_upto(0, 1 << 20, hw).await.unwrap();
            assert_eq!(
                (batch_counts(&r), r.high_watermark, r.log_end_offset),
                (1, 3, 10)
            );
            assert!(log
                .read_upto(3, 1 << 20, hw)
                .await
                .unwrap()
                .chunks
                .is_empty());
            assert!(log
                .read_upto(9, 1 << 20, hw)
                .await
                .unwrap()
                .chunks
                .is_empty());
            assert!(log
                .read_upto(10, 1 << 20, hw)
                .await
                .unwrap()
                .chunks
                .is_empty());
            assert!(
                log.read_upto(11, 1 << 20, hw).await.is_err(),
                "past the log end"
            );
            // A follower's read still goes to the log end.
            assert_eq!(batch_counts(&log.read(0, 1 << 20).await.unwrap()), 3);
            // A limit inside a batch serves the batches before it only.
            assert_eq!(
                batch_counts(&log.read_upto(0, 1 << 20, 5).await.unwrap()),
                1
            );
            assert!(log
                .read_upto(4, 1 << 20, 5)
                .await
                .unwrap()
                .chunks
                .is_empty());

            log.set_high_watermark(Some(2));
            assert_eq!(log.high_watermark(), 3, "never moves back");
            log.set_high_watermark(Some(100));
            assert_eq!(log.high_watermark(), 10, "capped at the log end");
            let r = log
                .read_upto(0, 1 << 20, log.high_watermark())
                .await
                .unwrap();
            assert_eq!(batch_counts(&r), 3);
            log.set_high_watermark(None);
            assert_eq!(log.high_watermark(), 10);
            if reopened {
                log.close().await.unwrap();
            }
        }
    });
}

#[test]
fn a_consumers_long_poll_wakes_when_the_high_watermark_passes_its_offset() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        log.set_high_watermark(Some(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        let (consumer_woke, follower_woke) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        let consumer = {
            let (log, woke) = (log.clone(), consumer_woke.clone());
            glommio::spawn_local(async move {
                let ok = log.wait_for_data_upto(0, deadline, true).await;
                woke.set(true);
                ok
            })
        };
        let follower = {
            let (log, woke) = (log.clone(), follower_woke.clone());
            glommio::spawn_local(async move {
                let ok = log.wait_for_data_upto(0, deadline, false).await;
                woke.set(true);
                ok
            })
        };
        glommio::timer::sleep(Duration::from_millis(20)).await;

        log.append(plain(3, 1), 0).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(20)).await;

        assert!(follower_woke.get(), "a follower waits for the log end");
        assert!(
            !consumer_woke.get(),
            "a consumer waits for the high watermark"
        );
        log.set_high_watermark(Some(3));
        assert!(consumer.await);
        assert!(follower.await);
        // At the deadline with the high watermark still at the offset: false.
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(!log.wait_for_data_upto(3, soon, true).await);
        log.close().await.unwrap();
    });
}
