//! `volmgr volume ...`: a client of a running agent.
//!
//! The credential: `--token`, `--token-file`, `VOLMGR_TOKEN`, else the
//! agent's own token file `<state-dir>/token` (`--state-dir`, else
//! `VOLMGR_STATE_DIR`, else [`DEFAULT_STATE_DIR`]), readable by the user
//! the agent runs as.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{
    EXIT_CONFLICT, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE,
    eprintln_safe, key_values, print_stdout, stdout_is_terminal, table,
};
use crate::agent::api::{Kind, PullProgress, PullResponse, VolumeInfo};
use crate::agent::client::default_agent_url;
use crate::agent::credential;
use crate::agent::{Client, ClientError, PullFrom};

/// Environment variable naming the agent URL.
pub const ENV_AGENT: &str = "VOLMGR_AGENT";
/// Environment variable holding the bearer token.
pub const ENV_TOKEN: &str = "VOLMGR_TOKEN";
/// Environment variable naming the agent's state directory (its token file).
pub const ENV_STATE_DIR: &str = "VOLMGR_STATE_DIR";
/// Where the CLI looks for the agent's token file by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/volmgr";

/// The end of `volmgr volume --help`: its exit codes (the rows of the
/// common table that apply).
pub const VOLUME_EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the agent refused or failed the request (another 4xx or 5xx: 400 bad input,
     401 no or wrong token, 429, 500, 502, 504), or a local failure
  2  usage: bad flags or arguments, an unreadable token file, a bad agent URL
  3  the agent is unreachable (connection refused, timed out, no such host), or
     answered 503 (starting, stopping, provider or journal unavailable, too many)
  4  not found (404)
  5  conflict (409: exists, has dependents, busy, wrong kind, lost, a pulled
     stream that does not fit its target; destroy --recursive refused because
     forks depend on a snapshot)";

/// Arguments of `volmgr volume`.
// The field docs are the `--help` text, written for a terminal: no
// Markdown backticks or angle brackets.
#[allow(clippy::doc_markdown)]
#[derive(Args, Debug)]
#[command(after_help = VOLUME_EXIT_CODES)]
pub struct VolumeArgs {
    /// Base URL of the agent [env: VOLMGR_AGENT] [default: http://127.0.0.1:1113]
    #[arg(long, global = true, value_name = "URL")]
    pub agent: Option<String>,
    /// Bearer token [env: VOLMGR_TOKEN]
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The agent's state directory, whose `token` file is read when no other token is
    /// given [env: VOLMGR_STATE_DIR] [default: /var/lib/volmgr]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print JSON (the API's objects) instead of tables and ids
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a data volume; prints its id
    Create {
        /// Provider to create it on
        #[arg(long, default_value = "default")]
        provider: String,
        /// Id of the new volume (a UUID when absent)
        #[arg(long)]
        id: Option<String>,
        /// Metadata entry (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Capacity to enforce: bytes, or with a K/M/G/T suffix (zfs, btrfs)
        #[arg(long, value_name = "SIZE", value_parser = parse_capacity)]
        capacity: Option<u64>,
    },
    /// List volumes and snapshots
    List,
    /// Show one volume
    Inspect { id: String },
    /// Snapshot a data volume; prints the snapshot's id
    Snapshot {
        id: String,
        /// Metadata entry (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Make a writable volume from a snapshot; prints its id
    Fork {
        snapshot: String,
        /// Id of the new volume (a UUID when absent)
        #[arg(long)]
        id: Option<String>,
        /// Metadata entry (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Destroy a volume or snapshot (refused while it has dependents)
    Destroy {
        id: String,
        /// Also destroy the volume's snapshots first (refused, naming them, if forks
        /// depend on one)
        #[arg(long, short = 'r')]
        recursive: bool,
    },
    /// Discard the partial receive a data volume keeps after an interrupted
    /// pull (ZFS), instead of resuming it
    AbortReceive { id: String },
    /// Pull a snapshot from another agent into data volume TARGET; prints
    /// the new snapshot's id
    Pull {
        /// Data volume on this agent that receives the snapshot
        target: String,
        /// Host id of the agent that has the snapshot (a peer of this agent)
        #[arg(
            long,
            value_name = "HOST_ID",
            required_unless_present = "source",
            conflicts_with = "source"
        )]
        host: Option<String>,
        /// Base URL of the agent that has the snapshot (a peer's, or any if the agent
        /// allows arbitrary sources)
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// The snapshot's id on the source agent
        #[arg(long, value_name = "ID")]
        snapshot: String,
    },
}

