//! Regression tests, each opening with the story of its bug.
//!
//! Tests here that reopen a state directory or spawn processes hold
//! [`serial`]: a child process forked while this process holds a journal's
//! `LOCK` keeps the lock (flock) until it execs, so a reopen in parallel with
//! a spawn can be refused as locked.

mod journal_support;

use journal_support::serial;
use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalError, JournalRecord, LogEnd};

/// A record of many small integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counters(Vec<u64>);

impl JournalRecord for Counters {
    fn kind(&self) -> u8 {
        1
    }
}

/// The bug: bincode 2.0.1's decode limit counts every integer at its
/// in-memory width (8 bytes for a u64) while varint encoding writes small ones
/// in 1 byte, and encoding does not check the limit at all. A record of
/// 200,000 small u64s encodes to about 200 KB, under the 1 MiB frame limit, so
/// `append` wrote it durably; replay then claimed 1.6 MB against the limit,
/// got `LimitExceeded` and refused to open the journal, calling its own
/// acknowledged record corruption. Found by the property tests (a record
/// whose payload was within 16 bytes of the limit). Now `append` decodes every
/// record before writing it and refuses one that would not replay.
#[tokio::test]
// Each test runs on its own thread and runtime: the guard only orders tests.
#[allow(clippy::await_holding_lock)]
async fn a_record_under_the_frame_limit_that_would_not_decode_is_refused_not_written() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_size: 4 << 20,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::<Counters>::open(dir.path(), config.clone()).unwrap();
    let fine = Counters(vec![7; 1000]);
    assert_eq!(journal.append(&fine).await.unwrap(), 1);
    let dense = Counters(vec![1; 200_000]);
    let encoded = volmgr::journal::encode_record(&dense).unwrap();
    assert!(encoded.len() < volmgr::journal::format::MAX_PAYLOAD_LEN);
    let err = journal.append(&dense).await.unwrap_err();
    assert!(matches!(err, JournalError::Encode(_)), "{err}");
    assert!(err.to_string().contains("would not decode"), "{err}");
    assert_eq!(journal.append(&fine).await.unwrap(), 2);
    journal.close().await;
    let (_journal, recovery) = Journal::<Counters>::open(dir.path(), config).unwrap();
    assert_eq!(recovery.end, LogEnd::Clean);
    assert_eq!(recovery.records, vec![(1, fine.clone()), (2, fine)]);
}

/// The bug: checkpoints were kept in call order, not sequence order. After
/// `checkpoint(100)`, `checkpoint(50)`, `checkpoint(120)`, retention dropped
/// the checkpoint at 100 (the first in the list) and kept 50 and 120, but the
/// segments covered by 100 were already deleted: a damaged checkpoint 120
/// then fell back to 50, whose history was gone, and open refused. Now a
/// checkpoint at or before the newest one is a no-op.
#[tokio::test]
// Each test runs on its own thread and runtime: the guard only orders tests.
#[allow(clippy::await_holding_lock)]
async fn an_out_of_order_checkpoint_never_displaces_a_newer_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_size: 4096,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::<Counters>::open(dir.path(), config.clone()).unwrap();
    for _ in 0..130 {
        journal.append(&Counters(vec![1; 20])).await.unwrap();
    }
    journal.checkpoint(100, b"at 100".to_vec()).await.unwrap();
    journal.checkpoint(50, b"at 50".to_vec()).await.unwrap();
    journal.checkpoint(120, b"at 120".to_vec()).await.unwrap();
    journal.close().await;
    let ckpt_dir = dir.path().join("checkpoints");
    let kept: Vec<u64> =
        volmgr::journal::reader::list_checkpoints(&volmgr::storage::RealStorage, &ckpt_dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
    assert_eq!(kept, [100, 120]);
    // Damage the newest: open falls back to 100 and replays 101..=130.
    let newest = ckpt_dir.join(volmgr::journal::format::checkpoint_file_name(120));
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[45] ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    let (_journal, recovery) = Journal::<Counters>::open(dir.path(), config).unwrap();
    assert_eq!(recovery.checkpoint, Some((100, b"at 100".to_vec())));
    assert_eq!(recovery.rejected_checkpoints.len(), 1);
    assert_eq!(
        recovery.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (101..=130).collect::<Vec<_>>()
    );
}

