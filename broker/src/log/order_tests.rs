//! Property test of one connection's append order: requests of random sizes, with random
//! delays at every await point of the produce path, are stored in request order.
//!
//! The path is modelled step by step as the broker runs it: the connection takes a turn per
//! request as it reads it (`Turns::take`, synchronously, in arrival order); the handler
//! (decoding: a delay) waits for its turn, hands its batch to the owner (a bounded channel
//! like the shard mesh, which may make it wait), and lets the next request go; the owner
//! reserves the batch's place in the partition's append line as it dequeues the job
//! (`reserve_append`, synchronously) and appends in a task of its own (another delay), with
//! write buffers so small that appends wait for the disk while later ones queue up.

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel;
use kafka_protocol::records::Compression;
use proptest::prelude::*;

use super::batch::tests::encode_batch;
use super::batch::BatchHeader;
use super::tests::run;
use super::{LogConfig, PartitionLog};
use crate::sync::Turns;

/// One request: its batch's value size and the delays (µs) at each await point.
#[derive(Clone, Debug)]
struct Request {
    value_bytes: usize,
    decode_us: u64,
    handover_us: u64,
    append_us: u64,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![1usize..200, 20_000usize..70_000],
        0u64..300,
        0u64..300,
        0u64..300,
    )
        .prop_map(|(value_bytes, decode_us, handover_us, append_us)| Request {
            value_bytes,
            decode_us,
            handover_us,
            append_us,
        })
}

async fn pause(us: u64) {
    if us > 0 {
        glommio::timer::sleep(Duration::from_micros(us)).await;
    }
}

/// Runs the requests concurrently through the modelled path; returns the request index of
/// each batch in log order and each request's base offset.
fn run_requests(requests: Vec<Request>) -> (Vec<i64>, Vec<i64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p");
    let (out, results) = std::sync::mpsc::channel();
    run(move || async move {
        let config = LogConfig {
            write_buffer_bytes: 16 << 10,
            max_writes_in_flight: 1,
            preallocate_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        type Job = (Rc<PartitionLog>, bytes::Bytes, u64, usize);
        let (to_owner, jobs) = local_channel::new_bounded::<Job>(2);
        let base_offsets = Rc::new(std::cell::RefCell::new(vec![-1i64; requests.len()]));
        let owner = {
            let base_offsets = base_offsets.clone();
            glommio::spawn_local(async move {
                let mut appends = Vec::new();
                while let Some((log, batch, append_us, index)) = jobs.recv().await {
                    let place = log.reserve_append();
                    let base_offsets = base_offsets.clone();
                    appends.push(glommio::spawn_local(async move {
                        pause(append_us).await;
                        let info = log.append_in_place(place, batch, 0).await.unwrap();
                        base_offsets.borrow_mut()[index] = info.base_offset;
                    }));
                }
                for append in appends {
                    append.await;
                }
            })
        };
        let turns = Turns::default();
        let to_owner = Rc::new(to_owner);
        let handlers: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let turn = turns.take();
                let batch = encode_batch(
                    1,
                    r.value_bytes,
                    index as i64,
                    (-1, -1, -1),
                    Compression::None,
                );
                let (log, to_owner, r) = (log.clone(), to_owner.clone(), r.clone());
                glommio::spawn_local(async move {
                    pause(r.decode_us).await;
                    turn.wait().await;
                    pause(r.handover_us).await;
                    to_owner
                        .send((log, batch, r.append_us, index))
                        .await
                        .unwrap();
                    drop(turn);
                })
            })
            .collect();
        for handler in handlers {
            handler.await;
        }
        drop(to_owner);
        owner.await;
        let mut order = Vec::new();
        let mut offset = 0;
        while offset < log.log_end_offset() {
            let read = log.read(offset, 1 << 20).await.unwrap();
            let bytes: Vec<u8> = read.chunks.iter().flat_map(|c| c.iter().copied()).collect();
            let mut at = 0;
            while at < bytes.len() {
                let header = BatchHeader::validate(&bytes[at..], usize::MAX).unwrap();
                order.push(header.base_timestamp());
                offset = header.last_offset() + 1;
                at += header.total_bytes();
            }
        }
        log.close().await.unwrap();
        let base_offsets = base_offsets.borrow().clone();
        out.send((order, base_offsets)).unwrap();
    });
    results.recv().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 100,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn one_connections_appends_are_stored_in_request_order(
        requests in proptest::collection::vec(request(), 2..40)
    ) {
        let count = requests.len();
        let (order, base_offsets) = run_requests(requests);
        let expected: Vec<i64> = (0..count as i64).collect();
        prop_assert_eq!(&order, &expected, "batches in log order (by request index)");
        prop_assert_eq!(&base_offsets, &expected, "offset given to each request");
    }
}
