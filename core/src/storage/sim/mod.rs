//! A simulated file system for power-cut tests: [`SimStorage`].
//!
//! Named as such: it is a test seam, like SQLite's crash VFS, RocksDB's
//! fault-injection file system and redb's crash backend. It implements
//! [`Storage`] and [`StorageFile`] in memory and keeps, for every file, the
//! bytes written (what reads see) apart from the bytes that are durable (what
//! survives a power cut), and for every directory the creates, renames and
//! removals a directory sync has not yet made durable.
//!
//! - `write_all_at`, `set_len`, `allocate` change what reads see at once and
//!   queue the change as not yet durable on the file.
//! - `sync_data` / `sync_all` make all of the file's queued changes durable
//!   (the model does not tell them apart: the size is durable with the data).
//! - `create`, `rename`, `remove_file`, `create_dir_all` and the lock file's
//!   creation change the names reads see at once and queue the change on the
//!   parent directory; `sync_dir` makes that directory's queue durable.
//!   A rename is one atomic change, queued on the destination's directory
//!   (see "atomic rename" below); so is an exchange of two directories
//!   (see "directory exchange" below). A directory is renamed only to a new
//!   name; one with entries moves with its whole tree (see "directory
//!   rename" below).
//! - The directory provider's layout seam adds `create_dir`, `remove_dir`,
//!   `is_dir` and `syncfs` (one sync point that makes everything durable).
//! - [`SimStorage::power_cut`] builds the file system a machine would find
//!   after losing power now: every write not yet durable is dropped, kept or
//!   garbled per 512-byte sector (seeded), and directory changes not yet
//!   synced are forgotten: a renamed file is back under its old name, a
//!   created file is gone (with everything under a created directory), a
//!   removed file is back. Files no name reaches are gone.
//! - `drop_cache` (`posix_fadvise(POSIX_FADV_DONTNEED)`) makes what reads
//!   see of every clean page of a file (one no pending change touches) its
//!   durable bytes: after a failed sync, the bytes the sync dropped from the
//!   write-back queue vanish from reads, as they do from Linux's page cache
//!   once its clean pages are dropped.
//! - Sync points: every `sync_data`, `sync_all` and `sync_dir` call is one,
//!   counted by [`SimStorage::sync_points`]. [`SimStorage::crash_at_sync`]
//!   arms a cut at the Nth: that call fails with `EIO` without making
//!   anything durable, and from then on every mutating call fails with `EIO`
//!   too, so the state is frozen where the power went out; `power_cut` then
//!   gives the image to reopen.
//! - [`SimStorage::second_fault`] arms the second fault of a double
//!   fault, counted from the sync [`SimStorage::fail_sync_at`] failed: a
//!   power cut at the Nth mutating call after it
//!   ([`SecondFault::CrashAt`], frozen like a crash point), or the Nth
//!   rename or exchange after it failing with `EIO` and changing nothing
//!   ([`SecondFault::FailMove`], a move the disk refuses; the process goes
//!   on). Counted from the failure, not from the start, so the second
//!   fault lands at the same place after the first whatever ran before it.
//! - [`SimStorage::set_exchange_supported`] turns the exchange of two
//!   directories off (the directory provider then falls back to renames).
//! - [`SimStorage::set_capacity`] bounds the bytes all files may hold, so a
//!   write or allocation past it fails with `ENOSPC`, like a full disk.
//! - Locks are an in-memory set: a second `lock_exclusive` of the same path
//!   gets `WouldBlock` until the first guard is dropped. A power cut releases
//!   every lock (the process is gone).
//!
//! **Assumption (powersafe overwrite):** a torn sector garbles only the bytes
//! the unfinished write covered in that sector, never bytes of the sector that
//! were already durable (SQLite's `SQLITE_IOCAP_POWERSAFE_OVERWRITE`; true of
//! disks with atomic sector writes). Appending after durable bytes in the same
//! sector therefore never damages them.
//!
//! **Assumption (atomic rename):** a rename, even across directories, is
//! one change: after a cut the entry is under its old name or its new one,
//! never both nor neither, as journaling file systems (ext4 with its
//! journal, xfs, btrfs) commit it in one transaction. It is queued on the
//! destination's directory (a cut keeps or drops it with that directory's
//! other changes, in order); a sync of either directory, or `syncfs`, makes
//! it durable, with the changes queued before it on the destination's
//! directory (the transaction commits after what preceded it).
//!
//! **Directory rename:** renaming a directory that has entries moves its
//! tree as one atomic change on the destination's directory: the entries
//! durable at the time move with it when it becomes durable, and the
//! changes queued inside the tree are queued under the new name from then
//! on. Syncing a directory inside the moved tree first makes the move
//! durable (the journal commits the rename before what follows it). If a
//! cut loses the move, changes under the new name that the cut keeps are
//! lost with it (in a real file system they would stay under the old
//! name): the model loses more than a disk would there. A rename out of
//! the tree queued elsewhere before the move is not followed exactly; the
//! directory provider (the one user) moves trees into its trash only.
//!
//! **Directory exchange** ([`SimStorage::exchange`], the directory
//! provider's `renameat2(RENAME_EXCHANGE)`): the two names swap their
//! trees in one atomic change, queued on the second name's directory; a
//! sync of either name's directory, or `syncfs`, makes it durable (like a
//! rename, a journaling file system commits it in one transaction). After
//! a cut both names hold their old trees or both the swapped ones. Only
//! trees whose names are all durable are exchanged (so no change queued
//! inside either tree has to follow it): the model's assumption, which the
//! provider meets (it runs `syncfs` before its exchange). One exception: a
//! tree whose only changes not yet durable are queued on the second
//! name's directory (an exchange of the same two names that a failure
//! undoes at once) may be exchanged again: the change queues behind the
//! first, so a cut keeps neither, the first, or both.
//!
//! Paths are used as given (no `..` resolution); a path without a parent, or
//! with an empty one, lives in the root directory (`/`, `.` or the empty
//! path), which always exists.
//!
//! - [`SimStorage::fingerprint`] is the state as a later run can observe
//!   it, as one comparable value ([`Fingerprint`]): two power cuts that
//!   left the same image have equal fingerprints, so a sweep reopens and
//!   checks it once.
//!
//! Files: `policy` (what a cut does: [`CutPolicy`], [`SplitMix64`]), `fs`
//! (the state behind the lock and the cut itself), `file` (open files and
//! lock guards), `fingerprint` ([`Fingerprint`]), this module
//! ([`SimStorage`] and its [`Storage`] calls).

