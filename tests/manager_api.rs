//! The manager's verbs through the public API, on the simulated provider:
//! typed errors for bad input with nothing journaled, dependents, busy,
//! provider failures on both sides of the side effect, events, transfers,
//! checkpoints and replay determinism.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use volmgr::journal::{JournalConfig, encode_checkpoint};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};
use volmgr::state::{Event, Meta, VolumeKind};

fn config(sim: &SimProvider) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.factories.insert("sim".into(), sim.factory());
    config
}

async fn open(dir: &std::path::Path, sim: &SimProvider) -> Manager {
    let manager = Manager::open(dir, config(sim)).await.unwrap();
    if manager.providers().is_empty() {
        manager
            .add_provider("p", "sim", BTreeMap::default())
            .await
            .unwrap();
    }
    manager
}

#[tokio::test]
async fn hostile_ids_and_meta_get_typed_errors_and_nothing_is_journaled_or_created() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let m = open(dir.path(), &sim).await;
    let before = m.stats().durable_seq;
    let long = "x".repeat(300);
    for bad in ["../x", "a/b", "", long.as_str(), "a\0b", "-rf"] {
        let err = m
            .create_volume("p", Some(bad), Meta::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ManagerError::InvalidId { .. }),
            "{bad:?}: {err}"
        );
    }
    let mut meta = Meta::new();
    meta.insert("k".into(), "v".repeat(100_000));
    let err = m.create_volume("p", Some("ok"), meta).await.unwrap_err();
    assert!(matches!(err, ManagerError::InvalidMeta(_)), "{err}");
    let err = m
        .create_volume("nope", Some("ok"), Meta::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NoSuchProvider(_)), "{err}");
    let err = m.destroy_volume("missing").await.unwrap_err();
    assert!(matches!(err, ManagerError::NoSuchVolume(_)), "{err}");
    assert_eq!(m.stats().durable_seq, before, "nothing journaled");
    assert!(sim.volume_ids().is_empty(), "nothing created");
    m.close().await;
}

#[tokio::test]
async fn snapshot_with_forks_refuses_destroy_and_forks_need_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let m = open(dir.path(), &sim).await;
    let v = m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let err = m.fork_volume(&v.id, None, Meta::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::WrongKind {
                expected: VolumeKind::Snapshot,
                ..
            }
        ),
        "{err}"
    );
    let s = m.create_snapshot("v", Meta::new()).await.unwrap();
    let f = m.fork_volume(&s.id, Some("f"), Meta::new()).await.unwrap();
    assert_eq!(f.parent.as_deref(), Some(s.id.as_str()));
    let err = m.destroy_volume(&s.id).await.unwrap_err();
    match err {
        ManagerError::HasDependents { dependents, .. } => {
            assert_eq!(dependents, vec!["f".to_string()]);
        }
        other => panic!("expected HasDependents, got {other}"),
    }
    m.destroy_volume("f").await.unwrap();
    m.destroy_volume(&s.id).await.unwrap();
    m.destroy_volume("v").await.unwrap();
    assert!(m.volumes().is_empty());
    assert!(sim.volume_ids().is_empty());
    m.close().await;
}

#[tokio::test]
async fn second_operation_on_a_volume_in_flight_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let m = open(dir.path(), &sim).await;
    m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let gate = sim.hold_next(SimCall::Snapshot);
    let m2 = m.clone();
    let snap = tokio::spawn(async move { m2.create_snapshot("v", Meta::new()).await });
    let g = gate.clone();
    tokio::task::spawn_blocking(move || g.wait_entered())
        .await
        .unwrap();
    let err = m.destroy_volume("v").await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Busy(ref id) if id == "v"),
        "{err}"
    );
    // Another volume is not blocked meanwhile.
    m.create_volume("p", Some("w"), Meta::new()).await.unwrap();
    gate.release();
    snap.await.unwrap().unwrap();
    m.close().await;
}

#[tokio::test]
async fn provider_failure_before_or_after_the_side_effect_leaves_nothing_behind() {
    for when in [When::Before, When::After] {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimProvider::new();
        let m = open(dir.path(), &sim).await;
        sim.set_fault(Some(SimFault {
            call: SimCall::Create,
            when,
            nth: 1,
        }));
        let err = m
            .create_volume("p", Some("v"), Meta::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ManagerError::Provider { .. }),
            "{when:?}: {err}"
        );
        assert!(m.volumes().is_empty(), "{when:?}: state holds no volume");
        assert!(
            sim.volume_ids().is_empty(),
            "{when:?}: provider holds nothing"
        );
        assert!(m.state().pending.is_empty());
        m.close().await;
        let m = open(dir.path(), &sim).await;
        assert!(
            m.reconcile_report().resolutions.is_empty(),
            "nothing to reconcile"
        );
        m.close().await;
    }
}

