//! One cycle driver per batched provider (with `ManagerConfig::write_cycle`
//! only; experimental): the write path of its creates and destroys as one
//! loop, instead of three stages (journal commit, effect, provider round)
//! that batch independently. Snapshots and forks keep the path of one
//! operation: on dir they copy a tree, and a cycle lasts as long as its
//! slowest effect.
//!
//! Each turn drains what was queued and runs two stages at once: a commit,
//! one journal append of the outcomes of the operations whose round just
//! ended and of the intents just drained (which answers the former); and,
//! for the operations whose intents the previous turn's commit made
//! durable, their side effects, all at once on the blocking pool, then one
//! provider round ([`SyncGroup`]) for all of them, their outcomes kept for
//! the next turn's commit. So an operation takes three turns (intent;
//! effect and round; outcome), the path of each is still intent → effect →
//! shared provider sync → outcome (invariants 1 and 2 of DESIGN.md), and a
//! journal flush runs during a provider round. A turn is at most one
//! journal flush and one provider flush, shared by every operation in it
//! (at most [`MAX_PER_CYCLE`] new ones). The driver is a task spawned when
//! work arrives and none is running; it ends when it has nothing queued,
//! nothing to run and no outcome to commit.
//!
//! **Invariant:** an operation's outcome is appended only after a round
//! that began after its effect returned has returned `Ok`, and it is
//! answered only once that append is durable.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::provider_sync::SyncGroup;
use super::write_path::{nanos_since, on_blocking_pool};
use super::{Inner, ManagerError, now_ms};
use crate::journal::JournalError;
use crate::provider::{Provider, ProviderError};
use crate::state::{Done, OpId, OpResult, Record};

/// The most operations one cycle takes (their intents and outcomes are one
/// journal append each).
const MAX_PER_CYCLE: usize = 256;

/// A side effect handed to the driver.
pub(super) type Effect = Box<dyn FnOnce(OpId) -> Result<Done, ProviderError> + Send>;

/// How an operation handed to the driver ended.
pub(super) enum Reply {
    /// Its intent could not be journaled: nothing ran.
    IntentFailed(ManagerError),
    /// The manager refused its durable intent (poisoned): nothing ran.
    Refused(ManagerError),
    /// Its effect (or the round after it) is not known to be durable: no
    /// outcome was journaled; the provider is out of service.
    Unsynced(String),
    /// Its outcome could not be journaled.
    OutcomeFailed(String),
    /// Its outcome is durable at `seq`.
    Finished {
        result: Result<Done, ProviderError>,
        seq: u64,
        journal_ns: u64,
    },
}

/// An operation waiting for a cycle.
pub(super) struct Entry {
    pub op: OpId,
    pub intent: Record,
    pub effect: Effect,
    pub reply: oneshot::Sender<Reply>,
}

/// An operation whose effect is durable, waiting for its outcome's commit.
struct Pending {
    op: OpId,
    result: Result<Done, ProviderError>,
    reply: oneshot::Sender<Reply>,
    intent_ns: u64,
}

#[derive(Default)]
struct Queue {
    entries: Vec<Entry>,
    running: bool,
    /// Operations of the running cycle past their effect, in its round.
    in_round: usize,
}

/// The cycle driver of one provider.
#[derive(Default)]
pub(super) struct Cycle {
    queue: Mutex<Queue>,
}

