//! The real directory provider under power cuts. Its create and destroy,
//! batched (no fsync of their own: barriers and one shared `syncfs`), and
//! its snapshot and fork (a copy under a `copying` marker, every copied file
//! and directory fsynced before the marker says `complete`), run through
//! the manager on a simulated file system that holds both the journal and
//! the provider's root ([`DirProvider::simulated`]), with the power cut at
//! every sync point (journal fdatasyncs, file and directory fsyncs, the
//! provider's `syncfs`), each cut keeping none, all or a seeded part of what
//! was not durable, once more as a kill -9 (the page cache survives), and
//! as a kill -9 followed by a reopen and then a power cut (keeping none,
//! all or a seeded part of what the reopen left unsynced), and as a kill
//! -9 followed by a power cut at each sync point of the reopen (none, all
//! or a seeded part kept; see `dir_sweep_support::sweep`). An image
//! identical to one already checked at the same crash point (same
//! [`SimStorage::fingerprint`]) is not reopened again and takes that
//! one's verdict (2026-12-07, debug, 2 cores at load 5 to 8: 10,195,
//! 11,902 and 12,002 images a flavor, 4,213, 5,035 and 5,144 of them
//! distinct, 171 s for the file; 272 s at load 5 to 6 reopening every
//! image; with `VOLMGR_REOPEN_CUTS_ALL=1` 18,825 to 23,112 images, 7,195
//! to 8,912 distinct, 329 s at load 8 to 10). Without the switch the
//! reopen's sync points take four cuts each and the cut after the reopen
//! four; `VOLMGR_SWEEP_EVERY_IMAGE=1` reopens every image and counts a
//! disagreement wherever a verdict differs from its twin's. The start
//! without its `syncfs` before its sweeps (`dir/root.rs`, the fix of the
//! 2 disagreements durable on return named below) still gives those 2
//! with the skipping, at sync 7 of the reopen. Older figures (debug,
//! 2 cores, about 122 s for the file with none or all kept at the reopen's
//! sync points; 73 s before the reopen's seeded cuts and crash points, 110
//! s with every seeded cut after the reopen and no crash points in it):
//! 166 to 197 crash points, 1425 to 1703 crash points of the reopen, 5008
//! to 5967 images per flavor; 0 lost, 0 disagreements. With seeded parts
//! at the reopen's sync points (2026-12-06; 332 s on a machine busy with a
//! QEMU guest and another sweep): 165 to 198 crash points, 1567 to 1880 of
//! the reopen, 8413 to 10094 images per flavor, 0 and 0; they found that
//! the start's sweeps acted on what a killed process left in the page
//! cache (2 disagreements durable on return before the fix, see the
//! README). The cut after the reopen catches a first
//! round after open that is not a whole `syncfs` (mutation, fsync rounds:
//! 40 disagreements, creates rolled forward by the reopen then lost; since
//! `sync_at_open` that mutation alone shows nothing, and with
//! `sync_at_open` reduced to the ordinary round as well: 45 batched, 24
//! durable on return) and
//! found a real bug with durable-on-return providers: the manager synced
//! only batched providers before their inventory, so a create a killed
//! process left in the page cache (before its own fsyncs) was rolled
//! forward and then lost (19 to 21 disagreements; now
//! `Provider::sync_at_open`, a whole `syncfs` for the dir provider). The
//! loop and its images are `dir_sweep_support::sweep`, shared with
//! `torture_dir_receive_manager`; this file holds the workload and its
//! checks.
//!
//! The workload, per round: three concurrent creates; a file and a
//! directory with a file written (and synced) into the first volume through
//! the simulated file system; then, concurrently, a snapshot of that volume,
//! a fork of the previous round's snapshot, and two destroys; the last
//! round also destroys a fork and then its snapshot.
//!
//! Property: after any cut and a reopen, every acknowledged create,
//! snapshot and fork is a whole item in the state and on the provider,
//! every acknowledged destroy is gone from both, nothing is pending, lost,
//! orphaned, half-made or foreign (a directory of ours without its marker
//! would be), every snapshot or fork in the state (acknowledged, or rolled
//! forward) holds exactly its source's content at snapshot time (no file
//! missing, empty or torn), no marker or mode manifest is left of an item
//! whose creation was acknowledged and which is gone (a destroy that
//! removed the tree before its marker's removal was durable would leave
//! one, unreachable by anything), the trash is empty, and every id the run
//! used can be destroyed and made again with its kind (no stale marker or
//! leftover directory blocks it), after which the trash is empty again (a
//! destroy's deferred tree removal happens before it is acknowledged).
//!
//! Prints `dir power-cut sweep (...): crash points P, images I, ...,
//! acknowledged operations lost L, disagreements D`.
//!
//! A third test fails one sync (`EIO`, no cut) inside a snapshot and a fork
//! on the provider alone, at each of their sync points in turn (see
//! `failed_copies`), and prints `dir failed-copy sweep (...): failure
//! points N, problems P`.

