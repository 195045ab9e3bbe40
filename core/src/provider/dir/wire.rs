//! The directory provider's transfer stream: encoder (full and incremental)
//! and the bounded decoder that applies a stream to a staging tree. The format
//! is specified in the parent module's documentation.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::tree::{self, KEPT_BITS, MAX_DEPTH, Modes, PERM_BITS};
use crate::fsutil::{Dir, Kind};
use crate::provider::stream::{CHUNK, HashReader, HashWriter};
use crate::provider::{ProviderError, SendStats};

pub(crate) const MAGIC: &[u8; 8] = b"VMGRDIRS";
pub(crate) const VERSION: u16 = 1;
pub(crate) const FLAG_INCREMENTAL: u16 = 1;

pub(crate) const TAG_DIR: u8 = b'D';
pub(crate) const TAG_FILE: u8 = b'F';
pub(crate) const TAG_LINK: u8 = b'L';
pub(crate) const TAG_PERM: u8 = b'P';
pub(crate) const TAG_DELETE: u8 = b'X';
pub(crate) const TAG_END: u8 = b'E';

/// Longest relative path (bytes) a stream may carry.
pub const MAX_PATH: usize = 4096;
/// Longest symlink target (bytes) a sender sends; a receiver takes at most
/// one byte less (the kernel's `PATH_MAX` counts the NUL).
pub const MAX_LINK: usize = 4096;
/// Longest path component (bytes): the kernel's `NAME_MAX`.
pub const MAX_NAME: usize = 255;
/// Most records (excluding the end record) one stream may carry.
pub const MAX_ENTRIES: u64 = 1 << 26;
/// Largest file (bytes) one record may declare.
pub const MAX_FILE_LEN: u64 = 1 << 44;
/// Bound on the memory held for modes the staging tree cannot store directly
/// (directories without owner `rwx`, files without owner `rw`).
pub const MAX_MODE_EXCEPTION_BYTES: usize = 64 << 20;

/// The stream header's identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub guid: u128,
    pub base: Option<u128>,
}

fn wio(e: std::io::Error) -> ProviderError {
    ProviderError::io("writing the stream", e)
}

struct Enc<'a> {
    w: HashWriter<BufWriter<&'a mut dyn Write>>,
    count: u64,
    buf: Vec<u8>,
    /// The snapshot's path, for messages.
    root: &'a Path,
}

/// A directory being sent: its handle, relative path, names left (reversed).
struct Frame {
    dir: Dir,
    rel: Vec<u8>,
    left: Vec<Vec<u8>>,
}

impl<'a> Enc<'a> {
    fn put(&mut self, b: &[u8]) -> Result<(), ProviderError> {
        self.w.write_all(b).map_err(wio)
    }

    fn err(&self, what: &str, rel: &[u8], e: std::io::Error) -> ProviderError {
        ProviderError::io(format!("{what} {}", tree::shown_in(self.root, rel)), e)
    }

