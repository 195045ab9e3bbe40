//! Quick end-to-end checks of the journal API: append, reopen, replay, lock,
//! poison, and many records appended in runs that fill the batch limit.

mod journal_support;

use std::sync::Arc;

use journal_support::Rec;
use volmgr::journal::{
    Journal, JournalConfig, JournalError, LogEnd, Rebuild, decode_checkpoint, encode_checkpoint,
    encode_record, format,
};
use volmgr::storage::RealStorage;
use volmgr::storage::fault::{FaultKind, FaultOp, FaultPlan, FaultyStorage};

fn small() -> JournalConfig {
    journal_support::config(4096)
}

#[tokio::test]
async fn appended_records_replay_in_order_across_rotations_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert!(recovery.records.is_empty());
    for n in 1..=300u64 {
        let seq = journal
            .append(&Rec::new(n, "x".repeat((n % 50) as usize)))
            .await
            .unwrap();
        assert_eq!(seq, n);
        if n % 100 == 0 {
            journal
                .checkpoint(n, n.to_le_bytes().to_vec())
                .await
                .unwrap();
        }
    }
    journal.close().await;
    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.end, LogEnd::Clean);
    let (ckpt_seq, payload) = recovery.checkpoint.clone().unwrap();
    assert_eq!(ckpt_seq, 300);
    assert_eq!(payload, 300u64.to_le_bytes().to_vec());
    assert!(recovery.records.is_empty());
    assert_eq!(
        journal.append(&Rec::new(301, String::new())).await.unwrap(),
        301
    );
    journal.close().await;
    let (_journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.records.len(), 1);
    assert_eq!(recovery.records[0].0, 301);
}

#[tokio::test]
async fn second_open_of_a_state_dir_fails_naming_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, _) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    let err = Journal::<Rec>::open(dir.path(), small()).unwrap_err();
    match &err {
        JournalError::Locked { lock_file, .. } => assert_eq!(lock_file, &dir.path().join("LOCK")),
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("LOCK"), "{err}");
}

#[tokio::test]
async fn failed_sync_poisons_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new(Arc::new(RealStorage));
    let (journal, _) =
        Journal::<Rec>::open_with_storage(Arc::new(storage.clone()), dir.path(), small()).unwrap();
    journal.append(&Rec::new(1, "a")).await.unwrap();
    storage.set_plan(Some(FaultPlan {
        op: FaultOp::SyncData,
        nth: 1,
        sticky: false,
        kind: FaultKind::Io,
    }));
    let err = journal.append(&Rec::new(2, "b")).await.unwrap_err();
    assert!(matches!(err, JournalError::Poisoned { .. }), "{err}");
    // The fault fired once; the journal must refuse on its own from now on.
    let err = journal.append(&Rec::new(3, "c")).await.unwrap_err();
    assert!(matches!(err, JournalError::Poisoned { .. }), "{err}");
    assert_eq!(storage.fired(), 1);
    assert_eq!(
        storage.calls(FaultOp::SyncData),
        1,
        "no sync attempted after poisoning"
    );
    journal.close().await;
    let (_j, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.records[0].1.n, 1);
}

/// Segments of 16 KiB, commits of at most 2 KiB.
fn narrow() -> JournalConfig {
    JournalConfig {
        segment_size: 16 << 10,
        max_batch_bytes: 2 << 10,
        ..JournalConfig::default()
    }
}

fn frame_bytes(records: &[Rec]) -> usize {
    records
        .iter()
        .map(|r| format::frame_len(encode_record(r).unwrap().len()))
        .sum()
}

