//! Power-cut sweep of the journal on the simulated file system.
//!
//! A workload of concurrent appenders (single appends and multi-record
//! `append_all` batches) over small segments, so it rotates often, with a
//! checkpoint every few rounds, so old checkpoints and covered segments are
//! deleted. It runs once per sync point N (every `sync_data`, `sync_all` and
//! `sync_dir` the journal makes, from the first open on): the Nth sync fails
//! and freezes the file system, then [`SimStorage::power_cut_with`] builds the
//! image a machine would find, under several policies and seeds (unsynced
//! sectors dropped, kept, or each dropped/kept/garbled; unsynced directory
//! changes forgotten, kept, or a random prefix kept). On every image:
//!
//! - open succeeds (a torn tail never makes it fail);
//! - every acknowledged record is replayed at the sequence number it was
//!   acknowledged with;
//! - what follows the last acknowledged record is a prefix of the requests
//!   that were in flight (unacknowledged), each contiguous and in order, only
//!   the last one possibly cut short: no holes, no garbage, no duplicates;
//! - the recovered journal accepts an append and a clean reopen replays it;
//! - a second cut at every sync point of that recovery (its torn-tail repair,
//!   temp-file cleanup, first segment) still reopens to the same guarantees.
//!
//! Prints `power-cut sweep: crash points N x seeds S = T, acknowledged records
//! lost 0, open failures 0`.
//!
//! The second sweep does the same to the manager (journal on `SimStorage`,
//! volumes on the simulated provider, which keeps its store across the cut:
//! it is a separate durable system): after every cut, open reconciles, and
//! the provider's tagged items must equal the state's volumes, nothing may
//! stay pending, no acknowledged create or destroy may be undone, and the
//! manager must take new operations. It prints `manager power-cut sweep: ...`,
//! whose `acknowledged operations lost` counts each acknowledged create whose
//! volume the reopened manager lacks or marks lost (or the provider no longer
//! holds), and each acknowledged destroy whose volume is back in the state or
//! on the provider: an effect gone after the cut is a lost operation, not only
//! a disagreement.
//! It runs twice: with the provider durable on return, and with batched
//! provider durability (the manager's shared provider sync is then a sync
//! point of the sweep like the journal's, and a cut keeps none, all, or a
//! seeded part of what the provider had not synced), likewise the kill then
//! power-cut sweep. Each crash point gets 2 fixed policies and 6
//! seeded ones; `VOLMGR_TORTURE_SCALE` multiplies the seeded ones.

mod torture_support;

use torture_support::manager_workload as mw;
use volmgr::provider::sim::{SimCut, SimProvider};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalRecord, LogEnd, Recovery};
use volmgr::storage::Storage;
use volmgr::storage::sim::{CutPolicy, DataLoss, DirLoss, SimStorage, SplitMix64};

const STATE_DIR: &str = "/state";
/// Appender tasks per round.
const TASKS: u8 = 3;
/// Requests per task per round.
const REQUESTS: u32 = 2;
const ROUNDS: u32 = 12;
/// A checkpoint after every this many rounds.
const CHECKPOINT_EVERY: u32 = 2;

/// (task, number): unique per record.
type Id = (u8, u32);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    task: u8,
    n: u32,
    pad: Vec<u8>,
}

impl Rec {
    fn id(&self) -> Id {
        (self.task, self.n)
    }
}

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        self.task
    }
}

fn config() -> JournalConfig {
    JournalConfig {
        segment_size: 4096,
        max_batch_bytes: 2048,
        queue_depth: 64,
    }
}

