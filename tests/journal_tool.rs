//! The `volmgr journal` tool, run as the real binary on journals these tests
//! build deterministically (fixed op ids and timestamps, reconciliation
//! records included) with the journal's own writer.
//!
//! Outputs are compared exactly with files under `tests/golden/`; run with
//! `UPDATE_GOLDEN=1` to rewrite them (then review the diff). The state
//! directory's path is replaced by `<STATE>` before comparing.

mod journal_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use journal_support::{Run, T0_MS, op, run_bounded};
use volmgr::journal::reader::{self, SegmentEnd};
use volmgr::journal::{Journal, JournalConfig, LogEnd, encode_checkpoint};
use volmgr::state::{
    Action, Case, Done, Effect, Meta, OpResult, Orphan, ProviderRecord, Record, State, VolumeKind,
};
use volmgr::storage::RealStorage;
use volmgr::storage::fault::FaultyStorage;

// ---------------------------------------------------------------- fixtures

fn meta(pairs: &[(&str, &str)]) -> Meta {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn intent(n: u64, at_s: u64, action: Action) -> Record {
    Record::Intent {
        op: op(n),
        at_ms: T0_MS + at_s * 1000,
        action,
    }
}

fn done(n: u64, at_s: u64, location: &str, details: &[(&str, &str)]) -> Record {
    Record::Outcome {
        op: op(n),
        at_ms: T0_MS + at_s * 1000 + 250,
        result: OpResult::Done(Done {
            location: location.to_owned(),
            details: meta(details),
        }),
    }
}

fn create(provider: &str, volume: &str, m: Meta) -> Action {
    Action::CreateVolume {
        provider: provider.into(),
        volume: volume.into(),
        meta: m,
    }
}

/// A host's history: a provider, volumes, a snapshot, a fork, a failure,
/// filler volumes (so the journal spans two 4 KiB segments), then a crash
/// and the reconciliation records of the next start, and a pending intent.
fn story() -> Vec<Record> {
    let mut r = vec![
        intent(
            1,
            0,
            Action::AddProvider(ProviderRecord {
                id: "default".into(),
                kind: "dir".into(),
                config: meta(&[("root", "/srv/volmgr")]),
            }),
        ),
        done(1, 0, "", &[]),
        intent(2, 1, create("default", "web-data", meta(&[("app", "web")]))),
        done(2, 1, "/srv/volmgr/web-data", &[]),
        intent(
            3,
            2,
            Action::CreateSnapshot {
                source: "web-data".into(),
                snapshot: "web-snap-1".into(),
                meta: Meta::new(),
            },
        ),
        done(3, 2, "/srv/volmgr/.snap/web-snap-1", &[("guid", "1234")]),
        intent(
            4,
            3,
            Action::ForkVolume {
                snapshot: "web-snap-1".into(),
                volume: "web-fork".into(),
                meta: Meta::new(),
            },
        ),
        done(4, 3, "/srv/volmgr/web-fork", &[]),
        intent(5, 4, create("default", "db-data", Meta::new())),
        Record::Outcome {
            op: op(5),
            at_ms: T0_MS + 4_500,
            result: OpResult::Failed {
                error: "no space left on device".into(),
            },
        },
        intent(6, 5, create("default", "cache", Meta::new())),
        done(6, 5, "/srv/volmgr/cache", &[]),
    ];
    for i in 0..10u64 {
        let n = 100 + i;
        let name = format!("vol-{i:02}");
        let purpose = format!("filler volume number {i} that makes the journal span segments");
        r.push(intent(
            n,
            10 + i,
            create(
                "default",
                &name,
                meta(&[("owner", "team-storage"), ("purpose", &purpose)]),
            ),
        ));
        r.push(done(n, 10 + i, &format!("/srv/volmgr/{name}"), &[]));
    }
    r.extend([
        intent(
            7,
            30,
            Action::DestroyVolume {
                volume: "cache".into(),
            },
        ),
        // The agent crashed here; the next start reconciled:
        Record::Reconciled {
            at_ms: T0_MS + 40_000,
            case: Case::DestroyAlreadyGone,
            detail: "cache is absent on the provider".into(),
            effect: Effect::Resolve {
                op: op(7),
                result: OpResult::Done(Done::default()),
            },
        },
        intent(8, 41, create("default", "logs", Meta::new())),
        // Crashed again before the outcome; reconciled at the next start:
        Record::Reconciled {
            at_ms: T0_MS + 50_000,
            case: Case::CreateRolledForward,
            detail: "found logs tagged with its op".into(),
            effect: Effect::Resolve {
                op: op(8),
                result: OpResult::Done(Done {
                    location: "/srv/volmgr/logs".into(),
                    details: Meta::new(),
                }),
            },
        },
        Record::Reconciled {
            at_ms: T0_MS + 50_000,
            case: Case::VolumeLost,
            detail: "the provider no longer shows web-fork".into(),
            effect: Effect::MarkLost {
                volume: "web-fork".into(),
            },
        },
        Record::Reconciled {
            at_ms: T0_MS + 50_000,
            case: Case::OrphanReported,
            detail: "tagged dataset without a record".into(),
            effect: Effect::NoteOrphan(Orphan {
                provider: "default".into(),
                volume: "stray-1".into(),
                kind: VolumeKind::Data,
                tagged_op: op(99),
                location: "/srv/volmgr/stray-1".into(),
            }),
        },
        intent(
            9,
            51,
            Action::ReceiveSnapshot {
                target: "web-data".into(),
                snapshot: "web-snap-2".into(),
                meta: Meta::new(),
            },
        ),
        done(9, 51, "/srv/volmgr/.snap/web-snap-2", &[("guid", "5678")]),
        // A pull whose transfer broke: kept resumable, then discarded.
        intent(
            11,
            51,
            Action::ReceiveSnapshot {
                target: "web-data".into(),
                snapshot: "web-snap-3".into(),
                meta: meta(&[
                    ("pull-source", "http://10.0.0.2:1113"),
                    ("pull-snapshot", "snap-on-b"),
                ]),
            },
        ),
        Record::Outcome {
            op: op(11),
            at_ms: T0_MS + 51_500,
            result: OpResult::Suspended {
                error: "the stream ended early".into(),
                token: "1-b2c-d4e5".into(),
                guid: "9012".into(),
            },
        },
        intent(
            12,
            51,
            Action::AbortReceive {
                target: "web-data".into(),
            },
        ),
        done(12, 51, "", &[]),
        // Pending: no outcome yet.
        intent(10, 52, create("default", "scratch", meta(&[("ttl", "1h")]))),
    ]);
    r
}

/// Sequence number of the story's checkpoint.
const STORY_CHECKPOINT: u64 = 20;

fn filler(n: u64) -> Record {
    intent(
        1000 + n,
        100 + n,
        create(
            "default",
            &format!("extra-{n:04}"),
            meta(&[("note", "appended while a dump follows the journal")]),
        ),
    )
}

fn config() -> JournalConfig {
    journal_support::config(4096)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Appends `records` one by one (one write batch each) to the journal of
/// `dir`, checkpointing the replayed state after the listed sequence numbers.
fn append(
    rt: &tokio::runtime::Runtime,
    journal: &Journal<Record>,
    state: &mut State,
    records: &[Record],
    checkpoints: &[u64],
) {
    rt.block_on(async {
        for record in records {
            let seq = journal.append(record).await.unwrap();
            state.apply(seq, record).unwrap();
            if checkpoints.contains(&seq) {
                let payload = encode_checkpoint(&*state).unwrap();
                journal.checkpoint(seq, payload).await.unwrap();
            }
        }
    });
}

fn write_journal(dir: &Path, records: &[Record], checkpoints: &[u64]) {
    let rt = runtime();
    let (journal, _) = Journal::<Record>::open(dir, config()).unwrap();
    let mut state = State::default();
    append(&rt, &journal, &mut state, records, checkpoints);
    rt.block_on(journal.close());
}

fn story_journal() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), &story(), &[STORY_CHECKPOINT]);
    dir
}

