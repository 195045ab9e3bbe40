//! Reconciliation at open: runs `reconcile::decide` against each provider's
//! inventory, performs every decision's provider step, syncs each batched
//! provider a step touched ONCE (not once per step), and only then journals
//! the resolution records, so that no record becomes durable before its
//! effect is. The records go to the journal in decision order, in runs as
//! large as its batch limit allows (one journal sync per run, not per
//! record). Every provider makes its storage durable before its inventory
//! ([`Provider::sync_at_open`]: a killed process may have left effects
//! visible but not durable, batched or not; the dir provider runs a whole
//! `syncfs` either way). A failed sync
//! journals none of that provider's resolutions and takes it out of
//! service; its pending operations stay pending and claimed. Before a
//! provider's inventory, each of its pending creates gets
//! [`Provider::clear_interrupted_create`]: what such a create may have left
//! untagged (the dir provider's empty directory whose marker a power cut
//! lost) would otherwise be reported foreign for ever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Manager, ManagerError, ReconcileReport, done, found_ref, now_ms, volume_ref};
use crate::model::VolumeId;
use crate::provider::{Durability, Provider, VolumeSpec};
use crate::reconcile::{self, Step};
use crate::state::{Action, Done, Effect, OpResult, Record, State, VolumeKind};

impl Manager {
    /// Runs reconciliation for every available provider (and provider-less
    /// pending operations) and journals each resolution.
    pub(super) async fn reconcile(&self) -> Result<(), ManagerError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut inventory_time = Duration::ZERO;
        // Shared with every resolution's blocking task: one copy, not one
        // per decision (thousands of decisions must not copy it thousands of times).
        let state = Arc::new(self.state());
        let mut report = ReconcileReport::default();
        let mut decisions = reconcile::decide(&state, None, &[]);
        let mut providers: Vec<(String, Arc<dyn Provider>)> = inner
            .providers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        providers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut provider_of: HashMap<usize, Owner> = HashMap::new();
        for (id, provider) in &providers {
            let p = provider.clone();
            let inventory_started = Instant::now();
            // A provider with batched durability may hold side effects of the
            // previous run that are visible but not durable (a killed process
            // leaves them in the page cache): make them durable before
            // anything is decided from them.
            let creates = interrupted_creates(&state, id);
            let found = tokio::task::spawn_blocking(move || {
                // What an interrupted create may have left untagged goes
                // first, so the inventory sees only what the table decides.
                for (volume, op) in &creates {
                    let Ok(id) = VolumeId::new(volume) else {
                        continue;
                    };
                    let spec = VolumeSpec {
                        id,
                        op: *op,
                        kind: VolumeKind::Data,
                    };
                    if let Err(e) = p.clear_interrupted_create(&spec) {
                        tracing::warn!(%volume, %op, error = %e, "could not clear what an interrupted create left; the inventory reports it");
                    }
                }
                p.sync_at_open()?;
                p.inventory()
            })
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
            inventory_time += inventory_started.elapsed();
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    // Out of service, not just reported: no verb may journal
                    // an intent for it or call it until a reopen decides its
                    // pending operations.
                    tracing::error!(provider = %id, error = %e, "inventory failed");
                    inner.set_unavailable(id, &e.to_string());
                    report.unavailable.push((id.clone(), e.to_string()));
                    continue;
                }
            };
            let start = decisions.len();
            decisions.extend(reconcile::decide(&state, Some(id), &found));
            for i in start..decisions.len() {
                provider_of.insert(i, (id.clone(), provider.clone()));
            }
        }
        for (id, reason) in inner
            .unavailable
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            if !report.unavailable.iter().any(|(p, _)| p == id) {
                report.unavailable.push((id.clone(), reason.clone()));
            }
        }
        // Pending operations on unavailable providers stay pending, and their
        // volumes stay claimed until a later open can decide them.
        for (id, _) in &report.unavailable {
            inner.claim_pending_of(id);
        }

        // Which decisions to perform: ignored items are only reported, and
        // nothing is decided for an unavailable provider.
        let mut todo = Vec::with_capacity(decisions.len());
        for (i, d) in decisions.into_iter().enumerate() {
            if let Step::Ignore { found } = &d.step {
                tracing::info!(item = %found.name, "reconcile: foreign item left alone");
                report.foreign.push((found.name.clone(), d.detail.clone()));
                continue;
            }
            let provider = provider_of.get(&i).cloned();
            if let Some((id, _)) = &provider
                && report.unavailable.iter().any(|(p, _)| p == id)
            {
                continue;
            }
            todo.push((d, provider));
        }
        // Every resolution's side effect first, then ONE sync per batched
        // provider that a resolution touched, and only then the records:
        // no record becomes durable before its effect is durable (with a
        // provider durable on return, the effect is durable when it returns).
        let performed = {
            let steps: Vec<_> = todo
                .iter()
                .map(|(d, provider)| (d.step.clone(), provider.clone()))
                .collect();
            let state = state.clone();
            tokio::task::spawn_blocking(move || perform(steps, &state))
                .await
                .map_err(|e| ManagerError::Internal(e.to_string()))?
        };
        for (id, why) in &performed.sync_failures {
            // Nothing of this provider is journaled; its pending operations
            // stay pending (claimed) until a later open.
            inner.set_unavailable(id, why);
            inner.claim_pending_of(id);
            report.unavailable.push((id.clone(), why.clone()));
        }
        // The records in decision order (the order `State::apply` saw when
        // each had its own append), journaled in as few commits as the
        // journal's batch limit allows: recovery with thousands of pending
        // operations must not cost thousands of journal syncs either.
        let mut records = Vec::with_capacity(todo.len());
        let mut resolved = Vec::with_capacity(todo.len());
        for ((d, provider), effect) in todo.into_iter().zip(performed.effects) {
            if let Some((id, _)) = &provider
                && performed.sync_failures.contains_key(id)
            {
                continue;
            }
            let Some(effect) = effect else {
                continue;
            };
            // What happened, not only what was set out: a destroy the
            // provider refused is `destroy-failed`.
            let failed = matches!(
                effect,
                Effect::Resolve {
                    result: OpResult::Failed { .. },
                    ..
                }
            );
            let case = reconcile::performed_case(d.case, failed);
            records.push(Record::Reconciled {
                at_ms: now_ms(),
                case,
                detail: d.detail.clone(),
                effect,
            });
            resolved.push((case, d.volume, d.detail));
        }
        let mut resolved = resolved.into_iter();
        let handed = inner
            .journal
            .append_in_batches(records, |first, run| {
                for (seq, record) in (first..).zip(run) {
                    inner.submit(seq, record);
                    let (case, volume, detail) = resolved.next().expect("one per record");
                    tracing::warn!(case = %case, volume = ?volume, detail = %detail, "reconciled");
                    report.resolutions.push((case, volume, detail));
                }
                // A record the state refused stops the journaling here.
                inner.poison().is_none()
            })
            .await?;
        if let Some(e) = inner.poison() {
            return Err(e);
        }
        debug_assert_eq!(handed, report.resolutions.len());
        let mut stored = inner
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stored.resolutions = report.resolutions;
        stored.foreign = report.foreign;
        stored.unavailable = report.unavailable;
        stored.phases.inventory = inventory_time;
        stored.phases.reconcile = started.elapsed().saturating_sub(inventory_time);
        Ok(())
    }
}

