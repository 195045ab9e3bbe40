//! Reading the journal: the one reader that opening the journal and every
//! `volmgr journal` subcommand judge a journal through (DESIGN.md invariant
//! 12: same verdict, same offset).
//!
//! - `segment`: the only frame-reading loop ([`read_frames`]): valid frames,
//!   the classification of the first invalid spot (clean end, torn tail,
//!   corruption), and in raw mode the resumption past damage.
//! - `walk`: the segments of a directory in order ([`read`]): headers, names,
//!   the chain of first sequence numbers, the torn segment creation rule, the
//!   log (what replay needs) versus the history before it, as [`Event`]s and a
//!   [`Walked`] verdict.
//! - `files`: listing, bounded reads of regular files only, and the choice of
//!   the checkpoint replay starts from ([`choose_checkpoint`]).
//!
//! [`read_log`] is what opening reads (the chosen checkpoint, then the log,
//! every frame decoded as a record of its kind) without repairing anything:
//! `Journal::open` and `journal repair` both call it. The tool's `verify`,
//! `dump`, `stats` and `state` walk with [`read`] and the same checkpoint
//! choice.

mod files;
mod segment;
mod walk;

use std::path::{Path, PathBuf};

pub use files::{
    CheckpointAttempt, Chosen, MAX_CHECKPOINT_FILE_LEN, choose_checkpoint, is_gone,
    list_checkpoints, list_segments, read_checkpoint, read_segment, read_segment_into,
};
pub use segment::{
    Cursor, Flow, Frame, FramesRead, Item, ScannedFrame, SegmentEnd, SegmentScan, Spot,
    find_later_batch_frame, find_next_valid_frame, read_frames, scan_segment,
};
pub use walk::{Corruption, Damage, Event, Options, Scope, SegmentDone, Tail, Walked, read};

use super::format::Invalid;
use super::{JournalError, JournalRecord, Rebuild, codec};
use crate::storage::Storage;

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

/// Decodes a frame's payload as a record and checks that the frame's kind
/// byte is that record's kind: what makes a valid frame a valid record.
/// Every reader that knows the record type (opening, the tool) checks this.
pub fn decode_frame_record<R: JournalRecord>(frame: &Frame<'_>) -> Result<R, Invalid> {
    let record: R = codec::decode_record(frame.payload).map_err(Invalid::Decode)?;
    let kind = record.kind();
    if kind != frame.header.kind {
        return Err(Invalid::KindMismatch {
            stored: frame.header.kind,
            record: kind,
        });
    }
    Ok(record)
}

/// What opening reads, before it repairs anything.
#[derive(Debug)]
pub struct LogRead {
    /// The checkpoint replay starts from.
    pub checkpoint: Option<Chosen>,
    /// Every checkpoint tried, newest first (rejected ones with the reason).
    pub checkpoint_attempts: Vec<CheckpointAttempt>,
    /// The walk of the log after the checkpoint; its verdict is open's.
    pub walked: Walked,
}

/// Reads what opening reads: the newest checkpoint that checks, then the
/// log after it, every frame decoded as an `R` (a frame that does not decode
/// or whose kind byte disagrees is corruption at its offset). Hands each
/// record after the checkpoint to `on_record`. Read-only: it never repairs,
/// locks or writes; the verdict is in `walked.verdict`.
pub fn read_log<R: JournalRecord>(
    storage: &dyn Storage,
    state_dir: &Path,
    mut on_record: impl FnMut(u64, R),
) -> Result<LogRead, JournalError> {
    let (checkpoint, checkpoint_attempts) = choose_checkpoint(storage, state_dir, None)?;
    let covered = checkpoint.as_ref().map_or(0, |c| c.seq);
    let options = Options {
        scope: Scope::From(covered + 1),
        raw: false,
        through_cache: false,
    };
    let walked = read(storage, state_dir, &options, &mut |event| match event {
        Event::Frame { frame, .. } => match decode_frame_record::<R>(&frame) {
            Ok(record) => {
                if frame.header.seq > covered {
                    on_record(frame.header.seq, record);
                }
                Flow::Continue
            }
            Err(reason) => Flow::Reject(reason),
        },
        _ => Flow::Continue,
    })?;
    Ok(LogRead {
        checkpoint,
        checkpoint_attempts,
        walked,
    })
}

