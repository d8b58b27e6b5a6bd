//! TEMPORARY: signatures of the log API being built on branch `epoch`, so the layers above
//! compile meanwhile. Removed by the merge.
use std::time::Instant;

use super::PartitionLog;
use crate::log::{LogError, ReadResult};

impl PartitionLog {
    pub fn set_leader_epoch(&self, _epoch: i32) {}
    pub fn latest_epoch(&self) -> Option<i32> {
        None
    }
    pub fn end_offset_for_epoch(&self, _epoch: i32) -> (i32, i64) {
        (-1, -1)
    }
    pub async fn truncate_to(&self, _offset: i64) -> Result<i64, LogError> {
        Ok(self.log_end_offset())
    }
    pub async fn reset_to(&self, _offset: i64) -> Result<(), LogError> {
        Ok(())
    }
    pub fn set_high_watermark(&self, _hw: Option<i64>) {}
    pub fn high_watermark(&self) -> i64 {
        self.log_end_offset()
    }
    pub fn has_high_watermark(&self) -> bool {
        false
    }
    pub async fn read_upto(
        &self,
        offset: i64,
        max_bytes: usize,
        _limit: i64,
    ) -> Result<ReadResult, LogError> {
        self.read(offset, max_bytes).await
    }
    pub async fn wait_for_data_upto(&self, offset: i64, deadline: Instant, _hw: bool) -> bool {
        self.wait_for_data(offset, deadline).await
    }
}
