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
//! futex wake storm per round.
//!
//! **Invariant:** `wait` (and `try_lead`) return `Ok` for a ticket only
//! after a sync that began after the ticket was taken has returned `Ok`.
//! **Invariant:** a failed (or panicking) sync fails the group for good
//! (like a failed journal sync): some side effects may not be durable and
//! a retry could lie, so no later operation on that provider is
//! acknowledged until a reopen reconciles what it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use super::write_path::on_blocking_pool;
use crate::provider::Provider;

#[derive(Debug, Clone, Default)]
struct Rounds {
    /// Rounds started (the number of the latest).
    started: u64,
    /// Number of the latest round that returned.
    finished: u64,
    running: bool,
    /// Why the group failed, once a round failed.
    failed: Option<String>,
}

/// The first round an operation's durability needs: any round numbered
/// at least this. Taken after the operation's side effect returned.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(u64);

/// The shared sync of one provider. See the module documentation.
#[derive(Debug)]
pub(super) struct SyncGroup {
    rounds: watch::Sender<Rounds>,
    /// Syncs that returned `Ok`.
    syncs: AtomicU64,
}

impl Default for SyncGroup {
    fn default() -> Self {
        SyncGroup {
            rounds: watch::Sender::new(Rounds::default()),
            syncs: AtomicU64::new(0),
        }
    }
}

impl SyncGroup {
    /// Syncs that returned `Ok`.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Operations awaiting a round now (behind a running one).
    pub fn waiting(&self) -> usize {
        self.rounds.receiver_count()
    }

    /// The ticket of a caller whose side effect has returned: a round
    /// already running may have started before it, so only a later one
    /// counts.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.rounds.borrow().started + 1)
    }

    /// Where `ticket` stands: `Some` once decided (its round returned, or
    /// the group failed), `None` while it needs a round still to come.
    fn decided(r: &Rounds, ticket: Ticket) -> Option<Result<(), String>> {
        if let Some(why) = &r.failed {
            return Some(Err(why.clone()));
        }
        (r.finished >= ticket.0).then_some(Ok(()))
    }

    /// Runs the sync for `ticket` on this thread if no round is running
    /// (blocking it for the sync); `None` if one is running (then
    /// [`SyncGroup::wait`]). `Some` also when the ticket is already decided.
    pub fn try_lead(&self, ticket: Ticket, provider: &dyn Provider) -> Option<Result<(), String>> {
        let mut number = None;
        self.rounds.send_if_modified(|r| {
            if Self::decided(r, ticket).is_some() || r.running {
                return false;
            }
            r.running = true;
            r.started += 1;
            number = Some(r.started);
            false
        });
        let Some(number) = number else {
            return Self::decided(&self.rounds.borrow(), ticket);
        };
        // The round starts after the ticket was taken: it covers it.
        debug_assert!(number >= ticket.0, "a round older than its ticket");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider.sync()));
        let failed = match result {
            Ok(Ok(())) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(Err(e)) => Some(format!("provider sync failed: {e}")),
            Err(_) => Some("provider sync panicked".to_owned()),
        };
        self.rounds.send_modify(|r| {
            r.running = false;
            r.finished = number;
            if r.failed.is_none() {
                r.failed = failed;
            }
        });
        Self::decided(&self.rounds.borrow(), ticket)
    }

    /// Waits, without holding a thread, until `ticket` is decided; leads a
    /// round itself (on the blocking pool) when it finds the group
    /// idle and the ticket still open.
    pub async fn wait(
        self: Arc<Self>,
        ticket: Ticket,
        provider: Arc<dyn Provider>,
    ) -> Result<(), String> {
        let mut rx = self.rounds.subscribe();
        loop {
            let idle = rx
                .wait_for(|r| Self::decided(r, ticket).is_some() || !r.running)
                .await
                .map(|r| Self::decided(&r, ticket))
                .map_err(|_| "the provider's sync group is gone".to_owned())?;
            if let Some(decided) = idle {
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
