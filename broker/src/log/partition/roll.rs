//! Rolling to a new segment and finishing the old one: the roll itself (under the append
//! lock, sealing the old tail and taking the file opened ahead), the background finish
//! (trim, fdatasync, indexes, producer snapshot, directory sync), and the file of the next
//! segment made ahead. Must never leave more than one segment unfinished, and never run a
//! blocking file-system call on the shard's thread.

use std::rc::Rc;

use glommio::io::DmaFile;

use super::write_queue::Staging;
use super::{staging_capacity, PartitionLog};
use crate::log::files;
use crate::log::producer::ProducerSnapshot;
use crate::log::segment::{open_segment_file, Segment};
use crate::log::LogError;

impl PartitionLog {
    /// Rolls to a new segment at the log end; the caller holds the append lock. Only what
    /// appends must see happens here: the old segment's last buffer is sealed into the
    /// write queue and the new file is opened. The old segment is finished by a background
    /// task (`finish_segment`: written, trimmed to its data, synced, final indexes, producer
    /// snapshot, directory sync), so a roll stalls neither this partition for the length of
    /// an fdatasync nor the shard for a blocking file-system call. At most one segment is
    /// unfinished at a time, which recovery relies on (see `open`), and `sync_written`
    /// waits for the finish, so nothing past the old segment is reported durable before it.
    pub(super) async fn roll(&self) -> Result<(), LogError> {
        self.wait_finished().await?;
        self.finishing.set(true);
        let rolled = self.start_roll().await;
        if let Err(e) = &rolled {
            self.finishing.set(false);
            self.finish_event.notify();
            self.fail(e);
        }
        rolled
    }

    pub(super) async fn start_roll(&self) -> Result<(), LogError> {
        self.seal();
        let sealed = self.writes.sealed_seq.get();
        self.spawn_writer();
        let base = self.log_end_offset.get();
        // Creating a file can wait for a journal commit (tens of milliseconds on a busy
        // disk): the file made ahead is used when there is one, and named in the finish.
        let prepared = self.next_file.borrow_mut().take();
        let renamed = prepared.is_some();
        let file = match prepared {
            Some(file) => file,
            None => Rc::new(open_segment_file(&files::segment_path(&self.dir, base, "log")).await?),
        };
        let capacity = staging_capacity(&self.config.borrow());
        let buf = file.alloc_dma_buffer(capacity);
        let (old_base, old_file, old_size, producers) = {
            let mut st = self.state.borrow_mut();
            let old = st.segments.last().expect("active segment");
            let old = (old.base_offset, old.file.clone(), old.size_bytes);
            st.segments.push(Segment::new(base, file.clone(), 0));
            (old.0, old.1, old.2, st.producers.to_snapshot(base))
        };
        {
            let mut staging = self.writes.staging.borrow_mut();
            let complete_total = staging.complete_total;
            *staging = Staging {
                buf: Some(buf),
                capacity,
                segment_base: base,
                file,
                file_start: 0,
                len: 0,
                carried: 0,
                complete_offset: base,
                complete_total,
            };
        }
        let Some(me) = self.me.upgrade() else {
            return Err(LogError::Closed);
        };
        glommio::spawn_local(async move {
            let new_base = renamed.then_some(base);
            let finished = me
                .finish_segment(old_base, old_file, old_size, sealed, producers, new_base)
                .await;
            if let Err(e) = &finished {
                me.fail(e);
            }
            me.finishing.set(false);
            me.finish_event.notify();
            if finished.is_ok() {
                me.prepare_next_file();
            }
        })
        .detach();
        Ok(())
    }

    /// The background half of a roll, for the segment at `base` whose last buffer is write
    /// `sealed`: waits for its writes, trims the preallocated tail, fdatasyncs (data and
    /// size), then persists its indexes and the producer snapshot taken at the roll and
    /// syncs the directory (which also makes the new segment's file entry durable). With
    /// `renamed_to`, the new segment was the file made ahead, and gets its name here.
    pub(super) async fn finish_segment(
        &self,
        base: i64,
        file: Rc<DmaFile>,
        size: u64,
        sealed: u64,
        producers: ProducerSnapshot,
        renamed_to: Option<i64>,
    ) -> Result<(), LogError> {
        self.wait_written_through(sealed).await?;
        file.truncate(size).await?;
        file.fdatasync().await?;
        let (index, time_index) = {
            let mut st = self.state.borrow_mut();
            let Some(seg) = st.segments.iter_mut().find(|s| s.base_offset == base) else {
                // Deleted meanwhile (the partition was removed): nothing left to finish.
                return Ok(());
            };
            seg.allocated_bytes = size;
            seg.finish_time_index();
            let index = files::encode_index(&seg.index[seg.index_persisted..]);
            let time_index = files::encode_time_index(&seg.time_index[seg.time_index_persisted..]);
            seg.index_persisted = seg.index.len();
            seg.time_index_persisted = seg.time_index.len();
            seg.thin_indexes();
            (index, time_index)
        };
        let dir = self.dir.clone();
        let snapshot = files::encode_checked(&producers);
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                files::append_file(&files::segment_path(&dir, base, "index"), &index)?;
                files::append_file(&files::segment_path(&dir, base, "timeindex"), &time_index)?;
                if let Some(new_base) = renamed_to {
                    std::fs::rename(
                        dir.join(files::NEXT_SEGMENT_FILE),
                        files::segment_path(&dir, new_base, "log"),
                    )?;
                }
                // Syncs the directory too: the rename is durable before anything in the
                // new segment is reported durable (`sync_written` waits for this finish).
                files::write_atomic(&dir, files::PRODUCER_SNAPSHOT_FILE, &snapshot)
            })
            .await?;
        Ok(())
    }

    /// Opens the next segment's file ahead of its roll, in the background.
    pub(super) fn prepare_next_file(&self) {
        if self.closed.get() || self.preparing_next.get() || self.next_file.borrow().is_some() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.preparing_next.set(true);
        glommio::spawn_local(async move {
            let opened = open_segment_file(&me.dir.join(files::NEXT_SEGMENT_FILE)).await;
            me.preparing_next.set(false);
            me.finish_event.notify();
            match opened {
                Ok(file) if !me.closed.get() => *me.next_file.borrow_mut() = Some(Rc::new(file)),
                Ok(file) => drop(file),
                // Not fatal: the next roll creates its file itself.
                Err(e) => tracing::warn!(dir = %me.dir.display(), error = %e, "could not create the next segment's file ahead"),
            }
        })
        .detach();
    }

    /// Waits until no background file work (a roll's finish, the next file's creation) is
    /// running: before a close, since glommio's open fails hard if the path vanishes under
    /// it, and a closed log must not create files.
    pub(super) async fn wait_background(&self) {
        while self.finishing.get() || self.preparing_next.get() {
            self.finish_event.listen().await;
        }
    }

    /// Waits until no rolled segment is being finished.
    pub(super) async fn wait_finished(&self) -> Result<(), LogError> {
        while self.finishing.get() {
            self.finish_event.listen().await;
        }
        self.check_failed()
    }
}
