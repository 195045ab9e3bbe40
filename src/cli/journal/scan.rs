//! Reading a journal for the tool: every segment (including those a
//! checkpoint already covers), classifying damage exactly as opening the
//! journal would, and in raw mode resuming after it with
//! [`reader::find_next_valid_frame`]. Also the checkpoints and a replayer.
//!
//! Everything here reads through [`ReadOnlyStorage`], whose write operations
//! fail: the read-only subcommands cannot write, lock or repair even by
//! mistake, so they are safe beside a running agent. All reading goes
//! through the journal's bounded readers (segment and checkpoint sizes,
//! frame lengths, bincode limits), so damaged input yields a report, never
//! an unbounded allocation; every loop advances by at least one frame
//! alignment.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::journal::format::{
    self, FRAME_ALIGN, FrameAt, FrameHeader, Invalid, SEG_FIRST_SEQ_OFFSET, SEGMENT_HEADER_LEN,
};
use crate::journal::reader::{self, SegmentEnd};
use crate::journal::{self, CHECKPOINT_DIR, JOURNAL_DIR, JournalError, JournalRecord};
use crate::state::{Record, State};
use crate::storage::{self, LockGuard, Storage, StorageFile};

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
        Ok(Box::new(ReadOnlyFile(File::open(path)?)))
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
}

// ---------------------------------------------------------------- paths

/// Checks that `state_dir` looks like a state directory (it has `journal/`),
/// so a mistyped path is an error rather than an "empty, clean" journal.
pub(crate) fn check_state_dir(state_dir: &Path) -> Result<(), CliError> {
    let journal_dir = state_dir.join(JOURNAL_DIR);
    match fs::metadata(state_dir) {
        Err(e) => {
            return Err(CliError::io(format!(
                "cannot read state directory {}: {e}",
                state_dir.display()
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(CliError::io(format!(
                "{} is not a directory",
                state_dir.display()
            )));
        }
        Ok(_) => {}
    }
    match fs::metadata(&journal_dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::io(format!(
            "{} is not a directory",
            journal_dir.display()
        ))),
        Err(e) => Err(CliError::io(format!(
            "{} is not a volmgr state directory (no {JOURNAL_DIR}/ inside: {e})",
            state_dir.display()
        ))),
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub(crate) fn journal_error(e: JournalError) -> CliError {
    CliError::io(e.to_string())
}

// ---------------------------------------------------------------- checkpoints

/// One checkpoint file and what decoding it found.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub file: String,
    pub size: u64,
    /// The decoded state, or why the file cannot be used.
    pub state: Result<State, String>,
}

/// Every checkpoint file, oldest first, each fully decoded (frame, checksum,
/// sequence number in name and header and payload, bincode payload).
pub(crate) fn load_checkpoints(
    storage: &dyn Storage,
    state_dir: &Path,
) -> Result<Vec<Checkpoint>, CliError> {
    let dir = state_dir.join(CHECKPOINT_DIR);
    let mut out = Vec::new();
    for (seq, path) in reader::list_checkpoints(storage, &dir).map_err(journal_error)? {
        let limit = format::MAX_CHECKPOINT_PAYLOAD_LEN + format::CHECKPOINT_HEADER_LEN as u64;
        let size = storage.open(&path).and_then(|f| f.len()).unwrap_or(0);
        let state = match storage::read_bounded(storage, &path, limit) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(e.to_string()),
            Err(e) => {
                return Err(CliError::io(format!("read {}: {e}", path.display())));
            }
            Ok(bytes) => decode_checkpoint_file(seq, &bytes),
        };
        out.push(Checkpoint {
            seq,
            file: file_name(&path),
            size,
            state,
        });
    }
    Ok(out)
}

fn decode_checkpoint_file(seq: u64, bytes: &[u8]) -> Result<State, String> {
    let (stored_seq, payload) = format::decode_checkpoint(bytes).map_err(|e| e.to_string())?;
    if stored_seq != seq {
        return Err(format!(
            "file name says sequence {seq}, header says {stored_seq}"
        ));
    }
    let state = journal::decode_checkpoint::<State>(payload)
        .map_err(|e| format!("payload does not decode as a state: {e}"))?;
    if state.seq != seq {
        return Err(format!(
            "the state inside is at sequence {}, not {seq}",
            state.seq
        ));
    }
    Ok(state)
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
    pub record: Record,
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
}

impl Problem {
    pub(crate) fn position(&self) -> String {
        format!("{}:{}", self.file, self.offset)
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
    /// A segment has been read to its end (or to damage, when not raw).
    SegmentDone(SegmentInfo),
}

/// One segment as a scan found it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub file: String,
    pub file_len: u64,
    /// Offset just after the last valid frame (before any damage).
    pub used: u64,
    /// Sequence numbers of the valid records read, first and last.
    pub records: Option<(u64, u64)>,
    pub count: u64,
}

/// Whether the visitor wants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Where the log's written part ends: what `--follow` watches.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    pub segment: u64,
    pub path: PathBuf,
    pub file: String,
    pub offset: u64,
    pub next_seq: u64,
    pub batch_first_seq: Option<u64>,
}

/// How a scan ended.
#[derive(Debug, Default)]
pub(crate) struct ScanEnd {
    pub segments: usize,
    /// Corruption found (not counting a torn tail).
    pub corrupt: usize,
    pub first_corrupt: Option<Problem>,
    pub torn: Option<Problem>,
    /// The visitor asked to stop.
    pub stopped: bool,
    pub tail: Option<Tail>,
    /// First sequence number (name) of the last segment read.
    pub last_segment: Option<u64>,
}

type Visit<'v> = dyn FnMut(Item<'_>) -> Result<Flow, CliError> + 'v;

