//! Damage property test (DESIGN.md invariant 12): the journal tool and the
//! agent judge a journal through the same reader, so they reach the same
//! verdict at the same offset.
//!
//! Each case copies one of two template journals (four or more 4 KiB
//! segments of real `Record`s in single and multi-record batches; one
//! template with two checkpoints and compacted history, one without) and
//! damages it once or twice at random: bit flips, cuts, zeroed ranges,
//! garbage after the last frame, extra segments (empty, 10 bytes of a
//! header, 4096 zero bytes, a header with a stale checksum, garbage, a copy
//! of another segment) named for the next sequence number or another,
//! missing segments, torn last segments, damaged segment headers, and
//! flipped, cut or removed checkpoints. Then, for every damage:
//!
//! - `volmgr journal verify` (the real binary) says on its `open` row what
//!   `Journal::open` does: opens (at the same sequence number), truncates a
//!   torn tail (same segment, offset and length), or refuses (same segment,
//!   offset and reason); its replay starts from the checkpoint open uses;
//!   its exit code is 0, 6 or 7 accordingly, and 7 whenever open had to
//!   reject a checkpoint;
//! - the manager's replay of what open recovered succeeds at that sequence
//!   number;
//! - after open (which truncates a torn tail), verify says the journal opens
//!   cleanly, and exits 0 when a torn tail was the only problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use volmgr::journal::format::{self, SEGMENT_HEADER_LEN};
use volmgr::journal::{Journal, JournalConfig, JournalError, LogEnd, Recovery, encode_checkpoint};
use volmgr::state::{Action, Done, Meta, OpResult, ProviderRecord, Record, State};

use super::journal_support::{T0_MS, journal_tool, op, open_unsynced};

const SEGMENT_SIZE: u64 = 4096;

fn config() -> JournalConfig {
    super::journal_support::config(SEGMENT_SIZE)
}

fn intent(n: u64, action: Action) -> Record {
    Record::Intent {
        op: op(n),
        at_ms: T0_MS + n,
        action,
    }
}

fn done(n: u64, location: &str) -> Record {
    Record::Outcome {
        op: op(n),
        at_ms: T0_MS + n,
        result: OpResult::Done(Done {
            location: location.into(),
            details: Meta::new(),
        }),
    }
}

/// Writes a provider, then volumes (intent and outcome in one batch for
/// every third, separate batches otherwise), checkpointing the replayed
/// state after the listed sequence numbers.
fn write_template(dir: &Path, volumes: u64, checkpoints: &[u64]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (journal, _) = open_unsynced::<Record>(dir, config()).unwrap();
        let mut state = State::default();
        let mut batches: Vec<Vec<Record>> = vec![
            vec![intent(
                1,
                Action::AddProvider(ProviderRecord {
                    id: "p".into(),
                    kind: "dir".into(),
                    config: BTreeMap::new(),
                }),
            )],
            vec![done(1, "")],
        ];
        for n in 2..2 + volumes {
            let name = format!("volume-{n:03}");
            let create = intent(
                n,
                Action::CreateVolume {
                    provider: "p".into(),
                    volume: name.clone(),
                    meta: Meta::from([(
                        "note".to_owned(),
                        "x".repeat(usize::try_from(n % 7 * 9).unwrap()),
                    )]),
                },
            );
            let outcome = done(n, &format!("/srv/{name}"));
            if n % 3 == 0 {
                batches.push(vec![create, outcome]);
            } else {
                batches.push(vec![create]);
                batches.push(vec![outcome]);
            }
        }
        for batch in batches {
            let first = journal.append_all(&batch).await.unwrap();
            for (i, record) in batch.iter().enumerate() {
                let seq = first + i as u64;
                state.apply(seq, record).unwrap();
                if checkpoints.contains(&seq) {
                    journal
                        .checkpoint(seq, encode_checkpoint(&state).unwrap())
                        .await
                        .unwrap();
                }
            }
        }
        journal.close().await;
    });
}

