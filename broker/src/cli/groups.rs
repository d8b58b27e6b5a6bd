//! `shardlog groups ...`: consumer-group administration against a running cluster, over the
//! `shardlog-client` crate (each request at the highest version both sides speak). Group
//! requests go to the group's coordinator (FindCoordinator), ListOffsets to each partition's
//! leader.
//!
//! - `list`: every group with its state, from every broker (ListGroups).
//! - `describe GROUP`: state, members and their partitions, committed offsets, log end and
//!   lag per partition (DescribeGroups, OffsetFetch, ListOffsets); an unknown group fails.
//! - `reset-offsets GROUP --topic T --to-earliest|--to-latest|--to-offset N|--to-datetime TS|
//!   --shift-by N [--execute]`: shows the new offsets, and with `--execute` commits them
//!   with generation -1 (outside group management), only while the group has no members,
//!   as Kafka's tool requires.
//! - `delete GROUP...`: delete groups without members, and their offsets (DeleteGroups).
//!
//! What this module must never do: commit offsets of a group that has members, create a
//! topic (Metadata asks with auto-creation off), or print a partial table for a failed
//! request (errors go to stderr, and the exit status is non-zero).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::Decodable;
use serde_json::{json, Value};

use super::output::{print, Format, Table};
use super::session::{error_name, str_bytes, Session};
use super::topics::{offsets, EARLIEST, LATEST};
use super::{Common, GroupsAction, GroupsCommand, ResetArgs};

/// The client id of the tool's requests.
const CLIENT_ID: &str = "shardlog-groups";

/// Runs a `shardlog groups` command; prints to stdout, errors are returned.
pub fn run(command: GroupsCommand) -> Result<()> {
    let Common { bootstrap, format } = command.common;
    let mut session = Session::connect(&bootstrap, CLIENT_ID)?;
    session.metadata(Some(&[]))?; // the brokers' addresses, no topic
    match command.action {
        GroupsAction::List => list(&mut session, format),
        GroupsAction::Describe { group } => describe(&mut session, &group, format),
        GroupsAction::ResetOffsets(args) => reset_offsets(&mut session, args),
        GroupsAction::Delete { groups } => delete(&mut session, &groups),
    }
}

/// Every group of every broker (each lists the groups it coordinates): (id, state, protocol
/// type, coordinator), sorted by id.
fn list_groups(session: &mut Session) -> Result<Vec<(String, String, String, i32)>> {
    let mut groups = Vec::new();
    for broker in session.brokers() {
        let response = session.send_to(broker.id, &ListGroupsRequest::default())?;
        if response.error_code != 0 {
            bail!(
                "ListGroups at broker {} ({}): {}",
                broker.id,
                broker.address,
                error_name(response.error_code)
            );
        }
        groups.extend(response.groups.into_iter().map(|g| {
            (
                g.group_id.0.to_string(),
                g.group_state.to_string(),
                g.protocol_type.to_string(),
                broker.id,
            )
        }));
    }
    groups.sort();
    Ok(groups)
}

fn describe_group(session: &mut Session, coordinator: i32, group: &str) -> Result<DescribedGroup> {
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]);
    let response = session.send_to(coordinator, &request)?;
    let described = response
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("DescribeGroups: empty answer"))?;
    if described.error_code != 0 {
        bail!(
            "DescribeGroups {group}: {}",
            error_name(described.error_code)
        );
    }
    Ok(described)
}

