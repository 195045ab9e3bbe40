//! Regression: once the journal was poisoned, an operation on the id of an
//! operation whose outcome commit had failed was refused as "busy", and the
//! poisoned journal's message did not say which file failed.
//!
//! Story: an operation's intent is durable and its provider side effect
//! done, then the journal's `fdatasync` of its outcome fails (the journal's
//! device fails writes). The journal is poisoned and the operation's volume
//! id stays claimed on purpose: its intent is pending until a reopen
//! reconciles it. Every later operation is refused, as it must be, but one
//! on that id was refused with "volume X is busy with another operation":
//! an operator retrying it is told to wait for an operation that will never
//! end, instead of being told the journal failed and must be reopened. And
//! the journal's message ("journal poisoned by an earlier write/sync
//! failure (fdatasync failed: Input/output error); reopen to recover") named
//! no file, so nothing pointed at the failing device. Found by
//! `tests/journal_device_errors.rs` (the journal on a dm-flakey device).
//! Fix: a manager whose journal is poisoned refuses every verb with the
//! journal's error before it claims anything, and the poison's cause names
//! the segment whose write or `fdatasync` failed.

use std::path::Path;
use std::sync::Arc;

use volmgr::journal::JournalError;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::ProviderConfig;
use volmgr::provider::sim::{SimCall, SimProvider};
use volmgr::state::Meta;
use volmgr::storage::sim::SimStorage;

const STATE: &str = "/state";

fn config(storage: &SimStorage, provider: &SimProvider) -> ManagerConfig {
    let mut config = ManagerConfig {
        storage: Some(Arc::new(storage.clone())),
        ..ManagerConfig::default()
    };
    config.factories.insert("sim".into(), provider.factory());
    config
}

/// A manager whose journal failed the `fdatasync` of the outcome of the
/// create of `held` (intent durable, side effect done, outcome not durable).
async fn outcome_commit_failed(held: &str) -> (Manager, SimStorage, SimProvider) {
    let storage = SimStorage::new();
    let provider = SimProvider::new();
    let m = Manager::open(STATE, config(&storage, &provider))
        .await
        .expect("open");
    m.add_provider("p", "sim", ProviderConfig::new())
        .await
        .expect("add provider");
    m.create_volume("p", Some("kept"), Meta::new())
        .await
        .expect("create while healthy");

    let gate = provider.hold_next(SimCall::Create);
    let task = {
        let (m, held) = (m.clone(), held.to_owned());
        tokio::spawn(async move { m.create_volume("p", Some(&held), Meta::new()).await })
    };
    let entered = gate.clone();
    tokio::task::spawn_blocking(move || entered.wait_entered())
        .await
        .expect("the create reached the provider");
    // The next sync point is the outcome's fdatasync.
    storage.fail_sync_at(Some(storage.sync_points() + 1));
    gate.release();
    let r = task.await.expect("no panic");
    assert!(
        matches!(r, Err(ManagerError::Journal(JournalError::Poisoned { .. }))),
        "the create whose outcome commit failed is refused by the journal: {r:?}"
    );
    assert_eq!(m.state().pending.len(), 1, "its intent stays pending");
    assert!(
        provider.volume_ids().contains(&held.to_owned()),
        "its side effect was done"
    );
    (m, storage, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_on_the_id_of_one_whose_outcome_commit_failed_is_refused_naming_the_journal() {
    let (m, _storage, _provider) = outcome_commit_failed("held").await;
    let seq = m.stats().durable_seq;
    let create = m.create_volume("p", Some("held"), Meta::new()).await;
    let destroy = m.destroy_volume("held").await;
    for (what, r) in [("create", create.map(drop)), ("destroy", destroy)] {
        match r {
            Err(ManagerError::Journal(JournalError::Poisoned { .. })) => {}
            other => panic!(
                "{what} of the held id is refused with the poisoned journal's error, not {other:?}"
            ),
        }
    }
    assert_eq!(m.stats().durable_seq, seq, "nothing journaled");
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poisoned_journal_error_names_the_segment_whose_fdatasync_failed() {
    let (m, _storage, _provider) = outcome_commit_failed("held").await;
    let e = m
        .create_volume("p", Some("later"), Meta::new())
        .await
        .expect_err("refused once poisoned");
    let text = e.to_string();
    let segment = Path::new(STATE).join("journal");
    assert!(
        text.starts_with("journal poisoned by an earlier write/sync failure (fdatasync of ")
            && text.contains(&*segment.to_string_lossy())
            && text.contains(".seg failed: ")
            && text.ends_with("; reopen to recover"),
        "names the journal, the segment, the failed call and the remedy: {text}"
    );
    m.close().await;
}
