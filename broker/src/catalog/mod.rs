//! The catalog: which topics exist, their partitions, which shard owns each partition, their
//! configs, and the next producer id. Control plane only.
//!
//! Shard 0 is the controller: it alone changes the catalog, persists it, then hands a copy to
//! every shard. Each shard reads only its own copy, so the data path never shares it.
//!
//! On disk: `catalog.bin` = magic `SLCAT001`, CRC-32C (u32 LE) of the payload, payload (rkyv).
//! It is replaced atomically (write temp, fsync, rename, fsync dir). A file that fails its
//! magic, CRC or rkyv check is refused with an error: never silently replaced by an empty one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rkyv::{Archive, Deserialize, Serialize};

mod topic_configs;

pub use topic_configs::{
    alter_list, topic_config, topic_log_config, validate_topic_config, validate_topic_configs,
    ConfigType, Effect, ListOp, TopicConfig, TOPIC_CONFIGS,
};

const MAGIC: &[u8; 8] = b"SLCAT001";
const FILE_NAME: &str = "catalog.bin";

/// One topic.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Topic {
    pub name: String,
    pub id: [u8; 16],
    /// Owner shard of each partition, indexed by partition number.
    pub owners: Vec<u32>,
    /// Topic-level config overrides (Kafka names), validated when set.
    pub configs: BTreeMap<String, String>,
}

/// Everything the catalog holds.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub topics: BTreeMap<String, Topic>,
    pub next_producer_id: i64,
    /// Bumped on every change so shards can ignore stale copies.
    pub version: u64,
}

impl Catalog {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Load from the data dir: Ok(empty) if no file exists, Err if one exists but is damaged.
    pub fn load(data_dir: &Path) -> Result<Catalog, String> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Catalog::default()),
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
        rkyv::from_bytes::<Catalog, rkyv::rancor::Error>(&aligned)
            .map_err(|e| damaged(&format!("undecodable: {e}")))
    }

    /// Persist atomically and durably.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&crc32c::crc32c(&payload).to_le_bytes())?;
            file.write_all(&payload)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, Self::path(data_dir))?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// Directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

/// Kafka's rule for topic names: 1..=249 of [a-zA-Z0-9._-], not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A random topic id (UUID v4 layout), from the OS random source.
pub fn new_topic_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut id);
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Catalog {
        let mut catalog = Catalog {
            next_producer_id: 7,
            version: 3,
            ..Default::default()
        };
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        catalog.topics.insert(
            "orders".into(),
            Topic {
                name: "orders".into(),
                id: new_topic_id(),
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
        catalog.save(dir.path()).unwrap();
        assert_eq!(Catalog::load(dir.path()).unwrap(), catalog);
    }

    #[test]
    fn missing_file_is_an_empty_catalog() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Catalog::load(dir.path()).unwrap(), Catalog::default());
    }

    #[test]
    fn damaged_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        sample().save(dir.path()).unwrap();
        let path = Catalog::path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = Catalog::load(dir.path()).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        std::fs::write(&path, &bytes[..5]).unwrap();
        assert!(Catalog::load(dir.path()).unwrap_err().contains("damaged"));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic_name("orders.v1_x-2"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }
}
