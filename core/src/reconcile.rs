//! Reconciliation: the decision table of DESIGN.md, as data, and the pure
//! function that runs it.
//!
//! [`decide`] classifies every pending operation, recorded volume, noted
//! orphan and inventory item of one provider into a (journal says, provider
//! shows) pair, looks the pair up in [`TABLE`] and returns one [`Decision`] per
//! match, naming the row's [`Case`] and carrying its [`Step`]: the row's
//! resolution with exactly what it needs (the found item, the operation, the
//! orphan), so performing it unwraps nothing. It reads the state and the
//! inventory (indexed by volume once, so a decision costs no scan) and does
//! nothing else: the manager performs each step and journals the resulting
//! [`crate::state::Effect`] with the case name, so the dump tool shows what
//! recovery did and why. Pairs absent from the table (a live volume that is
//! present, say) need nothing.

use std::collections::{HashMap, HashSet};

use crate::provider::{Found, PartialReceive, Presence};
use crate::state::{Action, Case, OpId, Orphan, State, VolumeKind, VolumeStatus};

/// What the journal says about a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalSays {
    PendingCreate,
    PendingDestroy,
    /// A pending snapshot, fork or receive.
    PendingDerived,
    PendingAddProvider,
    PendingAdopt,
    PendingAbortReceive,
    PendingSetAttributes,
    Live,
    Lost,
    /// An orphan noted earlier.
    NotedOrphan,
    NoRecord,
}

/// What the provider shows about the same subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderShows {
    Complete,
    HalfMade,
    Absent,
    /// Tagged as ours.
    Tagged,
    Untagged,
    /// The new snapshot of a receive is absent, but its target holds a
    /// resumable partial receive.
    Resumable,
    /// The row does not depend on the provider.
    Any,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The side effect happened: record Done with what the provider shows.
    RollForward,
    /// Nothing happened: record Failed("interrupted").
    FailInterrupted,
    /// Finish the half-made item, then Done (Failed if finishing fails).
    FinishThenDone,
    /// Destroy it, then Done (Failed if the provider refuses, journaled as
    /// [`Case::DestroyFailed`]: see [`FAILED_AS`]).
    DestroyThenDone,
    /// Already as intended: Done.
    Done,
    /// Remove partial state, then Failed.
    UndoThenFail,
    MarkLost,
    MarkFound,
    ReportOrphan,
    ForgetOrphan,
    /// Keep the target's partial receive; record it resumable (Suspended).
    KeepResumable,
    /// Discard the target's partial receive (again), then Done.
    AbortReceiveThenDone,
    /// Apply the pending attributes again (idempotent), then Done (Failed
    /// if the provider refuses).
    ReapplyThenDone,
    /// Report only; never touch, never journal.
    Ignore,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub case: Case,
    pub journal: JournalSays,
    pub provider: ProviderShows,
    pub resolution: Resolution,
}

const fn row(
    case: Case,
    journal: JournalSays,
    provider: ProviderShows,
    resolution: Resolution,
) -> Row {
    Row {
        case,
        journal,
        provider,
        resolution,
    }
}

use JournalSays as J;
use ProviderShows as P;
use Resolution as R;