/// Scans every segment in order. Without `raw` it stops at the first
/// corruption (as opening the journal would); with `raw` it reports each
/// damaged spot and resumes at the next valid frame.
pub(crate) fn scan(
    storage: &dyn Storage,
    state_dir: &Path,
    raw: bool,
    visit: &mut Visit<'_>,
) -> Result<ScanEnd, CliError> {
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let segments = reader::list_segments(storage, &journal_dir).map_err(journal_error)?;
    let mut s = Scanner {
        raw,
        end: ScanEnd::default(),
        visit,
    };
    let mut expected: Option<u64> = None;
    for (i, (name_seq, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        s.end.last_segment = Some(*name_seq);
        let file = file_name(path);
        let bytes = match reader::read_segment(storage, path) {
            Ok(bytes) => bytes,
            Err(JournalError::Corrupt { offset, reason, .. }) => {
                s.end.segments += 1;
                let p = corrupt(&file, offset, expected, reason.to_string());
                if s.problem(p)? == Flow::Stop {
                    break;
                }
                expected = None;
                continue;
            }
            Err(e) => return Err(journal_error(e)),
        };
        s.end.segments += 1;
        let mut seg = SegmentInfo {
            file: file.clone(),
            file_len: bytes.len() as u64,
            used: SEGMENT_HEADER_LEN.min(bytes.len()) as u64,
            records: None,
            count: 0,
        };
        let next = match s.segment(&bytes, *name_seq, path, &file, is_last, expected, &mut seg)? {
            Some(next) => next,
            None => break,
        };
        if (s.visit)(Item::SegmentDone(seg))? == Flow::Stop {
            s.end.stopped = true;
            break;
        }
        expected = next;
    }
    Ok(s.end)
}

fn corrupt(file: &str, offset: u64, expected_seq: Option<u64>, reason: String) -> Problem {
    Problem {
        kind: ProblemKind::Corrupt,
        file: file.to_owned(),
        offset,
        expected_seq,
        reason,
    }
}

struct Scanner<'a, 'v> {
    raw: bool,
    end: ScanEnd,
    visit: &'a mut Visit<'v>,
}

impl Scanner<'_, '_> {
    /// Reports a problem; `Stop` when the scan must end here.
    fn problem(&mut self, p: Problem) -> Result<Flow, CliError> {
        match p.kind {
            ProblemKind::Corrupt => {
                self.end.corrupt += 1;
                if self.end.first_corrupt.is_none() {
                    self.end.first_corrupt = Some(p.clone());
                }
            }
            ProblemKind::TornTail { .. } => self.end.torn = Some(p.clone()),
        }
        let is_corrupt = p.kind == ProblemKind::Corrupt;
        if (self.visit)(Item::Problem(p))? == Flow::Stop {
            self.end.stopped = true;
            return Ok(Flow::Stop);
        }
        Ok(if is_corrupt && !self.raw {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    /// Emits a frame as a record (or a decode problem). `Stop` ends the scan.
    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        bytes: &[u8],
        header: FrameHeader,
        offset: usize,
        len: usize,
        first_seq: u64,
        file: &str,
        seg: &mut SegmentInfo,
    ) -> Result<Flow, CliError> {
        let payload =
            &bytes[offset + format::FRAME_HEADER_LEN..offset + format::FRAME_HEADER_LEN + len];
        let problem = match journal::decode_record::<Record>(payload) {
            Err(e) => Some(Invalid::Decode(e).to_string()),
            Ok(record) if record.kind() != header.kind => Some(format!(
                "frame kind byte {} but the record is a {}",
                header.kind,
                crate::state::kind_name(record.kind())
            )),
            Ok(record) => {
                let frame_len = format::frame_len(len) as u64;
                seg.count += 1;
                seg.records = Some(match seg.records {
                    None => (header.seq, header.seq),
                    Some((a, _)) => (a, header.seq),
                });
                let found = Found {
                    seq: header.seq,
                    kind: header.kind,
                    segment: first_seq,
                    file,
                    offset: offset as u64,
                    frame_len,
                    record,
                };
                if (self.visit)(Item::Record(found))? == Flow::Stop {
                    self.end.stopped = true;
                    return Ok(Flow::Stop);
                }
                None
            }
        };
        match problem {
            Some(reason) => self.problem(corrupt(file, offset as u64, Some(header.seq), reason)),
            None => Ok(Flow::Continue),
        }
    }

    /// Scans one segment's bytes. Returns the sequence number the next
    /// segment should start with (`None` when unknown after damage), or
    /// `None` in the outer option when the scan must stop.
    #[allow(clippy::too_many_arguments)]
    fn segment(
        &mut self,
        bytes: &[u8],
        name_seq: u64,
        path: &Path,
        file: &str,
        is_last: bool,
        expected: Option<u64>,
        seg: &mut SegmentInfo,
    ) -> Result<Option<Option<u64>>, CliError> {
        let scan = match reader::scan_segment(bytes) {
            Ok(scan) => scan,
            Err((offset, reason)) => {
                let p = corrupt(
                    file,
                    offset,
                    expected.or(Some(name_seq)),
                    reason.to_string(),
                );
                if self.problem(p)? == Flow::Stop {
                    return Ok(None);
                }
                return self.resume(
                    bytes,
                    SEGMENT_HEADER_LEN,
                    name_seq,
                    path,
                    file,
                    is_last,
                    seg,
                );
            }
        };
        if scan.first_seq != name_seq {
            let reason = Invalid::NameMismatch {
                name_seq,
                header_seq: scan.first_seq,
            };
            let p = corrupt(file, SEG_FIRST_SEQ_OFFSET as u64, None, reason.to_string());
            if self.problem(p)? == Flow::Stop {
                return Ok(None);
            }
        }
        if let Some(expected) = expected
            && expected != scan.first_seq
        {
            let reason = Invalid::MissingSegment {
                expected_first_seq: expected,
                found_first_seq: scan.first_seq,
            };
            let p = corrupt(file, 0, Some(expected), reason.to_string());
            if self.problem(p)? == Flow::Stop {
                return Ok(None);
            }
        }
        for frame in &scan.frames {
            let len = frame.payload.len();
            seg.used = frame.offset + format::frame_len(len) as u64;
            let flow = self.frame(
                bytes,
                frame.header,
                frame.offset as usize,
                len,
                name_seq,
                file,
                seg,
            )?;
            if flow == Flow::Stop {
                return Ok(None);
            }
        }
        let next_seq = scan.next_seq();
        let batch = scan.frames.last().map(|f| f.header.batch_first_seq);
        match scan.end {
            SegmentEnd::Clean { offset } => {
                self.end.tail = Some(Tail {
                    segment: name_seq,
                    path: path.to_owned(),
                    file: file.to_owned(),
                    offset,
                    next_seq,
                    batch_first_seq: batch,
                });
                Ok(Some(Some(next_seq)))
            }
            SegmentEnd::Invalid {
                offset,
                reason,
                dirty_end,
                later_batch_frame,
            } => {
                if is_last && later_batch_frame.is_none() {
                    self.end.tail = Some(Tail {
                        segment: name_seq,
                        path: path.to_owned(),
                        file: file.to_owned(),
                        offset,
                        next_seq,
                        batch_first_seq: batch,
                    });
                    let p = Problem {
                        kind: ProblemKind::TornTail {
                            len: dirty_end.saturating_sub(offset),
                        },
                        file: file.to_owned(),
                        offset,
                        expected_seq: Some(next_seq),
                        reason: reason.to_string(),
                    };
                    if self.problem(p)? == Flow::Stop {
                        return Ok(None);
                    }
                    return Ok(Some(Some(next_seq)));
                }
                let reason = match later_batch_frame {
                    Some(valid_frame_at) if is_last => Invalid::DurableDataFollows {
                        cause: Box::new(reason),
                        valid_frame_at,
                    },
                    _ => reason,
                };
                let p = corrupt(file, offset, Some(next_seq), reason.to_string());
                if self.problem(p)? == Flow::Stop {
                    return Ok(None);
                }
                self.resume(
                    bytes,
                    offset as usize + FRAME_ALIGN,
                    name_seq,
                    path,
                    file,
                    is_last,
                    seg,
                )
            }
        }
    }

    /// Raw mode: continues at the next valid frame after `from`, as many
    /// times as damage recurs in this segment.
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &mut self,
        bytes: &[u8],
        from: usize,
        first_seq: u64,
        path: &Path,
        file: &str,
        is_last: bool,
        seg: &mut SegmentInfo,
    ) -> Result<Option<Option<u64>>, CliError> {
        debug_assert!(self.raw, "resume only in raw mode");
        let mut search_from = from;
        let mut expected_seq = seg.records.and_then(|(_, last)| last.checked_add(1));
        // Bounded: each round starts at least one alignment unit further.
        loop {
            let Some((start, header)) = reader::find_next_valid_frame(bytes, search_from) else {
                let item = Item::NothingValidAfter {
                    file: file.to_owned(),
                    offset: search_from.min(bytes.len()) as u64,
                };
                if (self.visit)(item)? == Flow::Stop {
                    self.end.stopped = true;
                    return Ok(None);
                }
                if is_last {
                    self.end.tail = None;
                }
                return Ok(Some(None));
            };
            let item = Item::Resumed {
                file: file.to_owned(),
                offset: start as u64,
                seq: header.seq,
                expected_seq,
            };
            if (self.visit)(item)? == Flow::Stop {
                self.end.stopped = true;
                return Ok(None);
            }
            let mut pos = start;
            let mut seq = header.seq;
            let mut batch: Option<u64> = None;
            let reason = loop {
                match format::frame_at(&bytes[pos..], seq) {
                    Ok(FrameAt::End) => {
                        if bytes[pos..].iter().all(|&b| b == 0) {
                            if is_last {
                                self.end.tail = Some(Tail {
                                    segment: first_seq,
                                    path: path.to_owned(),
                                    file: file.to_owned(),
                                    offset: pos as u64,
                                    next_seq: seq,
                                    batch_first_seq: batch,
                                });
                            }
                            return Ok(Some(Some(seq)));
                        }
                        break Invalid::JunkAfterEnd;
                    }
                    Ok(FrameAt::Frame(h, payload, len)) => {
                        let fits = pos == start
                            || h.batch_first_seq == h.seq
                            || batch == Some(h.batch_first_seq);
                        if !fits {
                            break Invalid::BatchField {
                                seq: h.seq,
                                batch_first_seq: h.batch_first_seq,
                            };
                        }
                        seg.used = (pos + len) as u64;
                        let flow =
                            self.frame(bytes, h, pos, payload.len(), first_seq, file, seg)?;
                        if flow == Flow::Stop {
                            return Ok(None);
                        }
                        batch = Some(h.batch_first_seq);
                        pos += len;
                        seq = seq.saturating_add(1);
                    }
                    Err(reason) => break reason,
                }
            };
            let p = corrupt(file, pos as u64, Some(seq), reason.to_string());
            if self.problem(p)? == Flow::Stop {
                return Ok(None);
            }
            expected_seq = Some(seq);
            search_from = pos + FRAME_ALIGN;
        }
    }
}

// ---------------------------------------------------------------- replay

/// Why a state cannot be rebuilt at all.
#[derive(Debug)]
pub(crate) enum ReplayError {
    /// The records needed were compacted into checkpoints that are gone.
    Compacted {
        at: u64,
        first_seq: u64,
        oldest: Option<u64>,
    },
    /// A checkpoint exists but the records right after it do not.
    Hole { checkpoint: u64, first_seq: u64 },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Compacted {
                at,
                first_seq,
                oldest,
            } => {
                write!(
                    f,
                    "the state at seq {at} cannot be rebuilt: the history before seq {first_seq} \
                     was compacted away"
                )?;
                match oldest {
                    Some(c) => write!(f, "; the oldest state available is at seq {c}"),
                    None => write!(f, " and no usable checkpoint remains"),
                }
            }
            ReplayError::Hole {
                checkpoint,
                first_seq,
            } => write!(
                f,
                "checkpoint {checkpoint} needs the records from seq {} on, but the oldest \
                 segment starts at seq {first_seq}",
                checkpoint.saturating_add(1)
            ),
        }
    }
}

