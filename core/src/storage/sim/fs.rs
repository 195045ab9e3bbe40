//! The simulation's state behind its lock: the names reads see and the
//! names a power cut keeps, every inode's visible and durable bytes with the
//! changes not yet durable, the per-directory queues of unsynced renames,
//! creates and removals, the sync-point counter with its armed crash or
//! failure, and the capacity. [`Fs::cut`] and [`cut_file`] compute the file
//! system a power cut leaves, under a [`CutPolicy`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use super::SecondFault;
use super::policy::{CutPolicy, DataLoss, DirLoss, PAGE_LEN, SECTOR_LEN, SplitMix64};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Node {
    /// A file and its inode.
    File(u64),
    /// A directory and its inode number (what tells one directory from
    /// another across renames: [`SimStorage::identity`](super::SimStorage::identity)).
    Dir(u64),
}

/// A change to a file not yet durable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum FileChange {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct Inode {
    /// What reads see.
    pub(super) data: Vec<u8>,
    /// What survives a power cut.
    pub(super) durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pub(super) pending: Vec<FileChange>,
}

/// One atomic directory change: entries set (`Some`) or removed (`None`).
pub(super) type DirChange = Vec<(PathBuf, Option<Node>)>;

#[derive(Debug, Default)]
pub(super) struct Fs {
    /// The names reads see.
    pub(super) names: BTreeMap<PathBuf, Node>,
    /// The names a power cut keeps (before removing unreachable ones).
    pub(super) durable_names: BTreeMap<PathBuf, Node>,
    /// Per directory, changes a directory sync has not yet made durable,
    /// each with its place in the order all changes were made (a sync that
    /// makes changes of several directories durable applies them in it).
    pub(super) dir_pending: BTreeMap<PathBuf, Vec<(u64, DirChange)>>,
    /// The place of the next directory change.
    pub(super) next_change: u64,
    /// New names of directories moved with their trees whose move is not
    /// yet durable (see [`Fs::move_tree`]).
    pub(super) moves: Vec<PathBuf>,
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) next_ino: u64,
    /// Locked paths and the token of the guard that holds each.
    pub(super) locks: HashMap<PathBuf, u64>,
    pub(super) next_lock_token: u64,
    pub(super) sync_points: u64,
    pub(super) crash_at: Option<u64>,
    pub(super) fail_sync_at: Option<u64>,
    /// What strikes after the sync armed by `fail_sync_at` failed (see
    /// [`SimStorage::second_fault`](super::SimStorage::second_fault)).
    pub(super) second_fault: Option<SecondFault>,
    /// Since the armed failed sync fired: mutating calls and moves
    /// (renames, exchanges) made or tried.
    pub(super) since_failure: Option<(u64, u64)>,
    /// The move a [`SecondFault::FailMove`] failed: from, to.
    pub(super) failed_move: Option<(PathBuf, PathBuf)>,
    pub(super) frozen: bool,
    pub(super) capacity: Option<u64>,
    /// The exchange of two directories is refused as unsupported (a file
    /// system without `RENAME_EXCHANGE`).
    pub(super) no_exchange: bool,
    /// `drop_cache` keeps every page (see
    /// [`SimStorage::set_cache_drops_ignored`](super::SimStorage::set_cache_drops_ignored)).
    pub(super) cache_drops_ignored: bool,
}

/// A simulated file offset or length as an index into its bytes: they live
/// in memory, so any length they reach fits in `usize`.
pub(super) fn idx(n: u64) -> usize {
    usize::try_from(n).expect("simulated file offsets fit in memory")
}

pub(super) fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

pub(super) fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("/") || path == Path::new(".")
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!(
        "simulated power cut: {what} at or after the crash point (EIO)"
    ))
}

