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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::GroupsConfig;

/// Kafka error codes of the group protocol.
use crate::codes::*;

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

    /// JoinGroup. `new_member_id` makes a fresh member id when one is needed.
    pub fn join(
        &mut self,
        args: JoinArgs,
        now: Instant,
        config: &GroupsConfig,
        new_member_id: impl FnOnce(&str) -> String,
    ) -> Reply<JoinOutcome> {
        let session = args.session_timeout_ms;
        if session < config.min_session_timeout_ms as i32
            || session > config.max_session_timeout_ms as i32
        {
            return Reply::Now(JoinOutcome::error(INVALID_SESSION_TIMEOUT, &args.member_id));
        }
        if !self.supports(&args.protocol_type, &args.protocols) {
            return Reply::Now(JoinOutcome::error(
                INCONSISTENT_GROUP_PROTOCOL,
                &args.member_id,
            ));
        }
        if args.member_id.is_empty() {
            if let Some(instance) = &args.group_instance_id {
                if let Some(old_id) = self.static_members.get(instance).cloned() {
                    let new_id = new_member_id(instance);
                    return self.rejoin_static(old_id, new_id, args, now);
                }
            }
            if self.members.len() + self.pending.len() >= config.max_members as usize {
                return Reply::Now(JoinOutcome::error(GROUP_MAX_SIZE_REACHED, ""));
            }
            let prefix = args.group_instance_id.as_deref().unwrap_or(&args.client_id);
            let id = new_member_id(prefix);
            if args.require_known_member_id && args.group_instance_id.is_none() {
                let deadline = now + Duration::from_millis(session as u64);
                self.pending.insert(id.clone(), deadline);
                return Reply::Now(JoinOutcome::error(MEMBER_ID_REQUIRED, &id));
            }
            return Reply::Later(self.add_member(id, args, now));
        }
        if self.pending.remove(&args.member_id).is_some() {
            let id = args.member_id.clone();
            return Reply::Later(self.add_member(id, args, now));
        }
        if !self.members.contains_key(&args.member_id) {
            return Reply::Now(JoinOutcome::error(UNKNOWN_MEMBER_ID, &args.member_id));
        }
        if self.is_fenced(&args.member_id, args.group_instance_id.as_deref()) {
            return Reply::Now(JoinOutcome::error(FENCED_INSTANCE_ID, &args.member_id));
        }
        let id = args.member_id.clone();
        let member = self.members.get(&id).expect("member checked above");
        let unchanged = member.protocols == args.protocols;
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        match self.state {
            GroupState::PreparingRebalance => Reply::Later(self.update_member(&id, args, now)),
            GroupState::CompletingRebalance if unchanged => {
                // A retried JoinGroup: answer with the generation it missed.
                Reply::Now(self.join_outcome_for(&id))
            }
            GroupState::Stable if unchanged && !is_leader => Reply::Now(self.join_outcome_for(&id)),
            GroupState::CompletingRebalance | GroupState::Stable => {
                let receiver = self.update_member(&id, args, now);
                self.prepare_rebalance(now);
                Reply::Later(receiver)
            }
            GroupState::Empty => Reply::Now(JoinOutcome::error(UNKNOWN_MEMBER_ID, &id)),
        }
    }

    /// SyncGroup. `protocol` is the (type, name) the member states (v5+), if any.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Reply<SyncOutcome> {
        if !self.members.contains_key(member_id) {
            return Reply::Now(SyncOutcome::error(UNKNOWN_MEMBER_ID));
        }
        if self.is_fenced(member_id, instance_id) {
            return Reply::Now(SyncOutcome::error(FENCED_INSTANCE_ID));
        }
        if generation != self.generation {
            return Reply::Now(SyncOutcome::error(ILLEGAL_GENERATION));
        }
        let type_mismatch = protocol
            .0
            .is_some_and(|t| Some(t) != self.protocol_type.as_deref());
        let name_mismatch = protocol
            .1
            .is_some_and(|n| Some(n) != self.protocol_name.as_deref());
        if type_mismatch || name_mismatch {
            return Reply::Now(SyncOutcome::error(INCONSISTENT_GROUP_PROTOCOL));
        }
        match self.state {
            GroupState::Empty => Reply::Now(SyncOutcome::error(UNKNOWN_MEMBER_ID)),
            GroupState::PreparingRebalance => Reply::Now(SyncOutcome::error(REBALANCE_IN_PROGRESS)),
            GroupState::Stable => Reply::Now(self.sync_outcome_for(member_id)),
            GroupState::CompletingRebalance => {
                let (sender, receiver) = oneshot::channel();
                let member = self
                    .members
                    .get_mut(member_id)
                    .expect("member checked above");
                if let Some(old) = member.sync_waiter.replace(sender) {
                    // A retried SyncGroup supersedes the parked one (see update_member).
                    let _ = old.send(SyncOutcome::error(REBALANCE_IN_PROGRESS));
                }
                member.heartbeat_deadline = now + member.session_timeout;
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment = given.remove(&member.id).unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let outcome = self.sync_outcome_for(&id);
                        let member = self.members.get_mut(&id).expect("listed above");
                        if let Some(w) = member.sync_waiter.take() {
                            let _ = w.send(outcome);
                        }
                    }
                }
                Reply::Later(receiver)
            }
        }
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

    fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.is_some_and(|instance| {
            self.static_members
                .get(instance)
                .is_some_and(|id| id != member_id)
        })
    }

    /// Kafka's rule: an empty group takes any non-empty protocol type and list; otherwise the
    /// type must match and one protocol must be supported by every member and this one.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn add_member(
        &mut self,
        id: String,
        args: JoinArgs,
        now: Instant,
    ) -> oneshot::Receiver<JoinOutcome> {
        if self.members.is_empty() {
            self.protocol_type = Some(args.protocol_type.clone());
        }
        let (sender, receiver) = oneshot::channel();
        let session_timeout = Duration::from_millis(args.session_timeout_ms.max(0) as u64);
        let rebalance_timeout = Duration::from_millis(args.rebalance_timeout_ms.max(0) as u64);
        if let Some(instance) = &args.group_instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        self.next_seq += 1;
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: args.group_instance_id,
                client_id: args.client_id,
                client_host: args.client_host,
                session_timeout,
                rebalance_timeout,
                protocols: args.protocols,
                assignment: Bytes::new(),
                joined_seq: self.next_seq,
                heartbeat_deadline: now + session_timeout,
                join_waiter: Some(sender),
                sync_waiter: None,
            },
        );
        if self.state == GroupState::PreparingRebalance {
            // Each member joining during the initial delay extends it, within its limit.
            if let (Some(until), Some(limit)) = (self.delay_until, self.delay_limit) {
                let extended = until.max(now + self.initial_delay);
                self.delay_until = Some(extended.min(limit));
            }
            self.try_complete_join(now);
        } else {
            self.prepare_rebalance(now);
        }
        receiver
    }

    fn update_member(
        &mut self,
        id: &str,
        args: JoinArgs,
        now: Instant,
    ) -> oneshot::Receiver<JoinOutcome> {
        let (sender, receiver) = oneshot::channel();
        let member = self.members.get_mut(id).expect("caller checked the member");
        if let Some(old) = member.join_waiter.replace(sender) {
            // A retried JoinGroup supersedes the parked one. Its answer must not make the
            // client drop its member id, so it says "rejoin" rather than "unknown member".
            let _ = old.send(JoinOutcome::error(REBALANCE_IN_PROGRESS, id));
        }
        member.protocols = args.protocols;
        member.session_timeout = Duration::from_millis(args.session_timeout_ms.max(0) as u64);
        member.rebalance_timeout = Duration::from_millis(args.rebalance_timeout_ms.max(0) as u64);
        member.client_id = args.client_id;
        member.client_host = args.client_host;
        member.heartbeat_deadline = now + member.session_timeout;
        self.try_complete_join(now);
        receiver
    }

    /// A static member restarted (same group.instance.id, no member id): it takes a new
    /// member id, the old one is fenced, and a stable group keeps its assignment.
    fn rejoin_static(
        &mut self,
        old_id: String,
        new_id: String,
        args: JoinArgs,
        now: Instant,
    ) -> Reply<JoinOutcome> {
        let mut member = self
            .members
            .remove(&old_id)
            .expect("static map points at members");
        member.fail_waiters(FENCED_INSTANCE_ID);
        let unchanged = member.protocols == args.protocols;
        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
        member.id = new_id.clone();
        member.protocols = args.protocols;
        member.session_timeout = Duration::from_millis(args.session_timeout_ms.max(0) as u64);
        member.rebalance_timeout = Duration::from_millis(args.rebalance_timeout_ms.max(0) as u64);
        member.client_id = args.client_id;
        member.client_host = args.client_host;
        member.heartbeat_deadline = now + member.session_timeout;
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &args.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == GroupState::Stable && unchanged && !was_leader {
            return Reply::Now(self.join_outcome_for(&new_id));
        }
        let (sender, receiver) = oneshot::channel();
        self.members
            .get_mut(&new_id)
            .expect("inserted above")
            .join_waiter = Some(sender);
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        } else {
            self.prepare_rebalance(now);
        }
        Reply::Later(receiver)
    }

    fn remove_member(&mut self, id: &str, error: i16, now: Instant) {
        let Some(mut member) = self.members.remove(id) else {
            return;
        };
        member.fail_waiters(error);
        if let Some(instance) = &member.instance_id {
            if self.static_members.get(instance).is_some_and(|m| m == id) {
                self.static_members.remove(instance);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now),
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty => {}
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(w) = member.sync_waiter.take() {
                    let _ = w.send(SyncOutcome::error(REBALANCE_IN_PROGRESS));
                }
            }
        }
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
        }
        let max_rebalance = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.state == GroupState::Empty {
            self.delay_until = Some(now + self.initial_delay);
            self.delay_limit = Some(now + max_rebalance.max(self.initial_delay));
        }
        self.state = GroupState::PreparingRebalance;
        self.join_deadline = Some(now + max_rebalance);
        self.try_complete_join(now);
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if self.delay_until.is_some_and(|until| now < until) {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        let deadline_passed = self.join_deadline.is_none_or(|d| now >= d);
        if !all_joined && !deadline_passed {
            return;
        }
        self.delay_until = None;
        self.delay_limit = None;
        self.join_deadline = None;
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            tracing::info!(group = %self.id, member = %id, "did not rejoin in time; removing member");
            let mut member = self.members.remove(&id).expect("listed above");
            member.fail_waiters(UNKNOWN_MEMBER_ID);
            if let Some(instance) = &member.instance_id {
                if self.static_members.get(instance) == Some(&id) {
                    self.static_members.remove(instance);
                }
            }
        }
        self.generation += 1;
        if self.members.is_empty() {
            // The protocol type stays, as in Kafka: an empty consumer group still lists as
            // "consumer" (admin clients tell consumer groups from others by it).
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            self.empty_since = now;
            return;
        }
        self.protocol_name = Some(self.select_protocol());
        let leader_present = self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l));
        if !leader_present {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = self.protocol_name.as_deref().unwrap_or(""),
            "join phase complete"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.join_outcome_for(&id);
            let member = self.members.get_mut(&id).expect("listed above");
            member.heartbeat_deadline = now + member.session_timeout;
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(outcome);
            }
        }
    }

    /// Kafka's vote: among protocols every member supports, each member votes for the first
    /// in its own order; the most votes win, ties going to the leader's (earliest member's)
    /// order.
    fn select_protocol(&self) -> String {
        let mut by_seq: Vec<&Member> = self.members.values().collect();
        by_seq.sort_by_key(|m| m.joined_seq);
        let candidates: Vec<&String> = by_seq[0]
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for member in &by_seq {
            let choice = member
                .protocols
                .iter()
                .find_map(|(name, _)| candidates.iter().position(|c| *c == name));
            if let Some(i) = choice {
                votes[i] += 1;
            }
        }
        let mut best = 0;
        for (i, v) in votes.iter().enumerate() {
            if *v > votes[best] {
                best = i;
            }
        }
        candidates
            .get(best)
            .map(|s| (*s).clone())
            .unwrap_or_default()
    }

    fn join_outcome_for(&self, id: &str) -> JoinOutcome {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == id {
            let mut members: Vec<&Member> = self.members.values().collect();
            members.sort_by_key(|m| m.joined_seq);
            members
                .into_iter()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: Some(protocol),
            leader,
            member_id: id.to_string(),
            members,
        }
    }

    fn sync_outcome_for(&self, id: &str) -> SyncOutcome {
        SyncOutcome {
            error: NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GroupsConfig {
        GroupsConfig {
            min_session_timeout_ms: 10,
            initial_rebalance_delay_ms: 100,
            max_members: 3,
            ..GroupsConfig::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn args(member_id: &str, protocols: &[&str]) -> JoinArgs {
        JoinArgs {
            member_id: member_id.into(),
            client_id: "client".into(),
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{member_id}:{p}"))))
                .collect(),
            require_known_member_id: true,
            ..JoinArgs::default()
        }
    }

    struct Ids(u32);
    impl Ids {
        fn next(&mut self) -> impl FnOnce(&str) -> String + '_ {
            move |prefix| {
                self.0 += 1;
                format!("{prefix}-{}", self.0)
            }
        }
    }

    fn now<T: std::fmt::Debug>(reply: Reply<T>) -> T {
        match reply {
            Reply::Now(t) => t,
            Reply::Later(_) => panic!("expected an immediate answer"),
        }
    }

    fn later<T>(reply: Reply<T>) -> oneshot::Receiver<T> {
        match reply {
            Reply::Later(r) => r,
            Reply::Now(_) => panic!("expected a deferred answer"),
        }
    }

    fn ready<T>(receiver: &mut oneshot::Receiver<T>) -> Option<T> {
        receiver.try_recv().expect("sender alive or answered")
    }

    /// A v4+ member: MEMBER_ID_REQUIRED first, then the join with the handed-out id.
    fn join_new(
        group: &mut Group,
        ids: &mut Ids,
        protocols: &[&str],
        at: Instant,
    ) -> (String, oneshot::Receiver<JoinOutcome>) {
        let first = now(group.join(args("", protocols), at, &config(), ids.next()));
        assert_eq!(first.error, MEMBER_ID_REQUIRED);
        assert!(!first.member_id.is_empty());
        let receiver =
            later(group.join(args(&first.member_id, protocols), at, &config(), ids.next()));
        (first.member_id, receiver)
    }

    /// One member, stable at generation 1, assignment "a1".
    fn stable_group_of_one(t0: Instant) -> (Group, Ids, String) {
        let mut group = Group::new("g".into(), Instant::now(), ms(100));
        let mut ids = Ids(0);
        let (a, mut join_a) = join_new(&mut group, &mut ids, &["range"], t0);
        group.tick(t0 + ms(100));
        let joined = ready(&mut join_a).expect("join phase over after the initial delay");
        assert_eq!(joined.generation_id, 1);
        let assignments = vec![(a.clone(), Bytes::from_static(b"a1"))];
        let mut sync = later(group.sync(&a, None, 1, (None, None), assignments, t0 + ms(100)));
        assert_eq!(
            ready(&mut sync).unwrap().assignment,
            Bytes::from_static(b"a1")
        );
        assert_eq!(group.state(), GroupState::Stable);
        (group, ids, a)
    }

    #[test]
    fn first_member_waits_the_initial_delay_then_leads_generation_one() {
        let t0 = Instant::now();
        let mut group = Group::new("g".into(), Instant::now(), ms(100));
        let mut ids = Ids(0);
        let (a, mut join_a) = join_new(&mut group, &mut ids, &["range", "roundrobin"], t0);
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        group.tick(t0 + ms(50));
        assert!(
            ready(&mut join_a).is_none(),
            "still inside the initial delay"
        );
        group.tick(t0 + ms(100));
        let joined = ready(&mut join_a).unwrap();
        assert_eq!(joined.error, NONE);
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.leader, a);
        assert_eq!(joined.member_id, a);
        assert_eq!(joined.protocol_name.as_deref(), Some("range"));
        assert_eq!(
            joined.members.len(),
            1,
            "the leader gets every member's metadata"
        );
        assert_eq!(group.state(), GroupState::CompletingRebalance);
    }

    #[test]
    fn leaders_sync_hands_each_member_its_assignment() {
        let t0 = Instant::now();
        let mut group = Group::new("g".into(), Instant::now(), ms(100));
        let mut ids = Ids(0);
        let (a, mut join_a) = join_new(&mut group, &mut ids, &["range"], t0);
        let (b, mut join_b) = join_new(&mut group, &mut ids, &["range"], t0 + ms(10));
        group.tick(t0 + ms(200));
        let (ja, jb) = (ready(&mut join_a).unwrap(), ready(&mut join_b).unwrap());
        assert_eq!(
            (ja.leader.as_str(), jb.leader.as_str()),
            (a.as_str(), a.as_str())
        );
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty(), "followers get no member list");
        let mut sync_b = later(group.sync(&b, None, 1, (None, None), vec![], t0 + ms(200)));
        assert!(
            ready(&mut sync_b).is_none(),
            "followers wait for the leader"
        );
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let mut sync_a = later(group.sync(
            &a,
            None,
            1,
            (None, Some("range")),
            assignments,
            t0 + ms(210),
        ));
        assert_eq!(
            ready(&mut sync_a).unwrap().assignment,
            Bytes::from_static(b"A")
        );
        assert_eq!(
            ready(&mut sync_b).unwrap().assignment,
            Bytes::from_static(b"B")
        );
        assert_eq!(group.state(), GroupState::Stable);
        // A late SyncGroup in a stable group answers at once with the stored assignment.
        assert_eq!(
            now(group.sync(&b, None, 1, (None, None), vec![], t0 + ms(220))).assignment,
            Bytes::from_static(b"B")
        );
    }

    #[test]
    fn a_new_member_triggers_a_rebalance_the_others_learn_by_heartbeat() {
        let t0 = Instant::now();
        let (mut group, mut ids, a) = stable_group_of_one(t0);
        let (b, mut join_b) = join_new(&mut group, &mut ids, &["range"], t0 + ms(200));
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&a, None, 1, t0 + ms(300)),
            REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            now(group.sync(&a, None, 1, (None, None), vec![], t0 + ms(300))).error,
            REBALANCE_IN_PROGRESS
        );
        let mut join_a =
            later(group.join(args(&a, &["range"]), t0 + ms(400), &config(), ids.next()));
        let (ja, jb) = (ready(&mut join_a).unwrap(), ready(&mut join_b).unwrap());
        assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
        assert_eq!(ja.leader, a, "the leader stays the leader");
        assert_eq!(jb.member_id, b);
        assert_eq!(
            group.heartbeat(&b, None, 1, t0 + ms(400)),
            ILLEGAL_GENERATION
        );
        assert_eq!(group.heartbeat(&b, None, 2, t0 + ms(400)), NONE);
    }

    #[test]
    fn a_member_without_heartbeats_is_removed_after_its_session_timeout() {
        let t0 = Instant::now();
        let (mut group, mut ids, a) = stable_group_of_one(t0);
        let (b, mut join_b) = join_new(&mut group, &mut ids, &["range"], t0 + ms(200));
        let mut join_a =
            later(group.join(args(&a, &["range"]), t0 + ms(200), &config(), ids.next()));
        ready(&mut join_a).unwrap();
        ready(&mut join_b).unwrap();
        let assignments = vec![(a.clone(), Bytes::new()), (b.clone(), Bytes::new())];
        let _ = group.sync(&a, None, 2, (None, None), assignments, t0 + ms(200));
        // b heartbeats, a goes silent: a's session (1 s) ends at 1.2 s.
        assert_eq!(group.heartbeat(&b, None, 2, t0 + ms(900)), NONE);
        group.tick(t0 + ms(1_100));
        assert_eq!(group.member_count(), 2);
        group.tick(t0 + ms(1_250));
        assert_eq!(group.member_count(), 1, "a expired");
        assert_eq!(
            group.heartbeat(&a, None, 2, t0 + ms(1_300)),
            UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            group.heartbeat(&b, None, 2, t0 + ms(1_300)),
            REBALANCE_IN_PROGRESS
        );
        let mut rejoin =
            later(group.join(args(&b, &["range"]), t0 + ms(1_400), &config(), ids.next()));
        let joined = ready(&mut rejoin).unwrap();
        assert_eq!(
            (joined.generation_id, joined.leader.as_str()),
            (3, b.as_str())
        );
    }

    #[test]
    fn a_leave_rebalances_at_once_and_the_last_leave_empties_the_group() {
        let t0 = Instant::now();
        let (mut group, _ids, a) = stable_group_of_one(t0);
        assert_eq!(group.leave("nobody", None, t0), UNKNOWN_MEMBER_ID);
        assert_eq!(group.leave(&a, None, t0 + ms(300)), NONE);
        assert_eq!(group.state(), GroupState::Empty);
        // Offsets retention counts from the time the caller gave, not a clock inside.
        assert_eq!(group.empty_since, t0 + ms(300));
        assert_eq!(group.generation(), 2);
        assert!(group.is_dead(), "no member and no offset left");
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
        let t0 = Instant::now();
        let (mut group, mut ids, a) = stable_group_of_one(t0);
        let (b, mut join_b) = join_new(&mut group, &mut ids, &["range"], t0 + ms(200));
        // a keeps heartbeating but never rejoins; the rebalance timeout is 5 s.
        for step in 1..=9 {
            let at = t0 + ms(200 + step * 500);
            assert_eq!(group.heartbeat(&a, None, 1, at), REBALANCE_IN_PROGRESS);
            group.tick(at);
        }
        assert!(ready(&mut join_b).is_none());
        group.tick(t0 + ms(5_200));
        let joined = ready(&mut join_b).unwrap();
        assert_eq!(
            (joined.generation_id, joined.leader.as_str()),
            (2, b.as_str())
        );
        assert_eq!(group.member_count(), 1);
    }

    #[test]
    fn bad_joins_get_kafkas_error_codes() {
        let t0 = Instant::now();
        let (mut group, mut ids, _a) = stable_group_of_one(t0);
        let mut short = args("", &["range"]);
        short.session_timeout_ms = 5;
        assert_eq!(
            now(group.join(short, t0, &config(), ids.next())).error,
            INVALID_SESSION_TIMEOUT
        );
        let other_type = JoinArgs {
            protocol_type: "connect".into(),
            ..args("", &["range"])
        };
        assert_eq!(
            now(group.join(other_type, t0, &config(), ids.next())).error,
            INCONSISTENT_GROUP_PROTOCOL
        );
        assert_eq!(
            now(group.join(args("", &["sticky"]), t0, &config(), ids.next())).error,
            INCONSISTENT_GROUP_PROTOCOL
        );
        assert_eq!(
            now(group.join(args("ghost", &["range"]), t0, &config(), ids.next())).error,
            UNKNOWN_MEMBER_ID
        );
        // max_members is 3: one member plus two pending ids fill the group.
        assert_eq!(
            now(group.join(args("", &["range"]), t0, &config(), ids.next())).error,
            MEMBER_ID_REQUIRED
        );
        assert_eq!(
            now(group.join(args("", &["range"]), t0, &config(), ids.next())).error,
            MEMBER_ID_REQUIRED
        );
        assert_eq!(
            now(group.join(args("", &["range"]), t0, &config(), ids.next())).error,
            GROUP_MAX_SIZE_REACHED
        );
    }

    #[test]
    fn the_protocol_is_chosen_by_vote_among_those_every_member_supports() {
        let t0 = Instant::now();
        let mut group = Group::new("g".into(), Instant::now(), ms(100));
        let mut ids = Ids(0);
        let (_, mut ja) = join_new(&mut group, &mut ids, &["range", "roundrobin", "sticky"], t0);
        let (_, mut jb) = join_new(&mut group, &mut ids, &["roundrobin", "range"], t0);
        let (_, mut jc) = join_new(&mut group, &mut ids, &["sticky", "roundrobin", "range"], t0);
        group.tick(t0 + ms(100));
        // Common: range, roundrobin. Votes: a range, b roundrobin, c roundrobin.
        for j in [&mut ja, &mut jb, &mut jc] {
            assert_eq!(
                ready(j).unwrap().protocol_name.as_deref(),
                Some("roundrobin")
            );
        }
    }

    #[test]
    fn a_restarted_static_member_takes_a_new_id_and_fences_the_old_one() {
        let t0 = Instant::now();
        let mut group = Group::new("g".into(), Instant::now(), ms(100));
        let mut ids = Ids(0);
        let static_args = |member_id: &str| JoinArgs {
            group_instance_id: Some("instance-1".into()),
            ..args(member_id, &["range"])
        };
        let mut ja = later(group.join(static_args(""), t0, &config(), ids.next()));
        let (other, mut jo) = join_new(&mut group, &mut ids, &["range"], t0);
        group.tick(t0 + ms(100));
        let old = ready(&mut ja).unwrap();
        assert!(
            old.member_id.starts_with("instance-1-"),
            "static members skip MEMBER_ID_REQUIRED"
        );
        let leader = ready(&mut jo).unwrap().leader;
        assert_eq!(leader, old.member_id);
        let assignments = vec![
            (old.member_id.clone(), Bytes::from_static(b"S")),
            (other.clone(), Bytes::from_static(b"O")),
        ];
        let _ = group.sync(
            &old.member_id,
            Some("instance-1"),
            1,
            (None, None),
            assignments,
            t0 + ms(100),
        );
        let _ = group.sync(&other, None, 1, (None, None), vec![], t0 + ms(100));
        assert_eq!(group.state(), GroupState::Stable);

        // The static leader restarts: new id, old id fenced; the leader rejoining rebalances.
        let mut rejoined = later(group.join(static_args(""), t0 + ms(200), &config(), ids.next()));
        assert_eq!(
            group.heartbeat(&old.member_id, Some("instance-1"), 1, t0 + ms(210)),
            FENCED_INSTANCE_ID
        );
        let _other_joined = later(group.join(
            args(&other, &["range"]),
            t0 + ms(220),
            &config(),
            ids.next(),
        ));
        let new = ready(&mut rejoined).unwrap();
        assert_ne!(new.member_id, old.member_id);
        assert_eq!(
            new.leader, new.member_id,
            "it stays the leader under its new id"
        );
        assert_eq!(group.member_count(), 2);
    }

    #[test]
    fn a_restarted_static_follower_gets_its_assignment_without_a_rebalance() {
        let t0 = Instant::now();
        let (mut group, mut ids, leader) = stable_group_of_one(t0);
        let static_args = JoinArgs {
            group_instance_id: Some("follower".into()),
            ..args("", &["range"])
        };
        let mut jf = later(group.join(static_args.clone(), t0 + ms(200), &config(), ids.next()));
        let mut jl = later(group.join(
            args(&leader, &["range"]),
            t0 + ms(200),
            &config(),
            ids.next(),
        ));
        let follower = ready(&mut jf).unwrap().member_id;
        ready(&mut jl).unwrap();
        let assignments = vec![
            (leader.clone(), Bytes::new()),
            (follower.clone(), Bytes::from_static(b"F")),
        ];
        let _ = group.sync(&leader, None, 2, (None, None), assignments, t0 + ms(300));
        let generation = group.generation();
        let again = now(group.join(static_args, t0 + ms(400), &config(), ids.next()));
        assert_eq!(again.error, NONE);
        assert_ne!(again.member_id, follower);
        assert_eq!(group.generation(), generation, "no rebalance");
        assert_eq!(group.state(), GroupState::Stable);
        let synced = now(group.sync(
            &again.member_id,
            Some("follower"),
            generation,
            (None, None),
            vec![],
            t0 + ms(400),
        ));
        assert_eq!(synced.assignment, Bytes::from_static(b"F"));
    }

    #[test]
    fn commits_from_outside_the_group_are_allowed_only_while_it_is_empty() {
        let t0 = Instant::now();
        let empty = Group::new("g".into(), Instant::now(), ms(100));
        assert_eq!(empty.validate_commit("", None, -1), NONE);
        let (group, _ids, a) = stable_group_of_one(t0);
        assert_eq!(group.validate_commit("", None, -1), UNKNOWN_MEMBER_ID);
        assert_eq!(group.validate_commit(&a, None, 1), NONE);
        assert_eq!(group.validate_commit(&a, None, 7), ILLEGAL_GENERATION);
        assert_eq!(group.validate_commit("ghost", None, 1), UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn offsets_follow_log_order_and_tombstones_remove_them() {
        let mut group = Group::new("g".into(), Instant::now(), ms(100));
        let at = |offset, log_offset| CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_time_ms: 0,
            log_offset,
        };
        group.apply_offset("t", 0, Some(at(10, 5)));
        group.apply_offset("t", 0, Some(at(7, 4)));
        assert_eq!(
            group.offsets[&("t".to_string(), 0)].offset,
            10,
            "an older record loses"
        );
        group.apply_offset("t", 0, None);
        assert!(group.offsets.is_empty());
        assert!(group.is_dead());
    }
}