/// The two templates, built once: (with checkpoints, without).
fn templates() -> &'static [tempfile::TempDir; 2] {
    static TEMPLATES: OnceLock<[tempfile::TempDir; 2]> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let with = tempfile::tempdir().unwrap();
        write_template(with.path(), 90, &[50, 120]);
        let without = tempfile::tempdir().unwrap();
        write_template(without.path(), 60, &[]);
        [with, without]
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn numbered(dir: &Path, ext: &str) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            format::parse_numbered_name(&name, ext).map(|s| (s, path))
        })
        .collect();
    out.sort();
    out
}

/// A segment file's shape, for extra segments.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Empty,
    TenHeaderBytes,
    Zeros,
    StaleHeaderCrc,
    Garbage(u64),
    CopyOfFirst,
}

#[derive(Debug, Clone, Copy)]
enum CheckpointDamage {
    Flip { at: u32, bit: u8 },
    Cut { at: u32 },
    Remove,
}

#[derive(Debug, Clone)]
enum Damage {
    /// One bit of any segment or checkpoint file.
    Flip {
        file: usize,
        at: u32,
        bit: u8,
    },
    /// A segment truncated.
    Cut {
        segment: usize,
        at: u32,
    },
    /// A range of a segment zeroed.
    Zero {
        segment: usize,
        at: u32,
        len: u16,
    },
    /// Nonzero bytes after the last frame of the last segment.
    GarbageAfterLast {
        skip: u8,
        bytes: Vec<u8>,
    },
    /// A new segment after the last, named for the next sequence number
    /// plus `name_offset`.
    Extra {
        shape: Shape,
        name_offset: i8,
    },
    /// A segment deleted.
    Missing {
        segment: usize,
    },
    /// The last segment cut inside its header, or its header zeroed.
    TornLast {
        keep: u8,
        zero_instead: bool,
    },
    /// A bit of a segment header.
    Header {
        segment: usize,
        at: u8,
        bit: u8,
    },
    Checkpoint {
        which: usize,
        how: CheckpointDamage,
    },
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Empty),
        Just(Shape::TenHeaderBytes),
        Just(Shape::Zeros),
        Just(Shape::StaleHeaderCrc),
        any::<u64>().prop_map(Shape::Garbage),
        Just(Shape::CopyOfFirst),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (0..16usize, any::<u32>(), 0..8u8)
            .prop_map(|(file, at, bit)| Damage::Flip { file, at, bit }),
        2 => (0..8usize, any::<u32>()).prop_map(|(segment, at)| Damage::Cut { segment, at }),
        2 => (0..8usize, any::<u32>(), 1..600u16)
            .prop_map(|(segment, at, len)| Damage::Zero { segment, at, len }),
        2 => (0..64u8, prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(skip, bytes)| Damage::GarbageAfterLast { skip, bytes }),
        3 => (shape(), prop_oneof![4 => Just(0i8), 1 => -3..4i8])
            .prop_map(|(shape, name_offset)| Damage::Extra { shape, name_offset }),
        1 => (0..8usize).prop_map(|segment| Damage::Missing { segment }),
        2 => (0..40u8, any::<bool>())
            .prop_map(|(keep, zero_instead)| Damage::TornLast { keep, zero_instead }),
        2 => (0..8usize, 0..32u8, 0..8u8)
            .prop_map(|(segment, at, bit)| Damage::Header { segment, at, bit }),
        2 => (0..2usize, prop_oneof![
                (any::<u32>(), 0..8u8).prop_map(|(at, bit)| CheckpointDamage::Flip { at, bit }),
                any::<u32>().prop_map(|at| CheckpointDamage::Cut { at }),
                Just(CheckpointDamage::Remove),
            ])
            .prop_map(|(which, how)| Damage::Checkpoint { which, how }),
    ]
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Offset just after the last valid frame of a segment.
fn written_end(bytes: &[u8]) -> u64 {
    match volmgr::journal::reader::scan_segment(bytes) {
        Ok(scan) => match scan.end {
            volmgr::journal::reader::SegmentEnd::Clean { offset }
            | volmgr::journal::reader::SegmentEnd::Invalid { offset, .. } => offset,
        },
        Err(_) => SEGMENT_HEADER_LEN as u64,
    }
}

