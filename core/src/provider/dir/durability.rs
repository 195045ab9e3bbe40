//! When the directory provider's changes become durable: the batched step
//! (one round shared by concurrent operations: an `fsync` of each path the
//! provider changed, or a `syncfs` of the root, see [`BatchSync`]), the barriers
//! a verb needs inside it, and the layout calls that sync or not as the
//! provider's durability says. The protocol is described in the parent
//! module's "Durability" section; this module holds its primitives.
//!
//! A round's syncs returning success is not enough: an ext4 whose journal
//! a failed commit aborted stays `rw` and answers them with success once
//! the failed transaction (with the round's changes) is gone. So a round
//! ends with two checks, after its syncs: the root's file system is not
//! read-only, and it still takes a journaled change (a probe file renamed
//! in `.volmgr`, [`DirProvider::still_accepts_changes`]).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout::{Entry, Identity, Layout};
use super::marker::{self, Marker};
use super::{DirProvider, MARKERS, check_id};
use crate::model::VolumeKind;
use crate::provider::{ProviderError, VolumeSpec};

/// What one round of the batched step runs (see "Durability" in the
/// parent module). Each makes durable everything the provider changed
/// before the round started; they differ in what *else* they write and in
/// how many flushes they cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSync {
    /// A `syncfs` while the machine holds at most
    /// [`BatchSync::AUTO_SYNCFS_MAX_DIRTY`] bytes of dirty page cache
    /// (`nr_dirty` + `nr_writeback` of `/proc/vmstat`, every file system:
    /// more than this one holds), else the `fsync`s of
    /// [`BatchSync::Fsync`]: one flush per round on an idle disk, and a
    /// bounded one when tenants are writing. The default.
    #[default]
    Auto,
    /// An `fsync` of each file and directory the provider changed since the
    /// last round (concurrently): a round writes nothing of what tenants
    /// wrote into their volumes, at one flush per path on a file system
    /// without a journal (about four for a lone create).
    Fsync,
    /// One `syncfs` of the root: one flush per round, but it writes back
    /// every dirty page of the file system, the tenants' too (measured: a
    /// tenant writing flat out made each create wait about 0.9 s).
    Syncfs,
}

impl BatchSync {
    /// The most dirty page cache (bytes, whole machine) under which an
    /// [`BatchSync::Auto`] round runs a `syncfs`: writing back 2 MiB costs
    /// a few milliseconds at worst.
    pub const AUTO_SYNCFS_MAX_DIRTY: u64 = 2 << 20;

    /// The configuration value (`batch_sync`).
    pub fn as_str(self) -> &'static str {
        match self {
            BatchSync::Auto => "auto",
            BatchSync::Fsync => "fsync",
            BatchSync::Syncfs => "syncfs",
        }
    }

    /// Parses a configuration value.
    pub fn parse(value: &str) -> Option<Self> {
        [BatchSync::Auto, BatchSync::Fsync, BatchSync::Syncfs]
            .into_iter()
            .find(|b| b.as_str() == value)
    }

    /// Whether a round runs a `syncfs` (else `fsync`s), with `dirty` the
    /// machine's dirty page cache in bytes (`None`: unknown).
    pub fn syncfs_with(self, dirty: Option<u64>) -> bool {
        match self {
            BatchSync::Syncfs => true,
            BatchSync::Fsync => false,
            BatchSync::Auto => dirty.is_some_and(|d| d <= Self::AUTO_SYNCFS_MAX_DIRTY),
        }
    }

    /// [`BatchSync::syncfs_with`], calling `dirty` only for
    /// [`BatchSync::Auto`]: a forced choice reads no `/proc/vmstat` (a
    /// `pread` that costs a round tens of microseconds of kernel time).
    pub(crate) fn syncfs_reading(self, dirty: impl FnOnce() -> Option<u64>) -> bool {
        match self {
            BatchSync::Auto => self.syncfs_with(dirty()),
            BatchSync::Syncfs | BatchSync::Fsync => self.syncfs_with(None),
        }
    }
}

/// The two names of the empty file that [`DirProvider::still_accepts_changes`]
/// renames in `<root>/.volmgr` after each round's syncs (from one to the
/// other): dot names, so no id can take them.
pub(super) const ROUND_PROBE: [&str; 2] = [".round-probe.a", ".round-probe.b"];

