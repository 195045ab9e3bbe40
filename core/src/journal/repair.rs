//! The two repairs opening makes: discarding the batch of a failed commit,
//! and truncating a torn tail (after copying it to a `.broken` file). Both
//! work in bounded chunks: no allocation is sized from a file's length, so a
//! hostile or huge segment costs time bounded by its size, never memory.

use std::path::{Path, PathBuf};

use super::format::{self, Invalid, MAX_SEGMENT_LEN};
use super::{FAILED_COMMIT_FILE, JournalError, writer};
use crate::storage::{Storage, StorageFile};

/// Bytes moved per read, write or zeroing call.
const CHUNK_LEN: usize = 1 << 20;

/// The next chunk of `remaining` bytes: at most [`CHUNK_LEN`].
fn chunk(remaining: u64) -> usize {
    usize::try_from(remaining).map_or(CHUNK_LEN, |r| r.min(CHUNK_LEN))
}

/// Writes zeros over `[offset, offset + len)` of `file`, one chunk at a time.
fn zero_range(file: &dyn StorageFile, offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; chunk(len)];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = chunk(end - at);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Where the batch of a failed commit starts, as its [`FAILED_COMMIT_FILE`]
/// marker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedCommit {
    /// The first sequence number of the segment (its file name).
    pub segment_first_seq: u64,
    /// The offset of the failed batch in that segment.
    pub offset: u64,
}

impl FailedCommit {
    /// Whether the marker applies to a segment of `len` bytes whose file name
    /// says `first_seq`: the offset past the header and inside the file.
    pub fn applies_to(&self, first_seq: u64, len: u64) -> bool {
        first_seq == self.segment_first_seq
            && self.offset >= format::SEGMENT_HEADER_LEN as u64
            && self.offset < len
    }
}

/// What the [`FAILED_COMMIT_FILE`] of a journal directory says.
enum Marker {
    Absent,
    /// Its CRC does not match: a crash while writing it names nothing
    /// reliable (whatever it pointed at then ends like any unfinished write).
    Torn,
    Names(FailedCommit),
}

fn read_marker(storage: &dyn Storage, journal_dir: &Path) -> Result<Marker, JournalError> {
    let marker = journal_dir.join(FAILED_COMMIT_FILE);
    let text = match crate::storage::read_bounded(storage, &marker, 64) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Marker::Absent),
        Err(e) => return Err(JournalError::io(&marker, "read failed-commit marker", e)),
    };
    // `<seq> <offset> <crc32 of "<seq> <offset>", hex>`.
    let parsed = std::str::from_utf8(&text).ok().and_then(|t| {
        let (fields, crc) = t.trim_end().rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(fields.as_bytes()) {
            return None;
        }
        let (seq, offset) = fields.split_once(' ')?;
        Some((seq.parse::<u64>().ok()?, offset.parse::<u64>().ok()?))
    });
    Ok(parsed
        .filter(|(seq, _)| (1..=format::MAX_SEQ).contains(seq))
        .map_or(Marker::Torn, |(segment_first_seq, offset)| {
            Marker::Names(FailedCommit {
                segment_first_seq,
                offset,
            })
        }))
}

/// Reads the [`FAILED_COMMIT_FILE`] marker of `journal_dir`: `None` when
/// there is none or it is torn. Read-only; bounded (64 bytes).
pub fn read_failed_commit(
    storage: &dyn Storage,
    journal_dir: &Path,
) -> Result<Option<FailedCommit>, JournalError> {
    Ok(match read_marker(storage, journal_dir)? {
        Marker::Names(failed) => Some(failed),
        Marker::Absent | Marker::Torn => None,
    })
}

