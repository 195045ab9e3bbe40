//! `volmgr journal repair`: the only subcommand that writes. Explicit flags,
//! the state directory's exclusive lock, and a `.broken` copy of every byte
//! removed (etcd's `Repair`: copy first, then truncate, then sync).
//!
//! `--truncate-torn-tail` removes exactly what opening the journal would.
//! `--truncate-at SEQ` removes record SEQ and everything after it, including
//! corruption: without `--yes-destroy-records-after` it only prints the plan.
//! The steps run in an order that leaves an openable journal if interrupted
//! (newer checkpoints aside first, then later segments from the newest, then
//! the cut in the segment holding SEQ), and re-running finishes the job.

use std::io;
use std::path::{Path, PathBuf};

use crate::journal::format::SEGMENT_HEADER_LEN;
use crate::journal::reader;
use crate::journal::{self, CHECKPOINT_DIR, JOURNAL_DIR, LOCK_FILE, LogEnd};
use crate::state::Record;
use crate::storage::{LockGuard, RealStorage, Storage};

use super::render::Out;
use super::scan::{self, Flow, Item, ReadOnlyStorage, file_name, journal_error};
use super::{CliError, EXIT_OK, RepairArgs};

pub(super) fn run(args: &RepairArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    // It writes (truncates, copies aside, removes): only in a state
    // directory no other user can change (as the agent's open checks).
    journal::check_state_dir(&RealStorage, state_dir).map_err(journal_error)?;
    match (args.truncate_torn_tail, args.truncate_at) {
        (true, None) => {
            let _lock = lock(state_dir)?;
            truncate_torn_tail(state_dir, out)
        }
        (false, Some(seq)) => truncate_at(state_dir, seq, args.yes_destroy_records_after, out),
        _ => Err(CliError::usage(
            "choose one of --truncate-torn-tail or --truncate-at SEQ",
        )),
    }
}

fn lock(state_dir: &Path) -> Result<LockGuard, CliError> {
    let path = state_dir.join(LOCK_FILE);
    let holder = format!("volmgr journal repair (pid {})", std::process::id());
    RealStorage.lock_exclusive(&path, &holder).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            let who = e.to_string();
            let who = if who.trim().is_empty() {
                "another process".to_owned()
            } else {
                who
            };
            CliError::io(format!(
                "state directory is locked: {} is held by {who}; stop the agent before \
                 repairing (nothing was changed)",
                path.display()
            ))
        } else {
            CliError::io(format!("lock {}: {e}", path.display()))
        }
    })
}

/// What opening would read (the core reader, read-only, every frame decoded).
fn read_log(state_dir: &Path) -> Result<reader::LogRead, CliError> {
    reader::read_log::<Record>(&ReadOnlyStorage, state_dir, |_, _| {}).map_err(journal_error)
}

/// Where the journal's end lands after a successful repair.
fn report_end(state_dir: &Path, out: &mut Out) -> Result<i32, CliError> {
    let read = read_log(state_dir)?;
    match read.walked.verdict {
        Ok(LogEnd::Clean) => {
            out.line(&format!(
                "the journal now ends cleanly at seq {}",
                read.walked.last_seq
            ))?;
            Ok(EXIT_OK)
        }
        Ok(LogEnd::TornTail {
            segment, offset, ..
        }) => Err(CliError::corrupt(format!(
            "after the repair the journal still ends in a torn tail at {}:{offset}",
            file_name(&segment)
        ))),
        Err(c) => Err(CliError::corrupt(format!(
            "after the repair the journal still does not open: corrupt at {}:{}: {}",
            file_name(&c.file),
            c.offset,
            c.reason
        ))),
    }
}

