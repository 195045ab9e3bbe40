//! The directory provider's transfer stream: encoder (full and incremental)
//! and the bounded decoder that applies a stream to a staging tree. The
//! decoder (`decode`) reads and checks every record and hands it to a
//! `Sink`: the kernel's staging tree (`apply`) or, through the provider's
//! layout seam, the simulated file system's.
//!
//! # Format (versions 1 and 2)
//!
//! All integers big-endian. Paths are relative, `/`-separated bytes; the empty
//! path is the volume's root.
//!
//! ```text
//! header   magic "VMGRDIRS" (8) | version u16 (1 or 2) | flags u16 (bit 0: incremental)
//!          | reserved u32 = 0 | guid u128 (the snapshot's) | base guid u128 (0 if full)
//! records  tag u8, then:
//!   'D' directory     path | mode u32            (creates it, or sets its mode)
//!   'F' regular file  path | mode u32 | len u64 | len bytes of content
//!   'S' sparse file   path | mode u32 | len u64 | extent* | end of extents
//!                     (version 2 only; a file of len bytes, holes where no
//!                     extent is)
//!       extent          offset u64 | n u64 (> 0) | n bytes of content at offset
//!       end of extents  offset u64 = 0 | n u64 = 0
//!   'L' symlink       path | target len u16 | target bytes
//!   'P' mode change   path | mode u32            (existing file or directory)
//!   'X' deletion      path                       (whatever is there, recursively)
//! end      'E' | count u64 (records before it) | crc32 u32 of every byte before it
//! path     len u16 | bytes
//! ```
//!
//! ## Version changes
//!
//! - Version 1: `D`, `F`, `L`, `P`, `X`. A file's holes travel as zeros.
//! - Version 2: version 1 plus `S`, a file's data extents only (holes as
//!   holes: a 1 GiB file holding 1 MiB of data costs about 1 MiB on the
//!   wire). A sender writes it only when the receiver asked for it
//!   ([`crate::provider::SendOptions::sparse`]; over HTTP the send request's
//!   `x-volmgr-stream-features: sparse` header, which volmgr's puller sends
//!   and Flynn's client never does): the default stream is version 1, byte
//!   for byte what it was before version 2 existed. A version 2 sender
//!   writes `S` only for a file with a hole (`SEEK_DATA`/`SEEK_HOLE` on the
//!   open file say it is not one data range from 0 to its length); an empty
//!   file or one without holes is an `F` record. The receiver reads both
//!   versions; `S` in a version 1 stream is an error.
//!
//! The sender finds a file's extents with `lseek(SEEK_DATA/SEEK_HOLE)` on
//! the descriptor it opened (by handle, as every entry), each looked for
//! from the end of the one before and clipped to the length the file had
//! when opened, and reads each at its offset: whatever a writer does to the
//! file meanwhile, the record is well formed (extents increasing, not
//! overlapping, not empty, within `len`), and a file that shrinks under an
//! extent, or whose data turns into a hole between the two seeks, fails the
//! send ("changed while being sent"), as a file that shrinks under an `F`
//! record does. A file system without those seeks has no holes: `F`.
//!
//! What the sender reads: only data, never a hole, whatever the version.
//! An `F` record's holes are written as zeros without being read (its
//! data extents, found as for `S`, are read at their offsets; a file that
//! shrinks under one, or under its trailing hole, fails the send); the
//! size announced before a stream is counted without reading any content;
//! and an incremental stream compares a file present in both snapshots
//! with its base by their extent maps (`tree::same_content`): a range that
//! is a hole in both is equal unread, a range that is data in both is read
//! from both and compared, and a range that is data in one and a hole in
//! the other is read from the data side and compared with zeros (a hole
//! equals written zeros: content decides, not layout, so an unchanged file
//! is not sent again because a copy filled or punched its holes). A file
//! of 16 TiB holding 1 MiB of data costs about 1 MiB of reads to compare
//! ([`crate::provider::SendStats::read_bytes`] counts them). Seeks that
//! contradict each other, or a read that comes up short, while comparing
//! (a file changing meanwhile) count as "changed": the file is sent in
//! full, which the receiver applies right whether or not it changed.
//!
//! A full stream carries the whole tree in pre-order (a directory before its
//! entries, names in byte order). An incremental stream carries, relative to
//! the base snapshot: new entries in full; files whose size or content differs
//! (compared by content, holes equal to zeros but never read, whatever the
//! version; timestamps are unreliable after copies) in full (`F`, or `S`
//! in a version 2 stream); a `P` record for a file whose only change is its mode; a `D` record for a
//! directory whose mode changed; changed symlinks; entries whose type changed
//! (in full: the receiver replaces them); and an `X` record per path present
//! in the base but not in the snapshot. Modes are the true modes (`0o7777`).
//!
//! The receiver trusts nothing: the magic, version, flags and reserved field
//! must match; a path must be 1..=4096 bytes, relative, without NUL, empty,
//! `.` or `..` components, and every ancestor must be a real directory of the
//! tree being built (never a symlink), so nothing is created, changed or
//! removed outside the staging tree; link targets are 1..=4096 bytes without
//! NUL (they are stored, never followed); a file (`F` or `S`) declares at
//! most 2^44 bytes and its content is copied in 128 KiB chunks (a chunk of
//! zeros is left a hole: a sparse file arrives sparse from a version 1
//! stream too); an `S` record's extents each start at or after the end of
//! the one before, are not empty and end within its length (`offset + n`
//! checked for overflow), its terminator's offset is 0, and a stream holds
//! at most 2^32 extents in all (nothing is held per extent); the free-space
//! guard counts the data written, never a declared length, and for an `S`
//! record the whole blocks its pieces are the first to touch (the file's
//! block size, at least [`MIN_BLOCK`]: extents of one byte a block apart
//! are counted as the blocks they take, not as bytes, both for the checks
//! during the receive and for the one before the snapshot copy); a stream holds
//! at most 2^26 records; the end record's count and CRC must hold. Any
//! violation, and any short read, is a [`ProviderError::Stream`] and the
//! staging area is removed. So is a file whose declared length, or an
//! extent's offset, is beyond what the staging file system holds though
//! within 2^44 (ext4 with 4 KiB blocks holds 2^44 - 4096 bytes): the
//! kernel's `EFBIG` (a write or `ftruncate`) or `EINVAL` (the seek to an
//! extent) while writing its content names the file and its length. The receiver stops reading at the end record
//! (it does not require EOF).
//!
//! The size a sender announces before a full stream (`Provider::send_size`,
//! the agent's `x-volmgr-stream-size`) is exact for either version: a dry
//! run of the encoder over the snapshot's metadata (and, for version 2, its
//! files' extents), counting content without reading it.
//!

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::space::SpaceGuard;
use super::tree::{self, KEPT_BITS, MAX_DEPTH, Modes, PERM_BITS};
use crate::fsutil::{Dir, Kind};
use crate::provider::ProviderError;
use crate::provider::stream::HashReader;