#[tokio::test]
async fn subscribers_see_events_and_a_slow_one_learns_it_lagged() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut cfg = config(&sim);
    cfg.event_capacity = 2;
    let m = Manager::open(dir.path(), cfg).await.unwrap();
    m.add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    let mut fast = m.subscribe();
    let mut slow = m.subscribe();
    m.create_volume("p", Some("a"), Meta::new()).await.unwrap();
    match fast.recv().await.unwrap() {
        Event::Created(v) => assert_eq!(v.id, "a"),
        other => panic!("{other:?}"),
    }
    for i in 0..5 {
        m.create_volume("p", Some(&format!("b{i}")), Meta::new())
            .await
            .unwrap();
    }
    m.destroy_volume("a").await.unwrap();
    assert!(matches!(slow.recv().await, Err(RecvError::Lagged(_))));
    m.close().await;
}

#[tokio::test]
async fn incremental_send_is_used_when_the_receiver_has_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let m = open(dir.path(), &sim).await;
    m.create_volume("p", Some("src"), Meta::new())
        .await
        .unwrap();
    sim.write_file("src", "big", &vec![7u8; 10_000]);
    let s1 = m.create_snapshot("src", Meta::new()).await.unwrap();
    m.create_volume("p", Some("dst"), Meta::new())
        .await
        .unwrap();

    let mut stream = Vec::new();
    let haves = m.list_haves("dst").unwrap();
    assert!(haves.is_empty());
    let full = m.send_snapshot(&s1.id, &haves, &mut stream).await.unwrap();
    assert!(!full.incremental);
    let r1 = m.receive_snapshot("dst", stream.as_slice()).await.unwrap();
    assert_eq!(r1.kind, VolumeKind::Snapshot);
    assert_eq!(r1.details.get("guid"), s1.details.get("guid"));

    sim.write_file("src", "small", b"hello");
    let s2 = m.create_snapshot("src", Meta::new()).await.unwrap();
    let haves = m.list_haves("dst").unwrap();
    let mut stream = Vec::new();
    let inc = m.send_snapshot(&s2.id, &haves, &mut stream).await.unwrap();
    assert!(inc.incremental);
    assert!(
        inc.bytes * 10 < full.bytes,
        "incremental {} vs full {}",
        inc.bytes,
        full.bytes
    );
    let r2 = m.receive_snapshot("dst", stream.as_slice()).await.unwrap();
    assert_eq!(
        sim.read_file(&r2.id, "small").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(sim.read_file(&r2.id, "big").map(|b| b.len()), Some(10_000));
    m.close().await;
}

#[tokio::test]
async fn replay_rebuilds_the_same_state_byte_for_byte_with_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut cfg = config(&sim);
    cfg.checkpoint_every = 7;
    cfg.checkpoint_grows_with_state = false;
    cfg.journal = JournalConfig {
        segment_size: 8192,
        ..JournalConfig::default()
    };
    let m = Manager::open(dir.path(), cfg).await.unwrap();
    m.add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    let m = Arc::new(m);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("v{i}");
            m.create_volume("p", Some(&id), Meta::new()).await.unwrap();
            let s = m.create_snapshot(&id, Meta::new()).await.unwrap();
            if i % 3 == 0 {
                m.destroy_volume(&s.id).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let live = m.state();
    Arc::try_unwrap(m).unwrap().close().await;

    let mut bytes = Vec::new();
    for _ in 0..2 {
        let mut cfg = config(&sim);
        cfg.checkpoint_every = 7;
        cfg.checkpoint_grows_with_state = false;
        let m = Manager::open(dir.path(), cfg).await.unwrap();
        assert!(
            m.reconcile_report().checkpoint_seq.is_some(),
            "a checkpoint was used"
        );
        assert_eq!(m.state(), live, "replayed state equals live state");
        bytes.push(encode_checkpoint(&m.state()).unwrap());
        m.close().await;
    }
    assert_eq!(bytes[0], bytes[1], "two replays, identical bytes");
}

