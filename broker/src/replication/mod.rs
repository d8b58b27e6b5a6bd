//! Followers pull: the shard that owns a follower replica copies the leader's batches into
//! its own log, byte for byte at the leader's offsets (`PartitionLog::append_replica`).
//!
//! Each shard runs one fetcher per leader broker it follows partitions of: one connection
//! to that broker's Kafka port, one long-poll Fetch (Kafka's own, with this node as
//! `replica_id`) for all those partitions at a time, from each follower log's end. The
//! partition list is read from the shard's catalog on every round, so leader changes,
//! new topics and fenced brokers are followed without restarting anything.
//!
//! Not yet (issue 12): ISR and high watermark (acks=all still answers on the leader's own
//! fsync), truncation by leader epoch (a follower whose log diverged from its leader stops
//! fetching that partition and says so), one fetch session per pair of shards.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use shardlog_client::frame;

use crate::catalog::NO_LEADER;
use crate::clock::now_ms;
use crate::codes;
use crate::log::LogError;
use crate::shard::Shard;

/// Fetch version the followers speak (replica_id in the request body; v15+ moves it).
const FETCH_VERSION: i16 = 12;
/// How long a leader holds a follower's fetch when it has nothing new.
const MAX_WAIT_MS: i32 = 250;
/// Bytes a follower asks for per partition and per fetch (Kafka: replica.fetch.max.bytes,
/// replica.fetch.response.max.bytes).
const PARTITION_MAX_BYTES: i32 = 4 << 20;
const FETCH_MAX_BYTES: i32 = 32 << 20;
/// Pause after a failed round (connection refused, leader unknown) before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Start this shard's follower side: a supervisor that keeps one fetcher per leader broker
/// while this shard owns follower replicas led there.
pub fn start(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let running: Rc<RefCell<BTreeSet<i32>>> = Rc::default();
        while !shard.is_shutting_down() {
            for leader in followed(&shard).into_keys() {
                if running.borrow_mut().insert(leader) {
                    let (shard, running) = (shard.clone(), running.clone());
                    glommio::spawn_local(async move {
                        follow(&shard, leader).await;
                        running.borrow_mut().remove(&leader);
                    })
                    .detach();
                }
            }
            let changed = shard.catalog_event.listen();
            let _ = glommio::timer::timeout(Duration::from_secs(1), async {
                changed.await;
                Ok(())
            })
            .await;
        }
    })
    .detach();
}

/// Partitions this shard owns as a follower, by leader broker: (topic, partition).
fn followed(shard: &Shard) -> BTreeMap<i32, Vec<(String, i32)>> {
    let me = shard.node_id();
    let catalog = shard.catalog();
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (name, topic) in &catalog.topics {
        for (p, placement) in topic.placement.iter().enumerate() {
            let follower = placement.leader != me
                && placement.leader != NO_LEADER
                && placement.replicas.contains(&me);
            if follower && shard.owner_of(name, p as i32) == Some(shard.id) {
                by_leader
                    .entry(placement.leader)
                    .or_default()
                    .push((name.clone(), p as i32));
            }
        }
    }
    by_leader
}

/// Fetch from `leader` until this shard follows nothing there any more.
async fn follow(shard: &Rc<Shard>, leader: i32) {
    let mut connection: Option<TcpStream> = None;
    let mut diverged: BTreeSet<(String, i32)> = BTreeSet::new();
    let mut correlation = 0i32;
    while !shard.is_shutting_down() {
        let Some(partitions) = followed(shard).remove(&leader) else {
            return;
        };
        let partitions: Vec<_> = partitions
            .into_iter()
            .filter(|p| !diverged.contains(p))
            .collect();
        let Some(address) = shard
            .catalog()
            .brokers
            .get(&leader)
            .map(|b| format!("{}:{}", b.host, b.port))
        else {
            glommio::timer::sleep(RETRY_PAUSE).await;
            continue;
        };
        if partitions.is_empty() {
            glommio::timer::sleep(RETRY_PAUSE).await;
            continue;
        }
        correlation = correlation.wrapping_add(1);
        let round = fetch_round(shard, &mut connection, &address, &partitions, correlation);
        match round.await {
            Ok(gone) => diverged.extend(gone),
            Err(e) => {
                tracing::debug!(leader, "replica fetch from {address}: {e}");
                connection = None;
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// One Fetch to the leader for `partitions`, each from its follower log's end, and the
/// appends of what came back. Returns the partitions whose logs no longer continue the
/// leader's (to stop fetching them).
async fn fetch_round(
    shard: &Rc<Shard>,
    connection: &mut Option<TcpStream>,
    address: &str,
    partitions: &[(String, i32)],
    correlation: i32,
) -> Result<Vec<(String, i32)>, String> {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (name, p) in partitions {
        let Some(log) = shard.log(name, *p) else {
            continue;
        };
        let epoch = shard
            .catalog()
            .placement(name, *p)
            .map_or(-1, |pl| pl.leader_epoch);
        topics.entry(name).or_default().push(
            FetchPartition::default()
                .with_partition(*p)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(log.log_end_offset())
                .with_log_start_offset(log.log_start_offset())
                .with_partition_max_bytes(PARTITION_MAX_BYTES),
        );
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(shard.node_id()))
        .with_max_wait_ms(MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, parts)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partitions(parts)
                })
                .collect(),
        );
    let response = exchange(connection, address, &request, correlation).await?;
    let mut diverged = Vec::new();
    for topic in response.responses {
        let name = topic.topic.0.to_string();
        for part in topic.partitions {
            let p = part.partition_index;
            if part.error_code != codes::NONE {
                if part.error_code == codes::OFFSET_OUT_OF_RANGE {
                    tracing::warn!(
                        topic = %name,
                        partition = p,
                        "this follower's log does not continue its leader's (no truncation \
                         by leader epoch yet): it stops fetching the partition"
                    );
                    diverged.push((name.clone(), p));
                }
                continue;
            }
            let Some(records) = part.records.filter(|r| !r.is_empty()) else {
                continue;
            };
            let Some(log) = shard.log(&name, p) else {
                continue;
            };
            match log.append_replica(records, now_ms()).await {
                Ok(_) => {}
                Err(LogError::ReplicaGap {
                    log_end,
                    batch_base,
                }) => {
                    tracing::warn!(
                        topic = %name,
                        partition = p,
                        log_end,
                        batch_base,
                        "leader's batches do not continue this follower's log"
                    );
                    diverged.push((name.clone(), p));
                }
                Err(e) => tracing::warn!(topic = %name, partition = p, "replica append: {e}"),
            }
        }
    }
    Ok(diverged)
}

async fn exchange(
    connection: &mut Option<TcpStream>,
    address: &str,
    request: &FetchRequest,
    correlation: i32,
) -> Result<FetchResponse, String> {
    if connection.is_none() {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        *connection = Some(stream);
    }
    let stream = connection.as_mut().expect("connected above");
    let client_id = StrBytes::from_static_str("shardlog-replica");
    let mut out = BytesMut::new();
    frame::encode_request(&mut out, correlation, FETCH_VERSION, &client_id, request)
        .map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let size = i32::from_be_bytes(prefix);
    if !(4..=frame::FRAME_BYTES_MAX as i32).contains(&size) {
        return Err(format!("bad response size {size}"));
    }
    let mut body = vec![0u8; size as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = Bytes::from(body);
    frame::decode_response_header::<FetchRequest>(&mut body, FETCH_VERSION, correlation)
        .map_err(|e| e.to_string())?;
    frame::decode_response::<FetchRequest>(&mut body, FETCH_VERSION).map_err(|e| e.to_string())
}
