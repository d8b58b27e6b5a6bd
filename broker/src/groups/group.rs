//! The state machine of one consumer group (Kafka's classic protocol), and its committed
//! offsets in memory. Pure: no I/O; the caller passes the time in and awaits the receivers
//! of requests that must wait (JoinGroup until the join phase ends, SyncGroup until the
//! leader hands out the assignment).
//!
//! ```text
//!            join                 all joined / deadline          leader's SyncGroup
//!   Empty ─────────▶ PreparingRebalance ─────────▶ CompletingRebalance ─────────▶ Stable
//!     ▲                 ▲   │ no member left            │ join/leave/expiry          │
//!     └─────────────────┼───┘                           ▼                            │
//!                       └───────────────────────────────┴────────────────────────────┘
//! ```
//! A generation is one completed join phase; its leader (first member to have joined)
//! computes the assignment on the client side and sends it with SyncGroup.
//!
//! This file holds the request and answer types and the group's state with its simple
//! calls (Heartbeat, LeaveGroup, commits, the tick, DescribeGroups); the join and sync
//! phases are `rebalance`, adding, updating and removing members is `members`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

/// Kafka error codes of the group protocol.
use crate::codes::*;

mod members;
mod rebalance;

/// Longest group id accepted: ids are stored in the offsets log with an i16 length, and a
/// limit keeps one hostile id from bloating every record of its group.
pub const GROUP_ID_MAX_BYTES: usize = 1024;

/// Where a group is in its rebalance cycle (names as Kafka reports them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name DescribeGroups and ListGroups report.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup request, already decoded.
#[derive(Clone, Debug, Default)]
pub struct JoinArgs {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (protocol name, member metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without id first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
}

/// One member as the leader sees it: (member id, group instance id, metadata).
pub type MemberMetadata = (String, Option<String>, Bytes);

/// The answer to a JoinGroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol: for the leader only.
    pub members: Vec<MemberMetadata>,
}

impl JoinOutcome {
    /// A failed join: only the error and the member id are meaningful.
    pub fn error(error: i16, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error,
            generation_id: -1,
            member_id: member_id.to_string(),
            ..JoinOutcome::default()
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    /// A failed sync.
    pub fn error(error: i16) -> SyncOutcome {
        SyncOutcome {
            error,
            ..SyncOutcome::default()
        }
    }
}

/// An answer now, or a receiver that resolves when the group moves on.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A committed offset of one partition.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_time_ms: i64,
    /// Offset of the record in the offsets log; a commit applies only over older ones, so
    /// memory follows log order even when appends complete out of order.
    pub log_offset: i64,
}

/// A member as DescribeGroups reports it.
#[derive(Clone, Debug, Default)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups reports it.
#[derive(Clone, Debug, Default)]
pub struct GroupDescription {
    pub state: String,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Order of joining: the leader is the earliest member still present.
    joined_seq: u64,
    heartbeat_deadline: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn fail_waiters(&mut self, error: i16) {
        if let Some(w) = self.join_waiter.take() {
            let _ = w.send(JoinOutcome::error(error, &self.id));
        }
        if let Some(w) = self.sync_waiter.take() {
            let _ = w.send(SyncOutcome::error(error));
        }
    }
}

/// One consumer group: members, generation, and committed offsets.
pub struct Group {
    pub id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they rejoin or this deadline.
    pending: HashMap<String, Instant>,
    /// group.instance.id -> member id of static members.
    static_members: HashMap<String, String>,
    next_seq: u64,
    /// End of the initial-rebalance delay of a group that was empty.
    delay_until: Option<Instant>,
    /// Latest end of the initial delay (its extensions are bounded by the rebalance timeout).
    delay_limit: Option<Instant>,
    /// The join phase ends at this time even if some members have not rejoined.
    join_deadline: Option<Instant>,
    /// group.initial.rebalance.delay.ms
    initial_delay: Duration,
    /// When the group last became empty (its creation, if never joined), for offset expiry.
    pub empty_since: Instant,
    /// Committed offsets by (topic, partition).
    pub offsets: HashMap<(String, i32), CommittedOffset>,
}

