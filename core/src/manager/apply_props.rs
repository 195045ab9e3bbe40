//! Property test of the one apply policy: random sequences of valid and
//! invalid records go through the live path (durable append, then
//! `Inner::submit`, in the order concurrent appenders hand them over, with
//! checkpoints every two records) and through replay (what `Journal::open`
//! reads, `journal::reader::read_log`, then [`super::replay`], the replay
//! `Manager::open` runs). Both reach the same state, and both stop at the
//! same record with the same error; a poisoned manager refuses every later
//! operation with that error. (`tests/manager_api.rs` checks that
//! `Manager::open` itself refuses such a journal with that error.)

use std::sync::Arc;

use proptest::prelude::*;
use uuid::Uuid;

use super::{Manager, ManagerConfig, ManagerError, replay};
use crate::journal::Recovery;
use crate::state::{
    Action, ApplyError, Case, Done, Effect, Meta, OpId, OpResult, Orphan, ProviderRecord, Record,
    State, VolumeKind,
};
use crate::storage::RealStorage;
use crate::storage::unsynced::UnsyncedStorage;

/// One generated step; interpreted against a tracker of pending operations,
/// so most records are valid and some are not (a reused op id, an outcome
/// for an unknown op, a volume created twice, a suspended destroy, a lost
/// volume that does not exist...).
#[derive(Debug, Clone)]
enum Move {
    Intent {
        action: u8,
        a: u8,
        b: u8,
        reuse: bool,
    },
    Outcome {
        pick: u8,
        result: u8,
        unknown: bool,
    },
    Effect {
        kind: u8,
        a: u8,
        result: u8,
    },
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    let one = prop_oneof![
        4 => (any::<u8>(), any::<u8>(), any::<u8>(), prop::bool::weighted(0.05))
            .prop_map(|(action, a, b, reuse)| Move::Intent { action, a, b, reuse }),
        4 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.05))
            .prop_map(|(pick, result, unknown)| Move::Outcome { pick, result, unknown }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(kind, a, result)| Move::Effect { kind, a, result }),
    ];
    prop::collection::vec(one, 1..80)
}

fn op(n: u64) -> OpId {
    Uuid::from_u128(u128::from(n))
}

/// Turns moves into records. A move whose record the state machine would
/// refuse is dropped, except the first one at or after position `inject`,
/// which is kept: so a case holds a long valid sequence and, when `inject`
/// is set, usually one invalid record at a random depth (valid records may
/// follow it, as concurrent appenders would have made them durable).
fn records(moves: &[Move], inject: Option<usize>) -> Vec<Record> {
    let data = |i: u8| format!("v{}", i % 3);
    let snap = |i: u8| format!("s{}", i % 2);
    let result = |r: u8, n: u64| match r % 6 {
        0..=3 => OpResult::Done(Done {
            location: format!("/srv/{n}"),
            details: Meta::new(),
        }),
        4 => OpResult::Failed {
            error: "refused".into(),
        },
        _ => OpResult::Suspended {
            error: "cut".into(),
            token: format!("t{n}"),
            guid: format!("g{n}"),
        },
    };
    let mut model = State::default();
    let mut injected = false;
    let mut next = 0u64;
    let mut out = Vec::new();
    for m in moves {
        next += 1;
        let at_ms = next;
        let pending: Vec<u64> = model
            .pending
            .keys()
            .map(|o| u64::try_from(o.as_u128()).unwrap())
            .collect();
        let candidate = match *m {
            Move::Intent {
                action,
                a,
                b,
                reuse,
            } => {
                let n = match pending.first() {
                    Some(p) if reuse => *p,
                    _ => next,
                };
                let action = match action % 9 {
                    0 => Action::AddProvider(ProviderRecord {
                        id: "p".into(),
                        kind: "none".into(),
                        config: crate::provider::ProviderConfig::default(),
                    }),
                    1 => Action::CreateVolume {
                        provider: "p".into(),
                        volume: data(a),
                        meta: Meta::new(),
                    },
                    2 => Action::DestroyVolume { volume: data(a) },
                    3 => Action::CreateSnapshot {
                        source: data(a),
                        snapshot: snap(b),
                        meta: Meta::new(),
                    },
                    4 => Action::ForkVolume {
                        snapshot: snap(a),
                        volume: data(b),
                        meta: Meta::new(),
                    },
                    5 => Action::ReceiveSnapshot {
                        target: data(a),
                        snapshot: snap(b),
                        meta: Meta::from([("pull-source".to_owned(), "h".to_owned())]),
                    },
                    6 => Action::AbortReceive { target: data(a) },
                    7 => Action::AdoptOrphan {
                        provider: "p".into(),
                        volume: data(a),
                        kind: VolumeKind::Data,
                        tagged_op: op(1000 + u64::from(b)),
                    },
                    _ => Action::DestroyOrphan {
                        provider: "p".into(),
                        volume: data(a),
                    },
                };
                Record::Intent {
                    op: op(n),
                    at_ms,
                    action,
                }
            }
            Move::Outcome {
                pick,
                result: r,
                unknown,
            } => {
                let n = match pending.len() {
                    0 => 5000 + next,
                    _ if unknown => 5000 + next,
                    len => pending[usize::from(pick) % len],
                };
                Record::Outcome {
                    op: op(n),
                    at_ms,
                    result: result(r, n),
                }
            }
            Move::Effect { kind, a, result: r } => {
                let effect = match kind % 5 {
                    0 => Effect::MarkLost { volume: data(a) },
                    1 => Effect::MarkFound { volume: data(a) },
                    2 => Effect::NoteOrphan(Orphan {
                        provider: "p".into(),
                        volume: data(a),
                        kind: VolumeKind::Data,
                        tagged_op: op(1000 + u64::from(a)),
                        location: "/o".into(),
                    }),
                    3 => Effect::ForgetOrphan {
                        provider: "p".into(),
                        volume: data(a),
                    },
                    _ => {
                        let n = match pending.len() {
                            0 => 7000 + next,
                            len => pending[usize::from(a) % len],
                        };
                        Effect::Resolve {
                            op: op(n),
                            result: result(r, n),
                        }
                    }
                };
                Record::Reconciled {
                    at_ms,
                    case: Case::CreateInterrupted,
                    detail: String::new(),
                    effect,
                }
            }
        };
        let mut trial = model.clone();
        if trial.apply(out.len() as u64 + 1, &candidate).is_ok() {
            model = trial;
            out.push(candidate);
        } else if !injected && inject.is_some_and(|at| out.len() >= at) {
            injected = true;
            out.push(candidate);
        }
    }
    out
}

