//! Helpers of the agent tests: agents on loopback with ephemeral ports
//! (the listener is bound before serving, so no test waits or polls), raw
//! requests, and a provider that can hold an operation open.
//!
//! Auth is on, as in production: an agent started without a token (and
//! without `insecure_no_auth`) gets [`TEST_TOKEN`], shared by every test
//! agent (one token per cluster), and has itself as peer `self`. [`raw`]
//! presents the token of the agent serving the URL unless told otherwise.

#![allow(dead_code)]

pub mod fake_peer;
pub mod flynn;
pub mod process;

#[path = "../common/hooked_sim.rs"]
pub mod hooked_sim;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use volmgr::agent::{Agent, AgentError, Client, Peers, ServeOptions};
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::provider::ProviderConfig;
use volmgr::provider::sim::{SimCall, SimProvider, When};

use hooked_sim::HookedSim;

/// A manager configuration whose default provider is `sim` (kind "sim").
pub fn sim_config(sim: &SimProvider) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert("sim".into(), sim.factory());
    config.default_provider = Some(Box::new(|| Ok(("sim".into(), ProviderConfig::new()))));
    config
}

/// The token of test agents started without one.
pub const TEST_TOKEN: &str = "volmgr-test-token-0123456789abcdef";

/// Base URL of each serving test agent → its token.
static TOKENS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// The token of the test agent serving `url`, if any.
pub fn token_for(url: &str) -> Option<String> {
    let tokens = TOKENS.lock().unwrap();
    tokens
        .iter()
        .find(|(base, _)| url == base.as_str() || url.starts_with(&format!("{base}/")))
        .map(|(_, token)| token.clone())
}

/// Peers from `(host id, url)` pairs.
pub fn peers(entries: &[(&str, &str)]) -> Peers {
    let mut peers = Peers::new();
    for (host, url) in entries {
        peers.insert(host, url).unwrap();
    }
    peers
}

/// An agent serving on 127.0.0.1:<ephemeral>.
pub struct TestAgent {
    pub url: String,
    pub client: Client,
    pub agent: Agent,
    /// The token it serves with (`None` with `insecure_no_auth`).
    pub token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl TestAgent {
    /// Opens a manager on `dir` and serves it.
    pub async fn open(dir: &Path, config: ManagerConfig, options: ServeOptions) -> TestAgent {
        let manager = Manager::open(dir, config).await.expect("manager opens");
        Self::serve(manager, options).await
    }

    pub async fn serve(manager: Manager, options: ServeOptions) -> TestAgent {
        let agent = Self::starting(options).await;
        agent.agent.ready(manager).expect("not stopping");
        agent
    }

    /// An agent in the starting phase (no manager yet).
    pub async fn starting(mut options: ServeOptions) -> TestAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        if options.token.is_none() && !options.insecure_no_auth {
            options.token = Some(TEST_TOKEN.to_owned());
        }
        if options.peers.url("self").is_none() {
            options.peers.insert("self", &url).unwrap();
        }
        let token = options.token.clone();
        if let Some(t) = &token {
            TOKENS.lock().unwrap().insert(url.clone(), t.clone());
        }
        let agent = Agent::new(options).expect("agent builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestAgent {
            client: Client::new(&url, token.clone()).unwrap(),
            token,
            url,
            agent,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns once the manager is closed.
    pub async fn shutdown(mut self) {
        TOKENS.lock().unwrap().remove(&self.url);
        let _ = self.stop.take().unwrap().send(());
        self.task
            .take()
            .unwrap()
            .await
            .unwrap()
            .expect("served cleanly");
    }
}

/// The credential a raw request presents.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// The token of the test agent serving the URL (none if unknown).
    Agent,
    None,
    Bearer(&'a str),
    /// HTTP Basic: empty user, this password (as Flynn's client sends it).
    Basic(&'a str),
}

/// A raw request presenting `token` as Bearer, or the serving agent's
/// token; returns (status, body as JSON or Null, raw body).
pub async fn raw(
    method: &str,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value, Vec<u8>) {
    let auth = match token {
        Some(t) => Auth::Bearer(t),
        None => Auth::Agent,
    };
    raw_as(method, url, body, auth).await
}

/// A raw request presenting `auth`.
pub async fn raw_as(
    method: &str,
    url: &str,
    body: Option<&str>,
    auth: Auth<'_>,
) -> (u16, Value, Vec<u8>) {
    let http = reqwest::Client::new();
    let mut request = http.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    match auth {
        Auth::Agent => {
            if let Some(token) = token_for(url) {
                request = request.bearer_auth(token);
            }
        }
        Auth::None => {}
        Auth::Bearer(t) => request = request.bearer_auth(t),
        Auth::Basic(p) => request = request.basic_auth("", Some(p)),
    }
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap().to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, bytes)
}

/// Flynn's error code for a volmgr code and status, as `pkg/httphelper`
/// defines the codes (the agent's own table is checked against this one).
pub fn expected_flynn_code(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (_, "already_exists") => "object_exists",
        (_, "bad_json") => "syntax_error",
        (_, "body_too_large") => "request_body_too_big",
        (_, "no_such_route") => "not_found",
        (400 | 405, _) => "validation_error",
        (401, _) => "unauthorized",
        (404, _) => "object_not_found",
        (409, _) => "conflict",
        (503, _) => "service_unavailable",
        _ => "unknown_error",
    }
}

/// Asserts an error answer's status and volmgr code, and that the body is
/// Flynn's error (`code` Flynn's, `message`, `retry`), with volmgr's code in
/// `volmgr_code`.
#[track_caller]
pub fn assert_error(answer: &(u16, Value, Vec<u8>), status: u16, code: &str) {
    assert_eq!(
        (answer.0, answer.1["volmgr_code"].as_str()),
        (status, Some(code)),
        "answer: {} {}",
        answer.0,
        String::from_utf8_lossy(&answer.2)
    );
    assert_eq!(
        answer.1["code"].as_str(),
        Some(expected_flynn_code(status, code)),
        "Flynn's code for {status} {code}: {}",
        answer.1
    );
    assert!(answer.1["retry"].is_boolean(), "no retry: {}", answer.1);
    assert!(
        answer.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        answer.1
    );
}

/// Holds a provider call open: the provider reports each snapshot that
/// reached it on `entered`, then waits for one `release` before running it.
pub struct Gate {
    pub entered: mpsc::UnboundedReceiver<()>,
    pub release: std_mpsc::Sender<()>,
}

/// A provider of kind `gate` delegating to `sim`, whose snapshots wait until
/// released (see [`Gate`]), so a test can hold an operation in flight.
pub fn gate_provider(sim: SimProvider) -> (HookedSim, Gate) {
    let (entered_tx, entered_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let release = Mutex::new(release_rx);
    let provider = HookedSim::new(sim, "gate", move |call, when| {
        if (call, when) == (SimCall::Snapshot, When::Before) {
            let _ = entered_tx.send(());
            let _ = release
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recv();
        }
    });
    (
        provider,
        Gate {
            entered: entered_rx,
            release: release_tx,
        },
    )
}
