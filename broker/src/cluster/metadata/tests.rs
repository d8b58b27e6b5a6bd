use super::*;

fn register(catalog: &mut Catalog, index: u64, id: i32) -> u64 {
    let reply = apply(
        catalog,
        index,
        &Command::RegisterBroker(Registration {
            id,
            incarnation: format!("inc-{id}"),
            host: "127.0.0.1".into(),
            port: 9000 + id as u16,
            controller_addr: format!("127.0.0.1:{}", 9100 + id),
        }),
    );
    match reply {
        Reply::Registered { epoch } => epoch,
        other => panic!("{other:?}"),
    }
}

fn three() -> Catalog {
    let mut c = Catalog::default();
    apply(
        &mut c,
        1,
        &Command::Bootstrap {
            cluster_id: "c1".into(),
            node_id: 1,
            legacy: None,
        },
    );
    for (i, id) in [1, 2, 3].into_iter().enumerate() {
        register(&mut c, 2 + i as u64, id);
    }
    c
}

fn create(c: &mut Catalog, index: u64, name: &str, partitions: i32, rf: i32) -> Reply {
    apply(
        c,
        index,
        &Command::CreateTopics {
            topics: vec![NewTopicSpec {
                name: name.into(),
                id: [7; 16],
                partitions,
                replication_factor: rf,
                assignments: vec![],
                configs: vec![],
            }],
            validate_only: false,
        },
    )
}

#[test]
fn twelve_partitions_rf3_spread_replicas_and_leaders_evenly() {
    let mut c = three();
    assert_eq!(
        create(&mut c, 10, "t", 12, 3),
        Reply::Outcomes(vec![(codes::NONE, None)])
    );
    let topic = &c.topics["t"];
    let mut leaders = BTreeMap::new();
    for p in &topic.placement {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.replicas.iter().collect::<BTreeSet<_>>().len(), 3);
        assert_eq!(p.leader, p.replicas[0]);
        assert_eq!(
            p.isr, p.replicas,
            "every replica of a new partition is in sync"
        );
        *leaders.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(leaders, BTreeMap::from([(1, 4), (2, 4), (3, 4)]));
    assert_eq!(c.version, 10);
}

#[test]
fn too_few_brokers_is_invalid_replication_factor() {
    let mut c = three();
    let Reply::Outcomes(out) = create(&mut c, 10, "t", 1, 4) else {
        panic!()
    };
    assert_eq!(out[0].0, codes::INVALID_REPLICATION_FACTOR);
    assert!(!c.topics.contains_key("t"));
}

#[test]
fn fencing_moves_leaders_and_bumps_epochs_unfencing_fills_offline() {
    let mut c = three();
    create(&mut c, 10, "t", 3, 2);
    let before = c.topics["t"].placement.clone();
    let epoch2 = c.brokers[&2].epoch;
    // A stale epoch does nothing.
    apply(&mut c, 11, &Command::FenceBroker { id: 2, epoch: 1 });
    assert!(!c.brokers[&2].fenced);
    apply(
        &mut c,
        12,
        &Command::FenceBroker {
            id: 2,
            epoch: epoch2,
        },
    );
    assert!(c.brokers[&2].fenced);
    for (old, new) in before.iter().zip(&c.topics["t"].placement) {
        if old.leader == 2 {
            assert_ne!(new.leader, 2);
            assert!(new.replicas.contains(&new.leader));
            assert_eq!(new.leader_epoch, old.leader_epoch + 1);
        } else {
            assert_eq!(
                (new.leader, new.leader_epoch),
                (old.leader, old.leader_epoch)
            );
        }
        assert!(!new.isr.contains(&2), "a fenced broker leaves every ISR");
    }
    // Fence the rest of partition 1's replicas ([2, 3]): it goes offline.
    let epoch3 = c.brokers[&3].epoch;
    apply(
        &mut c,
        13,
        &Command::FenceBroker {
            id: 3,
            epoch: epoch3,
        },
    );
    let p1 = c.topics["t"].placement[1].clone();
    assert_eq!(p1.replicas, vec![2, 3]);
    assert_eq!(p1.leader, NO_LEADER);
    assert_eq!(
        p1.isr,
        vec![3],
        "the last ISR member stays, to be elected on return"
    );
    apply(
        &mut c,
        14,
        &Command::UnfenceBroker {
            id: 3,
            epoch: epoch3,
        },
    );
    assert_eq!(c.topics["t"].placement[1].leader, 3);
    assert!(c.topics["t"].placement[1].leader_epoch > p1.leader_epoch);
}