/// Committed offsets of every partition the group committed: (topic, partition, offset,
/// metadata), sorted.
fn committed(
    session: &mut Session,
    coordinator: i32,
    group: &str,
) -> Result<Vec<(String, i32, i64, String)>> {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_topics(None);
    let response = session.send_to(coordinator, &request)?;
    if response.error_code != 0 {
        bail!("OffsetFetch: {}", error_name(response.error_code));
    }
    let mut out = Vec::new();
    for topic in response.topics {
        for p in topic.partitions {
            out.push((
                topic.name.0.to_string(),
                p.partition_index,
                p.committed_offset,
                p.metadata.map(|m| m.to_string()).unwrap_or_default(),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// The log end of each partition of `topic` (asked of each leader), or `None` for a topic
/// deleted since the commit.
fn log_ends(session: &mut Session, topic: &str) -> Option<BTreeMap<i32, i64>> {
    let meta = session.topic(topic).ok()?;
    offsets(session, &meta, LATEST).ok()
}

/// Commits offsets from outside group management (generation -1, no member id).
fn commit(
    session: &mut Session,
    coordinator: i32,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<()> {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(str_bytes(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                    })
                    .collect(),
            )]);
    let response = session.send_to(coordinator, &request)?;
    for t in response.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                bail!(
                    "OffsetCommit {topic}-{}: {}",
                    p.partition_index,
                    error_name(p.error_code)
                );
            }
        }
    }
    Ok(())
}

/// Deletes each group at its coordinator; every refusal is named, and any makes it fail.
fn delete(session: &mut Session, groups: &[String]) -> Result<()> {
    if groups.is_empty() {
        bail!("name the groups to delete");
    }
    let mut failed = Vec::new();
    for group in groups {
        let coordinator = session.coordinator(group)?;
        let request =
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes(group))]);
        let response = session.send_to(coordinator, &request)?;
        for result in response.results {
            if result.error_code == 0 {
                println!("deleted group {}", result.group_id.0);
            } else {
                failed.push(format!(
                    "{}: {}",
                    result.group_id.0,
                    error_name(result.error_code)
                ));
            }
        }
    }
    if !failed.is_empty() {
        bail!("not deleted: {}", failed.join(", "));
    }
    Ok(())
}

fn list(session: &mut Session, format: Format) -> Result<()> {
    let mut table = Table::new(&["group", "state", "protocol_type", "coordinator"]);
    for (group, state, protocol_type, coordinator) in list_groups(session)? {
        table.row(vec![
            json!(group),
            json!(state),
            json!(protocol_type),
            json!(coordinator),
        ]);
    }
    print(format, &[("groups", Value::Null, Some(&table))]);
    Ok(())
}

/// Partitions of a ConsumerProtocolAssignment, as "topic-p" strings.
fn assigned_partitions(assignment: &Bytes) -> Vec<String> {
    let mut bytes = assignment.clone();
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = bytes.get_i16();
    let Ok(decoded) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3)) else {
        return vec!["(unreadable assignment)".into()];
    };
    let mut out = Vec::new();
    for topic in decoded.assigned_partitions {
        for p in topic.partitions {
            out.push(format!("{}-{p}", topic.topic.0));
        }
    }
    out
}

/// State, members, and per partition the committed offset, log end and lag. A group the
/// coordinator does not know (state Dead, no commits) is an error, as in Kafka's tool.
fn describe(session: &mut Session, group: &str, format: Format) -> Result<()> {
    let coordinator = session.coordinator(group)?;
    let described = describe_group(session, coordinator, group)?;
    let committed = committed(session, coordinator, group)?;
    let state = described.group_state.to_string();
    if state == "Dead" && described.members.is_empty() && committed.is_empty() {
        bail!("group {group} does not exist (GROUP_ID_NOT_FOUND at broker {coordinator})");
    }
    let mut members = Table::new(&["member", "client", "instance", "host", "partitions"]);
    for m in &described.members {
        members.row(vec![
            json!(m.member_id.to_string()),
            json!(m.client_id.to_string()),
            json!(m.group_instance_id.as_ref().map(|i| i.to_string())),
            json!(m.client_host.to_string()),
            json!(assigned_partitions(&m.member_assignment)),
        ]);
    }
    let mut lag = Table::new(&[
        "topic",
        "partition",
        "committed",
        "log_end",
        "lag",
        "metadata",
    ]);
    let mut topics: Vec<&str> = committed.iter().map(|c| c.0.as_str()).collect();
    topics.dedup();
    for topic in topics {
        // A topic deleted since the commit has no log end: "-" rather than fail.
        let ends = log_ends(session, topic).unwrap_or_default();
        for row in committed.iter().filter(|c| c.0 == topic) {
            let end = ends.get(&row.1).copied();
            let behind = end.filter(|e| *e >= 0 && row.2 >= 0).map(|e| e - row.2);
            lag.row(vec![
                json!(topic),
                json!(row.1),
                json!(row.2),
                json!(end),
                json!(behind),
                json!(row.3),
            ]);
        }
    }
    print(
        format,
        &[
            ("group", json!(group), None),
            ("state", json!(state), None),
            (
                "protocol_type",
                json!(described.protocol_type.to_string()),
                None,
            ),
            ("protocol", json!(described.protocol_data.to_string()), None),
            ("coordinator", json!(coordinator), None),
            ("members", Value::Null, Some(&members)),
            ("offsets", Value::Null, Some(&lag)),
        ],
    );
    Ok(())
}