    fn record(&mut self, tag: u8, rel: &[u8]) -> Result<(), ProviderError> {
        if rel.len() > MAX_PATH {
            return Err(ProviderError::Other(format!(
                "cannot send {}: path longer than {MAX_PATH} bytes",
                tree::show(rel)
            )));
        }
        self.count += 1;
        self.put(&[tag])?;
        self.put(&(rel.len() as u16).to_be_bytes())?;
        self.put(rel)
    }

    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        self.record(TAG_DIR, rel)?;
        self.put(&mode.to_be_bytes())
    }

    fn perm(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        self.record(TAG_PERM, rel)?;
        self.put(&mode.to_be_bytes())
    }

    fn delete(&mut self, rel: &[u8]) -> Result<(), ProviderError> {
        self.record(TAG_DELETE, rel)
    }

    fn link(&mut self, rel: &[u8], target: &[u8]) -> Result<(), ProviderError> {
        if target.len() > MAX_LINK {
            return Err(ProviderError::Other(format!(
                "cannot send {}: link target longer than {MAX_LINK} bytes",
                tree::shown_in(self.root, rel)
            )));
        }
        self.record(TAG_LINK, rel)?;
        self.put(&(target.len() as u16).to_be_bytes())?;
        self.put(target)
    }

    /// A file record with the content of the open file `f` (`len` bytes, as
    /// `fstat` said when it was opened).
    fn file(&mut self, rel: &[u8], mode: u32, f: &mut File, len: u64) -> Result<(), ProviderError> {
        self.record(TAG_FILE, rel)?;
        self.put(&mode.to_be_bytes())?;
        self.put(&len.to_be_bytes())?;
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK];
        }
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            let n = f
                .read(&mut self.buf[..want])
                .map_err(|e| self.err("reading", rel, e))?;
            if n == 0 {
                return Err(ProviderError::Other(format!(
                    "{} shrank while being sent",
                    tree::shown_in(self.root, rel)
                )));
            }
            self.w.write_all(&self.buf[..n]).map_err(wio)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Sends entry `name` of `parent` (at `rel`), in full; a directory is
    /// returned open for the caller to walk.
    fn entry(
        &mut self,
        parent: &Dir,
        name: &[u8],
        rel: &[u8],
        modes: &Modes,
    ) -> Result<Option<Dir>, ProviderError> {
        let st = parent
            .stat_at(name)
            .map_err(|e| self.err("examining", rel, e))?
            .ok_or_else(|| {
                ProviderError::Other(format!(
                    "{} vanished while being sent",
                    tree::shown_in(self.root, rel)
                ))
            })?;
        match st.kind {
            Kind::Dir => {
                let d = parent
                    .open_dir(name)
                    .map_err(|e| self.err("opening directory", rel, e))?;
                let st = d.stat().map_err(|e| self.err("examining", rel, e))?;
                self.dir(rel, modes.true_mode(rel, st.mode))?;
                Ok(Some(d))
            }
            Kind::File => {
                let (mut f, st) = parent
                    .open_file(name)
                    .map_err(|e| self.err("opening", rel, e))?;
                self.file(rel, modes.true_mode(rel, st.mode), &mut f, st.len)?;
                Ok(None)
            }
            Kind::Symlink => {
                let target = parent
                    .read_link(name)
                    .map_err(|e| self.err("reading link", rel, e))?;
                self.link(rel, &target)?;
                Ok(None)
            }
            other => Err(tree::unsupported(&tree::shown_in(self.root, rel), other)),
        }
    }

    fn frame(&self, dir: Dir, rel: Vec<u8>, depth: usize) -> Result<Frame, ProviderError> {
        if depth >= MAX_DEPTH {
            return Err(tree::too_deep(&tree::shown_in(self.root, &rel)));
        }
        let mut left = dir.names().map_err(|e| self.err("listing", &rel, e))?;
        left.reverse();
        Ok(Frame { dir, rel, left })
    }

    /// Sends everything under the open directory `dir` (at `rel`), in full.
    fn walk(&mut self, dir: Dir, rel: Vec<u8>, modes: &Modes) -> Result<(), ProviderError> {
        let base_depth = rel.split(|&b| b == b'/').count();
        let mut stack = vec![self.frame(dir, rel, base_depth)?];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.left.pop() else {
                stack.pop();
                continue;
            };
            let rel = tree::child(&frame.rel, &name);
            if let Some(d) = self.entry(&frame.dir, &name, &rel, modes)? {
                let depth = base_depth + stack.len();
                stack.push(self.frame(d, rel, depth)?);
            }
        }
        Ok(())
    }

    /// Sends entry `name` of `parent` and everything under it, in full.
    fn subtree(
        &mut self,
        parent: &Dir,
        name: &[u8],
        rel: Vec<u8>,
        modes: &Modes,
    ) -> Result<(), ProviderError> {
        match self.entry(parent, name, &rel, modes)? {
            Some(d) => self.walk(d, rel, modes),
            None => Ok(()),
        }
    }

    /// Sends what changed from `base` to `snap`, both open snapshot roots.
    fn diff(
        &mut self,
        snap: Dir,
        smodes: &Modes,
        base: Dir,
        bmodes: &Modes,
    ) -> Result<(), ProviderError> {
        let mut stack: Vec<(Dir, Dir, Vec<u8>)> = vec![(snap, base, Vec::new())];
        while let Some((sd, bd, rel)) = stack.pop() {
            let s_names = sd.names().map_err(|e| self.err("listing", &rel, e))?;
            let b_names = bd
                .names()
                .map_err(|e| self.err("listing the base of", &rel, e))?;
            let (mut i, mut j) = (0, 0);
            let mut dirs = Vec::new();
            while i < s_names.len() || j < b_names.len() {
                let order = match (s_names.get(i), b_names.get(j)) {
                    (Some(s), Some(b)) => s.cmp(b),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, _) => std::cmp::Ordering::Greater,
                };
                match order {
                    std::cmp::Ordering::Less => {
                        let c = tree::child(&rel, &s_names[i]);
                        self.subtree(&sd, &s_names[i], c, smodes)?;
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        self.delete(&tree::child(&rel, &b_names[j]))?;
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        let name = &s_names[i];
                        let c = tree::child(&rel, name);
                        i += 1;
                        j += 1;
                        if let Some(pair) = self.changed(&sd, &bd, name, &c, smodes, bmodes)? {
                            if rel.split(|&b| b == b'/').count() + stack.len() + dirs.len()
                                >= MAX_DEPTH
                            {
                                return Err(tree::too_deep(&tree::shown_in(self.root, &c)));
                            }
                            dirs.push((pair.0, pair.1, c));
                        }
                    }
                }
            }
            stack.extend(dirs.into_iter().rev());
        }
        Ok(())
    }

    /// Sends what changed in entry `name`, present in both trees; two
    /// directories are returned open for the caller to compare.
    fn changed(
        &mut self,
        sd: &Dir,
        bd: &Dir,
        name: &[u8],
        c: &[u8],
        smodes: &Modes,
        bmodes: &Modes,
    ) -> Result<Option<(Dir, Dir)>, ProviderError> {
        let vanished = |what: &str| {
            ProviderError::Other(format!(
                "{what} {} vanished while being sent",
                tree::shown_in(self.root, c)
            ))
        };
        let sst = sd
            .stat_at(name)
            .map_err(|e| self.err("examining", c, e))?
            .ok_or_else(|| vanished("snapshot entry"))?;
        let bst = bd
            .stat_at(name)
            .map_err(|e| self.err("examining the base of", c, e))?
            .ok_or_else(|| vanished("base entry"))?;
        match (sst.kind, bst.kind) {
            (Kind::Dir, Kind::Dir) => {
                let s = sd.open_dir(name).map_err(|e| self.err("opening", c, e))?;
                let b = bd
                    .open_dir(name)
                    .map_err(|e| self.err("opening the base of", c, e))?;
                let smode =
                    smodes.true_mode(c, s.stat().map_err(|e| self.err("examining", c, e))?.mode);
                let bmode = bmodes.true_mode(
                    c,
                    b.stat()
                        .map_err(|e| self.err("examining the base of", c, e))?
                        .mode,
                );
                if smode != bmode {
                    self.dir(c, smode)?;
                }
                Ok(Some((s, b)))
            }
            (Kind::File, Kind::File) => {
                let (mut sf, sst) = sd.open_file(name).map_err(|e| self.err("opening", c, e))?;
                let (mut bf, bst) = bd
                    .open_file(name)
                    .map_err(|e| self.err("opening the base of", c, e))?;
                let smode = smodes.true_mode(c, sst.mode);
                let bmode = bmodes.true_mode(c, bst.mode);
                let same = sst.len == bst.len
                    && tree::same_content(&mut sf, &mut bf)
                        .map_err(|e| self.err("comparing", c, e))?;
                if !same {
                    sf.seek(SeekFrom::Start(0))
                        .map_err(|e| self.err("rewinding", c, e))?;
                    self.file(c, smode, &mut sf, sst.len)?;
                } else if smode != bmode {
                    self.perm(c, smode)?;
                }
                Ok(None)
            }
            (Kind::Symlink, Kind::Symlink) => {
                let st = sd
                    .read_link(name)
                    .map_err(|e| self.err("reading link", c, e))?;
                let bt = bd
                    .read_link(name)
                    .map_err(|e| self.err("reading the base's link", c, e))?;
                if st != bt {
                    self.link(c, &st)?;
                }
                Ok(None)
            }
            // The type changed: the receiver replaces the entry.
            _ => {
                self.subtree(sd, name, c.to_vec(), smodes)?;
                Ok(None)
            }
        }
    }
}

