//! `volmgr serve`: the host agent.
//!
//! Binds the listener first (requests get 503 `starting` while the manager
//! opens, replays and reconciles), logs the reconciliation report, serves
//! until SIGINT or SIGTERM, then drains in-flight requests and closes the
//! journal. A second signal exits at once (the journal is consistent at any
//! instant; only the requests in flight are lost).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, eprintln_safe, key_values};
use crate::agent::{Agent, DEFAULT_LISTEN, ServeOptions};
use crate::csi::{CsiOptions, CsiServer};
use crate::manager::{DEFAULT_PROVIDER_ID, Manager, ManagerConfig, ReconcileReport};
use crate::provider::ProviderConfig;

/// Environment variable holding the bearer token (when no `--token-file`).
pub const ENV_TOKEN: &str = "VOLMGR_TOKEN";
/// Kind of the default provider when no provider option is given.
pub const DEFAULT_PROVIDER_KIND: &str = "dir";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Arguments of `volmgr serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// State directory (journal, checkpoints, lock; `volumes/` for the
    /// default directory provider). Created if missing.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Address to listen on; a non-loopback address requires a token
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// File holding the bearer token every request must carry [else env: VOLMGR_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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
    /// socket (mode 0600), e.g. unix:///run/volmgr/csi.sock
    #[arg(long, value_name = "ENDPOINT")]
    pub csi_endpoint: Option<String>,
    /// The CSI node id (topology) [default: the host name]
    #[arg(long, value_name = "NAME", requires = "csi_endpoint")]
    pub node_id: Option<String>,
}

/// Runs `volmgr serve`; returns the exit code: 0 after a clean shutdown,
/// 1 if the agent could not start or failed, 2 for bad options (including a
/// non-loopback address without a token).
pub fn run(args: ServeArgs) -> i32 {
    init_logging(args.log_format);
    let token = match token(args.token_file.as_deref()) {
        Ok(t) => t,
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
    runtime.block_on(serve(args, token))
}

fn usage(e: &str) -> i32 {
    tracing::error!("{e}");
    eprintln_safe(&format!("volmgr serve: {e}"));
    EXIT_USAGE
}

fn failure(e: &str) -> i32 {
    tracing::error!("{e}");
    eprintln_safe(&format!("volmgr serve: {e}"));
    EXIT_FAILURE
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

fn token(file: Option<&Path>) -> Result<Option<String>, String> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading the token file {}: {e}", path.display()))?,
        ),
        None => std::env::var(ENV_TOKEN).ok(),
    };
    match token.as_deref().map(str::trim) {
        Some("") if file.is_some() => Err("the token file is empty".into()),
        Some("") | None => Ok(None),
        Some(t) => Ok(Some(t.to_owned())),
    }
}

/// The default provider's (kind, configuration) from the options.
fn default_provider(
    args: &ServeArgs,
    state_dir: &Path,
) -> Result<(String, ProviderConfig), String> {
    match &args.provider_kind {
        Some(kind) => Ok((
            kind.clone(),
            key_values(&args.provider_config, "--provider-config")?,
        )),
        None => {
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

async fn serve(args: ServeArgs, token: Option<String>) -> i32 {
    if let Err(e) = std::fs::create_dir_all(&args.state_dir) {
        return failure(&format!(
            "creating the state directory {}: {e}",
            args.state_dir.display()
        ));
    }
    let state_dir = match std::fs::canonicalize(&args.state_dir) {
        Ok(d) => d,
        Err(e) => return failure(&format!("{}: {e}", args.state_dir.display())),
    };
    let (kind, config) = match default_provider(&args, &state_dir) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
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
            "refusing to listen on non-loopback address {addr} without a bearer token \
             (--token-file FILE or {ENV_TOKEN})"
        ));
    }
    let agent = match Agent::new(ServeOptions {
        token,
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
        ..ManagerConfig::default()
    };
    tracing::info!(state_dir = %state_dir.display(), %addr, "opening the state directory");
    let opened = tokio::select! {
        opened = Manager::open(&state_dir, manager_config) => Some(opened),
        _ = stop.cancelled() => None,
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
