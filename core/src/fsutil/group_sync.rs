//! One flush shared by every caller that needs it: [`GroupSync`].
//!
//! A caller that needs "everything I did so far is durable" calls
//! [`GroupSync::sync_after`] with the flush to run (`syncfs`, a provider's
//! sync). The call returns once a flush that *started after the call* has
//! returned. One caller runs the flush, on its own thread (no hand-off);
//! callers that arrive while it runs wait for the next one, which the first
//! of them runs for all. This is the group commit of the journal applied to
//! any flush: concurrent callers share one instead of running one each.
//! The same rounds serve async callers in parts: [`GroupSync::ticket`] once
//! the work is done, [`GroupSync::try_lead`] on a thread that may block,
//! and [`GroupSync::idle_or_decided`] to await a running flush without
//! holding a thread (the manager's provider sync does this).
//!
//! **Invariant:** `sync_after` (and a ticket's fate) is `Ok` only after a
//! flush that began after the call (the ticket) began has returned `Ok`.
//! **Invariant:** a failed (or panicking) flush fails the group for good:
//! what it should have made durable may not be, and a retried flush can lie
//! (the "fsyncgate" lesson), so no later caller is told its work is durable.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use tokio::sync::watch;

#[derive(Debug, Default)]
struct Round {
    /// Flushes started (the generation of the latest).
    started: u64,
    /// Generation of the latest flush that returned.
    finished: u64,
    running: bool,
    /// Callers blocked behind a running flush.
    waiting: usize,
    /// Why the group failed, once a flush failed.
    failed: Option<String>,
}

impl Round {
    /// `Some` once `ticket` is decided: a flush at least as new returned,
    /// or the group failed.
    fn decided(&self, ticket: Ticket) -> Option<Result<(), String>> {
        if let Some(why) = &self.failed {
            return Some(Err(why.clone()));
        }
        (self.finished >= ticket.0).then_some(Ok(()))
    }
}

/// The first flush a caller's durability needs: any flush of this
/// generation or a later one. Taken once the caller's work is done.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// A flush shared by concurrent callers. See the module documentation.
#[derive(Debug)]
pub struct GroupSync {
    round: Mutex<Round>,
    /// Wakes blocked callers when a flush returns.
    done: Condvar,
    /// Bumped when a flush returns: wakes async callers.
    ended: watch::Sender<u64>,
    /// Flushes that returned `Ok`.
    flushes: AtomicU64,
}

impl Default for GroupSync {
    fn default() -> Self {
        GroupSync {
            round: Mutex::default(),
            done: Condvar::new(),
            ended: watch::Sender::new(0),
            flushes: AtomicU64::new(0),
        }
    }
}

impl GroupSync {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Flushes that returned `Ok` so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Callers waiting behind a running flush now (blocked or awaiting).
    pub fn waiting(&self) -> usize {
        self.lock().waiting + self.ended.receiver_count()
    }

