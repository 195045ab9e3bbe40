//! Journal record types and the pure state machine they drive.
//!
//! [`State::apply`] folds one [`Record`] into the state: no I/O, no clock, no
//! randomness (ids and timestamps travel inside the records), so replaying the
//! same journal always yields the same state, byte for byte, and live
//! application equals replay. It returns the [`Event`]s the change implies.
//! Records are serde types encoded by the journal with bincode: no
//! `flatten`, `skip`, `tag` or `untagged` attributes here, and new fields or
//! variants only at the end (see journal-format.md, "Version changes").

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::journal::JournalRecord;

/// Operation id: a UUIDv7, unique per mutating operation.
pub type OpId = Uuid;
/// Free-form metadata of a volume (validated, bounded).
pub type Meta = BTreeMap<String, String>;
/// Provider-specific facts about a volume (e.g. a ZFS snapshot's GUID).
pub type Details = BTreeMap<String, String>;

/// Detail key of a snapshot's identity, used as a "have" in transfers.
pub const DETAIL_GUID: &str = "guid";
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VolumeKind {
    Data,
    Snapshot,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Data => "data",
            VolumeKind::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            Action::CreateVolume { volume, .. } | Action::ForkVolume { volume, .. } => Some(volume),
            Action::CreateSnapshot { snapshot, .. } | Action::ReceiveSnapshot { snapshot, .. } => {
                Some(snapshot)
            }
            Action::AdoptOrphan { volume, .. } => Some(volume),
            _ => None,
        }
    }

    /// Every volume id the action names (for busy-marking and dump filters).
    pub fn volumes(&self) -> Vec<&str> {
        match self {
            Action::AddProvider(_) => vec![],
            Action::CreateVolume { volume, .. } | Action::DestroyVolume { volume } => vec![volume],
            Action::CreateSnapshot {
                source, snapshot, ..
            } => vec![source, snapshot],
            Action::ForkVolume {
                snapshot, volume, ..
            } => vec![snapshot, volume],
            Action::ReceiveSnapshot {
                target, snapshot, ..
            } => vec![target, snapshot],
            Action::AdoptOrphan { volume, .. } | Action::DestroyOrphan { volume, .. } => {
                vec![volume]
            }
            Action::AbortReceive { target } => vec![target],
            Action::SetAttributes { volume, .. } => vec![volume],
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
    /// What recovery decided at open, with the table row that decided it.
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last applied record.
    pub seq: u64,
    pub providers: BTreeMap<String, ProviderRecord>,
    pub volumes: BTreeMap<String, Volume>,
    pub pending: BTreeMap<OpId, Pending>,
    /// Keyed by [`orphan_key`].
    pub orphans: BTreeMap<String, Orphan>,
}

impl State {
    /// Applies record `seq`. Records must arrive in sequence order.
    pub fn apply(&mut self, seq: u64, record: &Record) -> Result<Vec<Event>, ApplyError> {
        if seq != self.seq + 1 {
            return Err(ApplyError {
                seq,
                reason: format!("out of order: state is at {}", self.seq),
            });
        }
        let events = self
            .apply_inner(seq, record)
            .map_err(|reason| ApplyError { seq, reason })?;
        self.seq = seq;
        Ok(events)
    }

    fn apply_inner(&mut self, seq: u64, record: &Record) -> Result<Vec<Event>, String> {
        match record {
            Record::Intent { op, at_ms, action } => {
                if self.pending.contains_key(op) {
                    return Err(format!("duplicate intent {op}"));
                }
                self.pending.insert(
                    *op,
                    Pending {
                        op: *op,
                        at_ms: *at_ms,
                        action: action.clone(),
                        seq,
                    },
                );
                Ok(Vec::new())
            }
            Record::Outcome { op, at_ms, result } => self.finish(*op, *at_ms, result),
            Record::Reconciled { effect, at_ms, .. } => match effect {
                Effect::Resolve { op, result } => self.finish(*op, *at_ms, result),
                Effect::MarkLost { volume } => {
                    let v = self
                        .volumes
                        .get_mut(volume)
                        .ok_or(format!("lost {volume} unknown"))?;
                    v.status = VolumeStatus::Lost;
                    Ok(vec![Event::Lost { id: volume.clone() }])
                }
                Effect::MarkFound { volume } => {
                    let v = self
                        .volumes
                        .get_mut(volume)
                        .ok_or(format!("found {volume} unknown"))?;
                    v.status = VolumeStatus::Live;
                    Ok(vec![Event::Found { id: volume.clone() }])
                }
                Effect::NoteOrphan(orphan) => {
                    self.orphans
                        .insert(orphan_key(&orphan.provider, &orphan.volume), orphan.clone());
                    Ok(Vec::new())
                }
                Effect::ForgetOrphan { provider, volume } => {
                    self.orphans.remove(&orphan_key(provider, volume));
                    Ok(Vec::new())
                }
            },
        }
    }

    fn finish(&mut self, op: OpId, at_ms: u64, result: &OpResult) -> Result<Vec<Event>, String> {
        let pending = self
            .pending
            .remove(&op)
            .ok_or_else(|| format!("outcome for unknown operation {op}"))?;
        // Every outcome of a receive says whether its target holds a
        // partial receive afterwards; an abort that was done, that it does not.
        if let Action::ReceiveSnapshot { target, .. } | Action::AbortReceive { target } =
            &pending.action
        {
            let clear = !matches!(
                (&pending.action, result),
                (Action::AbortReceive { .. }, OpResult::Failed { .. })
                    | (_, OpResult::Suspended { .. })
            );
            if let Some(v) = self.volumes.get_mut(target) {
                if clear {
                    for key in [
                        DETAIL_RESUME_TOKEN,
                        DETAIL_RESUME_GUID,
                        DETAIL_RESUME_SOURCE,
                        DETAIL_RESUME_SNAPSHOT,
                    ] {
                        v.details.remove(key);
                    }
                } else if let OpResult::Suspended { token, guid, .. } = result {
                    v.details
                        .insert(DETAIL_RESUME_TOKEN.to_owned(), token.clone());
                    v.details
                        .insert(DETAIL_RESUME_GUID.to_owned(), guid.clone());
                    if let Action::ReceiveSnapshot { meta, .. } = &pending.action {
                        for (from, to) in [
                            (META_PULL_SOURCE, DETAIL_RESUME_SOURCE),
                            (META_PULL_SNAPSHOT, DETAIL_RESUME_SNAPSHOT),
                        ] {
                            match meta.get(from) {
                                Some(value) => v.details.insert(to.to_owned(), value.clone()),
                                None => v.details.remove(to),
                            };
                        }
                    }
                }
            }
        }
        let done = match result {
            OpResult::Failed { .. } => return Ok(Vec::new()),
            OpResult::Suspended { .. } => {
                return match pending.action {
                    Action::ReceiveSnapshot { .. } => Ok(Vec::new()),
                    _ => Err(format!(
                        "suspended outcome for a {} operation",
                        pending.action.name()
                    )),
                };
            }
            OpResult::Done(done) => done,
        };
        let new_volume =
            |id: &str, provider: &str, kind, parent: Option<&str>, meta: &Meta| Volume {
                id: id.to_owned(),
                provider: provider.to_owned(),
                kind,
                parent: parent.map(str::to_owned),
                meta: meta.clone(),
                created_at_ms: at_ms,
                location: done.location.clone(),
                status: VolumeStatus::Live,
                op,
                details: done.details.clone(),
            };
        let provider_of = |state: &State, id: &str| {
            state
                .volumes
                .get(id)
                .map(|v| v.provider.clone())
                .ok_or_else(|| format!("{} refers to unknown volume {id}", pending.action.name()))
        };
        let created = match &pending.action {
            Action::AddProvider(record) => {
                self.providers.insert(record.id.clone(), record.clone());
                return Ok(vec![Event::ProviderAdded {
                    id: record.id.clone(),
                }]);
            }
            Action::DestroyVolume { volume } => {
                return Ok(self
                    .volumes
                    .remove(volume)
                    .map(|gone| Event::Destroyed {
                        id: volume.clone(),
                        volume: Box::new(gone),
                    })
                    .into_iter()
                    .collect());
            }
            Action::DestroyOrphan { provider, volume } => {
                self.orphans.remove(&orphan_key(provider, volume));
                return Ok(Vec::new());
            }
            Action::AbortReceive { .. } => return Ok(Vec::new()),
            Action::SetAttributes {
                volume,
                capacity_bytes,
                options,
            } => {
                let v = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| format!("set-attributes of unknown volume {volume}"))?;
                if let Some(bytes) = capacity_bytes {
                    v.details
                        .insert(DETAIL_CAPACITY.to_owned(), bytes.to_string());
                }
                for (key, value) in options {
                    v.details
                        .insert(format!("{DETAIL_OPTION_PREFIX}{key}"), value.clone());
                }
                return Ok(Vec::new());
            }
            Action::CreateVolume {
                provider,
                volume,
                meta,
            } => new_volume(volume, provider, VolumeKind::Data, None, meta),
            Action::CreateSnapshot {
                source,
                snapshot,
                meta,
            } => {
                let provider = provider_of(self, source)?;
                new_volume(
                    snapshot,
                    &provider,
                    VolumeKind::Snapshot,
                    Some(source),
                    meta,
                )
            }
            Action::ForkVolume {
                snapshot,
                volume,
                meta,
            } => {
                let provider = provider_of(self, snapshot)?;
                new_volume(volume, &provider, VolumeKind::Data, Some(snapshot), meta)
            }
            Action::ReceiveSnapshot {
                target,
                snapshot,
                meta,
            } => {
                let provider = provider_of(self, target)?;
                new_volume(
                    snapshot,
                    &provider,
                    VolumeKind::Snapshot,
                    Some(target),
                    meta,
                )
            }
            Action::AdoptOrphan {
                provider,
                volume,
                kind,
                tagged_op,
            } => {
                self.orphans.remove(&orphan_key(provider, volume));
                let mut v = new_volume(volume, provider, *kind, None, &Meta::new());
                v.op = *tagged_op;
                v
            }
        };
        if self.volumes.contains_key(&created.id) {
            return Err(format!("volume {} created twice", created.id));
        }
        self.volumes.insert(created.id.clone(), created.clone());
        Ok(vec![Event::Created(created)])
    }

    /// Ids of volumes whose parent is `id` (snapshots of it, forks of it).
    pub fn dependents(&self, id: &str) -> Vec<String> {
        self.volumes
            .values()
            .filter(|v| v.parent.as_deref() == Some(id))
            .map(|v| v.id.clone())
            .collect()
    }

    /// Volume ids named by pending operations.
    pub fn pending_volumes(&self) -> impl Iterator<Item = &str> {
        self.pending.values().flat_map(|p| p.action.volumes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(n: u128) -> OpId {
        Uuid::from_u128(n)
    }

    /// A state with data volume `v` and a pending receive (op 3) into it.
    fn with_pending_receive(meta: Meta) -> State {
        let mut s = State::default();
        let records = [
            Record::Intent {
                op: op(1),
                at_ms: 1,
                action: Action::AddProvider(ProviderRecord {
                    id: "p".into(),
                    kind: "sim".into(),
                    config: BTreeMap::new(),
                }),
            },
            Record::Outcome {
                op: op(1),
                at_ms: 1,
                result: OpResult::Done(Done::default()),
            },
            Record::Intent {
                op: op(2),
                at_ms: 2,
                action: Action::CreateVolume {
                    provider: "p".into(),
                    volume: "v".into(),
                    meta: Meta::new(),
                },
            },
            Record::Outcome {
                op: op(2),
                at_ms: 2,
                result: OpResult::Done(Done::default()),
            },
            Record::Intent {
                op: op(3),
                at_ms: 3,
                action: Action::ReceiveSnapshot {
                    target: "v".into(),
                    snapshot: "r".into(),
                    meta,
                },
            },
        ];
        for (i, r) in records.iter().enumerate() {
            s.apply(i as u64 + 1, r).unwrap();
        }
        s
    }

    fn suspended(n: u128) -> Record {
        Record::Outcome {
            op: op(n),
            at_ms: 9,
            result: OpResult::Suspended {
                error: "cut".into(),
                token: "1-ab".into(),
                guid: "77".into(),
            },
        }
    }

    #[test]
    fn a_suspended_receive_records_its_token_on_the_target_and_the_next_outcome_clears_it() {
        let meta = Meta::from([(META_PULL_SOURCE.to_owned(), "http://h:1".to_owned())]);
        let mut s = with_pending_receive(meta);
        s.apply(6, &suspended(3)).unwrap();
        let d = &s.volumes["v"].details;
        assert_eq!(d[DETAIL_RESUME_TOKEN], "1-ab");
        assert_eq!(d[DETAIL_RESUME_GUID], "77");
        assert_eq!(d[DETAIL_RESUME_SOURCE], "http://h:1");
        assert!(!d.contains_key(DETAIL_RESUME_SNAPSHOT));
        assert!(s.pending.is_empty() && !s.volumes.contains_key("r"));

        // A later receive into it that fails: no partial state remains.
        s.apply(
            7,
            &Record::Intent {
                op: op(4),
                at_ms: 10,
                action: Action::ReceiveSnapshot {
                    target: "v".into(),
                    snapshot: "r2".into(),
                    meta: Meta::new(),
                },
            },
        )
        .unwrap();
        s.apply(
            8,
            &Record::Outcome {
                op: op(4),
                at_ms: 11,
                result: OpResult::Failed {
                    error: "refused".into(),
                },
            },
        )
        .unwrap();
        assert!(s.volumes["v"].details.is_empty());
    }

    #[test]
    fn a_failed_abort_keeps_the_token_and_a_done_abort_clears_it() {
        let mut s = with_pending_receive(Meta::new());
        s.apply(6, &suspended(3)).unwrap();
        let abort = |n: u128| Record::Intent {
            op: op(n),
            at_ms: 12,
            action: Action::AbortReceive { target: "v".into() },
        };
        s.apply(7, &abort(5)).unwrap();
        let failed = Record::Outcome {
            op: op(5),
            at_ms: 13,
            result: OpResult::Failed {
                error: "busy".into(),
            },
        };
        s.apply(8, &failed).unwrap();
        assert_eq!(s.volumes["v"].details[DETAIL_RESUME_TOKEN], "1-ab");
        s.apply(9, &abort(6)).unwrap();
        let done = Record::Outcome {
            op: op(6),
            at_ms: 14,
            result: OpResult::Done(Done::default()),
        };
        s.apply(10, &done).unwrap();
        assert!(s.volumes["v"].details.is_empty());
    }

    #[test]
    fn a_done_set_attributes_records_capacity_and_options_and_a_failed_one_nothing() {
        let mut s = with_pending_receive(Meta::new());
        let set = |n: u128| Record::Intent {
            op: op(n),
            at_ms: 30,
            action: Action::SetAttributes {
                volume: "v".into(),
                capacity_bytes: Some(4096),
                options: BTreeMap::from([("compression".into(), "lz4".into())]),
            },
        };
        s.apply(6, &set(8)).unwrap();
        let failed = Record::Outcome {
            op: op(8),
            at_ms: 31,
            result: OpResult::Failed {
                error: "refused".into(),
            },
        };
        s.apply(7, &failed).unwrap();
        assert!(!s.volumes["v"].details.contains_key(DETAIL_CAPACITY));
        s.apply(8, &set(9)).unwrap();
        let done = Record::Outcome {
            op: op(9),
            at_ms: 32,
            result: OpResult::Done(Done::default()),
        };
        s.apply(9, &done).unwrap();
        let d = &s.volumes["v"].details;
        assert_eq!(d[DETAIL_CAPACITY], "4096");
        assert_eq!(d["option.compression"], "lz4");
    }

    #[test]
    fn a_suspended_outcome_of_anything_but_a_receive_is_refused() {
        let mut s = with_pending_receive(Meta::new());
        s.apply(
            6,
            &Record::Intent {
                op: op(7),
                at_ms: 20,
                action: Action::DestroyVolume { volume: "v".into() },
            },
        )
        .unwrap();
        let err = s.apply(7, &suspended(7)).unwrap_err();
        assert!(err.reason.contains("suspended outcome"), "{err}");
    }
}
