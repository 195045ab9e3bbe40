//! Regression: after a kill -9, a reopen in the same boot built on entries and
//! bytes that were not durable, so a later power cut lost acknowledged records
//! or left the journal unopenable.
//!
//! Story: the kill-then-power-cut sweep kills the journal's process at each
//! sync point, reopens in the same boot (the page cache survives a kill),
//! appends, and only then cuts the power. Three windows showed up:
//! - a directory the killed process created (the state directory or one of
//!   its ancestors) existed, so open no longer synced its parent: the next
//!   power cut took the whole journal away;
//! - a segment rename (or a removal) the killed process had not synced yet:
//!   the reopened journal appended acknowledged records to a segment whose
//!   name was not durable;
//! - a batch the killed process wrote but never synced was replayed, and the
//!   new life's batch went after it with its own sync pending: two unsynced
//!   batches, and a cut that kept the later one and tore the earlier one made
//!   open refuse ("damage to durable data"); in the manager, reconciliation
//!   acted on the provider for an intent that was not durable (a volume
//!   destroyed for an intent the power cut then erased: state and provider
//!   disagreed).
//!
//! Fix: open syncs every directory on the path to the state directory and the
//! journal and checkpoint directories every time, and syncs the last segment
//! before replayed records are used or anything is appended after them.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalRecord};
use volmgr::storage::sim::SimStorage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec(u32, Vec<u8>);

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        0
    }
}

const STATE_DIR: &str = "/var/lib/volmgr/state";

fn open(storage: &SimStorage) -> Result<(Journal<Rec>, Vec<u32>), String> {
    let (journal, recovery) = Journal::<Rec>::open_with_storage(
        Arc::new(storage.clone()),
        Path::new(STATE_DIR),
        JournalConfig {
            segment_size: 4096,
            ..JournalConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((journal, recovery.records.iter().map(|(_, r)| r.0).collect()))
}

/// Appends `count` records numbered from `from`; stops at the first error.
async fn append(journal: &Journal<Rec>, from: u32, count: u32) -> Vec<u32> {
    let mut acked = Vec::new();
    for n in from..from + count {
        match journal
            .append(&Rec(n, vec![7; (n as usize * 31) % 200]))
            .await
        {
            Ok(_) => acked.push(n),
            Err(_) => break,
        }
    }
    acked
}

#[tokio::test]
async fn records_acknowledged_after_a_kill_and_same_boot_reopen_survive_a_power_cut() {
    for point in 1..=200u64 {
        let storage = SimStorage::new();
        storage.crash_at_sync(Some(point));
        if let Ok((journal, _)) = open(&storage) {
            append(&journal, 0, 40).await;
            journal.close().await;
        }
        let fired = storage.crashed();
        let same_boot = storage.restart();
        let (journal, replayed) = open(&same_boot).expect("reopen after a kill");
        let acked = append(&journal, 1000, 20).await;
        assert_eq!(acked.len(), 20);
        journal.close().await;
        let mut expected = replayed.clone();
        expected.extend(&acked);
        for seed in 0..16 {
            let image = same_boot.power_cut(seed);
            let (_journal, after) = open(&image)
                .unwrap_or_else(|e| panic!("kill at {point}, cut seed {seed}: open: {e}"));
            assert_eq!(after, expected, "kill at {point}, cut seed {seed}");
        }
        if !fired {
            return;
        }
    }
    panic!("the workload has more sync points than the test expects");
}