mod dir_sweep_support;
mod torture_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use volmgr::manager::{Manager, ManagerError};
use volmgr::model::VolumeKind;
use volmgr::provider::dir::{BatchSync, DirProvider};
use volmgr::provider::{Durability, Provider};
use volmgr::state::{Meta, VolumeStatus};
use volmgr::storage::Storage;
use volmgr::storage::sim::SimStorage;

use dir_sweep_support::{
    Flavor, PROVIDER, ROOT, Reopened, Slot, Tally, Tree, Workload, agrees, left_in, shown, tree_of,
};

const ROUNDS: u32 = 3;
/// Checkpoints often, so that cuts also land in them.
const CHECKPOINT_EVERY: u64 = 7;

/// What the acknowledgements promise.
#[derive(Debug, Default)]
struct Model {
    must_exist: BTreeSet<String>,
    must_not_exist: BTreeSet<String>,
    /// Ids whose creation (create, snapshot, fork) was acknowledged.
    created: BTreeSet<String>,
    /// Every id the run used, with its kind.
    used: BTreeMap<String, VolumeKind>,
    /// The content a snapshot or fork must hold whenever it exists: its
    /// source's at snapshot time.
    content: BTreeMap<String, Tree>,
    tally: Tally,
}

impl Model {
    fn made(&mut self, id: &str, kind: VolumeKind, r: &Result<impl Sized, ManagerError>) {
        self.used.insert(id.to_owned(), kind);
        match r {
            Ok(_) => {
                self.tally.acked += 1;
                self.must_exist.insert(id.to_owned());
                self.created.insert(id.to_owned());
            }
            Err(e) => self.tally.errors.push(format!("making {id}: {e}")),
        }
    }

    fn created(&mut self, id: &str, r: &Result<impl Sized, ManagerError>) {
        self.made(id, VolumeKind::Data, r);
    }

    fn destroyed(&mut self, id: &str, r: &Result<impl Sized, ManagerError>) {
        match r {
            Ok(_) => {
                self.tally.acked += 1;
                self.must_exist.remove(id);
                self.must_not_exist.insert(id.to_owned());
            }
            // It may have happened: no longer promised either way.
            Err(e) => {
                self.must_exist.remove(id);
                self.tally.errors.push(format!("destroying {id}: {e}"));
            }
        }
    }
}

/// Writes a file and a directory holding a file into data volume `id`
/// through the simulated file system, durably (files, then directories,
/// synced), as a user of the volume would. Returns the tree written, or
/// `None` if the power went out meanwhile.
fn fill(storage: &SimStorage, id: &str) -> Option<Tree> {
    let root = Path::new(ROOT).join("data").join(id);
    let files = [
        (PathBuf::from("f"), format!("the content of {id}\n")),
        (
            PathBuf::from("d/g"),
            format!("{id}: a file in a directory\n"),
        ),
    ];
    let write = || -> std::io::Result<()> {
        storage.create_dir(&root.join("d"))?;
        for (rel, text) in &files {
            let f = storage.create(&root.join(rel))?;
            f.write_all_at(text.as_bytes(), 0)?;
            f.sync_all()?;
        }
        storage.sync_dir(&root.join("d"))?;
        storage.sync_dir(&root)
    };
    write().ok()?;
    let mut tree = Tree::from([(PathBuf::from("d"), None)]);
    for (rel, text) in files {
        tree.insert(rel, Some(text.into_bytes()));
    }
    Some(tree)
}

