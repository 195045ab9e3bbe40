//! The agent's HTTP server: life cycle, middleware, graceful shutdown.
//!
//! Life cycle: an [`Agent`] starts in the *starting* phase (every route but
//! `/healthz` answers 503 `starting`), turns *ready* when handed an open
//! [`Manager`], and turns *stopping* on shutdown (503 `stopping`): the
//! accept loop (`conn.rs`) stops accepting and asks each connection to
//! finish its request in flight, event streams end. Transfers (sends and
//! pulls) still running after [`Limits::shutdown_grace`] are cancelled and
//! the connections still open are dropped; a cancelled pull's receive fails
//! and its outcome is journaled like any other. Then every operation
//! spawned for a request has finished, and the manager is closed.
//!
//! Requests pass, outermost first: a span and an access log line per request
//! (`req_id`, method, path; handlers add `op` and `volume`); the credential
//! check (the token as Bearer, or as the password of HTTP Basic the way
//! Flynn's client sends its key; loopback included: serving without a token
//! takes [`ServeOptions::insecure_no_auth`], and never on a non-loopback
//! listener); the phase gate. Handlers run in tasks of a [`TaskTracker`], so a client
//! that hangs up never cancels an operation half-way, and shutdown waits for
//! them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use super::credential::{constant_time_eq, presented};
use super::error::ApiError;
use super::limits::{Limits, format_duration};
use super::peers::Peers;
use super::slots::Slots;
use super::{conn, pull, pull_watch, routes};
use crate::manager::Manager;

/// After the shutdown grace period, how long cancelled transfers get to
/// answer before their connections are closed.
const FINAL_ANSWERS: Duration = Duration::from_secs(5);

/// Default listen address of `volmgr serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1113";
/// Limit of a JSON request body (haves lists included).
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// How the agent serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The token every request must carry (Bearer, or Basic's password);
    /// also presented to configured peers when pulling from them.
    pub token: Option<String>,
    /// Serve without a token (loopback only). Without it, an agent with no
    /// token refuses to serve.
    pub insecure_no_auth: bool,
    /// The agents pulls may come from, by host id.
    pub peers: Peers,
    /// Accept a pull's `source` URL that is not a configured peer (it never
    /// gets the token).
    pub allow_any_source: bool,
    /// Limit of a request body; snapshot streams are responses, not requests.
    pub max_body_bytes: usize,
    /// Connecting to a source agent during a pull.
    pub pull_connect_timeout: Duration,
    /// Interval of progress events of a pull streamed as server-sent events.
    pub pull_progress_interval: Duration,
    /// When ready, resume in the background every pull that was interrupted
    /// (a volume whose details hold a resume token and the pull's source).
    pub resume_pulls: bool,
    /// Idle time after which an event stream sends a keep-alive line.
    pub event_keep_alive: Duration,
    /// What clients and peers may hold: connections, time, transfers,
    /// subscribers.
    pub limits: Limits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            token: None,
            max_body_bytes: MAX_JSON_BODY_BYTES,
            pull_connect_timeout: Duration::from_secs(10),
            pull_progress_interval: Duration::from_millis(250),
            resume_pulls: true,
            event_keep_alive: Duration::from_secs(15),
            insecure_no_auth: false,
            peers: Peers::new(),
            allow_any_source: false,
            limits: Limits::default(),
        }
    }
}