fn encode_ids(ids: &[Id]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 5);
    for (task, n) in ids {
        out.push(*task);
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

fn decode_ids(bytes: &[u8]) -> Option<Vec<Id>> {
    if !bytes.len().is_multiple_of(5) {
        return None;
    }
    Some(
        bytes
            .chunks(5)
            .map(|c| (c[0], u32::from_le_bytes([c[1], c[2], c[3], c[4]])))
            .collect(),
    )
}

/// The requests of one task in one round: each one `append_all` call.
fn requests(workload_seed: u64, task: u8, round: u32) -> Vec<Vec<Rec>> {
    let mut rng = SplitMix64::new(workload_seed ^ ((task as u64) << 40) ^ (round as u64));
    let mut n = round * 100;
    (0..REQUESTS)
        .map(|_| {
            let count = 1 + usize::try_from(rng.below(3)).unwrap();
            (0..count)
                .map(|_| {
                    n += 1;
                    Rec {
                        task,
                        n,
                        pad: vec![task; usize::try_from(rng.below(240)).unwrap()],
                    }
                })
                .collect()
        })
        .collect()
}

/// What one run of the workload saw.
#[derive(Debug, Default)]
struct Run {
    /// First sequence number of each acknowledged request -> its records.
    acked: BTreeMap<u64, Vec<Id>>,
    /// Requests that got an error: not acknowledged, possibly durable.
    in_flight: Vec<Vec<Id>>,
    checkpoints: u32,
}

impl Run {
    fn max_acked(&self) -> u64 {
        self.acked
            .iter()
            .next_back()
            .map_or(0, |(first, ids)| first + ids.len() as u64 - 1)
    }
}

/// Runs the workload until it ends or the storage freezes.
async fn run_workload(storage: &SimStorage, workload_seed: u64) -> Run {
    let mut run = Run::default();
    let journal = match Journal::<Rec>::open_with_storage(
        Arc::new(storage.clone()),
        Path::new(STATE_DIR),
        config(),
    ) {
        Ok((journal, _)) => Arc::new(journal),
        Err(_) => return run,
    };
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let in_flight = Arc::new(Mutex::new(Vec::new()));
    'rounds: for round in 1..=ROUNDS {
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let journal = journal.clone();
            let acked = acked.clone();
            let in_flight = in_flight.clone();
            tasks.push(tokio::spawn(async move {
                for request in requests(workload_seed, task, round) {
                    let ids: Vec<Id> = request.iter().map(Rec::id).collect();
                    if let Ok(first) = journal.append_all(&request).await {
                        acked.lock().unwrap().insert(first, ids);
                    } else {
                        in_flight.lock().unwrap().push(ids);
                        return false;
                    }
                }
                true
            }));
        }
        let mut all_ok = true;
        for t in tasks {
            all_ok &= t.await.unwrap();
        }
        if !all_ok {
            break 'rounds;
        }
        if round % CHECKPOINT_EVERY == 0 {
            let ids: Vec<Id> = acked.lock().unwrap().values().flatten().copied().collect();
            let seq = ids.len() as u64;
            assert_eq!(
                seq,
                journal.durable_seq(),
                "acknowledged records are contiguous"
            );
            if journal.checkpoint(seq, encode_ids(&ids)).await.is_err() {
                break 'rounds;
            }
            run.checkpoints += 1;
        }
    }
    journal.shutdown().await;
    drop(journal);
    run.acked = std::mem::take(&mut acked.lock().unwrap());
    run.in_flight = std::mem::take(&mut in_flight.lock().unwrap());
    run
}

/// The records a recovery replays: the checkpoint's ids, then the records.
fn replayed(recovery: &Recovery<Rec>) -> Result<Vec<Id>, String> {
    let mut ids = match &recovery.checkpoint {
        Some((seq, payload)) => {
            let ids = decode_ids(payload).ok_or("checkpoint payload does not decode")?;
            if ids.len() as u64 != *seq {
                return Err(format!("checkpoint at {seq} holds {} records", ids.len()));
            }
            ids
        }
        None => Vec::new(),
    };
    for (seq, rec) in &recovery.records {
        if *seq != ids.len() as u64 + 1 {
            return Err(format!(
                "record {seq} replayed after {} (a hole or a repeat)",
                ids.len()
            ));
        }
        ids.push(rec.id());
    }
    Ok(ids)
}

/// Checks a replay against the run: returns the acknowledged records lost
/// (with a few examples) and the other violations.
fn check_replay(run: &Run, ids: &[Id]) -> (u64, Vec<String>, Vec<String>) {
    let mut lost = 0;
    let mut examples = Vec::new();
    let mut problems = Vec::new();
    for (first, req) in &run.acked {
        for (i, id) in req.iter().enumerate() {
            let seq = first + i as u64;
            if ids.get(usize::try_from(seq).unwrap() - 1) != Some(id) {
                lost += 1;
                if examples.len() < 3 {
                    examples.push(format!(
                        "acknowledged {id:?} at {seq} replayed as {:?}",
                        ids.get(usize::try_from(seq).unwrap() - 1)
                    ));
                }
            }
        }
    }
    let max_acked = usize::try_from(run.max_acked()).unwrap();
    let extras = ids.get(max_acked..).unwrap_or(&[]);
    let mut used = BTreeSet::new();
    let mut at = 0;
    while at < extras.len() {
        let Some((i, req)) = run
            .in_flight
            .iter()
            .enumerate()
            .find(|(i, r)| !used.contains(i) && r.first() == Some(&extras[at]))
        else {
            problems.push(format!(
                "replayed {:?} after the acknowledged records is no in-flight request's start",
                extras[at]
            ));
            break;
        };
        used.insert(i);
        let k = req
            .iter()
            .zip(&extras[at..])
            .take_while(|(a, b)| a == b)
            .count();
        at += k;
        if k < req.len() && at < extras.len() {
            problems.push(format!(
                "in-flight request {req:?} replayed cut short ({k} records) with more after it"
            ));
            break;
        }
    }
    (lost, examples, problems)
}

