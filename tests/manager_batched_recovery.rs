//! Recovery on a provider with batched durability: at open, every
//! resolution's side effect runs first, then ONE provider sync covers them
//! all, and only then are the resolutions journaled. One sync per resolution
//! would make a restart with many pending operations cost as many syncs; a
//! record journaled before its effect's sync could, after a power cut, claim
//! an effect the provider no longer holds. Likewise the resolution records
//! go to the journal in runs as large as its batch limit allows: one journal
//! sync per resolution would make the same restart cost as many fdatasyncs.

use std::collections::BTreeMap;
use std::path::Path;

use volmgr::journal::{Journal, JournalConfig, encode_record, format};
use volmgr::manager::{Manager, ManagerError};
use volmgr::provider::sim::{SimCall, SimCut, SimFault, SimProvider, When};
use volmgr::provider::{Presence, Provider};
use volmgr::state::{Action, Done, Effect, Meta, OpResult, Record, VolumeKind};

#[path = "common/sim_journal.rs"]
mod sim_journal;
use sim_journal::{T0, config, op, provider_records};

/// Pending creates whose volume the provider holds half-made (each is
/// finished at open) and pending destroys of volumes it holds (each is
/// destroyed at open): every one a resolution that changes the provider.
const HALF_MADE: u128 = 6;
const DESTROYING: u128 = 3;

fn created(n: u128) -> String {
    format!("c{n}")
}

fn destroyed(n: u128) -> String {
    format!("d{n}")
}

/// `n` pending creates (volumes `c0`.., ops from `first_op`) whose volume
/// `sim` holds half-made: each is finished at open.
fn pending_half_made_creates(
    sim: &SimProvider,
    records: &mut Vec<Record>,
    n: u128,
    first_op: u128,
) {
    for i in 0..n {
        let n = first_op + i;
        records.push(Record::Intent {
            op: op(n),
            at_ms: T0,
            action: Action::CreateVolume {
                provider: "p".into(),
                volume: created(i),
                meta: Meta::new(),
            },
        });
        sim.plant_orphan(&created(i), op(n), VolumeKind::Data, false);
    }
}

/// A journal as a killed process leaves it (provider `p` registered, every
/// operation pending), and a batched provider holding what those operations
/// did before the kill, all of it durable.
async fn killed_mid_operations(dir: &Path) -> SimProvider {
    let sim = SimProvider::new();
    let mut records = provider_records();
    pending_half_made_creates(&sim, &mut records, HALF_MADE, 100);
    for i in 0..DESTROYING {
        let (made, destroying) = (200 + i, 300 + i);
        records.extend([
            Record::Intent {
                op: op(made),
                at_ms: T0,
                action: Action::CreateVolume {
                    provider: "p".into(),
                    volume: destroyed(i),
                    meta: Meta::new(),
                },
            },
            Record::Outcome {
                op: op(made),
                at_ms: T0,
                result: OpResult::Done(Done {
                    location: format!("sim://{}", destroyed(i)),
                    details: BTreeMap::new(),
                }),
            },
            Record::Intent {
                op: op(destroying),
                at_ms: T0,
                action: Action::DestroyVolume {
                    volume: destroyed(i),
                },
            },
        ]);
        sim.plant_orphan(&destroyed(i), op(made), VolumeKind::Data, true);
    }
    let (journal, _) = Journal::<Record>::open(dir, JournalConfig::default()).unwrap();
    for r in &records {
        journal.append(r).await.unwrap();
    }
    journal.close().await;
    // What exists now is durable; from here on, changes wait for a sync.
    sim.set_batched(None);
    sim
}

