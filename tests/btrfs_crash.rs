//! Crash test on real btrfs: a child process runs a concurrent workload
//! (create, snapshot, fork, send/receive, destroy) on a loop-mounted btrfs
//! and is SIGKILLed, with every process it started, at random points. After
//! each kill the parent reopens the manager (which reconciles) and checks:
//! every acknowledged operation is present, no volume is lost or pending,
//! no orphan was reported, nothing foreign appeared, the provider's inventory
//! equals the state (complete items only), and the file system holds no
//! subvolume besides the recorded volumes' (nothing leaked in staging).
//!
//! The child is this test binary running the ignored `crash_child_workload`.
//! The parent is a child subreaper and starts the child in its own process
//! group, so after the kill it reaps the child's orphaned `btrfs` processes
//! too: the next open never races with a dying `btrfs receive`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::BtrfsFs;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::btrfs::BtrfsProvider;
use volmgr::provider::{Presence, Provider};
use volmgr::state::{Meta, VolumeKind, VolumeStatus};

const ENV_STATE: &str = "VOLMGR_BTRFS_CRASH_STATE";
const ENV_ROOT: &str = "VOLMGR_BTRFS_CRASH_ROOT";
const ENV_SEED: &str = "VOLMGR_BTRFS_CRASH_SEED";

/// splitmix64: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn config(root: &str) -> ManagerConfig {
    let root = root.to_owned();
    ManagerConfig {
        default_provider: Some(Box::new(move || {
            Ok((
                "btrfs".to_string(),
                BTreeMap::from([("root".to_string(), root)]),
            ))
        })),
        checkpoint_every: 50,
        ..ManagerConfig::default()
    }
}

/// What the parent knows about a volume id from the child's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Acknowledged created, no destroy asked since.
    Exists,
    /// Destroy acknowledged.
    Gone,
    /// Destroy asked but not acknowledged.
    Either,
}

/// Prints a line the parent reads: `ACK <verb> <id>`, printed after an
/// operation returned Ok (and, for destroy, also before it is asked).
fn ack(line: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ACK {line}");
    let _ = out.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of btrfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state"]
async fn crash_child_workload() {
    let state = std::env::var(ENV_STATE).expect("run only as the crash test's child");
    let root = std::env::var(ENV_ROOT).unwrap();
    let seed: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let manager = Arc::new(Manager::open(&state, config(&root)).await.unwrap());
    println!("READY");
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let m = manager.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
            loop {
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
                let result: Result<String, ManagerError> = if pick < 3 || data.is_empty() {
                    match m.create_volume("default", None, Meta::new()).await {
                        Ok(v) => {
                            let _ = std::fs::write(Path::new(&v.location).join("data"), &v.id);
                            Ok(format!("create {}", v.id))
                        }
                        Err(e) => Err(e),
                    }
                } else if pick < 5 {
                    let v = data[rng.below(data.len() as u64) as usize];
                    m.create_snapshot(&v.id, Meta::new())
                        .await
                        .map(|s| format!("snapshot {}", s.id))
                } else if pick < 6 && !snaps.is_empty() {
                    let s = snaps[rng.below(snaps.len() as u64) as usize];
                    m.fork_volume(&s.id, None, Meta::new())
                        .await
                        .map(|f| format!("fork {}", f.id))
                } else if pick < 8 && !snaps.is_empty() {
                    let s = snaps[rng.below(snaps.len() as u64) as usize];
                    let t = data[rng.below(data.len() as u64) as usize];
                    let haves = m.list_haves(&t.id).unwrap_or_default();
                    let mut stream = Vec::new();
                    match m.send_snapshot(&s.id, &haves, &mut stream).await {
                        Ok(_) => m
                            .receive_snapshot(&t.id, stream.as_slice())
                            .await
                            .map(|r| format!("receive {}", r.id)),
                        Err(e) => Err(e),
                    }
                } else {
                    let all: Vec<_> = volumes.iter().collect();
                    let v = all[rng.below(all.len() as u64) as usize];
                    ack(format!("destroying {}", v.id));
                    m.destroy_volume(&v.id)
                        .await
                        .map(|()| format!("destroy {}", v.id))
                };
                if let Ok(line) = result {
                    ack(line);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Runs the child until it acknowledged `acks_before_kill` operations, then
/// kills its whole process group and reaps every member.
fn run_child(state: &Path, root: &Path, seed: u64, acks_before_kill: usize) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child_workload",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_STATE, state)
        .env(ENV_ROOT, root)
        .env(ENV_SEED, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as libc::pid_t;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acks = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("ACK ") {
            acks.push(rest.to_owned());
            if acks.len() >= acks_before_kill {
                break;
            }
        }
    }
    // SAFETY: kill(2) on the process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
    // The child's own children were re-parented to us (a subreaper): reap
    // every member of the group, so none is still working on the file system.
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our process group.
        let r = unsafe { libc::waitpid(-pgid, &mut status, 0) };
        if r < 0 {
            break;
        }
    }
    // What the child printed before it died was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ACK ") {
            acks.push(rest.to_owned());
        }
    }
    acks
}