#[derive(Debug, Default)]
struct Tally {
    images: u64,
    lost: u64,
    open_failures: u64,
    violations: u64,
    torn_tails: u64,
    recovery_cuts: u64,
    failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }
}

fn open_image(image: &SimStorage) -> Result<(Journal<Rec>, Recovery<Rec>), String> {
    Journal::<Rec>::open_with_storage(Arc::new(image.clone()), Path::new(STATE_DIR), config())
        .map_err(|e| e.to_string())
}

/// Opens an image and checks its replay; `Some(replayed ids)` when it opened.
fn verify_image(
    image: &SimStorage,
    run: &Run,
    tally: &mut Tally,
    label: &str,
) -> Option<(Journal<Rec>, Vec<Id>)> {
    let (journal, recovery) = match open_image(image) {
        Ok(x) => x,
        Err(e) => {
            tally.open_failures += 1;
            tally.fail(format!("{label}: open failed: {e}"));
            return None;
        }
    };
    if matches!(recovery.end, LogEnd::TornTail { .. }) {
        tally.torn_tails += 1;
    }
    let ids = match replayed(&recovery) {
        Ok(ids) => ids,
        Err(e) => {
            tally.violations += 1;
            tally.fail(format!("{label}: {e}"));
            return None;
        }
    };
    let (lost, examples, problems) = check_replay(run, &ids);
    tally.lost += lost;
    tally.violations += problems.len() as u64;
    if lost > 0 || !problems.is_empty() {
        tally.fail(format!(
            "{label}: {lost} acknowledged records lost ({}); {}",
            examples.join("; "),
            problems.join("; ")
        ));
    }
    Some((journal, ids))
}