pub(crate) const MAGIC: &[u8; 8] = b"VMGRDIRS";
/// The version a sender writes by default: no `S` record (what every
/// receiver reads, Flynn's included).
pub(crate) const VERSION: u16 = 1;
/// The version with `S` records (holes sent as holes), written only when
/// the receiver asked for it ([`crate::provider::SendOptions::sparse`]).
pub(crate) const VERSION_SPARSE: u16 = 2;
pub(crate) const FLAG_INCREMENTAL: u16 = 1;

pub(crate) const TAG_DIR: u8 = b'D';
pub(crate) const TAG_FILE: u8 = b'F';
pub(crate) const TAG_LINK: u8 = b'L';
pub(crate) const TAG_PERM: u8 = b'P';
pub(crate) const TAG_DELETE: u8 = b'X';
pub(crate) const TAG_SPARSE: u8 = b'S';
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
/// Most data extents (`S` record extents, not counting their terminators)
/// one stream may carry. Nothing is held per extent; this bounds the work
/// (a seek and a write each) a stream can ask for beyond its bytes.
pub const MAX_EXTENTS: u64 = 1 << 32;
/// The least block size the free-space guard charges a sparse file's data
/// pieces in (the file's `st_blksize` if larger, up to [`MAX_BLOCK`]): a
/// piece of one byte in a hole costs a block of the file system.
pub const MIN_BLOCK: u64 = 4096;
/// The largest block size the guard charges in (ZFS's largest record):
/// a file system reporting more is charged this, and the arithmetic on
/// offsets below 2^44 cannot overflow.
pub const MAX_BLOCK: u64 = 16 << 20;
/// Bound on the memory held for modes the staging tree cannot store directly
/// (directories without owner `rwx`, files without owner `rw`).
pub const MAX_MODE_EXCEPTION_BYTES: usize = 64 << 20;

