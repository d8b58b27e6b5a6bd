//! Metadata: the one broker (this node, at its advertised address), and each topic's
//! partitions with this node as leader. Unknown topics may be created on the fly.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{codes, decode_body, encode_response, Reply, Request};
use crate::catalog::{self, Topic};
use crate::shard::ops::NewTopic;
use crate::shard::Shard;

/// Cluster id reported to clients; one node, one cluster.
pub const CLUSTER_ID: &str = "shardlog-cluster-0001";

/// Kafka's "authorized operations not requested" marker (INT32_MIN); -1 crashes kafka-python.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub async fn handle(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: MetadataRequest = decode_body(request)?;
    // Before v4 a request could not opt out of auto-creation.
    let allow_create =
        shard.config.auto_create_topics && (request.version < 4 || body.allow_auto_topic_creation);
    let mut wanted: Option<Vec<String>> = None;
    let mut unknown_ids = Vec::new();
    if let Some(topics) = &body.topics {
        let catalog = shard.catalog();
        let mut names = Vec::with_capacity(topics.len());
        for t in topics {
            match &t.name {
                Some(name) => names.push(name.0.to_string()),
                None => match catalog
                    .topics
                    .values()
                    .find(|x| x.id == *t.topic_id.as_bytes())
                {
                    Some(found) => names.push(found.name.clone()),
                    None => unknown_ids.push(t.topic_id),
                },
            }
        }
        wanted = Some(names);
    }
    if allow_create {
        if let Some(names) = &wanted {
            let catalog = shard.catalog();
            let missing: Vec<NewTopic> = names
                .iter()
                .filter(|n| !catalog.topics.contains_key(*n) && catalog::valid_topic_name(n))
                .map(|n| NewTopic {
                    name: n.clone(),
                    partitions: shard.config.num_partitions,
                    configs: Vec::new(),
                })
                .collect();
            if !missing.is_empty() {
                // Losing a creation race to another client is fine: the topic exists then.
                let _ = shard
                    .call(0, move |controller| async move {
                        controller.create_topics(missing, false).await
                    })
                    .await;
            }
        }
    }
    let catalog = shard.catalog();
    let mut topics: Vec<MetadataResponseTopic> = match &wanted {
        None => catalog
            .topics
            .values()
            .map(|t| describe_topic(shard, t, request.version))
            .collect(),
        Some(names) => names
            .iter()
            .map(|name| match catalog.topics.get(name) {
                Some(topic) => describe_topic(shard, topic, request.version),
                None => {
                    let code = if catalog::valid_topic_name(name) {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        codes::INVALID_TOPIC_EXCEPTION
                    };
                    MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
                }
            })
            .collect(),
    };
    for id in unknown_ids {
        topics.push(
            MetadataResponseTopic::default()
                .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                .with_topic_id(id)
                .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED),
        );
    }
    let node = shard.config.node_id;
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(node))
        .with_host(StrBytes::from_string(shard.config.advertise_host.clone()))
        .with_port(shard.config.advertise_port as i32);
    let response = MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(BrokerId(node))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED);
    Ok(encode_response(request, &response))
}

fn describe_topic(shard: &Shard, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let node = BrokerId(shard.config.node_id);
    let partitions = (0..topic.owners.len() as i32)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(node)
                .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(if version >= 10 {
            Uuid::from_bytes(topic.id)
        } else {
            Uuid::nil()
        })
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}
