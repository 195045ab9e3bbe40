//! The manager: the public async API a host agent embeds, and the write path.
//!
//! Every mutating verb runs the same path (DESIGN.md): validate against the
//! state and claim the volumes it touches (typed error, nothing written);
//! append a durable Intent; perform the provider side effect on the blocking
//! pool, tagged with the volume id and op id; append a durable Outcome; apply
//! both records; broadcast events; answer. The body runs in the caller's task
//! (no hand-off on the way in or out); if the caller gives up, the body moves
//! to a task of its own and finishes there, so no durable record is left
//! unapplied.
//!
//! **Invariant:** nothing reaches a provider before its Intent is durable.
//! **Invariant:** nothing is acknowledged before its Outcome is durable.
//! **Invariant:** records are applied to the state in sequence order (a small
//! reorder buffer absorbs concurrent appenders), so live state equals replay.
//!
//! The module's parts: `config` (tunables, errors, reports), `verbs` (the
//! mutating verbs), `transfer` (send and receive, with their stream bridges),
//! `recovery` (reconciliation at open: the decision table's provider steps),
//! `write_path` (claims, the intent → effect → outcome path and the reorder
//! buffer).

#[cfg(test)]
mod apply_props;
mod attributes;
mod config;
mod cycle;
mod overlap;
mod provider_sync;
mod recovery;
mod replay;
mod transfer;
mod verbs;
mod write_path;

pub use attributes::ProviderTraits;
pub use config::{
    DEFAULT_PROVIDER_ID, DefaultProviderFactory, ManagerConfig, ManagerError, ManagerStats,
    OpenPhases, ReconcileReport,
};
pub use replay::{apply_all, checkpoint_state, replay};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

use crate::journal::Journal;
use crate::model::AgentId;
use crate::provider::{
    Created, Found, Provider, ProviderError, ProviderFactory, VolumeRef, volume_id,
};
use crate::state::{
    ApplyError, Done, Event, Orphan, ProviderRecord, Record, State, Volume, VolumeKind,
    VolumeStatus,
};
use crate::storage::RealStorage;
use crate::validate;

#[derive(Debug, Default)]
struct Counters {
    operations: AtomicU64,
    operation_ns: AtomicU64,
    journal_wait_ns: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_build_ns: AtomicU64,
    /// Checkpoints that did not encode, were refused or failed to write.
    checkpoint_failures: AtomicU64,
}

struct Core {
    state: State,
    /// Durable records not yet applied because an earlier one is still missing.
    waiting: BTreeMap<u64, Record>,
    /// Volume ids with an operation in flight (exclusive claims).
    busy: BTreeSet<String>,
    /// Volume ids read by operations in flight (shared claims: sends and
    /// forks of a snapshot), with their count.
    readers: BTreeMap<String, usize>,
    since_checkpoint: u64,
    /// The durable record the state machine refused: nothing after it is
    /// applied and every further operation is refused with it.
    poisoned: Option<ApplyError>,
}

/// What the state has applied, for operations waiting on their records.
#[derive(Debug, Clone, Default)]
pub(super) struct Applied {
    seq: u64,
    poisoned: Option<ApplyError>,
}

pub(super) struct Inner {
    journal: Arc<Journal<Record>>,
    core: Mutex<Core>,
    applied: watch::Sender<Applied>,
    providers: RwLock<HashMap<String, Arc<dyn Provider>>>,
    unavailable: RwLock<HashMap<String, String>>,
    factories: BTreeMap<String, ProviderFactory>,
    events: broadcast::Sender<Event>,
    checkpoint_every: u64,
    checkpoint_grows_with_state: bool,
    state_dir: PathBuf,
    /// This agent's identity (the state directory's `IDENTITY`): every
    /// provider is built for it and claims its root for it.
    agent: AgentId,
    report: Mutex<ReconcileReport>,
    counters: Arc<Counters>,
    /// The shared sync of each provider with batched durability.
    sync_groups: Mutex<HashMap<String, Arc<provider_sync::SyncGroup>>>,
    /// The cycle driver of each provider with batched durability.
    cycles: Mutex<HashMap<String, Arc<cycle::Cycle>>>,
    /// [`ManagerConfig::write_cycle`].
    write_cycle: bool,
    /// Checkpoint writes requested and maybe not finished: `close` awaits
    /// them, so a clean stop never leaves its last checkpoint unwritten.
    checkpoint_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// One page of [`Manager::volume_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumePage {
    /// In id order.
    pub volumes: Vec<Volume>,
    /// The events the receiver held, oldest first.
    pub events: Vec<Event>,
    /// Events the receiver missed (it fell behind): more than zero means
    /// the subscriber can no longer follow exactly.
    pub missed: u64,
}

