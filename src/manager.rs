//! The manager: the public async API a host agent embeds, and the write path.
//!
//! Every mutating verb runs the same path (DESIGN.md): validate against the
//! state and claim the volumes it touches (typed error, nothing written);
//! append a durable Intent; perform the provider side effect on the blocking
//! pool, tagged with the volume id and op id; append a durable Outcome; apply
//! both records; broadcast events; answer. The body runs in a spawned task, so
//! a caller that gives up cannot leave a durable record unapplied.
//!
//! **Invariant:** nothing reaches a provider before its Intent is durable.
//! **Invariant:** nothing is acknowledged before its Outcome is durable.
//! **Invariant:** records are applied to the state in sequence order (a small
//! reorder buffer absorbs concurrent appenders), so live state equals replay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::journal::{self, Journal, JournalConfig, JournalError, LogEnd};
use crate::provider::{
    self, Created, Found, Provider, ProviderConfig, ProviderError, ProviderFactory, SendStats,
    VolumeRef, VolumeSpec,
};
use crate::reconcile::{self, Resolution};
use crate::state::{
    Action, Case, DETAIL_GUID, Done, Effect, Event, Meta, OpId, OpResult, Orphan, ProviderRecord,
    Record, State, Volume, VolumeKind, VolumeStatus,
};
use crate::storage::{RealStorage, Storage};
use crate::validate;

/// Id of the provider the default factory registers.
pub const DEFAULT_PROVIDER_ID: &str = "default";

/// Builds the default provider's (kind, configuration) when the journal has none.
pub type DefaultProviderFactory =
    Box<dyn FnOnce() -> Result<(String, ProviderConfig), String> + Send>;

/// Manager tunables.
pub struct ManagerConfig {
    pub journal: JournalConfig,
    /// Write a checkpoint after this many records.
    pub checkpoint_every: u64,
    /// Runs only when the journal holds no provider; registers `default`.
    pub default_provider: Option<DefaultProviderFactory>,
    /// Provider kinds that can be built, by kind name.
    pub factories: BTreeMap<String, ProviderFactory>,
    /// Events a subscriber may fall behind before it is told it lagged.
    pub event_capacity: usize,
    /// The file system under the journal; `None` is the real one. A test seam
    /// (fault injection, simulated power cuts).
    pub storage: Option<Arc<dyn Storage>>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            journal: JournalConfig::default(),
            checkpoint_every: 10_000,
            default_provider: None,
            factories: provider::builtin_factories(),
            event_capacity: 1024,
            storage: None,
        }
    }
}

impl fmt::Debug for ManagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerConfig")
            .field("journal", &self.journal)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("default_provider", &self.default_provider.is_some())
            .field("factories", &self.factories.keys().collect::<Vec<_>>())
            .field("storage", &self.storage)
            .finish()
    }
}

/// Errors of the manager's verbs.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManagerError {
    NoSuchVolume(String),
    NoSuchProvider(String),
    NoSuchOrphan {
        provider: String,
        volume: String,
    },
    AlreadyExists(String),
    InvalidId {
        id: String,
        reason: String,
    },
    InvalidMeta(String),
    InvalidInput(String),
    /// The volume has snapshots or forks.
    HasDependents {
        id: String,
        dependents: Vec<String>,
    },
    /// Another operation on that volume is in flight.
    Busy(String),
    /// The operation needs a snapshot (fork, send) or a data volume.
    WrongKind {
        id: String,
        expected: VolumeKind,
    },
    /// The volume is recorded but its provider does not show it.
    VolumeLost(String),
    /// The provider failed; carries its message.
    Provider {
        provider: String,
        error: ProviderError,
    },
    /// The provider could not be built at open (its volumes are untouched).
    ProviderUnavailable {
        provider: String,
        reason: String,
    },
    /// The journal failed (poisoned, I/O, corruption at open).
    Journal(JournalError),
    /// The journal contradicts itself on replay.
    Replay(String),
    /// A transfer stream failed on our side.
    Stream(String),
    Internal(String),
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerError::NoSuchVolume(id) => write!(f, "no such volume: {id}"),
            ManagerError::NoSuchProvider(id) => write!(f, "no such provider: {id}"),
            ManagerError::NoSuchOrphan { provider, volume } => {
                write!(f, "no orphan {volume} on provider {provider}")
            }
            ManagerError::AlreadyExists(id) => write!(f, "already exists: {id}"),
            ManagerError::InvalidId { id, reason } => write!(f, "invalid id {id:?}: {reason}"),
            ManagerError::InvalidMeta(reason) => write!(f, "invalid metadata: {reason}"),
            ManagerError::InvalidInput(reason) => write!(f, "invalid input: {reason}"),
            ManagerError::HasDependents { id, dependents } => {
                write!(f, "{id} has dependents: {}", dependents.join(", "))
            }
            ManagerError::Busy(id) => write!(f, "volume {id} is busy with another operation"),
            ManagerError::WrongKind { id, expected } => {
                write!(f, "{id} is not a {expected} volume")
            }
            ManagerError::VolumeLost(id) => {
                write!(f, "volume {id} is lost (its provider does not show it)")
            }
            ManagerError::Provider { provider, error } => write!(f, "provider {provider}: {error}"),
            ManagerError::ProviderUnavailable { provider, reason } => {
                write!(f, "provider {provider} is unavailable: {reason}")
            }
            ManagerError::Journal(e) => write!(f, "{e}"),
            ManagerError::Replay(e) => write!(f, "replay failed: {e}"),
            ManagerError::Stream(e) => write!(f, "transfer failed: {e}"),
            ManagerError::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

