//! File-tree primitives of the directory provider: the provider's own paths
//! (examined, synced, written atomically), and the walks over a volume's
//! tree, copy and removal, which go through [`Dir`] handles only.
//!
//! Two kinds of paths meet here. The provider's *own* paths (its root,
//! `data/<id>`, the marker files) are resolved as given: no one but the
//! provider writes there. Everything *inside* a volume's tree is reached from
//! the tree's root handle by single names (`openat`, `unlinkat`, `fstatat`,
//! never following a symlink), because a process using the volume may change
//! that tree while we walk it. Relative paths inside a tree are raw bytes,
//! components separated by `/`, the empty path being the tree's root.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

pub(crate) use super::modes::{KEPT_BITS, Modes, PERM_BITS, Policy};
use super::space::SpaceGuard;
use crate::fsutil::{Dir, Kind, Stat};
use crate::provider::ProviderError;
use crate::provider::stream::CHUNK;

/// Deepest directory nesting a copy or a stream may have (each level of a
/// copy holds two open descriptors).
pub const MAX_DEPTH: usize = 256;
/// Directory handles a removal holds at most; deeper subtrees are moved up
/// to the top of the tree being removed and removed from there.
const REMOVE_HELD: usize = 64;
/// Retries a removal allows for entries that change type under it before
/// giving up (the tree stays in the trash, retried at the next start).
const REMOVE_RACES: u32 = 10_000;

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

/// `root/rel` for messages.
pub(crate) fn shown_in(root: &Path, rel: &[u8]) -> String {
    if rel.is_empty() {
        root.display().to_string()
    } else {
        format!("{}/{}", root.display(), String::from_utf8_lossy(rel))
    }
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: io::Error) -> ProviderError {
    ProviderError::io(format!("{what} {}", path.display()), e)
}

/// `lstat`, with "absent" as `None` (the provider's own paths only).
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

/// Opens a file of the provider's own without following a symlink or
/// blocking: a non-regular file is an error.
pub(crate) fn open_file_nofollow(path: &Path) -> io::Result<File> {
    let (parent, name) = split(path)?;
    Ok(Dir::open(parent)?.open_file(name)?.0)
}

/// A provider path's parent and file name.
pub(crate) fn split(path: &Path) -> io::Result<(&Path, &[u8])> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n.as_bytes())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a path with a parent and a file name is needed",
        )),
    }
}

/// Sets a directory's mode without following a symlink.
pub(crate) fn chmod_dir(path: &Path, mode: u32) -> Result<(), ProviderError> {
    let (parent, name) = split(path).map_err(|e| io_err("setting the mode of", path, e))?;
    Dir::open(parent)
        .and_then(|d| match d.stat_at(name)? {
            Some(st) if st.kind == Kind::Dir => d.set_mode_at(name, mode),
            Some(st) => Err(io::Error::other(format!("is {}", st.kind.describe()))),
            None => Err(io::ErrorKind::NotFound.into()),
        })
        .map_err(|e| io_err("setting the mode of", path, e))
}

/// The error for an entry the provider cannot carry.
pub(crate) fn unsupported(shown: &str, kind: Kind) -> ProviderError {
    ProviderError::UnsupportedContent(format!(
        "{shown} is {}: the directory provider carries only directories, regular files and symlinks",
        kind.describe()
    ))
}

/// The error for a tree deeper than [`MAX_DEPTH`].
pub(crate) fn too_deep(shown: &str) -> ProviderError {
    ProviderError::UnsupportedContent(format!(
        "{shown} is more than {MAX_DEPTH} directories deep: the directory provider copies and sends at most that depth"
    ))
}

/// Gives the owner `rwx` on directory entry `name` of `dir` if it lacks any.
fn owner_rwx_at(dir: &Dir, name: &[u8], st: &Stat) -> io::Result<()> {
    if st.mode & 0o700 != 0o700 {
        dir.set_mode_at(name, st.mode | 0o700)?;
    }
    Ok(())
}

