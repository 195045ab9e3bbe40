//! The journal tool's view of a state directory, through the core reader
//! (`journal::reader`): the same checkpoint choice, segment walk, frame loop
//! and classification as opening the journal (DESIGN.md invariant 12), with
//! every frame decoded as a [`Record`] (a frame that is not a record of its
//! kind is corruption at its offset, as at open). This module only adapts
//! the reader's events to the subcommands and reads checkpoints one at a
//! time (a decoded checkpoint is dropped as soon as it is summarised, so
//! many large checkpoints never sit in memory together).
//!
//! Everything here reads through [`ReadOnlyStorage`], whose write operations
//! fail and whose `open` takes regular files only (`O_NONBLOCK` + `fstat`:
//! a FIFO in place of a segment or checkpoint is refused, never waited on).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::journal::reader::{self, Event, Options, Scope, Tail};
use crate::journal::{CHECKPOINT_DIR, JOURNAL_DIR, JournalError, LogEnd};
use crate::manager::checkpoint_state;
use crate::state::{ApplyError, Record, State};
use crate::storage::{self, LockGuard, Storage, StorageFile, Trusted};

use super::CliError;

// ---------------------------------------------------------------- read-only storage

/// The real file system, opened read-only; every mutating call fails.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadOnlyStorage;

#[derive(Debug)]
struct ReadOnlyFile(File);

fn denied(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{what}: the journal tool's read-only commands never write"),
    )
}

impl Storage for ReadOnlyStorage {
    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Err(denied("create directory"))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = storage::open_regular(OpenOptions::new().read(true), path)?;
        Ok(Box::new(ReadOnlyFile(file)))
    }

    fn create(&self, _path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Err(denied("create"))
    }

    fn rename(&self, _from: &Path, _to: &Path) -> io::Result<()> {
        Err(denied("rename"))
    }

    fn remove_file(&self, _path: &Path) -> io::Result<()> {
        Err(denied("remove"))
    }

    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        Err(denied("sync"))
    }

    fn lock_exclusive(&self, _path: &Path, _holder: &str) -> io::Result<LockGuard> {
        Err(denied("lock"))
    }
    /// The read-only tools read through bounded decoders and change
    /// nothing: they need no trusted path (`repair`, which writes, checks
    /// through [`crate::storage::RealStorage`]).
    fn check_trusted(&self, _path: &Path, _entry: Trusted) -> io::Result<()> {
        Ok(())
    }
}

impl StorageFile for ReadOnlyFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(denied("write"))
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(denied("sync"))
    }

    fn sync_all(&self) -> io::Result<()> {
        Err(denied("sync"))
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(denied("truncate"))
    }

    fn allocate(&self, _len: u64) -> io::Result<()> {
        Err(denied("allocate"))
    }
    /// Not a write: the tool drops the clean pages of the segment it reads
    /// last as opening does, so it reads what the disk holds (a failed
    /// write-back's pages would otherwise show a batch that never reached
    /// it). Pages not yet written back stay (their write-back is started),
    /// as they would for the open, which syncs them before it reads.
    fn drop_cache(&self) -> io::Result<()> {
        storage::drop_cached_pages(&self.0)
    }
}

// ---------------------------------------------------------------- paths

/// Checks that `state_dir` looks like a state directory (it has `journal/`),
/// so a mistyped path is a usage error rather than an "empty, clean" journal.
pub(crate) fn check_state_dir(state_dir: &Path) -> Result<(), CliError> {
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let bad = |e: &io::Error, text: String| {
        if e.kind() == io::ErrorKind::NotFound {
            CliError::usage(text)
        } else {
            CliError::io(text)
        }
    };
    match fs::metadata(state_dir) {
        Err(e) => {
            let text = format!("cannot read state directory {}: {e}", state_dir.display());
            return Err(bad(&e, text));
        }
        Ok(m) if !m.is_dir() => {
            return Err(CliError::usage(format!(
                "{} is not a directory",
                state_dir.display()
            )));
        }
        Ok(_) => {}
    }
    match fs::metadata(&journal_dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::usage(format!(
            "{} is not a directory",
            journal_dir.display()
        ))),
        Err(e) => {
            let text = format!(
                "{} is not a volmgr state directory (no {JOURNAL_DIR}/ inside: {e})",
                state_dir.display()
            );
            Err(bad(&e, text))
        }
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A journal failure that is not damage (I/O, a lock): exit 1.
// A `map_err` adapter: it takes the error the way `map_err` hands it over.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn journal_error(e: JournalError) -> CliError {
    CliError::io(e.to_string())
}

