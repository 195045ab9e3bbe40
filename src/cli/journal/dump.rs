//! `volmgr journal dump`: one line per record, filters, `--raw` past damage,
//! and `--follow` across segment rotations.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::journal::JOURNAL_DIR;
use crate::journal::format::FRAME_HEADER_LEN;
use crate::journal::reader::{self, Cursor, Options, Scope, Tail};
use crate::state::{OpId, Record, kind_name};
use crate::storage::Storage;

use super::render::{Described, OpIndex, Out, quote, rfc3339_ms, volumes_cell, warn};
use super::scan::{
    self, Flow, Item, Problem, ProblemKind, ReadOnlyStorage, file_name, journal_error,
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
    // Outcomes whose intents were compacted away are described through the
    // pending operations of the checkpoints, each decoded and dropped in
    // turn. The first whose bytes check is where opening's log starts.
    let mut ops = OpIndex::default();
    let mut base = None;
    scan::each_checkpoint(&storage, state_dir, |c| {
        if let Ok(state) = &c.state {
            ops.seed(state);
        }
        if c.bytes_ok && base.is_none() {
            base = Some(c.seq);
        }
        Ok(())
    })?;
    let mut printer = Printer {
        out,
        json: args.output.format == Format::Json,
        matched: 0,
        last_seq: None,
    };
    if args.follow {
        install_stop_handlers();
    }
    printer.header()?;
    let end = scan::scan(
        &storage,
        state_dir,
        &scan::all(base, args.raw),
        &mut |item| match item {
            Item::Record(_) if STOP.load(Ordering::SeqCst) => Ok(Flow::Stop),
            Item::Record(found) => {
                if found.seq > filter.to {
                    return Ok(Flow::Stop);
                }
                printer.found(&found, &filter, &mut ops)?;
                Ok(Flow::Continue)
            }
            Item::Problem(p) => {
                if let ProblemKind::Corrupt = p.kind {
                    printer.problem(&p)?;
                    if !args.raw {
                        // Without --raw, the dump ends at the first damage,
                        // history included.
                        return Ok(Flow::Stop);
                    }
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
        },
    )?;
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
    if end.stopped && end.first_corrupt.is_none() {
        printer.no_match_note(&filter)?;
        return Ok(EXIT_OK);
    }
    let corrupt = if end.corrupt > 0 {
        EXIT_CORRUPT
    } else {
        EXIT_OK
    };
    if args.follow {
        // Follow from where the log's written part ends: after a torn tail's
        // valid prefix (the unfinished write may still complete), at the
        // clean end otherwise. Without one (damage to the end of the last
        // segment, or no segment yet) from the next segment to appear.
        let start = match (&end.verdict, end.tail.clone(), end.end_at.clone()) {
            (Ok(crate::journal::LogEnd::TornTail { .. }), Some(tail), _) => Start::Tail(tail),
            (_, _, Some(at)) => Start::Tail(at),
            _ => Start::After(end.last_segment),
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
        return Ok(code.max(corrupt));
    }
    if let Some(p) = end.torn() {
        printer.out.flush()?;
        warn(&torn_note(&p));
    }
    printer.no_match_note(&filter)?;
    Ok(corrupt)
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
    /// Records printed.
    matched: u64,
    /// The sequence number of the last record read, filtered or not.
    last_seq: Option<u64>,
}

const SEQ_WIDTH: usize = 6;
const POS_WIDTH: usize = 10;
const KIND_WIDTH: usize = 10;
/// Fits a UUID (the default volume id) in full.
const VOLUME_WIDTH: usize = 36;
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

    /// Describes a record (always, to follow operations) and prints it if
    /// the filter takes it.
    fn found(
        &mut self,
        found: &scan::Found<'_>,
        filter: &Filter,
        ops: &mut OpIndex,
    ) -> Result<(), CliError> {
        self.last_seq = Some(found.seq);
        let described = ops.describe(&found.record);
        if filter.matches(found.seq, found.kind, &described) {
            let line = Line {
                seq: found.seq,
                segment: found.segment,
                file: found.file,
                offset: found.offset,
                kind: found.kind,
                record: &found.record,
            };
            self.record(&line, &described)?;
        }
        Ok(())
    }

    /// Says on stderr when `--volume`, `--op` or a sequence range matched
    /// no record at all (with the range, where the journal's records end).
    fn no_match_note(&mut self, filter: &Filter) -> Result<(), CliError> {
        let ranged = filter.from > 0 || filter.to < u64::MAX;
        if self.matched > 0 || (filter.volumes.is_empty() && filter.op_prefix.is_none() && !ranged)
        {
            return Ok(());
        }
        self.out.flush()?;
        let mut named = Vec::new();
        if ranged {
            let to = if filter.to == u64::MAX {
                String::new()
            } else {
                filter.to.to_string()
            };
            // Past the end: say where the records end.
            let ends = match self.last_seq {
                Some(last) if last < filter.from => {
                    format!(" (the journal's records end at seq {last})")
                }
                None => " (the journal holds no record)".to_owned(),
                Some(_) => String::new(),
            };
            named.push(format!("sequence numbers {}..{to}{ends}", filter.from));
        }
        if !filter.volumes.is_empty() {
            let list: Vec<String> = filter
                .volumes
                .iter()
                .map(|v| quote(v).into_owned())
                .collect();
            named.push(format!("volume {}", list.join(" or ")));
        }
        if let Some(op) = &filter.op_prefix {
            named.push(format!("operation {op}"));
        }
        warn(&format!(
            "no record matches {} (nothing printed)",
            named.join(" and ")
        ));
        Ok(())
    }

    fn record(&mut self, line: &Line<'_>, d: &Described) -> Result<(), CliError> {
        self.matched += 1;
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
    let n = unsafe { libc::poll(&raw mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Where `--follow` starts.
enum Start {
    Tail(Tail),
    /// At the first segment newer than this one (any segment if `None`).
    After(Option<u64>),
}

/// Whether anything may have been written at `tail` since the last look:
/// the 32 bytes there are not all zero (a frame header landed), or they
/// cannot be read. A cheap look, so an idle follow reads 32 bytes a poll.
fn maybe_new(storage: &dyn Storage, tail: &Tail) -> bool {
    let Ok(file) = storage.open(&tail.path) else {
        return true;
    };
    let mut head = [0u8; FRAME_HEADER_LEN];
    match file.read_exact_at(&mut head, tail.cursor.offset) {
        Ok(()) => head.iter().any(|&b| b != 0),
        // Fewer bytes than a header left: nothing more fits in this file.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(_) => true,
    }
}

/// Prints the records appended after `start` as they come, across segment
/// rotations and compaction, reading through the same reader as opening the
/// journal: each look walks from the last record printed on. An invalid
/// frame in the last segment without a later batch's frame after it is an
/// append in progress (a torn tail, if the writer died): `--follow` waits
/// for it. Anything else is corruption, reported once a second look finds
/// the same damage (a look may race a write).
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
    let (mut cur, mut after) = match start {
        Start::Tail(tail) => (Some(tail), None),
        Start::After(after) => (None, after),
    };
    let mut code = EXIT_OK;
    // Damage seen by the previous look, awaiting confirmation.
    let mut suspect: Option<(PathBuf, u64)> = None;
    let mut stuck_polls = 0u32;
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(code);
        }
        let segments = reader::list_segments(storage, &journal_dir).map_err(journal_error)?;
        let Some(tail) = cur.clone() else {
            // No position yet: start at the first segment newer than `after`.
            if let Some((first, path)) = segments.iter().find(|(s, _)| after.is_none_or(|a| *s > a))
            {
                cur = Some(Tail {
                    segment: *first,
                    path: path.clone(),
                    cursor: Cursor::segment_start(*first),
                });
                // Its header is checked by a walk from its start.
                match walk(
                    storage,
                    state_dir,
                    Scope::From(*first),
                    raw,
                    filter,
                    ops,
                    printer,
                )? {
                    Look::Moved(t) => cur = t.or(cur),
                    Look::Corrupt(p) if !raw => {
                        printer.problem(&p)?;
                        return corrupt_in_follow(printer, &p);
                    }
                    Look::Corrupt(_) | Look::Waiting => {}
                }
                continue;
            } else {
                idle(printer)?;
                continue;
            }
        };
        if tail.cursor.next_seq > filter.to {
            return Ok(code);
        }
        let newer = segments.iter().any(|(s, _)| *s > tail.segment);
        let present = segments.iter().any(|(s, _)| *s == tail.segment);
        if !present {
            // Compaction removed the segment under us: go on at the oldest
            // newer one.
            if let Some((first, _)) = segments.iter().find(|(s, _)| *s > tail.segment) {
                if *first > tail.cursor.next_seq {
                    warn(&format!(
                        "{} was removed by compaction; records {}..{} were not shown",
                        file_name(&tail.path),
                        tail.cursor.next_seq,
                        first - 1
                    ));
                }
                after = Some(tail.segment);
                cur = None;
                continue;
            }
            idle(printer)?;
            continue;
        }
        if !newer && !maybe_new(storage, &tail) {
            idle(printer)?;
            continue;
        }
        let look = match walk(
            storage,
            state_dir,
            Scope::At(tail.clone()),
            false,
            filter,
            ops,
            printer,
        ) {
            Ok(look) => look,
            Err(CliError::Fail { .. }) if !tail.path.exists() => continue,
            Err(e) => return Err(e),
        };
        match look {
            Look::Moved(Some(t))
                if (t.segment, t.cursor.offset) != (tail.segment, tail.cursor.offset) =>
            {
                cur = Some(t);
                suspect = None;
                stuck_polls = 0;
                continue;
            }
            Look::Moved(_) => {
                suspect = None;
                stuck_polls = 0;
            }
            Look::Waiting => {
                // An append in progress: it completes, or (the writer died)
                // the next open truncates it.
                stuck_polls += 1;
                if stuck_polls == FOLLOW_STUCK_POLLS {
                    warn(&format!(
                        "no complete record at {}:{} yet; an unfinished write, still waiting",
                        file_name(&tail.path),
                        tail.cursor.offset
                    ));
                }
            }
            Look::Corrupt(p) => {
                let here = (state_dir.join(JOURNAL_DIR).join(&p.file), p.offset);
                if suspect.as_ref() != Some(&here) {
                    // Look again before calling it damage: this look may
                    // have raced a write.
                    suspect = Some(here);
                    idle(printer)?;
                    continue;
                }
                suspect = None;
                code = EXIT_CORRUPT;
                if !raw {
                    printer.problem(&p)?;
                    return corrupt_in_follow(printer, &p);
                }
                // Raw: report it and everything valid after it, then go on
                // from where that reading ended.
                if let Look::Moved(Some(t)) = walk(
                    storage,
                    state_dir,
                    Scope::At(tail.clone()),
                    true,
                    filter,
                    ops,
                    printer,
                )? {
                    cur = Some(t);
                } else {
                    after = segments.last().map(|(s, _)| *s);
                    cur = None;
                }
                continue;
            }
        }
        idle(printer)?;
    }
}

/// What one look at the journal found.
enum Look {
    /// Records up to a clean end were printed; the new position (`None`:
    /// nothing new).
    Moved(Option<Tail>),
    /// An append in progress at the end of the last segment.
    Waiting,
    /// Corruption (not printed unless the walk was raw).
    Corrupt(Problem),
}

/// Walks from `scope` on, printing every record (and, when `raw`, every
/// damaged spot and resumption), and says where the next look starts.
fn walk(
    storage: &dyn Storage,
    state_dir: &Path,
    scope: Scope,
    raw: bool,
    filter: &Filter,
    ops: &mut OpIndex,
    printer: &mut Printer<'_>,
) -> Result<Look, CliError> {
    let mut last: Option<Tail> = None;
    let options = Options {
        scope,
        raw,
        through_cache: false,
    };
    let end = scan::scan(storage, state_dir, &options, &mut |item| {
        match item {
            Item::Record(found) => {
                if STOP.load(Ordering::SeqCst) || found.seq > filter.to {
                    return Ok(Flow::Stop);
                }
                printer.found(&found, filter, ops)?;
                let path = scan::segment_path(state_dir, found.segment);
                last = Some(Tail {
                    segment: found.segment,
                    path,
                    cursor: Cursor {
                        offset: found.offset + found.frame_len,
                        next_seq: found.seq + 1,
                        batch_first_seq: Some(found.batch_first_seq),
                    },
                });
            }
            Item::Problem(p) if raw && p.kind == ProblemKind::Corrupt => printer.problem(&p)?,
            Item::Resumed {
                file,
                offset,
                seq,
                expected_seq,
            } if raw => printer.resumed(&file, offset, seq, expected_seq)?,
            Item::NothingValidAfter { file, offset } if raw => {
                printer.nothing_after(&file, offset)?;
            }
            _ => {}
        }
        Ok(Flow::Continue)
    })?;
    printer.out.flush()?;
    Ok(match (&end.verdict, raw) {
        (Ok(crate::journal::LogEnd::TornTail { .. }), false) => match last {
            Some(t) => Look::Moved(Some(t)),
            None => Look::Waiting,
        },
        (Err(_), false) => match last {
            // Print what came before; the damage is looked at again from there.
            Some(t) => Look::Moved(Some(t)),
            None => match end.first_corrupt {
                Some(p) => Look::Corrupt(p),
                None => Look::Waiting,
            },
        },
        _ => Look::Moved(end.end_at.or(last)),
    })
}

fn corrupt_in_follow(printer: &mut Printer<'_>, p: &Problem) -> Result<i32, CliError> {
    printer.out.flush()?;
    warn(&format!(
        "stopped at corruption at {}; --raw continues past it",
        p.position()
    ));
    Ok(EXIT_CORRUPT)
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