/// Creates `n` volumes one after the other on a manager opened with
/// `config`; returns the checkpoints it requested and its entries after.
async fn checkpoints_over_creates(config: ManagerConfig, n: usize) -> (u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::open(dir.path(), config).await.unwrap();
    m.add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    for i in 0..n {
        m.create_volume("p", Some(&format!("v{i}")), Meta::new())
            .await
            .unwrap();
    }
    let stats = m.stats();
    assert_eq!(
        stats.durable_seq,
        2 + 2 * n as u64,
        "intent and outcome each"
    );
    let entries = m.state().entries();
    m.close().await;
    (stats.checkpoints, entries)
}

/// Building a checkpoint is linear in the state (the journal rebuilds and
/// encodes it off the operation path, but it is work all the same); a
/// fixed interval makes its cost per record grow with the state. With the
/// interval grown to the state's entries, 200 creates (402 records) from an
/// interval floor of 4 take a checkpoint each time the state has grown by
/// about half (8 of them), where the fixed interval takes 100.
#[tokio::test]
async fn checkpoints_grow_apart_with_the_state_so_their_cost_per_record_stays_flat() {
    let mut grown = config(&SimProvider::new());
    grown.checkpoint_every = 4;
    let (grown_checkpoints, entries) = checkpoints_over_creates(grown, 200).await;
    assert_eq!(entries, 200);
    let mut fixed = config(&SimProvider::new());
    fixed.checkpoint_every = 4;
    fixed.checkpoint_grows_with_state = false;
    let (fixed_checkpoints, _) = checkpoints_over_creates(fixed, 200).await;
    assert_eq!(fixed_checkpoints, 402 / 4, "one every 4 records");
    // Each checkpoint at e entries is followed by the next after e records
    // (e / 2 creates): about log base 1.5 of 200 / 4 = 10 at most.
    assert!(
        (1..=10).contains(&grown_checkpoints),
        "a checkpoint each time the state grew by half: {grown_checkpoints}"
    );
}

/// The records an open replays after its checkpoint count toward the next
/// one, so a journal reopened again and again still checkpoints within one
/// interval: here 22 records left unreplayed by a first manager (its
/// interval not reached), reopened with an interval of 23, make the next
/// create's intent due for a checkpoint, whose write `close` waits for.
#[tokio::test]
async fn the_tail_an_open_replays_counts_toward_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let m = open(dir.path(), &sim).await;
    for i in 0..10 {
        m.create_volume("p", Some(&format!("v{i}")), Meta::new())
            .await
            .unwrap();
    }
    assert_eq!(m.stats().checkpoints, 0, "10,000 records not reached");
    m.close().await;

    let reopen = |every: u64| {
        let mut cfg = config(&sim);
        cfg.checkpoint_every = every;
        cfg.checkpoint_grows_with_state = false;
        Manager::open(dir.path(), cfg)
    };
    let m = reopen(23).await.unwrap();
    assert_eq!(m.reconcile_report().replayed_records, 22);
    assert_eq!(m.stats().checkpoints, 0);
    m.create_volume("p", Some("v10"), Meta::new())
        .await
        .unwrap();
    assert_eq!(m.stats().checkpoints, 1, "22 replayed + the intent = 23");
    m.close().await;

    // `close` waited for that checkpoint's write. Then the same again, with
    // the outcome replayed and the next intent due: whether a write `close`
    // did not wait for would land first is a race, so several rounds.
    let mut seq = 23;
    for round in 11..17 {
        let m = reopen(2).await.unwrap();
        let report = m.reconcile_report();
        assert_eq!(report.checkpoint_seq, Some(seq), "round {round}");
        assert_eq!(report.replayed_records, 1, "the outcome");
        m.create_volume("p", Some(&format!("v{round}")), Meta::new())
            .await
            .unwrap();
        assert_eq!(m.stats().checkpoints, 1, "1 replayed + the intent = 2");
        m.close().await;
        seq += 2;
    }
}