// ---------------------------------------------------------------- checkpoints

/// One checkpoint file and what reading it found.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub file: String,
    pub size: u64,
    /// The bytes check (header, checksum, length, name): opening could use it.
    pub bytes_ok: bool,
    /// The decoded state, or why the file cannot be used.
    pub state: Result<State, String>,
}

/// Reads every checkpoint, newest first, one at a time: each is handed to
/// `each` and dropped unless `each` keeps it. The first whose bytes check is
/// the one opening replays from.
pub(crate) fn each_checkpoint(
    storage: &dyn Storage,
    state_dir: &Path,
    mut each: impl FnMut(Checkpoint) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let dir = state_dir.join(CHECKPOINT_DIR);
    for (seq, path) in reader::list_checkpoints(storage, &dir)
        .map_err(journal_error)?
        .into_iter()
        .rev()
    {
        let size = storage.open(&path).and_then(|f| f.len()).unwrap_or(0);
        let read = reader::read_checkpoint(storage, &path, seq);
        // Removed since the listing by a live journal's writer (it keeps
        // the newest two): not damage, and not there any more.
        if read.is_err() && reader::is_gone(storage, &path) {
            continue;
        }
        let bytes_ok = read.is_ok();
        let state = read.and_then(|payload| checkpoint_state(seq, &payload));
        each(Checkpoint {
            seq,
            file: file_name(&path),
            size,
            bytes_ok,
            state,
        })?;
    }
    Ok(())
}

/// A checkpoint replay starts from: its sequence number and its state (or
/// why the state cannot be had).
pub(crate) type Base = (u64, Result<State, String>);

/// The checkpoint opening replays from: the newest at or before `at_most`
/// whose bytes check, with its state (or why that state cannot be had, in
/// which case opening refuses). Only that one is decoded.
pub(crate) fn open_base(
    storage: &dyn Storage,
    state_dir: &Path,
    at_most: Option<u64>,
) -> Result<Option<Base>, CliError> {
    let (chosen, _) =
        reader::choose_checkpoint(storage, state_dir, at_most).map_err(journal_error)?;
    Ok(chosen.map(|c| (c.seq, checkpoint_state(c.seq, &c.payload))))
}

// ---------------------------------------------------------------- scanning

/// A valid, decoded record and where it lies.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    pub seq: u64,
    pub kind: u8,
    /// First sequence number of the segment (its file name's number).
    pub segment: u64,
    pub file: &'a str,
    pub offset: u64,
    /// Bytes the frame occupies on disk (header, payload, padding).
    pub frame_len: u64,
    /// The write batch the frame belongs to.
    pub batch_first_seq: u64,
    pub record: Record,
    /// Part of what opening replays: in the log, before any damage there.
    pub replayable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProblemKind {
    /// An unfinished write at the end of the last segment: what opening the
    /// journal truncates.
    TornTail { len: u64 },
    /// Anything else.
    Corrupt,
}

/// Damage at a position.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub kind: ProblemKind,
    pub file: String,
    pub offset: u64,
    /// The sequence number a valid record here would have carried.
    pub expected_seq: Option<u64>,
    pub reason: String,
    /// In a segment opening does not read (the checkpoint covers it).
    pub history: bool,
}

impl Problem {
    pub(crate) fn position(&self) -> String {
        format!("{}:{}", self.file, self.offset)
    }

    fn from_damage(d: &reader::Damage) -> Problem {
        Problem {
            kind: match d.torn_len {
                Some(len) => ProblemKind::TornTail { len },
                None => ProblemKind::Corrupt,
            },
            file: file_name(&d.file),
            offset: d.offset,
            expected_seq: d.expected_seq,
            reason: d.reason.to_string(),
            history: d.history,
        }
    }
}