/// The volume manager. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("state_dir", &self.inner.state_dir)
            .finish()
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn check_id(id: &str) -> Result<(), ManagerError> {
    validate::id(id).map_err(|reason| ManagerError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

impl Manager {
    /// Opens the state directory: lock, checkpoint, replay, reconcile, ready.
    pub async fn open(
        state_dir: impl AsRef<Path>,
        config: ManagerConfig,
    ) -> Result<Manager, ManagerError> {
        let state_dir = state_dir.as_ref().to_owned();
        let journal_config = config.journal.clone();
        let dir = state_dir.clone();
        let storage = config
            .storage
            .clone()
            .unwrap_or_else(|| Arc::new(RealStorage));
        let mut phases = OpenPhases::default();
        let started = Instant::now();
        let (journal, recovery) = tokio::task::spawn_blocking(move || {
            Journal::<Record>::open_with_storage(storage, &dir, journal_config)
        })
        .await
        .map_err(|e| ManagerError::Internal(e.to_string()))??;
        phases.journal_open = started.elapsed();
        let agent = AgentId::from_uuid(journal.identity()).ok_or_else(|| {
            ManagerError::Internal("the journal returned the nil UUID as its identity".into())
        })?;

        let state = replay::replay_timed(&recovery, &mut phases)?;
        let report = ReconcileReport {
            journal_end: Some(recovery.end.clone()),
            checkpoint_seq: recovery.checkpoint.as_ref().map(|(s, _)| *s),
            replayed_records: recovery.records.len(),
            phases,
            ..ReconcileReport::default()
        };
        let seq = state.seq;
        let (applied, _) = watch::channel(Applied {
            seq,
            poisoned: None,
        });
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let inner = Arc::new(Inner {
            journal: Arc::new(journal),
            core: Mutex::new(Core {
                state,
                waiting: BTreeMap::new(),
                busy: BTreeSet::new(),
                readers: BTreeMap::new(),
                // The records replayed after the checkpoint count toward the
                // next one: the tail an open replays stays within one interval.
                since_checkpoint: report.replayed_records as u64,
                poisoned: None,
            }),
            applied,
            providers: RwLock::new(HashMap::new()),
            unavailable: RwLock::new(HashMap::new()),
            factories: config.factories,
            events,
            checkpoint_every: config.checkpoint_every.max(1),
            checkpoint_grows_with_state: config.checkpoint_grows_with_state,
            state_dir,
            agent,
            report: Mutex::new(report),
            counters: Arc::default(),
            sync_groups: Mutex::new(HashMap::new()),
            cycles: Mutex::new(HashMap::new()),
            write_cycle: config.write_cycle,
            checkpoint_tasks: Mutex::new(Vec::new()),
        });
        let manager = Manager { inner };

        // Providers come back from the journal; the factory runs only if none.
        let started = Instant::now();
        let records: Vec<ProviderRecord> =
            manager.with_state(|s| s.providers.values().cloned().collect());
        for record in &records {
            match manager.inner.build_provider(&record.kind, &record.config) {
                Ok(p) => {
                    manager
                        .inner
                        .providers
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(record.id.clone(), p);
                }
                Err(e) => {
                    tracing::error!(provider = %record.id, error = %e, "provider unavailable");
                    manager
                        .inner
                        .unavailable
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(record.id.clone(), e.to_string());
                }
            }
        }
        manager
            .inner
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .phases
            .providers = started.elapsed();
        manager.reconcile().await?;
        if records.is_empty()
            && let Some(factory) = config.default_provider
        {
            let (kind, provider_config) =
                factory().map_err(|e| ManagerError::ProviderUnavailable {
                    provider: DEFAULT_PROVIDER_ID.into(),
                    reason: e,
                })?;
            manager
                .add_provider(DEFAULT_PROVIDER_ID, &kind, provider_config)
                .await?;
        }
        Ok(manager)
    }

    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let core = self
            .inner
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&core.state)
    }

    /// The durable record the state machine refused, if one did: the
    /// manager then refuses every operation with
    /// [`ManagerError::RecordRejected`] (and so does the next open).
    pub fn poisoned(&self) -> Option<ApplyError> {
        let core = self
            .inner
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        core.poisoned.clone()
    }

    /// A copy of the whole state (for tools and tests).
    pub fn state(&self) -> State {
        self.with_state(State::clone)
    }

    /// What reconciliation did at open.
    pub fn reconcile_report(&self) -> ReconcileReport {
        self.inner
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn stats(&self) -> ManagerStats {
        let (provider_syncs, provider_sync_waiting) = self
            .inner
            .sync_groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .fold((0, 0), |(s, w), g| (s + g.syncs(), w + g.waiting()));
        let provider_sync_waiting = provider_sync_waiting
            + self
                .inner
                .cycles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .map(|c| c.waiting())
                .sum::<usize>();
        ManagerStats {
            durable_seq: self.inner.journal.durable_seq(),
            syncs: self.inner.journal.sync_count(),
            operations: self.inner.counters.operations.load(Ordering::Relaxed),
            operation_ns: self.inner.counters.operation_ns.load(Ordering::Relaxed),
            journal_wait_ns: self.inner.counters.journal_wait_ns.load(Ordering::Relaxed),
            journal_sync_ns: u64::try_from(self.inner.journal.sync_time().as_nanos())
                .unwrap_or(u64::MAX),
            provider_syncs,
            provider_sync_waiting,
            checkpoints: self.inner.counters.checkpoints.load(Ordering::Relaxed),
            checkpoint_build_ns: self
                .inner
                .counters
                .checkpoint_build_ns
                .load(Ordering::Relaxed),
            checkpoint_failures: self
                .inner
                .counters
                .checkpoint_failures
                .load(Ordering::Relaxed),
            checkpoint_seq: self.inner.journal.checkpoint_seq(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// This agent's identity: the state directory's `IDENTITY`, made by
    /// its first open. Every provider this manager builds claims its root
    /// for it, and refuses a root another agent owns.
    pub fn agent_id(&self) -> AgentId {
        self.inner.agent
    }

    /// One volume's info.
    pub fn volume(&self, id: &str) -> Result<Volume, ManagerError> {
        self.with_state(|s| s.volumes.get(id).cloned())
            .ok_or_else(|| ManagerError::NoSuchVolume(id.to_owned()))
    }

    /// All volumes, sorted by id.
    pub fn volumes(&self) -> Vec<Volume> {
        self.with_state(|s| s.volumes.values().cloned().collect())
    }

    /// Up to `limit` volumes whose ids sort after `after` (from the first
    /// with `None`), read in the same instant as the events `events` holds,
    /// which are drained. A subscriber lists the volumes page by page with
    /// memory bounded by the page, and sorts each drained event by the page
    /// boundary: an event on an id already listed happened after its page
    /// was read (forward it), one on an id not yet listed is reflected by
    /// the later page (drop it). Nothing is missed or doubled.
    pub fn volume_page(
        &self,
        after: Option<&str>,
        limit: usize,
        events: &mut broadcast::Receiver<Event>,
    ) -> VolumePage {
        use std::ops::Bound;
        // Events are broadcast under the same lock (`submit`): the drain
        // and the page see one instant.
        let core = self
            .inner
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut page = VolumePage::default();
        loop {
            match events.try_recv() {
                Ok(event) => page.events.push(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => page.missed += n,
                Err(_) => break,
            }
        }
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        page.volumes = core
            .state
            .volumes
            .range::<str, _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect();
        page
    }

    pub fn providers(&self) -> Vec<ProviderRecord> {
        self.with_state(|s| s.providers.values().cloned().collect())
    }

    /// The directories the recorded providers own (dir and btrfs `root`,
    /// ZFS `workdir`), absolute, with symlinks resolved where they exist:
    /// everything of theirs, volumes included, lies below one of them.
    pub fn provider_dirs(&self) -> Vec<PathBuf> {
        self.with_state(|s| {
            s.providers
                .values()
                .flat_map(|p| overlap::paths_of(&p.config))
                .collect()
        })
    }

    /// Orphans reconciliation reported and no command has resolved yet.
    pub fn orphans(&self) -> Vec<Orphan> {
        self.with_state(|s| s.orphans.values().cloned().collect())
    }

    /// Create, destroy, lost and found events. A subscriber that falls more
    /// than `event_capacity` behind gets `RecvError::Lagged` and never blocks
    /// the manager.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Closes the journal (after the records already queued) and releases
    /// the state directory's lock. Operations still running on other clones
    /// fail with a journal `Closed` error; their intents are reconciled at the
    /// next open. A host agent stops accepting requests before calling this.
    pub async fn close(self) {
        let tasks = std::mem::take(
            &mut *self
                .inner
                .checkpoint_tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            // A failed write was logged by the task; a panic is logged here.
            if let Err(e) = task.await {
                tracing::error!(error = %e, "checkpoint task failed");
            }
        }
        self.inner.journal.shutdown().await;
    }

    /// Runs an operation's body to completion even if the caller stops
    /// waiting (see [`Detached`]).
    async fn spawn<T, F>(&self, body: F) -> Result<T, ManagerError>
    where
        F: Future<Output = Result<T, ManagerError>> + Send + 'static,
        T: Send + 'static,
    {
        Detached {
            body: Some(Box::pin(body)),
        }
        .await
    }
}

/// An operation's body, polled in the caller's own task: no hand-off to
/// another task or thread on the way in or out. If the caller's future is
/// dropped before the body finished (a client that hung up, a timeout), the
/// body is handed to a spawned task that completes it, so a durable intent
/// always gets its outcome. A panic in the body is an `Internal` error, as a
/// panic in a task of its own would be.
struct Detached<F: Future + Send + 'static>
where
    F::Output: Send,
{
    body: Option<Pin<Box<F>>>,
}

impl<T, F> Future for Detached<F>
where
    F: Future<Output = Result<T, ManagerError>> + Send + 'static,
    T: Send,
{
    type Output = Result<T, ManagerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let body = self.body.as_mut().expect("polled after completion");
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx)));
        let output = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => output,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(ManagerError::Internal(format!(
                    "operation task failed: {why}"
                )))
            }
        };
        self.body = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for Detached<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // The body holds whatever it needs; its result goes nowhere.
            runtime.spawn(async move {
                let _ = body.await;
            });
        } else {
            tracing::error!(
                "an operation's caller went away outside a runtime; its intent is reconciled at the next open"
            );
        }
    }
}

