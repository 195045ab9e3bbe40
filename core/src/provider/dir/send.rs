//! The encoder of the directory stream (see [`super::wire`] for the format):
//! a full stream of a snapshot, or the changes from a base snapshot. Both
//! trees are walked by handle ([`crate::fsutil::Dir`]), never by path.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::tree::{self, MAX_DEPTH, Modes};
use super::wire::{
    FLAG_INCREMENTAL, MAGIC, MAX_EXTENTS, MAX_LINK, MAX_PATH, TAG_DELETE, TAG_DIR, TAG_END,
    TAG_FILE, TAG_LINK, TAG_PERM, TAG_SPARSE, VERSION, VERSION_SPARSE,
};
use crate::fsutil::{Dir, Kind};
use crate::provider::stream::{CHUNK, HashWriter};
use crate::provider::{ProviderError, SendOptions, SendStats};

fn wio(e: std::io::Error) -> ProviderError {
    ProviderError::io("writing the stream", e)
}

struct Enc<'a> {
    w: HashWriter<BufWriter<&'a mut dyn Write>>,
    count: u64,
    buf: Vec<u8>,
    /// [`CHUNK`] zeros (an `F` record's holes), allocated when first needed.
    zeros: Vec<u8>,
    /// The snapshot's path, for messages.
    root: &'a Path,
    /// Sizing only ([`stream_size`]): file contents are counted in
    /// `skipped`, never read.
    dry: bool,
    skipped: u64,
    /// Version 2: a file with holes is an `S` record of its data extents.
    sparse: bool,
    /// Data extents sent so far (at most [`MAX_EXTENTS`]).
    extents: u64,
    /// File content bytes read (sent or compared): [`SendStats::read_bytes`].
    read: u64,
}

/// A directory being sent: its handle, relative path, names left (reversed).
struct Frame {
    dir: Dir,
    rel: Vec<u8>,
    left: Vec<Vec<u8>>,
}