/// The story plus filler: three segments, so one can be in the middle.
fn long_records() -> Vec<Record> {
    let mut records = story();
    records.extend((0..45).map(filler));
    records
}

fn long_journal() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), &long_records(), &[STORY_CHECKPOINT]);
    dir
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    reader::list_segments(&RealStorage, &dir.join("journal"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Offsets of the valid frames of a segment and where its written part ends.
fn frames(segment: &Path) -> (Vec<u64>, u64) {
    let bytes = fs::read(segment).unwrap();
    let scan = reader::scan_segment(&bytes).unwrap();
    let end = match scan.end {
        SegmentEnd::Clean { offset } | SegmentEnd::Invalid { offset, .. } => offset,
    };
    (scan.frames.iter().map(|f| f.offset).collect(), end)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

/// Bytes after the last frame of the last segment, as a crash in the middle
/// of a write leaves them.
const TORN_BYTES: [u8; 20] = [
    0xde, 0xad, 0xbe, 0xef, 0x40, 0, 0, 0, 38, 0, 0, 0, 0, 0, 0, 0, 38, 0, 0, 7,
];

fn tear_tail(dir: &Path) {
    let last = segments(dir).pop().unwrap();
    let (_, end) = frames(&last);
    write_at(&last, end, &TORN_BYTES);
}

/// Flips one payload byte of the third frame of the middle segment.
fn corrupt_middle_segment(dir: &Path) -> (PathBuf, u64) {
    let segs = segments(dir);
    assert!(segs.len() >= 3, "the story spans {} segments", segs.len());
    let middle = segs[segs.len() / 2].clone();
    let (offsets, _) = frames(&middle);
    let at = offsets[2];
    let bytes = fs::read(&middle).unwrap();
    let target = at + 40;
    write_at(
        &middle,
        target,
        &[bytes[usize::try_from(target).unwrap()] ^ 0x5a],
    );
    (middle, at)
}

// ---------------------------------------------------------------- running

fn volmgr(args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().expect("exited normally, not by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn journal_cmd(dir: &Path, sub: &str, extra: &[&str]) -> Run {
    let d = dir.to_str().unwrap();
    let mut args = vec!["journal", sub, d];
    args.extend_from_slice(extra);
    volmgr(&args)
}

/// stdout, the exit code and stderr in one text, the state dir replaced.
fn transcript(run: &Run, dir: &Path) -> String {
    let d = dir.to_str().unwrap();
    let mut t = run.stdout.replace(d, "<STATE>");
    writeln!(t, "[exit {}]", run.code).unwrap();
    if !run.stderr.is_empty() {
        t.push_str("[stderr]\n");
        t.push_str(&run.stderr.replace(d, "<STATE>"));
    }
    t
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}--- actual\n{actual}",
        path.display()
    );
}

fn check(name: &str, dir: &Path, sub: &str, extra: &[&str], code: i32) -> Run {
    let run = journal_cmd(dir, sub, extra);
    golden(name, &transcript(&run, dir));
    assert_eq!(
        run.code, code,
        "exit code of {sub} {extra:?}: {}",
        run.stderr
    );
    run
}

/// Every file under the state dir with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let bytes = fs::read(entry.path()).unwrap();
                out.insert(entry.path(), (bytes, meta.modified().unwrap()));
            }
        }
    }
    out
}

