//! A segment: one `.log` file with its offset and time indexes, and the direct-I/O reads
//! over it (recovery scan, fetches of data no longer in the tail cache).
//!
//! Owns the in-memory indexes of a segment and the byte-level parsing of its file. Must
//! never decide policy (roll, retention, durability): the partition log does, and it must
//! never return a batch whose CRC it has not checked.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};

use super::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use super::files::{self, IndexEntry, TimeEntry};
use super::LogError;

/// O_DIRECT alignment used for every write position and length (the device needs 512 B;
/// 4 KiB matches the page and file-system block).
pub(crate) const PAGE_BYTES: u64 = 4096;
/// Smallest read when scanning a segment on recovery or reading old data: large enough
/// that one io_uring read covers many batches.
pub(super) const DISK_READ_CHUNK_BYTES: usize = 256 << 10;
/// Largest single read serving a fetch: bounds the memory one read can pin.
pub(super) const DISK_READ_BYTES_MAX: usize = 16 << 20;
/// In-memory index density of closed segments. Every disk read fetches at least
/// `DISK_READ_CHUNK_BYTES`, so an entry per this many bytes costs no extra I/O while it cuts
/// the memory a closed segment's indexes hold 16-fold (the files keep every entry).
const CLOSED_INDEX_STRIDE_BYTES: u64 = 64 << 10;

pub(super) fn align_down(v: u64) -> u64 {
    v & !(PAGE_BYTES - 1)
}

pub(super) fn align_up(v: u64) -> u64 {
    align_down(v + PAGE_BYTES - 1)
}

/// One `.log` file and its indexes, kept in memory.
pub(super) struct Segment {
    pub(super) base_offset: i64,
    pub(super) file: Rc<DmaFile>,
    /// Bytes of whole batches appended to this segment.
    pub(super) size_bytes: u64,
    /// Bytes that reached the device (written, maybe not yet synced).
    pub(super) written_bytes: u64,
    /// File size after preallocation.
    pub(super) allocated_bytes: u64,
    pub(super) index: Vec<IndexEntry>,
    pub(super) time_index: Vec<TimeEntry>,
    /// Entries already appended to the index files.
    pub(super) index_persisted: usize,
    pub(super) time_index_persisted: usize,
    pub(super) bytes_since_index: u64,
    pub(super) max_timestamp: i64,
    pub(super) max_timestamp_relative: u32,
    /// When the segment got its first batch; drives `segment_ms`.
    pub(super) created_ms: Option<i64>,
    /// Rewritten by the cleaner (`<base>.compacted` exists): whole batches may be missing,
    /// so offsets between batches may jump. Elsewhere a jump is damage (BaseOffset is not
    /// covered by the CRC).
    pub(super) compacted: bool,
}

impl Segment {
    pub(super) fn new(base_offset: i64, file: Rc<DmaFile>, allocated_bytes: u64) -> Segment {
        Segment {
            base_offset,
            file,
            size_bytes: 0,
            written_bytes: 0,
            allocated_bytes,
            index: Vec::new(),
            time_index: Vec::new(),
            index_persisted: 0,
            time_index_persisted: 0,
            bytes_since_index: 0,
            max_timestamp: -1,
            max_timestamp_relative: 0,
            created_ms: None,
            compacted: false,
        }
    }