/// The reconciliation table (DESIGN.md), one named case per row.
pub const TABLE: &[Row] = &[
    row(
        Case::CreateRolledForward,
        J::PendingCreate,
        P::Complete,
        R::RollForward,
    ),
    row(
        Case::CreateInterrupted,
        J::PendingCreate,
        P::Absent,
        R::FailInterrupted,
    ),
    row(
        Case::CreateFinished,
        J::PendingCreate,
        P::HalfMade,
        R::FinishThenDone,
    ),
    row(
        Case::DestroyFinished,
        J::PendingDestroy,
        P::Complete,
        R::DestroyThenDone,
    ),
    row(
        Case::DestroyFinished,
        J::PendingDestroy,
        P::HalfMade,
        R::DestroyThenDone,
    ),
    row(
        Case::DestroyAlreadyGone,
        J::PendingDestroy,
        P::Absent,
        R::Done,
    ),
    row(
        Case::DerivedRolledForward,
        J::PendingDerived,
        P::Complete,
        R::RollForward,
    ),
    row(
        Case::DerivedUndone,
        J::PendingDerived,
        P::HalfMade,
        R::UndoThenFail,
    ),
    row(
        Case::DerivedUndone,
        J::PendingDerived,
        P::Absent,
        R::UndoThenFail,
    ),
    row(
        Case::ReceiveSuspended,
        J::PendingDerived,
        P::Resumable,
        R::KeepResumable,
    ),
    row(
        Case::AbortReceiveFinished,
        J::PendingAbortReceive,
        P::Any,
        R::AbortReceiveThenDone,
    ),
    row(
        Case::AttributesReapplied,
        J::PendingSetAttributes,
        P::Complete,
        R::ReapplyThenDone,
    ),
    row(
        Case::AttributesReapplied,
        J::PendingSetAttributes,
        P::HalfMade,
        R::ReapplyThenDone,
    ),
    row(
        Case::AttributesInterrupted,
        J::PendingSetAttributes,
        P::Absent,
        R::FailInterrupted,
    ),
    row(
        Case::ProviderAddInterrupted,
        J::PendingAddProvider,
        P::Any,
        R::FailInterrupted,
    ),
    row(
        Case::AdoptInterrupted,
        J::PendingAdopt,
        P::Any,
        R::FailInterrupted,
    ),
    row(Case::VolumeLost, J::Live, P::Absent, R::MarkLost),
    row(Case::LostVolumeFound, J::Lost, P::Complete, R::MarkFound),
    row(
        Case::OrphanReported,
        J::NoRecord,
        P::Tagged,
        R::ReportOrphan,
    ),
    row(Case::OrphanGone, J::NotedOrphan, P::Absent, R::ForgetOrphan),
    row(Case::ForeignIgnored, J::NoRecord, P::Untagged, R::Ignore),
];

/// The rows whose provider step can fail, each with the case its record
/// is journaled under when it does: a row's case names what recovery set
/// out to do, and a record must say what happened (an operator reading
/// `volmgr journal dump` after a destroy refused at open, busy or held,
/// must not read `destroy-finished` above a kept volume).
pub const FAILED_AS: &[(Case, Case)] = &[(Case::DestroyFinished, Case::DestroyFailed)];

/// The case a performed decision of `decided` is journaled under: its
/// row's, or, when its step ended in a Failed resolution (`failed`), the
/// case [`FAILED_AS`] names for that row.
pub fn performed_case(decided: Case, failed: bool) -> Case {
    if !failed {
        return decided;
    }
    FAILED_AS
        .iter()
        .find(|(row, _)| *row == decided)
        .map_or(decided, |(_, as_failed)| *as_failed)
}

/// Looks a pair up in [`TABLE`].
pub fn lookup(journal: JournalSays, provider: ProviderShows) -> Option<&'static Row> {
    TABLE.iter().find(|r| {
        r.journal == journal && (r.provider == provider || r.provider == ProviderShows::Any)
    })
}

/// One decision: the row that matched, why, and the step it takes.
#[derive(Debug, Clone)]
pub struct Decision {
    pub case: Case,
    /// The volume the decision is about, if any (for the report).
    pub volume: Option<String>,
    /// One human line: why.
    pub detail: String,
    pub step: Step,
}