fn seq_of(line: &str) -> Option<u64> {
    line.split('\t').next()?.trim().parse().ok()
}

// ---------------------------------------------------------------- dump

#[test]
fn fixture_journals_span_two_and_three_segments_with_one_checkpoint() {
    assert_eq!(segments(long_journal().path()).len(), 3);
    let dir = story_journal();
    assert_eq!(segments(dir.path()).len(), 2);
    let ckpts = fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(ckpts, 1);
}

#[test]
fn dump_prints_one_aligned_line_per_record() {
    let dir = story_journal();
    let run = check(
        "dump_aligned.txt",
        dir.path(),
        "dump",
        &["--align", "always"],
        0,
    );
    assert_eq!(
        run.stdout.lines().count(),
        story().len() + 1,
        "header + records"
    );
}

#[test]
fn dump_piped_is_tab_separated_without_header() {
    let dir = story_journal();
    let run = check("dump_plain.txt", dir.path(), "dump", &[], 0);
    let seqs: Vec<u64> = run.stdout.lines().map(|l| seq_of(l).unwrap()).collect();
    assert_eq!(seqs, (1..=story().len() as u64).collect::<Vec<_>>());
    assert!(run.stdout.lines().all(|l| l.split('\t').count() == 7));
}

#[test]
fn dump_json_lines_carry_position_time_kind_volume_op_and_full_record() {
    let dir = story_journal();
    let run = check(
        "dump_json.txt",
        dir.path(),
        "dump",
        &["--format", "json"],
        0,
    );
    let records = story();
    for (line, record) in run.stdout.lines().zip(&records) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["seq", "segment", "offset", "time", "kind", "volume", "op"] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
        let full: Record = serde_json::from_value(v["record"].clone()).unwrap();
        assert_eq!(&full, record);
    }
    assert_eq!(run.stdout.lines().count(), records.len());
}

#[test]
fn dump_filters_select_by_sequence_kind_volume_and_op() {
    let dir = story_journal();
    let d = dir.path();
    check(
        "dump_seq_range.txt",
        d,
        "dump",
        &["--from-seq", "30", "--to-seq", "33"],
        0,
    );
    check("dump_kind.txt", d, "dump", &["--kind", "reconciled"], 0);
    // Outcomes name no volume themselves: the tool finds it through the op.
    let run = check("dump_volume.txt", d, "dump", &["--volume", "web-data"], 0);
    assert!(run.stdout.lines().any(|l| l.contains("\toutcome\t")));
    let run = check("dump_op.txt", d, "dump", &["--op", &op(8).to_string()], 0);
    assert_eq!(
        run.stdout.lines().count(),
        2,
        "intent and its reconciliation"
    );
    let run = journal_cmd(d, "dump", &["--from-seq", "9", "--to-seq", "3"]);
    assert_eq!(run.code, 2, "an empty range is a usage error");
}

#[test]
fn dump_stops_at_corruption_and_exits_7_without_raw() {
    let dir = long_journal();
    corrupt_middle_segment(dir.path());
    let run = check("dump_corrupt.txt", dir.path(), "dump", &[], 7);
    assert!(run.stdout.lines().last().unwrap().starts_with("!! corrupt"));
}

#[test]
fn dump_raw_shows_records_after_a_corrupt_middle_segment() {
    let dir = long_journal();
    let (middle, at) = corrupt_middle_segment(dir.path());
    let run = check("dump_raw_corrupt.txt", dir.path(), "dump", &["--raw"], 7);
    let name = middle.file_name().unwrap().to_str().unwrap();
    assert!(
        run.stdout.contains(&format!("!! corrupt {name}:{at}")),
        "names the damaged segment and offset"
    );
    let seqs: BTreeSet<u64> = run.stdout.lines().filter_map(seq_of).collect();
    let last = long_records().len() as u64;
    assert!(seqs.contains(&last), "records after the damage are shown");
    assert_eq!(
        seqs.len() as u64,
        last - 1,
        "only the damaged record is missing"
    );
}