/// The bug: after an invalid frame, the reader looks for a valid frame of a
/// later write batch (to tell damage from a torn write), and `dump --raw`
/// looks for the next valid frame; both tried every 8-byte offset and
/// checksummed the frame each one claimed. Crafted bytes where every offset
/// claims a 1 MiB frame made that quadratic: hours for a large segment (found
/// while building the journal tool). Both scans now have a checksum budget
/// linear in the bytes scanned; running out of it counts as "cannot be a torn
/// write" for the classifier and as "nothing further" for the raw dump.
#[test]
fn crafted_frames_claiming_huge_lengths_at_every_offset_scan_in_linear_time() {
    use volmgr::journal::format::{self, FRAME_ALIGN, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN};
    use volmgr::journal::reader::{self, SegmentEnd};

    let len = 24 << 20;
    let mut bytes = vec![0u8; len];
    bytes[..format::SEGMENT_HEADER_LEN].copy_from_slice(&format::encode_segment_header(1));
    let mut p = format::SEGMENT_HEADER_LEN;
    while p + FRAME_HEADER_LEN <= len {
        // crc 0 (wrong), len just under the limit, seq 9, batch 9.
        bytes[p + 4..p + 8]
            .copy_from_slice(&u32::try_from(MAX_PAYLOAD_LEN - 64).unwrap().to_le_bytes());
        bytes[p + 8..p + 16].copy_from_slice(&9u64.to_le_bytes());
        bytes[p + 16..p + 24].copy_from_slice(&9u64.to_le_bytes());
        p += FRAME_ALIGN;
    }
    let scan = reader::scan_segment(&bytes).expect("header is valid");
    match scan.end {
        SegmentEnd::Invalid {
            later_batch_frame, ..
        } => assert!(
            later_batch_frame.is_some(),
            "unclassifiable damage is never a torn tail"
        ),
        other @ SegmentEnd::Clean { .. } => panic!("crafted bytes accepted: {other:?}"),
    }
    assert_eq!(
        reader::find_next_valid_frame(&bytes, format::SEGMENT_HEADER_LEN),
        None
    );
}

// ---------------------------------------------------------------- the tool and open agree

mod tool {
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use volmgr::journal::format;
    use volmgr::journal::{Journal, JournalConfig, JournalError, encode_checkpoint};
    use volmgr::state::{Action, Done, Meta, OpResult, ProviderRecord, Record, State, Volume};

    use super::journal_support::op;
    pub use super::journal_support::{Run, journal_tool as journal};

    pub fn config() -> JournalConfig {
        super::journal_support::config(4096)
    }

    /// Records 1..=2n: a provider, then volumes, intent and outcome.
    pub fn records(n: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for i in 1..=n {
            let action = if i == 1 {
                Action::AddProvider(ProviderRecord {
                    id: "p".into(),
                    kind: "dir".into(),
                    config: volmgr::provider::ProviderConfig::default(),
                })
            } else {
                Action::CreateVolume {
                    provider: "p".into(),
                    volume: format!("v{i}"),
                    meta: Meta::new(),
                }
            };
            out.push(Record::Intent {
                op: op(i),
                at_ms: i,
                action,
            });
            out.push(Record::Outcome {
                op: op(i),
                at_ms: i,
                result: OpResult::Done(Done::default()),
            });
        }
        out
    }

