//! Crash test on the directory provider: a child process runs a concurrent
//! workload (create, snapshot, fork, send/receive, destroy) and is
//! killed (`SIGKILL`) at random points, 100 times. After each kill the parent reopens
//! the manager and checks: every acknowledged operation is present, nothing
//! is half-made, and the provider's inventory equals the state (no orphan,
//! no lost volume, no pending intent). The workload and the checks are
//! `tests/common/crash.rs`, shared with the btrfs and ZFS crash tests.
//!
//! The child is this same test binary running the ignored test
//! `crash_child_workload` (it refuses to run without its environment).

mod common;

use common::crash::{CrashTest, child_workload};
use volmgr::provider::ProviderConfig;
use volmgr::provider::dir::{CONFIG_ROOT, KIND};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of crash_at_random_points_loses_nothing_acknowledged"]
async fn crash_child_workload() {
    child_workload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_random_points_loses_nothing_acknowledged() {
    let volumes = tempfile::tempdir().unwrap();
    CrashTest {
        label: "crash test",
        kind: KIND,
        config: ProviderConfig::from([(
            CONFIG_ROOT.to_owned(),
            volumes.path().to_string_lossy().into_owned(),
        )]),
        lives: 100,
        max_acks_per_life: 40,
        workers: 4,
        destroy_tenths: 3,
        seed_salt: 0x5EED,
        provider_checks: &|_| Vec::new(),
    }
    .run()
    .await;
}
