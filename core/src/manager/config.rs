//! Manager tunables, the verbs' typed errors, and what open and the write
//! path report.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::journal::{JournalConfig, JournalError, LogEnd};
use crate::provider::{self, ProviderConfig, ProviderError, ProviderFactory};
use crate::state::{ApplyError, Case, VolumeKind};
use crate::storage::Storage;

/// Id of the provider the default factory registers.
pub const DEFAULT_PROVIDER_ID: &str = "default";

/// Builds the default provider's (kind, configuration) when the journal has none.
pub type DefaultProviderFactory =
    Box<dyn FnOnce() -> Result<(String, ProviderConfig), String> + Send>;

/// Manager tunables.
pub struct ManagerConfig {
    pub journal: JournalConfig,
    /// Write a checkpoint after this many records at least.
    pub checkpoint_every: u64,
    /// Whether the interval also grows with the state: a checkpoint after
    /// `max(checkpoint_every, entries)` records, where `entries` is what a
    /// checkpoint holds (volumes, pending operations, orphans; see
    /// [`State::entries`](crate::state::State::entries)). Encoding the
    /// state, done with it locked, is linear in its entries; spread over as
    /// many records it costs O(1) per record however large the state, and
    /// the records an open replays after the checkpoint stay within one
    /// interval (about as many as the entries it decodes, or
    /// `checkpoint_every`). Default `true`; the crash suites set `false` to
    /// checkpoint often on purpose.
    pub checkpoint_grows_with_state: bool,
    /// Runs only when the journal holds no provider; registers `default`.
    pub default_provider: Option<DefaultProviderFactory>,
    /// Provider kinds that can be built, by kind name.
    pub factories: BTreeMap<String, ProviderFactory>,
    /// Events a subscriber may fall behind before it is told it lagged.
    pub event_capacity: usize,
    /// The file system under the journal; `None` is the real one. A test seam
    /// (fault injection, simulated power cuts).
    pub storage: Option<Arc<dyn Storage>>,
    /// Experimental, off by default (issue #13): creates and destroys on a
    /// `Batched` provider go through its write cycle (`manager/cycle.rs`),
    /// one journal commit and one provider round a cycle for every
    /// operation queued since the last. Fewer flushes a create (at 8 HTTP
    /// clients on dir, 0.25 journal `fdatasync`s and 0.25 `syncfs` rounds
    /// against 0.8 and 0.4), but not faster on the disk it was measured on
    /// (README, "The write cycle"), and the kill -9 and power-cut suites
    /// do not run it yet.
    pub write_cycle: bool,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            journal: JournalConfig::default(),
            checkpoint_every: 10_000,
            checkpoint_grows_with_state: true,
            default_provider: None,
            factories: provider::builtin_factories(),
            event_capacity: 1024,
            storage: None,
            write_cycle: false,
        }
    }
}

impl fmt::Debug for ManagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerConfig")
            .field("journal", &self.journal)
            .field("checkpoint_every", &self.checkpoint_every)
            .field(
                "checkpoint_grows_with_state",
                &self.checkpoint_grows_with_state,
            )
            .field("default_provider", &self.default_provider.is_some())
            .field("factories", &self.factories.keys().collect::<Vec<_>>())
            .field("event_capacity", &self.event_capacity)
            .field("write_cycle", &self.write_cycle)
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
    /// Sends or forks in flight read the snapshot (`readers` of them),
    /// which an operation that changes it waits for: asked again after
    /// they end, it can go ahead.
    BeingRead {
        id: String,
        readers: usize,
    },
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
    /// The checkpoint replay starts from does not hold a state.
    Replay(String),
    /// The state machine refused a durable journal record (the journal
    /// contradicts itself). Opening refuses with it; a running manager that
    /// meets it stops and refuses every further operation with it, so the
    /// live state never goes where replay cannot follow.
    RecordRejected(ApplyError),
    /// A stream does not fit its target (it holds the stream's snapshot
    /// already, or the stream does not continue its newest snapshot);
    /// refused before anything was journaled or changed.
    StreamDoesNotFit {
        target: String,
        reason: String,
    },
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
            ManagerError::BeingRead { id, readers } => write!(
                f,
                "snapshot {id} is being read by {readers} send(s) or fork(s) in flight: \
                 ask again when they end"
            ),
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
            ManagerError::RecordRejected(e) => write!(
                f,
                "the journal contradicts the state machine: {e}; the manager stops there \
                 (`volmgr journal verify` shows the record, `volmgr journal repair --truncate-at` \
                 can cut it off)"
            ),
            ManagerError::StreamDoesNotFit { target, reason } => {
                write!(f, "the stream does not fit volume {target}: {reason}")
            }
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
    /// How long each step of open took.
    pub phases: OpenPhases,
}

/// Wall time of each step of [`crate::manager::Manager::open`], for the log
/// and the restart benchmark (each should grow linearly with the volumes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenPhases {
    /// `Journal::open`: lock, checkpoint file read and verified, segments
    /// after it walked and their records decoded.
    pub journal_open: Duration,
    /// The checkpoint's payload decoded into the state.
    pub checkpoint_decode: Duration,
    /// The records after the checkpoint applied to the state.
    pub replay: Duration,
    /// Providers built from their journaled records.
    pub providers: Duration,
    /// Every provider's inventory.
    pub inventory: Duration,
    /// The decision table run, resolutions performed and journaled.
    pub reconcile: Duration,
}

/// The manager's counters, for benchmarks and the agent's `GET /stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManagerStats {
    pub durable_seq: u64,
    pub syncs: u64,
    /// Mutating operations completed through the write path since open.
    pub operations: u64,
    /// Their summed wall time, and the part spent awaiting durable appends.
    pub operation_ns: u64,
    pub journal_wait_ns: u64,
    /// Time the journal's commits spent writing and in `fdatasync` (each
    /// commit once, however many operations it carried).
    pub journal_sync_ns: u64,
    /// Batched provider syncs run for operations (each shared by every
    /// operation whose side effect completed before it started).
    pub provider_syncs: u64,
    /// Operations waiting now for a batched provider sync: their side
    /// effect done, behind a sync that started before it or in their write
    /// cycle's round, or queued for the next write cycle (a create or
    /// destroy on a batched provider).
    pub provider_sync_waiting: usize,
    /// Checkpoints requested since open, and the time spent building them:
    /// the journal rebuilds each from its checkpoint and records and encodes
    /// it, on the blocking pool; no operation waits for it.
    pub checkpoints: u64,
    pub checkpoint_build_ns: u64,
    /// Checkpoints requested since open that failed, each logged: not
    /// stored (the state did not encode, the payload would not decode on
    /// open, `JournalError::CheckpointUndecodable`, or its write failed), or
    /// stored but the files it made unnecessary were not all removed. While
    /// they go on, the records an open replays (`durable_seq -
    /// checkpoint_seq`) and the segments on disk keep growing.
    pub checkpoint_failures: u64,
    /// The checkpoint an open would start from (0: none).
    pub checkpoint_seq: u64,
}