/// What the next batched round must make durable: the provider's own files
/// and directories changed since the last one, and whether a caller needs
/// a whole-file-system `syncfs` (a receive's data).
///
/// **Invariant:** a path is recorded (or `whole` set) *before* its caller
/// takes its ticket, and a round takes the set when it starts: so the
/// round that decides a ticket, or an earlier one that started after the
/// recording, syncs it. A provider's first round is a whole `syncfs`
/// ([`Dirty::at_open`]), and so is the round after a verb failed on what
/// may hide a failed write ([`DirProvider::note_failure`]: it may have
/// stopped half way on an I/O error that an `fsync` of the paths it noted
/// would not meet again).
#[derive(Debug)]
pub(super) struct Dirty {
    paths: Mutex<BTreeSet<PathBuf>>,
    whole: AtomicBool,
}

impl Dirty {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a provider starting now cannot know: the changes an earlier
    /// instance (a killed process) left unsynced in the page cache, which
    /// its inventory sees. So its first round is a whole `syncfs`.
    pub(super) fn at_open() -> Dirty {
        Dirty {
            paths: Mutex::default(),
            whole: AtomicBool::new(true),
        }
    }

    /// Asks the next round for a whole `syncfs`.
    pub(super) fn want_whole(&self) {
        self.whole.store(true, Ordering::SeqCst);
    }

    fn record(&self, path: &Path) {
        self.lock().insert(path.to_path_buf());
    }

    /// Takes what a round starting now must sync: `None` for a whole
    /// `syncfs`, else the paths. `syncfs` decides, for a round no
    /// caller asked a whole `syncfs` of, whether it runs one anyway.
    fn take(&self, syncfs: impl FnOnce() -> bool) -> Option<Vec<PathBuf>> {
        let whole = self.whole.swap(false, Ordering::SeqCst);
        let paths: Vec<PathBuf> = std::mem::take(&mut *self.lock()).into_iter().collect();
        if whole || syncfs() {
            return None;
        }
        Some(paths)
    }
}

impl DirProvider {
    /// Rounds run so far (the batched step and the barriers; each serves
    /// every operation waiting for it). For benches.
    pub fn syncfs_rounds(&self) -> u64 {
        self.flush.flushes()
    }

    /// `lstat` of one of the provider's own names.
    pub(super) fn entry(&self, path: &Path) -> Result<Option<Entry>, ProviderError> {
        self.layout
            .entry(path)
            .map_err(|e| ProviderError::io(format!("examining {}", path.display()), e))
    }

    /// Whether `path` is a real directory (not a symlink to one).
    pub(super) fn is_dir(&self, path: &Path) -> Result<bool, ProviderError> {
        Ok(matches!(self.entry(path)?, Some(Entry::Dir { .. })))
    }

    /// `fsync` of a directory, whatever the durability.
    pub(super) fn sync_dir(&self, path: &Path) -> Result<(), ProviderError> {
        self.layout
            .sync_dir(path)
            .map_err(|e| ProviderError::io(format!("syncing directory {}", path.display()), e))
    }

    /// Sets a directory's mode, never following a symlink.
    pub(super) fn set_dir_mode(&self, path: &Path, mode: u32) -> Result<(), ProviderError> {
        self.layout
            .set_dir_mode(path, mode)
            .map_err(|e| ProviderError::io(format!("setting the mode of {}", path.display()), e))
    }

    /// Gives the owner `rwx` on directory `path` (whose mode is `mode`) if
    /// it lacks any: moving a directory to another parent needs write
    /// permission on it.
    pub(super) fn owner_rwx_for_move(&self, path: &Path, mode: u32) -> Result<(), ProviderError> {
        if mode & 0o700 == 0o700 {
            return Ok(());
        }
        self.set_dir_mode(path, mode | 0o700)
    }

    /// Device and inode of one of the provider's own names.
    pub(super) fn identity(&self, path: &Path) -> Result<Option<Identity>, ProviderError> {
        self.layout
            .identity(path)
            .map_err(|e| ProviderError::io(format!("examining {}", path.display()), e))
    }

    /// Removes the tree at one of the provider's own paths (absent is
    /// fine), never following a symlink inside it.
    pub(super) fn remove_own_tree(&self, path: &Path) -> Result<(), ProviderError> {
        self.layout
            .remove_tree(path)
            .map_err(|e| ProviderError::io(format!("removing {}", path.display()), e))
    }

