//! Reading a journal directory: its segments in order, each through the one
//! frame loop ([`super::segment::read_frames`]), classified as opening the
//! journal classifies them, as a stream of [`Event`]s.
//!
//! The **log** is what replay needs: the segments from the one holding the
//! first record after the chosen checkpoint. Its verdict ([`Walked::verdict`])
//! is what opening acts on: a clean end, a torn tail (truncated), or the first
//! corruption (open refuses), each with its file and offset. Segments before
//! the log are **history** (wholly covered by the checkpoint): the tool reads
//! and checks them too, and reports damage there, but it never changes the
//! log's verdict. Segment headers, file names, the chain of first sequence
//! numbers and the torn segment creation rule (journal-format.md) are judged
//! here and nowhere else. The batch a `FAILED-COMMIT` marker names reads as
//! zeros, as the next open will have made it (it zeroes that batch before it
//! reads): it was never acknowledged, and may exist only in the page cache.
//!
//! The last segment (the only one a commit can have failed in: a batch goes
//! to the active segment, the newest, and a failed one poisons the journal)
//! is read after dropping its clean cached pages
//! ([`crate::storage::StorageFile::drop_cache`]), so a failed commit whose
//! process died before it could leave its marker reads as what the disk
//! holds, never as the batch the page cache kept after the failed
//! write-back: opening syncs that segment first, so every page it replays
//! is on the disk; the read-only tool does not sync, and what it keeps
//! cached is what that sync would write. `dump --follow` (a position to
//! poll from) reads through the cache.

use std::path::{Path, PathBuf};

use super::super::format::{self, Invalid, SEG_FIRST_SEQ_OFFSET, SEGMENT_HEADER_LEN};
use super::super::repair::{FailedCommit, read_failed_commit};
use super::super::{JOURNAL_DIR, JournalError};
use super::LogEnd;
use super::files::{list_segments, read_segment_into};
use super::segment::{
    Cursor, Flow, Frame, FramesRead, Item, dirty_end, find_next_valid_frame, read_frames,
};
use crate::storage::{Cache, Storage};

/// Which segments a walk reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The log only: from the segment holding this sequence number (the
    /// checkpoint's plus one) on. What opening and `journal state` read.
    From(u64),
    /// Every segment; those before the one holding `log_from` are history.
    /// What `journal verify`, `dump` and `stats` read.
    All { log_from: u64 },
    /// From a known position in a segment on (its header already checked):
    /// what `dump --follow` reads as the log grows.
    At(Tail),
}

/// How to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub scope: Scope,
    /// Continue past damage at the next valid frame (`dump --raw`,
    /// `verify --raw`). The verdict stays the first problem's.
    pub raw: bool,
    /// Read the last segment through the page cache rather than as the
    /// disk holds it: for a reader of a live journal that stops at a durable
    /// record (`read_prefix`), whose pages are on the disk already; dropping
    /// the active segment's cache would make it read up to a whole segment
    /// from the disk, beside the writer's syncs.
    pub through_cache: bool,
}

/// A position in a named segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The segment's first sequence number (its name).
    pub segment: u64,
    pub path: PathBuf,
    pub cursor: Cursor,
}

/// Damage found by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: Invalid,
    /// `Some(len)`: a torn tail, what opening truncates (`len` bytes from
    /// `offset` to the last nonzero byte). `None`: corruption.
    pub torn_len: Option<u64>,
    /// The sequence number a valid record here would have carried, if known.
    pub expected_seq: Option<u64>,
    /// In a history segment (opening does not read it; falling back to an
    /// older checkpoint would).
    pub history: bool,
}

impl Damage {
    pub fn is_torn(&self) -> bool {
        self.torn_len.is_some()
    }

    fn corrupt(file: &Path, offset: u64, reason: Invalid, expected: Option<u64>) -> Damage {
        Damage {
            file: file.to_owned(),
            offset,
            reason,
            torn_len: None,
            expected_seq: expected,
            history: false,
        }
    }
}

/// Corruption of the log: opening refuses, naming this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: Invalid,
}

impl From<Corruption> for JournalError {
    fn from(c: Corruption) -> Self {
        JournalError::Corrupt {
            file: c.file,
            offset: c.offset,
            reason: c.reason,
        }
    }
}

