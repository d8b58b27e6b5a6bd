//! `catalog.bin`, the catalog file of single-node versions: read once, when such a data dir
//! first opens as a cluster node, to become the cluster's first metadata record. Never
//! written any more.
//!
//! On disk: magic `SLCAT001`, CRC-32C (u32 LE) of the payload, payload (rkyv of the structs
//! below, whose layout must not change). A file that fails its magic, CRC or rkyv check is
//! refused with an error: never silently replaced by an empty one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rkyv::{Archive, Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"SLCAT001";
const FILE_NAME: &str = "catalog.bin";

/// One topic, as single-node versions stored it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LegacyTopic {
    pub name: String,
    pub id: [u8; 16],
    pub owners: Vec<u32>,
    pub configs: BTreeMap<String, String>,
}

/// The whole file, as single-node versions stored it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LegacyCatalog {
    pub topics: BTreeMap<String, LegacyTopic>,
    pub next_producer_id: i64,
    pub version: u64,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Ok(None) if the data dir has no `catalog.bin`, Err if it has a damaged one.
pub fn load_legacy(data_dir: &Path) -> Result<Option<LegacyCatalog>, String> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("catalog {}: cannot read: {e}", path.display())),
    };
    let damaged = |why: &str| {
        format!(
            "catalog {} is damaged ({why}); refusing to start rather than forget topics. \
             Restore it from a backup or move it away to start with an empty catalog",
            path.display()
        )
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(damaged("bad magic or too short"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let payload = &bytes[12..];
    if crc32c::crc32c(payload) != crc {
        return Err(damaged("checksum mismatch"));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<LegacyCatalog, rkyv::rancor::Error>(&aligned)
        .map(Some)
        .map_err(|e| damaged(&format!("undecodable: {e}")))
}

/// Write a legacy file (tests only: to prove a data dir of a single-node version opens).
#[cfg(test)]
pub fn save_legacy(catalog: &LegacyCatalog, data_dir: &Path) -> std::io::Result<()> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(catalog)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(path(data_dir), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LegacyCatalog {
        let mut catalog = LegacyCatalog {
            next_producer_id: 7,
            version: 3,
            ..Default::default()
        };
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        catalog.topics.insert(
            "orders".into(),
            LegacyTopic {
                name: "orders".into(),
                id: crate::catalog::new_topic_id(),
                owners: vec![0, 1, 0],
                configs,
            },
        );
        catalog
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = sample();
        save_legacy(&catalog, dir.path()).unwrap();
        assert_eq!(load_legacy(dir.path()).unwrap(), Some(catalog));
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_legacy(dir.path()).unwrap(), None);
    }

    #[test]
    fn damaged_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        save_legacy(&sample(), dir.path()).unwrap();
        let file = path(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let err = load_legacy(dir.path()).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        std::fs::write(&file, &bytes[..5]).unwrap();
        assert!(load_legacy(dir.path()).unwrap_err().contains("damaged"));
    }
}
