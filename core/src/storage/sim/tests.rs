//! The simulation's own contract: what survives a power cut (synced bytes
//! and names), what does not (unsynced creates, renames, removals, sectors),
//! crash and failure points, restarts, capacity and locks.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::{CutPolicy, DataLoss, DirLoss, PAGE_LEN, SECTOR_LEN, SecondFault, SimStorage};
use crate::storage::{Storage, StorageFile};

fn write_file(s: &SimStorage, path: &str, bytes: &[u8]) -> Box<dyn StorageFile> {
    let f = s.create(Path::new(path)).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f
}

#[test]
fn synced_bytes_and_synced_names_survive_a_power_cut() {
    let s = SimStorage::new();
    s.create_dir_all(Path::new("/d")).unwrap();
    s.sync_dir(Path::new("/")).unwrap();
    let f = write_file(&s, "/d/a", &[7u8; 1500]);
    f.sync_data().unwrap();
    s.sync_dir(Path::new("/d")).unwrap();
    for seed in 0..20 {
        let after = s.power_cut(seed);
        assert_eq!(after.read(Path::new("/d/a")).unwrap(), vec![7u8; 1500]);
    }
}

#[test]
fn unsynced_create_vanishes_and_unsynced_directory_takes_its_files_along() {
    let s = SimStorage::new();
    s.create_dir_all(Path::new("/d")).unwrap();
    let f = write_file(&s, "/d/a", b"x");
    f.sync_all().unwrap();
    s.sync_dir(Path::new("/d")).unwrap();
    // "/d" itself was never made durable in "/".
    let after = s.power_cut(1);
    assert!(after.paths().is_empty(), "{:?}", after.paths());
}

#[test]
fn unsynced_rename_reverts_and_unsynced_remove_reappears() {
    let s = SimStorage::new();
    let a = write_file(&s, "/a", b"old");
    a.sync_all().unwrap();
    let b = write_file(&s, "/b", b"gone");
    b.sync_all().unwrap();
    s.sync_dir(Path::new("/")).unwrap();
    s.rename(Path::new("/a"), Path::new("/c")).unwrap();
    s.remove_file(Path::new("/b")).unwrap();
    assert_eq!(s.paths(), vec![PathBuf::from("/c")]);
    let after = s.power_cut(3);
    assert_eq!(after.read(Path::new("/a")).unwrap(), b"old");
    assert_eq!(after.read(Path::new("/b")).unwrap(), b"gone");
    assert!(after.read(Path::new("/c")).is_none());
    let kept = s.power_cut_with(
        3,
        CutPolicy {
            data: DataLoss::DropAll,
            dirs: DirLoss::KeepAll,
        },
    );
    assert_eq!(kept.paths(), vec![PathBuf::from("/c")]);
}