#[test]
fn re_registration_gets_a_new_epoch_and_unfences() {
    let mut c = three();
    let e = c.brokers[&2].epoch;
    apply(&mut c, 20, &Command::FenceBroker { id: 2, epoch: e });
    assert_eq!(register(&mut c, 21, 2), 21);
    assert!(!c.brokers[&2].fenced);
    // The old session's late fence does not hit the new registration.
    apply(&mut c, 22, &Command::FenceBroker { id: 2, epoch: e });
    assert!(!c.brokers[&2].fenced);
}

#[test]
fn manual_assignment_must_name_registered_brokers_once() {
    let mut c = three();
    let mut spec = NewTopicSpec {
        name: "m".into(),
        id: [1; 16],
        partitions: 2,
        replication_factor: 2,
        assignments: vec![vec![3, 1], vec![9, 1]],
        configs: vec![],
    };
    let run = |c: &mut Catalog, spec: &NewTopicSpec| {
        let Reply::Outcomes(out) = apply(
            c,
            30,
            &Command::CreateTopics {
                topics: vec![spec.clone()],
                validate_only: false,
            },
        ) else {
            panic!()
        };
        out[0].0
    };
    assert_eq!(run(&mut c, &spec), codes::INVALID_REPLICA_ASSIGNMENT);
    spec.assignments = vec![vec![3, 3], vec![2, 1]];
    assert_eq!(run(&mut c, &spec), codes::INVALID_REPLICA_ASSIGNMENT);
    spec.assignments = vec![vec![3, 1], vec![2, 1]];
    assert_eq!(run(&mut c, &spec), codes::NONE);
    assert_eq!(c.topics["m"].placement[0].leader, 3);
    assert_eq!(c.topics["m"].placement[1].replicas, vec![2, 1]);
}

#[test]
fn bootstrap_imports_a_single_node_catalog_once() {
    let mut c = Catalog::default();
    let legacy = LegacyImport {
        topics: vec![("old".into(), [9; 16], vec![0, 1, 0], BTreeMap::new())],
        next_producer_id: 1234,
    };
    apply(
        &mut c,
        1,
        &Command::Bootstrap {
            cluster_id: "a".into(),
            node_id: 0,
            legacy: Some(legacy.clone()),
        },
    );
    assert_eq!(c.topics["old"].owners, vec![0, 1, 0]);
    assert_eq!(c.topics["old"].placement[2].leader, 0);
    assert_eq!(c.next_producer_id, 1234);
    // A second bootstrap (a later leader's) changes nothing.
    let before = c.clone();
    apply(
        &mut c,
        2,
        &Command::Bootstrap {
            cluster_id: "b".into(),
            node_id: 5,
            legacy: None,
        },
    );
    assert_eq!(c.cluster_id, "a");
    assert_eq!(c.topics, before.topics);
}

