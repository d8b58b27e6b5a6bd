//! `shardlog groups ...`: consumer-group administration against a running broker, over the
//! `shardlog-client` crate (each request at the highest version both sides speak).
//!
//! - `list`: every group with its state (ListGroups).
//! - `describe GROUP`: state, members and their partitions, committed offsets and lag
//!   (DescribeGroups, OffsetFetch, ListOffsets).
//! - `reset-offsets GROUP --topic T --to-earliest|--to-latest|--to-offset N|--to-datetime TS|
//!   --shift-by N`: commits new offsets with generation -1 (outside group management), only
//!   while the group has no members, as Kafka's tool requires.
//! - `delete GROUP...`: delete groups without members, and their offsets (DeleteGroups).
//!
//! What this module must never do: commit offsets of a group that has members, create a
//! topic (Metadata asks with auto-creation off), or print a partial table for a failed
//! request (errors go to stderr, and the exit status is non-zero).

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use shardlog_client::{Client, Options};

use super::{GroupsAction, GroupsCommand, ResetArgs, CONNECT_TIMEOUT, REQUEST_TIMEOUT};

/// The client id of the tool's requests.
const CLIENT_ID: &str = "shardlog-groups";
/// ListOffsets timestamp meaning "the log end".
const LATEST: i64 = -1;
/// ListOffsets timestamp meaning "the log start".
const EARLIEST: i64 = -2;

/// Runs a `shardlog groups` command; prints to stdout, errors are returned.
pub fn run(command: GroupsCommand) -> Result<()> {
    let options = Options {
        client_id: CLIENT_ID,
        connect_timeout: CONNECT_TIMEOUT,
        request_timeout: REQUEST_TIMEOUT,
    };
    let mut client = Client::connect(&command.bootstrap, &options)?;
    match command.action {
        GroupsAction::List => list(&mut client),
        GroupsAction::Describe { group } => describe(&mut client, &group),
        GroupsAction::ResetOffsets(args) => reset_offsets(&mut client, args),
        GroupsAction::Delete { groups } => delete(&mut client, &groups),
    }
}

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

fn error_name(code: i16) -> String {
    match code {
        0 => "NONE".into(),
        3 => "UNKNOWN_TOPIC_OR_PARTITION".into(),
        15 => "COORDINATOR_NOT_AVAILABLE".into(),
        25 => "UNKNOWN_MEMBER_ID".into(),
        68 => "NON_EMPTY_GROUP".into(),
        69 => "GROUP_ID_NOT_FOUND".into(),
        other => format!("error {other}"),
    }
}

/// Every group: (id, state, protocol type), sorted by id.
fn list_groups(client: &mut Client) -> Result<Vec<(String, String, String)>> {
    let response = client.send(&ListGroupsRequest::default())?;
    if response.error_code != 0 {
        bail!("ListGroups: {}", error_name(response.error_code));
    }
    let mut groups: Vec<_> = response
        .groups
        .into_iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.group_state.to_string(),
                g.protocol_type.to_string(),
            )
        })
        .collect();
    groups.sort();
    Ok(groups)
}

fn describe_group(client: &mut Client, group: &str) -> Result<DescribedGroup> {
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]);
    let response = client.send(&request)?;
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
fn committed(client: &mut Client, group: &str) -> Result<Vec<(String, i32, i64, String)>> {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(group)))
        .with_topics(None);
    let response = client.send(&request)?;
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

/// The partition indexes of `topic`, sorted; an unknown topic is an error, never created.
fn partitions(client: &mut Client, topic: &str) -> Result<Vec<i32>> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(topic))))
        ]))
        .with_allow_auto_topic_creation(false);
    let response = client.send(&request)?;
    let found = response
        .topics
        .into_iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .ok_or_else(|| anyhow!("Metadata: no answer for topic {topic}"))?;
    if found.error_code != 0 {
        bail!("topic {topic}: {}", error_name(found.error_code));
    }
    let mut partitions: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
    partitions.sort();
    Ok(partitions)
}

/// ListOffsets of each partition at `timestamp` ([`LATEST`], [`EARLIEST`], or milliseconds
/// since the epoch): offsets in the order of `partitions`, -1 where no message is that late.
fn list_offsets(
    client: &mut Client,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<i64>> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(str_bytes(topic)))
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
    let response = client.send(&request)?;
    let answers: Vec<_> = response
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .collect();
    partitions
        .iter()
        .map(|p| {
            let answer = answers
                .iter()
                .find(|a| a.partition_index == *p)
                .ok_or_else(|| anyhow!("ListOffsets: no answer for {topic}-{p}"))?;
            if answer.error_code != 0 {
                bail!("ListOffsets {topic}-{p}: {}", error_name(answer.error_code));
            }
            Ok(answer.offset)
        })
        .collect()
}