/// The resolution records of the journal in `dir`.
fn resolutions(dir: &Path) -> usize {
    let (_journal, recovery) = Journal::<Record>::open(dir, JournalConfig::default()).unwrap();
    recovery
        .records
        .iter()
        .filter(|(_, r)| matches!(r, Record::Reconciled { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_syncs_a_batched_provider_once_for_all_its_resolutions() {
    let dir = tempfile::tempdir().unwrap();
    let sim = killed_mid_operations(dir.path()).await;
    sim.set_fault(None); // counts calls from here
    let m = Manager::open(dir.path(), config(&sim)).await.unwrap();
    assert!(m.state().pending.is_empty(), "every operation resolved");
    let resolved = HALF_MADE + DESTROYING;
    assert_eq!(m.reconcile_report().resolutions.len() as u128, resolved);
    assert_eq!(
        sim.calls(SimCall::Sync),
        2,
        "one sync before the inventory and one for all {resolved} resolutions \
         (one per resolution would be {})",
        resolved + 1
    );
    m.close().await;
    assert_eq!(resolutions(dir.path()) as u128, resolved);
    // What the journal now says is durable on the provider: a power cut
    // that takes every unsynced change leaves exactly the finished volumes,
    // complete, and none of the destroyed ones.
    let cut = sim.power_cut_copy(SimCut::DropUnsynced);
    let found = cut.inventory().unwrap();
    let mut names: Vec<String> = found
        .iter()
        .filter_map(|f| f.tag.as_ref().map(|t| t.volume.clone()))
        .collect();
    names.sort();
    assert_eq!(names, (0..HALF_MADE).map(created).collect::<Vec<_>>());
    assert!(
        found.iter().all(|f| f.presence == Presence::Complete),
        "finished before the sync: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_after_the_resolutions_journals_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let sim = killed_mid_operations(dir.path()).await;
    // Sync #1 runs before the inventory; #2 is the one covering the
    // resolutions' effects.
    sim.set_fault(Some(SimFault {
        call: SimCall::Sync,
        when: When::Before,
        nth: 2,
    }));
    let m = Manager::open(dir.path(), config(&sim)).await.unwrap();
    assert_eq!(sim.calls(SimCall::Sync), 2);
    assert_eq!(
        m.state().pending.len() as u128,
        HALF_MADE + DESTROYING,
        "nothing resolved: the effects may not be durable"
    );
    assert!(m.reconcile_report().resolutions.is_empty());
    let next = m.create_volume("p", Some("w"), Meta::new()).await;
    assert!(
        matches!(next, Err(ManagerError::ProviderUnavailable { .. })),
        "the provider is out of service until a reopen: {next:?}"
    );
    m.close().await;
    assert_eq!(resolutions(dir.path()), 0, "no resolution journaled");

    // The next open decides from what the provider durably holds.
    sim.set_fault(None);
    let m = Manager::open(dir.path(), config(&sim)).await.unwrap();
    assert!(m.state().pending.is_empty(), "every operation resolved");
    let mut live: Vec<String> = m.state().volumes.keys().cloned().collect();
    live.sort();
    assert_eq!(live, (0..HALF_MADE).map(created).collect::<Vec<_>>());
    m.create_volume("p", Some("w"), Meta::new())
        .await
        .expect("the provider serves again");
    m.close().await;
}

/// A journal as a process killed under load leaves it: `n` creates pending
/// on a batched provider that holds each volume half-made (finished at open).
async fn killed_with_pending_creates(dir: &Path, n: u128) -> SimProvider {
    let sim = SimProvider::new();
    let mut records = provider_records();
    pending_half_made_creates(&sim, &mut records, n, 1000);
    let (journal, _) = Journal::<Record>::open(dir, JournalConfig::default()).unwrap();
    journal.append_all(&records).await.unwrap();
    journal.close().await;
    sim.set_batched(None);
    sim
}

/// Opens a manager over `n` pending creates with journal `limits`, and checks
/// that every one is resolved with at most as many journal syncs as runs of
/// records filling the journal's batch limit need (far fewer than `n`), and
/// that the journal holds the resolutions in the order they were reported.
async fn resolve_pending_in_few_journal_syncs(n: u128, limits: JournalConfig) {
    let dir = tempfile::tempdir().unwrap();
    let sim = killed_with_pending_creates(dir.path(), n).await;
    let mut cfg = config(&sim);
    cfg.journal = limits.clone();
    let m = Manager::open(dir.path(), cfg).await.unwrap();
    assert!(m.state().pending.is_empty(), "every operation resolved");
    assert_eq!(m.reconcile_report().resolutions.len() as u128, n);
    let journal_syncs = m.stats().syncs;
    let reported: Vec<String> = m
        .reconcile_report()
        .resolutions
        .iter()
        .map(|(_, volume, _)| volume.clone().expect("a create names its volume"))
        .collect();
    let live: Vec<String> = m.state().volumes.keys().cloned().collect();
    m.close().await;

    // What was journaled: the resolutions in the reported order, and how
    // many bytes of frames they take.
    let (_journal, recovery) = Journal::<Record>::open(dir.path(), limits.clone()).unwrap();
    let mut journaled = Vec::new();
    let (mut bytes, mut largest) = (0usize, 0usize);
    for (_, record) in &recovery.records {
        if let Record::Reconciled { effect, .. } = record {
            let Effect::Resolve { op, .. } = effect else {
                panic!("a pending create resolves: {effect:?}");
            };
            journaled.push(created(op.as_u128() - 1000));
            let len = format::frame_len(encode_record(record).unwrap().len());
            bytes += len;
            largest = largest.max(len);
        }
    }
    assert_eq!(journaled, reported, "journaled in the order reported");
    let mut sorted = journaled.clone();
    sorted.sort();
    assert_eq!(sorted, live, "every resolution journaled once");

    // Each run but the last leaves less than its largest record unused.
    let limit = limits
        .max_batch_bytes
        .min(usize::try_from(limits.segment_size).unwrap() - format::SEGMENT_HEADER_LEN);
    let runs = bytes.div_ceil(limit - largest) as u64 + 1;
    assert!(
        journal_syncs <= runs,
        "{n} resolutions ({bytes} bytes, batch limit {limit}) took {journal_syncs} journal \
         syncs; runs filling the batch limit need at most {runs}"
    );
    assert!(
        u128::from(journal_syncs) * 10 < n,
        "{journal_syncs} journal syncs for {n} resolutions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_journals_thousands_of_resolutions_in_a_few_syncs() {
    resolve_pending_in_few_journal_syncs(3000, JournalConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_journal_runs_respect_small_batch_and_segment_limits() {
    // Runs of at most 8 KiB in 64 KiB segments: many runs and rotations,
    // none larger than the journal takes.
    let limits = JournalConfig {
        segment_size: 64 << 10,
        max_batch_bytes: 8 << 10,
        ..JournalConfig::default()
    };
    resolve_pending_in_few_journal_syncs(1500, limits).await;
}
