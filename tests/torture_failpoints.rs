//! Failpoints: every injectable failure at every occurrence over a workload.
//!
//! Three families, each run once per (failpoint, trigger), where the trigger
//! is the Nth occurrence of the call over the workload (a dry run counts them):
//!
//! 1. Journal storage calls (write, fdatasync, fsync, rename, directory sync,
//!    create, remove, allocate) failing with `EIO` once, or with `ENOSPC`
//!    from then on, through `FaultyStorage` over `SimStorage`, under
//!    concurrent appenders with rotation and checkpoints. Plus a real full
//!    disk: `SimStorage` capacities from empty to the workload's peak.
//! 2. The same storage failpoints under the manager, and every simulated
//!    provider call (create, snapshot, fork, destroy, send, receive,
//!    inventory) failing before or after its side effect; all of it twice:
//!    with the provider durable on return, and with batched provider
//!    durability, where the shared provider sync fails too (before or after
//!    it made the changes durable) and a power cut takes a seeded part of
//!    what the provider had not synced.
//!
//! After each run the faults are disarmed (space freed) and the state
//! directory is reopened twice: as the process left it (poison, then reopen
//! and replay) and after a power cut (a failed sync, then the power goes).
//! Violations counted:
//! - an acknowledged append missing (or moved) after reopen: Ok for a lost write;
//! - an append (or manager operation) acknowledged after the first journal
//!   failure: the journal must be poisoned (attempted vs accepted is counted);
//! - a reopen that fails, or replays a record that was never appended, twice,
//!   or out of order;
//! - after reopen and reconciliation, the provider's tagged items differ from
//!   the state's volumes, something stays pending, or an acknowledged create
//!   or destroy is undone, or the reopened manager refuses new operations.
//!
//! Prints `failpoints: combinations N, violations 0`.

mod torture_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use torture_support::manager_workload as mw;
use volmgr::journal::{Journal, JournalConfig, JournalRecord};
use volmgr::provider::sim::{SimCall, SimCut, SimFault, SimProvider, When};
use volmgr::storage::Storage;
use volmgr::storage::fault::{FaultKind, FaultOp, FaultPlan, FaultyStorage};
use volmgr::storage::sim::SimStorage;

const STATE_DIR: &str = "/state";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    task: u8,
    n: u32,
    pad: Vec<u8>,
}

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        self.task
    }
}

type Id = (u8, u32);

fn journal_config() -> JournalConfig {
    JournalConfig {
        segment_size: 4096,
        max_batch_bytes: 2048,
        queue_depth: 64,
    }
}

const TASKS: u8 = 2;
const APPENDS: u32 = 3;
const ROUNDS: u32 = 10;

/// What a journal run saw.
#[derive(Debug, Default)]
struct JournalRun {
    acked: BTreeMap<u64, Id>,
    attempted: BTreeSet<Id>,
    attempted_after_failure: u64,
    accepted_after_failure: u64,
    peak_bytes: u64,
    /// Appends and checkpoints that returned an error.
    errors: u64,
}

