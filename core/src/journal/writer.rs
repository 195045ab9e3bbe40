//! The writer thread: group commit, rotation, checkpoints, poisoning.
//!
//! One OS thread owns the active segment. Appenders send encoded records over
//! a bounded channel and await a reply. The thread blocks for the first
//! request, then drains whatever else is already queued (no timer: a lone
//! writer is never delayed), assigns sequence numbers, writes the whole batch
//! with one positioned write and makes it durable with one `fdatasync`. Only
//! then are the appenders answered. A failed write or sync poisons the journal:
//! the batch and every later request get [`JournalError::Poisoned`].
//!
//! **Invariant:** a reply `Ok(seq)` is sent only after the sync covering `seq`
//! returned success. **Invariant:** a write batch never spans two segments.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::JournalError;
use super::format::{self, FrameHeader, SEGMENT_HEADER_LEN};
use crate::storage::{LockGuard, Storage, StorageFile};

pub(crate) type Reply = oneshot::Sender<Result<u64, JournalError>>;
/// Encoded records of one request: (kind, payload).
pub(crate) type Encoded = Vec<(u8, Vec<u8>)>;

pub(crate) enum Request {
    /// Records (kind, encoded payload) written contiguously in one batch.
    Append { records: Encoded, reply: Reply },
    Checkpoint {
        seq: u64,
        payload: Vec<u8>,
        reply: Reply,
    },
    /// Stop after the requests queued before this one; the reply is sent by
    /// the thread after the writer (files, lock) is dropped.
    Shutdown { reply: oneshot::Sender<()> },
}

/// State shared between the handle and the thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub durable_seq: AtomicU64,
    pub syncs: AtomicU64,
    pub poison: Mutex<Option<String>>,
}

impl Shared {
    pub fn poisoned(&self) -> Option<String> {
        self.poison
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn set_poison(&self, cause: String) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(cause);
        }
    }
}

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
    /// Released when the thread ends, so no second opener runs beside it.
    pub _lock: LockGuard,
}

fn poisoned_error(shared: &Shared) -> JournalError {
    JournalError::Poisoned {
        cause: shared.poisoned().unwrap_or_else(|| "unknown".into()),
    }
}

impl Writer {
    /// The thread body: runs until every handle is gone or a shutdown
    /// request arrives; returns that request's reply channel.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) -> Option<oneshot::Sender<()>> {
        let mut pending: Option<Request> = None;
        let mut buf: Vec<u8> = Vec::with_capacity(self.max_batch_bytes);
        loop {
            let first = match pending.take() {
                Some(r) => r,
                None => rx.blocking_recv()?,
            };
            let (seq, payload, reply) = match first {
                Request::Checkpoint {
                    seq,
                    payload,
                    reply,
                } => (seq, payload, reply),
                Request::Shutdown { reply } => {
                    rx.close();
                    // Requests already queued are refused, not dropped silently.
                    while let Ok(r) = rx.try_recv() {
                        match r {
                            Request::Append { reply, .. } | Request::Checkpoint { reply, .. } => {
                                let _ = reply.send(Err(JournalError::Closed));
                            }
                            Request::Shutdown { reply } => drop(reply),
                        }
                    }
                    return Some(reply);
                }
                Request::Append { records, reply } => {
                    let mut batch = vec![(records, reply)];
                    let mut bytes: usize = batch_bytes(&batch[0].0);
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Request::Append { records, reply } => {
                                let more = batch_bytes(&records);
                                // The batch must fit where it will be written:
                                // the rest of this segment, or a fresh one.
                                let room = self.segment_room();
                                let cap = if bytes as u64 <= room {
                                    room
                                } else {
                                    self.segment_size - SEGMENT_HEADER_LEN as u64
                                };
                                if bytes + more > self.max_batch_bytes
                                    || (bytes + more) as u64 > cap
                                {
                                    pending = Some(Request::Append { records, reply });
                                    break;
                                }
                                bytes += more;
                                batch.push((records, reply));
                            }
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                    }
                    self.commit(batch, bytes, &mut buf);
                    continue;
                }
            };
            let result = self.checkpoint(seq, &payload);
            let _ = reply.send(result);
        }
    }

    fn segment_room(&self) -> u64 {
        self.active_len.saturating_sub(self.offset)
    }

    fn commit(&mut self, batch: Vec<(Encoded, Reply)>, bytes: usize, buf: &mut Vec<u8>) {
        if self.shared.poisoned().is_some() {
            for (_, reply) in batch {
                let _ = reply.send(Err(poisoned_error(&self.shared)));
            }
            return;
        }
        if bytes as u64 > self.segment_room()
            && let Err(e) = self.rotate()
        {
            self.shared.set_poison(e.to_string());
            for (_, reply) in batch {
                let _ = reply.send(Err(poisoned_error(&self.shared)));
            }
            return;
        }
        debug_assert!(bytes as u64 <= self.segment_room());
        buf.clear();
        let batch_first_seq = self.next_seq;
        let mut seq = self.next_seq;
        let mut firsts = Vec::with_capacity(batch.len());
        for (records, _) in &batch {
            firsts.push(seq);
            for (kind, payload) in records {
                format::encode_frame(
                    buf,
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
        let written = self
            .file
            .write_all_at(buf, self.offset)
            .map_err(|e| format!("write failed: {e}"))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| format!("fdatasync failed: {e}"))
            });
        if let Err(cause) = written {
            tracing::error!(%cause, "journal poisoned");
            self.mark_failed_commit();
            self.shared.set_poison(cause);
            for (_, reply) in batch {
                let _ = reply.send(Err(poisoned_error(&self.shared)));
            }
            return;
        }
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.offset += bytes as u64;
        self.next_seq = seq;
        self.shared.durable_seq.store(seq - 1, Ordering::Release);
        for ((_, reply), first) in batch.into_iter().zip(firsts) {
            let _ = reply.send(Ok(first));
        }
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

    fn checkpoint(&mut self, seq: u64, payload: &[u8]) -> Result<u64, JournalError> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(JournalError::Poisoned { cause });
        }
        let durable = self.next_seq - 1;
        if seq > durable {
            return Err(JournalError::CheckpointAhead { seq, durable });
        }
        // Not newer than the newest: nothing to gain, and storing it would
        // let retention keep it instead of a newer one whose covered
        // segments are already gone.
        if self.checkpoints.last().is_some_and(|&newest| seq <= newest) {
            return Ok(seq);
        }
        let bytes = format::encode_checkpoint(seq, payload);
        let name = format::checkpoint_file_name(seq);
        write_new_file(self.storage.as_ref(), &self.checkpoint_dir, &name, &bytes)?;
        self.checkpoints.push(seq);
        // Keep the newest two; segments wholly covered by the older of them
        // can go (invariant: deleted only after a covering checkpoint is durable).
        let storage = self.storage.as_ref();
        while self.checkpoints.len() > 2 {
            let old = self.checkpoints.remove(0);
            let path = self.checkpoint_dir.join(format::checkpoint_file_name(old));
            storage
                .remove_file(&path)
                .map_err(|e| JournalError::io(&path, "remove checkpoint", e))?;
        }
        if self.checkpoints.len() == 2 {
            let covered = self.checkpoints[0];
            // Segment i holds [segments[i], segments[i+1]-1]; never the active one.
            while self.segments.len() >= 2 && self.segments[1] - 1 <= covered {
                let first = self.segments.remove(0);
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

fn batch_bytes(records: &[(u8, Vec<u8>)]) -> usize {
    records
        .iter()
        .map(|(_, p)| format::frame_len(p.len()))
        .sum()
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