fn reset_offsets(session: &mut Session, args: ResetArgs) -> Result<()> {
    let coordinator = session.coordinator(&args.group)?;
    let described = describe_group(session, coordinator, &args.group)?;
    let state = described.group_state.to_string();
    if !described.members.is_empty() || !(state == "Empty" || state == "Dead") {
        bail!(
            "group {} is not empty (state {state}, {} member(s)): stop its consumers first",
            args.group,
            described.members.len()
        );
    }
    let topic = args.topic.as_str();
    let meta = session.topic(topic)?;
    let partitions: Vec<i32> = {
        let mut p: Vec<i32> = meta.partitions.iter().map(|p| p.partition_index).collect();
        p.sort();
        p
    };
    let earliest = offsets(session, &meta, EARLIEST)?;
    let latest = offsets(session, &meta, LATEST)?;
    let bounds = |p: &i32| (earliest[p], latest[p]);
    let target = &args.target;
    let new_offsets: Vec<i64> = if target.to_earliest {
        partitions.iter().map(|p| bounds(p).0).collect()
    } else if target.to_latest {
        partitions.iter().map(|p| bounds(p).1).collect()
    } else if let Some(offset) = target.to_offset {
        partitions
            .iter()
            .map(|p| offset.clamp(bounds(p).0, bounds(p).1))
            .collect()
    } else if let Some(ms) = target.to_datetime {
        let found = offsets(session, &meta, ms)
            .with_context(|| format!("offsets at {ms} ms since the epoch"))?;
        // No message at or after that time: the log end, as Kafka's tool does.
        partitions
            .iter()
            .map(|p| match found.get(p) {
                Some(f) if *f >= 0 => *f,
                _ => bounds(p).1,
            })
            .collect()
    } else if let Some(shift) = target.shift_by {
        let committed = committed(session, coordinator, &args.group)?;
        partitions
            .iter()
            .map(|p| {
                let (lo, hi) = bounds(p);
                let current = committed
                    .iter()
                    .find(|c| c.0 == topic && c.1 == *p && c.2 >= 0)
                    .map_or(lo, |c| c.2);
                current.saturating_add(shift).clamp(lo, hi)
            })
            .collect()
    } else {
        bail!("one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by");
    };
    let pairs: Vec<(i32, i64)> = partitions.iter().copied().zip(new_offsets).collect();
    let execute = args.execute && !args.dry_run;
    if execute {
        commit(session, coordinator, &args.group, topic, &pairs)?;
    }
    println!("{:<40} {:>9} NEW-OFFSET", "TOPIC", "PARTITION");
    for (p, o) in &pairs {
        println!("{topic:<40} {p:>9} {o}");
    }
    if !execute {
        eprintln!("preview only, nothing committed: add --execute to commit these offsets");
    }
    Ok(())
}