    /// Writes `records` one batch each; returns the state after each seq.
    pub fn write(dir: &Path, records: &[Record]) -> Vec<State> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (journal, _) = Journal::<Record>::open(dir, config()).unwrap();
            let mut state = State::default();
            let mut states = vec![state.clone()];
            for r in records {
                let seq = journal.append(r).await.unwrap();
                state.apply(seq, r).unwrap();
                states.push(state.clone());
            }
            journal.close().await;
            states
        })
    }

    pub fn last_segment(dir: &Path) -> (u64, PathBuf) {
        let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("journal"))
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let n = format::parse_numbered_name(p.file_name()?.to_str()?, "seg")?;
                Some((n, p))
            })
            .collect();
        segs.sort();
        segs.pop().unwrap()
    }

    /// The `open` row of `verify --align never`: (status, detail).
    pub fn open_row(run: &Run) -> (String, String) {
        run.stdout
            .lines()
            .find_map(|l| {
                let cells: Vec<&str> = l.splitn(4, '\t').collect();
                (cells[0] == "open").then(|| (cells[2].to_owned(), cells[3].to_owned()))
            })
            .unwrap_or_else(|| panic!("no open row:\n{}", run.stdout))
    }

    pub fn open(
        dir: &Path,
    ) -> Result<(Journal<Record>, volmgr::journal::Recovery<Record>), JournalError> {
        Journal::open(dir, config())
    }

    /// The four shapes a next segment had in the issue.
    pub fn shapes(name: u64) -> Vec<(&'static str, Vec<u8>)> {
        let header = format::encode_segment_header(name);
        let mut stale = header.to_vec();
        stale[format::SEG_CRC_OFFSET] ^= 0x01;
        stale.resize(4096, 0);
        vec![
            ("an empty file", Vec::new()),
            ("10 bytes of a header", header[..10].to_vec()),
            ("4096 zero bytes", vec![0; 4096]),
            ("a header with a stale checksum", stale),
        ]
    }

    /// A checkpoint file at `seq` holding `state` plus a volume whose meta
    /// carries `ballast` bytes, written in chunks so that this process
    /// never holds it (its own peak memory would otherwise be what a child
    /// it spawns reports: Linux keeps the high-water mark across exec).
    pub fn big_checkpoint(dir: &Path, seq: u64, state: &State, ballast: usize) -> u64 {
        use std::io::Write;
        const MARKER: &str = "@@ballast@@";
        let mut state = state.clone();
        state.volumes.insert(
            "ballast".into(),
            Volume {
                id: "ballast".into(),
                provider: "p".into(),
                kind: volmgr::state::VolumeKind::Data,
                parent: None,
                meta: Meta::from([("b".to_owned(), MARKER.to_owned())]),
                created_at_ms: 0,
                location: String::new(),
                status: volmgr::state::VolumeStatus::Live,
                op: op(9999),
                details: Meta::new(),
            },
        );
        let small = encode_checkpoint(&state).unwrap();
        let at = small
            .windows(MARKER.len())
            .position(|w| w == MARKER.as_bytes())
            .unwrap();
        // The marker's length prefix is one varint byte; the ballast's is
        // 252 and a u32 (bincode's varint for lengths up to 2^32).
        assert_eq!(small[at - 1] as usize, MARKER.len());
        let prefix = &small[..at - 1];
        let suffix = &small[at + MARKER.len()..];
        let mut len_prefix = vec![252u8];
        len_prefix.extend_from_slice(&u32::try_from(ballast).unwrap().to_le_bytes());
        let payload_len = (prefix.len() + len_prefix.len() + ballast + suffix.len()) as u64;

        let mut header = [0u8; format::CHECKPOINT_HEADER_LEN];
        header[..8].copy_from_slice(&format::CHECKPOINT_MAGIC);
        header[format::CKPT_VERSION_OFFSET..format::CKPT_VERSION_OFFSET + 4]
            .copy_from_slice(&format::FORMAT_VERSION.to_le_bytes());
        header[format::CKPT_SEQ_OFFSET..format::CKPT_SEQ_OFFSET + 8]
            .copy_from_slice(&seq.to_le_bytes());
        header[format::CKPT_LEN_OFFSET..format::CKPT_LEN_OFFSET + 8]
            .copy_from_slice(&payload_len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..format::CKPT_CRC_OFFSET]);
        let path = dir
            .join("checkpoints")
            .join(format::checkpoint_file_name(seq));
        let file = std::fs::File::create(&path).unwrap();
        let mut out = std::io::BufWriter::new(&file);
        out.write_all(&header).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for part in [prefix, &len_prefix[..]] {
            crc.update(part);
            out.write_all(part).unwrap();
        }
        let mut left = ballast;
        while left > 0 {
            let n = left.min(chunk.len());
            crc.update(&chunk[..n]);
            out.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        crc.update(suffix);
        out.write_all(suffix).unwrap();
        out.flush().unwrap();
        drop(out);
        file.write_all_at(
            &crc.finalize().to_le_bytes(),
            format::CKPT_CRC_OFFSET as u64,
        )
        .unwrap();
        format::CHECKPOINT_HEADER_LEN as u64 + payload_len
    }
}

