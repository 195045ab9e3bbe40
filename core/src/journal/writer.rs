//! The writer: leader/follower group commit, rotation, checkpoints, poisoning.
//!
//! There is no writer thread. An appender queues its encoded records; if no
//! commit is under way it becomes the *leader*: it takes the queued requests
//! (its own first, up to the batch limit), assigns sequence numbers, writes
//! the batch with one positioned write and makes it durable with one
//! `fdatasync`, on its own thread. A lone appender thus commits its own record
//! with no hand-off to another thread and no wake-up. Appenders that arrive
//! while a leader syncs are *followers*: they wait. When the leader's sync
//! returns it answers the followers of its batch and, if more requests are
//! queued, passes the leadership to the oldest of them, which commits the
//! next batch (with everything that queued meanwhile). So every sync carries
//! whatever arrived during the previous one, and no appender commits more than
//! its own batch.
//!
//! A failed write or sync poisons the journal: that batch and every later
//! request get [`JournalError::Poisoned`]. A checkpoint is written without
//! holding up appends (only the list of segments is shared), on the blocking
//! pool.
//!
//! **Invariant:** an append is answered `Ok(seq)` only after the sync covering
//! `seq` returned success. **Invariant:** a write batch never spans two
//! segments. **Invariant:** at most one leader at a time; requests are queued
//! only while a leader exists (`waiting` non-empty implies `leading`), so no
//! request is ever left without a leader to commit it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Semaphore, oneshot};

use super::JournalError;
use super::format::{self, FrameHeader, SEGMENT_HEADER_LEN};
use crate::storage::{LockGuard, Storage, StorageFile};

/// Encoded records of one request: (kind, payload).
pub(crate) type Encoded = Vec<(u8, Vec<u8>)>;

/// State shared between the handle and the committer.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub durable_seq: AtomicU64,
    pub syncs: AtomicU64,
    /// Wall time of the commits' writes and syncs, summed.
    pub sync_ns: AtomicU64,
    /// Sequence number of the checkpoint an open would start from: the one
    /// this open used, then each one stored (0: none).
    pub checkpoint_seq: AtomicU64,
    pub poison: Mutex<Option<String>>,
}

impl Shared {
    pub fn poisoned(&self) -> Option<String> {
        lock(&self.poison).clone()
    }
    fn set_poison(&self, cause: String) {
        let mut p = lock(&self.poison);
        if p.is_none() {
            *p = Some(cause);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn poisoned_error(shared: &Shared) -> JournalError {
    JournalError::Poisoned {
        cause: shared.poisoned().unwrap_or_else(|| "unknown".into()),
    }
}

/// The open segment and what is on disk: owned by the leader of the moment.
pub(crate) struct Writer {
    pub storage: Arc<dyn Storage>,
    pub journal_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    /// Size new segments are preallocated to.
    pub segment_size: u64,
    /// Length of the active segment file.
    pub active_len: u64,
    pub max_batch_bytes: usize,
    pub file: Box<dyn StorageFile>,
    pub segment_first_seq: u64,
    pub offset: u64,
    pub next_seq: u64,
    /// First sequence numbers of the segments on disk, ascending.
    pub segments: Vec<u64>,
    /// Sequence numbers of the checkpoints on disk, ascending.
    pub checkpoints: Vec<u64>,
    pub shared: Arc<Shared>,
    /// Released when the writer is dropped (at close), so no second opener
    /// runs beside it.
    pub _lock: LockGuard,
}

/// What a follower is told.
enum Turn {
    /// Its records were committed (or refused).
    Done(Result<u64, JournalError>),
    /// The previous leader is done and this follower's request is the oldest
    /// queued: it commits the next batch.
    Lead,
}

/// A queued request.
struct Entry {
    records: Encoded,
    bytes: usize,
    /// `None` for the leader's own request.
    reply: Option<oneshot::Sender<Turn>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Entry>,
    leading: bool,
    /// No new request is accepted; the last leader closes the writer.
    closing: bool,
    /// The writer is gone (files closed, lock released).
    closed: bool,
    /// Shutdown calls waiting for the writer to close.
    on_closed: Vec<oneshot::Sender<()>>,
}

/// The group-commit machinery behind a `Journal` handle.
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    /// `None` once closed. Lock order: `writer`, then `queue`.
    writer: Mutex<Option<Writer>>,
    /// Checkpoints on disk, ascending; held for a whole checkpoint, so
    /// checkpoints run one at a time.
    checkpoints: Mutex<Vec<u64>>,
    /// Bounds the requests queued at once (`JournalConfig::queue_depth`).
    permits: Semaphore,
    pub shared: Arc<Shared>,
    segment_size: u64,
    max_batch_bytes: usize,
    checkpoint_dir: PathBuf,
    journal_dir: PathBuf,
    storage: Arc<dyn Storage>,
}

/// Fails every request of a leader that panicked, so none waits forever.
struct LeaderGuard<'a> {
    committer: &'a Committer,
    armed: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.committer
            .shared
            .set_poison("a journal commit panicked".into());
        let mut q = lock(&self.committer.queue);
        q.leading = false;
        for entry in q.waiting.drain(..) {
            if let Some(reply) = entry.reply {
                let _ = reply.send(Turn::Done(Err(poisoned_error(&self.committer.shared))));
            }
        }
    }
}