    /// Accounts a batch stored at `position`: indexes, max timestamp, size.
    pub(super) fn note_batch(&mut self, position: u64, h: &BatchHeader, index_interval_bytes: u64) {
        let relative = (h.base_offset() - self.base_offset) as u32;
        if h.max_timestamp() > self.max_timestamp || (self.size_bytes == 0 && position == 0) {
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp());
            self.max_timestamp_relative = relative;
        }
        if self.index.is_empty() || self.bytes_since_index >= index_interval_bytes {
            self.index.push(IndexEntry {
                relative_offset: relative,
                position: position as u32,
            });
            self.bytes_since_index = 0;
            if self
                .time_index
                .last()
                .is_none_or(|t| self.max_timestamp > t.timestamp)
            {
                self.time_index.push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset: self.max_timestamp_relative,
                });
            }
        }
        self.bytes_since_index += h.total_bytes() as u64;
        self.size_bytes = position + h.total_bytes() as u64;
    }

    /// Adds the closing time index entry so the segment's max timestamp survives reopen.
    pub(super) fn finish_time_index(&mut self) {
        if self.size_bytes > 0
            && self
                .time_index
                .last()
                .is_none_or(|t| self.max_timestamp > t.timestamp)
        {
            self.time_index.push(TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: self.max_timestamp_relative,
            });
        }
    }

    /// Thins the in-memory indexes of a segment that will not grow again; see
    /// `CLOSED_INDEX_STRIDE_BYTES`. Any subset of entries stays a correct (earlier) start.
    pub(super) fn thin_indexes(&mut self) {
        let mut next_position = 0u64;
        self.index.retain(|e| {
            let keep = e.position as u64 >= next_position;
            if keep {
                next_position = e.position as u64 + CLOSED_INDEX_STRIDE_BYTES;
            }
            keep
        });
        let target = (self.size_bytes / CLOSED_INDEX_STRIDE_BYTES + 1) as usize;
        let step = self.time_index.len().div_ceil(target).max(1);
        let last = self.time_index.len().saturating_sub(1);
        let mut i = 0;
        // The last entry holds the segment's max timestamp: always kept.
        self.time_index.retain(|_| {
            let keep = i % step == 0 || i == last;
            i += 1;
            keep
        });
        self.index.shrink_to_fit();
        self.time_index.shrink_to_fit();
        self.index_persisted = self.index.len();
        self.time_index_persisted = self.time_index.len();
    }

    /// File position of the batch containing or following `offset` is at or after this.
    pub(super) fn lookup(&self, offset: i64) -> (i64, u64) {
        let relative = (offset - self.base_offset) as u32;
        let at = self
            .index
            .partition_point(|e| e.relative_offset <= relative);
        match at.checked_sub(1).map(|i| self.index[i]) {
            Some(e) => (
                self.base_offset + e.relative_offset as i64,
                e.position as u64,
            ),
            None => (self.base_offset, 0),
        }
    }

    /// Appends index entries not yet in the files. Skips the syscalls when there are none:
    /// flushes run every few milliseconds for every partition.
    pub(super) fn persist_indexes(&mut self, dir: &Path) -> std::io::Result<()> {
        if self.index_persisted < self.index.len() {
            let index = files::encode_index(&self.index[self.index_persisted..]);
            files::append_file(&files::segment_path(dir, self.base_offset, "index"), &index)?;
            self.index_persisted = self.index.len();
        }
        if self.time_index_persisted < self.time_index.len() {
            let time = files::encode_time_index(&self.time_index[self.time_index_persisted..]);
            let path = files::segment_path(dir, self.base_offset, "timeindex");
            files::append_file(&path, &time)?;
            self.time_index_persisted = self.time_index.len();
        }
        Ok(())
    }

    pub(super) fn rewrite_indexes(&mut self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(
            files::segment_path(dir, self.base_offset, "index"),
            files::encode_index(&self.index),
        )?;
        std::fs::write(
            files::segment_path(dir, self.base_offset, "timeindex"),
            files::encode_time_index(&self.time_index),
        )?;
        self.index_persisted = self.index.len();
        self.time_index_persisted = self.time_index.len();
        Ok(())
    }
}

/// What a recovery scan found.
pub(super) struct ScanOutcome {
    pub(super) start_position: u64,
    pub(super) next_offset: i64,
    pub(super) batches: u64,
    pub(super) reason: Option<String>,
    pub(super) garbage_bytes: u64,
    /// `(epoch, base offset)` of each batch whose leader epoch is above all before it in
    /// the scan: what the epoch cache must hold for the scanned part.
    pub(super) epochs: Vec<(i32, i64)>,
}

thread_local! {
    static DIRECT_IO_PROBED: Cell<bool> = const { Cell::new(false) };
}

/// glommio decides once per thread and device whether O_DIRECT I/O may use its polled
/// (IOPOLL) ring, by reading the first file opened. When that file is empty the probe
/// succeeds without touching the device, and every later read on a device without poll
/// queues (virtio here) then fails with EOPNOTSUPP. Probing with a file that has data
/// makes glommio see the real answer. Runs once per thread; `PartitionLog::open` calls it,
/// and so should anything else opening a `DmaFile` on this thread first.
pub async fn probe_direct_io(dir: &Path) -> Result<(), LogError> {
    if DIRECT_IO_PROBED.with(|p| p.get()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".direct_io_probe");
    std::fs::write(&path, vec![0u8; PAGE_BYTES as usize])?;
    let probe = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    probe?.close().await?;
    DIRECT_IO_PROBED.with(|p| p.set(true));
    Ok(())
}

pub(super) async fn open_segment_file(path: &Path) -> Result<DmaFile, LogError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await?)
}

/// Reads `[pos, pos + len)` into `buf` unless it already holds it; false if that range
/// passes `file_end`. A file that turns out shorter than `file_end` (truncated behind the
/// log's back) is a [`LogError::ShortRead`], so no caller ever slices past what was read.
pub(super) async fn ensure_read(
    file: &DmaFile,
    buf: &mut Option<(u64, glommio::io::ReadResult)>,
    pos: u64,
    len: usize,
    read_hint: usize,
    file_end: u64,
) -> Result<bool, LogError> {
    if let Some((start, r)) = buf {
        if *start <= pos && pos + len as u64 <= *start + r.len() as u64 {
            return Ok(true);
        }
    }
    if pos + len as u64 > file_end {
        return Ok(false);
    }
    let want = (len.max(read_hint) as u64).min(file_end - pos) as usize;
    let r = file.read_at(pos, want).await?;
    if r.len() < len {
        *buf = None;
        return Err(LogError::ShortRead {
            position: pos,
            wanted: len,
            got: r.len(),
        });
    }
    *buf = Some((pos, r));
    Ok(true)
}

