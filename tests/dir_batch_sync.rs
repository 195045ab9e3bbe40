//! What one round of the directory provider's batched step writes.
//!
//! Story: a round used to be one `syncfs` of the provider's file system,
//! which writes back every dirty page on it, the tenants' too: with a
//! tenant writing flat out into its volume, each create waited about 0.9 s
//! for that tenant's data (`BENCH_TENANT=1 cargo bench --bench manager`).
//! A round now `fsync`s what the provider itself changed (`BatchSync::Fsync`),
//! unless little page cache is dirty on the machine, when one `syncfs` costs
//! one flush and writes back little (`BatchSync::Auto`, the default);
//! `batch_sync = "fsync"` or `"syncfs"` forces either.
//!
//! Properties: an `fsync` round makes the provider's change durable and
//! leaves a tenant's unsynced file to the kernel's own write-back (on the
//! simulated file system, a power cut that keeps nothing unsynced loses it;
//! with `syncfs` rounds the same cut keeps it: the check tells the two
//! apart); the configuration value is validated and journaled as given;
//! `auto` chooses `syncfs` exactly when the dirty page cache is known and
//! small; a provider's first round makes durable what an earlier instance
//! (a killed process) left unsynced, which it never noted (found on a real
//! failing device by `tests/dir_device_errors.rs`, where a reopen rolled
//! forward a create that never reached the disk), and so does the round
//! after a failed verb. Each of the last two fails when its whole `syncfs`
//! is removed (checked by mutation). A round's probe (a `rename` in
//! `.volmgr` after its syncs) moves its file each round, and a crash that
//! left it under either name, or none, disturbs neither the open, the
//! inventory nor the next round (fails without the probe's fallback to the
//! other name: checked by mutation).

use std::path::{Path, PathBuf};

use volmgr::model::VolumeId;
use volmgr::provider::dir::{BatchSync, CONFIG_BATCH_SYNC, CONFIG_ROOT, DirProvider};
use volmgr::provider::{
    Durability, Provider, ProviderConfig, ProviderError, VolumeRef, VolumeSpec,
};
use volmgr::state::{Details, VolumeKind};
use volmgr::storage::Storage;
use volmgr::storage::sim::{CutPolicy, DataLoss, DirLoss, SimStorage};

const ROOT: &str = "/p";

/// The batched provider on `storage` with rounds of `batch_sync`.
fn batched(storage: &SimStorage, batch_sync: BatchSync) -> DirProvider {
    DirProvider::simulated_with(
        PathBuf::from(ROOT),
        storage.clone(),
        Durability::Batched,
        batch_sync,
    )
    .expect("the provider opens")
}

/// `storage` after a power cut that keeps nothing unsynced.
fn keep_only_synced(storage: &SimStorage, seed: u64) -> SimStorage {
    storage.power_cut_with(
        seed,
        CutPolicy {
            data: DataLoss::DropAll,
            dirs: DirLoss::ForgetAll,
        },
    )
}

/// Creates data volume `id`; its location.
fn create(p: &DirProvider, id: &str) -> String {
    let spec = VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op: uuid::Uuid::now_v7(),
        kind: VolumeKind::Data,
    };
    p.create_volume(&spec).expect("create").location
}

/// Data volume `id` at `location`, as the manager names it to a verb.
fn volume_ref<'a>(id: &'a str, location: &'a str) -> VolumeRef<'a> {
    static NO_DETAILS: std::sync::LazyLock<Details> = std::sync::LazyLock::new(Details::new);
    VolumeRef {
        id: VolumeId::new(id).unwrap(),
        kind: VolumeKind::Data,
        parent: None,
        location,
        details: &NO_DETAILS,
    }
}

/// A tenant writes a file into volume `v` without syncing it; its path.
fn tenant_writes(storage: &SimStorage) -> PathBuf {
    let tenant = Path::new(ROOT).join("data/v/tenant.log");
    storage
        .create(&tenant)
        .and_then(|f| f.write_all_at(b"the tenant's bytes", 0))
        .expect("the tenant writes");
    tenant
}

/// Creates `v`, lets a tenant write a file into it without syncing, then
/// creates `w` and runs the batched step; returns the file system after a
/// power cut that keeps nothing unsynced.
fn tenant_write_then_round(batch_sync: BatchSync) -> SimStorage {
    let storage = SimStorage::new();
    let p = batched(&storage, batch_sync);
    create(&p, "v");
    p.sync().expect("round");
    tenant_writes(&storage);
    create(&p, "w");
    p.sync().expect("round");
    keep_only_synced(&storage, 1)
}

#[test]
fn an_fsync_round_makes_the_providers_change_durable_and_leaves_tenant_data_alone() {
    let image = tenant_write_then_round(BatchSync::Fsync);
    assert_eq!(image.is_dir(&Path::new(ROOT).join("data/w")), Some(true));
    let p = DirProvider::simulated(PathBuf::from(ROOT), image.clone(), Durability::Batched)
        .expect("reopens");
    let found: Vec<String> = p
        .inventory()
        .unwrap()
        .into_iter()
        .filter_map(|f| f.tag.map(|t| t.volume))
        .collect();
    assert_eq!(found, ["v", "w"], "both volumes are whole after the cut");
    assert_eq!(
        image.is_dir(&Path::new(ROOT).join("data/v/tenant.log")),
        None,
        "the round wrote the tenant's unsynced file"
    );
}