impl std::error::Error for ManagerError {}

impl From<JournalError> for ManagerError {
    fn from(e: JournalError) -> Self {
        ManagerError::Journal(e)
    }
}

/// What reconciliation did at open.
#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    /// (case, volume, detail) per journaled resolution.
    pub resolutions: Vec<(Case, Option<String>, String)>,
    /// Untagged items under a provider root, never touched.
    pub foreign: Vec<(String, String)>,
    /// Providers that could not be built, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// How the journal ended; a torn tail was truncated.
    pub journal_end: Option<LogEnd>,
    pub checkpoint_seq: Option<u64>,
    pub replayed_records: usize,
}

/// Journal statistics for benchmarks and the agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManagerStats {
    pub durable_seq: u64,
    pub syncs: u64,
    /// Mutating operations completed through the write path since open.
    pub operations: u64,
    /// Their summed wall time, and the part spent awaiting durable appends.
    pub operation_ns: u64,
    pub journal_wait_ns: u64,
}

#[derive(Debug, Default)]
struct Counters {
    operations: AtomicU64,
    operation_ns: AtomicU64,
    journal_wait_ns: AtomicU64,
}

struct Core {
    state: State,
    /// Durable records not yet applied because an earlier one is still missing.
    waiting: BTreeMap<u64, Record>,
    /// Volume ids with an operation in flight.
    busy: BTreeSet<String>,
    since_checkpoint: u64,
}