/// Per round: three concurrent creates; content written into the first;
/// then, concurrently, a snapshot of it, a destroy of the second, and from
/// the second round on a fork of the previous round's snapshot and a
/// destroy of the previous round's third. The last round then destroys the
/// previous round's fork and the snapshot it was forked from.
async fn run(m: &Manager, storage: &SimStorage, model: &mut Model) {
    for r in 0..ROUNDS {
        let ids = [format!("v{r}a"), format!("v{r}b"), format!("v{r}c")];
        let (a, b, c) = tokio::join!(
            m.create_volume(PROVIDER, Some(&ids[0]), Meta::new()),
            m.create_volume(PROVIDER, Some(&ids[1]), Meta::new()),
            m.create_volume(PROVIDER, Some(&ids[2]), Meta::new()),
        );
        model.created(&ids[0], &a);
        model.created(&ids[1], &b);
        model.created(&ids[2], &c);
        let written = match a {
            Ok(_) => fill(storage, &ids[0]),
            Err(_) => None,
        };
        let snap = format!("s{r}");
        model
            .content
            .insert(snap.clone(), written.unwrap_or_default());
        let fork = format!("f{r}");
        let forked_from = format!("s{}", r.wrapping_sub(1));
        let old = format!("v{}c", r.wrapping_sub(1));
        let (s, f, gone, gone_old) = tokio::join!(
            m.create_snapshot_as(&ids[0], Some(&snap), Meta::new()),
            async {
                if r == 0 {
                    return None;
                }
                Some(m.fork_volume(&forked_from, Some(&fork), Meta::new()).await)
            },
            m.destroy_volume(&ids[1]),
            async {
                if r == 0 {
                    return None;
                }
                Some(m.destroy_volume(&old).await)
            },
        );
        model.made(&snap, VolumeKind::Snapshot, &s);
        model.destroyed(&ids[1], &gone);
        if let (Some(f), Some(gone_old)) = (f, gone_old) {
            let content = model.content[&forked_from].clone();
            model.content.insert(fork.clone(), content);
            model.made(&fork, VolumeKind::Data, &f);
            model.destroyed(&old, &gone_old);
        }
        if r == ROUNDS - 1 {
            let (fork, snap) = (format!("f{}", r - 1), format!("s{}", r - 2));
            let gone = m.destroy_volume(&fork).await;
            model.destroyed(&fork, &gone);
            let gone = m.destroy_volume(&snap).await;
            model.destroyed(&snap, &gone);
        }
    }
}

/// (lost acknowledged operations, disagreements) of `m`, just reopened on
/// `image` (its provider in `slot`).
async fn check(m: &Manager, image: &SimStorage, slot: &Slot, model: &Model) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    let state = m.state();
    let in_state: BTreeSet<String> = state.volumes.keys().cloned().collect();
    // An acknowledged create is lost if its volume is gone from the state
    // or marked lost there (the provider lost it); an acknowledged destroy
    // if its volume is back.
    let live = |id: &String| {
        state
            .volumes
            .get(id)
            .is_some_and(|v| v.status == VolumeStatus::Live)
    };
    let missing: Vec<&String> = model.must_exist.iter().filter(|id| !live(id)).collect();
    let back: Vec<&String> = model.must_not_exist.intersection(&in_state).collect();
    let lost = (missing.len() + back.len()) as u64;
    if lost > 0 {
        problems.push(format!(
            "acknowledged creates missing or lost {missing:?}, acknowledged destroys back {back:?}"
        ));
    }
    // Nothing pending, orphaned, not live, foreign or half-made; the
    // provider's whole items are the state's.
    problems.extend(agrees(m, slot));
    // Every snapshot and fork there is holds its source's content at
    // snapshot time: a copy is never torn, whether acknowledged or rolled
    // forward.
    for v in state.volumes.values() {
        if let Some(want) = model.content.get(&v.id) {
            let have = tree_of(image, &v.location);
            if &have != want {
                problems.push(format!(
                    "{} holds {:?}, not its source's content {:?}",
                    v.id,
                    shown(&have),
                    shown(want)
                ));
            }
        }
    }
    // An item that was whole and is gone left no marker (nor mode manifest)
    // behind, and the trash holds nothing after the start's sweep and the
    // reconciliation.
    for id in model.created.difference(&in_state) {
        let kind = model.used[id];
        for left in [marker_path(kind, id), manifest_path(id)] {
            if image.is_dir(&left).is_some() {
                problems.push(format!("{id} is gone but {} is left", left.display()));
            }
        }
    }
    let trash = left_in(image, ".trash");
    if !trash.is_empty() {
        problems.push(format!("the trash holds {trash:?} after the reopen"));
    }
    problems.extend(reuse(m, model).await);
    let trash = left_in(image, ".trash");
    if !trash.is_empty() {
        problems.push(format!(
            "the trash holds {trash:?} after acknowledged destroys"
        ));
    }
    (lost, problems)
}

