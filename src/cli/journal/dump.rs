//! `volmgr journal dump`: one line per record, filters, `--raw` past damage,
//! and `--follow` across segment rotations.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::journal::format::{
    self, FRAME_ALIGN, FRAME_HEADER_LEN, FRAME_LEN_OFFSET, FrameAt, FrameHeader, Invalid,
    MAX_PAYLOAD_LEN, SEGMENT_HEADER_LEN,
};
use crate::journal::reader;
use crate::journal::{self, JOURNAL_DIR, JournalRecord};
use crate::state::{OpId, Record, kind_name};
use crate::storage::Storage;

use super::render::{Described, OpIndex, Out, rfc3339_ms, volumes_cell, warn};
use super::scan::{
    self, Flow, Item, Problem, ProblemKind, ReadOnlyStorage, Tail, file_name, journal_error,
};
use super::{CliError, DumpArgs, EXIT_CORRUPT, EXIT_OK, Format};

/// How long `--follow` waits between looks at the files when idle.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Idle polls at an invalid frame before checking whether it is damage.
const FOLLOW_STUCK_POLLS: u32 = 20;

pub(super) fn run(args: &DumpArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    let filter = Filter::new(args)?;
    let storage = ReadOnlyStorage;
    let mut ops = OpIndex::default();
    for c in scan::load_checkpoints(&storage, state_dir)? {
        if let Ok(state) = &c.state {
            ops.seed(state);
        }
    }
    let mut printer = Printer {
        out,
        json: args.output.format == Format::Json,
    };
    if args.follow {
        install_stop_handlers();
    }
    printer.header()?;
    let end = scan::scan(&storage, state_dir, args.raw, &mut |item| match item {
        Item::Record(_) if STOP.load(Ordering::SeqCst) => Ok(Flow::Stop),
        Item::Record(found) => {
            let described = ops.describe(&found.record);
            if found.seq > filter.to {
                return Ok(Flow::Stop);
            }
            if filter.matches(found.seq, found.kind, &described) {
                let line = Line {
                    seq: found.seq,
                    segment: found.segment,
                    file: found.file,
                    offset: found.offset,
                    kind: found.kind,
                    record: &found.record,
                };
                printer.record(&line, &described)?;
            }
            Ok(Flow::Continue)
        }
        Item::Problem(p) => {
            if let ProblemKind::Corrupt = p.kind {
                printer.problem(&p)?;
            }
            Ok(Flow::Continue)
        }
        Item::Resumed {
            file,
            offset,
            seq,
            expected_seq,
        } => {
            printer.resumed(&file, offset, seq, expected_seq)?;
            Ok(Flow::Continue)
        }
        Item::NothingValidAfter { file, offset } => {
            printer.nothing_after(&file, offset)?;
            Ok(Flow::Continue)
        }
        Item::SegmentDone(_) => Ok(Flow::Continue),
    })?;
    if end.stopped {
        return Ok(EXIT_OK);
    }
    if let Some(p) = &end.first_corrupt
        && !args.raw
    {
        printer.out.flush()?;
        warn(&format!(
            "stopped at corruption at {}; --raw continues past it",
            p.position()
        ));
        return Ok(EXIT_CORRUPT);
    }
    if args.follow {
        // Without a known tail (damage to the end of the last segment, or no
        // segment yet) follow from the next segment to appear.
        let start = match end.tail {
            Some(tail) => Start::Tail(tail),
            None => Start::After(end.last_segment),
        };
        let code = follow(
            &storage,
            state_dir,
            start,
            &filter,
            &mut ops,
            &mut printer,
            args.raw,
        )?;
        return Ok(code.max(if end.corrupt > 0 {
            EXIT_CORRUPT
        } else {
            EXIT_OK
        }));
    }
    if let Some(p) = &end.torn {
        printer.out.flush()?;
        warn(&torn_note(p));
    }
    Ok(if end.corrupt > 0 {
        EXIT_CORRUPT
    } else {
        EXIT_OK
    })
}

pub(super) fn torn_note(p: &Problem) -> String {
    let len = match p.kind {
        ProblemKind::TornTail { len } => len,
        ProblemKind::Corrupt => 0,
    };
    format!(
        "torn tail at {} ({len} bytes: {}): an unfinished write that opening the journal \
         truncates (`volmgr journal repair --truncate-torn-tail` does it offline)",
        p.position(),
        p.reason
    )
}

// ---------------------------------------------------------------- filters

