//! `volmgr journal verify`: every checkpoint, segment header, frame and
//! record payload, then a replay as opening would do it. The exit code
//! classifies the journal: clean, torn tail only, or corrupt.

use crate::state::State;

use super::render::Out;
use super::scan::{
    self, Checkpoint, Flow, Item, Problem, ProblemKind, ReadOnlyStorage, Replayer, SegmentInfo,
};
use super::{CliError, EXIT_CORRUPT, EXIT_OK, EXIT_TORN_TAIL, VerifyArgs};

pub(super) fn run(args: &VerifyArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    let storage = ReadOnlyStorage;
    let mut report = Report { out, corrupt: 0 };

    let checkpoints = scan::load_checkpoints(&storage, state_dir)?;
    for c in &checkpoints {
        report.checkpoint(c)?;
    }
    let newest_valid = checkpoints
        .iter()
        .rev()
        .find(|c| c.state.is_ok())
        .map(|c| c.seq);

    let first_seq = scan::first_segment_seq(&storage, state_dir)?;
    let mut replayer = match Replayer::new(&checkpoints, first_seq, None) {
        Ok(r) => Some(r),
        Err(e) => {
            report.row("replay", "-", "FAILED", &e.to_string())?;
            report.corrupt += 1;
            None
        }
    };
    let mut records = 0u64;
    let mut range: Option<(u64, u64)> = None;
    let mut seen_problem = false;
    let mut segment_status = "ok";
    let end = scan::scan(&storage, state_dir, args.raw, &mut |item| {
        match item {
            Item::Record(found) => {
                records += 1;
                range = Some(range.map_or((found.seq, found.seq), |(a, _)| (a, found.seq)));
                if !seen_problem && let Some(r) = replayer.as_mut() {
                    r.feed(found.seq, &found.record);
                }
            }
            Item::Problem(p) => {
                if p.kind == ProblemKind::Corrupt {
                    seen_problem = true;
                    segment_status = "damaged";
                } else if segment_status == "ok" {
                    segment_status = "torn";
                }
                report.problem(&p)?;
            }
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
            Item::SegmentDone(seg) => {
                report.segment(&seg, segment_status, newest_valid)?;
                segment_status = "ok";
            }
        }
        Ok(Flow::Continue)
    })?;
    report.corrupt += end.corrupt;
    if end.first_corrupt.is_some() && !args.raw {
        report.row(
            "note",
            "-",
            "-",
            "stopped at the first corruption; --raw checks what follows it",
        )?;
    }

    if let Some(r) = &replayer {
        if let Some(why) = &r.failed {
            report.corrupt += 1;
            report.row("replay", "-", "FAILED", why)?;
        } else {
            let detail = format!(
                "state at seq {} ({}): {}",
                r.state.seq,
                r.provenance(),
                state_summary(&r.state)
            );
            let status = if seen_problem { "partial" } else { "ok" };
            report.row("replay", "-", status, &detail)?;
        }
    }

    let segments = end.segments;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let summary = format!(
        "{records} record{} ({}) in {segments} segment{}, {} checkpoint{}",
        if records == 1 { "" } else { "s" },
        match range {
            Some((a, b)) => format!("seq {a}..{b}"),
            None => "none".to_owned(),
        },
        plural(segments),
        checkpoints.len(),
        plural(checkpoints.len()),
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
    } else if let Some(p) = &end.torn {
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

    fn checkpoint(&mut self, c: &Checkpoint) -> Result<(), CliError> {
        match &c.state {
            Ok(state) => self.row(
                "checkpoint",
                &c.file,
                "ok",
                &format!("seq {}, {} bytes: {}", c.seq, c.size, state_summary(state)),
            ),
            Err(why) => {
                self.corrupt += 1;
                self.row("checkpoint", &c.file, "CORRUPT", why)
            }
        }
    }

    fn problem(&mut self, p: &Problem) -> Result<(), CliError> {
        let expected = p
            .expected_seq
            .map(|s| format!(" (expected seq {s})"))
            .unwrap_or_default();
        match p.kind {
            ProblemKind::Corrupt => self.row(
                "segment",
                &p.file,
                "CORRUPT",
                &format!("at offset {}{expected}: {}", p.offset, p.reason),
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

    fn segment(
        &mut self,
        seg: &SegmentInfo,
        status: &str,
        newest_valid: Option<u64>,
    ) -> Result<(), CliError> {
        let records = match seg.records {
            Some((a, b)) if b.checked_sub(a).map(|d| d.saturating_add(1)) == Some(seg.count) => {
                format!("records {a}..{b}")
            }
            Some((a, b)) => format!("records {a}..{b} ({} valid)", seg.count),
            None => "no records".to_owned(),
        };
        let covered = match (seg.records, newest_valid) {
            (Some((_, last)), Some(c)) if last <= c => format!(" (covered by checkpoint {c})"),
            _ => String::new(),
        };
        let detail = format!(
            "{records}, {} of {} bytes used{covered}",
            seg.used, seg.file_len
        );
        self.row("segment", &seg.file, status, &detail)
    }
}