/// Every id the run used can be destroyed (dependents first) and made
/// again with its kind: data volumes created, snapshots taken of the first
/// data volume.
async fn reuse(m: &Manager, model: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    // Forks, then snapshots, then data volumes: each pass destroys what no
    // one depends on any more.
    for _ in 0..3 {
        let state = m.state();
        for v in state.volumes.values() {
            if model.used.contains_key(&v.id)
                && state.dependents(&v.id).is_empty()
                && let Err(e) = m.destroy_volume(&v.id).await
            {
                problems.push(format!("destroying {} after the reopen: {e}", v.id));
            }
        }
    }
    let left: Vec<String> = m.state().volumes.keys().cloned().collect();
    if !left.is_empty() {
        problems.push(format!("{left:?} still there after destroying everything"));
    }
    let kind_of = |kind: VolumeKind| {
        model
            .used
            .iter()
            .filter(move |(_, k)| **k == kind)
            .map(|(id, _)| id)
    };
    for id in kind_of(VolumeKind::Data) {
        if let Err(e) = m.create_volume(PROVIDER, Some(id), Meta::new()).await {
            problems.push(format!("creating {id} again after the reopen: {e}"));
        }
    }
    // (A run cut before its first create used no snapshot id.)
    if let Some(source) = kind_of(VolumeKind::Data).next() {
        for id in kind_of(VolumeKind::Snapshot) {
            if let Err(e) = m.create_snapshot_as(source, Some(id), Meta::new()).await {
                problems.push(format!("taking snapshot {id} again after the reopen: {e}"));
            }
        }
    }
    problems
}

fn manifest_path(id: &str) -> PathBuf {
    Path::new(ROOT).join(".volmgr/modes").join(id)
}

fn marker_path(kind: VolumeKind, id: &str) -> PathBuf {
    let dir = match kind {
        VolumeKind::Data => ".volmgr/data",
        VolumeKind::Snapshot => ".volmgr/snapshot",
    };
    Path::new(ROOT).join(dir).join(id)
}

/// The create/destroy/snapshot/fork workload on one flavor.
struct Sweep(Flavor);

impl Workload for Sweep {
    type Model = Model;

    fn flavor(&self) -> Flavor {
        self.0
    }

    fn checkpoint_every(&self) -> u64 {
        CHECKPOINT_EVERY
    }

    async fn run(&self, m: &Manager, storage: &SimStorage, model: &mut Model) {
        run(m, storage, model).await;
    }

    fn tally(model: &Model) -> &Tally {
        &model.tally
    }

    async fn check(&self, r: &Reopened<'_>, model: &Model) -> (u64, Vec<String>) {
        check(r.m, r.image, r.slot, model).await
    }
}

