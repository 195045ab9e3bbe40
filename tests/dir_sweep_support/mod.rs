//! What the power-cut sweeps of the real dir provider through the manager
//! share (`tests/torture_dir_powercut.rs`, `tests/torture_dir_receive_manager.rs`
//! with `tests/dir_receive_support`): a manager whose journal and dir
//! provider live on one [`SimStorage`], the checks every reopened image of
//! either must pass (nothing pending, orphaned or not live; the provider's
//! inventory tagged, whole and equal to the state), and the sweep loop
//! itself ([`sweep`]): a crash at every sync point of a suite's workload
//! (or at every point the suite counts, [`Workload::arm`]),
//! each crash point's images (a kill -9; a kill -9, a reopen that
//! reconciles, then power cuts keeping none, all or a seeded part of what
//! it left unsynced; a kill -9, then a power cut at each sync point of the
//! reopen; power cuts by [`torture_support::cut_policies`]) reopened and
//! checked by the suite against what its workload's acknowledgements
//! promised, each distinct image of a crash point once. A suite brings its
//! workload and its checks ([`Workload`]).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use volmgr::journal::JournalConfig;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::dir::{BatchSync, DirProvider};
use volmgr::provider::{Durability, Presence, Provider, ProviderConfig, ProviderFactory};
use volmgr::state::VolumeStatus;
use volmgr::storage::sim::{CutPolicy, Fingerprint, SimStorage};

use crate::torture_support;

pub const STATE: &str = "/state";
pub const ROOT: &str = "/p";
pub const PROVIDER: &str = "p";
/// Mixed into the base seed for the cuts after a kill -9 and a reopen, so
/// that their seeded cuts draw other choices than the plain power cuts'.
const REOPEN_SEED_SALT: u64 = 0x2E0B_E4ED;
/// Mixed into the base seed (with the reopen's sync point) for the cuts at
/// a sync point of the reopen itself: other choices again.
const REOPEN_SYNC_SEED_SALT: u64 = 0x5_C0DE_7E1F;

/// A tree's content: relative path to the file's bytes (`None`: a
/// directory).
pub type Tree = BTreeMap<PathBuf, Option<Vec<u8>>>;

/// The provider each open builds, kept so the check can take its inventory.
pub type Slot = Arc<Mutex<Option<Arc<DirProvider>>>>;

/// The provider's durability and, batched, what its rounds run.
#[derive(Debug, Clone, Copy)]
pub struct Flavor(pub Durability, pub BatchSync);

impl From<Durability> for Flavor {
    /// `durability` with the default rounds.
    fn from(durability: Durability) -> Self {
        Flavor(durability, BatchSync::default())
    }
}

pub fn factory(storage: &SimStorage, flavor: Flavor, slot: &Slot) -> ProviderFactory {
    let (storage, slot) = (storage.clone(), slot.clone());
    Arc::new(
        move |config: &ProviderConfig, _owner: &volmgr::provider::AgentId| {
            let root = config.get("root").cloned().unwrap_or_default();
            let p = Arc::new(DirProvider::simulated_with(
                PathBuf::from(root),
                storage.clone(),
                flavor.0,
                flavor.1,
            )?);
            *slot.lock().unwrap() = Some(p.clone());
            Ok(p as Arc<dyn Provider>)
        },
    )
}

/// Opens the manager on `storage` (journal and provider root), adding the
/// provider on a first open; a checkpoint every `checkpoint_every` records.
pub async fn open(
    storage: &SimStorage,
    flavor: impl Into<Flavor>,
    slot: &Slot,
    checkpoint_every: u64,
) -> Result<Manager, ManagerError> {
    let mut config = ManagerConfig {
        journal: JournalConfig {
            segment_size: 4096,
            max_batch_bytes: 2048,
            queue_depth: 64,
        },
        checkpoint_every,
        checkpoint_grows_with_state: false,
        storage: Some(Arc::new(storage.clone())),
        ..ManagerConfig::default()
    };
    config
        .factories
        .insert("dir".into(), factory(storage, flavor.into(), slot));
    let m = Manager::open(Path::new(STATE), config).await?;
    if m.providers().is_empty() {
        m.add_provider(
            PROVIDER,
            "dir",
            ProviderConfig::from([("root".to_owned(), ROOT.to_owned())]),
        )
        .await?;
    }
    Ok(m)
}