fn truncate_torn_tail(state_dir: &Path, out: &mut Out) -> Result<i32, CliError> {
    let read = read_log(state_dir)?;
    match read.walked.verdict {
        Ok(LogEnd::Clean) => {
            out.line(&format!(
                "nothing to repair: the journal ends cleanly at seq {}",
                read.walked.last_seq
            ))?;
            Ok(EXIT_OK)
        }
        Ok(LogEnd::TornTail {
            segment,
            offset,
            len,
            reason,
        }) => {
            let broken = journal::truncate_torn_tail(&RealStorage, &segment, offset, len)
                .map_err(journal_error)?;
            out.line(&format!(
                "truncated the torn tail at {}:{offset}: {len} bytes ({reason})",
                file_name(&segment)
            ))?;
            out.line(&format!(
                "the removed bytes are in {JOURNAL_DIR}/{}",
                file_name(&broken)
            ))?;
            report_end(state_dir, out)
        }
        Err(c) => {
            let hint = read
                .walked
                .first_corrupt
                .and_then(|d| d.expected_seq)
                .map(|seq| {
                    format!(
                        "; to cut it off with every record after it, run `volmgr journal repair \
                         {} --truncate-at {seq}` to see the plan",
                        state_dir.display()
                    )
                })
                .unwrap_or_default();
            Err(CliError::corrupt(format!(
                "not a torn tail, so nothing was changed: corruption at {}:{}: {}{hint}",
                file_name(&c.file),
                c.offset,
                c.reason
            )))
        }
    }
}

/// What `--truncate-at` would do.
struct Plan {
    seq: u64,
    /// The segment holding the cut and the offset of the cut; `None` when
    /// the cut removes nothing in any segment (SEQ is the next to be written).
    cut: Option<(PathBuf, u64, u64)>,
    /// Whole segments past the cut (to be moved aside).
    segments: Vec<PathBuf>,
    /// Checkpoints at or after SEQ (to be moved aside).
    checkpoints: Vec<PathBuf>,
    /// Readable records that go (seen by a raw scan), first and last.
    removed: u64,
    removed_range: Option<(u64, u64)>,
    damaged: bool,
}

