//! Property tests: random record sequences round-trip through the journal.
//!
//! Each case picks a segment size (mostly small, to force rotations), then runs
//! random operations against a journal and a model (sequence number → record):
//! single appends and multi-record `append_all`s with sizes from empty to the
//! exact limit (and one past it, which must be refused), bursts of concurrent
//! appenders (tokio tasks) that the writer groups into shared syncs,
//! checkpoints, and close/reopen. After every reopen the recovered checkpoint
//! and records must equal the model; at the end, replaying the same bytes twice
//! (read-only walks, and two opens) must yield identical records.
//!
//! `damage` (`tests/journal_props/damage.rs`): randomly damaged journals, where
//! `volmgr journal verify` must reach the verdict `Journal::open` acts on.
//!
//! The tests run one at a time (`journal_support::serial`): the damage test
//! spawns processes.

#[path = "journal_props/damage.rs"]
mod damage;
mod journal_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use journal_support::{Rec, serial};
use proptest::prelude::*;
use volmgr::journal::format::{self, SEGMENT_HEADER_LEN};
use volmgr::journal::{Journal, JournalConfig, JournalError, JournalRecord, LogEnd, Recovery};
use volmgr::journal::{decode_record, encode_checkpoint, encode_record, reader};
use volmgr::storage::RealStorage;

/// Record sizes, resolved against the segment size of the case.
#[derive(Debug, Clone, Copy)]
enum Size {
    Empty,
    Small(u16),
    /// The largest payload one record may have, minus this many bytes.
    NearLimit(u8),
    /// One byte more than the largest payload.
    OverLimit,
}

#[derive(Debug, Clone)]
enum Op {
    /// One record: `append`; several (or none): `append_all`.
    Append(Vec<Size>),
    /// Concurrent tasks, each appending its records at once.
    Concurrent(Vec<Vec<Size>>),
    Checkpoint,
    Reopen,
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        2 => Just(Size::Empty),
        12 => (0u16..400).prop_map(Size::Small),
        2 => (0u8..16).prop_map(Size::NearLimit),
        1 => Just(Size::OverLimit),
    ]
}

fn small_size() -> impl Strategy<Value = Size> {
    prop_oneof![
        1 => Just(Size::Empty),
        6 => (0u16..300).prop_map(Size::Small),
        1 => (0u8..16).prop_map(Size::NearLimit),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(size(), 0..4).prop_map(Op::Append),
        4 => prop::collection::vec(prop::collection::vec(small_size(), 1..3), 2..12)
            .prop_map(Op::Concurrent),
        2 => Just(Op::Checkpoint),
        2 => Just(Op::Reopen),
    ]
}

fn segment_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(format::MIN_SEGMENT_LEN),
        3 => Just(8192u64),
        2 => Just(65536u64),
        // Large enough for a record at the frame limit (1 MiB payload).
        1 => Just(((format::MAX_PAYLOAD_LEN + 4096) as u64).next_multiple_of(4096)),
    ]
}

/// The largest payload one record may have in a segment of this size.
fn payload_limit(segment_size: u64) -> usize {
    let room =
        usize::try_from(segment_size).unwrap() - SEGMENT_HEADER_LEN - format::FRAME_HEADER_LEN;
    format::MAX_PAYLOAD_LEN.min(room)
}

/// A record whose encoded payload is exactly `len` bytes (`len` >= 2).
fn record_of_len(n: u64, len: usize) -> Rec {
    let mut body_len = len.saturating_sub(2);
    loop {
        let r = Rec::new(n, "x".repeat(body_len));
        let got = encode_record(&r).unwrap().len();
        if got == len || body_len == 0 {
            return r;
        }
        body_len -= got.saturating_sub(len).clamp(1, body_len);
    }
}

struct Case {
    segment_size: u64,
    next_id: u64,
}

impl Case {
    fn record(&mut self, size: Size) -> Rec {
        self.next_id += 1;
        let id = self.next_id;
        let limit = payload_limit(self.segment_size);
        match size {
            Size::Empty => Rec::new(id, String::new()),
            Size::Small(n) => Rec::new(
                id,
                char::from(b'a' + (id % 26) as u8)
                    .to_string()
                    .repeat(n as usize),
            ),
            Size::NearLimit(k) => record_of_len(id, limit - k as usize),
            Size::OverLimit => record_of_len(id, limit + 1),
        }
    }

    fn config(&self) -> JournalConfig {
        journal_support::config(self.segment_size)
    }
}

