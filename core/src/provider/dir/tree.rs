//! File-tree primitives of the directory provider: mode bookkeeping, the copy
//! routine (reflink or copy), removal of read-only trees, atomic small files,
//! directory syncs and the atomic exchange of two directories.
//!
//! Paths inside a tree are *relative paths*: raw bytes, components separated
//! by `/`, the empty path being the tree's root. Nothing here follows a
//! symbolic link: entries are examined with `lstat`, files are opened with
//! `O_NOFOLLOW`, and directories are re-opened with `O_NOFOLLOW` before they
//! are changed.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::provider::ProviderError;
use crate::provider::stream::CHUNK;

/// Permission bits a mode may carry (rwx for all, setuid, setgid, sticky).
pub(crate) const PERM_BITS: u32 = 0o7777;

/// Joins a relative path onto a tree root.
pub(crate) fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// `parent/name` as a relative path.
pub(crate) fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        rel.extend_from_slice(parent);
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// A relative path for messages.
pub(crate) fn show(rel: &[u8]) -> String {
    if rel.is_empty() {
        "/".to_owned()
    } else {
        String::from_utf8_lossy(rel).into_owned()
    }
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: io::Error) -> ProviderError {
    ProviderError::io(format!("{what} {}", path.display()), e)
}

/// `lstat`, with "absent" as `None`.
pub(crate) fn lstat(path: &Path) -> Result<Option<fs::Metadata>, ProviderError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("examining", path, e)),
    }
}

/// Whether `path` is a real directory (not a symlink to one).
pub(crate) fn is_real_dir(path: &Path) -> Result<bool, ProviderError> {
    Ok(lstat(path)?.is_some_and(|md| md.file_type().is_dir()))
}

/// `fsync` of a directory: makes its entries (creations, renames, removals)
/// durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), ProviderError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err("syncing directory", path, e))
}

/// `syncfs`: flushes the whole file system holding `path`.
pub(crate) fn sync_fs(path: &Path) -> Result<(), ProviderError> {
    let f = File::open(path).map_err(|e| io_err("opening", path, e))?;
    // SAFETY: plain syscall on a descriptor we own for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(io_err(
            "syncing the file system of",
            path,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Writes a small file durably: temp file, fsync, rename, fsync the directory.
/// The temp name starts with a dot, so no listing of ours ever mistakes it for
/// an entry.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ProviderError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| io_err("writing", &tmp, e))?;
    fs::rename(&tmp, &target).map_err(|e| io_err("renaming into place", &target, e))?;
    sync_dir(dir)
}

/// Removes a file, ignoring its absence. Returns whether it existed.
pub(crate) fn remove_file_if_present(path: &Path) -> Result<bool, ProviderError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path, e)),
    }
}

/// Opens a directory without following a symlink in its last component.
fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// Sets a directory's mode without following a symlink.
pub(crate) fn chmod_dir(path: &Path, mode: u32) -> Result<(), ProviderError> {
    match open_dir_nofollow(path) {
        Ok(d) => d
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("setting the mode of", path, e)),
        // A directory we may not read (mode 0o000, say): it was just checked
        // with lstat by the caller, so a path-based chmod is acceptable.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| io_err("setting the mode of", path, e))
        }
        Err(e) => Err(io_err("opening directory", path, e)),
    }
}

/// Sets a regular file's mode without following a symlink.
pub(crate) fn chmod_file(path: &Path, mode: u32) -> Result<(), ProviderError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| f.set_permissions(fs::Permissions::from_mode(mode)))
        .map_err(|e| io_err("setting the mode of", path, e))
}

/// Gives the owner `rwx` on a directory if it lacks any of them (so its
/// entries can be listed, removed, or the directory renamed to another parent).
pub(crate) fn ensure_owner_rwx(path: &Path, md: &fs::Metadata) -> Result<(), ProviderError> {
    let mode = md.mode() & PERM_BITS;
    if mode & 0o700 != 0o700 {
        chmod_dir(path, mode | 0o700)?;
    }
    Ok(())
}