/// A follower's wait. If the follower is dropped (its task cancelled) just
/// as the leadership is handed to it, it still leads: synchronously, while
/// being dropped, so the queue never stalls.
struct Follower<'a> {
    committer: &'a Committer,
    rx: Option<oneshot::Receiver<Turn>>,
}

impl Drop for Follower<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            // After `close`, a send fails; one made before is still received.
            rx.close();
            if let Ok(Turn::Lead) = rx.try_recv() {
                let _ = self.committer.lead();
            }
        }
    }
}

impl Committer {
    pub fn new(mut writer: Writer, queue_depth: usize) -> Arc<Committer> {
        let checkpoints = std::mem::take(&mut writer.checkpoints);
        Arc::new(Committer {
            queue: Mutex::new(Queue::default()),
            permits: Semaphore::new(queue_depth.min(Semaphore::MAX_PERMITS)),
            shared: writer.shared.clone(),
            segment_size: writer.segment_size,
            max_batch_bytes: writer.max_batch_bytes,
            checkpoint_dir: writer.checkpoint_dir.clone(),
            journal_dir: writer.journal_dir.clone(),
            storage: writer.storage.clone(),
            checkpoints: Mutex::new(checkpoints),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Commits `records` (already encoded and checked to fit an empty
    /// segment); returns the first one's sequence number once durable.
    pub async fn append(&self, records: Encoded, bytes: usize) -> Result<u64, JournalError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| JournalError::Closed)?;
        let rx = {
            let mut q = lock(&self.queue);
            if q.closing {
                return Err(JournalError::Closed);
            }
            if let Some(cause) = self.shared.poisoned() {
                return Err(JournalError::Poisoned { cause });
            }
            if q.leading {
                let (tx, rx) = oneshot::channel();
                q.waiting.push_back(Entry {
                    records,
                    bytes,
                    reply: Some(tx),
                });
                rx
            } else {
                debug_assert!(q.waiting.is_empty(), "requests queued without a leader");
                q.leading = true;
                q.waiting.push_back(Entry {
                    records,
                    bytes,
                    reply: None,
                });
                drop(q);
                return self.lead();
            }
        };
        let mut follower = Follower {
            committer: self,
            rx: Some(rx),
        };
        let turn = follower.rx.as_mut().expect("armed until answered").await;
        follower.rx = None;
        match turn {
            Ok(Turn::Done(result)) => result,
            Ok(Turn::Lead) => self.lead(),
            // The leader went away without an answer (it panicked).
            Err(_) => Err(poisoned_error(&self.shared)),
        }
    }

    /// Commits one batch as the leader (whose own request is the oldest
    /// queued), answers its followers, then hands the leadership on or
    /// gives it up. Returns the leader's own result.
    fn lead(&self) -> Result<u64, JournalError> {
        let mut guard = LeaderGuard {
            committer: self,
            armed: true,
        };
        let mut writer = lock(&self.writer);
        let (batch, bytes) = {
            let mut q = lock(&self.queue);
            debug_assert!(q.leading);
            let room = writer.as_ref().map_or(0, Writer::segment_room);
            self.take_batch(&mut q, room)
        };
        let results: Vec<Result<u64, JournalError>> = match writer.as_mut() {
            Some(w) => w.commit(&batch, bytes),
            None => batch.iter().map(|_| Err(JournalError::Closed)).collect(),
        };
        // Hand on or give up the leadership, and close when asked to.
        let (next, on_closed) = {
            let mut q = lock(&self.queue);
            let poisoned = self.shared.poisoned().is_some();
            if poisoned {
                for entry in q.waiting.drain(..) {
                    if let Some(reply) = entry.reply {
                        let _ = reply.send(Turn::Done(Err(poisoned_error(&self.shared))));
                    }
                }
            }
            let next = q.waiting.front_mut().map(|e| {
                e.reply
                    .take()
                    .expect("only the leader's own request has no reply")
            });
            let mut on_closed = Vec::new();
            if next.is_none() {
                q.leading = false;
                if q.closing {
                    *writer = None;
                    q.closed = true;
                    on_closed = std::mem::take(&mut q.on_closed);
                }
            }
            (next, on_closed)
        };
        drop(writer);
        guard.armed = false;
        for done in on_closed {
            let _ = done.send(());
        }
        let mut own = None;
        for (entry, result) in batch.into_iter().zip(results) {
            match entry.reply {
                Some(reply) => {
                    let _ = reply.send(Turn::Done(result));
                }
                None => own = Some(result),
            }
        }
        if let Some(next) = next
            && next.send(Turn::Lead).is_err()
        {
            // Its task is gone (and its drop saw no message): lead again.
            self.lead_for_gone();
        }
        own.expect("the leader's own request is in its batch")
    }

    /// The new leader's task ended before it could be told: its request
    /// (now the oldest) is committed by this thread, its answer dropped.
    fn lead_for_gone(&self) {
        let _ = self.lead();
    }

    /// Takes the oldest requests that fit one batch: the first always (it fits
    /// an empty segment), more while they fit the batch limit and the room
    /// where the batch will be written (this segment, or a fresh one).
    fn take_batch(&self, q: &mut Queue, room: u64) -> (Vec<Entry>, usize) {
        let first = q.waiting.pop_front().expect("a leader has its own request");
        debug_assert!(first.reply.is_none(), "the leader's request comes first");
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        let cap = if bytes as u64 <= room {
            room
        } else {
            self.segment_size - SEGMENT_HEADER_LEN as u64
        };
        while let Some(next) = q.waiting.front() {
            let total = bytes + next.bytes;
            if total > self.max_batch_bytes || total as u64 > cap {
                break;
            }
            bytes = total;
            batch.push(q.waiting.pop_front().expect("front exists"));
        }
        (batch, bytes)
    }

    /// Stops accepting appends, lets the queued ones commit, then closes the
    /// segment and releases the lock.
    pub async fn shutdown(&self) {
        let wait = {
            let mut q = lock(&self.queue);
            if q.closed {
                return;
            }
            q.closing = true;
            if q.leading {
                let (tx, rx) = oneshot::channel();
                q.on_closed.push(tx);
                Some(rx)
            } else {
                None
            }
        };
        match wait {
            Some(rx) => {
                let _ = rx.await;
            }
            None => self.close_now(),
        }
        self.permits.close();
    }

    /// The storage the journal reads and writes through.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// Closes at once: for `Drop`, when no append can be in flight.
    pub fn close_now(&self) {
        let mut writer = lock(&self.writer);
        let mut q = lock(&self.queue);
        q.closing = true;
        if !q.leading {
            *writer = None;
            q.closed = true;
            for done in q.on_closed.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Stores a checkpoint of the caller's state as of durable `seq`, then
    /// removes what it makes unnecessary (see `Journal::checkpoint`). Blocking;
    /// appends go on meanwhile.
    /// The payload is what `build` returns, built with the checkpoints
    /// locked: no other checkpoint is stored, and no segment removed, while
    /// it reads the journal (`Journal::checkpoint_rebuilt`). Nothing is
    /// built for a checkpoint that would not be stored.
    pub fn checkpoint_with(
        &self,
        seq: u64,
        build: impl FnOnce() -> Result<Vec<u8>, JournalError>,
    ) -> Result<u64, JournalError> {
        let mut checkpoints = lock(&self.checkpoints);
        if let Some(cause) = self.shared.poisoned() {
            return Err(JournalError::Poisoned { cause });
        }
        if lock(&self.queue).closed {
            return Err(JournalError::Closed);
        }
        let durable = self.shared.durable_seq.load(Ordering::Acquire);
        if seq > durable {
            return Err(JournalError::CheckpointAhead { seq, durable });
        }
        // Not newer than the newest: nothing to gain, and storing it would
        // let retention keep it instead of a newer one whose covered
        // segments are already gone.
        if checkpoints.last().is_some_and(|&newest| seq <= newest) {
            return Ok(seq);
        }
        let payload = build()?;
        let storage = self.storage.as_ref();
        let bytes = format::encode_checkpoint(seq, &payload);
        let name = format::checkpoint_file_name(seq);
        write_new_file(storage, &self.checkpoint_dir, &name, &bytes)?;
        checkpoints.push(seq);
        self.shared.checkpoint_seq.store(seq, Ordering::Release);
        // Keep the newest two; segments wholly covered by the older of them
        // can go (invariant: deleted only after a covering checkpoint is durable).
        while checkpoints.len() > 2 {
            let old = checkpoints.remove(0);
            let path = self.checkpoint_dir.join(format::checkpoint_file_name(old));
            storage
                .remove_file(&path)
                .map_err(|e| JournalError::io(&path, "remove checkpoint", e))?;
        }
        if checkpoints.len() == 2 {
            let covered = checkpoints[0];
            // Segment i holds [segments[i], segments[i+1]-1]; never the active
            // one. Only the list is shared with the leader; the files go after.
            let gone: Vec<u64> = {
                let mut writer = lock(&self.writer);
                let Some(w) = writer.as_mut() else {
                    return Err(JournalError::Closed);
                };
                let n = w
                    .segments
                    .windows(2)
                    .take_while(|pair| pair[1] - 1 <= covered)
                    .count();
                w.segments.drain(..n).collect()
            };
            for first in gone {
                let path = self.journal_dir.join(format::segment_file_name(first));
                storage
                    .remove_file(&path)
                    .map_err(|e| JournalError::io(&path, "remove segment", e))?;
            }
        }
        sync_dir(storage, &self.checkpoint_dir)?;
        sync_dir(storage, &self.journal_dir)?;
        Ok(seq)
    }
}

impl Writer {
    fn segment_room(&self) -> u64 {
        self.active_len.saturating_sub(self.offset)
    }

    /// Writes and syncs one batch; one result per request.
    fn commit(&mut self, batch: &[Entry], bytes: usize) -> Vec<Result<u64, JournalError>> {
        let refuse = |shared: &Shared| batch.iter().map(|_| Err(poisoned_error(shared))).collect();
        if self.shared.poisoned().is_some() {
            return refuse(&self.shared);
        }
        if bytes as u64 > self.segment_room()
            && let Err(e) = self.rotate()
        {
            self.shared.set_poison(e.to_string());
            return refuse(&self.shared);
        }
        debug_assert!(bytes as u64 <= self.segment_room());
        let mut buf = Vec::with_capacity(bytes);
        let batch_first_seq = self.next_seq;
        let mut seq = self.next_seq;
        let mut firsts = Vec::with_capacity(batch.len());
        for entry in batch {
            firsts.push(seq);
            for (kind, payload) in &entry.records {
                format::encode_frame(
                    &mut buf,
                    FrameHeader {
                        seq,
                        batch_first_seq,
                        kind: *kind,
                    },
                    payload,
                );
                seq += 1;
            }
        }
        assert_eq!(buf.len(), bytes, "batch size computed before encoding");
        let started = std::time::Instant::now();
        // The cause names the segment, so an operator sees which file (and
        // so which device) failed.
        let segment = || {
            self.journal_dir
                .join(format::segment_file_name(self.segment_first_seq))
        };
        let written = self
            .file
            .write_all_at(&buf, self.offset)
            .map_err(|e| format!("write to {} failed: {e}", segment().display()))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| format!("fdatasync of {} failed: {e}", segment().display()))
            });
        if let Err(cause) = written {
            tracing::error!(%cause, "journal poisoned");
            self.mark_failed_commit();
            self.shared.set_poison(cause);
            return refuse(&self.shared);
        }
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.sync_ns.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.offset += bytes as u64;
        self.next_seq = seq;
        self.shared.durable_seq.store(seq - 1, Ordering::Release);
        firsts.into_iter().map(Ok).collect()
    }

    /// Leaves a marker naming where the failed batch starts, so the next open
    /// in this boot discards it (see `discard_failed_commit`). Not synced: it
    /// only has to outlive the process (a power cut takes the page cache, and
    /// the batch's unsynced bytes with it, anyway). Best effort.
    fn mark_failed_commit(&self) {
        let path = self.journal_dir.join(super::FAILED_COMMIT_FILE);
        let fields = format!("{} {}", self.segment_first_seq, self.offset);
        let text = format!("{fields} {:08x}\n", crc32fast::hash(fields.as_bytes()));
        let written = self
            .storage
            .create(&path)
            .and_then(|f| f.write_all_at(text.as_bytes(), 0));
        if let Err(e) = written {
            tracing::error!(error = %e, marker = %path.display(), "could not mark the failed commit");
        }
    }

    /// Starts a new segment at `next_seq`: temp file, header, preallocate,
    /// fsync, rename, fsync the directory.
    fn rotate(&mut self) -> Result<(), JournalError> {
        let file = create_segment(
            self.storage.as_ref(),
            &self.journal_dir,
            self.next_seq,
            self.segment_size,
        )?;
        self.file = file;
        self.active_len = self.segment_size;
        self.segment_first_seq = self.next_seq;
        self.offset = SEGMENT_HEADER_LEN as u64;
        // An empty active segment (e.g. one cut short outside our control) is
        // replaced under the same name: list it once, or checkpoint cleanup
        // would take the duplicate for a finished segment and delete it.
        if self.segments.last() != Some(&self.next_seq) {
            self.segments.push(self.next_seq);
        }
        debug_assert!(self.segments.windows(2).all(|w| w[0] < w[1]));
        Ok(())
    }
}

pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), JournalError> {
    storage
        .sync_dir(dir)
        .map_err(|e| JournalError::io(dir, "fsync directory", e))
}