struct Filter {
    from: u64,
    to: u64,
    kinds: Vec<u8>,
    volumes: Vec<String>,
    op_prefix: Option<String>,
}

impl Filter {
    fn new(args: &DumpArgs) -> Result<Self, CliError> {
        let from = args.from_seq.unwrap_or(0);
        let to = args.to_seq.unwrap_or(u64::MAX);
        if from > to {
            return Err(CliError::usage(format!(
                "--from-seq {from} is after --to-seq {to}"
            )));
        }
        let op_prefix = match &args.op {
            None => None,
            Some(op) => {
                let op = op.to_ascii_lowercase();
                if op.is_empty() || !op.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(CliError::usage(format!(
                        "--op {op:?} is not an operation id (hex digits and dashes)"
                    )));
                }
                Some(op)
            }
        };
        Ok(Filter {
            from,
            to,
            kinds: args.kind.iter().map(|k| k.byte()).collect(),
            volumes: args.volume.clone(),
            op_prefix,
        })
    }

    fn matches(&self, seq: u64, kind: u8, d: &Described) -> bool {
        if seq < self.from || seq > self.to {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&kind) {
            return false;
        }
        if !self.volumes.is_empty() && !d.volumes.iter().any(|v| self.volumes.contains(v)) {
            return false;
        }
        if let Some(prefix) = &self.op_prefix {
            match d.op {
                Some(op) => op.hyphenated().to_string().starts_with(prefix.as_str()),
                None => false,
            }
        } else {
            true
        }
    }
}

// ---------------------------------------------------------------- printing

struct Line<'a> {
    seq: u64,
    segment: u64,
    file: &'a str,
    offset: u64,
    kind: u8,
    record: &'a Record,
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    seq: u64,
    segment: &'a str,
    offset: u64,
    time: String,
    kind: &'static str,
    volume: &'a [String],
    op: Option<OpId>,
    summary: &'a str,
    record: &'a Record,
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    event: &'static str,
    segment: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

struct Printer<'o> {
    out: &'o mut Out,
    json: bool,
}

const SEQ_WIDTH: usize = 6;
const POS_WIDTH: usize = 10;
const KIND_WIDTH: usize = 10;
const VOLUME_WIDTH: usize = 20;
const OP_WIDTH: usize = 36;

impl Printer<'_> {
    fn columns(&mut self, cells: [&str; 7]) -> Result<(), CliError> {
        if !self.out.aligned {
            return self.out.line(&cells.join("\t"));
        }
        let [seq, pos, time, kind, volume, op, summary] = cells;
        let line = format!(
            "{seq:>SEQ_WIDTH$}  {pos:<POS_WIDTH$}  {time:<24}  {kind:<KIND_WIDTH$}  \
             {volume:<VOLUME_WIDTH$}  {op:<OP_WIDTH$}  {summary}"
        );
        self.out.line(line.trim_end())
    }

    fn header(&mut self) -> Result<(), CliError> {
        if self.json || !self.out.aligned {
            return Ok(());
        }
        self.columns(["SEQ", "POSITION", "TIME", "KIND", "VOLUME", "OP", "SUMMARY"])
    }

    fn record(&mut self, line: &Line<'_>, d: &Described) -> Result<(), CliError> {
        let time = rfc3339_ms(line.record.at_ms());
        if self.json {
            let json = JsonRecord {
                seq: line.seq,
                segment: line.file,
                offset: line.offset,
                time,
                kind: kind_name(line.kind),
                volume: &d.volumes,
                op: d.op,
                summary: &d.summary,
                record: line.record,
            };
            return self.json_line(&json);
        }
        let op = d.op.map_or_else(|| "-".to_owned(), |op| op.to_string());
        self.columns([
            &line.seq.to_string(),
            &format!("{}:{}", line.segment, line.offset),
            &time,
            kind_name(line.kind),
            &volumes_cell(&d.volumes),
            &op,
            &d.summary,
        ])
    }

    fn json_line(&mut self, value: &impl Serialize) -> Result<(), CliError> {
        let text = serde_json::to_string(value)
            .map_err(|e| CliError::io(format!("JSON encoding failed: {e}")))?;
        self.out.line(&text)
    }

    fn problem(&mut self, p: &Problem) -> Result<(), CliError> {
        if self.json {
            return self.json_line(&JsonEvent {
                event: "corrupt",
                segment: &p.file,
                offset: p.offset,
                seq: None,
                expected_seq: p.expected_seq,
                reason: Some(&p.reason),
            });
        }
        let expected = p
            .expected_seq
            .map(|s| format!(" (expected seq {s})"))
            .unwrap_or_default();
        self.out.line(&format!(
            "!! corrupt {}{expected}: {}",
            p.position(),
            p.reason
        ))
    }

    fn resumed(
        &mut self,
        file: &str,
        offset: u64,
        seq: u64,
        expected_seq: Option<u64>,
    ) -> Result<(), CliError> {
        if self.json {
            return self.json_line(&JsonEvent {
                event: "resumed",
                segment: file,
                offset,
                seq: Some(seq),
                expected_seq,
                reason: None,
            });
        }
        let note = match expected_seq {
            Some(e) if e.checked_add(1) == Some(seq) => format!(" (seq {e} not found)"),
            Some(e) if seq > e => format!(" (seq {e}..{} not found)", seq - 1),
            Some(e) if seq < e => format!(" (expected seq {e}: an older record)"),
            _ => String::new(),
        };
        self.out.line(&format!(
            "!! resumed at {file}:{offset} with seq {seq}{note}"
        ))
    }

    fn nothing_after(&mut self, file: &str, offset: u64) -> Result<(), CliError> {
        if self.json {
            return self.json_line(&JsonEvent {
                event: "no-valid-frame-after",
                segment: file,
                offset,
                seq: None,
                expected_seq: None,
                reason: None,
            });
        }
        self.out
            .line(&format!("!! no valid frame after {file}:{offset}"))
    }
}

