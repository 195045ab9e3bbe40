//! The SIGKILL crash test, shared by `tests/manager_crash.rs` (directory
//! provider), `tests/btrfs_crash.rs` (btrfs on a loop device) and
//! `tests/zfs.rs` (ZFS in the QEMU guest); each of them only says which
//! provider to run on, how hard, and what else to check on its provider.
//!
//! A child process (the test binary itself, running its ignored test
//! [`CHILD_TEST`], which calls [`child_workload`]) opens the manager and runs
//! concurrent workers doing create, snapshot, fork, send/receive and destroy.
//! It prints `ACK <verb> <id>` once an operation returned Ok, and `BEGIN
//! destroy <id>` before it asks a destroy (from then on the volume may go
//! either way). After a random number of acknowledgements the parent kills
//! the child's whole process group with SIGKILL (a `btrfs`/`zfs` command it
//! runs included) and reaps every member (it is a child subreaper), so the
//! next open never races with a dying command. Then it reopens the manager,
//! which reconciles, and checks:
//!
//! - every acknowledged operation survived: an acknowledged volume is
//!   present unless its destroy began, an acknowledged destroy stays done;
//!   what a reopen recorded must survive the next lives too;
//! - every volume is live, with its location present; no intent is pending
//!   and no orphan was reported;
//! - the provider's inventory, taken after the manager is closed, holds
//!   exactly the recorded volumes, all complete;
//! - whatever the provider's own check adds ([`CrashTest::provider_checks`]);
//! - the child never died before it was killed (its stderr is reported).
//!
//! The run fails on any violation, and when the children acknowledged
//! nothing at all (such a run proves nothing). It prints
//! `<label>: seed S, iterations N, acknowledged operations A, reconciliation
//! records R, violations V`. `VOLMGR_CRASH_SEED=S` replays a seed;
//! `VOLMGR_TORTURE_SCALE=K` multiplies the iterations.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use volmgr::manager::{Manager, ManagerConfig, ManagerError, ReconcileReport};
use volmgr::provider::{Found, Presence, ProviderConfig, builtin_factories};
use volmgr::state::{Meta, VolumeKind, VolumeStatus};
use volmgr::storage::sim::SplitMix64 as Rng;

/// The name of the ignored test that every crash test binary defines as
/// `async fn crash_child_workload() { common::crash::child_workload().await }`.
pub const CHILD_TEST: &str = "crash_child_workload";

/// The child's instructions, as JSON in this variable.
const ENV_CHILD: &str = "VOLMGR_CRASH_CHILD";

/// What the parent has seen after a reopen, for [`CrashTest::provider_checks`].
pub struct Reopened<'a> {
    /// The reopen's reconciliation report.
    pub report: &'a ReconcileReport,
    /// The volume ids in the state after reconciliation.
    pub recorded: &'a BTreeSet<String>,
    /// The provider's inventory, taken after the manager was closed.
    pub inventory: &'a [Found],
}

/// One provider's crash test. [`CrashTest::run`] runs it and panics on a
/// violation or when nothing was acknowledged.
pub struct CrashTest<'a> {
    /// Starts the printed lines: `crash test`, `btrfs crash test`, ...
    pub label: &'a str,
    /// The provider kind and configuration registered as `default`.
    pub kind: &'a str,
    pub config: ProviderConfig,
    /// Child lives (kills), multiplied by `VOLMGR_TORTURE_SCALE`.
    pub lives: u64,
    /// Each life is killed after 1 to this many acknowledgements.
    pub max_acks_per_life: u64,
    /// Concurrent workers in the child.
    pub workers: u64,
    /// Out of ten picks, how many destroy (the rest: 3 create, 2 snapshot,
    /// 1 fork, the remainder send/receive; create when there is no data
    /// volume, destroy when a fork or receive has no snapshot to use).
    pub destroy_tenths: u64,
    /// The default seed mixes the process id, the clock and this
    /// (`VOLMGR_CRASH_SEED` wins).
    pub seed_salt: u64,
    /// Provider-specific checks after each reopen: the problems found.
    pub provider_checks: &'a dyn Fn(&Reopened) -> Vec<String>,
}

/// What the parent knows about a volume id from the child's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Acknowledged made (or recorded at a reopen), no destroy asked since.
    Exists,
    /// Destroy acknowledged (or the volume is gone after a reopen).
    Gone,
    /// Destroy asked but not acknowledged: may have happened or not.
    Either,
}

