//! One test per row of the reconciliation table: each builds that exact
//! situation (a journal written by hand, a simulated provider arranged to
//! match), opens the manager, and checks the resolution record it journaled.

use std::collections::BTreeMap;
use std::path::Path;

use volmgr::journal::{Journal, JournalConfig};
use volmgr::manager::Manager;
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};
use volmgr::state::{
    Action, Case, DETAIL_RESUME_GUID, DETAIL_RESUME_SNAPSHOT, DETAIL_RESUME_SOURCE,
    DETAIL_RESUME_TOKEN, Done, Effect, META_PULL_SNAPSHOT, META_PULL_SOURCE, Meta, OpResult,
    Record, VolumeKind, VolumeStatus,
};

#[path = "common/sim_journal.rs"]
mod sim_journal;
use sim_journal::{T0, config, op, provider_records};

fn create_intent(n: u128, volume: &str) -> Record {
    Record::Intent {
        op: op(n),
        at_ms: T0 + u64::try_from(n).unwrap(),
        action: Action::CreateVolume {
            provider: "p".into(),
            volume: volume.into(),
            meta: Meta::new(),
        },
    }
}

fn done(n: u128, volume: &str) -> Record {
    Record::Outcome {
        op: op(n),
        at_ms: T0 + u64::try_from(n).unwrap(),
        result: OpResult::Done(Done {
            location: format!("sim://{volume}"),
            details: BTreeMap::new(),
        }),
    }
}

async fn write_journal(dir: &Path, records: &[Record]) {
    let (journal, _) = Journal::<Record>::open(dir, JournalConfig::default()).unwrap();
    for r in records {
        journal.append(r).await.unwrap();
    }
    journal.close().await;
}

/// Opens the manager (which reconciles), closes it, and returns the
/// reconciliation records it journaled.
async fn reconcile(dir: &Path, sim: &SimProvider) -> (Vec<(Case, Effect)>, volmgr::state::State) {
    let manager = Manager::open(dir, config(sim)).await.unwrap();
    let state = manager.state();
    manager.close().await;
    let (_j, recovery) = Journal::<Record>::open(dir, JournalConfig::default()).unwrap();
    let resolutions = recovery
        .records
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Reconciled { case, effect, .. } => Some((case, effect)),
            _ => None,
        })
        .collect();
    (resolutions, state)
}

fn only(resolutions: &[(Case, Effect)]) -> (Case, Effect) {
    assert_eq!(
        resolutions.len(),
        1,
        "exactly one resolution expected: {resolutions:?}"
    );
    resolutions[0].clone()
}

#[tokio::test]
async fn pending_create_present_with_its_tag_rolls_forward() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.push(create_intent(2, "v"));
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::CreateRolledForward);
    assert!(matches!(effect, Effect::Resolve { op: o, result: OpResult::Done(_) } if o == op(2)));
    assert_eq!(state.volumes["v"].status, VolumeStatus::Live);
    assert!(state.pending.is_empty());
}

#[tokio::test]
async fn pending_create_absent_fails_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.push(create_intent(2, "v"));
    write_journal(dir.path(), &records).await;

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::CreateInterrupted);
    assert!(
        matches!(effect, Effect::Resolve { result: OpResult::Failed { ref error }, .. } if error == "interrupted")
    );
    assert!(!state.volumes.contains_key("v"));
}

#[tokio::test]
async fn pending_create_half_made_is_finished_then_done() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.push(create_intent(2, "v"));
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, false);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::CreateFinished);
    assert!(matches!(
        effect,
        Effect::Resolve {
            result: OpResult::Done(_),
            ..
        }
    ));
    assert!(state.volumes.contains_key("v"));
    let found = sim.volume_ids();
    assert_eq!(found, vec!["v".to_string()]);
}

#[tokio::test]
async fn pending_destroy_of_present_volume_destroys_it_then_done() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::DestroyVolume { volume: "v".into() },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::DestroyFinished);
    assert!(matches!(effect, Effect::Resolve { op: o, result: OpResult::Done(_) } if o == op(3)));
    assert!(sim.volume_ids().is_empty(), "the volume was destroyed");
    assert!(!state.volumes.contains_key("v"));
}

