//! Metadata records and how they change the catalog: the quorum's state machine logic, with
//! no I/O and no clock, so every node that applies the same records in the same order holds
//! the same catalog, and every rule here is unit-tested directly.
//!
//! Checks that depend on the catalog (does the topic exist, are there enough brokers, is the
//! assignment on registered brokers) run here, at apply time, so they see exactly the state
//! the change lands on; the answer travels back to the proposer as the record's `Reply`.
//! Anything random (topic ids, the cluster id) is chosen by the proposer and carried in the
//! record.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Broker, Catalog, Placement, Topic, NO_LEADER};
use crate::codes;

/// A topic to create, as proposed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NewTopicSpec {
    pub name: String,
    /// Chosen by the proposer (random), so applying is deterministic.
    pub id: [u8; 16],
    pub partitions: i32,
    /// Already resolved from the broker default (never -1).
    pub replication_factor: i32,
    /// A manual assignment: one replica list per partition (empty: place automatically).
    pub assignments: Vec<Vec<i32>>,
    pub configs: Vec<(String, String)>,
}

/// One topic of a CreatePartitions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Growth {
    pub name: String,
    pub count: i32,
    /// Replica lists of the new partitions, in order (empty: automatic placement).
    pub assignments: Vec<Vec<i32>>,
}

/// What a broker says about itself when it registers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub id: i32,
    pub incarnation: String,
    pub host: String,
    pub port: u16,
    pub controller_addr: String,
}

/// One topic of a single-node data dir: name, id, owner shards, configs.
pub type LegacyTopic = (String, [u8; 16], Vec<u32>, BTreeMap<String, String>);

/// The topics of a single-node data dir, imported by its first record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LegacyImport {
    pub topics: Vec<LegacyTopic>,
    pub next_producer_id: i64,
}

/// One metadata record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    /// The cluster's first record: its id, and (when the first leader opened a data dir of a
    /// single-node version) the topics that data dir held, placed on that node. Later
    /// Bootstrap records are no-ops.
    Bootstrap {
        cluster_id: String,
        node_id: i32,
        legacy: Option<LegacyImport>,
    },
    RegisterBroker(Registration),
    /// Session expired (the epoch names the registration it expired, so a late fence cannot
    /// hit a newer registration).
    FenceBroker {
        id: i32,
        epoch: u64,
    },
    UnfenceBroker {
        id: i32,
        epoch: u64,
    },
    CreateTopics {
        topics: Vec<NewTopicSpec>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    /// Grow topics: each with its new partition count and, optionally, the replica list of
    /// each new partition (empty: placed automatically).
    CreatePartitions {
        topics: Vec<Growth>,
        validate_only: bool,
    },
    /// Set (Some) or remove (None) topic config overrides.
    SetTopicConfigs {
        topic: String,
        set: Vec<(String, Option<String>)>,
        validate_only: bool,
    },
    AllocateProducerIds {
        count: i64,
    },
    /// A partition leader changes its ISR (Kafka's AlterPartition): applied only while
    /// `leader` still leads the partition at `leader_epoch` under its registration
    /// `broker_epoch`, so a fenced or deposed leader cannot change it.
    AlterIsr {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        broker_epoch: u64,
        isr: Vec<i32>,
    },
    /// Controlled shutdown: broker `id` (registration `epoch`) is about to stop. It is fenced
    /// now, as if its session had expired: its leaderships move to other ISR members and it
    /// leaves every ISR, before it stops serving.
    ShutdownBroker {
        id: i32,
        epoch: u64,
    },
    /// Give every partition back to its preferred replica (the first) where that replica is
    /// live and in the ISR (Kafka's auto leader rebalance).
    ElectPreferredLeaders,
}

/// What applying a record answers the proposer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub enum Reply {
    #[default]
    Done,
    /// One (error code, message) per item of the request, in order.
    Outcomes(Vec<(i16, Option<String>)>),
    Registered {
        epoch: u64,
    },
    ProducerIds {
        first: i64,
    },
}

