//! Exactly once across crashes, through the CSI plugin: an agent serving
//! CSI on the dir provider is killed (`SIGKILL`) while `CreateVolume` and
//! `CreateSnapshot` calls are in flight, restarted, and every call is retried
//! under the same name, as a CO does. Each retry must answer the volume or
//! snapshot the name maps to; afterwards the provider must hold exactly the
//! volumes and snapshots the plugin lists (no duplicate, no orphan), and
//! ListVolumes/ListSnapshots must show each name once. At least 50 kills
//! (`VOLMGR_CSI_KILLS`); the figures are printed. Kill points are spread by
//! a seeded random delay (`VOLMGR_CRASH_SEED` replays one).

mod csi_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use csi_support::CsiAgent;
use volmgr::csi::client::CsiClients;
use volmgr::csi::names::id_for_name;
use volmgr::csi::proto::{
    CreateSnapshotRequest, CreateVolumeRequest, ListSnapshotsRequest, ListVolumesRequest,
    VolumeCapability, volume_capability,
};

/// Calls in flight when the agent is killed.
const CALLS_PER_KILL: usize = 4;

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_volume(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        volume_capabilities: vec![capability()],
        ..Default::default()
    }
}

fn create_snapshot(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.to_owned(),
        source_volume_id: source.to_owned(),
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
enum Call {
    Volume(String),
    Snapshot(String, String),
}

impl Call {
    fn name(&self) -> &str {
        match self {
            Call::Volume(n) | Call::Snapshot(n, _) => n,
        }
    }

    /// The id the call answered.
    async fn run(&self, c: &mut CsiClients) -> Result<String, tonic::Status> {
        match self {
            Call::Volume(name) => c
                .controller
                .create_volume(create_volume(name))
                .await
                .map(|r| r.into_inner().volume.unwrap_or_default().volume_id),
            Call::Snapshot(name, source) => c
                .controller
                .create_snapshot(create_snapshot(name, source))
                .await
                .map(|r| r.into_inner().snapshot.unwrap_or_default().snapshot_id),
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

async fn listed(c: &mut CsiClients) -> (Vec<String>, Vec<String>) {
    let volumes = c
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    let snapshots = c
        .controller
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.snapshot.unwrap().snapshot_id)
        .collect();
    (volumes, snapshots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_killed_mid_flight_and_retried_by_name_happen_exactly_once() {
    let kills: usize = std::env::var("VOLMGR_CSI_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(60)
        .max(50);
    let seed: u64 = std::env::var("VOLMGR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos(),
            )
            .unwrap()
                | 1
        });
    println!("csi crash test: seed {seed} (VOLMGR_CRASH_SEED={seed} replays it), {kills} kills");
    let mut rng = Rng(seed);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let socket = work.path().join("csi.sock");
    let root = state.join("volumes");

    let mut agent = CsiAgent::start(&state, &socket, &[]);
    let mut c = agent.ready().await;
    let base = c
        .controller
        .create_volume(create_volume("base"))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    let (mut found_after_restart, mut made_by_retry, mut answered_before_kill) = (0, 0, 0);
    let mut retries_aborted = 0;
    let mut expected_volumes = BTreeSet::from([base.clone()]);
    let mut expected_snapshots = BTreeSet::new();
    for k in 0..kills {
        let calls: Vec<Call> = (0..CALLS_PER_KILL)
            .map(|j| {
                if (k + j) % 2 == 0 {
                    Call::Volume(format!("pvc-{k}-{j}"))
                } else {
                    Call::Snapshot(format!("snap-{k}-{j}"), base.clone())
                }
            })
            .collect();
        let tasks: Vec<_> = calls
            .iter()
            .map(|call| {
                let call = call.clone();
                let mut c = c.clone();
                tokio::spawn(async move { call.run(&mut c).await })
            })
            .collect();
        // The kill lands anywhere from before the first intent to after the
        // last outcome.
        tokio::time::sleep(Duration::from_micros(rng.next() % 40_000)).await;
        agent.kill();
        for t in tasks {
            if let Ok(Ok(_)) = t.await {
                answered_before_kill += 1;
            }
        }

        agent = CsiAgent::start(&state, &socket, &[]);
        c = agent.ready().await;
        let (volumes, snapshots) = listed(&mut c).await;
        for call in &calls {
            let id = id_for_name(call.name());
            let present = volumes.contains(&id) || snapshots.contains(&id);
            // Retried as a CO does, until it answers (ABORTED: in flight).
            let answered = loop {
                match call.run(&mut c).await {
                    Ok(answered) => break answered,
                    Err(s) if s.code() == tonic::Code::Aborted => retries_aborted += 1,
                    Err(s) => panic!("retry of {call:?} failed: {s}"),
                }
                assert!(retries_aborted < 10_000, "retries never settle");
            };
            assert_eq!(answered, id, "{call:?} answered another id");
            if present {
                found_after_restart += 1;
            } else {
                made_by_retry += 1;
            }
            match call {
                Call::Volume(_) => expected_volumes.insert(id),
                Call::Snapshot(..) => expected_snapshots.insert(id),
            };
        }
        let (volumes, snapshots) = listed(&mut c).await;
        let (vset, sset): (BTreeSet<_>, BTreeSet<_>) = (
            volumes.iter().cloned().collect(),
            snapshots.iter().cloned().collect(),
        );
        assert_eq!(vset.len(), volumes.len(), "a volume listed twice");
        assert_eq!(sset.len(), snapshots.len(), "a snapshot listed twice");
        assert_eq!(vset, expected_volumes, "volumes after kill {k}");
        assert_eq!(sset, expected_snapshots, "snapshots after kill {k}");
        // The provider holds exactly those: no duplicate, no orphan.
        assert_eq!(
            entries(&root.join("data")),
            expected_volumes,
            "data dirs after kill {k}"
        );
        assert_eq!(
            entries(&root.join(".volmgr").join("data")),
            expected_volumes,
            "data markers after kill {k}"
        );
        assert_eq!(entries(&root.join("snapshot")), expected_snapshots);
        assert_eq!(
            entries(&root.join(".volmgr").join("snapshot")),
            expected_snapshots
        );
    }
    let calls = kills * CALLS_PER_KILL;
    let _ = writeln!(
        std::io::stdout().lock(),
        "csi crash test: {kills} kills, {calls} calls in flight: {answered_before_kill} answered \
         before the kill, {found_after_restart} found done after the restart, {made_by_retry} made \
         by the retry, {retries_aborted} retries answered ABORTED; duplicates 0, orphans 0, \
         wrong answers 0"
    );
    assert_eq!(found_after_restart + made_by_retry, calls);
    assert_eq!(
        agent.stop(),
        Some(0),
        "clean stop; log:\n{}",
        agent.log_text()
    );
}