    /// After a change to `dir`'s entries: durable on return, `fsync` it now;
    /// batched, nothing but a note for the next round (a barrier or the
    /// shared step covers it).
    pub(super) fn settle_dir(&self, dir: &Path) -> Result<(), ProviderError> {
        if self.batched {
            self.changed(dir);
            Ok(())
        } else {
            self.sync_dir(dir)
        }
    }

    /// Passes a verb's result on; a failure that may hide a failed write
    /// asks the next round for a whole `syncfs` (see [`Dirty`]): the verb
    /// may have stopped half way on an I/O error, leaving changes it never
    /// noted. A refusal does not ([`may_hide_a_failed_write`]): a tenant
    /// who can make a snapshot of its volume fail (a tree deeper than the
    /// provider copies) must not buy a slow round per attempt.
    pub(super) fn note_failure<T>(
        &self,
        result: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        if let Err(e) = &result
            && may_hide_a_failed_write(e)
        {
            self.dirty.want_whole();
        }
        result
    }

    /// Batched: notes that `path` (one of the provider's own files or
    /// directories) changed and must be synced by the next round.
    pub(super) fn changed(&self, path: &Path) {
        // `syncfs` rounds never read the notes.
        if self.batched && self.batch_sync != BatchSync::Syncfs {
            self.dirty.record(path);
        }
    }

    /// Batched: returns once a round (see [`BatchSync`]) that started after
    /// the call has returned, so everything done before it is durable; one
    /// round serves every caller waiting at the time. A failed round
    /// fails every later call (see [`crate::fsutil::GroupSync`]). Durable on
    /// return: nothing to do.
    pub(super) fn barrier(&self) -> Result<(), ProviderError> {
        if !self.batched {
            return Ok(());
        }
        self.round()
    }

    /// A `syncfs` of the root, whatever the durability, through the shared
    /// rounds: concurrent callers share one, and a failed one fails every
    /// later call (after a write-back error a retry could succeed and lie).
    ///
    /// On the kernel's file system it runs on the root's descriptor opened
    /// when the provider was: `syncfs` reports a write-back error (through
    /// the file system's error sequence) only to descriptors opened before
    /// anyone saw it, so on a descriptor opened afresh it returns `Ok` once
    /// another caller's `syncfs` of the same file system (another process,
    /// another provider) has seen the error first, and effects that never
    /// reached the disk would be acknowledged (`tests/dir_device_errors.rs`).
    pub(super) fn sync_root(&self) -> Result<(), ProviderError> {
        self.dirty.want_whole();
        self.round()
    }