/// What the tree at `location` holds in `image`.
pub fn tree_of(image: &SimStorage, location: &str) -> Tree {
    let root = Path::new(location);
    image
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(root) && p != root)
        .map(|p| {
            let content = image.read(&p);
            (
                p.strip_prefix(root).expect("under the root").to_owned(),
                content,
            )
        })
        .collect()
}

/// Every path under `<root>/<dir>`.
pub fn left_in(image: &SimStorage, dir: &str) -> Vec<PathBuf> {
    let top = Path::new(ROOT).join(dir);
    image
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(&top) && *p != top)
        .collect()
}

/// A tree for messages: its paths and contents.
pub fn shown(tree: &Tree) -> Vec<(String, Option<String>)> {
    tree.iter()
        .map(|(p, c)| {
            let text = c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
            (p.display().to_string(), text)
        })
        .collect()
}

/// The checks every reopened image shares: nothing pending, orphaned or not
/// live in the state; the provider's inventory (of the provider `slot`
/// holds) all tagged, whole and equal to the state.
pub fn agrees(m: &Manager, slot: &Slot) -> Vec<String> {
    let mut problems = Vec::new();
    let state = m.state();
    if !state.pending.is_empty() {
        problems.push(format!("{} operations pending", state.pending.len()));
    }
    if !state.orphans.is_empty() {
        let orphans: Vec<&String> = state.orphans.keys().collect();
        problems.push(format!("orphans {orphans:?}"));
    }
    for v in state.volumes.values() {
        if v.status != VolumeStatus::Live {
            problems.push(format!("{} is {:?}", v.id, v.status));
        }
    }
    let in_state: BTreeSet<String> = state.volumes.keys().cloned().collect();
    let provider = slot.lock().unwrap().clone().expect("the factory ran");
    match provider.inventory() {
        Err(e) => problems.push(format!("inventory failed: {e}")),
        Ok(found) => {
            let mut whole = BTreeSet::new();
            for f in found {
                match (&f.tag, &f.presence) {
                    (None, _) => problems.push(format!("foreign item {}", f.name)),
                    (Some(_), Presence::Incomplete { reason }) => {
                        problems.push(format!("half-made item {}: {reason}", f.name));
                    }
                    (Some(tag), Presence::Complete) => {
                        whole.insert(tag.volume.clone());
                    }
                }
            }
            if whole != in_state {
                problems.push(format!(
                    "state and provider disagree: only in state {:?}, only on the provider {:?}",
                    in_state.difference(&whole).collect::<Vec<_>>(),
                    whole.difference(&in_state).collect::<Vec<_>>()
                ));
            }
        }
    }
    problems
}

