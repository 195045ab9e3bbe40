//! Unit tests of the state machine.

use super::*;
use uuid::Uuid;

fn op(n: u128) -> OpId {
    Uuid::from_u128(n)
}

/// A state with data volume `v` and a pending receive (op 3) into it.
fn with_pending_receive(meta: Meta) -> State {
    let mut s = State::default();
    let records = [
        Record::Intent {
            op: op(1),
            at_ms: 1,
            action: Action::AddProvider(ProviderRecord {
                id: "p".into(),
                kind: "sim".into(),
                config: BTreeMap::new(),
            }),
        },
        Record::Outcome {
            op: op(1),
            at_ms: 1,
            result: OpResult::Done(Done::default()),
        },
        Record::Intent {
            op: op(2),
            at_ms: 2,
            action: Action::CreateVolume {
                provider: "p".into(),
                volume: "v".into(),
                meta: Meta::new(),
            },
        },
        Record::Outcome {
            op: op(2),
            at_ms: 2,
            result: OpResult::Done(Done::default()),
        },
        Record::Intent {
            op: op(3),
            at_ms: 3,
            action: Action::ReceiveSnapshot {
                target: "v".into(),
                snapshot: "r".into(),
                meta,
            },
        },
    ];
    for (i, r) in records.iter().enumerate() {
        s.apply(i as u64 + 1, r).unwrap();
    }
    s
}

fn suspended(n: u128) -> Record {
    Record::Outcome {
        op: op(n),
        at_ms: 9,
        result: OpResult::Suspended {
            error: "cut".into(),
            token: "1-ab".into(),
            guid: "77".into(),
        },
    }
}

#[test]
fn a_suspended_receive_records_its_token_on_the_target_and_the_next_outcome_clears_it() {
    let meta = Meta::from([(META_PULL_SOURCE.to_owned(), "http://h:1".to_owned())]);
    let mut s = with_pending_receive(meta);
    s.apply(6, &suspended(3)).unwrap();
    let d = &s.volumes["v"].details;
    assert_eq!(d[DETAIL_RESUME_TOKEN], "1-ab");
    assert_eq!(d[DETAIL_RESUME_GUID], "77");
    assert_eq!(d[DETAIL_RESUME_SOURCE], "http://h:1");
    assert!(!d.contains_key(DETAIL_RESUME_SNAPSHOT));
    assert!(s.pending.is_empty() && !s.volumes.contains_key("r"));

    // A later receive into it that fails: no partial state remains.
    s.apply(
        7,
        &Record::Intent {
            op: op(4),
            at_ms: 10,
            action: Action::ReceiveSnapshot {
                target: "v".into(),
                snapshot: "r2".into(),
                meta: Meta::new(),
            },
        },
    )
    .unwrap();
    s.apply(
        8,
        &Record::Outcome {
            op: op(4),
            at_ms: 11,
            result: OpResult::Failed {
                error: "refused".into(),
            },
        },
    )
    .unwrap();
    assert!(s.volumes["v"].details.is_empty());
}

#[test]
fn a_failed_abort_keeps_the_token_and_a_done_abort_clears_it() {
    let mut s = with_pending_receive(Meta::new());
    s.apply(6, &suspended(3)).unwrap();
    let abort = |n: u128| Record::Intent {
        op: op(n),
        at_ms: 12,
        action: Action::AbortReceive { target: "v".into() },
    };
    s.apply(7, &abort(5)).unwrap();
    let failed = Record::Outcome {
        op: op(5),
        at_ms: 13,
        result: OpResult::Failed {
            error: "busy".into(),
        },
    };
    s.apply(8, &failed).unwrap();
    assert_eq!(s.volumes["v"].details[DETAIL_RESUME_TOKEN], "1-ab");
    s.apply(9, &abort(6)).unwrap();
    let done = Record::Outcome {
        op: op(6),
        at_ms: 14,
        result: OpResult::Done(Done::default()),
    };
    s.apply(10, &done).unwrap();
    assert!(s.volumes["v"].details.is_empty());
}

#[test]
fn a_done_set_attributes_records_capacity_and_options_and_a_failed_one_nothing() {
    let mut s = with_pending_receive(Meta::new());
    let set = |n: u128| Record::Intent {
        op: op(n),
        at_ms: 30,
        action: Action::SetAttributes {
            volume: "v".into(),
            capacity_bytes: Some(4096),
            options: BTreeMap::from([("compression".into(), "lz4".into())]),
        },
    };
    s.apply(6, &set(8)).unwrap();
    let failed = Record::Outcome {
        op: op(8),
        at_ms: 31,
        result: OpResult::Failed {
            error: "refused".into(),
        },
    };
    s.apply(7, &failed).unwrap();
    assert!(!s.volumes["v"].details.contains_key(DETAIL_CAPACITY));
    s.apply(8, &set(9)).unwrap();
    let done = Record::Outcome {
        op: op(9),
        at_ms: 32,
        result: OpResult::Done(Done::default()),
    };
    s.apply(9, &done).unwrap();
    let d = &s.volumes["v"].details;
    assert_eq!(d[DETAIL_CAPACITY], "4096");
    assert_eq!(d["option.compression"], "lz4");
}

#[test]
fn a_suspended_outcome_of_anything_but_a_receive_is_refused() {
    let mut s = with_pending_receive(Meta::new());
    s.apply(
        6,
        &Record::Intent {
            op: op(7),
            at_ms: 20,
            action: Action::DestroyVolume { volume: "v".into() },
        },
    )
    .unwrap();
    let err = s.apply(7, &suspended(7)).unwrap_err();
    assert!(err.reason.contains("suspended outcome"), "{err}");
}

