//! The directory provider's transfer stream: encoder (full and incremental)
//! and the bounded decoder that applies a stream to a staging tree. The format
//! is specified in the parent module's documentation.

use std::fs::{self, DirBuilder};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::tree::{self, Modes, PERM_BITS, join, lstat};
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
/// Longest symlink target (bytes).
pub const MAX_LINK: usize = 4096;
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
}

impl<'a> Enc<'a> {
    fn put(&mut self, b: &[u8]) -> Result<(), ProviderError> {
        self.w.write_all(b).map_err(wio)
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

    fn link(&mut self, rel: &[u8], path: &Path) -> Result<(), ProviderError> {
        let target = fs::read_link(path)
            .map_err(|e| ProviderError::io(format!("reading link {}", path.display()), e))?;
        let target = target.as_os_str().as_bytes();
        if target.len() > MAX_LINK {
            return Err(ProviderError::Other(format!(
                "cannot send {}: link target longer than {MAX_LINK} bytes",
                path.display()
            )));
        }
        self.record(TAG_LINK, rel)?;
        self.put(&(target.len() as u16).to_be_bytes())?;
        self.put(target)
    }

    fn file(&mut self, rel: &[u8], mode: u32, path: &Path, len: u64) -> Result<(), ProviderError> {
        let mut f = tree::open_file_nofollow(path)
            .map_err(|e| ProviderError::io(format!("opening {}", path.display()), e))?;
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
                .map_err(|e| ProviderError::io(format!("reading {}", path.display()), e))?;
            if n == 0 {
                return Err(ProviderError::Other(format!(
                    "{} shrank while being sent",
                    path.display()
                )));
            }
            self.w.write_all(&self.buf[..n]).map_err(wio)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Sends `rel` and everything under it, in full.
    fn subtree(&mut self, root: &Path, modes: &Modes, rel: Vec<u8>) -> Result<(), ProviderError> {
        let mut stack = vec![rel];
        while let Some(rel) = stack.pop() {
            let path = join(root, &rel);
            let md = lstat(&path)?.ok_or_else(|| {
                ProviderError::Other(format!("{} vanished while being sent", path.display()))
            })?;
            let ft = md.file_type();
            if ft.is_dir() {
                self.dir(&rel, modes.true_mode(&rel, md.mode()))?;
                for name in tree::sorted_names(&path)?.into_iter().rev() {
                    stack.push(tree::child(&rel, &name));
                }
            } else if ft.is_file() {
                self.file(&rel, modes.true_mode(&rel, md.mode()), &path, md.len())?;
            } else if ft.is_symlink() {
                self.link(&rel, &path)?;
            } else {
                return Err(tree::unsupported(&path, ft));
            }
        }
        Ok(())
    }

    /// Sends what changed from `base` to `snap`, both directories at `rel`.
    fn diff(
        &mut self,
        snap: &Path,
        smodes: &Modes,
        base: &Path,
        bmodes: &Modes,
    ) -> Result<(), ProviderError> {
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let s_names = tree::sorted_names(&join(snap, &rel))?;
            let b_names = tree::sorted_names(&join(base, &rel))?;
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
                        self.subtree(snap, smodes, tree::child(&rel, &s_names[i]))?;
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        self.delete(&tree::child(&rel, &b_names[j]))?;
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        let c = tree::child(&rel, &s_names[i]);
                        i += 1;
                        j += 1;
                        let (sp, bp) = (join(snap, &c), join(base, &c));
                        let vanished = |p: &Path| {
                            ProviderError::Other(format!(
                                "{} vanished while being sent",
                                p.display()
                            ))
                        };
                        let smd = lstat(&sp)?.ok_or_else(|| vanished(&sp))?;
                        let bmd = lstat(&bp)?.ok_or_else(|| vanished(&bp))?;
                        let (sft, bft) = (smd.file_type(), bmd.file_type());
                        let smode = smodes.true_mode(&c, smd.mode());
                        let bmode = bmodes.true_mode(&c, bmd.mode());
                        if sft.is_dir() && bft.is_dir() {
                            if smode != bmode {
                                self.dir(&c, smode)?;
                            }
                            dirs.push(c);
                        } else if sft.is_file() && bft.is_file() {
                            if smd.len() != bmd.len() || !tree::same_content(&sp, &bp)? {
                                self.file(&c, smode, &sp, smd.len())?;
                            } else if smode != bmode {
                                self.perm(&c, smode)?;
                            }
                        } else if sft.is_symlink() && bft.is_symlink() {
                            let st = fs::read_link(&sp).map_err(|e| {
                                ProviderError::io(format!("reading link {}", sp.display()), e)
                            })?;
                            let bt = fs::read_link(&bp).map_err(|e| {
                                ProviderError::io(format!("reading link {}", bp.display()), e)
                            })?;
                            if st != bt {
                                self.link(&c, &sp)?;
                            }
                        } else {
                            // The type changed: the receiver replaces the entry.
                            self.subtree(snap, smodes, c)?;
                        }
                    }
                }
            }
            stack.extend(dirs.into_iter().rev());
        }
        Ok(())
    }
}