/// Why the agent could not serve.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// No token, and serving without one was not asked for (or the
    /// listener is not on loopback, where it is never allowed).
    TokenRequired(SocketAddr),
    /// The token is empty or not a valid header value.
    BadToken(String),
    /// A limit cannot serve (a zero count or duration).
    BadLimits(String),
    Io(io::Error),
    /// The HTTP client for pulls could not be built.
    Client(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::TokenRequired(addr) if addr.ip().is_loopback() => write!(
                f,
                "refusing to serve on {addr} without a token: give one, or ask for \
                 --insecure-no-auth explicitly"
            ),
            AgentError::TokenRequired(addr) => write!(
                f,
                "refusing to serve on non-loopback address {addr} without a token \
                 (--token-file or VOLMGR_TOKEN)"
            ),
            AgentError::BadToken(why) => write!(f, "unusable token: {why}"),
            AgentError::BadLimits(why) => write!(f, "unusable limits: {why}"),
            AgentError::Io(e) => write!(f, "{e}"),
            AgentError::Client(e) => write!(f, "cannot build the HTTP client: {e}"),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<io::Error> for AgentError {
    fn from(e: io::Error) -> Self {
        AgentError::Io(e)
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

pub(crate) struct Shared {
    phase: AtomicU8,
    manager: Mutex<Option<Manager>>,
    pub(crate) options: ServeOptions,
    /// Spawned request handlers, sends and pulls; shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when stopping: ends event streams.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when the shutdown grace period is over: ends the sends and
    /// pulls still running.
    pub(crate) transfers: CancellationToken,
    /// Client for pulls from other agents.
    pub(crate) http: reqwest::Client,
    /// Sends being served, in all and per client.
    pub(crate) sends: Arc<Slots>,
    /// Event-stream subscribers.
    pub(crate) subscribers: Arc<Slots>,
    /// Pulls in flight, by target volume.
    pub(crate) pulls: pull_watch::Registry,
}

impl Shared {
    /// The manager, or 503 while starting or stopping.
    pub(crate) fn manager(&self) -> Result<Manager, ApiError> {
        match self.phase.load(Ordering::Acquire) {
            READY => {}
            STOPPING => return Err(stopping()),
            _ => return Err(starting()),
        }
        self.manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(starting)
    }

    pub(crate) fn phase_error(&self) -> Option<ApiError> {
        match self.phase.load(Ordering::Acquire) {
            READY => None,
            STOPPING => Some(stopping()),
            _ => Some(starting()),
        }
    }
}

fn starting() -> ApiError {
    ApiError::unavailable(
        "starting",
        "the agent is starting (opening and reconciling)",
    )
}

fn stopping() -> ApiError {
    ApiError::unavailable("stopping", "the agent is shutting down")
}

/// A handle on one agent; clones share it.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("phase", &self.shared.phase.load(Ordering::Relaxed))
            .finish()
    }
}

impl Agent {
    /// An agent in the starting phase (503 until [`Agent::ready`]).
    pub fn new(options: ServeOptions) -> Result<Agent, AgentError> {
        if let Some(token) = &options.token {
            let checked = super::credential::check_token(token).map_err(AgentError::BadToken)?;
            if checked != token {
                return Err(AgentError::BadToken(
                    "it has leading or trailing white space".into(),
                ));
            }
        }
        let limits = &options.limits;
        limits.check().map_err(AgentError::BadLimits)?;
        // Never follow a redirect: a source could point the agent (and a
        // POST) anywhere. A read waits at most one stall window.
        let http = reqwest::Client::builder()
            .connect_timeout(options.pull_connect_timeout)
            .read_timeout(limits.pull_stall_window)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AgentError::Client(e.to_string()))?;
        let sends = Slots::new(limits.max_sends, limits.max_sends_per_client);
        let subscribers = Slots::new(limits.max_subscribers, limits.max_subscribers);
        let pulls = pull_watch::Registry::new(limits.max_pulls);
        Ok(Agent {
            shared: Arc::new(Shared {
                phase: AtomicU8::new(STARTING),
                manager: Mutex::new(None),
                options,
                tracker: TaskTracker::new(),
                stopping: CancellationToken::new(),
                transfers: CancellationToken::new(),
                http,
                sends,
                subscribers,
                pulls,
            }),
        })
    }

    /// Serves `manager` from now on. Refused (the manager is handed back)
    /// once the agent is stopping.
    pub fn ready(&self, manager: Manager) -> Result<(), Manager> {
        let mut slot = self
            .shared
            .manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.shared.phase.load(Ordering::Acquire) == STOPPING {
            return Err(manager);
        }
        *slot = Some(manager);
        self.shared.phase.store(READY, Ordering::Release);
        drop(slot);
        if self.shared.options.resume_pulls
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let _guard = runtime.enter();
            self.shared
                .tracker
                .spawn(pull::resume_interrupted_pulls(self.shared.clone()));
        }
        Ok(())
    }

    /// Enters the stopping phase: new requests get 503 `stopping`, event
    /// streams end. Serving goes on until the shutdown future resolves.
    pub fn begin_stopping(&self) {
        let _slot = self
            .shared
            .manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.shared.phase.store(STOPPING, Ordering::Release);
        self.shared.stopping.cancel();
    }

    /// The routes, with middleware and state (for embedding in a larger app).
    pub fn router(&self) -> Router {
        routes::router(self.shared.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                gate,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                authenticate,
            ))
            .layer(axum::middleware::from_fn(log_request))
            .layer(axum::extract::DefaultBodyLimit::max(
                self.shared.options.max_body_bytes,
            ))
    }

    /// Serves on `listener` until `shutdown` resolves, then stops gracefully
    /// (see the module doc) and closes the manager.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), AgentError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let options = &self.shared.options;
        if options.token.is_none() && (!options.insecure_no_auth || !addr.ip().is_loopback()) {
            return Err(AgentError::TokenRequired(addr));
        }
        if options.token.is_none() {
            tracing::warn!(
                %addr,
                "serving WITHOUT authentication (--insecure-no-auth): any local process can \
                 drive this agent, which acts as root"
            );
        }
        let app = self.router();
        let limits = self.shared.options.limits.clone();
        tracing::info!(
            %addr,
            auth = self.shared.options.token.is_some(),
            peers = self.shared.options.peers.len(),
            allow_any_source = self.shared.options.allow_any_source,
            max_connections = limits.max_connections,
            "serving"
        );
        let (connections, drop_connections) =
            conn::accept_loop(listener, app, limits.clone(), shutdown).await;
        tracing::info!("shutdown requested: draining in-flight requests");
        self.begin_stopping();
        let grace = limits.shutdown_grace;
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = %format_duration(grace),
                sends = self.shared.sends.taken(),
                pulls = self.shared.pulls.len(),
                "shutdown grace period over: cancelling transfers and closing connections"
            );
            self.shared.transfers.cancel();
            // A cancelled pull answers once its outcome is journaled: give
            // the answers a moment, then close what is still open.
            let answers = grace.min(FINAL_ANSWERS);
            if tokio::time::timeout(answers, connections.wait())
                .await
                .is_err()
            {
                drop_connections.cancel();
                connections.wait().await;
            }
        }
        // Every connection is closed; wait for operations spawned for them
        // (a cancelled pull journals its outcome first).
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        let manager = self
            .shared
            .manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(manager) = manager {
            manager.close().await;
            tracing::info!("manager closed");
        }
        Ok(())
    }
}