/// Story: a destroy killed mid-way is retried at open; when the provider
/// refuses it again (on ZFS: busy, a user hold), recovery journaled the
/// Failed resolution under `case=destroy-finished`, so `volmgr journal
/// dump` told the operator the destroy had finished above a volume that
/// stayed. The record now says `destroy-failed`; the volume stays live.
#[tokio::test]
async fn pending_destroy_the_provider_refuses_at_open_is_journaled_destroy_failed_and_keeps_the_volume()
 {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::DestroyVolume { volume: "v".into() },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);
    sim.set_fault(Some(SimFault {
        call: SimCall::Destroy,
        when: When::Before,
        nth: 1,
    }));

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::DestroyFailed);
    assert_eq!(case.name(), "destroy-failed");
    assert!(
        matches!(&effect, Effect::Resolve { op: o, result: OpResult::Failed { error } }
            if *o == op(3) && error.contains("destroy during recovery failed")),
        "{effect:?}"
    );
    assert_eq!(sim.volume_ids(), vec!["v".to_string()], "nothing destroyed");
    assert_eq!(state.volumes["v"].status, VolumeStatus::Live);
    assert!(state.pending.is_empty());
}

#[tokio::test]
async fn pending_destroy_of_absent_volume_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::DestroyVolume { volume: "v".into() },
        },
    ]);
    write_journal(dir.path(), &records).await;

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, _) = only(&res);
    assert_eq!(case, Case::DestroyAlreadyGone);
    assert!(!state.volumes.contains_key("v"));
}

#[tokio::test]
async fn pending_snapshot_present_and_complete_rolls_forward() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::CreateSnapshot {
                source: "v".into(),
                snapshot: "s".into(),
                meta: Meta::new(),
            },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);
    sim.plant_orphan("s", op(3), VolumeKind::Snapshot, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, _) = only(&res);
    assert_eq!(case, Case::DerivedRolledForward);
    assert_eq!(state.volumes["s"].kind, VolumeKind::Snapshot);
    assert_eq!(state.volumes["s"].parent.as_deref(), Some("v"));
}

#[tokio::test]
async fn pending_fork_half_made_is_undone_and_failed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::CreateSnapshot {
                source: "v".into(),
                snapshot: "s".into(),
                meta: Meta::new(),
            },
        },
        Record::Outcome {
            op: op(3),
            at_ms: T0 + 3,
            result: OpResult::Done(Done::default()),
        },
        Record::Intent {
            op: op(4),
            at_ms: T0 + 4,
            action: Action::ForkVolume {
                snapshot: "s".into(),
                volume: "f".into(),
                meta: Meta::new(),
            },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);
    sim.plant_orphan("s", op(3), VolumeKind::Snapshot, true);
    sim.plant_orphan("f", op(4), VolumeKind::Data, false);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::DerivedUndone);
    assert!(matches!(
        effect,
        Effect::Resolve {
            result: OpResult::Failed { .. },
            ..
        }
    ));
    assert!(
        !sim.volume_ids().contains(&"f".to_string()),
        "partial fork removed"
    );
    assert!(!state.volumes.contains_key("f"));
}

#[tokio::test]
async fn pending_receive_absent_is_undone_and_partial_state_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::ReceiveSnapshot {
                target: "v".into(),
                snapshot: "r".into(),
                meta: Meta::new(),
            },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);

    let (res, _) = reconcile(dir.path(), &sim).await;
    let (case, _) = only(&res);
    assert_eq!(case, Case::DerivedUndone);
    assert!(sim.partial_ops().is_empty());
}

fn receive_intent(n: u128, target: &str, snapshot: &str, meta: Meta) -> Record {
    Record::Intent {
        op: op(n),
        at_ms: T0 + u64::try_from(n).unwrap(),
        action: Action::ReceiveSnapshot {
            target: target.into(),
            snapshot: snapshot.into(),
            meta,
        },
    }
}

#[tokio::test]
async fn pending_receive_whose_target_holds_a_partial_receive_is_kept_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    let meta = Meta::from([
        (
            META_PULL_SOURCE.to_owned(),
            "http://10.0.0.2:1113".to_owned(),
        ),
        (META_PULL_SNAPSHOT.to_owned(), "s1".to_owned()),
    ]);
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        receive_intent(3, "v", "r", meta),
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);
    sim.plant_partial("v", op(3), "777", "1-abc-def");

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::ReceiveSuspended);
    assert!(matches!(
        effect,
        Effect::Resolve {
            result: OpResult::Suspended { .. },
            ..
        }
    ));
    assert_eq!(sim.partial("v").unwrap().token, "1-abc-def", "kept");
    let details = &state.volumes["v"].details;
    assert_eq!(details[DETAIL_RESUME_TOKEN], "1-abc-def");
    assert_eq!(details[DETAIL_RESUME_GUID], "777");
    assert_eq!(details[DETAIL_RESUME_SOURCE], "http://10.0.0.2:1113");
    assert_eq!(details[DETAIL_RESUME_SNAPSHOT], "s1");
    assert!(!state.volumes.contains_key("r"));
    assert!(state.pending.is_empty());
}