/// Applies one damage; returns what it did, for the failure message.
fn apply(dir: &Path, damage: &Damage) -> String {
    let journal = dir.join("journal");
    let checkpoints = dir.join("checkpoints");
    let segments = numbered(&journal, "seg");
    let pick = |i: usize| segments.get(i % segments.len().max(1)).cloned();
    match *damage {
        Damage::Flip { file, at, bit } => {
            let mut files: Vec<PathBuf> = segments.iter().map(|(_, p)| p.clone()).collect();
            files.extend(numbered(&checkpoints, "ckpt").into_iter().map(|(_, p)| p));
            let Some(path) = files.get(file % files.len().max(1)) else {
                return "nothing to flip".into();
            };
            let bytes = std::fs::read(path).unwrap();
            if bytes.is_empty() {
                return "empty file".into();
            }
            let at = u64::from(at) % bytes.len() as u64;
            write_at(
                path,
                at,
                &[bytes[usize::try_from(at).unwrap()] ^ (1 << bit)],
            );
            format!("flip bit {bit} at {at} of {}", path.display())
        }
        Damage::Cut { segment, at } => {
            let Some((_, path)) = pick(segment) else {
                return "no segment".into();
            };
            let len = std::fs::metadata(&path).unwrap().len();
            let at = u64::from(at) % (len + 1);
            set_len(&path, at);
            format!("cut {} to {at}", path.display())
        }
        Damage::Zero { segment, at, len } => {
            let Some((_, path)) = pick(segment) else {
                return "no segment".into();
            };
            let size = std::fs::metadata(&path).unwrap().len();
            if size == 0 {
                return "empty".into();
            }
            let at = u64::from(at) % size;
            let n = u64::from(len).min(size - at);
            write_at(&path, at, &vec![0; usize::try_from(n).unwrap()]);
            format!("zero {n} bytes at {at} of {}", path.display())
        }
        Damage::GarbageAfterLast { skip, ref bytes } => {
            let Some((_, path)) = segments.last().cloned() else {
                return "no segment".into();
            };
            let end = written_end(&std::fs::read(&path).unwrap()) + u64::from(skip);
            let size = std::fs::metadata(&path).unwrap().len();
            let n = usize::try_from((bytes.len() as u64).min(size.saturating_sub(end))).unwrap();
            write_at(&path, end, &bytes[..n]);
            format!("{n} garbage bytes at {end} of {}", path.display())
        }
        Damage::Extra { shape, name_offset } => {
            let next = match segments.last() {
                Some((first, path)) => {
                    let bytes = std::fs::read(path).unwrap();
                    volmgr::journal::reader::scan_segment(&bytes).map_or(*first, |s| s.next_seq())
                }
                None => 1,
            };
            let name = next.saturating_add_signed(i64::from(name_offset)).max(1);
            let path = journal.join(format::segment_file_name(name));
            if path.exists() {
                return "name taken".into();
            }
            let bytes = match shape {
                Shape::Empty => Vec::new(),
                Shape::TenHeaderBytes => format::encode_segment_header(name)[..10].to_vec(),
                Shape::Zeros => vec![0; usize::try_from(SEGMENT_SIZE).unwrap()],
                Shape::StaleHeaderCrc => {
                    let mut b = format::encode_segment_header(name).to_vec();
                    b[format::SEG_CRC_OFFSET] ^= 0x40;
                    b.resize(usize::try_from(SEGMENT_SIZE).unwrap(), 0);
                    b
                }
                Shape::Garbage(seed) => {
                    let mut x = seed | 1;
                    (0..SEGMENT_SIZE)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x.to_le_bytes()[0]
                        })
                        .collect()
                }
                Shape::CopyOfFirst => match segments.first() {
                    Some((_, first)) => std::fs::read(first).unwrap(),
                    None => Vec::new(),
                },
            };
            std::fs::write(&path, bytes).unwrap();
            format!("extra segment {name} ({shape:?}), the log expects {next}")
        }
        Damage::Missing { segment } => {
            let Some((_, path)) = pick(segment) else {
                return "no segment".into();
            };
            std::fs::remove_file(&path).unwrap();
            format!("removed {}", path.display())
        }
        Damage::TornLast { keep, zero_instead } => {
            let Some((_, path)) = segments.last().cloned() else {
                return "no segment".into();
            };
            if zero_instead {
                write_at(&path, 0, &[0; SEGMENT_HEADER_LEN]);
                format!("zeroed the header of {}", path.display())
            } else {
                let keep = u64::from(keep) % SEGMENT_HEADER_LEN as u64;
                set_len(&path, keep);
                format!("cut {} to {keep}", path.display())
            }
        }
        Damage::Header { segment, at, bit } => {
            let Some((_, path)) = pick(segment) else {
                return "no segment".into();
            };
            let bytes = std::fs::read(&path).unwrap();
            let at = usize::from(at);
            if at >= bytes.len() {
                return "short".into();
            }
            write_at(&path, at as u64, &[bytes[at] ^ (1 << bit)]);
            format!("header bit {bit} at {at} of {}", path.display())
        }
        Damage::Checkpoint { which, how } => {
            let files = numbered(&checkpoints, "ckpt");
            let Some((_, path)) = files.get(which % files.len().max(1)).cloned() else {
                return "no checkpoint".into();
            };
            let len = std::fs::metadata(&path).unwrap().len();
            match how {
                CheckpointDamage::Flip { at, bit } => {
                    let at = u64::from(at) % len.max(1);
                    let b = std::fs::read(&path).unwrap()[usize::try_from(at).unwrap()];
                    write_at(&path, at, &[b ^ (1 << bit)]);
                    format!("flip bit {bit} at {at} of {}", path.display())
                }
                CheckpointDamage::Cut { at } => {
                    let at = u64::from(at) % len.max(1);
                    set_len(&path, at);
                    format!("cut {} to {at}", path.display())
                }
                CheckpointDamage::Remove => {
                    std::fs::remove_file(&path).unwrap();
                    format!("removed {}", path.display())
                }
            }
        }
    }
}

