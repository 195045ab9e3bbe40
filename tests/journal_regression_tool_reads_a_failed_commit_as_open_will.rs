//! Regression: `volmgr journal verify` counted the batch of a failed commit
//! as durable records, while the next open discards it.
//!
//! Story: the journal's device fails; a commit's write lands in the page
//! cache and its `fdatasync` fails. The journal is poisoned and leaves the
//! `FAILED-COMMIT` marker, and the next open zeroes that batch before it
//! reads (the batch was never acknowledged and may exist only in the page
//! cache). An operator inspecting the state directory meanwhile, as one
//! does before restarting a failed agent, ran `volmgr journal verify`: it
//! read the never-durable batch from the page cache and reported it as
//! records ("clean; 12 records", "opens at seq 12", the refused create's
//! intent as pending), though the open would stand at seq 11. The tool and
//! open disagreed on the same bytes (DESIGN.md invariant 12). Found by
//! `tests/journal_device_errors.rs` (the journal on a dm-flakey device).
//! Fix: the one reader reads the batch a valid marker names as zeros, as the
//! next open will have made it, and `verify` shows the marker in a `failed`
//! row.

use std::process::Command;
use std::sync::Arc;

use volmgr::journal::{FAILED_COMMIT_FILE, JOURNAL_DIR, reader};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::ProviderConfig;
use volmgr::provider::sim::SimProvider;
use volmgr::state::Meta;
use volmgr::storage::RealStorage;
use volmgr::storage::fault::{FaultKind, FaultOp, FaultPlan, FaultyStorage};

fn config(storage: &FaultyStorage, provider: &SimProvider) -> ManagerConfig {
    let mut config = ManagerConfig {
        storage: Some(Arc::new(storage.clone())),
        ..ManagerConfig::default()
    };
    config.factories.insert("sim".into(), provider.factory());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_tool_reads_a_failed_commits_batch_as_the_next_open_will() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let storage = FaultyStorage::new(Arc::new(RealStorage));
    let provider = SimProvider::new();
    let m = Manager::open(&state_dir, config(&storage, &provider))
        .await
        .expect("open");
    m.add_provider("p", "sim", ProviderConfig::new())
        .await
        .expect("add provider");
    m.create_volume("p", Some("kept"), Meta::new())
        .await
        .expect("create");
    let durable = m.stats().durable_seq;

    // The next fdatasync fails: the intent of `refused` is written (to the
    // page cache), never durable.
    storage.set_plan(Some(FaultPlan {
        op: FaultOp::SyncData,
        nth: 1,
        sticky: true,
        kind: FaultKind::Io,
    }));
    let r = m.create_volume("p", Some("refused"), Meta::new()).await;
    assert!(matches!(r, Err(ManagerError::Journal(_))), "refused: {r:?}");
    m.close().await;
    storage.set_plan(None);
    let marker = state_dir.join(JOURNAL_DIR).join(FAILED_COMMIT_FILE);
    assert!(marker.exists(), "the failed commit left its marker");

    // The reader (what every tool reads through) stops where open will.
    let walk = reader::walk(&RealStorage, &state_dir, |_, _, _, _, _| Ok(())).expect("walk");
    assert_eq!(
        walk.last_seq, durable,
        "the failed batch is not read as records"
    );

    // The tool says so.
    let out = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(["journal", "verify"])
        .arg(&state_dir)
        .output()
        .expect("run volmgr journal verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "verify exits 0:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("failed\t{FAILED_COMMIT_FILE}\tdiscard\t"))),
        "a row names the marker:\n{text}"
    );
    assert!(
        text.contains(&format!("opens at seq {durable}\n")),
        "verify says where open will stand (seq {durable}):\n{text}"
    );
    assert!(
        text.contains("0 pending"),
        "the refused create's intent is not shown pending:\n{text}"
    );

    // And open agrees.
    let m = Manager::open(&state_dir, config(&storage, &provider))
        .await
        .expect("reopen");
    assert_eq!(m.stats().durable_seq, durable);
    assert!(m.state().pending.is_empty());
    assert!(!marker.exists(), "the open discarded the batch");
    m.close().await;
}