/// A journal holding a record the state machine refuses (here an outcome of
/// an operation that never had an intent, after which a valid record was
/// still written): opening refuses with that record's sequence number and
/// reason, the same error a running manager is poisoned with when it meets
/// such a record (the apply property test in core/src/manager/).
#[tokio::test]
async fn open_refuses_a_journal_whose_record_the_state_machine_refuses_naming_it() {
    use volmgr::journal::Journal;
    use volmgr::state::{Action, Done, OpResult, ProviderRecord, Record};

    let dir = tempfile::tempdir().unwrap();
    let op = |n: u128| uuid::Uuid::from_u128(n);
    let records = [
        Record::Intent {
            op: op(1),
            at_ms: 1,
            action: Action::AddProvider(ProviderRecord {
                id: "p".into(),
                kind: "sim".into(),
                config: BTreeMap::default(),
            }),
        },
        Record::Outcome {
            op: op(1),
            at_ms: 2,
            result: OpResult::Done(Done::default()),
        },
        Record::Outcome {
            op: op(9),
            at_ms: 3,
            result: OpResult::Done(Done::default()),
        },
        Record::Intent {
            op: op(2),
            at_ms: 4,
            action: Action::DestroyVolume { volume: "v".into() },
        },
    ];
    let (journal, _) = Journal::<Record>::open(dir.path(), JournalConfig::default()).unwrap();
    for r in &records {
        journal.append(r).await.unwrap();
    }
    journal.close().await;

    let sim = SimProvider::new();
    match Manager::open(dir.path(), config(&sim)).await {
        Err(ManagerError::RecordRejected(e)) => {
            assert_eq!(e.seq, 3);
            assert_eq!(e.reason, format!("outcome for unknown operation {}", op(9)));
        }
        Err(other) => panic!("open failed otherwise: {other}"),
        Ok(_) => panic!("opened a journal that contradicts the state machine"),
    }
}

/// A checkpoint whose write fails is counted in the stats, and the
/// checkpoint an open would start from stays where it was: an operator
/// sees `checkpoint_failures` rise and `durable_seq - checkpoint_seq` (the
/// records a restart replays) grow. Once writes succeed again the next
/// checkpoint is stored and the stats show its sequence number, the one the
/// next open starts from.
#[tokio::test]
async fn a_checkpoint_that_fails_to_write_is_counted_and_the_replayed_tail_keeps_growing() {
    use volmgr::storage::RealStorage;
    use volmgr::storage::fault::{FaultKind, FaultOp, FaultPlan, FaultyStorage};

    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let faulty = Arc::new(FaultyStorage::new(Arc::new(RealStorage)));
    let open_every_4 = || {
        let mut cfg = config(&sim);
        cfg.checkpoint_every = 4;
        cfg.checkpoint_grows_with_state = false;
        cfg.storage = Some(faulty.clone());
        Manager::open(dir.path(), cfg)
    };
    let m = open_every_4().await.unwrap();
    m.add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    // Every checkpoint's file is written under a temporary name and renamed
    // into place; the journal renames nothing else while one segment lasts.
    faulty.set_plan(Some(FaultPlan {
        op: FaultOp::Rename,
        nth: 1,
        sticky: true,
        kind: FaultKind::Io,
    }));
    for i in 0..6 {
        m.create_volume("p", Some(&format!("v{i}")), Meta::new())
            .await
            .unwrap();
    }
    m.clone().close().await;
    let stats = m.stats();
    assert_eq!(stats.durable_seq, 14, "the provider and 6 creates");
    assert_eq!(stats.checkpoints, 3, "one every 4 records");
    assert_eq!(stats.checkpoint_failures, 3, "{stats:?}");
    assert_eq!(stats.checkpoint_seq, 0, "nothing stored");
    assert!(faulty.fired() >= 3);

    faulty.set_plan(None);
    let m = open_every_4().await.unwrap();
    assert_eq!(m.reconcile_report().replayed_records, 14, "the whole log");
    assert_eq!(m.stats().checkpoint_seq, 0);
    m.create_volume("p", Some("v6"), Meta::new()).await.unwrap();
    m.clone().close().await;
    let stats = m.stats();
    assert_eq!((stats.checkpoints, stats.checkpoint_failures), (1, 0));
    assert_eq!(stats.checkpoint_seq, 15, "14 replayed + the intent");

    let m = open_every_4().await.unwrap();
    assert_eq!(
        m.stats().checkpoint_seq,
        15,
        "the checkpoint this open used"
    );
    assert_eq!(m.reconcile_report().checkpoint_seq, Some(15));
    m.close().await;
}