/// The bug (issue 15): when the next segment, named by the next sequence
/// number, was an empty file, 10 bytes of a header, 4096 zero bytes or a
/// header with a stale checksum, `volmgr journal verify` called the journal
/// corrupt (its own frame reader said so) while `volmgr serve` opened it and
/// ran (the journal's reader took it for a torn segment creation). Both now
/// judge through one reader: a torn segment creation (journal-format.md) is a
/// torn tail at offset 0 for both, opening rewrites the header, and verify
/// then says clean. Named for any other sequence number, it is corruption for
/// both, at the same file and offset.
#[test]
fn a_next_segment_whose_creation_did_not_land_is_judged_alike_by_verify_and_open() {
    let _serial = serial();
    for shape in 0..4 {
        for name_offset in [0u64, 1] {
            let dir = tempfile::tempdir().unwrap();
            let records = tool::records(5);
            tool::write(dir.path(), &records);
            let next = records.len() as u64 + 1 + name_offset;
            let (what, bytes) = tool::shapes(next).swap_remove(shape);
            let name = volmgr::journal::format::segment_file_name(next);
            let path = dir.path().join("journal").join(&name);
            std::fs::write(&path, &bytes).unwrap();
            let d = dir.path().to_str().unwrap();

            let verified = tool::journal(&["verify", d, "--align", "never"]);
            let (status, detail) = tool::open_row(&verified);
            let opened = tool::open(dir.path());
            if name_offset == 0 {
                assert_eq!(verified.code, 6, "{what}: {}", verified.stdout);
                assert_eq!(status, "repairs", "{what}");
                assert!(
                    detail.starts_with(&format!("truncates the torn tail at {name}:0 ")),
                    "{what}: {detail}"
                );
                let (journal, recovery) = opened.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    matches!(&recovery.end, LogEnd::TornTail { segment, offset: 0, .. } if *segment == path),
                    "{what}: {:?}",
                    recovery.end
                );
                drop(journal);
                let again = tool::journal(&["verify", d, "--align", "never"]);
                assert_eq!(again.code, 0, "{what} after open: {}", again.stdout);
                // The repaired segment takes appends, and they replay.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let extra = tool::records(6).pop().unwrap();
                let (journal, _) = tool::open(dir.path()).unwrap();
                let seq = rt.block_on(journal.append(&extra)).unwrap();
                assert_eq!(seq, next);
                drop(journal);
                let (_journal, recovery) = tool::open(dir.path()).unwrap();
                assert_eq!(recovery.records.last(), Some(&(next, extra)), "{what}");
            } else {
                assert_eq!(verified.code, 7, "{what} misnamed: {}", verified.stdout);
                assert_eq!(status, "REFUSES", "{what} misnamed");
                match opened {
                    Err(JournalError::Corrupt {
                        file,
                        offset,
                        reason,
                    }) => {
                        assert_eq!(
                            detail,
                            format!("corrupt at {name}:{offset}: {reason}"),
                            "{what} misnamed"
                        );
                        assert_eq!(file, path);
                    }
                    other => panic!("{what} misnamed: open gave {:?}", other.map(|_| ())),
                }
            }
        }
    }
}

fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// The attack (issue 16, item 13): a FIFO put in place of a segment or a
/// checkpoint made `verify`, `stats`, `dump` and `state` block forever in
/// `open(2)` (and the agent's open would block in `read(2)`). Every reader
/// now opens journal files with `O_NONBLOCK` and refuses anything `fstat`
/// does not call a regular file, naming it.
#[test]
fn a_fifo_in_place_of_a_segment_or_checkpoint_is_refused_naming_it_and_nothing_blocks() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let records = tool::records(40);
    let states = tool::write(dir.path(), &records);
    let d = dir.path().to_str().unwrap();

    // A FIFO as the checkpoint: rejected, and opening falls back past it.
    let ckpt = tool::big_checkpoint(dir.path(), 30, &states[30], 0);
    assert!(ckpt > 0);
    let ckpt_path = dir
        .path()
        .join("checkpoints")
        .join(volmgr::journal::format::checkpoint_file_name(60));
    mkfifo(&ckpt_path);
    for sub in ["verify", "stats", "dump", "state"] {
        let run = tool::journal(&[sub, d]);
        assert_eq!(
            run.code,
            if sub == "verify" || sub == "stats" {
                7
            } else {
                0
            },
            "{sub}: {}{}",
            run.stdout,
            run.stderr
        );
    }
    let run = tool::journal(&["verify", d, "--align", "never"]);
    assert!(
        run.stdout.contains(&format!(
            "{}\tCORRUPT\tnot a regular file (a FIFO)",
            ckpt_path.file_name().unwrap().to_str().unwrap()
        )),
        "{}",
        run.stdout
    );
    let (journal, recovery) = tool::open(dir.path()).unwrap();
    assert_eq!(recovery.checkpoint.as_ref().map(|c| c.0), Some(30));
    assert_eq!(recovery.rejected_checkpoints.len(), 1);
    assert_eq!(recovery.rejected_checkpoints[0].0, ckpt_path);
    drop(journal);
    std::fs::remove_file(&ckpt_path).unwrap();

    // A FIFO as the last segment: corruption naming it, for every reader.
    let (_, last) = tool::last_segment(dir.path());
    std::fs::remove_file(&last).unwrap();
    mkfifo(&last);
    let name = last.file_name().unwrap().to_str().unwrap().to_owned();
    for sub in ["verify", "stats", "dump", "state"] {
        let run = tool::journal(&[sub, d]);
        assert_eq!(run.code, 7, "{sub}: {}{}", run.stdout, run.stderr);
        let all = run.stdout + &run.stderr;
        assert!(
            all.contains(&name) && all.contains("not a regular file (a FIFO)"),
            "{sub}: {all}"
        );
    }
    // Opening refuses in a thread the test can give up on.
    let (tx, rx) = std::sync::mpsc::channel();
    let state_dir = dir.path().to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(tool::open(&state_dir).map(|_| ()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(Err(JournalError::Corrupt {
            file,
            offset: 0,
            reason,
        })) => {
            assert_eq!(file, last);
            assert_eq!(reason.to_string(), "not a regular file (a FIFO)");
        }
        Ok(other) => panic!("open of a FIFO segment gave {other:?}"),
        Err(_) => panic!("open blocked on a FIFO segment"),
    }
}

