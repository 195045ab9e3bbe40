//! kill -9 of the real `volmgr serve` under a concurrent HTTP workload.
//!
//! One state directory (journal and the default directory provider under
//! it), one agent process after another. Each life: start `volmgr serve`,
//! wait for its `opened and reconciled` and `ready` log lines, check, then run
//! concurrent HTTP workers (create a volume, snapshot it, fork the snapshot,
//! destroy the fork, the snapshot and the volume; before them a janitor
//! destroys what earlier lives left) and
//! SIGKILL the process once a seeded number of operations has been
//! acknowledged; one life in eight is killed during startup instead (right
//! after the listener is bound, while the journal replays and the providers
//! reconcile). Kills are triggered by events (log lines, acknowledgements),
//! never by timers.
//!
//! After every restart:
//! - reconciliation reports no orphan and no unavailable provider;
//! - every volume is live, every acknowledged create is present (unless a
//!   destroy of it was attempted since), no acknowledged destroy is undone;
//! - the directory provider's inventory (tagged items, all complete) equals
//!   the agent's volumes.
//!
//! At the end the agent is stopped with SIGTERM and the manager is opened
//! in-process: nothing pending, inventory equal to the state.
//!
//! At least 200 kills per run (`VOLMGR_TORTURE_SCALE` multiplies them); the
//! seed is printed (`VOLMGR_TORTURE_SEED` replays one). Prints `kill -9:
//! kills N (during startup K), seed S, acknowledged operations lost 0, ...`.

mod torture_support;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use volmgr::agent::api::{Kind, Status, VolumeInfo};
use volmgr::agent::client::{Client, ClientError};
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{Presence, Provider};
use volmgr::storage::sim::SplitMix64;

const BIN: &str = env!("CARGO_BIN_EXE_volmgr");
const KILLS: u64 = 200;
const WORKERS: usize = 4;
/// Bound on waiting for one of the agent's own log lines (not a delay: the
/// wait ends when the line arrives).
const LOG_WAIT: Duration = Duration::from_secs(120);

/// The agent's token: auth is on by default, the agent generates it in
/// its state directory at first start (mode 0600), and the workers read it
/// from there as the CLI does.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn token() -> Option<String> {
    TOKEN.get().cloned()
}

/// A `volmgr serve` process whose JSON log lines arrive on a channel; killed
/// on drop if still running.
struct Agent {
    child: Child,
    logs: std_mpsc::Receiver<Value>,
    url: String,
}

