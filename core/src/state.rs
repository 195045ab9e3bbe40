//! Journal record types and the pure state machine they drive.
//!
//! [`State::apply`] folds one [`Record`] into the state: no I/O, no clock, no
//! randomness (ids and timestamps travel inside the records), so replaying the
//! same journal always yields the same state, byte for byte, and live
//! application equals replay. It returns the [`Event`]s the change implies.
//! Records are serde types encoded by the journal with bincode: no
//! `flatten`, `skip`, `tag` or `untagged` attributes here, and new fields or
//! variants only at the end (see journal-format.md, "Version changes").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::journal::JournalRecord;

mod apply;

pub use crate::model::{DETAIL_GUID, Details, OpId, VolumeKind};

/// Free-form metadata of a volume (validated, bounded).
pub type Meta = BTreeMap<String, String>;
/// Detail keys of a data volume holding a resumable partial receive: the
/// provider's resume token and the guid of the snapshot the stream carries.
/// Set by a [`OpResult::Suspended`] receive; cleared by any other outcome of
/// a receive into the volume and by a done abort-receive.
pub const DETAIL_RESUME_TOKEN: &str = "resume-token";
pub const DETAIL_RESUME_GUID: &str = "resume-guid";
/// With a resumable partial receive of a pull: its source agent and snapshot
/// (copied from the receive's [`META_PULL_SOURCE`], [`META_PULL_SNAPSHOT`]).
pub const DETAIL_RESUME_SOURCE: &str = "resume-source";
pub const DETAIL_RESUME_SNAPSHOT: &str = "resume-snapshot";
/// Detail key of a data volume's capacity in bytes, where its provider
/// enforces one (ZFS `refquota`, a btrfs qgroup limit). Absent: unlimited
/// (bounded by the provider's free space only).
pub const DETAIL_CAPACITY: &str = "capacity-bytes";
/// Prefix of the detail keys recording a data volume's provider options
/// (`option.compression`).
pub const DETAIL_OPTION_PREFIX: &str = "option.";
/// Meta keys a pull puts on its receive (and so on the received snapshot):
/// where the stream comes from, so an interrupted pull can be resumed.
pub const META_PULL_SOURCE: &str = "pull-source";
pub const META_PULL_SNAPSHOT: &str = "pull-snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeStatus {
    Live,
    /// Recorded, but the provider no longer shows it (kept and reported).
    Lost,
}

/// A volume as the state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub provider: String,
    pub kind: VolumeKind,
    /// For a snapshot: the volume it was taken of (or received into).
    /// For a fork: the snapshot it was forked from.
    pub parent: Option<String>,
    pub meta: Meta,
    pub created_at_ms: u64,
    pub location: String,
    pub status: VolumeStatus,
    /// The operation that created it (its ownership tag on the provider).
    pub op: OpId,
    pub details: Details,
}

/// A registered provider: enough to rebuild it at open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub id: String,
    pub kind: String,
    pub config: BTreeMap<String, String>,
}