/// A suite's side of [`sweep`]: how its manager opens, its workload, what
/// the workload's acknowledgements promise, and its check of a reopened
/// image against that promise.
pub trait Workload {
    /// What the acknowledgements promise.
    type Model: Default;
    /// The provider every open of this sweep builds.
    fn flavor(&self) -> Flavor;
    /// The manager's checkpoint interval (records) at every open.
    fn checkpoint_every(&self) -> u64;
    /// A fresh, empty simulated file system for one run.
    fn storage(&self) -> SimStorage {
        SimStorage::new()
    }
    /// Arms crash point `point` (1-based) on a run's fresh `storage`:
    /// by default a cut at its `point`th sync
    /// ([`SimStorage::crash_at_sync`]); a suite may count its crash points
    /// otherwise (the undo sweep of `torture_dir_receive_manager`: the
    /// `point`th mutating call after a failed sync,
    /// [`SimStorage::second_fault`]). A run whose crash point never fired
    /// is the last.
    fn arm(&self, storage: &SimStorage, point: u64) {
        storage.crash_at_sync(Some(point));
    }
    /// Whether each crash point also gives the images of a power cut at
    /// each sync point of the reopen after a kill -9 (by default; a sweep
    /// with many crash points may take them only under a switch).
    fn reopen_crashes(&self) -> bool {
        true
    }
    /// Runs the workload on `m` (its storage `storage`), recording in
    /// `model` what was acknowledged; it stops or goes on failing once the
    /// crash point fired.
    async fn run(&self, m: &Manager, storage: &SimStorage, model: &mut Self::Model);
    /// What the run counted.
    fn tally(model: &Self::Model) -> &Tally;
    /// Checks a reopened image against `model`: (acknowledged operations
    /// lost, problems).
    async fn check(&self, r: &Reopened<'_>, model: &Self::Model) -> (u64, Vec<String>);
}

/// What a run counted: operations acknowledged, and the errors it met (for
/// the message of a whole run that should have met none).
#[derive(Debug, Default)]
pub struct Tally {
    pub acked: u64,
    pub errors: Vec<String>,
}

/// A manager just reopened on an image, and its provider.
pub struct Reopened<'a> {
    pub m: &'a Manager,
    pub image: &'a SimStorage,
    pub slot: &'a Slot,
}

/// What [`sweep`] found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Crash points, the last one the whole run (it never fired).
    pub points: u64,
    /// Images (each reopened and checked, or identical to one already
    /// checked at its crash point: [`Swept::skipped`]).
    pub images: u64,
    /// Images no earlier image of the same crash point was identical to
    /// (what was reopened and checked, but with
    /// `VOLMGR_SWEEP_EVERY_IMAGE=1`, which reopens every one).
    pub unique: u64,
    /// Images not reopened: identical to one already checked at the same
    /// crash point, whose verdict they take (0 with
    /// `VOLMGR_SWEEP_EVERY_IMAGE=1`).
    pub skipped: u64,
    /// Sync points of the reopens after a kill -9 cut (over every crash
    /// point).
    pub reopen_points: u64,
    /// The most operations a run acknowledged (a whole run's).
    pub acked: u64,
    /// Acknowledged operations lost, over every image.
    pub lost: u64,
    /// Images with any problem.
    pub disagreements: u64,
    /// One line per image with a problem: crash point, image, problems.
    pub failures: Vec<String>,
    /// The errors the whole run met.
    pub whole_run_errors: Vec<String>,
    pub base_seed: u64,
    pub scale: u64,
    /// Only one crash point ran (`VOLMGR_SWEEP_POINT`): no whole run.
    pub one_point: bool,
}

/// `VOLMGR_REOPEN_CUTS_ALL=1`: after a kill -9 and a reopen, every cut of
/// [`torture_support::cut_policies`] (`3 * scale` seeded ones of each
/// directory policy), not only the first seeded one of each (CI sets it:
/// most of the images it adds are identical to one already checked, which
/// [`sweep`] does not reopen again).
fn every_reopen_cut() -> bool {
    std::env::var("VOLMGR_REOPEN_CUTS_ALL").is_ok_and(|v| v == "1")
}

/// `VOLMGR_SWEEP_EVERY_IMAGE=1`: reopen and check every image, also one
/// identical to an image already checked at the same crash point, and
/// count a disagreement wherever its verdict differs from that image's
/// (the check of the argument at [`Checked`]; none seen).
fn every_image() -> bool {
    std::env::var("VOLMGR_SWEEP_EVERY_IMAGE").is_ok_and(|v| v == "1")
}

