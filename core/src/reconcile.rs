//! Reconciliation: the decision table of DESIGN.md, as data, and the pure
//! function that runs it.
//!
//! [`decide`] classifies every pending operation, recorded volume, noted
//! orphan and inventory item of one provider into a (journal says, provider
//! shows) pair, looks the pair up in [`TABLE`] and returns one [`Decision`] per
//! match, naming the row's [`Case`]. It reads the state and the inventory and
//! does nothing else: the manager performs each decision's provider step and
//! journals the resulting [`crate::state::Effect`] with the case name, so the
//! dump tool shows what recovery did and why. Pairs absent from the table
//! (a live volume that is present, say) need nothing.

use crate::provider::{Found, Presence};
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
    /// Destroy it, then Done.
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

/// Looks a pair up in [`TABLE`].
pub fn lookup(journal: JournalSays, provider: ProviderShows) -> Option<&'static Row> {
    TABLE.iter().find(|r| {
        r.journal == journal && (r.provider == provider || r.provider == ProviderShows::Any)
    })
}

/// One decision: the row that matched and its subject.
#[derive(Debug, Clone)]
pub struct Decision {
    pub case: Case,
    pub resolution: Resolution,
    /// The pending operation it resolves, if any.
    pub op: Option<OpId>,
    pub volume: Option<String>,
    /// What the provider showed for the subject, if anything.
    pub found: Option<Found>,
    /// For orphans: the orphan to note.
    pub orphan: Option<Orphan>,
    /// One human line: why.
    pub detail: String,
}

/// Which provider a pending action belongs to, given the state.
pub fn provider_of(state: &State, action: &Action) -> Option<String> {
    let of = |id: &str| state.volumes.get(id).map(|v| v.provider.clone());
    match action {
        Action::AddProvider(_) => None,
        Action::CreateVolume { provider, .. }
        | Action::AdoptOrphan { provider, .. }
        | Action::DestroyOrphan { provider, .. } => Some(provider.clone()),
        Action::DestroyVolume { volume } => of(volume),
        Action::CreateSnapshot { source, .. } => of(source),
        Action::ForkVolume { snapshot, .. } => of(snapshot),
        Action::ReceiveSnapshot { target, .. } | Action::AbortReceive { target } => of(target),
        Action::SetAttributes { volume, .. } => of(volume),
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
/// when `provider_id` is `None`.
pub fn decide(state: &State, provider_id: Option<&str>, found: &[Found]) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let by_volume = |id: &str| {
        found
            .iter()
            .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == id))
    };
    let mut push = |journal: JournalSays,
                    found: Option<&Found>,
                    op: Option<OpId>,
                    volume: Option<&str>,
                    orphan: Option<Orphan>,
                    detail: String| {
        let provider = match journal {
            J::PendingDerived
                if found.is_some_and(|f| {
                    f.partial.is_some()
                        && f.tag
                            .as_ref()
                            .is_some_and(|t| Some(t.volume.as_str()) != volume)
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
        if let Some(row) = lookup(journal, provider) {
            decisions.push(Decision {
                case: row.case,
                resolution: row.resolution,
                op,
                volume: volume.map(str::to_owned),
                found: found.cloned(),
                orphan,
                detail,
            });
        }
    };

    // Pending operations, oldest first.
    let mut pending: Vec<_> = state.pending.values().collect();
    pending.sort_by_key(|p| p.seq);
    let mut claimed: Vec<&str> = Vec::new();
    for p in pending {
        if provider_of(state, &p.action).as_deref() != provider_id {
            continue;
        }
        let what = format!("{} (op {}, intent at seq {})", p.action.name(), p.op, p.seq);
        match &p.action {
            Action::AddProvider(rec) => push(
                J::PendingAddProvider,
                None,
                Some(p.op),
                None,
                None,
                format!("{what}: provider {} never confirmed", rec.id),
            ),
            Action::AdoptOrphan { volume, .. } => {
                claimed.push(volume);
                push(J::PendingAdopt, None, Some(p.op), Some(volume), None, what)
            }
            Action::DestroyVolume { volume } | Action::DestroyOrphan { volume, .. } => {
                claimed.push(volume);
                let f = by_volume(volume);
                push(J::PendingDestroy, f, Some(p.op), Some(volume), None, what)
            }
            Action::CreateVolume { volume, .. } => {
                claimed.push(volume);
                // Only the item tagged with this very operation counts as its result.
                let f = by_volume(volume).filter(|f| f.tag.as_ref().is_some_and(|t| t.op == p.op));
                push(J::PendingCreate, f, Some(p.op), Some(volume), None, what)
            }
            Action::ReceiveSnapshot {
                snapshot: new,
                target,
                ..
            } => {
                claimed.push(new);
                let f = by_volume(new).filter(|f| f.tag.as_ref().is_some_and(|t| t.op == p.op));
                // Not arrived, but resumable: the subject is the target.
                let f = f.or_else(|| by_volume(target).filter(|t| t.partial.is_some()));
                push(J::PendingDerived, f, Some(p.op), Some(new), None, what)
            }
            Action::CreateSnapshot { snapshot: new, .. }
            | Action::ForkVolume { volume: new, .. } => {
                claimed.push(new);
                let f = by_volume(new).filter(|f| f.tag.as_ref().is_some_and(|t| t.op == p.op));
                push(J::PendingDerived, f, Some(p.op), Some(new), None, what)
            }
            Action::SetAttributes { volume, .. } => {
                claimed.push(volume);
                let f = by_volume(volume);
                push(
                    J::PendingSetAttributes,
                    f,
                    Some(p.op),
                    Some(volume),
                    None,
                    what,
                )
            }
            Action::AbortReceive { target } => {
                let f = by_volume(target);
                push(
                    J::PendingAbortReceive,
                    f,
                    Some(p.op),
                    Some(target),
                    None,
                    what,
                )
            }
        }
    }
    let Some(provider_id) = provider_id else {
        return decisions;
    };

    // Recorded volumes of this provider.
    for v in state.volumes.values().filter(|v| v.provider == provider_id) {
        if claimed.contains(&v.id.as_str()) {
            continue;
        }
        let f = by_volume(&v.id);
        let journal = match v.status {
            VolumeStatus::Live => J::Live,
            VolumeStatus::Lost => J::Lost,
        };
        let detail = format!("{} volume {} ({})", v.kind, v.id, v.location);
        push(journal, f, None, Some(&v.id), None, detail);
    }

    // Provider items with no record.
    for f in found {
        match &f.tag {
            Some(tag) => {
                let known = state.volumes.contains_key(&tag.volume)
                    || claimed.contains(&tag.volume.as_str())
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
                push(
                    J::NoRecord,
                    Some(f),
                    None,
                    Some(&tag.volume),
                    Some(orphan),
                    detail,
                );
            }
            None => push(
                J::NoRecord,
                Some(f),
                None,
                None,
                None,
                format!("{} is not tagged as ours", f.name),
            ),
        }
    }

    // Orphans noted earlier that are gone now.
    for o in state.orphans.values().filter(|o| o.provider == provider_id) {
        if by_volume(&o.volume).is_none() {
            push(
                J::NotedOrphan,
                None,
                None,
                Some(&o.volume),
                Some(o.clone()),
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
}
