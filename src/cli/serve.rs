//! `volmgr serve`: the host agent.
//!
//! Credential: `--token-file`, else `VOLMGR_TOKEN`, else `<state-dir>/token`
//! (generated on first start, mode 0600). `--insecure-no-auth` serves
//! without one (loopback only), with a warning at every start. Peers
//! (`--peer HOST_ID=URL`, `--peers-file`) are the agents pulls may come
//! from and the only ones that get the credential.
//!
//! Takes the state directory's lock, then binds the listener (requests get
//! 503 `starting` while the manager opens, replays and reconciles), logs the
//! reconciliation report, serves until SIGINT or SIGTERM, then drains
//! in-flight requests (transfers still running after `--shutdown-grace`
//! are cancelled) and closes the journal. A second signal exits at once
//! (the journal is consistent at any instant; only the requests in flight
//! are lost).
//!
//! Every limit on what clients and peers may hold has a flag (the
//! "Limits" heading of `--help`; defaults in [`Limits::default`]). A fatal
//! error is reported once: a `volmgr serve: ...` line with text logs, an
//! ERROR log line with JSON logs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, eprintln_safe, key_values, log_sink, state_lock};
use crate::agent::credential::{self, CredentialError};
use crate::agent::limits::{parse_bytes, parse_duration};
use crate::agent::peers::MAX_PEERS_FILE_BYTES;
use crate::agent::{Agent, DEFAULT_LISTEN, Limits, Peers, ServeOptions};
use crate::csi::{CsiOptions, CsiServer};
use crate::manager::{DEFAULT_PROVIDER_ID, Manager, ManagerConfig, ReconcileReport};
use crate::provider::ProviderConfig;
use crate::storage::{RealStorage, Storage};

/// Environment variable holding the bearer token (when no `--token-file`).
pub const ENV_TOKEN: &str = "VOLMGR_TOKEN";
/// Kind of the default provider when no provider option is given.
pub const DEFAULT_PROVIDER_KIND: &str = "dir";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The end of `volmgr serve --help`: its exit codes (the rows of the
/// common table that apply).
pub const SERVE_EXIT_CODES: &str = "\
Exit codes:
  0  clean shutdown (SIGINT or SIGTERM)
  1  could not start (the state directory is locked by another agent, cannot be
     opened, or another user could change it; its token file is exposed; the address
     cannot be bound), or serving failed
  2  usage: bad flags or arguments (e.g. --listen not HOST:PORT, a zero limit), an
     unreadable token file, a bad --peer or peers file, --insecure-no-auth on a
     non-loopback address";

/// Arguments of `volmgr serve`.
// The field docs are the `--help` text, written for a terminal: rustdoc's
// HTML and Markdown readings of them (`<state-dir>`, backticks) are not
// wanted there.
#[allow(rustdoc::invalid_html_tags, clippy::doc_markdown)]
#[derive(Args, Debug)]
#[command(after_help = SERVE_EXIT_CODES)]
pub struct ServeArgs {
    /// State directory (journal, checkpoints, lock; `volumes/` for the
    /// default directory provider). Created if missing.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Address to listen on
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN, value_parser = listen_address)]
    pub listen: String,
    /// File holding the token every request must carry (readable by its owner only, in a
    /// directory only root can write) [else env: VOLMGR_TOKEN, else <state-dir>/token,
    /// generated on first start with mode 0600]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve without a token (loopback only; any local process can then drive the agent,
    /// which runs as root). Logs a warning at every start.
    #[arg(long, conflicts_with = "token_file")]
    pub insecure_no_auth: bool,
    /// An agent this one may pull from and present its token to (repeatable); a pull's
    /// `host_id` names it
    #[arg(long = "peer", value_name = "HOST_ID=URL")]
    pub peers: Vec<String>,
    /// File of peers: one HOST_ID=URL a line, `#` comments (writable by its owner only, in a
    /// directory only root can write)
    #[arg(long, value_name = "FILE")]
    pub peers_file: Option<PathBuf>,
    /// Also pull from a `source` URL that is not a configured peer (it never gets the token)
    #[arg(long)]
    pub allow_any_source: bool,
    /// Experimental: creates and destroys on a batched provider (dir, btrfs) share one journal
    /// commit and one provider round a cycle (fewer flushes; not faster on every disk: README,
    /// "The write cycle")
    #[arg(long)]
    pub write_cycle: bool,
    /// Log format (on stderr; filter with RUST_LOG)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Kind of the default provider registered on first start [default: dir]
    #[arg(long, value_name = "KIND")]
    pub provider_kind: Option<String>,
    /// Configuration of the default provider (repeatable) [default for dir: root=<state-dir>/volumes]
    #[arg(long, value_name = "KEY=VALUE", requires = "provider_kind")]
    pub provider_config: Vec<String>,
    /// Also serve the CSI plugin (Identity, Controller, Node) on this unix
    /// socket (mode 0600, in a directory only root can write), e.g. unix:///run/volmgr/csi.sock
    #[arg(long, value_name = "ENDPOINT")]
    pub csi_endpoint: Option<String>,
    /// The CSI node id (topology) [default: the host name]
    #[arg(long, value_name = "NAME", requires = "csi_endpoint")]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The limits on what clients and peers may hold (see [`Limits`]). The
