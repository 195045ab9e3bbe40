//! The real directory provider under power cuts. Its create and destroy,
//! batched (no fsync of their own: barriers and one shared `syncfs`), run
//! through the manager on a simulated file system that holds both the
//! journal and the provider's root ([`DirProvider::simulated`]), with the
//! power cut at every sync point (journal fdatasyncs, directory fsyncs, the
//! provider's `syncfs`), each cut keeping none, all or a seeded part of what
//! was not durable, and once more as a kill -9 (the page cache survives).
//!
//! Property: after any cut and a reopen, every acknowledged create is a
//! whole volume in the state and on the provider, every acknowledged destroy
//! is gone from both, nothing is pending, lost, orphaned, half-made or
//! foreign (a directory of ours without its marker would be), no marker is
//! left of a volume whose create was acknowledged and which is gone (a
//! destroy that removed the tree before its marker's removal was durable
//! would leave one, unreachable by anything), the trash is empty, and every
//! id the run used can be destroyed and created again (no stale marker or
//! leftover directory blocks it), after which the trash is empty again (a
//! destroy's deferred tree removal happens before it is acknowledged).
//!
//! Prints `dir power-cut sweep (...): crash points P x images I = N,
//! acknowledged operations lost L, disagreements D`.

mod torture_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use volmgr::journal::JournalConfig;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{Durability, Presence, Provider, ProviderConfig, ProviderFactory};
use volmgr::state::{Meta, VolumeStatus};
use volmgr::storage::sim::SimStorage;

const STATE: &str = "/state";
const ROOT: &str = "/p";
const PROVIDER: &str = "p";
const ROUNDS: u32 = 3;

/// The provider each open builds, kept so the check can take its inventory.
type Slot = Arc<Mutex<Option<Arc<DirProvider>>>>;

fn factory(storage: &SimStorage, durability: Durability, slot: &Slot) -> ProviderFactory {
    let (storage, slot) = (storage.clone(), slot.clone());
    Arc::new(move |config: &ProviderConfig| {
        let root = config.get("root").cloned().unwrap_or_default();
        let p = Arc::new(DirProvider::simulated(
            PathBuf::from(root),
            storage.clone(),
            durability,
        )?);
        *slot.lock().unwrap() = Some(p.clone());
        Ok(p as Arc<dyn Provider>)
    })
}

async fn open(
    storage: &SimStorage,
    durability: Durability,
    slot: &Slot,
) -> Result<Manager, ManagerError> {
    let mut config = ManagerConfig {
        journal: JournalConfig {
            segment_size: 4096,
            max_batch_bytes: 2048,
            queue_depth: 64,
        },
        checkpoint_every: 7,
        storage: Some(Arc::new(storage.clone())),
        ..ManagerConfig::default()
    };
    config
        .factories
        .insert("dir".into(), factory(storage, durability, slot));
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

/// What the acknowledgements promise.
#[derive(Debug, Default)]
struct Model {
    must_exist: BTreeSet<String>,
    must_not_exist: BTreeSet<String>,
    /// Ids whose create was acknowledged.
    created: BTreeSet<String>,
    used: BTreeSet<String>,
    acked: u64,
}

impl Model {
    fn created(&mut self, id: &str, r: &Result<impl Sized, ManagerError>) {
        self.used.insert(id.to_owned());
        if r.is_ok() {
            self.acked += 1;
            self.must_exist.insert(id.to_owned());
            self.created.insert(id.to_owned());
        }
    }

    fn destroyed(&mut self, id: &str, r: &Result<impl Sized, ManagerError>) {
        match r {
            Ok(_) => {
                self.acked += 1;
                self.must_exist.remove(id);
                self.must_not_exist.insert(id.to_owned());
            }
            // It may have happened: no longer promised either way.
            Err(_) => {
                self.must_exist.remove(id);
            }
        }
    }
}

/// Three concurrent creates per round (they share barriers and syncs),
/// then two destroys: one of this round's, one of the previous round's.
async fn run(m: &Manager, model: &mut Model) {
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
        let gone = m.destroy_volume(&ids[1]).await;
        model.destroyed(&ids[1], &gone);
        if r > 0 {
            let old = format!("v{}c", r - 1);
            let gone = m.destroy_volume(&old).await;
            model.destroyed(&old, &gone);
        }
    }
}

