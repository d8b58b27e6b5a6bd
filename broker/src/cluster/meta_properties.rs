//! `meta.properties`: which node and cluster a data dir belongs to (Kafka's file of the same
//! name). Written when the data dir is first used, completed with the cluster id once the
//! quorum has one; checked at every start, so a data dir is never used by another node id,
//! another voter set, or another cluster.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::node::{new_id, ClusterConfig};

const FILE_NAME: &str = "meta.properties";

#[derive(Debug, Clone)]
pub struct MetaProperties {
    path: PathBuf,
    pub node_id: i32,
    /// The data dir's identity: the broker's incarnation.
    pub directory_id: String,
    pub voters: String,
    pub cluster_id: Option<String>,
}

impl MetaProperties {
    /// Read the data dir's file and check it against the configuration, or create it.
    pub fn open(config: &ClusterConfig) -> Result<MetaProperties, String> {
        let path = config.data_dir.join(FILE_NAME);
        let voters = voters_text(config);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = MetaProperties {
                    path,
                    node_id: config.node_id,
                    directory_id: new_id(),
                    voters,
                    cluster_id: None,
                };
                meta.save()
                    .map_err(|e| format!("{}: {e}", meta.path.display()))?;
                return Ok(meta);
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |key: &str| {
            fields
                .get(key)
                .map(|v| v.to_string())
                .ok_or_else(|| format!("{} has no {key}; refusing to start", path.display()))
        };
        let node_id: i32 = get("node.id")?
            .parse()
            .map_err(|_| format!("{}: node.id is not a number", path.display()))?;
        let meta = MetaProperties {
            node_id,
            directory_id: get("directory.id")?,
            voters: get("controller.quorum.voters")?,
            cluster_id: fields.get("cluster.id").map(|v| v.to_string()),
            path: path.clone(),
        };
        let cluster = meta.cluster_id.as_deref().unwrap_or("(not yet known)");
        if meta.node_id != config.node_id {
            return Err(format!(
                "data dir {} belongs to node {} of cluster id {cluster}, not to --node-id {}",
                config.data_dir.display(),
                meta.node_id,
                config.node_id
            ));
        }
        if meta.voters != voters {
            return Err(format!(
                "data dir {} belongs to cluster id {cluster} whose --controller-quorum-voters \
                 are '{}', not '{voters}'",
                config.data_dir.display(),
                meta.voters
            ));
        }
        Ok(meta)
    }

    /// Record the cluster id the first time it is known; Err if the data dir belongs to
    /// another cluster.
    pub fn record_cluster_id(&mut self, cluster_id: &str) -> Result<(), String> {
        match &self.cluster_id {
            Some(known) if known == cluster_id => Ok(()),
            Some(known) => Err(format!(
                "data dir {} belongs to cluster id {known}, but the metadata quorum has \
                 cluster id {cluster_id}; refusing to run",
                self.path.parent().unwrap_or(Path::new(".")).display()
            )),
            None => {
                self.cluster_id = Some(cluster_id.to_string());
                self.save()
                    .map_err(|e| format!("{}: {e}", self.path.display()))
            }
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let mut text = format!(
            "# Written by shardlog: which node and cluster this data dir belongs to.\n\
             version=1\nnode.id={}\ndirectory.id={}\ncontroller.quorum.voters={}\n",
            self.node_id, self.directory_id, self.voters
        );
        if let Some(id) = &self.cluster_id {
            text.push_str(&format!("cluster.id={id}\n"));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The voter set as written in the file: `id@addr,...` by id ("0@" for a one-node cluster).
fn voters_text(config: &ClusterConfig) -> String {
    config
        .voters
        .iter()
        .map(|(id, addr)| format!("{id}@{addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(dir: &Path, node_id: i32, voters: &[(i32, &str)]) -> ClusterConfig {
        ClusterConfig {
            node_id,
            voters: voters.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            controller_listen: None,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            session_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(100),
            data_dir: dir.to_path_buf(),
            leader_rebalance_interval: None,
        }
    }

    #[test]
    fn a_data_dir_keeps_its_node_voters_and_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 1, &[(1, "h:1"), (2, "h:2")]);
        let mut meta = MetaProperties::open(&c).unwrap();
        meta.record_cluster_id("abc").unwrap();
        let again = MetaProperties::open(&c).unwrap();
        assert_eq!(again.directory_id, meta.directory_id);
        assert_eq!(again.cluster_id.as_deref(), Some("abc"));
        let err =
            MetaProperties::open(&config(dir.path(), 2, &[(1, "h:1"), (2, "h:2")])).unwrap_err();
        assert!(err.contains("--node-id 2"), "{err}");
        let err = MetaProperties::open(&config(dir.path(), 1, &[(1, "h:1")])).unwrap_err();
        assert!(err.contains("controller-quorum-voters"), "{err}");
        let mut again = again;
        let err = again.record_cluster_id("other").unwrap_err();
        assert!(err.contains("belongs to cluster id abc"), "{err}");
    }
}