/// Writes a stream of the snapshot tree `snap` (identity `guid`), in full or,
/// with `base`, incremental from it. Both trees are walked by handle.
pub(crate) fn send(
    snap: &Path,
    smodes: &Modes,
    guid: u128,
    base: Option<(&Path, &Modes, u128)>,
    out: &mut dyn Write,
) -> Result<SendStats, ProviderError> {
    let open = |p: &Path| {
        Dir::open(p).map_err(|e| ProviderError::io(format!("opening {}", p.display()), e))
    };
    let sdir = open(snap)?;
    let mut enc = Enc {
        w: HashWriter::new(BufWriter::with_capacity(CHUNK, out)),
        count: 0,
        buf: Vec::new(),
        root: snap,
    };
    let flags = if base.is_some() { FLAG_INCREMENTAL } else { 0 };
    enc.put(MAGIC)?;
    enc.put(&VERSION.to_be_bytes())?;
    enc.put(&flags.to_be_bytes())?;
    enc.put(&0u32.to_be_bytes())?;
    enc.put(&guid.to_be_bytes())?;
    enc.put(&base.map_or(0, |b| b.2).to_be_bytes())?;
    let smode = smodes.true_mode(
        b"",
        sdir.stat().map_err(|e| enc.err("examining", b"", e))?.mode,
    );
    match base {
        None => {
            enc.dir(b"", smode)?;
            enc.walk(sdir, Vec::new(), smodes)?;
        }
        Some((bpath, bmodes, _)) => {
            let bdir = open(bpath)?;
            let bst = bdir
                .stat()
                .map_err(|e| ProviderError::io(format!("examining {}", bpath.display()), e))?;
            if smode != bmodes.true_mode(b"", bst.mode) {
                enc.dir(b"", smode)?;
            }
            enc.diff(sdir, smodes, bdir, bmodes)?;
        }
    }
    let count = enc.count;
    enc.put(&[TAG_END])?;
    enc.put(&count.to_be_bytes())?;
    let crc = enc.w.crc();
    enc.w.write_unhashed(&crc.to_be_bytes()).map_err(wio)?;
    enc.w.flush().map_err(wio)?;
    Ok(SendStats {
        bytes: enc.w.bytes(),
        incremental: base.is_some(),
        resumed: false,
    })
}