#[test]
fn create_partitions_keeps_the_replication_factor() {
    let mut c = three();
    create(&mut c, 10, "t", 2, 2);
    let out = apply(
        &mut c,
        11,
        &Command::CreatePartitions {
            topics: [("t", 5), ("t", 4), ("none", 3)]
                .into_iter()
                .map(|(name, count)| Growth {
                    name: name.into(),
                    count,
                    assignments: vec![],
                })
                .collect(),
            validate_only: false,
        },
    );
    let Reply::Outcomes(out) = out else { panic!() };
    assert_eq!(out[0].0, codes::NONE);
    assert_eq!(out[1].0, codes::INVALID_PARTITIONS);
    assert_eq!(out[2].0, codes::UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(c.topics["t"].placement.len(), 5);
    assert!(c.topics["t"]
        .placement
        .iter()
        .all(|p| p.replicas.len() == 2));
    assert_eq!(c.topics["t"].owners.len(), 5);
}

#[test]
fn producer_id_blocks_never_overlap() {
    let mut c = three();
    let Reply::ProducerIds { first: a } =
        apply(&mut c, 40, &Command::AllocateProducerIds { count: 100 })
    else {
        panic!()
    };
    let Reply::ProducerIds { first: b } =
        apply(&mut c, 41, &Command::AllocateProducerIds { count: 100 })
    else {
        panic!()
    };
    assert_eq!(b, a + 100);
    assert!(a >= 1000);
}

#[test]
fn create_partitions_takes_an_assignment_of_the_topics_replication_factor() {
    let mut c = three();
    create(&mut c, 10, "t", 1, 2);
    let grow = |c: &mut Catalog, assignments: Vec<Vec<i32>>| {
        let Reply::Outcomes(out) = apply(
            c,
            11,
            &Command::CreatePartitions {
                topics: vec![Growth {
                    name: "t".into(),
                    count: 3,
                    assignments,
                }],
                validate_only: false,
            },
        ) else {
            panic!()
        };
        out[0].0
    };
    assert_eq!(
        grow(&mut c, vec![vec![3]]),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        grow(&mut c, vec![vec![3], vec![1]]),
        codes::INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(grow(&mut c, vec![vec![3, 2], vec![1, 3]]), codes::NONE);
    assert_eq!(c.topics["t"].placement[2].replicas, vec![1, 3]);
    assert_eq!(c.topics["t"].placement[1].leader, 3);
}

fn alter(c: &mut Catalog, index: u64, p: i32, leader: i32, epoch: i32, isr: Vec<i32>) -> i16 {
    let broker_epoch = c.brokers[&leader].epoch;
    match apply(
        c,
        index,
        &Command::AlterIsr {
            topic: "t".into(),
            partition: p,
            leader,
            leader_epoch: epoch,
            broker_epoch,
            isr,
        },
    ) {
        Reply::Outcomes(out) => out[0].0,
        other => panic!("{other:?}"),
    }
}

fn fence(c: &mut Catalog, index: u64, id: i32) {
    let epoch = c.brokers[&id].epoch;
    apply(c, index, &Command::FenceBroker { id, epoch });
}

#[test]
fn only_the_current_leader_at_its_epoch_changes_the_isr() {
    let mut c = three();
    create(&mut c, 10, "t", 1, 3);
    let p = c.topics["t"].placement[0].clone();
    assert_eq!((p.leader, p.isr.clone()), (1, vec![1, 2, 3]));
    // A follower, or the leader at an old epoch, is refused.
    assert_eq!(
        alter(&mut c, 11, 0, 2, 0, vec![2, 3]),
        codes::FENCED_LEADER_EPOCH
    );
    assert_eq!(
        alter(&mut c, 12, 0, 1, 7, vec![1]),
        codes::FENCED_LEADER_EPOCH
    );
    // The ISR must keep the leader and name replicas only.
    assert_eq!(
        alter(&mut c, 13, 0, 1, 0, vec![2, 3]),
        codes::INVALID_REQUEST
    );
    assert_eq!(
        alter(&mut c, 14, 0, 1, 0, vec![1, 4]),
        codes::INVALID_REQUEST
    );
    assert_eq!(alter(&mut c, 15, 0, 1, 0, vec![3, 1]), codes::NONE);
    assert_eq!(
        c.topics["t"].placement[0].isr,
        vec![1, 3],
        "kept in replica order"
    );
    // A fenced broker cannot join; once live again it can.
    fence(&mut c, 16, 2);
    assert_eq!(
        alter(&mut c, 17, 0, 1, 0, vec![1, 2, 3]),
        codes::INELIGIBLE_REPLICA
    );
    let e2 = c.brokers[&2].epoch;
    apply(&mut c, 18, &Command::UnfenceBroker { id: 2, epoch: e2 });
    assert_eq!(alter(&mut c, 19, 0, 1, 0, vec![1, 2, 3]), codes::NONE);
    // A fenced leader's change is refused (its registration is no longer live).
    fence(&mut c, 20, 1);
    let p = c.topics["t"].placement[0].clone();
    assert_eq!((p.leader, p.leader_epoch), (2, 1));
    assert_eq!(
        alter(&mut c, 21, 0, 1, 0, vec![1]),
        codes::STALE_BROKER_EPOCH
    );
}

#[test]
fn a_new_leader_comes_from_the_isr_only_unless_unclean_is_allowed() {
    for unclean in [false, true] {
        let mut c = three();
        create(&mut c, 10, "t", 1, 3);
        if unclean {
            apply(
                &mut c,
                11,
                &Command::SetTopicConfigs {
                    topic: "t".into(),
                    set: vec![("unclean.leader.election.enable".into(), Some("true".into()))],
                    validate_only: false,
                },
            );
        }
        // Followers 2 and 3 fell behind: the ISR is the leader alone.
        assert_eq!(alter(&mut c, 12, 0, 1, 0, vec![1]), codes::NONE);
        fence(&mut c, 13, 1);
        let p = c.topics["t"].placement[0].clone();
        if unclean {
            assert_eq!((p.leader, p.isr), (2, vec![2]));
        } else {
            assert_eq!((p.leader, p.isr), (NO_LEADER, vec![1]));
            // Broker 1 returns: it is the ISR, so it leads again.
            register(&mut c, 14, 1);
            assert_eq!(c.topics["t"].placement[0].leader, 1);
        }
    }
}

#[test]
fn a_wiped_broker_leaves_every_isr_even_as_the_last_member() {
    let mut c = three();
    create(&mut c, 10, "t", 1, 3);
    assert_eq!(alter(&mut c, 11, 0, 1, 0, vec![1]), codes::NONE);
    fence(&mut c, 12, 1);
    assert_eq!(c.topics["t"].placement[0].leader, NO_LEADER);
    // Broker 1 comes back with an empty data dir (another incarnation): electing it would
    // lose everything acknowledged (KIP-903), so the partition stays offline.
    apply(
        &mut c,
        13,
        &Command::RegisterBroker(Registration {
            id: 1,
            incarnation: "wiped".into(),
            host: "127.0.0.1".into(),
            port: 9001,
            controller_addr: "127.0.0.1:9101".into(),
        }),
    );
    let p = c.topics["t"].placement[0].clone();
    assert_eq!((p.leader, p.isr), (NO_LEADER, vec![]));
}

#[test]
fn controlled_shutdown_moves_leaders_and_preferred_leaders_come_back() {
    let mut c = three();
    create(&mut c, 10, "t", 3, 3);
    let e1 = c.brokers[&1].epoch;
    apply(&mut c, 11, &Command::ShutdownBroker { id: 1, epoch: e1 });
    assert!(c.brokers[&1].fenced);
    for p in &c.topics["t"].placement {
        assert_ne!(p.leader, 1);
        assert!(!p.isr.contains(&1));
    }
    register(&mut c, 12, 1);
    assert!(
        !leaders_imbalanced(&c),
        "not in sync yet: nothing to give back"
    );
    let p0 = c.topics["t"].placement[0].clone();
    assert_eq!(
        alter(&mut c, 13, 0, p0.leader, p0.leader_epoch, vec![1, 2, 3]),
        codes::NONE
    );
    assert!(leaders_imbalanced(&c));
    apply(&mut c, 14, &Command::ElectPreferredLeaders);
    let p = &c.topics["t"].placement[0];
    assert_eq!((p.leader, p.leader_epoch), (1, p0.leader_epoch + 1));
    assert!(!leaders_imbalanced(&c));
}
