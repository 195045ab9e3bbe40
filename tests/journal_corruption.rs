//! Corruption sweep: one bit flipped in every byte of a multi-segment journal,
//! and in every byte of its checkpoint files.
//!
//! The journal is written with sequential single appends, so every record is
//! its own write batch and every record but the last is followed by a later
//! batch. For each flip:
//! - no panic, and no wrong record: every record handed out (by the read-only
//!   `reader::walk` for every flip, and by the full `Journal::open` for a dense
//!   sample) equals what was written at that sequence number;
//! - a flip in a segment header, in any frame but the last record's, or in the
//!   zero tail of a segment that is not the last is corruption naming that
//!   segment file and the offset of the damaged frame (0 for the header, the
//!   end-of-log offset for the zero tail), never a torn tail;
//! - a flip in the last record or in the last segment's zero tail may be a
//!   torn tail (truncated, everything before it intact) or corruption.
//!
//! A flip in the newest checkpoint falls back to the previous one and replays
//! from there; a flip in the older one is not even read.

mod journal_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use journal_support::{Rec, overwrite};
use volmgr::journal::format::{self, SEGMENT_HEADER_LEN};
use volmgr::journal::reader::{self, SegmentEnd};
use volmgr::journal::{Journal, JournalError, LogEnd, Recovery};
use volmgr::storage::RealStorage;

const SEGMENT_SIZE: u64 = 4096;

/// Durability is not under test, detection is: syncs are skipped so the sweep
/// takes seconds. The decisions above the storage seam are the same.
fn open(dir: &Path) -> Result<(Journal<Rec>, Recovery<Rec>), JournalError> {
    journal_support::open_unsynced(dir, journal_support::config(SEGMENT_SIZE))
}

fn rec(n: u64) -> Rec {
    Rec::new(n, format!("record {n} ").repeat((n % 9) as usize))
}

/// A snapshot of every file under the state directory's journal and
/// checkpoint directories, to restore after an open repaired something.
struct Snapshot(Vec<(PathBuf, Vec<u8>)>);