/// defaults here are [`Limits::default`]'s (a test checks they agree).
/// Durations take `ms`, `s`, `m` or `h`.
// The field docs are the `--help` text (no Markdown: see `ServeArgs`).
#[allow(clippy::doc_markdown)]
#[derive(Args, Debug)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Open connections at most; at the cap, the connection idle the longest is closed for
    /// a new one
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_connections: usize,
    /// Time for a request head (and a JSON body) from its first byte
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A connection without a request in flight is closed after this
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A response write without progress this long (a client that stopped reading)
    /// closes the connection
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Snapshot sends served at once (more: 503 too_many_sends)
    #[arg(long, value_name = "N", default_value = "16")]
    pub max_sends: usize,
    /// Snapshot sends served at once to one client address (more: 429 too_many_sends)
    #[arg(long, value_name = "N", default_value = "4")]
    pub max_sends_per_client: usize,
    /// Pulls running at once (more: 503 too_many_pulls)
    #[arg(long, value_name = "N", default_value = "16")]
    pub max_pulls: usize,
    /// Volume event-stream subscribers at once (more: 503 too_many_subscribers)
    #[arg(long, value_name = "N", default_value = "128")]
    pub max_subscribers: usize,
    /// A pull receiving fewer bytes per second than this over a stall window is stopped
    /// (504 transfer_stalled); 0 disables the check
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = parse_bytes)]
    pub pull_min_rate: u64,
    /// The window of --pull-min-rate (also the longest wait for a source's answer)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub pull_stall_window: Duration,
    /// A pull still running this long after it started is stopped (504 transfer_deadline)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub pull_deadline: Duration,
    /// On shutdown, transfers still running after this are cancelled (their outcome is
    /// journaled) and the connections still open are closed
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            max_sends: self.max_sends,
            max_sends_per_client: self.max_sends_per_client,
            max_pulls: self.max_pulls,
            max_subscribers: self.max_subscribers,
            pull_min_rate: self.pull_min_rate,
            pull_stall_window: self.pull_stall_window,
            pull_deadline: self.pull_deadline,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// `--listen`: HOST:PORT (a name, an IPv4 address, or an IPv6 address in
/// brackets; port 0 picks a free one).
fn listen_address(text: &str) -> Result<String, String> {
    let expected = "expected HOST:PORT, e.g. 127.0.0.1:1113, [::1]:1113 or localhost:1113";
    let (host, port) = text.rsplit_once(':').ok_or_else(|| expected.to_owned())?;
    let bracketed = host.starts_with('[') || host.ends_with(']');
    let host_ok = if bracketed {
        host.len() > 2
            && host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
    } else {
        !host.is_empty()
            && !host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(expected.to_owned());
    }
    Ok(text.to_owned())
}

/// Runs `volmgr serve`; returns the exit code: 0 after a clean shutdown,
/// 1 if the agent could not start or failed, 2 for bad options (including a
/// non-loopback address without a token).
pub fn run(args: ServeArgs) -> i32 {
    init_logging(args.log_format);
    JSON_LOGS.store(args.log_format == LogFormat::Json, Ordering::Relaxed);
    if let Err(e) = args.limits.limits().check() {
        return usage(&e);
    }
    let token = match given_token(&args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let peers = match peers(&args) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln_safe(&format!("volmgr serve: cannot start a runtime: {e}"));
            return EXIT_FAILURE;
        }
    };
    let code = runtime.block_on(serve(args, token, peers));
    log_sink::flush();
    code
}

