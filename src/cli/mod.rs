//! The command-line front ends: `volmgr serve` ([`serve`]), `volmgr volume`
//! ([`volume`], a client of a running agent) and `volmgr journal`
//! ([`journal`], the offline journal tool). `src/bin/volmgr.rs` parses the
//! flags with clap and calls each module's `run`, which returns the exit code.
//!
//! Exit codes: one table for every subcommand (the constants below; each
//! subcommand's `--help` ends with the rows that apply, the README has the
//! whole table once).
//!
//! Output rules: results on stdout, diagnostics and progress on stderr;
//! tables are aligned only when stdout is a terminal (tab-separated without a
//! header otherwise); `--json` for scripts; a closed stdout (`| head`) is a
//! clean exit.

use std::io::{self, IsTerminal, Write};

pub mod journal;
pub mod log_sink;
pub mod serve;
mod state_lock;
pub mod volume;

/// Success.
pub const EXIT_OK: i32 = 0;
/// The operation failed (the agent refused or failed it, or a local error).
pub const EXIT_FAILURE: i32 = 1;
/// Bad usage: flags, arguments, configuration (clap uses 2 as well).
pub const EXIT_USAGE: i32 = 2;
/// The agent cannot be reached, or answers 503 (starting, stopping, a
/// provider or the journal unavailable).
pub const EXIT_UNAVAILABLE: i32 = 3;
/// The volume (or provider) does not exist: HTTP 404.
pub const EXIT_NOT_FOUND: i32 = 4;
/// Conflict with the current state (exists, has dependents, busy, wrong
/// kind, lost): HTTP 409.
pub const EXIT_CONFLICT: i32 = 5;
/// `journal`: the only problem is a torn tail (opening truncates it).
pub const EXIT_TORN_TAIL: i32 = 6;
/// `journal`: corruption found.
pub const EXIT_CORRUPT: i32 = 7;

/// Writes `text` to stdout; a closed pipe is not an error.
pub fn print_stdout(text: &str) -> i32 {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln_safe(&format!("volmgr: writing to stdout: {e}"));
            EXIT_FAILURE
        }
    }
}

/// Writes a line to stderr, ignoring failures (nowhere left to report them).
pub fn eprintln_safe(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Whether stdout is a terminal (aligned tables) or a pipe (plain lines).
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// Renders rows as a table: aligned with a header on a terminal, else
/// tab-separated without a header.
pub fn table(header: &[&str], rows: &[Vec<String>], aligned: bool) -> String {
    let mut out = String::new();
    if !aligned {
        for row in rows {
            out.push_str(&row.join("\t"));
            out.push('\n');
        }
        return out;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Parses repeated `KEY=VALUE` flags into a map; a key given twice is
/// refused (which value was meant cannot be known).
pub fn key_values(
    pairs: &[String],
    flag: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut map = std::collections::BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{flag} {pair:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("{flag} {pair:?}: empty key"));
        }
        if let Some(first) = map.insert(k.to_owned(), v.to_owned()) {
            return Err(format!(
                "{flag} {k:?} given twice ({first:?} and {v:?}): give each key once"
            ));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_a_terminal_and_are_tab_separated_otherwise() {
        let rows = vec![
            vec!["a".to_owned(), "data".to_owned()],
            vec!["long-id".to_owned(), "snapshot".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "KIND"], &rows, true),
            "ID       KIND\na        data\nlong-id  snapshot\n"
        );
        assert_eq!(
            table(&["ID", "KIND"], &rows, false),
            "a\tdata\nlong-id\tsnapshot\n"
        );
    }

    #[test]
    fn key_value_flags_need_an_equals_sign_and_a_key() {
        assert_eq!(
            key_values(&["a=b=c".into(), "x=".into()], "--meta").unwrap(),
            [("a".into(), "b=c".into()), ("x".into(), String::new())]
                .into_iter()
                .collect()
        );
        assert!(key_values(&["novalue".into()], "--meta").is_err());
        assert!(key_values(&["=v".into()], "--meta").is_err());
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_both_values() {
        let err = key_values(&["a=b".into(), "c=d".into(), "a=e".into()], "--meta").unwrap_err();
        assert_eq!(
            err,
            r#"--meta "a" given twice ("b" and "e"): give each key once"#
        );
    }
}
