//! The agent's HTTP server: life cycle, middleware, graceful shutdown.
//!
//! Life cycle: an [`Agent`] starts in the *starting* phase (every route but
//! `/healthz` answers 503 `starting`), turns *ready* when handed an open
//! [`Manager`], and turns *stopping* on shutdown (503 `stopping`) while
//! axum's graceful shutdown stops accepting, lets in-flight requests finish
//! and ends event streams. Then every operation spawned for a request has
//! finished, and the manager is closed.
//!
//! Requests pass, outermost first: a span and an access log line per request
//! (`req_id`, method, path; handlers add `op` and `volume`); the bearer-token
//! check (when a token is configured; always on a non-loopback listener);
//! the phase gate. Handlers run in tasks of a [`TaskTracker`], so a client
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

use super::error::ApiError;
use super::routes;
use crate::manager::Manager;

/// Default listen address of `volmgr serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1113";
/// Limit of a JSON request body (haves lists included).
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// How the agent serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bearer token every request must carry. Required on a non-loopback
    /// listener; also presented to source agents when pulling.
    pub token: Option<String>,
    /// Limit of a request body; snapshot streams are responses, not requests.
    pub max_body_bytes: usize,
    /// Connecting to a source agent during a pull.
    pub pull_connect_timeout: Duration,
    /// Longest silence of a source agent's stream during a pull.
    pub pull_read_timeout: Duration,
    /// Interval of progress events of a pull streamed as server-sent events.
    pub pull_progress_interval: Duration,
    /// When ready, resume in the background every pull that was interrupted
    /// (a volume whose details hold a resume token and the pull's source).
    pub resume_pulls: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            token: None,
            max_body_bytes: MAX_JSON_BODY_BYTES,
            pull_connect_timeout: Duration::from_secs(10),
            pull_read_timeout: Duration::from_secs(120),
            pull_progress_interval: Duration::from_millis(250),
            resume_pulls: true,
        }
    }
}

/// Why the agent could not serve.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// A non-loopback listener without a token.
    TokenRequired(SocketAddr),
    /// The token is empty or not a valid header value.
    BadToken(String),
    Io(io::Error),
    /// The HTTP client for pulls could not be built.
    Client(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::TokenRequired(addr) => write!(
                f,
                "refusing to serve on non-loopback address {addr} without a bearer token \
                 (--token-file or VOLMGR_TOKEN)"
            ),
            AgentError::BadToken(why) => write!(f, "unusable token: {why}"),
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
    /// Client for pulls from other agents.
    pub(crate) http: reqwest::Client,
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
            .unwrap_or_else(|e| e.into_inner())
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
            if token.is_empty() {
                return Err(AgentError::BadToken("it is empty".into()));
            }
            HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| AgentError::BadToken("it is not a valid header value".into()))?;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(options.pull_connect_timeout)
            .read_timeout(options.pull_read_timeout)
            .build()
            .map_err(|e| AgentError::Client(e.to_string()))?;
        Ok(Agent {
            shared: Arc::new(Shared {
                phase: AtomicU8::new(STARTING),
                manager: Mutex::new(None),
                options,
                tracker: TaskTracker::new(),
                stopping: CancellationToken::new(),
                http,
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
            .unwrap_or_else(|e| e.into_inner());
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
                .spawn(routes::resume_interrupted_pulls(self.shared.clone()));
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
            .unwrap_or_else(|e| e.into_inner());
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
        if !addr.ip().is_loopback() && self.shared.options.token.is_none() {
            return Err(AgentError::TokenRequired(addr));
        }
        let app = self.router();
        let me = self.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining in-flight requests");
            me.begin_stopping();
        };
        tracing::info!(%addr, auth = self.shared.options.token.is_some(), "serving");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await;
        // Every connection is closed; wait for operations spawned for them.
        self.begin_stopping();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        let manager = self
            .shared
            .manager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(manager) = manager {
            manager.close().await;
            tracing::info!("manager closed");
        }
        served.map_err(AgentError::Io)
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

async fn log_request(req: Request, next: Next) -> Response {
    let req_id = Uuid::new_v4();
    let span = tracing::info_span!(
        "request",
        %req_id,
        method = %req.method(),
        path = %req.uri().path(),
        op = tracing::field::Empty,
        volume = tracing::field::Empty,
    );
    let started = Instant::now();
    async move {
        let mut response = next.run(req).await;
        let status = response.status().as_u16();
        let latency_ms = started.elapsed().as_millis() as u64;
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
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong bearer token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this agent requires `Authorization: Bearer <token>`",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