/// What a mutating operation intends to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    AddProvider(ProviderRecord),
    CreateVolume {
        provider: String,
        volume: String,
        meta: Meta,
    },
    DestroyVolume {
        volume: String,
    },
    CreateSnapshot {
        source: String,
        snapshot: String,
        meta: Meta,
    },
    ForkVolume {
        snapshot: String,
        volume: String,
        meta: Meta,
    },
    /// Receive a stream into data volume `target`, producing `snapshot`.
    ReceiveSnapshot {
        target: String,
        snapshot: String,
        meta: Meta,
    },
    /// Record an orphan the provider holds as a volume of the state.
    AdoptOrphan {
        provider: String,
        volume: String,
        kind: VolumeKind,
        /// The op id the orphan's tag carries.
        tagged_op: OpId,
    },
    DestroyOrphan {
        provider: String,
        volume: String,
    },
    /// Discard the resumable partial receive data volume `target` holds.
    AbortReceive {
        target: String,
    },
    /// Set data volume `volume`'s enforced capacity (when `Some`) and
    /// provider options (such as ZFS `compression`): a new volume's, or an
    /// expansion. Done: the volume's details record them
    /// ([`DETAIL_CAPACITY`], `option.<key>`).
    SetAttributes {
        volume: String,
        capacity_bytes: Option<u64>,
        options: BTreeMap<String, String>,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::AddProvider(_) => "add-provider",
            Action::CreateVolume { .. } => "create",
            Action::DestroyVolume { .. } => "destroy",
            Action::CreateSnapshot { .. } => "snapshot",
            Action::ForkVolume { .. } => "fork",
            Action::ReceiveSnapshot { .. } => "receive",
            Action::AdoptOrphan { .. } => "adopt-orphan",
            Action::DestroyOrphan { .. } => "destroy-orphan",
            Action::AbortReceive { .. } => "abort-receive",
            Action::SetAttributes { .. } => "set-attributes",
        }
    }

    /// The volume id this action creates, if any.
    pub fn creates(&self) -> Option<&str> {
        match self {
            Action::CreateVolume { volume, .. }
            | Action::ForkVolume { volume, .. }
            | Action::AdoptOrphan { volume, .. } => Some(volume),
            Action::CreateSnapshot { snapshot, .. } | Action::ReceiveSnapshot { snapshot, .. } => {
                Some(snapshot)
            }
            _ => None,
        }
    }

    /// Every volume id the action names (for busy-marking and dump filters).
    pub fn volumes(&self) -> Vec<&str> {
        match self {
            Action::AddProvider(_) => vec![],
            Action::CreateVolume { volume, .. }
            | Action::DestroyVolume { volume }
            | Action::AdoptOrphan { volume, .. }
            | Action::DestroyOrphan { volume, .. }
            | Action::SetAttributes { volume, .. } => vec![volume],
            Action::CreateSnapshot {
                source, snapshot, ..
            } => vec![source, snapshot],
            Action::ForkVolume {
                snapshot, volume, ..
            } => vec![snapshot, volume],
            Action::ReceiveSnapshot {
                target, snapshot, ..
            } => vec![target, snapshot],
            Action::AbortReceive { target } => vec![target],
        }
    }
}

/// What a finished side effect produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Done {
    /// Where the new volume is mounted/stored (creating actions only).
    pub location: String,
    pub details: Details,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Done(Done),
    Failed {
        error: String,
    },
    /// A receive stopped part-way; its target keeps the partial state,
    /// resumable with `token` (a stream of the snapshot with `guid`).
    Suspended {
        error: String,
        token: String,
        guid: String,
    },
}

/// The named rows of the reconciliation table (see reconcile.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Case {
    CreateRolledForward,
    CreateInterrupted,
    CreateFinished,
    DestroyFinished,
    DestroyAlreadyGone,
    DerivedRolledForward,
    DerivedUndone,
    VolumeLost,
    LostVolumeFound,
    OrphanReported,
    OrphanGone,
    ForeignIgnored,
    ProviderAddInterrupted,
    AdoptInterrupted,
    ReceiveSuspended,
    AbortReceiveFinished,
    /// A pending set-attributes whose volume is there: applied again, Done.
    AttributesReapplied,
    /// A pending set-attributes whose volume is gone: Failed.
    AttributesInterrupted,
    /// A pending destroy whose volume is there, retried at open, that the
    /// provider refused (busy, held, dependents): Failed, the volume kept.
    /// The row's case is [`Case::DestroyFinished`]; its record says this
    /// one ([`crate::reconcile::performed_case`]).
    DestroyFailed,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::CreateRolledForward => "create-rolled-forward",
            Case::CreateInterrupted => "create-interrupted",
            Case::CreateFinished => "create-finished",
            Case::DestroyFinished => "destroy-finished",
            Case::DestroyAlreadyGone => "destroy-already-gone",
            Case::DerivedRolledForward => "derived-rolled-forward",
            Case::DerivedUndone => "derived-undone",
            Case::VolumeLost => "volume-lost",
            Case::LostVolumeFound => "lost-volume-found",
            Case::OrphanReported => "orphan-reported",
            Case::OrphanGone => "orphan-gone",
            Case::ForeignIgnored => "foreign-ignored",
            Case::ProviderAddInterrupted => "provider-add-interrupted",
            Case::AdoptInterrupted => "adopt-interrupted",
            Case::ReceiveSuspended => "receive-suspended",
            Case::AbortReceiveFinished => "abort-receive-finished",
            Case::AttributesReapplied => "attributes-reapplied",
            Case::AttributesInterrupted => "attributes-interrupted",
            Case::DestroyFailed => "destroy-failed",
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An orphan: provider data tagged as ours with no record in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub provider: String,
    pub volume: String,
    pub kind: VolumeKind,
    pub tagged_op: OpId,
    pub location: String,
}

