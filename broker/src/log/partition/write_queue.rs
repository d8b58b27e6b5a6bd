//! The write queue of one partition: the aligned staging buffer being filled, sealed
//! buffers waiting for their write, writes on the device, and which of them count as
//! written. Never decides offsets or producer state (the append front in `partition.rs` does),
//! and never reports anything written before every earlier write completed.
//!
//! Write path: a batch is validated, its base offset (and leader epoch) stamped into a
//! 16-byte head, and its bytes copied once into the current staging `DmaBuffer`
//! (`write_buffer_bytes`). A full buffer is handed to the issuer task, which starts its write at once: up to
//! `max_writes_in_flight` buffers are on their way to the device while the next one fills,
//! and when that many are sealed and unfinished `append` waits (backpressure). Writes may
//! complete out of order; a write counts as written (readers, `flush`, recovery of the
//! durable offset) only once every write before it completed. A fresh buffer continues from
//! the partially filled last page, which its write rewrites whole, so a write that starts
//! inside the previous write's last page is issued only after everything before it landed.
//! `flush` writes the partial buffer and fdatasyncs; concurrent flushes share one fdatasync.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile};
use glommio::sync::Semaphore;

use super::PartitionLog;
use crate::log::event::Event;
use crate::log::segment::{align_down, align_up, PAGE_BYTES};
use crate::log::LogError;

/// The buffer being filled, mapped onto the active segment from `file_start`.
pub(super) struct Staging {
    pub(super) buf: Option<DmaBuffer>,
    pub(super) capacity: usize,
    pub(super) segment_base: i64,
    pub(super) file: Rc<DmaFile>,
    pub(super) file_start: u64,
    pub(super) len: usize,
    /// Leading bytes already handed to a write (the partial page carried over).
    pub(super) carried: usize,
    /// Log end offset and appended byte total after the last whole batch in the buffer.
    pub(super) complete_offset: i64,
    pub(super) complete_total: u64,
}

/// A sealed buffer waiting for its write to be issued.
pub(super) struct PendingWrite {
    seq: u64,
    buf: DmaBuffer,
    file: Rc<DmaFile>,
    segment_base: i64,
    file_start: u64,
    end_position: u64,
    covered_offset: i64,
    covered_total: u64,
}

/// A write handed to the device, in seal order; `done` is set when it completes.
pub(super) struct IssuedWrite {
    seq: u64,
    done: Option<Result<(), LogError>>,
    segment_base: i64,
    end_position: u64,
    covered_offset: i64,
    covered_total: u64,
}

/// The write path's state, owned by one `PartitionLog`.
pub(super) struct WriteQueue {
    pub(super) staging: RefCell<Staging>,
    pub(super) pending: RefCell<VecDeque<PendingWrite>>,
    pub(super) issued: RefCell<VecDeque<IssuedWrite>>,
    /// Sequence number of the last sealed buffer, and the highest one that completed
    /// together with every write before it.
    pub(super) sealed_seq: Cell<u64>,
    pub(super) completed_seq: Cell<u64>,
    /// Segment and page-aligned end of the last issued write: a write starting before that
    /// end rewrites its last page and must wait for it.
    pub(super) last_issued: Cell<Option<(i64, u64)>>,
    /// A written full-size buffer kept for reuse. At most one: an idle partition keeps it
    /// for good, so more would cost memory on every partition ever written.
    pub(super) spare: RefCell<Option<DmaBuffer>>,
    /// Sealed buffers not yet on the device: bounded to `max_writes_in_flight` by
    /// `append`'s backpressure (one more when a `flush` or roll seals a partial buffer).
    pub(super) writes_in_flight: Cell<usize>,
    /// One issuer at a time: writes are issued in seal order.
    pub(super) write_lock: Semaphore,
    pub(super) write_event: Event,
}

impl WriteQueue {
    /// An empty queue whose next write starts from `staging`.
    pub(super) fn new(staging: Staging) -> WriteQueue {
        WriteQueue {
            staging: RefCell::new(staging),
            pending: RefCell::new(VecDeque::new()),
            issued: RefCell::new(VecDeque::new()),
            sealed_seq: Cell::new(0),
            completed_seq: Cell::new(0),
            last_issued: Cell::new(None),
            spare: RefCell::new(None),
            writes_in_flight: Cell::new(0),
            write_lock: Semaphore::new(1),
            write_event: Event::default(),
        }
    }
}