/// Removes a file tree without following symlinks, coping with read-only
/// directories (their owner gets `rwx` first). Absent is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), ProviderError> {
    let Some(md) = lstat(path)? else {
        return Ok(());
    };
    if !md.file_type().is_dir() {
        remove_file_if_present(path)?;
        return Ok(());
    }
    // (directory, its entries were already removed or queued)
    let mut stack: Vec<(PathBuf, bool)> = vec![(path.to_path_buf(), false)];
    while let Some((dir, expanded)) = stack.pop() {
        if expanded {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing directory", &dir, e)),
            }
            continue;
        }
        let Some(md) = lstat(&dir)? else { continue };
        if !md.file_type().is_dir() {
            remove_file_if_present(&dir)?;
            continue;
        }
        ensure_owner_rwx(&dir, &md)?;
        stack.push((dir.clone(), true));
        let entries = fs::read_dir(&dir).map_err(|e| io_err("listing", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", &dir, e))?;
            let ft = entry
                .file_type()
                .map_err(|e| io_err("examining", &entry.path(), e))?;
            if ft.is_dir() {
                stack.push((entry.path(), false));
            } else {
                remove_file_if_present(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// Names of a directory's entries, sorted bytewise (deterministic walks).
pub(crate) fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>, ProviderError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))? {
        let entry = entry.map_err(|e| io_err("listing", dir, e))?;
        names.push(entry.file_name().as_bytes().to_vec());
    }
    names.sort_unstable();
    Ok(names)
}

/// The error for an entry the provider cannot carry.
pub(crate) fn unsupported(path: &Path, ft: fs::FileType) -> ProviderError {
    let what = if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "an unknown file type"
    };
    ProviderError::Other(format!(
        "{} is {what}: the directory provider carries only directories, regular files and symlinks",
        path.display()
    ))
}

/// How a tree stores its entries' modes on disk.
///
/// The *true* mode of an entry is the one the user set and the one that
/// travels in streams; the *stored* mode is what the inode carries here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Data volumes: stored = true.
    Plain,
    /// Snapshots: stored = true without write bits (read-only tree) but with
    /// owner read (and search, for directories), so the provider can always
    /// read its own snapshots; the true mode is stored | `u+w` unless an
    /// exception records otherwise.
    Snapshot,
    /// Receive staging: stored = true plus `u+rwx` (directories) or `u+rw`
    /// (files), so the provider can always fill and read it; the true mode is
    /// the stored one unless an exception records otherwise.
    Staging,
}

impl Policy {
    pub(crate) fn stored(self, true_mode: u32, is_dir: bool) -> u32 {
        let m = true_mode & PERM_BITS;
        match self {
            Policy::Plain => m,
            Policy::Snapshot => (m & !0o222) | if is_dir { 0o500 } else { 0o400 },
            Policy::Staging => m | if is_dir { 0o700 } else { 0o600 },
        }
    }

    fn default_true(self, stored: u32) -> u32 {
        let m = stored & PERM_BITS;
        match self {
            Policy::Plain | Policy::Staging => m,
            Policy::Snapshot => m | 0o200,
        }
    }
}

/// The true modes of a tree: its policy plus the exceptions to the policy's
/// default rule, keyed by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Modes {
    pub(crate) policy: Policy,
    pub(crate) exceptions: BTreeMap<Vec<u8>, u32>,
    /// Sum of the exception keys' lengths, to bound memory.
    key_bytes: usize,
}

impl Modes {
    pub(crate) fn new(policy: Policy) -> Self {
        Modes {
            policy,
            exceptions: BTreeMap::new(),
            key_bytes: 0,
        }
    }

    pub(crate) fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// The true mode of `rel`, whose inode carries `stored`.
    pub(crate) fn true_mode(&self, rel: &[u8], stored: u32) -> u32 {
        match self.policy {
            Policy::Plain => stored & PERM_BITS,
            _ => self
                .exceptions
                .get(rel)
                .copied()
                .unwrap_or_else(|| self.policy.default_true(stored)),
        }
    }

    /// Records that `rel` has true mode `true_mode`; returns the mode to store.
    pub(crate) fn record(&mut self, rel: &[u8], true_mode: u32, is_dir: bool) -> u32 {
        let true_mode = true_mode & PERM_BITS;
        let stored = self.policy.stored(true_mode, is_dir);
        if self.policy.default_true(stored) == true_mode {
            if self.exceptions.remove(rel).is_some() {
                self.key_bytes -= rel.len();
            }
        } else if self.exceptions.insert(rel.to_vec(), true_mode).is_none() {
            self.key_bytes += rel.len();
        }
        stored
    }

