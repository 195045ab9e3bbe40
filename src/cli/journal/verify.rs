//! `volmgr journal verify`: every checkpoint, segment header, frame and
//! record payload, then a replay as opening does it, then what opening does
//! (the `open` row: the verdict of the reader opening uses, with its file
//! and offset). The exit code classifies the journal: clean, torn tail
//! only, or corrupt. A `FAILED-COMMIT` marker gets a `failed` row: the batch
//! it names is read as zeros (the next open zeroes it), so the `open` row
//! says where opening will really stand. A damaged `IDENTITY` (the state
//! directory's identity, which opening reads and never replaces) gets an
//! `identity` row and makes the `open` row `REFUSES`; a sound or absent one
//! (an older state directory: the next open makes it) says nothing.

use crate::journal::{
    FAILED_COMMIT_FILE, IDENTITY_FILE, JOURNAL_DIR, JournalError, LogEnd, format,
    read_failed_commit, read_identity,
};
use crate::state::State;

use super::render::Out;
use super::scan::{self, Checkpoint, Flow, Item, Problem, ProblemKind, ReadOnlyStorage, Replayer};
use super::{CliError, EXIT_CORRUPT, EXIT_OK, EXIT_TORN_TAIL, VerifyArgs};

pub(super) fn run(args: &VerifyArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    let storage = ReadOnlyStorage;
    let mut report = Report { out, corrupt: 0 };

    // Checkpoints newest first, one in memory at a time besides the base:
    // the first whose bytes check is the one opening replays from.
    let mut rows = Vec::new();
    let mut base: Option<scan::Base> = None;
    let mut count = 0usize;
    scan::each_checkpoint(&storage, state_dir, |c: Checkpoint| {
        count += 1;
        rows.push(checkpoint_row(&c));
        if c.bytes_ok && base.is_none() {
            base = Some((c.seq, c.state));
        }
        Ok(())
    })?;
    for (ok, file, detail) in rows.into_iter().rev() {
        if !ok {
            report.corrupt += 1;
        }
        report.row(
            "checkpoint",
            &file,
            if ok { "ok" } else { "CORRUPT" },
            &detail,
        )?;
    }
    if let Some(failed) =
        read_failed_commit(&storage, &state_dir.join(JOURNAL_DIR)).map_err(scan::journal_error)?
    {
        report.row(
            "failed",
            FAILED_COMMIT_FILE,
            "discard",
            &format!(
                "a commit failed (write or fdatasync): its batch from offset {} of {} was never \
                 acknowledged and may exist only in the page cache; read as zeros, the next open \
                 zeroes it",
                failed.offset,
                format::segment_file_name(failed.segment_first_seq)
            ),
        )?;
    }
    // Opening reads the identity before the log: a damaged one refuses it.
    let identity_refuses = match read_identity(&storage, state_dir) {
        Ok(_) => None,
        Err(JournalError::Identity { reason, .. }) => Some(reason),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = &identity_refuses {
        report.corrupt += 1;
        report.row(
            "identity",
            IDENTITY_FILE,
            "DAMAGED",
            &format!("{why}; opening refuses it and never replaces it"),
        )?;
    }
    let base_seq = base.as_ref().map(|(seq, _)| *seq);
    let (mut replayer, base_failed) = match base {
        Some((seq, Ok(state))) => (Some(Replayer::new(Some((seq, state)), None)), None),
        Some((_, Err(why))) => (None, Some(why)),
        None => (Some(Replayer::new(None, None)), None),
    };

    let mut records = 0u64;
    let mut range: Option<(u64, u64)> = None;
    let options = scan::all(base_seq, args.raw);
    let end = scan::scan(&storage, state_dir, &options, &mut |item| {
        match item {
            Item::Record(found) => {
                records += 1;
                range = Some(range.map_or((found.seq, found.seq), |(a, _)| (a, found.seq)));
                if found.replayable
                    && let Some(r) = replayer.as_mut()
                {
                    r.feed(found.seq, &found.record);
                }
            }
            Item::Problem(p) => report.problem(&p, base_seq)?,
            Item::Resumed {
                file,
                offset,
                seq,
                expected_seq,
            } => {
                let note = match expected_seq {
                    Some(e) if e.checked_add(1) == Some(seq) => format!(" (seq {e} not found)"),
                    Some(e) if seq > e => format!(" (seq {e}..{} not found)", seq - 1),
                    Some(e) if seq < e => format!(" (expected seq {e}: an older record)"),
                    _ => String::new(),
                };
                report.row(
                    "segment",
                    &file,
                    "resumed",
                    &format!("at offset {offset} with seq {seq}{note}"),
                )?;
            }
            Item::NothingValidAfter { file, offset } => {
                report.row(
                    "segment",
                    &file,
                    "-",
                    &format!("no valid frame after offset {offset}"),
                )?;
            }
            Item::SegmentDone(seg) => report.segment(&seg, base_seq)?,
        }
        Ok(Flow::Continue)
    })?;
    report.corrupt += end.corrupt;
    if end.verdict.is_err() && !args.raw {
        report.row(
            "note",
            "-",
            "-",
            "stopped at the first corruption; --raw checks what follows it",
        )?;
    }

    // The replay, and what opening does: the log's verdict first (open
    // refuses corruption before replaying), then the replay's.
    let log_corrupt = end.verdict.is_err();
    let identity_damaged = identity_refuses.is_some();
    let mut open_refuses =
        identity_refuses.map(|why| format!("state directory identity {IDENTITY_FILE}: {why}"));
    if let Some(why) = &base_failed {
        report.corrupt += 1;
        report.row("replay", "-", "FAILED", why)?;
        open_refuses.get_or_insert_with(|| format!("replay failed: {why}"));
    } else if let Some(r) = &replayer {
        if let Some(e) = &r.failed {
            report.corrupt += 1;
            report.row("replay", "-", "FAILED", &e.to_string())?;
            open_refuses
                .get_or_insert_with(|| format!("the journal contradicts the state machine: {e}"));
        } else {
            let detail = format!(
                "state at seq {} ({}): {}",
                r.state.seq,
                r.provenance(),
                state_summary(&r.state)
            );
            let status = if log_corrupt { "partial" } else { "ok" };
            report.row("replay", "-", status, &detail)?;
        }
    }
    let seq_after = replayer.as_ref().map_or(0, |r| r.state.seq);
    let (status, detail) = match (&end.verdict, open_refuses) {
        // Opening reads the identity before the log.
        (_, Some(why)) if identity_damaged => ("REFUSES", why),
        (Err(c), _) => (
            "REFUSES",
            format!(
                "corrupt at {}:{}: {}",
                scan::file_name(&c.file),
                c.offset,
                c.reason
            ),
        ),
        (Ok(_), Some(why)) => ("REFUSES", why),
        (
            Ok(LogEnd::TornTail {
                segment,
                offset,
                len,
                ..
            }),
            None,
        ) => (
            "repairs",
            format!(
                "truncates the torn tail at {}:{offset} ({len} bytes), then opens at seq {seq_after}",
                scan::file_name(segment)
            ),
        ),
        (Ok(LogEnd::Clean), None) => ("ok", format!("opens at seq {seq_after}")),
    };
    report.row("open", "-", status, &detail)?;

    let segments = end.segments;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let summary = format!(
        "{records} record{} ({}) in {segments} segment{}, {count} checkpoint{}",
        if records == 1 { "" } else { "s" },
        match range {
            Some((a, b)) => format!("seq {a}..{b}"),
            None => "none".to_owned(),
        },
        plural(segments),
        plural(count),
    );
    let (status, code) = if report.corrupt > 0 {
        let first = end
            .first_corrupt
            .as_ref()
            .map(|p| format!(", first at {}", p.position()))
            .unwrap_or_default();
        (
            format!(
                "CORRUPT: {} problem{}{first}; {summary}",
                report.corrupt,
                plural(report.corrupt)
            ),
            EXIT_CORRUPT,
        )
    } else if let Some(p) = end.torn() {
        (
            format!("torn tail at {}; {summary}", p.position()),
            EXIT_TORN_TAIL,
        )
    } else {
        (format!("clean; {summary}"), EXIT_OK)
    };
    report.row("result", "-", &format!("exit {code}"), &status)?;
    Ok(code)
}

/// (usable, file, detail) of a checkpoint row.
fn checkpoint_row(c: &Checkpoint) -> (bool, String, String) {
    match &c.state {
        Ok(state) => (
            true,
            c.file.clone(),
            format!("seq {}, {} bytes: {}", c.seq, c.size, state_summary(state)),
        ),
        Err(why) => (false, c.file.clone(), why.clone()),
    }
}

/// "5 volumes (4 live, 1 lost), 2 pending, 1 orphan"
pub(super) fn state_summary(state: &State) -> String {
    let lost = state
        .volumes
        .values()
        .filter(|v| v.status == crate::state::VolumeStatus::Lost)
        .count();
    let volumes = state.volumes.len();
    format!(
        "{volumes} volume{} ({} live, {lost} lost), {} pending, {} orphan{}",
        if volumes == 1 { "" } else { "s" },
        volumes - lost,
        state.pending.len(),
        state.orphans.len(),
        if state.orphans.len() == 1 { "" } else { "s" },
    )
}

struct Report<'o> {
    out: &'o mut Out,
    corrupt: usize,
}