impl Agent {
    fn start(state_dir: &Path) -> Agent {
        let mut child = Command::new(BIN)
            .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state_dir)
            .env_remove("VOLMGR_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volmgr serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, logs) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"fields": {"message": line}}));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent {
            child,
            logs,
            url: String::new(),
        };
        let serving = agent.wait_for("serving");
        agent.url = format!(
            "http://{}",
            serving["fields"]["addr"].as_str().expect("serving addr")
        );
        // The token file exists before the agent serves.
        let token = volmgr::agent::credential::read_token_file(&state_dir.join("token"))
            .expect("the agent's token file");
        assert_eq!(
            *TOKEN.get_or_init(|| token.clone()),
            token,
            "one token per state directory"
        );
        agent
    }

    /// The next log line whose message is `message`; panics on an error
    /// line or on the process ending first.
    fn wait_for(&self, message: &str) -> Value {
        loop {
            let line = self
                .logs
                .recv_timeout(LOG_WAIT)
                .unwrap_or_else(|e| panic!("no {message:?} log line: {e}"));
            if line["fields"]["message"] == message {
                return line;
            }
            assert_ne!(
                line["level"], "ERROR",
                "the agent logged an error while starting: {line}"
            );
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has
        // not yet reaped.
        let rc = unsafe { libc::kill(self.child.id().cast_signed(), signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("wait");
        assert!(!status.success(), "killed: {status}");
    }

    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "clean stop after SIGTERM: {status}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the acknowledgements promise across lives.
#[derive(Debug, Default, Clone)]
struct Model {
    must_exist: BTreeSet<String>,
    must_not_exist: BTreeSet<String>,
    acked: u64,
    unanswered: u64,
}

impl Model {
    fn created(&mut self, id: &str) {
        self.acked += 1;
        self.must_exist.insert(id.to_owned());
    }
    /// A destroy's answer: acknowledged, refused (a 4xx: nothing happened),
    /// or none (the agent died: it may or may not have happened).
    fn destroy_answered(&mut self, id: &str, result: &Result<(), ClientError>) {
        match result {
            Ok(()) => {
                self.acked += 1;
                self.must_exist.remove(id);
                self.must_not_exist.insert(id.to_owned());
            }
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {}
            Err(_) => {
                self.unanswered += 1;
                self.must_exist.remove(id);
            }
        }
    }
}

/// One worker: cycles of create, snapshot, fork, destroys; stops at the
/// first failure (the agent is gone) and reports each acknowledgement.
async fn worker(
    url: String,
    life: u64,
    w: usize,
    model: Arc<Mutex<Model>>,
    acks: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let client = Client::new(&url, token()).expect("client");
    let ack = || {
        let _ = acks.send(());
    };
    for cycle in 0..10_000u64 {
        let v = format!("l{life}-w{w}-c{cycle}");
        match client
            .create_volume("default", Some(&v), BTreeMap::default())
            .await
        {
            Ok(_) => model.lock().unwrap().created(&v),
            Err(_) => return,
        }
        ack();
        let snap = match client.snapshot(&v, BTreeMap::default()).await {
            Ok(s) => s.id,
            Err(_) => return,
        };
        model.lock().unwrap().created(&snap);
        ack();
        let fork = format!("{v}-fork");
        match client.fork(&snap, Some(&fork), BTreeMap::default()).await {
            Ok(_) => model.lock().unwrap().created(&fork),
            Err(_) => return,
        }
        ack();
        let doomed = [fork, snap, v];
        for id in doomed {
            let result = client.destroy(&id).await;
            model.lock().unwrap().destroy_answered(&id, &result);
            if result.is_err() {
                return;
            }
            ack();
        }
    }
}

/// Destroys what earlier lives left behind (forks, then snapshots, then
/// volumes) before the workers start, so the state stays small over
/// thousands of lives (else every start would reconcile an ever larger
/// inventory). Its destroys are checked like any other.
async fn janitor(url: String, model: Arc<Mutex<Model>>) {
    let client = Client::new(&url, token()).expect("client");
    let Ok(volumes) = client.list().await else {
        return;
    };
    let rank = |v: &VolumeInfo| match (v.kind, &v.parent) {
        (Kind::Data, Some(_)) => 0,
        (Kind::Snapshot, _) => 1,
        (Kind::Data, None) => 2,
    };
    let mut leftovers: Vec<&VolumeInfo> = volumes.iter().collect();
    leftovers.sort_by_key(|v| rank(v));
    for v in leftovers {
        let result = client.destroy(&v.id).await;
        model.lock().unwrap().destroy_answered(&v.id, &result);
        match result {
            Ok(()) => {}
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {}
            Err(_) => return,
        }
    }
}

fn tagged_inventory(root: &Path) -> Result<BTreeSet<String>, String> {
    let provider = DirProvider::new(root.to_owned()).map_err(|e| e.to_string())?;
    let mut ids = BTreeSet::new();
    for found in provider.inventory().map_err(|e| e.to_string())? {
        let Some(tag) = found.tag else { continue };
        if !matches!(found.presence, Presence::Complete) {
            return Err(format!("{} is half-made: {:?}", tag.volume, found.presence));
        }
        ids.insert(tag.volume);
    }
    Ok(ids)
}

/// The checks after a restart; returns (acknowledged lost, disagreements).
async fn check(agent: &Agent, report: &Value, root: &Path, model: &Model) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    for field in ["orphans", "unavailable"] {
        if report["fields"][field] != 0 {
            problems.push(format!("reconciliation reports {field}: {report}"));
        }
    }
    let client = Client::new(&agent.url, token()).expect("client");
    let volumes: Vec<VolumeInfo> = client.list().await.expect("list volumes");
    let ids: BTreeSet<String> = volumes.iter().map(|v| v.id.clone()).collect();
    for v in &volumes {
        if v.status != Status::Live {
            problems.push(format!("{} is {}", v.id, v.status));
        }
    }
    let missing: Vec<&String> = model.must_exist.difference(&ids).collect();
    let undone: Vec<&String> = model.must_not_exist.intersection(&ids).collect();
    let lost = (missing.len() + undone.len()) as u64;
    if lost > 0 {
        problems.push(format!(
            "acknowledged creates missing {missing:?}, acknowledged destroys undone {undone:?}"
        ));
    }
    let root = root.to_owned();
    match tokio::task::spawn_blocking(move || tagged_inventory(&root))
        .await
        .unwrap()
    {
        Ok(inventory) if inventory == ids => {}
        Ok(inventory) => problems.push(format!(
            "provider and state disagree: only in the provider {:?}, only in the state {:?}",
            inventory.difference(&ids).collect::<Vec<_>>(),
            ids.difference(&inventory).collect::<Vec<_>>()
        )),
        Err(e) => problems.push(format!("inventory: {e}")),
    }
    (lost, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_volmgr_serve_under_http_load_loses_no_acknowledged_volume_and_never_drifts() {
    let scale = torture_support::scale();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap());
    let seed = torture_support::seed(clock);
    println!("kill -9: seed {seed:#x} (VOLMGR_TORTURE_SEED={seed:#x} replays the kill points)");
    let mut rng = SplitMix64::new(seed);
    // A kill -9 leaves the page cache alone, so fsync latency is beside the
    // point here: on tmpfs (as root) the same run takes a fraction of the time.
    let tmpfs = torture_support::Tmpfs::mount("512m");
    let state = tempfile::tempdir().expect("tempdir");
    let base = tmpfs.as_ref().map_or(state.path(), |t| t.dir.as_path());
    let state_dir: PathBuf = base.join("state");
    let model = Arc::new(Mutex::new(Model::default()));
    let (mut kills, mut startup_kills, mut lost, mut disagreements) = (0u64, 0u64, 0u64, 0u64);
    let (mut resolutions, mut torn_tails) = (0u64, 0u64);
    let mut failures = Vec::new();
    let kills_wanted = KILLS * scale;
    let mut root = None;

    for life in 0..kills_wanted {
        let agent = tokio::task::block_in_place(|| Agent::start(&state_dir));
        if rng.below(8) == 0 {
            // Killed while the journal replays and the providers reconcile.
            tokio::task::block_in_place(|| agent.kill9());
            kills += 1;
            startup_kills += 1;
            continue;
        }
        let report = tokio::task::block_in_place(|| agent.wait_for("opened and reconciled"));
        tokio::task::block_in_place(|| agent.wait_for("ready"));
        resolutions += report["fields"]["resolutions"].as_u64().unwrap_or(0);
        if report["fields"]["journal_end"]
            .as_str()
            .is_some_and(|e| e.contains("TornTail"))
        {
            torn_tails += 1;
        }
        let root_dir =
            root.get_or_insert_with(|| state_dir.canonicalize().unwrap().join("volumes"));
        let promised = model.lock().unwrap().clone();
        let (l, problems) = check(&agent, &report, root_dir, &promised).await;
        lost += l;
        if !problems.is_empty() {
            disagreements += 1;
            if failures.len() < 10 {
                failures.push(format!("life {life}: {}", problems.join("; ")));
            }
        }

        janitor(agent.url.clone(), model.clone()).await;
        // Concurrent workers; the kill comes after a seeded number of acks.
        let target = 1 + rng.below(24);
        let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    agent.url.clone(),
                    life,
                    w,
                    model.clone(),
                    acks_tx.clone(),
                ))
            })
            .collect();
        drop(acks_tx);
        for _ in 0..target {
            if acks.recv().await.is_none() {
                break;
            }
        }
        tokio::task::block_in_place(|| agent.kill9());
        kills += 1;
        for w in workers {
            w.await.expect("worker");
        }
    }

    // A last life, stopped cleanly, then the manager in-process.
    let agent = tokio::task::block_in_place(|| Agent::start(&state_dir));
    let report = tokio::task::block_in_place(|| agent.wait_for("opened and reconciled"));
    tokio::task::block_in_place(|| agent.wait_for("ready"));
    let root_dir = state_dir.canonicalize().unwrap().join("volumes");
    let promised = model.lock().unwrap().clone();
    let (l, problems) = check(&agent, &report, &root_dir, &promised).await;
    lost += l;
    if !problems.is_empty() {
        disagreements += 1;
        failures.push(format!("last life: {}", problems.join("; ")));
    }
    tokio::task::block_in_place(|| agent.stop());
    let manager = Manager::open(&state_dir, ManagerConfig::default())
        .await
        .expect("open in-process");
    let state = manager.state();
    if !state.pending.is_empty() {
        disagreements += 1;
        failures.push(format!(
            "{} operations pending at the end",
            state.pending.len()
        ));
    }
    let volumes = state.volumes.len();
    manager.close().await;

    let model = model.lock().unwrap().clone();
    println!(
        "kill -9: kills {kills} (during startup {startup_kills}), seed {seed:#x}, acknowledged operations lost {lost}, provider/state disagreements {disagreements}"
    );
    println!(
        "kill -9 detail: acknowledged operations {}, unanswered destroys {}, reconciliation resolutions {resolutions}, torn tails {torn_tails}, volumes at the end {volumes}, state on {}",
        model.acked,
        model.unanswered,
        if tmpfs.is_some() {
            "tmpfs"
        } else {
            "the test's temp directory"
        }
    );
    assert!(kills >= KILLS, "at least {KILLS} kills per run");
    assert!(
        lost == 0 && disagreements == 0,
        "first failures (seed {seed:#x}):\n{}",
        failures.join("\n")
    );
}
