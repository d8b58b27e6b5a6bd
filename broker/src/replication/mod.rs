//! Followers pull: the shard that owns a follower replica copies the leader's batches into
//! its own log, byte for byte at the leader's offsets (`PartitionLog::append_replica`).
//!
//! Each shard runs one fetcher per leader broker it follows partitions of: one connection
//! to that broker's Kafka port, one long-poll Fetch (Kafka's own, with this node as
//! `replica_id`) for all those partitions at a time, from each follower log's end. The
//! partition list is read from the shard's catalog on every round, so leader changes,
//! new topics and fenced brokers are followed without restarting anything.
//!
//! A follower fetches from its durable end: before each fetch it waits until what it
//! appended is fdatasynced (one group commit for all its partitions), so the offset it asks
//! from is what the leader counts toward the high watermark. With each fetch it names the
//! epoch of its last batch; a leader whose log does not continue that epoch there answers
//! with the diverging epoch and its end offset, and the follower truncates to where the two
//! logs agree (KIP-101/279/320), never to its high watermark. A follower behind the
//! leader's log start starts over at it. It keeps the high watermark the leader reports.
//!
//! The leader's side (follower progress, high watermark, ISR changes) is `shard::leading`
//! and `replicas`; `isr` here proposes the ISR changes those call for.
//!
//! Not yet: one fetch session per pair of shards (a fetch lands on any shard of the leader
//! and hops over its mesh to the owners).

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

mod isr;

use crate::catalog::NO_LEADER;
use crate::clock::now_ms;
use crate::codes;
use crate::log::{LogError, PartitionLog};
use crate::shard::Shard;

/// Fetch version the followers speak (replica_id in the request body; v15+ moves it).
const FETCH_VERSION: i16 = 12;
/// Pause after a failed round (connection refused, leader unknown) before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Start this shard's follower side: a supervisor that keeps one fetcher per leader broker
/// while this shard owns follower replicas led there.
pub fn start(shard: &Rc<Shard>) {
    isr::start(shard);
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
    let mut stuck: BTreeSet<(String, i32)> = BTreeSet::new();
    let mut correlation = 0i32;
    while !shard.is_shutting_down() {
        let Some(partitions) = followed(shard).remove(&leader) else {
            return;
        };
        let partitions: Vec<_> = partitions
            .into_iter()
            .filter(|p| !stuck.contains(p))
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
            Ok((gone, progress)) => {
                stuck.extend(gone);
                if !progress {
                    // Every partition was refused (a leader change not adopted yet here or
                    // there): wait for the catalog instead of asking again at once.
                    glommio::timer::sleep(RETRY_PAUSE).await;
                }
            }
            Err(e) => {
                tracing::debug!(leader, "replica fetch from {address}: {e}");
                connection = None;
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// One Fetch to the leader for `partitions`, each from its follower log's durable end, and
/// what came back applied: batches appended, divergences truncated, the high watermark kept.
/// Returns the partitions that cannot follow (a gap the log refuses, as after compaction)
/// and whether any partition was answered without error.
async fn fetch_round(
    shard: &Rc<Shard>,
    connection: &mut Option<TcpStream>,
    address: &str,
    partitions: &[(String, i32)],
    correlation: i32,
) -> Result<(Vec<(String, i32)>, bool), String> {
    let logs: Vec<_> = partitions
        .iter()
        .filter_map(|(name, p)| Some((name.as_str(), *p, shard.log(name, *p)?)))
        .collect();
    // What is fetched from here on counts as durable on this follower: sync what the last
    // round appended first (one group commit covers them all).
    let syncs = logs.iter().map(|(_, _, log)| async move {
        let end = log.log_end_offset();
        if log.durable_offset() < end {
            shard.storage.wait_durable(log, end - 1).await
        } else {
            Ok(())
        }
    });
    for outcome in futures_util::future::join_all(syncs).await {
        outcome.map_err(|e| format!("syncing replica logs: {e}"))?;
    }
    let catalog = shard.catalog();
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (name, p, log) in &logs {
        let epoch = catalog.placement(name, *p).map_or(-1, |pl| pl.leader_epoch);
        topics.entry(name).or_default().push(
            FetchPartition::default()
                .with_partition(*p)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(log.log_end_offset())
                .with_last_fetched_epoch(log.latest_epoch().unwrap_or(-1))
                .with_log_start_offset(log.log_start_offset())
                .with_partition_max_bytes(shard.config.replica_fetch_max_bytes as i32),
        );
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(shard.node_id()))
        .with_max_wait_ms(shard.config.replica_fetch_wait_max_ms as i32)
        .with_min_bytes(1)
        .with_max_bytes(shard.config.replica_fetch_response_max_bytes as i32)
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
    let mut stuck = Vec::new();
    let mut progress = false;
    for topic in response.responses {
        let name = topic.topic.0.to_string();
        for part in topic.partitions {
            let p = part.partition_index;
            let Some(log) = shard.log(&name, p) else {
                continue;
            };
            let at = (name.as_str(), p);
            match part.error_code {
                codes::NONE => progress = true,
                codes::OFFSET_OUT_OF_RANGE => {
                    out_of_range(at, &log, part.log_start_offset, part.high_watermark).await;
                    continue;
                }
                _ => continue,
            }
            let diverging = &part.diverging_epoch;
            if diverging.epoch >= 0 || diverging.end_offset >= 0 {
                truncate_diverged(at, &log, diverging.epoch, diverging.end_offset).await;
                continue;
            }
            if let Some(records) = part.records.filter(|r| !r.is_empty()) {
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
                            "leader's batches do not continue this follower's log \
                             (a compacted leader): it stops fetching the partition"
                        );
                        stuck.push((name.clone(), p));
                    }
                    Err(e) => tracing::warn!(topic = %name, partition = p, "replica append: {e}"),
                }
            }
            if part.high_watermark >= 0 {
                let hw = part.high_watermark.min(log.log_end_offset());
                if hw > log.high_watermark() {
                    log.set_high_watermark(Some(hw));
                }
            }
        }
    }
    Ok((stuck, progress))
}

