//! The join and sync phases of one group: JoinGroup (which may start a rebalance), the end
//! of a join phase (every member rejoined, or its deadline), the protocol choice, and
//! SyncGroup handing the leader's assignment out. Pure like the rest of `group`: no I/O,
//! no clock; never adds or removes a member except through `members`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::{Group, GroupState, JoinArgs, JoinOutcome, Member, Reply, SyncOutcome};
use crate::codes::*;
use crate::groups::GroupsConfig;

impl Group {
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

    pub(super) fn prepare_rebalance(&mut self, now: Instant) {
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

    pub(super) fn try_complete_join(&mut self, now: Instant) {
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
    pub(super) fn select_protocol(&self) -> String {
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

    pub(super) fn join_outcome_for(&self, id: &str) -> JoinOutcome {
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

    pub(super) fn sync_outcome_for(&self, id: &str) -> SyncOutcome {
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