    /// Forgets `rel` and everything under it.
    pub(crate) fn forget_subtree(&mut self, rel: &[u8]) {
        if self.exceptions.remove(rel).is_some() {
            self.key_bytes -= rel.len();
        }
        let doomed: Vec<Vec<u8>> = if rel.is_empty() {
            self.exceptions.keys().cloned().collect()
        } else {
            // Descendants are exactly the keys starting with "rel/": in
            // bytewise order they lie in ["rel/", "rel0") ('0' follows '/').
            let mut lo = rel.to_vec();
            lo.push(b'/');
            let mut hi = rel.to_vec();
            hi.push(b'0');
            self.exceptions
                .range(lo..hi)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in doomed {
            self.exceptions.remove(&k);
            self.key_bytes -= k.len();
        }
    }

    /// Sets the true modes on a staging tree (deepest paths first, so parents
    /// stay traversable), except the root's. Only meaningful for
    /// [`Policy::Staging`], where the tree otherwise already holds true modes.
    pub(crate) fn apply_true_modes(
        &self,
        root: &Path,
        skip_root: bool,
    ) -> Result<(), ProviderError> {
        let mut keys: Vec<&Vec<u8>> = self.exceptions.keys().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.iter().filter(|&&b| b == b'/').count()));
        for rel in keys {
            if skip_root && rel.is_empty() {
                continue;
            }
            let mode = self.exceptions[rel];
            let path = join(root, rel);
            match lstat(&path)? {
                Some(md) if md.file_type().is_dir() => chmod_dir(&path, mode)?,
                Some(md) if md.file_type().is_file() => chmod_file(&path, mode)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Copies a regular file's content: `FICLONE` (reflink) where the file system
/// supports it, else a kernel-side copy (`copy_file_range`), never buffering
/// the whole file.
pub(crate) fn clone_or_copy(src: &mut File, dst: &mut File, reflink: &mut bool) -> io::Result<()> {
    if *reflink {
        // SAFETY: both descriptors are open for the duration of the call.
        let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if let Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) =
            e.raw_os_error()
        {
            // This file system (or pair) cannot clone: stop trying.
            *reflink = false;
        }
        dst.set_len(0)?;
    }
    io::copy(src, dst)?;
    Ok(())
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates a new file (never through a symlink, never over an existing entry).
pub(crate) fn create_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

pub(crate) fn open_file_nofollow(path: &Path) -> io::Result<File> {
    open_nofollow(path)
}

enum Task {
    Enter(Vec<u8>),
    /// Set the directory's final mode and sync it, after its entries.
    Leave(Vec<u8>, u32),
}

/// Copies the tree `src` (true modes per `src_modes`) to the new directory
/// `dst` (which must not exist; its parent must), storing modes per
/// `dst_policy`. With `durable`, every file and directory is fsynced (else
/// the caller syncs the file system before relying on it). Returns the destination's
/// mode exceptions. Directories, regular files and symlinks (not followed)
/// are copied; anything else is an error naming the path.
pub(crate) fn copy_tree(
    src: &Path,
    src_modes: &Modes,
    dst: &Path,
    dst_policy: Policy,
    durable: bool,
) -> Result<Modes, ProviderError> {
    let mut dst_modes = Modes::new(dst_policy);
    let mut reflink = true;
    let mut stack = vec![Task::Enter(Vec::new())];
    while let Some(task) = stack.pop() {
        match task {
            Task::Enter(rel) => {
                let sp = join(src, &rel);
                let dp = join(dst, &rel);
                let md = fs::symlink_metadata(&sp).map_err(|e| io_err("examining", &sp, e))?;
                let ft = md.file_type();
                let true_mode = src_modes.true_mode(&rel, md.mode());
                if ft.is_dir() {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&dp)
                        .map_err(|e| io_err("creating directory", &dp, e))?;
                    stack.push(Task::Leave(rel.clone(), true_mode));
                    for name in sorted_names(&sp)?.into_iter().rev() {
                        stack.push(Task::Enter(child(&rel, &name)));
                    }
                } else if rel.is_empty() {
                    return Err(ProviderError::Other(format!(
                        "{} is not a directory",
                        sp.display()
                    )));
                } else if ft.is_file() {
                    let stored = dst_modes.record(&rel, true_mode, false);
                    let mut copy = || -> io::Result<()> {
                        let mut s = open_nofollow(&sp)?;
                        let mut d = create_new_file(&dp)?;
                        clone_or_copy(&mut s, &mut d, &mut reflink)?;
                        d.set_permissions(fs::Permissions::from_mode(stored))?;
                        if durable { d.sync_all() } else { Ok(()) }
                    };
                    copy().map_err(|e| {
                        ProviderError::io(
                            format!("copying {} to {}", sp.display(), dp.display()),
                            e,
                        )
                    })?;
                } else if ft.is_symlink() {
                    let target = fs::read_link(&sp).map_err(|e| io_err("reading link", &sp, e))?;
                    std::os::unix::fs::symlink(&target, &dp)
                        .map_err(|e| io_err("creating symlink", &dp, e))?;
                } else {
                    return Err(unsupported(&sp, ft));
                }
            }
            Task::Leave(rel, true_mode) => {
                let dp = join(dst, &rel);
                let stored = dst_modes.record(&rel, true_mode, true);
                let finish = || -> io::Result<()> {
                    let d = open_dir_nofollow(&dp)?;
                    d.set_permissions(fs::Permissions::from_mode(stored))?;
                    if durable { d.sync_all() } else { Ok(()) }
                };
                finish().map_err(|e| io_err("finishing directory", &dp, e))?;
            }
        }
    }
    Ok(dst_modes)
}

/// Atomically exchanges two directories (`renameat2(RENAME_EXCHANGE)`).
/// Returns `Ok(false)` if the file system does not support the exchange.
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<bool, ProviderError> {
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|_| ProviderError::Other(format!("{} contains NUL", a.display())))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|_| ProviderError::Other(format!("{} contains NUL", b.display())))?;
    // SAFETY: both strings are valid NUL-terminated paths for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(ProviderError::io(
            format!("exchanging {} and {}", a.display(), b.display()),
            e,
        )),
    }
}