impl Report<'_> {
    fn row(&mut self, what: &str, name: &str, status: &str, detail: &str) -> Result<(), CliError> {
        if self.out.aligned {
            let line = format!("{what:<10}  {name:<25}  {status:<8}  {detail}");
            self.out.line(line.trim_end())
        } else {
            self.out.line(&[what, name, status, detail].join("\t"))
        }
    }

    fn problem(&mut self, p: &Problem, base: Option<u64>) -> Result<(), CliError> {
        let expected = p
            .expected_seq
            .map(|s| format!(" (expected seq {s})"))
            .unwrap_or_default();
        let history = match (p.history, base) {
            (true, Some(c)) => format!(
                "; opening does not read it (checkpoint {c} covers it), a fallback to an older \
                 checkpoint would"
            ),
            _ => String::new(),
        };
        match p.kind {
            ProblemKind::Corrupt => self.row(
                "segment",
                &p.file,
                "CORRUPT",
                &format!("at offset {}{expected}: {}{history}", p.offset, p.reason),
            ),
            ProblemKind::TornTail { len } => self.row(
                "segment",
                &p.file,
                "TORN",
                &format!(
                    "at offset {}{expected}, {len} bytes: {}; opening the journal truncates it",
                    p.offset, p.reason
                ),
            ),
        }
    }

    fn segment(&mut self, seg: &scan::SegmentInfo, base: Option<u64>) -> Result<(), CliError> {
        let records = match seg.records {
            Some((a, b)) if b.checked_sub(a).map(|d| d.saturating_add(1)) == Some(seg.count) => {
                format!("records {a}..{b}")
            }
            Some((a, b)) => format!("records {a}..{b} ({} valid)", seg.count),
            None => "no records".to_owned(),
        };
        let covered = match (seg.records, base) {
            (Some((_, last)), Some(c)) if last <= c || seg.history => {
                format!(" (covered by checkpoint {c})")
            }
            _ => String::new(),
        };
        let detail = format!(
            "{records}, {} of {} bytes used{covered}",
            seg.used, seg.file_len
        );
        let status = if seg.damaged {
            "damaged"
        } else if seg.torn {
            "torn"
        } else {
            "ok"
        };
        self.row("segment", &seg.file, status, &detail)
    }
}