struct Inner {
    journal: Arc<Journal<Record>>,
    core: Mutex<Core>,
    applied: watch::Sender<u64>,
    providers: RwLock<HashMap<String, Arc<dyn Provider>>>,
    unavailable: RwLock<HashMap<String, String>>,
    factories: BTreeMap<String, ProviderFactory>,
    events: broadcast::Sender<Event>,
    checkpoint_every: u64,
    state_dir: PathBuf,
    report: Mutex<ReconcileReport>,
    counters: Counters,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_id(id: &str) -> Result<(), ManagerError> {
    validate::id(id).map_err(|reason| ManagerError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

/// Releases claimed volume ids when the operation ends (or its task panics).
struct Claim {
    inner: Arc<Inner>,
    ids: Vec<String>,
    /// Left claimed on purpose: the outcome could not be journaled.
    keep: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mut core = self.inner.core.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            core.busy.remove(id);
        }
    }
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
        let (journal, recovery) = tokio::task::spawn_blocking(move || {
            Journal::<Record>::open_with_storage(storage, &dir, journal_config)
        })
        .await
        .map_err(|e| ManagerError::Internal(e.to_string()))??;

        let mut state = match &recovery.checkpoint {
            Some((_, payload)) => journal::decode_checkpoint::<State>(payload)
                .map_err(|e| ManagerError::Replay(format!("checkpoint does not decode: {e}")))?,
            None => State::default(),
        };
        for (seq, record) in &recovery.records {
            state
                .apply(*seq, record)
                .map_err(|e| ManagerError::Replay(e.to_string()))?;
        }
        let report = ReconcileReport {
            journal_end: Some(recovery.end.clone()),
            checkpoint_seq: recovery.checkpoint.as_ref().map(|(s, _)| *s),
            replayed_records: recovery.records.len(),
            ..ReconcileReport::default()
        };
        let seq = state.seq;
        let (applied, _) = watch::channel(seq);
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let inner = Arc::new(Inner {
            journal: Arc::new(journal),
            core: Mutex::new(Core {
                state,
                waiting: BTreeMap::new(),
                busy: BTreeSet::new(),
                since_checkpoint: 0,
            }),
            applied,
            providers: RwLock::new(HashMap::new()),
            unavailable: RwLock::new(HashMap::new()),
            factories: config.factories,
            events,
            checkpoint_every: config.checkpoint_every.max(1),
            state_dir,
            report: Mutex::new(report),
            counters: Counters::default(),
        });
        let manager = Manager { inner };

        // Providers come back from the journal; the factory runs only if none.
        let records: Vec<ProviderRecord> =
            manager.with_state(|s| s.providers.values().cloned().collect());
        for record in &records {
            match manager.inner.build_provider(&record.kind, &record.config) {
                Ok(p) => {
                    manager
                        .inner
                        .providers
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(record.id.clone(), p);
                }
                Err(e) => {
                    tracing::error!(provider = %record.id, error = %e, "provider unavailable");
                    manager
                        .inner
                        .unavailable
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(record.id.clone(), e.to_string());
                }
            }
        }
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
        let core = self.inner.core.lock().unwrap_or_else(|e| e.into_inner());
        f(&core.state)
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
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stats(&self) -> ManagerStats {
        ManagerStats {
            durable_seq: self.inner.journal.durable_seq(),
            syncs: self.inner.journal.sync_count(),
            operations: self.inner.counters.operations.load(Ordering::Relaxed),
            operation_ns: self.inner.counters.operation_ns.load(Ordering::Relaxed),
            journal_wait_ns: self.inner.counters.journal_wait_ns.load(Ordering::Relaxed),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
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

    pub fn providers(&self) -> Vec<ProviderRecord> {
        self.with_state(|s| s.providers.values().cloned().collect())
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

    /// Registers a provider under `id`.
    pub async fn add_provider(
        &self,
        id: &str,
        kind: &str,
        config: ProviderConfig,
    ) -> Result<(), ManagerError> {
        check_id(id)?;
        validate::provider_config(kind, &config).map_err(ManagerError::InvalidInput)?;
        if !self.inner.factories.contains_key(kind) {
            return Err(ManagerError::InvalidInput(format!(
                "unknown provider kind {kind:?}"
            )));
        }
        let claim_id = format!("provider:{id}");
        let (claim, ()) = self.inner.claim(&[claim_id.as_str()], |s| {
            if s.providers.contains_key(id) {
                return Err(ManagerError::AlreadyExists(id.to_owned()));
            }
            Ok(())
        })?;
        let inner = self.inner.clone();
        let action = Action::AddProvider(ProviderRecord {
            id: id.to_owned(),
            kind: kind.to_owned(),
            config: config.clone(),
        });
        let id = id.to_owned();
        let kind = kind.to_owned();
        self.spawn(async move {
            let built: Arc<Mutex<Option<Arc<dyn Provider>>>> = Arc::default();
            let slot = built.clone();
            let inner2 = inner.clone();
            inner
                .run(claim, action, &id, move |_op| {
                    let p = inner2.build_provider(&kind, &config)?;
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                    Ok(Done::default())
                })
                .await?;
            if let Some(p) = built.lock().unwrap_or_else(|e| e.into_inner()).take() {
                inner
                    .providers
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, p);
            }
            Ok(())
        })
        .await
    }

    /// Creates a data volume on `provider_id`; a UUID when `id` is `None`.
    pub async fn create_volume(
        &self,
        provider_id: &str,
        id: Option<&str>,
        meta: Meta,
    ) -> Result<Volume, ManagerError> {
        let id = id.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        check_id(&id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let provider = self.inner.provider(provider_id)?;
        let (claim, ()) = self.inner.claim(&[id.as_str()], |s| {
            if s.volumes.contains_key(&id) {
                return Err(ManagerError::AlreadyExists(id.clone()));
            }
            Ok(())
        })?;
        let action = Action::CreateVolume {
            provider: provider_id.to_owned(),
            volume: id.clone(),
            meta,
        };
        let inner = self.inner.clone();
        let provider_id = provider_id.to_owned();
        self.spawn(async move {
            let vid = id.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: &vid,
                        op,
                        kind: VolumeKind::Data,
                    };
                    let created = provider.create_volume(&spec);
                    undo_on_error(provider.as_ref(), &spec, created)
                })
                .await?;
            inner.volume(&id)
        })
        .await
    }

    /// Destroys a volume or snapshot. Refused while it has dependents.
    pub async fn destroy_volume(&self, id: &str) -> Result<(), ManagerError> {
        check_id(id)?;
        let (claim, volume) = self.inner.claim(&[id], |s| {
            let v = s
                .volumes
                .get(id)
                .ok_or_else(|| ManagerError::NoSuchVolume(id.to_owned()))?;
            let dependents = s.dependents(id);
            if !dependents.is_empty() {
                return Err(ManagerError::HasDependents {
                    id: id.to_owned(),
                    dependents,
                });
            }
            Ok(v.clone())
        })?;
        let provider = self.inner.provider(&volume.provider)?;
        let action = Action::DestroyVolume {
            volume: id.to_owned(),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let provider_id = volume.provider.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    match provider.destroy(&volume_ref(&volume)) {
                        Ok(()) => Ok(Done::default()),
                        // Failed after its side effect? If the volume is gone
                        // the destroy happened: journal Done, not Failed, or
                        // the state would keep a volume the provider lost.
                        Err(e) => match find(provider.as_ref(), &volume.id) {
                            Ok(None) => Ok(Done::default()),
                            _ => Err(e),
                        },
                    }
                })
                .await
        })
        .await
    }

    /// Takes a snapshot of data volume `id`.
    pub async fn create_snapshot(&self, id: &str, meta: Meta) -> Result<Volume, ManagerError> {
        check_id(id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let snap_id = Uuid::new_v4().to_string();
        let (claim, source) = self.inner.claim(&[id, snap_id.as_str()], |s| {
            live_kind(s, id, VolumeKind::Data).cloned()
        })?;
        let provider = self.inner.provider(&source.provider)?;
        let action = Action::CreateSnapshot {
            source: id.to_owned(),
            snapshot: snap_id.clone(),
            meta,
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let sid = snap_id.clone();
            let provider_id = source.provider.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: &sid,
                        op,
                        kind: VolumeKind::Snapshot,
                    };
                    let created = provider.create_snapshot(&volume_ref(&source), &spec);
                    undo_on_error(provider.as_ref(), &spec, created)
                })
                .await?;
            inner.volume(&snap_id)
        })
        .await
    }

    /// Makes a writable volume from snapshot `snapshot_id`.
    pub async fn fork_volume(
        &self,
        snapshot_id: &str,
        id: Option<&str>,
        meta: Meta,
    ) -> Result<Volume, ManagerError> {
        check_id(snapshot_id)?;
        let id = id.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        check_id(&id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let (claim, snapshot) = self.inner.claim(&[snapshot_id, id.as_str()], |s| {
            let v = live_kind(s, snapshot_id, VolumeKind::Snapshot)?;
            if s.volumes.contains_key(&id) {
                return Err(ManagerError::AlreadyExists(id.clone()));
            }
            Ok(v.clone())
        })?;
        let provider = self.inner.provider(&snapshot.provider)?;
        let action = Action::ForkVolume {
            snapshot: snapshot_id.to_owned(),
            volume: id.clone(),
            meta,
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let vid = id.clone();
            let provider_id = snapshot.provider.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: &vid,
                        op,
                        kind: VolumeKind::Data,
                    };
                    let created = provider.fork_volume(&volume_ref(&snapshot), &spec);
                    undo_on_error(provider.as_ref(), &spec, created)
                })
                .await?;
            inner.volume(&id)
        })
        .await
    }

    /// Identities (GUIDs) of the snapshots of data volume `id`: what a sender
    /// may use as the base of an incremental stream.
    pub fn list_haves(&self, id: &str) -> Result<Vec<String>, ManagerError> {
        check_id(id)?;
        self.with_state(|s| {
            live(s, id)?;
            let mut snaps: Vec<&Volume> = s
                .volumes
                .values()
                .filter(|v| v.kind == VolumeKind::Snapshot && v.parent.as_deref() == Some(id))
                .collect();
            snaps.sort_by_key(|v| (v.created_at_ms, v.id.clone()));
            Ok(snaps
                .iter()
                .filter_map(|v| v.details.get(DETAIL_GUID).cloned())
                .collect())
        })
    }

    /// Streams snapshot `id` to `out`: incremental from the newest older
    /// snapshot of the same volume whose GUID is among `haves`, else full.
    pub async fn send_snapshot<W>(
        &self,
        id: &str,
        haves: &[String],
        out: W,
    ) -> Result<SendStats, ManagerError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.send_snapshot_resuming(id, haves, None, out).await
    }

    /// Whether the provider can continue a stream of snapshot `id` from a
    /// receiver's resume `token` (a dry run; nothing is sent).
    pub async fn resume_fits(&self, id: &str, token: &str) -> Result<bool, ManagerError> {
        check_id(id)?;
        validate::resume_token(token).map_err(ManagerError::InvalidInput)?;
        let snapshot = self.with_state(|s| live_kind(s, id, VolumeKind::Snapshot).cloned())?;
        let provider = self.inner.provider(&snapshot.provider)?;
        let token = token.to_owned();
        let provider_id = snapshot.provider.clone();
        tokio::task::spawn_blocking(move || provider.resume_fits(&volume_ref(&snapshot), &token))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(|error| ManagerError::Provider {
                provider: provider_id,
                error,
            })
    }

    /// As [`Manager::send_snapshot`], but if the receiver hands back the
    /// resume token of an interrupted stream of this snapshot, and the
    /// provider can continue it, only the rest is sent
    /// ([`SendStats::resumed`]). A token that does not fit is ignored: the
    /// stream is then a whole one, and the receiver discards its partial state.
    pub async fn send_snapshot_resuming<W>(
        &self,
        id: &str,
        haves: &[String],
        resume_token: Option<&str>,
        mut out: W,
    ) -> Result<SendStats, ManagerError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        check_id(id)?;
        if let Some(token) = resume_token {
            validate::resume_token(token).map_err(ManagerError::InvalidInput)?;
        }
        let resume_token = resume_token.map(str::to_owned);
        let (snapshot, base) = self.with_state(|s| {
            let snap = live_kind(s, id, VolumeKind::Snapshot)?.clone();
            let base = s
                .volumes
                .values()
                .filter(|v| {
                    v.kind == VolumeKind::Snapshot
                        && v.id != snap.id
                        && v.status == VolumeStatus::Live
                        && v.parent == snap.parent
                        && v.provider == snap.provider
                        && (v.created_at_ms, &v.id) < (snap.created_at_ms, &snap.id)
                        && v.details
                            .get(DETAIL_GUID)
                            .is_some_and(|g| haves.contains(g))
                })
                .max_by_key(|v| (v.created_at_ms, v.id.clone()))
                .cloned();
            Ok::<_, ManagerError>((snap, base))
        })?;
        let provider = self.inner.provider(&snapshot.provider)?;
        let provider_id = snapshot.provider.clone();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let producer = tokio::task::spawn_blocking(move || {
            let mut writer = ChannelWriter {
                tx,
                buf: Vec::new(),
            };
            let snap = volume_ref(&snapshot);
            let resumed = match resume_token {
                Some(token) => provider.send_resumed(&snap, &token, &mut writer)?,
                None => None,
            };
            let stats = match resumed {
                Some(stats) => stats,
                None => provider.send_snapshot(
                    &snap,
                    base.as_ref().map(volume_ref).as_ref(),
                    &mut writer,
                )?,
            };
            std::io::Write::flush(&mut writer).map_err(|e| ProviderError::io("send", e))?;
            Ok::<_, ProviderError>(stats)
        });
        let mut write_error = None;
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = out.write_all(&chunk).await {
                write_error = Some(e);
                break;
            }
        }
        drop(rx);
        let result = producer
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        if let Some(e) = write_error {
            return Err(ManagerError::Stream(format!("writing the stream: {e}")));
        }
        let stats = result.map_err(|error| ManagerError::Provider {
            provider: provider_id,
            error,
        })?;
        out.flush()
            .await
            .map_err(|e| ManagerError::Stream(format!("flushing the stream: {e}")))?;
        Ok(stats)
    }

    /// Receives a stream into data volume `id`; returns the new snapshot.
    pub async fn receive_snapshot<Rd>(&self, id: &str, input: Rd) -> Result<Volume, ManagerError>
    where
        Rd: AsyncRead + Unpin + Send,
    {
        self.receive_snapshot_with(id, Meta::new(), input).await
    }

    /// Receives a stream into data volume `id` as a new snapshot with `meta`.
    ///
    /// A stream that stops part-way on a provider with resumable receives
    /// (ZFS) leaves its partial state on the target and fails with
    /// [`ProviderError::Suspended`]; the journal records the resume token and
    /// the target's `details` show it ([`crate::state::DETAIL_RESUME_TOKEN`]),
    /// so the sender can continue the stream
    /// ([`Manager::send_snapshot_resuming`]) into a later receive. Any other
    /// stream into the target, a destroy, or [`Manager::abort_receive`]
    /// discards the partial state.
    pub async fn receive_snapshot_with<Rd>(
        &self,
        id: &str,
        meta: Meta,
        mut input: Rd,
    ) -> Result<Volume, ManagerError>
    where
        Rd: AsyncRead + Unpin + Send,
    {
        check_id(id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let snap_id = Uuid::new_v4().to_string();
        let (claim, target) = self.inner.claim(&[id, snap_id.as_str()], |s| {
            live_kind(s, id, VolumeKind::Data).cloned()
        })?;
        let provider = self.inner.provider(&target.provider)?;
        let action = Action::ReceiveSnapshot {
            target: id.to_owned(),
            snapshot: snap_id.clone(),
            meta,
        };
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(16);
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let sid = snap_id.clone();
            let provider_id = target.provider.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: &sid,
                        op,
                        kind: VolumeKind::Snapshot,
                    };
                    let mut reader = ChannelReader {
                        rx,
                        buf: Vec::new(),
                        pos: 0,
                    };
                    let received =
                        provider.receive_snapshot(&volume_ref(&target), &spec, &mut reader);
                    undo_on_error(provider.as_ref(), &spec, received)
                })
                .await?;
            inner.volume(&snap_id)
        });
        // Pump the caller's stream to the provider; if the caller stops, the
        // provider sees a short stream and the operation fails cleanly.
        let mut chunk = vec![0u8; 256 * 1024];
        let mut read_error = None;
        loop {
            match input.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Ok(chunk[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // The provider must see a failed read, not the end of a
                    // stream that may parse as complete.
                    let _ = tx
                        .send(Err(std::io::Error::new(e.kind(), e.to_string())))
                        .await;
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let result = task
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        match (result, read_error) {
            (Ok(v), _) => Ok(v),
            // The partial receive is kept: that is what the caller must know.
            (
                Err(
                    e @ ManagerError::Provider {
                        error: ProviderError::Suspended { .. },
                        ..
                    },
                ),
                _,
            ) => Err(e),
            (Err(e), Some(read)) => Err(ManagerError::Stream(format!(
                "reading the stream: {read} ({e})"
            ))),
            (Err(e), None) => Err(e),
        }
    }

    /// Discards the resumable partial receive data volume `id` holds (see
    /// [`Manager::receive_snapshot_with`]). Succeeds if it holds none.
    pub async fn abort_receive(&self, id: &str) -> Result<(), ManagerError> {
        check_id(id)?;
        let (claim, target) = self
            .inner
            .claim(&[id], |s| live_kind(s, id, VolumeKind::Data).cloned())?;
        let provider = self.inner.provider(&target.provider)?;
        let action = Action::AbortReceive {
            target: id.to_owned(),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let provider_id = target.provider.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    provider.abort_receive(&volume_ref(&target))?;
                    Ok(Done::default())
                })
                .await
        })
        .await
    }

    /// Records an orphan reported by reconciliation as a volume.
    pub async fn adopt_orphan(
        &self,
        provider_id: &str,
        volume_id: &str,
    ) -> Result<Volume, ManagerError> {
        check_id(provider_id)?;
        check_id(volume_id)?;
        let (claim, orphan) = self.inner.claim(&[volume_id], |s| {
            if s.volumes.contains_key(volume_id) {
                return Err(ManagerError::AlreadyExists(volume_id.to_owned()));
            }
            noted_orphan(s, provider_id, volume_id)
        })?;
        let provider = self.inner.provider(provider_id)?;
        let action = Action::AdoptOrphan {
            provider: provider_id.to_owned(),
            volume: volume_id.to_owned(),
            kind: orphan.kind,
            tagged_op: orphan.tagged_op,
        };
        let inner = self.inner.clone();
        let provider_id = provider_id.to_owned();
        let volume_id = volume_id.to_owned();
        self.spawn(async move {
            let vid = volume_id.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    let found = find(provider.as_ref(), &vid)?;
                    let found =
                        found.ok_or_else(|| ProviderError::NotFound(format!("orphan {vid}")))?;
                    Ok(Done {
                        location: found.location,
                        details: found.details,
                    })
                })
                .await?;
            inner.volume(&volume_id)
        })
        .await
    }

    /// Destroys an orphan reported by reconciliation.
    pub async fn destroy_orphan(
        &self,
        provider_id: &str,
        volume_id: &str,
    ) -> Result<(), ManagerError> {
        check_id(provider_id)?;
        check_id(volume_id)?;
        let (claim, orphan) = self
            .inner
            .claim(&[volume_id], |s| noted_orphan(s, provider_id, volume_id))?;
        let provider = self.inner.provider(provider_id)?;
        let action = Action::DestroyOrphan {
            provider: provider_id.to_owned(),
            volume: volume_id.to_owned(),
        };
        let inner = self.inner.clone();
        let provider_id = provider_id.to_owned();
        self.spawn(async move {
            inner
                .run(claim, action, &provider_id, move |_op| {
                    if let Some(found) = find(provider.as_ref(), &orphan.volume)? {
                        provider.destroy(&found_ref(&found, &orphan.volume, orphan.kind))?;
                    }
                    Ok(Done::default())
                })
                .await
        })
        .await
    }

    /// Closes the journal (after the records already queued) and releases
    /// the state directory's lock. Operations still running on other clones
    /// fail with a journal `Closed` error; their intents are reconciled at the
    /// next open. A host agent stops accepting requests before calling this.
    pub async fn close(self) {
        self.inner.journal.shutdown().await;
    }

    async fn spawn<T, F>(&self, body: F) -> Result<T, ManagerError>
    where
        F: Future<Output = Result<T, ManagerError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(body)
            .await
            .map_err(|e| ManagerError::Internal(format!("operation task failed: {e}")))?
    }

    /// Runs reconciliation for every available provider (and provider-less
    /// pending operations) and journals each resolution.
    async fn reconcile(&self) -> Result<(), ManagerError> {
        let inner = &self.inner;
        let state = self.state();
        let mut report = ReconcileReport::default();
        let mut decisions = reconcile::decide(&state, None, &[]);
        let mut providers: Vec<(String, Arc<dyn Provider>)> = inner
            .providers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        providers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut provider_of: HashMap<usize, Arc<dyn Provider>> = HashMap::new();
        for (id, provider) in &providers {
            let p = provider.clone();
            let found = tokio::task::spawn_blocking(move || p.inventory())
                .await
                .map_err(|e| ManagerError::Internal(e.to_string()))?;
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(provider = %id, error = %e, "inventory failed; provider unavailable");
                    inner
                        .unavailable
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), e.to_string());
                    report.unavailable.push((id.clone(), e.to_string()));
                    continue;
                }
            };
            let start = decisions.len();
            decisions.extend(reconcile::decide(&state, Some(id), &found));
            for i in start..decisions.len() {
                provider_of.insert(i, provider.clone());
            }
        }
        for (id, reason) in inner
            .unavailable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if !report.unavailable.iter().any(|(p, _)| p == id) {
                report.unavailable.push((id.clone(), reason.clone()));
            }
        }
        // Pending operations on unavailable providers stay pending, and their
        // volumes stay claimed until a later open can decide them.
        let unavailable: Vec<String> = report.unavailable.iter().map(|(p, _)| p.clone()).collect();
        {
            let mut core = inner.core.lock().unwrap_or_else(|e| e.into_inner());
            for p in core.state.pending.values().cloned().collect::<Vec<_>>() {
                if reconcile::provider_of(&core.state, &p.action)
                    .is_some_and(|id| unavailable.contains(&id))
                {
                    for v in p.action.volumes() {
                        core.busy.insert(v.to_owned());
                    }
                }
            }
        }

        for (i, d) in decisions.into_iter().enumerate() {
            if d.resolution == Resolution::Ignore {
                if let Some(found) = &d.found {
                    tracing::info!(item = %found.name, "reconcile: foreign item left alone");
                    report.foreign.push((found.name.clone(), d.detail.clone()));
                }
                continue;
            }
            let provider = provider_of.get(&i).cloned();
            let pending = d.op.and_then(|op| state.pending.get(&op).cloned());
            let effect = {
                let d = d.clone();
                let state = state.clone();
                tokio::task::spawn_blocking(move || {
                    resolve(&d, provider.as_deref(), pending.as_ref(), &state)
                })
                .await
                .map_err(|e| ManagerError::Internal(e.to_string()))?
            };
            let record = Record::Reconciled {
                at_ms: now_ms(),
                case: d.case,
                detail: d.detail.clone(),
                effect,
            };
            let seq = inner.journal.append(&record).await?;
            inner.submit(seq, record);
            tracing::warn!(case = %d.case, volume = ?d.volume, detail = %d.detail, "reconciled");
            report
                .resolutions
                .push((d.case, d.volume.clone(), d.detail.clone()));
        }
        let mut stored = inner.report.lock().unwrap_or_else(|e| e.into_inner());
        stored.resolutions = report.resolutions;
        stored.foreign = report.foreign;
        stored.unavailable = report.unavailable;
        Ok(())
    }
}

