//! Regression: a provider call that failed *after* its side effect left the
//! state and the provider disagreeing.
//!
//! Story: the failpoint suite fails every simulated provider call before and
//! after its side effect. Two rows of it failed:
//! - `destroy` failing after the volume was gone: the manager journaled the
//!   outcome as Failed, so the state kept a live volume the provider no longer
//!   had; the next open could only mark it Lost (visible, but a disagreement
//!   the operator had to clear by hand).
//! - `receive_snapshot` failing after the snapshot was made: create, snapshot
//!   and fork cleaned up their tagged item on failure (`undo_on_error`), but
//!   receive did not, so the Failed outcome left a tagged snapshot behind that
//!   the next open reported as an orphan.
//!
//! Fix: a failed destroy asks the provider's inventory whether the volume is
//! still there, and journals Done if it is not (destroy is idempotent: gone is
//! the goal); receive goes through `undo_on_error` like the other creating
//! calls.

mod torture_support;

use std::sync::Arc;

use torture_support::manager_workload as mw;
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};
use volmgr::state::Meta;
use volmgr::storage::sim::SimStorage;

async fn reopened_agreement(storage: &SimStorage, sim: &SimProvider) -> Vec<String> {
    let m = mw::open(
        Arc::new(storage.clone()),
        &mw::CountingProvider::new(sim.clone()),
    )
    .await
    .unwrap();
    let problems = mw::check_agreement(&m, sim, &mw::Model::default());
    m.close().await;
    problems
}

#[tokio::test]
async fn destroy_failing_after_the_volume_is_gone_is_done_not_a_lost_volume() {
    let storage = SimStorage::new();
    let sim = SimProvider::new();
    let m = mw::open(
        Arc::new(storage.clone()),
        &mw::CountingProvider::new(sim.clone()),
    )
    .await
    .unwrap();
    m.create_volume(mw::PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    sim.set_fault(Some(SimFault {
        call: SimCall::Destroy,
        when: When::After,
        nth: 1,
    }));
    m.destroy_volume("v").await.unwrap();
    assert!(m.volumes().is_empty());
    assert!(sim.volume_ids().is_empty());
    m.close().await;
    sim.set_fault(None);
    assert_eq!(
        reopened_agreement(&storage, &sim).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn receive_failing_after_the_snapshot_is_made_leaves_no_orphan() {
    let storage = SimStorage::new();
    let sim = SimProvider::new();
    let m = mw::open(
        Arc::new(storage.clone()),
        &mw::CountingProvider::new(sim.clone()),
    )
    .await
    .unwrap();
    let v = m
        .create_volume(mw::PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    let snap = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&snap.id, &[], &mut stream).await.unwrap();
    sim.set_fault(Some(SimFault {
        call: SimCall::Receive,
        when: When::After,
        nth: 1,
    }));
    m.receive_snapshot("v", &stream[..]).await.unwrap_err();
    let mut expected = vec!["v".to_owned(), snap.id.clone()];
    expected.sort();
    assert_eq!(sim.volume_ids(), expected, "the received snapshot is gone");
    m.close().await;
    sim.set_fault(None);
    assert_eq!(
        reopened_agreement(&storage, &sim).await,
        Vec::<String>::new()
    );
}