/// Removes entry `name` of `parent`, and everything under it if it is a
/// directory. See the module documentation; nothing outside `parent/name` is
/// ever removed, whatever the tree does meanwhile.
pub(crate) fn remove_entry(parent: &Dir, name: &[u8]) -> io::Result<()> {
    let Some(st) = parent.stat_at(name)? else {
        return Ok(());
    };
    if st.kind != Kind::Dir {
        return ignore_absent(parent.remove_file(name));
    }
    owner_rwx_at(parent, name, &st)?;
    let top = parent.open_dir(name)?;
    let mut tries = 0;
    loop {
        empty_dir(&top)?;
        match parent.remove_dir(name) {
            // Entries added while the last ones went: empty it again.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && tries < 3 => tries += 1,
            other => return ignore_absent(other),
        }
    }
}

fn ignore_absent(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A directory being emptied: its handle, its name in the frame below, the
/// names left to remove.
struct RmFrame {
    dir: Dir,
    name: Vec<u8>,
    left: Vec<Vec<u8>>,
}

/// Removes everything inside `top` (an open directory), depth first, holding
/// at most [`REMOVE_HELD`] handles: a directory found deeper is renamed to
/// the top level and emptied from there.
fn empty_dir(top: &Dir) -> io::Result<()> {
    let mut stack = vec![RmFrame {
        dir: top.try_clone()?,
        name: Vec::new(),
        left: top.names()?,
    }];
    let mut races = 0u32;
    let mut spilled = 0u64;
    let mut race = |e: io::Error| -> io::Result<()> {
        races += 1;
        if races > REMOVE_RACES {
            Err(io::Error::other(format!(
                "the tree keeps changing while it is removed ({e})"
            )))
        } else {
            Ok(())
        }
    };
    while !stack.is_empty() {
        let depth = stack.len();
        let frame = stack.last_mut().expect("a frame");
        let Some(name) = frame.left.pop() else {
            let done = stack.pop().expect("a frame");
            if let Some(below) = stack.last_mut() {
                match below.dir.remove_dir(&done.name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Something was added meanwhile (or it was replaced):
                    // look again.
                    Err(e) => {
                        race(e)?;
                        below.left.push(done.name);
                    }
                }
            }
            continue;
        };
        let Some(st) = frame.dir.stat_at(&name)? else {
            continue;
        };
        if st.kind != Kind::Dir {
            match frame.dir.remove_file(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // EPERM on the very file examined: it refuses removal (an
                // immutable or append-only file), no race.
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && frame
                            .dir
                            .stat_at(&name)?
                            .is_some_and(|now| now.kind == st.kind && now.ino == st.ino) =>
                {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{} cannot be removed: {e} (an immutable or append-only file: \
                             `lsattr` shows it, `chattr -i -a` clears it)",
                            String::from_utf8_lossy(&name).escape_debug()
                        ),
                    ));
                }
                // EISDIR / EPERM: it became a directory; look again.
                Err(e) => {
                    race(e)?;
                    frame.left.push(name);
                }
            }
            continue;
        }
        if depth >= REMOVE_HELD {
            spilled += 1;
            let spill = format!(".volmgr-deep.{spilled}").into_bytes();
            let (first, rest) = stack.split_at_mut(1);
            let frame = rest.last_mut().expect("deeper than one frame");
            match frame
                .dir
                .rename(&name, &first[0].dir, &spill, libc::RENAME_NOREPLACE)
            {
                Ok(()) => first[0].left.insert(0, spill),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    race(e)?;
                    frame.left.push(name);
                }
            }
            continue;
        }
        match owner_rwx_at(&frame.dir, &name, &st) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match frame.dir.open_dir(&name) {
            Ok(dir) => {
                let left = dir.names()?;
                stack.push(RmFrame { dir, name, left });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // ELOOP / ENOTDIR: replaced by a symlink or a file; look again.
            Err(e) => {
                race(e)?;
                frame.left.push(name);
            }
        }
    }
    Ok(())
}

/// Clones a regular file's content with `FICLONE` where the file system
/// supports it. `Ok(false)`: not cloned, `dst` left empty for a byte copy
/// (after an error saying this file system cannot clone, `*reflink` is
/// false and later files are not tried).
pub(crate) fn try_clone(src: &File, dst: &File, reflink: &mut bool) -> io::Result<bool> {
    if !*reflink {
        return Ok(false);
    }
    // SAFETY: both descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if let Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) =
        e.raw_os_error()
    {
        // This file system (or pair) cannot clone: stop trying.
        *reflink = false;
    }
    dst.set_len(0)?;
    Ok(false)
}