fn config(storage: &Arc<UnsyncedStorage>) -> ManagerConfig {
    ManagerConfig {
        checkpoint_every: 2,
        checkpoint_grows_with_state: false,
        storage: Some(storage.clone()),
        ..ManagerConfig::default()
    }
}

fn rejected(e: &ManagerError) -> Option<&ApplyError> {
    match e {
        ManagerError::RecordRejected(a) => Some(a),
        _ => None,
    }
}

async fn run(records: Vec<Record>, chunks: Vec<u8>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(UnsyncedStorage::new(Arc::new(RealStorage)));
    let m = Manager::open(dir.path(), config(&storage)).await.unwrap();
    let inner = m.inner.clone();

    // The live path: each record made durable, then handed to the state in
    // the order concurrent appenders would (a chunk in reverse).
    let mut live_error = None;
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < records.len() && live_error.is_none() {
        let n = (usize::from(*sizes.next().unwrap_or(&0)) % 3 + 1).min(records.len() - at);
        let mut appended = Vec::new();
        for record in &records[at..at + n] {
            let seq = inner.journal.append(record).await.unwrap();
            appended.push((seq, record.clone()));
        }
        for (seq, record) in appended.into_iter().rev() {
            inner.submit(seq, record);
        }
        live_error = m.poisoned();
        at += n;
    }
    let live_state = m.state();
    if let Some(e) = &live_error {
        let refused = m.destroy_volume("v0").await;
        prop_assert_eq!(
            refused.as_ref().err().and_then(rejected),
            Some(e),
            "a poisoned manager refuses with its error"
        );
        prop_assert_eq!(
            live_state.seq + 1,
            e.seq,
            "the state stops before the record"
        );
    }

    // Replay: what opening reads (the chosen checkpoint, then the records
    // after it), read without the lock while the manager still holds it,
    // through the replay `Manager::open` runs. (A close and reopen here
    // would race other tests' child processes for the lock file.)
    let mut after = Vec::new();
    let read =
        crate::journal::reader::read_log::<Record>(storage.as_ref(), dir.path(), |seq, r| {
            after.push((seq, r));
        })
        .unwrap();
    let recovery = Recovery {
        checkpoint: read.checkpoint.map(|c| (c.seq, c.payload)),
        rejected_checkpoints: Vec::new(),
        records: after,
        end: read.walked.verdict.unwrap(),
        broken_file: None,
    };
    let replayed = replay(&recovery);
    m.close().await;
    match (&live_error, &replayed) {
        (None, Ok(state)) => prop_assert_eq!(state, &live_state),
        (Some(e), Err(r)) => {
            prop_assert_eq!(
                rejected(r),
                Some(e),
                "replay refuses with the same seq and reason"
            );
            // The state both stop at: every record before the refused one.
            let mut prefix = State::default();
            for (i, record) in records
                .iter()
                .enumerate()
                .take(usize::try_from(e.seq).unwrap() - 1)
            {
                prefix.apply(i as u64 + 1, record).unwrap();
            }
            prop_assert_eq!(&prefix, &live_state);
        }
        (live, replayed) => prop_assert!(
            false,
            "live {:?} but replay {:?}",
            live,
            replayed.as_ref().map(|s| s.seq)
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_live_path_and_replay_reach_the_same_state_and_the_same_error(
        moves in moves(),
        inject in prop::option::of(0..40usize),
        chunks in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(records(&moves, inject), chunks))?;
    }
}