#[test]
fn a_syncfs_round_writes_back_tenant_data_too() {
    let image = tenant_write_then_round(BatchSync::Syncfs);
    assert_eq!(image.is_dir(&Path::new(ROOT).join("data/w")), Some(true));
    assert_eq!(
        image.is_dir(&Path::new(ROOT).join("data/v/tenant.log")),
        Some(false),
        "a syncfs round makes everything on the file system durable"
    );
}

fn config(root: &Path, batch_sync: Option<&str>) -> ProviderConfig {
    let mut c = ProviderConfig::from([(CONFIG_ROOT.to_owned(), root.display().to_string())]);
    if let Some(v) = batch_sync {
        c.insert(CONFIG_BATCH_SYNC.to_owned(), v.to_owned());
    }
    c
}

#[test]
fn the_batch_sync_setting_is_validated_and_kept_in_the_providers_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("volumes");

    for set in ["syncfs", "fsync"] {
        let p = DirProvider::from_config(&config(&root, Some(set))).expect("accepted");
        assert_eq!(p.config(), config(&root, Some(set)));
    }
    for default in [None, Some("auto")] {
        let p = DirProvider::from_config(&config(&root, default)).expect("auto accepted");
        assert_eq!(
            p.config(),
            config(&root, None),
            "the default is not spelled out"
        );
    }
    for bad in ["", "FSYNC", "--help", "fsync ", "sync", "Auto"] {
        match DirProvider::from_config(&config(&root, Some(bad))) {
            Err(ProviderError::InvalidConfig(why)) => {
                assert!(why.contains(CONFIG_BATCH_SYNC), "{bad:?}: {why}");
            }
            other => panic!("batch_sync {bad:?} accepted: {other:?}"),
        }
    }
}

#[test]
fn auto_rounds_run_syncfs_only_while_little_page_cache_is_dirty() {
    let max = BatchSync::AUTO_SYNCFS_MAX_DIRTY;
    assert_eq!(BatchSync::default(), BatchSync::Auto);
    for (dirty, syncfs) in [
        (Some(0), true),
        (Some(max), true),
        (Some(max + 1), false),
        (Some(u64::MAX), false),
        (None, false),
    ] {
        assert_eq!(BatchSync::Auto.syncfs_with(dirty), syncfs, "{dirty:?}");
        assert!(BatchSync::Syncfs.syncfs_with(dirty));
        assert!(!BatchSync::Fsync.syncfs_with(dirty));
    }
}

/// A provider opened after a kill -9 sees, in the page cache, what the
/// killed one left unsynced (here a whole create), and the manager rolls it
/// forward from that inventory: the new provider's first round must make
/// it durable although this provider noted none of it (a whole `syncfs`).
#[test]
fn the_first_round_after_a_restart_makes_what_an_earlier_instance_left_durable() {
    for batch_sync in [BatchSync::Auto, BatchSync::Fsync, BatchSync::Syncfs] {
        let storage = SimStorage::new();
        let p = batched(&storage, batch_sync);
        create(&p, "v");
        drop(p);
        // kill -9: the process is gone, the page cache is not.
        let after_kill = storage.restart();
        let p = batched(&after_kill, batch_sync);
        p.sync().expect("the first round");
        let image = keep_only_synced(&after_kill, 2);
        let p = DirProvider::simulated(PathBuf::from(ROOT), image, Durability::Batched)
            .expect("reopens after the cut");
        let found: Vec<String> = p
            .inventory()
            .unwrap()
            .into_iter()
            .filter_map(|f| f.tag.map(|t| t.volume))
            .collect();
        assert_eq!(
            found,
            ["v"],
            "{batch_sync:?}: the create seen after the restart was lost"
        );
    }
}

/// A verb that failed may have stopped half way (on an I/O error, say)
/// after changes it never noted: the next round is a whole `syncfs` (here
/// seen by the tenant's unsynced file, which only a `syncfs` keeps). The
/// failure is a full file system: the create's first write fails.
#[test]
fn the_round_after_a_verb_failed_on_a_write_writes_back_the_whole_file_system() {
    let storage = SimStorage::new();
    let p = batched(&storage, BatchSync::Fsync);
    create(&p, "v");
    p.sync().expect("round");
    let tenant = tenant_writes(&storage);
    storage.set_capacity(Some(storage.used_bytes()));
    let failed = p.create_volume(&VolumeSpec {
        id: VolumeId::new("w").unwrap(),
        op: uuid::Uuid::now_v7(),
        kind: VolumeKind::Data,
    });
    assert!(
        matches!(
            failed,
            Err(ProviderError::NoSpace { .. } | ProviderError::Io { .. })
        ),
        "the create must fail on its write: {failed:?}"
    );
    storage.set_capacity(None);
    p.sync().expect("round");
    let image = keep_only_synced(&storage, 3);
    assert_eq!(
        image.is_dir(&tenant),
        Some(false),
        "the round after a failed write was not a whole syncfs"
    );
}