/// The bytes a copy of the file `st` writes: its allocated bytes, at most
/// its length (a sparse file's holes stay holes, see [`copy_data`]).
fn data_bytes(st: &Stat) -> u64 {
    st.allocated.min(st.len)
}

/// Why [`copy_data`] stopped: an I/O error, or the caller's `fits` refused.
pub(crate) enum CopyFailed<E> {
    Io(io::Error),
    Refused(E),
}

impl<E> From<io::Error> for CopyFailed<E> {
    fn from(e: io::Error) -> Self {
        CopyFailed::Io(e)
    }
}

/// `lseek(file, offset, whence)` for `SEEK_DATA` or `SEEK_HOLE` on the
/// open `file`: `None` where `ENXIO` says there is no data at or after
/// `offset` (the rest is a hole). `EINVAL` is a file system without those
/// seeks (or an offset beyond the end).
pub(crate) fn seek_data(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek on a descriptor open for the duration of the call.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(u64::try_from(at).unwrap_or(0)))
}

/// Copies the first `len` bytes of `src` into the empty `dst`, holes kept:
/// only the ranges `SEEK_DATA`/`SEEK_HOLE` report as data are written,
/// then `dst` is given length `len` (a trailing hole). A file system
/// without those seeks has no holes to keep: all of it is data. The copy
/// is of the length `src` had when examined: what a writer appends meanwhile
/// is not copied, and if it shrinks, the rest reads as a hole.
///
/// `counted` bytes were found to fit before the copy (the file's allocated
/// bytes); a writer filling holes meanwhile can make the data ranges
/// larger, so each byte beyond `counted` is asked of `fits` before it is
/// written, range by range.
pub(crate) fn copy_data<E>(
    src: &File,
    dst: &File,
    len: u64,
    counted: u64,
    fits: &mut dyn FnMut(u64) -> Result<(), E>,
) -> Result<(), CopyFailed<E>> {
    let seek = |offset: u64, whence: libc::c_int| seek_data(src, offset, whence);
    let mut pos = 0;
    let mut written = 0u64;
    // Bounded: each round moves `pos` forward (a data range is not empty:
    // `SEEK_HOLE` from data is past it) or ends the loop.
    while pos < len {
        let (start, end) = match seek(pos, libc::SEEK_DATA) {
            Ok(None) => break,
            Ok(Some(start)) => {
                let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len);
                (start, end.min(len))
            }
            // No hole support: the whole rest is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (pos, len),
            Err(e) => return Err(e.into()),
        };
        if start >= len || end <= start {
            break;
        }
        let beyond = (written + (end - start)).saturating_sub(counted.max(written));
        if beyond > 0 {
            fits(beyond).map_err(CopyFailed::Refused)?;
        }
        written += end - start;
        let copied = copy_range(src, dst, start, end)?;
        if copied < end {
            // Shrunk since examined: the rest stays a hole.
            break;
        }
        pos = end;
    }
    Ok(dst.set_len(len)?)
}

/// Copies bytes `[at, end)` of `src` to the same offsets of `dst`, in the
/// kernel (`copy_file_range`) where it can, else through a buffer; returns
/// where it stopped (before `end` only if `src` ended first).
fn copy_range(src: &File, dst: &File, mut at: u64, end: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    while at < end {
        let mut off_in = libc::loff_t::try_from(at).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut off_out = off_in;
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        // SAFETY: both descriptors are open and the offsets are ours.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &raw mut off_in,
                dst.as_raw_fd(),
                &raw mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if let Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) =
                e.raw_os_error()
            {
                break;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(at);
        }
        at += u64::try_from(n).expect("checked non-negative");
    }
    // Without `copy_file_range` (or after it refused): a buffered copy.
    let mut buf = Vec::new();
    while at < end {
        if buf.is_empty() {
            buf = vec![0u8; CHUNK];
        }
        let want = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Ok(at);
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(at)
}