/// `VOLMGR_SWEEP_POINT=N`: only crash point `N` (to reproduce a failure
/// the sweep printed; its images and seeds are the same as in the whole
/// sweep).
fn only_point() -> Option<u64> {
    let v = std::env::var("VOLMGR_SWEEP_POINT").ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("VOLMGR_SWEEP_POINT={v:?} is not a crash point")),
    )
}

/// The cuts after, or at a sync point of, a reopen that followed a kill -9:
/// none, all, then one seeded cut of each directory policy (every one of
/// [`torture_support::cut_policies`] at `scale` with
/// `VOLMGR_REOPEN_CUTS_ALL=1`).
fn reopen_cuts(seeds: u64, point: u64, scale: u64) -> Vec<(u64, CutPolicy)> {
    let mut cuts = torture_support::cut_policies(seeds, point, scale);
    if !every_reopen_cut() {
        cuts.truncate(4);
    }
    cuts
}

/// A reopened image's verdict: (acknowledged operations lost, problems).
type Verdict = (u64, Vec<String>);

/// The images of one crash point checked so far, by [`Fingerprint`], with
/// their verdicts: an image identical to one of them is not reopened
/// again and takes its verdict (unless `VOLMGR_SWEEP_EVERY_IMAGE=1`).
///
/// Why an identical image under the same expectations gets the same
/// verdict, so that skipping it loses nothing:
/// - the same expectations: one `Checked` serves one crash point of one
///   sweep, and every image of a crash point is checked against the same
///   model (what that one run acknowledged) by the same workload (its
///   provider flavor, checkpoint interval, streams); a new crash point, a
///   new run, starts an empty one, so nothing is compared across runs
///   whose acknowledgements differ;
/// - the same input: equal fingerprints are equal simulated file systems
///   (every name, inode number, byte, durable or not, queue, switch; see
///   [`Fingerprint`]), and the reopen reads nothing else: the manager's
///   journal and the provider's root are both on that storage, the
///   provider's configuration comes from the journal, and no state
///   outlives a reopen ([`reopened`] builds a new manager and provider on
///   the image);
/// - a deterministic reopen and check: recovery runs its steps one after
///   another (each provider in name order, decisions in order, one
///   blocking task at a time), and the checks run one verb at a time, so
///   the simulation sees the same calls in the same order. What differs
///   from one reopen to the next is no input to a verdict: fresh v4 UUIDs
///   (a trash entry's name, a receive's staging name, a journal identity
///   a cut lost), which name things that are renamed or removed as wholes
///   whatever their names, and clock readings (a record's `at_ms`, phase
///   timings) that no check reads. The only work a reopen runs side by
///   side is a batched round's `fsync`s on a few threads: a sync changes
///   what is durable, never what reads see, every one succeeds (nothing
///   is armed on an image) and the round waits for all of them, and no
///   check cuts the power after its reopen, so their order shows nowhere.
///
/// `VOLMGR_SWEEP_EVERY_IMAGE=1` tests that argument: every image is
/// reopened and a verdict that differs from its twin's is a disagreement.
struct Checked {
    /// Each image checked at this crash point: what it was, its verdict.
    verdicts: HashMap<Fingerprint, (String, Verdict)>,
    every_image: bool,
    /// The crash point, for messages.
    point: u64,
}

impl Checked {
    fn new(point: u64) -> Self {
        Checked {
            verdicts: HashMap::new(),
            every_image: every_image(),
            point,
        }
    }