// ---------------------------------------------------------------- follow

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handlers() {
    let handler = request_stop as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}

/// True once the reader of our stdout pipe has gone away (POLLERR/POLLHUP
/// on fd 1), so `--follow | head` ends even when nothing is being appended.
fn stdout_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// What lies at the position `--follow` watches.
enum Next {
    Frame(FrameHeader, Vec<u8>, usize),
    /// Zeros (or the end of the file): nothing written here yet.
    Nothing,
    /// Not (yet) a valid frame: an append in progress, or damage.
    Invalid(Invalid),
    /// The segment file is gone (compaction removed it).
    Gone,
}

fn read_next(storage: &dyn Storage, t: &Tail) -> Result<Next, CliError> {
    let io = |e: std::io::Error| CliError::io(format!("read {}: {e}", t.path.display()));
    let file = match storage.open(&t.path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Next::Gone),
        Err(e) => return Err(io(e)),
    };
    let len = file.len().map_err(io)?;
    if t.offset >= len {
        return Ok(Next::Nothing);
    }
    let head_len = (len - t.offset).min(FRAME_HEADER_LEN as u64) as usize;
    let mut head = vec![0u8; head_len];
    file.read_exact_at(&mut head, t.offset).map_err(io)?;
    if head.iter().all(|&b| b == 0) {
        return Ok(Next::Nothing);
    }
    if head_len < FRAME_HEADER_LEN {
        return Ok(Next::Invalid(Invalid::Truncated {
            needed: FRAME_HEADER_LEN as u64,
            available: head_len as u64,
        }));
    }
    let payload_len = u32::from_le_bytes(
        head[FRAME_LEN_OFFSET..FRAME_LEN_OFFSET + 4]
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Ok(Next::Invalid(Invalid::PayloadTooLarge {
            len: payload_len as u64,
            max: MAX_PAYLOAD_LEN as u64,
        }));
    }
    let total = format::frame_len(payload_len);
    if t.offset + total as u64 > len {
        return Ok(Next::Invalid(Invalid::Truncated {
            needed: total as u64,
            available: len - t.offset,
        }));
    }
    let mut buf = vec![0u8; total];
    file.read_exact_at(&mut buf, t.offset).map_err(io)?;
    Ok(match format::frame_at(&buf, t.next_seq) {
        Ok(FrameAt::Frame(h, payload, n)) => {
            let fits = h.batch_first_seq == h.seq || t.batch_first_seq == Some(h.batch_first_seq);
            if fits {
                Next::Frame(h, payload.to_vec(), n)
            } else {
                Next::Invalid(Invalid::BatchField {
                    seq: h.seq,
                    batch_first_seq: h.batch_first_seq,
                })
            }
        }
        Ok(FrameAt::End) => Next::Nothing,
        Err(reason) => Next::Invalid(reason),
    })
}

