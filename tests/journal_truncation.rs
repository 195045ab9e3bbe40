//! Truncation sweep: a multi-segment journal cut at every byte offset of its
//! last segment opens to exactly the longest valid prefix of its records.
//!
//! Two shapes of cut per offset: the file truncated to that length, and the
//! bytes from the cut on zeroed (what a preallocated segment looks like when a
//! write did not land). Every cut goes through `reader::walk` (the read-only
//! decision logic of open); a dense sample (every cut near a frame boundary or
//! in the header, and every few others) goes through the full `Journal::open`,
//! which also repairs the tail, and part of that sample appends afterwards and
//! reopens, proving the repaired journal carries on.

mod journal_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use journal_support::{Rec, overwrite};
use volmgr::journal::format::{self, SEGMENT_HEADER_LEN};
use volmgr::journal::reader;
use volmgr::journal::{Journal, JournalError, LogEnd, Recovery};
use volmgr::storage::RealStorage;

const SEGMENT_SIZE: u64 = 4096;

/// Durability is not under test here, bytes are: skip the syncs so thousands
/// of opens take seconds (the decisions above the storage seam are the same).
fn open(dir: &Path) -> Result<(Journal<Rec>, Recovery<Rec>), JournalError> {
    journal_support::open_unsynced(dir, journal_support::config(SEGMENT_SIZE))
}

fn rec(n: u64) -> Rec {
    Rec::new(
        n,
        char::from(b'a' + (n % 26) as u8)
            .to_string()
            .repeat((n * 37 % 120) as usize),
    )
}

/// Writes single appends, multi-record batches and concurrent appends until
/// there are at least three segments and the last is mostly full.
async fn build_journal(dir: &Path) -> BTreeMap<u64, Rec> {
    let (journal, _) = open(dir).unwrap();
    let journal = Arc::new(journal);
    let mut model = BTreeMap::new();
    let mut n = 0u64;
    loop {
        let segments = reader::list_segments(&RealStorage, &dir.join("journal")).unwrap();
        if segments.len() >= 3 {
            let last = std::fs::read(&segments.last().unwrap().1).unwrap();
            let scan = reader::scan_segment(&last).unwrap();
            let reader::SegmentEnd::Clean { offset } = scan.end else {
                panic!("fresh journal not clean")
            };
            if offset >= SEGMENT_SIZE * 3 / 4 {
                break;
            }
        }
        match n % 5 {
            0 | 1 => {
                n += 1;
                let seq = journal.append(&rec(n)).await.unwrap();
                model.insert(seq, rec(n));
            }
            2 => {
                let batch: Vec<Rec> = (n + 1..=n + 3).map(rec).collect();
                n += 3;
                let first = journal.append_all(&batch).await.unwrap();
                for (i, r) in batch.into_iter().enumerate() {
                    model.insert(first + i as u64, r);
                }
            }
            _ => {
                let mut tasks = Vec::new();
                for _ in 0..4 {
                    n += 1;
                    let j = journal.clone();
                    let r = rec(n);
                    tasks.push(tokio::spawn(async move {
                        let seq = j.append(&r).await.unwrap();
                        (seq, r)
                    }));
                }
                for t in tasks {
                    let (seq, r) = t.await.unwrap();
                    model.insert(seq, r);
                }
            }
        }
    }
    Arc::into_inner(journal).unwrap().close().await;
    assert_eq!(
        model.keys().copied().collect::<Vec<_>>(),
        (1..=model.len() as u64).collect::<Vec<_>>()
    );
    model
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    Truncate,
    ZeroFrom,
}

fn cut_bytes(orig: &[u8], at: usize, how: Cut) -> Vec<u8> {
    match how {
        Cut::Truncate => orig[..at].to_vec(),
        Cut::ZeroFrom => {
            let mut b = orig.to_vec();
            b[at..].fill(0);
            b
        }
    }
}

/// What the spec says the cut file holds: the number of the last segment's
/// frames that are intact (a frame is intact when every byte it occupies,
/// padding included, is as written), and whether anything nonzero lies after
/// them (a torn tail) or not (a clean end).
fn expected(orig: &[u8], frames: &[(usize, usize)], cut: &[u8]) -> (usize, bool) {
    let same = |range: std::ops::Range<usize>| cut.get(range.clone()) == Some(&orig[range]);
    if !same(0..SEGMENT_HEADER_LEN) {
        // The segment's creation was cut short: a torn tail at offset 0.
        return (0, true);
    }
    let mut intact = 0;
    let mut end = SEGMENT_HEADER_LEN;
    for &(offset, len) in frames {
        if !same(offset..offset + len) {
            break;
        }
        intact += 1;
        end = offset + len;
    }
    (intact, cut[end..].iter().any(|&b| b != 0))
}

