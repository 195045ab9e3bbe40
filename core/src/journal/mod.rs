//! The write-ahead journal: checksummed frames in preallocated segments,
//! group commit, checkpoints, and recovery that tells a torn tail from damage.
//!
//! The journal is generic over its record type ([`JournalRecord`]): it knows
//! sequence numbers, bytes and a one-byte record kind, never volumes. Opening
//! takes the state directory's exclusive lock, loads the newest valid
//! checkpoint (falling back to the previous one), syncs the newest segment,
//! replays the segments after the checkpoint (the newest as the disk holds
//! it: its cached pages are dropped first, so a batch whose write-back failed
//! is never replayed from the page cache), truncates a torn tail (copying it
//! to a `.broken` file first) and refuses anything else. The first open
//! also makes the state directory's identity (`IDENTITY`, module
//! `identity`), which every later open reads. See
//! `journal-format.md` for the bytes.

mod codec;
mod error;
pub mod format;
mod identity;
pub mod reader;
mod repair;
mod writer;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use codec::{decode_checkpoint, decode_record, encode_checkpoint, encode_record};
pub use error::JournalError;
pub use format::Invalid;
pub use identity::{IDENTITY_FILE, IDENTITY_LEN, decode_identity, encode_identity, read_identity};
pub use reader::LogEnd;
use repair::discard_failed_commit;
pub use repair::{FailedCommit, read_failed_commit, truncate_torn_tail};

use crate::storage::{RealStorage, Storage, Trusted};
use writer::{Committer, Shared, Writer};

/// Directory of the segments, under the state directory.
pub const JOURNAL_DIR: &str = "journal";
/// Directory of the checkpoints, under the state directory.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The lock file, under the state directory.
pub const LOCK_FILE: &str = "LOCK";
/// Left in the journal directory by a commit whose write or sync failed:
/// `<segment first seq> <offset of the failed batch> <crc32 of those, hex>`.
/// The next open discards that batch and removes the marker.
pub const FAILED_COMMIT_FILE: &str = "FAILED-COMMIT";

/// A record type the journal can carry.
pub trait JournalRecord: Serialize + DeserializeOwned + Send + 'static {
    /// One byte stored in the frame header so tools can filter without decoding.
    fn kind(&self) -> u8;
}

/// Tunables. The defaults suit a host agent.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Size each segment is preallocated to; rotation happens before a batch
    /// that would not fit.
    pub segment_size: u64,
    /// Upper bound of one group commit's bytes.
    pub max_batch_bytes: usize,
    /// Most append requests queued for a commit at once; more wait for room.
    pub queue_depth: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_size: 16 << 20,
            max_batch_bytes: 1 << 20,
            queue_depth: 4096,
        }
    }
}

/// What opening found and did, for the caller to log and replay.
#[derive(Debug)]
pub struct Recovery<R> {
    /// The checkpoint replay started from: its sequence number and payload.
    pub checkpoint: Option<(u64, Vec<u8>)>,
    /// Checkpoints that were newer but could not be used, with the reason.
    pub rejected_checkpoints: Vec<(PathBuf, String)>,
    /// Records after the checkpoint, in order.
    pub records: Vec<(u64, R)>,
    /// How the log ended; a torn tail has been truncated.
    pub end: LogEnd,
    /// Where the torn tail's bytes were copied before truncation.
    pub broken_file: Option<PathBuf>,
}

/// The journal handle. Appends may run concurrently from many tasks.
pub struct Journal<R> {
    committer: Arc<Committer>,
    shared: Arc<Shared>,
    segment_size: u64,
    max_batch_bytes: usize,
    state_dir: PathBuf,
    identity: uuid::Uuid,
    _record: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Journal<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("state_dir", &self.state_dir)
            .field("durable_seq", &self.durable_seq())
            .finish_non_exhaustive()
    }
}

impl<R: JournalRecord> Journal<R> {
    /// Opens (creating if needed) the journal of `state_dir` on the real file system.
    pub fn open(
        state_dir: &Path,
        config: JournalConfig,
    ) -> Result<(Self, Recovery<R>), JournalError> {
        Self::open_with_storage(Arc::new(RealStorage), state_dir, config)
    }

