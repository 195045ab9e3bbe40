//! Quick end-to-end checks of the journal API: append, reopen, replay, lock, poison.

mod journal_support;

use std::sync::Arc;

use journal_support::Rec;
use volmgr::journal::{Journal, JournalConfig, JournalError, LogEnd};
use volmgr::storage::RealStorage;
use volmgr::storage::fault::{FaultKind, FaultOp, FaultPlan, FaultyStorage};

fn small() -> JournalConfig {
    journal_support::config(4096)
}

#[tokio::test]
async fn appended_records_replay_in_order_across_rotations_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert!(recovery.records.is_empty());
    for n in 1..=300u64 {
        let seq = journal
            .append(&Rec::new(n, "x".repeat((n % 50) as usize)))
            .await
            .unwrap();
        assert_eq!(seq, n);
        if n % 100 == 0 {
            journal
                .checkpoint(n, n.to_le_bytes().to_vec())
                .await
                .unwrap();
        }
    }
    journal.close().await;
    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.end, LogEnd::Clean);
    let (ckpt_seq, payload) = recovery.checkpoint.clone().unwrap();
    assert_eq!(ckpt_seq, 300);
    assert_eq!(payload, 300u64.to_le_bytes().to_vec());
    assert!(recovery.records.is_empty());
    assert_eq!(
        journal.append(&Rec::new(301, String::new())).await.unwrap(),
        301
    );
    journal.close().await;
    let (_journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.records.len(), 1);
    assert_eq!(recovery.records[0].0, 301);
}

#[tokio::test]
async fn second_open_of_a_state_dir_fails_naming_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, _) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    let err = Journal::<Rec>::open(dir.path(), small()).unwrap_err();
    match &err {
        JournalError::Locked { lock_file, .. } => assert_eq!(lock_file, &dir.path().join("LOCK")),
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("LOCK"), "{err}");
}

#[tokio::test]
async fn failed_sync_poisons_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new(Arc::new(RealStorage));
    let (journal, _) =
        Journal::<Rec>::open_with_storage(Arc::new(storage.clone()), dir.path(), small()).unwrap();
    journal.append(&Rec::new(1, "a")).await.unwrap();
    storage.set_plan(Some(FaultPlan {
        op: FaultOp::SyncData,
        nth: 1,
        sticky: false,
        kind: FaultKind::Io,
    }));
    let err = journal.append(&Rec::new(2, "b")).await.unwrap_err();
    assert!(matches!(err, JournalError::Poisoned { .. }), "{err}");
    // The fault fired once; the journal must refuse on its own from now on.
    let err = journal.append(&Rec::new(3, "c")).await.unwrap_err();
    assert!(matches!(err, JournalError::Poisoned { .. }), "{err}");
    assert_eq!(storage.fired(), 1);
    assert_eq!(
        storage.calls(FaultOp::SyncData),
        1,
        "no sync attempted after poisoning"
    );
    journal.close().await;
    let (_j, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.records[0].1.n, 1);
}
