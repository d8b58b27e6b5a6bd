//! Admin APIs: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs,
//! IncrementalAlterConfigs, and InitProducerId. Every catalog change goes through the
//! metadata quorum (`Shard::change_metadata`) and is answered once this shard holds it.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::{CreatableReplicaAssignment, CreatableTopic};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, InitProducerIdRequest, InitProducerIdResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{codes, decode_body, encode_response, Reply, Request};
use crate::catalog::{self, ListOp, TOPIC_CONFIGS};
use crate::cluster::Growth;
use crate::shard::ops::NewTopic;
use crate::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Config changes to one topic: each name with its new value, None to remove the override.
type ConfigChanges = Vec<(String, Option<String>)>;
/// Why a request or resource is refused: a Kafka error code and a message.
type Refusal = (i16, String);

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

pub async fn handle_create_topics(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: CreateTopicsRequest = decode_body(request)?;
    let mut new_topics = Vec::new();
    let mut results: Vec<CreatableTopicResult> = Vec::with_capacity(body.topics.len());
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let mut partitions = if topic.num_partitions == -1 {
            shard.config.num_partitions
        } else {
            topic.num_partitions
        };
        let mut configs = Vec::new();
        for c in &topic.configs {
            if let Some(v) = &c.value {
                configs.push((c.name.to_string(), v.to_string()));
            }
        }
        let mut assignments = Vec::new();
        let refusal = if catalog::is_internal(&name) {
            // The broker creates it (first group request) with the settings the coordinator
            // relies on: compaction, its partition count.
            Some((
                codes::INVALID_REQUEST,
                format!("creation of internal topic {name} is prohibited"),
            ))
        } else if !topic.assignments.is_empty() {
            match assigned_partitions(topic) {
                Ok(lists) => {
                    partitions = lists.len() as i32;
                    assignments = lists;
                    None
                }
                Err(refusal) => Some(refusal),
            }
        } else if topic.replication_factor == 0 || topic.replication_factor < -1 {
            Some((
                codes::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor must be at least 1, got {}",
                    topic.replication_factor
                ),
            ))
        } else {
            None
        };
        let refusal = refusal.or_else(|| {
            let all: BTreeMap<String, String> = configs.iter().cloned().collect();
            catalog::validate_topic_configs(&all)
                .err()
                .map(|why| (codes::INVALID_CONFIG, why))
        });
        if let Some((code, message)) = refusal {
            result.error_code = code;
            result.error_message = Some(str_bytes(message));
        }
        if result.error_code == codes::NONE {
            new_topics.push((
                results.len(),
                NewTopic {
                    name,
                    partitions,
                    replication_factor: topic.replication_factor as i32,
                    assignments,
                    configs,
                },
            ));
        }
        results.push(result);
    }
    let validate_only = body.validate_only;
    let (indexes, topics): (Vec<usize>, Vec<NewTopic>) = new_topics.into_iter().unzip();
    if !topics.is_empty() {
        let outcomes = shard.create_topics(topics, validate_only).await;
        for (i, (code, message)) in indexes.into_iter().zip(outcomes) {
            results[i].error_code = code;
            results[i].error_message = message.map(str_bytes);
        }
    }
    let catalog = shard.catalog();
    for (result, topic) in results.iter_mut().zip(&body.topics) {
        if request.version >= 5 {
            result.num_partitions = if topic.num_partitions == -1 && topic.assignments.is_empty() {
                shard.config.num_partitions
            } else if topic.assignments.is_empty() {
                topic.num_partitions
            } else {
                topic.assignments.len() as i32
            };
            result.replication_factor =
                if topic.replication_factor == -1 && topic.assignments.is_empty() {
                    shard.config.default_replication_factor as i16
                } else if topic.assignments.is_empty() {
                    topic.replication_factor
                } else {
                    topic.assignments[0].broker_ids.len() as i16
                };
        }
        if let Some(created) = catalog.topics.get(result.name.0.as_str()) {
            if result.error_code == codes::NONE && request.version >= 7 {
                result.topic_id = Uuid::from_bytes(created.id);
            }
        }
        if result.error_code != codes::NONE && request.version >= 5 {
            result.num_partitions = -1;
            result.replication_factor = -1;
        }
    }
    Ok(encode_response(
        request,
        &CreateTopicsResponse::default().with_topics(results),
    ))
}

