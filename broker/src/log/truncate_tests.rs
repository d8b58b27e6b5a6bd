//! Behaviour tests of cutting a log back: `truncate_to` inside a batch and across segments,
//! appends after the cut, reopens (clean and after a crash) giving the same log, producer
//! state and epochs after a cut, `reset_to`, and a model-based property test of random
//! appends, truncations, resets and reopens.

use std::path::Path;

use bytes::Bytes;

use super::batch::tests::plain;
use super::batch::BatchHeader;
use super::epoch_tests::stamped_with;
use super::tests::{concat, idem, read_all, run, segment_files, small_config, tempdir};
use super::{LogConfig, LogError, PartitionLog};

/// Segments of about four batches of `plain(n, _)`, so cuts cross segment boundaries.
fn tiny_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 2 << 10,
        index_interval_bytes: 300,
        tail_cache_bytes: 1 << 10,
        write_buffer_bytes: 8 << 10,
        preallocate_bytes: 16 << 10,
        ..LogConfig::default()
    }
}

/// Appends `sizes` batches (records per batch) and returns each batch's stored bytes with
/// its base and last offsets.
async fn fill(log: &PartitionLog, sizes: &[usize]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for &n in sizes {
        let b = plain(n, 1);
        let info = log.append(b.clone(), 0).await.unwrap();
        let epoch = log.leader_epoch().max(0);
        out.push((
            info.base_offset,
            info.last_offset,
            stamped_with(&b, info.base_offset, epoch),
        ));
    }
    out
}

fn joined(batches: &[(i64, i64, Vec<u8>)]) -> Vec<u8> {
    batches.iter().flat_map(|b| b.2.iter().copied()).collect()
}

fn same_bytes(got: &[u8], want: &[u8], context: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{context}: bytes differ at {at}: got {}, want {}",
            got.len(),
            want.len()
        );
    }
}

async fn reopen(
    log: std::rc::Rc<PartitionLog>,
    path: &Path,
    config: &LogConfig,
    clean: bool,
) -> std::rc::Rc<PartitionLog> {
    if clean {
        log.close().await.unwrap();
    } else {
        log.crash().await;
    }
    drop(log);
    PartitionLog::open(path, config.clone()).await.unwrap().0
}

#[test]
fn truncating_inside_a_batch_removes_it_whole_and_appends_continue_after_it() {
    for clean in [true, false] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
            let batches = fill(&log, &[3, 5, 2]).await; // 0-2, 3-7, 8-9

            assert_eq!(log.truncate_to(5).await.unwrap(), 3);

            assert_eq!(
                (
                    log.log_end_offset(),
                    log.durable_offset(),
                    log.dirty_bytes()
                ),
                (3, 3, 0)
            );
            same_bytes(&read_all(&log).await.0, &batches[0].2, "after the cut");
            assert!(log.read(3, 100).await.unwrap().chunks.is_empty());
            assert!(matches!(
                log.read(4, 100).await,
                Err(LogError::OffsetOutOfRange { end: 3, .. })
            ));
            let next = fill(&log, &[4]).await;
            assert_eq!((next[0].0, next[0].1), (3, 6));
            let want = joined(&[batches[0].clone(), next[0].clone()]);
            same_bytes(&read_all(&log).await.0, &want, "appended after the cut");
            log.flush().await.unwrap();

            let log = reopen(log, &path, &small_config(), clean).await;

            assert_eq!(log.log_end_offset(), 7);
            same_bytes(&read_all(&log).await.0, &want, "reopened");
            log.close().await.unwrap();
        });
    }
}

#[test]
fn truncating_across_segments_deletes_the_segments_above_and_reopens_the_same() {
    for clean in [true, false] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = tiny_segments();
            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let batches = fill(&log, &[3; 24]).await;
            log.flush().await.unwrap();
            let segments_before = log.segment_bases();
            assert!(segments_before.len() >= 4, "{segments_before:?}");
            // Inside a batch of the second segment.
            let offset = segments_before[1] + 4;
            let kept: Vec<_> = batches.iter().filter(|b| b.1 < offset).cloned().collect();
            let end = kept.last().unwrap().1 + 1;

            assert_eq!(log.truncate_to(offset).await.unwrap(), end);

            assert_eq!(log.segment_bases(), segments_before[..2].to_vec());
            assert_eq!(segment_files(&path).len(), 2, "files of later segments go");
            same_bytes(&read_all(&log).await.0, &joined(&kept), "after the cut");
            let more = fill(&log, &[3; 10]).await;
            assert_eq!(more[0].0, end);
            assert!(
                log.segment_bases().len() > 2,
                "rolls again from the cut segment"
            );
            let want = joined(&[kept, more].concat());
            same_bytes(&read_all(&log).await.0, &want, "appended after the cut");
            log.flush().await.unwrap();

            let log = reopen(log, &path, &config, clean).await;

            same_bytes(&read_all(&log).await.0, &want, "reopened");
            log.close().await.unwrap();
        });
    }
}