/// What `volmgr journal verify` said.
#[derive(Debug)]
struct Verified {
    code: i32,
    /// The `open` row: status and detail.
    open: (String, String),
    /// The replay row's detail, if any.
    replay: Option<String>,
    /// Files of the checkpoints reported corrupt.
    bad_checkpoints: Vec<String>,
    text: String,
}

fn verify(dir: &Path) -> Verified {
    let run = journal_tool(&["verify", dir.to_str().unwrap(), "--align", "never"]);
    let text = run.stdout + &run.stderr;
    let mut open = (String::new(), String::new());
    let mut replay = None;
    let mut bad_checkpoints = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.splitn(4, '\t').collect();
        match cells.as_slice() {
            ["open", _, status, detail] => open = ((*status).into(), (*detail).into()),
            ["replay", _, _, detail] => replay = Some((*detail).to_owned()),
            ["checkpoint", file, "CORRUPT", _] => bad_checkpoints.push((*file).to_owned()),
            _ => {}
        }
    }
    Verified {
        code: run.code,
        open,
        replay,
        bad_checkpoints,
        text,
    }
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

type Opened = Result<(Journal<Record>, Recovery<Record>), JournalError>;

fn open(dir: &Path) -> Opened {
    open_unsynced(dir, config())
}

/// Checks verify's report against what opening did.
fn agree(v: &Verified, opened: &Opened, what: &str) -> Result<(), TestCaseError> {
    let ctx = || format!("after {what}:\n{}", v.text);
    match opened {
        Err(JournalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            prop_assert_eq!(v.code, 7, "{}", ctx());
            prop_assert_eq!(&v.open.0, "REFUSES", "{}", ctx());
            let want = format!("corrupt at {}:{offset}: {reason}", name(file));
            prop_assert_eq!(&v.open.1, &want, "{}", ctx());
        }
        Err(e) => prop_assert!(false, "open failed without a verdict: {e}; {}", ctx()),
        Ok((journal, recovery)) => {
            let seq = journal.durable_seq();
            let state = volmgr::manager::replay(recovery);
            prop_assert!(
                state.is_ok(),
                "replay after open: {:?}; {}",
                state.err(),
                ctx()
            );
            prop_assert_eq!(state.unwrap().seq, seq, "{}", ctx());
            match &recovery.end {
                LogEnd::Clean => {
                    prop_assert_eq!(&v.open.0, "ok", "{}", ctx());
                    prop_assert_eq!(&v.open.1, &format!("opens at seq {seq}"), "{}", ctx());
                    prop_assert!([0, 7].contains(&v.code), "{}", ctx());
                }
                LogEnd::TornTail {
                    segment,
                    offset,
                    len,
                    ..
                } => {
                    prop_assert_eq!(&v.open.0, "repairs", "{}", ctx());
                    let want = format!(
                        "truncates the torn tail at {}:{offset} ({len} bytes), then opens at seq {seq}",
                        name(segment)
                    );
                    prop_assert_eq!(&v.open.1, &want, "{}", ctx());
                    prop_assert!([6, 7].contains(&v.code), "{}", ctx());
                }
            }
            // The same checkpoint, and every one open rejected is reported.
            let base = match &recovery.checkpoint {
                Some((c, _)) => format!("(checkpoint {c} + "),
                None => "(empty state + ".to_owned(),
            };
            prop_assert!(
                v.replay.as_ref().is_some_and(|r| r.contains(&base)),
                "replay from {base}: {}",
                ctx()
            );
            for (path, _) in &recovery.rejected_checkpoints {
                prop_assert!(v.bad_checkpoints.contains(&name(path)), "{}", ctx());
                prop_assert_eq!(v.code, 7, "{}", ctx());
            }
        }
    }
    Ok(())
}

