//! Output plumbing and record formatting for the journal tool: a stdout sink
//! that turns a broken pipe into a clean stop, RFC 3339 times, quoting that
//! keeps record contents from injecting control characters into a terminal,
//! column layout, and the one-line summaries of records.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};

use crate::state::{Action, Effect, OpId, OpResult, Record, State};

use super::CliError;

/// Where a subcommand's normal output goes. Every write error is mapped:
/// a broken pipe becomes [`CliError::BrokenPipe`] (a clean exit), anything
/// else an I/O failure.
pub(crate) struct Out {
    inner: BufWriter<Box<dyn Write>>,
    /// Pad columns for a terminal (true) or separate them with one tab.
    pub aligned: bool,
}

impl Out {
    pub(crate) fn new(sink: Box<dyn Write>, aligned: bool) -> Self {
        Out {
            inner: BufWriter::new(sink),
            aligned,
        }
    }

    pub(crate) fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.inner
            .write_all(text.as_bytes())
            .and_then(|()| self.inner.write_all(b"\n"))
            .map_err(CliError::from_write)
    }

    pub(crate) fn flush(&mut self) -> Result<(), CliError> {
        self.inner.flush().map_err(CliError::from_write)
    }

    /// Prints rows as a table: padded columns when aligned, else one tab
    /// between fields. Columns listed in `right` are right-aligned.
    pub(crate) fn table(&mut self, rows: &[Vec<String>], right: &[usize]) -> Result<(), CliError> {
        for line in layout(rows, right, self.aligned) {
            self.line(&line)?;
        }
        Ok(())
    }
}

/// Lays rows out as lines (see [`Out::table`]). Trailing spaces are trimmed.
pub(crate) fn layout(rows: &[Vec<String>], right: &[usize], aligned: bool) -> Vec<String> {
    if !aligned {
        return rows.iter().map(|r| r.join("\t")).collect();
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if right.contains(&i) {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// Writes to stderr, ignoring failure (a closed stderr must not panic).
pub(crate) fn warn(text: &str) {
    let _ = writeln!(io::stderr(), "volmgr journal: {text}");
}

pub use crate::timefmt::rfc3339_ms;

/// A value as it appears in a summary: bare when it is made of safe
/// characters, otherwise quoted with escapes (so control characters in record
/// contents never reach the terminal raw).
pub fn quote(value: &str) -> Cow<'_, str> {
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@+,%".contains(c));
    if safe {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("{value:?}"))
    }
}

fn map(values: &BTreeMap<String, String>) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{}={}", quote(k), quote(v));
    }
    s.push('}');
    s
}

fn push_map(s: &mut String, key: &str, values: &BTreeMap<String, String>) {
    if !values.is_empty() {
        let _ = write!(s, " {key}={}", map(values));
    }
}

