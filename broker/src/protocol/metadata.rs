//! Metadata: the live brokers, the quorum leader as controller, and each topic's partitions
//! with their leader, leader epoch, replicas and ISR, all from this shard's copy of the
//! catalog. Unknown topics may be created on the fly (through the metadata quorum).

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{codes, decode_body, encode_response, Reply, Request};
use crate::catalog::{self, Catalog, Topic, NO_LEADER};
use crate::shard::ops::NewTopic;
use crate::shard::Shard;

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
                    replication_factor: -1,
                    assignments: Vec::new(),
                    configs: Vec::new(),
                })
                .collect();
            if !missing.is_empty() {
                // Losing a creation race to another client is fine: the topic exists then.
                let _ = shard.create_topics(missing, false).await;
            }
        }
    }
    let catalog = shard.catalog();
    let mut topics: Vec<MetadataResponseTopic> = match &wanted {
        None => catalog
            .topics
            .values()
            .map(|t| describe_topic(&catalog, t, request.version))
            .collect(),
        Some(names) => names
            .iter()
            .map(|name| match catalog.topics.get(name) {
                Some(topic) => describe_topic(&catalog, topic, request.version),
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
    let brokers = catalog
        .live_brokers()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port as i32)
        })
        .collect();
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(catalog.cluster_id.clone())))
        .with_controller_id(BrokerId(catalog.controller_for_clients(shard.node_id())))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED);
    Ok(encode_response(request, &response))
}

fn describe_topic(catalog: &Catalog, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let ids = |list: &[i32]| list.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let partitions = topic
        .placement
        .iter()
        .enumerate()
        .map(|(p, placement)| {
            let offline: Vec<i32> = placement
                .replicas
                .iter()
                .copied()
                .filter(|r| catalog.brokers.get(r).is_none_or(|b| b.fenced))
                .collect();
            let error = if placement.leader == NO_LEADER {
                codes::LEADER_NOT_AVAILABLE
            } else {
                codes::NONE
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(placement.leader))
                .with_leader_epoch(if version >= 7 {
                    placement.leader_epoch
                } else {
                    -1
                })
                .with_replica_nodes(ids(&placement.replicas))
                .with_isr_nodes(ids(&placement.isr))
                .with_offline_replicas(if version >= 5 { ids(&offline) } else { vec![] })
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(if version >= 10 {
            Uuid::from_bytes(topic.id)
        } else {
            Uuid::nil()
        })
        .with_is_internal(crate::catalog::is_internal(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

/// Kafka's UNSUPPORTED_ENDPOINT_TYPE: a broker describes brokers, not controllers.
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 119;
const ENDPOINT_TYPE_BROKER: i8 = 1;

/// DescribeCluster (KIP-700, KIP-919, KIP-1073): the live brokers (and the fenced ones when
/// asked, v2), the controller (the quorum leader) and the cluster id, from this shard's
/// catalog, as Metadata gives them.
pub async fn handle_describe_cluster(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: DescribeClusterRequest = decode_body(request)?;
    let catalog = shard.catalog();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(catalog.cluster_id.clone()))
        .with_controller_id(BrokerId(catalog.controller_for_clients(shard.node_id())))
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED);
    if request.version >= 1 {
        response.endpoint_type = ENDPOINT_TYPE_BROKER;
        if body.endpoint_type != ENDPOINT_TYPE_BROKER {
            response.error_code = UNSUPPORTED_ENDPOINT_TYPE;
            response.error_message = Some(StrBytes::from_static_str(
                "shardlog brokers describe brokers; the controllers are the voters of \
                 controller-quorum-voters",
            ));
            response.controller_id = BrokerId(-1);
            return Ok(encode_response(request, &response));
        }
    }
    let with_fenced = request.version >= 2 && body.include_fenced_brokers;
    response.brokers = catalog
        .brokers
        .values()
        .filter(|b| with_fenced || !b.fenced)
        .map(|b| {
            let mut broker = DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port as i32);
            if request.version >= 2 {
                broker.is_fenced = b.fenced;
            }
            broker
        })
        .collect();
    Ok(encode_response(request, &response))
}
