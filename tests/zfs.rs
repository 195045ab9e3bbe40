//! Real-ZFS tests (run inside the QEMU guest by `scripts/zfs-test`; on a host
//! without ZFS each test prints a SKIP line, and fails under
//! `VOLMGR_REQUIRE_ZFS=1`). The provider contract suite runs on ZFS from
//! `tests/provider_contract.rs` (`VOLMGR_CONTRACT_PROVIDER=zfs`); this file
//! holds what is ZFS-only: a crash test with SIGKILL, two pools standing in
//! for two hosts, typed errors of real ZFS conditions (dependent clones, a
//! busy dataset, a tenant keeping a volume or snapshot busy, an interrupted
//! resumable receive), the number of `zfs`
//! commands each verb runs, and the latency figures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::crash::{CrashTest, Reopened, child_workload};
use common::{ZfsPool, noise, tree};
use uuid::Uuid;
use volmgr::journal::{Journal, JournalConfig};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::model::VolumeId;
use volmgr::provider::cmd::CommandCount;
use volmgr::provider::zfs::{KIND, RECEIVED_PROGRAM, SNAPSHOT_PROGRAM, ZfsProvider};
use volmgr::provider::{
    Created, Presence, Provider, ProviderConfig, ProviderError, SendOptions, Tag, VolumeRef,
    VolumeSpec,
};
use volmgr::state::{Action, Case, DETAIL_GUID, Details, Meta, Record, VolumeKind};

fn manager_config(provider: ProviderConfig) -> ManagerConfig {
    common::crash::manager_config(KIND, provider)
}

fn zfs_out(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output().unwrap();
    assert!(out.status.success(), "zfs {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A pool of 256 MB for `test` and a provider on it (root dataset
/// `<pool>/volmgr`); `None` where ZFS is unusable (the pool's own SKIP line,
/// or its failure under `VOLMGR_REQUIRE_ZFS=1`), and the test returns.
fn pool_and_provider(test: &str) -> Option<(ZfsPool, ZfsProvider)> {
    let pool = ZfsPool::for_test(test, 256)?;
    let p = ZfsProvider::from_config(&pool.provider_config()).unwrap();
    Some((pool, p))
}

fn data_spec(id: &str, op: Uuid) -> VolumeSpec<'_> {
    VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op,
        kind: VolumeKind::Data,
    }
}

fn vref<'a>(
    id: &'a str,
    kind: VolumeKind,
    parent: Option<&'a str>,
    details: &'a Details,
) -> VolumeRef<'a> {
    VolumeRef {
        id: VolumeId::new(id).unwrap(),
        kind,
        parent,
        location: "",
        details,
    }
}

// --- crash test ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of zfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state"]
async fn crash_child_workload() {
    child_workload().await;
}

/// The workload and the common checks are `tests/common/crash.rs`, shared
/// with the directory and btrfs crash tests; three workers, as a 2-core
/// guest runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state() {
    let test = "zfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state";
    let Some(pool) = ZfsPool::for_test(test, 512) else {
        return;
    };
    // The report's foreign list is taken before recovery acts: a snapshot
    // that arrived untagged when the receive was killed shows there, then
    // abort_partial removes it. What must hold is that nothing untagged
    // remains afterwards, in the inventory taken after the manager closed.
    let zfs_checks = |r: &Reopened| {
        let untagged: Vec<_> = r
            .inventory
            .iter()
            .filter(|f| f.tag.is_none())
            .map(|f| &f.name)
            .collect();
        if untagged.is_empty() {
            Vec::new()
        } else {
            vec![format!("untagged datasets appeared: {untagged:?}")]
        }
    };
    CrashTest {
        label: "zfs crash test",
        kind: KIND,
        config: pool.provider_config(),
        lives: 8,
        max_acks_per_life: 20,
        workers: 3,
        destroy_tenths: 2,
        seed_salt: 0x2F5,
        provider_checks: &zfs_checks,
    }
    .run()
    .await;
}

// --- two hosts ----------------------------------------------------------------

