//! Crash-safe replacement of segments by their cleaned version.
//!
//! A pass writes the cleaned data of a group of segments to `<first base>.cleaned` and
//! fdatasyncs it; then it writes the swap marker (`cleaner.swap`, checksummed, written
//! atomically) naming the new segment and the segments it replaces; then it removes the
//! replaced files and the old indexes, renames the cleaned file to `<first base>.log`,
//! writes its indexes, and removes the marker. `recover` runs at open before segments are
//! listed: with a marker it finishes the swap (the cleaned data is durable before the
//! marker exists, so rolling forward is always possible); without one it removes any
//! `.cleaned` file (the old segments are all still there). Either way the log holds the
//! old segments or the new one, never a mix. Must never remove a replaced segment before
//! the marker is durable.

use std::fs;
use std::path::{Path, PathBuf};

use crate::log::files;

/// The swap marker's file name (no `.tmp` suffix: open must not take it for litter).
pub(crate) const SWAP_MARKER_FILE: &str = "cleaner.swap";
/// Suffix of a cleaned segment's data before the swap.
const CLEANED_SUFFIX: &str = "cleaned";

/// The swap in progress: `base` becomes the cleaned segment, `replaced` (which includes
/// `base`) are the segments it replaces.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct SwapMarker {
    pub base: i64,
    pub replaced: Vec<i64>,
}

/// Path of the cleaned data of the segment that will be named `base`.
pub(crate) fn cleaned_path(dir: &Path, base: i64) -> PathBuf {
    files::segment_path(dir, base, CLEANED_SUFFIX)
}

/// Makes the swap durable-to-finish: after this returns, recovery rolls forward.
pub(crate) fn write_marker(dir: &Path, marker: &SwapMarker) -> std::io::Result<()> {
    files::write_atomic(dir, SWAP_MARKER_FILE, &files::encode_checked(marker))
}

/// Where `finish` stops early, for tests that simulate a crash inside a swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FinishStep {
    /// Replaced files removed, cleaned file not yet renamed.
    Removed,
    /// Cleaned file renamed, marker not yet removed.
    Renamed,
    /// Everything done.
    Done,
}

/// Finishes a swap whose marker is durable: removes the replaced segments' files (and the
/// old indexes of `base`), renames the cleaned file into place if it is still there,
/// writes `indexes` (`None`: leave them missing, so open rebuilds them by a scan), and
/// removes the marker. Idempotent: recovery calls it again after a crash anywhere in it.
pub(crate) fn finish(
    dir: &Path,
    marker: &SwapMarker,
    indexes: Option<(&[u8], &[u8])>,
    stop_after: FinishStep,
) -> std::io::Result<()> {
    for &b in &marker.replaced {
        if b == marker.base {
            for ext in ["index", "timeindex"] {
                remove_if_present(&files::segment_path(dir, b, ext))?;
            }
        } else {
            files::remove_segment(dir, b)?;
        }
    }
    if stop_after == FinishStep::Removed {
        return Ok(());
    }
    let cleaned = cleaned_path(dir, marker.base);
    // Before the rename: the cleaned data is never under the segment's name without it.
    fs::write(
        files::segment_path(dir, marker.base, files::COMPACTED_EXT),
        b"",
    )?;
    if cleaned.exists() {
        fs::rename(&cleaned, files::segment_path(dir, marker.base, "log"))?;
    }
    if let Some((index, time_index)) = indexes {
        for (ext, bytes) in [("index", index), ("timeindex", time_index)] {
            let path = files::segment_path(dir, marker.base, ext);
            fs::write(&path, bytes)?;
            fs::File::open(&path)?.sync_data()?;
        }
    }
    files::sync_dir(dir)?;
    if stop_after == FinishStep::Renamed {
        return Ok(());
    }
    remove_if_present(&dir.join(SWAP_MARKER_FILE))?;
    files::sync_dir(dir)
}

/// At open: finishes a swap a crash interrupted, or throws away cleaned data whose swap
/// never started. Returns what it did, for the recovery log.
pub(crate) fn recover(dir: &Path) -> std::io::Result<Option<String>> {
    let marker_path = dir.join(SWAP_MARKER_FILE);
    let mut did = None;
    if marker_path.exists() {
        match files::read_checked::<SwapMarker>(&marker_path) {
            Some(marker) => {
                finish(dir, &marker, None, FinishStep::Done)?;
                did = Some(format!(
                    "finished the swap of cleaned segment {} (replacing {:?})",
                    marker.base, marker.replaced
                ));
            }
            None => {
                // write_atomic never leaves a torn marker under its name; a damaged one
                // was damaged at rest. Its cleaned file, if any, is discarded below, and
                // the old segments stay (those the swap removed are gone either way).
                tracing::warn!(dir = %dir.display(), "damaged cleaner swap marker; discarding it");
                fs::remove_file(&marker_path)?;
            }
        }
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == CLEANED_SUFFIX) {
            fs::remove_file(&path)?;
            did.get_or_insert_with(|| "removed cleaned data of an unfinished pass".into());
        }
    }
    if did.is_some() {
        files::sync_dir(dir)?;
    }
    Ok(did)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