/// Performs a decision's provider step and returns the effect to journal.
fn resolve(
    d: &reconcile::Decision,
    provider: Option<&dyn Provider>,
    pending: Option<&crate::state::Pending>,
    state: &State,
) -> Effect {
    let interrupted = |why: String| OpResult::Failed { error: why };
    let op = d.op.unwrap_or_default();
    let result = match d.resolution {
        Resolution::RollForward => {
            let found = d.found.as_ref().expect("roll forward has a found item");
            OpResult::Done(Done {
                location: found.location.clone(),
                details: found.details.clone(),
            })
        }
        Resolution::FailInterrupted => interrupted("interrupted".into()),
        Resolution::FinishThenDone => {
            let found = d.found.as_ref().expect("finish has a found item");
            match provider.map(|p| p.finish(found)) {
                Some(Ok(created)) => OpResult::Done(done(created)),
                Some(Err(e)) => {
                    // Could not finish: remove it so nothing half-made stays.
                    if let (Some(p), Some(vol)) = (provider, d.volume.as_deref()) {
                        let kind = reconcile::found_kind(found).unwrap_or(VolumeKind::Data);
                        let _ = p.destroy(&found_ref(found, vol, kind));
                    }
                    interrupted(format!("interrupted; could not finish: {e}"))
                }
                None => interrupted("interrupted; provider unavailable".into()),
            }
        }
        Resolution::DestroyThenDone => {
            let found = d.found.as_ref().expect("destroy has a found item");
            let vol = d.volume.as_deref().unwrap_or_default();
            let kind = reconcile::found_kind(found).unwrap_or(VolumeKind::Data);
            let result = match state.volumes.get(vol) {
                Some(v) => provider.map(|p| p.destroy(&volume_ref(v))),
                None => provider.map(|p| p.destroy(&found_ref(found, vol, kind))),
            };
            match result {
                Some(Ok(())) | None => OpResult::Done(Done::default()),
                // The destroy intent stays the operator's wish; report it.
                Some(Err(e)) => interrupted(format!("destroy during recovery failed: {e}")),
            }
        }
        Resolution::Done => OpResult::Done(Done::default()),
        Resolution::KeepResumable => {
            let target = d
                .found
                .as_ref()
                .expect("a resumable receive has its target");
            let partial = target
                .partial
                .clone()
                .expect("a resumable target has a partial");
            // A killed receive may leave its target unmounted; finishing the
            // target mounts it again and keeps the partial state.
            match provider.map(|p| p.finish(target)) {
                Some(Ok(_)) => OpResult::Suspended {
                    error: "receive interrupted; resumable".into(),
                    token: partial.token,
                    guid: partial.guid,
                },
                Some(Err(e)) => {
                    if let Some(p) = provider {
                        let _ = p.abort_partial(op);
                    }
                    interrupted(format!(
                        "receive interrupted; its target could not be made usable ({e}), partial state removed"
                    ))
                }
                None => interrupted("interrupted; provider unavailable".into()),
            }
        }
        Resolution::AbortReceiveThenDone => {
            let vol = d.volume.as_deref().unwrap_or_default();
            let result = match state.volumes.get(vol) {
                Some(v) => provider.map(|p| p.abort_receive(&volume_ref(v))),
                None => None,
            };
            match result {
                Some(Ok(())) | None => OpResult::Done(Done::default()),
                Some(Err(e)) => interrupted(format!("abort-receive during recovery failed: {e}")),
            }
        }
        Resolution::UndoThenFail => {
            if let Some(p) = provider {
                let _ = p.abort_partial(op);
                if let (Some(found), Some(vol)) = (&d.found, d.volume.as_deref()) {
                    let kind = reconcile::found_kind(found).unwrap_or(VolumeKind::Snapshot);
                    let _ = p.destroy(&found_ref(found, vol, kind));
                }
            }
            let what = pending.map_or("operation", |p| p.action.name());
            interrupted(format!("{what} interrupted; partial state removed"))
        }
        Resolution::MarkLost => {
            return Effect::MarkLost {
                volume: d.volume.clone().unwrap_or_default(),
            };
        }
        Resolution::MarkFound => {
            return Effect::MarkFound {
                volume: d.volume.clone().unwrap_or_default(),
            };
        }
        Resolution::ReportOrphan => {
            return Effect::NoteOrphan(d.orphan.clone().expect("orphan decision"));
        }
        Resolution::ForgetOrphan => {
            let o = d.orphan.as_ref().expect("orphan decision");
            return Effect::ForgetOrphan {
                provider: o.provider.clone(),
                volume: o.volume.clone(),
            };
        }
        Resolution::Ignore => unreachable!("ignored decisions are not journaled"),
    };
    Effect::Resolve { op, result }
}

