//! Leader/follower group commit: who syncs, and what happens when the task
//! the leadership is handed to is gone.
//!
//! A storage wrapper records the thread of every `fdatasync` and can hold a
//! sync until the test releases it, so a leader can be caught mid-commit
//! while a follower queues behind it. Followers are driven by hand (polled
//! once with a no-op waker, then dropped), which is exactly what a cancelled
//! task does to its future.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;

use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalError, JournalRecord};
use volmgr::storage::{LockGuard, RealStorage, Storage, StorageFile, Trusted};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec(String);

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        1
    }
}

/// What the wrapper does at `fdatasync`.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Hold the next syncs until released.
    armed: bool,
    /// A sync is being held.
    holding: bool,
    /// Panic in the next sync.
    panic_next: bool,
    /// Thread of every `fdatasync`, in order.
    threads: Vec<ThreadId>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn at_sync(&self) {
        let mut s = self.lock();
        s.threads.push(std::thread::current().id());
        if s.panic_next {
            s.panic_next = false;
            drop(s);
            panic!("injected panic inside fdatasync");
        }
        while s.armed {
            s.holding = true;
            self.changed.notify_all();
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.holding = false;
    }

    fn arm(&self) {
        self.lock().armed = true;
    }

    fn wait_until_holding(&self) {
        let mut s = self.lock();
        while !s.holding {
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn release(&self) {
        self.lock().armed = false;
        self.changed.notify_all();
    }
}

#[derive(Debug)]
struct GatedStorage {
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealStorage.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        RealStorage.list_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(GatedFile {
            inner: RealStorage.open(path)?,
            gate: self.gate.clone(),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(GatedFile {
            inner: RealStorage.create(path)?,
            gate: self.gate.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealStorage.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealStorage.sync_dir(path)
    }
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        RealStorage.lock_exclusive(path, holder)
    }
    fn check_trusted(&self, path: &Path, entry: Trusted) -> io::Result<()> {
        RealStorage.check_trusted(path, entry)
    }
}

impl StorageFile for GatedFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.gate.at_sync();
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn drop_cache(&self) -> io::Result<()> {
        self.inner.drop_cache()
    }
}

fn open(dir: &Path, gate: &Arc<Gate>) -> Journal<Rec> {
    let storage = Arc::new(GatedStorage { gate: gate.clone() });
    let (journal, _) =
        Journal::open_with_storage(storage, dir, JournalConfig::default()).expect("opens");
    gate.lock().threads.clear();
    journal
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls a future once with a waker that does nothing: it runs up to its
/// first wait, and nobody will ever poll it again unless the test does.
fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

fn replayed(dir: &Path) -> Vec<(u64, String)> {
    let (_journal, recovery) =
        Journal::<Rec>::open(dir, JournalConfig::default()).expect("reopens");
    recovery
        .records
        .into_iter()
        .map(|(seq, r)| (seq, r.0))
        .collect()
}

/// The queue goes on after a follower's fate: the next append is seq 3, and
/// replay finds the leader's, the follower's and that record, in order.
fn appends_after_and_replays_leader_follower_after(journal: Arc<Journal<Rec>>, dir: &Path) {
    let seq = block_on(journal.append(&Rec("after".into()))).unwrap();
    assert_eq!(seq, 3, "the queue did not stall");
    drop(journal);
    assert_eq!(
        replayed(dir),
        vec![
            (1, "leader".into()),
            (2, "follower".into()),
            (3, "after".into())
        ]
    );
}

/// A leader holding its sync, and a follower queued behind it (not yet
/// answered: polled once, then left alone).
struct Scene {
    journal: Arc<Journal<Rec>>,
    gate: Arc<Gate>,
    leader: std::thread::JoinHandle<Result<u64, JournalError>>,
}

fn leader_holding_its_sync(dir: &Path) -> Scene {
    let gate = Arc::new(Gate::default());
    let journal = Arc::new(open(dir, &gate));
    gate.arm();
    let leader = {
        let journal = journal.clone();
        std::thread::spawn(move || block_on(journal.append(&Rec("leader".into()))))
    };
    gate.wait_until_holding();
    Scene {
        journal,
        gate,
        leader,
    }
}

#[test]
fn a_lone_appender_syncs_on_its_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let journal = open(dir.path(), &gate);
    for i in 0..5 {
        let seq = block_on(journal.append(&Rec(format!("r{i}")))).unwrap();
        assert_eq!(seq, i + 1);
    }
    let me = std::thread::current().id();
    let threads = gate.lock().threads.clone();
    assert_eq!(threads.len(), 5, "one fdatasync per lone append");
    assert!(
        threads.iter().all(|t| *t == me),
        "every sync ran on the appender's thread: {threads:?} vs {me:?}"
    );
    assert_eq!(journal.sync_count(), 5);
}

#[test]
fn followers_queued_behind_a_sync_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let scene = leader_holding_its_sync(dir.path());
    let mut followers: Vec<_> = (0..10)
        .map(|i| {
            let journal = scene.journal.clone();
            Box::pin(async move { journal.append(&Rec(format!("f{i}"))).await })
        })
        .collect();
    for f in &mut followers {
        assert!(
            poll_once(f.as_mut()).is_pending(),
            "queued behind the leader"
        );
    }
    scene.gate.release();
    assert_eq!(scene.leader.join().unwrap().unwrap(), 1);
    // The first follower was handed the leadership; driving it commits all ten.
    let seqs: Vec<u64> = followers
        .into_iter()
        .map(|f| block_on(f).unwrap())
        .collect();
    assert_eq!(seqs, (2..=11).collect::<Vec<u64>>());
    assert_eq!(scene.journal.sync_count(), 2, "ten followers, one sync");
}

#[test]
fn a_follower_dropped_as_the_leadership_reaches_it_still_commits_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let scene = leader_holding_its_sync(dir.path());
    let journal = scene.journal.clone();
    let mut follower = Box::pin(async move { journal.append(&Rec("follower".into())).await });
    assert!(poll_once(follower.as_mut()).is_pending());
    scene.gate.release();
    // The leader hands the leadership to the follower, whose task never runs
    // again: it is dropped with the message unread.
    assert_eq!(scene.leader.join().unwrap().unwrap(), 1);
    drop(follower);
    assert_eq!(
        scene.journal.durable_seq(),
        2,
        "the dropped follower's request was committed while it was dropped"
    );
    appends_after_and_replays_leader_follower_after(scene.journal, dir.path());
}

#[test]
fn a_follower_dropped_before_the_leadership_reaches_it_is_committed_by_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let scene = leader_holding_its_sync(dir.path());
    let journal = scene.journal.clone();
    let mut follower = Box::pin(async move { journal.append(&Rec("follower".into())).await });
    assert!(poll_once(follower.as_mut()).is_pending());
    drop(follower);
    scene.gate.release();
    assert_eq!(scene.leader.join().unwrap().unwrap(), 1);
    assert_eq!(
        scene.journal.durable_seq(),
        2,
        "the leader committed the queued request of the task that went away"
    );
    appends_after_and_replays_leader_follower_after(scene.journal, dir.path());
}

#[test]
fn a_commit_that_panics_poisons_the_journal_and_answers_its_followers() {
    let dir = tempfile::tempdir().unwrap();
    let scene = leader_holding_its_sync(dir.path());
    let journal = scene.journal.clone();
    let mut follower = Box::pin(async move { journal.append(&Rec("follower".into())).await });
    assert!(poll_once(follower.as_mut()).is_pending());
    // The follower's own commit (it leads next) panics inside fdatasync.
    scene.gate.lock().panic_next = true;
    scene.gate.release();
    assert_eq!(scene.leader.join().unwrap().unwrap(), 1);
    let panicked = std::thread::spawn(move || block_on(follower)).join();
    assert!(panicked.is_err(), "the panic reaches the committing task");
    // A stalled queue would never answer: bound the wait so it fails instead.
    let after = block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            scene.journal.append(&Rec("after".into())),
        )
        .await
    })
    .expect("answered, not stalled behind a leader that is gone");
    assert!(
        matches!(after, Err(JournalError::Poisoned { .. })),
        "no append after a commit that did not finish: {after:?}"
    );
}