#[test]
fn truncating_at_the_end_changes_nothing_and_below_the_start_is_refused() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let config = LogConfig {
            retention_bytes: 0,
            ..tiny_segments()
        };
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        let batches = fill(&log, &[3; 12]).await;
        assert_eq!(log.truncate_to(36).await.unwrap(), 36);
        assert_eq!(log.truncate_to(1000).await.unwrap(), 36);
        log.apply_retention(0).await.unwrap();
        let start = log.log_start_offset();
        assert!(start > 0);

        assert!(matches!(
            log.truncate_to(start - 1).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // At the log start: everything goes, the log stays where it starts.
        assert_eq!(log.truncate_to(start).await.unwrap(), start);
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (start, start)
        );
        assert!(!log.is_failed());
        let next = fill(&log, &[2]).await;
        assert_eq!(next[0].0, start);
        let _ = batches;
        log.close().await.unwrap();
    });
}

#[test]
fn after_a_truncation_a_retry_of_a_removed_batch_is_appended_and_of_a_kept_one_is_a_duplicate() {
    for snapshot_before_cut in [false, true] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = tiny_segments();
            let (mut log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            if snapshot_before_cut {
                // A roll leaves a producer snapshot below the cut: replayed from there.
                fill(&log, &[3; 20]).await;
            }
            let base = log.log_end_offset();
            for seq in [0, 3, 6] {
                log.append(idem(7, 0, seq, 3), 0).await.unwrap();
            }
            assert_eq!(log.truncate_to(base + 3).await.unwrap(), base + 3);

            for reopened in [false, true] {
                if reopened {
                    log.truncate_to(base + 3).await.unwrap();
                    log = reopen(log, &path, &config, true).await;
                }
                let kept = log.append(idem(7, 0, 0, 3), 0).await.unwrap();
                assert!(kept.duplicate, "reopened {reopened}");
                assert_eq!((kept.base_offset, kept.last_offset), (base, base + 2));
                let removed = log.append(idem(7, 0, 3, 3), 0).await.unwrap();
                assert!(!removed.duplicate, "reopened {reopened}");
                assert_eq!(removed.base_offset, base + 3);
                assert!(log.append(idem(7, 0, 3, 3), 0).await.unwrap().duplicate);
            }
            log.close().await.unwrap();
        });
    }
}

#[test]
fn truncation_drops_the_epochs_it_cuts_off_and_caps_the_high_watermark() {
    let dir = tempdir();
    let path = dir.path().join("p");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        log.set_leader_epoch(2);
        fill(&log, &[3, 3]).await;
        log.set_leader_epoch(5);
        fill(&log, &[3]).await;
        log.set_leader_epoch(6);
        fill(&log, &[3]).await;
        log.set_high_watermark(Some(12));
        assert_eq!(log.epoch_entries(), vec![(2, 0), (5, 6), (6, 9)]);

        assert_eq!(log.truncate_to(7).await.unwrap(), 6);

        assert_eq!(log.epoch_entries(), vec![(2, 0)]);
        assert_eq!(log.end_offset_for_epoch(2), (2, 6));
        assert_eq!(log.high_watermark(), 6);
        log.set_high_watermark(Some(4));
        assert_eq!(log.high_watermark(), 6);
        // The leader's epoch goes on being stamped and cached after the cut.
        fill(&log, &[1]).await;
        assert_eq!(log.epoch_entries(), vec![(2, 0), (6, 6)]);
        log.close().await.unwrap();
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(2, 0), (6, 6)]);
        log.close().await.unwrap();
    });
}