/// The volume ids column: comma-separated, `-` when none.
pub(crate) fn volumes_cell(volumes: &[String]) -> String {
    if volumes.is_empty() {
        "-".to_owned()
    } else {
        volumes
            .iter()
            .map(|v| quote(v).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the tool shows about one record besides its position.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub volumes: Vec<String>,
    pub op: Option<OpId>,
    pub summary: String,
}

/// Remembers what each open operation was about, so outcomes (which carry
/// only an op id) can be shown with their action and volumes. Entries leave
/// when the operation finishes, so it holds at most the pending operations
/// plus those whose outcome is missing.
#[derive(Debug, Default)]
pub(crate) struct OpIndex {
    ops: HashMap<OpId, (&'static str, Vec<String>)>,
}

impl OpIndex {
    /// Learns the pending operations of a checkpointed state (their intents
    /// may lie in segments that compaction removed).
    pub(crate) fn seed(&mut self, state: &State) {
        for p in state.pending.values() {
            self.ops
                .insert(p.op, (p.action.name(), owned(p.action.volumes())));
        }
    }

    /// Describes `record` and updates the index; call it for every record
    /// in order, filtered or not. The summary never repeats the record's
    /// kind (its own column): an intent's starts with the action, an
    /// outcome's with its result, a reconciliation's with its case.
    pub(crate) fn describe(&mut self, record: &Record) -> Described {
        match record {
            Record::Intent { op, action, .. } => {
                let volumes = owned(action.volumes());
                self.ops.insert(*op, (action.name(), volumes.clone()));
                Described {
                    volumes,
                    op: Some(*op),
                    summary: action_summary(action),
                }
            }
            Record::Outcome { op, result, .. } => {
                let (name, volumes) = self.finish(op);
                Described {
                    volumes,
                    op: Some(*op),
                    summary: result_summary(result, name),
                }
            }
            Record::Reconciled {
                case,
                detail,
                effect,
                ..
            } => {
                let (volumes, op, what) = match effect {
                    Effect::Resolve { op, result } => {
                        let (name, volumes) = self.finish(op);
                        (
                            volumes,
                            Some(*op),
                            format!("resolve {}", result_summary(result, name)),
                        )
                    }
                    Effect::MarkLost { volume } => (
                        vec![volume.clone()],
                        None,
                        format!("mark-lost vol={}", quote(volume)),
                    ),
                    Effect::MarkFound { volume } => (
                        vec![volume.clone()],
                        None,
                        format!("mark-found vol={}", quote(volume)),
                    ),
                    Effect::NoteOrphan(o) => (
                        vec![o.volume.clone()],
                        None,
                        format!(
                            "note-orphan provider={} vol={} kind={} tagged-op={} location={}",
                            quote(&o.provider),
                            quote(&o.volume),
                            o.kind,
                            o.tagged_op,
                            quote(&o.location)
                        ),
                    ),
                    Effect::ForgetOrphan { provider, volume } => (
                        vec![volume.clone()],
                        None,
                        format!(
                            "forget-orphan provider={} vol={}",
                            quote(provider),
                            quote(volume)
                        ),
                    ),
                };
                let mut summary = format!("case={case} effect={what}");
                if !detail.is_empty() {
                    let _ = write!(summary, " detail={}", quote(detail));
                }
                Described {
                    volumes,
                    op,
                    summary,
                }
            }
        }
    }

    fn finish(&mut self, op: &OpId) -> (Option<&'static str>, Vec<String>) {
        match self.ops.remove(op) {
            Some((name, volumes)) => (Some(name), volumes),
            None => (None, Vec::new()),
        }
    }
}

fn owned(volumes: Vec<&str>) -> Vec<String> {
    volumes.into_iter().map(str::to_owned).collect()
}

fn result_summary(result: &OpResult, action: Option<&str>) -> String {
    let mut s = match result {
        OpResult::Done(done) => {
            let mut s = String::from("done");
            if !done.location.is_empty() {
                let _ = write!(s, " location={}", quote(&done.location));
            }
            push_map(&mut s, "details", &done.details);
            s
        }
        OpResult::Failed { error } => format!("failed error={}", quote(error)),
        OpResult::Suspended { error, token, guid } => format!(
            "suspended guid={} resume_token={} error={}",
            quote(guid),
            quote(token),
            quote(error)
        ),
    };
    if let Some(name) = action {
        let _ = write!(s, " action={name}");
    }
    s
}

/// `create vol=abc provider=default`, and so on for every action.
pub(crate) fn action_summary(action: &Action) -> String {
    let mut s = String::from(action.name());
    match action {
        Action::AddProvider(p) => {
            let _ = write!(s, " id={} kind={}", quote(&p.id), quote(&p.kind));
            push_map(&mut s, "config", &p.config);
        }
        Action::CreateVolume {
            provider,
            volume,
            meta,
        } => {
            let _ = write!(s, " vol={} provider={}", quote(volume), quote(provider));
            push_map(&mut s, "meta", meta);
        }
        Action::DestroyVolume { volume } => {
            let _ = write!(s, " vol={}", quote(volume));
        }
        Action::AbortReceive { target } => {
            let _ = write!(s, " target={}", quote(target));
        }
        Action::CreateSnapshot {
            source,
            snapshot,
            meta,
        } => {
            let _ = write!(s, " source={} snap={}", quote(source), quote(snapshot));
            push_map(&mut s, "meta", meta);
        }
        Action::ForkVolume {
            snapshot,
            volume,
            meta,
        } => {
            let _ = write!(s, " snap={} vol={}", quote(snapshot), quote(volume));
            push_map(&mut s, "meta", meta);
        }
        Action::ReceiveSnapshot {
            target,
            snapshot,
            meta,
        } => {
            let _ = write!(s, " target={} snap={}", quote(target), quote(snapshot));
            push_map(&mut s, "meta", meta);
        }
        Action::AdoptOrphan {
            provider,
            volume,
            kind,
            tagged_op,
        } => {
            let _ = write!(
                s,
                " provider={} vol={} kind={kind} tagged-op={tagged_op}",
                quote(provider),
                quote(volume)
            );
        }
        Action::DestroyOrphan { provider, volume } => {
            let _ = write!(s, " provider={} vol={}", quote(provider), quote(volume));
        }
        Action::SetAttributes {
            volume,
            capacity_bytes,
            options,
        } => {
            let _ = write!(s, " vol={}", quote(volume));
            if let Some(bytes) = capacity_bytes {
                let _ = write!(s, " capacity={bytes}");
            }
            push_map(&mut s, "options", options);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_control_characters_and_spaces() {
        assert_eq!(quote("vol-1"), "vol-1");
        assert_eq!(quote("/srv/v/a"), "/srv/v/a");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("\x1b[31m"), "\"\\u{1b}[31m\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("k=v"), "\"k=v\"");
    }

    #[test]
    fn layout_pads_columns_or_separates_with_tabs() {
        let rows = vec![
            vec!["ID".to_owned(), "N".to_owned(), "X".to_owned()],
            vec!["long-id".to_owned(), "10".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            layout(&rows, &[1], true),
            vec!["ID        N  X", "long-id  10  y"]
        );
        assert_eq!(
            layout(&rows, &[1], false),
            vec!["ID\tN\tX", "long-id\t10\ty"]
        );
    }
}