fn bad(msg: String) -> ProviderError {
    ProviderError::Stream(msg)
}

/// Reads and checks the stream header.
pub(crate) fn read_header<R: Read>(r: &mut HashReader<R>) -> Result<Header, ProviderError> {
    let mut magic = [0u8; 8];
    r.read_exact_or(&mut magic, "the magic")?;
    if &magic != MAGIC {
        return Err(bad(format!(
            "bad magic {:?}: not a volmgr directory stream",
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = r.read_u16("the version")?;
    if version != VERSION {
        return Err(bad(format!(
            "unsupported stream version {version} (this build reads {VERSION})"
        )));
    }
    let flags = r.read_u16("the flags")?;
    if flags & !FLAG_INCREMENTAL != 0 {
        return Err(bad(format!("unknown flags {flags:#06x}")));
    }
    let reserved = r.read_u32("the reserved field")?;
    if reserved != 0 {
        return Err(bad(format!("reserved field is {reserved:#x}, not 0")));
    }
    let guid = r.read_u128("the snapshot guid")?;
    let base = r.read_u128("the base guid")?;
    let incremental = flags & FLAG_INCREMENTAL != 0;
    if !incremental && base != 0 {
        return Err(bad("a full stream names a base guid".into()));
    }
    Ok(Header {
        guid,
        base: incremental.then_some(base),
    })
}

fn shown(rel: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(rel))
}

/// Reads a relative path and checks it is safe: not absolute, no empty, `.`
/// or `..` component, no NUL, at most [`MAX_PATH`] bytes. The empty path (the
/// root) only where `allow_root`.
fn read_path<R: Read>(r: &mut HashReader<R>, allow_root: bool) -> Result<Vec<u8>, ProviderError> {
    let at = r.bytes();
    let len = r.read_u16("a path length")? as usize;
    let rel = r.read_bytes(len, MAX_PATH, "a path")?;
    if rel.is_empty() {
        if allow_root {
            return Ok(rel);
        }
        return Err(bad(format!("empty path in the record at byte {at}")));
    }
    if rel[0] == b'/' {
        return Err(bad(format!("absolute path {} at byte {at}", shown(&rel))));
    }
    if rel.contains(&0) {
        return Err(bad(format!(
            "path {} contains NUL (byte {at})",
            shown(&rel)
        )));
    }
    let mut depth = 0;
    for comp in rel.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(bad(format!(
                "path {} has a {:?} component (byte {at})",
                shown(&rel),
                String::from_utf8_lossy(comp)
            )));
        }
        if comp.len() > MAX_NAME {
            return Err(bad(format!(
                "path {} has a component of {} bytes, more than {MAX_NAME} (byte {at})",
                shown(&rel),
                comp.len()
            )));
        }
        depth += 1;
    }
    if depth > MAX_DEPTH {
        return Err(bad(format!(
            "path {} is {depth} components deep, more than {MAX_DEPTH} (byte {at})",
            shown(&rel[..rel.len().min(64)])
        )));
    }
    Ok(rel)
}

/// Reads a mode: bits beyond [`PERM_BITS`] are refused; setuid and setgid
/// are accepted and dropped (nothing received becomes setuid or setgid).
fn read_mode<R: Read>(r: &mut HashReader<R>) -> Result<u32, ProviderError> {
    let mode = r.read_u32("a mode")?;
    if mode & !PERM_BITS != 0 {
        return Err(bad(format!(
            "mode {mode:#o} has bits beyond {PERM_BITS:#o}"
        )));
    }
    Ok(mode & KEPT_BITS)
}

/// Parent of a relative path (`None` for a top-level entry).
fn parent_of(rel: &[u8]) -> Option<&[u8]> {
    rel.iter().rposition(|&b| b == b'/').map(|i| &rel[..i])
}

/// Applies stream records to the staging tree, every path resolved beneath
/// its root handle without following a symlink.
struct Apply<'a> {
    root: Dir,
    root_path: &'a Path,
    modes: &'a mut Modes,
    /// The parent directory of the last record, by relative path.
    cached: Option<(Vec<u8>, Dir)>,
    space: SpaceGuard,
}