/// The guest's blank disks, else file vdevs.
fn two_pools(test: &str) -> Option<(ZfsPool, ZfsPool)> {
    let disks: Vec<String> = std::env::var("ZFSVM_DISKS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if disks.len() >= 2 {
        let a = ZfsPool::on_disk(test, "hosta", &disks[0])?;
        let b = ZfsPool::on_disk(test, "hostb", &disks[1])?;
        Some((a, b))
    } else {
        let a = ZfsPool::for_test(&format!("{test}-a"), 512)?;
        let b = ZfsPool::for_test(&format!("{test}-b"), 512)?;
        Some((a, b))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_stream_between_two_pools_is_small_and_carries_the_data() {
    let test = "incremental_stream_between_two_pools_is_small_and_carries_the_data";
    let Some((pa, pb)) = two_pools(test) else {
        return;
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Manager::open(sa.path(), manager_config(pa.provider_config()))
        .await
        .unwrap();
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();
    let src = a.create_volume("default", None, Meta::new()).await.unwrap();
    let big = noise(7, 100 << 20);
    std::fs::write(Path::new(&src.location).join("big"), &big).unwrap();
    std::fs::write(Path::new(&src.location).join("small"), b"v1").unwrap();
    let s1 = a.create_snapshot(&src.id, Meta::new()).await.unwrap();
    let dst = b.create_volume("default", None, Meta::new()).await.unwrap();

    // Full: the receiver has nothing.
    let haves = b.list_haves(&dst.id).unwrap();
    assert!(haves.is_empty());
    let t = Instant::now();
    let mut stream = Vec::new();
    let full = a.send_snapshot(&s1.id, &haves, &mut stream).await.unwrap();
    let r1 = b
        .receive_snapshot(&dst.id, stream.as_slice())
        .await
        .unwrap();
    let full_time = t.elapsed();
    assert!(!full.incremental);
    assert!(
        full.bytes >= 100 << 20,
        "full stream of 100 MB: {} bytes",
        full.bytes
    );
    assert_eq!(
        r1.details[DETAIL_GUID], s1.details[DETAIL_GUID],
        "the received snapshot is the sender's, by GUID"
    );
    let name = zfs_out(&[
        "list",
        "-H",
        "-o",
        "name",
        "-t",
        "snapshot",
        "-r",
        &pb.dataset(),
    ]);
    assert_eq!(
        name,
        format!("{}/data/{}@{}", pb.dataset(), dst.id, r1.id),
        "renamed to the receiver's snapshot id"
    );

    // Incremental: a 10 MB change.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new(&src.location).join("big"))
            .unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&noise(8, 10 << 20)).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::write(Path::new(&src.location).join("small"), b"v2").unwrap();
    let s2 = a.create_snapshot(&src.id, Meta::new()).await.unwrap();
    let haves = b.list_haves(&dst.id).unwrap();
    assert_eq!(haves, vec![s1.details[DETAIL_GUID].clone()]);
    let t = Instant::now();
    let mut stream = Vec::new();
    let inc = a.send_snapshot(&s2.id, &haves, &mut stream).await.unwrap();
    let r2 = b
        .receive_snapshot(&dst.id, stream.as_slice())
        .await
        .unwrap();
    let inc_time = t.elapsed();
    assert!(inc.incremental, "base found among the receiver's haves");
    assert!(
        ((10 << 20)..(20 << 20)).contains(&inc.bytes),
        "an incremental stream carries the change only: {} bytes",
        inc.bytes
    );
    assert_eq!(r2.details[DETAIL_GUID], s2.details[DETAIL_GUID]);
    let want = tree(Path::new(&s2.location));
    assert_eq!(
        tree(Path::new(&dst.location)),
        want,
        "target content matches"
    );
    assert_eq!(
        tree(Path::new(&r2.location)),
        want,
        "received snapshot matches"
    );
    assert_eq!(
        tree(Path::new(&b.volume(&r1.id).unwrap().location))["small"],
        b"v1",
        "the first received snapshot is kept"
    );
    println!(
        "FIGURE zfs full send+receive of 100 MB: {} bytes in {:.2?}; incremental of a 10 MB change: {} bytes in {:.2?}",
        full.bytes, full_time, inc.bytes, inc_time
    );
    a.close().await;
    b.close().await;
}

// --- typed errors of real ZFS conditions ---------------------------------------

#[test]
fn snapshot_with_a_clone_is_refused_as_has_dependents_and_absent_destroy_succeeds() {
    let test = "snapshot_with_a_clone_is_refused_as_has_dependents_and_absent_destroy_succeeds";
    let Some((_pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    let snap_spec = VolumeSpec {
        id: VolumeId::new("s").unwrap(),
        op: Uuid::now_v7(),
        kind: VolumeKind::Snapshot,
    };
    let s = p
        .create_snapshot(&vref("v", VolumeKind::Data, None, &none), &snap_spec)
        .unwrap();
    p.fork_volume(
        &vref("s", VolumeKind::Snapshot, Some("v"), &s.details),
        &data_spec("f", Uuid::now_v7()),
    )
    .unwrap();
    let err = p
        .destroy(&vref("s", VolumeKind::Snapshot, Some("v"), &s.details))
        .unwrap_err();
    match err {
        ProviderError::HasDependents { dependents, .. } => assert_eq!(dependents, vec!["f"]),
        other => panic!("{other:?}"),
    }
    let err = p
        .destroy(&vref("v", VolumeKind::Data, None, &none))
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::HasDependents { .. }),
        "{err:?}"
    );
    p.destroy(&vref("f", VolumeKind::Data, None, &none))
        .unwrap();
    p.destroy(&vref("s", VolumeKind::Snapshot, Some("v"), &s.details))
        .unwrap();
    p.destroy(&vref("v", VolumeKind::Data, None, &none))
        .unwrap();
    p.destroy(&vref("v", VolumeKind::Data, None, &none))
        .unwrap();
    p.destroy(&vref("never", VolumeKind::Snapshot, Some("v"), &none))
        .unwrap();
    assert!(p.inventory().unwrap().is_empty());
}

#[test]
fn destroy_of_a_volume_in_use_retries_then_reports_busy_with_the_cause() {
    let test = "destroy_of_a_volume_in_use_retries_then_reports_busy_with_the_cause";
    let Some((_pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let v = p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    // A process whose working directory is inside the volume keeps it busy.
    let mut holder = Command::new("sleep")
        .arg("600")
        .current_dir(&v.location)
        .spawn()
        .unwrap();
    let err = p
        .destroy(&vref("v", VolumeKind::Data, None, &none))
        .unwrap_err();
    let _ = holder.kill();
    let _ = holder.wait();
    match &err {
        ProviderError::Busy { what, cause } => {
            assert!(
                what.starts_with("volume v (") && what.ends_with("/data/v)"),
                "{what}"
            );
            assert!(cause.contains("busy"), "{cause}");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    p.destroy(&vref("v", VolumeKind::Data, None, &none))
        .unwrap();
}

// --- tenants keeping a dataset busy -------------------------------------------

/// A tenant process holding a volume or snapshot busy, started by `cmd`
/// (a `sh -c '...; echo ready; exec sleep 600'` that prints `ready` once
/// it holds it: no sleep synchronises the test); it leaves when dropped.
struct Tenant(std::process::Child);

impl Tenant {
    fn start(mut cmd: Command) -> Tenant {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("tenant starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "tenant {cmd:?}");
        Tenant(child)
    }

    /// User nobody (setpriv, no capability) with its working directory in
    /// `dir`, entered before it dropped root (the mounts directory is 0700).
    fn nobody_inside(dir: &str) -> Tenant {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", "echo ready; exec sleep 600"])
            .current_dir(dir);
        Tenant::start(cmd)
    }

    /// As [`Tenant::nobody_inside`], in a mount namespace of its own (a
    /// container's): it holds its copy of the mount, not the host's.
    fn nobody_inside_its_own_namespace(dir: &str) -> Tenant {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--"])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ])
            .args(["sh", "-c", "echo ready; exec sleep 600"])
            .current_dir(dir);
        Tenant::start(cmd)
    }

    /// Root with `file` open (its working directory elsewhere).
    fn root_with_open(file: &Path) -> Tenant {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec 3<\"$1\" && echo ready && exec sleep 600", "sh"])
            .arg(file)
            .current_dir("/");
        Tenant::start(cmd)
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CSI plugin serving `m` on a socket in `dir` (stopped with the token).
async fn csi_plugin(
    m: &Manager,
    dir: &Path,
) -> (
    volmgr::csi::client::CsiClients,
    tokio_util::sync::CancellationToken,
) {
    use volmgr::csi::{CsiOptions, CsiServer};
    let socket = dir.join("csi.sock");
    let server = CsiServer::new(CsiOptions::new("n1").unwrap());
    server.ready(m.clone()).unwrap();
    let listener = CsiServer::bind(&socket).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
    let c = volmgr::csi::client::CsiClients::connect(&socket)
        .await
        .unwrap();
    (c, stop)
}

/// Asserts that `err` is the provider's busy error of `kind` `id` naming
/// its `location` and what holds it, and that the agent answers it 409
/// `busy` (not a 500); returns the message.
#[track_caller]
fn assert_in_use(err: ManagerError, kind: VolumeKind, id: &str, location: &str) -> String {
    match &err {
        ManagerError::Provider {
            error: ProviderError::Busy { what, cause },
            ..
        } => {
            let kind = match kind {
                VolumeKind::Snapshot => "snapshot",
                VolumeKind::Data => "volume",
            };
            assert!(what.starts_with(&format!("{kind} {id} (")), "{what}");
            assert!(
                cause.contains(&format!("in use at {location}: a process has its working directory or an open file in it")),
                "{cause}"
            );
            assert!(cause.contains("nothing was destroyed"), "{cause}");
            assert!(
                cause.contains("dataset is busy"),
                "ZFS's own words: {cause}"
            );
        }
        other => panic!("expected the provider's Busy, got {other:?}"),
    }
    let api = volmgr::agent::error::ApiError::from(err);
    assert_eq!(
        (api.status.as_u16(), api.code),
        (409, "busy"),
        "{}",
        api.message
    );
    api.message
}

/// The summaries `volmgr journal dump` gives the records of type `record`
/// ("outcome", "reconciled") of volume `id` in the journal of `state`, in
/// order ("done ..." / "failed error=... action=...", "case=...
/// effect=resolve failed error=... action=destroy ...").
fn dumped(state: &Path, record: &str, id: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(["journal", "dump"])
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7 && f[3] == record && f[4] == id).then(|| f[6].to_owned())
        })
        .collect()
}

/// How each destroy of `id` journaled in `state` ended ("failed", "done"),
/// in order.
fn destroy_results(state: &Path, id: &str) -> Vec<String> {
    dumped(state, "outcome", id)
        .iter()
        .filter(|o| o.ends_with("action=destroy"))
        .map(|o| o.split(' ').next().unwrap().to_owned())
        .collect()
}

/// A pool for `test` and a manager on it, its state directory in the
/// returned temporary directory.
async fn managed_pool(test: &str) -> Option<(ZfsPool, tempfile::TempDir, PathBuf, Manager)> {
    let pool = ZfsPool::for_test(test, 256)?;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let m = Manager::open(&state, manager_config(pool.provider_config()))
        .await
        .unwrap();
    Some((pool, dir, state, m))
}

/// Reopens `state`: the open must find nothing to resolve and nothing
/// foreign.
async fn reopen_clean(state: &Path, pool: &ZfsPool) -> Manager {
    let m = Manager::open(state, manager_config(pool.provider_config()))
        .await
        .unwrap();
    let report = m.reconcile_report();
    assert!(report.resolutions.is_empty(), "{:?}", report.resolutions);
    assert!(report.foreign.is_empty(), "{:?}", report.foreign);
    m
}

/// ZFS's `mounted` property of `dataset` ("yes", "no").
fn zfs_mounted(dataset: &str) -> String {
    zfs_out(&["get", "-Hpo", "value", "mounted", dataset])
}

/// The destroy of `id` that a tenant keeps busy, and the `zfs` commands it
/// ran; prints them and the time it took (`FIGURE`, no bound on it).
async fn busy_destroy(m: &Manager, id: &str, what: &str) -> (ManagerError, CommandCount) {
    let started = Instant::now();
    let (result, ran) = counted(m.destroy_volume(id)).await;
    println!(
        "FIGURE busy destroy of a {what}: {} zfs commands, {:?}",
        ran.zfs,
        started.elapsed()
    );
    (result.unwrap_err(), ran)
}

/// Story: a tenant can enter `.zfs/snapshot/<id>` from inside its volume
/// (or hold a file of the snapshot open), which mounts the snapshot and
/// keeps it busy; `zfs destroy` of it then fails "dataset is busy" (so do
/// `-f` and a lazy unmount, measured in the guest: the lazily unmounted
/// `.zfs/snapshot/<id>` then fails ELOOP for everyone else). The operator
/// gets a busy conflict naming the location and the holder (agent 409
/// `busy`, CSI `FAILED_PRECONDITION`, which were 500 and `INTERNAL` with
/// ZFS's bare message), the journal a Failed outcome, and the snapshot
/// stays as it was: listed, readable, forkable, sendable. Once the tenant
/// has left, the destroy goes through, and the next open finds nothing to
/// resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_inside_a_snapshot_makes_its_destroy_a_busy_conflict_that_changes_nothing_until_it_leaves()
 {
    let Some((pool, dir, state, m)) = managed_pool("a_tenant_inside_a_snapshot_makes_its_destroy_a_busy_conflict_that_changes_nothing_until_it_leaves").await else {
        return;
    };
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"tenant data").unwrap();
    let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    let (mut csi, stop) = csi_plugin(&m, dir.path()).await;

    // Unprivileged, its working directory in the snapshot.
    let tenant = Tenant::nobody_inside(&s.location);
    let (err, ran) = busy_destroy(&m, &s.id, "snapshot, a tenant inside").await;
    assert_in_use(err, VolumeKind::Snapshot, &s.id, &s.location);
    // The program (EBUSY: mounted, no user hold), one `zfs destroy` (the
    // snapshot still mounted after it: a process holds it, no retry; there
    // were 8), and no lookup after it (Busy: nothing destroyed; it was 2).
    assert_eq!(ran, zfs_commands(2), "snapshot held by a tenant");
    // Everything else the snapshot serves goes on.
    assert_eq!(m.volume(&s.id).unwrap(), s, "state unchanged");
    assert_eq!(
        std::fs::read(Path::new(&s.location).join("f")).unwrap(),
        b"tenant data",
        "still readable at its location"
    );
    let fork = m.fork_volume(&s.id, None, Meta::new()).await.unwrap();
    m.destroy_volume(&fork.id).await.unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&s.id, &[], &mut stream).await.unwrap();
    assert!(!stream.is_empty());
    assert!(matches!(
        m.destroy_volume(&v.id).await.unwrap_err(),
        ManagerError::HasDependents { .. }
    ));
    drop(tenant);

    // Root, a file of the snapshot open; through CSI.
    let tenant = Tenant::root_with_open(&Path::new(&s.location).join("f"));
    let status = csi
        .controller
        .delete_snapshot(volmgr::csi::proto::DeleteSnapshotRequest {
            snapshot_id: s.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("in use at"), "{status:?}");
    assert_eq!(m.volume(&s.id).unwrap(), s, "state unchanged");
    drop(tenant);

    // Gone: the destroy goes through.
    m.destroy_volume(&s.id).await.unwrap();
    stop.cancel();
    m.close().await;
    let destroys = destroy_results(&state, &s.id);
    assert_eq!(destroys, ["failed", "failed", "done"]);

    let m = reopen_clean(&state, &pool).await;
    assert!(m.volume(&s.id).is_err());
    assert_eq!(m.volume(&v.id).unwrap().location, v.location);
    m.close().await;
}

/// Story: a tenant with its working directory in a data volume keeps it
/// busy: `zfs destroy` fails "cannot unmount ...: pool or dataset is busy"
/// when the tenant is in the host's mount namespace, and "dataset is
/// busy" *after unmounting the volume* when the tenant is in a namespace
/// of its own (a container holds its copy of the mount): the volume
/// stayed listed, its location an empty directory on the host's file
/// system, where the next tenant would have written. Now the volume is
/// mounted again (ZFS gives it the superblock the tenant still uses), the
/// operator gets a busy conflict naming the location and the holder (409
/// `busy`, CSI `FAILED_PRECONDITION`), the journal a Failed outcome, and
/// once the tenant has left the destroy goes through. No tenant process
/// is ever stopped by volmgr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_inside_a_volume_makes_its_destroy_a_busy_conflict_that_leaves_it_mounted_until_it_leaves()
 {
    let Some((pool, dir, state, m)) = managed_pool("a_tenant_inside_a_volume_makes_its_destroy_a_busy_conflict_that_leaves_it_mounted_until_it_leaves").await else {
        return;
    };
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    let dataset = format!("{}/data/{}", pool.dataset(), v.id);
    let f = Path::new(&v.location).join("f");
    std::fs::write(&f, b"tenant data").unwrap();
    let (mut csi, stop) = csi_plugin(&m, dir.path()).await;
    let still_mounted = |why: &str| {
        assert_eq!(zfs_mounted(&dataset), "yes", "{why}");
        assert_eq!(std::fs::read(&f).unwrap(), b"tenant data", "{why}");
    };

    let tenant = Tenant::nobody_inside(&v.location);
    let (err, ran) = busy_destroy(&m, &v.id, "volume, a tenant inside").await;
    let message = assert_in_use(err, VolumeKind::Data, &v.id, &v.location);
    // The listing, one `zfs destroy` ("cannot unmount": no retry; there
    // were 8), no lookup after it (Busy; it was 2).
    assert_eq!(ran, zfs_commands(2), "volume held in the host's namespace");
    assert!(message.contains("cannot unmount"), "{message}");
    still_mounted("tenant in the host's namespace");
    drop(tenant);

    let tenant = Tenant::nobody_inside_its_own_namespace(&v.location);
    let (err, ran) = busy_destroy(&m, &v.id, "volume, a tenant inside its own namespace").await;
    assert_in_use(err, VolumeKind::Data, &v.id, &v.location);
    // The listing, two `zfs destroy` (the first unmounts it, both busy: the
    // second, on the unmounted volume, tells a mount elsewhere from a
    // passing state; there were 8), `list`, `mount`, `list` to mount it
    // again, no lookup after it (Busy; it was 2).
    assert_eq!(ran, zfs_commands(6), "volume held from another namespace");
    still_mounted("tenant in a namespace of its own");
    let status = csi
        .controller
        .delete_volume(volmgr::csi::proto::DeleteVolumeRequest {
            volume_id: v.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    still_mounted("after CSI's DeleteVolume");
    assert_eq!(m.volume(&v.id).unwrap(), v, "state unchanged");
    drop(tenant);

    m.destroy_volume(&v.id).await.unwrap();
    assert!(!Path::new(&v.location).exists(), "its mountpoint removed");
    stop.cancel();
    m.close().await;
    let destroys = destroy_results(&state, &v.id);
    assert_eq!(destroys, ["failed", "failed", "failed", "done"]);

    let m = reopen_clean(&state, &pool).await;
    assert!(m.volumes().is_empty());
    m.close().await;
}

/// Journals the intent to destroy `volume` in the closed manager's `state`
/// with no outcome after it: what a manager killed during that destroy
/// leaves in its journal.
async fn journal_destroy_intent(state: &Path, volume: &str) {
    let (journal, _) = Journal::<Record>::open(state, JournalConfig::default()).unwrap();
    journal
        .append(&Record::Intent {
            op: Uuid::now_v7(),
            at_ms: 1,
            action: Action::DestroyVolume {
                volume: volume.to_owned(),
            },
        })
        .await
        .unwrap();
    journal.close().await;
}

/// Story: the manager is killed during a destroy that a tenant keeps busy
/// (the intent durable, no outcome): of a snapshot the tenant is inside,
/// before any `zfs` command ran, and of a volume a container (a mount
/// namespace of its own) holds, after `zfs destroy` had unmounted it from
/// the host and failed "dataset is busy" (the volume's location an empty
/// directory on the host's file system). The next open retries both
/// destroys while the tenants are still there: each is journaled as a
/// Failed resolution naming the busy location, under the case
/// `destroy-failed` (it was `destroy-finished`, which told an operator
/// reading `volmgr journal dump` the destroy had finished), the manager opens, both stay
/// listed, live and readable (the volume mounted again where the killed
/// destroy left it unmounted), nothing is foreign or lost; once the tenants
/// have left, the same destroys go through and the open after that has
/// nothing to resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_killed_while_a_tenant_holds_it_is_retried_at_open_as_a_busy_failure_that_changes_nothing()
 {
    let Some((pool, _dir, state, m)) = managed_pool("a_destroy_killed_while_a_tenant_holds_it_is_retried_at_open_as_a_busy_failure_that_changes_nothing").await else {
        return;
    };
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"in v").unwrap();
    let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    let w = m.create_volume("default", None, Meta::new()).await.unwrap();
    let w_file = Path::new(&w.location).join("f");
    std::fs::write(&w_file, b"in w").unwrap();
    let w_dataset = format!("{}/data/{}", pool.dataset(), w.id);
    m.close().await;

    let in_s = Tenant::nobody_inside(&s.location);
    let in_w = Tenant::nobody_inside_its_own_namespace(&w.location);
    // The kills: both intents durable, no outcome; w's `zfs destroy` had
    // run (the killed manager's own command, run here by hand).
    journal_destroy_intent(&state, &s.id).await;
    journal_destroy_intent(&state, &w.id).await;
    let out = Command::new("zfs")
        .args(["destroy", &w_dataset])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("dataset is busy"),
        "{out:?}"
    );
    assert_eq!(
        zfs_mounted(&w_dataset),
        "no",
        "what the killed destroy left: w unmounted from the host"
    );

    let m = Manager::open(&state, manager_config(pool.provider_config()))
        .await
        .expect("the manager opens while the tenants hold what it was destroying");
    let report = m.reconcile_report();
    assert!(report.foreign.is_empty(), "{:?}", report.foreign);
    let mut resolved: Vec<(Case, Option<String>)> = report
        .resolutions
        .iter()
        .map(|(c, v, _)| (*c, v.clone()))
        .collect();
    resolved.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected = vec![
        (Case::DestroyFailed, Some(s.id.clone())),
        (Case::DestroyFailed, Some(w.id.clone())),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(resolved, expected, "the two pending destroys, nothing else");
    for (id, location) in [(&s.id, &s.location), (&w.id, &w.location)] {
        let records = dumped(&state, "reconciled", id);
        assert_eq!(records.len(), 1, "{records:#?}");
        let r = &records[0];
        assert!(
            r.starts_with("case=destroy-failed effect=resolve failed error=")
                && r.contains("destroy during recovery failed")
                && r.contains(&format!("is busy: in use at {location}"))
                && r.contains("dataset is busy")
                && r.contains("action=destroy"),
            "{r}"
        );
    }
    assert_eq!(m.volume(&s.id).unwrap(), s, "the snapshot unchanged");
    assert_eq!(m.volume(&w.id).unwrap(), w, "the volume unchanged");
    assert_eq!(m.volumes().len(), 3);
    assert_eq!(
        std::fs::read(Path::new(&s.location).join("f")).unwrap(),
        b"in v"
    );
    assert_eq!(
        zfs_mounted(&w_dataset),
        "yes",
        "mounted again at its location by the retried destroy"
    );
    assert_eq!(std::fs::read(&w_file).unwrap(), b"in w");

    drop(in_s);
    drop(in_w);
    m.destroy_volume(&s.id).await.unwrap();
    m.destroy_volume(&w.id).await.unwrap();
    m.close().await;
    let m = reopen_clean(&state, &pool).await;
    let ids: Vec<String> = m.volumes().into_iter().map(|x| x.id).collect();
    assert_eq!(ids, [v.id.as_str()]);
    m.close().await;
}

// --- user holds (`zfs hold`) ---------------------------------------------------

/// `zfs hold`/`zfs release` (`verb`) of `tag` on `snapshot`, by hand (the
/// operator's act; after `--`, as a tag may look like a flag).
fn zfs_hold(verb: &str, tag: &str, snapshot: &str) {
    let out = Command::new("zfs")
        .args([verb, "--", tag, snapshot])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zfs {verb} {tag:?} {snapshot}: {out:?}"
    );
}

/// The ZFS name of snapshot `s` of volume `v` in `pool`.
fn snapshot_dataset(pool: &ZfsPool, v: &str, s: &str) -> String {
    format!("{}/data/{v}@{s}", pool.dataset())
}

/// Asserts that `err` is the provider's busy error of snapshot `id` held
/// at `location` by user holds naming each of `tags` (quoted, escaped),
/// and that the agent answers it 409 `busy`; returns the message.
#[track_caller]
fn assert_held(err: ManagerError, id: &str, location: &str, tags: &[&str]) -> String {
    match &err {
        ManagerError::Provider {
            error: ProviderError::Busy { what, cause },
            ..
        } => {
            assert!(what.starts_with(&format!("snapshot {id} (")), "{what}");
            assert!(
                cause.contains(&format!("held at {location}: it has user holds")),
                "{cause}"
            );
            for tag in tags {
                assert!(cause.contains(&format!("{tag:?}")), "{tag:?}: {cause}");
            }
            assert!(cause.contains("nothing was destroyed"), "{cause}");
            assert!(cause.contains("zfs release"), "{cause}");
        }
        other => panic!("expected the provider's Busy, got {other:?}"),
    }
    let api = volmgr::agent::error::ApiError::from(err);
    assert_eq!(
        (api.status.as_u16(), api.code),
        (409, "busy"),
        "{}",
        api.message
    );
    api.message
}

/// Story: an operator's `zfs hold TAG SNAPSHOT` keeps the snapshot from
/// being destroyed until `zfs release`; ZFS says only "dataset is busy".
/// The destroy was retried as a passing busy state: the program, 8 `zfs
/// destroy` runs (about 6.3 s of back-off, the snapshot's claim held) and
/// the manager's 2-command lookup after it, 11 commands, for an answer
/// that waiting never changes, and the error did not say what held it.
/// Now the destroy program reads the holds in the sync task that found it
/// busy: one command, a busy conflict naming the hold tags (409 `busy`,
/// CSI `FAILED_PRECONDITION`), the snapshot unchanged; once the holds are
/// released the destroy goes through and the next open finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_hold_makes_a_snapshot_destroy_a_one_command_busy_conflict_naming_it_until_released()
{
    let Some((pool, dir, state, m)) = managed_pool(
        "a_user_hold_makes_a_snapshot_destroy_a_one_command_busy_conflict_naming_it_until_released",
    )
    .await
    else {
        return;
    };
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"kept").unwrap();
    let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    let snap = snapshot_dataset(&pool, &v.id, &s.id);
    let (mut csi, stop) = csi_plugin(&m, dir.path()).await;
    // Tags are the operator's data: a space, a leading `-`.
    let tags = ["audit 2026-12", "-r keep"];
    for tag in tags {
        zfs_hold("hold", tag, &snap);
    }

    let (err, ran) = busy_destroy(&m, &s.id, "snapshot with two user holds").await;
    // The program only: its EBUSY with the holds (no `zfs destroy`, no
    // retry: there were 8), no lookup after it (Busy): 11 before.
    assert_eq!(ran, zfs_commands(1), "snapshot with user holds");
    assert_held(err, &s.id, &s.location, &tags);
    let status = csi
        .controller
        .delete_snapshot(volmgr::csi::proto::DeleteSnapshotRequest {
            snapshot_id: s.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("audit 2026-12"), "{status:?}");
    assert_eq!(m.volume(&s.id).unwrap(), s, "state unchanged");
    assert_eq!(
        std::fs::read(Path::new(&s.location).join("f")).unwrap(),
        b"kept",
        "still readable at its location"
    );
    let held = zfs_out(&["holds", "-H", &snap]);
    assert!(tags.iter().all(|t| held.contains(t)), "{held}");

    // One released, the other still named.
    zfs_hold("release", tags[0], &snap);
    let (err, ran) = busy_destroy(&m, &s.id, "snapshot with one user hold").await;
    assert_eq!(ran, zfs_commands(1), "snapshot with a user hold");
    let message = assert_held(err, &s.id, &s.location, &tags[1..]);
    assert!(!message.contains(tags[0]), "{message}");

    zfs_hold("release", tags[1], &snap);
    let (done, ran) = counted(m.destroy_volume(&s.id)).await;
    done.unwrap();
    assert_eq!(ran, zfs_commands(1), "released: the program destroys it");
    stop.cancel();
    m.close().await;
    assert_eq!(
        destroy_results(&state, &s.id),
        ["failed", "failed", "failed", "done"]
    );
    let m = reopen_clean(&state, &pool).await;
    assert!(m.volume(&s.id).is_err());
    assert_eq!(m.volume(&v.id).unwrap().location, v.location);
    m.close().await;
}

/// Story: the manager is killed during destroys of snapshots that user
/// holds keep (intents durable, no outcome). The next open retried each
/// pending destroy as a passing busy state, one after another: 9 `zfs`
/// commands and about 6.3 s each (N of them: N × 6.3 s before the agent
/// serves), and journaled each as `case=destroy-finished`. Now each costs
/// the destroy program alone, is journaled `case=destroy-failed` with the
/// hold named, and the snapshots stay, unchanged; once released, they are
/// destroyed and the open after that has nothing to resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroys_killed_while_user_holds_keep_their_snapshots_fail_at_open_in_one_command_each() {
    const N: u64 = 4;
    let Some((pool, _dir, state, m)) = managed_pool(
        "destroys_killed_while_user_holds_keep_their_snapshots_fail_at_open_in_one_command_each",
    )
    .await
    else {
        return;
    };
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"in v").unwrap();
    let mut snaps = Vec::new();
    for _ in 0..N {
        let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
        zfs_hold("hold", "keep", &snapshot_dataset(&pool, &v.id, &s.id));
        snaps.push(s);
    }
    m.close().await;
    // What an open costs with nothing to resolve.
    let started = Instant::now();
    let (m, clean) = counted(reopen_clean(&state, &pool)).await;
    let clean_time = started.elapsed();
    m.close().await;

    for s in &snaps {
        journal_destroy_intent(&state, &s.id).await;
    }
    let started = Instant::now();
    let (m, ran) = counted(Manager::open(
        &state,
        manager_config(pool.provider_config()),
    ))
    .await;
    let m = m.expect("the manager opens while holds keep what it was destroying");
    println!(
        "FIGURE open with {N} pending destroys of held snapshots: {} zfs commands, {:?} (with nothing pending: {}, {clean_time:?})",
        ran.zfs,
        started.elapsed(),
        clean.zfs,
    );
    // One destroy program per pending destroy (there were 9 each: the
    // program, then 8 `zfs destroy`).
    assert_eq!(
        ran,
        CommandCount {
            zfs: clean.zfs + N,
            ..clean
        },
        "one command per pending destroy of a held snapshot"
    );
    let report = m.reconcile_report();
    assert!(report.foreign.is_empty(), "{:?}", report.foreign);
    let mut resolved: Vec<(Case, Option<String>)> = report
        .resolutions
        .iter()
        .map(|(c, v, _)| (*c, v.clone()))
        .collect();
    resolved.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected: Vec<(Case, Option<String>)> = snaps
        .iter()
        .map(|s| (Case::DestroyFailed, Some(s.id.clone())))
        .collect();
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(resolved, expected, "the pending destroys, nothing else");
    for s in &snaps {
        let records = dumped(&state, "reconciled", &s.id);
        assert_eq!(records.len(), 1, "{records:#?}");
        let r = &records[0];
        assert!(
            r.starts_with("case=destroy-failed effect=resolve failed error=")
                && r.contains("destroy during recovery failed")
                && r.contains(&format!("held at {}: it has user holds", s.location))
                && r.contains("keep")
                && r.contains("action=destroy"),
            "{r}"
        );
        assert_eq!(m.volume(&s.id).unwrap(), *s, "the snapshot unchanged");
    }
    assert_eq!(m.volumes().len(), 1 + snaps.len());
    m.close().await;

    for s in &snaps {
        zfs_hold("release", "keep", &snapshot_dataset(&pool, &v.id, &s.id));
    }
    let m = reopen_clean(&state, &pool).await;
    for s in &snaps {
        m.destroy_volume(&s.id).await.unwrap();
    }
    m.close().await;
    let m = reopen_clean(&state, &pool).await;
    let ids: Vec<String> = m.volumes().into_iter().map(|x| x.id).collect();
    assert_eq!(ids, [v.id.as_str()]);
    m.close().await;
}

/// ZFS refuses a `refquota` below what the dataset references: the
/// provider reports it as `CapacityBelowUsage` naming the referenced bytes
/// (CSI `OUT_OF_RANGE`, HTTP 409 `capacity_below_usage`) and the volume keeps
/// no quota; a capacity above its data is set.
#[test]
fn a_capacity_below_what_the_volume_holds_is_capacity_below_usage() {
    let test = "a_capacity_below_what_the_volume_holds_is_capacity_below_usage";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let v = p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    std::fs::write(Path::new(&v.location).join("data"), noise(7, 8 << 20)).unwrap();
    let synced = Command::new("zpool")
        .args(["sync", &pool.pool])
        .status()
        .unwrap();
    assert!(synced.success());
    let dataset = format!("{}/data/v", pool.dataset());
    let r = vref("v", VolumeKind::Data, None, &none);
    match p.set_capacity(&r, 4 << 20).unwrap_err() {
        ProviderError::CapacityBelowUsage {
            what,
            used,
            capacity,
        } => {
            assert_eq!(what, "data volume v");
            assert!(used >= 8 << 20, "{used}");
            assert_eq!(capacity, 4 << 20);
        }
        other => panic!("expected CapacityBelowUsage, got {other:?}"),
    }
    assert_eq!(
        zfs_out(&["get", "-Hpo", "value", "refquota", &dataset]),
        "0"
    );
    p.set_capacity(&r, 64 << 20).unwrap();
    assert_eq!(
        zfs_out(&["get", "-Hpo", "value", "refquota", &dataset]),
        (64u64 << 20).to_string()
    );
}

/// What reconciliation runs for a receive it cannot keep resumable (and
/// what undoes a failed receive): the partial state of operation `op` is
/// found by its mark and discarded, and the target takes a receive again.
/// (Resumable receives: `tests/zfs_resume.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_receive_of_an_operation_is_found_by_its_mark_and_aborted() {
    let test = "partial_receive_of_an_operation_is_found_by_its_mark_and_aborted";
    let Some(pool) = ZfsPool::for_test(test, 512) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let m = Manager::open(state.path(), manager_config(pool.provider_config()))
        .await
        .unwrap();
    let src = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&src.location).join("f"), noise(3, 8 << 20)).unwrap();
    let s = m.create_snapshot(&src.id, Meta::new()).await.unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&s.id, &[], &mut stream).await.unwrap();
    let cut = &stream[..stream.len() / 2];
    m.close().await;

    // After a crash: the partial state a killed `zfs recv -s` leaves is found
    // by the op's mark and aborted by abort_partial (what reconciliation runs).
    let p2 = pool.provider_config();
    let p = ZfsProvider::from_config(&p2).unwrap();
    let none = Details::new();
    let t2 = p.create_volume(&data_spec("t2", Uuid::now_v7())).unwrap();
    let op = Uuid::now_v7();
    let target = format!("{}/data/t2", pool.dataset());
    zfs_out(&[
        "set",
        &format!("volmgr:receiving={op}:{}", s.details[DETAIL_GUID]),
        &target,
    ]);
    let mut recv = Command::new("zfs")
        .args(["recv", "-F", "-s", &target])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = recv.stdin.take().unwrap();
        let _ = stdin.write_all(cut);
    }
    assert!(!recv.wait().unwrap().success());
    let token = zfs_out(&["get", "-H", "-o", "value", "receive_resume_token", &target]);
    assert_ne!(token, "-", "the cut receive left a resume token");
    let half = p.inventory().unwrap();
    let t2_found = half.iter().find(|f| f.name == target).unwrap();
    let partial = t2_found.partial.as_ref().expect("the inventory shows it");
    assert_eq!(partial.op, Some(op), "{t2_found:?}");
    assert_eq!(partial.guid, s.details[DETAIL_GUID]);
    p.abort_partial(op).unwrap();
    let token = zfs_out(&["get", "-H", "-o", "value", "receive_resume_token", &target]);
    assert_eq!(token, "-", "aborted");
    assert!(
        p.inventory()
            .unwrap()
            .iter()
            .all(|f| f.partial.is_none() && f.presence == Presence::Complete)
    );
    // The target takes a receive again.
    let spec = VolumeSpec {
        id: VolumeId::new("r2").unwrap(),
        op: Uuid::now_v7(),
        kind: VolumeKind::Snapshot,
    };
    let got = p
        .receive_snapshot(
            &vref("t2", VolumeKind::Data, None, &none),
            &spec,
            &mut stream.as_slice(),
        )
        .unwrap();
    assert_eq!(got.details[DETAIL_GUID], s.details[DETAIL_GUID]);
    assert_eq!(
        std::fs::read(PathBuf::from(&t2.location).join("f")).unwrap(),
        noise(3, 8 << 20)
    );
}