/// A refusal is decided by checks, not by a failed write: the round after
/// it stays an `fsync` round. Otherwise a tenant who can make a verb fail
/// (here a tree in its volume deeper than the provider copies, which makes
/// every snapshot of it fail) would buy one whole-file-system write-back,
/// its own data included, per attempt.
#[test]
fn a_refused_verb_leaves_the_next_round_an_fsync_round() {
    let storage = SimStorage::new();
    let p = batched(&storage, BatchSync::Fsync);
    let v = create(&p, "v");
    p.sync().expect("round");
    let mut deep = PathBuf::from(&v);
    for _ in 0..=volmgr::provider::dir::MAX_DEPTH {
        deep.push("d");
        storage
            .create_dir(&deep)
            .expect("the tenant nests directories");
    }
    let tenant = tenant_writes(&storage);
    let refusals = [
        p.create_volume(&VolumeSpec {
            id: VolumeId::new("s").unwrap(),
            op: uuid::Uuid::now_v7(),
            kind: VolumeKind::Snapshot,
        })
        .map(drop),
        p.create_snapshot(
            &volume_ref("v", &v),
            &VolumeSpec {
                id: VolumeId::new("s").unwrap(),
                op: uuid::Uuid::now_v7(),
                kind: VolumeKind::Snapshot,
            },
        )
        .map(drop),
    ];
    for r in &refusals {
        assert!(r.is_err(), "refused: {r:?}");
    }
    assert!(
        refusals[1]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("directories deep")),
        "the snapshot is refused for the depth: {:?}",
        refusals[1]
    );
    p.sync().expect("round");
    let image = keep_only_synced(&storage, 3);
    assert_eq!(
        image.is_dir(&tenant),
        None,
        "a refusal made the next round write back the tenant's data"
    );
}

/// A round ends with a probe, a change made after its syncs in the
/// provider's own `.volmgr` (a `rename` of the empty file `.round-probe.a`
/// to `.round-probe.b` or back: an ext4 whose journal aborted answers the
/// syncs with success and refuses only new changes,
/// `tests/dir_device_errors.rs`, "Aborted journal"). Each round moves the
/// file to its other name; one a crash left under either name, or lost,
/// neither stops a provider from opening nor shows in its inventory, and
/// its next round renames or creates it.
#[test]
fn the_round_probe_moves_each_round_and_survives_a_crash_under_either_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let names = [".round-probe.a", ".round-probe.b"];
    let at = |root: &Path| -> Vec<&str> {
        names
            .into_iter()
            .filter(|n| {
                std::fs::symlink_metadata(root.join(".volmgr").join(n)).is_ok_and(|m| m.is_file())
            })
            .collect()
    };
    let p = DirProvider::with_batch_sync(root.clone(), BatchSync::Fsync).expect("opens");
    create(&p, "v");
    let mut seen = Vec::new();
    for _ in 0..3 {
        p.sync().expect("a round");
        let now = at(&root);
        assert_eq!(now.len(), 1, "the probe file under one name: {now:?}");
        seen.push(now[0]);
    }
    assert_eq!(
        seen,
        [
            seen[0],
            names.into_iter().find(|n| *n != seen[0]).unwrap(),
            seen[0]
        ],
        "each round renames the probe to its other name"
    );
    drop(p);
    // A crash may leave it under either name (the renames are never
    // synced), or none (a root whose rounds never ran the probe).
    for (what, keep) in [
        ("under its first name", Some(names[0])),
        ("under its second name", Some(names[1])),
        ("missing", None),
    ] {
        for n in names {
            let _ = std::fs::remove_file(root.join(".volmgr").join(n));
        }
        if let Some(n) = keep {
            std::fs::write(root.join(".volmgr").join(n), b"").unwrap();
        }
        let p = DirProvider::with_batch_sync(root.clone(), BatchSync::Fsync)
            .unwrap_or_else(|e| panic!("opens with the probe {what}: {e}"));
        // The open's own round (a `syncfs` before its sweeps) moved it.
        let opened = at(&root);
        assert_eq!(
            opened.len(),
            1,
            "with the probe {what}, the open leaves it under one name: {opened:?}"
        );
        let found: Vec<(String, bool)> = p
            .inventory()
            .expect("inventory")
            .into_iter()
            .map(|f| (f.name, f.tag.is_some()))
            .collect();
        assert_eq!(
            found,
            [(root.join("data/v").display().to_string(), true)],
            "with the probe {what}, the inventory holds the volume only"
        );
        p.sync()
            .unwrap_or_else(|e| panic!("a round with the probe {what}: {e}"));
        let now = at(&root);
        assert_eq!(
            now.len(),
            1,
            "with the probe {what}, a round leaves it under one name: {now:?}"
        );
        assert_ne!(
            now[0], opened[0],
            "the round renamed the probe the open left ({what})"
        );
    }
}