/// A row's [`Resolution`] with the payload performing it needs.
#[derive(Debug, Clone)]
pub enum Step {
    /// The side effect happened: record Done with what the provider shows.
    RollForward {
        op: OpId,
        found: Found,
    },
    /// Nothing happened: record Failed("interrupted").
    FailInterrupted {
        op: OpId,
    },
    /// Finish the half-made item, then Done (Failed if finishing fails).
    FinishThenDone {
        op: OpId,
        volume: String,
        found: Found,
    },
    /// Destroy it, then Done (Failed if the provider refuses).
    DestroyThenDone {
        op: OpId,
        volume: String,
        found: Found,
    },
    /// Already as intended: Done.
    Done {
        op: OpId,
    },
    /// Remove partial state (the item, if the provider shows one), then Failed.
    UndoThenFail {
        op: OpId,
        volume: String,
        found: Option<Found>,
    },
    /// Keep the target's partial receive; record it resumable (Suspended).
    KeepResumable {
        op: OpId,
        target: Found,
        partial: PartialReceive,
    },
    /// Discard the target's partial receive (again), then Done.
    AbortReceiveThenDone {
        op: OpId,
        volume: String,
    },
    /// Apply the pending set-attributes again, then Done (Failed if the
    /// provider refuses).
    ReapplyThenDone {
        op: OpId,
        volume: String,
    },
    MarkLost {
        volume: String,
    },
    MarkFound {
        volume: String,
    },
    ReportOrphan(Orphan),
    ForgetOrphan(Orphan),
    /// Report only; never touch, never journal.
    Ignore {
        found: Found,
    },
}

impl Step {
    /// The resolution this step performs.
    pub fn resolution(&self) -> Resolution {
        match self {
            Step::RollForward { .. } => R::RollForward,
            Step::FailInterrupted { .. } => R::FailInterrupted,
            Step::FinishThenDone { .. } => R::FinishThenDone,
            Step::DestroyThenDone { .. } => R::DestroyThenDone,
            Step::Done { .. } => R::Done,
            Step::UndoThenFail { .. } => R::UndoThenFail,
            Step::KeepResumable { .. } => R::KeepResumable,
            Step::AbortReceiveThenDone { .. } => R::AbortReceiveThenDone,
            Step::ReapplyThenDone { .. } => R::ReapplyThenDone,
            Step::MarkLost { .. } => R::MarkLost,
            Step::MarkFound { .. } => R::MarkFound,
            Step::ReportOrphan(_) => R::ReportOrphan,
            Step::ForgetOrphan(_) => R::ForgetOrphan,
            Step::Ignore { .. } => R::Ignore,
        }
    }

    /// The pending operation it resolves, if any.
    pub fn op(&self) -> Option<OpId> {
        match self {
            Step::RollForward { op, .. }
            | Step::FailInterrupted { op }
            | Step::FinishThenDone { op, .. }
            | Step::DestroyThenDone { op, .. }
            | Step::Done { op }
            | Step::UndoThenFail { op, .. }
            | Step::KeepResumable { op, .. }
            | Step::AbortReceiveThenDone { op, .. }
            | Step::ReapplyThenDone { op, .. } => Some(*op),
            _ => None,
        }
    }
}

/// What a decision is about: whatever of these its row has.
#[derive(Debug, Clone, Copy, Default)]
struct Subject<'a> {
    op: Option<OpId>,
    volume: Option<&'a str>,
    found: Option<&'a Found>,
    orphan: Option<&'a Orphan>,
}

impl<'a> Subject<'a> {
    fn pending(op: OpId, volume: Option<&'a str>, found: Option<&'a Found>) -> Self {
        Subject {
            op: Some(op),
            volume,
            found,
            orphan: None,
        }
    }
}