#[test]
fn dump_into_a_closed_pipe_exits_0_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Enough output (>64 KiB) that the dump outlives `head`.
    let records: Vec<Record> = (0..700).map(filler).collect();
    write_journal(dir.path(), &records, &[]);
    let out = Command::new("bash")
        .args([
            "-c",
            r#"set -o pipefail; "$0" journal dump "$1" | head -1"#,
            env!("CARGO_BIN_EXE_volmgr"),
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads the child's stdout lines on a thread; waits for them with a bound.
struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn new(child: &mut std::process::Child) -> Self {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// Collects lines until one holds record `seq`; panics after 30 s.
    fn until_seq(&self, seq: u64, seen: &mut Vec<u64>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no record {seq} within 30 s ({e}); saw {seen:?}"));
            if let Some(s) = seq_of(&line) {
                seen.push(s);
                if s == seq {
                    return;
                }
            }
        }
    }
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited normally, not by a signal");
        }
        assert!(
            Instant::now() < deadline,
            "the tool did not exit within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn interrupt(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: sends SIGINT to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
}

#[test]
fn dump_follow_prints_records_another_process_appends_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    // This process plays the agent: it holds the journal open (and its lock).
    let (journal, _) = Journal::<Record>::open(dir.path(), config()).unwrap();
    let mut state = State::default();
    let records = story();
    append(&rt, &journal, &mut state, &records, &[]);
    let before = segments(dir.path()).len();

    let mut child = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(["journal", "dump", dir.path().to_str().unwrap(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(&mut child);
    let mut seen = Vec::new();
    lines.until_seq(records.len() as u64, &mut seen);

    let more: Vec<Record> = (0..60).map(filler).collect();
    append(&rt, &journal, &mut state, &more, &[]);
    let total = (records.len() + more.len()) as u64;
    assert!(
        segments(dir.path()).len() >= before + 2,
        "the appends rotated segments"
    );
    lines.until_seq(total, &mut seen);
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "each record once, in order"
    );

    interrupt(&child);
    assert_eq!(wait_exit(&mut child), 0, "SIGINT ends --follow cleanly");
    rt.block_on(journal.close());
}

#[test]
fn dump_follow_waits_for_a_journal_without_segments_and_exits_0_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("journal")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(["journal", "dump", dir.path().to_str().unwrap(), "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(&mut child);
    write_journal(dir.path(), &story()[..3], &[]);
    let mut seen = Vec::new();
    lines.until_seq(3, &mut seen);
    assert_eq!(seen, vec![1, 2, 3]);
    interrupt(&child);
    assert_eq!(wait_exit(&mut child), 0);
}

// ---------------------------------------------------------------- verify

#[test]
fn verify_clean_journal_exits_0() {
    let dir = story_journal();
    check(
        "verify_clean.txt",
        dir.path(),
        "verify",
        &["--align", "always"],
        0,
    );
}

#[test]
fn verify_torn_tail_exits_6() {
    let dir = story_journal();
    tear_tail(dir.path());
    check(
        "verify_torn.txt",
        dir.path(),
        "verify",
        &["--align", "always"],
        6,
    );
}

#[test]
fn dump_and_state_of_a_torn_journal_exit_0_noting_the_torn_tail() {
    let dir = story_journal();
    tear_tail(dir.path());
    let run = journal_cmd(dir.path(), "dump", &[]);
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.lines().count(), story().len());
    assert!(
        run.stderr
            .contains("torn tail at 00000000000000000038.seg:832"),
        "{}",
        run.stderr
    );
    let run = journal_cmd(dir.path(), "state", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with(&format!("state at seq {} ", story().len()))
    );
}

#[test]
fn verify_corrupt_middle_segment_exits_7_naming_segment_and_offset() {
    let dir = long_journal();
    let (middle, at) = corrupt_middle_segment(dir.path());
    let run = check(
        "verify_corrupt.txt",
        dir.path(),
        "verify",
        &["--align", "always"],
        7,
    );
    let name = middle.file_name().unwrap().to_str().unwrap();
    assert!(run.stdout.contains(name) && run.stdout.contains(&format!("at offset {at}")));
}

#[test]
fn verify_raw_reports_what_follows_the_corruption() {
    let dir = long_journal();
    corrupt_middle_segment(dir.path());
    let run = check(
        "verify_corrupt_raw.txt",
        dir.path(),
        "verify",
        &["--raw"],
        7,
    );
    assert!(run.stdout.contains("resumed"));
}

#[test]
fn verify_damaged_checkpoint_exits_7() {
    let dir = story_journal();
    let ckpt = dir
        .path()
        .join("checkpoints")
        .join(format!("{STORY_CHECKPOINT:020}.ckpt"));
    let len = fs::metadata(&ckpt).unwrap().len();
    write_at(&ckpt, len - 3, &[0xff]);
    let run = journal_cmd(dir.path(), "verify", &[]);
    assert_eq!(run.code, 7, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("checkpoint\t00000000000000000020.ckpt\tCORRUPT")
    );
}

/// The state directory's identity (`IDENTITY`) is read by opening, which
/// refuses a damaged one: `verify` says so (exit 7, an `identity` row, the
/// `open` row `REFUSES`) and still checks the whole journal; the other
/// read-only commands go on as without it; a sound identity adds no row.
#[test]
fn verify_names_a_damaged_identity_that_opening_refuses_and_reads_the_journal_still() {
    let dir = story_journal();
    let path = dir.path().join("IDENTITY");
    assert_eq!(fs::read(&path).unwrap().len(), 37, "made by the first open");
    let sound = journal_cmd(dir.path(), "verify", &["--align", "never"]);
    assert_eq!(sound.code, 0, "{}", sound.stdout);
    assert!(!sound.stdout.contains("identity"), "{}", sound.stdout);

    fs::write(&path, b"garbage\n").unwrap();
    let before = snapshot(dir.path());
    let run = journal_cmd(dir.path(), "verify", &["--align", "never"]);
    assert_eq!(run.code, 7, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("identity\tIDENTITY\tDAMAGED\t8 bytes, not 37"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("open\t-\tREFUSES\tstate directory identity IDENTITY: 8 bytes"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("replay\t-\tok\t"),
        "the journal is checked still: {}",
        run.stdout
    );
    for sub in ["dump", "stats", "state"] {
        let run = journal_cmd(dir.path(), sub, &[]);
        assert_eq!(run.code, 0, "{sub}: {}", run.stderr);
    }
    assert_eq!(snapshot(dir.path()), before, "the tool changed nothing");
}

#[test]
fn verify_of_a_missing_or_foreign_directory_is_a_usage_error_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let run = journal_cmd(&dir.path().join("nope"), "verify", &[]);
    assert_eq!(run.code, 2);
    let run = journal_cmd(dir.path(), "verify", &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("not a volmgr state directory"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------- stats, state

#[test]
fn stats_counts_records_and_bytes_per_kind_and_replays_the_state() {
    let dir = story_journal();
    check("stats.txt", dir.path(), "stats", &["--align", "always"], 0);
    let run = check(
        "stats_json.txt",
        dir.path(),
        "stats",
        &["--format", "json"],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["records"], story().len());
    assert_eq!(v["state"]["pending"], 1);
    assert_eq!(v["state"]["lost"], 1);
}

#[test]
fn state_prints_the_latest_volume_table_pending_intents_and_orphans() {
    let dir = story_journal();
    check("state.txt", dir.path(), "state", &["--align", "always"], 0);
    let run = check(
        "state_json.txt",
        dir.path(),
        "state",
        &["--format", "json"],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["seq"], story().len());
    assert_eq!(v["orphans"][0]["volume"], "stray-1");
}

#[test]
fn state_at_seq_shows_the_table_as_it_was_then() {
    let dir = story_journal();
    // After the checkpoint: checkpoint + records.
    check(
        "state_at_30.txt",
        dir.path(),
        "state",
        &["--at-seq", "30", "--align", "always"],
        0,
    );
    // Before the only checkpoint: replayed from the first record.
    let run = check(
        "state_at_5.txt",
        dir.path(),
        "state",
        &["--at-seq", "5", "--align", "always"],
        0,
    );
    assert!(
        run.stdout
            .starts_with("state at seq 5 (empty state + 5 records)")
    );
}

#[test]
fn state_at_seq_before_compacted_history_fails_naming_the_oldest_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = story();
    records.extend((0..80).map(filler));
    // Two checkpoints: the segments wholly before the older one are deleted.
    write_journal(dir.path(), &records, &[60, 100]);
    let first = segments(dir.path())
        .first()
        .map(|p| {
            p.file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .unwrap();
    assert!(first > 1, "compaction removed the oldest segments");

    let run = journal_cmd(dir.path(), "state", &["--at-seq", "10"]);
    assert_eq!(run.code, 1, "a request that cannot be met");
    assert!(
        run.stderr.contains(&format!(
            "the history before seq {first} was compacted away; the oldest state available is at seq 60"
        )),
        "{}",
        run.stderr
    );
    let run = journal_cmd(dir.path(), "state", &["--at-seq", "70"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("state at seq 70 (checkpoint 60 + 10 records)")
    );
    let run = journal_cmd(dir.path(), "verify", &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
}

#[test]
fn tools_read_the_journal_the_manager_writes_while_it_runs() {
    use volmgr::manager::{Manager, ManagerConfig};
    use volmgr::provider::sim::SimProvider;

    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let sim = SimProvider::new();
    let mut mc = ManagerConfig::default();
    mc.factories.insert("sim".into(), sim.factory());
    mc.journal = config();
    mc.checkpoint_every = 7;
    mc.checkpoint_grows_with_state = false;
    let manager = rt.block_on(async {
        let m = Manager::open(dir.path(), mc).await.unwrap();
        m.add_provider("p", "sim", BTreeMap::default())
            .await
            .unwrap();
        for i in 0..30 {
            let id = format!("v{i}");
            m.create_volume("p", Some(&id), Meta::new()).await.unwrap();
            if i % 3 == 0 {
                m.destroy_volume(&id).await.unwrap();
            }
        }
        m
    });
    let run = journal_cmd(dir.path(), "verify", &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = journal_cmd(dir.path(), "state", &["--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let mut ids: Vec<String> = v["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = manager.volumes().into_iter().map(|v| v.id).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(v["seq"], manager.stats().durable_seq);
    rt.block_on(manager.close());
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.metadata().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn damaged_journals_get_an_exit_code_never_a_panic_or_a_hang() {
    let template = long_journal();
    let mut files: Vec<PathBuf> = segments(template.path());
    files.push(
        template
            .path()
            .join("checkpoints")
            .join(format!("{STORY_CHECKPOINT:020}.ckpt")),
    );
    // xorshift64: deterministic damage.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound.max(1)
    };
    for case in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let victim = dir.path().join(
            files[usize::try_from(next(files.len() as u64)).unwrap()]
                .strip_prefix(template.path())
                .unwrap(),
        );
        let len = fs::metadata(&victim).unwrap().len();
        let at = next(len);
        let what = match case % 4 {
            0 => {
                let b = fs::read(&victim).unwrap()[usize::try_from(at).unwrap()];
                write_at(&victim, at, &[b ^ (1 << next(8))]);
                format!("flip a bit at {at}")
            }
            1 => {
                let sector = at / 512 * 512;
                let n = usize::try_from(512.min(len - sector)).unwrap();
                write_at(&victim, sector, &vec![0; n]);
                format!("zero the sector at {sector}")
            }
            2 => {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&victim)
                    .unwrap()
                    .set_len(at)
                    .unwrap();
                format!("truncate to {at}")
            }
            _ => {
                let n = usize::try_from((1 + next(64)).min(len - at)).unwrap();
                let garbage: Vec<u8> = (0..n).map(|_| u8::try_from(next(256)).unwrap()).collect();
                write_at(&victim, at, &garbage);
                format!("{n} garbage bytes at {at}")
            }
        };
        let before = snapshot(dir.path());
        let d = dir.path().to_str().unwrap();
        for args in [
            vec!["journal", "verify", d, "--raw"],
            vec!["journal", "dump", d, "--raw", "--format", "json"],
            vec!["journal", "stats", d],
            vec!["journal", "state", d],
        ] {
            let run = run_bounded(&args, Duration::from_secs(20))
                .unwrap_or_else(|| panic!("{args:?} hung after: {what} in {}", victim.display()));
            assert!(
                [0, 6, 7].contains(&run.code) && !run.stderr.contains("panicked"),
                "{args:?} after {what} in {}: exit {}\n{}",
                victim.display(),
                run.code,
                run.stderr
            );
        }
        assert_eq!(snapshot(dir.path()), before, "read-only commands wrote");
    }
}

// ---------------------------------------------------------------- read-only

#[test]
fn read_only_commands_work_beside_the_lock_holder_and_write_nothing() {
    let dir = story_journal();
    let rt = runtime();
    // An agent holds the state directory.
    let (journal, _) = Journal::<Record>::open(dir.path(), config()).unwrap();
    let before = snapshot(dir.path());
    for (sub, extra) in [
        ("dump", vec![]),
        ("dump", vec!["--raw", "--format", "json"]),
        ("verify", vec!["--raw"]),
        ("stats", vec![]),
        ("state", vec!["--at-seq", "7"]),
        ("repair", vec!["--truncate-at", "30"]),
    ] {
        let run = journal_cmd(dir.path(), sub, &extra);
        // The repair plan without its confirmation: a usage error.
        let expected = if sub == "repair" { 2 } else { 0 };
        assert_eq!(run.code, expected, "{sub} {extra:?}: {}", run.stderr);
    }
    assert_eq!(snapshot(dir.path()), before, "no file changed");
    rt.block_on(journal.close());
}

// ---------------------------------------------------------------- repair

#[test]
fn repair_truncates_a_torn_tail_keeping_the_bytes_in_a_broken_file() {
    let dir = story_journal();
    tear_tail(dir.path());
    check(
        "repair_torn.txt",
        dir.path(),
        "repair",
        &["--truncate-torn-tail"],
        0,
    );
    let last = segments(dir.path()).pop().unwrap();
    let (_, end) = frames(&last);
    let broken = last.with_file_name(format!(
        "{}.at-{end}.broken",
        last.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(fs::read(broken).unwrap(), TORN_BYTES);
    assert_eq!(journal_cmd(dir.path(), "verify", &[]).code, 0);
    let (journal, recovery) = Journal::<Record>::open(dir.path(), config()).unwrap();
    assert_eq!(recovery.end, LogEnd::Clean);
    // A second run has nothing to do.
    drop(journal);
    let run = journal_cmd(dir.path(), "repair", &["--truncate-torn-tail"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.starts_with("nothing to repair"));
}

#[test]
fn repair_refuses_while_an_agent_holds_the_lock() {
    let dir = story_journal();
    let (journal, _) = Journal::<Record>::open(dir.path(), config()).unwrap();
    let before = snapshot(dir.path());
    for extra in [
        vec!["--truncate-torn-tail"],
        vec!["--truncate-at", "30", "--yes-destroy-records-after"],
    ] {
        let run = journal_cmd(dir.path(), "repair", &extra);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("state directory is locked")
                && run.stderr.contains(&format!("pid {}", std::process::id())),
            "names the holder: {}",
            run.stderr
        );
    }
    assert_eq!(snapshot(dir.path()), before);
    drop(journal);
}

#[test]
fn repair_torn_tail_mode_refuses_corruption_and_changes_nothing() {
    let dir = long_journal();
    corrupt_middle_segment(dir.path());
    let before = snapshot(dir.path());
    let run = journal_cmd(dir.path(), "repair", &["--truncate-torn-tail"]);
    assert_eq!(run.code, 7, "{}", run.stderr);
    assert!(run.stderr.contains("--truncate-at"), "{}", run.stderr);
    let after = snapshot(dir.path());
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v) && !p.ends_with("LOCK"))
        .map(|(p, _)| p.clone())
        .collect();
    assert!(changed.is_empty(), "changed: {changed:?}");
}

#[test]
fn repair_truncate_at_without_confirmation_only_prints_the_plan() {
    let dir = long_journal();
    corrupt_middle_segment(dir.path());
    let before = snapshot(dir.path());
    check(
        "repair_plan.txt",
        dir.path(),
        "repair",
        &["--truncate-at", "25"],
        2,
    );
    assert_eq!(snapshot(dir.path()), before);
    let run = journal_cmd(dir.path(), "repair", &["--truncate-at", "45"]);
    assert_eq!(run.code, 1, "a cut the journal cannot be given");
    assert!(
        run.stderr.contains("cut at seq 40 or earlier"),
        "{}",
        run.stderr
    );
}

#[test]
fn repair_truncate_at_confirmed_cuts_off_corruption_and_the_journal_opens() {
    let dir = long_journal();
    corrupt_middle_segment(dir.path());
    let run = journal_cmd(dir.path(), "verify", &[]);
    assert_eq!(run.code, 7);
    check(
        "repair_cut.txt",
        dir.path(),
        "repair",
        &["--truncate-at", "40", "--yes-destroy-records-after"],
        0,
    );
    assert_eq!(journal_cmd(dir.path(), "verify", &[]).code, 0);
    let broken: Vec<String> = fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".broken"))
        .collect();
    assert_eq!(
        broken.len(),
        2,
        "the cut bytes and the later segment: {broken:?}"
    );
    let (journal, recovery) = Journal::<Record>::open(dir.path(), config()).unwrap();
    assert_eq!(recovery.end, LogEnd::Clean);
    assert_eq!(journal.durable_seq(), 39);
}

// ---------------------------------------------------------------- usage

#[test]
fn every_subcommand_help_shows_examples() {
    for sub in ["dump", "verify", "stats", "state", "repair"] {
        let run = volmgr(&["journal", sub, "--help"]);
        assert_eq!(run.code, 0);
        assert!(
            run.stdout.contains("Examples:")
                && run
                    .stdout
                    .contains(&format!("volmgr journal {sub} /var/lib/volmgr")),
            "{sub} --help:\n{}",
            run.stdout
        );
        assert!(run.stdout.contains("Exit codes:"), "{sub}");
    }
    let run = volmgr(&["journal", "--help"]);
    assert!(run.stdout.contains("Examples:"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(volmgr(&["journal", "dump"]).code, 2);
    assert_eq!(
        volmgr(&["journal", "dump", "/tmp", "--kind", "bogus"]).code,
        2
    );
    assert_eq!(volmgr(&["journal", "repair", "/tmp"]).code, 2);
    assert_eq!(
        volmgr(&[
            "journal",
            "repair",
            "/tmp",
            "--yes-destroy-records-after",
            "--truncate-torn-tail"
        ])
        .code,
        2
    );
}

// ---------------------------------------------------------------- vocabulary

#[test]
fn state_json_speaks_the_api_vocabulary() {
    let dir = story_journal();
    let run = journal_cmd(dir.path(), "state", &["--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let volumes = v["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["kind"] == "snapshot"));
    assert!(volumes.iter().any(|v| v["status"] == "lost"));
    for vol in volumes {
        // The HTTP API's volume object (README, "A volume"), plus its op.
        let info: volmgr::agent::api::VolumeInfo =
            serde_json::from_value(vol.clone()).unwrap_or_else(|e| panic!("{e}: {vol}"));
        assert!(["data", "snapshot"].contains(&vol["kind"].as_str().unwrap()));
        assert!(["live", "lost"].contains(&vol["status"].as_str().unwrap()));
        assert_eq!(info.created_at.len(), "2026-01-01T00:00:00.000Z".len());
        assert!(info.created_at.starts_with("2026-01-01T") && info.created_at.ends_with('Z'));
        assert!(vol.get("created_at_ms").is_none() && vol["op"].is_string());
    }
    assert_eq!(v["orphans"][0]["kind"], "data");
    assert_eq!(v["pending"][0]["action"], "create");
    assert!(v["pending"][0]["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn state_at_seq_past_the_end_of_the_journal_exits_1() {
    let dir = story_journal();
    let last = story().len();
    let run = journal_cmd(dir.path(), "state", &["--at-seq", &(last + 1).to_string()]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "past the end of the journal: its last record is seq {last}"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    let run = journal_cmd(dir.path(), "state", &["--at-seq", &last.to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A range past the journal's end printed nothing and said nothing, like
/// a journal with no record in it.
#[test]
fn dump_of_a_range_past_the_end_says_where_the_records_end() {
    let dir = story_journal();
    let last = story().len();
    let from = (last + 5).to_string();
    let run = journal_cmd(dir.path(), "dump", &["--from-seq", &from]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "no record matches sequence numbers {from}.. (the journal's records end at seq {last}) (nothing printed)"
        )),
        "{}",
        run.stderr
    );
    // A range holding records prints them and says nothing on stderr.
    let run = journal_cmd(dir.path(), "dump", &["--from-seq", "2", "--to-seq", "3"]);
    assert_eq!(
        run.stdout.lines().count(),
        2,
        "two records (piped: no header): {}",
        run.stdout
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn dump_filtered_on_a_volume_no_record_names_says_so_on_stderr() {
    let dir = story_journal();
    let run = journal_cmd(dir.path(), "dump", &["--volume", "no-such-volume"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("no record matches volume no-such-volume (nothing printed)"),
        "{}",
        run.stderr
    );
    // A filter that matches says nothing on stderr.
    let run = journal_cmd(dir.path(), "dump", &["--volume", "web-data"]);
    assert!(
        !run.stdout.is_empty() && run.stderr.is_empty(),
        "{}",
        run.stderr
    );
}

#[test]
fn the_volume_column_fits_a_uuid_and_summaries_do_not_repeat_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = "0d5f8a7e-3c1b-4e7a-9b2d-6f4e3a2c1b0a";
    let mut records = story()[..2].to_vec();
    records.push(intent(50, 60, create("default", uuid, Meta::new())));
    records.push(done(50, 60, "/srv/volmgr/x", &[]));
    write_journal(dir.path(), &records, &[]);
    let run = journal_cmd(dir.path(), "dump", &["--align", "always"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    // The OP column starts at the same place on every line: the volume id
    // did not push it.
    let op_at = lines[0].find("OP").unwrap();
    for line in &lines[1..] {
        let op = &line[op_at..op_at + 8];
        assert!(op == "01940000", "{line}");
    }
    assert!(lines[3].contains(uuid) && lines[4].contains(uuid));
    for line in &lines[1..] {
        let summary = line[op_at + 36..].trim_start();
        for kind in ["intent", "outcome", "reconciled"] {
            assert!(!summary.starts_with(kind), "{line}");
        }
    }
}

/// The replay policy is one: a record the state machine refuses stops
/// `verify`, `state` and `stats` where it stops opening, naming its sequence
/// number and reason (exit 7).
#[test]
fn a_record_the_state_machine_refuses_stops_the_tool_where_it_stops_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = story()[..4].to_vec();
    // An outcome of an operation that never had an intent, then more.
    records.push(done(77, 9, "/x", &[]));
    records.extend(story()[4..6].iter().cloned());
    {
        let rt = runtime();
        let (journal, _) = Journal::<Record>::open(dir.path(), config()).unwrap();
        rt.block_on(async {
            for r in &records {
                journal.append(r).await.unwrap();
            }
            journal.close().await;
        });
    }
    let reason = format!(
        "record 5 cannot be applied: outcome for unknown operation {}",
        op(77)
    );
    let run = journal_cmd(dir.path(), "verify", &["--align", "never"]);
    assert_eq!(run.code, 7, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "open\t-\tREFUSES\tthe journal contradicts the state machine: {reason}"
        )),
        "{}",
        run.stdout
    );
    let run = journal_cmd(dir.path(), "state", &[]);
    assert_eq!(run.code, 7);
    assert!(run.stderr.contains(&reason), "{}", run.stderr);
    assert!(run.stdout.starts_with("state at seq 4 "), "{}", run.stdout);
    let run = journal_cmd(dir.path(), "stats", &["--format", "json"]);
    assert_eq!(run.code, 7);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["state"]["seq"], 4);
    assert_eq!(v["state"]["error"], reason.as_str());
}

/// The journal tool reads a journal its agent is writing (`verify` on a
/// live agent): a checkpoint or a covered segment that the writer removes
/// after the reader listed it is read as if it had been listed afterwards,
/// never reported as damage or an I/O failure. (A live `verify` failed
/// once this way under load.)
#[test]
fn a_reader_of_a_live_journal_reads_past_files_its_writer_removed_after_listing_them() {
    // Two checkpoints, the newer past the end of the first segment: that
    // segment is history to a reader replaying from the newer one.
    let probe = long_journal();
    let listed = reader::list_segments(&RealStorage, &probe.path().join("journal")).unwrap();
    assert!(listed.len() >= 3, "{listed:?}");
    let newer = listed[1].0;
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), &long_records(), &[STORY_CHECKPOINT, newer]);
    let checkpoint = |seq: u64| {
        dir.path()
            .join("checkpoints")
            .join(format!("{seq:020}.ckpt"))
    };
    let first_segment = segments(dir.path())[0].clone();

    // The older checkpoint and the segment it covers go once listed.
    let storage = FaultyStorage::new(Arc::new(RealStorage));
    storage.remove_once_listed([checkpoint(STORY_CHECKPOINT), first_segment]);
    let (chosen, attempts) = reader::choose_checkpoint(&storage, dir.path(), None).unwrap();
    assert_eq!(chosen.map(|c| c.seq), Some(newer));
    assert!(
        attempts.iter().all(|a| a.rejected.is_none()),
        "{attempts:?}"
    );
    let options = reader::Options {
        scope: reader::Scope::All {
            log_from: newer + 1,
        },
        raw: false,
        through_cache: false,
    };
    let walked = reader::read(&storage, dir.path(), &options, &mut |_| {
        reader::Flow::Continue
    })
    .expect("a history segment removed after the listing is no I/O failure");
    assert!(
        matches!(walked.verdict, Ok(LogEnd::Clean)),
        "{:?}",
        walked.verdict
    );
    assert_eq!(walked.corrupt, 0);

    // The newest checkpoint goes once listed (the writer stored two more):
    // the reader lists again and takes what is there, rejecting nothing.
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), &long_records(), &[STORY_CHECKPOINT, newer]);
    let storage = FaultyStorage::new(Arc::new(RealStorage));
    storage.remove_once_listed([dir
        .path()
        .join("checkpoints")
        .join(format!("{newer:020}.ckpt"))]);
    let (chosen, attempts) = reader::choose_checkpoint(&storage, dir.path(), None).unwrap();
    assert_eq!(chosen.map(|c| c.seq), Some(STORY_CHECKPOINT));
    assert!(
        attempts.iter().all(|a| a.rejected.is_none()),
        "{attempts:?}"
    );
}