/// Volume `src` holding file `f` (`data`), its snapshot `s`, and the full
/// stream of `s`.
fn full_stream_of_a_snapshot(p: &ZfsProvider) -> (Created, Vec<u8>) {
    let none = Details::new();
    let src = p.create_volume(&data_spec("src", Uuid::now_v7())).unwrap();
    std::fs::write(Path::new(&src.location).join("f"), b"data").unwrap();
    let s = p
        .create_snapshot(
            &vref("src", VolumeKind::Data, None, &none),
            &VolumeSpec {
                id: VolumeId::new("s").unwrap(),
                op: Uuid::now_v7(),
                kind: VolumeKind::Snapshot,
            },
        )
        .unwrap();
    let mut stream = Vec::new();
    p.send_snapshot(
        &vref("s", VolumeKind::Snapshot, Some("src"), &s.details),
        None,
        &SendOptions::default(),
        &mut stream,
    )
    .unwrap();
    (s, stream)
}

/// The receive the tests below take apart: a pool and its provider, the
/// full stream of snapshot `s` of volume `src` (file `f` holding `data`),
/// the empty volume `t` (dataset `target`), and operation `op` that
/// receives the stream into `t` as snapshot `r`.
struct ReceiveFixture {
    pool: ZfsPool,
    p: ZfsProvider,
    none: Details,
    /// The sent snapshot.
    s: Created,
    stream: Vec<u8>,
    /// The target volume.
    t: Created,
    target: String,
    op: Uuid,
}

impl ReceiveFixture {
    /// `None` where ZFS is unusable, as [`pool_and_provider`].
    fn new(test: &str) -> Option<Self> {
        let (pool, p) = pool_and_provider(test)?;
        let (s, stream) = full_stream_of_a_snapshot(&p);
        let t = p.create_volume(&data_spec("t", Uuid::now_v7())).unwrap();
        let target = format!("{}/data/t", pool.dataset());
        Some(Self {
            pool,
            p,
            none: Details::new(),
            s,
            stream,
            t,
            target,
            op: Uuid::now_v7(),
        })
    }

