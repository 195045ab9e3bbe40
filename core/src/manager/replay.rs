//! Replay: the one policy for rebuilding the state from the journal, used by
//! `Manager::open` and by `volmgr journal` (`state`, `stats`, `verify`).
//!
//! The state starts from the checkpoint's (checked against the checkpoint's
//! sequence number), then every record after it is applied in order. The
//! first record the state machine refuses ends replay with an
//! [`ApplyError`] naming its sequence number and reason; nothing after it is
//! applied. A running manager that meets a refused record stops the same
//! way (it is poisoned with the same error), so the state it serves is
//! always one replay reaches.

use crate::journal::{self, Rebuild, Recovery};
use crate::state::{ApplyError, Record, State};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Counters, ManagerError, OpenPhases};

/// The state a checkpoint payload holds, checked against the checkpoint's
/// sequence number.
pub fn checkpoint_state(seq: u64, payload: &[u8]) -> Result<State, String> {
    let state = journal::decode_checkpoint::<State>(payload)
        .map_err(|e| format!("checkpoint {seq} does not decode as a state: {e}"))?;
    if state.seq != seq {
        return Err(format!(
            "checkpoint {seq} holds the state at sequence {}",
            state.seq
        ));
    }
    Ok(state)
}

/// Folds `records` into `state` in order; stops at the first refused one.
pub fn apply_all<'a>(
    state: &mut State,
    records: impl IntoIterator<Item = &'a (u64, Record)>,
) -> Result<(), ApplyError> {
    for (seq, record) in records {
        state.apply(*seq, record)?;
    }
    Ok(())
}

/// The state what opening the journal recovered replays to.
pub fn replay(recovery: &Recovery<Record>) -> Result<State, ManagerError> {
    replay_timed(recovery, &mut OpenPhases::default())
}

/// [`replay`], noting how long the checkpoint decode and the records took.
pub(super) fn replay_timed(
    recovery: &Recovery<Record>,
    phases: &mut OpenPhases,
) -> Result<State, ManagerError> {
    let started = Instant::now();
    let mut state = match &recovery.checkpoint {
        Some((seq, payload)) => checkpoint_state(*seq, payload).map_err(ManagerError::Replay)?,
        None => State::default(),
    };
    phases.checkpoint_decode = started.elapsed();
    let started = Instant::now();
    apply_all(&mut state, &recovery.records).map_err(ManagerError::RecordRejected)?;
    phases.replay = started.elapsed();
    Ok(state)
}

/// The state a checkpoint stores, rebuilt by the journal from its own
/// records ([`journal::Journal::checkpoint_rebuilt`]) with this module's one
/// policy: the checkpoint's state, checked against its sequence number, then
/// every record after it, the first refused one ending the rebuild.
pub(super) struct Rebuilt {
    state: State,
    /// The live state's encoding at the same record (debug builds).
    live: Option<Result<Vec<u8>, String>>,
    started: Option<Instant>,
    counters: Arc<Counters>,
}

impl Rebuilt {
    pub(super) fn new(live: Option<Result<Vec<u8>, String>>, counters: Arc<Counters>) -> Rebuilt {
        Rebuilt {
            state: State::default(),
            live,
            started: None,
            counters,
        }
    }
}

impl Rebuild<Record> for Rebuilt {
    fn start(&mut self, checkpoint: Option<(u64, &[u8])>) -> Result<(), String> {
        self.started = Some(Instant::now());
        self.state = match checkpoint {
            Some((seq, payload)) => checkpoint_state(seq, payload)?,
            None => State::default(),
        };
        Ok(())
    }

    fn record(&mut self, seq: u64, record: Record) -> Result<(), String> {
        self.state
            .apply(seq, &record)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn finish(self) -> Result<Vec<u8>, String> {
        let payload = journal::encode_checkpoint(&self.state)
            .map_err(|e| format!("the state does not encode: {e}"));
        if let Some(started) = self.started {
            self.counters.checkpoint_build_ns.fetch_add(
                u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        let payload = payload?;
        // Invariant 3 (replay == live application), checked where debug
        // builds have the live state's encoding.
        match self.live {
            Some(Ok(live)) if live != payload => Err(format!(
                "the state rebuilt at sequence {} ({} bytes) differs from the live state ({} bytes)",
                self.state.seq,
                payload.len(),
                live.len()
            )),
            _ => Ok(payload),
        }
    }
}
