//! Connections: framing, pipelining with in-order responses, and backpressure.
//!
//! Each connection runs two tasks on its shard. The reader splits the byte stream into
//! frames (zero-copy `Bytes` slices of one read buffer), starts a handler task per request,
//! and queues the handler in a bounded channel. The writer takes handlers in request order,
//! waits for each, and writes every response that is ready with one vectored send.
//!
//! Handlers run concurrently, so nothing may depend on the order they happen to run in:
//! each Produce request takes a [`Turns`] turn as it is read, and hands its batches to the
//! partitions' owners only after the connection's earlier Produce requests did (Kafka's
//! per-partition ordering for one producer's pipelined requests).
//!
//! Limits, each named in the config: `max_frame_bytes` (a larger or negative size closes the
//! connection before anything is allocated for it), `max_inflight_requests` (the queue
//! bound: the reader stops reading the socket when it is full), `max_buffered_bytes_per_shard`
//! (request bytes held by a shard across connections: a semaphore of bytes, released when the
//! response is written), and `idle_timeout_ms`.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use glommio::task::JoinHandle;

use crate::protocol::{self, Reply};
use crate::shard::Shard;
use crate::sync::Turns;

/// Bytes read from the socket per read call when no larger frame is pending.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Longest a reader holding part of a frame waits for more budget (see `acquire`).
const HOLDING_WAIT_MAX: Duration = Duration::from_secs(2);
/// A large frame's buffer grows by at most this much per read, each step paid from the
/// shard's budget first.
const FRAME_STEP_BYTES: usize = 256 << 10;
/// Frames smaller than this are copied out of the read buffer (see `take_frame`).
const COPY_FRAME_BYTES_MAX: usize = READ_CHUNK_BYTES;
/// Most iovecs handed to one sendmsg (Linux allows 1024).
const IOVECS_PER_SEND_MAX: usize = 256;

/// A request being handled, with the share of the shard's buffer budget it holds.
struct Pending {
    /// Detached: a handler runs to its end even if its connection goes away first, so no
    /// request is ever stopped halfway (an append between the copies of one batch).
    task: JoinHandle<Reply>,
    _budget: Vec<StaticPermit>,
}

/// Counts one request in the shard's `requests_in_flight` for as long as it lives.
struct InFlight(Rc<Shard>);

impl InFlight {
    fn enter(shard: Rc<Shard>) -> InFlight {
        shard
            .requests_in_flight
            .set(shard.requests_in_flight.get() + 1);
        InFlight(shard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let count = &self.0.requests_in_flight;
        count.set(count.get() - 1);
    }
}

/// Serve one accepted connection until the peer closes it or it misbehaves.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, budget: Rc<Semaphore>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let idle = Duration::from_millis(shard.config.idle_timeout_ms);
    let _ = stream.set_read_timeout(Some(idle));
    // A second handle on the same socket for the writer, so reading and writing need no lock.
    let write_fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if write_fd < 0 {
        tracing::warn!(%peer, "dup failed: {}", std::io::Error::last_os_error());
        return;
    }
    let writer = unsafe { TcpStream::from_raw_fd(write_fd) };
    let (queue, handlers) = local_channel::new_bounded(shard.config.max_inflight_requests);
    let writer_task = glommio::spawn_local(write_loop(writer, handlers));
    let outcome = read_loop(&shard, stream, &budget, queue).await;
    if let Err(why) = &outcome {
        tracing::info!(%peer, "closing connection: {why}");
    }
    if let Err(why) = writer_task.await {
        tracing::info!(%peer, "closing connection: {why}");
    }
}