/// A provider with its id: the provider a decision belongs to.
type Owner = (String, Arc<dyn Provider>);

/// What [`perform`] did: each step's effect to journal (in step order) and
/// the batched providers whose closing sync failed.
struct Performed {
    effects: Vec<Option<Effect>>,
    /// Provider id → why its sync failed: none of its effects may be
    /// journaled.
    sync_failures: HashMap<String, String>,
}

/// Whether a step changes what a provider holds (its effect needs the
/// provider's sync before its record, on a batched provider).
fn touches_provider(step: &Step) -> bool {
    matches!(
        step,
        Step::FinishThenDone { .. }
            | Step::DestroyThenDone { .. }
            | Step::KeepResumable { .. }
            | Step::AbortReceiveThenDone { .. }
            | Step::ReapplyThenDone { .. }
            | Step::UndoThenFail { .. }
    )
}

/// Performs every step's provider side effect, then syncs each batched
/// provider that a step touched, once (not once per step: recovery with
/// thousands of pending operations must not cost thousands of syncs).
/// Runs on one blocking thread.
fn perform(steps: Vec<(Step, Option<Owner>)>, state: &State) -> Performed {
    let mut to_sync: Vec<Owner> = Vec::new();
    let mut effects = Vec::with_capacity(steps.len());
    for (step, provider) in steps {
        let action = step
            .op()
            .and_then(|op| state.pending.get(&op))
            .map_or("operation", |p| p.action.name());
        if let Some((id, p)) = &provider
            && touches_provider(&step)
            && p.durability() == Durability::Batched
            && !to_sync.iter().any(|(synced, _)| synced == id)
        {
            to_sync.push((id.clone(), p.clone()));
        }
        effects.push(resolve(
            step,
            provider.as_ref().map(|(_, p)| p.as_ref()),
            action,
            state,
        ));
    }
    let sync_failures = to_sync
        .into_iter()
        .filter_map(|(id, p)| {
            p.sync()
                .err()
                .map(|e| (id, format!("provider sync failed: {e}")))
        })
        .collect();
    Performed {
        effects,
        sync_failures,
    }
}

