//! File layout of a partition directory and the small metadata files in it.
//!
//! Owns file names, the index and time-index entry encodings, and the checksummed rkyv
//! files (clean-shutdown marker, producer snapshot); the leader epoch checkpoint's text
//! format belongs to `epochs`. Must never touch segment data: that goes through `DmaFile`
//! in the partition log.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Written by `close`, removed by `open`: its presence means no scan is needed.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean_shutdown";
/// Producer state as of some log end offset.
pub(crate) const PRODUCER_SNAPSHOT_FILE: &str = "producer.snapshot";
/// The next segment's file, created ahead of the roll that needs it (a `.tmp`, so `open`
/// removes one left over): the roll renames it in the background instead of creating a
/// file while appends wait.
pub(crate) const NEXT_SEGMENT_FILE: &str = "next-segment.log.tmp";

/// The leader epoch cache (Kafka's text format, see `epochs`), replaced atomically.
pub(crate) const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
/// The empty segment a reset starts the log with, until it gets its name.
pub(crate) const RESET_SEGMENT_FILE: &str = "reset-segment.log.tmp";

/// Extension of the empty file that marks a segment the cleaner rewrote (gaps allowed).
pub(crate) const COMPACTED_EXT: &str = "compacted";

/// One sparse offset index entry: batch base offset relative to the segment, file position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}
pub(crate) const INDEX_ENTRY_BYTES: usize = 8;

/// One time index entry: the largest timestamp so far and the relative offset of the
/// batch that first reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

/// Metadata that lets `open` skip the scan after a clean close.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct CleanShutdown {
    pub active_base_offset: i64,
    pub active_size_bytes: u64,
    pub log_end_offset: i64,
}

pub(crate) fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// Base offsets of the `.log` files in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if stem.len() == 20 {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Removes a segment's `.log`, `.index` and `.timeindex` (those that exist); the caller
/// syncs the directory.
pub(crate) fn remove_segment(dir: &Path, base_offset: i64) -> std::io::Result<()> {
    for ext in ["log", "index", "timeindex", COMPACTED_EXT] {
        match fs::remove_file(segment_path(dir, base_offset, ext)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes index files whose `.log` is gone (a crash during retention) and leftover
/// temporary files of `write_atomic`; returns how many were removed.
pub(crate) fn remove_orphans(dir: &Path, bases: &[i64]) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let orphan_index = ["index", "timeindex", COMPACTED_EXT].iter().any(|ext| {
            name.strip_suffix(&format!(".{ext}"))
                .and_then(|stem| stem.parse::<i64>().ok())
                .is_some_and(|base| !bases.contains(&base))
        });
        if orphan_index || name.ends_with(".tmp") {
            fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&e.relative_offset.to_be_bytes());
        out.extend_from_slice(&e.position.to_be_bytes());
    }
    out
}

pub(crate) fn encode_time_index(entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&e.timestamp.to_be_bytes());
        out.extend_from_slice(&e.relative_offset.to_be_bytes());
    }
    out
}

/// Decodes an index file; `None` when its size or ordering shows damage, or an entry
/// points past `size_bytes`. A missing file is damage too.
pub(crate) fn load_index(path: &Path, size_bytes: u64) -> Option<Vec<IndexEntry>> {
    let raw = fs::read(path).ok()?;
    if raw.len() % INDEX_ENTRY_BYTES != 0 {
        return None;
    }
    let entries: Vec<IndexEntry> = raw
        .chunks_exact(INDEX_ENTRY_BYTES)
        .map(|c| IndexEntry {
            relative_offset: u32::from_be_bytes(c[0..4].try_into().unwrap()),
            position: u32::from_be_bytes(c[4..8].try_into().unwrap()),
        })
        .collect();
    let ordered = entries
        .windows(2)
        .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
    let first_ok = entries
        .first()
        .is_none_or(|e| e.relative_offset == 0 && e.position == 0);
    let in_range = entries
        .iter()
        .all(|e| (e.position as u64) < size_bytes.max(1));
    (ordered && first_ok && in_range).then_some(entries)
}

/// Decodes a time index file; `None` when damaged (see `load_index`).
pub(crate) fn load_time_index(path: &Path) -> Option<Vec<TimeEntry>> {
    let raw = fs::read(path).ok()?;
    if raw.len() % TIME_ENTRY_BYTES != 0 {
        return None;
    }
    let entries: Vec<TimeEntry> = raw
        .chunks_exact(TIME_ENTRY_BYTES)
        .map(|c| TimeEntry {
            timestamp: i64::from_be_bytes(c[0..8].try_into().unwrap()),
            relative_offset: u32::from_be_bytes(c[8..12].try_into().unwrap()),
        })
        .collect();
    let ordered = entries
        .windows(2)
        .all(|w| w[0].timestamp < w[1].timestamp && w[0].relative_offset <= w[1].relative_offset);
    ordered.then_some(entries)
}

/// Appends bytes to a file through the page cache. Index files are not fsynced: recovery
/// validates every entry against the data, so a lost or stale entry costs only a rescan.
pub(crate) fn append_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(bytes)
}

/// Replaces a file's content atomically (temp file, fsync, rename, fsync of the dir).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes creations, renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Serialises with rkyv behind a CRC-32C, so a torn or flipped file is detected.
pub(crate) fn encode_checked<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let body =
        rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("rkyv serialisation of plain data");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads a file written by `encode_checked`; `None` if missing, torn or invalid.
pub(crate) fn read_checked<T>(path: &Path) -> Option<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let raw = fs::read(path).ok()?;
    if raw.len() < 4 {
        return None;
    }
    let (crc, body) = raw.split_at(4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return None;
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).ok()
}