    /// Opens through a given storage (the fault-injection and simulation seam).
    // The caller hands over its storage and configuration (the open journal
    // keeps what it needs of them).
    #[allow(clippy::needless_pass_by_value)]
    pub fn open_with_storage(
        storage: Arc<dyn Storage>,
        state_dir: &Path,
        config: JournalConfig,
    ) -> Result<(Self, Recovery<R>), JournalError> {
        if config.segment_size < format::MIN_SEGMENT_LEN
            || config.segment_size > format::MAX_SEGMENT_LEN
        {
            return Err(JournalError::Config(format!(
                "segment size {} outside {}..={}",
                config.segment_size,
                format::MIN_SEGMENT_LEN,
                format::MAX_SEGMENT_LEN
            )));
        }
        if config.queue_depth == 0 || config.max_batch_bytes == 0 {
            return Err(JournalError::Config(
                "queue depth and batch size must be positive".into(),
            ));
        }
        let journal_dir = state_dir.join(JOURNAL_DIR);
        let checkpoint_dir = state_dir.join(CHECKPOINT_DIR);
        // Before anything is created or read: a state directory another
        // user can change is theirs (they plant segments, or make
        // `journal/` a symlink to where we then create and remove files).
        // Checked again after each creation: what was missing may have
        // been made by someone else meanwhile (in a sticky parent).
        check_state_dir(storage.as_ref(), state_dir)?;
        // Directories are entries of their parents: make them durable too, or
        // a power cut can take the whole journal along (invariant 5). Always,
        // not only when this open creates them: a process killed before its
        // directory sync leaves entries that are visible but not durable.
        create_dir_durable(storage.as_ref(), state_dir)?;
        check_state_dir(storage.as_ref(), state_dir)?;
        for dir in [&journal_dir, &checkpoint_dir] {
            storage
                .create_dir_all(dir)
                .map_err(|e| JournalError::io(dir, "create directory", e))?;
        }
        check_state_dir(storage.as_ref(), state_dir)?;
        writer::sync_dir(storage.as_ref(), state_dir)?;
        let lock_path = state_dir.join(LOCK_FILE);
        let holder = format!("pid {}", std::process::id());
        let lock = storage
            .lock_exclusive(&lock_path, &holder)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock => JournalError::Locked {
                    lock_file: lock_path.clone(),
                    holder: e.to_string(),
                },
                _ => JournalError::io(&lock_path, "lock", e),
            })?;
        // Under the lock: two first opens cannot make two identities.
        let identity = identity::open_identity(storage.as_ref(), state_dir)?;
        remove_temp_files(storage.as_ref(), &journal_dir)?;
        remove_temp_files(storage.as_ref(), &checkpoint_dir)?;
        // Under the lock: what an older version wrote 0644 is made 0600.
        restrict_files(storage.as_ref(), &journal_dir)?;
        restrict_files(storage.as_ref(), &checkpoint_dir)?;
        // Likewise a rename or removal a killed process did not sync.
        writer::sync_dir(storage.as_ref(), &journal_dir)?;
        writer::sync_dir(storage.as_ref(), &checkpoint_dir)?;
        discard_failed_commit(storage.as_ref(), &journal_dir)?;
        // What replay is about to trust may exist only in the page cache (a
        // killed process wrote it without a sync): make the last segment
        // durable before it is read. The read then drops the segment's
        // cached pages (all clean now) and reads what the disk holds: a batch
        // whose write-back failed, its process killed before it could leave
        // its marker, is not on the disk, and Linux keeps such pages cached
        // as clean (no sync writes them again) while reads return them.
        let synced = sync_last_segment(storage.as_ref(), &journal_dir)?;

        let mut records = Vec::new();
        let read = reader::read_log::<R>(storage.as_ref(), state_dir, |seq, record| {
            records.push((seq, record));
        })?;
        let end = read.walked.verdict.clone().map_err(JournalError::from)?;
        let walked = read.walked;

        // Repair a torn tail: copy the bytes aside, zero them, sync.
        let mut broken_file = None;
        if let LogEnd::TornTail {
            segment,
            offset,
            len,
            reason,
        } = &end
        {
            let path = truncate_torn_tail(storage.as_ref(), segment, *offset, *len)?;
            tracing::warn!(
                segment = %segment.display(),
                offset,
                bytes = len,
                %reason,
                broken = %path.display(),
                "journal: torn tail truncated"
            );
            broken_file = Some(path);
        }

        let next_seq = walked.last_seq + 1;
        let segs: Vec<u64> = walked.segments.iter().map(|(s, _)| *s).collect();
        let (file, segment_first_seq, offset, mut segments) = if let Some(tail) = &walked.tail {
            let (first, path, offset) = (&tail.segment, &tail.path, &tail.cursor.offset);
            // Pair assertion: appends continue exactly where replay ended.
            assert_eq!(
                tail.cursor.next_seq, next_seq,
                "the log's tail names the next record"
            );
            let file = storage
                .open(path)
                .map_err(|e| JournalError::io(path, "open segment", e))?;
            // Pair assertion: the tail is the last segment, synced before
            // the read (appends go to the newest segment only).
            assert_eq!(
                synced.as_deref(),
                Some(path.as_path()),
                "the log's tail is the segment synced before replay"
            );
            (file, *first, *offset, segs)
        } else {
            let file = writer::create_segment(
                storage.as_ref(),
                &journal_dir,
                next_seq,
                config.segment_size,
            )?;
            (file, next_seq, format::SEGMENT_HEADER_LEN as u64, segs)
        };
        if !segments.contains(&segment_first_seq) {
            segments.push(segment_first_seq);
            segments.sort_unstable();
        }
        let segment_len = file
            .len()
            .map_err(|e| JournalError::io(&journal_dir, "stat segment", e))?;
        let checkpoints = reader::list_checkpoints(storage.as_ref(), &checkpoint_dir)?
            .into_iter()
            .map(|(s, _)| s)
            .collect();

        let shared = Arc::new(Shared::default());
        shared.durable_seq.store(walked.last_seq, Ordering::Release);
        let used = read.checkpoint.as_ref().map_or(0, |c| c.seq);
        shared.checkpoint_seq.store(used, Ordering::Release);
        let writer = Writer {
            storage: storage.clone(),
            journal_dir,
            checkpoint_dir,
            segment_size: config.segment_size,
            active_len: segment_len,
            max_batch_bytes: config.max_batch_bytes,
            file,
            segment_first_seq,
            offset,
            next_seq,
            segments,
            checkpoints,
            shared: shared.clone(),
            _lock: lock,
        };
        let committer = Committer::new(writer, config.queue_depth);

        let recovery = Recovery {
            checkpoint: read.checkpoint.map(|c| (c.seq, c.payload)),
            rejected_checkpoints: read
                .checkpoint_attempts
                .into_iter()
                .filter_map(|a| a.rejected.map(|r| (a.path, r)))
                .collect(),
            records,
            end,
            broken_file,
        };
        for (path, why) in &recovery.rejected_checkpoints {
            tracing::warn!(checkpoint = %path.display(), reason = %why, "journal: checkpoint unusable, falling back");
        }
        Ok((
            Journal {
                committer,
                shared,
                segment_size: config.segment_size,
                max_batch_bytes: config.max_batch_bytes,
                state_dir: state_dir.to_owned(),
                identity,
                _record: PhantomData,
            },
            recovery,
        ))
    }

    /// Appends one record; returns its sequence number once it is durable.
    pub async fn append(&self, record: &R) -> Result<u64, JournalError> {
        self.append_all(std::slice::from_ref(record)).await
    }

    /// Appends records contiguously in one write batch (one sync); returns the
    /// first one's sequence number once all are durable. On `Ok` all of them
    /// are durable. If the call fails or the process dies first, recovery may
    /// replay any prefix of them (a frame records its batch's first sequence
    /// number, not the batch's length): callers that need all-or-none must
    /// make their records idempotent or self-describing.
    pub async fn append_all(&self, records: &[R]) -> Result<u64, JournalError> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(JournalError::Poisoned { cause });
        }
        let mut encoded = Vec::with_capacity(records.len());
        let mut total = 0usize;
        for record in records {
            let (kind, payload) = encode_checked(record)?;
            total += format::frame_len(payload.len());
            encoded.push((kind, payload));
        }
        let capacity = self.segment_capacity();
        if total > capacity {
            return Err(JournalError::RecordTooLarge {
                len: total,
                max: capacity,
            });
        }
        if encoded.is_empty() {
            return Ok(self.durable_seq() + 1);
        }
        self.committer.append(encoded, total).await
    }

    /// Appends many records in order, in as few commits (syncs) as the
    /// limits allow: consecutive runs of records, each as large as fits
    /// [`Journal::batch_limit`] (a record larger than that goes alone), each
    /// encoded once and committed like one [`Journal::append_all`]. After
    /// each run is durable, `durable` receives its first sequence number and
    /// its records, in order; it returns whether to go on. Returns how many
    /// records were handed to `durable`. On `Err` every run before the
    /// failing one was durable and handed over; of the failing run, recovery
    /// may replay any prefix (as for `append_all`). Memory stays bounded by
    /// one run's bytes, whatever the number of records.
    pub async fn append_in_batches(
        &self,
        records: Vec<R>,
        mut durable: impl FnMut(u64, Vec<R>) -> bool,
    ) -> Result<usize, JournalError> {
        let limit = self.batch_limit();
        let capacity = self.segment_capacity();
        let mut handed = 0usize;
        let mut run: Vec<R> = Vec::new();
        let mut encoded: writer::Encoded = Vec::new();
        let mut bytes = 0usize;
        for record in records {
            let (kind, payload) = encode_checked(&record)?;
            let len = format::frame_len(payload.len());
            if len > capacity {
                return Err(JournalError::RecordTooLarge { len, max: capacity });
            }
            if !run.is_empty() && bytes + len > limit {
                let first = self.commit_run(std::mem::take(&mut encoded), bytes).await?;
                handed += run.len();
                if !durable(first, std::mem::take(&mut run)) {
                    return Ok(handed);
                }
                bytes = 0;
            }
            bytes += len;
            encoded.push((kind, payload));
            run.push(record);
        }
        if !run.is_empty() {
            let first = self.commit_run(encoded, bytes).await?;
            handed += run.len();
            durable(first, run);
        }
        Ok(handed)
    }

    /// Commits one run of [`Journal::append_in_batches`].
    async fn commit_run(
        &self,
        encoded: writer::Encoded,
        bytes: usize,
    ) -> Result<u64, JournalError> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(JournalError::Poisoned { cause });
        }
        self.committer.append(encoded, bytes).await
    }

    /// Stores a snapshot of the caller's state as of sequence `seq` (which
    /// must be durable), then removes what it makes unnecessary: checkpoints
    /// but the newest two, and segments wholly covered by the older of those.
    /// A checkpoint at or before the newest stored one is a no-op. The file
    /// is written on the blocking pool; appends go on meanwhile. The payload
    /// is stored as given: a caller's encoded state goes through
    /// [`Journal::checkpoint_of`], which checks that it decodes.
    pub async fn checkpoint(&self, seq: u64, payload: Vec<u8>) -> Result<(), JournalError> {
        self.store_checkpoint(seq, payload, Ok).await
    }
}