    /// The target, as the provider is given it.
    fn t_ref(&self) -> VolumeRef<'_> {
        vref("t", VolumeKind::Data, None, &self.none)
    }

    /// Operation `op`'s receive, as snapshot `r`.
    fn spec(&self) -> VolumeSpec<'_> {
        snap_spec("r", self.op)
    }

    /// The stream's guid, as ZFS prints it.
    fn guid(&self) -> &str {
        &self.s.details[DETAIL_GUID]
    }

    /// The stream's guid as `finish_receive` takes it.
    fn toguid(&self) -> u64 {
        self.guid().parse().unwrap()
    }

    /// The receiving mark the provider sets on the target for `op`.
    fn mark(&self) -> String {
        format!("{}:{}", self.op, self.guid())
    }

    /// `<target>@<snapshot>`.
    fn snapshot(&self, snapshot: &str) -> String {
        format!("{}@{snapshot}", self.target)
    }

    /// The target's receiving mark: its source (`local`, or `-` when
    /// cleared) and value.
    fn marked(&self) -> (String, String) {
        (
            zfs_out(&[
                "get",
                "-H",
                "-o",
                "source",
                "volmgr:receiving",
                &self.target,
            ]),
            zfs_out(&["get", "-H", "-o", "value", "volmgr:receiving", &self.target]),
        )
    }

    /// What a receive killed between `zfs recv` and the program after it
    /// leaves: the target marked with `mark` (set before the receive, as
    /// the provider does), then `stream` received by a `zfs recv` of the
    /// test's own as `<target>@<snapshot>`.
    fn recv_marked(&self, mark: &str, stream: &[u8], snapshot: &str) {
        zfs_out(&["set", &format!("volmgr:receiving={mark}"), &self.target]);
        let mut recv = Command::new("zfs")
            .args(["recv", "-F", "-s", "-x", "volmgr:receiving"])
            .arg(self.snapshot(snapshot))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            recv.stdin.take().unwrap().write_all(stream).unwrap();
        }
        assert!(recv.wait().unwrap().success());
    }

    /// [`Self::recv_marked`] of `op`'s stream, with `op`'s mark.
    fn recv_by_hand(&self, snapshot: &str) {
        self.recv_marked(&self.mark(), &self.stream, snapshot);
    }
}

/// A receive names its snapshot with its final name in `zfs recv` itself
/// (no rename follows), so a manager killed after `recv` and before the
/// tags leaves `<target>@<id>` untagged (it inherits the target's tags,
/// which name the target, kind data). It is not ours: the inventory shows
/// it foreign, a retry of the same stream refuses it rather than adopt it,
/// and the operation's mark on the target finds it for `abort_partial`,
/// which destroys it, clears the mark and leaves the target mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_arrived_untagged_under_its_final_name_is_not_adopted_and_abort_partial_removes_it()
 {
    let test = "snapshot_arrived_untagged_under_its_final_name_is_not_adopted_and_abort_partial_removes_it";
    let Some(f) = ReceiveFixture::new(test) else {
        return;
    };
    let p = &f.p;
    let arrived = f.snapshot("r");

    // What the receive leaves when killed between `zfs recv` and `zfs set`:
    // the mark set before the receive, the snapshot under its final name.
    f.recv_by_hand("r");
    assert_eq!(
        zfs_out(&["get", "-H", "-o", "value", "guid", &arrived]),
        f.guid()
    );

    let found = p.inventory().unwrap();
    let item = found.iter().find(|i| i.name == arrived).unwrap();
    assert!(item.tag.is_none(), "not ours by its name alone: {item:?}");
    let retry = p.receive_snapshot(&f.t_ref(), &f.spec(), &mut f.stream.as_slice());
    assert!(
        matches!(retry, Err(ProviderError::AlreadyExists(_))),
        "the untagged arrival is refused, never adopted: {retry:?}"
    );

    p.abort_partial(f.op).unwrap();
    let after = p.inventory().unwrap();
    assert!(
        after.iter().all(|i| i.name != arrived && i.tag.is_some()),
        "removed: {after:?}"
    );
    assert_eq!(f.marked().0, "-", "mark cleared");
    assert_eq!(
        zfs_out(&["get", "-H", "-o", "value", "mounted", &f.target]),
        "yes"
    );
    // The target takes the receive again, under the same name.
    let got = p
        .receive_snapshot(&f.t_ref(), &f.spec(), &mut f.stream.as_slice())
        .unwrap();
    assert_eq!(got.details[DETAIL_GUID], f.guid());
    assert_eq!(
        std::fs::read(Path::new(&f.t.location).join("f")).unwrap(),
        b"data"
    );
}

/// The tags of `ds` set on it (source `local`), sorted by property.
fn own_props(ds: &str) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = zfs_out(&[
        "get",
        "-H",
        "-s",
        "local",
        "-o",
        "property,value",
        "volmgr:owner,volmgr:volume-id,volmgr:op,volmgr:kind,volmgr:parent,volmgr:receiving",
        ds,
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    props.sort();
    props
}

/// The tags a receive of operation `op` as snapshot `id` into volume
/// `target` gives its arrival, as `own_props` lists them.
fn arrival_tags(id: &str, op: Uuid, target: &str) -> Vec<(String, String)> {
    [
        ("volmgr:kind", "snapshot".to_owned()),
        ("volmgr:op", op.to_string()),
        ("volmgr:owner", "volmgr".to_owned()),
        ("volmgr:parent", target.to_owned()),
        ("volmgr:volume-id", id.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A receive is 5 `zfs` commands: the listing of the target, the pool's
/// space (`zfs get used,available`: the space bound's first grant), the mark,
/// `zfs recv`, and one channel program that finds the arrival by guid, tags
/// it and clears the mark in one sync task (whether the target is still
/// mounted is read from `/proc/self/mountinfo`). After it the arrival
/// carries its own tags and the target no mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_tags_its_arrival_and_clears_the_mark_in_one_program_after_recv() {
    let test = "receive_tags_its_arrival_and_clears_the_mark_in_one_program_after_recv";
    let Some(f) = ReceiveFixture::new(test) else {
        return;
    };
    let (p, op) = (&f.p, f.op);
    let (got, n) =
        counted(async { p.receive_snapshot(&f.t_ref(), &f.spec(), &mut f.stream.as_slice()) })
            .await;
    let got = got.unwrap();
    assert_eq!(n, zfs_commands(5), "list, space, mark, recv, program");
    assert_eq!(got.details[DETAIL_GUID], f.guid());
    assert_eq!(
        own_props(&f.snapshot("r")),
        arrival_tags("r", op, "t"),
        "the arrival carries its own tags"
    );
    assert_eq!(f.marked().0, "-", "the mark is cleared");
    assert_eq!(
        zfs_out(&["get", "-H", "-o", "value", "mounted", &f.target]),
        "yes"
    );
    assert_eq!(
        std::fs::read(Path::new(&f.t.location).join("f")).unwrap(),
        b"data"
    );
    let found = p.inventory().unwrap();
    let item = found.iter().find(|i| i.name == f.snapshot("r")).unwrap();
    assert_eq!(item.tag.as_ref().map(|t| t.op), Some(op), "{item:?}");
    // A retry of the same operation is its result, from the first listing.
    let (again, n) =
        counted(async { p.receive_snapshot(&f.t_ref(), &f.spec(), &mut f.stream.as_slice()) })
            .await;
    assert_eq!(again.unwrap().details[DETAIL_GUID], f.guid());
    assert_eq!(n, zfs_commands(1), "idempotent: the listing finds it");
}

/// The program after `zfs recv` (reached here after a `zfs recv` of the
/// test's own: the state a crash between the two leaves) changes nothing
/// when it finds no arrival of the stream's guid: a clear
/// [`ProviderError::Stream`], the arrival untagged and the mark set, which
/// `abort_partial` (what the manager runs after a failed receive) removes.
/// Given the right guid it finishes that state: tagged and the mark
/// cleared, and run again it finds the same and changes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_program_that_finds_no_arrival_changes_nothing_and_abort_partial_removes_it() {
    let test = "receive_program_that_finds_no_arrival_changes_nothing_and_abort_partial_removes_it";
    let Some(f) = ReceiveFixture::new(test) else {
        return;
    };
    let (p, op) = (&f.p, f.op);
    let (t, spec, toguid) = (f.t_ref(), f.spec(), f.toguid());
    let arrived = f.snapshot("r");

    f.recv_by_hand("r");
    let (err, n) = counted(async { p.finish_receive(&t, &spec, toguid.wrapping_add(1)) }).await;
    match err {
        Err(ProviderError::Stream(m)) => {
            assert!(m.contains("no snapshot with the stream's guid"), "{m}");
        }
        other => panic!("expected a Stream error, got {other:?}"),
    }
    assert_eq!(n, zfs_commands(1), "the program alone");
    assert_eq!(own_props(&arrived), Vec::new(), "the arrival is untagged");
    assert_eq!(f.marked(), ("local".to_owned(), f.mark()), "still marked");
    p.abort_partial(op).unwrap();
    assert!(
        p.inventory().unwrap().iter().all(|i| i.name != arrived),
        "abort_partial removed the arrival"
    );
    assert_eq!(f.marked().0, "-", "and the mark");

    f.recv_by_hand("r");
    let got = p.finish_receive(&t, &spec, toguid).unwrap();
    assert_eq!(got.details[DETAIL_GUID], f.guid());
    assert_eq!(own_props(&arrived), arrival_tags("r", op, "t"));
    assert_eq!(f.marked().0, "-", "the mark is cleared with the tags");
    let again = p.finish_receive(&t, &spec, toguid).unwrap();
    assert_eq!(again.details[DETAIL_GUID], f.guid());
    assert_eq!(own_props(&arrived), arrival_tags("r", op, "t"));
    assert_eq!(f.marked().0, "-");
}

/// The snapshots of dataset `ds` (only its own, not its children's), by
/// name, one a line.
fn snapshots_of(ds: &str) -> String {
    zfs_out(&["list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", ds])
}

/// An arrival under another name than `<target>@<id>` (which `zfs recv`,
/// told the final name, never gives; here a `zfs recv` of the test's own
/// names it `other`) is finished by `finish_receive` in separate commands:
/// it is tagged, renamed to `<target>@r` (where it keeps the stream's
/// guid), and the mark cleared; the inventory then reports it as snapshot
/// `r` of operation `op`, and nothing remains under the other name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_under_another_name_is_tagged_renamed_to_its_id_and_the_mark_cleared() {
    let test = "arrival_under_another_name_is_tagged_renamed_to_its_id_and_the_mark_cleared";
    let Some(f) = ReceiveFixture::new(test) else {
        return;
    };
    let (p, op) = (&f.p, f.op);
    let (other, want) = (f.snapshot("other"), f.snapshot("r"));
    f.recv_by_hand("other");
    assert_eq!(
        snapshots_of(&f.target),
        other,
        "arrived under the other name"
    );
    assert_eq!(f.marked(), ("local".to_owned(), f.mark()), "marked");

    let got = p.finish_receive(&f.t_ref(), &f.spec(), f.toguid()).unwrap();
    assert_eq!(got.details[DETAIL_GUID], f.guid());
    assert_eq!(
        snapshots_of(&f.target),
        want,
        "renamed: none left as `other`"
    );
    assert_eq!(
        zfs_out(&["get", "-H", "-p", "-o", "value", "guid", &want]),
        f.guid(),
        "the stream's snapshot, by guid"
    );
    assert_eq!(own_props(&want), arrival_tags("r", op, "t"), "tagged");
    assert_eq!(f.marked().0, "-", "the mark is cleared");
    let found = p.inventory().unwrap();
    let item = found.iter().find(|i| i.name == want).unwrap();
    assert_eq!(
        item.tag,
        Some(Tag {
            volume: "r".to_owned(),
            op,
            kind: VolumeKind::Snapshot,
            parent: Some("t".to_owned()),
        }),
        "ours, as snapshot r: {item:?}"
    );
    assert_eq!(item.details[DETAIL_GUID], f.guid());
    assert_eq!(item.location, got.location);
    assert_eq!(
        std::fs::read(Path::new(&got.location).join("f")).unwrap(),
        b"data"
    );
    // Finished: run again, the program finds it under its id.
    let again = p.finish_receive(&f.t_ref(), &f.spec(), f.toguid()).unwrap();
    assert_eq!(again.details[DETAIL_GUID], f.guid());
    assert_eq!(snapshots_of(&f.target), want);
}

/// When the rename of an arrival under another name is refused (here its
/// id, `r`, is taken by the snapshot the incremental stream starts from),
/// `finish_receive` fails with ZFS's refusal and leaves what
/// `abort_partial` removes: the arrival not ours (tags naming `r` do not
/// make `<target>@other` ours) and the target still marked. The snapshot
/// under the id is untouched, before and after `abort_partial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_whose_rename_is_refused_stays_not_ours_and_marked_for_abort_partial() {
    let test = "arrival_whose_rename_is_refused_stays_not_ours_and_marked_for_abort_partial";
    let Some(f) = ReceiveFixture::new(test) else {
        return;
    };
    let p = &f.p;
    let (other, want) = (f.snapshot("other"), f.snapshot("r"));
    // `t@r`: the full stream of `s`, received by the provider.
    p.receive_snapshot(&f.t_ref(), &f.spec(), &mut f.stream.as_slice())
        .unwrap();
    // The snapshot under the id: its guid and tags.
    let under_id = || {
        (
            zfs_out(&["get", "-H", "-p", "-o", "value", "guid", &want]),
            own_props(&want),
        )
    };
    let r_before = under_id();
    assert_eq!(r_before.0, f.guid());
    // The incremental stream `s` -> `s2` of `src`, received by hand as
    // `t@other` for a second operation that would name it `r` too.
    let s2 = p
        .create_snapshot(
            &vref("src", VolumeKind::Data, None, &f.none),
            &snap_spec("s2", Uuid::now_v7()),
        )
        .unwrap();
    let mut inc = Vec::new();
    let sent = p
        .send_snapshot(
            &vref("s2", VolumeKind::Snapshot, Some("src"), &s2.details),
            Some(&vref("s", VolumeKind::Snapshot, Some("src"), &f.s.details)),
            &SendOptions::default(),
            &mut inc,
        )
        .unwrap();
    assert!(sent.incremental);
    let guid2 = &s2.details[DETAIL_GUID];
    let op2 = Uuid::now_v7();
    let mark2 = format!("{op2}:{guid2}");
    f.recv_marked(&mark2, &inc, "other");

    let err = p
        .finish_receive(&f.t_ref(), &snap_spec("r", op2), guid2.parse().unwrap())
        .unwrap_err();
    match &err {
        ProviderError::Command {
            command, stderr, ..
        } => {
            assert!(command.starts_with("zfs rename "), "{command}");
            assert!(stderr.contains("exists"), "{stderr}");
        }
        other => panic!("expected the refused rename, got {other:?}"),
    }
    assert_eq!(f.marked(), ("local".to_owned(), mark2), "still marked");
    let found = p.inventory().unwrap();
    let item = found.iter().find(|i| i.name == other).unwrap();
    assert!(item.tag.is_none(), "not ours: {item:?}");
    assert_eq!(
        under_id(),
        r_before,
        "the snapshot under the id is untouched"
    );

    p.abort_partial(op2).unwrap();
    assert_eq!(
        snapshots_of(&f.target),
        want,
        "abort_partial removed the arrival"
    );
    assert_eq!(f.marked().0, "-", "and the mark");
    assert_eq!(under_id(), r_before, "and kept the snapshot under the id");
}

