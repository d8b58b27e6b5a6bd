use super::*;
use crate::groups::GroupsConfig;

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
    let receiver = later(group.join(args(&first.member_id, protocols), at, &config(), ids.next()));
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
    let mut join_a = later(group.join(args(&a, &["range"]), t0 + ms(400), &config(), ids.next()));
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
    let mut join_a = later(group.join(args(&a, &["range"]), t0 + ms(200), &config(), ids.next()));
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
    let mut rejoin = later(group.join(args(&b, &["range"]), t0 + ms(1_400), &config(), ids.next()));
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