/// A storage that holds the first listing of the checkpoint directory after
/// it is armed until the test lets it go: what a checkpoint's rebuild reads
/// first (which checkpoint to start from).
#[derive(Debug)]
struct GatedStorage {
    inner: volmgr::storage::RealStorage,
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl volmgr::storage::Storage for GatedStorage {
    fn create_dir_all(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &std::path::Path) -> std::io::Result<Vec<String>> {
        let gate = path.ends_with(volmgr::journal::CHECKPOINT_DIR)
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst);
        if gate {
            let entered = self.entered.lock().unwrap().take().unwrap();
            let release = self.release.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        self.inner.list_dir(path)
    }
    fn open(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Box<dyn volmgr::storage::StorageFile>> {
        self.inner.open(path)
    }
    fn create(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Box<dyn volmgr::storage::StorageFile>> {
        self.inner.create(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn lock_exclusive(
        &self,
        path: &std::path::Path,
        holder: &str,
    ) -> std::io::Result<volmgr::storage::LockGuard> {
        self.inner.lock_exclusive(path, holder)
    }
    fn check_trusted(
        &self,
        path: &std::path::Path,
        entry: volmgr::storage::Trusted,
    ) -> std::io::Result<()> {
        self.inner.check_trusted(path, entry)
    }
}

/// A checkpoint is built by the journal from its own records on the
/// blocking pool, not from the live state under its lock: while one is
/// held in the middle of its build (its first read of the journal, gated
/// by the storage), 20 more creates and a destroy complete (making five
/// more due, which wait their turn); once it is let go each is stored in
/// order, and the next open starts from the last and replays the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_complete_while_a_checkpoint_is_being_built() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let storage = Arc::new(GatedStorage {
        inner: volmgr::storage::RealStorage,
        armed: false.into(),
        entered: Some(entered_tx).into(),
        release: Some(release_rx).into(),
    });
    let mut cfg = config(&sim);
    cfg.checkpoint_every = 8;
    cfg.checkpoint_grows_with_state = false;
    cfg.storage = Some(storage.clone());
    let m = Manager::open(dir.path(), cfg).await.unwrap();
    m.add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    storage
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..3 {
        m.create_volume("p", Some(&format!("v{i}")), Meta::new())
            .await
            .unwrap();
    }
    assert_eq!(m.stats().durable_seq, 8, "the provider and 3 creates");
    assert_eq!(m.stats().checkpoints, 1, "due at record 8");
    // Waits (off the runtime) until the rebuild is held at its first read;
    // the bound only turns a rebuild that never reads into a failure.
    tokio::task::spawn_blocking(move || {
        entered_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the checkpoint's rebuild never read the journal");
    })
    .await
    .unwrap();
    for i in 3..23 {
        m.create_volume("p", Some(&format!("v{i}")), Meta::new())
            .await
            .unwrap();
    }
    m.destroy_volume("v0").await.unwrap();
    let stats = m.stats();
    assert_eq!(
        stats.checkpoint_seq, 0,
        "the checkpoint is still being built"
    );
    assert_eq!(stats.durable_seq, 50);
    release_tx.send(()).unwrap();
    let live = m.state();
    m.clone().close().await;
    let stats = m.stats();
    assert_eq!(stats.checkpoints, 6, "due at records 8, 16, .., 48");
    assert_eq!((stats.checkpoint_seq, stats.checkpoint_failures), (48, 0));

    let m = open(dir.path(), &sim).await;
    let report = m.reconcile_report();
    assert_eq!(report.checkpoint_seq, Some(48));
    assert_eq!(report.replayed_records, 2);
    assert_eq!(m.state(), live);
    m.close().await;
}

/// Every checkpoint is the journal's own rebuild of the state at its
/// record; debug builds (the tests) also encode the live state there and
/// refuse a rebuild that differs by a byte. Over every verb, with a
/// checkpoint every three records, none is refused, and an open from the
/// last one reaches the live state.
#[tokio::test]
async fn every_checkpoint_rebuilt_from_the_journal_equals_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let open_every_3 = || {
        let mut cfg = config(&sim);
        cfg.checkpoint_every = 3;
        cfg.checkpoint_grows_with_state = false;
        Manager::open(dir.path(), cfg)
    };
    let m = open_every_3().await.unwrap();
    m.add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    for i in 0..6 {
        let mut meta = Meta::new();
        meta.insert("n".into(), i.to_string());
        m.create_volume("p", Some(&format!("v{i}")), meta)
            .await
            .unwrap();
        let snap = m
            .create_snapshot(&format!("v{i}"), Meta::new())
            .await
            .unwrap();
        m.fork_volume(&snap.id, Some(&format!("f{i}")), Meta::new())
            .await
            .unwrap();
        if i % 2 == 0 {
            m.destroy_volume(&format!("f{i}")).await.unwrap();
        }
    }
    let live = m.state();
    m.clone().close().await;
    let stats = m.stats();
    assert!(stats.checkpoints >= 10, "{stats:?}");
    assert_eq!(stats.checkpoint_failures, 0, "{stats:?}");
    assert!(stats.checkpoint_seq + 3 > stats.durable_seq, "{stats:?}");

    let m = open_every_3().await.unwrap();
    assert_eq!(
        m.reconcile_report().checkpoint_seq,
        Some(stats.checkpoint_seq)
    );
    assert_eq!(m.state(), live);
    m.close().await;
}
