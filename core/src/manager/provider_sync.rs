//! Provider durability as a batched step: one [`Provider::sync`] shared by
//! every operation whose side effect completed before it started.
//!
//! A provider with [`Durability::Batched`] returns from its verbs before the
//! side effects are durable. Each operation, once its side effect returned,
//! calls [`SyncGroup::sync_after`] on the blocking thread that ran the effect:
//! the call returns once a `sync` that *started after it* has returned, so
//! the operation's side effect is durable. One caller runs the sync (on its
//! own thread, no hand-off); callers that arrive while it runs wait for the
//! next one, which the first of them runs for all. Only then does the
//! operation append its outcome (intent → effect → shared provider sync →
//! outcome), so invariants 1 and 2 of DESIGN.md hold with the syncs
//! amortized.
//!
//! **Invariant:** `sync_after` returns `Ok` only after a `sync` that began
//! after the call began has returned `Ok`. **Invariant:** a failed `sync`
//! fails the group for good (like a failed journal sync): some side effects
//! may not be durable and a retry could lie, so no later operation on that
//! provider is acknowledged until a reopen reconciles what it holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::provider::Provider;

#[derive(Debug, Default)]
struct Round {
    /// Syncs started (the generation of the latest).
    started: u64,
    /// Generation of the latest sync that returned.
    finished: u64,
    running: bool,
    /// Why the group failed, once a sync failed.
    failed: Option<String>,
}

/// The shared sync of one provider.
#[derive(Debug, Default)]
pub(super) struct SyncGroup {
    round: Mutex<Round>,
    done: Condvar,
    /// Syncs that returned `Ok`.
    pub syncs: AtomicU64,
}

impl SyncGroup {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Blocks until a `provider.sync()` that started after this call has
    /// returned; then every side effect completed before the call is
    /// durable. `Err` (the failure's text) if that sync, or any earlier one,
    /// failed.
    pub fn sync_after(&self, provider: &dyn Provider) -> Result<(), String> {
        let mut round = self.lock();
        // A sync already running may have started before our side effect
        // completed: only the next one counts.
        let needed = round.started + 1;
        loop {
            if let Some(why) = &round.failed {
                return Err(why.clone());
            }
            if round.finished >= needed {
                return Ok(());
            }
            if round.running {
                round = self
                    .done
                    .wait(round)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            round.running = true;
            round.started += 1;
            let generation = round.started;
            drop(round);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider.sync()));
            round = self.lock();
            round.running = false;
            round.finished = generation;
            match result {
                Ok(Ok(())) => {
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => round.failed = Some(format!("provider sync failed: {e}")),
                Err(_) => round.failed = Some("provider sync panicked".into()),
            }
            self.done.notify_all();
        }
    }
}