fn plan(state_dir: &Path, seq: u64) -> Result<Plan, CliError> {
    if seq == 0 {
        return Err(CliError::usage(
            "--truncate-at needs a sequence number of 1 or more",
        ));
    }
    let storage = ReadOnlyStorage;
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let segments = reader::list_segments(&storage, &journal_dir).map_err(journal_error)?;
    let base = scan::open_base(&storage, state_dir, None)?.map(|(s, _)| s);

    // Find the position of record `seq`: a valid frame, or the damaged spot
    // (or clean end) where it should be.
    let mut at: Option<(String, u64)> = None;
    let mut readable: Option<(u64, u64)> = None;
    let mut damage: Option<String> = None;
    let end = scan::scan(&storage, state_dir, &scan::all(base, false), &mut |item| {
        Ok(match item {
            Item::Record(found) => {
                if found.seq == seq {
                    at = Some((found.file.to_owned(), found.offset));
                    Flow::Stop
                } else {
                    readable =
                        Some(readable.map_or((found.seq, found.seq), |(a, _)| (a, found.seq)));
                    Flow::Continue
                }
            }
            Item::Problem(p) => {
                damage = Some(format!("{}: {}", p.position(), p.reason));
                if p.expected_seq == Some(seq) {
                    at = Some((p.file.clone(), p.offset));
                }
                // Like opening, nothing after the first damage counts.
                Flow::Stop
            }
            _ => Flow::Continue,
        })
    })?;
    let last_seq = readable.map(|(_, b)| b);
    let cut = if let Some((file, offset)) = at {
        let path = journal_dir.join(&file);
        let bytes = reader::read_segment(&storage, &path).map_err(journal_error)?;
        let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1) as u64;
        Some((path, offset, dirty_end))
    } else {
        let next = end
            .tail
            .as_ref()
            .map(|t| t.cursor.next_seq)
            .or(last_seq.map(|s| s.saturating_add(1)));
        let clean = damage.is_none();
        if clean && next == Some(seq) {
            None
        } else {
            let readable = match readable {
                Some((a, b)) => format!("the readable records are seq {a}..{b}"),
                None => "no record is readable".to_owned(),
            };
            let at_damage = match (&damage, last_seq) {
                (Some(d), Some(b)) => {
                    format!(
                        " and damage at {d} follows; cut at seq {} or earlier",
                        b.saturating_add(1)
                    )
                }
                (Some(d), None) => format!(" and damage at {d} follows"),
                (None, _) => String::new(),
            };
            return Err(CliError::unmet(format!(
                "seq {seq} is not in the journal: {readable}{at_damage}"
            )));
        }
    };

    // Everything after the cut's segment goes aside whole.
    let later: Vec<PathBuf> = match &cut {
        Some((path, _, _)) => segments
            .iter()
            .skip_while(|(_, p)| p != path)
            .skip(1)
            .map(|(_, p)| p.clone())
            .collect(),
        None => Vec::new(),
    };
    let checkpoint_dir = state_dir.join(CHECKPOINT_DIR);
    let checkpoints: Vec<PathBuf> = reader::list_checkpoints(&storage, &checkpoint_dir)
        .map_err(journal_error)?
        .into_iter()
        .filter(|(s, _)| *s >= seq)
        .map(|(_, p)| p)
        .collect();

    // After the cut, replay must still have a starting point: the
    // checkpoint opening would then choose, and the records after it.
    let kept_base = match scan::open_base(&storage, state_dir, Some(seq - 1))? {
        Some((c, Ok(_))) => Some(c),
        Some((c, Err(why))) => {
            return Err(CliError::unmet(format!(
                "cutting at seq {seq} would leave a journal that cannot be replayed: \
                 checkpoint {c} would be the one replay starts from, but {why}"
            )));
        }
        None => None,
    };
    let whole_segment_goes =
        matches!(&cut, Some((_, offset, _)) if *offset < SEGMENT_HEADER_LEN as u64);
    let first_kept_segment = match segments.first() {
        Some((_, path)) if whole_segment_goes && cut.as_ref().map(|c| &c.0) == Some(path) => None,
        Some((first, _)) => Some(*first),
        None => None,
    };
    let from = kept_base.map_or(1, |c| c + 1);
    let hole = match first_kept_segment {
        Some(first) => first > from && from < seq,
        None => from < seq,
    };
    if hole {
        let needs = match kept_base {
            Some(c) => format!("checkpoint {c} needs the records from seq {from} on"),
            None => {
                "without a checkpoint before it, replay needs the records from seq 1 on".to_owned()
            }
        };
        let but = match first_kept_segment {
            Some(first) => format!("the oldest segment starts at seq {first}"),
            None => "no segment would remain".to_owned(),
        };
        return Err(CliError::unmet(format!(
            "cutting at seq {seq} would leave a journal that cannot be replayed: {needs}, but {but}"
        )));
    }

    // Count the readable records that go, including those after damage.
    let cut_pos = cut.as_ref().map(|(p, o, _)| (file_name(p), *o));
    let mut removed = 0u64;
    let mut removed_range = None;
    if let Some((cut_file, cut_offset)) = &cut_pos {
        scan::scan(&storage, state_dir, &scan::all(base, true), &mut |item| {
            if let Item::Record(found) = item {
                let after = (found.file, found.offset) >= (cut_file.as_str(), *cut_offset);
                if after {
                    removed += 1;
                    removed_range =
                        Some(removed_range.map_or((found.seq, found.seq), |(a, _)| (a, found.seq)));
                }
            }
            Ok(Flow::Continue)
        })?;
    }
    Ok(Plan {
        seq,
        cut,
        segments: later,
        checkpoints,
        removed,
        removed_range,
        damaged: damage.is_some(),
    })
}