    /// Waits for a round that starts after the call: a `syncfs` if one was
    /// asked for since the last round or [`BatchSync::syncfs_with`] says
    /// so, else an `fsync` of each path changed since.
    fn round(&self) -> Result<(), ProviderError> {
        self.flush
            .sync_after("sync of the provider's changes", || {
                let syncfs = || self.batch_sync.syncfs_reading(|| self.layout.dirty_bytes());
                match self.dirty.take(syncfs) {
                    None => match &self.root_fd {
                        Some(root) => root.syncfs(),
                        None => self.layout.syncfs(&self.root),
                    }
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("syncfs of the provider root: {e}"))
                    }),
                    Some(paths) => self.sync_all_changed(&paths),
                }
                .and_then(|()| self.still_writable())
                .and_then(|()| self.still_accepts_changes())
            })
            .map_err(ProviderError::Other)
    }

    /// After a round's syncs returned: the root's file system must not be
    /// read-only (`ST_RDONLY`: mounted or remounted so), since a `syncfs`
    /// of a read-only super block returns success at once without writing
    /// anything. This does not detect an ext4 that aborted on a failed
    /// write: on the guest's 6.1 kernel it stays `rw` in `/proc/mounts`
    /// even with `errors=remount-ro` (`tests/journal_device_errors.rs`)
    /// while refusing changes; [`Self::still_accepts_changes`] does.
    fn still_writable(&self) -> io::Result<()> {
        match &self.root_fd {
            Some(root) if root.is_read_only()? => Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "the round's syncfs or fsyncs returned, but the file system holding the \
                 provider root is read-only (it aborted after a failed write, or was \
                 remounted read-only): Read-only file system (os error 30)",
            )),
            _ => Ok(()),
        }
    }

    /// At open: the round probe's file under one of its names ([`ROUND_PROBE`]),
    /// made empty under the first if neither exists (not synced: a round
    /// makes it again if a cut took it), and where it is noted. So a round
    /// only renames it and never needs a new inode: on a file system out of
    /// inodes the open fails, not a round.
    pub(super) fn place_round_probe(&self) -> Result<(), ProviderError> {
        let dir = self.root.join(MARKERS);
        for (i, name) in ROUND_PROBE.iter().enumerate() {
            if self.entry(&dir.join(name))?.is_some() {
                self.probe_at_second.store(i == 1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.layout
            .write_new_file(&dir, ROUND_PROBE[0], b"", false)
            .map_err(|e| {
                ProviderError::io(
                    format!("creating {}", dir.join(ROUND_PROBE[0]).display()),
                    e,
                )
            })
    }

    /// After a round's syncs returned: one journaled change, a `rename` of
    /// the probe file in the provider's own `.volmgr` to its other name
    /// ([`ROUND_PROBE`]), so the file system proves it still commits
    /// changes. An ext4 whose journal a failed commit aborted
    /// (`errors=continue`, or the guest's 6.1 kernel with any `errors=`)
    /// stays `rw` and answers a `syncfs` or an `fsync` with success once
    /// the failed transaction, which held the round's changes, is gone
    /// (nothing left to commit or wait for): they were lost, and only a new
    /// change meets the abort (`EROFS`). The probe runs after the syncs
    /// returned, so the commit of every transaction holding the round's
    /// changes has ended (a sync waits for a running or committing one, or
    /// finds it ended); a failed commit aborts the journal before it ends,
    /// and an aborted journal refuses every later change. So a probe that
    /// succeeds proves those commits did not fail
    /// (`tests/dir_device_errors.rs`, "Aborted journal"). The probe is
    /// never synced: a crash may leave the file under either name, which
    /// the next probe finds by trying the other (one `rename` a round, two
    /// when the file is not where this provider left it); a missing one is
    /// created, which is a journaled change too. Nothing else reads
    /// `.volmgr` itself (the inventory and the start sweep list its
    /// `data`, `snapshot` and `modes`). A `rename`: cheaper than a `mkdir`
    /// and `rmdir`, which allocate and free an inode (measured on ext4:
    /// about 10 µs against 150 µs or more).
    fn still_accepts_changes(&self) -> io::Result<()> {
        let dir = self.root.join(MARKERS);
        let at_second = self.probe_at_second.load(Ordering::Relaxed);
        let (here, there) = if at_second {
            (ROUND_PROBE[1], ROUND_PROBE[0])
        } else {
            (ROUND_PROBE[0], ROUND_PROBE[1])
        };
        let failed = |what: String, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!(
                    "the round's syncs returned, but the file system holding the provider root \
                     refuses changes ({what}: {e}): its journal may have aborted after a failed \
                     commit that held the round's changes"
                ),
            )
        };
        let rename = |from: &str, to: &str| {
            let (from, to) = (dir.join(from), dir.join(to));
            self.layout.rename(&from, &to).map_err(|e| {
                let what = format!("rename {} to {}", from.display(), to.display());
                (e.kind() == io::ErrorKind::NotFound, failed(what, e))
            })
        };
        match rename(here, there) {
            Ok(()) => {
                self.probe_at_second.store(!at_second, Ordering::Relaxed);
                return Ok(());
            }
            Err((false, e)) => return Err(e),
            Err((true, _)) => {}
        }
        // Not where this provider left it: under the other name (a crash,
        // a new provider), or missing (a root's first round).
        match rename(there, here) {
            Ok(()) => Ok(()),
            Err((false, e)) => Err(e),
            Err((true, _)) => self
                .layout
                .write_file(&dir, here, b"", false)
                .map_err(|e| failed(format!("creating {}", dir.join(here).display()), e)),
        }
    }

    /// The `fsync`s of a round, on up to [`Self::ROUND_THREADS`] threads at
    /// once (this one and the provider's [`Workers`](crate::fsutil::Workers),
    /// kept between rounds): under a tenant's write-back each waits behind
    /// a queue of the tenant's writes, and waiting together costs one wait,
    /// not one per path. No order among them: a cut may keep any subset of
    /// a round's changes (as with a `syncfs`), which the verbs' barriers
    /// allow for.
    fn sync_all_changed(&self, paths: &[PathBuf]) -> io::Result<()> {
        let threads = paths.len().min(Self::ROUND_THREADS);
        if threads <= 1 {
            return paths
                .iter()
                .try_for_each(|p| sync_changed(&*self.layout, p));
        }
        let share = |first: usize| -> Vec<PathBuf> {
            paths.iter().skip(first).step_by(threads).cloned().collect()
        };
        let others: Vec<_> = (1..threads)
            .map(|first| {
                let (layout, mine) = (self.layout.clone(), share(first));
                self.round_workers
                    .spawn(move || mine.iter().try_for_each(|p| sync_changed(&*layout, p)))
            })
            .collect();
        // This thread's share, in place (the others' are moved to them).
        let mut result = paths
            .iter()
            .step_by(threads)
            .try_for_each(|p| sync_changed(&*self.layout, p));
        for other in others {
            result = result.and(other.join().and_then(|synced| synced));
        }
        result
    }

    /// Threads a round's `fsync`s run on at most.
    pub(super) const ROUND_THREADS: usize = 8;

    /// Writes the first marker of a new data volume, before its directory
    /// is made: durable on return, with fsyncs; batched, without any (the
    /// shared step makes marker and directory durable together; a power
    /// cut before it may keep the directory without its marker, or the
    /// marker's name without all of its bytes, which
    /// [`Self::clear_create_remnant`] removes at the next open). The marker
    /// is created in place ([`marker::write_first`]).
    pub(super) fn put_marker_first(&self, m: &Marker) -> Result<(), ProviderError> {
        let dir = self.marker_dir(m.kind);
        marker::write_first(&*self.layout, &dir, m, !self.batched)?;
        self.settle_first_marker(&dir, m)
    }

    /// [`Self::put_marker_first`] where no entry has the marker's name (a
    /// new id: the common case, with no lookup first); `false`, nothing
    /// written, if one has.
    pub(super) fn put_marker_new(&self, m: &Marker) -> Result<bool, ProviderError> {
        let dir = self.marker_dir(m.kind);
        if !marker::write_new(&*self.layout, &dir, m, !self.batched)? {
            return Ok(false);
        }
        self.settle_first_marker(&dir, m)?;
        Ok(true)
    }

    /// After a first marker was written: durable on return, `fsync` its
    /// directory; batched, notes for the next round.
    fn settle_first_marker(&self, dir: &Path, m: &Marker) -> Result<(), ProviderError> {
        if !self.batched {
            return self.sync_dir(dir);
        }
        self.changed(&dir.join(&m.volume));
        self.changed(dir);
        Ok(())
    }

    /// What a create of `spec` interrupted by a power cut (its intent
    /// durable, no outcome) may have left that carries no readable marker:
    /// an *empty* directory at the volume's path whose marker is absent or
    /// unreadable is removed, with the unreadable marker; a marker of this
    /// very op (or an unreadable one) without its directory is removed. A
    /// marker of another op, a complete volume (marker and directory: rolled
    /// forward), a directory with entries (foreign, reported) and anything
    /// that is not a directory stay as they are. Idempotent.
    ///
    /// Why an empty directory without its marker is ours to remove: the
    /// journal holds the durable intent to create exactly this path and no
    /// outcome, no one was ever given the path (a create is acknowledged
    /// only after its directory and marker are durable), and `rmdir`
    /// removes nothing but an empty directory.
    pub(super) fn clear_create_remnant(&self, spec: &VolumeSpec<'_>) -> Result<(), ProviderError> {
        check_id(spec.id)?;
        if spec.kind != VolumeKind::Data {
            return Ok(());
        }
        let path = self.path(VolumeKind::Data, spec.id);
        let marker_path = self.marker_dir(VolumeKind::Data).join(spec.id.as_str());
        let readable = match self.marker(VolumeKind::Data, spec.id) {
            Ok(Some(m)) if m.op != spec.op => return Ok(()),
            Ok(m) => m,
            Err(e) => {
                tracing::info!(volume = %spec.id, error = %e, "an interrupted create left an unreadable marker");
                None
            }
        };
        match self.entry(&path)? {
            // This op's marker with its directory: a whole volume, the
            // table rolls it forward.
            Some(Entry::Dir { .. }) if readable.is_some() => return Ok(()),
            Some(Entry::Dir { .. }) => {
                match self.layout.remove_empty_dir(&path) {
                    Ok(()) => {
                        tracing::info!(volume = %spec.id, path = %path.display(), "removed the empty directory of an interrupted create (its marker was lost)");
                    }
                    // Entries in it: not what a create leaves; foreign.
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => return Ok(()),
                    Err(e) => {
                        return Err(ProviderError::io(format!("removing {}", path.display()), e));
                    }
                }
                self.settle_dir(&self.content_dir(VolumeKind::Data))?;
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let removed = self.layout.remove_file(&marker_path).map_err(|e| {
            ProviderError::io(format!("removing marker {}", marker_path.display()), e)
        })?;
        if removed {
            self.settle_dir(&self.marker_dir(VolumeKind::Data))?;
        }
        Ok(())
    }

    /// The marker of `kind` `id`, unless it is stale: a marker whose
    /// directory is absent, of another operation, or one a power cut left
    /// unreadable with no directory (a marker write that never became
    /// durable). The manager asks for a new item only under an id its state
    /// does not hold, so such a marker names nothing anyone owns; it is
    /// replaced. A half-made marker keeps its claim (the caller decides);
    /// an unreadable marker whose directory exists is an error.
    pub(super) fn live_marker(
        &self,
        kind: VolumeKind,
        id: &str,
    ) -> Result<Option<Marker>, ProviderError> {
        let read = self.marker(kind, id);
        let no_dir =
            || -> Result<bool, ProviderError> { Ok(self.entry(&self.path(kind, id))?.is_none()) };
        match read {
            Ok(Some(m)) if m.is_whole() && no_dir()? => {
                tracing::info!(%kind, id, op = %m.op, "replacing the marker of an item whose directory is gone");
                Ok(None)
            }
            Ok(other) => Ok(other),
            Err(e) if no_dir()? => {
                tracing::warn!(%kind, id, error = %e, "replacing an unreadable marker whose directory is absent");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// `fsync` of a path a round must make durable; one that is gone since was
/// removed or renamed, which noted its parent.
fn sync_changed(layout: &dyn Layout, path: &Path) -> io::Result<()> {
    match layout.sync_path(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => {
            other.map_err(|e| io::Error::new(e.kind(), format!("fsync of {}: {e}", path.display())))
        }
    }
}

/// Whether a verb that failed with `e` may have met a failed write (or may
/// have stopped before noting what it changed because of one): an I/O
/// error, a full file system, a failed command or a suspended receive. A
/// refusal (not found, already exists, busy, dependents, a bad setting, a
/// malformed stream, a tree or entry the provider will not copy:
/// `UnsupportedContent`) is decided by checks, not by a write that failed.
pub(super) fn may_hide_a_failed_write(e: &ProviderError) -> bool {
    match e {
        ProviderError::Io { .. }
        | ProviderError::NoSpace { .. }
        | ProviderError::Command { .. }
        | ProviderError::Suspended { .. }
        | ProviderError::OutOfService(_) => true,
        ProviderError::NotFound(_)
        | ProviderError::AlreadyExists(_)
        | ProviderError::Busy { .. }
        | ProviderError::HasDependents { .. }
        | ProviderError::InvalidConfig(_)
        | ProviderError::ForeignRoot { .. }
        | ProviderError::RootInUse { .. }
        | ProviderError::Stream(_)
        | ProviderError::UnsupportedContent(_)
        | ProviderError::CapacityBelowUsage { .. }
        | ProviderError::Other(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::BatchSync;

    #[test]
    fn only_auto_reads_the_dirty_page_cache() {
        let unread = || -> Option<u64> { panic!("a forced batch_sync read /proc/vmstat") };
        assert!(BatchSync::Syncfs.syncfs_reading(unread));
        assert!(!BatchSync::Fsync.syncfs_reading(unread));
        let mut reads = 0;
        let clean = BatchSync::Auto.syncfs_reading(|| {
            reads += 1;
            Some(0)
        });
        assert!(clean, "auto runs a syncfs over a clean page cache");
        assert_eq!(reads, 1, "auto reads the page cache once a round");
        assert!(!BatchSync::Auto.syncfs_reading(|| Some(BatchSync::AUTO_SYNCFS_MAX_DIRTY + 1)));
    }
}
