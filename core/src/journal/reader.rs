//! Reading the journal: scanning one segment's bytes, and walking all segments
//! to classify the end of the log.
//!
//! [`scan_segment`] is pure (bytes in, frames and an end classification out)
//! and is what the fuzz target drives. [`recover`] lists the segments after a
//! checkpoint, scans them in order and decides: a clean end; a torn tail (only
//! in the last segment, and only if no frame of a *later* write batch follows
//! the first invalid byte); or corruption, reported with file, offset, reason.
//! It never skips past a bad frame.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::format::{
    self, FRAME_ALIGN, FRAME_BATCH_OFFSET, FRAME_HEADER_LEN, FRAME_LEN_OFFSET, FRAME_SEQ_OFFSET,
    FrameAt, FrameHeader, Invalid, MAX_SEGMENT_LEN, SEGMENT_HEADER_LEN,
};
use crate::storage::{self, Storage};

/// One valid frame found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFrame {
    pub header: FrameHeader,
    /// Offset of the frame header within the segment file.
    pub offset: u64,
    /// Where the payload lies within the scanned bytes.
    pub payload: Range<usize>,
}

/// How the written part of a segment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// After the last frame, only zeros up to the end of the file.
    Clean { offset: u64 },
    /// The bytes at `offset` are not a valid next frame.
    Invalid {
        offset: u64,
        reason: Invalid,
        /// One past the last nonzero byte of the file (what a repair removes).
        dirty_end: u64,
        /// A valid frame of a later write batch found after `offset`, if any:
        /// proof that the invalid bytes were once durable.
        later_batch_frame: Option<u64>,
    },
}

/// Everything one scan of a segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub first_seq: u64,
    pub frames: Vec<ScannedFrame>,
    pub end: SegmentEnd,
}

impl SegmentScan {
    /// Sequence number the next frame after the valid ones would carry.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.frames.len() as u64
    }
}

/// Scans a whole segment file's bytes. A bad segment header is an error at
/// offset 0; after that, frames are read until the end of the written data or
/// the first invalid one, which is classified in [`SegmentEnd`].
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, (u64, Invalid)> {
    let first_seq = format::decode_segment_header(bytes).map_err(|e| (0, e))?;
    let mut frames = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut seq = first_seq;
    let mut batch_first_seq: Option<u64> = None;
    // Bounded: every iteration consumes at least FRAME_HEADER_LEN bytes.
    let end = loop {
        let invalid = match format::frame_at(&bytes[offset..], seq) {
            Ok(FrameAt::End) => {
                if bytes[offset..].iter().all(|&b| b == 0) {
                    break SegmentEnd::Clean {
                        offset: offset as u64,
                    };
                }
                Invalid::JunkAfterEnd
            }
            Ok(FrameAt::Frame(header, payload, len)) => {
                // A frame either starts a batch or continues the previous
                // frame's batch; batches never span segments.
                let continues = batch_first_seq == Some(header.batch_first_seq);
                if header.batch_first_seq == header.seq || continues {
                    batch_first_seq = Some(header.batch_first_seq);
                    let start = offset + FRAME_HEADER_LEN;
                    frames.push(ScannedFrame {
                        header,
                        offset: offset as u64,
                        payload: start..start + payload.len(),
                    });
                    offset += len;
                    seq += 1;
                    continue;
                }
                Invalid::BatchField {
                    seq: header.seq,
                    batch_first_seq: header.batch_first_seq,
                }
            }
            Err(reason) => reason,
        };
        break SegmentEnd::Invalid {
            offset: offset as u64,
            reason: invalid,
            dirty_end: dirty_end(bytes) as u64,
            later_batch_frame: find_later_batch_frame(bytes, offset, seq).map(|o| o as u64),
        };
    };
    Ok(SegmentScan {
        first_seq,
        frames,
        end,
    })
}

/// One past the last nonzero byte.
fn dirty_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

/// Bytes the forward scans below may checksum for one call: linear in the
/// bytes scanned. Real damage needs few checksums (most garbage claims a
/// length over the limit or past the end, refused before any checksum), but
/// crafted input could make every 8-byte offset claim a frame that fits,
/// which would be quadratic work.
fn checksum_budget(bytes: &[u8]) -> usize {
    bytes.len().saturating_mul(8).saturating_add(64 << 20)
}