#[tokio::test]
async fn pending_abort_receive_is_done_again_and_clears_the_resume_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        receive_intent(3, "v", "r", Meta::new()),
        Record::Outcome {
            op: op(3),
            at_ms: T0 + 3,
            result: OpResult::Suspended {
                error: "broken transfer".into(),
                token: "1-abc-def".into(),
                guid: "777".into(),
            },
        },
        Record::Intent {
            op: op(4),
            at_ms: T0 + 4,
            action: Action::AbortReceive { target: "v".into() },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);
    sim.plant_partial("v", op(3), "777", "1-abc-def");

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::AbortReceiveFinished);
    assert!(matches!(
        effect,
        Effect::Resolve {
            result: OpResult::Done(_),
            ..
        }
    ));
    assert!(sim.partial("v").is_none(), "discarded");
    assert!(!state.volumes["v"].details.contains_key(DETAIL_RESUME_TOKEN));
}

#[tokio::test]
async fn live_volume_missing_from_provider_is_marked_lost_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([create_intent(2, "v"), done(2, "v")]);
    write_journal(dir.path(), &records).await;

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::VolumeLost);
    assert_eq!(effect, Effect::MarkLost { volume: "v".into() });
    assert_eq!(
        state.volumes["v"].status,
        VolumeStatus::Lost,
        "kept, and reported"
    );

    // When it shows up again, it is found.
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);
    let (res, state) = reconcile(dir.path(), &sim).await;
    assert_eq!(res.last().unwrap().0, Case::LostVolumeFound);
    assert_eq!(state.volumes["v"].status, VolumeStatus::Live);
}

#[tokio::test]
async fn tagged_item_without_record_is_reported_as_orphan_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    write_journal(dir.path(), &provider_records()).await;
    sim.plant_orphan("o", op(9), VolumeKind::Data, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::OrphanReported);
    assert!(matches!(effect, Effect::NoteOrphan(ref o) if o.volume == "o"));
    assert_eq!(sim.volume_ids(), vec!["o".to_string()], "orphan untouched");
    assert!(state.orphans.contains_key("p/o"));
    assert!(!state.volumes.contains_key("o"));

    // Reported once: a second open journals nothing new for it.
    let (res, _) = reconcile(dir.path(), &sim).await;
    assert_eq!(res.len(), 1, "no duplicate orphan record: {res:?}");

    // Explicit adopt turns it into a volume.
    let manager = Manager::open(dir.path(), config(&sim)).await.unwrap();
    let v = manager.adopt_orphan("p", "o").await.unwrap();
    assert_eq!(v.id, "o");
    assert!(manager.orphans().is_empty());
    manager.close().await;
}

#[tokio::test]
async fn orphan_is_destroyed_only_on_explicit_command() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    write_journal(dir.path(), &provider_records()).await;
    sim.plant_orphan("o", op(9), VolumeKind::Data, true);
    let manager = Manager::open(dir.path(), config(&sim)).await.unwrap();
    assert_eq!(sim.volume_ids(), vec!["o".to_string()]);
    manager.destroy_orphan("p", "o").await.unwrap();
    assert!(sim.volume_ids().is_empty());
    assert!(manager.orphans().is_empty());
    manager.close().await;
}

#[tokio::test]
async fn untagged_item_is_foreign_never_touched_nor_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    write_journal(dir.path(), &provider_records()).await;
    sim.plant_foreign("someone-elses");

    let manager = Manager::open(dir.path(), config(&sim)).await.unwrap();
    let report = manager.reconcile_report();
    assert_eq!(report.foreign.len(), 1);
    assert!(report.resolutions.is_empty());
    manager.close().await;
    assert_eq!(sim.foreign(), vec!["someone-elses".to_string()]);
    let (res, _) = reconcile(dir.path(), &sim).await;
    assert!(res.is_empty(), "foreign items are never journaled: {res:?}");
}