/// A receive into a filesystem under the root that is not tagged ours is
/// refused by the one listing it starts with: nothing is marked, nothing
/// received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_into_an_untagged_filesystem_is_refused_after_one_listing() {
    let test = "receive_into_an_untagged_filesystem_is_refused_after_one_listing";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let (_, stream) = full_stream_of_a_snapshot(&p);
    let foreign = format!("{}/data/x", pool.dataset());
    zfs_out(&["create", "-o", "mountpoint=none", &foreign]);
    let spec = VolumeSpec {
        id: VolumeId::new("r").unwrap(),
        op: Uuid::now_v7(),
        kind: VolumeKind::Snapshot,
    };
    let (got, n) = counted(async {
        p.receive_snapshot(
            &vref("x", VolumeKind::Data, None, &none),
            &spec,
            &mut stream.as_slice(),
        )
    })
    .await;
    let err = got.unwrap_err();
    assert!(err.to_string().contains("not tagged"), "{err}");
    assert_eq!(n, zfs_commands(1), "refused by the first listing");
    assert_eq!(
        zfs_out(&["get", "-H", "-o", "source", "volmgr:receiving", &foreign]),
        "-",
        "not marked"
    );
    assert_eq!(
        zfs_out(&["list", "-H", "-t", "snapshot", "-o", "name", "-r", &foreign]),
        "",
        "nothing received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_never_become_zfs_flags() {
    let test = "hostile_names_never_become_zfs_flags";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    for bad in ["-r", "a/b", "a@b", "..", "a b"] {
        // The provider interface takes a `VolumeId`, which cannot hold a
        // flag-like or path-like id; the providers' check refuses it too.
        assert!(VolumeId::new(bad).is_err(), "{bad:?} is a VolumeId");
        assert!(volmgr::provider::check_id(bad).is_err(), "{bad:?}");
    }
    let mut c = pool.provider_config();
    c.insert("dataset".into(), "-rf".into());
    assert!(matches!(
        ZfsProvider::from_config(&c),
        Err(ProviderError::InvalidConfig(_))
    ));
    assert!(p.inventory().unwrap().is_empty(), "nothing was made");
}

// --- snapshots by one channel program -------------------------------------------

fn snap_spec(id: &str, op: Uuid) -> VolumeSpec<'_> {
    VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op,
        kind: VolumeKind::Snapshot,
    }
}

/// The snapshots under the pool's root dataset, by name.
fn snapshots_under(pool: &ZfsPool) -> String {
    zfs_out(&[
        "list",
        "-H",
        "-o",
        "name",
        "-t",
        "snapshot",
        "-r",
        &pool.dataset(),
    ])
}

/// A snapshot is refused, in its one command and with nothing made, unless
/// its source carries our tags naming that very source: an untagged
/// filesystem under the root, and one of ours whose tag names another
/// volume, are both refused by the channel program before it snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_a_source_not_tagged_as_itself_is_refused_by_its_one_command_and_makes_nothing()
{
    let test =
        "snapshot_of_a_source_not_tagged_as_itself_is_refused_by_its_one_command_and_makes_nothing";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let foreign = format!("{}/data/x", pool.dataset());
    zfs_out(&["create", "-o", "mountpoint=none", &foreign]);
    p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    zfs_out(&[
        "set",
        "volmgr:volume-id=w",
        &format!("{}/data/v", pool.dataset()),
    ]);
    for source in ["x", "v"] {
        let (got, n) = counted(async {
            p.create_snapshot(
                &vref(source, VolumeKind::Data, None, &none),
                &snap_spec("s", Uuid::now_v7()),
            )
        })
        .await;
        let err = got.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Other(m) if m.contains("not tagged as data")),
            "{source}: {err:?}"
        );
        assert_eq!(n, zfs_commands(1), "{source}: refused by the program");
    }
    assert_eq!(snapshots_under(&pool), "", "nothing made");
    let err = p
        .create_snapshot(
            &vref("absent", VolumeKind::Data, None, &none),
            &snap_spec("s", Uuid::now_v7()),
        )
        .unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
}

/// A snapshot's one command makes it with its tags (its own properties,
/// set in the same sync task) and returns the guid ZFS prints; the same
/// operation retried gets the same snapshot back, by the same single
/// command; another operation's snapshot of that name, or an untagged one,
/// is `AlreadyExists`, never adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_retried_by_its_operation_returns_the_same_guid_and_another_operations_is_already_exists()
 {
    let test = "snapshot_retried_by_its_operation_returns_the_same_guid_and_another_operations_is_already_exists";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let v = p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"one").unwrap();
    let src = vref("v", VolumeKind::Data, None, &none);
    let op = Uuid::now_v7();
    let (first, n) = counted(async { p.create_snapshot(&src, &snap_spec("s", op)) }).await;
    let first = first.unwrap();
    assert_eq!(n, zfs_commands(1), "made in one command");
    let name = format!("{}/data/v@s", pool.dataset());
    assert_eq!(
        first.details[DETAIL_GUID],
        zfs_out(&["get", "-H", "-p", "-o", "value", "guid", &name]),
        "the guid as ZFS prints it (unsigned)"
    );
    let tags = zfs_out(&[
        "get",
        "-H",
        "-o",
        "property,value,source",
        "volmgr:owner,volmgr:volume-id,volmgr:op,volmgr:kind,volmgr:parent",
        &name,
    ]);
    assert_eq!(
        tags,
        format!(
            "volmgr:owner\tvolmgr\tlocal\nvolmgr:volume-id\ts\tlocal\nvolmgr:op\t{op}\tlocal\n\
             volmgr:kind\tsnapshot\tlocal\nvolmgr:parent\tv\tlocal"
        ),
        "tagged as its own"
    );
    assert_eq!(
        std::fs::read(Path::new(&first.location).join("f")).unwrap(),
        b"one"
    );

    let (again, n) = counted(async { p.create_snapshot(&src, &snap_spec("s", op)) }).await;
    let again = again.unwrap();
    assert_eq!(n, zfs_commands(1), "the retry is one command too");
    assert_eq!(again.details, first.details, "the same snapshot");
    assert_eq!(again.location, first.location);

    let err = p
        .create_snapshot(&src, &snap_spec("s", Uuid::now_v7()))
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::AlreadyExists(m) if m.contains(&op.to_string())),
        "another operation's: {err:?}"
    );
    zfs_out(&["snapshot", &format!("{}/data/v@u", pool.dataset())]);
    let err = p
        .create_snapshot(&src, &snap_spec("u", Uuid::now_v7()))
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::AlreadyExists(m) if m.contains("not tagged as ours")),
        "an untagged one: {err:?}"
    );
    assert_eq!(
        snapshots_under(&pool),
        format!("{name}\n{}/data/v@u", pool.dataset())
    );
}

/// A `zfs.sync` call the channel program makes and ZFS refuses (here the
/// snapshot's name: 280 bytes, over its 255) is a typed `Command` error
/// naming the call and its errno, never a panic; nothing is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_refused_inside_the_program_is_a_command_error_naming_the_call_and_errno() {
    let test = "snapshot_refused_inside_the_program_is_a_command_error_naming_the_call_and_errno";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let long = "a".repeat(volmgr::provider::dir::MAX_ID_LEN);
    p.create_volume(&data_spec(&long, Uuid::now_v7())).unwrap();
    let (got, n) = counted(async {
        p.create_snapshot(
            &vref(&long, VolumeKind::Data, None, &none),
            &snap_spec(&long, Uuid::now_v7()),
        )
    })
    .await;
    match got.unwrap_err() {
        ProviderError::Command {
            command,
            status,
            stderr,
        } => {
            assert!(command.starts_with("zfs program -j -- "), "{command}");
            assert_eq!(status, "channel program returned errno 36");
            assert!(
                stderr.contains("zfs.sync.snapshot") && stderr.contains("too long"),
                "{stderr}"
            );
        }
        other => panic!("expected a Command error, got {other:?}"),
    }
    assert_eq!(n, zfs_commands(1));
    assert_eq!(snapshots_under(&pool), "", "nothing made");
}

/// A channel program that `zfs program` itself fails (here on a pool
/// imported read-only) is a typed `Command` error carrying the exit status
/// and what `zfs` printed on stderr, never a panic; nothing is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_program_failure_is_a_command_error_with_the_zfs_stderr() {
    let test = "snapshot_program_failure_is_a_command_error_with_the_zfs_stderr";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    let vdev = pool.vdev.to_string_lossy().into_owned();
    pool.export();
    zfs_import(&["-o", "readonly=on", "-d", &vdev, &pool.pool]);
    let (got, n) = counted(async {
        p.create_snapshot(
            &vref("v", VolumeKind::Data, None, &none),
            &snap_spec("s", Uuid::now_v7()),
        )
    })
    .await;
    match got.unwrap_err() {
        ProviderError::Command {
            command,
            status,
            stderr,
        } => {
            // The script is read from stdin (`-`), never from a file.
            let head = format!("zfs program -j -- {} - ", pool.pool);
            assert!(command.starts_with(&head), "{command}");
            assert!(status.starts_with("exit status "), "{status}");
            assert_ne!(status, "exit status 0");
            assert!(stderr.contains("read-only"), "zfs's message: {stderr}");
        }
        other => panic!("expected a Command error, got {other:?}"),
    }
    assert_eq!(n, zfs_commands(1));
    pool.export();
    pool.import();
    assert_eq!(snapshots_under(&pool), "", "nothing made");
}

fn zfs_import(args: &[&str]) {
    let out = Command::new("zpool")
        .arg("import")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "zpool import {args:?}: {out:?}");
}