/// (lost acknowledged operations, disagreements) after a reopen of `image`.
async fn check(image: &SimStorage, durability: Durability, model: &Model) -> (u64, Vec<String>) {
    let slot = Slot::default();
    let m = match open(image, durability, &slot).await {
        Ok(m) => m,
        Err(e) => return (0, vec![format!("open failed: {e}")]),
    };
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
    if !state.pending.is_empty() {
        problems.push(format!("{} operations pending", state.pending.len()));
    }
    if !state.orphans.is_empty() {
        problems.push(format!(
            "orphans {:?}",
            state.orphans.keys().collect::<Vec<_>>()
        ));
    }
    for v in state.volumes.values() {
        if v.status != VolumeStatus::Live {
            problems.push(format!("{} is {:?}", v.id, v.status));
        }
    }
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
    // A volume that was whole and is gone left no marker behind, and the
    // trash holds nothing after the start's sweep and the reconciliation.
    for id in model.created.difference(&in_state) {
        let marker = marker_path(id);
        if image.is_dir(&marker).is_some() {
            problems.push(format!(
                "{id} is gone but its marker {} is left",
                marker.display()
            ));
        }
    }
    let trash = trash_entries(image);
    if !trash.is_empty() {
        problems.push(format!("the trash holds {trash:?} after the reopen"));
    }
    // Every id the run used can be destroyed and made again.
    for id in &model.used {
        if in_state.contains(id)
            && let Err(e) = m.destroy_volume(id).await
        {
            problems.push(format!("destroying {id} after the reopen: {e}"));
            continue;
        }
        if let Err(e) = m.create_volume(PROVIDER, Some(id), Meta::new()).await {
            problems.push(format!("creating {id} again after the reopen: {e}"));
        }
    }
    let trash = trash_entries(image);
    if !trash.is_empty() {
        problems.push(format!(
            "the trash holds {trash:?} after acknowledged destroys"
        ));
    }
    m.close().await;
    (lost, problems)
}

fn marker_path(id: &str) -> PathBuf {
    Path::new(ROOT).join(".volmgr/data").join(id)
}

/// Every path under the provider's trash.
fn trash_entries(storage: &SimStorage) -> Vec<PathBuf> {
    let trash = Path::new(ROOT).join(".trash");
    storage
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(&trash) && *p != trash)
        .collect()
}

async fn sweep(durability: Durability) {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(0x5EED_D1D0);
    let (mut points, mut images, mut lost, mut disagreements, mut acked) = (0u64, 0u64, 0, 0, 0);
    let mut failures = Vec::new();
    for point in 1..=100_000u64 {
        let storage = SimStorage::new();
        storage.crash_at_sync(Some(point));
        let mut model = Model::default();
        let slot = Slot::default();
        if let Ok(m) = open(&storage, durability, &slot).await {
            run(&m, &mut model).await;
            m.close().await;
        }
        let fired = storage.crashed();
        acked = acked.max(model.acked);
        points += 1;
        // A kill -9 at this point (nothing lost but the process) ...
        let mut outcomes = vec![(
            "kill -9".to_owned(),
            check(&storage.restart(), durability, &model).await,
        )];
        // ... and power cuts.
        for (seed, policy) in torture_support::cut_policies(base_seed, point, scale) {
            let image = storage.power_cut_with(seed, policy);
            outcomes.push((
                format!("seed {seed:#x}, {policy:?}"),
                check(&image, durability, &model).await,
            ));
        }
        for (what, (l, problems)) in outcomes {
            images += 1;
            lost += l;
            if !problems.is_empty() {
                disagreements += 1;
                failures.push(format!(
                    "crash point {point}, {what}: {}",
                    problems.join("; ")
                ));
            }
        }
        if !fired {
            break;
        }
    }
    println!(
        "dir power-cut sweep ({durability:?}): crash points {points}, images {images}, \
         operations acknowledged by a whole run {acked}, acknowledged operations lost {lost}, \
         disagreements {disagreements} (seed {base_seed:#x}, scale {scale})"
    );
    assert!(
        acked >= u64::from(ROUNDS) * 4,
        "the whole run acknowledged only {acked} operations: the workload did not run"
    );
    failures.truncate(10);
    assert!(
        lost == 0 && disagreements == 0,
        "first failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_dir_provider_survives_a_power_cut_at_every_sync_point() {
    sweep(Durability::Batched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_on_return_dir_provider_survives_a_power_cut_at_every_sync_point() {
    sweep(Durability::OnReturn).await;
}