/// What a scan reports, in journal order.
#[derive(Debug)]
pub(crate) enum Item<'a> {
    Record(Found<'a>),
    Problem(Problem),
    /// Raw mode: reading continues at this valid frame after damage.
    Resumed {
        file: String,
        offset: u64,
        seq: u64,
        expected_seq: Option<u64>,
    },
    /// Raw mode: no valid frame follows the damage in this segment.
    NothingValidAfter {
        file: String,
        offset: u64,
    },
    /// A segment has been read to its end (or to damage, in raw mode).
    SegmentDone(SegmentInfo),
}

/// One segment as a scan found it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub file: String,
    pub file_len: u64,
    /// Offset just after the last valid frame.
    pub used: u64,
    /// Sequence numbers of the valid records read, first and last.
    pub records: Option<(u64, u64)>,
    pub count: u64,
    pub history: bool,
    pub damaged: bool,
    pub torn: bool,
}

/// Whether the visitor wants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// How a scan ended.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Segments read.
    pub segments: usize,
    /// Corruption found (log and history; not counting a torn tail).
    pub corrupt: usize,
    pub first_corrupt: Option<Problem>,
    /// The log's verdict, exactly what opening acts on.
    pub verdict: Result<LogEnd, reader::Corruption>,
    /// The visitor asked to stop.
    pub stopped: bool,
    /// Where the log's valid prefix ends (opening appends there).
    pub tail: Option<Tail>,
    /// Where reading ended at zeros in the last segment read.
    pub end_at: Option<Tail>,
    /// First sequence number (name) of the last segment present.
    pub last_segment: Option<u64>,
}

impl ScanEnd {
    /// The torn tail opening would truncate, if that is how the log ends.
    pub(crate) fn torn(&self) -> Option<Problem> {
        match &self.verdict {
            Ok(LogEnd::TornTail {
                segment,
                offset,
                len,
                reason,
            }) => Some(Problem {
                kind: ProblemKind::TornTail { len: *len },
                file: file_name(segment),
                offset: *offset,
                expected_seq: None,
                reason: reason.to_string(),
                history: false,
            }),
            _ => None,
        }
    }
}

type Visit<'v> = dyn FnMut(Item<'_>) -> Result<Flow, CliError> + 'v;

/// Scans the journal through the core reader as `options` says, decoding
/// every frame as a record and handing each item to `visit`.
pub(crate) fn scan(
    storage: &dyn Storage,
    state_dir: &Path,
    options: &Options,
    visit: &mut Visit<'_>,
) -> Result<ScanEnd, CliError> {
    let mut failed: Option<CliError> = None;
    let mut log_damaged = false;
    let mut pass = |item: Item<'_>, failed: &mut Option<CliError>| match visit(item) {
        Ok(Flow::Continue) => reader::Flow::Continue,
        Ok(Flow::Stop) => reader::Flow::Stop,
        Err(e) => {
            *failed = Some(e);
            reader::Flow::Stop
        }
    };
    let walked = reader::read(storage, state_dir, options, &mut |event| match event {
        Event::Frame {
            file,
            segment,
            frame,
            history,
        } => match reader::decode_frame_record::<Record>(&frame) {
            Err(reason) => reader::Flow::Reject(reason),
            Ok(record) => {
                let name = file_name(file);
                let found = Found {
                    seq: frame.header.seq,
                    kind: frame.header.kind,
                    segment,
                    file: &name,
                    offset: frame.offset,
                    frame_len: frame.len,
                    batch_first_seq: frame.header.batch_first_seq,
                    record,
                    replayable: !history && !log_damaged,
                };
                pass(Item::Record(found), &mut failed)
            }
        },
        Event::Damage(d) => {
            log_damaged |= !d.history;
            pass(Item::Problem(Problem::from_damage(d)), &mut failed)
        }
        Event::Resumed {
            file,
            offset,
            seq,
            expected_seq,
        } => pass(
            Item::Resumed {
                file: file_name(file),
                offset,
                seq,
                expected_seq: Some(expected_seq),
            },
            &mut failed,
        ),
        Event::NothingValidAfter { file, offset } => pass(
            Item::NothingValidAfter {
                file: file_name(file),
                offset,
            },
            &mut failed,
        ),
        Event::SegmentDone(s) => pass(
            Item::SegmentDone(SegmentInfo {
                file: file_name(&s.file),
                file_len: s.file_len,
                used: s.used,
                records: s.records,
                count: s.count,
                history: s.history,
                damaged: s.damaged,
                torn: s.torn,
            }),
            &mut failed,
        ),
    })
    .map_err(journal_error)?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(ScanEnd {
        segments: walked.read,
        corrupt: walked.corrupt,
        first_corrupt: walked.first_corrupt.as_ref().map(Problem::from_damage),
        verdict: walked.verdict,
        stopped: walked.stopped,
        tail: walked.tail,
        end_at: walked.end_at,
        last_segment: walked.segments.last().map(|(s, _)| *s),
    })
}

