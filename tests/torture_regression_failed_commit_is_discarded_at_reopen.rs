//! Regression: after a failed fsync, reopening in the same boot and then
//! losing power made the journal refuse to open, hiding acknowledged records.
//!
//! Story: a commit writes its batch, then `fdatasync` fails. The journal is
//! poisoned and the manager reopens it, as designed (PostgreSQL's lesson:
//! never retry a failed fsync). But Linux, on a write-back error, takes the
//! failed pages off the dirty list while keeping them in the page cache: reads
//! still return the batch, and no later fsync will ever write it. The reopen
//! in the same boot replayed that never-acknowledged batch as if it were on
//! disk and appended new, acknowledged records after it. After a power cut the
//! batch's bytes were gone from the disk while the later records were not, so
//! the reader met a hole followed by valid frames of a later write and refused
//! to open ("damage to durable data"). The failpoint suite found it once
//! `SimStorage::fail_sync_at` modelled those write-back semantics.
//! Fix: a failed commit leaves a small `journal/FAILED-COMMIT` marker (not
//! synced: it only has to outlive the process) naming where the batch starts;
//! the next open zeroes that batch durably and removes the marker, so nothing
//! is built on it.
//! Since then opening also reads the last segment after dropping its cached
//! pages (`torture_regression_failed_commit_without_marker_is_read_from_disk`),
//! which discards the batch by itself where the advice holds; so this runs
//! both with drops and with them ignored (`SimStorage::
//! set_cache_drops_ignored`: a file system that ignores the advice, or a
//! page another process pins), where the marker's zeroing alone keeps the
//! batch out (without it: the reopen replays it, and after a cut the
//! journal refuses to open).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use volmgr::journal::{FAILED_COMMIT_FILE, Journal, JournalConfig, JournalRecord};
use volmgr::storage::sim::SimStorage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec(String);

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        0
    }
}

fn open(storage: &SimStorage) -> (Journal<Rec>, Vec<String>) {
    let (journal, recovery) = Journal::<Rec>::open_with_storage(
        Arc::new(storage.clone()),
        Path::new("/state"),
        JournalConfig {
            segment_size: 4096,
            ..JournalConfig::default()
        },
    )
    .expect("opens");
    let replayed = recovery.records.into_iter().map(|(_, r)| r.0).collect();
    (journal, replayed)
}

#[tokio::test]
async fn a_batch_whose_fsync_failed_is_not_replayed_by_a_reopen_in_the_same_boot() {
    for drops_ignored in [false, true] {
        failed_batch_reopened_in_the_same_boot(drops_ignored).await;
    }
}

async fn failed_batch_reopened_in_the_same_boot(drops_ignored: bool) {
    let storage = SimStorage::new();
    storage.set_cache_drops_ignored(drops_ignored);
    let (journal, _) = open(&storage);
    assert_eq!(journal.append(&Rec("a".into())).await.unwrap(), 1);
    storage.fail_sync_at(Some(storage.sync_points() + 1));
    journal.append(&Rec("b".into())).await.unwrap_err();
    assert!(journal.poisoned().is_some());
    journal.close().await;
    assert!(
        storage
            .read(&Path::new("/state/journal").join(FAILED_COMMIT_FILE))
            .is_some()
    );

    // Same boot: the page cache (and the failed batch in it) is still there.
    let same_boot = storage.restart();
    let (journal, replayed) = open(&same_boot);
    assert_eq!(
        replayed,
        ["a"],
        "the failed batch is discarded, not replayed (drops ignored: {drops_ignored})"
    );
    assert_eq!(journal.append(&Rec("c".into())).await.unwrap(), 2);
    journal.close().await;

    for seed in 0..16 {
        let (_journal, replayed) = open(&same_boot.power_cut(seed));
        assert_eq!(
            replayed,
            ["a", "c"],
            "seed {seed} (drops ignored: {drops_ignored})"
        );
    }
}