#[tokio::test]
async fn pending_add_provider_fails_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let records = provider_records();
    write_journal(dir.path(), &records[..1]).await;

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, _) = only(&res);
    assert_eq!(case, Case::ProviderAddInterrupted);
    assert!(state.providers.is_empty());
}

#[tokio::test]
async fn pending_adopt_fails_as_interrupted_and_the_orphan_stays_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        Record::Reconciled {
            at_ms: T0 + 2,
            case: Case::OrphanReported,
            detail: "planted".into(),
            effect: Effect::NoteOrphan(volmgr::state::Orphan {
                provider: "p".into(),
                volume: "o".into(),
                kind: VolumeKind::Data,
                tagged_op: op(9),
                location: "sim://o".into(),
            }),
        },
        Record::Intent {
            op: op(3),
            at_ms: T0 + 3,
            action: Action::AdoptOrphan {
                provider: "p".into(),
                volume: "o".into(),
                kind: VolumeKind::Data,
                tagged_op: op(9),
            },
        },
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("o", op(9), VolumeKind::Data, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    // The first Reconciled record is the one this test wrote.
    let (case, effect) = only(&res[1..]);
    assert_eq!(case, Case::AdoptInterrupted);
    assert!(
        matches!(effect, Effect::Resolve { op: o, result: OpResult::Failed { .. } } if o == op(3))
    );
    assert!(
        state.orphans.contains_key("p/o"),
        "still an orphan, still reported"
    );
    assert!(!state.volumes.contains_key("o"));
    assert_eq!(sim.volume_ids(), vec!["o".to_string()], "untouched");
}

#[tokio::test]
async fn reported_orphan_that_disappeared_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    write_journal(dir.path(), &provider_records()).await;
    sim.plant_orphan("o", op(9), VolumeKind::Data, true);
    let (res, _) = reconcile(dir.path(), &sim).await;
    assert_eq!(only(&res).0, Case::OrphanReported);

    sim.remove_behind_back("o");
    let (res, state) = reconcile(dir.path(), &sim).await;
    assert_eq!(res.len(), 2, "{res:?}");
    assert_eq!(res[1].0, Case::OrphanGone);
    assert!(state.orphans.is_empty());
}

fn set_attributes_intent(n: u128, volume: &str, capacity_bytes: Option<u64>) -> Record {
    Record::Intent {
        op: op(n),
        at_ms: T0 + u64::try_from(n).unwrap(),
        action: Action::SetAttributes {
            volume: volume.into(),
            capacity_bytes,
            options: BTreeMap::new(),
        },
    }
}

#[tokio::test]
async fn pending_set_attributes_on_a_present_volume_is_applied_again_and_done() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        set_attributes_intent(3, "v", None),
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::AttributesReapplied);
    assert!(matches!(effect, Effect::Resolve { op: o, result: OpResult::Done(_) } if o == op(3)));
    assert!(state.pending.is_empty());
}

#[tokio::test]
async fn pending_set_attributes_the_provider_cannot_apply_fails_and_records_no_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        set_attributes_intent(3, "v", Some(1 << 20)),
    ]);
    write_journal(dir.path(), &records).await;
    sim.plant_orphan("v", op(2), VolumeKind::Data, true);

    let (res, state) = reconcile(dir.path(), &sim).await;
    let (case, effect) = only(&res);
    assert_eq!(case, Case::AttributesReapplied);
    assert!(matches!(
        effect,
        Effect::Resolve {
            result: OpResult::Failed { .. },
            ..
        }
    ));
    assert!(!state.volumes["v"].details.contains_key("capacity-bytes"));
}

#[tokio::test]
async fn pending_set_attributes_of_a_vanished_volume_is_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let mut records = provider_records();
    records.extend([
        create_intent(2, "v"),
        done(2, "v"),
        set_attributes_intent(3, "v", Some(1 << 20)),
    ]);
    write_journal(dir.path(), &records).await;

    let (res, state) = reconcile(dir.path(), &sim).await;
    let cases: Vec<Case> = res.iter().map(|(c, _)| *c).collect();
    assert!(cases.contains(&Case::AttributesInterrupted), "{cases:?}");
    assert!(state.pending.is_empty());
    assert!(!state.volumes["v"].details.contains_key("capacity-bytes"));
}
