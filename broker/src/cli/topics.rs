//! `shardlog topics ...`: topic administration against a running cluster.
//!
//! - `list`: every topic with its partition count and replication factor (Metadata).
//! - `describe T`: each partition's leader, leader epoch, replicas, ISR, log start and log end
//!   (Metadata, then ListOffsets at each partition's leader), and the topic's config overrides
//!   (DescribeConfigs). Size on disk is not shown: the broker does not offer DescribeLogDirs.
//! - `create T --partitions N --replication-factor R --config k=v ...` (CreateTopics).
//! - `alter T --config k=v ... --delete-config k ...` (IncrementalAlterConfigs SET / DELETE).
//! - `delete T...` (DeleteTopics).
//!
//! What this module must never do: create a topic other than by `create` (Metadata asks with
//! auto-creation off), or report success for a topic the broker refused.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, ListOffsetsRequest, TopicName,
};
use serde_json::{json, Value};

use super::output::{print, Format, Table};
use super::session::{by_leader, error_name, str_bytes, Session};
use super::{Common, TopicsAction, TopicsCommand};

/// The client id of the tool's requests.
const CLIENT_ID: &str = "shardlog-topics";
/// ListOffsets timestamp meaning "the log end".
pub const LATEST: i64 = -1;
/// ListOffsets timestamp meaning "the log start".
pub const EARLIEST: i64 = -2;
/// How long the broker may take to apply a CreateTopics or DeleteTopics.
const ADMIN_TIMEOUT_MS: i32 = 30_000;
/// Kafka's resource type of a topic in config requests.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's config source of a topic's own setting.
const SOURCE_TOPIC: i8 = 1;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// Runs a `shardlog topics` command; prints to stdout, errors are returned.
pub fn run(command: TopicsCommand) -> Result<()> {
    let Common { bootstrap, format } = command.common;
    let mut session = Session::connect(&bootstrap, CLIENT_ID)?;
    match command.action {
        TopicsAction::List => list(&mut session, format),
        TopicsAction::Describe { topic } => describe(&mut session, &topic, format),
        TopicsAction::Create {
            topic,
            partitions,
            replication_factor,
            config,
        } => create(
            &mut session,
            &topic,
            partitions,
            replication_factor,
            &config,
        ),
        TopicsAction::Alter {
            topic,
            config,
            delete_config,
        } => alter(&mut session, &topic, &config, &delete_config),
        TopicsAction::Delete { topics } => delete(&mut session, &topics),
    }
}

/// `k=v` into its two halves; anything else is an error naming it.
pub fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{text}'")),
    }
}

fn list(session: &mut Session, format: Format) -> Result<()> {
    let response = session.metadata(None)?;
    let mut table = Table::new(&["topic", "partitions", "replication_factor"]);
    let mut topics: Vec<_> = response.topics.iter().collect();
    topics.sort_by_key(|t| t.name.as_ref().map(|n| n.0.to_string()));
    for t in topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        let rf = t.partitions.first().map_or(0, |p| p.replica_nodes.len());
        table.row(vec![json!(name), json!(t.partitions.len()), json!(rf)]);
    }
    print(format, &[("topics", Value::Null, Some(&table))]);
    Ok(())
}

/// ListOffsets of every partition of `topic` at `timestamp`, each asked of the partition's
/// leader: partition -> offset (-1 where no message is that late).
pub fn offsets(
    session: &mut Session,
    topic: &MetadataResponseTopic,
    timestamp: i64,
) -> Result<BTreeMap<i32, i64>> {
    let name = topic.name.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for (leader, partitions) in by_leader(topic)? {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name.clone())
                .with_partitions(
                    partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        let response = session.send_to(leader, &request)?;
        for answer in response.topics.into_iter().flat_map(|t| t.partitions) {
            if answer.error_code != 0 {
                bail!(
                    "ListOffsets {}-{} at broker {leader}: {}",
                    name.0,
                    answer.partition_index,
                    error_name(answer.error_code)
                );
            }
            out.insert(answer.partition_index, answer.offset);
        }
        if let Some(missing) = partitions.iter().find(|p| !out.contains_key(p)) {
            bail!(
                "ListOffsets: broker {leader} did not answer for {}-{missing}",
                name.0
            );
        }
    }
    Ok(out)
}

