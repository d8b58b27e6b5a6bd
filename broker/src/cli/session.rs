//! A tool's view of a cluster: one connection to the bootstrap broker for cluster-wide
//! requests (Metadata, CreateTopics, ...), and one connection per broker a partition-level
//! or group-level request has to reach (a partition's leader, a group's coordinator), opened
//! when first needed at the address Metadata advertises.
//!
//! Owns the tools' connections and the naming of Kafka errors in their messages. Never asks
//! Metadata with auto-creation on (a tool must not create a topic by looking at it), and
//! never retries a request on its own.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use shardlog_client::{Client, ClientRequest, Options};

use super::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};

/// Kafka's name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`), as Kafka's tools print it.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".into(),
        Some(ResponseError::Unknown(code)) => format!("error {code}"),
        Some(known) => screaming_snake(&format!("{known:?}")),
    }
}

/// `UnknownTopicOrPartition` -> `UNKNOWN_TOPIC_OR_PARTITION`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A protocol string from text.
pub fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// One live broker as Metadata lists it.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    pub id: i32,
    pub address: String,
}

/// Connections of one tool run: the bootstrap broker's, and one per other broker it needs.
pub struct Session {
    bootstrap: String,
    options: Options,
    client: Client,
    /// Connections to brokers by id, opened on first use.
    brokers: BTreeMap<i32, Client>,
    /// Broker addresses from the last Metadata answer.
    addresses: BTreeMap<i32, String>,
}

impl Session {
    /// Connects to the bootstrap broker; an unreachable broker is an error naming it.
    pub fn connect(bootstrap: &str, client_id: &'static str) -> Result<Session> {
        let options = Options {
            client_id,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        };
        let client =
            Client::connect(bootstrap, &options).with_context(|| format!("broker {bootstrap}"))?;
        Ok(Session {
            bootstrap: bootstrap.to_string(),
            options,
            client,
            brokers: BTreeMap::new(),
            addresses: BTreeMap::new(),
        })
    }

    /// The bootstrap address, for messages.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The version [`Session::send`] uses for `R` with the bootstrap broker.
    pub fn version_of<R: ClientRequest>(&self) -> Result<i16> {
        Ok(self.client.version_of::<R>()?)
    }

    /// Sends `request` to the bootstrap broker.
    pub fn send<R: ClientRequest>(&mut self, request: &R) -> Result<R::Response> {
        let bootstrap = &self.bootstrap;
        self.client
            .send(request)
            .with_context(|| format!("broker {bootstrap}"))
    }

    /// Sends `request` to broker `id` (its address from the last Metadata answer).
    pub fn send_to<R: ClientRequest>(&mut self, id: i32, request: &R) -> Result<R::Response> {
        let address =
            self.addresses.get(&id).cloned().ok_or_else(|| {
                anyhow!("broker {id} is not among the live brokers Metadata lists")
            })?;
        if !self.brokers.contains_key(&id) {
            let client = Client::connect(&address, &self.options)
                .with_context(|| format!("broker {id} at {address}"))?;
            self.brokers.insert(id, client);
        }
        let client = self.brokers.get_mut(&id).expect("inserted above");
        client
            .send(request)
            .with_context(|| format!("broker {id} at {address}"))
    }

    /// Metadata of `topics` (every topic with `None`), never creating one; remembers the
    /// brokers' addresses for [`Session::send_to`].
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(str_bytes(n.as_str()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let response = self.send(&request)?;
        self.addresses = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        Ok(response)
    }

    /// The live brokers of the last Metadata answer.
    pub fn brokers(&self) -> Vec<BrokerAddress> {
        self.addresses
            .iter()
            .map(|(id, address)| BrokerAddress {
                id: *id,
                address: address.clone(),
            })
            .collect()
    }

    /// One topic's metadata; an unknown topic (or any topic error) is an error naming it.
    pub fn topic(&mut self, topic: &str) -> Result<MetadataResponseTopic> {
        let response = self.metadata(Some(&[topic.to_string()]))?;
        let found = response
            .topics
            .into_iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .ok_or_else(|| anyhow!("Metadata: no answer for topic {topic}"))?;
        if found.error_code != 0 {
            bail!("topic {topic}: {}", error_name(found.error_code));
        }
        Ok(found)
    }

    /// The broker coordinating `group` (FindCoordinator); Metadata must have been asked.
    pub fn coordinator(&mut self, group: &str) -> Result<i32> {
        if self.addresses.is_empty() {
            self.metadata(Some(&[]))?;
        }
        let request = FindCoordinatorRequest::default()
            .with_key(str_bytes(group))
            .with_key_type(0);
        let response = self.send(&request)?;
        if response.error_code != 0 {
            bail!(
                "FindCoordinator {group}: {}",
                error_name(response.error_code)
            );
        }
        let id = response.node_id.0;
        // A coordinator Metadata did not list (it joined since): use the address given.
        self.addresses
            .entry(id)
            .or_insert_with(|| format!("{}:{}", response.host, response.port));
        Ok(id)
    }
}

/// Partition indexes of `topic` grouped by their leader's broker id, each group sorted; a
/// partition without a leader is an error naming it.
pub fn by_leader(topic: &MetadataResponseTopic) -> Result<BTreeMap<i32, Vec<i32>>> {
    let name = topic
        .name
        .as_ref()
        .map(|n| n.0.to_string())
        .unwrap_or_default();
    let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &topic.partitions {
        if p.error_code != 0 || p.leader_id == BrokerId(-1) {
            bail!(
                "{name}-{}: no leader ({})",
                p.partition_index,
                error_name(p.error_code)
            );
        }
        out.entry(p.leader_id.0)
            .or_default()
            .push(p.partition_index);
    }
    for partitions in out.values_mut() {
        partitions.sort();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(69), "GROUP_ID_NOT_FOUND");
        assert_eq!(error_name(-999), "error -999");
    }
}