/// Serves an open `manager` on `listener` until `shutdown` resolves; then
/// finishes in-flight requests and closes the manager. Bind the listener
/// first (port 0 for tests): connections queue until serving starts.
pub async fn serve<F>(
    listener: TcpListener,
    manager: Manager,
    options: ServeOptions,
    shutdown: F,
) -> Result<(), AgentError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let agent = Agent::new(options)?;
    if let Err(manager) = agent.ready(manager) {
        manager.close().await;
    }
    agent.serve(listener, shutdown).await
}

/// A request path as logged: printable ASCII kept, every other byte
/// percent-encoded, so no client (one without the token included) puts
/// controls, bidirectional overrides or line separators into the log.
fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.bytes().all(|b| b.is_ascii_graphic()) {
        return path.into();
    }
    let mut out = String::with_capacity(path.len() * 3);
    for b in path.bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("%{b:02X}"));
        }
    }
    out.into()
}

async fn log_request(req: Request, next: Next) -> Response {
    let req_id = Uuid::new_v4();
    let span = tracing::info_span!(
        "request",
        %req_id,
        method = %req.method(),
        path = %logged_path(req.uri().path()),
        op = tracing::field::Empty,
        volume = tracing::field::Empty,
    );
    let started = Instant::now();
    async move {
        let mut response = next.run(req).await;
        let status = response.status().as_u16();
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(status, latency_ms, "request done");
        if let Ok(v) = HeaderValue::from_str(&req_id.to_string()) {
            response.headers_mut().insert("x-request-id", v);
        }
        response
    }
    .instrument(span)
    .await
}

async fn authenticate(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(token) = shared.options.token.as_deref() else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented);
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this agent requires its token: `Authorization: Bearer <token>`, or HTTP Basic \
             with the token as the password",
        )
        .into_response(),
    }
}

/// 503 while starting or stopping; otherwise runs the handler in a tracked
/// task so a vanished client cannot cancel it and shutdown waits for it.
async fn gate(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/healthz"
        && let Some(e) = shared.phase_error()
    {
        return e.into_response();
    }
    let task = shared
        .tracker
        .spawn(next.run(req).instrument(tracing::Span::current()));
    match task.await {
        Ok(response) => response,
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("request handler failed: {e}"),
        )
        .into_response(),
    }
}