impl<R: JournalRecord> Journal<R> {
    /// Stores a checkpoint of the state at durable record `seq` that the
    /// journal itself rebuilds the way an open builds it
    /// ([`reader::read_prefix`]): `state` starts from the newest checkpoint
    /// that checks and folds in every record after it up to `seq`, read
    /// back from the segments; its payload is then checked as by
    /// [`Journal::checkpoint_of`] with `T`. The caller hands over no copy of
    /// its live state and holds none of its locks: the whole build runs on
    /// the blocking pool while appends go on, one checkpoint at a time
    /// (retention waits for it). What an open would refuse (a record the
    /// fold refuses, a log that ends before `seq`) is
    /// [`JournalError::Rebuild`] and nothing is stored.
    pub async fn checkpoint_rebuilt<T, S>(&self, seq: u64, mut state: S) -> Result<(), JournalError>
    where
        T: DeserializeOwned + 'static,
        S: Rebuild<R>,
    {
        let committer = self.committer.clone();
        let state_dir = self.state_dir.clone();
        self.on_blocking_pool(move || {
            let storage = committer.storage();
            committer.checkpoint_with(seq, || {
                reader::read_prefix::<R>(storage.as_ref(), &state_dir, seq, &mut state)?;
                let payload = state
                    .finish()
                    .map_err(|reason| JournalError::Rebuild { seq, reason })?;
                decoding_as::<T>(seq, payload)
            })
        })
        .await
    }
}