pub(super) fn done(created: Created) -> Done {
    Done {
        location: created.location,
        details: created.details,
    }
}

pub(super) fn live<'a>(s: &'a State, id: &str) -> Result<&'a Volume, ManagerError> {
    let v = s
        .volumes
        .get(id)
        .ok_or_else(|| ManagerError::NoSuchVolume(id.to_owned()))?;
    if v.status == VolumeStatus::Lost {
        return Err(ManagerError::VolumeLost(id.to_owned()));
    }
    Ok(v)
}

/// A live volume that must be of `kind` (snapshot, fork and transfer sources).
pub(super) fn live_kind<'a>(
    s: &'a State,
    id: &str,
    kind: VolumeKind,
) -> Result<&'a Volume, ManagerError> {
    let v = live(s, id)?;
    if v.kind != kind {
        return Err(ManagerError::WrongKind {
            id: id.to_owned(),
            expected: kind,
        });
    }
    Ok(v)
}

/// An orphan reconciliation reported and no command has resolved yet.
pub(super) fn noted_orphan(
    s: &State,
    provider: &str,
    volume: &str,
) -> Result<Orphan, ManagerError> {
    s.orphans
        .get(&crate::state::orphan_key(provider, volume))
        .cloned()
        .ok_or_else(|| ManagerError::NoSuchOrphan {
            provider: provider.to_owned(),
            volume: volume.to_owned(),
        })
}

pub(super) fn volume_ref(v: &Volume) -> Result<VolumeRef<'_>, ProviderError> {
    Ok(VolumeRef {
        id: volume_id(&v.id)?,
        kind: v.kind,
        parent: v.parent.as_deref(),
        location: &v.location,
        details: &v.details,
    })
}

pub(super) fn found_ref<'a>(
    f: &'a Found,
    id: &'a str,
    kind: VolumeKind,
) -> Result<VolumeRef<'a>, ProviderError> {
    Ok(VolumeRef {
        id: volume_id(id)?,
        kind,
        parent: f.tag.as_ref().and_then(|t| t.parent.as_deref()),
        location: &f.location,
        details: &f.details,
    })
}

/// The item `provider` holds tagged as `volume` ([`Provider::lookup`]).
pub(super) fn find(provider: &dyn Provider, volume: &str) -> Result<Option<Found>, ProviderError> {
    provider.lookup(volume_id(volume)?)
}