/// Whether the file system holding `dir` clones files (`FICLONE`), so a
/// copy's content costs no space: tried on two empty scratch files in `dir`
/// (removed again). Any failure answers `false`.
pub(crate) fn reflinks(dir: &Dir) -> bool {
    let (a, b) = (
        &b".volmgr-reflink-probe.a"[..],
        &b".volmgr-reflink-probe.b"[..],
    );
    let _ = dir.remove_file(a);
    let _ = dir.remove_file(b);
    let probe = || -> io::Result<bool> {
        let src = dir.create_file(a, 0o600)?;
        let dst = dir.create_file(b, 0o600)?;
        // SAFETY: both descriptors are open for the duration of the call.
        Ok(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0)
    };
    let cloned = probe().unwrap_or(false);
    let _ = dir.remove_file(a);
    let _ = dir.remove_file(b);
    cloned
}

/// A directory being copied: source and destination handles, its relative
/// path, its true mode, the names left (reversed: popped in order).
struct CopyFrame {
    src: Dir,
    dst: Dir,
    rel: Vec<u8>,
    true_mode: u32,
    left: Vec<Vec<u8>>,
}

/// Copies the tree `src` (true modes per `src_modes`) to the new directory
/// `dst` (which must not exist; its parent must), storing modes per
/// `dst_policy`. With `durable`, every file and directory is fsynced (else
/// the caller syncs the file system before relying on it). Returns the
/// destination's mode exceptions. Directories, regular files and symlinks
/// (copied as links) are carried; anything else is an error naming the
/// path, as is a tree deeper than [`MAX_DEPTH`]. An entry that vanishes
/// during the copy is left out (a copy of a volume in use is not atomic).
pub(crate) fn copy_tree(
    src: &Path,
    src_modes: &Modes,
    dst: &Path,
    dst_policy: Policy,
    durable: bool,
) -> Result<Modes, ProviderError> {
    let sdir = Dir::open(src).map_err(|e| io_err("opening", src, e))?;
    let (dparent, dname) = split(dst).map_err(|e| io_err("creating", dst, e))?;
    let dparent = Dir::open(dparent).map_err(|e| io_err("opening", dparent, e))?;
    dparent
        .create_dir(dname, 0o700)
        .map_err(|e| io_err("creating directory", dst, e))?;
    let ddir = dparent
        .open_dir(dname)
        .map_err(|e| io_err("opening", dst, e))?;
    let root_stat = sdir.stat().map_err(|e| io_err("examining", src, e))?;
    let space = SpaceGuard::new(ddir.try_clone().map_err(|e| io_err("opening", dst, e))?);
    let mut copy = TreeCopy {
        src_root: src,
        src_modes,
        dst_modes: Modes::new(dst_policy),
        reflink: true,
        durable,
        space,
    };
    copy.run(sdir, ddir, src_modes.true_mode(b"", root_stat.mode))?;
    Ok(copy.dst_modes)
}

struct TreeCopy<'a> {
    src_root: &'a Path,
    src_modes: &'a Modes,
    dst_modes: Modes,
    reflink: bool,
    durable: bool,
    /// Free bytes (where files are byte copies) and inodes, checked as the
    /// copy goes.
    space: SpaceGuard,
}

