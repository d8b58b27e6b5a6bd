//! Fuzz the controller port's untrusted-input path without a network: split the input into
//! frames as a connection does (`cluster::rpc::split_frame`, with its size limit) and decode
//! each frame as a request and as a response (`cluster::rpc::decode`), as both ends of a
//! controller connection do. A frame that does not decode closes the connection in the
//! broker; here nothing may panic, abort or allocate beyond the frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlog::cluster::rpc::{decode, split_frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((payload, next))) = split_frame(rest) {
        let _ = decode::<Request>(payload);
        let _ = decode::<Response>(payload);
        rest = next;
    }
});