/// `payload` if it decodes as a `T`, as open will decode it; else
/// [`JournalError::CheckpointUndecodable`] (see [`Journal::checkpoint_of`]).
fn decoding_as<T: DeserializeOwned>(seq: u64, payload: Vec<u8>) -> Result<Vec<u8>, JournalError> {
    match codec::decode_checkpoint::<T>(&payload) {
        Ok(_) => Ok(payload),
        Err(reason) => Err(JournalError::CheckpointUndecodable {
            seq,
            len: payload.len(),
            reason,
        }),
    }
}

/// A caller's state, rebuilt from the journal for a checkpoint
/// ([`Journal::checkpoint_rebuilt`]).
pub trait Rebuild<R>: Send + 'static {
    /// Starts from a checkpoint's sequence number and payload, or from
    /// nothing.
    fn start(&mut self, checkpoint: Option<(u64, &[u8])>) -> Result<(), String>;
    /// Folds in record `seq` (in order, each once).
    fn record(&mut self, seq: u64, record: R) -> Result<(), String>;
    /// The checkpoint payload of the state reached.
    fn finish(self) -> Result<Vec<u8>, String>;
}

impl<R> Journal<R> {
    /// [`Journal::checkpoint`] of a payload that is first decoded as a `T`,
    /// as open will decode it: one that would not decode is refused
    /// ([`JournalError::CheckpointUndecodable`]) and nothing is stored.
    /// bincode's decode limit counts integers at their in-memory width and
    /// encoding checks no limit, so a payload under the byte limit can still
    /// exceed it on decode; stored, it would make the journal unopenable.
    /// The decode runs on the blocking pool with the write, off the
    /// caller's locks (for volmgr's state, about as long as an open's
    /// checkpoint decode: 0.1 s at 100,000 volumes).
    pub async fn checkpoint_of<T: DeserializeOwned + 'static>(
        &self,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<(), JournalError> {
        self.store_checkpoint(seq, payload, move |p| decoding_as::<T>(seq, p))
            .await
    }