#[test]
fn a_refused_record_leaves_the_state_exactly_as_it_was() {
    let mut s = with_pending_receive(Meta::new());
    s.apply(6, &suspended(3)).unwrap();
    // An orphan, then an adoption of it whose outcome would create a
    // volume that already exists ("v"): refused, the orphan stays.
    let orphan = Orphan {
        provider: "p".into(),
        volume: "v".into(),
        kind: VolumeKind::Data,
        tagged_op: op(40),
        location: "/x".into(),
    };
    let note = Record::Reconciled {
        at_ms: 30,
        case: Case::OrphanReported,
        detail: String::new(),
        effect: Effect::NoteOrphan(orphan),
    };
    s.apply(7, &note).unwrap();
    let adopt = Record::Intent {
        op: op(41),
        at_ms: 31,
        action: Action::AdoptOrphan {
            provider: "p".into(),
            volume: "v".into(),
            kind: VolumeKind::Data,
            tagged_op: op(40),
        },
    };
    s.apply(8, &adopt).unwrap();
    let before = s.clone();
    let done = Record::Outcome {
        op: op(41),
        at_ms: 32,
        result: OpResult::Done(Done::default()),
    };
    let err = s.apply(9, &done).unwrap_err();
    assert!(err.reason.contains("created twice"), "{err}");
    assert_eq!(s, before, "nothing changed: pending, orphan and seq kept");
    // A suspended outcome of a receive-abort: refused before its target's
    // resume details are touched.
    s.apply(
        9,
        &Record::Intent {
            op: op(42),
            at_ms: 33,
            action: Action::AbortReceive { target: "v".into() },
        },
    )
    .unwrap();
    let before = s.clone();
    let err = s.apply(10, &suspended(42)).unwrap_err();
    assert!(err.reason.contains("suspended outcome"), "{err}");
    assert_eq!(s, before);
    assert_eq!(s.volumes["v"].details[DETAIL_RESUME_TOKEN], "1-ab");
}

/// Dependents by the scan the index replaced: every volume whose parent is
/// `id`, sorted.
fn dependents_by_scan(s: &State, id: &str) -> Vec<String> {
    s.volumes
        .values()
        .filter(|v| v.parent.as_deref() == Some(id))
        .map(|v| v.id.clone())
        .collect()
}

#[track_caller]
fn assert_dependents_as_a_scan(s: &State) {
    for id in s.volumes.keys().map(String::as_str).chain(["absent"]) {
        assert_eq!(
            s.dependents(id),
            dependents_by_scan(s, id),
            "dependents of {id}"
        );
    }
}

#[test]
fn dependents_kept_by_apply_always_equal_a_scan_of_every_volume_and_survive_a_checkpoint() {
    let mut s = State::default();
    let mut seq = 0u64;
    let mut n = 0u128;
    let mut run = |s: &mut State, action: Action, done: bool| {
        n += 1;
        seq += 1;
        s.apply(
            seq,
            &Record::Intent {
                op: op(n),
                at_ms: 1,
                action,
            },
        )
        .unwrap();
        seq += 1;
        let result = if done {
            OpResult::Done(Done::default())
        } else {
            OpResult::Failed { error: "no".into() }
        };
        s.apply(
            seq,
            &Record::Outcome {
                op: op(n),
                at_ms: 1,
                result,
            },
        )
        .unwrap();
    };
    run(
        &mut s,
        Action::AddProvider(ProviderRecord {
            id: "p".into(),
            kind: "sim".into(),
            config: BTreeMap::new(),
        }),
        true,
    );
    let create = |v: &str| Action::CreateVolume {
        provider: "p".into(),
        volume: v.into(),
        meta: Meta::new(),
    };
    let snapshot = |of: &str, snap: &str| Action::CreateSnapshot {
        source: of.into(),
        snapshot: snap.into(),
        meta: Meta::new(),
    };
    let fork = |snap: &str, v: &str| Action::ForkVolume {
        snapshot: snap.into(),
        volume: v.into(),
        meta: Meta::new(),
    };
    let destroy = |v: &str| Action::DestroyVolume { volume: v.into() };
    let steps = [
        (create("a"), true),
        (create("b"), true),
        (snapshot("a", "a1"), true),
        (snapshot("a", "a2"), true),
        (snapshot("b", "b1"), true),
        (snapshot("a", "a3"), false),
        (fork("a1", "f1"), true),
        (fork("a1", "f2"), true),
        (snapshot("f1", "f1s"), true),
        (destroy("f2"), true),
        (destroy("a2"), true),
        (destroy("f1s"), false),
        (destroy("f1s"), true),
        (fork("a1", "f2"), true),
        (destroy("b1"), true),
    ];
    for (action, done) in steps {
        run(&mut s, action, done);
        assert_dependents_as_a_scan(&s);
    }
    assert_eq!(s.dependents("a"), ["a1"]);
    assert_eq!(s.dependents("a1"), ["f1", "f2"]);
    assert!(s.dependents("b").is_empty());
    // A checkpoint holds no index; decoding rebuilds the same one.
    let bytes = crate::journal::encode_checkpoint(&s).unwrap();
    let decoded: State = crate::journal::decode_checkpoint(&bytes).unwrap();
    assert_eq!(decoded, s, "the index rebuilt from the volumes");
    assert_dependents_as_a_scan(&decoded);
}
