//! Membership bookkeeping of one group: who may join (fencing of static members, the
//! protocol check), adding a member, updating or replacing one (static rejoin), removing
//! one. Never ends a join phase or hands out an assignment (`rebalance` does); a removal
//! only asks for a rebalance.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::{Group, GroupState, JoinArgs, JoinOutcome, Member, Reply};
use crate::codes::*;

impl Group {
    pub(super) fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.is_some_and(|instance| {
            self.static_members
                .get(instance)
                .is_some_and(|id| id != member_id)
        })
    }

    /// Kafka's rule: an empty group takes any non-empty protocol type and list; otherwise the
    /// type must match and one protocol must be supported by every member and this one.
    pub(super) fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
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

    pub(super) fn add_member(
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

    pub(super) fn update_member(
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
    pub(super) fn rejoin_static(
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

    pub(super) fn remove_member(&mut self, id: &str, error: i16, now: Instant) {
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
}