#[tokio::test]
async fn append_in_batches_commits_contiguous_runs_within_the_batch_limit_one_sync_each() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::<Rec>::open(dir.path(), narrow()).unwrap();
    assert_eq!(journal.batch_limit(), 2 << 10);
    let records: Vec<Rec> = (1..=400u64)
        .map(|n| Rec::new(n, "y".repeat((n * 37 % 300) as usize)))
        .collect();
    let mut runs: Vec<(u64, Vec<Rec>)> = Vec::new();
    let handed = journal
        .append_in_batches(records.clone(), |first, run| {
            runs.push((first, run));
            true
        })
        .await
        .unwrap();
    assert_eq!(handed, records.len());
    assert_eq!(journal.sync_count(), runs.len() as u64, "one sync per run");
    let mut next = 1;
    for (first, run) in &runs {
        assert_eq!(*first, next, "runs are contiguous");
        assert!(!run.is_empty());
        assert!(
            frame_bytes(run) <= journal.batch_limit(),
            "a run fits the batch limit"
        );
        next += run.len() as u64;
    }
    // Greedy: a run and the next one's first record would not fit together.
    for pair in runs.windows(2) {
        let mut joined = pair[0].1.clone();
        joined.push(pair[1].1[0].clone());
        assert!(
            frame_bytes(&joined) > journal.batch_limit(),
            "runs are filled"
        );
    }
    let handed_over: Vec<Rec> = runs.into_iter().flat_map(|(_, run)| run).collect();
    assert_eq!(handed_over, records, "handed over in order");
    journal.close().await;
    let (_journal, recovery) = Journal::<Rec>::open(dir.path(), narrow()).unwrap();
    let replayed: Vec<Rec> = recovery.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(replayed, records);
}

#[tokio::test]
async fn append_in_batches_stops_after_the_run_its_caller_refuses_to_go_past() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::<Rec>::open(dir.path(), narrow()).unwrap();
    let records: Vec<Rec> = (1..=200u64).map(|n| Rec::new(n, "z".repeat(100))).collect();
    let mut first_run = Vec::new();
    let handed = journal
        .append_in_batches(records, |_, run| {
            first_run = run;
            false
        })
        .await
        .unwrap();
    assert!(
        handed > 1 && handed < 200,
        "one run of several records: {handed}"
    );
    assert_eq!(first_run.len(), handed);
    journal.close().await;
    let (_journal, recovery) = Journal::<Rec>::open(dir.path(), narrow()).unwrap();
    let replayed: Vec<Rec> = recovery.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(replayed, first_run, "nothing after the refused run");
}

#[tokio::test]
async fn append_in_batches_refuses_a_record_larger_than_a_segment_after_the_runs_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::<Rec>::open(dir.path(), narrow()).unwrap();
    let mut records: Vec<Rec> = (1..=100u64).map(|n| Rec::new(n, "w".repeat(100))).collect();
    records.push(Rec::new(101, "h".repeat(20 << 10)));
    records.push(Rec::new(102, "after"));
    let mut durable = Vec::new();
    let result = journal
        .append_in_batches(records.clone(), |_, run| {
            durable.extend(run);
            true
        })
        .await;
    assert!(
        matches!(result, Err(JournalError::RecordTooLarge { .. })),
        "{result:?}"
    );
    assert!(
        !durable.is_empty(),
        "the full runs before it were committed"
    );
    assert_eq!(durable[..], records[..durable.len()]);
    journal.close().await;
    let (_journal, recovery) = Journal::<Rec>::open(dir.path(), narrow()).unwrap();
    let replayed: Vec<Rec> = recovery.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(replayed, durable, "exactly what was handed over is durable");
}

/// The bytes `encode_checkpoint` writes for `n` (at least 65,536) zeros
/// of `u64`: the length as a varint (`0xfc`, then a `u32`), then one byte
/// an element.
fn zeros(n: u32) -> Vec<u8> {
    assert!(n >= 1 << 16);
    let mut payload = vec![0xfc];
    payload.extend_from_slice(&n.to_le_bytes());
    payload.resize(5 + n as usize, 0);
    payload
}

