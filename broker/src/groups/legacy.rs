//! The committed offsets of earlier versions, which kept them per shard in unreplicated logs
//! (`<data_dir>/__consumer_offsets/<shard>/<generation>/`, the generation named by
//! `CURRENT`), imported once into the `__consumer_offsets` topic.
//!
//! At start, shard 0 reads every such log ([`read`]) into a [`LegacyOffsets`]: the latest
//! value of each key (a later record of one log wins; between logs of different shards, the
//! later commit time). When a shard loads an offsets partition, it takes that partition's
//! legacy offsets ([`LegacyOffsets::take`]) and the coordinator writes those whose keys the
//! partition does not hold yet, before serving it; so a key imported once is never imported
//! again over a newer commit. Once every partition that had legacy offsets has imported
//! them, the old directory is renamed to `__consumer_offsets.imported` (kept, not deleted:
//! a user may want it back); a data dir without it starts with nothing to import.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::coordinator::read_log;
use super::offsets_log::{OffsetRecord, OffsetValue};
use super::partition_for;
use crate::log::{LogConfig, PartitionLog};

/// Directory of the per-shard offsets logs of earlier versions.
pub const LEGACY_DIR: &str = "__consumer_offsets";

/// What that directory is renamed to once imported.
pub const IMPORTED_DIR: &str = "__consumer_offsets.imported";

/// Legacy offsets waiting to be imported.
#[derive(Debug)]
pub struct LegacyOffsets {
    dir: PathBuf,
    records: Vec<OffsetRecord>,
    /// Offsets partitions that have imported their share.
    done: BTreeSet<i32>,
}

/// Read every legacy offsets log under `data_dir`; None if there is none.
pub async fn read(
    data_dir: &Path,
    log_config: &LogConfig,
) -> Result<Option<LegacyOffsets>, String> {
    let dir = data_dir.join(LEGACY_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut shards: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<usize>().is_ok())
        .map(|e| e.path())
        .collect();
    shards.sort();
    let mut latest: HashMap<(String, String, i32), Option<OffsetValue>> = HashMap::new();
    for shard_dir in &shards {
        let generation = match std::fs::read_to_string(shard_dir.join("CURRENT")) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                format!(
                    "{}/CURRENT: bad generation '{}'",
                    shard_dir.display(),
                    text.trim()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("reading {}/CURRENT: {e}", shard_dir.display())),
        };
        let log_dir = shard_dir.join(generation.to_string());
        if !log_dir.exists() {
            continue;
        }
        let (log, _) = PartitionLog::open(&log_dir, log_config.clone())
            .await
            .map_err(|e| format!("opening legacy offsets log {}: {e}", log_dir.display()))?;
        let records = read_log(&log).await;
        let _ = log.close().await;
        let mut own: HashMap<(String, String, i32), Option<OffsetValue>> = HashMap::new();
        for (_, r) in records? {
            own.insert((r.group, r.topic, r.partition), r.value);
        }
        for (key, value) in own {
            let newer = match (latest.get(&key), &value) {
                (Some(Some(old)), Some(new)) => new.commit_time_ms >= old.commit_time_ms,
                (Some(Some(_)), None) => false,
                _ => true,
            };
            if newer {
                latest.insert(key, value);
            }
        }
    }
    let mut records: Vec<OffsetRecord> = latest
        .into_iter()
        .filter_map(|((group, topic, partition), value)| {
            value.map(|v| OffsetRecord {
                group,
                topic,
                partition,
                value: Some(v),
            })
        })
        .collect();
    records
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    tracing::info!(
        dir = %dir.display(),
        offsets = records.len(),
        "found committed offsets of an earlier version to import"
    );
    Ok(Some(LegacyOffsets {
        dir,
        records,
        done: BTreeSet::new(),
    }))
}

impl LegacyOffsets {
    /// A set of legacy offsets (tests; `read` in the broker).
    pub fn new(dir: PathBuf, records: Vec<OffsetRecord>) -> LegacyOffsets {
        LegacyOffsets {
            dir,
            records,
            done: BTreeSet::new(),
        }
    }

    /// The legacy offsets of offsets partition `partition` (of `count`), not yet imported.
    pub fn take(&self, partition: i32, count: usize) -> Vec<OffsetRecord> {
        if self.done.contains(&partition) {
            return Vec::new();
        }
        self.records
            .iter()
            .filter(|r| partition_for(&r.group, count) == partition)
            .cloned()
            .collect()
    }

    /// Partition `partition` imported its share. True once every partition with legacy
    /// offsets has: the old directory may be retired.
    pub fn mark_done(&mut self, partition: i32, count: usize) -> bool {
        self.done.insert(partition);
        self.records
            .iter()
            .all(|r| self.done.contains(&partition_for(&r.group, count)))
    }

    /// Rename the old directory so that no later start imports it again.
    pub fn retire(&self) -> std::io::Result<()> {
        let target = self.dir.with_file_name(IMPORTED_DIR);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&self.dir, &target)?;
        if let Some(parent) = self.dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(group: &str, offset: i64) -> OffsetRecord {
        OffsetRecord {
            group: group.into(),
            topic: "t".into(),
            partition: 0,
            value: Some(OffsetValue {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_time_ms: 1,
            }),
        }
    }

    #[test]
    fn each_partition_takes_its_groups_and_the_import_ends_when_all_have() {
        let groups = ["a", "b", "orders", "legacy-group"];
        let legacy = LegacyOffsets::new(
            PathBuf::from("/nonexistent"),
            groups.iter().map(|g| record(g, 7)).collect(),
        );
        let mut legacy = legacy;
        let count = 5;
        let mut seen = 0;
        let partitions: BTreeSet<i32> = groups.iter().map(|g| partition_for(g, count)).collect();
        for p in 0..count as i32 {
            let taken = legacy.take(p, count);
            assert!(taken.iter().all(|r| partition_for(&r.group, count) == p));
            seen += taken.len();
        }
        assert_eq!(
            seen,
            groups.len(),
            "every legacy offset goes to exactly one partition"
        );
        let mut finished = false;
        for p in &partitions {
            assert!(!finished, "not done before every partition imported");
            finished = legacy.mark_done(*p, count);
            assert!(legacy.take(*p, count).is_empty(), "never imported twice");
        }
        assert!(finished);
    }
}