/// The stream header's identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// [`VERSION`] or [`VERSION_SPARSE`].
    pub version: u16,
    pub guid: u128,
    pub base: Option<u128>,
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
    if version != VERSION && version != VERSION_SPARSE {
        return Err(bad(format!(
            "unsupported stream version {version} (this build reads {VERSION} and {VERSION_SPARSE})"
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
        version,
        guid,
        base: incremental.then_some(base),
    })
}

/// Bytes of the header: magic, version, flags, reserved, two guids.
pub(crate) const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 16 + 16;

/// The header at the start of `head`, checked as [`read_header`] checks it.
pub(crate) fn header_of(head: &[u8]) -> Result<Header, ProviderError> {
    read_header(&mut HashReader::new(head))
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

/// Where the decoder's records go, each already read and checked: the
/// staging tree on the kernel ([`Apply`]) or on the simulated file system
/// (the directory provider's layout seam). A record whose entry cannot be
/// made there is an error; nothing is synced.
pub(crate) trait Sink<R: Read> {
    /// `D`: creates directory `rel` (or keeps it), with true mode `mode`.
    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError>;
    /// `F`: replaces `rel` with a file of the next `len` bytes of `r`.
    fn file(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
    ) -> Result<(), ProviderError>;
    /// `S`: replaces `rel` with a file of `len` bytes whose data are the
    /// extents `extents` reads from `r` (each checked there), holes
    /// elsewhere. The sink reads every extent, through the terminator
    /// (`extents.next` answers `None`).
    fn sparse(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
        extents: &mut Extents<'_>,
    ) -> Result<(), ProviderError>;
    /// `L`: replaces `rel` with a symlink to `target`.
    fn link(&mut self, rel: &[u8], target: &[u8]) -> Result<(), ProviderError>;
    /// `P`: sets the true mode of the existing file or directory `rel`.
    fn perm(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError>;
    /// `X`: removes whatever is at `rel`.
    fn delete(&mut self, rel: &[u8]) -> Result<(), ProviderError>;
    /// The modes tracked so far (bounded by the decoder).
    fn modes(&self) -> &Modes;
    /// Entries created or replaced so far, and their content bytes.
    fn totals(&self) -> (u64, u64);
}

/// The extents of one `S` record, read and checked one at a time: each
/// starts at or after the end of the one before (increasing, not
/// overlapping), is not empty, and ends within the file's length (no
/// overflow); the stream carries at most [`MAX_EXTENTS`] of them in all.
/// Nothing is held per extent.
pub(crate) struct Extents<'a> {
    rel: &'a [u8],
    len: u64,
    /// End of the last extent read (0 before the first).
    end: u64,
    /// The terminator was read.
    done: bool,
    /// Extents of the stream so far.
    total: &'a mut u64,
}

impl Extents<'_> {
    /// The next extent `(offset, n)`, its `n` content bytes next in `r`;
    /// `None` once the terminator is read.
    pub(crate) fn next<R: Read>(
        &mut self,
        r: &mut HashReader<R>,
    ) -> Result<Option<(u64, u64)>, ProviderError> {
        if self.done {
            return Ok(None);
        }
        let at = r.bytes();
        let offset = r.read_u64("an extent offset")?;
        let n = r.read_u64("an extent length")?;
        let rel = shown(self.rel);
        if n == 0 {
            if offset != 0 {
                return Err(bad(format!(
                    "{rel}: the extents' terminator at byte {at} has offset {offset}, not 0"
                )));
            }
            self.done = true;
            return Ok(None);
        }
        *self.total += 1;
        if *self.total > MAX_EXTENTS {
            return Err(bad(format!(
                "more than {MAX_EXTENTS} data extents in the stream (byte {at})"
            )));
        }
        if offset < self.end {
            return Err(bad(format!(
                "{rel}: extent at byte {at} starts at offset {offset}, before the end {} of \
                 the one before (extents must increase and not overlap)",
                self.end
            )));
        }
        let end = offset
            .checked_add(n)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                bad(format!(
                    "{rel}: extent at byte {at} ({n} bytes at offset {offset}) ends beyond the \
                 file's length {}",
                    self.len
                ))
            })?;
        self.end = end;
        Ok(Some((offset, n)))
    }
}