pub(super) fn slice_of(
    buf: &Option<(u64, glommio::io::ReadResult)>,
    pos: u64,
    len: usize,
) -> &[u8] {
    let (start, r) = buf.as_ref().expect("ensured");
    let at = (pos - start) as usize;
    &r[at..at + len]
}

/// Validates the batches of a segment from its last trustworthy index entry (or from the
/// start) up to `file_end`, rebuilding the index entries after that point. Stops at the
/// first batch that is torn, fails its CRC, or breaks offset continuity.
pub(super) async fn scan_segment(
    seg: &mut Segment,
    file_end: u64,
    use_index: bool,
    index_interval_bytes: u64,
) -> Result<ScanOutcome, LogError> {
    let mut start = (0u64, seg.base_offset, 0usize);
    if use_index {
        for i in (0..seg.index.len()).rev() {
            let e = seg.index[i];
            let pos = e.position as u64;
            let expected = seg.base_offset + e.relative_offset as i64;
            let mut buf = None;
            if !ensure_read(
                &seg.file,
                &mut buf,
                pos,
                BATCH_HEADER_BYTES,
                BATCH_HEADER_BYTES,
                file_end,
            )
            .await?
            {
                continue;
            }
            let Ok(h) = BatchHeader::parse(slice_of(&buf, pos, BATCH_HEADER_BYTES)) else {
                continue;
            };
            if h.base_offset() != expected
                || !ensure_read(
                    &seg.file,
                    &mut buf,
                    pos,
                    h.total_bytes(),
                    DISK_READ_CHUNK_BYTES,
                    file_end,
                )
                .await?
                || !batch::crc_matches(slice_of(&buf, pos, h.total_bytes()), h.crc())
            {
                continue;
            }
            start = (pos, expected, i);
            break;
        }
    }
    let (start_position, start_offset, kept) = start;
    seg.index.truncate(kept);
    let start_relative = (start_offset - seg.base_offset) as u32;
    seg.time_index
        .retain(|t| t.relative_offset < start_relative);
    seg.max_timestamp = seg.time_index.last().map_or(-1, |t| t.timestamp);
    seg.max_timestamp_relative = seg.time_index.last().map_or(0, |t| t.relative_offset);
    seg.bytes_since_index = 0;
    seg.size_bytes = start_position;

    let mut pos = start_position;
    let mut expected = start_offset;
    let mut batches = 0;
    let mut reason = None;
    let mut buf = None;
    let mut epochs = Vec::new();
    let mut epoch_max = -1;
    loop {
        if pos >= file_end {
            break;
        }
        let header_len = BATCH_HEADER_BYTES.min((file_end - pos) as usize);
        ensure_read(
            &seg.file,
            &mut buf,
            pos,
            header_len,
            DISK_READ_CHUNK_BYTES,
            file_end,
        )
        .await?;
        let head = slice_of(&buf, pos, header_len);
        if head.iter().all(|&b| b == 0) {
            // Zeros are preallocated space never written: the clean end of the data.
            break;
        }
        let h = match BatchHeader::parse(head) {
            Ok(h) => h,
            Err(e) => {
                reason = Some(format!("invalid batch header at byte {pos}: {e}"));
                break;
            }
        };
        // Compaction leaves gaps (whole batches removed): there, offsets must only increase.
        if h.base_offset() != expected && !(seg.compacted && h.base_offset() > expected) {
            reason = Some(format!(
                "batch at byte {pos} has offset {} instead of {expected}",
                h.base_offset()
            ));
            break;
        }
        if !ensure_read(
            &seg.file,
            &mut buf,
            pos,
            h.total_bytes(),
            DISK_READ_CHUNK_BYTES,
            file_end,
        )
        .await?
        {
            reason = Some(format!(
                "batch at byte {pos} is torn: {} bytes past the end",
                h.total_bytes()
            ));
            break;
        }
        if !batch::crc_matches(slice_of(&buf, pos, h.total_bytes()), h.crc()) {
            reason = Some(format!("batch at byte {pos} fails its CRC-32C"));
            break;
        }
        seg.note_batch(pos, &h, index_interval_bytes);
        if h.partition_leader_epoch() > epoch_max {
            epoch_max = h.partition_leader_epoch();
            epochs.push((epoch_max, h.base_offset()));
        }
        pos += h.total_bytes() as u64;
        expected = h.last_offset() + 1;
        batches += 1;
    }
    let garbage_bytes = if reason.is_some() { file_end - pos } else { 0 };
    Ok(ScanOutcome {
        start_position,
        next_offset: expected,
        batches,
        reason,
        garbage_bytes,
        epochs,
    })
}