    /// Stores what `check` makes of `payload`, on the blocking pool.
    async fn store_checkpoint(
        &self,
        seq: u64,
        payload: Vec<u8>,
        check: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, JournalError> + Send + 'static,
    ) -> Result<(), JournalError> {
        let committer = self.committer.clone();
        self.on_blocking_pool(move || committer.checkpoint_with(seq, || check(payload)))
            .await
    }

    /// Runs a checkpoint's `work` on the blocking pool.
    async fn on_blocking_pool(
        &self,
        work: impl FnOnce() -> Result<u64, JournalError> + Send + 'static,
    ) -> Result<(), JournalError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| {
                JournalError::io(
                    &self.state_dir,
                    "write checkpoint",
                    std::io::Error::other(e),
                )
            })?
            .map(|_| ())
    }

    /// The most frame bytes one commit should carry: the configured batch
    /// limit, and never more than an empty segment holds.
    pub fn batch_limit(&self) -> usize {
        self.max_batch_bytes.min(self.segment_capacity())
    }

    /// The frame bytes an empty segment holds.
    fn segment_capacity(&self) -> usize {
        usize::try_from(self.segment_size)
            .unwrap_or(usize::MAX)
            .saturating_sub(format::SEGMENT_HEADER_LEN)
    }

    /// The state directory's identity (`IDENTITY`, made by the first open
    /// and durable before open returned; see `journal/identity.rs`).
    pub fn identity(&self) -> uuid::Uuid {
        self.identity
    }

    /// Sequence number of the last durable record (0 when empty).
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Sequence number of the checkpoint an open would start from (0 when
    /// none): the one this open used, then each one stored. An open would
    /// replay the records after it, `durable_seq() - checkpoint_seq()`.
    pub fn checkpoint_seq(&self) -> u64 {
        self.shared.checkpoint_seq.load(Ordering::Acquire)
    }

    /// Number of `fdatasync` calls made for appends since open.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Wall time the commits spent in their write and `fdatasync`, summed.
    pub fn sync_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.shared.sync_ns.load(Ordering::Relaxed))
    }

    /// The cause, if a failed write or sync has poisoned the journal.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Lets the queued appends commit, then closes the segment and releases
    /// the lock.
    pub async fn close(self) {
        self.shutdown().await;
    }

    /// Like [`Journal::close`], through a shared handle: once it returns the
    /// lock is released and every later append fails with `Closed`.
    pub async fn shutdown(&self) {
        self.committer.shutdown().await;
    }
}

impl<R> Drop for Journal<R> {
    fn drop(&mut self) {
        // No append can be in flight: each borrows the handle.
        self.committer.close_now();
    }
}

/// Encodes one record for a frame: its kind and payload, refused if the
/// payload exceeds the frame limit or would not decode on replay.
fn encode_checked<R: JournalRecord>(record: &R) -> Result<(u8, Vec<u8>), JournalError> {
    let payload = codec::encode_record(record).map_err(JournalError::Encode)?;
    if payload.len() > format::MAX_PAYLOAD_LEN {
        return Err(JournalError::RecordTooLarge {
            len: payload.len(),
            max: format::MAX_PAYLOAD_LEN,
        });
    }
    // Pair assertion: what is written must replay. bincode's limit counts
    // integers at their in-memory width (a u64 is 8 bytes against the limit
    // however few it takes on disk), so a payload under 1 MiB can still
    // exceed the decode limit; such a record, once durable, would make the
    // journal refuse to open.
    if let Err(e) = codec::decode_record::<R>(&payload) {
        return Err(JournalError::Encode(format!(
            "record of {} bytes would not decode on replay: {e}",
            payload.len()
        )));
    }
    Ok((record.kind(), payload))
}