impl Cycle {
    /// Operations waiting for a provider round: queued for the next cycle,
    /// or in the running cycle's round (for [`super::ManagerStats`]).
    pub fn waiting(&self) -> usize {
        let queue = self.lock();
        queue.entries.len() + queue.in_round
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_in_round(&self, n: usize) {
        self.lock().in_round = n;
    }

    /// Queues `entry`; starts the driver if none is running.
    pub fn submit(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        provider_id: &str,
        provider: Arc<dyn Provider>,
        entry: Entry,
    ) {
        let mut queue = self.lock();
        queue.entries.push(entry);
        if !queue.running {
            queue.running = true;
            let (cycle, inner, id) = (self.clone(), inner.clone(), provider_id.to_owned());
            tokio::spawn(async move { cycle.drive(inner, id, provider).await });
        }
    }

    /// The driver: each turn drains the queue, then runs two stages at
    /// once, the commit (outcomes of the last round's operations with the
    /// intents just drained) and the effects and round of the operations
    /// whose intents the previous turn's commit made durable. So a journal
    /// flush runs during a provider round, as on the path of one operation.
    async fn drive(
        self: Arc<Self>,
        inner: Arc<Inner>,
        provider_id: String,
        provider: Arc<dyn Provider>,
    ) {
        let group = inner.sync_group(&provider_id);
        let _stopped = Stopped(&self);
        let mut pending: Vec<Pending> = Vec::new();
        let mut ready: Vec<Ready> = Vec::new();
        loop {
            let new: Vec<Entry> = {
                let mut queue = self.lock();
                queue.in_round = 0;
                if queue.entries.is_empty() && pending.is_empty() && ready.is_empty() {
                    queue.running = false;
                    return;
                }
                let n = queue.entries.len().min(MAX_PER_CYCLE);
                queue.entries.drain(..n).collect()
            };
            let new = refuse_if_out_of_service(&inner, &provider_id, new);
            let (to_commit, to_run) = (std::mem::take(&mut pending), std::mem::take(&mut ready));
            let commit = self.commit(&inner, to_commit, new);
            let round = self.round(&inner, &group, &provider, &provider_id, to_run);
            (ready, pending) = tokio::join!(commit, round);
        }
    }

    /// One journal append of `pending`'s outcomes and `new`'s intents;
    /// answers `pending`; returns `new` once its intents are applied.
    async fn commit(&self, inner: &Inner, pending: Vec<Pending>, new: Vec<Entry>) -> Vec<Ready> {
        if pending.is_empty() && new.is_empty() {
            return Vec::new();
        }
        let mut records = Vec::with_capacity(pending.len() + new.len());
        records.extend(pending.iter().map(Pending::outcome));
        records.extend(new.iter().map(|e| e.intent.clone()));
        let started = Instant::now();
        let appended = inner.journal.append_all(&records).await;
        let commit_ns = nanos_since(started);
        let first = match appended {
            Ok(first) => first,
            Err(e) => {
                // The journal is poisoned by this failure: every later
                // append would say so. One caller gets the error itself.
                let cause = e.to_string();
                let mut error = Some(ManagerError::from(e));
                for p in pending {
                    let _ = p.reply.send(Reply::OutcomeFailed(cause.clone()));
                }
                for n in new {
                    let e = error.take().unwrap_or_else(|| {
                        ManagerError::Journal(JournalError::Poisoned {
                            cause: cause.clone(),
                        })
                    });
                    let _ = n.reply.send(Reply::IntentFailed(e));
                }
                return Vec::new();
            }
        };
        let count = records.len() as u64;
        for (i, record) in records.into_iter().enumerate() {
            inner.submit(first + i as u64, record);
        }
        for (i, p) in pending.into_iter().enumerate() {
            let _ = p.reply.send(Reply::Finished {
                result: p.result,
                seq: first + i as u64,
                journal_ns: p.intent_ns + commit_ns,
            });
        }
        if new.is_empty() {
            return Vec::new();
        }
        // The intents are applied before any effect runs, as on the path of
        // one operation.
        if let Err(e) = inner.wait_applied(first + count - 1).await {
            let cause = e.to_string();
            for n in new {
                let refused = inner
                    .poison()
                    .unwrap_or_else(|| ManagerError::Internal(cause.clone()));
                let _ = n.reply.send(Reply::Refused(refused));
            }
            return Vec::new();
        }
        new.into_iter()
            .map(|entry| Ready { entry, commit_ns })
            .collect()
    }

    /// Runs `ready`'s effects at once, then one provider round for all of
    /// them; returns those whose outcome may be journaled.
    async fn round(
        &self,
        inner: &Inner,
        group: &Arc<SyncGroup>,
        provider: &Arc<dyn Provider>,
        provider_id: &str,
        ready: Vec<Ready>,
    ) -> Vec<Pending> {
        if ready.is_empty() {
            return Vec::new();
        }
        // A round that failed while these intents were committed took the
        // provider out of service: their effects do not run, their intents
        // stay pending for the next open.
        if let Err(e) = inner.provider(provider_id) {
            let cause = e.to_string();
            for r in ready {
                let _ = r.entry.reply.send(Reply::Unsynced(cause.clone()));
            }
            return Vec::new();
        }
        let running: Vec<_> = ready
            .into_iter()
            .map(|r| {
                let Entry {
                    op, effect, reply, ..
                } = r.entry;
                let task = tokio::task::spawn_blocking(move || {
                    std::panic::catch_unwind(AssertUnwindSafe(move || effect(op))).unwrap_or_else(
                        |_| Err(ProviderError::Other("provider call panicked".into())),
                    )
                });
                (op, reply, r.commit_ns, task)
            })
            .collect();
        let mut done = Vec::with_capacity(running.len());
        for (op, reply, commit_ns, task) in running {
            let result = task.await.unwrap_or_else(|e| {
                Err(ProviderError::Other(format!("provider task failed: {e}")))
            });
            done.push((op, reply, commit_ns, result));
        }
        // One round for every effect of this cycle.
        self.set_in_round(done.len());
        let ticket = group.ticket();
        let (g, p) = (group.clone(), provider.clone());
        let synced = match on_blocking_pool(move || g.try_lead(ticket, p.as_ref())).await {
            Ok(Some(decided)) => decided,
            Ok(None) => group.clone().wait(ticket, provider.clone()).await,
            Err(e) => Err(e.to_string()),
        };
        let mut pending = Vec::with_capacity(done.len());
        for (op, reply, intent_ns, result) in done {
            let unsynced = match (&synced, &result) {
                (Err(cause), _) | (_, Err(ProviderError::OutOfService(cause))) => {
                    Some(cause.clone())
                }
                _ => None,
            };
            if let Some(cause) = unsynced {
                inner.set_unavailable(provider_id, &cause);
                let _ = reply.send(Reply::Unsynced(cause));
                continue;
            }
            pending.push(Pending {
                op,
                result,
                reply,
                intent_ns,
            });
        }
        pending
    }
}

/// Refuses `new` if a failed round took the provider out of service: no
/// intent is journaled for it, as for a verb arriving now.
fn refuse_if_out_of_service(inner: &Inner, provider_id: &str, new: Vec<Entry>) -> Vec<Entry> {
    if inner.provider(provider_id).is_ok() {
        return new;
    }
    for n in new {
        let refused = match inner.provider(provider_id) {
            Err(e) => e,
            Ok(_) => ManagerError::Internal("provider back in service".into()),
        };
        let _ = n.reply.send(Reply::Refused(refused));
    }
    Vec::new()
}

/// An operation whose intent is durable and applied, its effect not run.
struct Ready {
    entry: Entry,
    /// The commit that made its intent durable.
    commit_ns: u64,
}

impl Pending {
    /// Its outcome record.
    fn outcome(&self) -> Record {
        Record::Outcome {
            op: self.op,
            at_ms: now_ms(),
            result: match &self.result {
                Ok(done) => OpResult::Done(done.clone()),
                Err(ProviderError::Suspended { partial, cause, .. }) => OpResult::Suspended {
                    error: cause.clone(),
                    token: partial.token.clone(),
                    guid: partial.guid.clone(),
                },
                Err(e) => OpResult::Failed {
                    error: e.to_string(),
                },
            },
        }
    }
}

/// Answers what is queued if the driver stops by a panic (its task
/// unwinding): no caller waits for a driver that is gone, and the next
/// submit starts a new one.
struct Stopped<'a>(&'a Cycle);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut queue = self.0.lock();
        queue.running = false;
        queue.in_round = 0;
        for entry in queue.entries.drain(..) {
            let _ = entry.reply.send(Reply::Refused(ManagerError::Internal(
                "the provider's write cycle stopped".into(),
            )));
        }
    }
}