/// After a failed creating call, removes whatever the provider holds that is
/// tagged with this very operation (never anything else), so a Failed outcome
/// leaves no orphan behind. If the cleanup itself fails, the item stays and the
/// next open reports it as an orphan: visible, never silent.
fn undo_on_error(
    provider: &dyn Provider,
    spec: &VolumeSpec<'_>,
    created: Result<Created, ProviderError>,
) -> Result<Done, ProviderError> {
    let error = match created {
        Ok(created) => return Ok(done(created)),
        // Kept on purpose: resumable.
        Err(e @ ProviderError::Suspended { .. }) => return Err(e),
        Err(e) => e,
    };
    if let Err(e) = provider.abort_partial(spec.op) {
        tracing::warn!(op = %spec.op, error = %e, "cleanup of partial state failed");
    }
    match find(provider, spec.id) {
        Ok(Some(found)) if found.tag.as_ref().is_some_and(|t| t.op == spec.op) => {
            if let Err(e) = provider.destroy(&found_ref(&found, spec.id, spec.kind)) {
                tracing::warn!(op = %spec.op, volume = spec.id, error = %e, "cleanup after failure failed");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(op = %spec.op, error = %e, "inventory after failure failed"),
    }
    Err(error)
}

fn done(created: Created) -> Done {
    Done {
        location: created.location,
        details: created.details,
    }
}

fn live<'a>(s: &'a State, id: &str) -> Result<&'a Volume, ManagerError> {
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
fn live_kind<'a>(s: &'a State, id: &str, kind: VolumeKind) -> Result<&'a Volume, ManagerError> {
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
fn noted_orphan(s: &State, provider: &str, volume: &str) -> Result<Orphan, ManagerError> {
    s.orphans
        .get(&crate::state::orphan_key(provider, volume))
        .cloned()
        .ok_or_else(|| ManagerError::NoSuchOrphan {
            provider: provider.to_owned(),
            volume: volume.to_owned(),
        })
}