/// Commits offsets from outside group management (generation -1, no member id).
fn commit(client: &mut Client, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
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
    let response = client.send(&request)?;
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

fn delete(client: &mut Client, groups: &[String]) -> Result<()> {
    let request = DeleteGroupsRequest::default().with_groups_names(
        groups
            .iter()
            .map(|g| GroupId(str_bytes(g.as_str())))
            .collect(),
    );
    let response = client.send(&request)?;
    let mut failed = Vec::new();
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
    if !failed.is_empty() {
        bail!("not deleted: {}", failed.join(", "));
    }
    Ok(())
}

fn list(client: &mut Client) -> Result<()> {
    let groups = list_groups(client)?;
    println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
    for (group, state, protocol_type) in groups {
        println!("{group:<40} {state:<20} {protocol_type}");
    }
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

fn describe(client: &mut Client, group: &str) -> Result<()> {
    let described = describe_group(client, group)?;
    println!(
        "group {group}: state {}, protocol type '{}', protocol '{}', {} member(s)",
        described.group_state,
        described.protocol_type,
        described.protocol_data,
        described.members.len()
    );
    for m in &described.members {
        let instance = m
            .group_instance_id
            .as_ref()
            .map(|i| format!(" instance {i}"))
            .unwrap_or_default();
        let host = if m.client_host.is_empty() {
            String::new()
        } else {
            format!(" host {}", m.client_host)
        };
        println!(
            "  member {} client {}{instance}{host}: {}",
            m.member_id,
            m.client_id,
            assigned_partitions(&m.member_assignment).join(" ")
        );
    }
    let committed = committed(client, group)?;
    if committed.is_empty() {
        println!("no committed offsets");
        return Ok(());
    }
    println!(
        "{:<40} {:>9} {:>15} {:>15} {:>10} METADATA",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    let mut topics: Vec<&str> = committed.iter().map(|c| c.0.as_str()).collect();
    topics.dedup();
    for topic in topics {
        let rows: Vec<_> = committed.iter().filter(|c| c.0 == topic).collect();
        let partitions: Vec<i32> = rows.iter().map(|r| r.1).collect();
        // A topic deleted since the commit has no log end: show "-" rather than fail.
        let ends = list_offsets(client, topic, &partitions, LATEST)
            .unwrap_or_else(|_| vec![-1; partitions.len()]);
        for (row, end) in rows.iter().zip(ends) {
            let lag = if end >= 0 && row.2 >= 0 {
                (end - row.2).to_string()
            } else {
                "-".into()
            };
            println!(
                "{:<40} {:>9} {:>15} {:>15} {:>10} {}",
                topic, row.1, row.2, end, lag, row.3
            );
        }
    }
    Ok(())
}

fn reset_offsets(client: &mut Client, args: ResetArgs) -> Result<()> {
    let described = describe_group(client, &args.group)?;
    let state = described.group_state.to_string();
    if !described.members.is_empty() || !(state == "Empty" || state == "Dead") {
        bail!(
            "group {} is not empty (state {state}, {} member(s)): stop its consumers first",
            args.group,
            described.members.len()
        );
    }
    let topic = args.topic.as_str();
    let partitions = partitions(client, topic)?;
    let earliest = list_offsets(client, topic, &partitions, EARLIEST)?;
    let latest = list_offsets(client, topic, &partitions, LATEST)?;
    let target = &args.target;
    let offsets: Vec<i64> = if target.to_earliest {
        earliest
    } else if target.to_latest {
        latest
    } else if let Some(offset) = target.to_offset {
        earliest
            .iter()
            .zip(&latest)
            .map(|(lo, hi)| offset.clamp(*lo, *hi))
            .collect()
    } else if let Some(ms) = target.to_datetime {
        let found = list_offsets(client, topic, &partitions, ms)
            .with_context(|| format!("offsets at {ms} ms since the epoch"))?;
        // No message at or after that time: the log end, as Kafka's tool does.
        found
            .iter()
            .zip(&latest)
            .map(|(f, hi)| if *f < 0 { *hi } else { *f })
            .collect()
    } else if let Some(shift) = target.shift_by {
        let committed = committed(client, &args.group)?;
        partitions
            .iter()
            .zip(earliest.iter().zip(&latest))
            .map(|(p, (lo, hi))| {
                let current = committed
                    .iter()
                    .find(|c| c.0 == topic && c.1 == *p && c.2 >= 0)
                    .map_or(*lo, |c| c.2);
                current.saturating_add(shift).clamp(*lo, *hi)
            })
            .collect()
    } else {
        bail!("one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by");
    };
    let pairs: Vec<(i32, i64)> = partitions.iter().copied().zip(offsets).collect();
    if !args.dry_run {
        commit(client, &args.group, topic, &pairs)?;
    }
    println!("{:<40} {:>9} NEW-OFFSET", "TOPIC", "PARTITION");
    for (p, o) in &pairs {
        println!("{topic:<40} {p:>9} {o}");
    }
    Ok(())
}