mod file;
mod fingerprint;
mod fs;
mod policy;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use self::file::{SimFile, SimLock};
pub use self::fingerprint::Fingerprint;
use self::fs::{Fs, Inode, Node, is_root, not_found, parent_of};
pub use self::policy::{CutPolicy, DataLoss, DirLoss, PAGE_LEN, SECTOR_LEN, SplitMix64};
use super::{LockGuard, Storage, StorageFile, Trusted};

/// The second fault of a double fault ([`SimStorage::second_fault`]),
/// counted from the sync armed by [`SimStorage::fail_sync_at`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecondFault {
    /// The power goes out at the Nth mutating call after the failed sync
    /// (1: the first one; a sync is a mutating call): that call fails with
    /// `EIO` and changes nothing, and so does every later one (the state
    /// is frozen, as at [`SimStorage::crash_at_sync`]).
    CrashAt(u64),
    /// The Nth move after the failed sync (a `rename` or an `exchange`
    /// that would succeed; 1: the first one) fails with `EIO` and changes
    /// nothing; nothing freezes and later moves succeed
    /// ([`SimStorage::failed_move`] says which one failed).
    FailMove(u64),
}

/// The simulated file system. Clones share one state; [`SimStorage::power_cut`]
/// makes an independent one.
#[derive(Clone, Default)]
pub struct SimStorage {
    fs: Arc<Mutex<Fs>>,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fs = self.lock();
        f.debug_struct("SimStorage")
            .field("names", &fs.names.len())
            .field("sync_points", &fs.sync_points)
            .field("frozen", &fs.frozen)
            .finish()
    }
}

impl SimStorage {
    /// An empty file system (only the root directory).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Fs> {
        self.fs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sync points (`sync_data`, `sync_all`, `sync_dir` calls) so far,
    /// including the one a crash fired at.
    pub fn sync_points(&self) -> u64 {
        self.lock().sync_points
    }

    /// Arms a cut at sync point `n` (1-based, counted from the start of this
    /// storage): that call fails with `EIO` and makes nothing durable, and
    /// every later mutating call fails too. `None` disarms.
    pub fn crash_at_sync(&self, n: Option<u64>) {
        self.lock().crash_at = n;
    }

    /// Makes sync point `n` fail with `EIO`. For a file, the way Linux reports
    /// a write-back error (the "fsyncgate" semantics PostgreSQL learned in
    /// 2018): what the file had not yet made durable stays visible to reads
    /// but is dropped from the write-back queue, so no later sync makes it
    /// durable and a power cut reverts it. For a directory the changes stay
    /// queued (a later directory sync may still make them durable). Nothing
    /// freezes: the process may go on, and reopen, in the same boot. `None`
    /// disarms.
    pub fn fail_sync_at(&self, n: Option<u64>) {
        self.lock().fail_sync_at = n;
    }