/// bincode's decode limit counts each integer at its in-memory width and
/// encoding checks no limit: 34 million zeros of `u64` encode in 34 MB (a
/// byte each, far under the 256 MiB checkpoint limit) but decoding them
/// claims 8 bytes each, 272 MB. Stored, such a checkpoint would make the
/// journal unopenable for its owner. `checkpoint_of` decodes first:
/// refused with a typed error, nothing stored; one that decodes is stored.
#[tokio::test]
async fn a_checkpoint_that_would_not_decode_on_open_is_refused_and_not_stored() {
    type Payload = Vec<u64>;
    assert_eq!(
        encode_checkpoint(&vec![0u64; 70_000]).unwrap(),
        zeros(70_000),
        "the hand-made bytes are what encoding writes"
    );
    let refused = zeros(34_000_000);
    assert!((refused.len() as u64) < format::MAX_CHECKPOINT_PAYLOAD_LEN);
    assert!(decode_checkpoint::<Payload>(&refused).is_err());

    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    journal.append(&Rec::new(1, String::new())).await.unwrap();
    journal.append(&Rec::new(2, String::new())).await.unwrap();
    let err = journal
        .checkpoint_of::<Payload>(1, refused)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::CheckpointUndecodable {
                seq: 1,
                len: 34_000_005,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("would not decode on open"),
        "{err}"
    );
    journal.close().await;
    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.checkpoint, None, "nothing stored");
    assert_eq!(recovery.records.len(), 2);

    let accepted = zeros(70_000);
    journal
        .checkpoint_of::<Payload>(2, accepted.clone())
        .await
        .unwrap();
    journal.close().await;
    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.checkpoint, Some((2, accepted)));
    journal.close().await;
}

/// A fold for `checkpoint_rebuilt`: the checkpoint holds the sum of the
/// records' `n` and how many were folded. It refuses record `refuse`.
struct Sum {
    sum: u64,
    count: u64,
    last: u64,
    refuse: u64,
}

impl Rebuild<Rec> for Sum {
    fn start(&mut self, checkpoint: Option<(u64, &[u8])>) -> Result<(), String> {
        if let Some((seq, payload)) = checkpoint {
            (self.sum, self.count) = decode_checkpoint(payload)?;
            self.last = seq;
        }
        Ok(())
    }
    fn record(&mut self, seq: u64, record: Rec) -> Result<(), String> {
        assert_eq!(seq, self.last + 1, "records in order, each once");
        if seq == self.refuse {
            return Err(format!("record {seq} refused"));
        }
        self.last = seq;
        self.sum += record.n;
        self.count += 1;
        Ok(())
    }
    fn finish(self) -> Result<Vec<u8>, String> {
        encode_checkpoint(&(self.sum, self.count))
    }
}

/// `checkpoint_rebuilt` reads what an open would (the newest checkpoint,
/// then the records after it) up to a durable record of a live journal,
/// across rotations, while other appends go on: each checkpoint holds the
/// fold of exactly the records up to its sequence number, and an open
/// starts from the last. A fold that refuses a record stores nothing
/// (`JournalError::Rebuild`, naming the record), and a record not yet
/// durable is refused before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_checkpoint_folds_exactly_the_records_up_to_its_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    let journal = Arc::new(journal);
    let fold = |refuse| Sum {
        sum: 0,
        count: 0,
        last: 0,
        refuse,
    };
    for n in 1..=400u64 {
        let appender = {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(&Rec::new(n, "y".repeat(40))).await })
        };
        if n % 50 == 0 && n < 400 {
            let durable = journal.durable_seq();
            journal
                .checkpoint_rebuilt::<(u64, u64), _>(durable, fold(0))
                .await
                .unwrap();
        }
        appender.await.unwrap().unwrap();
    }
    let err = journal
        .checkpoint_rebuilt::<(u64, u64), _>(400, fold(390))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JournalError::Rebuild { seq: 400, reason } if reason.contains("record 390")),
        "{err}"
    );
    let err = journal
        .checkpoint_rebuilt::<(u64, u64), _>(401, fold(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JournalError::CheckpointAhead { seq: 401, .. }),
        "{err}"
    );
    let checkpoint = journal.checkpoint_seq();
    assert!((349..=350).contains(&checkpoint), "{checkpoint}");
    Arc::into_inner(journal).unwrap().close().await;

    let (journal, recovery) = Journal::<Rec>::open(dir.path(), small()).unwrap();
    let (seq, payload) = recovery.checkpoint.expect("the last rebuilt checkpoint");
    assert_eq!(seq, checkpoint, "the refused one stored nothing");
    let (sum, count): (u64, u64) = decode_checkpoint(&payload).unwrap();
    assert_eq!(
        (sum, count),
        (seq * (seq + 1) / 2, seq),
        "records 1..={seq}, each once"
    );
    assert_eq!(recovery.records.len() as u64, 400 - seq);
    journal.close().await;
}