/// A commit whose write or sync failed left [`FAILED_COMMIT_FILE`]. Its batch
/// was never acknowledged, but it may sit in the page cache without ever
/// reaching the disk: Linux takes pages whose write-back failed off the dirty
/// list, so no later fsync writes them, while reads still return them.
/// Replaying it in this boot would build on bytes a power cut takes away
/// (the records after it would then follow a hole and open would refuse).
/// So the batch is zeroed durably (only bytes past the last durable one are
/// written), then the marker goes. (The reader reads a marked batch as zeros
/// already, so the tools show what this open will make of the journal.)
pub(crate) fn discard_failed_commit(
    storage: &dyn Storage,
    journal_dir: &Path,
) -> Result<(), JournalError> {
    let marker = journal_dir.join(FAILED_COMMIT_FILE);
    let failed = match read_marker(storage, journal_dir)? {
        Marker::Absent => return Ok(()),
        Marker::Torn => None,
        Marker::Names(failed) => Some(failed),
    };
    if let Some(failed) = failed {
        let segment = journal_dir.join(format::segment_file_name(failed.segment_first_seq));
        match storage.open(&segment) {
            Ok(file) => {
                let len = file
                    .len()
                    .map_err(|e| JournalError::io(&segment, "stat segment", e))?;
                if len > MAX_SEGMENT_LEN {
                    // The reader refuses it anyway; zeroing it is not ours.
                    return Err(JournalError::Corrupt {
                        file: segment,
                        offset: 0,
                        reason: Invalid::FileTooLarge {
                            len,
                            max: MAX_SEGMENT_LEN,
                        },
                    });
                }
                if failed.applies_to(failed.segment_first_seq, len) {
                    let offset = failed.offset;
                    tracing::warn!(segment = %segment.display(), offset, "journal: discarding the batch of a failed commit");
                    zero_range(file.as_ref(), offset, len - offset)
                        .and_then(|()| file.sync_data())
                        .map_err(|e| JournalError::io(&segment, "discard failed commit", e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(JournalError::io(&segment, "open segment", e)),
        }
    }
    storage
        .remove_file(&marker)
        .map_err(|e| JournalError::io(&marker, "remove failed-commit marker", e))?;
    writer::sync_dir(storage, journal_dir)
}

/// Copies `[offset, offset+len)` of `segment` to a new `.broken` file (durably),
/// then zeroes that range and syncs the segment. Returns the `.broken` path.
/// An `offset` inside the segment header (a torn segment creation) also
/// rewrites the header from the first sequence number in the file name.
/// Both copies move at most 1 MiB at a time.
pub fn truncate_torn_tail(
    storage: &dyn Storage,
    segment: &Path,
    offset: u64,
    len: u64,
) -> Result<PathBuf, JournalError> {
    let file = storage
        .open(segment)
        .map_err(|e| JournalError::io(segment, "open segment", e))?;
    let file_len = file
        .len()
        .map_err(|e| JournalError::io(segment, "stat segment", e))?;
    // Precondition: the range lies in a segment the reader accepted.
    if file_len > MAX_SEGMENT_LEN || offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(JournalError::Corrupt {
            file: segment.to_owned(),
            offset,
            reason: Invalid::Truncated {
                needed: offset.saturating_add(len),
                available: file_len,
            },
        });
    }
    let dir = segment.parent().unwrap_or(Path::new("."));
    let seg_name = segment
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let first_seq = if offset < format::SEGMENT_HEADER_LEN as u64 {
        // The segment's own creation was torn: its header is written again
        // from the first sequence number in its name.
        Some(
            format::parse_numbered_name(seg_name, "seg")
                .filter(|s| (1..=format::MAX_SEQ).contains(s))
                .ok_or_else(|| JournalError::Corrupt {
                    file: segment.to_owned(),
                    offset,
                    reason: Invalid::BadMagic,
                })?,
        )
    } else {
        None
    };
    let name = format!("{seg_name}.at-{offset}.broken");
    copy_to_new_file(storage, file.as_ref(), offset, len, dir, &name)?;
    zero_range(file.as_ref(), offset, len)
        .map_err(|e| JournalError::io(segment, "zero torn tail", e))?;
    if let Some(first_seq) = first_seq {
        // Idempotent if interrupted.
        file.write_all_at(&format::encode_segment_header(first_seq), 0)
            .map_err(|e| JournalError::io(segment, "rewrite segment header", e))?;
    }
    file.sync_data()
        .map_err(|e| JournalError::io(segment, "fsync segment", e))?;
    Ok(dir.join(name))
}

/// Writes `[offset, offset + len)` of `from` to a new file `dir/name` with
/// the new-file protocol (temp file, write, fsync, rename, fsync directory),
/// one chunk at a time.
fn copy_to_new_file(
    storage: &dyn Storage,
    from: &dyn StorageFile,
    offset: u64,
    len: u64,
    dir: &Path,
    name: &str,
) -> Result<(), JournalError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    let to = storage
        .create(&tmp)
        .map_err(|e| JournalError::io(&tmp, "create", e))?;
    let mut buf = vec![0u8; chunk(len)];
    let mut done = 0u64;
    while done < len {
        let n = chunk(len - done);
        from.read_exact_at(&mut buf[..n], offset + done)
            .map_err(|e| JournalError::io(&tmp, "read torn tail", e))?;
        to.write_all_at(&buf[..n], done)
            .map_err(|e| JournalError::io(&tmp, "write", e))?;
        done += n as u64;
    }
    to.sync_all()
        .map_err(|e| JournalError::io(&tmp, "fsync", e))?;
    drop(to);
    storage
        .rename(&tmp, &dest)
        .map_err(|e| JournalError::io(&dest, "rename into place", e))?;
    writer::sync_dir(storage, dir)
}