impl TreeCopy<'_> {
    fn err(&self, what: &str, rel: &[u8], e: io::Error) -> ProviderError {
        ProviderError::io(format!("{what} {}", shown_in(self.src_root, rel)), e)
    }

    fn run(&mut self, src: Dir, dst: Dir, root_mode: u32) -> Result<(), ProviderError> {
        let left = self.listing(&src, b"")?;
        let mut stack = vec![CopyFrame {
            src,
            dst,
            rel: Vec::new(),
            true_mode: root_mode,
            left,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.left.pop() else {
                let done = stack.pop().expect("a frame");
                self.finish_dir(&done)?;
                continue;
            };
            let rel = child(&frame.rel, &name);
            let Some(st) = frame
                .src
                .stat_at(&name)
                .map_err(|e| self.err("examining", &rel, e))?
            else {
                continue;
            };
            let cost = if st.kind == Kind::File && !self.reflink {
                data_bytes(&st)
            } else {
                0
            };
            self.space.entry_for("the copy", cost)?;
            match st.kind {
                Kind::Dir => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(too_deep(&shown_in(self.src_root, &rel)));
                    }
                    let frame = stack.last().expect("a frame");
                    let src = frame
                        .src
                        .open_dir(&name)
                        .map_err(|e| self.err("opening directory", &rel, e))?;
                    let st = src.stat().map_err(|e| self.err("examining", &rel, e))?;
                    frame
                        .dst
                        .create_dir(&name, 0o700)
                        .map_err(|e| self.err("creating the copy of", &rel, e))?;
                    let dst = frame
                        .dst
                        .open_dir(&name)
                        .map_err(|e| self.err("opening the copy of", &rel, e))?;
                    let left = self.listing(&src, &rel)?;
                    let true_mode = self.src_modes.true_mode(&rel, st.mode);
                    stack.push(CopyFrame {
                        src,
                        dst,
                        rel,
                        true_mode,
                        left,
                    });
                }
                Kind::File => {
                    let frame = stack.last().expect("a frame");
                    let (s, st) = frame
                        .src
                        .open_file(&name)
                        .map_err(|e| self.err("opening", &rel, e))?;
                    let true_mode = self.src_modes.true_mode(&rel, st.mode);
                    let stored = self.dst_modes.record(&rel, true_mode, false);
                    let d = frame
                        .dst
                        .create_file(&name, 0o600)
                        .map_err(|e| self.err("creating the copy of", &rel, e))?;
                    let cloned = try_clone(&s, &d, &mut self.reflink)
                        .map_err(|e| self.err("copying", &rel, e))?;
                    if !cloned {
                        // The check before this entry counted no bytes if
                        // it expected a clone: the bytes must fit now.
                        if cost == 0 {
                            self.space.check("the copy", 0, data_bytes(&st))?;
                        }
                        let space = &self.space;
                        let mut fits = |bytes| space.check("the copy", 0, bytes);
                        match copy_data(&s, &d, st.len, data_bytes(&st), &mut fits) {
                            Ok(()) => {}
                            Err(CopyFailed::Io(e)) => return Err(self.err("copying", &rel, e)),
                            Err(CopyFailed::Refused(e)) => return Err(e),
                        }
                    }
                    let durable = self.durable;
                    let finished = (|| -> io::Result<()> {
                        d.set_permissions(fs::Permissions::from_mode(stored))?;
                        if durable { d.sync_all() } else { Ok(()) }
                    })();
                    finished.map_err(|e| self.err("copying", &rel, e))?;
                }
                Kind::Symlink => {
                    let frame = stack.last().expect("a frame");
                    let target = frame
                        .src
                        .read_link(&name)
                        .map_err(|e| self.err("reading link", &rel, e))?;
                    frame
                        .dst
                        .symlink(&target, &name)
                        .map_err(|e| self.err("creating the copy of", &rel, e))?;
                }
                other => return Err(unsupported(&shown_in(self.src_root, &rel), other)),
            }
        }
        Ok(())
    }

    fn listing(&self, dir: &Dir, rel: &[u8]) -> Result<Vec<Vec<u8>>, ProviderError> {
        let mut names = dir.names().map_err(|e| self.err("listing", rel, e))?;
        names.reverse();
        Ok(names)
    }

    /// After a directory's entries: its stored mode, and its fsync.
    fn finish_dir(&mut self, done: &CopyFrame) -> Result<(), ProviderError> {
        let stored = self.dst_modes.record(&done.rel, done.true_mode, true);
        done.dst
            .set_mode(stored)
            .and_then(|()| {
                if self.durable {
                    done.dst.sync()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| self.err("finishing the copy of", &done.rel, e))
    }
}

/// What `SEEK_DATA`/`SEEK_HOLE` say of the open file `f` from `pos` on
/// (clipped to `len`): `Some((data, end))`, the range `[pos, end)` being
/// all data or all hole, `end > pos`; `None` if the answers contradict each
/// other (the file changes meanwhile). A file system without those seeks
/// has no holes: the rest is data.
fn region_at(f: &File, pos: u64, len: u64) -> io::Result<Option<(bool, u64)>> {
    match seek_data(f, pos, libc::SEEK_DATA) {
        // Only a hole is left (or the file shrank: its reads will say).
        Ok(None) => Ok(Some((false, len))),
        Ok(Some(start)) if start > pos => Ok(Some((false, start.min(len)))),
        Ok(Some(start)) if start == pos => match seek_data(f, pos, libc::SEEK_HOLE) {
            Ok(Some(end)) if end > pos => Ok(Some((true, end.min(len)))),
            // The data at `pos` turned into a hole between the two seeks.
            Ok(Some(_)) => Ok(None),
            Ok(None) => Ok(Some((true, len))),
            Err(e) => Err(e),
        },
        Ok(Some(_)) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some((true, len))),
        Err(e) => Err(e),
    }
}