/// Writes a new file durably: temp file, write, fsync, rename, fsync directory.
pub(crate) fn write_new_file(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), JournalError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    let file = storage
        .create(&tmp)
        .map_err(|e| JournalError::io(&tmp, "create", e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| JournalError::io(&tmp, "write", e))?;
    file.sync_all()
        .map_err(|e| JournalError::io(&tmp, "fsync", e))?;
    drop(file);
    storage
        .rename(&tmp, &dest)
        .map_err(|e| JournalError::io(&dest, "rename into place", e))?;
    sync_dir(storage, dir)
}

/// Creates segment `first_seq` durably and returns it open.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    first_seq: u64,
    segment_size: u64,
) -> Result<Box<dyn StorageFile>, JournalError> {
    let name = format::segment_file_name(first_seq);
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(&name);
    let file = storage
        .create(&tmp)
        .map_err(|e| JournalError::io(&tmp, "create segment", e))?;
    file.allocate(segment_size)
        .map_err(|e| JournalError::io(&tmp, "preallocate segment", e))?;
    file.write_all_at(&format::encode_segment_header(first_seq), 0)
        .map_err(|e| JournalError::io(&tmp, "write segment header", e))?;
    file.sync_all()
        .map_err(|e| JournalError::io(&tmp, "fsync segment", e))?;
    storage
        .rename(&tmp, &dest)
        .map_err(|e| JournalError::io(&dest, "rename segment into place", e))?;
    sync_dir(storage, dir)?;
    Ok(file)
}