/// What a reconciliation decision does to the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Finishes a pending operation, as an Outcome would.
    Resolve {
        op: OpId,
        result: OpResult,
    },
    MarkLost {
        volume: String,
    },
    MarkFound {
        volume: String,
    },
    NoteOrphan(Orphan),
    ForgetOrphan {
        provider: String,
        volume: String,
    },
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Durable before the provider is touched (invariant 1).
    Intent {
        op: OpId,
        at_ms: u64,
        action: Action,
    },
    /// Durable before the caller is answered (invariant 2).
    Outcome {
        op: OpId,
        at_ms: u64,
        result: OpResult,
    },
    /// What recovery decided at open, with the table row that decided it
    /// (or, if that row's provider step failed, the case saying so:
    /// [`crate::reconcile::performed_case`]).
    Reconciled {
        at_ms: u64,
        case: Case,
        detail: String,
        effect: Effect,
    },
}

/// Record kinds as stored in the frame header.
pub const KIND_INTENT: u8 = 1;
pub const KIND_OUTCOME: u8 = 2;
pub const KIND_RECONCILED: u8 = 3;

impl JournalRecord for Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Intent { .. } => KIND_INTENT,
            Record::Outcome { .. } => KIND_OUTCOME,
            Record::Reconciled { .. } => KIND_RECONCILED,
        }
    }
}

/// Name of a frame kind byte, for tools.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_INTENT => "intent",
        KIND_OUTCOME => "outcome",
        KIND_RECONCILED => "reconciled",
        _ => "unknown",
    }
}

impl Record {
    pub fn op(&self) -> Option<OpId> {
        match self {
            Record::Intent { op, .. } | Record::Outcome { op, .. } => Some(*op),
            Record::Reconciled { effect, .. } => match effect {
                Effect::Resolve { op, .. } => Some(*op),
                _ => None,
            },
        }
    }

    pub fn at_ms(&self) -> u64 {
        match self {
            Record::Intent { at_ms, .. }
            | Record::Outcome { at_ms, .. }
            | Record::Reconciled { at_ms, .. } => *at_ms,
        }
    }
}

/// Key of an orphan in [`State::orphans`].
pub fn orphan_key(provider: &str, volume: &str) -> String {
    format!("{provider}/{volume}")
}

/// A pending operation: an Intent without an outcome yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub op: OpId,
    pub at_ms: u64,
    pub action: Action,
    pub seq: u64,
}

/// A change the state machine made, broadcast to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Created(Volume),
    /// `volume` is the volume as it was when destroyed (subscribers such as
    /// Flynn's client want its info, not only its id).
    Destroyed {
        id: String,
        volume: Box<Volume>,
    },
    Lost {
        id: String,
    },
    Found {
        id: String,
    },
    ProviderAdded {
        id: String,
    },
}

/// Why a record could not be applied: the journal contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub seq: u64,
    pub reason: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {} cannot be applied: {}", self.seq, self.reason)
    }
}

