//! Counted slots: a cap on what clients hold at once (sends, pulls, event
//! subscribers), in all and optionally per client address. Taking a slot
//! never waits: at the cap the request is refused at once (503, or 429 for
//! one client's share), so a flood of requests holds nothing while it is
//! refused. A slot is released when dropped (with the response body it
//! travels in).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A cap on things held at once.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    max_per_client: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// Only clients holding at least one slot (bounded by `max`).
    per_client: HashMap<IpAddr, usize>,
}

/// Why no slot was free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// All `max` slots are taken.
    All(usize),
    /// This client holds its `max_per_client`.
    Client(usize),
}

/// One taken slot; dropping it frees it.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    client: Option<IpAddr>,
}

impl Slots {
    /// At most `max` at once, at most `max_per_client` per client address.
    pub(crate) fn new(max: usize, max_per_client: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            max_per_client,
            held: Mutex::new(Held::default()),
        })
    }

    /// Takes a slot for `client` (`None`: counted in all only).
    pub(crate) fn try_take(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Slot, Full> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.total >= self.max {
            return Err(Full::All(self.max));
        }
        if let Some(ip) = client {
            let mine = held.per_client.entry(ip).or_insert(0);
            if *mine >= self.max_per_client {
                return Err(Full::Client(self.max_per_client));
            }
            *mine += 1;
        }
        held.total += 1;
        debug_assert!(held.per_client.values().sum::<usize>() <= held.total);
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }

    /// Slots taken now.
    pub(crate) fn taken(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.total -= 1;
        if let Some(ip) = self.client
            && let Some(n) = held.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                held.per_client.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_all_clients_and_each_client_and_free_on_drop() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.try_take(Some(a)).unwrap();
        let _a2 = slots.try_take(Some(a)).unwrap();
        assert_eq!(slots.try_take(Some(a)).unwrap_err(), Full::Client(2));
        let _b1 = slots.try_take(Some(b)).unwrap();
        assert_eq!(slots.try_take(Some(b)).unwrap_err(), Full::All(3));
        assert_eq!(slots.try_take(None).unwrap_err(), Full::All(3));
        drop(a1);
        assert_eq!(slots.taken(), 2);
        let _b2 = slots.try_take(Some(b)).unwrap();
        assert_eq!(slots.held.lock().unwrap().per_client.len(), 2);
    }
}