#[test]
fn reset_starts_an_empty_log_at_the_offset_after_or_inside_the_old_one() {
    for offset in [1000, 0, 9] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = tiny_segments();
            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            log.set_leader_epoch(4);
            fill(&log, &[3; 20]).await;
            log.append(idem(7, 0, 0, 3), 0).await.unwrap();
            log.set_high_watermark(Some(30));

            log.reset_to(offset).await.unwrap();

            let bounds = (log.log_start_offset(), log.log_end_offset());
            assert_eq!(bounds, (offset, offset));
            assert_eq!(log.durable_offset(), offset);
            assert_eq!(log.high_watermark(), offset);
            assert_eq!(log.latest_epoch(), None);
            assert!(log.read(offset, 100).await.unwrap().chunks.is_empty());
            assert_eq!(segment_files(&path).len(), 1);
            // Producer state went with the batches: the old retry is new data now.
            let retry = log.append(idem(7, 0, 0, 3), 0).await.unwrap();
            assert!(!retry.duplicate);
            assert_eq!(retry.base_offset, offset);
            assert_eq!(log.epoch_entries(), vec![(4, offset)]);
            let want = concat(&log.read(offset, 1 << 20).await.unwrap().chunks);

            log.flush().await.unwrap();
            let log = reopen(log, &path, &config, false).await;
            assert_eq!(
                (log.log_start_offset(), log.log_end_offset()),
                (offset, offset + 3)
            );
            same_bytes(&read_all(&log).await.0, &want, "reopened after a crash");
            let log = reopen(log, &path, &config, true).await;
            same_bytes(&read_all(&log).await.0, &want, "reopened cleanly");
            assert!(log.append(idem(7, 0, 0, 3), 0).await.unwrap().duplicate);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_crash_between_the_steps_of_a_truncation_reopens_a_prefix_of_the_old_log() {
    // What each crash point of a truncation leaves on disk: nothing removed yet, the
    // newest segment gone, every later segment gone and the cut made. Simulated by stopping
    // the log, doing those steps by hand, and reopening; the truncation then completes.
    for step in 0..3 {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = tiny_segments();
            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let batches = fill(&log, &[3; 24]).await;
            let bases = log.segment_bases();
            let cut_base = bases[1];
            log.close().await.unwrap();
            drop(log);
            let segments = segment_files(&path);
            if step >= 1 {
                // The newest segment is gone.
                std::fs::remove_file(segments.last().unwrap()).unwrap();
            }
            if step >= 2 {
                for s in &segments[2..] {
                    let _ = std::fs::remove_file(s);
                }
                // The cut itself, at a batch boundary of the second segment.
                let keep: usize = batches
                    .iter()
                    .filter(|b| b.0 >= cut_base && b.1 < cut_base + 6)
                    .map(|b| b.2.len())
                    .sum();
                let file = std::fs::OpenOptions::new().write(true).open(&segments[1]);
                file.unwrap().set_len(keep as u64).unwrap();
            }

            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();

            let end = log.log_end_offset();
            let prefix: Vec<_> = batches.iter().filter(|b| b.1 < end).cloned().collect();
            assert_eq!(prefix.last().unwrap().1 + 1, end, "step {step}");
            same_bytes(&read_all(&log).await.0, &joined(&prefix), "a prefix");
            log.truncate_to(cut_base + 6).await.unwrap();
            same_bytes(
                &read_all(&log).await.0,
                &joined(&batches[..prefix.iter().filter(|b| b.1 < cut_base + 6).count()]),
                "cut again",
            );
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_compacted_log_is_cut_after_its_last_kept_batch_below_the_offset() {
    use super::cleaner::{CleanerSettings, CompactionConfig};
    for at in [5, 17, 30, 45, 58, 66] {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = LogConfig {
                compaction: CompactionConfig {
                    compact: true,
                    ..CompactionConfig::default()
                },
                ..tiny_segments()
            };
            let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            // Every batch holds key-0..key-3: cleaning empties all but each segment's last.
            fill(&log, &[4; 20]).await;
            let settings = CleanerSettings {
                dedupe_buffer_bytes: 1 << 20,
                ..CleanerSettings::default()
            };
            assert!(log.clean(&settings, 0).await.unwrap().is_some());
            let mut kept = Vec::new();
            let mut offset = log.log_start_offset();
            while offset < log.log_end_offset() {
                let r = log.read(offset, 1).await.unwrap();
                let bytes = concat(&r.chunks);
                let h = BatchHeader::parse(&bytes).unwrap();
                kept.push((h.base_offset(), h.last_offset(), bytes));
                offset = h.last_offset() + 1;
            }
            assert!(kept.len() < 20, "cleaning removed batches");
            kept.retain(|b| b.1 < at);
            let want_end = kept.last().map_or(log.log_start_offset(), |b| b.1 + 1);

            assert_eq!(log.truncate_to(at).await.unwrap(), want_end, "at {at}");

            let more = fill(&log, &[4, 4]).await;
            assert_eq!(more[0].0, want_end);
            let want = joined(&[kept, more].concat());
            same_bytes(&read_all(&log).await.0, &want, "after the cut");
            log.flush().await.unwrap();
            let log = reopen(log, &path, &config, false).await;
            same_bytes(&read_all(&log).await.0, &want, "after a crash");
            let log = reopen(log, &path, &config, true).await;
            same_bytes(&read_all(&log).await.0, &want, "after a clean reopen");
            log.close().await.unwrap();
        });
    }
}

mod model {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Append { records: u8, new_epoch: bool },
        Truncate { at: u16 },
        Reset { ahead: u8 },
        Flush,
        Reopen { clean: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..6, prop::bool::weighted(0.2))
                .prop_map(|(records, new_epoch)| Op::Append { records, new_epoch }),
            2 => any::<u16>().prop_map(|at| Op::Truncate { at }),
            1 => (0u8..50).prop_map(|ahead| Op::Reset { ahead }),
            1 => Just(Op::Flush),
            1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        ]
    }

    /// The epoch cache the model's batches imply: each epoch newer than all before it, at
    /// the first batch carrying it (epochs go only with the batches that carry them).
    fn epochs_of(batches: &[(i64, i64, Vec<u8>)]) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = Vec::new();
        for (base, _, bytes) in batches {
            let epoch = BatchHeader::parse(bytes).unwrap().partition_leader_epoch();
            if out.last().is_none_or(|e| epoch > e.0) {
                out.push((epoch, *base));
            }
        }
        out
    }

    fn check(ops: Vec<Op>) {
        let dir = tempdir();
        let path = dir.path().join("p");
        run(move || async move {
            let config = tiny_segments();
            let (mut log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
            let mut batches: Vec<(i64, i64, Vec<u8>)> = Vec::new();
            let mut start = 0i64;
            let mut epoch = 0;
            log.set_leader_epoch(epoch);
            for (step, op) in ops.into_iter().enumerate() {
                let end = batches.last().map_or(start, |b| b.1 + 1);
                match op {
                    Op::Append { records, new_epoch } => {
                        if new_epoch {
                            epoch += 1;
                            log.set_leader_epoch(epoch);
                        }
                        let b: Bytes = plain(records as usize, 1);
                        let info = log.append(b.clone(), 0).await.unwrap();
                        assert_eq!(info.base_offset, end, "step {step}");
                        batches.push((end, info.last_offset, stamped_with(&b, end, epoch)));
                    }
                    Op::Truncate { at } => {
                        let span = (end - start + 2) as u64;
                        let offset = start + (at as u64 % span) as i64;
                        let got = log.truncate_to(offset).await.unwrap();
                        batches.retain(|b| b.1 < offset);
                        let want = batches.last().map_or(start, |b| b.1 + 1);
                        assert_eq!(got, want, "step {step}: truncate_to({offset})");
                    }
                    Op::Reset { ahead } => {
                        start = end + ahead as i64 - 25;
                        start = start.max(0);
                        log.reset_to(start).await.unwrap();
                        batches.clear();
                    }
                    Op::Flush => {
                        log.flush().await.unwrap();
                    }
                    Op::Reopen { clean } => {
                        let durable = log.durable_offset();
                        log = reopen(log, &path, &config, clean).await;
                        log.set_leader_epoch(epoch);
                        let got = log.log_end_offset();
                        assert!(
                            got >= durable && got <= end,
                            "step {step}: {got} vs {durable}..{end}"
                        );
                        batches.retain(|b| b.1 < got);
                        assert_eq!(
                            got,
                            batches.last().map_or(start, |b| b.1 + 1),
                            "step {step}"
                        );
                    }
                }
                assert_eq!(log.log_start_offset(), start, "step {step}");
                assert_eq!(log.epoch_entries(), epochs_of(&batches), "step {step}");
            }
            let (got, err) = read_all(&log).await;
            assert!(err.is_none(), "{err:?}");
            same_bytes(&got, &joined(&batches), "the whole log");
            log.close().await.unwrap();
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            max_shrink_iters: 100,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn truncations_resets_and_reopens_agree_with_a_model(ops in proptest::collection::vec(op(), 1..50)) {
            check(ops);
        }
    }
}