/// Whether the first `len` bytes of the open regular files `fa` and `fb`
/// (both `len` bytes long when opened) are equal, found by their extent
/// maps: a range that is a hole in both is equal without being read; a
/// range that is data in both is read from both and compared; a range
/// that is data in one and a hole in the other is read from the data side
/// and compared with zeros. Only data is read (`read` counts it), so a
/// file of terabytes holding kilobytes costs kilobytes. Each round moves forward (every
/// range is non-empty): at most one round per extent boundary of either
/// file. `false` when the files differ, and whenever the seeks contradict
/// each other or a read comes up short (a file changing meanwhile): a file
/// sent as changed when it was not is still received right.
pub(crate) fn same_content(fa: &File, fb: &File, len: u64, read: &mut u64) -> io::Result<bool> {
    let mut ba = Vec::new();
    let mut bb = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let (Some((da, ea)), Some((db, eb))) = (region_at(fa, pos, len)?, region_at(fb, pos, len)?)
        else {
            return Ok(false);
        };
        let end = ea.min(eb);
        debug_assert!(pos < end && end <= len);
        if da || db {
            if ba.is_empty() {
                ba = vec![0u8; CHUNK];
                bb = vec![0u8; CHUNK];
            }
            let mut at = pos;
            while at < end {
                let n = usize::try_from(end - at).map_or(CHUNK, |l| l.min(CHUNK));
                for (data, f, buf) in [(da, fa, &mut ba), (db, fb, &mut bb)] {
                    if data {
                        if !read_exact_at(f, &mut buf[..n], at)? {
                            return Ok(false);
                        }
                        *read += n as u64;
                    } else {
                        buf[..n].fill(0);
                    }
                }
                if ba[..n] != bb[..n] {
                    return Ok(false);
                }
                at += n as u64;
            }
        }
        pos = end;
    }
    Ok(true)
}