/// Reads the journal up to record `upto` as opening would read it: the
/// newest checkpoint at or before `upto` that checks, handed to
/// [`Rebuild::start`] (`None` without one), then every record after it up
/// to `upto`, in order, each decoded as an `R`, to [`Rebuild::record`]. Works on
/// a live journal as long as `upto` is durable: every frame up to it is
/// whole on the disk, and nothing after it is read (the writer may be in
/// the middle of it). A callback's refusal, or a log that ends before
/// `upto`, is [`JournalError::Rebuild`]; damage is the walk's verdict.
/// Read-only: it never repairs, locks or writes.
pub fn read_prefix<R: JournalRecord>(
    storage: &dyn Storage,
    state_dir: &Path,
    upto: u64,
    state: &mut impl Rebuild<R>,
) -> Result<(), JournalError> {
    let refused = |reason: String| JournalError::Rebuild { seq: upto, reason };
    let (checkpoint, _) = choose_checkpoint(storage, state_dir, Some(upto))?;
    let covered = checkpoint.as_ref().map_or(0, |c| c.seq);
    state
        .start(checkpoint.as_ref().map(|c| (c.seq, c.payload.as_slice())))
        .map_err(refused)?;
    if covered == upto {
        return Ok(());
    }
    let options = Options {
        scope: Scope::From(covered + 1),
        raw: false,
        through_cache: true,
    };
    let mut last = covered;
    let mut failed = None;
    let walked = read(storage, state_dir, &options, &mut |event| match event {
        Event::Frame { frame, .. } if frame.header.seq > covered => {
            let seq = frame.header.seq;
            // Precondition of the walk: frames come in sequence order.
            debug_assert_eq!(seq, last + 1, "the walk hands records in order");
            match decode_frame_record::<R>(&frame) {
                Ok(record) => {
                    last = seq;
                    if let Err(reason) = state.record(seq, record) {
                        failed = Some(reason);
                        return Flow::Stop;
                    }
                    if seq >= upto {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
                Err(reason) => Flow::Reject(reason),
            }
        }
        _ => Flow::Continue,
    })?;
    if let Some(reason) = failed {
        return Err(refused(reason));
    }
    if last == upto {
        return Ok(());
    }
    walked.verdict.map_err(JournalError::from)?;
    Err(refused(format!(
        "the log ends at record {last}, before record {upto}"
    )))
}

/// What [`walk`] found, before any repair.
#[derive(Debug)]
pub struct Walk {
    /// The checkpoint replay starts from: sequence number, file and payload.
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

/// Loads the newest valid checkpoint and walks the log after it without
/// decoding payloads, calling `visit(seq, kind, payload, file, offset)` for
/// every frame after the checkpoint, in order; the first error `visit`
/// returns ends the walk. Corruption of the log is an error, as at open.
/// Read-only: it never repairs, locks or writes.
pub fn walk(
    storage: &dyn Storage,
    state_dir: &Path,
    mut visit: impl FnMut(u64, u8, &[u8], &Path, u64) -> Result<(), JournalError>,
) -> Result<Walk, JournalError> {
    let (checkpoint, checkpoint_attempts) = choose_checkpoint(storage, state_dir, None)?;
    let covered = checkpoint.as_ref().map_or(0, |c| c.seq);
    let options = Options {
        scope: Scope::From(covered + 1),
        raw: false,
        through_cache: false,
    };
    let mut failed = None;
    let walked = read(storage, state_dir, &options, &mut |event| match event {
        Event::Frame { file, frame, .. } if frame.header.seq > covered => {
            let h = frame.header;
            match visit(h.seq, h.kind, frame.payload, file, frame.offset) {
                Ok(()) => Flow::Continue,
                Err(e) => {
                    failed = Some(e);
                    Flow::Stop
                }
            }
        }
        _ => Flow::Continue,
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let end = walked.verdict.clone().map_err(JournalError::from)?;
    Ok(Walk {
        checkpoint: checkpoint.map(|c| (c.seq, c.path, c.payload)),
        checkpoint_attempts,
        segments: walked.segments[walked.log_start.min(walked.segments.len())..].to_vec(),
        last_seq: walked.last_seq,
        append_at: walked.tail.map(|t| (t.segment, t.path, t.cursor.offset)),
        end,
        all_segments: walked.segments,
    })
}