#[test]
fn unsynced_sectors_are_dropped_kept_or_garbled_independently() {
    let s = SimStorage::new();
    let f = write_file(&s, "/f", &[0u8; 2048]);
    f.sync_all().unwrap();
    s.sync_dir(Path::new("/")).unwrap();
    f.write_all_at(&[1u8; 2048], 0).unwrap();
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let bytes = s.power_cut(seed).read(Path::new("/f")).unwrap();
        for sector in bytes.chunks(usize::try_from(SECTOR_LEN).unwrap()) {
            seen.insert(if sector.iter().all(|&b| b == 0) {
                "dropped"
            } else if sector.iter().all(|&b| b == 1) {
                "kept"
            } else {
                "garbled"
            });
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // Same state, same seed: same image.
    assert_eq!(
        s.power_cut(9).read(Path::new("/f")),
        s.power_cut(9).read(Path::new("/f"))
    );
}

#[test]
fn crash_point_fails_that_sync_and_freezes_everything_after() {
    let s = SimStorage::new();
    s.crash_at_sync(Some(2));
    let f = write_file(&s, "/f", b"one");
    f.sync_data().unwrap();
    f.write_all_at(b"two", 3).unwrap();
    assert!(f.sync_data().is_err());
    assert!(s.crashed());
    assert!(f.write_all_at(b"x", 0).is_err());
    assert!(s.create(Path::new("/g")).is_err());
    assert_eq!(s.sync_points(), 2);
    // The name of "/f" was never synced: it is gone after the cut.
    assert!(s.power_cut(0).paths().is_empty());
}

#[test]
fn a_failed_sync_drops_its_changes_for_good_like_linux_write_back_errors() {
    let s = SimStorage::new();
    let f = write_file(&s, "/f", &[0u8; 1024]);
    f.sync_all().unwrap();
    s.sync_dir(Path::new("/")).unwrap();
    s.fail_sync_at(Some(3));
    f.write_all_at(&[1u8; 512], 0).unwrap();
    assert!(f.sync_data().is_err());
    assert!(!s.crashed(), "the storage goes on");
    f.write_all_at(&[2u8; 512], 512).unwrap();
    f.sync_data().unwrap();
    let mut seen = vec![0u8; 1024];
    f.read_exact_at(&mut seen, 0).unwrap();
    assert_eq!(
        &seen[..512],
        &[1u8; 512],
        "reads still see the dropped write"
    );
    let after = s.power_cut(5).read(Path::new("/f")).unwrap();
    assert_eq!(&after[..512], &[0u8; 512], "a later sync did not save it");
    assert_eq!(&after[512..], &[2u8; 512]);
}

#[test]
fn a_second_fault_crash_strikes_at_the_nth_mutating_call_after_the_failed_sync() {
    let s = SimStorage::new();
    s.second_fault(Some(SecondFault::CrashAt(2)));
    // Before the failed sync nothing counts.
    let f = write_file(&s, "/f", b"one");
    f.sync_all().unwrap();
    s.sync_dir(Path::new("/")).unwrap();
    write_file(&s, "/g", b"g");
    s.fail_sync_at(Some(s.sync_points() + 1));
    assert!(f.sync_data().is_err(), "the armed sync fails");
    assert!(!s.crashed(), "a failed sync freezes nothing");
    // Call 1 after it goes through; call 2 (a rename) is where the power
    // goes out: refused, and everything after it too.
    f.write_all_at(b"two", 0).unwrap();
    let renamed = s.rename(Path::new("/g"), Path::new("/h"));
    assert!(renamed.is_err());
    assert!(s.crashed());
    assert!(s.create(Path::new("/i")).is_err());
    assert!(s.sync_dir(Path::new("/")).is_err());
    let names: Vec<PathBuf> = s.paths();
    assert_eq!(names, vec![PathBuf::from("/f"), PathBuf::from("/g")]);
    // Cleared by a restart: the next boot's calls run.
    let after = s.restart();
    after.rename(Path::new("/g"), Path::new("/h")).unwrap();
    assert!(!after.crashed());
}

#[test]
fn a_second_fault_fails_the_nth_move_after_the_failed_sync_and_changes_nothing() {
    let s = SimStorage::new();
    for dir in ["/x", "/y", "/x/a", "/y/b"] {
        s.create_dir(Path::new(dir)).unwrap();
    }
    s.second_fault(Some(SecondFault::FailMove(2)));
    // A move before the failed sync does not count.
    s.rename(Path::new("/x/a"), Path::new("/x/c")).unwrap();
    s.syncfs().unwrap();
    s.fail_sync_at(Some(s.sync_points() + 1));
    assert!(s.sync_dir(Path::new("/x")).is_err());
    // Move 1 goes through; move 2 (an exchange) fails and changes nothing.
    s.rename(Path::new("/x/c"), Path::new("/x/a")).unwrap();
    s.syncfs().unwrap();
    let before = s.paths();
    let (x, y) = (Path::new("/x/a"), Path::new("/y/b"));
    let err = s.exchange(x, y).unwrap_err();
    assert!(err.to_string().contains("EIO"), "{err}");
    assert_eq!(s.paths(), before);
    assert_eq!(s.failed_move(), Some((x.to_path_buf(), y.to_path_buf())));
    assert!(!s.crashed(), "the process goes on");
    // One-shot: the same exchange then succeeds, and so does a rename.
    s.exchange(x, y).unwrap();
    s.rename(Path::new("/y/b"), Path::new("/y/e")).unwrap();
    // A failing rename, armed again: the name stays where it was.
    let t = SimStorage::new();
    write_file(&t, "/f", b"f");
    t.second_fault(Some(SecondFault::FailMove(1)));
    t.fail_sync_at(Some(1));
    assert!(t.sync_dir(Path::new("/")).is_err());
    assert!(t.rename(Path::new("/f"), Path::new("/g")).is_err());
    assert_eq!(t.paths(), vec![PathBuf::from("/f")]);
    // Cleared by a restart (and by a power cut).
    let after = t.restart();
    assert_eq!(after.failed_move(), None);
    after.rename(Path::new("/f"), Path::new("/g")).unwrap();
}

#[test]
fn a_restart_keeps_what_is_not_durable_until_a_power_cut() {
    let s = SimStorage::new();
    let f = write_file(&s, "/f", b"unsynced");
    let _guard = s.lock_exclusive(Path::new("/LOCK"), "pid 1").unwrap();
    let after = s.restart();
    assert!(s.crashed(), "the dead process's storage is frozen");
    assert!(f.write_all_at(b"x", 0).is_err());
    assert_eq!(after.read(Path::new("/f")).unwrap(), b"unsynced");
    drop(after.lock_exclusive(Path::new("/LOCK"), "pid 2").unwrap());
    let cut = after.power_cut_with(
        0,
        CutPolicy {
            data: DataLoss::DropAll,
            dirs: DirLoss::ForgetAll,
        },
    );
    assert!(cut.read(Path::new("/f")).is_none());
}

#[test]
fn capacity_turns_growth_into_enospc() {
    let s = SimStorage::new();
    s.set_capacity(Some(1000));
    let f = s.create(Path::new("/f")).unwrap();
    f.write_all_at(&[1u8; 900], 0).unwrap();
    let err = f.allocate(2000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    f.write_all_at(&[2u8; 100], 0).unwrap();
    assert_eq!(s.used_bytes(), 900);
    s.remove_file(Path::new("/f")).unwrap();
    assert_eq!(s.used_bytes(), 0);
}

#[test]
fn lock_is_exclusive_until_dropped_and_released_by_a_power_cut() {
    let s = SimStorage::new();
    let guard = s.lock_exclusive(Path::new("/LOCK"), "pid 1").unwrap();
    let err = s.lock_exclusive(Path::new("/LOCK"), "pid 2").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(err.to_string(), "pid 1");
    drop(guard);
    let guard = s.lock_exclusive(Path::new("/LOCK"), "pid 3").unwrap();
    let after = s.power_cut(0);
    let held = after.lock_exclusive(Path::new("/LOCK"), "pid 4").unwrap();
    drop(guard);
    let err = after
        .lock_exclusive(Path::new("/LOCK"), "pid 5")
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(held);
}

/// `/a/x` (an empty directory, durable) renamed to `/b/x` after `/b/before`
/// was made, neither synced.
fn renamed_across_directories() -> SimStorage {
    let s = SimStorage::new();
    for dir in ["/a", "/b", "/a/x"] {
        s.create_dir(Path::new(dir)).unwrap();
    }
    s.syncfs().unwrap();
    s.create_dir(Path::new("/b/before")).unwrap();
    s.rename(Path::new("/a/x"), Path::new("/b/x")).unwrap();
    s
}

fn names_of_x(image: &SimStorage) -> Vec<PathBuf> {
    image
        .paths()
        .into_iter()
        .filter(|p| p.ends_with("x"))
        .collect()
}

#[test]
fn a_rename_across_directories_survives_a_cut_whole_under_one_name() {
    // Not durable yet, whatever a cut keeps of the directories' queues: under
    // one name, never both nor neither.
    for seed in 0..32 {
        for dirs in [DirLoss::ForgetAll, DirLoss::KeepAll, DirLoss::RandomPrefix] {
            let policy = CutPolicy {
                data: DataLoss::Random,
                dirs,
            };
            let found = names_of_x(&renamed_across_directories().power_cut_with(seed, policy));
            assert_eq!(found.len(), 1, "{dirs:?}, seed {seed}: {found:?}");
        }
    }
    // A sync of either directory makes it durable, with what the
    // destination's directory had queued before it, not after.
    for synced in ["/a", "/b"] {
        let s = renamed_across_directories();
        s.create_dir(Path::new("/b/after")).unwrap();
        s.sync_dir(Path::new(synced)).unwrap();
        let image = s.power_cut(1);
        assert_eq!(names_of_x(&image), vec![PathBuf::from("/b/x")], "{synced}");
        assert!(image.is_dir(Path::new("/b/before")).is_some(), "{synced}");
        assert_eq!(
            image.is_dir(Path::new("/b/after")).is_some(),
            synced == "/b",
            "{synced}"
        );
    }
}

/// `/a/t` holding `f` and `d/g` (all durable) renamed to `/b/t`, not synced;
/// then `/b/t/d/h` created, not synced.
fn tree_moved() -> SimStorage {
    let s = SimStorage::new();
    for dir in ["/a", "/b", "/a/t", "/a/t/d"] {
        s.create_dir(Path::new(dir)).unwrap();
    }
    write_file(&s, "/a/t/f", b"f").sync_all().unwrap();
    write_file(&s, "/a/t/d/g", b"g").sync_all().unwrap();
    s.syncfs().unwrap();
    s.rename(Path::new("/a/t"), Path::new("/b/t")).unwrap();
    write_file(&s, "/b/t/d/h", b"h").sync_all().unwrap();
    s
}

fn tree_of(image: &SimStorage) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    image
        .paths()
        .into_iter()
        .filter(|p| p.components().count() > 2)
        .map(|p| {
            let bytes = image.read(&p);
            (p, bytes)
        })
        .collect()
}

fn tree_at(root: &str, extra: bool) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut t = vec![
        (PathBuf::from(root), None),
        (Path::new(root).join("d"), None),
        (Path::new(root).join("d/g"), Some(b"g".to_vec())),
    ];
    if extra {
        t.push((Path::new(root).join("d/h"), Some(b"h".to_vec())));
    }
    t.push((Path::new(root).join("f"), Some(b"f".to_vec())));
    t
}

