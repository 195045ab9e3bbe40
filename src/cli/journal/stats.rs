//! `volmgr journal stats`: records and bytes per kind, segments, checkpoints,
//! first and last record, and the replayed state's volumes and pending intents.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use crate::state::{
    KIND_INTENT, KIND_OUTCOME, KIND_RECONCILED, VolumeKind, VolumeStatus, kind_name,
};

use super::dump::torn_note;
use super::render::{Out, rfc3339_ms};
use super::scan::{self, Flow, Item, ProblemKind, ReadOnlyStorage, Replayer};
use super::{CliError, EXIT_CORRUPT, EXIT_OK, Format, StatsArgs};

#[derive(Default)]
struct Kind {
    records: u64,
    bytes: u64,
}

pub(super) fn run(args: &StatsArgs, out: &mut Out) -> Result<i32, CliError> {
    let state_dir = args.state_dir.as_path();
    scan::check_state_dir(state_dir)?;
    let storage = ReadOnlyStorage;
    // Checkpoints newest first, one decoded at a time; the first whose bytes
    // check is the one opening replays from, and the only one kept.
    let mut checkpoints: Vec<(u64, String, u64, Option<String>)> = Vec::new();
    let mut base: Option<scan::Base> = None;
    scan::each_checkpoint(&storage, state_dir, |c| {
        checkpoints.push((c.seq, c.file, c.size, c.state.as_ref().err().cloned()));
        if c.bytes_ok && base.is_none() {
            base = Some((c.seq, c.state));
        }
        Ok(())
    })?;
    checkpoints.reverse();
    let base_seq = base.as_ref().map(|(seq, _)| *seq);
    let (mut replayer, replay_error) = match base {
        Some((seq, Ok(state))) => (Some(Replayer::new(Some((seq, state)), None)), None),
        Some((_, Err(why))) => (None, Some(why)),
        None => (Some(Replayer::new(None, None)), None),
    };

    let mut kinds: BTreeMap<u8, Kind> = [KIND_INTENT, KIND_OUTCOME, KIND_RECONCILED]
        .into_iter()
        .map(|k| (k, Kind::default()))
        .collect();
    let mut first: Option<(u64, u64)> = None;
    let mut last: Option<(u64, u64)> = None;
    let mut records = 0u64;
    let (mut file_bytes, mut used_bytes) = (0u64, 0u64);
    let end = scan::scan(
        &storage,
        state_dir,
        &scan::all(base_seq, false),
        &mut |item| {
            match item {
                Item::Record(found) => {
                    records += 1;
                    let k = kinds.entry(found.kind).or_default();
                    k.records += 1;
                    k.bytes += found.frame_len;
                    let at = (found.seq, found.record.at_ms());
                    first.get_or_insert(at);
                    last = Some(at);
                    if found.replayable
                        && let Some(r) = replayer.as_mut()
                    {
                        r.feed(found.seq, &found.record);
                    }
                }
                Item::SegmentDone(seg) => {
                    file_bytes += seg.file_len;
                    used_bytes += seg.used;
                }
                Item::Problem(_) | Item::Resumed { .. } | Item::NothingValidAfter { .. } => {}
            }
            Ok(Flow::Continue)
        },
    )?;
    let replay_failed = replayer
        .as_ref()
        .and_then(|r| r.failed.as_ref().map(std::string::ToString::to_string));
    let corrupt = end.corrupt > 0
        || replay_failed.is_some()
        || replay_error.is_some()
        || checkpoints.iter().any(|c| c.3.is_some());
    let code = if corrupt { EXIT_CORRUPT } else { EXIT_OK };
    let torn = end.torn();

    let end_text = match (&end.first_corrupt, &torn) {
        (Some(p), _) => format!("CORRUPT at {}: {}", p.position(), p.reason),
        (None, Some(p)) => torn_note(p),
        (None, None) => "clean".to_owned(),
    };
    let checkpoint_text = if checkpoints.is_empty() {
        "none".to_owned()
    } else {
        let list: Vec<String> = checkpoints
            .iter()
            .map(|(seq, _, _, error)| match error {
                None => format!("seq {seq} ok"),
                Some(why) => format!("seq {seq} CORRUPT ({why})"),
            })
            .collect();
        format!("{}: {}", checkpoints.len(), list.join(", "))
    };

    if args.output.format == Format::Json {
        let state = match (&replayer, &replay_error) {
            (Some(r), _) => {
                let s = &r.state;
                let count = |f: &dyn Fn(&crate::state::Volume) -> bool| {
                    s.volumes.values().filter(|v| f(v)).count()
                };
                json!({
                    "seq": s.seq,
                    "from_checkpoint": r.base,
                    "replayed_records": r.applied,
                    "providers": s.providers.len(),
                    "volumes": s.volumes.len(),
                    "live": count(&|v| v.status == VolumeStatus::Live),
                    "lost": count(&|v| v.status == VolumeStatus::Lost),
                    "data": count(&|v| v.kind == VolumeKind::Data),
                    "snapshots": count(&|v| v.kind == VolumeKind::Snapshot),
                    "pending": s.pending.len(),
                    "orphans": s.orphans.len(),
                    "error": replay_failed,
                })
            }
            (None, error) => json!({ "error": error }),
        };
        let end_json = match (&end.first_corrupt, &torn) {
            (Some(p), _) => json!({
                "status": "corrupt", "segment": p.file, "offset": p.offset, "reason": p.reason,
            }),
            (None, Some(p)) => json!({
                "status": "torn-tail", "segment": p.file, "offset": p.offset, "reason": p.reason,
                "bytes": match p.kind { ProblemKind::TornTail { len } => len, ProblemKind::Corrupt => 0 },
            }),
            (None, None) => json!({ "status": "clean" }),
        };
        let point = |p: Option<(u64, u64)>| {
            p.map(|(seq, at)| json!({ "seq": seq, "time": rfc3339_ms(at) }))
        };
        let value = json!({
            "segments": { "count": end.segments, "bytes": file_bytes, "used": used_bytes },
            "checkpoints": checkpoints.iter().map(|(seq, file, size, error)| json!({
                "seq": seq,
                "file": file,
                "bytes": size,
                "error": error,
            })).collect::<Vec<_>>(),
            "records": records,
            "first": point(first),
            "last": point(last),
            "end": end_json,
            "kinds": kinds.iter().map(|(k, v)| (kind_name(*k).to_owned(), json!({
                "records": v.records, "bytes": v.bytes,
            }))).collect::<serde_json::Map<_, _>>(),
            "state": state,
        });
        out.line(&value.to_string())?;
        return Ok(code);
    }

    let when = |p: Option<(u64, u64)>| match p {
        Some((seq, at)) => format!("seq {seq} at {}", rfc3339_ms(at)),
        None => "-".to_owned(),
    };
    let kv = |k: &str, v: String| vec![k.to_owned(), v];
    let mut rows = vec![
        kv(
            "segments",
            format!(
                "{} file{}, {file_bytes} bytes, {used_bytes} used",
                end.segments,
                if end.segments == 1 { "" } else { "s" }
            ),
        ),
        kv("checkpoints", checkpoint_text),
        kv(
            "records",
            match (first, last) {
                (Some((a, _)), Some((b, _))) => format!("{records} (seq {a}..{b})"),
                _ => "0".to_owned(),
            },
        ),
        kv("first", when(first)),
        kv("last", when(last)),
        kv("end", end_text),
    ];
    out.table(&rows, &[])?;
    out.line("")?;

    let mut table = vec![vec![
        "KIND".to_owned(),
        "RECORDS".to_owned(),
        "BYTES".to_owned(),
    ]];
    let (mut n, mut b) = (0, 0);
    for (kind, k) in &kinds {
        n += k.records;
        b += k.bytes;
        table.push(vec![
            kind_name(*kind).to_owned(),
            k.records.to_string(),
            k.bytes.to_string(),
        ]);
    }
    table.push(vec!["total".to_owned(), n.to_string(), b.to_string()]);
    out.table(&table, &[1, 2])?;
    out.line("")?;

    rows.clear();
    match (&replayer, &replay_error) {
        (Some(r), _) => {
            let s = &r.state;
            let lost = s
                .volumes
                .values()
                .filter(|v| v.status == VolumeStatus::Lost)
                .count();
            let snapshots = s
                .volumes
                .values()
                .filter(|v| v.kind == VolumeKind::Snapshot)
                .count();
            let mut at = format!("at seq {} ({})", s.seq, r.provenance());
            if let Some(why) = &replay_failed {
                let _ = write!(at, "; replay stopped: {why}");
            }
            rows.push(kv("state", at));
            rows.push(kv("providers", s.providers.len().to_string()));
            rows.push(kv(
                "volumes",
                format!(
                    "{}: {} live, {lost} lost ({} data, {snapshots} snapshot)",
                    s.volumes.len(),
                    s.volumes.len() - lost,
                    s.volumes.len() - snapshots,
                ),
            ));
            rows.push(kv(
                "pending",
                format!(
                    "{} intent{}",
                    s.pending.len(),
                    if s.pending.len() == 1 { "" } else { "s" }
                ),
            ));
            rows.push(kv("orphans", s.orphans.len().to_string()));
        }
        (None, error) => rows.push(kv(
            "state",
            format!("unavailable: {}", error.clone().unwrap_or_default()),
        )),
    }
    out.table(&rows, &[])?;
    Ok(code)
}