fn volume_ref(v: &Volume) -> VolumeRef<'_> {
    VolumeRef {
        id: &v.id,
        kind: v.kind,
        parent: v.parent.as_deref(),
        location: &v.location,
        details: &v.details,
    }
}

fn found_ref<'a>(f: &'a Found, id: &'a str, kind: VolumeKind) -> VolumeRef<'a> {
    VolumeRef {
        id,
        kind,
        parent: f.tag.as_ref().and_then(|t| t.parent.as_deref()),
        location: &f.location,
        details: &f.details,
    }
}

fn find(provider: &dyn Provider, volume: &str) -> Result<Option<Found>, ProviderError> {
    Ok(provider
        .inventory()?
        .into_iter()
        .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == volume)))
}

impl Inner {
    fn build_provider(
        &self,
        kind: &str,
        config: &ProviderConfig,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let factory = self.factories.get(kind).ok_or_else(|| {
            ProviderError::InvalidConfig(format!("unknown provider kind {kind:?}"))
        })?;
        factory(config)
    }

    fn provider(&self, id: &str) -> Result<Arc<dyn Provider>, ManagerError> {
        if let Some(p) = self
            .providers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(p.clone());
        }
        if let Some(reason) = self
            .unavailable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Err(ManagerError::ProviderUnavailable {
                provider: id.to_owned(),
                reason: reason.clone(),
            });
        }
        Err(ManagerError::NoSuchProvider(id.to_owned()))
    }

    fn volume(&self, id: &str) -> Result<Volume, ManagerError> {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.state
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchVolume(id.to_owned()))
    }

    /// Validates against the state and marks `ids` busy, atomically; returns
    /// the claim and whatever the check extracted from the state.
    fn claim<T>(
        self: &Arc<Self>,
        ids: &[&str],
        check: impl FnOnce(&State) -> Result<T, ManagerError>,
    ) -> Result<(Claim, T), ManagerError> {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = ids.iter().find(|id| core.busy.contains(**id)) {
            return Err(ManagerError::Busy((*id).to_owned()));
        }
        let value = check(&core.state)?;
        for id in ids {
            core.busy.insert((*id).to_owned());
        }
        let claim = Claim {
            inner: self.clone(),
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            keep: false,
        };
        Ok((claim, value))
    }

    /// The write path shared by every verb (see the module doc).
    async fn run<F>(
        self: &Arc<Self>,
        mut claim: Claim,
        action: Action,
        provider_id: &str,
        effect: F,
    ) -> Result<(), ManagerError>
    where
        F: FnOnce(OpId) -> Result<Done, ProviderError> + Send + 'static,
    {
        let started = Instant::now();
        let op = Uuid::now_v7();
        let name = action.name();
        let span = tracing::info_span!("op", %op, kind = name, volume = ?action.volumes().first());
        let _enter = span.enter();
        drop(_enter);
        let intent = Record::Intent {
            op,
            at_ms: now_ms(),
            action,
        };
        // Invariant 1: the intent is durable before the provider is touched.
        let seq = self.journal.append(&intent).await?;
        let mut journal_ns = started.elapsed().as_nanos() as u64;
        self.submit(seq, intent);
        self.wait_applied(seq).await;
        let result = tokio::task::spawn_blocking(move || effect(op))
            .await
            .map_err(|e| ProviderError::Other(format!("provider call panicked: {e}")))
            .and_then(|r| r);
        let (outcome, error) = match result {
            Ok(done) => (OpResult::Done(done), None),
            Err(e) => (
                match &e {
                    ProviderError::Suspended { partial, cause, .. } => OpResult::Suspended {
                        error: cause.clone(),
                        token: partial.token.clone(),
                        guid: partial.guid.clone(),
                    },
                    _ => OpResult::Failed {
                        error: e.to_string(),
                    },
                },
                Some(ManagerError::Provider {
                    provider: provider_id.to_owned(),
                    error: e,
                }),
            ),
        };
        let record = Record::Outcome {
            op,
            at_ms: now_ms(),
            result: outcome,
        };
        // Invariant 2: acknowledged only once the outcome is durable.
        let append_started = Instant::now();
        let appended = self.journal.append(&record).await;
        journal_ns += append_started.elapsed().as_nanos() as u64;
        let seq = match appended {
            Ok(seq) => seq,
            Err(e) => {
                // The intent stays pending; its volumes stay claimed until a
                // reopen reconciles it.
                claim.keep = true;
                return Err(e.into());
            }
        };
        self.submit(seq, record);
        self.wait_applied(seq).await;
        let c = &self.counters;
        c.operations.fetch_add(1, Ordering::Relaxed);
        c.operation_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.journal_wait_ns.fetch_add(journal_ns, Ordering::Relaxed);
        tracing::debug!(%op, kind = name, seq, "operation done");
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hands a durable record to the state; applies every record that is now
    /// contiguous, in sequence order, and broadcasts their events.
    fn submit(&self, seq: u64, record: Record) {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.waiting.insert(seq, record);
        let mut applied_any = false;
        loop {
            let next = core.state.seq + 1;
            let Some(record) = core.waiting.remove(&next) else {
                break;
            };
            match core.state.apply(next, &record) {
                Ok(events) => {
                    for event in events {
                        let _ = self.events.send(event);
                    }
                }
                Err(e) => {
                    // Validation happens before the intent is written, so this
                    // is a bug; keep the record order and make it loud.
                    tracing::error!(error = %e, "state rejected a durable record");
                    core.state.seq = next;
                }
            }
            core.since_checkpoint += 1;
            applied_any = true;
        }
        if applied_any {
            let seq = core.state.seq;
            self.applied.send_replace(seq);
            if core.since_checkpoint >= self.checkpoint_every {
                core.since_checkpoint = 0;
                match journal::encode_checkpoint(&core.state) {
                    Ok(payload) => self.checkpoint_later(seq, payload),
                    Err(e) => tracing::error!(error = %e, "state does not encode for a checkpoint"),
                }
            }
        }
    }

    fn checkpoint_later(&self, seq: u64, payload: Vec<u8>) {
        // The journal accepts checkpoint requests through its queue; the send
        // happens on a task so `submit` never awaits under the state lock.
        let journal = self.journal.clone();
        tokio::spawn(async move {
            if let Err(e) = journal.checkpoint(seq, payload).await {
                tracing::error!(error = %e, seq, "checkpoint failed");
            }
        });
    }

    async fn wait_applied(&self, seq: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|applied| *applied >= seq).await;
    }
}

struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "receiver of the stream went away",
            )
        })
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