/// The topic's own config settings (not broker or Kafka defaults), sorted by name.
fn overrides(session: &mut Session, topic: &str) -> Result<Vec<(String, String)>> {
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(topic))
            .with_configuration_keys(None)]);
    let response = session.send(&request)?;
    let mut out = Vec::new();
    for result in response.results {
        if result.error_code != 0 {
            bail!("DescribeConfigs {topic}: {}", error_name(result.error_code));
        }
        for c in result.configs {
            if c.config_source == SOURCE_TOPIC {
                let value = c.value.map(|v| v.to_string()).unwrap_or_default();
                out.push((c.name.to_string(), value));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn ids(nodes: &[BrokerId]) -> Value {
    json!(nodes.iter().map(|b| b.0).collect::<Vec<_>>())
}

fn describe(session: &mut Session, topic: &str, format: Format) -> Result<()> {
    let meta = session.topic(topic)?;
    let start = offsets(session, &meta, EARLIEST)?;
    let end = offsets(session, &meta, LATEST)?;
    let configs = overrides(session, topic)?;
    let mut partitions = Table::new(&[
        "partition",
        "leader",
        "leader_epoch",
        "replicas",
        "isr",
        "log_start_offset",
        "log_end_offset",
    ]);
    let mut sorted: Vec<_> = meta.partitions.iter().collect();
    sorted.sort_by_key(|p| p.partition_index);
    for p in sorted {
        let i = p.partition_index;
        partitions.row(vec![
            json!(i),
            json!(p.leader_id.0),
            json!(p.leader_epoch),
            ids(&p.replica_nodes),
            ids(&p.isr_nodes),
            json!(start.get(&i)),
            json!(end.get(&i)),
        ]);
    }
    let mut config_table = Table::new(&["config", "value"]);
    for (name, value) in configs {
        config_table.row(vec![json!(name), json!(value)]);
    }
    let topic_id = meta.topic_id.to_string();
    print(
        format,
        &[
            ("topic", json!(topic), None),
            ("topic_id", json!(topic_id), None),
            (
                "size_on_disk",
                json!("not shown (the broker does not offer DescribeLogDirs)"),
                None,
            ),
            ("partitions", Value::Null, Some(&partitions)),
            ("configs", Value::Null, Some(&config_table)),
        ],
    );
    Ok(())
}

fn create(
    session: &mut Session,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[(String, String)],
) -> Result<()> {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(str_bytes(k.as_str()))
                            .with_value(Some(str_bytes(v.as_str())))
                    })
                    .collect(),
            )])
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let response = session.send(&request)?;
    let result = response
        .topics
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("CreateTopics: empty answer"))?;
    if result.error_code != 0 {
        let detail = result
            .error_message
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        bail!(
            "CreateTopics {topic}: {}{detail}",
            error_name(result.error_code)
        );
    }
    println!("created topic {topic}");
    Ok(())
}

fn alter(
    session: &mut Session,
    topic: &str,
    set: &[(String, String)],
    delete: &[String],
) -> Result<()> {
    if set.is_empty() && delete.is_empty() {
        bail!("nothing to change: give --config NAME=VALUE or --delete-config NAME");
    }
    let changes = set
        .iter()
        .map(|(k, v)| (k.as_str(), OP_SET, Some(v.as_str())))
        .chain(delete.iter().map(|k| (k.as_str(), OP_DELETE, None)));
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(topic))
            .with_configs(
                changes
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(str_bytes(k))
                            .with_config_operation(op)
                            .with_value(v.map(str_bytes))
                    })
                    .collect(),
            ),
    ]);
    let response = session.send(&request)?;
    for r in response.responses {
        if r.error_code != 0 {
            let detail = r
                .error_message
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            bail!(
                "IncrementalAlterConfigs {topic}: {}{detail}",
                error_name(r.error_code)
            );
        }
    }
    println!("altered topic {topic}");
    Ok(())
}

fn delete(session: &mut Session, topics: &[String]) -> Result<()> {
    if topics.is_empty() {
        bail!("name the topics to delete");
    }
    let request = DeleteTopicsRequest::default()
        .with_topic_names(
            topics
                .iter()
                .map(|t| TopicName(str_bytes(t.as_str())))
                .collect(),
        )
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let response = session.send(&request)?;
    let mut failed = Vec::new();
    for r in response.responses {
        let name = r.name.map(|n| n.0.to_string()).unwrap_or_default();
        if r.error_code == 0 {
            println!("deleted topic {name}");
        } else {
            failed.push(format!("{name}: {}", error_name(r.error_code)));
        }
    }
    if !failed.is_empty() {
        bail!("DeleteTopics: {}", failed.join(", "));
    }
    Ok(())
}