/// Where cutting a segment's data at `offset` falls: the position of the first batch whose
/// last offset is at or past `offset`, searched from `position` (where the batch at
/// `entry_offset` starts, an index entry) up to `size`, or `size` when there is none; and
/// the offset just after the last batch before it (`entry_offset` when there is none).
/// Reads headers only; the caller rescans what stays (`scan_segment`), CRCs included.
pub(super) async fn find_cut(
    file: &DmaFile,
    offset: i64,
    entry_offset: i64,
    mut position: u64,
    size: u64,
) -> Result<(u64, i64), LogError> {
    let mut end = entry_offset;
    let mut buf = None;
    while position < size {
        if !ensure_read(
            file,
            &mut buf,
            position,
            BATCH_HEADER_BYTES,
            DISK_READ_CHUNK_BYTES,
            size,
        )
        .await?
        {
            return Err(LogError::CorruptBatch(format!(
                "a batch header at byte {position} runs past the segment's data"
            )));
        }
        let h = BatchHeader::parse(slice_of(&buf, position, BATCH_HEADER_BYTES))?;
        if h.last_offset() >= offset {
            return Ok((position, end));
        }
        end = h.last_offset() + 1;
        position += h.total_bytes() as u64;
    }
    Ok((size, end))
}

/// Batches containing and following `offset` and ending before `limit`, parsed from `pos`
/// (where the batch with base offset `expected` starts) up to `disk_end`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_batches_at(
    file: &DmaFile,
    offset: i64,
    max_bytes: usize,
    limit: i64,
    mut expected: i64,
    mut pos: u64,
    disk_end: u64,
    gaps: bool,
) -> Result<Vec<(BatchHeader, Vec<Bytes>)>, LogError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut buf = None;
    while pos + BATCH_HEADER_BYTES as u64 <= disk_end {
        // One read should cover the whole answer: what is left of max_bytes, bounded.
        let hint = max_bytes
            .saturating_sub(bytes)
            .clamp(DISK_READ_CHUNK_BYTES, DISK_READ_BYTES_MAX);
        // A short read past what was already gathered ends the answer with its valid prefix.
        match ensure_read(file, &mut buf, pos, BATCH_HEADER_BYTES, hint, disk_end).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e),
        }
        let corrupt = |msg: String| -> Result<Vec<(BatchHeader, Vec<Bytes>)>, LogError> {
            Err(LogError::CorruptBatch(msg))
        };
        let h = match BatchHeader::parse(slice_of(&buf, pos, BATCH_HEADER_BYTES)) {
            // A compacted segment has gaps between batches: offsets must only increase.
            Ok(h) if h.base_offset() == expected || (gaps && h.base_offset() > expected) => h,
            Ok(h) if out.is_empty() => {
                return corrupt(format!(
                    "batch at byte {pos} has offset {} instead of {expected}",
                    h.base_offset()
                ))
            }
            Err(e) if out.is_empty() => return corrupt(format!("batch at byte {pos}: {e}")),
            _ => break,
        };
        let size = h.total_bytes();
        if pos + size as u64 > disk_end {
            break;
        }
        expected = h.last_offset() + 1;
        if h.last_offset() < offset {
            pos += size as u64;
            continue;
        }
        if h.last_offset() >= limit {
            // Nothing past the limit (a high watermark) is served, and a limit inside
            // the first batch leaves nothing to serve: not damage.
            return Ok(out);
        }
        if !out.is_empty() && bytes + size > max_bytes {
            break;
        }
        let hint = max_bytes
            .saturating_sub(bytes)
            .clamp(DISK_READ_CHUNK_BYTES, DISK_READ_BYTES_MAX);
        match ensure_read(file, &mut buf, pos, size, hint, disk_end).await {
            Ok(_) => {}
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e),
        }
        let slice = slice_of(&buf, pos, size);
        if !batch::crc_matches(slice, h.crc()) {
            if out.is_empty() {
                return corrupt(format!("batch at byte {pos} fails its CRC-32C"));
            }
            break;
        }
        out.push((h, vec![Bytes::copy_from_slice(slice)]));
        bytes += size;
        pos += size as u64;
        if bytes >= max_bytes {
            break;
        }
    }
    if out.is_empty() {
        // Below the log end there is always a whole batch: the segment lost data at rest.
        return Err(LogError::CorruptBatch(format!(
            "no whole batch at offset {offset} on disk"
        )));
    }
    Ok(out)
}
