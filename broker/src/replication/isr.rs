//! The leader's ISR upkeep on each shard: every tick, for each partition this shard leads
//! with followers, move the high watermark (its own background syncs count too) and propose
//! the ISR change `replicas` calls for (a lagging member leaves, a caught-up replica joins)
//! to the metadata quorum as AlterIsr, one proposal per partition at a time. The quorum
//! refuses it if this broker no longer leads at that epoch or its registration is stale.

use std::rc::Rc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::cluster::{Command, Reply};
use crate::codes;
use crate::shard::Shard;

/// Shortest tick (a quarter of the lag time, but no more often than this).
const TICK_MIN: Duration = Duration::from_millis(50);

pub fn start(shard: &Rc<Shard>) {
    let shard = shard.clone();
    let lag_max_ms = shard.config.replica_lag_time_max_ms as i64;
    let tick = Duration::from_millis(shard.config.replica_lag_time_max_ms / 4)
        .clamp(TICK_MIN, Duration::from_millis(500));
    glommio::spawn_local(async move {
        while !shard.is_shutting_down() {
            glommio::timer::sleep(tick).await;
            upkeep(&shard, lag_max_ms);
        }
    })
    .detach();
}

fn upkeep(shard: &Rc<Shard>, lag_max_ms: i64) {
    let catalog = shard.catalog();
    let me = shard.node_id();
    let Some(broker_epoch) = catalog
        .brokers
        .get(&me)
        .filter(|b| !b.fenced)
        .map(|b| b.epoch)
    else {
        return;
    };
    let now = now_ms();
    for (name, topic) in &catalog.topics {
        for (p, placement) in topic.placement.iter().enumerate() {
            let partition = p as i32;
            if placement.leader != me || placement.replicas.len() < 2 {
                continue;
            }
            let Some(log) = shard.log(name, partition) else {
                continue;
            };
            shard.advance_high_watermark(name, partition, &log);
            let live = |id: i32| catalog.brokers.get(&id).is_some_and(|b| !b.fenced);
            let change = shard.leaders.isr_change(
                (name, partition),
                placement,
                log.high_watermark(),
                lag_max_ms,
                now,
                live,
            );
            let Some(change) = change else {
                continue;
            };
            tracing::info!(
                topic = %name,
                partition,
                from = ?placement.isr,
                to = ?change.isr,
                "proposing an ISR change"
            );
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let command = Command::AlterIsr {
                    topic: change.topic.clone(),
                    partition: change.partition,
                    leader: me,
                    leader_epoch: change.leader_epoch,
                    broker_epoch,
                    isr: change.isr.clone(),
                };
                match shard.change_metadata(command).await {
                    Ok(Reply::Outcomes(out)) if out.first().is_some_and(|o| o.0 == codes::NONE) => {
                    }
                    other => tracing::info!(
                        topic = %change.topic,
                        partition = change.partition,
                        "ISR change not made: {other:?}"
                    ),
                }
                shard
                    .leaders
                    .proposal_done(&change.topic, change.partition, change.leader_epoch);
            })
            .detach();
        }
    }
}
