//! Helpers of the agent tests: agents on loopback with ephemeral ports
//! (the listener is bound before serving, so no test waits or polls), raw
//! requests, and a provider that can hold an operation open.

#![allow(dead_code)]

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use volmgr::agent::{Agent, AgentError, Client, ServeOptions};
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::provider::sim::SimProvider;
use volmgr::provider::{
    Created, Found, Provider, ProviderConfig, ProviderError, SendStats, VolumeRef, VolumeSpec,
};
use volmgr::state::OpId;

/// A manager configuration whose default provider is `sim` (kind "sim").
pub fn sim_config(sim: &SimProvider) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert("sim".into(), sim.factory());
    config.default_provider = Some(Box::new(|| Ok(("sim".into(), ProviderConfig::new()))));
    config
}

/// An agent serving on 127.0.0.1:<ephemeral>.
pub struct TestAgent {
    pub url: String,
    pub client: Client,
    pub agent: Agent,
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
    pub async fn starting(options: ServeOptions) -> TestAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = options.token.clone();
        let agent = Agent::new(options).expect("agent builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestAgent {
            client: Client::new(&url, token).unwrap(),
            url,
            agent,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns once the manager is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task
            .take()
            .unwrap()
            .await
            .unwrap()
            .expect("served cleanly");
    }
}

/// A raw request; returns (status, body as JSON or Null, raw body).
pub async fn raw(
    method: &str,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value, Vec<u8>) {
    let http = reqwest::Client::new();
    let mut request = http.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap().to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, bytes)
}

/// Asserts an error answer's status and code.
#[track_caller]
pub fn assert_error(answer: &(u16, Value, Vec<u8>), status: u16, code: &str) {
    assert_eq!(
        (answer.0, answer.1["code"].as_str()),
        (status, Some(code)),
        "answer: {} {}",
        answer.0,
        String::from_utf8_lossy(&answer.2)
    );
    assert!(
        answer.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        answer.1
    );
}

/// A provider delegating to a [`SimProvider`] whose snapshots wait until
/// released, so a test can hold an operation in flight. It reports each
/// held call on `entered`.
#[derive(Debug, Clone)]
pub struct GateProvider {
    pub sim: SimProvider,
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
}

pub struct Gate {
    pub entered: mpsc::UnboundedReceiver<()>,
    pub release: std_mpsc::Sender<()>,
}

impl GateProvider {
    pub fn new(sim: SimProvider) -> (GateProvider, Gate) {
        let (entered_tx, entered_rx) = mpsc::unbounded_channel();
        let (release_tx, release_rx) = std_mpsc::channel();
        (
            GateProvider {
                sim,
                entered: entered_tx,
                release: Arc::new(Mutex::new(release_rx)),
            },
            Gate {
                entered: entered_rx,
                release: release_tx,
            },
        )
    }

    pub fn factory(&self) -> volmgr::provider::ProviderFactory {
        let me = self.clone();
        Arc::new(move |_config: &ProviderConfig| Ok(Arc::new(me.clone()) as Arc<dyn Provider>))
    }
}

impl Provider for GateProvider {
    fn kind(&self) -> &'static str {
        "gate"
    }
    fn config(&self) -> ProviderConfig {
        ProviderConfig::new()
    }
    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        self.sim.create_volume(spec)
    }
    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        self.sim.create_snapshot(source, spec)
    }
    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.sim.fork_volume(snapshot, spec)
    }
    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.sim.destroy(volume)
    }
    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        out: &mut dyn std::io::Write,
    ) -> Result<SendStats, ProviderError> {
        self.sim.send_snapshot(snapshot, base, out)
    }
    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn std::io::Read,
    ) -> Result<Created, ProviderError> {
        self.sim.receive_snapshot(target, spec, input)
    }
    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.sim.inventory()
    }
    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        self.sim.finish(found)
    }
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        self.sim.abort_partial(op)
    }
}