/// Concurrent appenders, a checkpoint every other round; keeps going after
/// failures so a poisoned journal is asked for more.
async fn journal_workload(storage: Arc<dyn Storage>, sim: &SimStorage) -> JournalRun {
    let mut run = JournalRun::default();
    let Ok((journal, _)) =
        Journal::<Rec>::open_with_storage(storage, Path::new(STATE_DIR), journal_config())
    else {
        return run;
    };
    let journal = Arc::new(journal);
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let after = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let errors = Arc::new(AtomicU64::new(0));
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (journal, acked, attempted, failed, after, errors) = (
                journal.clone(),
                acked.clone(),
                attempted.clone(),
                failed.clone(),
                after.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..APPENDS {
                    let n = round * 100 + i;
                    let rec = Rec {
                        task,
                        n,
                        pad: vec![task; (n as usize * 37) % 300],
                    };
                    attempted.lock().unwrap().insert((task, n));
                    let started_after_failure = failed.load(Ordering::SeqCst);
                    if started_after_failure {
                        after.0.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(seq) = journal.append(&rec).await {
                        if started_after_failure {
                            after.1.fetch_add(1, Ordering::SeqCst);
                        }
                        acked.lock().unwrap().insert(seq, (task, n));
                    } else {
                        errors.fetch_add(1, Ordering::SeqCst);
                        failed.store(true, Ordering::SeqCst);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        run.peak_bytes = run.peak_bytes.max(sim.used_bytes());
        if round % 2 == 1 {
            // Checkpoint the contiguous acknowledged prefix.
            let ids: Vec<Id> = {
                let acked = acked.lock().unwrap();
                acked
                    .iter()
                    .enumerate()
                    .take_while(|(i, (seq, _))| **seq == *i as u64 + 1)
                    .map(|(_, (_, id))| *id)
                    .collect()
            };
            if journal
                .checkpoint(ids.len() as u64, encode_ids(&ids))
                .await
                .is_err()
            {
                errors.fetch_add(1, Ordering::SeqCst);
            }
            run.peak_bytes = run.peak_bytes.max(sim.used_bytes());
        }
    }
    journal.shutdown().await;
    run.acked = std::mem::take(&mut acked.lock().unwrap());
    run.attempted = std::mem::take(&mut attempted.lock().unwrap());
    run.attempted_after_failure = after.0.load(Ordering::SeqCst);
    run.accepted_after_failure = after.1.load(Ordering::SeqCst);
    run.errors = errors.load(Ordering::SeqCst);
    run
}

fn encode_ids(ids: &[Id]) -> Vec<u8> {
    ids.iter()
        .flat_map(|(t, n)| std::iter::once(*t).chain(n.to_le_bytes()))
        .collect()
}

fn decode_ids(bytes: &[u8]) -> Vec<Id> {
    bytes
        .chunks(5)
        .map(|c| (c[0], u32::from_le_bytes([c[1], c[2], c[3], c[4]])))
        .collect()
}

/// Reopens an image and checks the replay against the run.
fn check_journal_image(image: &SimStorage, run: &JournalRun) -> Vec<String> {
    let (journal, recovery) = match Journal::<Rec>::open_with_storage(
        Arc::new(image.clone()),
        Path::new(STATE_DIR),
        journal_config(),
    ) {
        Ok(x) => x,
        Err(e) => return vec![format!("reopen failed: {e}")],
    };
    let mut problems = Vec::new();
    let mut ids = recovery
        .checkpoint
        .as_ref()
        .map_or_else(Vec::new, |(_, p)| decode_ids(p));
    for (seq, rec) in &recovery.records {
        if *seq != ids.len() as u64 + 1 {
            problems.push(format!("record {seq} replayed after {}", ids.len()));
        }
        ids.push((rec.task, rec.n));
    }
    for (seq, id) in &run.acked {
        if ids.get(usize::try_from(*seq).unwrap() - 1) != Some(id) {
            problems.push(format!(
                "acknowledged {id:?} at {seq} replayed as {:?}",
                ids.get(usize::try_from(*seq).unwrap() - 1)
            ));
            break;
        }
    }
    let mut seen = BTreeSet::new();
    for id in &ids {
        if !run.attempted.contains(id) || !seen.insert(*id) {
            problems.push(format!("replayed {id:?}: never appended, or twice"));
            break;
        }
    }
    drop(journal);
    problems
}

/// Checks a finished journal run: poison held, and both reopens are right.
fn check_journal_run(storage: &SimStorage, run: &JournalRun, seed: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if run.accepted_after_failure > 0 {
        problems.push(format!(
            "{} of {} appends started after a failure were acknowledged",
            run.accepted_after_failure, run.attempted_after_failure
        ));
    }
    let live = storage.restart();
    let cut = storage.power_cut(seed);
    for (what, image) in [("as left", live), ("after a power cut", cut)] {
        for p in check_journal_image(&image, run) {
            problems.push(format!("{what}: {p}"));
        }
    }
    problems
}

#[derive(Debug, Default)]
struct Tally {
    combinations: u64,
    violations: u64,
    fired: u64,
    attempted_after_failure: u64,
    accepted_after_failure: u64,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, label: &str, problems: &[String]) {
        self.combinations += 1;
        self.violations += problems.len() as u64;
        if !problems.is_empty() && self.failures.len() < 10 {
            self.failures
                .push(format!("{label}: {}", problems.join("; ")));
        }
    }
}

/// The plans tried for an operation seen `count` times in a dry run.
fn plans(op: FaultOp, count: u64) -> Vec<FaultPlan> {
    let mut out = Vec::new();
    for nth in 1..=count {
        out.push(FaultPlan {
            op,
            nth,
            sticky: false,
            kind: FaultKind::Io,
        });
        // A full disk stays full, and only calls that take space see it.
        if matches!(op, FaultOp::Write | FaultOp::Create | FaultOp::Allocate) {
            out.push(FaultPlan {
                op,
                nth,
                sticky: true,
                kind: FaultKind::NoSpace,
            });
        }
    }
    out
}

/// Counts each storage call of a dry run.
fn dry_counts(faulty: &FaultyStorage) -> BTreeMap<String, (FaultOp, u64)> {
    FaultOp::ALL
        .iter()
        .map(|op| (format!("{op:?}"), (*op, faulty.calls(*op))))
        .collect()
}

async fn journal_failpoints(tally: &mut Tally, base_seed: u64, scale: u64) {
    let sim = SimStorage::new();
    let faulty = FaultyStorage::new(Arc::new(sim.clone()));
    let dry = journal_workload(Arc::new(faulty.clone()), &sim).await;
    assert!(u32::try_from(dry.acked.len()).unwrap() == TASKS as u32 * APPENDS * ROUNDS);
    let counts = dry_counts(&faulty);
    let mut i = 0u64;
    for (op, count) in counts.values() {
        for plan in plans(*op, *count) {
            for s in 0..scale {
                i += 1;
                let sim = SimStorage::new();
                let faulty = FaultyStorage::new(Arc::new(sim.clone()));
                faulty.set_plan(Some(plan.clone()));
                let run = journal_workload(Arc::new(faulty.clone()), &sim).await;
                tally.fired += u64::from(run.errors > 0);
                tally.attempted_after_failure += run.attempted_after_failure;
                tally.accepted_after_failure += run.accepted_after_failure;
                let seed = base_seed ^ (i << 16) ^ s;
                let problems = check_journal_run(&sim, &run, seed);
                tally.record(&format!("journal {plan:?}, seed {seed:#x}"), &problems);
            }
        }
    }
    // A real full disk: every capacity from nothing to the dry run's peak.
    let steps = 24 * scale;
    for k in 0..steps {
        let cap = dry.peak_bytes * k / steps;
        let sim = SimStorage::new();
        sim.set_capacity(Some(cap));
        let run = journal_workload(Arc::new(sim.clone()), &sim).await;
        sim.set_capacity(None);
        tally.attempted_after_failure += run.attempted_after_failure;
        tally.accepted_after_failure += run.accepted_after_failure;
        let seed = base_seed ^ 0xCAFE ^ k;
        let problems = check_journal_run(&sim, &run, seed);
        tally.record(
            &format!("journal capacity {cap} bytes, seed {seed:#x}"),
            &problems,
        );
    }
}

/// A failed sync with Linux write-back error semantics at every sync point
/// (the unsynced changes stay visible but are never written), then a reopen
/// in the same boot that appends more, then a power cut: the records the
/// second life acknowledged must survive, and so must the first life's.
async fn journal_write_back_errors(tally: &mut Tally, base_seed: u64, scale: u64) {
    let dry = SimStorage::new();
    journal_workload(Arc::new(dry.clone()), &dry).await;
    let sync_points = dry.sync_points();
    for n in 1..=sync_points {
        let sim = SimStorage::new();
        sim.fail_sync_at(Some(n));
        let mut run = journal_workload(Arc::new(sim.clone()), &sim).await;
        sim.fail_sync_at(None);
        let mut problems = Vec::new();
        if run.accepted_after_failure > 0 {
            problems.push(format!(
                "{} appends acknowledged after a failed sync",
                run.accepted_after_failure
            ));
        }
        // The second life, same boot: reopen, replay, append.
        match Journal::<Rec>::open_with_storage(
            Arc::new(sim.clone()),
            Path::new(STATE_DIR),
            journal_config(),
        ) {
            Ok((journal, _)) => {
                for i in 0..40u32 {
                    let rec = Rec {
                        task: 9,
                        n: i,
                        pad: vec![9; (i as usize * 53) % 200],
                    };
                    run.attempted.insert((9, i));
                    match journal.append(&rec).await {
                        Ok(seq) => {
                            run.acked.insert(seq, (9, i));
                        }
                        Err(e) => {
                            problems.push(format!("second life append failed: {e}"));
                            break;
                        }
                    }
                }
                journal.close().await;
            }
            Err(e) => problems.push(format!("reopen in the same boot failed: {e}")),
        }
        for s in 0..2 * scale {
            let seed = base_seed ^ (n << 16) ^ s;
            let image = sim.power_cut(seed);
            for p in check_journal_image(&image, &run) {
                problems.push(format!("after a power cut (seed {seed:#x}): {p}"));
            }
        }
        tally.attempted_after_failure += run.attempted_after_failure;
        tally.fired += u64::from(run.errors > 0);
        tally.record(
            &format!("journal write-back error at sync point {n}"),
            &problems,
        );
    }
}

/// A fault for one manager run: in the journal's storage or in the provider.
#[derive(Debug, Clone)]
enum Fault {
    /// A failed sync with Linux write-back error semantics at this sync point.
    WriteBack(u64),
    Storage(FaultPlan),
    Provider(SimFault),
}

/// Sets up a state directory with the provider registered, then runs the
/// manager workload with `fault` armed from the second open on.
async fn manager_run(
    fault: Option<&Fault>,
    seed: u64,
    batched: bool,
) -> (
    Vec<String>,
    mw::Model,
    BTreeMap<String, (FaultOp, u64)>,
    mw::CountingProvider,
    u64,
) {
    let sim_storage = SimStorage::new();
    let faulty = FaultyStorage::new(Arc::new(sim_storage.clone()));
    let sim = SimProvider::new();
    if batched {
        sim.set_batched(None);
    }
    let setup = mw::open(
        Arc::new(faulty.clone()),
        &mw::CountingProvider::new(sim.clone()),
    )
    .await
    .expect("setup opens");
    setup.close().await;

    let provider = mw::CountingProvider::new(sim.clone());
    match fault {
        Some(Fault::Storage(plan)) => faulty.set_plan(Some(plan.clone())),
        Some(Fault::Provider(f)) => sim.set_fault(Some(*f)),
        Some(Fault::WriteBack(n)) => sim_storage.fail_sync_at(Some(*n)),
        None => {}
    }
    let mut model = mw::Model::default();
    if let Ok(m) = mw::open(Arc::new(faulty.clone()), &provider).await {
        mw::run_ops(&m, ROUNDS_MANAGER, &mut model).await;
        m.close().await;
    }
    let storage_calls = dry_counts(&faulty);
    let sync_points = sim_storage.sync_points();
    faulty.set_plan(None);
    sim.set_fault(None);

    let mut problems = Vec::new();
    if model.accepted_after_failure > 0 {
        problems.push(format!(
            "{} of {} operations started after a journal failure were acknowledged",
            model.accepted_after_failure, model.attempted_after_failure
        ));
    }
    sim_storage.fail_sync_at(None);
    // Reopen as the process left it (same boot), work, and lose power then;
    // and, against the provider as the run left it, after a power cut.
    // A power cut takes what the provider had not synced (each change kept
    // or lost by the seed); a provider durable on return keeps everything.
    let provider_then = sim.power_cut_copy(SimCut::Random(seed));
    let same_boot = sim_storage.restart();
    let cut = sim_storage.power_cut(seed);
    let mut lives = vec![("as left", same_boot.clone(), sim.clone())];
    if let Ok(m) = mw::open(
        Arc::new(same_boot.clone()),
        &mw::CountingProvider::new(sim.clone()),
    )
    .await
    {
        for p in mw::probe(&m, &sim, &model).await {
            problems.push(format!("as left: {p}"));
        }
        m.close().await;
        lives = vec![(
            "as left, worked on, then a power cut",
            same_boot.power_cut(seed ^ 1),
            sim.power_cut_copy(SimCut::Random(seed ^ 1)),
        )];
    }
    lives.push(("after a power cut", cut, provider_then));
    for (what, image, sim) in lives {
        sim.set_fault(None);
        match mw::open(Arc::new(image), &mw::CountingProvider::new(sim.clone())).await {
            Ok(m) => {
                for p in mw::probe(&m, &sim, &model).await {
                    problems.push(format!("{what}: {p}"));
                }
                m.close().await;
            }
            Err(e) => problems.push(format!("{what}: reopen failed: {e}")),
        }
    }
    (problems, model, storage_calls, provider, sync_points)
}

const ROUNDS_MANAGER: u32 = 3;

/// The manager failpoints, with the provider durable on return or with
/// batched durability (then its shared sync is a failpoint too).
async fn manager_failpoints(tally: &mut Tally, base_seed: u64, scale: u64, batched: bool) {
    let (problems, model, storage_calls, provider, sync_points) =
        manager_run(None, base_seed, batched).await;
    assert!(problems.is_empty(), "dry run: {problems:?}");
    assert!(model.errors == 0 && model.acked > 0, "dry run: {model:?}");
    assert_eq!(
        (model.suspended, model.resumed),
        (u64::from(ROUNDS_MANAGER), u64::from(ROUNDS_MANAGER)),
        "dry run: every round cuts a receive short and resumes it: {model:?}"
    );
    let mut faults = Vec::new();
    for (op, count) in storage_calls.values() {
        faults.extend(plans(*op, *count).into_iter().map(Fault::Storage));
    }
    for call in [
        SimCall::Create,
        SimCall::Snapshot,
        SimCall::Fork,
        SimCall::Destroy,
        SimCall::Send,
        SimCall::Receive,
        SimCall::Inventory,
        SimCall::Sync,
    ] {
        for nth in 1..=provider.calls(call) {
            for when in [When::Before, When::After] {
                faults.push(Fault::Provider(SimFault { call, when, nth }));
            }
        }
    }
    faults.extend((1..=sync_points).map(Fault::WriteBack));
    let mut i = 0u64;
    for fault in &faults {
        for s in 0..scale {
            i += 1;
            let seed = base_seed ^ (i << 16) ^ s;
            let (problems, model, _, _, _) = manager_run(Some(fault), seed, batched).await;
            tally.attempted_after_failure += model.attempted_after_failure;
            tally.accepted_after_failure += model.accepted_after_failure;
            tally.fired += u64::from(model.errors > 0);
            let which = if batched { "batched" } else { "on return" };
            tally.record(
                &format!("manager ({which}) {fault:?}, seed {seed:#x}"),
                &problems,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failpoint_at_every_trigger_loses_nothing_acknowledged_and_poisons_the_journal() {
    let scale = torture_support::scale();
    let base_seed = torture_support::seed(0x5EED_0003);
    let mut tally = Tally::default();
    journal_failpoints(&mut tally, base_seed, scale).await;
    journal_write_back_errors(&mut tally, base_seed, scale).await;
    let journal_combinations = tally.combinations;
    manager_failpoints(&mut tally, base_seed, scale, false).await;
    manager_failpoints(&mut tally, base_seed, scale, true).await;
    println!(
        "failpoints: combinations {}, violations {}",
        tally.combinations, tally.violations
    );
    println!(
        "failpoints detail: seed {base_seed:#x}, scale {scale}, journal {journal_combinations}, manager {}, runs where an operation failed {}, requests started after the first journal failure {} (accepted {})",
        tally.combinations - journal_combinations,
        tally.fired,
        tally.attempted_after_failure,
        tally.accepted_after_failure
    );
    assert!(
        tally.violations == 0,
        "first failures:\n{}",
        tally.failures.join("\n")
    );
}
