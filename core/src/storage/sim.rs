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
//!   A rename within one directory is one atomic change.
//! - [`SimStorage::power_cut`] builds the file system a machine would find
//!   after losing power now: every write not yet durable is dropped, kept or
//!   garbled per 512-byte sector (seeded), and directory changes not yet
//!   synced are forgotten: a renamed file is back under its old name, a
//!   created file is gone (with everything under a created directory), a
//!   removed file is back. Files no name reaches are gone.
//! - Sync points: every `sync_data`, `sync_all` and `sync_dir` call is one,
//!   counted by [`SimStorage::sync_points`]. [`SimStorage::crash_at_sync`]
//!   arms a cut at the Nth: that call fails with `EIO` without making
//!   anything durable, and from then on every mutating call fails with `EIO`
//!   too, so the state is frozen where the power went out; `power_cut` then
//!   gives the image to reopen.
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
//! Paths are used as given (no `..` resolution); a path without a parent, or
//! with an empty one, lives in the root directory (`/`, `.` or the empty
//! path), which always exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{LockGuard, Storage, StorageFile};

/// Size of the unit a power cut drops, keeps or garbles.
pub const SECTOR_LEN: u64 = 512;

/// A small seeded generator (splitmix64): reproducible power cuts without a
/// dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the bias of the modulo is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "empty range");
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// What a power cut does to file bytes not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLoss {
    /// Every unsynced sector is lost (the disk wrote nothing).
    DropAll,
    /// Every unsynced sector made it (the disk wrote everything, but the sync
    /// never returned).
    KeepAll,
    /// Each unsynced sector piece is dropped, kept or garbled (one in three
    /// each), and each unsynced size change is kept or dropped.
    Random,
}

/// What a power cut does to directory changes not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirLoss {
    /// All forgotten.
    ForgetAll,
    /// All kept (a file system that happened to commit its metadata).
    KeepAll,
    /// A random prefix of each directory's changes is kept, in order (a
    /// metadata journal that committed some of them).
    RandomPrefix,
}

/// How [`SimStorage::power_cut_with`] treats what is not durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPolicy {
    pub data: DataLoss,
    pub dirs: DirLoss,
}