fn subvolume_count(mnt: &Path) -> usize {
    let out = Command::new("btrfs")
        .args(["subvolume", "list"])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state() {
    let test = "btrfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state";
    let Some(fs) = BtrfsFs::for_test(test, 1024) else {
        return;
    };
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    let iterations: u64 = 25
        * std::env::var("VOLMGR_TORTURE_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
    let seed: u64 = std::env::var("VOLMGR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 ^ 0xB7F5);
    println!("btrfs crash test: seed {seed} (set VOLMGR_CRASH_SEED to replay)");
    let state = tempfile::tempdir().unwrap();
    let root = fs.path().join("volumes");
    let root_s = root.to_str().unwrap().to_owned();
    let mut rng = Rng(seed);
    let mut model: BTreeMap<String, Known> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut acked_total = 0usize;
    let mut resolutions_total = 0usize;
    for i in 0..iterations {
        let acks = run_child(state.path(), &root, rng.next(), 1 + rng.below(30) as usize);
        acked_total += acks
            .iter()
            .filter(|a| !a.starts_with("destroying "))
            .count();
        for a in &acks {
            let (verb, id) = a.split_once(' ').unwrap();
            let known = match verb {
                "destroy" => Known::Gone,
                // Asked, not acknowledged: may have happened or not.
                "destroying" => Known::Either,
                _ => Known::Exists,
            };
            if model.get(id) != Some(&Known::Gone) {
                model.insert(id.to_owned(), known);
            }
        }
        let manager = Manager::open(state.path(), config(&root_s)).await.unwrap();
        let report = manager.reconcile_report();
        resolutions_total += report.resolutions.len();
        let state_now = manager.state();
        let mut problems = Vec::new();
        for (id, known) in &model {
            let v = state_now.volumes.get(id);
            match known {
                Known::Exists if v.is_none() => {
                    problems.push(format!("acknowledged {id} missing (no destroy was asked)"))
                }
                Known::Gone if v.is_some() => {
                    problems.push(format!("acknowledged destroy of {id} undone"))
                }
                _ => {}
            }
        }
        for v in state_now.volumes.values() {
            if v.status != VolumeStatus::Live {
                problems.push(format!("{} is {:?}", v.id, v.status));
            }
            if !Path::new(&v.location).is_dir() {
                problems.push(format!("{} has no directory at {}", v.id, v.location));
            }
        }
        if !state_now.pending.is_empty() {
            problems.push(format!(
                "{} pending intents after reconcile",
                state_now.pending.len()
            ));
        }
        if !state_now.orphans.is_empty() {
            problems.push(format!(
                "orphans: {:?}",
                state_now.orphans.keys().collect::<Vec<_>>()
            ));
        }
        if !report.foreign.is_empty() {
            problems.push(format!("foreign items appeared: {:?}", report.foreign));
        }
        manager.close().await;
        let provider = BtrfsProvider::new(&root).unwrap();
        let inventory = provider.inventory().unwrap();
        let found: BTreeSet<String> = inventory
            .iter()
            .filter_map(|f| f.tag.as_ref().map(|t| t.volume.clone()))
            .collect();
        let recorded: BTreeSet<String> = state_now.volumes.keys().cloned().collect();
        if found != recorded {
            problems.push(format!(
                "inventory != state: only on provider {:?}, only in state {:?}",
                found.difference(&recorded).collect::<Vec<_>>(),
                recorded.difference(&found).collect::<Vec<_>>()
            ));
        }
        if let Some(f) = inventory.iter().find(|f| f.presence != Presence::Complete) {
            problems.push(format!("half-made item on the provider: {f:?}"));
        }
        let subvolumes = subvolume_count(fs.path());
        if subvolumes != recorded.len() {
            problems.push(format!(
                "{subvolumes} subvolumes on the file system for {} volumes (leak)",
                recorded.len()
            ));
        }
        for p in problems {
            violations.push(format!("iteration {i}: {p}"));
        }
        // Unacknowledged operations may have rolled either way; learn the truth.
        model = model
            .into_iter()
            .filter(|(id, k)| *k != Known::Exists && !recorded.contains(id))
            .map(|(id, _)| (id, Known::Gone))
            .chain(recorded.iter().map(|id| (id.clone(), Known::Exists)))
            .collect();
    }
    println!(
        "btrfs crash test: seed {seed}, iterations {iterations}, acknowledged operations \
         {acked_total}, reconciliation records {resolutions_total}, violations {}",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
}