/// The error for a mode change of something that is not a file or
/// directory of the base.
pub(crate) fn not_in_base(rel: &[u8]) -> ProviderError {
    bad(format!(
        "mode change for {}, which is not a file or directory of the base",
        shown(rel)
    ))
}

/// The error for a record whose parent is not a directory of the stream.
pub(crate) fn no_parent(rel: &[u8]) -> ProviderError {
    bad(format!(
        "{}: its parent is not a directory of the stream",
        shown(rel)
    ))
}

/// `e`, an error writing the content of file `rel` (declared `len` bytes,
/// at most [`MAX_FILE_LEN`]), as the stream's fault if it says the length
/// or an offset is beyond what the staging file system holds (ext4 with
/// 4 KiB blocks holds 2^44 - 4096 bytes, less than the format allows):
/// `EFBIG` from a write or `ftruncate`, `EINVAL` from a seek (every offset
/// sought is below 2^44, within `off_t`). Anything else is left as it is.
fn too_large(rel: &[u8], len: u64, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Io { context, source }
            if matches!(source.raw_os_error(), Some(libc::EFBIG | libc::EINVAL)) =>
        {
            bad(format!(
                "{} declares {len} bytes, more than the file system receiving it holds \
                 ({context}: {source})",
                shown(rel)
            ))
        }
        other => other,
    }
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
            None => Err(no_parent(rel)),
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

    /// A new, empty file at `rel` (mode 0600 until [`Apply::set_file_mode`]),
    /// whatever was there removed; one entry for the space guard.
    fn new_file(&mut self, rel: &[u8]) -> Result<fs::File, ProviderError> {
        self.space.entry(0)?;
        let parent = self.need_parent(rel)?;
        let (_, name) = split_rel(rel);
        self.clear(&parent, name, rel, false)?;
        parent
            .create_file(name, 0o600)
            .map_err(|e| self.io("creating", rel, e))
    }

    /// Gives the file `f` at `rel`, written, the mode the tree stores for
    /// true mode `mode` (the true one recorded when they differ).
    fn set_file_mode(&mut self, f: &fs::File, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        let stored = self.modes.record(rel, mode, false);
        f.set_permissions(fs::Permissions::from_mode(stored))
            .map_err(|e| self.io("setting the mode of", rel, e))
    }
}