/// The child's instructions.
#[derive(Serialize, Deserialize)]
struct ChildSpec {
    state: PathBuf,
    kind: String,
    config: ProviderConfig,
    seed: u64,
    workers: u64,
    destroy_tenths: u64,
}

/// A manager configuration registering `kind` with `config` as `default`,
/// checkpointing often (every 50 records).
pub fn manager_config(kind: &str, config: ProviderConfig) -> ManagerConfig {
    ManagerConfig {
        checkpoint_every: 50,
        checkpoint_grows_with_state: false,
        ..super::config::with_default_provider(kind, config)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

impl CrashTest<'_> {
    /// Runs every life and checks after each; panics with the violations
    /// found, or when the children acknowledged nothing.
    pub async fn run(self) {
        // SAFETY: prctl with constant arguments. The killed child's own
        // children are re-parented to this process, which reaps them.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        }
        let label = self.label;
        let lives = self.lives * env_u64("VOLMGR_TORTURE_SCALE").unwrap_or(1);
        let seed = env_u64("VOLMGR_CRASH_SEED").unwrap_or_else(|| {
            // The clock too: a guest boots with nearly the same pids.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            (u64::from(std::process::id()) ^ self.seed_salt ^ u64::from(nanos)) % 100_000
        });
        println!("{label}: seed {seed} (set VOLMGR_CRASH_SEED to replay)");
        let state = tempfile::tempdir().unwrap();
        let stderr_dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let mut model: BTreeMap<String, Known> = BTreeMap::new();
        let mut violations = Vec::new();
        let (mut acked_total, mut resolutions_total) = (0usize, 0usize);
        for i in 0..lives {
            let spec = ChildSpec {
                state: state.path().to_owned(),
                kind: self.kind.to_owned(),
                config: self.config.clone(),
                seed: rng.next_u64(),
                workers: self.workers,
                destroy_tenths: self.destroy_tenths,
            };
            let acks_before_kill = 1 + usize::try_from(rng.below(self.max_acks_per_life)).unwrap();
            let life = run_child(&spec, acks_before_kill, stderr_dir.path());
            let mut problems = Vec::new();
            if let Some(stderr) = life.died {
                problems.push(format!(
                    "the child died before it was killed, after {} of {acks_before_kill} \
                     acknowledgements; its stderr begins:\n{stderr}",
                    life.acked
                ));
            }
            acked_total += life.acked;
            learn(&mut model, &life.lines);
            let (recorded, resolutions) = self
                .reopen_and_check(state.path(), &model, &mut problems)
                .await;
            resolutions_total += resolutions;
            violations.extend(problems.into_iter().map(|p| format!("iteration {i}: {p}")));
            settle(&mut model, &recorded);
        }
        println!(
            "{label}: seed {seed}, iterations {lives}, acknowledged operations {acked_total}, \
             reconciliation records {resolutions_total}, violations {}",
            violations.len()
        );
        assert!(
            violations.is_empty(),
            "violations:\n{}",
            violations.join("\n")
        );
        assert!(
            acked_total > 0,
            "the children acknowledged nothing: the run proved nothing"
        );
    }

    /// Reopens the manager on `state` (which reconciles), closes it, takes
    /// the provider's inventory, and adds every disagreement with `model`
    /// and with itself to `problems`. Returns the recorded volume ids and
    /// the number of reconciliation records the reopen wrote.
    async fn reopen_and_check(
        &self,
        state: &Path,
        model: &BTreeMap<String, Known>,
        problems: &mut Vec<String>,
    ) -> (BTreeSet<String>, usize) {
        let manager = Manager::open(state, manager_config(self.kind, self.config.clone()))
            .await
            .unwrap();
        let report = manager.reconcile_report();
        let now = manager.state();
        for (id, known) in model {
            match (known, now.volumes.get(id)) {
                (Known::Exists, None) => {
                    problems.push(format!("acknowledged {id} missing (no destroy was asked)"));
                }
                (Known::Gone, Some(_)) => {
                    problems.push(format!("acknowledged destroy of {id} undone"));
                }
                _ => {}
            }
        }
        for v in now.volumes.values() {
            if v.status != VolumeStatus::Live {
                problems.push(format!("{} is {:?}", v.id, v.status));
            }
            if !Path::new(&v.location).is_dir() {
                problems.push(format!("{} has no directory at {}", v.id, v.location));
            }
        }
        if !now.pending.is_empty() {
            problems.push(format!(
                "{} pending intents after reconcile",
                now.pending.len()
            ));
        }
        if !now.orphans.is_empty() {
            problems.push(format!(
                "orphans: {:?}",
                now.orphans.keys().collect::<Vec<_>>()
            ));
        }
        let agent = manager.agent_id();
        manager.close().await;
        let factory = &builtin_factories()[self.kind];
        let inventory = factory(&self.config, &agent).unwrap().inventory().unwrap();
        let found: BTreeSet<String> = inventory
            .iter()
            .filter_map(|f| f.tag.as_ref().map(|t| t.volume.clone()))
            .collect();
        let recorded: BTreeSet<String> = now.volumes.keys().cloned().collect();
        if found != recorded {
            problems.push(format!(
                "inventory != state: only on the provider {:?}, only in the state {:?}",
                found.difference(&recorded).collect::<Vec<_>>(),
                recorded.difference(&found).collect::<Vec<_>>()
            ));
        }
        if let Some(f) = inventory.iter().find(|f| f.presence != Presence::Complete) {
            problems.push(format!("half-made item on the provider: {f:?}"));
        }
        problems.extend((self.provider_checks)(&Reopened {
            report: &report,
            recorded: &recorded,
            inventory: &inventory,
        }));
        (recorded, report.resolutions.len())
    }
}

/// Learns from a life's `ACK` and `BEGIN` lines, in order. An acknowledged
/// destroy is final: a later line never brings its volume back. A begun
/// destroy wins over an acknowledgement printed after it: a volume is in the
/// state before its maker prints `ACK`, so another worker may pick it and
/// print `BEGIN destroy` first (every other verb makes a fresh id, so an
/// `ACK` after `BEGIN destroy` of the same id is always that race).
fn learn(model: &mut BTreeMap<String, Known>, lines: &[String]) {
    for line in lines {
        let (known, id) = if let Some(id) = line.strip_prefix("BEGIN destroy ") {
            (Known::Either, id)
        } else if let Some(ack) = line.strip_prefix("ACK ") {
            let (verb, id) = ack.split_once(' ').unwrap();
            let known = if verb == "destroy" {
                Known::Gone
            } else {
                Known::Exists
            };
            (known, id)
        } else {
            continue;
        };
        match (model.get(id), known) {
            (Some(Known::Gone), _) | (Some(Known::Either), Known::Exists) => {}
            _ => {
                model.insert(id.to_owned(), known);
            }
        }
    }
}

/// After a reopen: unacknowledged operations may have rolled either way, so
/// what it recorded is the truth the next lives must keep, and whatever it
/// did not record is gone for good.
fn settle(model: &mut BTreeMap<String, Known>, recorded: &BTreeSet<String>) {
    *model = std::mem::take(model)
        .into_iter()
        .filter(|(id, k)| *k != Known::Exists && !recorded.contains(id))
        .map(|(id, _)| (id, Known::Gone))
        .chain(recorded.iter().map(|id| (id.clone(), Known::Exists)))
        .collect();
}

/// The longest one child life may take to reach its kill point (a life in
/// the TCG guest takes about 40 s).
const LIFE_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// What one child life printed.
struct Life {
    /// Its `ACK` and `BEGIN` lines, in order.
    lines: Vec<String>,
    /// How many of them are `ACK` lines.
    acked: usize,
    /// `Some(start of its stderr)` when it died before it was killed.
    died: Option<String>,
}

/// Runs a child until it has acknowledged `acks_before_kill` operations,
/// SIGKILLs its whole process group, reaps every member, and returns what
/// it printed before dying.
fn run_child(spec: &ChildSpec, acks_before_kill: usize, stderr_dir: &Path) -> Life {
    let stderr_path = stderr_dir.join("child.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            CHILD_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, serde_json::to_string(spec).unwrap())
        // A panic's message, not its backtrace, is what the report needs.
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id().cast_signed();
    // A child that hangs is killed after LIFE_LIMIT and reported, rather
    // than stalling the test forever.
    let (alive, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = matches!(
            watched.recv_timeout(LIFE_LIMIT),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if hung {
            // SAFETY: kill(2) on the process group we created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        hung
    });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut life = Life {
        lines: Vec::new(),
        acked: 0,
        died: None,
    };
    let mut reached = false;
    for line in out.by_ref() {
        let Ok(line) = line else { break };
        if line.starts_with("ACK ") {
            life.acked += 1;
        } else if !line.starts_with("BEGIN ") {
            continue;
        }
        life.lines.push(line);
        if life.acked >= acks_before_kill {
            reached = true;
            break;
        }
    }
    drop(alive);
    let hung = watchdog.join().unwrap_or(false);
    // SAFETY: kill(2) on the process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
    // The child's own children were re-parented to us (a subreaper): reap
    // every member of the group, so none is still working on the provider.
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own process group.
        if unsafe { libc::waitpid(-pgid, &raw mut status, 0) } < 0 {
            break;
        }
    }
    // What it acknowledged before dying is still in the pipe.
    for line in out.map_while(Result::ok) {
        if line.starts_with("ACK ") {
            life.acked += 1;
            life.lines.push(line);
        } else if line.starts_with("BEGIN ") {
            life.lines.push(line);
        }
    }
    if !reached {
        // Its first panic is the cause: the start of its stderr.
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let mut why = text.lines().take(20).collect::<Vec<_>>().join("\n");
        if hung {
            why = format!(
                "hung: {} of {acks_before_kill} acknowledgements within {LIFE_LIMIT:?}\n{why}",
                life.acked
            );
        }
        life.died = Some(why);
    }
    life
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child's side: opens the manager and runs the workers until killed.
/// Call it from the ignored test [`CHILD_TEST`]; it refuses to run without
/// the parent's instructions.
pub async fn child_workload() {
    let spec: ChildSpec = serde_json::from_str(
        &std::env::var(ENV_CHILD).expect("run only as the crash test's child"),
    )
    .unwrap();
    let manager = Manager::open(&spec.state, manager_config(&spec.kind, spec.config))
        .await
        .unwrap();
    let manager = Arc::new(manager);
    // Also ends the harness's `test crash_child_workload ... ` line, so
    // every ACK starts a line of its own.
    say("READY");
    let mut workers = Vec::new();
    for w in 0..spec.workers {
        let m = manager.clone();
        let mut rng = Rng::new(spec.seed ^ (w + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
        let receive_below = 10 - spec.destroy_tenths;
        workers.push(tokio::spawn(async move {
            loop {
                if let Ok(line) = one_operation(&m, &mut rng, receive_below).await {
                    say(&format!("ACK {line}"));
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// One random operation; `Ok("<verb> <id>")` when it was acknowledged.
async fn one_operation(
    m: &Manager,
    rng: &mut Rng,
    receive_below: u64,
) -> Result<String, ManagerError> {
    let volumes = m.volumes();
    let data: Vec<_> = volumes
        .iter()
        .filter(|v| v.kind == VolumeKind::Data)
        .collect();
    let snaps: Vec<_> = volumes
        .iter()
        .filter(|v| v.kind == VolumeKind::Snapshot)
        .collect();
    let pick = rng.below(10);
    if pick < 3 || data.is_empty() {
        let v = m.create_volume("default", None, Meta::new()).await?;
        let _ = std::fs::write(Path::new(&v.location).join("data"), &v.id);
        Ok(format!("create {}", v.id))
    } else if pick < 5 {
        let v = data[usize::try_from(rng.below(data.len() as u64)).unwrap()];
        let s = m.create_snapshot(&v.id, Meta::new()).await?;
        Ok(format!("snapshot {}", s.id))
    } else if pick < 6 && !snaps.is_empty() {
        let s = snaps[usize::try_from(rng.below(snaps.len() as u64)).unwrap()];
        let f = m.fork_volume(&s.id, None, Meta::new()).await?;
        Ok(format!("fork {}", f.id))
    } else if pick < receive_below && !snaps.is_empty() {
        let s = snaps[usize::try_from(rng.below(snaps.len() as u64)).unwrap()];
        let t = data[usize::try_from(rng.below(data.len() as u64)).unwrap()];
        let haves = m.list_haves(&t.id).unwrap_or_default();
        let mut stream = Vec::new();
        m.send_snapshot(&s.id, &haves, &mut stream).await?;
        let r = m.receive_snapshot(&t.id, stream.as_slice()).await?;
        Ok(format!("receive {}", r.id))
    } else {
        let v = &volumes[usize::try_from(rng.below(volumes.len() as u64)).unwrap()];
        // Announced first: from here on its existence is uncertain.
        say(&format!("BEGIN destroy {}", v.id));
        m.destroy_volume(&v.id).await?;
        Ok(format!("destroy {}", v.id))
    }
}