/// Splits a non-empty relative path into its parent and its last name.
fn split_rel(rel: &[u8]) -> (&[u8], &[u8]) {
    match parent_of(rel) {
        Some(p) => (p, &rel[p.len() + 1..]),
        None => (&rel[..0], rel),
    }
}

impl Apply<'_> {
    fn io(&self, what: &str, rel: &[u8], e: std::io::Error) -> ProviderError {
        if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
            return bad(format!("{}: {e}", shown(rel)));
        }
        ProviderError::io(format!("{what} {}", tree::shown_in(self.root_path, rel)), e)
    }

    /// The parent directory of `rel`, if every ancestor is a real directory
    /// of the tree (`None` otherwise: absent, a symlink, a file).
    fn parent(&mut self, rel: &[u8]) -> Result<Option<&Dir>, ProviderError> {
        let (parent, _) = split_rel(rel);
        if self
            .cached
            .as_ref()
            .is_none_or(|(p, _)| p.as_slice() != parent)
        {
            self.cached = None;
            match self.root.open_beneath(parent) {
                Ok(d) => self.cached = Some((parent.to_vec(), d)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
                    ) || e.kind() == std::io::ErrorKind::Other =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(self.io("opening the parent of", rel, e)),
            }
        }
        Ok(self.cached.as_ref().map(|(_, d)| d))
    }

    fn need_parent(&mut self, rel: &[u8]) -> Result<Dir, ProviderError> {
        match self.parent(rel)? {
            Some(d) => d
                .try_clone()
                .map_err(|e| ProviderError::io("duplicating a directory handle", e)),
            None => Err(bad(format!(
                "{}: its parent is not a directory of the stream",
                shown(rel)
            ))),
        }
    }

    /// Removes whatever is at `name` of `dir` (entry `rel`, and its modes),
    /// unless it is a directory and `keep_dir`. Returns whether a directory
    /// was kept.
    fn clear(
        &mut self,
        dir: &Dir,
        name: &[u8],
        rel: &[u8],
        keep_dir: bool,
    ) -> Result<bool, ProviderError> {
        match dir
            .stat_at(name)
            .map_err(|e| self.io("examining", rel, e))?
        {
            None => Ok(false),
            Some(st) if st.kind == Kind::Dir && keep_dir => Ok(true),
            Some(st) => {
                tree::remove_entry(dir, name).map_err(|e| self.io("removing", rel, e))?;
                self.modes.forget_subtree(rel);
                if st.kind == Kind::Dir {
                    // The cached parent may have been under it.
                    self.cached = None;
                }
                Ok(false)
            }
        }
    }

    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        self.space.entry(0)?;
        if rel.is_empty() {
            let stored = self.modes.record(rel, mode, true);
            return self
                .root
                .set_mode(stored)
                .map_err(|e| self.io("setting the mode of", rel, e));
        }
        let parent = self.need_parent(rel)?;
        let (_, name) = split_rel(rel);
        if !self.clear(&parent, name, rel, true)? {
            parent
                .create_dir(name, 0o700)
                .map_err(|e| self.io("creating", rel, e))?;
        }
        let stored = self.modes.record(rel, mode, true);
        parent
            .set_mode_at(name, stored)
            .map_err(|e| self.io("setting the mode of", rel, e))
    }

    fn file<R: Read>(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
    ) -> Result<(), ProviderError> {
        self.space.entry(len)?;
        let parent = self.need_parent(rel)?;
        let (_, name) = split_rel(rel);
        self.clear(&parent, name, rel, false)?;
        let mut f = parent
            .create_file(name, 0o600)
            .map_err(|e| self.io("creating", rel, e))?;
        r.copy_exact(len, &mut f, "file content")?;
        let stored = self.modes.record(rel, mode, false);
        f.set_permissions(fs::Permissions::from_mode(stored))
            .map_err(|e| self.io("setting the mode of", rel, e))
    }

    fn link(&mut self, rel: &[u8], target: &[u8]) -> Result<(), ProviderError> {
        self.space.entry(0)?;
        let parent = self.need_parent(rel)?;
        let (_, name) = split_rel(rel);
        self.clear(&parent, name, rel, false)?;
        parent
            .symlink(target, name)
            .map_err(|e| self.io("creating symlink", rel, e))
    }

    fn perm(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        if rel.is_empty() {
            let stored = self.modes.record(rel, mode, true);
            return self
                .root
                .set_mode(stored)
                .map_err(|e| self.io("setting the mode of", rel, e));
        }
        let (_, name) = split_rel(rel);
        let st = match self.parent(rel)? {
            Some(d) => d
                .stat_at(name)
                .map_err(|e| ProviderError::io("examining", e))?,
            None => None,
        };
        let is_dir = match st.map(|s| s.kind) {
            Some(Kind::Dir) => true,
            Some(Kind::File) => false,
            _ => {
                return Err(bad(format!(
                    "mode change for {}, which is not a file or directory of the base",
                    shown(rel)
                )));
            }
        };
        let stored = self.modes.record(rel, mode, is_dir);
        let parent = self.need_parent(rel)?;
        parent
            .set_mode_at(name, stored)
            .map_err(|e| self.io("setting the mode of", rel, e))
    }

    fn delete(&mut self, rel: &[u8]) -> Result<(), ProviderError> {
        // Absent (or under something that is not a directory): nothing to do.
        if self.parent(rel)?.is_some() {
            let parent = self.need_parent(rel)?;
            let (_, name) = split_rel(rel);
            self.clear(&parent, name, rel, false)?;
        }
        Ok(())
    }
}

