//! Regression: a power cut after the first open lost every acknowledged record.
//!
//! Story: `Journal::open` created the state directory and its `journal/` and
//! `checkpoints/` subdirectories with `create_dir_all` and never synced their
//! parents. Segments and checkpoints were written with the full protocol
//! (temp file, fsync, rename, fsync of *their* directory), but the entries
//! naming `journal/` and `checkpoints/` (and the state directory itself, when
//! open created it) were not durable. The power-cut sweep on `SimStorage`
//! found it at its very first crash points: after a cut, the whole `journal/`
//! directory was gone (acknowledged records lost), or `journal/` survived
//! without `checkpoints/`, so segments already deleted behind a checkpoint
//! left a hole and open refused with "missing segment". ext4 usually hides
//! this (its journal commits the mkdir with the next fsync), but POSIX does not
//! promise it and DESIGN.md's invariant 5 asks for the directory fsync.
//!
//! Fix: open creates missing directories and syncs the parent of every
//! directory on the path to the state directory, root first, then syncs the
//! state directory after creating its subdirectories (every time, not only
//! when it created them: see the kill-then-reopen regression).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalRecord};
use volmgr::storage::Storage;
use volmgr::storage::sim::{CutPolicy, DataLoss, DirLoss, SimStorage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec(u64);

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        0
    }
}

const LOSE_UNSYNCED: CutPolicy = CutPolicy {
    data: DataLoss::DropAll,
    dirs: DirLoss::ForgetAll,
};

fn small() -> JournalConfig {
    JournalConfig {
        segment_size: 4096,
        ..JournalConfig::default()
    }
}

async fn append_then_cut(storage: SimStorage, state_dir: &Path) -> SimStorage {
    let (journal, _) =
        Journal::<Rec>::open_with_storage(Arc::new(storage.clone()), state_dir, small()).unwrap();
    for n in 1..=3 {
        assert_eq!(journal.append(&Rec(n)).await.unwrap(), n);
    }
    journal.checkpoint(3, b"three".to_vec()).await.unwrap();
    storage.power_cut_with(0, LOSE_UNSYNCED)
}

fn replay(image: &SimStorage, state_dir: &Path) -> (Option<u64>, Vec<u64>) {
    let (_journal, recovery) =
        Journal::<Rec>::open_with_storage(Arc::new(image.clone()), state_dir, small())
            .expect("the image opens");
    (
        recovery.checkpoint.map(|(seq, _)| seq),
        recovery.records.iter().map(|(_, r)| r.0).collect(),
    )
}

#[tokio::test]
async fn directories_open_creates_survive_a_power_cut_with_their_acknowledged_records() {
    // Open creates the state directory and every missing ancestor.
    let state_dir = Path::new("/var/lib/volmgr/state");
    let image = append_then_cut(SimStorage::new(), state_dir).await;
    assert_eq!(replay(&image, state_dir), (Some(3), vec![]));

    // The state directory exists and is durable; open creates the rest.
    let storage = SimStorage::new();
    let state_dir = Path::new("/state");
    storage.create_dir_all(state_dir).unwrap();
    storage.sync_dir(Path::new("/")).unwrap();
    let image = append_then_cut(storage, state_dir).await;
    assert_eq!(replay(&image, state_dir), (Some(3), vec![]));
}