/// A staging buffer that continues the active segment (`file`, at `segment_base`) at its
/// end, `size_bytes`, after recovery or a truncation: its partially filled last page is read
/// back, so the next write rewrites that page whole.
pub(super) async fn staging_over(
    file: &Rc<DmaFile>,
    segment_base: i64,
    size_bytes: u64,
    capacity: usize,
    log_end_offset: i64,
    complete_total: u64,
) -> Result<Staging, LogError> {
    let file_start = align_down(size_bytes);
    let mut buf = file.alloc_dma_buffer(capacity);
    let carried = (size_bytes - file_start) as usize;
    if carried > 0 {
        let page = file.read_at(file_start, carried).await?;
        if page.len() != carried {
            return Err(LogError::CorruptBatch("short read of the last page".into()));
        }
        buf.as_bytes_mut()[..carried].copy_from_slice(&page);
    }
    Ok(Staging {
        buf: Some(buf),
        capacity,
        segment_base,
        file: file.clone(),
        file_start,
        len: carried,
        carried,
        complete_offset: log_end_offset,
        complete_total,
    })
}

impl PartitionLog {
    /// Copies bytes into the staging buffer, sealing and handing off full buffers.
    pub(super) async fn copy_into_staging(&self, mut rest: &[u8]) -> Result<(), LogError> {
        while !rest.is_empty() {
            let full = {
                let mut st = self.writes.staging.borrow_mut();
                let st = &mut *st;
                let n = (st.capacity - st.len).min(rest.len());
                let buf = st.buf.as_mut().expect("staging buffer");
                buf.as_bytes_mut()[st.len..st.len + n].copy_from_slice(&rest[..n]);
                st.len += n;
                rest = &rest[n..];
                st.len == st.capacity
            };
            if full {
                // Backpressure: a full buffer waits while the write queue is full.
                while self.writes.writes_in_flight.get() >= self.write_depth() {
                    self.check_usable()?;
                    self.writes.write_event.listen().await;
                }
                self.check_usable()?;
                self.seal();
                self.spawn_writer();
            }
        }
        Ok(())
    }

    /// Hands the staging buffer's new bytes to the write queue and starts a fresh buffer
    /// holding the partially filled last page. Returns false when there was nothing new.
    pub(super) fn seal(&self) -> bool {
        let mut st = self.writes.staging.borrow_mut();
        if st.len == st.carried {
            return false;
        }
        let len = st.len;
        let aligned = align_up(len as u64) as usize;
        let mut old = st.buf.take().expect("staging buffer");
        old.as_bytes_mut()[len..aligned].fill(0);
        let partial_start = align_down(len as u64) as usize;
        let partial = len - partial_start;
        let spare = self
            .writes
            .spare
            .borrow_mut()
            .take()
            .filter(|b| b.len() == st.capacity);
        let mut fresh = spare.unwrap_or_else(|| st.file.alloc_dma_buffer(st.capacity));
        fresh.as_bytes_mut()[..partial].copy_from_slice(&old.as_bytes()[partial_start..len]);
        if aligned < old.len() {
            // Trimming is for good: this buffer will not come back as a spare.
            old.trim_to_size(aligned);
        }
        let seq = self.writes.sealed_seq.get() + 1;
        self.writes.sealed_seq.set(seq);
        self.writes.pending.borrow_mut().push_back(PendingWrite {
            seq,
            buf: old,
            file: st.file.clone(),
            segment_base: st.segment_base,
            file_start: st.file_start,
            end_position: st.file_start + len as u64,
            covered_offset: st.complete_offset,
            covered_total: st.complete_total,
        });
        self.writes
            .writes_in_flight
            .set(self.writes.writes_in_flight.get() + 1);
        st.buf = Some(fresh);
        st.file_start += partial_start as u64;
        st.len = partial;
        st.carried = partial;
        true
    }

    pub(super) fn spawn_writer(&self) {
        if self.writes.pending.borrow().is_empty() {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            glommio::spawn_local(async move {
                // Errors are recorded in `failure` and reported to the next caller.
                let _ = me.issue_writes().await;
            })
            .detach();
        }
    }

    /// Issues every sealed buffer's write in seal order, each as its own task, keeping at
    /// most `max_writes_in_flight` on the device; returns once none is left to issue.
    pub(super) async fn issue_writes(&self) -> Result<(), LogError> {
        let _permit = self
            .writes
            .write_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        loop {
            self.check_failed()?;
            let Some((segment_base, start)) = self
                .writes
                .pending
                .borrow()
                .front()
                .map(|w| (w.segment_base, w.file_start))
            else {
                return Ok(());
            };
            loop {
                self.check_failed()?;
                let issued = self.writes.issued.borrow().len();
                let depth = self.write_depth();
                let rewrites_last_page = self
                    .writes
                    .last_issued
                    .get()
                    .is_some_and(|(base, end)| base == segment_base && start < end);
                if issued == 0 || (issued < depth && !rewrites_last_page) {
                    break;
                }
                self.writes.write_event.listen().await;
            }
            let w = self
                .writes
                .pending
                .borrow_mut()
                .pop_front()
                .expect("front write");
            if let Err(e) = self.grow_for(&w).await {
                self.writes
                    .writes_in_flight
                    .set(self.writes.writes_in_flight.get() - 1);
                self.fail(&e);
                return Err(e);
            }
            self.writes
                .last_issued
                .set(Some((w.segment_base, align_up(w.end_position))));
            self.writes.issued.borrow_mut().push_back(IssuedWrite {
                seq: w.seq,
                done: None,
                segment_base: w.segment_base,
                end_position: w.end_position,
                covered_offset: w.covered_offset,
                covered_total: w.covered_total,
            });
            let Some(me) = self.me.upgrade() else {
                return Err(LogError::Closed);
            };
            glommio::spawn_local(async move {
                let result = me.write_buffer(w.file, w.buf, w.file_start).await;
                me.complete_write(w.seq, result);
            })
            .detach();
        }
    }