/// Keeps a receive from filling its file system: before each entry, the
/// free inodes (every [`SPACE_CHECK_EVERY`] entries) and, for file content,
/// the free bytes are checked against what the entry needs plus a reserve of
/// 2% of the file system (at least [`MIN_RESERVE_INODES`] inodes), so a
/// hostile stream is refused with [`ProviderError::NoSpace`] instead of
/// leaving the host's disk full.
pub(crate) struct SpaceGuard {
    dir: Dir,
    since_check: u32,
    /// Entries and content bytes the stream staged so far.
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

/// Entries between two inode checks (a file's content is checked every time).
pub const SPACE_CHECK_EVERY: u32 = 64;
/// Least number of inodes a receive leaves free.
pub const MIN_RESERVE_INODES: u64 = 2 * SPACE_CHECK_EVERY as u64;

impl SpaceGuard {
    pub(crate) fn new(dir: Dir) -> Self {
        SpaceGuard {
            dir,
            since_check: SPACE_CHECK_EVERY,
            entries: 0,
            bytes: 0,
        }
    }

    /// Checks that `entries` more entries holding `bytes` more bytes fit,
    /// leaving the reserve free.
    pub(crate) fn check(&self, what: &str, entries: u64, bytes: u64) -> Result<(), ProviderError> {
        let sp = self
            .dir
            .space()
            .map_err(|e| ProviderError::io("examining free space", e))?;
        let reserve_bytes = sp.total_bytes / 50;
        if sp.free_bytes < bytes.saturating_add(reserve_bytes) {
            return Err(ProviderError::NoSpace {
                what: what.to_owned(),
                detail: format!(
                    "{bytes} more bytes needed, {} free, {reserve_bytes} kept in reserve",
                    sp.free_bytes
                ),
            });
        }
        if let (Some(free), Some(total)) = (sp.free_inodes, sp.total_inodes) {
            let reserve = (total / 50).max(MIN_RESERVE_INODES);
            if free < entries.saturating_add(reserve) {
                return Err(ProviderError::NoSpace {
                    what: what.to_owned(),
                    detail: format!(
                        "{entries} more inodes needed, {free} free, {reserve} kept in reserve"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Before one more entry with `len` bytes of content.
    fn entry(&mut self, len: u64) -> Result<(), ProviderError> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(len);
        self.since_check += 1;
        if len > 0 || self.since_check >= SPACE_CHECK_EVERY {
            self.since_check = 0;
            self.check("the received stream", u64::from(SPACE_CHECK_EVERY), len)?;
        }
        Ok(())
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub records: u64,
    /// Entries created or replaced, and their content bytes.
    pub entries: u64,
    pub bytes: u64,
}

/// Applies the records after the header to the staging tree `root` (whose
/// modes follow [`super::tree::Policy::Staging`], tracked in `modes`), through
/// the end record, whose entry count and checksum must hold. Returns the
/// number of records.
pub(crate) fn apply<R: Read>(
    r: &mut HashReader<R>,
    root: &Path,
    modes: &mut Modes,
) -> Result<Applied, ProviderError> {
    let root_dir =
        Dir::open(root).map_err(|e| ProviderError::io(format!("opening {}", root.display()), e))?;
    let space = SpaceGuard::new(
        root_dir
            .try_clone()
            .map_err(|e| ProviderError::io("duplicating a directory handle", e))?,
    );
    let mut a = Apply {
        root: root_dir,
        root_path: root,
        modes,
        cached: None,
        space,
    };
    let mut count = 0u64;
    loop {
        let at = r.bytes();
        let tag = r.read_u8("a record tag")?;
        if tag == TAG_END {
            let n = r.read_u64("the entry count")?;
            let want = r.crc();
            let crc = r.read_u32("the checksum")?;
            if n != count {
                return Err(bad(format!(
                    "the end record counts {n} entries but the stream carried {count}"
                )));
            }
            if crc != want {
                return Err(bad(format!(
                    "checksum mismatch: the stream says {crc:#010x}, its bytes give {want:#010x}"
                )));
            }
            return Ok(Applied {
                records: count,
                entries: a.space.entries,
                bytes: a.space.bytes,
            });
        }
        count += 1;
        if count > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        match tag {
            TAG_DIR => {
                let rel = read_path(r, true)?;
                let mode = read_mode(r)?;
                a.dir(&rel, mode)?;
            }
            TAG_FILE => {
                let rel = read_path(r, false)?;
                let mode = read_mode(r)?;
                let len = r.read_u64("a file length")?;
                if len > MAX_FILE_LEN {
                    return Err(bad(format!(
                        "{} declares {len} bytes, more than the limit of {MAX_FILE_LEN}",
                        shown(&rel)
                    )));
                }
                a.file(r, &rel, mode, len)?;
            }
            TAG_LINK => {
                let rel = read_path(r, false)?;
                let n = r.read_u16("a link target length")? as usize;
                let target = r.read_bytes(n, MAX_LINK, "a link target")?;
                if target.is_empty() || target.contains(&0) || target.len() >= MAX_LINK {
                    return Err(bad(format!(
                        "symlink {} has an empty target, one with NUL, or one of {MAX_LINK} bytes or more",
                        shown(&rel)
                    )));
                }
                a.link(&rel, &target)?;
            }
            TAG_PERM => {
                let rel = read_path(r, true)?;
                let mode = read_mode(r)?;
                a.perm(&rel, mode)?;
            }
            TAG_DELETE => {
                let rel = read_path(r, false)?;
                a.delete(&rel)?;
            }
            other => {
                return Err(bad(format!("unknown record tag {other:#04x} at byte {at}")));
            }
        }
        if a.modes.key_bytes() > MAX_MODE_EXCEPTION_BYTES {
            return Err(bad(format!(
                "more than {MAX_MODE_EXCEPTION_BYTES} bytes of paths with modes the staging area cannot hold directly"
            )));
        }
    }
}
