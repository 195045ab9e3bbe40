//! Crash test on real btrfs: a child process runs a concurrent workload
//! (create, snapshot, fork, send/receive, destroy) on a loop-mounted btrfs
//! and is killed (`SIGKILL`), with every process it started, at random points. After
//! each kill the parent reopens the manager (which reconciles) and checks:
//! every acknowledged operation is present, no volume is lost or pending,
//! no orphan was reported, nothing foreign appeared, the provider's inventory
//! equals the state (complete items only), and the file system holds no
//! subvolume besides the recorded volumes' (nothing leaked in staging). The
//! workload and the common checks are `tests/common/crash.rs`, shared with
//! the directory and ZFS crash tests; the last two checks are btrfs's own.
//!
//! The child is this test binary running the ignored `crash_child_workload`.

mod common;

use common::BtrfsFs;
use common::crash::{CrashTest, Reopened, child_workload};
use volmgr::provider::ProviderConfig;
use volmgr::provider::btrfs::{CONFIG_ROOT, KIND};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of btrfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state"]
async fn crash_child_workload() {
    child_workload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state() {
    let test = "btrfs_kill_mid_operation_then_reconcile_leaves_inventory_equal_to_state";
    let Some(fs) = BtrfsFs::for_test(test, 1024) else {
        return;
    };
    let root = fs.path().join("volumes");
    let btrfs_checks = |r: &Reopened| {
        let mut problems = Vec::new();
        if !r.report.foreign.is_empty() {
            problems.push(format!("foreign items appeared: {:?}", r.report.foreign));
        }
        let subvolumes = fs.subvolume_count();
        if subvolumes != r.recorded.len() {
            problems.push(format!(
                "{subvolumes} subvolumes on the file system for {} volumes (leak)",
                r.recorded.len()
            ));
        }
        problems
    };
    CrashTest {
        label: "btrfs crash test",
        kind: KIND,
        config: ProviderConfig::from([(
            CONFIG_ROOT.to_owned(),
            root.to_string_lossy().into_owned(),
        )]),
        lives: 25,
        max_acks_per_life: 30,
        workers: 4,
        destroy_tenths: 2,
        seed_salt: 0xB7F5,
        provider_checks: &btrfs_checks,
    }
    .run()
    .await;
}