/// Writes a stream of the snapshot tree `snap` (identity `guid`), in full or,
/// with `base`, incremental from it.
pub(crate) fn send(
    snap: &Path,
    smodes: &Modes,
    guid: u128,
    base: Option<(&Path, &Modes, u128)>,
    out: &mut dyn Write,
) -> Result<SendStats, ProviderError> {
    let mut enc = Enc {
        w: HashWriter::new(BufWriter::with_capacity(CHUNK, out)),
        count: 0,
        buf: Vec::new(),
    };
    let flags = if base.is_some() { FLAG_INCREMENTAL } else { 0 };
    enc.put(MAGIC)?;
    enc.put(&VERSION.to_be_bytes())?;
    enc.put(&flags.to_be_bytes())?;
    enc.put(&0u32.to_be_bytes())?;
    enc.put(&guid.to_be_bytes())?;
    enc.put(&base.map_or(0, |b| b.2).to_be_bytes())?;
    match base {
        None => enc.subtree(snap, smodes, Vec::new())?,
        Some((bpath, bmodes, _)) => {
            let smd =
                lstat(snap)?.ok_or_else(|| ProviderError::NotFound(snap.display().to_string()))?;
            let bmd = lstat(bpath)?
                .ok_or_else(|| ProviderError::NotFound(bpath.display().to_string()))?;
            let smode = smodes.true_mode(b"", smd.mode());
            if smode != bmodes.true_mode(b"", bmd.mode()) {
                enc.dir(b"", smode)?;
            }
            enc.diff(snap, smodes, bpath, bmodes)?;
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
    for comp in rel.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(bad(format!(
                "path {} has a {:?} component (byte {at})",
                shown(&rel),
                String::from_utf8_lossy(comp)
            )));
        }
    }
    Ok(rel)
}

fn read_mode<R: Read>(r: &mut HashReader<R>) -> Result<u32, ProviderError> {
    let mode = r.read_u32("a mode")?;
    if mode & !PERM_BITS != 0 {
        return Err(bad(format!(
            "mode {mode:#o} has bits beyond {PERM_BITS:#o}"
        )));
    }
    Ok(mode)
}

/// Parent of a relative path (`None` for a top-level entry).
fn parent_of(rel: &[u8]) -> Option<&[u8]> {
    rel.iter().rposition(|&b| b == b'/').map(|i| &rel[..i])
}

/// Applies stream records to the staging tree `root`.
struct Apply<'a> {
    root: &'a Path,
    modes: &'a mut Modes,
    /// A parent directory already checked to be a real directory chain.
    checked: Option<Vec<u8>>,
}