    /// Arms the second fault of a double fault (see [`SecondFault`]); it
    /// strikes only after the sync armed by [`SimStorage::fail_sync_at`]
    /// failed, counted from that failure. Cleared by
    /// [`SimStorage::restart`] and [`SimStorage::power_cut`] (the faulty
    /// disk replaced, or the fault gone with the boot). `None` disarms.
    pub fn second_fault(&self, fault: Option<SecondFault>) {
        self.lock().second_fault = fault;
    }

    /// The move (from, to) a [`SecondFault::FailMove`] failed, if it struck.
    pub fn failed_move(&self) -> Option<(PathBuf, PathBuf)> {
        self.lock().failed_move.clone()
    }

    /// True once an armed crash point was reached (the state is frozen).
    pub fn crashed(&self) -> bool {
        self.lock().frozen
    }

    /// Freezes the state now, as if the power went out between two calls.
    pub fn freeze(&self) {
        self.lock().frozen = true;
    }

    /// Bounds the bytes all files together may hold (`None`: unbounded).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Makes [`SimStorage::exchange`] fail as unsupported
    /// (`ErrorKind::Unsupported`, like `renameat2(RENAME_EXCHANGE)` on a
    /// file system without it), or supported again; kept by
    /// [`SimStorage::restart`] and [`SimStorage::power_cut`].
    pub fn set_exchange_supported(&self, supported: bool) {
        self.lock().no_exchange = !supported;
    }

    /// Makes `drop_cache` keep every page (`true`), like a file system
    /// that ignores `POSIX_FADV_DONTNEED` or pages another process pins at
    /// that instant, or drop clean pages again (`false`, the default); kept
    /// by [`SimStorage::restart`] and [`SimStorage::power_cut`]. What tests
    /// the defences that do not rely on the advice.
    pub fn set_cache_drops_ignored(&self, ignored: bool) {
        self.lock().cache_drops_ignored = ignored;
    }