    /// The verdict on `image` (`what` names it in messages): reopened and
    /// checked if it is the first of its kind at this crash point; else
    /// the earlier twin's, with `what` saying so. Counts into `out`.
    async fn verdict<W: Workload>(
        &mut self,
        w: &W,
        image: &SimStorage,
        model: &W::Model,
        what: String,
        out: &mut Swept,
    ) -> (String, Verdict) {
        let print = image.fingerprint();
        let Some((first, earlier)) = self.verdicts.get(&print) else {
            out.unique += 1;
            let verdict = reopened(w, image, model).await;
            self.verdicts.insert(print, (what.clone(), verdict.clone()));
            return (what, verdict);
        };
        let twin = format!("{what} (the same image as {first})");
        if !self.every_image {
            out.skipped += 1;
            return (twin, earlier.clone());
        }
        let (first, earlier) = (first.clone(), earlier.clone());
        let verdict = reopened(w, image, model).await;
        if verdict == earlier {
            return (twin, verdict);
        }
        let (lost, mut problems) = verdict;
        let differs =
            format!("its verdict differs from that of the same image ({first}): {earlier:?}");
        eprintln!("crash point {}, {twin}: {differs}", self.point);
        problems.push(differs);
        (twin, (lost, problems))
    }
}

/// Reopens `image` with `workload`'s provider and checks it.
async fn reopened<W: Workload>(w: &W, image: &SimStorage, model: &W::Model) -> (u64, Vec<String>) {
    let slot = Slot::default();
    match open(image, w.flavor(), &slot, w.checkpoint_every()).await {
        Err(e) => (0, vec![format!("open failed: {e}")]),
        Ok(m) => {
            let r = Reopened {
                m: &m,
                image,
                slot: &slot,
            };
            let found = w.check(&r, model).await;
            m.close().await;
            found
        }
    }
}

