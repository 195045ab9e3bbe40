//! Regression: a provider found unavailable at open was still served.
//!
//! Story: `tests/dir_device_errors.rs` reopened the manager while the dir
//! provider's device still failed every write. The provider's sync before
//! its inventory failed, and the open reported it unavailable, as it
//! should. But a create on it then journaled an intent and ran its effect
//! on the failing file system: the open had recorded the reason without
//! taking the provider out of the set the verbs use. The create was only
//! refused because the dir provider's own failed `syncfs` fails it for good;
//! the next open had a pending create to reconcile that should never have
//! existed. A provider whose failure at open was transient (here: a
//! simulated sync that fails once, or an inventory that fails once) served
//! verbs and acknowledged them while the report called it unavailable.
//!
//! Property: a provider that open reports unavailable (its sync before the
//! inventory or its inventory failed) is out of service until the next
//! open: every verb on it is refused with `ProviderUnavailable` before its
//! intent is journaled, and the provider is never called.

use volmgr::journal::{Journal, JournalConfig};
use volmgr::manager::{Manager, ManagerError};
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};
use volmgr::state::{Meta, Record};

#[path = "common/sim_journal.rs"]
mod sim_journal;
use sim_journal::{config, provider_records};

/// Opens a manager over provider `p` whose `call` fails once (at open),
/// then checks that `p` is reported unavailable and stays out of service.
async fn unavailable_at_open_stays_out_of_service(call: SimCall) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    sim.set_batched(None);
    let (journal, _) = Journal::<Record>::open(dir.path(), JournalConfig::default()).unwrap();
    journal.append_all(&provider_records()).await.unwrap();
    journal.close().await;
    sim.set_fault(Some(SimFault {
        call,
        when: When::Before,
        nth: 1,
    }));
    let m = Manager::open(dir.path(), config(&sim)).await.unwrap();
    assert!(
        m.reconcile_report()
            .unavailable
            .iter()
            .any(|(p, _)| p == "p"),
        "{call:?} failed at open: p is reported unavailable"
    );
    let before = m.stats().durable_seq;
    let creates = sim.calls(SimCall::Create);
    let r = m.create_volume("p", Some("v"), Meta::new()).await;
    assert!(
        matches!(r, Err(ManagerError::ProviderUnavailable { .. })),
        "a create on a provider reported unavailable is refused: {r:?}"
    );
    assert_eq!(
        m.stats().durable_seq,
        before,
        "no intent journaled for a refused create"
    );
    assert_eq!(
        sim.calls(SimCall::Create),
        creates,
        "the unavailable provider is not called"
    );
    assert!(m.state().pending.is_empty());
    m.close().await;

    // The next open, with the provider healthy, serves it again.
    let m = Manager::open(dir.path(), config(&sim)).await.unwrap();
    assert!(m.reconcile_report().unavailable.is_empty());
    m.create_volume("p", Some("v"), Meta::new())
        .await
        .expect("served again after a reopen");
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_whose_sync_failed_at_open_is_refused_before_any_intent() {
    unavailable_at_open_stays_out_of_service(SimCall::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_whose_inventory_failed_at_open_is_refused_before_any_intent() {
    unavailable_at_open_stays_out_of_service(SimCall::Inventory).await;
}