/// The replica lists of a manual assignment, by partition number, checked as Kafka's
/// controller checks one (`ReplicationControlManager.createTopic`): each partition once,
/// numbered 0..n without gaps. Whether the brokers exist, appear once per list and every
/// partition has as many replicas is checked by the metadata quorum, against the brokers it
/// knows. Err holds Kafka's error code and a message.
fn assigned_partitions(topic: &CreatableTopic) -> Result<Vec<Vec<i32>>, Refusal> {
    let invalid = |why: String| Err((codes::INVALID_REPLICA_ASSIGNMENT, why));
    if topic.replication_factor != -1 {
        return Err((
            codes::INVALID_REQUEST,
            "a manual partition assignment was specified, but replication factor was not \
             set to -1"
                .to_string(),
        ));
    }
    if topic.num_partitions != -1 {
        return Err((
            codes::INVALID_REQUEST,
            "a manual partition assignment was specified, but numPartitions was not set to -1"
                .to_string(),
        ));
    }
    let mut lists = BTreeMap::new();
    for CreatableReplicaAssignment {
        partition_index,
        broker_ids,
        ..
    } in &topic.assignments
    {
        let brokers: Vec<i32> = broker_ids.iter().map(|b| b.0).collect();
        if lists.insert(*partition_index, brokers).is_some() {
            return invalid(format!(
                "found multiple manual partition assignments for partition {partition_index}"
            ));
        }
    }
    let count = lists.len() as i32;
    if !lists.keys().copied().eq(0..count) {
        return invalid("partitions should be a consecutive 0-based integer sequence".into());
    }
    Ok(lists.into_values().collect())
}

pub async fn handle_delete_topics(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: DeleteTopicsRequest = decode_body(request)?;
    // v6 names topics in `topics` (by name or id); earlier versions in `topic_names`.
    let catalog = shard.catalog();
    let mut names: Vec<Option<String>> = body
        .topic_names
        .iter()
        .map(|n| Some(n.0.to_string()))
        .collect();
    let mut ids = vec![Uuid::nil(); names.len()];
    for t in &body.topics {
        let name = match &t.name {
            Some(name) => Some(name.0.to_string()),
            None => catalog
                .topics
                .values()
                .find(|x| x.id == *t.topic_id.as_bytes())
                .map(|x| x.name.clone()),
        };
        names.push(name);
        ids.push(t.topic_id);
    }
    let known: Vec<String> = names.iter().flatten().cloned().collect();
    let outcomes = shard.delete_topics(known).await;
    let mut outcomes = outcomes.into_iter();
    let responses = names
        .into_iter()
        .zip(ids)
        .map(|(name, id)| {
            let code = match &name {
                Some(_) => outcomes.next().unwrap_or(codes::UNKNOWN_SERVER_ERROR),
                None => codes::UNKNOWN_TOPIC_OR_PARTITION,
            };
            DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id)
                .with_error_code(code)
        })
        .collect();
    Ok(encode_response(
        request,
        &DeleteTopicsResponse::default().with_responses(responses),
    ))
}

pub async fn handle_create_partitions(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: CreatePartitionsRequest = decode_body(request)?;
    let asks: Vec<Growth> = body
        .topics
        .iter()
        .map(|t| Growth {
            name: t.name.0.to_string(),
            count: t.count,
            assignments: t
                .assignments
                .iter()
                .flatten()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect(),
        })
        .collect();
    let validate_only = body.validate_only;
    let outcomes = shard.create_partitions(asks, validate_only).await;
    let results = body
        .topics
        .into_iter()
        .zip(outcomes)
        .map(|(t, (code, message))| {
            CreatePartitionsTopicResult::default()
                .with_name(t.name)
                .with_error_code(code)
                .with_error_message(message.map(str_bytes))
        })
        .collect();
    Ok(encode_response(
        request,
        &CreatePartitionsResponse::default().with_results(results),
    ))
}