/// The spec's limit rule: every payload at most `MAX_PAYLOAD_LEN` and decodable
/// under the codec's limit, and the request's frames fit in an empty segment
/// (a batch never spans segments).
fn fits(records: &[Rec], segment_size: u64) -> bool {
    let mut total = 0;
    for r in records {
        let payload = encode_record(r).unwrap();
        let len = payload.len();
        if len > format::MAX_PAYLOAD_LEN || decode_record::<Rec>(&payload).is_err() {
            return false;
        }
        total += format::frame_len(len);
    }
    total <= usize::try_from(segment_size).unwrap() - SEGMENT_HEADER_LEN
}

/// Syncs are skipped: this is about what is replayed, and clean closes.
fn open(dir: &Path, config: JournalConfig) -> Result<(Journal<Rec>, Recovery<Rec>), JournalError> {
    journal_support::open_unsynced(dir, config)
}

#[derive(Default)]
struct Model {
    records: BTreeMap<u64, Rec>,
    checkpoint: Option<(u64, Vec<u8>)>,
}

impl Model {
    fn check_recovery(&self, recovery: &Recovery<Rec>) -> Result<(), TestCaseError> {
        prop_assert_eq!(&recovery.end, &LogEnd::Clean);
        prop_assert_eq!(&recovery.checkpoint, &self.checkpoint);
        prop_assert!(recovery.rejected_checkpoints.is_empty());
        let from = self.checkpoint.as_ref().map_or(0, |c| c.0) + 1;
        let want: Vec<(u64, Rec)> = self
            .records
            .range(from..)
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        prop_assert_eq!(&recovery.records, &want);
        Ok(())
    }

    fn state_payload(&self, seq: u64) -> Vec<u8> {
        let bytes: usize = self.records.range(..=seq).map(|(_, r)| r.text.len()).sum();
        encode_checkpoint(&(seq, bytes)).unwrap()
    }
}

/// Retention: at most two checkpoints; no segment wholly covered by the older
/// one is left, and the segments still reach back to the record after it.
fn check_retention(dir: &Path) -> Result<(), TestCaseError> {
    let ckpts = reader::list_checkpoints(&RealStorage, &dir.join("checkpoints")).unwrap();
    prop_assert!(ckpts.len() <= 2);
    let segs = reader::list_segments(&RealStorage, &dir.join("journal")).unwrap();
    prop_assert!(!segs.is_empty());
    if ckpts.len() == 2 {
        let older = ckpts[0].0;
        for pair in segs.windows(2) {
            prop_assert!(
                pair[1].0 - 1 > older,
                "segment {} is wholly covered by checkpoint {}",
                pair[0].0,
                older
            );
        }
        prop_assert!(segs[0].0 <= older + 1, "history after {older} deleted");
    }
    Ok(())
}

