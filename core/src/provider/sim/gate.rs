//! The simulated provider's gate: a test holds one provider call inside the
//! provider (after it entered, before its side effect) until it releases it,
//! so it can build an exact interleaving of a held call with everything else,
//! without sleeping to synchronise.

use std::sync::Mutex;

/// A gate that holds one call inside the provider until released.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<(bool, bool)>,
    cond: std::sync::Condvar,
}

impl Gate {
    /// Blocks until a call has entered the gate.
    pub fn wait_entered(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !s.0 {
            s = self
                .cond
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Blocks until a call has entered the gate or `limit` has passed;
    /// `true` if a call entered. For tests that must fail, not hang, when
    /// the call never comes.
    pub fn wait_entered_for(&self, limit: std::time::Duration) -> bool {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (s, _) = self
            .cond
            .wait_timeout_while(s, limit, |s| !s.0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.0
    }

    /// Lets the held call continue.
    pub fn release(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.1 = true;
        self.cond.notify_all();
    }

    pub(super) fn pass(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.0 = true;
        self.cond.notify_all();
        while !s.1 {
            s = self
                .cond
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}