/// What the cases found, for the figures the sweep prints.
#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    refused: u64,
    torn: u64,
    clean: u64,
    rejected_checkpoints: u64,
}

fn run_case(
    template: usize,
    damages: &[Damage],
    tally: &std::sync::Mutex<Tally>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(templates()[template].path(), dir.path());
    let what: Vec<String> = damages.iter().map(|d| apply(dir.path(), d)).collect();
    let what = what.join("; ");

    let before = verify(dir.path());
    let opened = open(dir.path());
    agree(&before, &opened, &what)?;
    {
        let mut t = tally.lock().unwrap();
        t.cases += 1;
        match &opened {
            Err(_) => t.refused += 1,
            Ok((_, r)) => {
                match r.end {
                    LogEnd::Clean => t.clean += 1,
                    LogEnd::TornTail { .. } => t.torn += 1,
                }
                t.rejected_checkpoints += r.rejected_checkpoints.len() as u64;
            }
        }
    }
    let Ok((journal, _)) = opened else {
        return Ok(());
    };
    drop(journal);
    // Open truncated any torn tail: the journal now opens cleanly, and a
    // torn tail that was the only problem leaves nothing to report.
    let after = verify(dir.path());
    prop_assert_eq!(
        &after.open.0,
        "ok",
        "after {} and an open:\n{}",
        what,
        after.text
    );
    if before.code == 6 {
        prop_assert_eq!(after.code, 0, "after {} and an open:\n{}", what, after.text);
    }
    let reopened = open(dir.path());
    agree(&after, &reopened, &format!("{what} (reopened)"))?;
    Ok(())
}

#[test]
fn verify_reaches_the_verdict_open_acts_on_for_every_damage() {
    let _serial = super::serial();
    let cases = std::env::var("DAMAGE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let tally = std::sync::Mutex::new(Tally::default());
    let strategy = (0..2usize, prop::collection::vec(damage(), 1..3));
    let result = runner.run(&strategy, |(template, damages)| {
        run_case(template, &damages, &tally)
    });
    let t = tally.into_inner().unwrap();
    println!(
        "damage sweep: cases {} (shrinking included), open refused {} (verify refused at the same \
         file:offset), torn tails {} (verify clean after open: all), clean {}, rejected \
         checkpoints {}, verdict mismatches {}",
        t.cases,
        t.refused,
        t.torn,
        t.clean,
        t.rejected_checkpoints,
        usize::from(result.is_err())
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
