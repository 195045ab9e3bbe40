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
use crate::agent::api::{PullResponse, VolumeInfo};
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

/// Arguments of `volmgr volume`.
#[derive(Args, Debug)]
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
    Destroy { id: String },
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

fn meta_text(meta: &std::collections::BTreeMap<String, String>) -> String {
    meta.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn list_rows(volumes: &[VolumeInfo]) -> Vec<Vec<String>> {
    volumes
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.kind.to_string(),
                v.provider.clone(),
                v.parent.clone().unwrap_or_else(|| "-".into()),
                v.status.to_string(),
                v.created_at.clone(),
                v.location.clone(),
            ]
        })
        .collect()
}

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
        ("meta", meta_text(&v.meta)),
    ]
    .into_iter()
    .chain(
        v.details
            .iter()
            .map(|(k, val)| ("detail", format!("{k}={val}"))),
    )
    .map(|(k, val)| vec![format!("{k}:"), val])
    .collect();
    // A key-value listing is aligned whatever stdout is.
    let text = table(&["", ""], &rows, true);
    text.lines().skip(1).map(|l| format!("{l}\n")).collect()
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
            Ok(list) => print_stdout(&table(
                &[
                    "ID", "KIND", "PROVIDER", "PARENT", "STATUS", "CREATED", "LOCATION",
                ],
                &list_rows(&list),
                stdout_is_terminal(),
            )),
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
        VolumeCommand::Destroy { id } => match client.destroy(&id).await {
            Ok(()) => EXIT_OK,
            Err(e) => fail(&e),
        },
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

async fn pull(
    client: &Client,
    json: bool,
    target: &str,
    from: PullFrom<'_>,
    snapshot: &str,
) -> i32 {
    let result = if io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} pulling {msg}: {bytes} ({bytes_per_sec}, {elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(snapshot.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        let result = client
            .pull_with_progress(target, from, snapshot, |bytes| bar.set_position(bytes))
            .await;
        match &result {
            Ok(_) => bar.finish(),
            Err(_) => bar.abandon(),
        }
        result
    } else {
        client.pull(target, from, snapshot).await
    };
    match result {
        Ok(done) => print_pulled(&done, json),
        Err(e) => fail(&e),
    }
}

fn print_pulled(done: &PullResponse, json: bool) -> i32 {
    if json {
        return print_stdout(&json_line(done));
    }
    if io::stderr().is_terminal() {
        eprintln_safe(&format!(
            "received {} bytes into snapshot {}",
            done.bytes, done.snapshot.id
        ));
    }
    print_stdout(&format!("{}\n", done.snapshot.id))
}
