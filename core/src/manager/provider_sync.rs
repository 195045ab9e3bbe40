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

use crate::fsutil::GroupSync;
use crate::provider::Provider;

/// The shared sync of one provider: a [`GroupSync`] running
/// [`Provider::sync`].
#[derive(Debug, Default)]
pub(super) struct SyncGroup {
    group: GroupSync,
}

impl SyncGroup {
    /// Syncs that returned `Ok`.
    pub fn syncs(&self) -> u64 {
        self.group.flushes()
    }

    /// Blocks until a `provider.sync()` that started after this call has
    /// returned; then every side effect completed before the call is
    /// durable. `Err` (the failure's text) if that sync, or any earlier one,
    /// failed.
    pub fn sync_after(&self, provider: &dyn Provider) -> Result<(), String> {
        self.group.sync_after("provider sync", || provider.sync())
    }
}
