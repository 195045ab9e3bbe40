//! Support shared by the journal test files (`journal_corruption`,
//! `journal_props`, `journal_regressions`, `journal_smoke`,
//! `journal_tool`, `journal_truncation`): the test record type [`Rec`],
//! journal configurations and an open that skips syncs, byte-level file
//! edits, the serialising guard of binaries that spawn processes, fixed
//! operation ids and times for real `state::Record`s, and `volmgr journal`
//! run as the real binary with a deadline.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use volmgr::journal::{Journal, JournalConfig, JournalError, JournalRecord, Recovery};
use volmgr::storage::RealStorage;
use volmgr::storage::unsynced::UnsyncedStorage;

/// The journal tests' record: a number and some text. Its kind byte is
/// `n % 251`, so frames of one journal carry many kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rec {
    pub n: u64,
    pub text: String,
}

impl Rec {
    pub fn new(n: u64, text: impl Into<String>) -> Rec {
        Rec {
            n,
            text: text.into(),
        }
    }
}

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        u8::try_from(self.n % 251).expect("a remainder of 251 fits a byte")
    }
}

/// A journal configuration with `segment_size`-byte segments.
pub fn config(segment_size: u64) -> JournalConfig {
    JournalConfig {
        segment_size,
        ..JournalConfig::default()
    }
}

/// Opens the journal of `dir` on real files without syncs: for tests of
/// what is written, read and decided, not of durability (the decisions above
/// the storage seam are the same, and thousands of opens take seconds).
pub fn open_unsynced<R: JournalRecord>(
    dir: &Path,
    config: JournalConfig,
) -> Result<(Journal<R>, Recovery<R>), JournalError> {
    let storage = Arc::new(UnsyncedStorage::new(Arc::new(RealStorage)));
    Journal::open_with_storage(storage, dir, config)
}

/// Replaces a file's bytes in place. (`fs::write` truncates to zero first,
/// and ext4 then flushes on close, which would make a sweep take minutes.)
pub fn overwrite(path: &Path, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all_at(bytes, 0).expect("write in place");
    file.set_len(bytes.len() as u64).expect("set the length");
}

/// Holds the tests of one binary to one at a time. For binaries whose tests
/// spawn processes and reopen journals: a child forked while another test
/// holds a journal's `LOCK` keeps that flock until it execs, so a reopen
/// beside a spawn could be refused as locked.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// 2026-01-01T00:00:00Z, the time of the tests' fixed records.
pub const T0_MS: u64 = 1_767_225_600_000;

/// Operation id `n`: a fixed UUIDv7-shaped id, so journals written by tests
/// are the same bytes on every run.
pub fn op(n: u64) -> Uuid {
    Uuid::from_u128(0x0194_0000_0000_7000_8000_0000_0000_0000 | u128::from(n))
}

/// What a run of the binary printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when a signal ended it).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `volmgr ARGS` with its output drained on threads (a large output
/// cannot block it); `None` when it had not exited within `limit` and was
/// killed (a tool that blocks on a hostile file would otherwise hang the
/// test). The wait polls the child: it ends as soon as the child exits.
pub fn run_bounded(args: &[&str], limit: Duration) -> Option<Run> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volmgr");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("read the output");
            String::from_utf8(bytes).expect("the output is UTF-8")
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for volmgr") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().expect("kill volmgr");
            child.wait().expect("reap volmgr");
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Some(Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    })
}

/// Runs `volmgr journal ARGS`; panics if it has not exited after 30 s.
pub fn journal_tool(args: &[&str]) -> Run {
    let mut all = vec!["journal"];
    all.extend_from_slice(args);
    run_bounded(&all, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("volmgr journal {args:?} hung"))
}
