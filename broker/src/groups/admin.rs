//! `shardlog groups ...`: consumer-group administration against a running broker, speaking
//! the Kafka protocol (kafka-protocol crate) over a blocking `std::net::TcpStream`.
//!
//! - `list`: every group with its state (ListGroups).
//! - `describe GROUP`: state, members and their partitions, committed offsets and lag
//!   (DescribeGroups, OffsetFetch, ListOffsets).
//! - `reset-offsets GROUP --topic T --to-earliest|--to-latest|--to-offset N|--to-datetime TS`:
//!   commits new offsets with generation -1 (outside group management), only while the group
//!   has no members, as Kafka's tool requires. Also `--shift-by N`.
//! - `delete GROUP...`: delete groups without members, and their offsets (DeleteGroups).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Longest response accepted from the broker.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Socket timeout of every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `shardlog groups`: consumer-group administration against a running broker.
#[derive(clap::Args, Debug)]
pub struct GroupsCommand {
    /// Broker to talk to, HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SHARDLOG_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    #[command(subcommand)]
    pub action: GroupsAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum GroupsAction {
    /// List every consumer group with its state.
    List,
    /// Show a group's state, members, committed offsets and lag.
    Describe { group: String },
    /// Move a group's committed offsets of one topic (the group must have no members).
    ResetOffsets(ResetArgs),
    /// Delete groups with no members, and their committed offsets.
    Delete { groups: Vec<String> },
}

#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    pub group: String,
    /// Topic whose offsets move (every partition).
    #[arg(long)]
    pub topic: String,
    #[command(flatten)]
    pub target: ResetTarget,
    /// Print the new offsets without committing them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where to move the offsets: exactly one.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    /// The log start of each partition.
    #[arg(long)]
    pub to_earliest: bool,
    /// The log end of each partition.
    #[arg(long)]
    pub to_latest: bool,
    /// This offset in every partition (clamped to the partition's range).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// The first message at or after this time: YYYY-MM-DDTHH:MM:SS[.mmm][Z|+HH:MM] (UTC
    /// when no zone is given) or milliseconds since the epoch.
    #[arg(long)]
    pub to_datetime: Option<String>,
    /// Move each committed offset by N (negative: back), clamped to the partition's range;
    /// a partition without a commit starts from its earliest offset.
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
}

/// Run a `shardlog groups` command; prints to stdout, errors are returned.
pub fn run(command: GroupsCommand) -> Result<(), String> {
    let mut client = Client::connect(&command.bootstrap)?;
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

/// A blocking Kafka client: one connection, one request at a time.
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn connect(address: &str) -> Result<Client, String> {
        let stream =
            TcpStream::connect(address).map_err(|e| format!("cannot connect to {address}: {e}"))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT)).ok();
        stream.set_write_timeout(Some(REQUEST_TIMEOUT)).ok();
        Ok(Client {
            stream,
            correlation_id: 0,
        })
    }

    /// Send one request and read its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> Result<Resp, String> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(str_bytes("shardlog-groups")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| format!("encoding {api:?} header: {e}"))?;
        body.encode(&mut buf, version)
            .map_err(|e| format!("encoding {api:?} v{version}: {e}"))?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(&buf)
            .map_err(|e| format!("sending {api:?}: {e}"))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("reading {api:?} response: {e}"))?;
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > MAX_RESPONSE_BYTES {
            return Err(format!("{api:?} response of {size} bytes"));
        }
        let mut frame = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut frame)
            .map_err(|e| format!("reading {api:?} response: {e}"))?;
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| format!("decoding {api:?} response header: {e}"))?;
        if header.correlation_id != self.correlation_id {
            return Err(format!("{api:?}: response to another request"));
        }
        Resp::decode(&mut frame, version).map_err(|e| format!("decoding {api:?} v{version}: {e}"))
    }

    fn list_groups(&mut self) -> Result<Vec<(String, String, String)>, String> {
        let response: ListGroupsResponse =
            self.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
        if response.error_code != 0 {
            return Err(format!("ListGroups: {}", error_name(response.error_code)));
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

    fn describe_group(
        &mut self,
        group: &str,
    ) -> Result<kafka_protocol::messages::describe_groups_response::DescribedGroup, String> {
        let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]);
        let response: DescribeGroupsResponse = self.call(ApiKey::DescribeGroups, 5, &request)?;
        let described = response
            .groups
            .into_iter()
            .next()
            .ok_or("DescribeGroups: empty answer")?;
        if described.error_code != 0 {
            return Err(format!(
                "DescribeGroups {group}: {}",
                error_name(described.error_code)
            ));
        }
        Ok(described)
    }

    /// Committed offsets of every partition the group committed: (topic, partition, offset, metadata).
    fn committed(&mut self, group: &str) -> Result<Vec<(String, i32, i64, String)>, String> {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_topics(None);
        let response: OffsetFetchResponse = self.call(ApiKey::OffsetFetch, 7, &request)?;
        if response.error_code != 0 {
            return Err(format!("OffsetFetch: {}", error_name(response.error_code)));
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

    fn partitions(&mut self, topic: &str) -> Result<Vec<i32>, String> {
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(topic)))),
        ]));
        let response: MetadataResponse = self.call(ApiKey::Metadata, 7, &request)?;
        let found = response
            .topics
            .into_iter()
            .next()
            .ok_or("Metadata: empty answer")?;
        if found.error_code != 0 {
            return Err(format!("topic {topic}: {}", error_name(found.error_code)));
        }
        let mut partitions: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
        partitions.sort();
        Ok(partitions)
    }

    /// ListOffsets of each partition at `timestamp` (-1 latest, -2 earliest): offsets, -1 if none.
    fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<i64>, String> {
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
        let response: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 5, &request)?;
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
                    .ok_or(format!("ListOffsets: no answer for {topic}-{p}"))?;
                if answer.error_code != 0 {
                    return Err(format!(
                        "ListOffsets {topic}-{p}: {}",
                        error_name(answer.error_code)
                    ));
                }
                Ok(answer.offset)
            })
            .collect()
    }

    /// Commit offsets from outside group management (generation -1, no member id).
    fn commit(&mut self, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<(), String> {
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
        let response: OffsetCommitResponse = self.call(ApiKey::OffsetCommit, 8, &request)?;
        for t in response.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "OffsetCommit {topic}-{}: {}",
                        p.partition_index,
                        error_name(p.error_code)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn delete(client: &mut Client, groups: &[String]) -> Result<(), String> {
    let request = DeleteGroupsRequest::default().with_groups_names(
        groups
            .iter()
            .map(|g| GroupId(str_bytes(g.as_str())))
            .collect(),
    );
    let response: DeleteGroupsResponse = client.call(ApiKey::DeleteGroups, 2, &request)?;
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
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("not deleted: {}", failed.join(", ")))
    }
}