/// Apply one committed record at log `index`.
pub fn apply(catalog: &mut Catalog, index: u64, command: &Command) -> Reply {
    catalog.version = index;
    match command {
        Command::Bootstrap {
            cluster_id,
            node_id,
            legacy,
        } => {
            if catalog.cluster_id.is_empty() {
                catalog.cluster_id = cluster_id.clone();
                if let Some(legacy) = legacy {
                    import(catalog, *node_id, legacy);
                }
            }
            Reply::Done
        }
        Command::RegisterBroker(r) => {
            let wiped = catalog
                .brokers
                .get(&r.id)
                .is_some_and(|b| b.incarnation != r.incarnation);
            if wiped {
                // Another data dir under the same id (KIP-903): whatever the old one held
                // is gone, so it may not count as in sync anywhere.
                leave_every_isr(catalog, r.id);
            }
            catalog.brokers.insert(
                r.id,
                Broker {
                    id: r.id,
                    incarnation: r.incarnation.clone(),
                    host: r.host.clone(),
                    port: r.port,
                    controller_addr: r.controller_addr.clone(),
                    epoch: index,
                    fenced: false,
                },
            );
            elect_offline(catalog);
            Reply::Registered { epoch: index }
        }
        Command::FenceBroker { id, epoch } | Command::ShutdownBroker { id, epoch } => {
            if let Some(b) = catalog.brokers.get_mut(id) {
                if b.epoch == *epoch && !b.fenced {
                    b.fenced = true;
                    remove_broker(catalog, *id);
                }
            }
            Reply::Done
        }
        Command::UnfenceBroker { id, epoch } => {
            if let Some(b) = catalog.brokers.get_mut(id) {
                if b.epoch == *epoch && b.fenced {
                    b.fenced = false;
                    elect_offline(catalog);
                }
            }
            Reply::Done
        }
        Command::CreateTopics {
            topics,
            validate_only,
        } => {
            let outcomes = topics
                .iter()
                .map(|spec| match new_topic(catalog, spec) {
                    Ok(topic) => {
                        if !validate_only {
                            catalog.topics.insert(spec.name.clone(), topic);
                        }
                        (codes::NONE, None)
                    }
                    Err((code, message)) => (code, Some(message)),
                })
                .collect();
            Reply::Outcomes(outcomes)
        }
        Command::DeleteTopics { names } => Reply::Outcomes(
            names
                .iter()
                .map(|name| match catalog.topics.remove(name) {
                    Some(_) => (codes::NONE, None),
                    None => (
                        codes::UNKNOWN_TOPIC_OR_PARTITION,
                        Some(format!("no topic '{name}'")),
                    ),
                })
                .collect(),
        ),
        Command::CreatePartitions {
            topics,
            validate_only,
        } => Reply::Outcomes(
            topics
                .iter()
                .map(|g| match grow(catalog, g, *validate_only) {
                    Ok(()) => (codes::NONE, None),
                    Err((code, message)) => (code, Some(message)),
                })
                .collect(),
        ),
        Command::SetTopicConfigs {
            topic,
            set,
            validate_only,
        } => Reply::Outcomes(vec![
            match set_configs(catalog, topic, set, *validate_only) {
                Ok(()) => (codes::NONE, None),
                Err((code, message)) => (code, Some(message)),
            },
        ]),
        Command::AllocateProducerIds { count } => {
            let first = catalog.next_producer_id.max(1000);
            catalog.next_producer_id = first + count.max(&1);
            Reply::ProducerIds { first }
        }
        Command::AlterIsr {
            topic,
            partition,
            leader,
            leader_epoch,
            broker_epoch,
            isr,
        } => Reply::Outcomes(vec![match alter_isr(
            catalog,
            topic,
            *partition,
            (*leader, *leader_epoch, *broker_epoch),
            isr,
        ) {
            Ok(()) => (codes::NONE, None),
            Err((code, message)) => (code, Some(message)),
        }]),
        Command::ElectPreferredLeaders => {
            let live: BTreeSet<i32> = live_ids(catalog).into_iter().collect();
            for p in catalog.topics.values_mut().flat_map(|t| &mut t.placement) {
                if let Some(&preferred) = p.replicas.first() {
                    if p.leader != preferred
                        && live.contains(&preferred)
                        && p.isr.contains(&preferred)
                    {
                        p.leader = preferred;
                        p.leader_epoch += 1;
                    }
                }
            }
            Reply::Done
        }
    }
}

