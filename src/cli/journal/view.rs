//! `volmgr journal state [--at-seq N]`: the volume table, pending intents and
//! orphans as they were after record N (default: the latest).

use std::fmt::Write as _;

use serde_json::json;

use crate::agent::api::VolumeInfo;
use crate::journal::JOURNAL_DIR;
use crate::journal::reader::{self, Options, Scope};
use crate::state::{State, VolumeStatus};

use super::render::{Out, action_summary, quote, rfc3339_ms, warn};
use super::scan::{self, Flow, Item, ReadOnlyStorage, Replayer};
use super::{CliError, EXIT_CORRUPT, EXIT_OK, Format, StateArgs};

pub(super) fn run(args: &StateArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    let storage = ReadOnlyStorage;
    // The checkpoint opening would replay from, at or before the target.
    let (base_seq, base_state) = match scan::open_base(&storage, state_dir, args.at_seq)? {
        Some((seq, Ok(state))) => (Some(seq), Some(state)),
        Some((_, Err(why))) => {
            return Err(CliError::corrupt(format!(
                "replay failed: {why} (opening the journal refuses it too)"
            )));
        }
        None => (None, None),
    };
    let mut replayer = Replayer::new(base_seq.zip(base_state), args.at_seq);
    let log_from = base_seq.map_or(1, |b| b + 1);
    let wanted = args.at_seq;
    if base_seq.is_none()
        && let Some(n) = wanted.filter(|n| *n > 0)
    {
        // Without a checkpoint at or before N, the records from seq 1 on
        // are needed.
        let first_segment = reader::list_segments(&storage, &state_dir.join(JOURNAL_DIR))
            .map_err(scan::journal_error)?
            .first()
            .map(|(s, _)| *s);
        if let Some(first) = first_segment.filter(|f| *f > 1) {
            return Err(compacted(storage, state_dir, n, first)?);
        }
    }
    let mut damage = None;
    let options = Options {
        scope: Scope::From(log_from),
        raw: false,
        through_cache: false,
    };
    let end = scan::scan(&storage, state_dir, &options, &mut |item| {
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
    let state = &replayer.state;
    let mut code = EXIT_OK;
    if let Some(why) = &replayer.failed {
        warn(&format!(
            "replay stopped: {why}; showing the state at seq {} (opening the journal refuses \
             the same record)",
            state.seq
        ));
        code = EXIT_CORRUPT;
    } else if let Some(n) = wanted
        && state.seq < n
    {
        match &damage {
            Some(d) => {
                warn(&format!(
                    "the journal is corrupt at {d}; showing the state at seq {}",
                    state.seq
                ));
                code = EXIT_CORRUPT;
            }
            None if !end.stopped => {
                return Err(CliError::unmet(format!(
                    "--at-seq {n} is past the end of the journal: its last record is seq {}",
                    state.seq
                )));
            }
            None => {}
        }
    } else if let Some(d) = &damage
        && wanted.is_none()
    {
        warn(&format!(
            "the journal is corrupt at {d}; showing the state at seq {}",
            state.seq
        ));
        code = EXIT_CORRUPT;
    }

    if args.output.format == Format::Json {
        let volumes: Vec<serde_json::Value> = state.volumes.values().map(volume_json).collect();
        let pending: Vec<serde_json::Value> = {
            let mut pending: Vec<_> = state.pending.values().collect();
            pending.sort_by_key(|p| p.seq);
            pending
                .into_iter()
                .map(|p| {
                    json!({
                        "op": p.op,
                        "seq": p.seq,
                        "time": rfc3339_ms(p.at_ms),
                        "action": p.action.name(),
                        "volume": p.action.volumes(),
                        "summary": action_summary(&p.action),
                    })
                })
                .collect()
        };
        let orphans: Vec<serde_json::Value> = state
            .orphans
            .values()
            .map(|o| {
                json!({
                    "provider": o.provider,
                    "volume": o.volume,
                    "kind": o.kind.as_str(),
                    "tagged_op": o.tagged_op,
                    "location": o.location,
                })
            })
            .collect();
        let value = json!({
            "seq": state.seq,
            "requested_seq": args.at_seq,
            "from_checkpoint": replayer.base,
            "replayed_records": replayer.applied,
            "providers": state.providers.values().collect::<Vec<_>>(),
            "volumes": volumes,
            "pending": pending,
            "orphans": orphans,
        });
        out.line(&value.to_string())?;
        return Ok(code);
    }
    print_state(out, state, &replayer.provenance())?;
    Ok(code)
}

/// A volume as the HTTP API shows it (README, "A volume"), plus the
/// operation that created it.
fn volume_json(v: &crate::state::Volume) -> serde_json::Value {
    let mut value = serde_json::to_value(VolumeInfo::from(v)).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("op".into(), json!(v.op));
    }
    value
}

/// The error for `--at-seq N` before the oldest history the journal keeps.
fn compacted(
    storage: ReadOnlyStorage,
    state_dir: &std::path::Path,
    at: u64,
    first: u64,
) -> Result<CliError, CliError> {
    let mut oldest = None;
    scan::each_checkpoint(&storage, state_dir, |c| {
        if c.state.is_ok() {
            oldest = Some(c.seq);
        }
        Ok(())
    })?;
    let mut text = format!(
        "the state at seq {at} cannot be rebuilt: the history before seq {first} was compacted away"
    );
    match oldest {
        Some(c) => {
            let _ = write!(text, "; the oldest state available is at seq {c}");
        }
        None => text.push_str(" and no usable checkpoint remains"),
    }
    Ok(CliError::unmet(text))
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