/// Refuses a state directory another user could change: the directory and
/// every ancestor ([`Trusted::StateDir`]), `journal/` and `checkpoints/`
/// ([`Trusted::PrivateDir`]: made 0700), `LOCK` and `IDENTITY`
/// ([`Trusted::OwnFile`]), through the storage (simulations accept). An
/// absent entry passes: check again once it is made. The agent and
/// `volmgr journal repair` call this before they create or read anything
/// there; [`Journal::open`] calls it itself.
pub fn check_state_dir(storage: &dyn Storage, state_dir: &Path) -> Result<(), JournalError> {
    let check = |path: &Path, entry: Trusted| {
        storage
            .check_trusted(path, entry)
            .map_err(|e| JournalError::io(path, "check", e))
    };
    check(state_dir, Trusted::StateDir)?;
    for dir in [JOURNAL_DIR, CHECKPOINT_DIR] {
        check(&state_dir.join(dir), Trusted::PrivateDir)?;
    }
    for file in [LOCK_FILE, IDENTITY_FILE] {
        check(&state_dir.join(file), Trusted::OwnFile)?;
    }
    Ok(())
}

/// Syncs (`fdatasync`) the newest segment of `journal_dir`, if there is one,
/// and returns its path.
fn sync_last_segment(
    storage: &dyn Storage,
    journal_dir: &Path,
) -> Result<Option<PathBuf>, JournalError> {
    let Some((_, path)) = reader::list_segments(storage, journal_dir)?.pop() else {
        return Ok(None);
    };
    let file = match storage.open(&path) {
        Ok(file) => file,
        // Not a regular file: the reader refuses it, naming it.
        Err(e) if crate::storage::NotRegularFile::of(&e).is_some() => return Ok(None),
        Err(e) => return Err(JournalError::io(&path, "open segment", e)),
    };
    file.sync_data()
        .map_err(|e| JournalError::io(&path, "fsync segment", e))?;
    Ok(Some(path))
}

/// Creates `dir` and its missing ancestors and syncs the parent of each, from
/// the root down, so every entry on the path is durable (a directory we are
/// not allowed to read, hence to fsync, is skipped with a warning).
fn create_dir_durable(storage: &dyn Storage, dir: &Path) -> Result<(), JournalError> {
    let Some(parent) = dir.parent() else {
        return Ok(()); // the root
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        create_dir_durable(storage, parent)?;
        parent
    };
    storage
        .create_dir_all(dir)
        .map_err(|e| JournalError::io(dir, "create directory", e))?;
    match storage.sync_dir(parent) {
        Ok(()) => Ok(()),
        // A directory above the state directory we may not read (so not
        // open to fsync): its entry's durability is the administrator's.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(dir = %parent.display(), error = %e, "journal: cannot fsync a directory above the state directory");
            Ok(())
        }
        Err(e) => Err(JournalError::io(parent, "fsync directory", e)),
    }
}

/// Makes every regular file in `dir` (`journal/` or `checkpoints/`, which
/// passed [`check_state_dir`]) 0600 if its mode differs
/// ([`Trusted::PrivateFile`]): segments and checkpoints hold every volume's
/// id, meta and provider configuration, and versions before 0600 wrote
/// them 0644. One `lstat` a file, at each open that holds the lock.
fn restrict_files(storage: &dyn Storage, dir: &Path) -> Result<(), JournalError> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| JournalError::io(dir, "list directory", e))?;
    for name in names {
        let path = dir.join(name);
        storage
            .check_trusted(&path, Trusted::PrivateFile)
            .map_err(|e| JournalError::io(&path, "make private", e))?;
    }
    Ok(())
}

// Our own temporary names, `.<name>.tmp`: lowercase by construction.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn remove_temp_files(storage: &dyn Storage, dir: &Path) -> Result<(), JournalError> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| JournalError::io(dir, "list directory", e))?;
    let mut removed = false;
    for name in names
        .iter()
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
    {
        let path = dir.join(name);
        storage
            .remove_file(&path)
            .map_err(|e| JournalError::io(&path, "remove temp file", e))?;
        removed = true;
    }
    if removed {
        writer::sync_dir(storage, dir)?;
    }
    Ok(())
}