/// Whether some partition is led by another replica than its preferred one although that
/// one is live and in sync (what `ElectPreferredLeaders` would change).
pub fn leaders_imbalanced(catalog: &Catalog) -> bool {
    catalog
        .topics
        .values()
        .flat_map(|t| &t.placement)
        .any(|p| match p.replicas.first() {
            Some(&preferred) => {
                p.leader != preferred && is_live(catalog, preferred) && p.isr.contains(&preferred)
            }
            None => false,
        })
}

fn alter_isr(
    catalog: &mut Catalog,
    topic: &str,
    partition: i32,
    (leader, leader_epoch, broker_epoch): (i32, i32, u64),
    isr: &[i32],
) -> Result<(), Refusal> {
    let registered = catalog.brokers.get(&leader);
    if registered.is_none_or(|b| b.fenced || b.epoch != broker_epoch) {
        return Err((
            codes::STALE_BROKER_EPOCH,
            format!("broker {leader} is fenced or registered again since"),
        ));
    }
    let live: BTreeSet<i32> = live_ids(catalog).into_iter().collect();
    let p = catalog
        .topics
        .get_mut(topic)
        .and_then(|t| t.placement.get_mut(usize::try_from(partition).ok()?))
        .ok_or((
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no partition {topic}-{partition}"),
        ))?;
    if p.leader != leader || p.leader_epoch != leader_epoch {
        return Err((
            codes::FENCED_LEADER_EPOCH,
            format!(
                "{topic}-{partition} is led by {} at epoch {}",
                p.leader, p.leader_epoch
            ),
        ));
    }
    if !isr.contains(&leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
        return Err((
            codes::INVALID_REQUEST,
            format!("ISR {isr:?} must hold the leader and replicas only"),
        ));
    }
    if let Some(r) = isr.iter().find(|r| !p.isr.contains(r) && !live.contains(r)) {
        return Err((
            codes::INELIGIBLE_REPLICA,
            format!("broker {r} is not live: it cannot join the ISR"),
        ));
    }
    p.isr = p
        .replicas
        .iter()
        .copied()
        .filter(|r| isr.contains(r))
        .collect();
    Ok(())
}

type Refusal = (i16, String);

fn import(catalog: &mut Catalog, node_id: i32, legacy: &LegacyImport) {
    for (name, id, owners, configs) in &legacy.topics {
        let placement = owners
            .iter()
            .map(|_| Placement {
                replicas: vec![node_id],
                leader: node_id,
                leader_epoch: 0,
                isr: vec![node_id],
            })
            .collect();
        catalog.topics.insert(
            name.clone(),
            Topic {
                name: name.clone(),
                id: *id,
                owners: owners.clone(),
                placement,
                configs: configs.clone(),
            },
        );
    }
    catalog.next_producer_id = catalog.next_producer_id.max(legacy.next_producer_id);
}

fn live_ids(catalog: &Catalog) -> Vec<i32> {
    catalog.live_brokers().map(|b| b.id).collect()
}

fn is_live(catalog: &Catalog, id: i32) -> bool {
    catalog.brokers.get(&id).is_some_and(|b| !b.fenced)
}