impl Snapshot {
    fn take(state_dir: &Path) -> Self {
        let mut files = Vec::new();
        for sub in ["journal", "checkpoints"] {
            for entry in std::fs::read_dir(state_dir.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
        files.sort();
        Snapshot(files)
    }

    fn restore(&self, state_dir: &Path) {
        for sub in ["journal", "checkpoints"] {
            for entry in std::fs::read_dir(state_dir.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if !self.0.iter().any(|(p, _)| *p == path) {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        for (path, bytes) in &self.0 {
            overwrite(path, bytes);
        }
    }
}

/// Where a flipped byte lies, and what the spec says must follow.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Corruption in this file at this offset, never a torn tail.
    Corrupt { file: PathBuf, offset: u64 },
    /// In the last record or the last segment's zero tail: a torn tail at
    /// `offset` with the `intact` records before it handed out, or corruption.
    TornOrCorrupt { offset: u64, intact: u64 },
}

fn expectation(segments: &[(PathBuf, Vec<u8>)], seg: usize, pos: usize) -> Expect {
    let (path, bytes) = &segments[seg];
    let is_last_segment = seg + 1 == segments.len();
    let scan = reader::scan_segment(bytes).unwrap();
    let SegmentEnd::Clean { offset: end } = scan.end else {
        panic!("the written journal is clean")
    };
    let corrupt = |offset: u64| Expect::Corrupt {
        file: path.clone(),
        offset,
    };
    if pos < SEGMENT_HEADER_LEN {
        return corrupt(0);
    }
    for (i, frame) in scan.frames.iter().enumerate() {
        let start = usize::try_from(frame.offset).unwrap();
        if (start..start + format::frame_len(frame.payload.len())).contains(&pos) {
            let is_last_record = is_last_segment && i + 1 == scan.frames.len();
            return if is_last_record {
                Expect::TornOrCorrupt {
                    offset: frame.offset,
                    intact: frame.header.seq - 1,
                }
            } else {
                corrupt(frame.offset)
            };
        }
    }
    assert!(pos as u64 >= end);
    if is_last_segment {
        Expect::TornOrCorrupt {
            offset: end,
            intact: scan.next_seq() - 1,
        }
    } else {
        corrupt(end)
    }
}

/// Writes sequential single appends until there are at least `segments`
/// segments and the last holds a few records. Returns the model.
async fn build(dir: &Path, segments: usize) -> BTreeMap<u64, Rec> {
    let (journal, _) = open(dir).unwrap();
    let mut model = BTreeMap::new();
    for n in 1.. {
        let seq = journal.append(&rec(n)).await.unwrap();
        model.insert(seq, rec(n));
        let listed = reader::list_segments(&RealStorage, &dir.join("journal")).unwrap();
        if listed.len() >= segments {
            let last = std::fs::read(&listed.last().unwrap().1).unwrap();
            if reader::scan_segment(&last).unwrap().frames.len() >= 8 {
                break;
            }
        }
    }
    journal.close().await;
    model
}

#[derive(Default)]
struct Tally {
    tried: u64,
    detected: u64,
    misclassified: Vec<String>,
}

impl Tally {
    fn judge(
        &mut self,
        what: &str,
        expect: &Expect,
        model: &BTreeMap<u64, Rec>,
        outcome: Outcome,
        handed_out: &[(u64, Rec)],
    ) {
        // Never a wrong record, whatever the verdict.
        for (seq, r) in handed_out {
            if model.get(seq) != Some(r) {
                self.misclassified
                    .push(format!("{what}: wrong record at seq {seq}"));
                return;
            }
        }
        match (expect, outcome) {
            (
                Expect::Corrupt { file, offset },
                Err(JournalError::Corrupt {
                    file: f, offset: o, ..
                }),
            ) if f == *file && o == *offset => self.detected += 1,
            (Expect::TornOrCorrupt { .. }, Err(JournalError::Corrupt { .. })) => self.detected += 1,
            (
                Expect::TornOrCorrupt { offset, intact },
                Ok((records, LogEnd::TornTail { offset: o, .. })),
            ) if o == *offset => {
                // Everything before the torn bytes is intact and handed out.
                if records.len() as u64 == *intact
                    && records
                        .iter()
                        .enumerate()
                        .all(|(i, (s, _))| *s == i as u64 + 1)
                {
                    self.detected += 1;
                } else {
                    self.misclassified.push(format!(
                        "{what}: torn tail at {o} but {} records",
                        records.len()
                    ));
                }
            }
            (expect, got) => self.misclassified.push(format!(
                "{what}: expected {expect:?}, got {}",
                match got {
                    Ok((records, end)) => format!("Ok({} records, {end:?})", records.len()),
                    Err(e) => format!("Err({e})"),
                }
            )),
        }
    }
}

/// What a walk or an open concluded: the records and how the log ended.
type Outcome = Result<(Vec<(u64, Rec)>, LogEnd), JournalError>;

/// Walks read-only; returns the verdict and every record handed out.
fn walk_records(dir: &Path) -> (Outcome, Vec<(u64, Rec)>) {
    let mut seen = Vec::new();
    let result = reader::walk(&RealStorage, dir, |seq, _, payload, file, offset| {
        let r =
            volmgr::journal::decode_record::<Rec>(payload).map_err(|e| JournalError::Corrupt {
                file: file.to_owned(),
                offset,
                reason: format::Invalid::Decode(e),
            })?;
        seen.push((seq, r));
        Ok(())
    });
    let outcome = result.map(|w| (seen.clone(), w.end));
    (outcome, seen)
}

#[tokio::test]
async fn bit_flips_in_segments_are_detected_where_they_are_and_never_yield_a_wrong_record() {
    let dir = tempfile::tempdir().unwrap();
    let model = build(dir.path(), 3).await;
    let snapshot = Snapshot::take(dir.path());
    let segments: Vec<(PathBuf, Vec<u8>)> = snapshot
        .0
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "seg"))
        .cloned()
        .collect();
    assert!(segments.len() >= 3);

    let mut tally = Tally::default();
    let mut full_opens = 0u64;
    let mut flip_index = 0u64;
    for seg in 0..segments.len() {
        let (path, orig) = &segments[seg];
        for pos in 0..orig.len() {
            flip_index += 1;
            let bit = (flip_index * 5 + seg as u64) % 8;
            let expect = expectation(&segments, seg, pos);
            let mut bytes = orig.clone();
            bytes[pos] ^= 1 << bit;
            overwrite(path, &bytes);
            tally.tried += 1;
            let what = format!(
                "{} byte {pos} bit {bit}",
                path.file_name().unwrap().to_string_lossy()
            );

            let (outcome, seen) = walk_records(dir.path());
            tally.judge(&what, &expect, &model, outcome, &seen);

            // A dense sample through the full open, which also repairs.
            if flip_index.is_multiple_of(6) {
                full_opens += 1;
                let before = tally.detected;
                let outcome = open(dir.path()).map(|(journal, recovery)| {
                    drop(journal);
                    (recovery.records, recovery.end)
                });
                let seen = outcome.as_ref().map(|(r, _)| r.clone()).unwrap_or_default();
                tally.judge(&format!("{what} (open)"), &expect, &model, outcome, &seen);
                // Count each flip once in `detected`.
                tally.detected = before;
                snapshot.restore(dir.path());
            } else {
                overwrite(path, orig);
            }
        }
    }
    println!(
        "corruption sweep: flips tried {}, detected {}, misclassified {} \
         ({} segments of {SEGMENT_SIZE} bytes, {} records; {full_opens} flips also through Journal::open)",
        tally.tried,
        tally.detected,
        tally.misclassified.len(),
        segments.len(),
        model.len()
    );
    assert!(
        tally.misclassified.is_empty(),
        "{:#?}",
        &tally.misclassified[..tally.misclassified.len().min(10)]
    );
    assert_eq!(tally.detected, tally.tried, "every flip is noticed");
}

#[tokio::test]
async fn bit_flips_in_the_newest_checkpoint_fall_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path()).unwrap();
    let mut model = BTreeMap::new();
    let mut checkpoints = Vec::new();
    for n in 1..=150u64 {
        let seq = journal.append(&rec(n)).await.unwrap();
        model.insert(seq, rec(n));
        if n == 60 || n == 110 {
            // The "state": a count and the latest records, as the codec stores it.
            let state: (usize, Vec<&Rec>) = (model.len(), model.values().rev().take(4).collect());
            let payload = volmgr::journal::encode_checkpoint(&state).unwrap();
            journal.checkpoint(seq, payload.clone()).await.unwrap();
            checkpoints.push((seq, payload));
        }
    }
    journal.close().await;
    let snapshot = Snapshot::take(dir.path());
    let ckpt_files: Vec<(PathBuf, Vec<u8>)> = snapshot
        .0
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "ckpt"))
        .cloned()
        .collect();
    assert_eq!(ckpt_files.len(), 2, "the newest two checkpoints are kept");
    let segments_left = reader::list_segments(&RealStorage, &dir.path().join("journal")).unwrap();
    assert!(
        segments_left[0].0 > 1,
        "segments wholly covered by the older checkpoint were deleted"
    );

    let mut tried = 0u64;
    let mut fell_back = 0u64;
    let mut failures = Vec::new();
    for (which, (path, orig)) in ckpt_files.iter().enumerate() {
        let newest = which == 1;
        for pos in 0..orig.len() {
            let bit = (pos * 3 + which) % 8;
            let mut bytes = orig.clone();
            bytes[pos] ^= 1 << bit;
            overwrite(path, &bytes);
            tried += 1;
            // A flip in the older checkpoint is invisible: the newest is used.
            let (use_seq, use_payload) = &checkpoints[if newest { 0 } else { 1 }];
            match open(dir.path()) {
                Ok((journal, recovery)) => {
                    drop(journal);
                    let want: Vec<(u64, Rec)> = model
                        .range(use_seq + 1..)
                        .map(|(s, r)| (*s, r.clone()))
                        .collect();
                    let ok = recovery.checkpoint == Some((*use_seq, use_payload.clone()))
                        && recovery.records == want
                        && recovery.end == LogEnd::Clean
                        && (recovery.rejected_checkpoints.len() == usize::from(newest));
                    if ok {
                        fell_back += u64::from(newest);
                    } else {
                        failures.push(format!(
                            "{} byte {pos}: checkpoint {:?}, {} records, rejected {:?}",
                            path.display(),
                            recovery.checkpoint.as_ref().map(|c| c.0),
                            recovery.records.len(),
                            recovery.rejected_checkpoints
                        ));
                    }
                }
                Err(e) => failures.push(format!("{} byte {pos}: {e}", path.display())),
            }
            snapshot.restore(dir.path());
        }
    }
    println!(
        "checkpoint corruption sweep: flips tried {tried}, fell back to the previous checkpoint {fell_back}, misclassified {}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:#?}",
        &failures[..failures.len().min(10)]
    );
    assert_eq!(usize::try_from(fell_back).unwrap(), ckpt_files[1].1.len());
}

#[tokio::test]
async fn both_checkpoints_damaged_after_segment_deletion_refuses_to_open_naming_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path()).unwrap();
    for n in 1..=150u64 {
        let seq = journal.append(&rec(n)).await.unwrap();
        if n == 60 || n == 110 {
            journal.checkpoint(seq, vec![1, 2, 3]).await.unwrap();
        }
    }
    journal.close().await;
    for (_, path) in
        reader::list_checkpoints(&RealStorage, &dir.path().join("checkpoints")).unwrap()
    {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[format::CKPT_SEQ_OFFSET] ^= 0x10;
        overwrite(&path, &bytes);
    }
    let err = open(dir.path()).unwrap_err();
    match &err {
        JournalError::Corrupt {
            offset: 0,
            reason:
                format::Invalid::MissingSegment {
                    expected_first_seq: 1,
                    ..
                },
            ..
        } => {}
        other => panic!("expected a missing-segment corruption, got {other}"),
    }
}
