//! Provider durability as a batched step (`Durability::Batched`): the path is
//! intent → side effect → one provider sync shared by the operations whose
//! effects completed before it → outcome. An outcome is journaled only after
//! the sync covering its side effect returned; a failed sync journals no
//! outcome and takes the provider out of service until a reopen, which syncs
//! the provider before deciding anything from what it shows. With
//! `ManagerConfig::write_cycle`, creates and destroys go through the
//! provider's write cycle (`manager/cycle.rs`): the operations queued during
//! a cycle share the next one's commit and round.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::sim::{Gate, SimCall, SimCut, SimFault, SimProvider, When};
use volmgr::provider::{Provider, ProviderConfig};
use volmgr::state::Meta;

#[path = "common/hooked_sim.rs"]
mod hooked_sim;
use hooked_sim::HookedSim;

/// A simulated provider with batched durability that reports each finished
/// create on `created` (its side effect done, its sync not yet).
fn signalling(sim: &SimProvider, created: mpsc::UnboundedSender<()>) -> HookedSim {
    HookedSim::new(sim.clone(), "sim", move |call, when| {
        if (call, when) == (SimCall::Create, When::After) {
            let _ = created.send(());
        }
    })
}

fn batched_sim() -> SimProvider {
    let sim = SimProvider::new();
    sim.set_batched(None);
    sim
}

fn config(provider: Arc<dyn Provider>) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert(
        "sim".into(),
        Arc::new(move |_: &ProviderConfig, _: &volmgr::provider::AgentId| Ok(provider.clone())),
    );
    config.default_provider = Some(Box::new(|| Ok(("sim".into(), ProviderConfig::new()))));
    config
}

fn sim_config(sim: &SimProvider) -> ManagerConfig {
    config(Arc::new(sim.clone()))
}

/// Whether a provider sync entered `gate` within a deadline. The deadline
/// only bounds a failure (a path that skips the sync fails the test instead
/// of hanging it); a passing run returns as soon as the sync enters.
async fn sync_entered(gate: &Arc<Gate>) -> bool {
    let gate = gate.clone();
    tokio::task::spawn_blocking(move || gate.wait_entered_for(Duration::from_secs(60)))
        .await
        .expect("the waiting thread does not panic")
}