impl Enc<'_> {
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
        let len = u16::try_from(rel.len()).expect("MAX_PATH fits in u16");
        self.count += 1;
        self.put(&[tag])?;
        self.put(&len.to_be_bytes())?;
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
        let len = u16::try_from(target.len()).expect("MAX_LINK fits in u16");
        self.record(TAG_LINK, rel)?;
        self.put(&len.to_be_bytes())?;
        self.put(target)
    }

    fn changed_under(&self, rel: &[u8], how: &str) -> ProviderError {
        ProviderError::Other(format!(
            "{} {how} while being sent",
            tree::shown_in(self.root, rel)
        ))
    }

    /// The first data extent `[start, end)` of the open file `f` at or
    /// after `pos`, clipped to `len` (its length when opened); `None` when
    /// only a hole is left. A file system without `SEEK_DATA` has no holes:
    /// the whole rest is data.
    fn next_extent(
        &self,
        f: &File,
        pos: u64,
        len: u64,
        rel: &[u8],
    ) -> Result<Option<(u64, u64)>, ProviderError> {
        if pos >= len {
            return Ok(None);
        }
        let start = match tree::seek_data(f, pos, libc::SEEK_DATA) {
            Ok(None) => return Ok(None),
            Ok(Some(start)) => start,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, len))),
            Err(e) => return Err(self.err("finding the data of", rel, e)),
        };
        if start >= len {
            return Ok(None);
        }
        let end = match tree::seek_data(f, start, libc::SEEK_HOLE) {
            Ok(Some(end)) => end.min(len),
            // Shrunk between the two seeks: its reads will say so.
            Ok(None) => len,
            Err(e) => return Err(self.err("finding the holes of", rel, e)),
        };
        if end <= start {
            // Data at `start` turned into a hole between the two seeks.
            return Err(self.changed_under(rel, "changed"));
        }
        Ok(Some((start, end)))
    }

    /// A file record with the content of the open file `f` (`len` bytes, as
    /// `fstat` said when it was opened): an `S` record of its data extents
    /// if the stream is sparse and the file has a hole, else an `F` record,
    /// whose holes are written as zeros without being read (only the data
    /// extents are read, at their offsets).
    fn file(&mut self, rel: &[u8], mode: u32, f: &File, len: u64) -> Result<(), ProviderError> {
        if self.sparse && len > 0 && self.next_extent(f, 0, len, rel)? != Some((0, len)) {
            return self.sparse_file(rel, mode, f, len);
        }
        self.record(TAG_FILE, rel)?;
        self.put(&mode.to_be_bytes())?;
        self.put(&len.to_be_bytes())?;
        if self.dry {
            self.skipped += len;
            return Ok(());
        }
        let mut pos = 0;
        // Bounded: `pos` moves forward every round (an extent is not empty).
        while pos < len {
            let (start, end) = self.next_extent(f, pos, len, rel)?.unwrap_or((len, len));
            debug_assert!(pos <= start && start <= end && end <= len);
            self.zeros(start - pos)?;
            self.data(rel, f, start, end)?;
            pos = end;
        }
        // A file that shrank under a trailing hole (its zeros were not read).
        let now = f
            .metadata()
            .map_err(|e| self.err("examining", rel, e))?
            .len();
        if now < len {
            return Err(self.changed_under(rel, "shrank"));
        }
        Ok(())
    }

    /// Writes `n` zeros (a hole of an `F` record), never read from the file.
    fn zeros(&mut self, mut n: u64) -> Result<(), ProviderError> {
        if n > 0 && self.zeros.is_empty() {
            self.zeros = vec![0u8; CHUNK];
        }
        while n > 0 {
            let k = usize::try_from(n).map_or(CHUNK, |l| l.min(CHUNK));
            self.w.write_all(&self.zeros[..k]).map_err(wio)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Writes the bytes `[start, end)` of the open file `f`, read at their
    /// offset; a file that ends first "shrank while being sent".
    fn data(&mut self, rel: &[u8], f: &File, start: u64, end: u64) -> Result<(), ProviderError> {
        use std::os::unix::fs::FileExt;
        if start < end && self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK];
        }
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at).map_or(CHUNK, |l| l.min(CHUNK));
            let n = match f.read_at(&mut self.buf[..want], at) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.err("reading", rel, e)),
            };
            if n == 0 {
                return Err(self.changed_under(rel, "shrank"));
            }
            self.read += n as u64;
            self.w.write_all(&self.buf[..n]).map_err(wio)?;
            at += n as u64;
        }
        Ok(())
    }

    /// An `S` record of the open file `f` (`len` bytes as opened): each
    /// data extent `SEEK_DATA`/`SEEK_HOLE` find, read where it is. The
    /// record holds whatever the file changes into meanwhile: each extent
    /// is looked for from the end of the one before (increasing, not
    /// overlapping, within `len`, not empty) and its bytes are read at its
    /// offset; a file that shrinks under an extent is an error, as for an
    /// `F` record.
    fn sparse_file(
        &mut self,
        rel: &[u8],
        mode: u32,
        f: &File,
        len: u64,
    ) -> Result<(), ProviderError> {
        self.record(TAG_SPARSE, rel)?;
        self.put(&mode.to_be_bytes())?;
        self.put(&len.to_be_bytes())?;
        let mut pos = 0;
        // Bounded: `pos` moves forward every round (an extent is not empty).
        while let Some((start, end)) = self.next_extent(f, pos, len, rel)? {
            debug_assert!(pos <= start && start < end && end <= len);
            self.extents += 1;
            if self.extents > MAX_EXTENTS {
                return Err(ProviderError::Other(format!(
                    "cannot send {}: the stream would carry more than {MAX_EXTENTS} data extents",
                    tree::shown_in(self.root, rel)
                )));
            }
            self.put(&start.to_be_bytes())?;
            self.put(&(end - start).to_be_bytes())?;
            if self.dry {
                self.skipped += end - start;
            } else {
                self.data(rel, f, start, end)?;
            }
            pos = end;
        }
        // The terminator: an empty extent at offset 0.
        self.put(&0u64.to_be_bytes())?;
        self.put(&0u64.to_be_bytes())
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
                let (f, st) = parent
                    .open_file(name)
                    .map_err(|e| self.err("opening", rel, e))?;
                self.file(rel, modes.true_mode(rel, st.mode), &f, st.len)?;
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
                let (sf, sst) = sd.open_file(name).map_err(|e| self.err("opening", c, e))?;
                let (bf, bst) = bd
                    .open_file(name)
                    .map_err(|e| self.err("opening the base of", c, e))?;
                let smode = smodes.true_mode(c, sst.mode);
                let bmode = bmodes.true_mode(c, bst.mode);
                // By extent maps: holes in both are never read.
                let same = sst.len == bst.len
                    && tree::same_content(&sf, &bf, sst.len, &mut self.read)
                        .map_err(|e| self.err("comparing", c, e))?;
                if !same {
                    self.file(c, smode, &sf, sst.len)?;
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
/// with `base`, incremental from it: version 1, or version 2 (holes as
/// holes) if `options` ask for it. Both trees are walked by handle.
pub(crate) fn send(
    snap: &Path,
    smodes: &Modes,
    guid: u128,
    base: Option<(&Path, &Modes, u128)>,
    options: SendOptions,
    out: &mut dyn Write,
) -> Result<SendStats, ProviderError> {
    encode(snap, smodes, guid, base, options, out, false)
}

/// The exact size of a full stream of `snap` (what [`send`] would write
/// without a base and with `options`, if the tree does not change
/// meanwhile), from a walk of its metadata (and, for a sparse stream, of its
/// files' data extents): file contents are counted, never read.
pub(crate) fn stream_size(
    snap: &Path,
    smodes: &Modes,
    guid: u128,
    options: SendOptions,
) -> Result<u64, ProviderError> {
    let mut sink = std::io::sink();
    let stats = encode(snap, smodes, guid, None, options, &mut sink, true)?;
    Ok(stats.bytes)
}

fn encode(
    snap: &Path,
    smodes: &Modes,
    guid: u128,
    base: Option<(&Path, &Modes, u128)>,
    options: SendOptions,
    out: &mut dyn Write,
    dry: bool,
) -> Result<SendStats, ProviderError> {
    let open = |p: &Path| {
        Dir::open(p).map_err(|e| ProviderError::io(format!("opening {}", p.display()), e))
    };
    let sdir = open(snap)?;
    let mut enc = Enc {
        w: HashWriter::new(BufWriter::with_capacity(CHUNK, out)),
        count: 0,
        buf: Vec::new(),
        zeros: Vec::new(),
        root: snap,
        dry,
        skipped: 0,
        sparse: options.sparse,
        extents: 0,
        read: 0,
    };
    let flags = if base.is_some() { FLAG_INCREMENTAL } else { 0 };
    let version = if options.sparse {
        VERSION_SPARSE
    } else {
        VERSION
    };
    enc.put(MAGIC)?;
    enc.put(&version.to_be_bytes())?;
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
        bytes: enc.w.bytes() + enc.skipped,
        incremental: base.is_some(),
        resumed: false,
        read_bytes: enc.read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// The `S` record of a file that grew after it was opened (`len`, what
    /// `fstat` said then, is less than its length now, with data across
    /// it) stops at `len`: a receiver refuses an extent beyond it.
    #[test]
    fn a_sparse_record_stays_within_the_length_the_file_had_when_opened() {
        const B: u64 = 4096;
        let tmp = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp.path().join("f"))
            .unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096 * 4], 4 * B).unwrap();
        let opened_len = 6 * B;
        let mut out = Vec::new();
        {
            let sink: &mut dyn Write = &mut out;
            let mut enc = Enc {
                w: HashWriter::new(BufWriter::new(sink)),
                count: 0,
                buf: Vec::new(),
                zeros: Vec::new(),
                root: tmp.path(),
                dry: false,
                skipped: 0,
                sparse: true,
                extents: 0,
                read: 0,
            };
            enc.sparse_file(b"f", 0o644, &f, opened_len).unwrap();
            enc.w.flush().unwrap();
        }
        // tag, path (2 + 1), mode, len; then the extents.
        let mut at = 1 + 3 + 4;
        let u64_at = |at: usize| u64::from_be_bytes(out[at..at + 8].try_into().unwrap());
        assert_eq!(u64_at(at), opened_len);
        at += 8;
        let mut extents = Vec::new();
        loop {
            let (offset, n) = (u64_at(at), u64_at(at + 8));
            at += 16;
            if n == 0 {
                break;
            }
            extents.push((offset, n));
            at += usize::try_from(n).unwrap();
        }
        assert_eq!(extents, vec![(0, B), (4 * B, 2 * B)]);
        assert_eq!(at, out.len(), "nothing after the terminator");
    }
}