async fn sweep(flavor: Flavor) {
    let found = dir_sweep_support::sweep(&Sweep(flavor), 0x5EED_D1D0).await;
    let (acked, mut failures) = (found.acked, found.failures);
    println!(
        "dir power-cut sweep ({flavor:?}): crash points {}, reopen crash points {}, images {} \
         (unique {}, skipped {}), operations acknowledged by a whole run {acked}, acknowledged \
         operations lost {}, disagreements {} (seed {:#x}, scale {})",
        found.points,
        found.reopen_points,
        found.images,
        found.unique,
        found.skipped,
        found.lost,
        found.disagreements,
        found.base_seed,
        found.scale
    );
    assert!(
        acked >= u64::from(ROUNDS) * 7 || found.one_point,
        "the whole run acknowledged only {acked} operations: the workload did not run: {:?}",
        found.whole_run_errors
    );
    failures.truncate(10);
    assert!(
        found.lost == 0 && found.disagreements == 0,
        "first failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_dir_provider_survives_a_power_cut_at_every_sync_point() {
    sweep(Flavor(Durability::Batched, BatchSync::Fsync)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_dir_provider_with_syncfs_rounds_survives_a_power_cut_at_every_sync_point() {
    sweep(Flavor(Durability::Batched, BatchSync::Syncfs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_on_return_dir_provider_survives_a_power_cut_at_every_sync_point() {
    sweep(Flavor(Durability::OnReturn, BatchSync::Fsync)).await;
}

/// A snapshot and a fork whose copy meets a failing sync (`EIO`, the
/// unsynced changes dropped, no power cut) at each sync point in turn, on
/// the provider alone. Property: the failed verb leaves no untagged tree:
/// after a restart the inventory shows only tagged items (the failed one
/// complete, half-made or gone); destroying what the failed verb left
/// leaves no marker, manifest or tree behind (the trash empty after a
/// sync); and the same id is then made again, whole, with the source's
/// content. Returns (failure points, problems).
fn failed_copies(durability: Durability) -> (u64, Vec<String>) {
    use volmgr::model::{Details, VolumeId};
    use volmgr::provider::{VolumeRef, VolumeSpec};
    let details = Details::new();
    let vref = |id: &'static str, kind| VolumeRef {
        id: VolumeId::new(id).unwrap(),
        kind,
        parent: None,
        location: "",
        details: &details,
    };
    let spec = |id: &'static str, kind| VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op: uuid::Uuid::now_v7(),
        kind,
    };
    let (data, snap) = (VolumeKind::Data, VolumeKind::Snapshot);
    let mut problems = Vec::new();
    for n in 1..=1000u64 {
        let storage = SimStorage::new();
        let p = DirProvider::simulated(PathBuf::from(ROOT), storage.clone(), durability).unwrap();
        p.create_volume(&spec("v0a", data)).unwrap();
        p.sync().unwrap();
        let want = fill(&storage, "v0a").expect("no failure armed yet");
        p.create_snapshot(&vref("v0a", data), &spec("s0", snap))
            .unwrap();
        p.sync().unwrap();
        let armed = storage.sync_points() + n;
        storage.fail_sync_at(Some(armed));
        let results = [
            (
                "s1",
                snap,
                p.create_snapshot(&vref("v0a", data), &spec("s1", snap)),
            ),
            (
                "f1",
                data,
                p.fork_volume(&vref("s0", snap), &spec("f1", data)),
            ),
        ];
        let _ = p.sync();
        if storage.sync_points() < armed {
            assert!(results.iter().all(|r| r.2.is_ok()), "{results:?}");
            return (n - 1, problems);
        }
        let image = storage.restart();
        let p = DirProvider::simulated(PathBuf::from(ROOT), image.clone(), durability).unwrap();
        let mut bad = |what: String| problems.push(format!("failure at point {n}: {what}"));
        match p.inventory() {
            Err(e) => bad(format!("inventory: {e}")),
            Ok(found) => {
                for f in found.iter().filter(|f| f.tag.is_none()) {
                    bad(format!("untagged {}", f.name));
                }
            }
        }
        for (id, kind, r) in &results {
            if r.is_ok() {
                continue;
            }
            if let Err(e) = p.destroy(&vref(id, *kind)) {
                bad(format!("destroying what the failed {id} left: {e}"));
            }
            if let Err(e) = p.sync() {
                bad(format!("sync after destroying {id}: {e}"));
            }
            let dir = if *kind == data { "data" } else { "snapshot" };
            let left: Vec<PathBuf> = image
                .paths()
                .into_iter()
                .filter(|q| {
                    q.ends_with(id)
                        && (q.starts_with(Path::new(ROOT).join(dir))
                            || q.starts_with(Path::new(ROOT).join(".volmgr")))
                })
                .collect();
            if !left.is_empty() {
                bad(format!("{id} destroyed, but {left:?} left"));
            }
            let again = if *kind == data {
                p.fork_volume(&vref("s0", snap), &spec(id, data))
            } else {
                p.create_snapshot(&vref("v0a", data), &spec(id, snap))
            };
            match again {
                Err(e) => bad(format!("making {id} again: {e}")),
                Ok(made) => {
                    if tree_of(&image, &made.location) != want {
                        bad(format!("{id} made again without its source's content"));
                    }
                }
            }
        }
        let trash = left_in(&image, ".trash");
        if !trash.is_empty() {
            bad(format!("the trash holds {trash:?}"));
        }
    }
    panic!("the copies kept meeting the failure after 1000 sync points");
}

#[test]
fn a_snapshot_or_fork_that_meets_a_failing_sync_leaves_nothing_untagged_or_stuck() {
    for durability in [Durability::Batched, Durability::OnReturn] {
        let (points, mut problems) = failed_copies(durability);
        println!(
            "dir failed-copy sweep ({durability:?}): failure points {points}, problems {}",
            problems.len()
        );
        assert!(
            points >= 10,
            "only {points} sync points in a snapshot and a fork"
        );
        problems.truncate(10);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