#[test]
fn a_directory_with_entries_moves_with_its_tree_atomically() {
    let s = tree_moved();
    assert_eq!(tree_of(&s), tree_at("/b/t", true), "reads see the move");
    // Not durable: a cut keeps the tree whole under one name (the entry
    // made after the move is lost with it, or kept if its queue is).
    for seed in 0..32 {
        for dirs in [DirLoss::ForgetAll, DirLoss::KeepAll, DirLoss::RandomPrefix] {
            let policy = CutPolicy {
                data: DataLoss::Random,
                dirs,
            };
            let found = tree_of(&tree_moved().power_cut_with(seed, policy));
            assert!(
                found == tree_at("/a/t", false)
                    || found == tree_at("/b/t", false)
                    || found == tree_at("/b/t", true),
                "{dirs:?}, seed {seed}: {found:?}"
            );
        }
    }
    let forgotten = CutPolicy {
        data: DataLoss::KeepAll,
        dirs: DirLoss::ForgetAll,
    };
    assert_eq!(
        tree_of(&tree_moved().power_cut_with(0, forgotten)),
        tree_at("/a/t", false)
    );
    // Syncing the destination makes the move durable, not what followed
    // inside the tree; syncing a directory inside the tree makes the move
    // durable first.
    let s = tree_moved();
    s.sync_dir(Path::new("/b")).unwrap();
    assert_eq!(
        tree_of(&s.power_cut_with(0, forgotten)),
        tree_at("/b/t", false)
    );
    let s = tree_moved();
    s.sync_dir(Path::new("/b/t/d")).unwrap();
    assert_eq!(
        tree_of(&s.power_cut_with(0, forgotten)),
        tree_at("/b/t", true)
    );
    // Nor into itself.
    let s = tree_moved();
    let err = s
        .rename(Path::new("/b/t"), Path::new("/b/t/d/x"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

/// `/x/a` holding `f` and `/y/b` holding `d/g`, all durable, exchanged
/// (the directory provider's receive swap), not synced.
fn trees_exchanged() -> SimStorage {
    let s = SimStorage::new();
    for dir in ["/x", "/y", "/x/a", "/y/b", "/y/b/d"] {
        s.create_dir(Path::new(dir)).unwrap();
    }
    write_file(&s, "/x/a/f", b"f");
    write_file(&s, "/y/b/d/g", b"g");
    s.syncfs().unwrap();
    s.exchange(Path::new("/x/a"), Path::new("/y/b")).unwrap();
    s
}

/// The tree holding `f` at `f_at` and the one holding `d/g` at `g_at`.
fn exchanged_at(f_at: &str, g_at: &str) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut t = vec![
        (PathBuf::from(f_at), None),
        (Path::new(f_at).join("f"), Some(b"f".to_vec())),
        (PathBuf::from(g_at), None),
        (Path::new(g_at).join("d"), None),
        (Path::new(g_at).join("d/g"), Some(b"g".to_vec())),
    ];
    t.sort();
    t
}

#[test]
fn an_exchange_of_two_directories_survives_a_cut_whole_and_keeps_their_identities() {
    let before = SimStorage::new();
    for dir in ["/x", "/y", "/x/a", "/y/b"] {
        before.create_dir(Path::new(dir)).unwrap();
    }
    let (ia, ib) = (
        before.identity(Path::new("/x/a")).unwrap(),
        before.identity(Path::new("/y/b")).unwrap(),
    );
    assert!(ia.0 && ib.0 && ia.1 != ib.1, "{ia:?} {ib:?}");
    before.syncfs().unwrap();
    before
        .exchange(Path::new("/x/a"), Path::new("/y/b"))
        .unwrap();
    assert_eq!(before.identity(Path::new("/x/a")), Some(ib));
    assert_eq!(before.identity(Path::new("/y/b")), Some(ia));

    let swapped = exchanged_at("/y/b", "/x/a");
    let unswapped = exchanged_at("/x/a", "/y/b");
    assert_eq!(
        tree_of(&trees_exchanged()),
        swapped,
        "reads see the exchange"
    );
    // Not durable: both names keep their trees or both swap, never a mix.
    for seed in 0..32 {
        for dirs in [DirLoss::ForgetAll, DirLoss::KeepAll, DirLoss::RandomPrefix] {
            let policy = CutPolicy {
                data: DataLoss::Random,
                dirs,
            };
            let found = tree_of(&trees_exchanged().power_cut_with(seed, policy));
            assert!(
                found == swapped || found == unswapped,
                "{dirs:?}, seed {seed}: {found:?}"
            );
        }
    }
    let forgotten = CutPolicy {
        data: DataLoss::KeepAll,
        dirs: DirLoss::ForgetAll,
    };
    assert_eq!(
        tree_of(&trees_exchanged().power_cut_with(0, forgotten)),
        unswapped
    );
    // A sync of either name's directory makes it durable.
    for dir in ["/x", "/y"] {
        let s = trees_exchanged();
        s.sync_dir(Path::new(dir)).unwrap();
        assert_eq!(tree_of(&s.power_cut_with(0, forgotten)), swapped, "{dir}");
    }
    // Exchanged back before the first exchange is durable (a receive that
    // fails after its swap): reads see the old trees at once, a cut keeps
    // neither exchange, the first, or both (never the second alone), and a
    // sync of either directory makes both durable.
    let back = || {
        let s = trees_exchanged();
        s.exchange(Path::new("/x/a"), Path::new("/y/b")).unwrap();
        s
    };
    assert_eq!(tree_of(&back()), unswapped, "reads see the exchange back");
    for seed in 0..32 {
        let found = tree_of(&back().power_cut_with(
            seed,
            CutPolicy {
                data: DataLoss::Random,
                dirs: DirLoss::RandomPrefix,
            },
        ));
        assert!(
            found == swapped || found == unswapped,
            "seed {seed}: {found:?}"
        );
    }
    for dir in ["/x", "/y"] {
        let s = back();
        s.sync_dir(Path::new(dir)).unwrap();
        assert_eq!(tree_of(&s.power_cut_with(0, forgotten)), unswapped, "{dir}");
    }
    // Not when the first exchange waits on the other name's directory:
    // exchanged with the names the other way round, the change would
    // queue apart from it.
    let s = trees_exchanged();
    let err = s
        .exchange(Path::new("/y/b"), Path::new("/x/a"))
        .unwrap_err();
    assert!(err.to_string().contains("not yet durable"), "{err}");
    // Only settled trees are exchanged: one with a change not yet durable
    // inside is refused, and nothing changes.
    let s = trees_exchanged();
    s.sync_dir(Path::new("/y")).unwrap();
    write_file(&s, "/x/a/d/h", b"h");
    let err = s
        .exchange(Path::new("/x/a"), Path::new("/y/b"))
        .unwrap_err();
    assert!(err.to_string().contains("not yet durable"), "{err}");
    assert!(s.read(Path::new("/x/a/d/h")).is_some());
    // Nor nested names, nor a file.
    let s = trees_exchanged();
    let err = s
        .exchange(Path::new("/x/a"), Path::new("/x/a/d"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = s
        .exchange(Path::new("/x/a/d/g"), Path::new("/y/b"))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
}

/// A tree moved away (`/p/data/t` → `/p/st/op/old`, not synced: a process
/// killed between a receive's two renames), then moved back and both
/// parents synced (the reopen's undo): the tree is durable whole, whatever
/// a cut keeps. Once, a cut dropped every name under `t` (the first move's
/// queued change, rebased by the second, set and removed the same names).
#[test]
fn a_tree_moved_away_then_back_and_synced_survives_a_cut_whole() {
    let s = SimStorage::new();
    for dir in [
        "/p",
        "/p/data",
        "/p/st",
        "/p/st/op",
        "/p/data/t",
        "/p/data/t/d",
    ] {
        s.create_dir(Path::new(dir)).unwrap();
    }
    let f = s.create(Path::new("/p/data/t/f")).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    s.syncfs().unwrap();
    // The killed process: the fallback's first rename, not synced.
    s.rename(Path::new("/p/data/t"), Path::new("/p/st/op/old"))
        .unwrap();
    let r = s.restart();
    // The reopen puts it back and syncs both parents.
    r.rename(Path::new("/p/st/op/old"), Path::new("/p/data/t"))
        .unwrap();
    r.sync_dir(Path::new("/p/data")).unwrap();
    r.sync_dir(Path::new("/p/st/op")).unwrap();
    let want = r.paths();
    for seed in 0..8 {
        for dirs in [DirLoss::ForgetAll, DirLoss::KeepAll, DirLoss::RandomPrefix] {
            let policy = CutPolicy {
                data: DataLoss::KeepAll,
                dirs,
            };
            let cut = r.power_cut_with(seed, policy);
            assert_eq!(cut.paths(), want, "{dirs:?}, seed {seed}");
        }
    }
}

#[test]
fn dropping_the_cache_reads_durable_bytes_in_clean_pages_and_keeps_dirty_pages() {
    let page = usize::try_from(PAGE_LEN).unwrap();
    let s = SimStorage::new();
    let f = write_file(&s, "/a", &vec![1u8; 3 * page]);
    f.sync_data().unwrap();
    // A write whose sync fails: visible, never durable (fsyncgate).
    f.write_all_at(&vec![2u8; page + 10], 10).unwrap();
    s.fail_sync_at(Some(s.sync_points() + 1));
    f.sync_data().unwrap_err();
    // A later write not yet synced: its page is dirty.
    f.write_all_at(&[3u8; 4], 2 * PAGE_LEN + 5).unwrap();
    assert_eq!(
        s.read(Path::new("/a")).unwrap()[page],
        2,
        "the failed bytes read back"
    );
    f.drop_cache().unwrap();
    let seen = s.read(Path::new("/a")).unwrap();
    assert_eq!(seen.len(), 3 * page);
    assert!(
        seen[..2 * page].iter().all(|&b| b == 1),
        "clean pages read as durable"
    );
    assert_eq!(
        &seen[2 * page..2 * page + 10],
        &[1, 1, 1, 1, 1, 3, 3, 3, 3, 1]
    );
    // A file longer than its durable bytes (a failed sync of an extension)
    // reads zeros past them once dropped.
    let g = write_file(&s, "/b", &[5u8; 100]);
    g.sync_data().unwrap();
    g.write_all_at(&[6u8; 50], 100).unwrap();
    s.fail_sync_at(Some(s.sync_points() + 1));
    g.sync_data().unwrap_err();
    g.drop_cache().unwrap();
    let seen = s.read(Path::new("/b")).unwrap();
    assert_eq!(
        (&seen[..100], &seen[100..]),
        (&[5u8; 100][..], &[0u8; 50][..])
    );
}

/// A state with a durable file, an unsynced write to it and an unsynced
/// create: what the fingerprint tests cut.
fn half_synced() -> SimStorage {
    let s = SimStorage::new();
    s.create_dir_all(Path::new("/d")).unwrap();
    let f = write_file(&s, "/d/a", b"durable");
    f.sync_all().unwrap();
    s.sync_dir(Path::new("/")).unwrap();
    s.sync_dir(Path::new("/d")).unwrap();
    f.write_all_at(b"DUR", 0).unwrap();
    write_file(&s, "/d/b", b"new");
    s
}

#[test]
fn equal_fingerprints_exactly_when_two_cuts_leave_the_same_file_system() {
    let s = half_synced();
    // The two fixed policies, twice each: the same image each time.
    for policy in [CutPolicy::KEEP_NOTHING, CutPolicy::KEEP_ALL] {
        assert_eq!(
            s.power_cut_with(1, policy).fingerprint(),
            s.power_cut_with(2, policy).fingerprint(),
            "{policy:?}"
        );
    }
    let nothing = s.power_cut_with(0, CutPolicy::KEEP_NOTHING);
    let all = s.power_cut_with(0, CutPolicy::KEEP_ALL);
    assert_ne!(nothing.fingerprint(), all.fingerprint());
    // Seeded cuts: equal fingerprints exactly when every name and byte is.
    let mut distinct = BTreeSet::new();
    for seed in 0..64 {
        let cut = s.power_cut_with(seed, CutPolicy::RANDOM_PREFIX);
        let seen: Vec<(PathBuf, Option<Vec<u8>>)> = cut
            .paths()
            .into_iter()
            .map(|p| (p.clone(), cut.read(&p)))
            .collect();
        for other in [&nothing, &all] {
            let other_seen: Vec<(PathBuf, Option<Vec<u8>>)> = other
                .paths()
                .into_iter()
                .map(|p| (p.clone(), other.read(&p)))
                .collect();
            assert_eq!(
                cut.fingerprint() == other.fingerprint(),
                seen == other_seen,
                "seed {seed}"
            );
        }
        distinct.insert(seen);
    }
    assert!(distinct.len() > 2, "the seeded cuts drew only {distinct:?}");
}

#[test]
fn a_fingerprint_sees_every_byte_name_inode_and_switch_a_reopen_can_observe() {
    let base = || half_synced().power_cut_with(0, CutPolicy::KEEP_ALL);
    let print = base().fingerprint();
    assert_eq!(base().fingerprint(), print, "deterministic");
    // One byte of a file.
    let s = base();
    s.open(Path::new("/d/a"))
        .unwrap()
        .write_all_at(b"x", 6)
        .unwrap();
    assert_ne!(s.fingerprint(), print, "a byte");
    // A name, an empty directory.
    let s = base();
    s.create_dir(Path::new("/e")).unwrap();
    assert_ne!(s.fingerprint(), print, "a directory");
    // The same names and bytes under other inode numbers (a directory's
    // number is its identity across renames).
    let other = SimStorage::new();
    other.create_dir_all(Path::new("/scratch")).unwrap();
    other.remove_dir(Path::new("/scratch")).unwrap();
    other.create_dir_all(Path::new("/d")).unwrap();
    let f = write_file(&other, "/d/a", b"DURable");
    f.sync_all().unwrap();
    write_file(&other, "/d/b", b"new").sync_all().unwrap();
    let other = other.power_cut_with(0, CutPolicy::KEEP_ALL);
    let names = |s: &SimStorage| -> Vec<(PathBuf, Option<Vec<u8>>)> {
        s.paths()
            .into_iter()
            .map(|p| (p.clone(), s.read(&p)))
            .collect()
    };
    assert_eq!(names(&other), names(&base()));
    assert_ne!(other.fingerprint(), print, "inode numbers");
    // The switches a reopen meets.
    let s = base();
    s.set_exchange_supported(false);
    assert_ne!(s.fingerprint(), print, "no exchange");
    let s = base();
    s.set_capacity(Some(1 << 20));
    assert_ne!(s.fingerprint(), print, "a capacity");
    // What is not yet durable (a kill -9 keeps it): the same names and
    // bytes to reads, another image after a cut.
    let s = base();
    let f = s.open(Path::new("/d/a")).unwrap();
    f.write_all_at(b"DUR", 0).unwrap();
    assert_eq!(names(&s), names(&base()), "the same bytes rewritten");
    assert_ne!(s.fingerprint(), print, "a write not yet durable");
}