fn list(client: &mut Client) -> Result<(), String> {
    println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
    for (group, state, protocol_type) in client.list_groups()? {
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

fn describe(client: &mut Client, group: &str) -> Result<(), String> {
    let described = client.describe_group(group)?;
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
    let committed = client.committed(group)?;
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
        let ends = client
            .list_offsets(topic, &partitions, -1)
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

fn reset_offsets(client: &mut Client, args: ResetArgs) -> Result<(), String> {
    let described = client.describe_group(&args.group)?;
    let state = described.group_state.to_string();
    if !described.members.is_empty() || !(state == "Empty" || state == "Dead") {
        return Err(format!(
            "group {} is not empty (state {state}, {} member(s)): stop its consumers first",
            args.group,
            described.members.len()
        ));
    }
    let partitions = client.partitions(&args.topic)?;
    let earliest = client.list_offsets(&args.topic, &partitions, -2)?;
    let latest = client.list_offsets(&args.topic, &partitions, -1)?;
    let target = &args.target;
    let offsets: Vec<i64> = if target.to_earliest {
        earliest.clone()
    } else if target.to_latest {
        latest.clone()
    } else if let Some(offset) = target.to_offset {
        earliest
            .iter()
            .zip(&latest)
            .map(|(lo, hi)| offset.clamp(*lo, *hi))
            .collect()
    } else if let Some(text) = &target.to_datetime {
        let ms = parse_datetime_ms(text)?;
        let found = client.list_offsets(&args.topic, &partitions, ms)?;
        // No message at or after that time: the log end, as Kafka's tool does.
        found
            .iter()
            .zip(&latest)
            .map(|(f, hi)| if *f < 0 { *hi } else { *f })
            .collect()
    } else if let Some(shift) = target.shift_by {
        let committed = client.committed(&args.group)?;
        partitions
            .iter()
            .zip(earliest.iter().zip(&latest))
            .map(|(p, (lo, hi))| {
                let current = committed
                    .iter()
                    .find(|c| c.0 == args.topic && c.1 == *p && c.2 >= 0)
                    .map_or(*lo, |c| c.2);
                current.saturating_add(shift).clamp(*lo, *hi)
            })
            .collect()
    } else {
        return Err(
            "one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by".into(),
        );
    };
    let pairs: Vec<(i32, i64)> = partitions.iter().copied().zip(offsets).collect();
    if !args.dry_run {
        client.commit(&args.group, &args.topic, &pairs)?;
    }
    println!("{:<40} {:>9} NEW-OFFSET", "TOPIC", "PARTITION");
    for (p, o) in &pairs {
        println!("{:<40} {:>9} {o}", args.topic, p);
    }
    Ok(())
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` (UTC without a zone) or epoch milliseconds.
pub fn parse_datetime_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("--to-datetime: '{text}' is not YYYY-MM-DDTHH:MM:SS[.mmm][Z|+HH:MM]");
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (date, time) = text.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut date_parts = date.split('-');
    let next_num = |it: &mut std::str::Split<'_, char>| -> Result<i64, String> {
        it.next().ok_or_else(bad)?.parse::<i64>().map_err(|_| bad())
    };
    let year = next_num(&mut date_parts)?;
    let month = next_num(&mut date_parts)?;
    let day = next_num(&mut date_parts)?;
    // Split off the zone: Z, or the last '+' / '-' in the time part.
    let (clock, offset_minutes) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (clock, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        (clock, sign * (h * 60 + m))
    } else {
        (time, 0)
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut clock_parts = hms.split(':');
    let hour = next_num(&mut clock_parts)?;
    let minute = next_num(&mut clock_parts)?;
    let second = clock_parts
        .next()
        .map_or(Ok(0), |s| s.parse::<i64>().map_err(|_| bad()))?;
    let millis = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().map_err(|_| bad())?
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..=60).contains(&second);
    if !valid {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_to_epoch_milliseconds() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:01.5").unwrap(), 1_500);
        assert_eq!(
            parse_datetime_ms("2024-02-29T12:34:56.789Z").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(
            parse_datetime_ms("2024-02-29T14:34:56.789+02:00").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(
            parse_datetime_ms("1709210096789").unwrap(),
            1_709_210_096_789
        );
        assert!(parse_datetime_ms("yesterday").is_err());
        assert!(parse_datetime_ms("2024-13-01T00:00:00").is_err());
    }
}
