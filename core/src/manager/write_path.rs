//! The write path shared by every verb: claims on volume ids, intent →
//! provider side effect → outcome, and the reorder buffer that applies
//! durable records to the state in sequence order.
//!
//! No outcome is journaled after a failed shared provider sync, nor after
//! an effect that failed with [`ProviderError::OutOfService`] (a provider
//! that left what only a reopen may judge, such as the dir provider's
//! receive whose undo could not put the target's old content back): the
//! intent stays pending and the provider is out of service until a reopen
//! reconciles it, whatever its durability. Journaled as failed, such a
//! receive would leave its half-made snapshot an orphan at the reopen and
//! the old content in its staging area, with nothing to put it back
//! (`tests/torture_dir_receive_manager.rs`, durable on return).
//!
//! Claims come in two strengths. An exclusive claim (every mutating verb on
//! the volumes it changes) excludes every other claim on the id. A shared
//! claim (a send of a snapshot, a fork from it: they only read it) excludes
//! exclusive claims but not other shared ones, so a snapshot being sent
//! cannot be destroyed (409 busy) while any number of sends and forks read
//! it together.
//!
//! **Invariant:** an id is either exclusively claimed once, or shared-claimed
//! any number of times, never both.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use uuid::Uuid;

use super::cycle::{Cycle, Entry, Reply};
use super::provider_sync::SyncGroup;
use super::{Inner, ManagerError, now_ms};
use crate::fsutil::Ticket;
use crate::journal::{self, JournalError};
use crate::provider::{Durability, Provider, ProviderConfig, ProviderError};
use crate::state::{Action, Done, OpId, OpResult, Record, State, Volume};

/// Nanoseconds since `t`, saturating (a u64 holds 584 years of them).
pub(super) fn nanos_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs blocking work (a provider's side effect and its shared sync) for
/// the calling task on the blocking pool. Not `block_in_place` in the
/// caller's task: an operation's body is polled there (see `Detached`), and
/// `block_in_place` would block that whole task (every other branch of a
/// caller's `select!`, a timeout around the call) for the effect's duration;
/// `tests/manager_cancel.rs` hangs with it. Nor `block_in_place` in a task
/// of its own: measured back to back against this (`cargo bench --bench
/// api`, `VOLMGR_BENCH_AGENT`, two rounds each), it was no faster (1,167 and
/// 1,207 creates/s at one client against 1,278 and 1,258; 6,604 and 6,861 at
/// 32 against 6,956 and 6,622): it hands the worker's core to another
/// thread instead of the work.
pub(super) async fn on_blocking_pool<T, F>(f: F) -> Result<T, ManagerError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ManagerError::Internal(format!("provider task failed: {e}")))
}

/// Where an operation's provider sync stands when its effect returns.
enum Synced {
    /// Its own round ran (or the group had failed).
    Decided(Result<(), String>),
    /// A round was running: wait for the next one.
    Wait(Arc<SyncGroup>, Ticket, Arc<dyn Provider>),
}

/// Releases claimed volume ids when the operation ends (or its task panics).
pub(super) struct Claim {
    inner: Arc<Inner>,
    /// Claimed exclusively.
    ids: Vec<String>,
    /// Claimed shared (read only).
    shared: Vec<String>,
    /// Left claimed on purpose: the outcome could not be journaled.
    keep: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mut core = self
            .inner
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &self.ids {
            core.busy.remove(id);
        }
        for id in &self.shared {
            if let Some(n) = core.readers.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    core.readers.remove(id);
                }
            }
        }
    }
}

impl Inner {
    pub(super) fn build_provider(
        &self,
        kind: &str,
        config: &ProviderConfig,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let factory = self.factories.get(kind).ok_or_else(|| {
            ProviderError::InvalidConfig(format!("unknown provider kind {kind:?}"))
        })?;
        factory(config, &self.agent)
    }

    pub(super) fn provider(&self, id: &str) -> Result<Arc<dyn Provider>, ManagerError> {
        if let Some(p) = self
            .providers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
        {
            return Ok(p.clone());
        }
        if let Some(reason) = self
            .unavailable
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
        {
            return Err(ManagerError::ProviderUnavailable {
                provider: id.to_owned(),
                reason: reason.clone(),
            });
        }
        Err(ManagerError::NoSuchProvider(id.to_owned()))
    }