/// A topic config's value when the topic does not override it and the broker has its own
/// setting for it (Kafka's `log.*` synonyms); None where Kafka's default applies.
fn broker_topic_default(shard: &Shard, name: &str) -> Option<String> {
    let c = &shard.config;
    Some(match name {
        "retention.ms" => c.retention_ms.to_string(),
        "retention.bytes" => c.retention_bytes.to_string(),
        "segment.bytes" => c.segment_bytes.to_string(),
        "segment.ms" => c.segment_ms.to_string(),
        "max.message.bytes" => c.max_message_bytes.to_string(),
        "index.interval.bytes" => c.index_interval_bytes.to_string(),
        "min.insync.replicas" => c.min_insync_replicas.to_string(),
        _ => return None,
    })
}

pub async fn handle_describe_configs(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: DescribeConfigsRequest = decode_body(request)?;
    let catalog = shard.catalog();
    let mut results = Vec::with_capacity(body.resources.len());
    for resource in body.resources {
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let keys: Option<Vec<String>> = resource
            .configuration_keys
            .map(|k| k.iter().map(|s| s.to_string()).collect());
        let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|x| x == name));
        match resource.resource_type {
            RESOURCE_TOPIC => match catalog.topics.get(resource.resource_name.as_str()) {
                Some(topic) => {
                    // Every config Kafka defines, as Kafka lists them: the topic's override,
                    // else the broker's setting, else Kafka's default.
                    for config in TOPIC_CONFIGS.iter().filter(|c| wanted(c.name)) {
                        let (value, source) = match topic.configs.get(config.name) {
                            Some(value) => (value.clone(), SOURCE_TOPIC),
                            None => match broker_topic_default(shard, config.name) {
                                Some(value) => (value, SOURCE_STATIC_BROKER),
                                None => (config.default.to_string(), SOURCE_DEFAULT),
                            },
                        };
                        let kind = if request.version >= 3 {
                            config.kind.code()
                        } else {
                            0
                        };
                        result.configs.push(
                            DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(config.name))
                                .with_value(Some(str_bytes(value)))
                                .with_config_source(source)
                                .with_config_type(kind),
                        );
                    }
                }
                None => {
                    result.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
                    result.error_message = Some(str_bytes("unknown topic"));
                }
            },
            RESOURCE_BROKER => {
                let c = &shard.config;
                let broker_configs = [
                    ("num.partitions", c.num_partitions.to_string(), TYPE_INT),
                    (
                        "auto.create.topics.enable",
                        c.auto_create_topics.to_string(),
                        1,
                    ),
                    ("log.segment.bytes", c.segment_bytes.to_string(), TYPE_INT),
                    ("log.retention.ms", c.retention_ms.to_string(), TYPE_LONG),
                    (
                        "log.retention.bytes",
                        c.retention_bytes.to_string(),
                        TYPE_LONG,
                    ),
                    (
                        "message.max.bytes",
                        c.max_message_bytes.to_string(),
                        TYPE_INT,
                    ),
                    (
                        "log.flush.interval.ms",
                        c.flush_interval_ms.to_string(),
                        TYPE_LONG,
                    ),
                ];
                for (name, value, kind) in broker_configs.into_iter().filter(|(n, _, _)| wanted(n))
                {
                    result.configs.push(
                        DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(name))
                            .with_value(Some(str_bytes(value)))
                            .with_read_only(true)
                            .with_config_source(SOURCE_STATIC_BROKER)
                            .with_config_type(if request.version >= 3 { kind } else { 0 }),
                    );
                }
            }
            _ => {
                result.error_code = codes::INVALID_REQUEST;
                result.error_message = Some(str_bytes("unsupported resource type"));
            }
        }
        results.push(result);
    }
    Ok(encode_response(
        request,
        &DescribeConfigsResponse::default().with_results(results),
    ))
}