/// Reads every segment (the log after `base` and the history before it).
pub(crate) fn all(base: Option<u64>, raw: bool) -> Options {
    Options {
        scope: Scope::All {
            log_from: base.map_or(1, |b| b + 1),
        },
        raw,
        through_cache: false,
    }
}

// ---------------------------------------------------------------- replay

/// Folds records into a state from a checkpoint (or the empty state), up to
/// a target, with the replay policy of opening: the first record the state
/// machine refuses ends it.
#[derive(Debug)]
pub(crate) struct Replayer {
    pub state: State,
    /// The checkpoint replay started from (`None`: the empty state).
    pub base: Option<u64>,
    pub applied: u64,
    pub target: u64,
    /// The record the state machine refused, if one was.
    pub failed: Option<ApplyError>,
}

impl Replayer {
    pub(crate) fn new(base: Option<(u64, State)>, target: Option<u64>) -> Replayer {
        let (base, state) = match base {
            Some((seq, state)) => (Some(seq), state),
            None => (None, State::default()),
        };
        Replayer {
            state,
            base,
            applied: 0,
            target: target.unwrap_or(u64::MAX),
            failed: None,
        }
    }

    /// Feeds the next record in journal order; `Stop` once the target is
    /// reached or a record was refused.
    pub(crate) fn feed(&mut self, seq: u64, record: &Record) -> Flow {
        if self.failed.is_some() || seq > self.target {
            return Flow::Stop;
        }
        if seq <= self.state.seq {
            return Flow::Continue;
        }
        match self.state.apply(seq, record) {
            Ok(_) => {
                self.applied += 1;
                if seq == self.target {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            }
            Err(e) => {
                self.failed = Some(e);
                Flow::Stop
            }
        }
    }

    /// "checkpoint 20 + 5 records" / "empty state + 12 records".
    pub(crate) fn provenance(&self) -> String {
        let base = match self.base {
            Some(seq) => format!("checkpoint {seq}"),
            None => "empty state".to_owned(),
        };
        let plural = if self.applied == 1 { "" } else { "s" };
        format!("{base} + {} record{plural}", self.applied)
    }
}

/// The path of segment `first` in `state_dir`.
pub(crate) fn segment_path(state_dir: &Path, first: u64) -> PathBuf {
    state_dir
        .join(JOURNAL_DIR)
        .join(crate::journal::format::segment_file_name(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::format::checkpoint_file_name;
    use crate::storage::RealStorage;
    use crate::storage::fault::FaultyStorage;
    use std::sync::Arc;

    /// A checkpoint that a live journal's writer removed after the listing
    /// named it is not handed on as an unreadable (damaged) checkpoint: it
    /// is simply not there any more.
    #[test]
    fn a_checkpoint_removed_after_the_listing_is_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = dir.path().join(CHECKPOINT_DIR);
        fs::create_dir(&checkpoints).unwrap();
        for seq in [7, 14] {
            fs::write(checkpoints.join(checkpoint_file_name(seq)), b"whatever").unwrap();
        }
        let storage = FaultyStorage::new(Arc::new(RealStorage));
        storage.remove_once_listed([checkpoints.join(checkpoint_file_name(7))]);
        let mut seen = Vec::new();
        each_checkpoint(&storage, dir.path(), |c| {
            seen.push(c.seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [14], "the one still there, damaged, is reported");
    }
}