/// Checksum work of checking the candidate frame at `bytes[p..]`: its claimed
/// length if it fits in what remains (only then is a checksum computed).
fn candidate_cost(bytes: &[u8], p: usize) -> usize {
    let len = bytes[p + FRAME_LEN_OFFSET..p + FRAME_LEN_OFFSET + 4]
        .try_into()
        .map(u32::from_le_bytes)
        .unwrap_or(0) as usize;
    if len > format::MAX_PAYLOAD_LEN || format::frame_len(len) > bytes.len() - p {
        return FRAME_HEADER_LEN;
    }
    format::frame_len(len)
}

/// Looks after `from` for a valid frame that belongs to a write batch later
/// than the one holding sequence `bad_seq` (its batch starts after `bad_seq`).
/// Frames of the same batch as the bad one prove nothing: one group commit's
/// sectors can reach the disk in any order before its sync completes.
///
/// `Some(offset)` means the damage cannot be taken for a torn write: a later
/// batch's frame starts at `offset`, or (only on crafted input) the checksum
/// budget ran out at `offset` before the scan could rule that out.
pub fn find_later_batch_frame(bytes: &[u8], from: usize, bad_seq: u64) -> Option<usize> {
    let mut budget = checksum_budget(bytes);
    let mut p = from + FRAME_ALIGN;
    while p + FRAME_HEADER_LEN <= bytes.len() {
        let h = &bytes[p..p + FRAME_HEADER_LEN];
        let seq = u64::from_le_bytes(h[FRAME_SEQ_OFFSET..FRAME_SEQ_OFFSET + 8].try_into().ok()?);
        let batch = u64::from_le_bytes(
            h[FRAME_BATCH_OFFSET..FRAME_BATCH_OFFSET + 8]
                .try_into()
                .ok()?,
        );
        if batch > bad_seq && seq >= batch {
            let cost = candidate_cost(bytes, p);
            if cost > budget {
                return Some(p);
            }
            budget -= cost;
            if let Ok((header, _, _)) = format::decode_frame(&bytes[p..], seq)
                && header.batch_first_seq > bad_seq
            {
                return Some(p);
            }
        }
        p += FRAME_ALIGN;
    }
    None
}

/// Scans forward from `from` for the next offset that holds a valid frame with
/// any sequence number (`dump --raw` uses it to continue past damage). Gives
/// up (`None`) once its checksum budget is spent, so crafted input cannot make
/// it quadratic.
pub fn find_next_valid_frame(bytes: &[u8], from: usize) -> Option<(usize, FrameHeader)> {
    let mut budget = checksum_budget(bytes);
    let mut p = from.next_multiple_of(FRAME_ALIGN);
    while p + FRAME_HEADER_LEN <= bytes.len() {
        let h = &bytes[p..p + FRAME_HEADER_LEN];
        if h.iter().any(|&b| b != 0) {
            let cost = candidate_cost(bytes, p);
            if cost > budget {
                return None;
            }
            budget -= cost;
            let seq =
                u64::from_le_bytes(h[FRAME_SEQ_OFFSET..FRAME_SEQ_OFFSET + 8].try_into().ok()?);
            if let Ok((header, _, _)) = format::decode_frame(&bytes[p..], seq) {
                return Some((p, header));
            }
        }
        p += FRAME_ALIGN;
    }
    None
}

/// Segment files of a journal directory, sorted by the first sequence number
/// in their names. Other files (temp files, `.broken` copies) are ignored.
pub fn list_segments(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    list_numbered(storage, dir, "seg")
}

/// Checkpoint files of a directory, sorted by sequence number.
pub fn list_checkpoints(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    list_numbered(storage, dir, "ckpt")
}

fn list_numbered(
    storage: &dyn Storage,
    dir: &Path,
    ext: &str,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let names = match storage.list_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(JournalError::io(dir, "list directory", e)),
    };
    let mut out: Vec<(u64, PathBuf)> = names
        .iter()
        .filter_map(|n| format::parse_numbered_name(n, ext).map(|s| (s, dir.join(n))))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads one segment file, bounded.
