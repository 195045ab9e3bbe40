//! `volmgr journal state [--at-seq N]`: the volume table, pending intents and
//! orphans as they were after record N (default: the latest).

use serde_json::json;

use crate::state::{State, VolumeStatus};

use super::render::{Out, action_summary, quote, rfc3339_ms, warn};
use super::scan::{self, Flow, Item, ReadOnlyStorage, ReplayError, Replayer};
use super::{CliError, EXIT_CORRUPT, EXIT_OK, Format, StateArgs};

pub(super) fn run(args: &StateArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    let storage = ReadOnlyStorage;
    let checkpoints = scan::load_checkpoints(&storage, state_dir)?;
    let first_seq = scan::first_segment_seq(&storage, state_dir)?;
    let mut replayer = match Replayer::new(&checkpoints, first_seq, args.at_seq) {
        Ok(r) => r,
        Err(e @ ReplayError::Compacted { .. }) => return Err(CliError::usage(e.to_string())),
        Err(e @ ReplayError::Hole { .. }) => return Err(CliError::corrupt(e.to_string())),
    };
    let mut damage = None;
    let end = scan::scan(&storage, state_dir, false, &mut |item| {
        Ok(match item {
            Item::Record(found) => replayer.feed(found.seq, &found.record),
            Item::Problem(p) => {
                if p.kind == scan::ProblemKind::Corrupt {
                    damage = Some(format!("{}: {}", p.position(), p.reason));
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        })
    })?;
    let _ = end;
    let state = &replayer.state;
    let mut code = EXIT_OK;
    let wanted = args.at_seq.unwrap_or(state.seq);
    if let Some(why) = &replayer.failed {
        warn(&format!(
            "replay stopped: {why}; showing the state at seq {}",
            state.seq
        ));
        code = EXIT_CORRUPT;
    } else if state.seq < wanted {
        match &damage {
            Some(d) => {
                warn(&format!(
                    "the journal is corrupt at {d}; showing the state at seq {}",
                    state.seq
                ));
                code = EXIT_CORRUPT;
            }
            None => warn(&format!(
                "the journal ends at seq {}; showing the state there",
                state.seq
            )),
        }
    } else if let Some(d) = &damage
        && args.at_seq.is_none()
    {
        warn(&format!(
            "the journal is corrupt at {d}; showing the state at seq {}",
            state.seq
        ));
        code = EXIT_CORRUPT;
    }

    if args.output.format == Format::Json {
        let value = json!({
            "seq": state.seq,
            "requested_seq": args.at_seq,
            "from_checkpoint": replayer.base,
            "replayed_records": replayer.applied,
            "providers": state.providers.values().collect::<Vec<_>>(),
            "volumes": state.volumes.values().collect::<Vec<_>>(),
            "pending": state.pending.values().collect::<Vec<_>>(),
            "orphans": state.orphans.values().collect::<Vec<_>>(),
        });
        out.line(&value.to_string())?;
        return Ok(code);
    }
    print_state(out, state, &replayer.provenance())?;
    Ok(code)
}

fn cell(s: &str) -> String {
    quote(s).into_owned()
}

fn print_state(out: &mut Out, state: &State, provenance: &str) -> Result<(), CliError> {
    out.line(&format!("state at seq {} ({provenance})", state.seq))?;

    out.line("")?;
    out.line(&format!("providers ({})", state.providers.len()))?;
    let mut rows = vec![vec!["ID".into(), "KIND".into(), "CONFIG".into()]];
    for p in state.providers.values() {
        let config: Vec<String> = p
            .config
            .iter()
            .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
            .collect();
        rows.push(vec![
            cell(&p.id),
            cell(&p.kind),
            if config.is_empty() {
                "-".into()
            } else {
                config.join(",")
            },
        ]);
    }
    table(out, &rows, &[])?;

    out.line("")?;
    out.line(&format!("volumes ({})", state.volumes.len()))?;
    let mut rows = vec![
        [
            "ID", "KIND", "PROVIDER", "PARENT", "STATUS", "CREATED", "LOCATION",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in state.volumes.values() {
        rows.push(vec![
            cell(&v.id),
            v.kind.to_string(),
            cell(&v.provider),
            v.parent.as_deref().map_or_else(|| "-".into(), cell),
            match v.status {
                VolumeStatus::Live => "live".into(),
                VolumeStatus::Lost => "LOST".into(),
            },
            rfc3339_ms(v.created_at_ms),
            cell(&v.location),
        ]);
    }
    table(out, &rows, &[])?;

    out.line("")?;
    out.line(&format!("pending intents ({})", state.pending.len()))?;
    let mut rows = vec![["SEQ", "OP", "TIME", "ACTION"].map(String::from).to_vec()];
    let mut pending: Vec<_> = state.pending.values().collect();
    pending.sort_by_key(|p| p.seq);
    for p in pending {
        rows.push(vec![
            p.seq.to_string(),
            p.op.to_string(),
            rfc3339_ms(p.at_ms),
            action_summary(&p.action),
        ]);
    }
    table(out, &rows, &[0])?;

    out.line("")?;
    out.line(&format!("orphans ({})", state.orphans.len()))?;
    let mut rows = vec![
        ["PROVIDER", "VOLUME", "KIND", "TAGGED-OP", "LOCATION"]
            .map(String::from)
            .to_vec(),
    ];
    for o in state.orphans.values() {
        rows.push(vec![
            cell(&o.provider),
            cell(&o.volume),
            o.kind.to_string(),
            o.tagged_op.to_string(),
            cell(&o.location),
        ]);
    }
    table(out, &rows, &[])
}

/// A header without rows says nothing the section title did not.
fn table(out: &mut Out, rows: &[Vec<String>], right: &[usize]) -> Result<(), CliError> {
    if rows.len() > 1 {
        out.table(rows, right)?;
    }
    Ok(())
}