/// Polls until `n` operations wait for a provider round (queued for a
/// write cycle or behind a running round). The deadline only bounds a
/// failure: the last ones may still be on their way.
async fn until_waiting(m: &Manager, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while m.stats().provider_sync_waiting < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} operations wait for a provider round",
            m.stats().provider_sync_waiting,
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_is_journaled_only_after_the_sync_covering_its_side_effect() {
    let dir = tempfile::tempdir().unwrap();
    let sim = batched_sim();
    let m = Manager::open(dir.path(), sim_config(&sim)).await.unwrap();
    let before = m.stats().durable_seq;
    let gate = sim.hold_next(SimCall::Sync);
    let create = tokio::spawn({
        let m = m.clone();
        async move { m.create_volume("default", Some("v"), Meta::new()).await }
    });
    // A path that never syncs fails here instead of hanging.
    assert!(
        sync_entered(&gate).await,
        "the create's effect reached a provider sync"
    );
    // The side effect happened; its sync is held: only the intent is durable.
    assert!(sim.volume_ids().contains(&"v".to_owned()));
    assert_eq!(m.stats().durable_seq, before + 1, "the intent, no outcome");
    assert!(m.volume("v").is_err(), "not applied, not acknowledged");
    gate.release();
    create.await.unwrap().expect("acknowledged after the sync");
    assert_eq!(m.stats().durable_seq, before + 2);
    assert_eq!(m.stats().provider_syncs, 1);
    // What was acknowledged survives a power cut that takes every unsynced change.
    let cut = sim.power_cut_copy(SimCut::DropUnsynced);
    assert!(cut.volume_ids().contains(&"v".to_owned()));
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_whose_effects_finish_during_a_sync_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let sim = batched_sim();
    let (created, mut finished) = mpsc::unbounded_channel();
    let provider = Arc::new(signalling(&sim, created));
    let m = Manager::open(dir.path(), config(provider)).await.unwrap();
    let acknowledged = m.stats().operations;
    let gate = sim.hold_next(SimCall::Sync);
    const N: usize = 16;
    let creates: Vec<_> = (0..N)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                m.create_volume("default", Some(&format!("v{i}")), Meta::new())
                    .await
            })
        })
        .collect();
    // Every side effect is done while the first sync is held.
    for _ in 0..N {
        finished.recv().await.unwrap();
    }
    assert!(sync_entered(&gate).await, "a provider sync started");
    // And every other operation waits behind it.
    until_waiting(&m, N - 1).await;
    assert_eq!(
        m.stats().operations,
        acknowledged,
        "nothing acknowledged before a sync"
    );
    gate.release();
    for c in creates {
        c.await.unwrap().expect("acknowledged");
    }
    // One held sync covered the first effect; the rest, all waiting behind
    // it, share the next one. One sync per create would be N.
    assert_eq!(
        m.stats().provider_syncs,
        2,
        "{N} creates shared two provider syncs"
    );
    let cut = sim.power_cut_copy(SimCut::DropUnsynced);
    assert_eq!(
        cut.volume_ids().len(),
        N,
        "every acknowledged create is durable"
    );
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_journals_no_outcome_and_a_reopen_reconciles_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let sim = batched_sim();
    let m = Manager::open(dir.path(), sim_config(&sim)).await.unwrap();
    let before = m.stats().durable_seq;
    sim.set_fault(Some(SimFault {
        call: SimCall::Sync,
        when: When::Before,
        nth: 1,
    }));
    let failed = m.create_volume("default", Some("v"), Meta::new()).await;
    assert!(
        matches!(failed, Err(ManagerError::ProviderUnavailable { .. })),
        "{failed:?}"
    );
    assert_eq!(m.stats().durable_seq, before + 1, "the intent only");
    assert!(m.state().pending.len() == 1, "the operation stays pending");
    let next = m.create_volume("default", Some("w"), Meta::new()).await;
    assert!(
        matches!(next, Err(ManagerError::ProviderUnavailable { .. })),
        "the provider is out of service until a reopen: {next:?}"
    );
    m.close().await;

    sim.set_fault(None);
    let m = Manager::open(dir.path(), sim_config(&sim)).await.unwrap();
    assert!(m.state().pending.is_empty());
    assert!(
        m.volume("v").is_ok(),
        "rolled forward: the provider shows it"
    );
    // The reopen made what it decided from durable before deciding.
    assert!(
        sim.power_cut_copy(SimCut::DropUnsynced)
            .volume_ids()
            .contains(&"v".to_owned())
    );
    m.create_volume("default", Some("w"), Meta::new())
        .await
        .expect("the provider serves again");
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_write_cycle_creates_queued_during_a_round_share_one_commit_and_one_round_after_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let sim = batched_sim();
    let config = ManagerConfig {
        write_cycle: true,
        ..sim_config(&sim)
    };
    let m = Manager::open(dir.path(), config).await.unwrap();
    let acknowledged = m.stats().operations;
    let (journal_commits, provider_rounds) = (m.stats().syncs, m.stats().provider_syncs);
    let gate = sim.hold_next(SimCall::Sync);
    const N: usize = 16;
    let create = |i: usize| {
        let m = m.clone();
        tokio::spawn(async move {
            m.create_volume("default", Some(&format!("v{i}")), Meta::new())
                .await
        })
    };
    // The first create's cycle holds its round; every other create is
    // queued behind it (a condition, polled with a deadline: the last ones
    // may still be on their way to the queue).
    let mut creates = vec![create(0)];
    assert!(sync_entered(&gate).await, "a provider round started");
    creates.extend((1..N).map(create));
    until_waiting(&m, N).await;
    assert_eq!(
        m.stats().operations,
        acknowledged,
        "nothing acknowledged before its round"
    );
    gate.release();
    for c in creates {
        c.await.unwrap().expect("acknowledged");
    }
    // Three commits: the first create's intent; its outcome with every
    // queued intent; their outcomes. Two rounds: the held one and one for
    // all the queued creates. Two commits and one round a create would be
    // 32 and 16.
    assert_eq!(
        m.stats().syncs - journal_commits,
        3,
        "{N} creates shared three journal commits"
    );
    assert_eq!(
        m.stats().provider_syncs - provider_rounds,
        2,
        "{N} creates shared two provider rounds"
    );
    let cut = sim.power_cut_copy(SimCut::DropUnsynced);
    assert_eq!(
        cut.volume_ids().len(),
        N,
        "every acknowledged create is durable"
    );
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_write_cycle_a_failed_round_answers_its_creates_unavailable_and_refuses_the_queued_ones_before_their_intent()
 {
    let dir = tempfile::tempdir().unwrap();
    let sim = batched_sim();
    let cycled = |sim: &SimProvider| ManagerConfig {
        write_cycle: true,
        ..sim_config(sim)
    };
    let m = Manager::open(dir.path(), cycled(&sim)).await.unwrap();
    let before = m.stats().durable_seq;
    let gate = sim.hold_next(SimCall::Sync);
    sim.set_fault(Some(SimFault {
        call: SimCall::Sync,
        when: When::After,
        nth: 1,
    }));
    const N: usize = 8;
    let create = |i: usize| {
        let m = m.clone();
        tokio::spawn(async move {
            m.create_volume("default", Some(&format!("v{i}")), Meta::new())
                .await
        })
    };
    // The first create's round is held (and will fail); the rest queue.
    let first = create(0);
    assert!(sync_entered(&gate).await, "a provider round started");
    let queued: Vec<_> = (1..N).map(create).collect();
    until_waiting(&m, N).await;
    gate.release();
    let failed = first.await.unwrap();
    assert!(
        matches!(failed, Err(ManagerError::ProviderUnavailable { .. })),
        "{failed:?}"
    );
    for q in queued {
        let refused = q.await.unwrap();
        assert!(
            matches!(refused, Err(ManagerError::ProviderUnavailable { .. })),
            "{refused:?}"
        );
    }
    // Only the first create's intent was journaled; it stays pending.
    assert_eq!(m.stats().durable_seq, before + 1, "one intent, no outcome");
    assert_eq!(m.state().pending.len(), 1);
    assert_eq!(sim.volume_ids(), vec!["v0".to_owned()], "one effect ran");
    m.close().await;

    sim.set_fault(None);
    let m = Manager::open(dir.path(), cycled(&sim)).await.unwrap();
    assert!(m.state().pending.is_empty());
    assert!(
        m.volume("v0").is_ok(),
        "rolled forward: the provider shows it"
    );
    m.close().await;
}