/// Starts watching segment `first` at its first frame, after checking its header.
fn enter_segment(
    storage: &dyn Storage,
    first: u64,
    path: &Path,
) -> Result<Result<Tail, Problem>, CliError> {
    let io = |e: std::io::Error| CliError::io(format!("read {}: {e}", path.display()));
    let file = storage.open(path).map_err(io)?;
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    let header = file
        .read_exact_at(&mut head, 0)
        .map_err(|e| e.to_string())
        .and_then(|()| format::decode_segment_header(&head).map_err(|e| e.to_string()));
    let name = file_name(path);
    let problem = |reason: String| Problem {
        kind: ProblemKind::Corrupt,
        file: name.clone(),
        offset: 0,
        expected_seq: Some(first),
        reason,
    };
    Ok(match header {
        Err(reason) => Err(problem(reason)),
        Ok(seq) if seq != first => Err(problem(
            Invalid::NameMismatch {
                name_seq: first,
                header_seq: seq,
            }
            .to_string(),
        )),
        Ok(_) => Ok(Tail {
            segment: first,
            path: path.to_owned(),
            file: name.clone(),
            offset: SEGMENT_HEADER_LEN as u64,
            next_seq: first,
            batch_first_seq: None,
        }),
    })
}

/// Where `--follow` starts.
enum Start {
    Tail(Tail),
    /// At the first segment newer than this one (any segment if `None`).
    After(Option<u64>),
}

fn follow(
    storage: &dyn Storage,
    state_dir: &Path,
    start: Start,
    filter: &Filter,
    ops: &mut OpIndex,
    printer: &mut Printer<'_>,
    raw: bool,
) -> Result<i32, CliError> {
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let (mut cur, after) = match start {
        Start::Tail(tail) => (Some(tail), None),
        Start::After(after) => (None, after),
    };
    let mut stuck_polls = 0u32;
    let mut code = EXIT_OK;
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(code);
        }
        let Some(t) = cur.as_mut() else {
            // No segment yet: wait for the first one.
            let segments = reader::list_segments(storage, &journal_dir).map_err(journal_error)?;
            let newer = segments.iter().find(|(s, _)| after.is_none_or(|a| *s > a));
            if let Some((first, path)) = newer {
                match enter_segment(storage, *first, path)? {
                    Ok(t) => cur = Some(t),
                    Err(p) => {
                        printer.problem(&p)?;
                        return corrupt_in_follow(printer, &p);
                    }
                }
                continue;
            }
            idle(printer)?;
            continue;
        };
        if t.next_seq > filter.to {
            return Ok(code);
        }
        let next = read_next(storage, t)?;
        if let Next::Frame(h, payload, len) = next {
            stuck_polls = 0;
            let at = t.offset;
            t.offset += len as u64;
            t.next_seq = t.next_seq.saturating_add(1);
            t.batch_first_seq = Some(h.batch_first_seq);
            match journal::decode_record::<Record>(&payload) {
                Ok(record) if record.kind() == h.kind => {
                    let d = ops.describe(&record);
                    if filter.matches(h.seq, h.kind, &d) {
                        let line = Line {
                            seq: h.seq,
                            segment: t.segment,
                            file: &t.file,
                            offset: at,
                            kind: h.kind,
                            record: &record,
                        };
                        printer.record(&line, &d)?;
                    }
                }
                Ok(record) => {
                    let reason = format!(
                        "frame kind byte {} but the record is a {}",
                        h.kind,
                        kind_name(record.kind())
                    );
                    code = EXIT_CORRUPT;
                    let p = corrupt_at(&t.file, at, h.seq, reason);
                    printer.problem(&p)?;
                    if !raw {
                        return corrupt_in_follow(printer, &p);
                    }
                }
                Err(e) => {
                    code = EXIT_CORRUPT;
                    let p = corrupt_at(&t.file, at, h.seq, Invalid::Decode(e).to_string());
                    printer.problem(&p)?;
                    if !raw {
                        return corrupt_in_follow(printer, &p);
                    }
                }
            }
            continue;
        }
        printer.out.flush()?;
        let segments = reader::list_segments(storage, &journal_dir).map_err(journal_error)?;
        let successor = segments.iter().find(|(s, _)| *s > t.segment).cloned();
        if let Next::Gone = next {
            // Compaction removed the segment under us: continue at the oldest
            // newer one.
            if let Some((first, path)) = successor {
                if first > t.next_seq {
                    warn(&format!(
                        "{} was removed by compaction; records {}..{} were not shown",
                        t.file,
                        t.next_seq,
                        first - 1
                    ));
                }
                match enter_segment(storage, first, &path)? {
                    Ok(new) => cur = Some(new),
                    Err(p) => {
                        printer.problem(&p)?;
                        return corrupt_in_follow(printer, &p);
                    }
                }
                continue;
            }
            idle(printer)?;
            continue;
        }
        if let Some((first, path)) = successor {
            // A newer segment exists, so this one is final: look once more
            // (an append may have landed before the rotation).
            match read_next(storage, t)? {
                Next::Frame(..) | Next::Gone => continue,
                Next::Nothing => {
                    if first != t.next_seq {
                        let reason = Invalid::MissingSegment {
                            expected_first_seq: t.next_seq,
                            found_first_seq: first,
                        };
                        code = EXIT_CORRUPT;
                        let p = corrupt_at(&file_name(&path), 0, t.next_seq, reason.to_string());
                        printer.problem(&p)?;
                        if !raw {
                            return corrupt_in_follow(printer, &p);
                        }
                    }
                }
                Next::Invalid(reason) => {
                    code = EXIT_CORRUPT;
                    let p = corrupt_at(&t.file, t.offset, t.next_seq, reason.to_string());
                    printer.problem(&p)?;
                    if !raw {
                        return corrupt_in_follow(printer, &p);
                    }
                    if resume_in_segment(storage, t, printer)? {
                        continue;
                    }
                }
            }
            match enter_segment(storage, first, &path)? {
                Ok(new) => cur = Some(new),
                Err(p) => {
                    printer.problem(&p)?;
                    return corrupt_in_follow(printer, &p);
                }
            }
            stuck_polls = 0;
            continue;
        }
        if let Next::Invalid(reason) = next {
            // In the active segment an invalid frame is usually an append in
            // progress. If it stays, look for proof that it is damage: a
            // valid frame of a later write batch after it.
            stuck_polls += 1;
            if stuck_polls == FOLLOW_STUCK_POLLS {
                let bytes = reader::read_segment(storage, &t.path).map_err(journal_error)?;
                let at = t.offset as usize;
                if let Some(valid_frame_at) = reader::find_later_batch_frame(&bytes, at, t.next_seq)
                {
                    let reason = Invalid::DurableDataFollows {
                        cause: Box::new(reason),
                        valid_frame_at: valid_frame_at as u64,
                    };
                    code = EXIT_CORRUPT;
                    let p = corrupt_at(&t.file, t.offset, t.next_seq, reason.to_string());
                    printer.problem(&p)?;
                    if !raw {
                        return corrupt_in_follow(printer, &p);
                    }
                    if resume_in_segment(storage, t, printer)? {
                        stuck_polls = 0;
                        continue;
                    }
                } else {
                    warn(&format!(
                        "no complete record at {}:{} yet ({reason}); an unfinished write, \
                         still waiting",
                        t.file, t.offset
                    ));
                }
            }
        }
        idle(printer)?;
    }
}