    /// What a later run can observe of this file system now (see
    /// [`Fingerprint`]): equal for two states exactly when they are the
    /// same; the power-cut sweeps check one image once however many cuts
    /// left it.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.lock())
    }

    /// Bytes all files hold now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// The file system after a power cut now: random sectors, unsynced
    /// directory changes forgotten. Deterministic for a given state and seed.
    pub fn power_cut(&self, seed: u64) -> SimStorage {
        self.power_cut_with(seed, CutPolicy::RANDOM)
    }

    /// Like [`SimStorage::power_cut`] with an explicit policy. This storage is
    /// frozen afterwards (whatever still runs on it fails with `EIO`); the
    /// returned one is independent, unlocked, with every byte durable.
    pub fn power_cut_with(&self, seed: u64, policy: CutPolicy) -> SimStorage {
        let mut fs = self.lock();
        fs.frozen = true;
        SimStorage {
            fs: Arc::new(Mutex::new(fs.cut(seed, policy))),
        }
    }

    /// The file system after the process dies (kill -9) without a power
    /// loss: an independent copy where everything stays as it is, visible
    /// and durable bytes and the queues of changes not yet durable (the page
    /// cache survives the process), with every lock released. This storage is
    /// frozen afterwards, so what still runs on it changes nothing. A later
    /// [`SimStorage::power_cut`] of the copy loses what no one synced.
    pub fn restart(&self) -> SimStorage {
        let mut fs = self.lock();
        fs.frozen = true;
        SimStorage {
            fs: Arc::new(Mutex::new(Fs {
                names: fs.names.clone(),
                durable_names: fs.durable_names.clone(),
                dir_pending: fs.dir_pending.clone(),
                next_change: fs.next_change,
                moves: fs.moves.clone(),
                inodes: fs.inodes.clone(),
                next_ino: fs.next_ino,
                locks: HashMap::new(),
                next_lock_token: fs.next_lock_token,
                sync_points: 0,
                crash_at: None,
                fail_sync_at: None,
                second_fault: None,
                since_failure: None,
                failed_move: None,
                frozen: false,
                capacity: fs.capacity,
                no_exchange: fs.no_exchange,
                cache_drops_ignored: fs.cache_drops_ignored,
            })),
        }
    }

    /// The bytes a read of `path` would see now, if it is a file.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.lock();
        match fs.names.get(path)? {
            Node::File(ino) => Some(fs.inodes[ino].data.clone()),
            Node::Dir(_) => None,
        }
    }

    /// Every path (files and directories) reads see now, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// What `path` is now: `None` if absent, `Some(true)` for a directory,
    /// `Some(false)` for a file (the `lstat` of the directory provider's
    /// layout seam).
    pub fn is_dir(&self, path: &Path) -> Option<bool> {
        let fs = self.lock();
        if is_root(path) {
            return Some(true);
        }
        fs.names.get(path).map(|n| matches!(n, Node::Dir(_)))
    }

    /// The inode number of `path` and whether it is a directory (`None` if
    /// absent; the root has none): a directory keeps its number across
    /// renames and exchanges, like a real one (the `lstat` device and inode
    /// of the directory provider's layout seam).
    pub fn identity(&self, path: &Path) -> Option<(bool, u64)> {
        match self.lock().names.get(path)? {
            Node::Dir(ino) => Some((true, *ino)),
            Node::File(ino) => Some((false, *ino)),
        }
    }

    /// `renameat2(RENAME_EXCHANGE)` of two directories: one atomic change
    /// (see "directory exchange" in the module documentation). Each tree
    /// must be durable as a whole (the simulation exchanges only trees a
    /// `syncfs` has settled, as the directory provider's receive does), or
    /// settled but for changes queued on `b`'s directory (an exchange of
    /// the same names not yet durable: the receive's exchange back).
    pub fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_live("exchange")?;
        if fs.no_exchange {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated file system does not support exchanging directories",
            ));
        }
        for p in [a, b] {
            match fs.names.get(p) {
                Some(Node::Dir(_)) => {}
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!(
                            "{} is a file (the simulation exchanges directories)",
                            p.display()
                        ),
                    ));
                }
                None => return Err(not_found(p)),
            }
        }
        if a.starts_with(b) || b.starts_with(a) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} and {} are nested", a.display(), b.display()),
            ));
        }
        // An exchange is queued on `b`'s directory: a tree whose only
        // changes not yet durable wait there (an exchange of the same
        // names, undone) is settled enough.
        let queue = parent_of(b);
        for p in [a, b] {
            if !fs.is_durable_tree(p) && !fs.is_settled_tree_but_for(p, &queue) {
                return Err(io::Error::other(format!(
                    "{} has changes not yet durable (the simulation exchanges settled trees only)",
                    p.display()
                )));
            }
        }
        fs.check_move(a, b)?;
        fs.exchange_trees(a, b);
        Ok(())
    }

    /// `mkdir`: creates one directory (its parent must exist); an existing
    /// name is `AlreadyExists`. Queued on the parent like any creation.
    pub fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_live("create_dir")?;
        if is_root(path) || fs.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let parent = parent_of(path);
        if !fs.dir_exists(&parent) {
            return Err(not_found(&parent));
        }
        fs.next_ino += 1;
        let ino = fs.next_ino;
        fs.change(parent, vec![(path.to_path_buf(), Some(Node::Dir(ino)))]);
        Ok(())
    }

    /// `rmdir`: removes an empty directory (`DirectoryNotEmpty` otherwise).
    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_live("remove_dir")?;
        match fs.names.get(path) {
            Some(Node::Dir(_)) => {}
            Some(Node::File(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is a file", path.display()),
                ));
            }
            None => return Err(not_found(path)),
        }
        if fs.has_children(path) {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{} is not empty", path.display()),
            ));
        }
        fs.change(parent_of(path), vec![(path.to_path_buf(), None)]);
        Ok(())
    }

    /// `syncfs`: one sync point that makes everything durable, every file's
    /// pending changes and every directory's queue. Armed to fail (see
    /// [`SimStorage::fail_sync_at`]), it drops every file's pending changes
    /// from the write-back queue and leaves the directory queues queued.
    pub fn syncfs(&self) -> io::Result<()> {
        let mut fs = self.lock();
        if !fs.sync_point("syncfs")? {
            for inode in fs.inodes.values_mut() {
                inode.pending.clear();
            }
            return Err(io::Error::other(
                "simulated write-back error: syncfs (EIO; the unsynced file changes are dropped)",
            ));
        }
        fs.make_all_durable();
        Ok(())
    }

    fn file(&self, ino: u64) -> Box<dyn StorageFile> {
        Box::new(SimFile {
            fs: self.fs.clone(),
            ino,
        })
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        let mut missing = Vec::new();
        let mut p = path.to_path_buf();
        while !is_root(&p) {
            match fs.names.get(&p) {
                Some(Node::Dir(_)) => break,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a file", p.display()),
                    ));
                }
                None => missing.push(p.clone()),
            }
            p = parent_of(&p);
        }
        if !missing.is_empty() {
            fs.check_live("create_dir_all")?;
        }
        for dir in missing.into_iter().rev() {
            let parent = parent_of(&dir);
            fs.next_ino += 1;
            let ino = fs.next_ino;
            fs.change(parent, vec![(dir, Some(Node::Dir(ino)))]);
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let fs = self.lock();
        if !fs.dir_exists(path) {
            return Err(not_found(path));
        }
        Ok(fs
            .names
            .keys()
            .filter(|p| parent_of(p) == path)
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let ino = match self.lock().names.get(path) {
            Some(Node::File(ino)) => *ino,
            Some(Node::Dir(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory", path.display()),
                ));
            }
            None => return Err(not_found(path)),
        };
        Ok(self.file(ino))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let ino = {
            let mut fs = self.lock();
            fs.check_live("create")?;
            let parent = parent_of(path);
            if !fs.dir_exists(&parent) {
                return Err(not_found(&parent));
            }
            match fs.names.get(path).copied() {
                Some(Node::File(ino)) => {
                    fs.set_len(ino, 0)?;
                    ino
                }
                Some(Node::Dir(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::IsADirectory,
                        format!("{} is a directory", path.display()),
                    ));
                }
                None => {
                    fs.next_ino += 1;
                    let ino = fs.next_ino;
                    fs.inodes.insert(ino, Inode::default());
                    fs.change(parent, vec![(path.to_path_buf(), Some(Node::File(ino)))]);
                    ino
                }
            }
        };
        Ok(self.file(ino))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_live("rename")?;
        let node = match fs.names.get(from).copied() {
            Some(n) => n,
            None => return Err(not_found(from)),
        };
        if from == to {
            return Ok(());
        }
        if matches!(node, Node::Dir(_)) && to.starts_with(from) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} cannot move into itself ({})",
                    from.display(),
                    to.display()
                ),
            ));
        }
        let to_dir = parent_of(to);
        if !fs.dir_exists(&to_dir) {
            return Err(not_found(&to_dir));
        }
        match (node, fs.names.get(to)) {
            (Node::File(_), Some(Node::Dir(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory", to.display()),
                ));
            }
            (Node::Dir(_), Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists (the simulation renames a directory to a new name only)",
                        to.display()
                    ),
                ));
            }
            _ => {}
        }
        fs.check_move(from, to)?;
        if matches!(node, Node::Dir(_)) && fs.has_children(from) {
            fs.move_tree(from, to);
            return Ok(());
        }
        // One change on the destination's directory, whatever the source's
        // (see "atomic rename" in the module documentation).
        fs.change(
            to_dir,
            vec![(to.to_path_buf(), Some(node)), (from.to_path_buf(), None)],
        );
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_live("remove_file")?;
        match fs.names.get(path) {
            Some(Node::File(_)) => {}
            Some(Node::Dir(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory", path.display()),
                ));
            }
            None => return Err(not_found(path)),
        }
        fs.change(parent_of(path), vec![(path.to_path_buf(), None)]);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        if !fs.dir_exists(path) {
            return Err(not_found(path));
        }
        if !fs.sync_point("sync_dir")? {
            // Directory changes are metadata: they stay queued, and a later
            // directory sync may still make them durable.
            return Err(io::Error::other(
                "simulated write-back error: sync_dir (EIO)",
            ));
        }
        fs.sync_dir_changes(path);
        Ok(())
    }

    /// The simulation models no owners or modes: everything passes.
    fn check_trusted(&self, _path: &Path, _entry: Trusted) -> io::Result<()> {
        Ok(())
    }

    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        let token = {
            let mut fs = self.lock();
            fs.check_live("lock")?;
            if fs.locks.contains_key(path) {
                let current = match fs.names.get(path) {
                    Some(Node::File(ino)) => String::from_utf8_lossy(&fs.inodes[ino].data)
                        .trim()
                        .to_owned(),
                    _ => String::new(),
                };
                return Err(io::Error::new(io::ErrorKind::WouldBlock, current));
            }
            fs.next_lock_token += 1;
            let token = fs.next_lock_token;
            fs.locks.insert(path.to_path_buf(), token);
            token
        };
        let file = match self.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.create(path)?,
            Err(e) => return Err(e),
        };
        file.set_len(0)?;
        file.write_all_at(holder.as_bytes(), 0)?;
        Ok(Box::new(SimLock {
            fs: self.fs.clone(),
            path: path.to_path_buf(),
            token,
        }))
    }
}