/// Folds records into a state from a chosen starting point, up to a target.
#[derive(Debug)]
pub(crate) struct Replayer {
    pub state: State,
    /// The checkpoint replay started from (`None`: the empty state).
    pub base: Option<u64>,
    pub applied: u64,
    pub target: u64,
    /// Why replay stopped before the target (a record does not apply or
    /// is missing).
    pub failed: Option<String>,
}

impl Replayer {
    /// Picks the newest usable checkpoint at or before `target` (or the empty
    /// state when the segments still start at seq 1). `first_seq` is the
    /// first sequence number of the oldest segment, if any.
    pub(crate) fn new(
        checkpoints: &[Checkpoint],
        first_seq: Option<u64>,
        target: Option<u64>,
    ) -> Result<Replayer, ReplayError> {
        let target = target.unwrap_or(u64::MAX);
        let base = checkpoints.iter().rev().find_map(|c| match &c.state {
            Ok(state) if c.seq <= target => Some((c.seq, state)),
            _ => None,
        });
        let (base, state) = match base {
            Some((seq, state)) => {
                if let Some(first) = first_seq
                    && first > seq.saturating_add(1)
                    && target > seq
                {
                    return Err(ReplayError::Hole {
                        checkpoint: seq,
                        first_seq: first,
                    });
                }
                (Some(seq), state.clone())
            }
            None => {
                if let Some(first) = first_seq
                    && first > 1
                    && target > 0
                {
                    let oldest = checkpoints.iter().find(|c| c.state.is_ok()).map(|c| c.seq);
                    return Err(ReplayError::Compacted {
                        at: target,
                        first_seq: first,
                        oldest,
                    });
                }
                (None, State::default())
            }
        };
        Ok(Replayer {
            state,
            base,
            applied: 0,
            target,
            failed: None,
        })
    }

    /// Feeds the next record of the scan; `Stop` once the target is passed
    /// or replay failed.
    pub(crate) fn feed(&mut self, seq: u64, record: &Record) -> Flow {
        if self.failed.is_some() || seq > self.target {
            return Flow::Stop;
        }
        if seq <= self.state.seq {
            return Flow::Continue;
        }
        if Some(seq) != self.state.seq.checked_add(1) {
            self.failed = Some(format!(
                "records {}..{} are missing",
                self.state.seq.saturating_add(1),
                seq - 1
            ));
            return Flow::Stop;
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
                self.failed = Some(e.to_string());
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

/// First sequence number of the oldest segment, from its name.
pub(crate) fn first_segment_seq(
    storage: &dyn Storage,
    state_dir: &Path,
) -> Result<Option<u64>, CliError> {
    let segments =
        reader::list_segments(storage, &state_dir.join(JOURNAL_DIR)).map_err(journal_error)?;
    Ok(segments.first().map(|(s, _)| *s))
}
