//! The raft log's files on disk: the `log` file's records (`[u32 LE length][u32 LE
//! crc32c][JSON]`, a header record first), parsing it back with the torn-tail rule, and the
//! small atomically replaced files (`vote`, `committed`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use openraft::RaftTypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;

/// The contents of a `log` file.
pub(super) struct ParsedLog<C: RaftTypeConfig> {
    pub(super) header: LogHeader<C>,
    pub(super) log: BTreeMap<u64, C::Entry>,
    /// Length of the good prefix: shorter than the file when it ends in a torn tail.
    pub(super) good_len: usize,
}

/// Parses a whole `log` file.
pub(super) fn parse_log<C>(bytes: &[u8]) -> Result<ParsedLog<C>, String>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    let (payload, mut pos) =
        frame_at(bytes, 0).map_err(|why| format!("bad header record at offset 0: {why}"))?;
    let header: LogHeader<C> = serde_json::from_slice(payload)
        .map_err(|e| format!("header record does not decode: {e}"))?;
    if header.format != FORMAT_VERSION {
        return Err(format!(
            "unknown log format version {} (this build reads {FORMAT_VERSION})",
            header.format
        ));
    }

    let mut log = BTreeMap::new();
    let mut expected = header
        .last_purged_log_id
        .as_ref()
        .map(|id| id.index.saturating_add(1));
    while pos < bytes.len() {
        let (payload, next) = match frame_at(bytes, pos) {
            Ok(frame) => frame,
            Err(why) => {
                if let Some(at) = next_valid_record(bytes, pos + 1) {
                    return Err(format!(
                        "bad record at offset {pos} ({why}) followed by a valid record at offset \
                         {at}: refusing to drop the log after it"
                    ));
                }
                // A torn tail: nothing valid after it.
                return Ok(ParsedLog {
                    header,
                    log,
                    good_len: pos,
                });
            }
        };
        let entry: C::Entry = serde_json::from_slice(payload).map_err(|e| {
            format!(
                "record at offset {pos} has a good checksum but does not decode as an entry: {e}"
            )
        })?;
        let index = entry.get_log_id().index;
        if let Some(want) = expected {
            if index != want {
                return Err(format!(
                    "record at offset {pos} holds entry {} where index {want} was expected \
                     (entries must be consecutive)",
                    entry.get_log_id()
                ));
            }
        }
        expected = Some(index.saturating_add(1));
        log.insert(index, entry);
        pos = next;
    }
    Ok(ParsedLog {
        header,
        log,
        good_len: pos,
    })
}

/// The payload of the record at `pos` and the offset after it, or why there is no valid
/// record there.
pub(super) fn frame_at(bytes: &[u8], pos: usize) -> Result<(&[u8], usize), String> {
    let rest = bytes.get(pos..).unwrap_or_default();
    if rest.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "{} bytes left, short of a record header",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(format!("record length {len} outside 1..={MAX_RECORD_LEN}"));
    }
    let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
        return Err(format!(
            "record length {len} runs past the end of the file ({} bytes left)",
            rest.len() - RECORD_HEADER_LEN
        ));
    };
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    Ok((payload, pos + RECORD_HEADER_LEN + len))
}

/// The first offset at or after `from` where a valid record starts, if any.
pub(super) fn next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    let last = bytes.len().checked_sub(RECORD_HEADER_LEN)?;
    (from..=last).find(|&at| frame_at(bytes, at).is_ok())
}

/// Appends one record holding `value` as JSON to `buf`.
pub(super) fn encode_json_record(buf: &mut Vec<u8>, value: &impl Serialize) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    serde_json::to_writer(&mut *buf, value).map_err(io::Error::other)?;
    let len = buf.len() - start - RECORD_HEADER_LEN;
    if len > MAX_RECORD_LEN {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record of {len} bytes is over the {MAX_RECORD_LEN} byte limit"),
        ));
    }
    let crc = crc32c::crc32c(&buf[start + RECORD_HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Writes a complete `log` file (header and entries) atomically and returns it opened for
/// appending.
pub(super) fn write_log_file<'a, C>(
    dir: &Path,
    header: &LogHeader<C>,
    entries: impl Iterator<Item = &'a C::Entry>,
) -> io::Result<File>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + 'a,
{
    let mut buf = Vec::new();
    encode_json_record(&mut buf, header)?;
    for entry in entries {
        encode_json_record(&mut buf, entry)?;
    }
    replace_file(dir, LOG_TMP, LOG_FILE, &buf, true)?;
    OpenOptions::new().append(true).open(dir.join(LOG_FILE))
}

/// Replaces `dir/name` with `contents`: writes `dir/tmp`, fsyncs it, renames it over `name`,
/// and fsyncs `dir` when `sync_dir` (without it the rename may be lost in a crash, leaving
/// the previous file).
pub(super) fn replace_file(
    dir: &Path,
    tmp: &str,
    name: &str,
    contents: &[u8],
    sync_dir_after: bool,
) -> io::Result<()> {
    let tmp = dir.join(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    if sync_dir_after {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a one-record file (`vote`, `committed`) atomically.
pub(super) fn write_small_file(
    dir: &Path,
    tmp: &str,
    name: &str,
    value: &impl Serialize,
    sync_dir_after: bool,
) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_json_record(&mut buf, value)?;
    replace_file(dir, tmp, name, &buf, sync_dir_after)
}

/// Reads a one-record file; None when it does not exist.
pub(super) fn read_small_file<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let (payload, end) =
        frame_at(&bytes, 0).map_err(|why| format!("{} is damaged: {why}", path.display()))?;
    if end != bytes.len() {
        return Err(format!(
            "{} is damaged: {} bytes after its record",
            path.display(),
            bytes.len() - end
        ));
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| format!("{} is damaged: does not decode: {e}", path.display()))
}