/// AlterConfigs replaces a topic's whole set of overrides.
pub async fn handle_alter_configs(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: AlterConfigsRequest = decode_body(request)?;
    let mut responses = Vec::with_capacity(body.resources.len());
    for resource in body.resources {
        let name = resource.resource_name.to_string();
        // AlterConfigs replaces the whole set: every current override not named is removed.
        let mut set: ConfigChanges = shard
            .catalog()
            .topics
            .get(&name)
            .map(|t| t.configs.keys().map(|k| (k.clone(), None)).collect())
            .unwrap_or_default();
        for c in resource.configs {
            set.push((c.name.to_string(), c.value.map(|v| v.to_string())));
        }
        let (code, message) = alter_topic(
            shard,
            resource.resource_type,
            name,
            Ok(set),
            body.validate_only,
        )
        .await?;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(str_bytes))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    Ok(encode_response(
        request,
        &AlterConfigsResponse::default().with_responses(responses),
    ))
}

/// IncrementalAlterConfigs: SET, DELETE, and APPEND / SUBTRACT on list configs, of single
/// topic configs. APPEND and SUBTRACT become a SET of the list they produce from the
/// topic's value in this shard's catalog copy, which is current once every earlier change
/// was answered (the controller hands each change to every shard before it answers).
pub async fn handle_incremental_alter_configs(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: IncrementalAlterConfigsRequest = decode_body(request)?;
    let mut responses = Vec::with_capacity(body.resources.len());
    for resource in body.resources {
        let name = resource.resource_name.to_string();
        // The topic's overrides as the operations before each one left them.
        let mut current: BTreeMap<String, String> = shard
            .catalog()
            .topics
            .get(&name)
            .map(|t| t.configs.clone())
            .unwrap_or_default();
        let set = resource
            .configs
            .iter()
            .map(|c| {
                let key = c.name.to_string();
                let value = c.value.as_ref().map(|v| v.to_string());
                let new = match c.config_operation {
                    OP_SET => value,
                    OP_DELETE => None,
                    op @ (OP_APPEND | OP_SUBTRACT) => {
                        let op = if op == OP_APPEND {
                            ListOp::Append
                        } else {
                            ListOp::Subtract
                        };
                        let items = value.unwrap_or_default();
                        let list = catalog::alter_list(
                            &key,
                            current.get(&key).map(String::as_str),
                            op,
                            &items,
                        )
                        .map_err(|why| (codes::INVALID_CONFIG, why))?;
                        Some(list)
                    }
                    op => {
                        return Err((
                            codes::INVALID_REQUEST,
                            format!("unknown config operation {op} on {key}"),
                        ))
                    }
                };
                match &new {
                    Some(v) => current.insert(key.clone(), v.clone()),
                    None => current.remove(&key),
                };
                Ok((key, new))
            })
            .collect();
        let (code, message) =
            alter_topic(shard, resource.resource_type, name, set, body.validate_only).await?;
        responses.push(
            IncrementalResult::default()
                .with_error_code(code)
                .with_error_message(message.map(str_bytes))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    Ok(encode_response(
        request,
        &IncrementalAlterConfigsResponse::default().with_responses(responses),
    ))
}

/// Apply config changes to one topic on the controller; (error code, message) for the
/// resource. `set` is Err (with the error code) when an operation could not be turned into
/// a value.
async fn alter_topic(
    shard: &Rc<Shard>,
    resource_type: i8,
    topic: String,
    set: Result<ConfigChanges, Refusal>,
    validate_only: bool,
) -> Result<(i16, Option<String>), String> {
    if resource_type != RESOURCE_TOPIC {
        return Ok((
            codes::INVALID_REQUEST,
            Some("only topic configs can be altered".to_string()),
        ));
    }
    let set = match set {
        Ok(set) => set,
        Err((code, why)) => return Ok((code, Some(why))),
    };
    // The rules between values need the topic's whole set as it would become.
    if let Some(existing) = shard.catalog().topics.get(&topic) {
        let mut all = existing.configs.clone();
        for (name, value) in &set {
            match value {
                Some(v) => all.insert(name.clone(), v.clone()),
                None => all.remove(name),
            };
        }
        if let Err(why) = catalog::validate_topic_configs(&all) {
            return Ok((codes::INVALID_CONFIG, Some(why)));
        }
    }
    Ok(shard.alter_topic_configs(topic, set, validate_only).await)
}

/// InitProducerId for idempotent producers. Transactions are not offered (their APIs are not
/// advertised), so a transactional id is refused with TRANSACTIONAL_ID_AUTHORIZATION_FAILED
/// (53), the one answer both librdkafka and the Java client treat as fatal at once: any
/// retriable code (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR, ...) and any code librdkafka
/// does not single out (INVALID_REQUEST, UNSUPPORTED_VERSION) make librdkafka retry until
/// `init_transactions` times out. FindCoordinator for a transaction answers the same (see
/// `groups::handle_find_coordinator`), so clients normally stop there. An empty id is
/// INVALID_REQUEST, as Kafka answers it.
pub async fn handle_init_producer_id(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: InitProducerIdRequest = decode_body(request)?;
    let mut response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    // KIP-360: an existing producer bumps its epoch to reset its sequences; a new one (or
    // one whose epoch would overflow) gets a fresh id at epoch 0.
    let known = body.producer_id.0 >= 0 && body.producer_epoch >= 0;
    if let Some(id) = &body.transactional_id {
        response.error_code = if id.0.is_empty() {
            codes::INVALID_REQUEST
        } else {
            codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        };
    } else if known && body.producer_epoch < i16::MAX {
        response = response
            .with_producer_id(body.producer_id)
            .with_producer_epoch(body.producer_epoch + 1);
    } else {
        match allocate(shard).await {
            Ok(id) => {
                response = response
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0)
            }
            Err(_) => response.error_code = codes::KAFKA_STORAGE_ERROR,
        }
    }
    Ok(encode_response(request, &response))
}

async fn allocate(shard: &Rc<Shard>) -> Result<i64, String> {
    shard.allocate_producer_id().await
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::BrokerId;

    use super::*;

    /// A CreateTopics entry with a manual assignment: (partition, brokers) pairs.
    fn assigned(parts: &[(i32, &[i32])]) -> CreatableTopic {
        let assignments = parts
            .iter()
            .map(|(p, brokers)| {
                CreatableReplicaAssignment::default()
                    .with_partition_index(*p)
                    .with_broker_ids(brokers.iter().map(|b| BrokerId(*b)).collect())
            })
            .collect();
        CreatableTopic::default()
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(assignments)
    }

    #[test]
    fn an_assignment_gives_the_replica_lists_by_partition() {
        assert_eq!(
            assigned_partitions(&assigned(&[(0, &[3])])),
            Ok(vec![vec![3]])
        );
        let out_of_order = assigned(&[(2, &[3, 1]), (0, &[3, 2]), (1, &[1, 3])]);
        assert_eq!(
            assigned_partitions(&out_of_order),
            Ok(vec![vec![3, 2], vec![1, 3], vec![3, 1]])
        );
    }

    #[test]
    fn badly_numbered_assignments_are_invalid_replica_assignment() {
        // Broker checks (unknown, repeated, empty lists) are the quorum's: see
        // cluster::metadata's tests.
        let cases: [&[(i32, &[i32])]; 3] = [
            &[(0, &[3]), (0, &[3])], // a partition assigned twice
            &[(0, &[3]), (2, &[3])], // a gap in the numbering
            &[(1, &[3])],            // numbering starts at 0
        ];
        for parts in cases {
            let (code, _) = assigned_partitions(&assigned(parts)).unwrap_err();
            assert_eq!(code, codes::INVALID_REPLICA_ASSIGNMENT, "{parts:?}");
        }
    }

    #[test]
    fn an_assignment_with_a_partition_count_or_replication_factor_is_invalid_request() {
        let with_count = assigned(&[(0, &[3])]).with_num_partitions(1);
        let with_factor = assigned(&[(0, &[3])]).with_replication_factor(1);
        for topic in [with_count, with_factor] {
            let (code, _) = assigned_partitions(&topic).unwrap_err();
            assert_eq!(code, codes::INVALID_REQUEST);
        }
    }
}