    /// Why the group failed, if a flush failed.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// The ticket of a caller whose work is done: a flush already running
    /// may have started before the work completed, so only the next counts.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().started + 1)
    }

    /// Runs `flush` on this thread for `ticket` if none is running and the
    /// ticket is still open; `Some` with the ticket's fate once decided
    /// (by this flush, an earlier one, or a failure), `None` if a flush is
    /// running (then wait: [`GroupSync::idle_or_decided`], or
    /// [`GroupSync::sync_after`] which blocks).
    pub fn try_lead<E: Display>(
        &self,
        ticket: Ticket,
        what: &str,
        flush: impl FnOnce() -> Result<(), E>,
    ) -> Option<Result<(), String>> {
        let mut round = self.lock();
        if let Some(decided) = round.decided(ticket) {
            return Some(decided);
        }
        if round.running {
            return None;
        }
        round.running = true;
        round.started += 1;
        let generation = round.started;
        // The flush starts after the ticket was taken: it covers it.
        debug_assert!(generation >= ticket.0, "a flush older than its ticket");
        drop(round);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(flush));
        let mut round = self.lock();
        round.running = false;
        round.finished = generation;
        match result {
            Ok(Ok(())) => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => round.failed = Some(format!("{what} failed: {e}")),
            Err(_) => round.failed = Some(format!("{what} panicked")),
        }
        let decided = round.decided(ticket);
        // Blocked callers count themselves under the lock before they wait
        // and look at the round again before each wait, so none can be
        // missed; a lone caller makes no `futex` call to wake nobody.
        let blocked = round.waiting > 0;
        drop(round);
        if blocked {
            self.done.notify_all();
        }
        self.ended.send_modify(|n| *n += 1);
        decided
    }

    /// Awaits, without holding a thread, until `ticket` is decided (`Some`)
    /// or no flush is running (`None`: lead one with
    /// [`GroupSync::try_lead`], on a thread that may block).
    pub async fn idle_or_decided(&self, ticket: Ticket) -> Option<Result<(), String>> {
        // Subscribed before looking: a flush that returns after the look
        // wakes this caller.
        let mut ended = self.ended.subscribe();
        loop {
            {
                let round = self.lock();
                if let Some(decided) = round.decided(ticket) {
                    return Some(decided);
                }
                if !round.running {
                    return None;
                }
            }
            // The sender lives as long as `self`: `changed` cannot fail here.
            let _ = ended.changed().await;
        }
    }

    /// Blocks until a `flush()` that started after this call has returned;
    /// then everything the caller did before the call is durable. `Err`
    /// (the failure's text, prefixed by `what`) if that flush, or any earlier
    /// one, failed. Every caller passes the same flush.
    pub fn sync_after<E: Display>(
        &self,
        what: &str,
        flush: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), String> {
        let ticket = self.ticket();
        let mut flush = Some(flush);
        loop {
            // Runs the flush at most once: after it the ticket is decided.
            let lead = || {
                flush
                    .take()
                    .map_or(Ok(()), |f| f().map_err(|e| e.to_string()))
            };
            if let Some(decided) = self.try_lead(ticket, what, lead) {
                return decided;
            }
            let mut round = self.lock();
            round.waiting += 1;
            while round.running && round.decided(ticket).is_none() {
                round = self
                    .done
                    .wait(round)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            round.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::GroupSync;

    #[test]
    fn a_lone_caller_runs_its_own_flush() {
        let g = GroupSync::new();
        let ran = AtomicU64::new(0);
        for _ in 0..3 {
            g.sync_after("flush", || {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok::<(), String>(())
            })
            .expect("flush succeeds");
        }
        assert_eq!(ran.load(Ordering::Relaxed), 3);
        assert_eq!(g.flushes(), 3);
    }

    #[test]
    fn callers_waiting_on_a_running_flush_share_the_next_one() {
        // A flush is held open until 8 other callers wait on the group; they
        // must then be served by fewer than 8 flushes (one each would be 8).
        let g = Arc::new(GroupSync::new());
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let g = g.clone();
            std::thread::spawn(move || {
                g.sync_after("flush", move || {
                    entered_tx.send(()).expect("test alive");
                    release_rx.recv().expect("released");
                    Ok::<(), String>(())
                })
            })
        };
        entered_rx.recv().expect("the first flush started");
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.sync_after("flush", || Ok::<(), String>(())))
            })
            .collect();
        // Wait until all 8 are blocked behind the held flush.
        while g.waiting() < 8 {
            std::thread::yield_now();
        }
        release_tx.send(()).expect("flush alive");
        first.join().expect("no panic").expect("ok");
        for w in waiters {
            w.join().expect("no panic").expect("ok");
        }
        // The held flush, then one round run by the first waiter to wake
        // for all 8 (one each would make 9).
        assert_eq!(g.flushes(), 2, "flushes for 9 callers");
    }

    #[test]
    fn a_failed_flush_fails_every_later_caller() {
        let g = GroupSync::new();
        let err = g
            .sync_after("syncfs", || Err::<(), _>("EIO"))
            .expect_err("the flush failed");
        assert_eq!(err, "syncfs failed: EIO");
        let ran = AtomicU64::new(0);
        let later = g.sync_after("syncfs", || {
            ran.fetch_add(1, Ordering::Relaxed);
            Ok::<(), String>(())
        });
        assert_eq!(later, Err("syncfs failed: EIO".to_owned()));
        assert_eq!(ran.load(Ordering::Relaxed), 0, "no flush after a failure");
    }
}