/// Whether logs are JSON (a fatal error is then a log line, not a plain
/// line among JSON ones).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Reports a fatal error once: a log line with JSON logs, else a
/// `volmgr serve: ...` line.
fn fatal(e: &str) {
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::error!("{e}");
    } else {
        // After the lines logged before it.
        log_sink::flush();
        eprintln_safe(&format!("volmgr serve: {e}"));
    }
}

fn usage(e: &str) -> i32 {
    fatal(e);
    EXIT_USAGE
}

fn failure(e: &str) -> i32 {
    fatal(e);
    EXIT_FAILURE
}

/// Raises the soft limit of open files to the hard one, so the connection
/// cap, not the process's file limit, is what bounds connections; warns if
/// even the hard limit is below what the cap needs.
fn raise_file_limit(max_connections: usize) {
    // Journal, providers, pulls and their pipes: spare descriptors beside
    // the connections.
    const SPARE: u64 = 256;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                limit = raised;
            }
        }
    }
    let needed = max_connections as u64 + SPARE;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_connections,
            "the open-file limit is below --max-connections plus {SPARE}: connections may be \
             refused by the system before the cap (raise `ulimit -n`, or lower --max-connections)"
        );
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == LogFormat::Json;
    // Lines go through a bounded queue to their own thread: a log reader
    // that stops reading must not stop the agent (`log_sink`); straight to
    // stderr only if that thread cannot start.
    let writer = log_sink::stderr_sink(json)
        .map_or_else(|| BoxMakeWriter::new(std::io::stderr), BoxMakeWriter::new);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// The token given by `--token-file` or `VOLMGR_TOKEN`; `None` if neither
/// (the state directory's token is used, or none with `--insecure-no-auth`).
fn given_token(args: &ServeArgs) -> Result<Option<String>, String> {
    let env = std::env::var(ENV_TOKEN)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if let Some(path) = &args.token_file {
        return credential::read_agent_token_file(path).map(Some);
    }
    match env {
        Some(_) if args.insecure_no_auth => Err(format!(
            "--insecure-no-auth with {ENV_TOKEN} set: choose one"
        )),
        Some(t) => credential::check_token(&t)
            .map(|t| Some(t.to_owned()))
            .map_err(|why| format!("{ENV_TOKEN}: {why}")),
        None => Ok(None),
    }
}

/// The token the agent serves with: the given one, else `<state-dir>/token`
/// (created on first start); `None` only with `--insecure-no-auth`.
fn serving_token(
    args: &ServeArgs,
    given: Option<String>,
    state_dir: &Path,
) -> Result<Option<String>, CredentialError> {
    if given.is_some() || args.insecure_no_auth {
        return Ok(given);
    }
    let (token, created) = credential::load_or_create(state_dir)?;
    let path = credential::token_path(state_dir);
    if created {
        tracing::info!(path = %path.display(), "generated the agent's token (mode 0600)");
    } else {
        tracing::info!(path = %path.display(), "using the agent's token");
    }
    Ok(Some(token))
}

/// The peers of `--peer` and `--peers-file`.
fn peers(args: &ServeArgs) -> Result<Peers, String> {
    use std::io::Read;
    let mut peers = Peers::new();
    for entry in &args.peers {
        peers
            .insert_entry(entry)
            .map_err(|e| format!("--peer: {e}"))?;
    }
    if let Some(path) = &args.peers_file {
        let mut text = String::new();
        credential::open_operator_file(path, false)
            .map_err(|e| format!("peers file {e}"))?
            .take(MAX_PEERS_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("peers file {}: {e}", path.display()))?;
        if text.len() as u64 > MAX_PEERS_FILE_BYTES {
            return Err(format!(
                "peers file {}: larger than {MAX_PEERS_FILE_BYTES} bytes",
                path.display()
            ));
        }
        peers
            .insert_file_text(&text)
            .map_err(|e| format!("peers file {}: {e}", path.display()))?;
    }
    Ok(peers)
}

/// The default provider's (kind, configuration) from the options.
fn default_provider(
    args: &ServeArgs,
    state_dir: &Path,
) -> Result<(String, ProviderConfig), String> {
    if let Some(kind) = &args.provider_kind {
        Ok((
            kind.clone(),
            key_values(&args.provider_config, "--provider-config")?,
        ))
    } else {
        let root = state_dir.join("volumes");
        let root = root
            .to_str()
            .ok_or_else(|| format!("state directory {} is not UTF-8", state_dir.display()))?;
        Ok((
            DEFAULT_PROVIDER_KIND.to_owned(),
            [("root".to_owned(), root.to_owned())].into_iter().collect(),
        ))
    }
}