/// Everything a read-only walk hands out: (seq, kind, payload bytes).
fn walk_bytes(dir: &Path) -> Vec<(u64, u8, Vec<u8>)> {
    let mut out = Vec::new();
    reader::walk(&RealStorage, dir, |seq, kind, payload, _, _| {
        out.push((seq, kind, payload.to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

async fn run_case(segment_size: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut case = Case {
        segment_size,
        next_id: 0,
    };
    let mut model = Model::default();
    let (journal, recovery) = open(dir.path(), case.config()).unwrap();
    model.check_recovery(&recovery)?;
    let mut journal = Arc::new(journal);

    for op in ops {
        match op {
            Op::Append(sizes) => {
                let records: Vec<Rec> = sizes.into_iter().map(|s| case.record(s)).collect();
                let before = journal.durable_seq();
                let result = if records.len() == 1 {
                    journal.append(&records[0]).await
                } else {
                    journal.append_all(&records).await
                };
                if !fits(&records, segment_size) {
                    prop_assert!(
                        matches!(
                            result,
                            Err(JournalError::RecordTooLarge { .. } | JournalError::Encode(_))
                        ),
                        "{:?}",
                        result
                    );
                    prop_assert_eq!(journal.durable_seq(), before);
                    continue;
                }
                let first = result.unwrap();
                prop_assert_eq!(first, before + 1);
                prop_assert_eq!(journal.durable_seq(), before + records.len() as u64);
                for (i, r) in records.into_iter().enumerate() {
                    model.records.insert(first + i as u64, r);
                }
            }
            Op::Concurrent(groups) => {
                let mut tasks = Vec::new();
                for sizes in groups {
                    let records: Vec<Rec> = sizes.into_iter().map(|s| case.record(s)).collect();
                    if !fits(&records, segment_size) {
                        continue; // refusals are covered by `Op::Append`
                    }
                    let j = journal.clone();
                    tasks.push(tokio::spawn(async move {
                        let first = j.append_all(&records).await.unwrap();
                        (first, records)
                    }));
                }
                for task in tasks {
                    let (first, records) = task.await.unwrap();
                    for (i, r) in records.into_iter().enumerate() {
                        prop_assert!(
                            model.records.insert(first + i as u64, r).is_none(),
                            "sequence number handed out twice"
                        );
                    }
                }
            }
            Op::Checkpoint => {
                let seq = journal.durable_seq();
                let payload = model.state_payload(seq);
                journal.checkpoint(seq, payload.clone()).await.unwrap();
                if model.checkpoint.as_ref().map(|c| c.0) != Some(seq) {
                    model.checkpoint = Some((seq, payload));
                }
                check_retention(dir.path())?;
            }
            Op::Reopen => {
                Arc::into_inner(journal).unwrap().close().await;
                let (reopened, recovery) = open(dir.path(), case.config()).unwrap();
                model.check_recovery(&recovery)?;
                prop_assert_eq!(
                    reopened.durable_seq(),
                    model.records.keys().last().copied().unwrap_or(0)
                );
                journal = Arc::new(reopened);
            }
        }
    }
    let last = model.records.keys().last().copied().unwrap_or(0);
    prop_assert_eq!(journal.durable_seq(), last);
    prop_assert_eq!(
        model.records.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "sequence numbers are dense"
    );
    Arc::into_inner(journal).unwrap().close().await;

    // Replaying the same bytes twice yields identical records.
    let first = walk_bytes(dir.path());
    let second = walk_bytes(dir.path());
    prop_assert_eq!(&first, &second);
    let (j1, r1) = open(dir.path(), case.config()).unwrap();
    model.check_recovery(&r1)?;
    j1.close().await;
    let (j2, r2) = open(dir.path(), case.config()).unwrap();
    j2.close().await;
    prop_assert_eq!(&r1.records, &r2.records);
    prop_assert_eq!(&r1.checkpoint, &r2.checkpoint);
    let walked: Vec<u64> = first.iter().map(|(s, _, _)| *s).collect();
    let opened: Vec<u64> = r1.records.iter().map(|(s, _)| *s).collect();
    prop_assert_eq!(walked, opened);
    for ((_, kind, payload), (_, rec)) in first.iter().zip(&r1.records) {
        prop_assert_eq!(*kind, rec.kind());
        prop_assert_eq!(payload, &encode_record(rec).unwrap());
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn random_record_sequences_round_trip_across_reopen_rotation_and_checkpoints(
        segment_size in segment_size(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let _serial = serial();
        runtime().block_on(run_case(segment_size, ops))?;
    }
}

#[test]
fn the_largest_accepted_record_round_trips_and_one_byte_more_is_refused() {
    let _serial = serial();
    runtime().block_on(async {
        for segment_size in [format::MIN_SEGMENT_LEN, 2 << 20] {
            // The frame limit, less what bincode's decode limit costs this
            // record type (it counts the u64 and the length prefix at 8 bytes).
            let nominal = payload_limit(segment_size);
            let largest = (nominal - 32..=nominal)
                .rev()
                .find(|&len| fits(&[record_of_len(1, len)], segment_size))
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let config = journal_support::config(segment_size);
            let (journal, _) = open(dir.path(), config.clone()).unwrap();
            let at_limit = record_of_len(1, largest);
            assert_eq!(encode_record(&at_limit).unwrap().len(), largest);
            let over = record_of_len(2, largest + 1);
            assert_eq!(encode_record(&over).unwrap().len(), largest + 1);
            assert_eq!(journal.append(&at_limit).await.unwrap(), 1);
            assert!(matches!(
                journal.append(&over).await,
                Err(JournalError::RecordTooLarge { .. } | JournalError::Encode(_))
            ));
            assert_eq!(journal.append(&at_limit).await.unwrap(), 2);
            journal.close().await;
            let (journal, recovery) = open(dir.path(), config).unwrap();
            assert_eq!(
                recovery.records,
                vec![(1, at_limit.clone()), (2, at_limit.clone())]
            );
            assert_eq!(recovery.end, LogEnd::Clean);
            journal.close().await;
            if segment_size == format::MIN_SEGMENT_LEN {
                // The frame limit is the segment: each record filled one.
                assert_eq!(largest, nominal);
                let segs =
                    reader::list_segments(&RealStorage, &dir.path().join("journal")).unwrap();
                assert_eq!(segs.len(), 2);
            } else {
                assert!(largest > format::MAX_PAYLOAD_LEN - 16, "{largest}");
            }
        }
    });
}