/// Builds the step of `resolution` for `subject`. `None` only if the table
/// pairs a resolution with a provider column that cannot supply what it
/// needs (a unit test runs every row through this).
fn step(resolution: Resolution, s: Subject<'_>) -> Option<Step> {
    let op = s.op;
    let volume = || s.volume.map(str::to_owned);
    let found = || s.found.cloned();
    Some(match resolution {
        R::RollForward => Step::RollForward {
            op: op?,
            found: found()?,
        },
        R::FailInterrupted => Step::FailInterrupted { op: op? },
        R::FinishThenDone => Step::FinishThenDone {
            op: op?,
            volume: volume()?,
            found: found()?,
        },
        R::DestroyThenDone => Step::DestroyThenDone {
            op: op?,
            volume: volume()?,
            found: found()?,
        },
        R::Done => Step::Done { op: op? },
        R::UndoThenFail => Step::UndoThenFail {
            op: op?,
            volume: volume()?,
            found: found(),
        },
        R::KeepResumable => {
            let target = found()?;
            let partial = target.partial.clone()?;
            Step::KeepResumable {
                op: op?,
                target,
                partial,
            }
        }
        R::AbortReceiveThenDone => Step::AbortReceiveThenDone {
            op: op?,
            volume: volume()?,
        },
        R::ReapplyThenDone => Step::ReapplyThenDone {
            op: op?,
            volume: volume()?,
        },
        R::MarkLost => Step::MarkLost { volume: volume()? },
        R::MarkFound => Step::MarkFound { volume: volume()? },
        R::ReportOrphan => Step::ReportOrphan(s.orphan?.clone()),
        R::ForgetOrphan => Step::ForgetOrphan(s.orphan?.clone()),
        R::Ignore => Step::Ignore { found: found()? },
    })
}

/// Which provider a pending action belongs to, given the state.
pub fn provider_of(state: &State, action: &Action) -> Option<String> {
    let of = |id: &str| state.volumes.get(id).map(|v| v.provider.clone());
    match action {
        Action::AddProvider(_) => None,
        Action::CreateVolume { provider, .. }
        | Action::AdoptOrphan { provider, .. }
        | Action::DestroyOrphan { provider, .. } => Some(provider.clone()),
        Action::DestroyVolume { volume } | Action::SetAttributes { volume, .. } => of(volume),
        Action::CreateSnapshot { source, .. } => of(source),
        Action::ForkVolume { snapshot, .. } => of(snapshot),
        Action::ReceiveSnapshot { target, .. } | Action::AbortReceive { target } => of(target),
    }
}

fn shows(found: Option<&Found>) -> ProviderShows {
    match found.map(|f| &f.presence) {
        None => P::Absent,
        Some(Presence::Complete) => P::Complete,
        Some(Presence::Incomplete { .. }) => P::HalfMade,
    }
}