/// The CSI server and its socket path, when `--csi-endpoint` is given.
fn csi_server(args: &ServeArgs) -> Result<Option<(CsiServer, PathBuf)>, String> {
    let Some(endpoint) = &args.csi_endpoint else {
        return Ok(None);
    };
    let path = crate::csi::endpoint_path(endpoint)?;
    let node_id = match &args.node_id {
        Some(n) => n.clone(),
        None => crate::csi::host_name().ok_or("cannot read the host name: give --node-id NAME")?,
    };
    let options = CsiOptions::new(&node_id)?;
    Ok(Some((CsiServer::new(options), path)))
}

/// Cancels `token` on SIGINT or SIGTERM; exits on the second signal.
fn watch_signals(token: CancellationToken) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stopping: no new requests; finishing those in flight"
        );
        token.cancel();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting without waiting");
        log_sink::flush();
        std::process::exit(EXIT_FAILURE);
    });
    Ok(())
}

fn log_report(report: &ReconcileReport, manager: &Manager) {
    tracing::info!(
        replayed_records = report.replayed_records,
        checkpoint_seq = ?report.checkpoint_seq,
        journal_end = ?report.journal_end,
        resolutions = report.resolutions.len(),
        foreign = report.foreign.len(),
        unavailable = report.unavailable.len(),
        volumes = manager.volumes().len(),
        orphans = manager.orphans().len(),
        "opened and reconciled"
    );
    for (case, volume, detail) in &report.resolutions {
        tracing::info!(%case, volume = ?volume, %detail, "reconciliation");
    }
    for (item, detail) in &report.foreign {
        tracing::info!(%item, %detail, "foreign item under a provider root, left alone");
    }
    for (provider, reason) in &report.unavailable {
        tracing::error!(%provider, %reason, "provider unavailable; its volumes answer 503");
    }
    for orphan in manager.orphans() {
        tracing::warn!(
            provider = %orphan.provider,
            volume = %orphan.volume,
            location = %orphan.location,
            "orphan: tagged as ours, no record; adopt or destroy it explicitly"
        );
    }
}