fn describe(plan: &Plan, out: &mut Out) -> Result<(), CliError> {
    out.line(&format!(
        "cut the journal before seq {}: records 1..{} stay",
        plan.seq,
        plan.seq - 1
    ))?;
    match &plan.cut {
        None => out.line("  nothing to remove: the journal ends right before this record")?,
        Some((path, offset, _)) if *offset < SEGMENT_HEADER_LEN as u64 => out.line(&format!(
            "  move {} aside to {}.broken (its header is damaged)",
            file_name(path),
            file_name(path)
        ))?,
        Some((path, offset, dirty_end)) => {
            let len = dirty_end.saturating_sub(*offset);
            if len > 0 {
                out.line(&format!(
                    "  zero {} bytes of {} from offset {offset}, copied first to {}.at-{offset}.broken",
                    len,
                    file_name(path),
                    file_name(path)
                ))?;
            }
        }
    }
    for p in &plan.segments {
        out.line(&format!(
            "  move segment {} aside to {}.broken",
            file_name(p),
            file_name(p)
        ))?;
    }
    for p in &plan.checkpoints {
        out.line(&format!(
            "  move checkpoint {} aside to {}.broken (it covers removed records)",
            file_name(p),
            file_name(p)
        ))?;
    }
    let range = match plan.removed_range {
        Some((a, b)) => format!(" (seq {a}..{b})"),
        None => String::new(),
    };
    let damaged = if plan.damaged {
        ", plus the damaged bytes"
    } else {
        ""
    };
    out.line(&format!(
        "  readable records destroyed: {}{range}{damaged}",
        plan.removed
    ))
}

fn truncate_at(
    state_dir: &Path,
    seq: u64,
    confirmed: bool,
    out: &mut Out,
) -> Result<i32, CliError> {
    if !confirmed {
        let plan = plan(state_dir, seq)?;
        describe(&plan, out)?;
        out.flush()?;
        return Err(CliError::usage(
            "nothing was changed: add --yes-destroy-records-after to do this (stop the agent first)",
        ));
    }
    let _lock = lock(state_dir)?;
    // Planned under the lock: the journal cannot change any more.
    let plan = plan(state_dir, seq)?;
    describe(&plan, out)?;
    let storage = RealStorage;
    let io = |what: &str, path: &Path, e: io::Error| {
        CliError::io(format!("{what} {}: {e}", path.display()))
    };
    // 1. Checkpoints that cover removed records.
    for path in &plan.checkpoints {
        move_aside(&storage, path).map_err(|e| io("move aside", path, e))?;
    }
    if !plan.checkpoints.is_empty() {
        let dir = state_dir.join(CHECKPOINT_DIR);
        storage.sync_dir(&dir).map_err(|e| io("fsync", &dir, e))?;
    }
    // 2. Whole segments after the cut, newest first.
    for path in plan.segments.iter().rev() {
        move_aside(&storage, path).map_err(|e| io("move aside", path, e))?;
    }
    let journal_dir = state_dir.join(JOURNAL_DIR);
    if !plan.segments.is_empty() {
        storage
            .sync_dir(&journal_dir)
            .map_err(|e| io("fsync", &journal_dir, e))?;
    }
    // 3. The cut itself.
    if let Some((path, offset, dirty_end)) = &plan.cut {
        if *offset < SEGMENT_HEADER_LEN as u64 {
            move_aside(&storage, path).map_err(|e| io("move aside", path, e))?;
            storage
                .sync_dir(&journal_dir)
                .map_err(|e| io("fsync", &journal_dir, e))?;
        } else if *dirty_end > *offset {
            journal::truncate_torn_tail(&storage, path, *offset, dirty_end - offset)
                .map_err(journal_error)?;
        }
    }
    out.line("done")?;
    report_end(state_dir, out).map(|_| EXIT_OK)
}

/// Renames `path` to `<name>.broken` (or `<name>.<n>.broken` if taken).
fn move_aside(storage: &dyn Storage, path: &Path) -> io::Result<PathBuf> {
    let name = file_name(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    for n in 1..=1000u32 {
        let target = if n == 1 {
            dir.join(format!("{name}.broken"))
        } else {
            dir.join(format!("{name}.{n}.broken"))
        };
        if !target.exists() {
            storage.rename(path, &target)?;
            return Ok(target);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("too many .broken copies of {name}"),
    ))
}
