//! `State::apply`: every check a record must pass runs first
//! (`State::check` reads the state and returns the `Change` the record
//! makes), then the change is made (`State::commit`, which cannot fail). So
//! a refused record leaves the state exactly as it was, and the live path,
//! replay and the journal tool all stop at the same record with the same
//! error.

use super::{
    Action, ApplyError, DETAIL_CAPACITY, DETAIL_OPTION_PREFIX, DETAIL_RESUME_GUID,
    DETAIL_RESUME_SNAPSHOT, DETAIL_RESUME_SOURCE, DETAIL_RESUME_TOKEN, Effect, Event,
    META_PULL_SNAPSHOT, META_PULL_SOURCE, Meta, OpId, OpResult, Orphan, Pending, ProviderRecord,
    Record, State, Volume, VolumeKind, VolumeStatus, orphan_key,
};

/// Detail keys to set (`Some`) or remove (`None`).
type DetailUpdates = Vec<(&'static str, Option<String>)>;

/// A checked change to the state (see [`State::apply`]).
#[derive(Debug)]
enum Change {
    Pend(Pending),
    Status(String, VolumeStatus),
    NoteOrphan(Orphan),
    ForgetOrphan(String),
    Finish {
        op: OpId,
        /// A receive's target and the resume details to set (`Some`) or
        /// remove (`None`).
        target: Option<(String, DetailUpdates)>,
        effect: Finished,
    },
}

/// What a finished operation changes besides removing it from `pending`.
#[derive(Debug)]
enum Finished {
    Nothing,
    AddProvider(ProviderRecord),
    Destroy(String),
    ForgetOrphan(String),
    /// A new volume, and the orphan key it replaces (adoption).
    Create(Volume, Option<String>),
    /// Details to set on an existing volume (a done set-attributes).
    SetDetails(String, Vec<(String, String)>),
}

impl State {
    /// Applies record `seq`. Records must arrive in sequence order.
    ///
    /// **Invariant:** atomic. Every check runs before the first change, so a
    /// record that is refused (`Err`) leaves the state exactly as it was; the
    /// live path, replay and the journal tool all stop at that record.
    pub fn apply(&mut self, seq: u64, record: &Record) -> Result<Vec<Event>, ApplyError> {
        if Some(seq) != self.seq.checked_add(1) {
            return Err(ApplyError {
                seq,
                reason: format!("out of order: state is at {}", self.seq),
            });
        }
        let change = self
            .check(seq, record)
            .map_err(|reason| ApplyError { seq, reason })?;
        let events = self.commit(change);
        self.seq = seq;
        // Pair assertion: an outcome's operation is no longer pending.
        debug_assert!(
            record.op().is_none_or(|op| !self.pending.contains_key(&op))
                || matches!(record, Record::Intent { .. })
        );
        Ok(events)
    }

    /// Validates `record` against the state without changing it, and says
    /// what applying it changes.
    fn check(&self, seq: u64, record: &Record) -> Result<Change, String> {
        match record {
            Record::Intent { op, at_ms, action } => {
                if self.pending.contains_key(op) {
                    return Err(format!("duplicate intent {op}"));
                }
                Ok(Change::Pend(Pending {
                    op: *op,
                    at_ms: *at_ms,
                    action: action.clone(),
                    seq,
                }))
            }
            Record::Outcome { op, at_ms, result } => self.check_finish(*op, *at_ms, result),
            Record::Reconciled { effect, at_ms, .. } => match effect {
                Effect::Resolve { op, result } => self.check_finish(*op, *at_ms, result),
                Effect::MarkLost { volume } => {
                    if !self.volumes.contains_key(volume) {
                        return Err(format!("lost {volume} unknown"));
                    }
                    Ok(Change::Status(volume.clone(), VolumeStatus::Lost))
                }
                Effect::MarkFound { volume } => {
                    if !self.volumes.contains_key(volume) {
                        return Err(format!("found {volume} unknown"));
                    }
                    Ok(Change::Status(volume.clone(), VolumeStatus::Live))
                }
                Effect::NoteOrphan(orphan) => Ok(Change::NoteOrphan(orphan.clone())),
                Effect::ForgetOrphan { provider, volume } => {
                    Ok(Change::ForgetOrphan(orphan_key(provider, volume)))
                }
            },
        }
    }

    /// Checks an outcome (or a reconciliation's resolution) of `op`.
    fn check_finish(&self, op: OpId, at_ms: u64, result: &OpResult) -> Result<Change, String> {
        let pending = self
            .pending
            .get(&op)
            .ok_or_else(|| format!("outcome for unknown operation {op}"))?;
        let action = &pending.action;
        // Every outcome of a receive says whether its target holds a
        // partial receive afterwards; an abort that was done, that it does not.
        let target = match action {
            Action::ReceiveSnapshot { target, .. } | Action::AbortReceive { target }
                if self.volumes.contains_key(target) =>
            {
                let update = match (action, result) {
                    (Action::AbortReceive { .. }, OpResult::Failed { .. }) => None,
                    (_, OpResult::Suspended { token, guid, .. }) => {
                        let mut set = vec![
                            (DETAIL_RESUME_TOKEN, Some(token.clone())),
                            (DETAIL_RESUME_GUID, Some(guid.clone())),
                        ];
                        if let Action::ReceiveSnapshot { meta, .. } = action {
                            for (from, to) in [
                                (META_PULL_SOURCE, DETAIL_RESUME_SOURCE),
                                (META_PULL_SNAPSHOT, DETAIL_RESUME_SNAPSHOT),
                            ] {
                                set.push((to, meta.get(from).cloned()));
                            }
                        }
                        Some(set)
                    }
                    _ => Some(
                        [
                            DETAIL_RESUME_TOKEN,
                            DETAIL_RESUME_GUID,
                            DETAIL_RESUME_SOURCE,
                            DETAIL_RESUME_SNAPSHOT,
                        ]
                        .into_iter()
                        .map(|key| (key, None))
                        .collect(),
                    ),
                };
                update.map(|u| (target.clone(), u))
            }
            _ => None,
        };
        let finish = |effect| {
            Ok(Change::Finish {
                op,
                target: target.clone(),
                effect,
            })
        };
        let done = match result {
            OpResult::Failed { .. } => return finish(Finished::Nothing),
            OpResult::Suspended { .. } => {
                return match action {
                    Action::ReceiveSnapshot { .. } => finish(Finished::Nothing),
                    _ => Err(format!(
                        "suspended outcome for a {} operation",
                        action.name()
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
        let provider_of = |id: &str| {
            self.volumes
                .get(id)
                .map(|v| v.provider.clone())
                .ok_or_else(|| format!("{} refers to unknown volume {id}", action.name()))
        };
        let (created, forget) = match action {
            Action::AddProvider(record) => return finish(Finished::AddProvider(record.clone())),
            Action::DestroyVolume { volume } => return finish(Finished::Destroy(volume.clone())),
            Action::DestroyOrphan { provider, volume } => {
                return finish(Finished::ForgetOrphan(orphan_key(provider, volume)));
            }
            Action::AbortReceive { .. } => return finish(Finished::Nothing),
            Action::SetAttributes {
                volume,
                capacity_bytes,
                options,
            } => {
                if !self.volumes.contains_key(volume) {
                    return Err(format!("set-attributes of unknown volume {volume}"));
                }
                let mut set: Vec<(String, String)> = capacity_bytes
                    .map(|b| (DETAIL_CAPACITY.to_owned(), b.to_string()))
                    .into_iter()
                    .collect();
                set.extend(
                    options
                        .iter()
                        .map(|(k, v)| (format!("{DETAIL_OPTION_PREFIX}{k}"), v.clone())),
                );
                return finish(Finished::SetDetails(volume.clone(), set));
            }
            Action::CreateVolume {
                provider,
                volume,
                meta,
            } => (
                new_volume(volume, provider, VolumeKind::Data, None, meta),
                None,
            ),
            Action::CreateSnapshot {
                source,
                snapshot,
                meta,
            } => {
                let provider = provider_of(source)?;
                let kind = VolumeKind::Snapshot;
                (
                    new_volume(snapshot, &provider, kind, Some(source), meta),
                    None,
                )
            }
            Action::ForkVolume {
                snapshot,
                volume,
                meta,
            } => {
                let provider = provider_of(snapshot)?;
                let kind = VolumeKind::Data;
                (
                    new_volume(volume, &provider, kind, Some(snapshot), meta),
                    None,
                )
            }
            Action::ReceiveSnapshot {
                target,
                snapshot,
                meta,
            } => {
                let provider = provider_of(target)?;
                let kind = VolumeKind::Snapshot;
                (
                    new_volume(snapshot, &provider, kind, Some(target), meta),
                    None,
                )
            }
            Action::AdoptOrphan {
                provider,
                volume,
                kind,
                tagged_op,
            } => {
                let mut v = new_volume(volume, provider, *kind, None, &Meta::new());
                v.op = *tagged_op;
                (v, Some(orphan_key(provider, volume)))
            }
        };
        if self.volumes.contains_key(&created.id) {
            return Err(format!("volume {} created twice", created.id));
        }
        finish(Finished::Create(created, forget))
    }

    /// Makes a checked change. Infallible: everything that can refuse a
    /// record was checked first.
    fn commit(&mut self, change: Change) -> Vec<Event> {
        match change {
            Change::Pend(pending) => {
                self.pending.insert(pending.op, pending);
                Vec::new()
            }
            Change::Status(volume, status) => {
                let event = match status {
                    VolumeStatus::Lost => Event::Lost { id: volume.clone() },
                    VolumeStatus::Live => Event::Found { id: volume.clone() },
                };
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.status = status;
                }
                vec![event]
            }
            Change::NoteOrphan(orphan) => {
                self.orphans
                    .insert(orphan_key(&orphan.provider, &orphan.volume), orphan);
                Vec::new()
            }
            Change::ForgetOrphan(key) => {
                self.orphans.remove(&key);
                Vec::new()
            }
            Change::Finish { op, target, effect } => {
                self.pending.remove(&op);
                if let Some((id, updates)) = target
                    && let Some(v) = self.volumes.get_mut(&id)
                {
                    for (key, value) in updates {
                        match value {
                            Some(value) => v.details.insert(key.to_owned(), value),
                            None => v.details.remove(key),
                        };
                    }
                }
                match effect {
                    Finished::Nothing => Vec::new(),
                    Finished::AddProvider(record) => {
                        let id = record.id.clone();
                        self.providers.insert(id.clone(), record);
                        vec![Event::ProviderAdded { id }]
                    }
                    // The volume as it was (subscribers want its info).
                    Finished::Destroy(volume) => self
                        .remove_volume(&volume)
                        .map(|gone| Event::Destroyed {
                            id: volume,
                            volume: Box::new(gone),
                        })
                        .into_iter()
                        .collect(),
                    Finished::ForgetOrphan(key) => {
                        self.orphans.remove(&key);
                        Vec::new()
                    }
                    Finished::SetDetails(volume, set) => {
                        if let Some(v) = self.volumes.get_mut(&volume) {
                            v.details.extend(set);
                        }
                        Vec::new()
                    }
                    Finished::Create(created, forget) => {
                        if let Some(key) = forget {
                            self.orphans.remove(&key);
                        }
                        self.insert_volume(created.clone());
                        vec![Event::Created(created)]
                    }
                }
            }
        }
    }
}