pub(super) fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl Fs {
    /// Refuses a mutating call once the state is frozen; after the armed
    /// failed sync, counts the call and freezes the state at the one a
    /// [`SecondFault::CrashAt`] names (the power goes out before it).
    pub(super) fn check_live(&mut self, what: &str) -> io::Result<()> {
        if self.frozen {
            return Err(eio(what));
        }
        if let Some((calls, _)) = &mut self.since_failure {
            *calls += 1;
            if self.second_fault == Some(SecondFault::CrashAt(*calls)) {
                self.frozen = true;
                return Err(eio(what));
            }
        }
        Ok(())
    }

    /// Counts a move (a rename or an exchange, about to be made) after the
    /// armed failed sync, and fails the one a [`SecondFault::FailMove`]
    /// names with `EIO`, changing nothing.
    pub(super) fn check_move(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        if let Some((_, moves)) = &mut self.since_failure {
            *moves += 1;
            if self.second_fault == Some(SecondFault::FailMove(*moves)) {
                self.failed_move = Some((from.to_path_buf(), to.to_path_buf()));
                return Err(io::Error::other(format!(
                    "simulated I/O error: moving {} to {} (EIO)",
                    from.display(),
                    to.display()
                )));
            }
        }
        Ok(())
    }

    /// Counts a sync point; `Ok(false)` when it is the one armed to fail
    /// the way Linux does after a write-back error (see
    /// [`SimStorage::fail_sync_at`](super::SimStorage::fail_sync_at)): the
    /// caller forgets what was pending.
    pub(super) fn sync_point(&mut self, what: &str) -> io::Result<bool> {
        self.check_live(what)?;
        self.sync_points += 1;
        if self.crash_at == Some(self.sync_points) {
            self.frozen = true;
            return Err(eio(what));
        }
        if self.fail_sync_at == Some(self.sync_points) {
            self.since_failure = Some((0, 0));
            return Ok(false);
        }
        Ok(true)
    }

    pub(super) fn dir_exists(&self, path: &Path) -> bool {
        is_root(path) || matches!(self.names.get(path), Some(Node::Dir(_)))
    }

    /// Whether a directory has entries now.
    pub(super) fn has_children(&self, dir: &Path) -> bool {
        self.names
            .range(dir.to_path_buf()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(dir))
            .next()
            .is_some()
    }

    /// Makes every pending file change and directory change durable (the
    /// effect of a successful `syncfs`).
    pub(super) fn make_all_durable(&mut self) {
        let mut unused = SplitMix64::new(0);
        for inode in self.inodes.values_mut() {
            if !inode.pending.is_empty() {
                inode.durable = cut_file(inode, &mut unused, DataLoss::KeepAll);
                inode.pending.clear();
            }
        }
        // Parents sort before their entries: a move becomes durable before
        // the changes queued inside its tree.
        let queues = std::mem::take(&mut self.dir_pending);
        self.make_durable(queues.into_values().flatten().map(|(_, c)| c));
    }

    /// Renames directory `from`, which has entries, to the new name `to`
    /// with its tree (see "directory rename" in the module documentation):
    /// the names reads see move at once; one change queued on `to`'s
    /// parent removes `from` and its durable tree and sets `to` with that
    /// tree; the changes queued inside the tree are queued under `to`.
    pub(super) fn move_tree(&mut self, from: &Path, to: &Path) {
        let rebase = |p: &Path| -> PathBuf {
            match p.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => p.to_path_buf(),
            }
        };
        let under = |names: &BTreeMap<PathBuf, Node>| -> Vec<(PathBuf, Node)> {
            names
                .range(from.to_path_buf()..)
                .skip(1)
                .take_while(|(p, _)| p.starts_with(from))
                .map(|(p, n)| (p.clone(), *n))
                .collect()
        };
        for (p, n) in under(&self.names) {
            self.names.remove(&p);
            self.names.insert(rebase(&p), n);
        }
        let node = self.names.remove(from).expect("the moved directory exists");
        self.names.insert(to.to_path_buf(), node);
        let mut change: DirChange =
            vec![(to.to_path_buf(), Some(node)), (from.to_path_buf(), None)];
        for (p, n) in under(&self.durable_names) {
            change.push((rebase(&p), Some(n)));
            change.push((p, None));
        }
        let queues = std::mem::take(&mut self.dir_pending);
        for (dir, queue) in queues {
            let queue = queue
                .into_iter()
                .map(|(seq, c)| {
                    let c: DirChange = c.into_iter().map(|(p, n)| (rebase(&p), n)).collect();
                    (seq, moved_back(c))
                })
                .collect();
            self.dir_pending.insert(rebase(&dir), queue);
        }
        for m in &mut self.moves {
            *m = rebase(m);
        }
        self.moves.push(to.to_path_buf());
        self.queue(parent_of(to), change);
    }

    /// Whether the directory `root` and every name under it are durable
    /// as they are now, with no change queued inside it.
    pub(super) fn is_durable_tree(&self, root: &Path) -> bool {
        let subtree = |names: &BTreeMap<PathBuf, Node>| -> Vec<(PathBuf, Node)> {
            names
                .range(root.to_path_buf()..)
                .take_while(|(p, _)| p.starts_with(root))
                .map(|(p, n)| (p.clone(), *n))
                .collect()
        };
        subtree(&self.names) == subtree(&self.durable_names)
            && !self.dir_pending.keys().any(|d| d.starts_with(root))
            && !self.moves.iter().any(|m| m.starts_with(root))
    }

    /// Whether the directory `root` and every name under it are settled
    /// but for changes queued on directory `dir`: nothing is queued inside
    /// the tree nor on any other directory about a name in it, no move of
    /// it or in it is pending, and its names once `dir`'s queue is durable
    /// are the names reads see. A tree an exchange (queued on `dir`) left
    /// not yet durable is such a tree: exchanging it again queues the next
    /// change behind the first on the same directory, so a cut keeps
    /// neither, the first, or both, in order (the receive's exchange back).
    pub(super) fn is_settled_tree_but_for(&self, root: &Path, dir: &Path) -> bool {
        let under = |p: &Path| p.starts_with(root);
        if self.dir_pending.keys().any(|d| under(d))
            || self.moves.iter().any(|m| under(m))
            || self
                .dir_pending
                .iter()
                .filter(|(d, _)| d.as_path() != dir)
                .flat_map(|(_, queue)| queue.iter().flat_map(|(_, c)| c))
                .any(|(p, _)| under(p))
        {
            return false;
        }
        let subtree = |names: &BTreeMap<PathBuf, Node>| -> BTreeMap<PathBuf, Node> {
            names
                .range(root.to_path_buf()..)
                .take_while(|(p, _)| under(p))
                .map(|(p, n)| (p.clone(), *n))
                .collect()
        };
        let mut durable = subtree(&self.durable_names);
        let queued = self.dir_pending.get(dir).into_iter().flatten();
        for (p, node) in queued.flat_map(|(_, c)| c) {
            if under(p) {
                match node {
                    Some(n) => durable.insert(p.clone(), *n),
                    None => durable.remove(p),
                };
            }
        }
        durable == subtree(&self.names)
    }

    /// Exchanges the durable directories `a` and `b` with their trees (see
    /// [`SimStorage::exchange`](super::SimStorage::exchange)): one change
    /// queued on `b`'s parent that removes both trees' entries and sets
    /// them under the other name.
    pub(super) fn exchange_trees(&mut self, a: &Path, b: &Path) {
        let under = |root: &Path| -> Vec<(PathBuf, Node)> {
            self.names
                .range(root.to_path_buf()..)
                .skip(1)
                .take_while(|(p, _)| p.starts_with(root))
                .map(|(p, n)| (p.clone(), *n))
                .collect()
        };
        let (in_a, in_b) = (under(a), under(b));
        let rebase = |p: &Path, from: &Path, to: &Path| -> PathBuf {
            to.join(p.strip_prefix(from).expect("under the tree"))
        };
        let (node_a, node_b) = (self.names[a], self.names[b]);
        let mut change: DirChange = vec![
            (b.to_path_buf(), Some(node_a)),
            (a.to_path_buf(), Some(node_b)),
        ];
        change.extend(in_a.iter().chain(&in_b).map(|(p, _)| (p.clone(), None)));
        change.extend(in_a.iter().map(|(p, n)| (rebase(p, a, b), Some(*n))));
        change.extend(in_b.iter().map(|(p, n)| (rebase(p, b, a), Some(*n))));
        self.change(parent_of(b), change);
    }

    /// Makes durable the pending moves whose trees hold `dir`, each with
    /// the changes queued before it on its directory.
    fn commit_moves_above(&mut self, dir: &Path) {
        while let Some(i) = self.moves.iter().position(|m| dir.starts_with(m)) {
            let to = self.moves.remove(i);
            let parent = parent_of(&to);
            let queue = self.dir_pending.remove(&parent).unwrap_or_default();
            let is_move = |(_, c): &(u64, DirChange)| matches!(c.first(), Some((p, Some(Node::Dir(_)))) if *p == to);
            let mut queue = queue;
            let committed: Vec<DirChange> = match queue.iter().position(is_move) {
                Some(at) => queue.drain(..=at).map(|(_, c)| c).collect(),
                None => Vec::new(),
            };
            if !queue.is_empty() {
                self.dir_pending.insert(parent, queue);
            }
            self.make_durable(committed);
        }
    }

    /// Applies directory changes to the names a power cut keeps.
    pub(super) fn make_durable(&mut self, changes: impl IntoIterator<Item = DirChange>) {
        for change in changes {
            if let Some((first, Some(Node::Dir(_)))) = change.first() {
                self.moves.retain(|m| m != first);
            }
            for (p, node) in change {
                match node {
                    Some(n) => {
                        self.durable_names.insert(p, n);
                    }
                    None => {
                        self.durable_names.remove(&p);
                    }
                }
            }
        }
    }

    /// The effect of a successful `sync_dir(dir)`: its queue is durable,
    /// and so is every change queued elsewhere that names an entry of it
    /// (a rename out of it, an exchange), with the changes queued there
    /// before it (one journal transaction commits a rename, after what
    /// preceded it); all of them in the order they were made (a rename out
    /// of `dir` queued elsewhere before a rename into the same name here
    /// is applied first).
    pub(super) fn sync_dir_changes(&mut self, dir: &Path) {
        self.commit_moves_above(dir);
        let mut committed = self.dir_pending.remove(dir).unwrap_or_default();
        let renamed_out =
            |(_, change): &(u64, DirChange)| change.iter().any(|(p, _)| parent_of(p) == dir);
        for queue in self.dir_pending.values_mut() {
            if let Some(last) = queue.iter().rposition(renamed_out) {
                committed.extend(queue.drain(..=last));
            }
        }
        self.dir_pending.retain(|_, queue| !queue.is_empty());
        committed.sort_by_key(|(seq, _)| *seq);
        self.make_durable(committed.into_iter().map(|(_, c)| c));
    }

    pub(super) fn change(&mut self, dir: PathBuf, change: DirChange) {
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
        self.queue(dir, change);
    }

    /// Queues a change on `dir`, in the order of all changes.
    fn queue(&mut self, dir: PathBuf, change: DirChange) {
        self.next_change += 1;
        let seq = self.next_change;
        self.dir_pending.entry(dir).or_default().push((seq, change));
    }

    /// Bytes held by files some name reaches (an unlinked file's bytes are
    /// free, even while it is open: close enough for a full-disk test).
    pub(super) fn used(&self) -> u64 {
        let inos: BTreeSet<u64> = self
            .names
            .values()
            .filter_map(|n| match n {
                Node::File(ino) => Some(*ino),
                Node::Dir(_) => None,
            })
            .collect();
        inos.iter().map(|i| self.inodes[i].data.len() as u64).sum()
    }

    /// Refuses growth from `old_len` to `new_len` bytes past the capacity.
    pub(super) fn charge(&self, old_len: usize, new_len: usize) -> io::Result<()> {
        if new_len > old_len
            && let Some(cap) = self.capacity
            && self.used() + (new_len - old_len) as u64 > cap
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    pub(super) fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("open files keep their inode")
    }

    pub(super) fn write(&mut self, ino: u64, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_live("write")?;
        let end = idx(offset) + buf.len();
        let old_len = self.inode(ino).data.len();
        self.charge(old_len, old_len.max(end))?;
        let inode = self.inode(ino);
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[idx(offset)..end].copy_from_slice(buf);
        inode.pending.push(FileChange::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    pub(super) fn set_len(&mut self, ino: u64, len: u64) -> io::Result<()> {
        self.check_live("set_len")?;
        let old_len = self.inode(ino).data.len();
        self.charge(old_len, idx(len))?;
        let inode = self.inode(ino);
        inode.data.resize(idx(len), 0);
        inode.pending.push(FileChange::SetLen(len));
        Ok(())
    }

    pub(super) fn sync_file(&mut self, ino: u64, what: &str) -> io::Result<()> {
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

    /// `posix_fadvise(POSIX_FADV_DONTNEED)` of a whole file: every page
    /// ([`PAGE_LEN`]) no pending change touches is clean, and reads of it
    /// return its durable bytes from then on (zeros past them: a
    /// preallocated range never written back reads as zeros), so bytes a
    /// failed sync dropped from the write-back queue are gone from what
    /// reads see. A page a pending change touches is dirty and kept (Linux
    /// starts its write-back and does not drop it); a pending size change
    /// keeps every page from the smaller of that size and the durable
    /// length on. Kept pages are the conservative side: the simulation
    /// never drops more than the kernel would. Not a mutating call (the
    /// disk is not written); nothing happens once the state is frozen.
    pub(super) fn drop_cache(&mut self, ino: u64) {
        if self.frozen || self.cache_drops_ignored {
            return;
        }
        let inode = self.inode(ino);
        let len = inode.data.len() as u64;
        let pages = len.div_ceil(PAGE_LEN);
        let mut dirty = vec![false; idx(pages)];
        let mut mark = |from: u64, to: u64| {
            for page in from / PAGE_LEN..to.div_ceil(PAGE_LEN).min(pages) {
                dirty[idx(page)] = true;
            }
        };
        for change in &inode.pending {
            match change {
                FileChange::Write { offset, bytes } => {
                    mark(*offset, offset + bytes.len() as u64);
                }
                FileChange::SetLen(new_len) => {
                    mark((*new_len).min(inode.durable.len() as u64), len);
                }
            }
        }
        for page in (0..pages).filter(|p| !dirty[idx(*p)]) {
            let start = idx(page * PAGE_LEN);
            let end = idx(((page + 1) * PAGE_LEN).min(len));
            for at in start..end {
                inode.data[at] = inode.durable.get(at).copied().unwrap_or(0);
            }
        }
    }

    /// The names and file bytes a power cut leaves.
    pub(super) fn cut(&self, seed: u64, policy: CutPolicy) -> Fs {
        let mut rng = SplitMix64::new(seed);
        let mut names = self.durable_names.clone();
        for changes in self.dir_pending.values() {
            let keep = match policy.dirs {
                DirLoss::ForgetAll => 0,
                DirLoss::KeepAll => changes.len(),
                DirLoss::RandomPrefix => idx(rng.below(changes.len() as u64 + 1)),
            };
            for (_, change) in &changes[..keep] {
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
                if !matches!(names.get(&p), Some(Node::Dir(_))) {
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
                Node::Dir(_) => None,
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
            next_change: self.next_change,
            moves: Vec::new(),
            inodes,
            next_ino: self.next_ino,
            locks: HashMap::new(),
            next_lock_token: self.next_lock_token,
            sync_points: 0,
            crash_at: None,
            fail_sync_at: None,
            second_fault: None,
            since_failure: None,
            failed_move: None,
            frozen: false,
            capacity: self.capacity,
            no_exchange: self.no_exchange,
            cache_drops_ignored: self.cache_drops_ignored,
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
                    bytes.resize(idx(*len), 0);
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
                    let piece = &written[idx(pos - offset)..idx(piece_end - offset)];
                    let choice = match policy {
                        DataLoss::DropAll => 0,
                        DataLoss::KeepAll => 1,
                        DataLoss::Random => rng.below(3),
                    };
                    if choice != 0 {
                        if bytes.len() < idx(piece_end) {
                            bytes.resize(idx(piece_end), 0);
                        }
                        let target = &mut bytes[idx(pos)..idx(piece_end)];
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

/// A queued change whose names were rebased by a later move of their tree
/// back to where that change had moved it from (a rename `t` → `old` not
/// yet durable, then `old` → `t`): rebased, it sets and removes the same
/// names (`t`, `t/f`: set as `old`'s, removed as `t`'s). The tree is where
/// it was, so what the change sets stays; else a cut that keeps the change
/// would drop every name of the tree, even once the move back is durable.
fn moved_back(change: DirChange) -> DirChange {
    let set: BTreeSet<PathBuf> = change
        .iter()
        .filter(|(_, n)| n.is_some())
        .map(|(p, _)| p.clone())
        .collect();
    change
        .into_iter()
        .filter(|(p, n)| n.is_some() || !set.contains(p))
        .collect()
}