async fn read_loop(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    budget: &Rc<Semaphore>,
    queue: local_channel::LocalSender<Pending>,
) -> Result<(), String> {
    let max_frame_bytes = shard.config.max_frame_bytes;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Budget shares paid for the buffer of a large frame still arriving: its buffer grows
    // one step at a time, and each step is paid from the shard's budget before bytes are
    // read into it. Memory held for unfinished frames thus follows what peers actually sent
    // (a peer announcing 100 MiB and sending nothing holds nothing), and stays within
    // max_buffered_bytes_per_shard.
    let mut frame_permits: Vec<StaticPermit> = Vec::new();
    let mut paid_bytes = 0usize;
    // Handlers run concurrently; turns make Produce requests append in arrival order.
    let produce_turns = Turns::default();
    loop {
        // Hand every complete frame in the buffer to a handler.
        while let Some(size) = frame_size(&buf, max_frame_bytes)? {
            if buf.len() < 4 + size {
                break;
            }
            if shard.is_shutting_down() {
                return Err("broker is shutting down".into());
            }
            // The frame's whole size is held until its response is written.
            let unpaid = size.max(1).saturating_sub(paid_bytes);
            if unpaid > 0 {
                let permit = acquire(budget, unpaid, !frame_permits.is_empty()).await?;
                frame_permits.push(permit);
            }
            paid_bytes = 0;
            buf.advance(4);
            let frame = take_frame(&mut buf, size);
            let permit = std::mem::take(&mut frame_permits);
            let handler = shard.clone();
            let counted = InFlight::enter(shard.clone());
            // Produce requests take their turn here, in the order they arrived.
            let turn = protocol::is_produce(&frame).then(|| produce_turns.take());
            let task = glommio::spawn_local(async move {
                // Held by the task: uncounted when it ends (shutdown waits for that).
                let _counted = counted;
                protocol::handle(&handler, frame, turn).await
            })
            .detach();
            if queue
                .send(Pending {
                    task,
                    _budget: permit,
                })
                .await
                .is_err()
            {
                return Err("writer stopped".into());
            }
        }
        let start = buf.len();
        let missing = match frame_size(&buf, max_frame_bytes)? {
            Some(size) => (4 + size).saturating_sub(start),
            None => 0,
        };
        // A large frame's buffer grows one step at a time, each paid from the shard budget
        // before bytes are read into it (`paid_bytes` counts buffer bytes already paid, so a
        // peer dribbling its frame pays each step once).
        let want = if missing > READ_CHUNK_BYTES {
            // Never more than the frame's size in all: a frame of max_buffered_bytes_per_shard
            // (allowed: it may equal max_frame_bytes) must stay payable.
            let size = start + missing - 4;
            let target = (start + missing.min(FRAME_STEP_BYTES)).min(size);
            if target > paid_bytes {
                let holding = !frame_permits.is_empty();
                frame_permits.push(acquire(budget, target - paid_bytes, holding).await?);
                paid_bytes = target;
            }
            target - start
        } else {
            READ_CHUNK_BYTES
        };
        buf.reserve(want);
        // Fast path: take what the socket already holds straight into the spare capacity,
        // with no zero-fill first (zero-filling every read was ~15% of a produce profile).
        match recv_into_spare(stream.as_raw_fd(), &mut buf, want) {
            Ok(0) => return closed(&buf),
            Ok(_) => {
                // A busy socket never makes this task wait: give others their turn.
                glommio::yield_if_needed().await;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
        // Nothing buffered: let the executor wait for data (and apply the idle timeout).
        let wait_bytes = want.min(READ_CHUNK_BYTES);
        buf.resize(start + wait_bytes, 0);
        match stream.read(&mut buf[start..]).await {
            Ok(0) => {
                buf.truncate(start);
                return closed(&buf);
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(format!("idle for {} ms", shard.config.idle_timeout_ms))
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Takes `bytes` of the shard's budget. A reader that already holds part of a frame waits
/// at most `HOLDING_WAIT_MAX`: large frames arriving on several connections could
/// otherwise each hold part of the budget while waiting for the rest, forever. Closing the
/// connection that waited too long releases its share and lets the others finish.
async fn acquire(
    budget: &Rc<Semaphore>,
    bytes: usize,
    holding: bool,
) -> Result<StaticPermit, String> {
    let wait = async {
        budget
            .acquire_static_permit(bytes as u64)
            .await
            .map_err(|e| format!("buffer budget closed: {e}"))
    };
    if !holding {
        return wait.await;
    }
    glommio::timer::timeout(HOLDING_WAIT_MAX, async { Ok(wait.await) })
        .await
        .map_err(|_| {
            format!(
                "buffer budget exhausted for {} ms while holding part of a frame",
                HOLDING_WAIT_MAX.as_millis()
            )
        })?
}

/// Takes the next `size` bytes of `buf` as a frame. A small frame is copied out: whatever a
/// request leaves behind (the tail cache keeps produced batches as slices of their frame)
/// then pins only its own bytes, not the whole read buffer it arrived in. Without the copy,
/// 1,000 connections sending 1 KiB batches made the 8 MiB-per-partition tail cache pin a
/// 64 KiB read buffer per cached batch: gigabytes. Larger frames own most of their buffer
/// and stay zero-copy.
fn take_frame(buf: &mut BytesMut, size: usize) -> Bytes {
    if size < COPY_FRAME_BYTES_MAX {
        let frame = Bytes::copy_from_slice(&buf[..size]);
        buf.advance(size);
        frame
    } else {
        buf.split_to(size).freeze()
    }
}

/// End of stream: fine between frames, an error inside one.
fn closed(buf: &BytesMut) -> Result<(), String> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err("peer closed mid-frame".into())
    }
}

/// One non-blocking recv of at most `max` bytes into `buf`'s spare capacity.
fn recv_into_spare(fd: RawFd, buf: &mut BytesMut, max: usize) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: the pointer and length describe `buf`'s own spare capacity, which the kernel
    // only writes; exactly the `n` bytes it reports are then marked initialized.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// The size of the frame at the start of `buf` once its 4-byte prefix has arrived. A
/// negative size or one above `max_frame_bytes` is an error: the connection is closed
/// before anything is allocated for it.
pub fn frame_size(buf: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, String> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(*prefix);
    if size < 0 || size as usize > max_frame_bytes {
        return Err(format!("frame size {size} outside 0..={max_frame_bytes}"));
    }
    Ok(Some(size as usize))
}

async fn write_loop(mut writer: TcpStream, handlers: LocalReceiver<Pending>) -> Result<(), String> {
    let mut next: Option<Pending> = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match handlers.recv().await {
                Some(p) => p,
                None => return Ok(()),
            },
        };
        let mut out: Vec<Bytes> = Vec::new();
        let mut done = vec![];
        let mut close: Option<String> = None;
        let reply = handled(first.task.await);
        done.push(first._budget);
        collect(reply, &mut out, &mut close);
        // Coalesce responses that are already finished into the same send.
        while close.is_none() && out.len() < IOVECS_PER_SEND_MAX {
            let Some(Some(mut pending)) = futures_lite::future::poll_once(handlers.recv()).await
            else {
                break;
            };
            match futures_lite::future::poll_once(&mut pending.task).await {
                Some(reply) => {
                    done.push(pending._budget);
                    collect(handled(reply), &mut out, &mut close);
                }
                None => {
                    next = Some(pending);
                    break;
                }
            }
        }
        if !out.is_empty() {
            send_all(&mut writer, out)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        drop(done);
        if let Some(why) = close {
            let _ = writer.shutdown(std::net::Shutdown::Both).await;
            return Err(why);
        }
    }
}

/// A handler's reply; none only when the executor cancelled it (shutdown).
fn handled(reply: Option<Reply>) -> Reply {
    reply.unwrap_or_else(|| Reply::Close("request handler cancelled".into()))
}

fn collect(reply: Reply, out: &mut Vec<Bytes>, close: &mut Option<String>) {
    match reply {
        Reply::Frame(chunks) => out.extend(chunks.into_iter().filter(|c| !c.is_empty())),
        Reply::None => {}
        Reply::Close(why) => *close = Some(why),
    }
}

/// Write every chunk: one non-blocking vectored send for as much as the socket takes, then
/// the executor's own (waiting) writes for the rest.
async fn send_all(writer: &mut TcpStream, mut chunks: Vec<Bytes>) -> std::io::Result<()> {
    let fd = writer.as_raw_fd();
    let mut first = 0;
    while first < chunks.len() {
        let end = (first + IOVECS_PER_SEND_MAX).min(chunks.len());
        let sent = match send_vectored_nonblocking(fd, &chunks[first..end]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        let mut left = sent;
        while first < end && left >= chunks[first].len() {
            left -= chunks[first].len();
            first += 1;
        }
        if first < end {
            chunks[first].advance(left);
            // The socket is full: let the executor wait for room for this chunk.
            writer.write_all(&chunks[first]).await?;
            first += 1;
        }
    }
    Ok(())
}

fn send_vectored_nonblocking(fd: RawFd, chunks: &[Bytes]) -> std::io::Result<usize> {
    let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let msg = libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: slices.as_ptr() as *mut libc::iovec,
        msg_iovlen: slices.len(),
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    // SAFETY: msg points at `slices`, which outlive the call; IoSlice is ABI-compatible with iovec.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_waits_for_four_bytes_and_refuses_negative_or_oversized_sizes() {
        assert_eq!(frame_size(&[0, 0, 1], 1024), Ok(None));
        assert_eq!(frame_size(&[0, 0, 4, 0, 9], 1024), Ok(Some(1024)));
        assert!(frame_size(&[0, 0, 4, 1], 1024).is_err());
        assert!(frame_size(&[0xff, 0xff, 0xff, 0xff], 1024).is_err());
        assert!(frame_size(&[0x80, 0, 0, 0], usize::MAX).is_err());
    }

    #[test]
    fn small_frames_are_copied_out_and_large_ones_share_the_read_buffer() {
        let mut buf = BytesMut::from(&vec![7u8; 3 * COPY_FRAME_BYTES_MAX][..]);
        let start = buf.as_ptr();
        let small = take_frame(&mut buf, 100);
        assert_eq!(small.len(), 100);
        assert_ne!(
            small.as_ptr(),
            start,
            "a small frame must not pin the read buffer"
        );
        let rest = buf.as_ptr();
        let large = take_frame(&mut buf, COPY_FRAME_BYTES_MAX);
        assert_eq!(large.as_ptr(), rest, "a large frame stays zero-copy");
        assert_eq!(buf.len(), 2 * COPY_FRAME_BYTES_MAX - 100);
    }
}