    /// Preallocates the segment ahead of a write that would pass its allocated end.
    pub(super) async fn grow_for(&self, w: &PendingWrite) -> Result<(), LogError> {
        let end = w.file_start + w.buf.len() as u64;
        let grow = {
            let st = self.state.borrow();
            let step = self.config.borrow().preallocate_bytes.max(PAGE_BYTES);
            st.segments
                .iter()
                .find(|s| s.base_offset == w.segment_base)
                .filter(|s| end > s.allocated_bytes)
                .map(|s| align_up(end.max(s.allocated_bytes + step)))
        };
        let Some(target) = grow else { return Ok(()) };
        // keep_size = false: the size is set once per step, so fdatasync after a write
        // inside the preallocated range has no file size to journal.
        w.file.pre_allocate(target, false).await?;
        let mut st = self.state.borrow_mut();
        if let Some(seg) = st
            .segments
            .iter_mut()
            .find(|s| s.base_offset == w.segment_base)
        {
            seg.allocated_bytes = seg.allocated_bytes.max(target);
        }
        Ok(())
    }

    pub(super) async fn write_buffer(
        &self,
        file: Rc<DmaFile>,
        buf: DmaBuffer,
        at: u64,
    ) -> Result<(), LogError> {
        let len = buf.len();
        let buf = Rc::new(buf);
        let written = file.write_rc_at(buf.clone(), at).await?;
        if let Ok(buf) = Rc::try_unwrap(buf) {
            // A full buffer comes back as a later staging buffer: its pages are already
            // faulted in, where a fresh allocation costs a page fault per 4 KiB.
            let mut spare = self.writes.spare.borrow_mut();
            if spare.is_none() && buf.len() == self.writes.staging.borrow().capacity {
                *spare = Some(buf);
            }
        }
        if written != len {
            return Err(LogError::Io(std::io::Error::other(format!(
                "short write: {written} of {len} bytes"
            ))));
        }
        Ok(())
    }

    /// Records a finished write and accounts, in seal order, every write whose
    /// predecessors have all finished: only those count as written.
    pub(super) fn complete_write(&self, seq: u64, result: Result<(), LogError>) {
        if let Some(w) = self
            .writes
            .issued
            .borrow_mut()
            .iter_mut()
            .find(|w| w.seq == seq)
        {
            w.done = Some(result);
        }
        loop {
            let front = {
                let mut issued = self.writes.issued.borrow_mut();
                if issued.front().is_some_and(|w| w.done.is_some()) {
                    issued.pop_front()
                } else {
                    None
                }
            };
            let Some(w) = front else { break };
            self.writes
                .writes_in_flight
                .set(self.writes.writes_in_flight.get() - 1);
            match w.done.expect("done") {
                Err(e) => self.fail(&e),
                Ok(()) if self.failure.borrow().is_none() => {
                    let mut st = self.state.borrow_mut();
                    if let Some(seg) = st
                        .segments
                        .iter_mut()
                        .find(|s| s.base_offset == w.segment_base)
                    {
                        seg.written_bytes = seg.written_bytes.max(w.end_position);
                    }
                    self.written_offset
                        .set(self.written_offset.get().max(w.covered_offset));
                    self.written_total
                        .set(self.written_total.get().max(w.covered_total));
                    self.writes.completed_seq.set(w.seq);
                }
                Ok(()) => {}
            }
        }
        self.evict_cache();
        self.writes.write_event.notify();
    }

    /// Seals the staging buffer and waits until it and every buffer before it are written.
    pub(super) async fn write_staged(&self) -> Result<(), LogError> {
        self.seal();
        self.spawn_writer();
        self.wait_written_through(self.writes.sealed_seq.get())
            .await
    }

    /// Waits until write `seq` and every write before it completed, or a write failed.
    pub(super) async fn wait_written_through(&self, seq: u64) -> Result<(), LogError> {
        while self.writes.completed_seq.get() < seq {
            self.check_failed()?;
            self.writes.write_event.listen().await;
        }
        self.check_failed()
    }

    pub(super) fn write_depth(&self) -> usize {
        self.config.borrow().max_writes_in_flight.max(1)
    }
}