/// Runs `volmgr volume`; returns the exit code (see [`super`]).
pub fn run(args: VolumeArgs) -> i32 {
    let token = match token(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln_safe(&format!("volmgr volume: {e}"));
            return EXIT_USAGE;
        }
    };
    let agent = args
        .agent
        .clone()
        .or_else(|| std::env::var(ENV_AGENT).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(default_agent_url);
    let client = match Client::new(&agent, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln_safe(&format!("volmgr volume: {e}"));
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln_safe(&format!("volmgr volume: cannot start a runtime: {e}"));
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(execute(&client, args.json, args.command))
}

fn token(args: &VolumeArgs) -> Result<Option<String>, String> {
    if let Some(t) = &args.token {
        return Ok(Some(t.clone()));
    }
    if let Some(path) = &args.token_file {
        return credential::read_token_file(path)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    if let Some(t) = std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    let (dir, explicit) = state_dir(args);
    match credential::read_token_file(&credential::token_path(&dir)) {
        Ok(t) => Ok(Some(t)),
        // An agent without a token file (another token source, or
        // --insecure-no-auth), or a user who may not read it: the agent
        // says whether it wants a token (401).
        Err(_) if !explicit => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The agent's state directory, and whether the user named it.
fn state_dir(args: &VolumeArgs) -> (PathBuf, bool) {
    if let Some(dir) = &args.state_dir {
        return (dir.clone(), true);
    }
    match std::env::var(ENV_STATE_DIR).ok().filter(|d| !d.is_empty()) {
        Some(dir) => (PathBuf::from(dir), true),
        None => (PathBuf::from(DEFAULT_STATE_DIR), false),
    }
}

/// The exit code of a failed request; prints the error.
fn fail(e: &ClientError) -> i32 {
    eprintln_safe(&format!("volmgr volume: {e}"));
    if e.status() == Some(401) {
        eprintln_safe(&format!(
            "volmgr volume: the agent wants its token: the CLI reads <state-dir>/token \
             (--state-dir, {ENV_STATE_DIR}, default {DEFAULT_STATE_DIR}; readable by the \
             agent's user only), or pass --token-file or {ENV_TOKEN}"
        ));
    }
    match e {
        ClientError::Api { status: 404, .. } => EXIT_NOT_FOUND,
        ClientError::Api { status: 409, .. } => EXIT_CONFLICT,
        ClientError::Api { status: 503, .. } | ClientError::Unreachable(_) => EXIT_UNAVAILABLE,
        ClientError::Invalid(_) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

fn json_line<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// A new volume: its id, or its JSON.
fn print_created(v: &VolumeInfo, json: bool) -> i32 {
    if json {
        print_stdout(&json_line(v))
    } else {
        print_stdout(&format!("{}\n", v.id))
    }
}

/// A metadata value as a JSON string (quotes, escapes): unambiguous
/// whatever it holds (spaces, commas, `=`, quotes, nothing).
fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

/// Metadata in one cell: `key=value` pairs joined by `,`, a value quoted
/// unless it is plain (letters, digits, `._:/@+-`); `-` for none. Keys
/// cannot hold `=` or `,` (the agent refuses them), so the cell parses back.
fn meta_text(meta: &std::collections::BTreeMap<String, String>) -> String {
    if meta.is_empty() {
        return "-".into();
    }
    let plain = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:/@+-".contains(c))
    };
    meta.iter()
        .map(|(k, v)| {
            if plain(v) {
                format!("{k}={v}")
            } else {
                format!("{k}={}", quoted(v))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Volumes in listing order: each data volume (oldest first), then its
/// snapshots (oldest first). Snapshots whose volume is not listed come last.
fn listing_order(volumes: &[VolumeInfo]) -> Vec<&VolumeInfo> {
    let by_age = |a: &&VolumeInfo, b: &&VolumeInfo| {
        (a.created_at.as_str(), a.id.as_str()).cmp(&(b.created_at.as_str(), b.id.as_str()))
    };
    let mut data: Vec<&VolumeInfo> = volumes.iter().filter(|v| v.kind == Kind::Data).collect();
    data.sort_by(by_age);
    let mut snapshots: Vec<&VolumeInfo> = volumes
        .iter()
        .filter(|v| v.kind == Kind::Snapshot)
        .collect();
    snapshots.sort_by(by_age);
    let mut ordered = Vec::with_capacity(volumes.len());
    for v in data {
        ordered.push(v);
        ordered.extend(
            snapshots
                .iter()
                .filter(|s| s.parent.as_deref() == Some(v.id.as_str())),
        );
    }
    let unlisted: Vec<&VolumeInfo> = snapshots
        .into_iter()
        .filter(|s| !ordered.iter().any(|o| o.id == s.id))
        .collect();
    ordered.extend(unlisted);
    ordered
}

/// Rows of `volume list`: grouped (see [`listing_order`]); on a terminal a
/// snapshot's id is indented under its volume's.
fn list_rows(volumes: &[VolumeInfo], aligned: bool) -> Vec<Vec<String>> {
    listing_order(volumes)
        .into_iter()
        .map(|v| {
            let id = if aligned && v.kind == Kind::Snapshot {
                format!("  {}", v.id)
            } else {
                v.id.clone()
            };
            vec![
                id,
                v.kind.to_string(),
                v.provider.clone(),
                v.parent.clone().unwrap_or_else(|| "-".into()),
                v.status.to_string(),
                v.created_at.clone(),
                meta_text(&v.meta),
                v.location.clone(),
            ]
        })
        .collect()
}

/// `volume list`'s columns.
const LIST_HEADER: [&str; 8] = [
    "ID", "KIND", "PROVIDER", "PARENT", "STATUS", "CREATED", "META", "LOCATION",
];

/// A capacity: bytes, or with a K/M/G/T suffix (powers of 1024); not 0.
fn parse_capacity(s: &str) -> Result<u64, String> {
    match crate::provider::zfs::parse_size(s) {
        Some(0) | None => Err(format!(
            "{s:?} is not a capacity (bytes, or a number with K, M, G or T)"
        )),
        Some(n) => Ok(n),
    }
}

fn inspect_text(v: &VolumeInfo) -> String {
    let meta: Vec<(&str, String)> = if v.meta.is_empty() {
        vec![("meta", "-".into())]
    } else {
        v.meta
            .iter()
            .map(|(k, val)| ("meta", format!("{k}={}", quoted(val))))
            .collect()
    };
    let rows: Vec<Vec<String>> = [
        ("id", v.id.clone()),
        ("kind", v.kind.to_string()),
        ("provider", v.provider.clone()),
        ("parent", v.parent.clone().unwrap_or_else(|| "-".into())),
        ("status", v.status.to_string()),
        ("created_at", v.created_at.clone()),
        ("location", v.location.clone()),
        (
            "capacity",
            v.capacity_bytes
                .map_or_else(|| "-".into(), |c| c.to_string()),
        ),
    ]
    .into_iter()
    .chain(meta)
    .chain(
        v.details
            .iter()
            .map(|(k, val)| ("detail", format!("{k}={}", quoted(val)))),
    )
    .map(|(k, val)| vec![format!("{k}:"), val])
    .collect();
    // A key-value listing is aligned whatever stdout is.
    let text = table(&["", ""], &rows, true);
    text.lines().skip(1).flat_map(|l| [l, "\n"]).collect()
}

async fn execute(client: &Client, json: bool, command: VolumeCommand) -> i32 {
    let meta = |pairs: &[String]| key_values(pairs, "--meta");
    match command {
        VolumeCommand::Create {
            provider,
            id,
            meta: m,
            capacity,
        } => {
            let m = match meta(&m) {
                Ok(m) => m,
                Err(e) => return usage(&e),
            };
            match client
                .create_volume_sized(&provider, id.as_deref(), m, capacity)
                .await
            {
                Ok(v) => print_created(&v, json),
                Err(e) => fail(&e),
            }
        }
        VolumeCommand::List => match client.list().await {
            Ok(list) if json => print_stdout(&json_line(&list)),
            Ok(list) => {
                let aligned = stdout_is_terminal();
                print_stdout(&table(&LIST_HEADER, &list_rows(&list, aligned), aligned))
            }
            Err(e) => fail(&e),
        },
        VolumeCommand::Inspect { id } => match client.get(&id).await {
            Ok(v) if json => print_stdout(&json_line(&v)),
            Ok(v) => print_stdout(&inspect_text(&v)),
            Err(e) => fail(&e),
        },
        VolumeCommand::Snapshot { id, meta: m } => {
            let m = match meta(&m) {
                Ok(m) => m,
                Err(e) => return usage(&e),
            };
            match client.snapshot(&id, m).await {
                Ok(v) => print_created(&v, json),
                Err(e) => fail(&e),
            }
        }
        VolumeCommand::Fork {
            snapshot,
            id,
            meta: m,
        } => {
            let m = match meta(&m) {
                Ok(m) => m,
                Err(e) => return usage(&e),
            };
            match client.fork(&snapshot, id.as_deref(), m).await {
                Ok(v) => print_created(&v, json),
                Err(e) => fail(&e),
            }
        }
        VolumeCommand::Destroy {
            id,
            recursive: false,
        } => match client.destroy(&id).await {
            Ok(()) => EXIT_OK,
            Err(e) => fail(&e),
        },
        VolumeCommand::Destroy {
            id,
            recursive: true,
        } => destroy_recursive(client, &id).await,
        VolumeCommand::AbortReceive { id } => match client.abort_receive(&id).await {
            Ok(()) => EXIT_OK,
            Err(e) => fail(&e),
        },
        VolumeCommand::Pull {
            target,
            host,
            source,
            snapshot,
        } => {
            let from = match (&host, &source) {
                (Some(h), _) => PullFrom::Host(h),
                (None, Some(u)) => PullFrom::Url(u),
                (None, None) => return usage("pull needs --host HOST_ID or --source URL"),
            };
            pull(client, json, &target, from, &snapshot).await
        }
    }
}

fn usage(e: &str) -> i32 {
    eprintln_safe(&format!("volmgr volume: {e}"));
    EXIT_USAGE
}

/// What `destroy --recursive ID` destroys, in order: the snapshots of `id`
/// (newest first), then `id`. Refused, naming them, if forks depend on any
/// of those snapshots (or on `id` itself, a snapshot).
fn destroy_plan(volumes: &[VolumeInfo], id: &str) -> Result<Vec<String>, String> {
    let Some(target) = volumes.iter().find(|v| v.id == id) else {
        return Ok(vec![id.to_owned()]);
    };
    let mut doomed: Vec<&VolumeInfo> = volumes
        .iter()
        .filter(|v| v.kind == Kind::Snapshot && v.parent.as_deref() == Some(id))
        .collect();
    doomed.sort_by(|a, b| {
        (b.created_at.as_str(), b.id.as_str()).cmp(&(a.created_at.as_str(), a.id.as_str()))
    });
    doomed.push(target);
    let forks: Vec<String> = doomed
        .iter()
        .filter(|s| s.kind == Kind::Snapshot)
        .flat_map(|s| {
            volumes
                .iter()
                .filter(|f| f.kind == Kind::Data && f.parent.as_deref() == Some(s.id.as_str()))
                .map(move |f| format!("{} (fork of snapshot {})", f.id, s.id))
        })
        .collect();
    if !forks.is_empty() {
        return Err(format!(
            "not destroying {id}: forks depend on its snapshots: {}; destroy them first",
            forks.join(", ")
        ));
    }
    Ok(doomed.into_iter().map(|v| v.id.clone()).collect())
}

async fn destroy_recursive(client: &Client, id: &str) -> i32 {
    let volumes = match client.list().await {
        Ok(list) => list,
        Err(e) => return fail(&e),
    };
    let plan = match destroy_plan(&volumes, id) {
        Ok(plan) => plan,
        Err(why) => {
            eprintln_safe(&format!("volmgr volume: {why}"));
            return EXIT_CONFLICT;
        }
    };
    for victim in &plan {
        if let Err(e) = client.destroy(victim).await {
            eprintln_safe(&format!("volmgr volume: destroying {victim}:"));
            return fail(&e);
        }
        if victim != id {
            eprintln_safe(&format!("destroyed snapshot {victim}"));
        }
    }
    EXIT_OK
}

async fn pull(
    client: &Client,
    json: bool,
    target: &str,
    from: PullFrom<'_>,
    snapshot: &str,
) -> i32 {
    let result = if io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(progress_style(None));
        bar.set_message(snapshot.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        let mut sized = false;
        let result = client
            .pull_with_progress(target, from, snapshot, |p: PullProgress| {
                if let (Some(total), false) = (p.total, sized) {
                    sized = true;
                    bar.set_length(total);
                    bar.set_style(progress_style(Some(total)));
                }
                // An announced size is a hint: never past it before the end.
                bar.set_position(p.total.map_or(p.bytes, |t| p.bytes.min(t)));
            })
            .await;
        // The line ends before anything else is printed.
        bar.finish_and_clear();
        result
    } else {
        client.pull(target, from, snapshot).await
    };
    match result {
        Ok(done) => print_pulled(&done, json),
        Err(e) => fail(&e),
    }
}

/// The progress line: bytes, rate and elapsed time; with the stream's size
/// (when the source announced it) the total, a percentage and a bar.
fn progress_style(total: Option<u64>) -> indicatif::ProgressStyle {
    let template = match total {
        Some(_) => {
            "{spinner} pulling {msg}: {bytes}/{total_bytes} ({percent}%) [{bar:20}] \
             {bytes_per_sec}, {elapsed}"
        }
        None => "{spinner} pulling {msg}: {bytes} ({bytes_per_sec}, {elapsed})",
    };
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn print_pulled(done: &PullResponse, json: bool) -> i32 {
    if json {
        return print_stdout(&json_line(done));
    }
    if io::stderr().is_terminal() {
        eprintln_safe(&format!(
            "received {} bytes into snapshot {}{}",
            done.bytes,
            done.snapshot.id,
            if done.resumed { " (resumed)" } else { "" }
        ));
    }
    print_stdout(&format!("{}\n", done.snapshot.id))
}