impl Apply<'_> {
    /// Whether every ancestor of `rel` is a real directory (not a symlink),
    /// so `join(root, rel)` resolves inside the tree.
    fn ancestors_ok(&mut self, rel: &[u8]) -> Result<bool, ProviderError> {
        let Some(parent) = parent_of(rel) else {
            return Ok(true);
        };
        if self.checked.as_deref() == Some(parent) {
            return Ok(true);
        }
        let mut end = 0;
        loop {
            let next = parent[end..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(parent.len(), |i| end + i);
            match lstat(&join(self.root, &parent[..next]))? {
                Some(md) if md.file_type().is_dir() => {}
                _ => return Ok(false),
            }
            if next == parent.len() {
                break;
            }
            end = next + 1;
        }
        self.checked = Some(parent.to_vec());
        Ok(true)
    }

    fn need_parent(&mut self, rel: &[u8]) -> Result<(), ProviderError> {
        if self.ancestors_ok(rel)? {
            Ok(())
        } else {
            Err(bad(format!(
                "{}: its parent is not a directory of the stream",
                shown(rel)
            )))
        }
    }

    /// Removes whatever is at `rel` (and its modes), unless it is a directory
    /// and `keep_dir`. Returns whether a directory was kept.
    fn clear(&mut self, rel: &[u8], keep_dir: bool) -> Result<bool, ProviderError> {
        let path = join(self.root, rel);
        match lstat(&path)? {
            None => Ok(false),
            Some(md) if md.file_type().is_dir() && keep_dir => Ok(true),
            Some(_) => {
                tree::remove_tree(&path)?;
                self.modes.forget_subtree(rel);
                self.checked = None;
                Ok(false)
            }
        }
    }

    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        let path = join(self.root, rel);
        if !rel.is_empty() {
            self.need_parent(rel)?;
        }
        let kept = self.clear(rel, true)?;
        if !kept {
            if rel.is_empty() {
                return Err(bad("the stream replaced the root directory".into()));
            }
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|e| ProviderError::io(format!("creating {}", path.display()), e))?;
        }
        let stored = self.modes.record(rel, mode, true);
        tree::chmod_dir(&path, stored)
    }

    fn file<R: Read>(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
    ) -> Result<(), ProviderError> {
        self.need_parent(rel)?;
        self.clear(rel, false)?;
        let path = join(self.root, rel);
        let mut f = tree::create_new_file(&path)
            .map_err(|e| ProviderError::io(format!("creating {}", path.display()), e))?;
        r.copy_exact(len, &mut f, "file content")?;
        let stored = self.modes.record(rel, mode, false);
        f.set_permissions(fs::Permissions::from_mode(stored))
            .map_err(|e| ProviderError::io(format!("setting the mode of {}", path.display()), e))
    }

    fn link(&mut self, rel: &[u8], target: &[u8]) -> Result<(), ProviderError> {
        self.need_parent(rel)?;
        self.clear(rel, false)?;
        let path = join(self.root, rel);
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
            .map_err(|e| ProviderError::io(format!("creating symlink {}", path.display()), e))
    }

    fn perm(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        let path = join(self.root, rel);
        let md = if self.ancestors_ok(rel)? {
            lstat(&path)?
        } else {
            None
        };
        match md {
            Some(md) if md.file_type().is_dir() => {
                let stored = self.modes.record(rel, mode, true);
                tree::chmod_dir(&path, stored)
            }
            Some(md) if md.file_type().is_file() => {
                let stored = self.modes.record(rel, mode, false);
                tree::chmod_file(&path, stored)
            }
            _ => Err(bad(format!(
                "mode change for {}, which is not a file or directory of the base",
                shown(rel)
            ))),
        }
    }

    fn delete(&mut self, rel: &[u8]) -> Result<(), ProviderError> {
        // Absent (or under something that is not a directory): nothing to do.
        if self.ancestors_ok(rel)? {
            self.clear(rel, false)?;
        }
        Ok(())
    }
}

/// Applies the records after the header to the staging tree `root` (whose
/// modes follow [`super::tree::Policy::Staging`], tracked in `modes`), through
/// the end record, whose entry count and checksum must hold. Returns the
/// number of records.
pub(crate) fn apply<R: Read>(
    r: &mut HashReader<R>,
    root: &Path,
    modes: &mut Modes,
) -> Result<u64, ProviderError> {
    let mut a = Apply {
        root,
        modes,
        checked: None,
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
            return Ok(count);
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
                if target.is_empty() || target.contains(&0) {
                    return Err(bad(format!(
                        "symlink {} has an empty target or one with NUL",
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