/// This process's own peak resident memory (KiB): a child inherits it as
/// its starting high-water mark across exec.
fn own_peak_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Peak resident memory (KiB) and exit code of `volmgr journal <args>`,
/// measured by `wait4` on the child alone.
fn peak_rss_kib(args: &[&str]) -> (i64, i32) {
    // Reaped by wait4 below (Child::wait would lose the rusage).
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .arg("journal")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into valid locals.
    let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(rc, pid);
    assert!(libc::WIFEXITED(status));
    (usage.ru_maxrss, libc::WEXITSTATUS(status))
}

/// The attack (issue 16, item 13): six checkpoints of 200 MB each made the
/// read-only tool hold every decoded checkpoint at once (1.39 GB). The tool
/// now reads checkpoints one at a time and keeps only the one replay starts
/// from, so its peak memory is bounded by about three checkpoints (the kept
/// one, plus the bytes and the decoded state of the one being read) however
/// many there are. Measured as the child's peak RSS, against the same
/// journal with one such checkpoint.
#[test]
fn many_large_checkpoints_are_read_one_at_a_time() {
    let _serial = serial();
    const BALLAST: usize = 24 << 20;
    let dir = tempfile::tempdir().unwrap();
    let records = tool::records(10);
    let states = tool::write(dir.path(), &records);
    let d = dir.path().to_str().unwrap().to_owned();
    let mut size = 0;
    let mut one: Vec<(String, i64)> = Vec::new();
    let mut many: Vec<(String, i64)> = Vec::new();
    for count in [1u64, 6] {
        for seq in 1..=count {
            // Newest last, so every one is a valid checkpoint of its seq.
            size = tool::big_checkpoint(
                dir.path(),
                12 + seq,
                &states[usize::try_from(12 + seq).unwrap()],
                BALLAST,
            );
        }
        for sub in ["verify", "stats", "state", "dump"] {
            let (kib, code) = peak_rss_kib(&[sub, &d]);
            assert_eq!(code, 0, "{sub} with {count} checkpoints");
            if count == 1 { &mut one } else { &mut many }.push((sub.to_owned(), kib));
        }
    }
    let size_kib = (size / 1024).cast_signed();
    let own = own_peak_kib();
    for ((sub, base), (_, peak)) in one.iter().zip(&many) {
        // The figures must be the tool's, not this process's inherited mark:
        // reading even one checkpoint takes more than its size.
        assert!(
            *base > own && *base > size_kib,
            "{sub}: measured {base} KiB, this process peaked at {own} KiB: not the tool's figure"
        );
        println!(
            "{sub}: peak RSS {peak} KiB with 6 checkpoints of {size_kib} KiB, {base} KiB with one"
        );
        // Holding all six would add five decoded checkpoints to the peak.
        assert!(
            *peak < base + 2 * size_kib,
            "{sub}: {peak} KiB with six checkpoints vs {base} KiB with one ({size_kib} KiB each)"
        );
    }
}
