//! An operation runs in its caller's task (no hand-off to another task on
//! the way in or out), yet a caller that stops waiting mid-way must not
//! leave a durable intent without its outcome: the body then finishes on a
//! task of its own, and the state, the events and a reopen all show it done.

mod agent_support;

use std::time::Duration;

use agent_support::gate_provider;
use agent_support::hooked_sim::HookedSim;
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::provider::sim::SimProvider;
use volmgr::state::{Event, Meta};

fn gate_config(gate: &HookedSim) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert("gate".into(), gate.factory());
    config.default_provider = Some(Box::new(|| {
        Ok(("gate".into(), volmgr::provider::ProviderConfig::default()))
    }));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_caller_gives_up_mid_way_still_completes_and_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut held) = gate_provider(SimProvider::new());
    let m = Manager::open(dir.path(), gate_config(&gate)).await.unwrap();
    m.create_volume("default", Some("v"), Meta::new())
        .await
        .unwrap();
    let mut events = m.subscribe();

    // The caller waits until the snapshot is inside the provider, then
    // drops its future (what a hung-up client's handler does).
    {
        let snapshot = m.create_snapshot("v", Meta::new());
        tokio::select! {
            _ = snapshot => panic!("the snapshot finished while the provider held it"),
            entered = held.entered.recv() => entered.expect("the snapshot reached the provider"),
        }
    }
    held.release.send(()).unwrap();

    // Bounded so that a body dropped with its caller fails the test instead
    // of hanging it.
    let created = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(Event::Created(v)) = events.recv().await {
                break v;
            }
        }
    })
    .await
    .expect("the abandoned snapshot completed on its own");
    assert_eq!(created.parent.as_deref(), Some("v"));
    assert!(m.volume(&created.id).is_ok(), "applied to the state");
    assert!(
        m.state().pending.is_empty(),
        "no intent left without outcome"
    );

    m.close().await;
    let m = Manager::open(dir.path(), gate_config(&gate)).await.unwrap();
    assert!(m.volume(&created.id).is_ok(), "durable: replay shows it");
    assert!(
        m.reconcile_report().resolutions.is_empty(),
        "nothing for reconciliation to decide"
    );
    m.close().await;
}