/// The provider's snapshot program, run by hand with a tag ZFS refuses (a
/// user property value over its 8 KiB limit): the snapshot it had taken is
/// destroyed again within the same program, so it returns the refusal and
/// no snapshot, tagged or not, exists afterwards.
#[test]
fn a_tag_refused_inside_the_snapshot_program_undoes_the_snapshot() {
    let test = "a_tag_refused_inside_the_snapshot_program_undoes_the_snapshot";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    let src = format!("{}/data/v", pool.dataset());
    let snap = format!("{src}@s");
    let big = format!("volmgr:big={}", "x".repeat(9000));
    let printed = run_program(
        &pool,
        SNAPSHOT_PROGRAM,
        &[
            &src,
            "v",
            &snap,
            "volmgr:owner=volmgr",
            "volmgr:kind=snapshot",
            &big,
        ],
    );
    assert!(
        printed.contains(r#""result":"failed""#) && printed.contains("set_prop volmgr:big"),
        "{printed}"
    );
    assert_eq!(snapshots_under(&pool), "", "undone");
}

/// Runs channel program `script` (on stdin, as the provider does) in
/// `pool`'s pool with `args`; it must succeed. Its JSON output.
fn run_program(pool: &ZfsPool, script: &str, args: &[&str]) -> String {
    let out = program_output(pool, script, args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs channel program `script` as [`run_program`] does, whatever its
/// outcome: `zfs program`'s exit status and output.
fn program_output(pool: &ZfsPool, script: &str, args: &[&str]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("zfs")
        .args(["program", "-j", "--", &pool.pool, "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The snapshot's and the receive's programs share one tag parser
/// (`lua/props.lua`): a tag argument without a property name (no `=`, or
/// nothing before it) is a fatal error naming it, raised before either
/// program changes anything, so no snapshot is made and no snapshot
/// lookup answers instead.
#[test]
fn a_tag_argument_without_a_property_name_fails_both_programs_before_any_change() {
    let test = "a_tag_argument_without_a_property_name_fails_both_programs_before_any_change";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    let src = format!("{}/data/v", pool.dataset());
    let snap = format!("{src}@s");
    for bad in ["volmgr:owner", "=volmgr"] {
        let calls: [(&str, &[&str]); 2] = [
            (
                SNAPSHOT_PROGRAM,
                &[&src, "v", &snap, "volmgr:kind=snapshot", bad],
            ),
            (
                RECEIVED_PROGRAM,
                &[
                    &src,
                    &snap,
                    "guid=1",
                    "volmgr:receiving",
                    "volmgr:kind=snapshot",
                    bad,
                ],
            ),
        ];
        for (script, args) in calls {
            let out = program_output(&pool, script, args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{bad}: {out:?}");
            assert!(
                stderr.contains(&format!("tag argument without a property name: {bad}")),
                "{bad}: {stderr}"
            );
        }
    }
    assert_eq!(snapshots_under(&pool), "", "nothing made");
}

/// The provider's receive program, run by hand after a `zfs recv` with a
/// last tag ZFS refuses (a user property value over its 8 KiB limit): every
/// change is checked before the first is made, so it returns the refusal
/// and changes nothing, not even the tags before the refused one: the
/// arrival stays untagged and the target marked, what `abort_partial`
/// removes.
#[test]
fn a_tag_refused_inside_the_receive_program_changes_nothing() {
    let test = "a_tag_refused_inside_the_receive_program_changes_nothing";
    let Some(f) = ReceiveFixture::new(test) else {
        return;
    };
    let arrived = f.snapshot("r");
    f.recv_by_hand("r");

    let signed = format!("guid={}", f.toguid().cast_signed());
    let big = format!("volmgr:big={}", "x".repeat(9000));
    let printed = run_program(
        &f.pool,
        RECEIVED_PROGRAM,
        &[
            &f.target,
            &arrived,
            &signed,
            "volmgr:receiving",
            "volmgr:owner=volmgr",
            "volmgr:volume-id=r",
            "volmgr:kind=snapshot",
            &big,
        ],
    );
    assert!(
        printed.contains(r#""result":"failed""#) && printed.contains("set_prop volmgr:big"),
        "{printed}"
    );
    assert_eq!(own_props(&arrived), Vec::new(), "no tag set");
    assert_eq!(f.marked(), ("local".to_owned(), f.mark()), "still marked");
    f.p.abort_partial(f.op).unwrap();
    assert!(
        f.p.inventory().unwrap().iter().all(|i| i.name != arrived),
        "abort_partial removed the arrival"
    );
}

/// Snapshots of one volume taken at once all succeed with distinct guids:
/// two channel programs in one transaction group cannot both snapshot the
/// same filesystem (`zfs.sync.snapshot` answers `EAGAIN`, which the `zfs
/// snapshot` command retries itself), and the provider runs the program
/// again.
#[test]
fn concurrent_snapshots_of_one_volume_all_succeed() {
    let test = "concurrent_snapshots_of_one_volume_all_succeed";
    let Some((_pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let guids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let (p, none) = (&p, &none);
                scope.spawn(move || {
                    p.create_snapshot(
                        &vref("v", VolumeKind::Data, None, none),
                        &snap_spec(id, Uuid::now_v7()),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap().details[DETAIL_GUID].clone())
            .collect()
    });
    let mut distinct = guids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{guids:?}");
}

/// A snapshot's destroy is one channel program (tag check and destroy)
/// that refuses an untagged snapshot of our volume; a snapshot mounted
/// under `.zfs/snapshot` (its location was read), which a channel program
/// cannot destroy (`EBUSY`), is destroyed by `zfs destroy` after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_destroy_is_one_command_refuses_an_untagged_snapshot_and_unmounts_a_mounted_one() {
    let test =
        "snapshot_destroy_is_one_command_refuses_an_untagged_snapshot_and_unmounts_a_mounted_one";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let none = Details::new();
    let v = p.create_volume(&data_spec("v", Uuid::now_v7())).unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"x").unwrap();
    let untagged = format!("{}/data/v@u", pool.dataset());
    zfs_out(&["snapshot", &untagged]);
    let (got, n) =
        counted(async { p.destroy(&vref("u", VolumeKind::Snapshot, Some("v"), &none)) }).await;
    let err = got.unwrap_err();
    assert!(err.to_string().contains("refusing to destroy"), "{err}");
    assert_eq!(n, zfs_commands(1));
    assert_eq!(snapshots_under(&pool), untagged, "untouched");

    let src = vref("v", VolumeKind::Data, None, &none);
    let s = p
        .create_snapshot(&src, &snap_spec("s", Uuid::now_v7()))
        .unwrap();
    let t = p
        .create_snapshot(&src, &snap_spec("t", Uuid::now_v7()))
        .unwrap();
    let (got, n) =
        counted(async { p.destroy(&vref("s", VolumeKind::Snapshot, Some("v"), &s.details)) }).await;
    got.unwrap();
    assert_eq!(n, zfs_commands(1), "one channel program");
    // Reading the location mounts the snapshot.
    assert_eq!(
        std::fs::read(Path::new(&t.location).join("f")).unwrap(),
        b"x"
    );
    let (got, n) =
        counted(async { p.destroy(&vref("t", VolumeKind::Snapshot, Some("v"), &t.details)) }).await;
    got.unwrap();
    assert_eq!(n, zfs_commands(2), "EBUSY in the program, then zfs destroy");
    assert_eq!(snapshots_under(&pool), untagged, "both gone");
}

// --- figures ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_on_zfs_report_their_median_latency() {
    let test = "verbs_on_zfs_report_their_median_latency";
    let Some(pool) = ZfsPool::for_test(test, 512) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let m = Manager::open(state.path(), manager_config(pool.provider_config()))
        .await
        .unwrap();
    const N: usize = 9;
    let (mut create, mut snap, mut fork, mut destroy) = (vec![], vec![], vec![], vec![]);
    let mut ids = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        let v = m.create_volume("default", None, Meta::new()).await.unwrap();
        create.push(t.elapsed());
        std::fs::write(Path::new(&v.location).join("f"), b"x").unwrap();
        let t = Instant::now();
        let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
        snap.push(t.elapsed());
        let t = Instant::now();
        let f = m.fork_volume(&s.id, None, Meta::new()).await.unwrap();
        fork.push(t.elapsed());
        ids.push((v.id, s.id, f.id));
    }
    for (v, s, f) in ids {
        for id in [f, s, v] {
            let t = Instant::now();
            m.destroy_volume(&id).await.unwrap();
            destroy.push(t.elapsed());
        }
    }
    println!(
        "FIGURE zfs median latency (n={N}): create {:.2?}, snapshot {:.2?}, fork {:.2?}, destroy {:.2?}",
        median(create),
        median(snap),
        median(fork),
        median(destroy)
    );
    assert!(m.volumes().is_empty());
    m.close().await;
}

/// Commands run while `f` runs (nothing else in this test binary runs any:
/// the guest runs it with `--test-threads=1`).
async fn counted<T>(f: impl Future<Output = T>) -> (T, CommandCount) {
    let before = CommandCount::snapshot();
    let out = f.await;
    (out, CommandCount::snapshot().since(before))
}

fn zfs_commands(n: u64) -> CommandCount {
    CommandCount {
        zfs: n,
        ..CommandCount::default()
    }
}

/// The `zfs` commands each verb runs through the manager are the table of
/// the ZFS provider's `//!` documentation (create 1, snapshot 1, fork 2,
/// destroy 2 for a filesystem and 1 for a snapshot, send 2, receive 5): a change that adds a command to a verb
/// fails here, and one that removes a command updates the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verb_runs_exactly_its_documented_number_of_zfs_commands() {
    let test = "each_verb_runs_exactly_its_documented_number_of_zfs_commands";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let m = Manager::open(state.path(), manager_config(pool.provider_config()))
        .await
        .unwrap();
    let (v, create) = counted(m.create_volume("default", None, Meta::new())).await;
    let v = v.unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"x").unwrap();
    let (s1, snapshot) = counted(m.create_snapshot(&v.id, Meta::new())).await;
    let s1 = s1.unwrap();
    let (f, fork) = counted(m.fork_volume(&s1.id, None, Meta::new())).await;
    let f = f.unwrap();
    std::fs::write(Path::new(&v.location).join("g"), b"y").unwrap();
    let s2 = m.create_snapshot(&v.id, Meta::new()).await.unwrap();

    // Transfers: a full stream of s1 and an incremental s1 -> s2 into `dst`.
    let dst = m.create_volume("default", None, Meta::new()).await.unwrap();
    let mut full = Vec::new();
    let (sent, full_send) = counted(m.send_snapshot(&s1.id, &[], &mut full)).await;
    assert!(!sent.unwrap().incremental);
    let (r1, full_recv) = counted(m.receive_snapshot(&dst.id, full.as_slice())).await;
    r1.unwrap();
    let haves = m.list_haves(&dst.id).unwrap();
    let mut inc = Vec::new();
    let (sent, inc_send) = counted(m.send_snapshot(&s2.id, &haves, &mut inc)).await;
    assert!(sent.unwrap().incremental, "dst has s1");
    let (r2, inc_recv) = counted(m.receive_snapshot(&dst.id, inc.as_slice())).await;
    r2.unwrap();

    let (r, destroy_fork) = counted(m.destroy_volume(&f.id)).await;
    r.unwrap();
    let (r, destroy_snapshot) = counted(m.destroy_volume(&s1.id)).await;
    r.unwrap();
    let mut destroy_volume = Vec::new();
    for id in [&s2.id, &v.id] {
        let (r, n) = counted(m.destroy_volume(id)).await;
        r.unwrap();
        destroy_volume.push(n);
    }
    println!(
        "FIGURE zfs commands per verb: create {}, snapshot {}, fork {}, destroy {}/{}/{} \
         (fork/snapshot/volume), full send {}, full receive {}, incremental send {}, \
         incremental receive {}",
        create.zfs,
        snapshot.zfs,
        fork.zfs,
        destroy_fork.zfs,
        destroy_snapshot.zfs,
        destroy_volume[1].zfs,
        full_send.zfs,
        full_recv.zfs,
        inc_send.zfs,
        inc_recv.zfs
    );
    assert_eq!(create, zfs_commands(1), "create");
    assert_eq!(snapshot, zfs_commands(1), "snapshot");
    assert_eq!(fork, zfs_commands(2), "fork");
    assert_eq!(destroy_fork, zfs_commands(2), "destroy a fork");
    assert_eq!(destroy_snapshot, zfs_commands(1), "destroy a snapshot");
    assert_eq!(
        destroy_volume,
        [zfs_commands(1), zfs_commands(2)],
        "destroy s2, then v"
    );
    assert_eq!(full_send, zfs_commands(2), "full send");
    assert_eq!(inc_send, zfs_commands(2), "incremental send");
    assert_eq!(full_recv, zfs_commands(5), "full receive");
    assert_eq!(inc_recv, zfs_commands(5), "incremental receive");
    m.close().await;
}

/// Every property of `dataset` and everything under it, with its source:
/// what a refused agent must leave unchanged.
fn dataset_image(dataset: &str) -> String {
    zfs_out(&[
        "get",
        "-H",
        "-p",
        "-r",
        "-t",
        "all",
        "-o",
        "name,property,value,source",
        "all",
        dataset,
    ])
}

/// `volmgr:root-owner` of `dataset`: value and source, tab-separated.
fn root_owner_of(dataset: &str) -> String {
    zfs_out(&[
        "get",
        "-H",
        "-o",
        "value,source",
        "volmgr:root-owner",
        dataset,
    ])
}

/// Asserts `err` refuses root dataset `dataset` as owned by agent `owner`.
#[track_caller]
fn assert_foreign_dataset(
    err: &volmgr::manager::ManagerError,
    dataset: &str,
    owner: volmgr::provider::AgentId,
) {
    assert!(
        matches!(
            err,
            volmgr::manager::ManagerError::Provider {
                error: ProviderError::ForeignRoot { root, owner: o },
                ..
            } if root == dataset && *o == owner.to_string()
        ),
        "expected ForeignRoot of {dataset}: {err:?}"
    );
    assert!(
        err.to_string().contains("belongs to another volmgr agent"),
        "{err}"
    );
}

/// A ZFS root dataset belongs to one agent (story and property:
/// `tests/root_owner.rs`, there for the directory provider): a root from
/// before owners is claimed by the first agent (`volmgr:root-owner`, set
/// locally); a second agent's add of it and a third agent configured with it
/// are refused, and no dataset under it changes; a damaged owner is refused
/// as such; the owner's reopen works, and `zfs inherit` (the documented
/// handover) lets the root be claimed anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_add_or_open_on_a_zfs_root_another_agent_owns() {
    let test = "a_second_agent_cannot_add_or_open_on_a_zfs_root_another_agent_owns";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let dataset = pool.dataset();
    let owner_of = || root_owner_of(&dataset);
    drop(ZfsProvider::from_config(&pool.provider_config()).unwrap());
    assert_eq!(owner_of(), "-\t-", "a root from before owners");
    let states = tempfile::tempdir().unwrap();
    let state_a = states.path().join("a");

    let a = Manager::open(&state_a, manager_config(pool.provider_config()))
        .await
        .unwrap();
    assert_eq!(
        owner_of(),
        format!("{}\tlocal", a.agent_id()),
        "claimed by A"
    );
    let v = a
        .create_volume("default", Some("v"), Meta::new())
        .await
        .unwrap();
    std::fs::write(Path::new(&v.location).join("precious"), b"A's data").unwrap();
    a.create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    let image = || dataset_image(&dataset);
    let before = image();

    let b = Manager::open(states.path().join("b"), ManagerConfig::default())
        .await
        .unwrap();
    let err = b
        .add_provider("p", KIND, pool.provider_config())
        .await
        .expect_err("a root A owns");
    assert_foreign_dataset(&err, &dataset, a.agent_id());
    assert!(b.providers().is_empty());
    b.close().await;
    let err = Manager::open(
        states.path().join("c"),
        manager_config(pool.provider_config()),
    )
    .await
    .expect_err("C's default provider is A's root");
    assert_foreign_dataset(&err, &dataset, a.agent_id());
    assert_eq!(image(), before, "no dataset under the root changed");
    let ids: Vec<String> = a.volumes().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, ["s", "v"]);
    assert_eq!(
        std::fs::read(Path::new(&v.location).join("precious")).unwrap(),
        b"A's data"
    );
    let agent = a.agent_id();
    a.close().await;

    // A damaged owner is refused as such, naming the property.
    zfs_out(&["set", "volmgr:root-owner=not-an-agent", &dataset]);
    let a = Manager::open(&state_a, manager_config(pool.provider_config()))
        .await
        .unwrap();
    let unavailable = a.reconcile_report().unavailable;
    assert!(
        unavailable.iter().any(|(p, why)| p == "default"
            && why.contains("volmgr:root-owner")
            && why.contains("no agent id")),
        "{unavailable:?}"
    );
    a.close().await;
    // The handover: the property removed with the agents stopped; the next
    // agent to open claims the root.
    zfs_out(&["inherit", "volmgr:root-owner", &dataset]);
    let a = Manager::open(&state_a, manager_config(pool.provider_config()))
        .await
        .unwrap();
    assert_eq!(a.agent_id(), agent);
    assert!(a.reconcile_report().unavailable.is_empty());
    assert_eq!(owner_of(), format!("{agent}\tlocal"));
    a.create_volume("default", Some("w"), Meta::new())
        .await
        .expect("A reopens its root");
    a.close().await;
}

/// A root dataset inside another agent's tree is refused: with A owning
/// `<pool>/volmgr`, B configured with `<pool>/volmgr/inner/b` (missing, like
/// `inner`) would have created it with its own `volmgr:root-owner` set
/// locally, hiding the one it inherits from A's root, and claimed it. It is
/// refused before anything is created, naming A; an existing dataset there
/// inheriting A's owner is refused too (`claim_root`), and A's own nested
/// root is no other agent's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_inside_another_agents_tree_is_refused_before_it_is_made() {
    let test = "a_root_inside_another_agents_tree_is_refused_before_it_is_made";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let states = tempfile::tempdir().unwrap();
    let a = Manager::open(
        states.path().join("a"),
        manager_config(pool.provider_config()),
    )
    .await
    .unwrap();
    let nested = format!("{}/inner/b", pool.dataset());
    let mut config = pool.provider_config();
    config.insert("dataset".into(), nested.clone());
    let exists = |name: &str| {
        Command::new("zfs")
            .args(["list", "-H", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    let b = Manager::open(states.path().join("b"), ManagerConfig::default())
        .await
        .unwrap();
    let err = b
        .add_provider("p", KIND, config.clone())
        .await
        .expect_err("inside A's root");
    assert_foreign_dataset(&err, &nested, a.agent_id());
    assert!(!exists(&nested) && !exists(&format!("{}/inner", pool.dataset())));
    // Made by someone else meanwhile: it inherits A's owner, refused as such.
    zfs_out(&["create", "-p", &nested]);
    let err = b
        .add_provider("p", KIND, config.clone())
        .await
        .expect_err("inherits A's owner");
    assert_foreign_dataset(&err, &nested, a.agent_id());
    b.close().await;
    // A itself may keep a second root in its own tree (its own workdir).
    let work = tempfile::tempdir().unwrap();
    config.insert("workdir".into(), work.path().to_string_lossy().into_owned());
    a.add_provider("nested", KIND, config)
        .await
        .expect("A's own tree");
    a.close().await;
}

/// Two agents of one host starting together on one unowned root dataset
/// (story: `tests/root_owner.rs`, for the directory provider): the claim
/// was `zfs get`, then `zfs set`, so both could read "unset" and both set
/// `volmgr:root-owner`, the last one winning while both ran on the root.
/// An agent's provider holds a host-local lock of the root dataset
/// (`/run/volmgr/zfs-roots/<dataset with / as %>.lock`) from before its
/// `zfs get` until it is dropped: a second agent is refused while the first
/// runs, whatever the property says at that instant, and changes nothing.
/// The instant between the first agent's read of "unset" and its `zfs set`
/// is made deterministic by `zfs inherit` under the running first agent.
#[test]
fn a_second_agent_cannot_claim_an_unowned_zfs_root_the_first_one_is_claiming() {
    use std::os::unix::fs::MetadataExt;
    let test = "a_second_agent_cannot_claim_an_unowned_zfs_root_the_first_one_is_claiming";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let dataset = pool.dataset();
    let config = pool.provider_config();
    let owner_of = || root_owner_of(&dataset);
    drop(ZfsProvider::from_config(&config).unwrap());
    let (agent_a, agent_b) = (
        volmgr::provider::AgentId::generate(),
        volmgr::provider::AgentId::generate(),
    );
    let a = ZfsProvider::for_owner(&config, &agent_a).unwrap();
    assert_eq!(owner_of(), format!("{agent_a}\tlocal"), "claimed by A");
    let lock = PathBuf::from(format!(
        "/run/volmgr/zfs-roots/{}.lock",
        dataset.replace('/', "%")
    ));
    let md = std::fs::symlink_metadata(&lock).expect("the lock file");
    assert!(md.is_file() && md.mode() & 0o7777 == 0o600, "{md:?}");
    // A has read "unset" and not set it yet: what B would read.
    zfs_out(&["inherit", "volmgr:root-owner", &dataset]);
    let image = || dataset_image(&dataset);
    let before = image();

    let err = ZfsProvider::for_owner(&config, &agent_b).expect_err("A runs on the root");
    assert!(
        matches!(
            &err,
            ProviderError::RootInUse { root, lock: l }
                if *root == dataset && l == lock.to_str().unwrap()
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("in use by another volmgr agent"),
        "{err}"
    );
    assert_eq!(owner_of(), "-\t-", "B set nothing");
    assert_eq!(image(), before, "no dataset under the root changed");

    // A stops: its lock goes with it, and the unowned root is B's.
    drop(a);
    let b = ZfsProvider::for_owner(&config, &agent_b).expect("A stopped");
    assert_eq!(owner_of(), format!("{agent_b}\tlocal"), "claimed by B");
    drop(b);
    let err = ZfsProvider::for_owner(&config, &agent_a).expect_err("B's root now");
    assert!(
        matches!(&err, ProviderError::ForeignRoot { owner, .. } if *owner == agent_b.to_string()),
        "{err:?}"
    );
}

// --- lookup of one id ---------------------------------------------------------

/// `-o` arguments tagging a dataset as volume `id` of `kind` (what the
/// provider writes), by hand.
fn tag_args(id: &str, kind: &str) -> Vec<String> {
    [
        "volmgr:owner=volmgr".to_owned(),
        format!("volmgr:volume-id={id}"),
        format!("volmgr:kind={kind}"),
        format!("volmgr:op={}", Uuid::now_v7()),
    ]
    .into_iter()
    .flat_map(|t| ["-o".to_owned(), t])
    .collect()
}

/// `zfs VERB <tags of id, kind> NAME` (`create`, `snapshot`).
fn zfs_tagged(verb: &str, extra: &[&str], id: &str, kind: &str, name: &str) {
    let tags = tag_args(id, kind);
    let mut args = vec![verb];
    args.extend_from_slice(extra);
    args.extend(tags.iter().map(String::as_str));
    args.push(name);
    zfs_out(&args);
}

/// Story: `lookup` (what the manager asks after a failed call) was the
/// trait's default on ZFS: the whole inventory listed, every dataset and
/// snapshot of the root, to find one item (issue #13). It is now one
/// read-only channel program naming the datasets that can carry the id's
/// tag (`<data>/<id>`, and `<data>/<child>@<id>` found by name under each
/// child), then one `zfs list` of those. In every odd state (a half-made
/// create, a partial receive, an arrival not yet tagged, untagged and
/// misnamed datasets, a tag of the wrong kind, nested datasets tagged as
/// if ours, a zvol and its snapshot, one id on a filesystem and on a
/// snapshot that sorts before it, a name too long for ZFS next to a long
/// child, an absent id) the lookup of each id is exactly the inventory's
/// first item tagged with it, in one command when nothing can be tagged
/// with it and two otherwise; and a failing ZFS is an error, never "none".
#[test]
fn the_lookup_of_each_id_is_the_inventory_item_tagged_with_it_in_every_odd_state() {
    let test = "zfs_lookup_of_each_id_is_the_inventory_item_tagged_with_it";
    let Some((pool, p)) = pool_and_provider(test) else {
        return;
    };
    let data = format!("{}/data", pool.dataset());
    let none = Details::new();
    let at = |name: &str| format!("{data}/{name}");
    // A data volume, its snapshot, a fork of that.
    p.create_volume(&data_spec("vol", Uuid::now_v7())).unwrap();
    p.create_snapshot(
        &vref("vol", VolumeKind::Data, None, &none),
        &snap_spec("snap", Uuid::now_v7()),
    )
    .unwrap();
    p.fork_volume(
        &vref("snap", VolumeKind::Snapshot, Some("vol"), &none),
        &data_spec("fork", Uuid::now_v7()),
    )
    .unwrap();
    // A half-made create: tagged, not mounted.
    p.create_volume(&data_spec("half", Uuid::now_v7())).unwrap();
    zfs_out(&["unmount", &at("half")]);
    // A partial receive: a cut stream into `target`, marked by its op.
    let (s, stream) = full_stream_of_a_snapshot(&p);
    p.create_volume(&data_spec("target", Uuid::now_v7()))
        .unwrap();
    let op = Uuid::now_v7();
    zfs_out(&[
        "set",
        &format!("volmgr:receiving={op}:{}", s.details[DETAIL_GUID]),
        &at("target"),
    ]);
    let mut recv = Command::new("zfs")
        .args(["recv", "-F", "-s", &at("target")])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = recv.stdin.take().unwrap();
        let _ = stdin.write_all(&stream[..stream.len() / 2]);
    }
    assert!(!recv.wait().unwrap().success());
    // An arrival under its final name, not yet tagged (it inherits the
    // target's tags, which name `landing`, kind data): foreign.
    p.create_volume(&data_spec("landing", Uuid::now_v7()))
        .unwrap();
    let mut recv = Command::new("zfs")
        .args(["recv", "-F", &format!("{}@arrived", at("landing"))])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        recv.stdin.take().unwrap().write_all(&stream).unwrap();
    }
    assert!(recv.wait().unwrap().success());
    // Foreign: untagged; tagged as another id; a snapshot tagged with the
    // wrong kind; datasets below a volume tagged as if ours.
    zfs_out(&["create", &at("foreign")]);
    zfs_tagged("create", &[], "other", "data", &at("misnamed"));
    zfs_tagged(
        "snapshot",
        &[],
        "wrongkind",
        "data",
        &format!("{}@wrongkind", at("vol")),
    );
    zfs_tagged("create", &[], "nested", "data", &at("vol/nested"));
    zfs_tagged(
        "snapshot",
        &[],
        "deep",
        "snapshot",
        &format!("{}@deep", at("vol/nested")),
    );
    // A zvol tagged as data volume `zv` (the inventory lists filesystems and
    // snapshots only) and its snapshot tagged as snapshot `zvsnap`.
    zfs_tagged("create", &["-s", "-V", "16M"], "zv", "data", &at("zv"));
    zfs_tagged(
        "snapshot",
        &[],
        "zvsnap",
        "snapshot",
        &format!("{}@zvsnap", at("zv")),
    );
    // One id on a filesystem and on a snapshot of `fork`, which sorts first.
    p.create_volume(&data_spec("zdup", Uuid::now_v7())).unwrap();
    zfs_tagged(
        "snapshot",
        &[],
        "zdup",
        "snapshot",
        &format!("{}@zdup", at("fork")),
    );
    // A child with a long name: with a long id, its snapshot's name would
    // be longer than ZFS allows (255 bytes).
    let long_child = "c".repeat(120);
    zfs_out(&["create", &at(&long_child)]);
    let long_id = "i".repeat(volmgr::model::MAX_ID_LEN);
    assert!(at(&long_child).len() + 1 + long_id.len() > 255);

    let inventory = p.inventory().unwrap();
    let tagged = |id: &str| {
        inventory
            .iter()
            .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == id))
            .cloned()
    };
    // The states are what they claim to be.
    let item = |name: &str| inventory.iter().find(|f| f.name == name);
    assert!(matches!(
        item(&at("half")).unwrap().presence,
        Presence::Incomplete { .. }
    ));
    assert!(item(&at("target")).unwrap().partial.is_some());
    assert!(
        item(&format!("{}@arrived", at("landing")))
            .unwrap()
            .tag
            .is_none()
    );
    assert!(item(&at("zv")).is_none(), "zvols are not listed");
    assert_eq!(
        tagged("zdup").unwrap().name,
        format!("{}@zdup", at("fork")),
        "the snapshot sorts before the filesystem"
    );

    let mut ids: Vec<String> = [
        "vol",
        "snap",
        "fork",
        "half",
        "target",
        "landing",
        "arrived",
        "src",
        "s",
        "foreign",
        "misnamed",
        "other",
        "wrongkind",
        "nested",
        "deep",
        "zv",
        "zvsnap",
        "zdup",
        "nothing",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([long_child.clone(), long_id.clone()])
    .collect();
    for f in &inventory {
        ids.extend(f.tag.as_ref().map(|t| t.volume.clone()));
        let last = f.name.rsplit(['/', '@']).next().unwrap();
        ids.extend(VolumeId::new(last).ok().map(|_| last.to_owned()));
    }
    ids.sort();
    ids.dedup();
    let mut wrong = Vec::new();
    for id in &ids {
        let before = CommandCount::snapshot();
        let looked_up = p.lookup(VolumeId::new(id).unwrap());
        let ran = CommandCount::snapshot().since(before);
        let want = tagged(id);
        match looked_up {
            Ok(got) if got == want => {}
            other => wrong.push(format!(
                "lookup of {id}: {other:?}, the inventory: {want:?}"
            )),
        }
        // One command when nothing can carry the tag (the program names
        // nothing), two when a filesystem `<data>/<id>` or a snapshot
        // `<data>/<child>@<id>` exists, ours or not.
        let can = [
            "vol",
            "snap",
            "fork",
            "half",
            "target",
            "landing",
            "arrived",
            "src",
            "s",
            "foreign",
            "misnamed",
            "wrongkind",
            "zvsnap",
            "zdup",
        ]
        .contains(&id.as_str())
            || *id == long_child;
        let commands = if can { 2 } else { 1 };
        if ran != zfs_commands(commands) {
            wrong.push(format!(
                "lookup of {id} ran {ran:?}, expected {commands} zfs commands"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(ids.len() > 20, "{ids:?}");

    // A failing ZFS (here the pool gone) is an error, never "none".
    pool.export();
    let err = p.lookup(VolumeId::new("vol").unwrap());
    assert!(err.is_err(), "lookup with the pool exported: {err:?}");
    pool.import();
    assert_eq!(
        p.lookup(VolumeId::new("vol").unwrap()).unwrap(),
        tagged("vol")
    );
}

// --- nested roots ---------------------------------------------------------------

/// `config` with root dataset `dataset`.
fn with_dataset(config: &ProviderConfig, dataset: &str) -> ProviderConfig {
    let mut c = config.clone();
    c.insert("dataset".into(), dataset.to_owned());
    c
}

/// Holds pool `pool`'s claim lock (`/run/volmgr/zfs-pools/<pool>.lock`, an
/// exclusive `flock`) as another agent's claim in progress would, until
/// the file is dropped.
fn hold_pool_claim_lock(pool: &str) -> std::fs::File {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = PathBuf::from(format!("/run/volmgr/zfs-pools/{pool}.lock"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path.parent().unwrap())
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .unwrap();
    file.lock().unwrap();
    file
}

/// Waits until another `flock` waits for `held`'s lock (a blocked request
/// on its inode in `/proc/locks`: an agent is at its claim, waiting), and
/// returns `None`; or until `done` delivers, which the agent does only if
/// it got through without waiting: `Some` of what it returned.
fn until_waiting_for<T>(held: &std::fs::File, done: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    use std::os::unix::fs::MetadataExt;
    let md = held.metadata().unwrap();
    let inode = format!(
        "{:02x}:{:02x}:{}",
        libc::major(md.dev()),
        libc::minor(md.dev()),
        md.ino()
    );
    // A bound for a hung test only: each round checks the two outcomes.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(result) = done.try_recv() {
            return Some(result);
        }
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        if locks
            .lines()
            .any(|l| l.contains("->") && l.split_whitespace().any(|w| w == inode))
        {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "the agent neither waited for the claim lock nor finished: {locks}"
        );
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ZfsProvider::for_owner(config, owner)` on a thread of its own; its
/// result (the provider dropped) on the channel.
fn open_on_a_thread(
    config: ProviderConfig,
    owner: volmgr::provider::AgentId,
) -> (
    std::sync::mpsc::Receiver<Result<(), ProviderError>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(ZfsProvider::for_owner(&config, &owner).map(drop));
    });
    (rx, thread)
}

#[track_caller]
fn assert_foreign_root(err: &ProviderError, root: &str, owner: volmgr::provider::AgentId) {
    assert!(
        matches!(err, ProviderError::ForeignRoot { root: r, owner: o }
            if r == root && *o == owner.to_string()),
        "expected ForeignRoot of {root} owned by {owner}: {err:?}"
    );
}

/// Story: each agent's claim of a missing root read the owners above it,
/// then created it; two agents of one host claiming nested roots at the
/// same instant (A `<pool>/volmgr`, B `<pool>/volmgr/inner/b`) could each
/// find nothing above, and B's root ended inside A's tree. A claim (the
/// owners above and below read, the root made or its owner set) now runs
/// under the pool's host-local claim lock, and only it. The instant is
/// made deterministic: the test holds the lock (A's claim in progress),
/// waits until B is waiting for it, makes A's root, releases: B is then
/// refused, naming A, and made nothing. The other way round, C claiming
/// `<pool>/outer` while D's root `<pool>/outer/inner/d` is made meanwhile,
/// C is refused naming D and sets nothing. Without the lock each agent
/// got through without waiting (and claimed its root).
#[test]
fn nested_roots_claimed_at_the_same_instant_are_judged_one_after_the_other() {
    use volmgr::provider::AgentId;
    let test = "nested_roots_claimed_at_the_same_instant_are_judged_one_after_the_other";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let config = pool.provider_config();
    let base = format!("{}/base", pool.pool);
    drop(ZfsProvider::from_config(&with_dataset(&config, &base)).unwrap());
    let exists = |name: &str| {
        Command::new("zfs")
            .args(["list", "-H", name])
            .output()
            .unwrap()
            .status
            .success()
    };

    // B's root inside A's, A's made while B waits.
    let (agent_a, agent_b) = (AgentId::generate(), AgentId::generate());
    let outer = pool.dataset();
    let inner = format!("{outer}/inner/b");
    let held = hold_pool_claim_lock(&pool.pool);
    let (done, b) = open_on_a_thread(with_dataset(&config, &inner), agent_b);
    if let Some(got) = until_waiting_for(&held, &done) {
        panic!("B's claim of {inner} did not wait for the pool's claim lock: {got:?}");
    }
    zfs_out(&[
        "create",
        "-o",
        &format!("volmgr:root-owner={agent_a}"),
        &outer,
    ]);
    drop(held);
    let err = done.recv().unwrap().expect_err("inside A's root");
    b.join().unwrap();
    assert_foreign_root(&err, &inner, agent_a);
    assert!(!exists(&format!("{outer}/inner")), "B made nothing");

    // C's root around D's, D's made while C waits.
    let (agent_c, agent_d) = (AgentId::generate(), AgentId::generate());
    let outer = format!("{}/outer", pool.pool);
    let inner = format!("{outer}/inner/d");
    let held = hold_pool_claim_lock(&pool.pool);
    let (done, c) = open_on_a_thread(with_dataset(&config, &outer), agent_c);
    if let Some(got) = until_waiting_for(&held, &done) {
        panic!("C's claim of {outer} did not wait for the pool's claim lock: {got:?}");
    }
    zfs_out(&[
        "create",
        "-p",
        "-o",
        &format!("volmgr:root-owner={agent_d}"),
        &inner,
    ]);
    drop(held);
    let err = done.recv().unwrap().expect_err("around D's root");
    c.join().unwrap();
    assert_foreign_root(&err, &inner, agent_d);
    assert_eq!(root_owner_of(&outer), "-\t-", "C set nothing");
    assert!(!exists(&format!("{outer}/data")), "C made nothing");
}

/// A root dataset that would contain another agent's root is refused:
/// with B owning `<pool>/volmgr/inner/b` (whose `zfs create -p` made
/// `<pool>/volmgr`, unowned), A's claim of `<pool>/volmgr` would have set
/// its owner there and taken B's root, data and all, into A's tree. It is
/// refused naming B's root and B, nothing changed; a root containing the
/// agent's own root is claimed; a damaged owner below is refused as such.
#[test]
fn a_root_containing_another_agents_root_is_refused_and_one_containing_its_own_is_not() {
    use volmgr::provider::AgentId;
    let test = "a_root_containing_another_agents_root_is_refused_and_one_containing_its_own";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let config = pool.provider_config();
    let (agent_a, agent_b) = (AgentId::generate(), AgentId::generate());
    let outer = pool.dataset();
    let inner = format!("{outer}/inner/b");
    drop(ZfsProvider::for_owner(&with_dataset(&config, &inner), &agent_b).unwrap());
    let before = dataset_image(&outer);
    assert_eq!(root_owner_of(&outer), "-\t-");
    let err = ZfsProvider::for_owner(&config, &agent_a).expect_err("around B's root");
    assert_foreign_root(&err, &inner, agent_b);
    assert!(
        err.to_string().contains("belongs to another volmgr agent"),
        "{err}"
    );
    assert_eq!(dataset_image(&outer), before, "nothing changed");

    // A's own root inside: A claims the one around it.
    let mine = format!("{}/mine", pool.pool);
    drop(
        ZfsProvider::for_owner(&with_dataset(&config, &format!("{mine}/inner")), &agent_a).unwrap(),
    );
    drop(ZfsProvider::for_owner(&with_dataset(&config, &mine), &agent_a).expect("its own"));
    assert_eq!(root_owner_of(&mine), format!("{agent_a}\tlocal"));

    // A damaged owner below.
    let odd = format!("{}/odd", pool.pool);
    zfs_out(&[
        "create",
        "-p",
        "-o",
        "volmgr:root-owner=garbage",
        &format!("{odd}/x"),
    ]);
    let err = ZfsProvider::for_owner(&with_dataset(&config, &odd), &agent_a)
        .expect_err("a damaged owner below");
    assert!(
        matches!(&err, ProviderError::InvalidConfig(why) if why.contains(&format!("{odd}/x")) && why.contains("no agent id")),
        "{err:?}"
    );
    assert_eq!(root_owner_of(&odd), "-\t-");
}

// --- the receive's space bound ---------------------------------------------------

/// A target pool of 256 MB (4 KiB sectors) with volume `t` (file `keep`), and a source
/// pool of 512 MB (lz4) with volume `src` holding what `fill` writes
/// (given the target pool's `used` and `available` bytes), snapshotted as
/// `src@s`.
struct SpaceFixture {
    dst_pool: ZfsPool,
    dst: ZfsProvider,
    _src_pool: ZfsPool,
    _src: ZfsProvider,
    /// `<src dataset>@s`.
    snapshot: String,
    /// The target's dataset and mountpoint.
    target: String,
    t: Created,
    none: Details,
}

fn zfs_u64(args: &[&str]) -> u64 {
    zfs_out(args).parse().unwrap()
}

impl SpaceFixture {
    fn new(test: &str, fill: impl FnOnce(&Path, u64, u64)) -> Option<Self> {
        let dst_pool = ZfsPool::for_test(&format!("{test}-dst"), 256)?;
        // Sectors of 4 KiB, as on most disks (a file vdev gets 512 B): a
        // sparse block's indirect blocks cost what they would there.
        std::fs::create_dir_all(dst_pool.vdev.parent().unwrap()).unwrap();
        std::fs::File::create(&dst_pool.vdev)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let st = Command::new("zpool")
            .args(["create", "-o", "ashift=12", "-m", "none", &dst_pool.pool])
            .arg(&dst_pool.vdev)
            .status()
            .unwrap();
        assert!(st.success());
        let dst = ZfsProvider::from_config(&dst_pool.provider_config()).unwrap();
        let src_pool = ZfsPool::for_test(&format!("{test}-src"), 512)?;
        let src = ZfsProvider::from_config(&src_pool.provider_config()).unwrap();
        let t = dst.create_volume(&data_spec("t", Uuid::now_v7())).unwrap();
        std::fs::write(Path::new(&t.location).join("keep"), b"kept").unwrap();
        // Sparse blocks compress to almost nothing (the noise does not).
        zfs_out(&["set", "compression=lz4", &src_pool.pool]);
        let s = src
            .create_volume(&data_spec("src", Uuid::now_v7()))
            .unwrap();
        let get = |p: &str| zfs_u64(&["get", "-H", "-p", "-o", "value", p, &dst_pool.pool]);
        fill(Path::new(&s.location), get("used"), get("available"));
        let snapshot = format!("{}/data/src@s", src_pool.dataset());
        zfs_out(&["snapshot", &snapshot]);
        Some(SpaceFixture {
            target: format!("{}/data/t", dst_pool.dataset()),
            dst_pool,
            dst,
            _src_pool: src_pool,
            _src: src,
            snapshot,
            t,
            none: Details::new(),
        })
    }

    /// `zfs send FLAGS <snapshot>` piped into the provider's receive into
    /// `t` as snapshot `r`.
    fn receive(&self, flags: &[&str]) -> Result<Created, ProviderError> {
        let mut args = vec!["send"];
        args.extend(flags);
        args.push(&self.snapshot);
        self.receive_of(&args, u64::MAX)
    }

    /// The first `limit` bytes of `zfs ARGS` piped into the provider's
    /// receive into `t` as snapshot `r`.
    fn receive_of(&self, args: &[&str], limit: u64) -> Result<Created, ProviderError> {
        use std::io::Read;
        let mut send = Command::new("zfs")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = send.stdout.take().unwrap();
        let r = self.dst.receive_snapshot(
            &vref("t", VolumeKind::Data, None, &self.none),
            &snap_spec("r", Uuid::now_v7()),
            &mut out.take(limit),
        );
        let _ = send.kill();
        let _ = send.wait();
        r
    }

    /// The target pool's `available` once every free has been done.
    fn available_settled(&self) -> u64 {
        let st = Command::new("zpool")
            .args(["wait", "-t", "free", &self.dst_pool.pool])
            .status()
            .unwrap();
        assert!(st.success());
        zfs_u64(&[
            "get",
            "-H",
            "-p",
            "-o",
            "value",
            "available",
            &self.dst_pool.pool,
        ])
    }

    /// The receive's refusal: no space, said by the bound (its reserve).
    fn assert_refused_by_the_bound(r: Result<Created, ProviderError>) {
        match r {
            Err(ProviderError::NoSpace { what, detail }) => {
                assert!(
                    detail.contains("kept in reserve"),
                    "refused by the bound, not by ZFS: {what}: {detail}"
                );
            }
            other => panic!("expected NoSpace from the bound, got {other:?}"),
        }
    }

    /// What any failed receive leaves: the target as it was (its file, no
    /// snapshot, no partial receive, no mark, mounted), and the pool's
    /// free space back to `before`.
    fn assert_left_unchanged(&self, before: u64) {
        let get = |prop: &str| zfs_out(&["get", "-H", "-o", "value", prop, &self.target]);
        assert_eq!(get("receive_resume_token"), "-", "no resumable state");
        assert_eq!(get("volmgr:receiving"), "-", "mark cleared");
        assert_eq!(get("mounted"), "yes");
        assert_eq!(
            zfs_out(&[
                "list",
                "-H",
                "-o",
                "name",
                "-t",
                "snapshot",
                "-r",
                &self.target
            ]),
            "",
            "no snapshot arrived"
        );
        assert_eq!(
            std::fs::read(Path::new(&self.t.location).join("keep")).unwrap(),
            b"kept"
        );
        let after = self.available_settled();
        assert!(
            after + (2 << 20) >= before,
            "the pool's free space returns: {before} before, {after} after"
        );
    }
}

/// `bytes` of noise in file `f` under `dir`, written in 8 MiB pieces.
fn write_noise(dir: &Path, bytes: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("f")).unwrap();
    let mut left = bytes;
    let mut seed = 1;
    while left > 0 {
        let n = left.min(8 << 20);
        f.write_all(&noise(seed, n as usize)).unwrap();
        left -= n;
        seed += 1;
    }
    f.sync_all().unwrap();
}

/// A peer's stream of more data than the receiving pool has free is
/// refused by the space bound (not left to fill the pool until ZFS itself
/// fails, leaving a resumable partial receive that holds the space): a
/// `NoSpace` naming the reserve, and nothing left.
#[test]
fn a_stream_larger_than_the_pools_free_space_is_refused_as_no_space_and_leaves_nothing() {
    let test =
        "a_stream_larger_than_the_pools_free_space_is_refused_as_no_space_and_leaves_nothing";
    let Some(f) = SpaceFixture::new(test, |dir, _, available| {
        write_noise(dir, available + (20 << 20));
    }) else {
        return;
    };
    let before = f.available_settled();
    let r = f.receive(&[]);
    SpaceFixture::assert_refused_by_the_bound(r);
    f.assert_left_unchanged(before);
}

/// A stream the pool could hold, but only by giving up its last 2%: ZFS
/// alone receives it (the pool left with less than the reserve free);
/// the bound refuses it.
#[test]
fn a_stream_that_fits_only_by_taking_the_pools_last_two_percent_is_refused() {
    let test = "a_stream_that_fits_only_by_taking_the_pools_last_two_percent_is_refused";
    let Some(f) = SpaceFixture::new(test, |dir, used, available| {
        // Would leave half the reserve (2% of the pool) free.
        let reserve = (used + available) / 50;
        write_noise(dir, available - reserve / 2);
    }) else {
        return;
    };
    let before = f.available_settled();
    let r = f.receive(&[]);
    SpaceFixture::assert_refused_by_the_bound(r);
    f.assert_left_unchanged(before);
}

/// Files of one byte each, far into a sparse file, sent compressed: each
/// costs a data block and a chain of indirect blocks, about five times
/// its bytes of stream (measured on 4 KiB sectors: 11.2 MB of stream for
/// 2000 files took 58 MB), and these take twice the pool's free space in
/// a stream of about a fifth of it. The bound charges each record what it
/// may allocate, so this stream is refused by it (ZFS alone would fail
/// only when the pool is full, "out of space").
#[test]
fn a_compressed_stream_of_sparse_blocks_costing_more_than_its_bytes_is_refused() {
    let test = "a_compressed_stream_of_sparse_blocks_costing_more_than_its_bytes_is_refused";
    let Some(f) = SpaceFixture::new(test, |dir, _, available| {
        use std::io::{Seek, SeekFrom, Write};
        // About 30 KB of pool per file: twice the pool's free space.
        let files = 2 * available / (30 << 10);
        for i in 0..files {
            let mut file = std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
            file.seek(SeekFrom::Start((1 << 40) + (i << 30))).unwrap();
            file.write_all(&[u8::try_from(i % 255).unwrap() | 1])
                .unwrap();
        }
    }) else {
        return;
    };
    let before = f.available_settled();
    let r = f.receive(&["-c"]);
    SpaceFixture::assert_refused_by_the_bound(r);
    f.assert_left_unchanged(before);
}

/// A resumed stream is bounded as a new one: the partial receive a cut
/// transfer left (resumable, `Suspended`) is continued with `zfs send -t`,
/// the rest does not fit, and the refusal discards the partial state
/// instead of leaving it resumable and holding its space.
#[test]
fn a_resumed_stream_past_the_pools_free_space_is_refused_and_its_partial_state_discarded() {
    let test =
        "a_resumed_stream_past_the_pools_free_space_is_refused_and_its_partial_state_discarded";
    let Some(f) = SpaceFixture::new(test, |dir, _, available| {
        write_noise(dir, available + (20 << 20));
    }) else {
        return;
    };
    let before = f.available_settled();
    let cut = f.receive_of(&["send", &f.snapshot], 30 << 20);
    assert!(
        matches!(cut, Err(ProviderError::Suspended { .. })),
        "a cut stream is suspended: {cut:?}"
    );
    let token = zfs_out(&[
        "get",
        "-H",
        "-o",
        "value",
        "receive_resume_token",
        &f.target,
    ]);
    assert_ne!(token, "-");
    let r = f.receive_of(&["send", "-t", &token], u64::MAX);
    SpaceFixture::assert_refused_by_the_bound(r);
    f.assert_left_unchanged(before);
}