impl Group {
    /// A new, empty group.
    pub fn new(id: String, now: Instant, initial_delay: Duration) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            next_seq: 0,
            delay_until: None,
            delay_limit: None,
            join_deadline: None,
            initial_delay,
            empty_since: now,
            offsets: HashMap::new(),
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> &str {
        self.protocol_type.as_deref().unwrap_or("")
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Whether the group can be forgotten: no member, no pending member, no offset.
    pub fn is_dead(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending.is_empty()
            && self.offsets.is_empty()
    }

    /// Topics the current members subscribe to (`consumer` groups only: their member
    /// metadata is a ConsumerProtocolSubscription). OffsetDelete refuses those topics.
    pub fn subscribed_topics(&self) -> Vec<String> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let Some(protocol) = &self.protocol_name else {
            return Vec::new();
        };
        if self.protocol_type() != "consumer" {
            return Vec::new();
        }
        let mut topics = Vec::new();
        for member in self.members.values() {
            let mut metadata = member.metadata_for(protocol);
            if metadata.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([metadata[0], metadata[1]]);
            bytes::Buf::advance(&mut metadata, 2);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut metadata, version.min(3)) {
                topics.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Heartbeat: keeps the member's session alive and tells it when to rejoin.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if self.state == GroupState::Empty {
            return UNKNOWN_MEMBER_ID;
        }
        if self.is_fenced(member_id, instance_id) {
            return FENCED_INSTANCE_ID;
        }
        let Some(member) = self.members.get_mut(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        member.heartbeat_deadline = now + member.session_timeout;
        match self.state {
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            _ => NONE,
        }
    }

    /// LeaveGroup of one member, by member id or (v3+) by group instance id alone.
    pub fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: Instant) -> i16 {
        let id = match (member_id, instance_id) {
            ("", Some(instance)) => match self.static_members.get(instance) {
                Some(id) => id.clone(),
                None => return UNKNOWN_MEMBER_ID,
            },
            (id, _) => id.to_string(),
        };
        if self.pending.remove(&id).is_some() {
            self.try_complete_join(now);
            return NONE;
        }
        if !self.members.contains_key(&id) {
            return UNKNOWN_MEMBER_ID;
        }
        if self.is_fenced(&id, instance_id) {
            return FENCED_INSTANCE_ID;
        }
        self.remove_member(&id, UNKNOWN_MEMBER_ID, now);
        NONE
    }

    /// Whether a commit by this member at this generation is allowed. Generation -1 with an
    /// empty member id is a commit from outside group management (a simple consumer or an
    /// admin tool): allowed only while the group has no members, as Kafka does.
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            return if self.members.is_empty() {
                NONE
            } else {
                UNKNOWN_MEMBER_ID
            };
        }
        if self.is_fenced(member_id, instance_id) {
            return FENCED_INSTANCE_ID;
        }
        if !self.members.contains_key(member_id) {
            return UNKNOWN_MEMBER_ID;
        }
        if generation != self.generation {
            return ILLEGAL_GENERATION;
        }
        if self.state == GroupState::CompletingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        NONE
    }

    /// Apply a commit (or a tombstone, `None`) read from or written to the offsets log.
    pub fn apply_offset(&mut self, topic: &str, partition: i32, value: Option<CommittedOffset>) {
        let key = (topic.to_string(), partition);
        match value {
            Some(new) => {
                let newer = self
                    .offsets
                    .get(&key)
                    .is_none_or(|old| old.log_offset < new.log_offset);
                if newer {
                    self.offsets.insert(key, new);
                }
            }
            None => {
                self.offsets.remove(&key);
            }
        }
    }

    /// Timer work: expire sessions and pending members, end a join phase at its deadline.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.heartbeat_deadline <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "session expired; removing member");
            self.remove_member(&id, UNKNOWN_MEMBER_ID, now);
        }
        self.try_complete_join(now);
    }

    /// Fail every waiting request (the group is being deleted or the shard stops).
    pub fn shutdown(&mut self) {
        for member in self.members.values_mut() {
            member.fail_waiters(COORDINATOR_NOT_AVAILABLE);
        }
    }

    /// The group as DescribeGroups reports it.
    pub fn describe(&self) -> GroupDescription {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        GroupDescription {
            state: self.state.name().to_string(),
            protocol_type: self.protocol_type().to_string(),
            protocol_name: protocol.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: if self.state == GroupState::Stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