/// Fills `buf` from `f` at `offset`; `false` if the file ends first.
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    /// Two files compare by content, whatever their holes: a hole equals
    /// written zeros (read from the data side only), a byte differing in a
    /// range that is data in one and a hole in the other is found, and a
    /// range that is a hole in both is never read.
    #[test]
    fn files_compare_by_content_whatever_their_holes() {
        use std::os::unix::fs::FileExt;
        const LEN: u64 = 64 << 20;
        const B: u64 = 4096;
        let t = tempfile::tempdir().unwrap();
        let make = |name: &str, writes: &[(u64, &[u8])]| {
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(t.path().join(name))
                .unwrap();
            f.set_len(LEN).unwrap();
            for (at, bytes) in writes {
                f.write_all_at(bytes, *at).unwrap();
            }
            f
        };
        let ones = vec![1u8; usize::try_from(B).unwrap()];
        let zeros = vec![0u8; 1 << 20];
        // Data at 0 and at 32 MiB, holes elsewhere.
        let sparse = make("sparse", &[(0, &ones), (32 << 20, &ones)]);
        // The same content, with 1 MiB of written zeros after each piece.
        let dense = make(
            "dense",
            &[
                (0, &ones),
                (B, &zeros),
                (32 << 20, &ones),
                ((32 << 20) + B, &zeros),
            ],
        );
        let mut read = 0;
        assert!(same_content(&sparse, &dense, LEN, &mut read).unwrap());
        assert!(
            read <= 4 * (B + (1 << 20)),
            "{read} bytes read: holes in both were read"
        );
        let mut read = 0;
        assert!(same_content(&sparse, &sparse, LEN, &mut read).unwrap());
        assert!(read <= 4 * B, "{read} bytes read of {} of data", 2 * B);

        // A byte in the written zeros (a hole of the other file) differs.
        let other = make(
            "other",
            &[
                (0, &ones),
                (B, &zeros),
                (32 << 20, &ones),
                ((32 << 20) + B, &zeros),
            ],
        );
        other.write_all_at(&[7], (32 << 20) + B + 5).unwrap();
        assert!(!same_content(&sparse, &other, LEN, &mut 0).unwrap());
        assert!(!same_content(&other, &sparse, LEN, &mut 0).unwrap());
        // Data moved from one place to another: different.
        let moved = make("moved", &[(B, &ones), (32 << 20, &ones)]);
        assert!(!same_content(&sparse, &moved, LEN, &mut 0).unwrap());
        // A difference in the last byte is found.
        let last = make("last", &[(0, &ones), (32 << 20, &ones), (LEN - 1, &[9])]);
        assert!(!same_content(&sparse, &last, LEN, &mut 0).unwrap());
        assert!(same_content(&sparse, &last, LEN - 1, &mut 0).unwrap());
        assert!(same_content(&sparse, &moved, 0, &mut 0).unwrap());
    }

    /// An immutable file (which a tenant's root can make inside its volume)
    /// is not a race: the removal stops at once and names it and why,
    /// instead of retrying [`REMOVE_RACES`] times and then blaming a tree
    /// that keeps changing.
    #[test]
    fn an_immutable_file_stops_a_removal_with_its_name_and_the_reason() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("VOLMGR_REQUIRE_ROOT").is_none(),
                "VOLMGR_REQUIRE_ROOT is set but this test does not run as root"
            );
            eprintln!("SKIP: chattr +i needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("doomed");
        fs::create_dir_all(root.join("sub")).unwrap();
        let stuck = root.join("sub/stuck");
        fs::write(&stuck, b"x").unwrap();
        let chattr = |flag: &str| {
            let out = std::process::Command::new("chattr")
                .arg(flag)
                .arg(&stuck)
                .output()
                .expect("chattr (e2fsprogs)");
            assert!(out.status.success(), "chattr {flag}: {out:?}");
        };
        chattr("+i");
        let parent = Dir::open(t.path()).unwrap();
        let err = remove_entry(&parent, b"doomed").unwrap_err();
        chattr("-i");
        let text = err.to_string();
        assert!(
            text.contains("\"stuck\"") || text.contains("stuck cannot"),
            "names the file: {text}"
        );
        assert!(text.contains("immutable"), "says why: {text}");
        assert!(!text.contains("keeps changing"), "{text}");
        remove_entry(&parent, b"doomed").unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn removal_of_a_deep_tree_holds_few_handles_and_keeps_what_is_outside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("doomed");
        fs::create_dir(&root).unwrap();
        std::fs::write(t.path().join("keep.txt"), b"keep").unwrap();
        // Deeper than REMOVE_HELD, built by handle (the path would exceed PATH_MAX).
        let mut d = Dir::open(&root).unwrap();
        for _ in 0..(3 * REMOVE_HELD) {
            d.create_dir(b"dddddddddddddddddddddddddddddd", 0o500)
                .unwrap();
            d.create_file(b"f", 0o444).unwrap().write_all(b"x").unwrap();
            d.symlink(t.path().join("keep.txt").as_os_str().as_bytes(), b"l")
                .unwrap();
            d = d.open_dir(b"dddddddddddddddddddddddddddddd").unwrap();
        }
        drop(d);
        symlink(t.path(), root.join("up")).unwrap();
        let (parent, name) = split(&root).unwrap();
        remove_entry(&Dir::open(parent).unwrap(), name).unwrap();
        assert!(!root.exists());
        assert_eq!(std::fs::read(t.path().join("keep.txt")).unwrap(), b"keep");
    }

    /// `copy_data` of files with holes in every place, dense and empty
    /// files, and a source shorter than the length asked (it shrank after
    /// it was examined): the copy reads as the source does up to its end,
    /// zeros after it, and has exactly the length asked.
    #[test]
    fn a_data_copy_reads_as_its_source_for_every_layout_of_holes() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        const MIB: u64 = 1 << 20;
        // (file length, written ranges, length asked)
        type Case = (u64, &'static [(u64, u64)], u64);
        let cases: &[Case] = &[
            (0, &[], 0),
            (5, &[(0, 5)], 5),
            (3 * MIB, &[(0, 3 * MIB)], 3 * MIB),
            (8 * MIB, &[], 8 * MIB),
            (8 * MIB, &[(0, 10)], 8 * MIB),
            (8 * MIB, &[(8 * MIB - 10, 10)], 8 * MIB),
            (8 * MIB, &[(MIB, 100), (5 * MIB + 7, MIB)], 8 * MIB),
            (2 * MIB, &[(0, 2 * MIB)], 3 * MIB),
            (4 * MIB, &[(MIB, 4096)], 2 * MIB),
        ];
        for (i, &(len, ranges, asked)) in cases.iter().enumerate() {
            let src_path = t.path().join(format!("src{i}"));
            let src = File::create(&src_path).unwrap();
            src.set_len(len).unwrap();
            for (n, &(at, size)) in ranges.iter().enumerate() {
                let byte = u8::try_from(n + 1).unwrap();
                src.write_all_at(&vec![byte; usize::try_from(size).unwrap()], at)
                    .unwrap();
            }
            let src = File::open(&src_path).unwrap();
            let dst_path = t.path().join(format!("dst{i}"));
            let dst = File::create(&dst_path).unwrap();
            let mut fits = |_| -> Result<(), ()> { panic!("the data was counted") };
            let counted = u64::MAX;
            assert!(
                copy_data(&src, &dst, asked, counted, &mut fits).is_ok(),
                "case {i}"
            );
            let want = {
                let mut b = fs::read(&src_path).unwrap();
                b.resize(usize::try_from(asked).unwrap(), 0);
                b
            };
            let got = fs::read(&dst_path).unwrap();
            assert!(got == want, "case {i}: the copy differs from its source");
        }
    }

    /// A writer filling a file's holes during a copy makes its data larger
    /// than the allocated bytes the space check counted: every byte beyond
    /// them is asked of `fits` before it is written, and a refusal writes
    /// nothing of that range.
    #[test]
    fn data_beyond_what_was_counted_is_asked_of_the_space_check_before_it_is_written() {
        use std::os::unix::fs::FileExt;
        const MIB: u64 = 1 << 20;
        let t = tempfile::tempdir().unwrap();
        let src_path = t.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.set_len(8 * MIB).unwrap();
        src.write_all_at(&vec![1; 1 << 20], 0).unwrap();
        src.write_all_at(&vec![2; 2 << 20], 4 * MIB).unwrap();
        let src = File::open(&src_path).unwrap();

        // Counted: the first range. Asked: the second, once, before it is written.
        let dst = File::create(t.path().join("a")).unwrap();
        let mut asked = Vec::new();
        let mut fits = |bytes| -> Result<(), ()> {
            asked.push(bytes);
            Ok(())
        };
        assert!(copy_data(&src, &dst, 8 * MIB, MIB, &mut fits).is_ok());
        assert_eq!(asked, [2 * MIB]);
        assert!(fs::read(t.path().join("a")).unwrap() == fs::read(&src_path).unwrap());

        // Nothing counted and refused: nothing written.
        let dst = File::create(t.path().join("b")).unwrap();
        let mut refuse = |_| Err("full");
        match copy_data(&src, &dst, 8 * MIB, 0, &mut refuse) {
            Err(CopyFailed::Refused("full")) => {}
            _ => panic!("the refusal is returned"),
        }
        assert_eq!(dst.metadata().unwrap().len(), 0, "nothing written");
    }

    #[test]
    fn a_copy_refuses_a_fifo_and_a_tree_deeper_than_the_limit() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let fifo = std::ffi::CString::new(src.join("p").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = copy_tree(
            &src,
            &Modes::new(Policy::Plain),
            &t.path().join("a"),
            Policy::Plain,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("is a fifo"), "{e}");

        let deep = t.path().join("deep");
        let mut d = Dir::open(t.path()).unwrap();
        d.create_dir(b"deep", 0o755).unwrap();
        d = d.open_dir(b"deep").unwrap();
        for _ in 0..=MAX_DEPTH {
            d.create_dir(b"d", 0o755).unwrap();
            d = d.open_dir(b"d").unwrap();
        }
        let e = copy_tree(
            &deep,
            &Modes::new(Policy::Plain),
            &t.path().join("b"),
            Policy::Plain,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("directories deep"), "{e}");
    }
}