/// Crashes `w`'s workload at every sync point in turn (journal syncs, the
/// provider's file, directory and `syncfs` syncs; or at the crash points
/// [`Workload::arm`] counts), until a run makes fewer syncs than the crash
/// point (the whole run, the last point). Each crash
/// point gives these images, each reopened and checked:
/// - a kill -9 (the page cache survives, nothing lost but the process);
/// - a kill -9, then a reopen that reconciles and journals what it
///   resolved, then a power cut before anything else ran, keeping none,
///   all, or (one seed of each directory policy of
///   [`torture_support::cut_policies`]; all of its seeds with
///   `VOLMGR_REOPEN_CUTS_ALL=1`) a seeded part of what the reopen left
///   unsynced: what the reopen journaled must be on the disk with its
///   effects (a reopen once rolled forward a create whose directory the
///   killed process left in the page cache, which it never synced);
/// - a kill -9, then a power cut at each sync point of the reopen (its
///   recovery and its close; [`Workload::reopen_crashes`]), keeping none,
///   all, or a seeded part (the same choice of policies as above, other
///   seeds) of what was not durable: a hole in the order of the reopen's
///   own steps (the start's trash sweep, staging, the reconciliation's undo
///   and destroys, the resolution records) before its first whole sync.
///   A cut after the reopen cannot show one (the reopen's whole `syncfs`
///   made it all durable): the trash sweep removing a killed destroy's
///   marker before its move into the trash was durable
///   (`dir/trash.rs` `sweep`) gives 0 disagreements under the cuts after
///   the reopen, 4 and 10 (two runs; the concurrent workload moves the
///   crash points) in `torture_dir_powercut` under these, and 1 in
///   `torture_dir_receive_manager`'s power-cut sweep (durable on return
///   only, all at the reopen's 7th sync, nothing kept: the destroyed
///   volume's directory back without its marker; batched, the sweep's
///   marker removal only waits for the barrier's whole `syncfs`);
/// - power cuts by [`torture_support::cut_policies`] (none, all or a seeded
///   part of what was not durable kept).
///
/// An image identical to one already checked at the same crash point (a
/// seeded cut that drew the same choices, or had nothing not durable to
/// choose from: [`SimStorage::fingerprint`]) is not reopened again: it
/// takes that image's verdict ([`Checked`] says why that is sound;
/// `VOLMGR_SWEEP_EVERY_IMAGE=1` reopens it anyway and compares). Counted
/// in [`Swept::images`] all the same, and in [`Swept::skipped`].
pub async fn sweep<W: Workload>(w: &W, default_seed: u64) -> Swept {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(default_seed);
    let mut out = Swept {
        base_seed,
        scale,
        ..Swept::default()
    };
    let only = only_point();
    for point in 1..=100_000u64 {
        if only.is_some_and(|p| p != point) {
            if only.is_some_and(|p| p < point) {
                // The test's checks of a whole run cannot hold: show what
                // this point found.
                for f in &out.failures {
                    eprintln!("{f}");
                }
                out.one_point = true;
                return out;
            }
            continue;
        }
        let storage = w.storage();
        w.arm(&storage, point);
        let mut model = W::Model::default();
        if let Ok(m) = open(&storage, w.flavor(), &Slot::default(), w.checkpoint_every()).await {
            w.run(&m, &storage, &mut model).await;
            m.close().await;
        }
        let fired = storage.crashed();
        let tally = W::tally(&model);
        out.acked = out.acked.max(tally.acked);
        if !fired {
            out.whole_run_errors = tally.errors.clone();
        }
        out.points += 1;
        let mut checked = Checked::new(point);
        // A kill -9 ...
        let mut outcomes = vec![
            checked
                .verdict(
                    w,
                    &storage.restart(),
                    &model,
                    "kill -9".to_owned(),
                    &mut out,
                )
                .await,
        ];
        // ... a kill -9, a reopen that reconciles, then a power cut (scale
        // 0: the two fixed policies) ...
        let restarted = storage.restart();
        match open(
            &restarted,
            w.flavor(),
            &Slot::default(),
            w.checkpoint_every(),
        )
        .await
        {
            Ok(m) => {
                // Seeds apart from the plain cuts' (another image, the same
                // policies).
                let seeds = base_seed ^ REOPEN_SEED_SALT;
                for (seed, policy) in reopen_cuts(seeds, point, scale) {
                    let image = restarted.power_cut_with(seed, policy);
                    let what = format!("kill -9, reopen, then a cut (seed {seed:#x}, {policy:?})");
                    outcomes.push(checked.verdict(w, &image, &model, what, &mut out).await);
                }
                m.close().await;
            }
            Err(e) => outcomes.push((
                "kill -9, reopen".to_owned(),
                (0, vec![format!("reopen failed: {e}")]),
            )),
        }
        // ... a kill -9, then a power cut at each sync point of the reopen
        // (its recovery, then its close): none, all or a seeded part of what was not
        // durable kept ...
        for k in 1..=if w.reopen_crashes() { 1000u64 } else { 0 } {
            let restarted = storage.restart();
            restarted.crash_at_sync(Some(k));
            if let Ok(m) = open(
                &restarted,
                w.flavor(),
                &Slot::default(),
                w.checkpoint_every(),
            )
            .await
            {
                m.close().await;
            }
            if !restarted.crashed() {
                break;
            }
            out.reopen_points += 1;
            let seeds = base_seed ^ REOPEN_SYNC_SEED_SALT ^ (k << 40);
            for (seed, policy) in reopen_cuts(seeds, point, scale) {
                let image = restarted.power_cut_with(seed, policy);
                let what = format!(
                    "kill -9, a cut at sync {k} of the reopen (seed {seed:#x}, {policy:?})"
                );
                outcomes.push(checked.verdict(w, &image, &model, what, &mut out).await);
            }
        }
        // ... and power cuts.
        for (seed, policy) in torture_support::cut_policies(base_seed, point, scale) {
            let image = storage.power_cut_with(seed, policy);
            let what = format!("seed {seed:#x}, {policy:?}");
            outcomes.push(checked.verdict(w, &image, &model, what, &mut out).await);
        }
        for (what, (lost, problems)) in outcomes {
            out.images += 1;
            out.lost += lost;
            if !problems.is_empty() {
                out.disagreements += 1;
                out.failures.push(format!(
                    "crash point {point}, {what}: {}",
                    problems.join("; ")
                ));
            }
        }
        if !fired {
            return out;
        }
    }
    panic!("the workload still met its crash point after 100000 sync points");
}