pub fn read_segment(storage: &dyn Storage, path: &Path) -> Result<Vec<u8>, JournalError> {
    let mut buf = Vec::new();
    read_segment_into(storage, path, &mut buf)?;
    Ok(buf)
}

/// Reads one segment file, bounded, into `buf` (its old content is replaced).
pub fn read_segment_into(
    storage: &dyn Storage,
    path: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), JournalError> {
    storage::read_bounded_into(storage, path, MAX_SEGMENT_LEN, buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            let len = storage.open(path).and_then(|f| f.len()).unwrap_or(0);
            JournalError::Corrupt {
                file: path.to_owned(),
                offset: 0,
                reason: Invalid::FileTooLarge {
                    len,
                    max: MAX_SEGMENT_LEN,
                },
            }
        } else {
            JournalError::io(path, "read segment", e)
        }
    })
}

/// A newest-first attempt to load a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointAttempt {
    pub path: PathBuf,
    pub seq: u64,
    /// Why it was not used, if it was not.
    pub rejected: Option<String>,
}

/// The end of the log as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    Clean,
    /// An unfinished write at the end of the last segment.
    TornTail {
        segment: PathBuf,
        offset: u64,
        /// Bytes from `offset` to the last nonzero byte.
        len: u64,
        reason: Invalid,
    },
}

/// What a walk over the journal found, before any repair.
#[derive(Debug)]
pub struct Walk {
    /// The checkpoint replay starts from: sequence number and payload.
    pub checkpoint: Option<(u64, PathBuf, Vec<u8>)>,
    pub checkpoint_attempts: Vec<CheckpointAttempt>,
    /// Segments (first sequence, path) from the one holding the first record
    /// after the checkpoint on.
    pub segments: Vec<(u64, PathBuf)>,
    /// Sequence number of the last valid record (0 if none).
    pub last_seq: u64,
    /// Where the next frame goes: the last segment and the offset after its
    /// last valid frame (`None` when there is no segment yet).
    pub append_at: Option<(u64, PathBuf, u64)>,
    pub end: LogEnd,
    /// All segments present, including ones wholly covered by the checkpoint.
    pub all_segments: Vec<(u64, PathBuf)>,
}