fn unclean_allowed(topic: &Topic) -> bool {
    topic
        .configs
        .get("unclean.leader.election.enable")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Broker `gone` stops serving (fenced, or shutting down): it leaves every ISR that has
/// other members (Kafka keeps the last member of an offline partition's ISR, so it is
/// elected again when it returns), and each partition it led gets a leader from the rest of
/// its ISR.
fn remove_broker(catalog: &mut Catalog, gone: i32) {
    let live: BTreeSet<i32> = live_ids(catalog).into_iter().collect();
    for topic in catalog.topics.values_mut() {
        let unclean = unclean_allowed(topic);
        for p in &mut topic.placement {
            if p.isr.len() > 1 {
                p.isr.retain(|r| *r != gone);
            }
            if p.leader == gone {
                elect(p, &live, unclean);
            }
        }
    }
}

/// A new incarnation of broker `id` (its data dir was replaced): it leaves every ISR, even
/// as the last member, and partitions it led have no leader until another ISR member (or,
/// where the topic allows it, an unclean election) takes over.
fn leave_every_isr(catalog: &mut Catalog, id: i32) {
    let live: BTreeSet<i32> = live_ids(catalog).into_iter().filter(|r| *r != id).collect();
    for topic in catalog.topics.values_mut() {
        let unclean = unclean_allowed(topic);
        for p in &mut topic.placement {
            p.isr.retain(|r| *r != id);
            if p.leader == id {
                elect(p, &live, unclean);
            }
        }
    }
}

/// Partitions without a leader get one, if an ISR member is live (or the topic allows an
/// unclean election and any replica is).
fn elect_offline(catalog: &mut Catalog) {
    let live: BTreeSet<i32> = live_ids(catalog).into_iter().collect();
    for topic in catalog.topics.values_mut() {
        let unclean = unclean_allowed(topic);
        for p in &mut topic.placement {
            if p.leader == NO_LEADER {
                elect(p, &live, unclean);
            }
        }
    }
}

/// Choose a partition's leader among its live ISR members, in preference order, other than
/// the current one; with `unclean`, any live replica when no ISR member is (it becomes the
/// whole ISR). The leader epoch is bumped whenever the leader changes.
fn elect(p: &mut Placement, live: &BTreeSet<i32>, unclean: bool) {
    let current = p.leader;
    let in_sync = p
        .replicas
        .iter()
        .copied()
        .find(|r| *r != current && p.isr.contains(r) && live.contains(r));
    let next = match in_sync {
        Some(id) => Some(id),
        None if unclean => p
            .replicas
            .iter()
            .copied()
            .find(|r| *r != current && live.contains(r)),
        None => None,
    };
    match next {
        Some(id) => {
            if !p.isr.contains(&id) {
                p.isr = vec![id];
            }
            p.leader = id;
            p.leader_epoch += 1;
        }
        None if current != NO_LEADER => {
            p.leader = NO_LEADER;
            p.leader_epoch += 1;
        }
        None => {}
    }
}

fn new_topic(catalog: &Catalog, spec: &NewTopicSpec) -> Result<Topic, Refusal> {
    if !catalog::valid_topic_name(&spec.name) {
        return Err((
            codes::INVALID_TOPIC_EXCEPTION,
            format!("invalid topic name '{}'", spec.name),
        ));
    }
    if catalog.topics.contains_key(&spec.name) {
        return Err((
            codes::TOPIC_ALREADY_EXISTS,
            format!("topic '{}' already exists", spec.name),
        ));
    }
    for (name, value) in &spec.configs {
        catalog::validate_topic_config(name, value).map_err(|m| (codes::INVALID_CONFIG, m))?;
    }
    let replicas = if spec.assignments.is_empty() {
        if !(1..=100_000).contains(&spec.partitions) {
            return Err((
                codes::INVALID_PARTITIONS,
                format!("invalid partition count {}", spec.partitions),
            ));
        }
        auto_place(
            catalog,
            spec.partitions,
            spec.replication_factor,
            catalog.topics.len(),
        )?
    } else {
        check_assignment(catalog, &spec.assignments)?;
        spec.assignments.clone()
    };
    let base = catalog.topics.len();
    Ok(Topic {
        name: spec.name.clone(),
        id: spec.id,
        owners: (0..replicas.len()).map(|p| (base + p) as u32).collect(),
        placement: replicas.into_iter().map(|r| placed(catalog, r)).collect(),
        configs: spec.configs.iter().cloned().collect(),
    })
}

/// A new partition's placement: led by its first live replica; every live replica is in
/// sync (all its logs are empty).
fn placed(catalog: &Catalog, replicas: Vec<i32>) -> Placement {
    let leader = replicas
        .iter()
        .copied()
        .find(|r| is_live(catalog, *r))
        .unwrap_or(NO_LEADER);
    Placement {
        isr: replicas
            .iter()
            .copied()
            .filter(|r| is_live(catalog, *r))
            .collect(),
        replicas,
        leader,
        leader_epoch: 0,
    }
}

/// Replica lists for `count` partitions over the live brokers: partition p's replicas are
/// `rf` consecutive brokers starting at `(start + p) % n`, so leaders (the first replica)
/// spread evenly, and successive topics start on successive brokers.
fn auto_place(
    catalog: &Catalog,
    count: i32,
    rf: i32,
    start: usize,
) -> Result<Vec<Vec<i32>>, Refusal> {
    let live = live_ids(catalog);
    if rf < 1 || rf as usize > live.len() {
        return Err((
            codes::INVALID_REPLICATION_FACTOR,
            format!(
                "replication factor {rf} is larger than the {} available broker(s)",
                live.len()
            ),
        ));
    }
    let n = live.len();
    Ok((0..count as usize)
        .map(|p| {
            (0..rf as usize)
                .map(|i| live[(start + p + i) % n])
                .collect()
        })
        .collect())
}

fn check_assignment(catalog: &Catalog, assignments: &[Vec<i32>]) -> Result<(), Refusal> {
    let invalid = |why: String| Err((codes::INVALID_REPLICA_ASSIGNMENT, why));
    for (partition, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() {
            return invalid(format!("partition {partition} has an empty replica list"));
        }
        let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
        if distinct.len() != replicas.len() {
            return invalid(format!(
                "the manual partition assignment of partition {partition} names a broker more \
                 than once"
            ));
        }
        if let Some(unknown) = replicas.iter().find(|b| !catalog.brokers.contains_key(b)) {
            return invalid(format!(
                "the manual partition assignment includes broker {unknown}, but no such \
                 broker is registered"
            ));
        }
        if replicas.len() != assignments[0].len() {
            return invalid(format!(
                "partition {partition} has {} replica(s), unlike the partitions before it",
                replicas.len()
            ));
        }
    }
    Ok(())
}

fn grow(catalog: &mut Catalog, growth: &Growth, validate_only: bool) -> Result<(), Refusal> {
    let (name, count) = (growth.name.as_str(), growth.count);
    let Some(topic) = catalog.topics.get(name) else {
        return Err((
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no topic '{name}'"),
        ));
    };
    let current = topic.partition_count() as i32;
    if count <= current || count > 100_000 {
        return Err((
            codes::INVALID_PARTITIONS,
            format!("topic '{name}' has {current} partitions; asked for {count}"),
        ));
    }
    let rf = topic.placement.first().map_or(1, |p| p.replicas.len()) as i32;
    let start = topic.owners.last().map_or(0, |o| *o as usize + 1);
    let more = if growth.assignments.is_empty() {
        auto_place(catalog, count - current, rf, start)?
    } else {
        if growth.assignments.len() != (count - current) as usize {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "{} replica assignments for {} new partitions",
                    growth.assignments.len(),
                    count - current
                ),
            ));
        }
        check_assignment(catalog, &growth.assignments)?;
        if growth.assignments[0].len() != rf as usize {
            return Err((
                codes::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "inconsistent replication factor: the new partitions have {}, the topic {rf}",
                    growth.assignments[0].len()
                ),
            ));
        }
        growth.assignments.clone()
    };
    if validate_only {
        return Ok(());
    }
    let placements: Vec<Placement> = more.into_iter().map(|r| placed(catalog, r)).collect();
    let topic = catalog.topics.get_mut(name).expect("checked above");
    for (i, placement) in placements.into_iter().enumerate() {
        topic.owners.push((start + i) as u32);
        topic.placement.push(placement);
    }
    Ok(())
}

fn set_configs(
    catalog: &mut Catalog,
    topic: &str,
    set: &[(String, Option<String>)],
    validate_only: bool,
) -> Result<(), Refusal> {
    let Some(entry) = catalog.topics.get(topic) else {
        return Err((
            codes::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no topic '{topic}'"),
        ));
    };
    let mut configs = entry.configs.clone();
    for (name, value) in set {
        match value {
            Some(value) => {
                catalog::validate_topic_config(name, value)
                    .map_err(|m| (codes::INVALID_CONFIG, m))?;
                configs.insert(name.clone(), value.clone());
            }
            None => {
                configs.remove(name);
            }
        }
    }
    if !validate_only {
        catalog
            .topics
            .get_mut(topic)
            .expect("checked above")
            .configs = configs;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