/// Runs the table for provider `provider_id` over its inventory `found`.
/// Pending operations that belong to no provider (add-provider) are decided
/// when `provider_id` is `None`. Linear in the state and the inventory: the
/// inventory is indexed by volume once.
pub fn decide(state: &State, provider_id: Option<&str>, found: &[Found]) -> Vec<Decision> {
    let mut decisions = Vec::new();
    // The first item tagged with each volume id, as a linear scan would find.
    let mut index: HashMap<&str, &Found> = HashMap::with_capacity(found.len());
    for f in found {
        if let Some(tag) = &f.tag {
            index.entry(tag.volume.as_str()).or_insert(f);
        }
    }
    let by_volume = |id: &str| index.get(id).copied();
    let mut push = |journal: JournalSays, subject: Subject<'_>, detail: String| {
        let found = subject.found;
        let provider = match journal {
            J::PendingDerived
                if found.is_some_and(|f| {
                    f.partial.is_some()
                        && f.tag
                            .as_ref()
                            .is_some_and(|t| Some(t.volume.as_str()) != subject.volume)
                }) =>
            {
                P::Resumable
            }
            J::NoRecord => {
                if found.is_some_and(|f| f.tag.is_some()) {
                    P::Tagged
                } else {
                    P::Untagged
                }
            }
            _ => shows(found),
        };
        let Some(row) = lookup(journal, provider) else {
            return;
        };
        if let Some(step) = step(row.resolution, subject) {
            decisions.push(Decision {
                case: row.case,
                volume: subject.volume.map(str::to_owned),
                detail,
                step,
            });
        } else {
            // The table pairs this resolution with a provider column
            // that cannot supply what it needs: a bug in the table.
            debug_assert!(false, "row {:?} cannot be performed", row.case);
            tracing::error!(case = %row.case, %detail, "reconcile: a table row cannot be performed; skipped");
        }
    };
    // Pending operations, oldest first.
    let mut pending: Vec<_> = state.pending.values().collect();
    pending.sort_by_key(|p| p.seq);
    let mut claimed: HashSet<&str> = HashSet::new();
    for p in pending {
        if provider_of(state, &p.action).as_deref() != provider_id {
            continue;
        }
        let what = format!("{} (op {}, intent at seq {})", p.action.name(), p.op, p.seq);
        let subject = |volume, found| Subject::pending(p.op, volume, found);
        match &p.action {
            Action::AddProvider(rec) => push(
                J::PendingAddProvider,
                subject(None, None),
                format!("{what}: provider {} never confirmed", rec.id),
            ),
            Action::AdoptOrphan { volume, .. } => {
                claimed.insert(volume);
                push(J::PendingAdopt, subject(Some(volume), None), what);
            }
            Action::DestroyVolume { volume } | Action::DestroyOrphan { volume, .. } => {
                claimed.insert(volume);
                let f = by_volume(volume);
                push(J::PendingDestroy, subject(Some(volume), f), what);
            }
            Action::CreateVolume { volume, .. } => {
                claimed.insert(volume);
                // Only the item tagged with this very operation counts as its result.
                let f = by_volume(volume).filter(|f| f.tag.as_ref().is_some_and(|t| t.op == p.op));
                push(J::PendingCreate, subject(Some(volume), f), what);
            }
            Action::ReceiveSnapshot {
                snapshot: new,
                target,
                ..
            } => {
                claimed.insert(new);
                let f = by_volume(new).filter(|f| f.tag.as_ref().is_some_and(|t| t.op == p.op));
                // Not arrived, but resumable: the subject is the target.
                let f = f.or_else(|| by_volume(target).filter(|t| t.partial.is_some()));
                push(J::PendingDerived, subject(Some(new), f), what);
            }
            Action::CreateSnapshot { snapshot: new, .. }
            | Action::ForkVolume { volume: new, .. } => {
                claimed.insert(new);
                let f = by_volume(new).filter(|f| f.tag.as_ref().is_some_and(|t| t.op == p.op));
                push(J::PendingDerived, subject(Some(new), f), what);
            }
            Action::SetAttributes { volume, .. } => {
                claimed.insert(volume);
                let f = by_volume(volume);
                push(J::PendingSetAttributes, subject(Some(volume), f), what);
            }
            Action::AbortReceive { target } => {
                let f = by_volume(target);
                push(J::PendingAbortReceive, subject(Some(target), f), what);
            }
        }
    }
    let Some(provider_id) = provider_id else {
        return decisions;
    };

    // Recorded volumes of this provider.
    for v in state.volumes.values().filter(|v| v.provider == provider_id) {
        if claimed.contains(v.id.as_str()) {
            continue;
        }
        let journal = match v.status {
            VolumeStatus::Live => J::Live,
            VolumeStatus::Lost => J::Lost,
        };
        let detail = format!("{} volume {} ({})", v.kind, v.id, v.location);
        let subject = Subject {
            volume: Some(&v.id),
            found: by_volume(&v.id),
            ..Subject::default()
        };
        push(journal, subject, detail);
    }

    // Provider items with no record.
    for f in found {
        if let Some(tag) = &f.tag {
            let known = state.volumes.contains_key(&tag.volume)
                || claimed.contains(tag.volume.as_str())
                || state
                    .orphans
                    .contains_key(&crate::state::orphan_key(provider_id, &tag.volume));
            if known {
                continue;
            }
            let orphan = Orphan {
                provider: provider_id.to_owned(),
                volume: tag.volume.clone(),
                kind: tag.kind,
                tagged_op: tag.op,
                location: f.location.clone(),
            };
            let detail = format!(
                "{} tagged as volume {} by op {}",
                f.name, tag.volume, tag.op
            );
            let subject = Subject {
                volume: Some(&tag.volume),
                found: Some(f),
                orphan: Some(&orphan),
                ..Subject::default()
            };
            push(J::NoRecord, subject, detail);
        } else {
            let subject = Subject {
                found: Some(f),
                ..Subject::default()
            };
            push(
                J::NoRecord,
                subject,
                format!("{} is not tagged as ours", f.name),
            );
        }
    }

    // Orphans noted earlier that are gone now.
    for o in state.orphans.values().filter(|o| o.provider == provider_id) {
        if by_volume(&o.volume).is_none() {
            let subject = Subject {
                volume: Some(&o.volume),
                orphan: Some(o),
                ..Subject::default()
            };
            push(
                J::NotedOrphan,
                subject,
                format!("orphan {} no longer present", o.volume),
            );
        }
    }
    decisions
}