impl std::error::Error for ApplyError {}

/// The manager's whole state, rebuilt from checkpoint plus records.
///
/// **Invariant:** `children` is derived from `volumes` and never serialized
/// (a checkpoint holds the same bytes as without it; decoding rebuilds it):
/// for every volume with a parent `p`, its id is in `children[p]`, and
/// nothing else is. [`State::apply`] keeps it, so [`State::dependents`]
/// (asked by every destroy, with the state locked) reads one entry instead
/// of every volume: at 100,000 volumes that scan was half the agent's CPU
/// in a run of destroys. A state whose `volumes` a caller changes by hand
/// answers `dependents` from what `apply` and the decoding saw.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "StateFields")]
pub struct State {
    /// Sequence number of the last applied record.
    pub seq: u64,
    pub providers: BTreeMap<String, ProviderRecord>,
    pub volumes: BTreeMap<String, Volume>,
    pub pending: BTreeMap<OpId, Pending>,
    /// Keyed by [`orphan_key`].
    pub orphans: BTreeMap<String, Orphan>,
    /// Ids of the volumes whose parent is each id (see the invariant).
    #[serde(skip)]
    children: BTreeMap<String, BTreeSet<String>>,
}

/// What a checkpoint holds of a [`State`]: its fields but the derived index,
/// in the same order (the encoding of a `State`).
#[derive(Deserialize)]
struct StateFields {
    seq: u64,
    providers: BTreeMap<String, ProviderRecord>,
    volumes: BTreeMap<String, Volume>,
    pending: BTreeMap<OpId, Pending>,
    orphans: BTreeMap<String, Orphan>,
}

impl From<StateFields> for State {
    fn from(f: StateFields) -> State {
        let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for v in f.volumes.values() {
            if let Some(parent) = &v.parent {
                children
                    .entry(parent.clone())
                    .or_default()
                    .insert(v.id.clone());
            }
        }
        State {
            seq: f.seq,
            providers: f.providers,
            volumes: f.volumes,
            pending: f.pending,
            orphans: f.orphans,
            children,
        }
    }
}

impl State {
    /// How many entries a checkpoint of this state holds (volumes, pending
    /// operations, orphans): what the size of its encoding, and so the cost
    /// of writing one, grows with.
    pub fn entries(&self) -> usize {
        self.volumes.len() + self.pending.len() + self.orphans.len()
    }

    /// Ids of volumes whose parent is `id` (snapshots of it, forks of it),
    /// sorted.
    pub fn dependents(&self, id: &str) -> Vec<String> {
        self.children
            .get(id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds volume `v` to `volumes`, and to its parent's children.
    fn insert_volume(&mut self, v: Volume) {
        if let Some(parent) = &v.parent {
            self.children
                .entry(parent.clone())
                .or_default()
                .insert(v.id.clone());
        }
        if let Some(old) = self.volumes.insert(v.id.clone(), v) {
            self.forget_child(&old);
        }
    }

    /// Removes volume `id` from `volumes`, and from its parent's children.
    fn remove_volume(&mut self, id: &str) -> Option<Volume> {
        let gone = self.volumes.remove(id)?;
        self.forget_child(&gone);
        Some(gone)
    }

    /// Drops `v` from its parent's children (unless a volume of the same
    /// id with the same parent is in `volumes`).
    fn forget_child(&mut self, v: &Volume) {
        let Some(parent) = &v.parent else { return };
        if self
            .volumes
            .get(&v.id)
            .is_some_and(|now| now.parent.as_ref() == Some(parent))
        {
            return;
        }
        if let Some(c) = self.children.get_mut(parent) {
            c.remove(&v.id);
            if c.is_empty() {
                self.children.remove(parent);
            }
        }
    }

    /// Volume ids named by pending operations.
    pub fn pending_volumes(&self) -> impl Iterator<Item = &str> {
        self.pending.values().flat_map(|p| p.action.volumes())
    }
}

#[cfg(test)]
mod tests;