impl CutPolicy {
    /// The default cut: random sectors, unsynced directory changes forgotten.
    pub const RANDOM: CutPolicy = CutPolicy {
        data: DataLoss::Random,
        dirs: DirLoss::ForgetAll,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

/// A change to a file not yet durable.
#[derive(Debug, Clone)]
enum FileChange {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<FileChange>,
}

/// One atomic directory change: entries set (`Some`) or removed (`None`).
type DirChange = Vec<(PathBuf, Option<Node>)>;

#[derive(Debug, Default)]
struct Fs {
    /// The names reads see.
    names: BTreeMap<PathBuf, Node>,
    /// The names a power cut keeps (before removing unreachable ones).
    durable_names: BTreeMap<PathBuf, Node>,
    /// Per directory, changes a directory sync has not yet made durable.
    dir_pending: BTreeMap<PathBuf, Vec<DirChange>>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Locked paths and the token of the guard that holds each.
    locks: HashMap<PathBuf, u64>,
    next_lock_token: u64,
    sync_points: u64,
    crash_at: Option<u64>,
    fail_sync_at: Option<u64>,
    frozen: bool,
    capacity: Option<u64>,
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("/") || path == Path::new(".")
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!(
        "simulated power cut: {what} at or after the crash point (EIO)"
    ))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl Fs {
    fn check_live(&self, what: &str) -> io::Result<()> {
        if self.frozen {
            return Err(eio(what));
        }
        Ok(())
    }

    /// Counts a sync point; `Ok(false)` when it is the one armed to fail
    /// the way Linux does after a write-back error (see
    /// [`SimStorage::fail_sync_at`]): the caller forgets what was pending.
    fn sync_point(&mut self, what: &str) -> io::Result<bool> {
        self.check_live(what)?;
        self.sync_points += 1;
        if self.crash_at == Some(self.sync_points) {
            self.frozen = true;
            return Err(eio(what));
        }
        Ok(self.fail_sync_at != Some(self.sync_points))
    }

    fn dir_exists(&self, path: &Path) -> bool {
        is_root(path) || self.names.get(path) == Some(&Node::Dir)
    }

    fn change(&mut self, dir: PathBuf, change: DirChange) {
        for (path, node) in &change {
            match node {
                Some(n) => {
                    self.names.insert(path.clone(), *n);
                }
                None => {
                    self.names.remove(path);
                }
            }
        }
        self.dir_pending.entry(dir).or_default().push(change);
    }

    /// Bytes held by files some name reaches (an unlinked file's bytes are
    /// free, even while it is open: close enough for a full-disk test).
    fn used(&self) -> u64 {
        let inos: BTreeSet<u64> = self
            .names
            .values()
            .filter_map(|n| match n {
                Node::File(ino) => Some(*ino),
                Node::Dir => None,
            })
            .collect();
        inos.iter().map(|i| self.inodes[i].data.len() as u64).sum()
    }

    /// Refuses growth from `old_len` to `new_len` bytes past the capacity.
    fn charge(&self, old_len: usize, new_len: usize) -> io::Result<()> {
        if new_len > old_len
            && let Some(cap) = self.capacity
            && self.used() + (new_len - old_len) as u64 > cap
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("open files keep their inode")
    }

    fn write(&mut self, ino: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_live("write")?;
        let end = offset as usize + buf.len();
        let old_len = self.inode(ino).data.len();
        self.charge(old_len, old_len.max(end))?;
        let inode = self.inode(ino);
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[offset as usize..end].copy_from_slice(buf);
        inode.pending.push(FileChange::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn set_len(&mut self, ino: u64, len: u64) -> io::Result<()> {
        self.check_live("set_len")?;
        let old_len = self.inode(ino).data.len();
        self.charge(old_len, len as usize)?;
        let inode = self.inode(ino);
        inode.data.resize(len as usize, 0);
        inode.pending.push(FileChange::SetLen(len));
        Ok(())
    }

    fn sync_file(&mut self, ino: u64, what: &str) -> io::Result<()> {
        let proceed = self.sync_point(what)?;
        let inode = self.inode(ino);
        if !proceed {
            // The changes stay visible but will never be written back.
            inode.pending.clear();
            return Err(io::Error::other(format!(
                "simulated write-back error: {what} (EIO; the unsynced changes are dropped)"
            )));
        }
        // The pending changes, applied to the durable bytes (not a copy of
        // what reads see: changes an earlier failed sync dropped stay lost).
        let mut unused = SplitMix64::new(0);
        inode.durable = cut_file(inode, &mut unused, DataLoss::KeepAll);
        inode.pending.clear();
        Ok(())
    }

    /// The names and file bytes a power cut leaves.
    fn cut(&self, seed: u64, policy: CutPolicy) -> Fs {
        let mut rng = SplitMix64::new(seed);
        let mut names = self.durable_names.clone();
        for changes in self.dir_pending.values() {
            let keep = match policy.dirs {
                DirLoss::ForgetAll => 0,
                DirLoss::KeepAll => changes.len(),
                DirLoss::RandomPrefix => rng.below(changes.len() as u64 + 1) as usize,
            };
            for change in &changes[..keep] {
                for (path, node) in change {
                    match node {
                        Some(n) => {
                            names.insert(path.clone(), *n);
                        }
                        None => {
                            names.remove(path);
                        }
                    }
                }
            }
        }
        // Everything under a directory that did not survive is gone.
        let reachable = |path: &Path, names: &BTreeMap<PathBuf, Node>| {
            let mut p = parent_of(path);
            while !is_root(&p) {
                if names.get(&p) != Some(&Node::Dir) {
                    return false;
                }
                p = parent_of(&p);
            }
            true
        };
        let names: BTreeMap<PathBuf, Node> = names
            .iter()
            .filter(|(p, _)| reachable(p, &names))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        let live: BTreeSet<u64> = names
            .values()
            .filter_map(|n| match n {
                Node::File(ino) => Some(*ino),
                Node::Dir => None,
            })
            .collect();
        let mut inodes = HashMap::new();
        // Sorted, so the generator is consumed in a reproducible order.
        for ino in &live {
            let inode = &self.inodes[ino];
            let bytes = cut_file(inode, &mut rng, policy.data);
            inodes.insert(
                *ino,
                Inode {
                    data: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                },
            );
        }
        Fs {
            durable_names: names.clone(),
            names,
            dir_pending: BTreeMap::new(),
            inodes,
            next_ino: self.next_ino,
            locks: HashMap::new(),
            next_lock_token: self.next_lock_token,
            sync_points: 0,
            crash_at: None,
            fail_sync_at: None,
            frozen: false,
            capacity: self.capacity,
        }
    }
}

/// A file's bytes after a power cut: its durable bytes, then each change
/// not yet durable dropped, kept or garbled per sector piece.
fn cut_file(inode: &Inode, rng: &mut SplitMix64, policy: DataLoss) -> Vec<u8> {
    let mut bytes = inode.durable.clone();
    for change in &inode.pending {
        match change {
            FileChange::SetLen(len) => {
                let keep = match policy {
                    DataLoss::DropAll => false,
                    DataLoss::KeepAll => true,
                    DataLoss::Random => rng.below(2) == 0,
                };
                if keep {
                    bytes.resize(*len as usize, 0);
                }
            }
            FileChange::Write {
                offset,
                bytes: written,
            } => {
                let mut pos = *offset;
                let end = offset + written.len() as u64;
                while pos < end {
                    let piece_end = ((pos / SECTOR_LEN + 1) * SECTOR_LEN).min(end);
                    let piece = &written[(pos - offset) as usize..(piece_end - offset) as usize];
                    let choice = match policy {
                        DataLoss::DropAll => 0,
                        DataLoss::KeepAll => 1,
                        DataLoss::Random => rng.below(3),
                    };
                    if choice != 0 {
                        if bytes.len() < piece_end as usize {
                            bytes.resize(piece_end as usize, 0);
                        }
                        let target = &mut bytes[pos as usize..piece_end as usize];
                        if choice == 1 {
                            target.copy_from_slice(piece);
                        } else {
                            rng.fill(target);
                        }
                    }
                    pos = piece_end;
                }
            }
        }
    }
    bytes
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
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
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
                inodes: fs.inodes.clone(),
                next_ino: fs.next_ino,
                locks: HashMap::new(),
                next_lock_token: fs.next_lock_token,
                sync_points: 0,
                crash_at: None,
                fail_sync_at: None,
                frozen: false,
                capacity: fs.capacity,
            })),
        }
    }

    /// The bytes a read of `path` would see now, if it is a file.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.lock();
        match fs.names.get(path)? {
            Node::File(ino) => Some(fs.inodes[ino].data.clone()),
            Node::Dir => None,
        }
    }

    /// Every path (files and directories) reads see now, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
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
                Some(Node::Dir) => break,
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
            fs.change(parent, vec![(dir, Some(Node::Dir))]);
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
            Some(Node::Dir) => {
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
                Some(Node::Dir) => {
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
            Some(n @ Node::File(_)) => n,
            Some(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the simulation renames files only",
                ));
            }
            None => return Err(not_found(from)),
        };
        if from == to {
            return Ok(());
        }
        let (from_dir, to_dir) = (parent_of(from), parent_of(to));
        if !fs.dir_exists(&to_dir) {
            return Err(not_found(&to_dir));
        }
        if fs.names.get(to) == Some(&Node::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", to.display()),
            ));
        }
        if from_dir == to_dir {
            fs.change(
                from_dir,
                vec![(to.to_path_buf(), Some(node)), (from.to_path_buf(), None)],
            );
        } else {
            fs.change(to_dir, vec![(to.to_path_buf(), Some(node))]);
            fs.change(from_dir, vec![(from.to_path_buf(), None)]);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_live("remove_file")?;
        match fs.names.get(path) {
            Some(Node::File(_)) => {}
            Some(Node::Dir) => {
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
        let changes = fs.dir_pending.remove(path).unwrap_or_default();
        for change in changes {
            for (p, node) in change {
                match node {
                    Some(n) => {
                        fs.durable_names.insert(p, n);
                    }
                    None => {
                        fs.durable_names.remove(&p);
                    }
                }
            }
        }
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

/// Releases its lock on drop, unless a power cut already released it (the
/// token then no longer matches).
struct SimLock {
    fs: Arc<Mutex<Fs>>,
    path: PathBuf,
    token: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut fs = self.fs.lock().unwrap_or_else(|e| e.into_inner());
        if fs.locks.get(&self.path) == Some(&self.token) {
            fs.locks.remove(&self.path);
        }
    }
}

/// An open file of a [`SimStorage`]: it follows its inode across renames
/// and removals, like a file descriptor.
struct SimFile {
    fs: Arc<Mutex<Fs>>,
    ino: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile").field("ino", &self.ino).finish()
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Fs> {
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().inode(self.ino).data.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut fs = self.lock();
        let data = &fs.inode(self.ino).data;
        let end = offset as usize + buf.len();
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        buf.copy_from_slice(&data[offset as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().write(self.ino, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.lock().sync_file(self.ino, "sync_data")
    }

    fn sync_all(&self) -> io::Result<()> {
        self.lock().sync_file(self.ino, "sync_all")
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.lock().set_len(self.ino, len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut fs = self.lock();
        let current = fs.inode(self.ino).data.len() as u64;
        if len <= current {
            return fs.check_live("allocate");
        }
        fs.set_len(self.ino, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(s: &SimStorage, path: &str, bytes: &[u8]) -> Box<dyn StorageFile> {
        let f = s.create(Path::new(path)).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    #[test]
    fn synced_bytes_and_synced_names_survive_a_power_cut() {
        let s = SimStorage::new();
        s.create_dir_all(Path::new("/d")).unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        let f = write_file(&s, "/d/a", &[7u8; 1500]);
        f.sync_data().unwrap();
        s.sync_dir(Path::new("/d")).unwrap();
        for seed in 0..20 {
            let after = s.power_cut(seed);
            assert_eq!(after.read(Path::new("/d/a")).unwrap(), vec![7u8; 1500]);
        }
    }

    #[test]
    fn unsynced_create_vanishes_and_unsynced_directory_takes_its_files_along() {
        let s = SimStorage::new();
        s.create_dir_all(Path::new("/d")).unwrap();
        let f = write_file(&s, "/d/a", b"x");
        f.sync_all().unwrap();
        s.sync_dir(Path::new("/d")).unwrap();
        // "/d" itself was never made durable in "/".
        let after = s.power_cut(1);
        assert!(after.paths().is_empty(), "{:?}", after.paths());
    }

    #[test]
    fn unsynced_rename_reverts_and_unsynced_remove_reappears() {
        let s = SimStorage::new();
        let a = write_file(&s, "/a", b"old");
        a.sync_all().unwrap();
        let b = write_file(&s, "/b", b"gone");
        b.sync_all().unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        s.rename(Path::new("/a"), Path::new("/c")).unwrap();
        s.remove_file(Path::new("/b")).unwrap();
        assert_eq!(s.paths(), vec![PathBuf::from("/c")]);
        let after = s.power_cut(3);
        assert_eq!(after.read(Path::new("/a")).unwrap(), b"old");
        assert_eq!(after.read(Path::new("/b")).unwrap(), b"gone");
        assert!(after.read(Path::new("/c")).is_none());
        let kept = s.power_cut_with(
            3,
            CutPolicy {
                data: DataLoss::DropAll,
                dirs: DirLoss::KeepAll,
            },
        );
        assert_eq!(kept.paths(), vec![PathBuf::from("/c")]);
    }

    #[test]
    fn unsynced_sectors_are_dropped_kept_or_garbled_independently() {
        let s = SimStorage::new();
        let f = write_file(&s, "/f", &[0u8; 2048]);
        f.sync_all().unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        f.write_all_at(&[1u8; 2048], 0).unwrap();
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let bytes = s.power_cut(seed).read(Path::new("/f")).unwrap();
            for sector in bytes.chunks(SECTOR_LEN as usize) {
                seen.insert(if sector.iter().all(|&b| b == 0) {
                    "dropped"
                } else if sector.iter().all(|&b| b == 1) {
                    "kept"
                } else {
                    "garbled"
                });
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        // Same state, same seed: same image.
        assert_eq!(
            s.power_cut(9).read(Path::new("/f")),
            s.power_cut(9).read(Path::new("/f"))
        );
    }

    #[test]
    fn crash_point_fails_that_sync_and_freezes_everything_after() {
        let s = SimStorage::new();
        s.crash_at_sync(Some(2));
        let f = write_file(&s, "/f", b"one");
        f.sync_data().unwrap();
        f.write_all_at(b"two", 3).unwrap();
        assert!(f.sync_data().is_err());
        assert!(s.crashed());
        assert!(f.write_all_at(b"x", 0).is_err());
        assert!(s.create(Path::new("/g")).is_err());
        assert_eq!(s.sync_points(), 2);
        // The name of "/f" was never synced: it is gone after the cut.
        assert!(s.power_cut(0).paths().is_empty());
    }

    #[test]
    fn a_failed_sync_drops_its_changes_for_good_like_linux_write_back_errors() {
        let s = SimStorage::new();
        let f = write_file(&s, "/f", &[0u8; 1024]);
        f.sync_all().unwrap();
        s.sync_dir(Path::new("/")).unwrap();
        s.fail_sync_at(Some(3));
        f.write_all_at(&[1u8; 512], 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(!s.crashed(), "the storage goes on");
        f.write_all_at(&[2u8; 512], 512).unwrap();
        f.sync_data().unwrap();
        let mut seen = vec![0u8; 1024];
        f.read_exact_at(&mut seen, 0).unwrap();
        assert_eq!(
            &seen[..512],
            &[1u8; 512],
            "reads still see the dropped write"
        );
        let after = s.power_cut(5).read(Path::new("/f")).unwrap();
        assert_eq!(&after[..512], &[0u8; 512], "a later sync did not save it");
        assert_eq!(&after[512..], &[2u8; 512]);
    }

    #[test]
    fn a_restart_keeps_what_is_not_durable_until_a_power_cut() {
        let s = SimStorage::new();
        let f = write_file(&s, "/f", b"unsynced");
        let _guard = s.lock_exclusive(Path::new("/LOCK"), "pid 1").unwrap();
        let after = s.restart();
        assert!(s.crashed(), "the dead process's storage is frozen");
        assert!(f.write_all_at(b"x", 0).is_err());
        assert_eq!(after.read(Path::new("/f")).unwrap(), b"unsynced");
        drop(after.lock_exclusive(Path::new("/LOCK"), "pid 2").unwrap());
        let cut = after.power_cut_with(
            0,
            CutPolicy {
                data: DataLoss::DropAll,
                dirs: DirLoss::ForgetAll,
            },
        );
        assert!(cut.read(Path::new("/f")).is_none());
    }

    #[test]
    fn capacity_turns_growth_into_enospc() {
        let s = SimStorage::new();
        s.set_capacity(Some(1000));
        let f = s.create(Path::new("/f")).unwrap();
        f.write_all_at(&[1u8; 900], 0).unwrap();
        let err = f.allocate(2000).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        f.write_all_at(&[2u8; 100], 0).unwrap();
        assert_eq!(s.used_bytes(), 900);
        s.remove_file(Path::new("/f")).unwrap();
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn lock_is_exclusive_until_dropped_and_released_by_a_power_cut() {
        let s = SimStorage::new();
        let guard = s.lock_exclusive(Path::new("/LOCK"), "pid 1").unwrap();
        let err = s.lock_exclusive(Path::new("/LOCK"), "pid 2").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(err.to_string(), "pid 1");
        drop(guard);
        let guard = s.lock_exclusive(Path::new("/LOCK"), "pid 3").unwrap();
        let after = s.power_cut(0);
        let held = after.lock_exclusive(Path::new("/LOCK"), "pid 4").unwrap();
        drop(guard);
        let err = after
            .lock_exclusive(Path::new("/LOCK"), "pid 5")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(held);
    }
}