/// The leader says this follower's log diverged after its (epoch, end offset): cut it where
/// both agree, the lower of the leader's end of that epoch and this log's own.
async fn truncate_diverged(
    (topic, partition): (&str, i32),
    log: &PartitionLog,
    leader_epoch: i32,
    leader_end: i64,
) {
    let (mine, my_end) = if leader_epoch >= 0 {
        log.end_offset_for_epoch(leader_epoch)
    } else {
        (-1, -1)
    };
    let mut target = leader_end.min(log.log_end_offset());
    if mine >= 0 {
        target = target.min(my_end);
    }
    tracing::info!(
        topic,
        partition,
        leader_epoch,
        leader_end,
        target,
        log_end = log.log_end_offset(),
        "truncating a diverged follower log"
    );
    if let Err(e) = log.truncate_to(target.max(0)).await {
        tracing::warn!(topic, partition, "truncating to {target}: {e}");
    }
}

/// The leader refused the fetch offset: below its log start (start over there) or past its
/// end (cut back to its high watermark and fetch again from there).
async fn out_of_range(
    (topic, partition): (&str, i32),
    log: &PartitionLog,
    leader_start: i64,
    leader_high_watermark: i64,
) {
    let end = log.log_end_offset();
    let outcome = if leader_start >= 0 && end < leader_start {
        tracing::info!(
            topic,
            partition,
            leader_start,
            "follower starts over at the leader's log start"
        );
        log.reset_to(leader_start).await.map(|_| ())
    } else if leader_high_watermark >= 0 && end > leader_high_watermark {
        log.truncate_to(leader_high_watermark).await.map(|_| ())
    } else {
        Ok(())
    };
    if let Err(e) = outcome {
        tracing::warn!(topic, partition, "follower out of range: {e}");
    }
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