/// Loads the newest valid checkpoint and walks the segments after it, calling
/// `visit(seq, kind, payload, file, offset)` for every record after the
/// checkpoint, in order. Read-only: it never repairs, locks or writes.
pub fn walk(
    storage: &dyn Storage,
    state_dir: &Path,
    mut visit: impl FnMut(u64, u8, &[u8], &Path, u64) -> Result<(), JournalError>,
) -> Result<Walk, JournalError> {
    let journal_dir = state_dir.join(super::JOURNAL_DIR);
    let checkpoint_dir = state_dir.join(super::CHECKPOINT_DIR);

    let mut attempts = Vec::new();
    let mut checkpoint = None;
    for (seq, path) in list_checkpoints(storage, &checkpoint_dir)?
        .into_iter()
        .rev()
    {
        let rejected =
            match storage::read_bounded(storage, &path, format::MAX_CHECKPOINT_PAYLOAD_LEN + 64) {
                Err(e) => Some(format!("unreadable: {e}")),
                Ok(bytes) => match format::decode_checkpoint(&bytes) {
                    Err(reason) => Some(reason.to_string()),
                    Ok((stored_seq, _)) if stored_seq != seq => Some(format!(
                        "file name says sequence {seq}, header says {stored_seq}"
                    )),
                    Ok((_, payload)) => {
                        checkpoint = Some((seq, path.clone(), payload.to_vec()));
                        None
                    }
                },
            };
        let used = rejected.is_none();
        attempts.push(CheckpointAttempt {
            path,
            seq,
            rejected,
        });
        if used {
            break;
        }
    }
    let covered = checkpoint.as_ref().map_or(0, |(seq, _, _)| *seq);

    let all_segments = list_segments(storage, &journal_dir)?;
    // Start at the last segment whose first record is at or before covered+1.
    let start = all_segments
        .iter()
        .rposition(|(first, _)| *first <= covered + 1);
    let segments: Vec<(u64, PathBuf)> = match (start, all_segments.first()) {
        (Some(i), _) => all_segments[i..].to_vec(),
        (None, Some((first, path))) => {
            return Err(JournalError::Corrupt {
                file: path.clone(),
                offset: 0,
                reason: Invalid::MissingSegment {
                    expected_first_seq: covered + 1,
                    found_first_seq: *first,
                },
            });
        }
        (None, None) => Vec::new(),
    };

    let mut last_seq = covered;
    let mut expected_first: Option<u64> = None;
    let mut append_at = None;
    let mut end = LogEnd::Clean;
    // One buffer for every segment: no fresh pages to fault in per file.
    let mut bytes = Vec::new();
    for (i, (name_seq, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        read_segment_into(storage, path, &mut bytes)?;
        let scan = match scan_segment(&bytes) {
            Ok(scan) => scan,
            Err((offset, reason)) => {
                // A last segment whose header is invalid and that holds no
                // valid frame anywhere, named for exactly the sequence the log
                // expects next, is a segment whose creation never became
                // durable: a torn tail at offset 0. Anything else is damage.
                let expected_next = expected_first.unwrap_or(covered + 1);
                if is_last
                    && *name_seq == expected_next
                    && find_next_valid_frame(&bytes, 0).is_none()
                {
                    append_at = Some((*name_seq, path.clone(), SEGMENT_HEADER_LEN as u64));
                    end = LogEnd::TornTail {
                        segment: path.clone(),
                        offset: 0,
                        len: dirty_end(&bytes) as u64,
                        reason,
                    };
                    break;
                }
                return Err(JournalError::Corrupt {
                    file: path.clone(),
                    offset,
                    reason,
                });
            }
        };
        if scan.first_seq != *name_seq {
            return Err(JournalError::Corrupt {
                file: path.clone(),
                offset: format::SEG_FIRST_SEQ_OFFSET as u64,
                reason: Invalid::NameMismatch {
                    name_seq: *name_seq,
                    header_seq: scan.first_seq,
                },
            });
        }
        if let Some(expected) = expected_first
            && expected != scan.first_seq
        {
            return Err(JournalError::Corrupt {
                file: path.clone(),
                offset: 0,
                reason: Invalid::MissingSegment {
                    expected_first_seq: expected,
                    found_first_seq: scan.first_seq,
                },
            });
        }
        for frame in &scan.frames {
            let seq = frame.header.seq;
            if seq > covered {
                visit(
                    seq,
                    frame.header.kind,
                    &bytes[frame.payload.clone()],
                    path,
                    frame.offset,
                )?;
            }
        }
        let next_seq = scan.next_seq();
        if next_seq > 0 {
            last_seq = last_seq.max(next_seq - 1);
        }
        expected_first = Some(next_seq);
        match scan.end {
            SegmentEnd::Clean { offset } => {
                if is_last {
                    append_at = Some((scan.first_seq, path.clone(), offset));
                }
            }
            SegmentEnd::Invalid {
                offset,
                reason,
                dirty_end,
                later_batch_frame,
            } => {
                if !is_last {
                    return Err(JournalError::Corrupt {
                        file: path.clone(),
                        offset,
                        reason,
                    });
                }
                if let Some(valid_frame_at) = later_batch_frame {
                    return Err(JournalError::Corrupt {
                        file: path.clone(),
                        offset,
                        reason: Invalid::DurableDataFollows {
                            cause: Box::new(reason),
                            valid_frame_at,
                        },
                    });
                }
                append_at = Some((scan.first_seq, path.clone(), offset));
                end = LogEnd::TornTail {
                    segment: path.clone(),
                    offset,
                    len: dirty_end.saturating_sub(offset),
                    reason,
                };
            }
        }
    }
    if last_seq < covered {
        // Cannot happen with the write protocol: a checkpoint is taken only
        // at a durable sequence number and the active segment is never removed.
        let file = segments
            .last()
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| journal_dir.clone());
        return Err(JournalError::Corrupt {
            file,
            offset: 0,
            reason: Invalid::MissingSegment {
                expected_first_seq: covered,
                found_first_seq: last_seq + 1,
            },
        });
    }
    Ok(Walk {
        checkpoint,
        checkpoint_attempts: attempts,
        segments,
        last_seq,
        append_at,
        end,
        all_segments,
    })
}