fn corrupt_at(file: &str, offset: u64, expected_seq: u64, reason: String) -> Problem {
    Problem {
        kind: ProblemKind::Corrupt,
        file: file.to_owned(),
        offset,
        expected_seq: Some(expected_seq),
        reason,
    }
}

fn corrupt_in_follow(printer: &mut Printer<'_>, p: &Problem) -> Result<i32, CliError> {
    printer.out.flush()?;
    warn(&format!(
        "stopped at corruption at {}; --raw continues past it",
        p.position()
    ));
    Ok(EXIT_CORRUPT)
}

/// Raw follow: moves `t` to the next valid frame after damage in its
/// segment. False when none follows (the caller moves to the next segment).
fn resume_in_segment(
    storage: &dyn Storage,
    t: &mut Tail,
    printer: &mut Printer<'_>,
) -> Result<bool, CliError> {
    let bytes = reader::read_segment(storage, &t.path).map_err(journal_error)?;
    let from = t.offset as usize + FRAME_ALIGN;
    match reader::find_next_valid_frame(&bytes, from) {
        Some((at, header)) => {
            printer.resumed(&t.file, at as u64, header.seq, Some(t.next_seq))?;
            t.offset = at as u64;
            t.next_seq = header.seq;
            t.batch_first_seq = Some(header.batch_first_seq);
            Ok(true)
        }
        None => {
            printer.nothing_after(&t.file, from.min(bytes.len()) as u64)?;
            Ok(false)
        }
    }
}

/// Waits one poll interval; ends the command when asked to stop or when
/// stdout's reader is gone.
fn idle(printer: &mut Printer<'_>) -> Result<(), CliError> {
    printer.out.flush()?;
    if stdout_closed() {
        return Err(CliError::BrokenPipe);
    }
    if !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(FOLLOW_POLL);
    }
    Ok(())
}