/// Performs a decision's provider step and returns the effect to journal
/// (`None` for an ignored item: reported, never journaled). `action` names
/// the pending operation's action, for messages.
fn resolve(
    step: Step,
    provider: Option<&dyn Provider>,
    action: &str,
    state: &State,
) -> Option<Effect> {
    let interrupted = |why: String| OpResult::Failed { error: why };
    let (op, result) = match step {
        Step::RollForward { op, found } => (
            op,
            OpResult::Done(Done {
                location: found.location,
                details: found.details,
            }),
        ),
        Step::FailInterrupted { op } => (op, interrupted("interrupted".into())),
        Step::FinishThenDone { op, volume, found } => {
            let result = match provider.map(|p| p.finish(&found)) {
                Some(Ok(created)) => OpResult::Done(done(created)),
                Some(Err(e)) => {
                    // Could not finish: remove it so nothing half-made stays.
                    if let Some(p) = provider {
                        let kind = reconcile::found_kind(&found).unwrap_or(VolumeKind::Data);
                        let _ = found_ref(&found, &volume, kind).and_then(|r| p.destroy(&r));
                    }
                    interrupted(format!("interrupted; could not finish: {e}"))
                }
                None => interrupted("interrupted; provider unavailable".into()),
            };
            (op, result)
        }
        Step::DestroyThenDone { op, volume, found } => {
            let kind = reconcile::found_kind(&found).unwrap_or(VolumeKind::Data);
            let destroyed = match state.volumes.get(&volume) {
                Some(v) => provider.map(|p| volume_ref(v).and_then(|r| p.destroy(&r))),
                None => {
                    provider.map(|p| found_ref(&found, &volume, kind).and_then(|r| p.destroy(&r)))
                }
            };
            let result = match destroyed {
                Some(Ok(())) | None => OpResult::Done(Done::default()),
                // The destroy intent stays the operator's wish; report it.
                Some(Err(e)) => interrupted(format!("destroy during recovery failed: {e}")),
            };
            (op, result)
        }
        Step::Done { op } => (op, OpResult::Done(Done::default())),
        Step::KeepResumable {
            op,
            target,
            partial,
        } => {
            // A killed receive may leave its target unmounted; finishing the
            // target mounts it again and keeps the partial state.
            let result = match provider.map(|p| p.finish(&target)) {
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
            };
            (op, result)
        }
        Step::AbortReceiveThenDone { op, volume } => {
            let aborted = match state.volumes.get(&volume) {
                Some(v) => provider.map(|p| volume_ref(v).and_then(|r| p.abort_receive(&r))),
                None => None,
            };
            let result = match aborted {
                Some(Ok(())) | None => OpResult::Done(Done::default()),
                Some(Err(e)) => interrupted(format!("abort-receive during recovery failed: {e}")),
            };
            (op, result)
        }
        Step::ReapplyThenDone { op, volume } => {
            let pending = state.pending.get(&op).map(|p| &p.action);
            let applied = match (pending, state.volumes.get(&volume), provider) {
                (
                    Some(Action::SetAttributes {
                        capacity_bytes,
                        options,
                        ..
                    }),
                    Some(v),
                    Some(p),
                ) => volume_ref(v).and_then(|r| {
                    capacity_bytes
                        .map_or(Ok(()), |bytes| p.set_capacity(&r, bytes))
                        .and_then(|()| p.set_volume_options(&r, options))
                }),
                _ => Err(crate::provider::ProviderError::Other(
                    "nothing to apply the attributes to".into(),
                )),
            };
            let result = match applied {
                Ok(()) => OpResult::Done(Done::default()),
                Err(e) => interrupted(format!("set-attributes during recovery failed: {e}")),
            };
            (op, result)
        }
        Step::UndoThenFail { op, volume, found } => {
            if let Some(p) = provider {
                let _ = p.abort_partial(op);
                if let Some(found) = &found {
                    let kind = reconcile::found_kind(found).unwrap_or(VolumeKind::Snapshot);
                    let _ = found_ref(found, &volume, kind).and_then(|r| p.destroy(&r));
                }
            }
            (
                op,
                interrupted(format!("{action} interrupted; partial state removed")),
            )
        }
        Step::MarkLost { volume } => return Some(Effect::MarkLost { volume }),
        Step::MarkFound { volume } => return Some(Effect::MarkFound { volume }),
        Step::ReportOrphan(orphan) => return Some(Effect::NoteOrphan(orphan)),
        Step::ForgetOrphan(orphan) => {
            return Some(Effect::ForgetOrphan {
                provider: orphan.provider,
                volume: orphan.volume,
            });
        }
        // Ignored items are reported, never journaled.
        Step::Ignore { .. } => return None,
    };
    Some(Effect::Resolve { op, result })
}

impl super::Inner {
    /// Claims the volumes of every pending operation on provider `id`: they
    /// stay busy until a later open can decide them.
    fn claim_pending_of(&self, id: &str) {
        let mut core = self
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let volumes: Vec<String> = core
            .state
            .pending
            .values()
            .filter(|p| reconcile::provider_of(&core.state, &p.action).as_deref() == Some(id))
            .flat_map(|p| p.action.volumes().into_iter().map(str::to_owned))
            .collect();
        core.busy.extend(volumes);
    }
}

/// The creates on provider `provider` whose intent is durable and has no
/// outcome: (volume id, op).
fn interrupted_creates(state: &State, provider: &str) -> Vec<(String, crate::model::OpId)> {
    state
        .pending
        .values()
        .filter_map(|p| match &p.action {
            Action::CreateVolume {
                provider: of,
                volume,
                ..
            } if of == provider => Some((volume.clone(), p.op)),
            _ => None,
        })
        .collect()
}