/// The recovered journal takes an append, and a clean reopen replays it.
async fn check_continues(
    image: &SimStorage,
    journal: Journal<Rec>,
    ids: Vec<Id>,
    tally: &mut Tally,
    label: &str,
) {
    let probe = Rec {
        task: 200,
        n: 1,
        pad: vec![1; 50],
    };
    match journal.append(&probe).await {
        Ok(seq) if seq == ids.len() as u64 + 1 => {}
        other => {
            tally.violations += 1;
            tally.fail(format!("{label}: append after recovery gave {other:?}"));
            return;
        }
    }
    journal.close().await;
    match open_image(image) {
        Ok((journal, recovery)) => {
            let again = replayed(&recovery);
            let mut expected = ids;
            expected.push(probe.id());
            if recovery.end != LogEnd::Clean || again.as_ref() != Ok(&expected) {
                tally.violations += 1;
                tally.fail(format!(
                    "{label}: reopen after recovery: end {:?}, replay differs: {}",
                    recovery.end,
                    again.is_err()
                ));
            }
            journal.close().await;
        }
        Err(e) => {
            tally.open_failures += 1;
            tally.fail(format!("{label}: reopen after recovery failed: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_at_every_sync_point_loses_no_acknowledged_record_and_open_never_fails() {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(0x5EED_0001);
    let workload_seed = base_seed;
    let mut tally = Tally::default();
    let mut points = 0u64;
    let mut seeds_per_point = 0u64;
    let mut max_checkpoints = 0;
    for point in 1..=100_000u64 {
        let storage = SimStorage::new();
        storage.crash_at_sync(Some(point));
        let run = run_workload(&storage, workload_seed).await;
        let fired = storage.crashed();
        storage.freeze();
        max_checkpoints = max_checkpoints.max(run.checkpoints);
        points += 1;
        let policies = torture_support::cut_policies(base_seed, point, scale);
        seeds_per_point = policies.len() as u64;
        for (seed, policy) in policies {
            tally.images += 1;
            let label = format!("crash point {point}, seed {seed:#x}, {policy:?}");
            let image = storage.power_cut_with(seed, policy);
            let Some((journal, ids)) = verify_image(&image, &run, &mut tally, &label) else {
                continue;
            };
            let recovery_syncs = image.sync_points();
            check_continues(&image, journal, ids, &mut tally, &label).await;
            // A second cut at every sync point of the recovery itself.
            for k in 1..=recovery_syncs {
                let image = storage.power_cut_with(seed, policy);
                image.crash_at_sync(Some(k));
                if let Ok((journal, _)) = open_image(&image) {
                    journal.close().await;
                }
                let again = image.power_cut(seed ^ (k << 4));
                tally.recovery_cuts += 1;
                let label = format!("{label}, recovery cut at {k}");
                if let Some((journal, _)) = verify_image(&again, &run, &mut tally, &label) {
                    journal.close().await;
                }
            }
        }
        if !fired {
            // The workload ended before this sync point: the last cut was
            // after everything, and every sync point has been tried.
            break;
        }
    }
    println!(
        "power-cut sweep: crash points {points} x seeds {seeds_per_point} = {}, acknowledged records lost {}, open failures {}",
        tally.images, tally.lost, tally.open_failures
    );
    println!(
        "power-cut sweep detail: seed {base_seed:#x}, scale {scale}, torn tails repaired {}, cuts during recovery {}, checkpoints per run up to {max_checkpoints}, other violations {}",
        tally.torn_tails, tally.recovery_cuts, tally.violations
    );
    assert!(
        max_checkpoints >= 3,
        "the workload must delete checkpoints and segments"
    );
    assert!(
        tally.lost == 0 && tally.open_failures == 0 && tally.violations == 0,
        "first failures:\n{}",
        tally.failures.join("\n")
    );
}

/// Manager workload rounds per run.
const MANAGER_ROUNDS: u32 = 6;

/// The directory of the journal's `SimStorage` the batched simulated
/// provider syncs through, so its syncs are sync points of the sweep too.
const PROVIDER_SYNC_DIR: &str = "/provider";

/// A simulated provider for a sweep over `storage`: durable on return, or
/// with batched durability whose sync is one of `storage`'s sync points.
fn sweep_provider(storage: &SimStorage, batched: bool) -> SimProvider {
    let sim = SimProvider::new();
    if batched {
        storage
            .create_dir_all(Path::new(PROVIDER_SYNC_DIR))
            .expect("sim storage takes a directory");
        sim.set_batched(Some((Arc::new(storage.clone()), PROVIDER_SYNC_DIR.into())));
    }
    sim
}

/// What a cut with journal policy `policy` (seeded `seed`) does to the
/// provider's unsynced changes.
fn provider_cut(seed: u64, policy: CutPolicy) -> SimCut {
    match policy.data {
        DataLoss::DropAll => SimCut::DropUnsynced,
        DataLoss::KeepAll => SimCut::KeepUnsynced,
        DataLoss::Random => SimCut::Random(seed ^ 0xC07),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_power_cut_at_every_sync_point_keeps_provider_and_state_in_agreement() {
    for batched in [false, true] {
        manager_power_cut_sweep(batched).await;
    }
}

/// The manager sweep, with the provider durable on return or batched (its
/// shared sync a sync point like the journal's; a cut keeps none, all, or a
/// seeded part of what it had not synced).
async fn manager_power_cut_sweep(batched: bool) {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(0x5EED_0002);
    let (mut points, mut images, mut lost, mut open_failures, mut disagreements) =
        (0u64, 0, 0, 0, 0);
    let mut seeds_per_point = 0;
    let mut failures: Vec<String> = Vec::new();
    for point in 1..=100_000u64 {
        let storage = SimStorage::new();
        storage.crash_at_sync(Some(point));
        let sim = sweep_provider(&storage, batched);
        let mut model = mw::Model::default();
        if let Ok(m) = mw::open(
            Arc::new(storage.clone()),
            &mw::CountingProvider::new(sim.clone()),
        )
        .await
        {
            mw::run_ops(&m, MANAGER_ROUNDS, &mut model).await;
            m.close().await;
        }
        let fired = storage.crashed();
        storage.freeze();
        points += 1;
        let cuts = torture_support::cut_policies(base_seed, point, scale);
        seeds_per_point = cuts.len() as u64;
        for (seed, policy) in cuts {
            images += 1;
            let image = storage.power_cut_with(seed, policy);
            let sim = sim.power_cut_copy(provider_cut(seed, policy));
            let label = format!(
                "{} provider, crash point {point}, seed {seed:#x}, {policy:?}",
                if batched {
                    "batched"
                } else {
                    "durable-on-return"
                }
            );
            let m = match mw::open(Arc::new(image), &mw::CountingProvider::new(sim.clone())).await {
                Ok(m) => m,
                Err(e) => {
                    open_failures += 1;
                    failures.push(format!("{label}: open failed: {e}"));
                    continue;
                }
            };
            // Counted as the reopened manager reports them, before the probe
            // touches anything: a volume it marks lost is lost.
            // (The probe's agreement check lists them among the failures.)
            lost += mw::lost_acknowledged(&m, &sim, &model).len() as u64;
            let problems = mw::probe(&m, &sim, &model).await;
            if !problems.is_empty() {
                disagreements += 1;
                failures.push(format!("{label}: {}", problems.join("; ")));
            }
            m.close().await;
        }
        if !fired {
            break;
        }
    }
    let which = if batched {
        "batched provider sync"
    } else {
        "provider durable on return"
    };
    println!(
        "manager power-cut sweep ({which}): crash points {points} x seeds {seeds_per_point} = {images}, acknowledged operations lost {lost}, open failures {open_failures}, provider/state disagreements {disagreements}"
    );
    println!(
        "manager power-cut sweep detail: seed {base_seed:#x}, scale {scale}, rounds {MANAGER_ROUNDS}"
    );
    failures.truncate(10);
    assert!(
        lost == 0 && open_failures == 0 && disagreements == 0,
        "first failures:\n{}",
        failures.join("\n")
    );
}

/// Life 2 after a kill: reopens in the same boot (the page cache survived),
/// appends `count` records one by one; returns the ids it replayed and the
/// acknowledged (seq, id) pairs.
async fn second_life(
    storage: &SimStorage,
    count: u32,
) -> Result<(Vec<Id>, Vec<(u64, Id)>), String> {
    let (journal, recovery) = open_image(storage)?;
    let replay = replayed(&recovery)?;
    let mut acked = Vec::new();
    for n in 0..count {
        let rec = Rec {
            task: 100,
            n,
            pad: vec![100; (n as usize * 71) % 250],
        };
        let seq = journal
            .append(&rec)
            .await
            .map_err(|e| format!("second life append: {e}"))?;
        acked.push((seq, rec.id()));
    }
    journal.close().await;
    Ok((replay, acked))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_then_reopen_in_the_same_boot_then_power_cut_loses_nothing_either_life_acknowledged() {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(0x5EED_0004);
    let mut tally = Tally::default();
    let mut points = 0u64;
    let mut seeds_per_point = 0u64;
    for point in 1..=100_000u64 {
        let storage = SimStorage::new();
        storage.crash_at_sync(Some(point));
        let run = run_workload(&storage, base_seed).await;
        let fired = storage.crashed();
        let restarted = storage.restart();
        points += 1;
        let label = format!("kill at sync point {point}");
        let (replay, acked) = match second_life(&restarted, 12).await {
            Ok(x) => x,
            Err(e) => {
                tally.open_failures += 1;
                tally.fail(format!("{label}: second life: {e}"));
                continue;
            }
        };
        let (lost, examples, problems) = check_replay(&run, &replay);
        tally.lost += lost;
        tally.violations += problems.len() as u64;
        if lost > 0 || !problems.is_empty() {
            tally.fail(format!(
                "{label}: second life replay: {examples:?} {problems:?}"
            ));
        }
        let mut expected = replay.clone();
        expected.extend(acked.iter().map(|(_, id)| *id));
        let policies = torture_support::cut_policies(base_seed, point, scale);
        seeds_per_point = policies.len() as u64;
        for (seed, policy) in policies {
            tally.images += 1;
            let image = restarted.power_cut_with(seed, policy);
            let label = format!("{label}, then a cut with seed {seed:#x}, {policy:?}");
            let ids = match open_image(&image).and_then(|(_, r)| replayed(&r)) {
                Ok(ids) => ids,
                Err(e) => {
                    tally.open_failures += 1;
                    tally.fail(format!("{label}: {e}"));
                    continue;
                }
            };
            if ids.get(..expected.len()) != Some(&expected[..]) {
                let first_bad = expected
                    .iter()
                    .zip(&ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                let lost_here = (expected.len() - first_bad) as u64;
                tally.lost += lost_here;
                tally.fail(format!(
                    "{label}: the log the second life built on changed: {} of {} records kept (replayed {} in life 2, acknowledged {} more)",
                    first_bad,
                    expected.len(),
                    replay.len(),
                    acked.len()
                ));
            }
        }
        if !fired {
            break;
        }
    }
    println!(
        "kill then power-cut sweep: kill points {points} x seeds {seeds_per_point} = {}, acknowledged records lost {}, open failures {}",
        tally.images, tally.lost, tally.open_failures
    );
    assert!(
        tally.lost == 0 && tally.open_failures == 0 && tally.violations == 0,
        "first failures:\n{}",
        tally.failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_kill_then_power_cut_during_the_next_open_keeps_provider_and_state_in_agreement() {
    for batched in [false, true] {
        manager_kill_then_cut_sweep(batched).await;
    }
}

async fn manager_kill_then_cut_sweep(batched: bool) {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(0x5EED_0005);
    let (mut kills, mut cuts, mut images, mut lost, mut open_failures, mut disagreements) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    for point in 1..=100_000u64 {
        let storage = SimStorage::new();
        storage.crash_at_sync(Some(point));
        let sim = sweep_provider(&storage, batched);
        let mut model = mw::Model::default();
        if let Ok(m) = mw::open(
            Arc::new(storage.clone()),
            &mw::CountingProvider::new(sim.clone()),
        )
        .await
        {
            mw::run_ops(&m, MANAGER_ROUNDS, &mut model).await;
            m.close().await;
        }
        let fired = storage.crashed();
        storage.freeze();
        kills += 1;
        // The second life reopens in the same boot (reconciling against the
        // provider) and works; the power goes at each of its sync points.
        for k in 1..=1_000u64 {
            let second = storage.restart();
            second.crash_at_sync(Some(k));
            // Same boot: the provider keeps what it had not synced too.
            let sim2 = sim.deep_copy();
            if batched {
                sim2.set_sync_through(Some((Arc::new(second.clone()), PROVIDER_SYNC_DIR.into())));
            }
            if let Ok(m) = mw::open(
                Arc::new(second.clone()),
                &mw::CountingProvider::new(sim2.clone()),
            )
            .await
            {
                let _ = mw::probe(&m, &sim2, &model).await;
                m.close().await;
            }
            let fired2 = second.crashed();
            second.freeze();
            cuts += 1;
            let mut policies = vec![(
                0,
                CutPolicy {
                    data: DataLoss::DropAll,
                    dirs: DirLoss::ForgetAll,
                },
            )];
            for i in 0..scale {
                policies.push((base_seed ^ (point << 24) ^ (k << 8) ^ i, CutPolicy::RANDOM));
            }
            for (seed, policy) in policies {
                images += 1;
                let image = second.power_cut_with(seed, policy);
                let sim3 = sim2.power_cut_copy(provider_cut(seed, policy));
                let label = format!(
                    "kill at sync point {point}, cut at the next life's sync point {k}, seed {seed:#x}, {policy:?}"
                );
                match mw::open(Arc::new(image), &mw::CountingProvider::new(sim3.clone())).await {
                    Ok(m) => {
                        lost += mw::lost_acknowledged(&m, &sim3, &model).len() as u64;
                        let problems = mw::check_agreement(&m, &sim3, &model);
                        if !problems.is_empty() {
                            disagreements += 1;
                            failures.push(format!("{label}: {}", problems.join("; ")));
                        }
                        m.close().await;
                    }
                    Err(e) => {
                        open_failures += 1;
                        failures.push(format!("{label}: open failed: {e}"));
                    }
                }
            }
            if !fired2 {
                break;
            }
        }
        if !fired {
            break;
        }
    }
    println!(
        "manager kill then power-cut sweep ({}): kill points {kills}, cuts in the next life {cuts}, images {images}, acknowledged operations lost {lost}, open failures {open_failures}, provider/state disagreements {disagreements}",
        if batched {
            "batched provider sync"
        } else {
            "provider durable on return"
        }
    );
    failures.truncate(10);
    assert!(
        lost == 0 && open_failures == 0 && disagreements == 0,
        "first failures:\n{}",
        failures.join("\n")
    );
}