/// Compares two regular files' contents, chunk by chunk.
pub(crate) fn same_content(a: &Path, b: &Path) -> Result<bool, ProviderError> {
    let mut fa = open_nofollow(a).map_err(|e| io_err("opening", a, e))?;
    let mut fb = open_nofollow(b).map_err(|e| io_err("opening", b, e))?;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    loop {
        let na = fill(&mut fa, &mut ba).map_err(|e| io_err("reading", a, e))?;
        let nb = fill(&mut fb, &mut bb).map_err(|e| io_err("reading", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na < ba.len() {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn fill(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_policy_round_trips_every_mode() {
        for mode in 0..=PERM_BITS {
            for is_dir in [false, true] {
                for policy in [Policy::Plain, Policy::Snapshot, Policy::Staging] {
                    let mut m = Modes::new(policy);
                    let stored = m.record(b"a/b", mode, is_dir);
                    assert_eq!(m.true_mode(b"a/b", stored), mode, "{policy:?} {mode:o}");
                    if policy == Policy::Snapshot {
                        assert_eq!(stored & 0o222, 0);
                    }
                }
            }
        }
        let mut m = Modes::new(Policy::Snapshot);
        m.record(b"a/b", 0o644, false);
        assert!(
            m.exceptions.is_empty(),
            "the common case needs no exception"
        );
    }

    #[test]
    fn forget_subtree_removes_exactly_the_descendants() {
        let mut m = Modes::new(Policy::Snapshot);
        for k in ["a", "a/b", "a/b/c", "a0", "a.b", "ab", "b"] {
            m.record(k.as_bytes(), 0o444, false);
        }
        m.forget_subtree(b"a");
        let left: Vec<_> = m.exceptions.keys().map(|k| show(k)).collect();
        assert_eq!(left, ["a.b", "a0", "ab", "b"]);
        assert_eq!(m.key_bytes(), 3 + 2 + 2 + 1);
    }
}