fn clear_extras(journal_dir: &Path, originals: &[(u64, PathBuf, Vec<u8>)]) {
    for entry in std::fs::read_dir(journal_dir).unwrap() {
        let path = entry.unwrap().path();
        if !originals.iter().any(|(_, p, _)| *p == path) {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[tokio::test]
async fn every_cut_of_the_last_segment_opens_to_the_longest_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let model = build_journal(dir.path()).await;
    let journal_dir = dir.path().join("journal");
    let originals: Vec<(u64, PathBuf, Vec<u8>)> = reader::list_segments(&RealStorage, &journal_dir)
        .unwrap()
        .into_iter()
        .map(|(s, p)| {
            let b = std::fs::read(&p).unwrap();
            (s, p, b)
        })
        .collect();
    assert!(originals.len() >= 3, "need a multi-segment journal");
    let (last_first_seq, last_path, last_orig) = originals.last().unwrap().clone();
    assert_eq!(
        last_orig.len() as u64,
        SEGMENT_SIZE,
        "segments are preallocated"
    );
    let scan = reader::scan_segment(&last_orig).unwrap();
    let frames: Vec<(usize, usize)> = scan
        .frames
        .iter()
        .map(|f| {
            let len = format::frame_len(f.payload.len());
            (usize::try_from(f.offset).unwrap(), len)
        })
        .collect();
    assert!(
        frames.len() >= 10,
        "last segment holds {} frames",
        frames.len()
    );
    let boundaries: Vec<usize> = frames.iter().map(|&(o, l)| o + l).collect();
    let near_boundary = |at: usize| {
        at < 2 * SEGMENT_HEADER_LEN
            || frames
                .iter()
                .any(|&(o, l)| at.abs_diff(o) <= 8 || at.abs_diff(o + l) <= 8)
    };

    let mut tried = 0u64;
    let mut mismatches = Vec::new();
    let mut full_opens = 0u64;
    let mut reopened_after_append = 0u64;
    for how in [Cut::Truncate, Cut::ZeroFrom] {
        for at in 0..=last_orig.len() {
            tried += 1;
            let cut = cut_bytes(&last_orig, at, how);
            let (intact, torn) = expected(&last_orig, &frames, &cut);
            let want_last_seq = last_first_seq - 1 + intact as u64;
            overwrite(&last_path, &cut);

            // 1. The read-only decision logic, for every cut.
            let mut seen = Vec::new();
            let walked = reader::walk(&RealStorage, dir.path(), |seq, _, payload, _, _| {
                seen.push((seq, volmgr::journal::decode_record::<Rec>(payload).unwrap()));
                Ok(())
            });
            let walk_ok = match &walked {
                Ok(w) => {
                    w.last_seq == want_last_seq
                        && matches!(w.end, LogEnd::TornTail { .. }) == torn
                        && seen.len() as u64 == want_last_seq
                        && seen.iter().all(|(s, r)| model.get(s) == Some(r))
                }
                Err(_) => false,
            };
            if !walk_ok {
                mismatches.push(format!(
                    "{how:?} at {at}: walk gave {:?}, want last seq {want_last_seq}, torn {torn}",
                    walked.as_ref().map(|w| (w.last_seq, w.end.clone()))
                ));
                continue;
            }

            // 2. The full open (with repair) for a dense sample.
            if !(near_boundary(at) || at % 5 == 0) {
                continue;
            }
            full_opens += 1;
            let opened = open(dir.path());
            let (journal, recovery) = match opened {
                Ok(x) => x,
                Err(e) => {
                    mismatches.push(format!("{how:?} at {at}: open failed: {e}"));
                    clear_extras(&journal_dir, &originals);
                    continue;
                }
            };
            let got: Vec<(u64, Rec)> = recovery.records.clone();
            let want: Vec<(u64, Rec)> = model
                .range(..=want_last_seq)
                .map(|(s, r)| (*s, r.clone()))
                .collect();
            if got != want
                || matches!(recovery.end, LogEnd::TornTail { .. }) != torn
                || recovery.broken_file.is_some() != torn
                || journal.durable_seq() != want_last_seq
            {
                mismatches.push(format!(
                    "{how:?} at {at}: open gave {} records (end {:?}), want {}",
                    got.len(),
                    recovery.end,
                    want.len()
                ));
            }
            // The repaired journal carries on: append, reopen, see it all.
            if at % 40 == 0 || boundaries.contains(&at) {
                reopened_after_append += 1;
                let extra = rec(1_000_000 + at as u64);
                let seq = journal.append(&extra).await.unwrap();
                assert_eq!(seq, want_last_seq + 1);
                journal.close().await;
                let (journal, recovery) = open(dir.path()).unwrap();
                let mut want = want.clone();
                want.push((seq, extra));
                if recovery.records != want || recovery.end != LogEnd::Clean {
                    mismatches.push(format!(
                        "{how:?} at {at}: after repair and append, reopen gave {} records (end {:?})",
                        recovery.records.len(),
                        recovery.end
                    ));
                }
                journal.close().await;
            } else {
                journal.close().await;
            }
            // Restore the original journal for the next cut.
            clear_extras(&journal_dir, &originals);
            for (_, path, bytes) in &originals {
                overwrite(path, bytes);
            }
        }
    }
    println!(
        "truncation sweep: cut points tried {tried}, mismatches {} \
         ({} segments, last one {} bytes with {} frames; {full_opens} through Journal::open, \
         {reopened_after_append} of them appended and reopened)",
        mismatches.len(),
        originals.len(),
        last_orig.len(),
        frames.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    assert!(full_opens >= 1000, "only {full_opens} full opens");
}