impl<R: Read> Sink<R> for Apply<'_> {
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

    fn file(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
    ) -> Result<(), ProviderError> {
        let mut f = self.new_file(rel)?;
        let space = &mut self.space;
        r.copy_exact_sparse(len, &mut f, "file content", &mut |n, left| {
            space.content(n, left)
        })
        .map_err(|e| too_large(rel, len, e))?;
        self.set_file_mode(&f, rel, mode)
    }

    fn sparse(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
        extents: &mut Extents<'_>,
    ) -> Result<(), ProviderError> {
        use std::io::{Seek, SeekFrom};
        let mut f = self.new_file(rel)?;
        // The file system allocates whole blocks: each data piece is charged
        // the blocks it is the first to touch (the file is new and written
        // in increasing order), so extents of a byte, a block apart, cost
        // the guard what they cost the disk (4 KiB each, not 1 byte).
        let block = f
            .metadata()
            .map_err(|e| self.io("examining", rel, e))?
            .blksize()
            .clamp(MIN_BLOCK, MAX_BLOCK);
        let mut charged_to = 0u64;
        while let Some((offset, n)) = extents.next(r)? {
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| too_large(rel, len, self.io("writing", rel, e)))?;
            // What is left of the file from a piece on, as declared:
            // the extent's rest and everything after the extent.
            let after = len - offset - n;
            let space = &mut self.space;
            let charged = &mut charged_to;
            r.copy_exact_sparse(n, &mut f, "file content", &mut |k, left| {
                // `left` counts this piece: it starts at `offset + n - left`
                // (and ends within `len`, at most 2^44: no overflow).
                let start = offset + (n - left);
                let end = (start + k).div_ceil(block) * block;
                let first = (start / block * block).max(*charged);
                *charged = end.max(*charged);
                space.content_taking(end.saturating_sub(first), left + after)
            })
            .map_err(|e| too_large(rel, len, e))?;
        }
        f.set_len(len)
            .map_err(|e| too_large(rel, len, self.io("writing", rel, e)))?;
        self.set_file_mode(&f, rel, mode)
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
            _ => return Err(not_in_base(rel)),
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

    fn modes(&self) -> &Modes {
        self.modes
    }
    fn totals(&self) -> (u64, u64) {
        (self.space.entries, self.space.bytes)
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
    header: &Header,
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
    decode(r, header, &mut a)
}

/// The decoder: reads the records after `header`, checks each, hands it
/// to `a`, through the end record, whose entry count and checksum must
/// hold. `S` records only in a [`VERSION_SPARSE`] stream.
pub(crate) fn decode<R: Read, S: Sink<R> + ?Sized>(
    r: &mut HashReader<R>,
    header: &Header,
    a: &mut S,
) -> Result<Applied, ProviderError> {
    let mut count = 0u64;
    let mut extents_total = 0u64;
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
            let (entries, bytes) = a.totals();
            return Ok(Applied {
                records: count,
                entries,
                bytes,
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
            TAG_SPARSE if header.version >= VERSION_SPARSE => {
                let rel = read_path(r, false)?;
                let mode = read_mode(r)?;
                let len = r.read_u64("a file length")?;
                if len > MAX_FILE_LEN {
                    return Err(bad(format!(
                        "{} declares {len} bytes, more than the limit of {MAX_FILE_LEN}",
                        shown(&rel)
                    )));
                }
                let mut extents = Extents {
                    rel: &rel,
                    len,
                    end: 0,
                    done: false,
                    total: &mut extents_total,
                };
                a.sparse(r, &rel, mode, len, &mut extents)?;
                // Pair assertion: the sink read the record to its end.
                if !extents.done {
                    return Err(ProviderError::Other(format!(
                        "{}: the sparse file's extents were not all read (a bug of the sink)",
                        shown(&rel)
                    )));
                }
            }
            TAG_SPARSE => {
                return Err(bad(format!(
                    "sparse file record at byte {at} in a version {} stream (only version \
                     {VERSION_SPARSE} carries them)",
                    header.version
                )));
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
        if a.modes().key_bytes() > MAX_MODE_EXCEPTION_BYTES {
            return Err(bad(format!(
                "more than {MAX_MODE_EXCEPTION_BYTES} bytes of paths with modes the staging area cannot hold directly"
            )));
        }
    }
}

/// Applies a whole stream (header and records) to the existing directory
/// `dir`, whose content is the base of an incremental stream (a full stream
/// expects it empty), then sets the entries' true modes. The receiver's
/// decoder without any provider state (no markers, no snapshot, no swap):
/// for tools and fuzzing. Returns the number of records applied.
pub fn apply_stream(input: &mut dyn Read, dir: &Path) -> Result<u64, ProviderError> {
    let mut r = HashReader::new(input);
    let header = read_header(&mut r)?;
    let mut modes = Modes::new(tree::Policy::Staging);
    let applied = apply(&mut r, &header, dir, &mut modes)?;
    modes.apply_true_modes(dir, false)?;
    Ok(applied.records)
}

#[cfg(test)]
mod tests;
