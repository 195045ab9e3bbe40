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

use crate::journal::{self, Recovery};
use crate::state::{ApplyError, Record, State};

use std::time::Instant;

use super::{ManagerError, OpenPhases};

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
