//! Provider durability as a batched step: one [`Provider::sync`] shared by
//! every operation whose side effect completed before it started.
//!
//! A provider with [`Durability::Batched`](crate::provider::Durability)
//! returns from its verbs before the side effects are durable. Each
//! operation, once its side effect returned, takes a [`Ticket`] (the first
//! round that starts after now) while still on the thread that ran the
//! effect, and [`SyncGroup::try_lead`]s: if no round is running, it runs
//! the sync right there, for itself and every operation that took a ticket
//! meanwhile (no hand-off). Otherwise it *awaits* ([`SyncGroup::wait`]) the
//! end of the running round without holding a thread, and then the first
//! waiter to see the group idle leads the next round (on the blocking
//! pool, see `write_path::on_blocking_pool`). Only then does the operation
//! append its outcome (intent → effect → shared provider sync → outcome), so
//! invariants 1 and 2 of DESIGN.md hold with the syncs amortized. Waiting
//! asynchronously matters under load: with a thread blocked per waiting
//! operation, tens of operations in flight cost tens of threads and a
//! futex wake storm per round. The rounds themselves are a
//! [`GroupSync`]'s, the same the dir provider's barriers use.
//!
//! **Invariant:** `wait` (and `try_lead`) return `Ok` for a ticket only
//! after a sync that began after the ticket was taken has returned `Ok`.
//! **Invariant:** a failed (or panicking) sync fails the group for good
//! (like a failed journal sync): some side effects may not be durable and
//! a retry could lie, so no later operation on that provider is
//! acknowledged until a reopen reconciles what it holds.

use std::sync::Arc;

use super::write_path::on_blocking_pool;
use crate::fsutil::{GroupSync, Ticket};
use crate::provider::Provider;

/// The shared sync of one provider: a [`GroupSync`] running
/// [`Provider::sync`], led on the thread that ran an effect or awaited.
#[derive(Debug, Default)]
pub(super) struct SyncGroup {
    group: GroupSync,
}

impl SyncGroup {
    /// Syncs that returned `Ok`.
    pub fn syncs(&self) -> u64 {
        self.group.flushes()
    }

    /// Operations awaiting a round now (behind a running one).
    pub fn waiting(&self) -> usize {
        self.group.waiting()
    }

    /// The ticket of a caller whose side effect has returned.
    pub fn ticket(&self) -> Ticket {
        self.group.ticket()
    }

    /// Runs the sync for `ticket` on this thread if no round is running
    /// (blocking it for the sync); `None` if one is running (then
    /// [`SyncGroup::wait`]). `Some` also when the ticket is already decided.
    pub fn try_lead(&self, ticket: Ticket, provider: &dyn Provider) -> Option<Result<(), String>> {
        self.group
            .try_lead(ticket, "provider sync", || provider.sync())
    }

    /// Waits, without holding a thread, until `ticket` is decided; leads a
    /// round itself (on the blocking pool) when it finds the group
    /// idle and the ticket still open.
    pub async fn wait(
        self: Arc<Self>,
        ticket: Ticket,
        provider: Arc<dyn Provider>,
    ) -> Result<(), String> {
        loop {
            if let Some(decided) = self.group.idle_or_decided(ticket).await {
                return decided;
            }
            let (group, provider) = (self.clone(), provider.clone());
            let led = on_blocking_pool(move || group.try_lead(ticket, provider.as_ref()))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(decided) = led {
                return decided;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SyncGroup;
    use crate::provider::Provider;
    use crate::provider::sim::{SimCall, SimFault, SimProvider, When};

    /// Runs round 1 on a thread of its own, held inside the provider's sync
    /// until the returned gate is released; returns once it is inside.
    fn hold_a_round(
        group: &Arc<SyncGroup>,
        sim: &SimProvider,
    ) -> (
        Arc<crate::provider::sim::Gate>,
        std::thread::JoinHandle<Option<Result<(), String>>>,
    ) {
        let gate = sim.hold_next(SimCall::Sync);
        let (g, p) = (group.clone(), sim.clone());
        let leader = std::thread::spawn(move || g.try_lead(g.ticket(), &p));
        assert!(
            gate.wait_entered_for(std::time::Duration::from_secs(60)),
            "the first ticket leads a round"
        );
        (gate, leader)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_running_when_a_ticket_is_taken_does_not_serve_it() {
        let sim = SimProvider::new();
        let group = Arc::new(SyncGroup::default());
        let (gate, leader) = hold_a_round(&group, &sim);
        let ticket = group.ticket();
        assert!(
            group.try_lead(ticket, &sim).is_none(),
            "a round is running: wait"
        );
        gate.release();
        assert_eq!(leader.join().unwrap(), Some(Ok(())));
        let provider: Arc<dyn Provider> = Arc::new(sim.clone());
        group.clone().wait(ticket, provider).await.unwrap();
        assert_eq!(
            sim.calls(SimCall::Sync),
            2,
            "the ticket needed a round of its own"
        );
        assert_eq!(group.syncs(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_behind_a_running_round_share_the_next_one() {
        let sim = SimProvider::new();
        let group = Arc::new(SyncGroup::default());
        let (gate, leader) = hold_a_round(&group, &sim);
        let provider: Arc<dyn Provider> = Arc::new(sim.clone());
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let ticket = group.ticket();
                assert!(group.try_lead(ticket, provider.as_ref()).is_none());
                tokio::spawn(group.clone().wait(ticket, provider.clone()))
            })
            .collect();
        gate.release();
        leader.join().unwrap().unwrap().unwrap();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(
            sim.calls(SimCall::Sync),
            2,
            "eight waiters, one round for all of them"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_round_fails_the_group_for_good() {
        let sim = SimProvider::new();
        sim.set_fault(Some(SimFault {
            call: SimCall::Sync,
            when: When::Before,
            nth: 1,
        }));
        let group = Arc::new(SyncGroup::default());
        let first = group.try_lead(group.ticket(), &sim).unwrap();
        assert!(first.unwrap_err().contains("provider sync failed"));
        let provider: Arc<dyn Provider> = Arc::new(sim.clone());
        let later = group.clone().wait(group.ticket(), provider).await;
        assert!(later.is_err(), "no later caller is told it is durable");
        assert_eq!(sim.calls(SimCall::Sync), 1, "and no sync is retried");
        assert_eq!(group.syncs(), 0);
    }
}
