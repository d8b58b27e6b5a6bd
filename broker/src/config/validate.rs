//! Checks of a loaded configuration: each refusal names the setting, its value and what is
//! allowed, so a broker that will not start says why in one line.

use super::Config;

impl Config {
    pub(super) fn validate(&self, cores_available: usize) -> Result<(), String> {
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(msg) };
        check(
            self.node_id >= 0,
            format!("node_id: must be 0 or more, got {}", self.node_id),
        )?;
        check(
            self.default_replication_factor >= 1,
            format!(
                "default_replication_factor: must be at least 1, got {}",
                self.default_replication_factor
            ),
        )?;
        check(
            self.min_insync_replicas >= 1,
            format!(
                "min_insync_replicas: must be at least 1, got {}",
                self.min_insync_replicas
            ),
        )?;
        check(
            self.replica_fetch_max_bytes >= 1024
                && self.replica_fetch_response_max_bytes >= self.replica_fetch_max_bytes
                && (self.replica_fetch_response_max_bytes as usize)
                    <= shardlog_client::frame::FRAME_BYTES_MAX / 2,
            format!(
                "replica_fetch_response_max_bytes: {} must be at least replica_fetch_max_bytes \
                 {} (itself at least 1024) and at most {} (half the largest response frame \
                 a follower reads)",
                self.replica_fetch_response_max_bytes,
                self.replica_fetch_max_bytes,
                shardlog_client::frame::FRAME_BYTES_MAX / 2
            ),
        )?;
        check(
            self.replica_fetch_wait_max_ms < self.replica_lag_time_max_ms as u32,
            format!(
                "replica_fetch_wait_max_ms: {} must be below replica_lag_time_max_ms {}",
                self.replica_fetch_wait_max_ms, self.replica_lag_time_max_ms
            ),
        )?;
        check(
            self.replica_lag_time_max_ms >= 100,
            format!(
                "replica_lag_time_max_ms: must be at least 100, got {}",
                self.replica_lag_time_max_ms
            ),
        )?;
        check(
            self.broker_heartbeat_interval_ms >= 10
                && self.broker_session_timeout_ms >= 2 * self.broker_heartbeat_interval_ms,
            format!(
                "broker_session_timeout_ms: {} must be at least twice \
                 broker_heartbeat_interval_ms {} (itself at least 10)",
                self.broker_session_timeout_ms, self.broker_heartbeat_interval_ms
            ),
        )?;
        check(
            self.cores >= 1 && self.first_cpu + self.cores <= cores_available,
            format!(
                "cores: {} shards from cpu {} do not fit the {cores_available} cores of this machine",
                self.cores, self.first_cpu
            ),
        )?;
        check(
            self.num_partitions >= 1,
            format!(
                "num_partitions: must be at least 1, got {}",
                self.num_partitions
            ),
        )?;
        check(
            self.max_frame_bytes >= 1024,
            format!(
                "max_frame_bytes: must be at least 1024, got {}",
                self.max_frame_bytes
            ),
        )?;
        check(
            (self.max_message_bytes as usize) < self.max_frame_bytes,
            format!(
                "max_message_bytes: {} must be smaller than max_frame_bytes {}",
                self.max_message_bytes, self.max_frame_bytes
            ),
        )?;
        check(
            self.max_buffered_bytes_per_shard >= self.max_frame_bytes,
            format!(
                "max_buffered_bytes_per_shard: {} must be at least max_frame_bytes {}",
                self.max_buffered_bytes_per_shard, self.max_frame_bytes
            ),
        )?;
        check(
            self.max_inflight_requests >= 1,
            "max_inflight_requests: must be at least 1".into(),
        )?;
        check(
            self.max_connections_per_shard >= 1,
            "max_connections_per_shard: must be at least 1".into(),
        )?;
        check(
            self.max_partitions >= 1,
            "max_partitions: must be at least 1".into(),
        )?;
        check(
            self.segment_bytes >= 64 << 10,
            format!(
                "segment_bytes: must be at least 65536, got {}",
                self.segment_bytes
            ),
        )?;
        check(
            self.segment_bytes <= u32::MAX as u64,
            format!(
                "segment_bytes: must fit 32-bit index positions, got {}",
                self.segment_bytes
            ),
        )?;
        check(
            self.segment_ms >= 1,
            "segment_ms: must be at least 1".into(),
        )?;
        check(
            self.index_interval_bytes >= 1,
            "index_interval_bytes: must be at least 1".into(),
        )?;
        check(
            self.retention_ms == -1 || self.retention_ms >= 1,
            format!(
                "retention_ms: must be -1 or positive, got {}",
                self.retention_ms
            ),
        )?;
        check(
            self.retention_bytes == -1 || self.retention_bytes >= 1,
            format!(
                "retention_bytes: must be -1 or positive, got {}",
                self.retention_bytes
            ),
        )?;
        check(
            self.max_message_bytes >= 1024,
            format!(
                "max_message_bytes: must be at least 1024, got {}",
                self.max_message_bytes
            ),
        )?;
        check(
            self.preallocate_bytes.is_multiple_of(4096),
            format!(
                "preallocate_bytes: must be a multiple of 4096, got {}",
                self.preallocate_bytes
            ),
        )?;
        check(
            self.write_buffer_bytes.is_multiple_of(4096)
                && (8192..=64 << 20).contains(&self.write_buffer_bytes),
            format!(
                "write_buffer_bytes: must be a multiple of 4096 from 8192 to 64 MiB, got {}",
                self.write_buffer_bytes
            ),
        )?;
        check(
            (1..=1024).contains(&self.max_writes_in_flight),
            format!(
                "max_writes_in_flight: must be from 1 to 1024, got {}",
                self.max_writes_in_flight
            ),
        )?;
        check(
            self.flush_interval_ms >= 1,
            "flush_interval_ms: must be at least 1".into(),
        )?;
        check(
            self.retention_check_interval_ms >= 1,
            "retention_check_interval_ms: must be at least 1".into(),
        )?;
        check(
            self.idle_timeout_ms >= 1,
            "idle_timeout_ms: must be at least 1".into(),
        )?;
        let c = &self.compaction;
        check(
            (0.0..=1.0).contains(&c.min_cleanable_dirty_ratio),
            format!(
                "log_cleaner_min_cleanable_ratio: must be within [0, 1], got {}",
                c.min_cleanable_dirty_ratio
            ),
        )?;
        check(
            c.min_compaction_lag_ms >= 0
                && c.max_compaction_lag_ms >= 1
                && c.min_compaction_lag_ms <= c.max_compaction_lag_ms,
            "log_cleaner_min_compaction_lag_ms / log_cleaner_max_compaction_lag_ms: need 0 <= min <= max and max >= 1".into(),
        )?;
        check(
            c.delete_retention_ms >= 0,
            "log_cleaner_delete_retention_ms: must be 0 or more".into(),
        )?;
        check(
            self.cleaner.dedupe_buffer_bytes >= crate::log::cleaner::OFFSET_MAP_ENTRY_BYTES,
            "log_cleaner_dedupe_buffer_bytes: must hold at least one key (32 bytes)".into(),
        )?;
        check(
            self.cleaner.backoff_ms >= 1,
            "log_cleaner_backoff_ms: must be at least 1".into(),
        )?;
        Ok(())
    }
}
