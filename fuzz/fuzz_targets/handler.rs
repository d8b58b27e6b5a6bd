//! The handler entry point, `protocol::handle`, on a real one-shard broker: a glommio
//! executor on the fuzzing thread, a shard with one topic of two partitions on a scratch
//! data dir (`$SHARDLOG_FUZZ_DIR`, default /tmp/shardlog-fuzz), auto-creation off.
//!
//! Requests that create topics or partitions are skipped: every partition preallocates disk
//! and memory, so a fuzzer that can create 100,000 of them per input would measure the disk,
//! not the parser. Long polls are cut at 20 ms so slow inputs do not stall the run.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use shardlog::shard::{ops::NewTopic, Job, Shard};

struct Broker {
    executor: LocalExecutor,
    shard: Rc<Shard>,
    inputs: std::cell::Cell<u64>,
}

thread_local! {
    static BROKER: OnceCell<Option<Broker>> = const { OnceCell::new() };
}

fn start() -> Option<Broker> {
    if std::env::var_os("SHARDLOG_FUZZ_HANDLER").is_none() {
        return None;
    }
    let dir = std::env::var("SHARDLOG_FUZZ_DIR").unwrap_or_else(|_| "/tmp/shardlog-fuzz".into());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz data dir");
    let cli = shardlog::config::Cli::parse_from([
        "shardlog",
        "--data-dir",
        &dir,
        "--cores",
        "1",
        "--auto-create-topics",
        "false",
        "--segment-bytes",
        "65536",
        "--retention-bytes",
        "262144",
        "--max-frame-bytes",
        "2097152",
        "--max-message-bytes",
        "1048576",
    ]);
    let config = shardlog::config::Config::load(cli).expect("fuzz config");
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor");
    let shard = executor.run(async move {
        let mesh = MeshBuilder::<Job, _>::full(1, 16);
        let (senders, receivers) = mesh.join().await.expect("mesh");
        let shard = Shard::new(0, Rc::new(config), senders);
        shard.spawn_mesh_receivers(receivers);
        let made = shard
            .create_topics(
                vec![NewTopic {
                    name: "t".into(),
                    partitions: 2,
                    configs: vec![],
                }],
                false,
            )
            .await;
        assert_eq!(made[0].0, 0, "create topic t: {:?}", made[0]);
        shard
    });
    Some(Broker {
        executor,
        shard,
        inputs: std::cell::Cell::new(0),
    })
}

pub fn run(frame: Bytes) {
    if frame.len() >= 2 {
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        // CreateTopics (19) and CreatePartitions (37): see the module comment.
        if key == 19 || key == 37 {
            return;
        }
    }
    BROKER.with(|cell| {
        let Some(broker) = cell.get_or_init(start) else {
            return;
        };
        let shard = broker.shard.clone();
        let n = broker.inputs.get() + 1;
        broker.inputs.set(n);
        broker.executor.run(async move {
            let handled = glommio::timer::timeout(Duration::from_millis(20), async {
                Ok(shardlog::protocol::handle(&shard, frame, None).await)
            })
            .await;
            drop(handled);
            if n % 1000 == 0 {
                for log in shard.all_logs() {
                    let _ = log.apply_retention(i64::MAX).await;
                }
            }
        });
    });
}