/// One segment as a walk read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDone {
    pub file: PathBuf,
    /// Its first sequence number, from its name.
    pub first_seq: u64,
    pub file_len: u64,
    /// Offset just after the last valid frame.
    pub used: u64,
    /// Valid records read, and the first and last of their sequence numbers.
    pub count: u64,
    pub records: Option<(u64, u64)>,
    pub history: bool,
    /// Corruption was found in it.
    pub damaged: bool,
    /// It ends in a torn tail.
    pub torn: bool,
}

/// What a walk hands its visitor, in journal order.
#[derive(Debug)]
pub enum Event<'a> {
    /// A valid frame. The visitor decodes it and answers
    /// [`Flow::Reject`] if it is not a record of its kind.
    Frame {
        file: &'a Path,
        /// The segment's first sequence number (its name).
        segment: u64,
        frame: Frame<'a>,
        history: bool,
    },
    Damage(&'a Damage),
    /// Raw mode: reading continues at this valid frame after damage.
    Resumed {
        file: &'a Path,
        offset: u64,
        seq: u64,
        expected_seq: u64,
    },
    /// Raw mode: no valid frame follows the damage in this segment.
    NothingValidAfter {
        file: &'a Path,
        offset: u64,
    },
    /// A segment was read to its end (or to damage, in raw mode or in
    /// history). Not sent for a log segment where a walk without `raw` stops.
    SegmentDone(&'a SegmentDone),
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walked {
    /// What opening does with the log: it ends cleanly, it ends in a torn
    /// tail (truncated), or it is corrupt (refused), with file and offset.
    pub verdict: Result<LogEnd, Corruption>,
    /// The last record of the log's valid prefix (the checkpoint's sequence
    /// number when the log holds none after it).
    pub last_seq: u64,
    /// Where the log's valid prefix ends in its last segment: where opening
    /// appends (`None` without a segment, or when the log is corrupt).
    pub tail: Option<Tail>,
    /// Where reading ended at zeros in the last segment read, after any
    /// resumption: where the next frame would go (`dump --follow`).
    pub end_at: Option<Tail>,
    /// Every segment present.
    pub segments: Vec<(u64, PathBuf)>,
    /// Index in `segments` of the first log segment (`segments.len()` when
    /// there is none).
    pub log_start: usize,
    /// Segments read.
    pub read: usize,
    /// Corruption found (log and history; a torn tail is not counted).
    pub corrupt: usize,
    pub first_corrupt: Option<Damage>,
    /// The visitor asked to stop.
    pub stopped: bool,
}

/// Reads the segments of `state_dir`'s journal as `options` says, handing
/// every event to `visit`. Read-only: it never repairs, locks or writes.
/// I/O failures are errors; damage is reported in events and the verdict.
pub fn read(
    storage: &dyn Storage,
    state_dir: &Path,
    options: &Options,
    visit: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Result<Walked, JournalError> {
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let segments = list_segments(storage, &journal_dir)?;
    let failed_commit = read_failed_commit(storage, &journal_dir)?;
    let (first, log_from, entry) = match &options.scope {
        Scope::From(seq) => (None, *seq, None),
        Scope::All { log_from } => (Some(0), *log_from, None),
        Scope::At(tail) => {
            let Some(i) = segments.iter().position(|(s, _)| *s == tail.segment) else {
                return Err(JournalError::io(
                    &tail.path,
                    "open segment",
                    std::io::ErrorKind::NotFound.into(),
                ));
            };
            (Some(i), tail.cursor.next_seq, Some(tail.cursor))
        }
    };
    assert!(
        log_from >= 1,
        "the log starts at a sequence number of 1 or more"
    );
    let log_start = match entry {
        Some(_) => first.unwrap_or(0),
        None => segments
            .iter()
            .rposition(|(s, _)| *s <= log_from)
            .unwrap_or(segments.len()),
    };
    let first = first.unwrap_or(log_start);
    let mut w = Walker {
        raw: options.raw,
        log_from,
        log_next: None,
        visit,
        failed_commit,
        walked: Walked {
            verdict: Ok(LogEnd::Clean),
            last_seq: log_from - 1,
            tail: None,
            end_at: None,
            segments,
            log_start,
            read: 0,
            corrupt: 0,
            first_corrupt: None,
            stopped: false,
        },
        log_damaged: false,
    };
    if log_start == w.walked.segments.len()
        && let Some((found, path)) = w.walked.segments.first().cloned()
    {
        // No segment holds the first record after the checkpoint.
        let damage = Damage::corrupt(
            &path,
            0,
            Invalid::MissingSegment {
                expected_first_seq: log_from,
                found_first_seq: found,
            },
            Some(log_from),
        );
        if !w.damage(&damage) || first == log_start {
            return Ok(w.walked);
        }
    }
    let mut buf = Vec::new();
    let mut chain: Option<u64> = None;
    for i in first..w.walked.segments.len() {
        let (name_seq, path) = w.walked.segments[i].clone();
        let history = i < w.walked.log_start;
        let is_last = !history && i + 1 == w.walked.segments.len();
        // The last segment is read as the disk holds it (see the module
        // documentation), except by `dump --follow`, which polls a live one.
        let cache = if i + 1 == w.walked.segments.len() && entry.is_none() && !options.through_cache
        {
            Cache::Drop
        } else {
            Cache::Keep
        };
        if i == w.walked.log_start && !history {
            // The end of the history must meet the log (a fallback to an
            // older checkpoint reads across); the log itself starts afresh.
            if let Some(expected) = chain.take()
                && expected != name_seq
                && i > first
            {
                let mut damage = Damage::corrupt(
                    &path,
                    0,
                    Invalid::MissingSegment {
                        expected_first_seq: expected,
                        found_first_seq: name_seq,
                    },
                    Some(expected),
                );
                damage.history = true;
                if !w.damage(&damage) {
                    break;
                }
            }
        }
        let expected_next = chain.unwrap_or(log_from);
        match w.segment(
            storage,
            &path,
            name_seq,
            history,
            is_last,
            chain,
            expected_next,
            (i == first).then_some(entry).flatten(),
            cache,
            &mut buf,
        )? {
            Some(next) => chain = next,
            None => break,
        }
    }
    if w.walked.verdict.is_ok()
        && !w.walked.stopped
        && let Some(next) = w.log_next
        && next < log_from
    {
        // The log ends before the first record after the checkpoint: the
        // records in between are gone (appending would leave a hole).
        // Cannot happen with the write protocol: a checkpoint is taken only
        // at a durable sequence number and the active segment is never removed.
        let file = w
            .walked
            .segments
            .last()
            .map(|(_, p)| p.clone())
            .unwrap_or(journal_dir);
        let damage = Damage::corrupt(
            &file,
            0,
            Invalid::MissingSegment {
                expected_first_seq: next,
                found_first_seq: log_from,
            },
            Some(next),
        );
        w.damage(&damage);
    }
    if w.walked.verdict.is_err() {
        w.walked.tail = None;
    }
    Ok(w.walked)
}

struct Walker<'v> {
    raw: bool,
    /// The first record after the checkpoint.
    log_from: u64,
    /// The record after the log's valid prefix, once its last segment is read.
    log_next: Option<u64>,
    visit: &'v mut dyn FnMut(Event<'_>) -> Flow,
    /// The batch of a failed commit, read as zeros.
    failed_commit: Option<FailedCommit>,
    walked: Walked,
    /// Damage (torn or corrupt) was found in the log.
    log_damaged: bool,
}

impl Walker<'_> {
    /// Records damage and reports it; false when the visitor stops.
    fn damage(&mut self, damage: &Damage) -> bool {
        if !damage.is_torn() {
            self.walked.corrupt += 1;
            if self.walked.first_corrupt.is_none() {
                self.walked.first_corrupt = Some(damage.clone());
            }
        }
        if !damage.history && !self.log_damaged {
            self.log_damaged = true;
            self.walked.verdict = match damage.torn_len {
                Some(len) => Ok(LogEnd::TornTail {
                    segment: damage.file.clone(),
                    offset: damage.offset,
                    len,
                    reason: damage.reason.clone(),
                }),
                None => Err(Corruption {
                    file: damage.file.clone(),
                    offset: damage.offset,
                    reason: damage.reason.clone(),
                }),
            };
        }
        if (self.visit)(Event::Damage(damage)) == Flow::Stop {
            self.walked.stopped = true;
            return false;
        }
        true
    }

    /// Whether reading must end after damage in a segment (`history` or not).
    fn ends_here(&self, history: bool) -> bool {
        !self.raw && !history
    }

    /// Reads one segment. Returns the first sequence number the next
    /// segment must carry (`None`: unknown after damage), or `None` in the
    /// outer option when the walk ends here.
    #[allow(clippy::too_many_arguments, clippy::option_option)]
    fn segment(
        &mut self,
        storage: &dyn Storage,
        path: &Path,
        name_seq: u64,
        history: bool,
        is_last: bool,
        chain: Option<u64>,
        expected_next: u64,
        entry: Option<Cursor>,
        cache: Cache,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Option<u64>>, JournalError> {
        self.walked.read += 1;
        // Whether this segment extends the log's valid prefix: no damage in
        // the log so far, and none in this segment's header.
        let mut prefix_ok = !history && !self.log_damaged;
        let mut header_damaged = false;
        let with_history = |mut d: Damage| {
            d.history = history;
            d
        };
        match read_segment_into(storage, path, cache, buf) {
            Ok(()) => {}
            Err(JournalError::Corrupt { offset, reason, .. }) => {
                let d = with_history(Damage::corrupt(path, offset, reason, Some(expected_next)));
                if !self.damage(&d) || self.ends_here(history) {
                    return Ok(None);
                }
                return Ok(Some(None));
            }
            // A segment of the history removed since the listing: a live
            // journal's writer removes the segments a newer checkpoint
            // covers (the oldest ones, always history to a reader that
            // chose an older checkpoint). Read as if listed afterwards.
            Err(JournalError::Io { source, .. })
                if history && source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.walked.read -= 1;
                return Ok(Some(None));
            }
            Err(e) => return Err(e),
        }
        if let Some(failed) = self.failed_commit
            && failed.applies_to(name_seq, buf.len() as u64)
        {
            let from = usize::try_from(failed.offset).expect("inside the buffer");
            buf[from..].fill(0);
        }
        let bytes = &buf[..];
        let (start, search_from) = match entry {
            Some(cursor) => (cursor, None),
            None => match format::decode_segment_header(bytes) {
                Err(reason) => {
                    if is_last && name_seq == expected_next && is_torn_creation(bytes, &reason) {
                        let d = Damage {
                            file: path.to_owned(),
                            offset: 0,
                            reason,
                            torn_len: Some(dirty_end(bytes) as u64),
                            expected_seq: Some(expected_next),
                            history: false,
                        };
                        self.walked.last_seq = self.walked.last_seq.max(name_seq.saturating_sub(1));
                        self.walked.tail = Some(Tail {
                            segment: name_seq,
                            path: path.to_owned(),
                            cursor: Cursor::segment_start(name_seq),
                        });
                        self.log_next = Some(name_seq);
                        if !self.damage(&d) {
                            return Ok(None);
                        }
                        self.done(path, name_seq, bytes, None, history, (false, true));
                        return Ok(None);
                    }
                    prefix_ok = false;
                    header_damaged = true;
                    let d = with_history(Damage::corrupt(path, 0, reason, Some(expected_next)));
                    if !self.damage(&d) || self.ends_here(history) {
                        return Ok(None);
                    }
                    if !self.raw {
                        self.done(path, name_seq, bytes, None, history, (true, false));
                        return Ok(Some(None));
                    }
                    (Cursor::segment_start(name_seq), Some(SEGMENT_HEADER_LEN))
                }
                Ok(first_seq) => {
                    let mut problems = Vec::new();
                    if first_seq != name_seq {
                        problems.push((
                            SEG_FIRST_SEQ_OFFSET as u64,
                            Invalid::NameMismatch {
                                name_seq,
                                header_seq: first_seq,
                            },
                            None,
                        ));
                    } else if let Some(expected) = chain
                        && expected != first_seq
                    {
                        problems.push((
                            0,
                            Invalid::MissingSegment {
                                expected_first_seq: expected,
                                found_first_seq: first_seq,
                            },
                            Some(expected),
                        ));
                    }
                    for (offset, reason, expected) in problems {
                        prefix_ok = false;
                        header_damaged = true;
                        let d = with_history(Damage::corrupt(path, offset, reason, expected));
                        if !self.damage(&d) || self.ends_here(history) {
                            return Ok(None);
                        }
                        if !self.raw {
                            self.done(path, name_seq, bytes, None, history, (true, false));
                            return Ok(Some(None));
                        }
                    }
                    (Cursor::segment_start(first_seq), None)
                }
            },
        };

        let raw = self.raw;
        let log_from = self.log_from;
        let mut stop_walk = false;
        let mut damaged = header_damaged;
        let mut torn = false;
        let read = read_frames(
            bytes,
            start,
            is_last,
            raw,
            search_from,
            &mut |item| match item {
                Item::Frame(frame) => (self.visit)(Event::Frame {
                    file: path,
                    segment: name_seq,
                    frame,
                    history,
                }),
                Item::Damage(spot) => {
                    let mut d = Damage {
                        file: path.to_owned(),
                        offset: spot.offset,
                        reason: spot.reason,
                        torn_len: spot.torn_len,
                        expected_seq: Some(spot.expected_seq),
                        history,
                    };
                    if d.is_torn() && spot.expected_seq < log_from {
                        // A checkpoint is taken only at a durable sequence
                        // number: a record it covers was durable, so damage to
                        // it is never a torn write.
                        d.torn_len = None;
                        d.reason = Invalid::BeforeCheckpoint {
                            cause: Box::new(d.reason),
                            checkpoint: log_from - 1,
                        };
                    }
                    torn |= d.is_torn();
                    damaged |= !d.is_torn();
                    let is_torn = d.is_torn();
                    if !self.damage(&d) {
                        return Flow::Stop;
                    }
                    if !is_torn && !raw && !history {
                        stop_walk = true;
                    }
                    Flow::Continue
                }
                Item::Resumed {
                    offset,
                    header,
                    expected_seq,
                } => (self.visit)(Event::Resumed {
                    file: path,
                    offset,
                    seq: header.seq,
                    expected_seq,
                }),
                Item::NothingValidAfter { offset } => {
                    (self.visit)(Event::NothingValidAfter { file: path, offset })
                }
            },
        );
        if read.stopped {
            self.walked.stopped = true;
            return Ok(None);
        }
        if prefix_ok {
            // The valid prefix of the log grows through this segment.
            self.walked.last_seq = self
                .walked
                .last_seq
                .max(read.valid.next_seq.saturating_sub(1));
        }
        if is_last {
            self.walked.tail = Some(Tail {
                segment: name_seq,
                path: path.to_owned(),
                cursor: read.valid,
            });
            self.log_next = Some(read.valid.next_seq);
        }
        self.walked.end_at = read.clean_at.map(|cursor| Tail {
            segment: name_seq,
            path: path.to_owned(),
            cursor,
        });
        if stop_walk {
            return Ok(None);
        }
        self.done(path, name_seq, bytes, Some(&read), history, (damaged, torn));
        Ok(Some(read.clean_at.map(|c| c.next_seq)))
    }

    /// Reports a segment read.
    fn done(
        &mut self,
        path: &Path,
        name_seq: u64,
        bytes: &[u8],
        read: Option<&FramesRead>,
        history: bool,
        (damaged, torn): (bool, bool),
    ) {
        let summary = SegmentDone {
            file: path.to_owned(),
            first_seq: name_seq,
            file_len: bytes.len() as u64,
            used: read.map_or((SEGMENT_HEADER_LEN.min(bytes.len())) as u64, |r| r.used),
            count: read.map_or(0, |r| r.count),
            records: read.and_then(|r| r.records),
            history,
            damaged,
            torn,
        };
        if (self.visit)(Event::SegmentDone(&summary)) == Flow::Stop {
            self.walked.stopped = true;
        }
    }
}

/// The torn segment creation rule (journal-format.md): a last segment, named
/// for exactly the sequence number the log expects next, whose header does
/// not hold because it is short, or its magic or checksum does not match (a
/// header whose checksum holds was written: any other fault is corruption),
/// and that holds no valid frame at any 8-aligned offset.
fn is_torn_creation(bytes: &[u8], reason: &Invalid) -> bool {
    let unwritten = matches!(
        reason,
        Invalid::Truncated { .. } | Invalid::BadMagic | Invalid::HeaderChecksum { .. }
    );
    unwritten && find_next_valid_frame(bytes, 0).is_none()
}