    /// The shared sync of provider `id` (see `provider_sync`).
    pub(super) fn sync_group(&self, id: &str) -> Arc<SyncGroup> {
        self.sync_groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Takes provider `id` out of service until the next open.
    pub(super) fn set_unavailable(&self, id: &str, reason: &str) {
        tracing::error!(provider = %id, %reason, "provider unavailable until the manager is reopened");
        self.providers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        self.unavailable
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), reason.to_owned());
    }

    pub(super) fn volume(&self, id: &str) -> Result<Volume, ManagerError> {
        let core = self
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        core.state
            .volumes
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchVolume(id.to_owned()))
    }

    /// Validates against the state and marks `ids` busy, atomically; returns
    /// the claim and whatever the check extracted from the state.
    pub(super) fn claim<T>(
        self: &Arc<Self>,
        ids: &[&str],
        check: impl FnOnce(&State) -> Result<T, ManagerError>,
    ) -> Result<(Claim, T), ManagerError> {
        self.claim_with(ids, &[], check)
    }

    /// Like [`Inner::claim`], with `shared` claimed for reading only: busy
    /// if another operation holds one of them exclusively, but shared with
    /// other readers.
    pub(super) fn claim_with<T>(
        self: &Arc<Self>,
        ids: &[&str],
        shared: &[&str],
        check: impl FnOnce(&State) -> Result<T, ManagerError>,
    ) -> Result<(Claim, T), ManagerError> {
        let mut core = self
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = &core.poisoned {
            return Err(ManagerError::RecordRejected(e.clone()));
        }
        // A failed journal write refuses everything with its own error,
        // before any claim: an id left claimed by an operation whose outcome
        // could not be journaled would otherwise answer "busy", pointing an
        // operator at an operation that never ends instead of the journal.
        if let Some(cause) = self.journal.poisoned() {
            return Err(ManagerError::Journal(JournalError::Poisoned { cause }));
        }
        assert!(
            !ids.is_empty() || !shared.is_empty(),
            "an operation claims the volume ids it touches"
        );
        if let Some(id) = ids.iter().find(|id| core.busy.contains(**id)) {
            return Err(ManagerError::Busy((*id).to_owned()));
        }
        if let Some((id, readers)) = ids
            .iter()
            .find_map(|id| core.readers.get(*id).map(|n| (id, *n)))
        {
            return Err(ManagerError::BeingRead {
                id: (*id).to_owned(),
                readers,
            });
        }
        if let Some(id) = shared.iter().find(|id| core.busy.contains(**id)) {
            return Err(ManagerError::Busy((*id).to_owned()));
        }
        let value = check(&core.state)?;
        for id in ids {
            core.busy.insert((*id).to_owned());
        }
        for id in shared {
            *core.readers.entry((*id).to_owned()).or_insert(0) += 1;
        }
        debug_assert!(
            core.busy.iter().all(|id| !core.readers.contains_key(id)),
            "an id both exclusively and shared claimed"
        );
        let claim = Claim {
            inner: self.clone(),
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            shared: shared.iter().map(|s| (*s).to_owned()).collect(),
            keep: false,
        };
        Ok((claim, value))
    }

    /// The write path shared by every verb (see the module doc).
    pub(super) async fn run<F>(
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
        // Creates and destroys on a batched provider go through its write
        // cycle (`cycle`) if configured: one commit and one round a cycle.
        let cycled = self.write_cycle
            && matches!(
                action,
                Action::CreateVolume { .. } | Action::DestroyVolume { .. }
            );
        let intent = Record::Intent {
            op,
            at_ms: now_ms(),
            action,
        };
        if cycled
            && let Some(provider) = self
                .provider(provider_id)
                .ok()
                .filter(|p| p.durability() == Durability::Batched)
        {
            return self
                .run_cycled(claim, op, intent, provider_id, provider, effect, started)
                .await;
        }
        // Invariant 1: the intent is durable before the provider is touched.
        let seq = self.journal.append(&intent).await?;
        let mut journal_ns = nanos_since(started);
        self.submit(seq, intent);
        self.wait_applied(seq).await?;
        // The provider's batched durability step, if it has one: run on the
        // effect's own thread right after it (no further hand-off).
        let batched = self
            .provider(provider_id)
            .ok()
            .filter(|p| p.durability() == Durability::Batched)
            .map(|p| (p, self.sync_group(provider_id)));
        let (result, synced) = on_blocking_pool(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(move || effect(op)))
                .unwrap_or_else(|_| Err(ProviderError::Other("provider call panicked".into())));
            // Whatever the effect did (or undid) is durable before its
            // outcome may be: one sync shared with every operation whose
            // effect completed before it started. Led right here if no round
            // is running; else awaited below without holding this thread.
            let synced = batched.map(|(provider, group)| {
                let ticket = group.ticket();
                match group.try_lead(ticket, provider.as_ref()) {
                    Some(decided) => Synced::Decided(decided),
                    None => Synced::Wait(group, ticket, provider),
                }
            });
            (result, synced)
        })
        .await?;
        let synced = match synced {
            None => Ok(()),
            Some(Synced::Decided(decided)) => decided,
            Some(Synced::Wait(group, ticket, provider)) => group.wait(ticket, provider).await,
        };
        // A provider that went out of service in the effect (it left what
        // only a reopen may judge: a receive whose undo failed) is taken
        // like a failed sync, whatever its durability: a journaled failure
        // would leave what it kept to no one (an orphan at the reopen, the
        // target's old content in its staging area).
        let synced = synced.and(match &result {
            Err(ProviderError::OutOfService(cause)) => Err(cause.clone()),
            _ => Ok(()),
        });
        if let Err(cause) = synced {
            // Not known to be durable: no outcome may be journaled. The intent
            // stays pending, its volumes claimed, and the provider is
            // unavailable until a reopen reconciles what it really holds.
            claim.keep = true;
            self.set_unavailable(provider_id, &cause);
            return Err(ManagerError::ProviderUnavailable {
                provider: provider_id.to_owned(),
                reason: cause,
            });
        }
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
        journal_ns += nanos_since(append_started);
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
        self.wait_applied(seq).await?;
        self.count_done(started, journal_ns);
        tracing::debug!(%op, kind = name, seq, "operation done");
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The write path of a short verb on a batched provider: handed to the
    /// provider's cycle driver (see `cycle`).
    #[allow(clippy::too_many_arguments)]
    async fn run_cycled<F>(
        self: &Arc<Self>,
        mut claim: Claim,
        op: OpId,
        intent: Record,
        provider_id: &str,
        provider: Arc<dyn Provider>,
        effect: F,
        started: Instant,
    ) -> Result<(), ManagerError>
    where
        F: FnOnce(OpId) -> Result<Done, ProviderError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.cycle(provider_id).submit(
            self,
            provider_id,
            provider,
            Entry {
                op,
                intent,
                effect: Box::new(effect),
                reply,
            },
        );
        let answer = answer
            .await
            .map_err(|_| ManagerError::Internal("the cycle driver went away".into()))?;
        match answer {
            Reply::IntentFailed(e) | Reply::Refused(e) => Err(e),
            Reply::Unsynced(cause) => {
                claim.keep = true;
                Err(ManagerError::ProviderUnavailable {
                    provider: provider_id.to_owned(),
                    reason: cause,
                })
            }
            Reply::OutcomeFailed(cause) => {
                claim.keep = true;
                Err(ManagerError::Journal(JournalError::Poisoned { cause }))
            }
            Reply::Finished {
                result,
                seq,
                journal_ns,
            } => {
                self.wait_applied(seq).await?;
                self.count_done(started, journal_ns);
                tracing::debug!(%op, seq, "operation done (write cycle)");
                result.map(|_| ()).map_err(|error| ManagerError::Provider {
                    provider: provider_id.to_owned(),
                    error,
                })
            }
        }
    }

    /// Counts an operation answered after its durable outcome: its wall
    /// time since `started` and the part spent awaiting appends.
    fn count_done(&self, started: Instant, journal_ns: u64) {
        let c = &self.counters;
        c.operations.fetch_add(1, Ordering::Relaxed);
        c.operation_ns
            .fetch_add(nanos_since(started), Ordering::Relaxed);
        c.journal_wait_ns.fetch_add(journal_ns, Ordering::Relaxed);
    }

    /// The cycle driver of provider `id` (see `cycle`).
    fn cycle(&self, id: &str) -> Arc<Cycle> {
        self.cycles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Hands a durable record to the state; applies every record that is now
    /// contiguous, in sequence order, and broadcasts their events. The first
    /// record the state machine refuses poisons the manager (see
    /// [`super::replay`]): nothing after it is applied, waiters are woken with
    /// the error, and every later operation is refused with it.
    pub(super) fn submit(&self, seq: u64, record: Record) {
        let mut core = self
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Precondition: each durable record arrives once, after those applied.
        assert!(
            seq > core.state.seq && !core.waiting.contains_key(&seq),
            "record {seq} handed to the state twice (state at {})",
            core.state.seq
        );
        if core.poisoned.is_some() {
            return;
        }
        core.waiting.insert(seq, record);
        let mut applied_any = false;
        // Bounded: each round removes one record from `waiting`.
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
                    // The record is durable: replay will meet it too. Stop
                    // here rather than serve a state replay cannot reach.
                    tracing::error!(error = %e, "the state machine refused a durable journal record; the manager stops");
                    core.waiting.clear();
                    core.poisoned = Some(e);
                    break;
                }
            }
            core.since_checkpoint += 1;
            applied_any = true;
        }
        // Pair assertion: nothing waits that could be applied.
        debug_assert!(!core.waiting.contains_key(&(core.state.seq + 1)) || core.poisoned.is_some());
        if applied_any || core.poisoned.is_some() {
            let seq = core.state.seq;
            // Before waking the waiters: whoever sees `seq` applied also
            // sees the checkpoint it made due counted in the stats.
            if core.poisoned.is_none()
                && core.since_checkpoint >= self.checkpoint_interval(&core.state)
            {
                core.since_checkpoint = 0;
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                // The journal rebuilds the state at `seq` from its own
                // records, off this lock. Debug builds also encode the live
                // state here, and the rebuilt one must match it byte for
                // byte (invariant 3: replay == live application).
                let live = cfg!(debug_assertions).then(|| journal::encode_checkpoint(&core.state));
                self.checkpoint_later(seq, live);
            }
            self.applied.send_replace(super::Applied {
                seq,
                poisoned: core.poisoned.clone(),
            });
        }
    }

    /// Records between two checkpoints of `state`: `checkpoint_every`, or
    /// as many as the state has entries when that is more and the interval
    /// grows with the state (see `ManagerConfig::checkpoint_grows_with_state`).
    pub(super) fn checkpoint_interval(&self, state: &State) -> u64 {
        if self.checkpoint_grows_with_state {
            self.checkpoint_every.max(state.entries() as u64)
        } else {
            self.checkpoint_every
        }
    }

    /// The error every operation gets once the manager is poisoned.
    pub(super) fn poison(&self) -> Option<ManagerError> {
        let core = self
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        core.poisoned.clone().map(ManagerError::RecordRejected)
    }

    /// Has the journal store a checkpoint of the state at durable record
    /// `seq`, rebuilt from the journal on the blocking pool (see
    /// [`replay::Rebuilt`]): the operation that made it due waits for
    /// nothing, however large the state. `live`: the live state's
    /// encoding at `seq`, which the rebuilt one must equal (debug builds).
    pub(super) fn checkpoint_later(&self, seq: u64, live: Option<Result<Vec<u8>, String>>) {
        // A task of its own: `submit` never awaits under the state lock.
        let journal = self.journal.clone();
        let counters = self.counters.clone();
        let rebuilt = super::replay::Rebuilt::new(live, counters.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = journal.checkpoint_rebuilt::<State, _>(seq, rebuilt).await {
                counters.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, seq, "checkpoint failed");
            }
        });
        let mut tasks = self
            .checkpoint_tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: finished tasks are dropped at every request.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Waits until record `seq` is applied; fails if the manager was
    /// poisoned before it.
    pub(super) async fn wait_applied(&self, seq: u64) -> Result<(), ManagerError> {
        let mut rx = self.applied.subscribe();
        let applied = rx
            .wait_for(|a| a.seq >= seq || a.poisoned.is_some())
            .await
            .map(|a| a.clone())
            .map_err(|_| ManagerError::Internal("the manager is gone".into()))?;
        match applied.poisoned {
            Some(e) if applied.seq < seq => Err(ManagerError::RecordRejected(e)),
            _ => Ok(()),
        }
    }
}