async fn serve(args: ServeArgs, given: Option<String>, peers: Peers) -> i32 {
    // Before anything is created or read there: a state directory (or a
    // parent) another user can change is refused, and again once made
    // (README, "State directory").
    if let Err(e) = crate::journal::check_state_dir(&RealStorage, &args.state_dir) {
        return failure(&e.to_string());
    }
    // Made 0700, like the library's `Journal::open` makes it (and any
    // missing parent): the default provider root lies inside, and nothing
    // in it is any other user's business (README, "State directory").
    if let Err(e) = RealStorage.create_dir_all(&args.state_dir) {
        return failure(&format!(
            "creating the state directory {}: {e}",
            args.state_dir.display()
        ));
    }
    // The path as given, again: a name that was free at the first check
    // may have become another user's symlink meanwhile (in a sticky
    // directory such as /tmp), which `create_dir_all` follows and
    // `canonicalize` would hide (its target, say /etc, passes the check).
    if let Err(e) = crate::journal::check_state_dir(&RealStorage, &args.state_dir) {
        return failure(&e.to_string());
    }
    // Its canonical form needs no check of its own: every symlink on the
    // way was checked above (and `Journal::open` checks it again).
    let state_dir = match std::fs::canonicalize(&args.state_dir) {
        Ok(d) => d,
        Err(e) => return failure(&format!("{}: {e}", args.state_dir.display())),
    };
    let (kind, config) = match default_provider(&args, &state_dir) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    // The lock before the port: a second agent on this directory fails
    // here, having bound nothing.
    let lock = match state_lock::take(&state_dir) {
        Ok(l) => l,
        Err(e) => return failure(&e),
    };
    let token = match serving_token(&args, given, &state_dir) {
        Ok(t) => t,
        Err(e) => return failure(&e.to_string()),
    };
    let limits = args.limits.limits();
    raise_file_limit(limits.max_connections);
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => return failure(&format!("cannot listen on {}: {e}", args.listen)),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return failure(&e.to_string()),
    };
    if !addr.ip().is_loopback() && token.is_none() {
        return usage(&format!(
            "refusing to listen on non-loopback address {addr} without a token \
             (--insecure-no-auth is for loopback only)"
        ));
    }
    for (host, url) in peers.iter() {
        tracing::info!(%host, %url, "peer");
    }
    let agent = match Agent::new(ServeOptions {
        token,
        insecure_no_auth: args.insecure_no_auth,
        peers,
        allow_any_source: args.allow_any_source,
        limits,
        ..ServeOptions::default()
    }) {
        Ok(a) => a,
        Err(e) => return usage(&e.to_string()),
    };
    let csi = match csi_server(&args) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let csi = match csi {
        None => None,
        Some((server, path)) => match CsiServer::bind(&path) {
            Ok(listener) => {
                tracing::info!(endpoint = %path.display(), "CSI plugin listening");
                Some((server, listener))
            }
            Err(e) => return failure(&format!("cannot listen on {}: {e}", path.display())),
        },
    };
    let stop = CancellationToken::new();
    if let Err(e) = watch_signals(stop.clone()) {
        return failure(&e);
    }
    let csi_task = csi.map(|(server, listener)| {
        let task = tokio::spawn(
            server
                .clone()
                .serve(listener, stop.clone().cancelled_owned()),
        );
        (server, task)
    });
    let server = tokio::spawn(
        agent
            .clone()
            .serve(listener, stop.clone().cancelled_owned()),
    );

    let config_for_check = (kind.clone(), config.clone());
    let manager_config = ManagerConfig {
        default_provider: Some(Box::new(move || Ok((kind, config)))),
        storage: Some(lock as std::sync::Arc<dyn crate::storage::Storage>),
        write_cycle: args.write_cycle,
        ..ManagerConfig::default()
    };
    tracing::info!(state_dir = %state_dir.display(), %addr, "opening the state directory");
    let opened = tokio::select! {
        opened = Manager::open(&state_dir, manager_config) => Some(opened),
        () = stop.cancelled() => None,
    };
    let code = match opened {
        None => EXIT_OK,
        Some(Err(e)) => {
            let code = failure(&format!("cannot open {}: {e}", state_dir.display()));
            stop.cancel();
            code
        }
        Some(Ok(manager)) => {
            log_report(&manager.reconcile_report(), &manager);
            if let Some(p) = manager
                .providers()
                .into_iter()
                .find(|p| p.id == DEFAULT_PROVIDER_ID)
                && (args.provider_kind.is_some() || !args.provider_config.is_empty())
                && (p.kind != config_for_check.0 || p.config != config_for_check.1)
            {
                tracing::warn!(
                    kind = %p.kind,
                    config = ?p.config,
                    "provider options ignored: the journal already holds the default provider"
                );
            }
            if let Some((csi, _)) = &csi_task {
                let _ = csi.ready(manager.clone());
            }
            match agent.ready(manager) {
                Ok(()) => tracing::info!("ready"),
                Err(manager) => manager.close().await,
            }
            EXIT_OK
        }
    };
    if let Some((_, task)) = csi_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "CSI server failed"),
            Err(e) => tracing::error!(error = %e, "CSI server task failed"),
        }
    }
    match server.await {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            code
        }
        Ok(Err(e)) => failure(&format!("serving failed: {e}")),
        Err(e) => failure(&format!("server task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn the_limit_flags_default_to_the_library_defaults() {
        let flags = Flags::parse_from(["serve"]);
        assert_eq!(flags.limits.limits(), Limits::default());
        let flags = Flags::parse_from([
            "serve",
            "--write-timeout",
            "500ms",
            "--pull-min-rate",
            "1KiB",
        ]);
        assert_eq!(
            flags.limits.limits().write_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(flags.limits.limits().pull_min_rate, 1024);
    }

    #[test]
    fn listen_addresses_are_host_and_port() {
        for good in ["127.0.0.1:1113", "[::1]:0", "localhost:80", "0.0.0.0:65535"] {
            assert_eq!(listen_address(good), Ok(good.to_owned()));
        }
        for bad in [
            "foo", "1.2.3.4", ":1", "h:", "h:65536", "[::1:1", "::1:1", "a b:1",
        ] {
            assert!(
                listen_address(bad).unwrap_err().contains("HOST:PORT"),
                "{bad}"
            );
        }
    }
}