/// Kind a found item would have as a volume.
pub fn found_kind(found: &Found) -> Option<VolumeKind> {
    found.tag.as_ref().map(|t| t.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_a_row_and_no_pair_is_ambiguous() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(
                    !(a.journal == b.journal && a.provider == b.provider),
                    "duplicate pair {:?}/{:?}",
                    a.journal,
                    a.provider
                );
            }
        }
        assert!(
            lookup(J::Live, P::Complete).is_none(),
            "a present live volume needs nothing"
        );
    }

    #[test]
    fn a_destroy_refused_at_open_is_journaled_as_failed_and_nothing_else_changes_case() {
        assert_eq!(
            performed_case(Case::DestroyFinished, true),
            Case::DestroyFailed
        );
        assert_eq!(
            performed_case(Case::DestroyFinished, false),
            Case::DestroyFinished
        );
        // A row whose failure is its own case keeps it (an interrupted
        // create is recorded Failed by design).
        assert_eq!(
            performed_case(Case::CreateInterrupted, true),
            Case::CreateInterrupted
        );
        // Every failure case is a row's, and is no row's case itself.
        for (row, failed) in FAILED_AS {
            assert!(TABLE.iter().any(|r| r.case == *row), "{row}");
            assert!(!TABLE.iter().any(|r| r.case == *failed), "{failed}");
        }
    }

    #[test]
    fn every_row_of_the_table_builds_its_step_from_what_its_columns_supply() {
        use crate::provider::Tag;
        let op = OpId::from_u128(7);
        let item = |presence, partial| Found {
            name: "item".into(),
            tag: Some(Tag {
                volume: "v".into(),
                op,
                kind: VolumeKind::Data,
                parent: None,
            }),
            presence,
            location: "/v".into(),
            details: crate::model::Details::default(),
            partial,
        };
        let complete = item(Presence::Complete, None);
        let half = item(
            Presence::Incomplete {
                reason: "unmounted".into(),
            },
            None,
        );
        let resumable = item(
            Presence::Complete,
            Some(PartialReceive {
                token: "t".into(),
                guid: "g".into(),
                op: None,
            }),
        );
        let untagged = Found {
            tag: None,
            ..complete.clone()
        };
        let orphan = Orphan {
            provider: "p".into(),
            volume: "v".into(),
            kind: VolumeKind::Data,
            tagged_op: op,
            location: "/v".into(),
        };
        for row in TABLE {
            let found = match row.provider {
                P::Complete | P::Tagged => Some(&complete),
                P::HalfMade => Some(&half),
                P::Resumable => Some(&resumable),
                P::Untagged => Some(&untagged),
                P::Absent | P::Any => None,
            };
            // Only what the row's journal column can know.
            let pending = !matches!(
                row.journal,
                J::Live | J::Lost | J::NotedOrphan | J::NoRecord
            );
            let orphan_row = matches!(row.journal, J::NotedOrphan | J::NoRecord);
            let subject = Subject {
                op: pending.then_some(op),
                volume: (row.journal != J::PendingAddProvider).then_some("v"),
                found,
                orphan: orphan_row.then_some(&orphan),
            };
            let built = step(row.resolution, subject)
                .unwrap_or_else(|| panic!("row {:?} cannot build its step", row.case));
            assert_eq!(built.resolution(), row.resolution, "{:?}", row.case);
        }
    }
}
