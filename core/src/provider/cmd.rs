//! A small, safe runner for the external commands of the real providers
//! (`btrfs`, `zfs`, `zpool`).
//!
//! - A program runs with its arguments as separate `OsString`s: never through
//!   a shell, so no quoting, globbing or word splitting can happen.
//! - Fixed flags are `&'static str` ([`Cmd::arg`]); anything built from user
//!   input goes through [`Cmd::user_arg`] (refused if it could be read as a
//!   flag: empty, or starting with `-`) or [`Cmd::path_arg`] (absolute paths
//!   only, so a path can never start with `-` either). [`guard`] is the same
//!   check for callers that assemble arguments themselves.
//! - stdout and stderr are captured (bounded) or streamed ([`Cmd::run_to`],
//!   [`Cmd::run_from`]); stdin is `/dev/null` unless streamed in.
//! - The child runs with `LC_ALL=C` (messages the provider may match on).
//!   No `pre_exec` hook, so std spawns with `posix_spawn` (vfork-like): a
//!   forked copy of the process would hold every descriptor, the journal's
//!   `LOCK` included, until its exec. A child is *not* killed when the manager
//!   is (`PR_SET_PDEATHSIG` would need that hook): run the host agent so its
//!   supervisor stops the whole process group or cgroup (systemd does), or a
//!   `btrfs receive` may outlive a killed manager while the next open reconciles.
//! - An optional timeout kills the child (SIGKILL) and reports it.
//! - Failures map to [`ProviderError::Command`] carrying the command line, the
//!   exit status and the child's stderr; a program that cannot be started is a
//!   `Command` error with status `not started`.
//! - Every child started is counted by program name ([`CommandCount`]: one
//!   relaxed atomic increment per command, process-wide), so benchmarks and
//!   tests can read how many `zfs` or `btrfs` commands a verb ran.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::ProviderError;

/// Captured stdout is cut at this size (inventory listings stay far below).
pub const MAX_CAPTURED_STDOUT: usize = 64 << 20;
/// Only the last this many bytes of stderr are kept.
pub const MAX_CAPTURED_STDERR: usize = 64 << 10;

/// Refuses an argument derived from user input that could be read as a flag.
pub fn guard(arg: &str) -> Result<&str, ProviderError> {
    if arg.is_empty() {
        return Err(ProviderError::Other(
            "refusing an empty command argument".into(),
        ));
    }
    if arg.starts_with('-') {
        return Err(ProviderError::Other(format!(
            "refusing command argument {arg:?}: it starts with '-' and could be read as a flag"
        )));
    }
    if arg.contains('\0') {
        return Err(ProviderError::Other(format!(
            "refusing command argument {arg:?}: it contains NUL"
        )));
    }
    Ok(arg)
}

/// Children started so far in this process, by program: `btrfs`, `zfs`,
/// `zpool`, then every other program (indexes of [`Program::slot`]).
static STARTED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The programs [`CommandCount`] tells apart, by the file name of the
/// program run (`zfs` and `/usr/sbin/zfs` are both `Zfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Btrfs,
    Zfs,
    Zpool,
    /// Anything else (`sh`, a test's helper).
    Other,
}

impl Program {
    /// The program `program` names, by its file name.
    pub fn of(program: &OsStr) -> Program {
        match Path::new(program).file_name().and_then(OsStr::to_str) {
            Some("btrfs") => Program::Btrfs,
            Some("zfs") => Program::Zfs,
            Some("zpool") => Program::Zpool,
            _ => Program::Other,
        }
    }

    fn slot(self) -> usize {
        match self {
            Program::Btrfs => 0,
            Program::Zfs => 1,
            Program::Zpool => 2,
            Program::Other => 3,
        }
    }
}

/// How many commands (children actually started: a program that cannot be
/// started is not counted) the providers of this process ran, by program.
///
/// The count is process-wide, not per provider or per thread (the manager
/// runs provider calls on tokio's blocking pool): read it before and after a
/// call with nothing else running commands in the process, and
/// [`CommandCount::since`] is what that call ran.
///
/// ```
/// use volmgr_core::provider::cmd::CommandCount;
/// let before = CommandCount::snapshot();
/// // ... a provider call ...
/// let ran = CommandCount::snapshot().since(before);
/// assert_eq!(ran.zfs, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandCount {
    pub btrfs: u64,
    pub zfs: u64,
    pub zpool: u64,
    pub other: u64,
}

impl CommandCount {
    /// The counts so far, since the process started.
    pub fn snapshot() -> CommandCount {
        let read = |p: Program| STARTED[p.slot()].load(Ordering::Relaxed);
        CommandCount {
            btrfs: read(Program::Btrfs),
            zfs: read(Program::Zfs),
            zpool: read(Program::Zpool),
            other: read(Program::Other),
        }
    }

    /// The commands run between `earlier` and `self` (two snapshots).
    #[must_use]
    pub fn since(self, earlier: CommandCount) -> CommandCount {
        CommandCount {
            btrfs: self.btrfs.saturating_sub(earlier.btrfs),
            zfs: self.zfs.saturating_sub(earlier.zfs),
            zpool: self.zpool.saturating_sub(earlier.zpool),
            other: self.other.saturating_sub(earlier.other),
        }
    }

    /// The count of one program.
    pub fn of(&self, program: Program) -> u64 {
        match program {
            Program::Btrfs => self.btrfs,
            Program::Zfs => self.zfs,
            Program::Zpool => self.zpool,
            Program::Other => self.other,
        }
    }

    /// All commands, whatever the program.
    pub fn total(&self) -> u64 {
        self.btrfs + self.zfs + self.zpool + self.other
    }
}

/// What a captured run produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// Lossy UTF-8, at most [`MAX_CAPTURED_STDERR`] bytes (the tail).
    pub stderr: String,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// One command to run. Build it, then call one of the `run*` methods.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    timeout: Option<Duration>,
}

impl Cmd {
    /// `program` is a fixed name (`"btrfs"`) or a configured absolute path.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            timeout: None,
        }
    }

    /// A fixed argument written in the provider's code (a flag, a verb).
    pub fn arg(mut self, arg: &'static str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An argument built from user input (a volume id, a dataset name):
    /// refused if it could be read as a flag (see [`guard`]).
    pub fn user_arg(mut self, arg: &str) -> Result<Self, ProviderError> {
        self.args.push(guard(arg)?.into());
        Ok(self)
    }

    /// A path argument: must be absolute (so it starts with `/`, never `-`).
    pub fn path_arg(mut self, path: &Path) -> Result<Self, ProviderError> {
        if !path.is_absolute() {
            return Err(ProviderError::Other(format!(
                "refusing relative path argument {}",
                path.display()
            )));
        }
        if path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(ProviderError::Other(format!(
                "refusing path argument {} with NUL",
                path.display()
            )));
        }
        self.args.push(path.as_os_str().to_owned());
        Ok(self)
    }

    /// Kills the child if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The command line, for messages (arguments shown with `{:?}` quoting
    /// only where needed).
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            let a = a.to_string_lossy();
            s.push(' ');
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\'')
            {
                let _ = write!(s, "{a:?}");
            } else {
                s.push_str(&a);
            }
        }
        s
    }

    fn spawn(&self, stdin: Stdio, stdout: Stdio) -> Result<Child, ProviderError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped());
        let child = command.spawn().map_err(|e| ProviderError::Command {
            command: self.display(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
        STARTED[Program::of(&self.program).slot()].fetch_add(1, Ordering::Relaxed);
        Ok(child)
    }

    /// Runs to completion with stdout and stderr captured.
    pub fn run(&self) -> Result<Output, ProviderError> {
        let mut child = self.spawn(Stdio::null(), Stdio::piped())?;
        let stdout_reader =
            read_all_bounded(child.stdout.take().expect("piped"), MAX_CAPTURED_STDOUT);
        let watchdog = Watchdog::start(&child, self.timeout);
        let stderr_reader = read_tail(child.stderr.take().expect("piped"));
        let (status, timed_out) = watchdog.reap(&mut child)?;
        let stderr = join_tail(stderr_reader);
        let stdout = stdout_reader
            .join()
            .map_err(|_| ProviderError::Other("stdout reader panicked".into()))?;
        self.check(status, timed_out, &stderr)?;
        Ok(Output { stdout, stderr })
    }

    /// Runs with stdout streamed to `out`; returns the bytes written and the
    /// stderr. A failing `out` kills the child and is reported as I/O.
    pub fn run_to(&self, out: &mut dyn Write) -> Result<(u64, String), ProviderError> {
        let mut child = self.spawn(Stdio::null(), Stdio::piped())?;
        let mut stdout: ChildStdout = child.stdout.take().expect("piped");
        let watchdog = Watchdog::start(&child, self.timeout);
        let stderr_reader = read_tail(child.stderr.take().expect("piped"));
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        let mut out_error = None;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = out.write_all(&buf[..n]) {
                        out_error = Some(e);
                        let _ = child.kill();
                        break;
                    }
                    bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out_error = Some(e);
                    let _ = child.kill();
                    break;
                }
            }
        }
        drop(stdout);
        let (status, timed_out) = watchdog.reap(&mut child)?;
        let stderr = join_tail(stderr_reader);
        if let Some(e) = out_error {
            return Err(ProviderError::io(
                format!("streaming the output of `{}`", self.display()),
                e,
            ));
        }
        self.check(status, timed_out, &stderr)?;
        Ok((bytes, stderr))
    }

    /// Runs with `input` streamed to stdin; stdout and stderr captured. If
    /// the child exits early, its own error is reported (not the broken
    /// pipe); a failing `input` kills the child and is reported as I/O.
    pub fn run_from(&self, input: &mut dyn Read) -> Result<(Output, u64), ProviderError> {
        let mut child = self.spawn(Stdio::piped(), Stdio::piped())?;
        let stdin: ChildStdin = child.stdin.take().expect("piped");
        let stdout_reader = read_all_bounded(child.stdout.take().expect("piped"), 1 << 20);
        let watchdog = Watchdog::start(&child, self.timeout);
        let stderr_reader = read_tail(child.stderr.take().expect("piped"));
        let (bytes, input_error) = pump(input, stdin);
        if input_error.is_some() {
            let _ = child.kill();
        }
        let (status, timed_out) = watchdog.reap(&mut child)?;
        let stderr = join_tail(stderr_reader);
        let stdout = stdout_reader.join().unwrap_or_default();
        if let Some(e) = input_error {
            return Err(ProviderError::io(
                format!("reading the input of `{}`", self.display()),
                e,
            ));
        }
        self.check(status, timed_out, &stderr)?;
        Ok((Output { stdout, stderr }, bytes))
    }

    fn check(
        &self,
        status: ExitStatus,
        timed_out: bool,
        stderr: &str,
    ) -> Result<(), ProviderError> {
        if status.success() && !timed_out {
            return Ok(());
        }
        let status = if timed_out {
            format!(
                "timed out after {:?} and was killed",
                self.timeout.unwrap_or_default()
            )
        } else if let Some(code) = status.code() {
            format!("exit status {code}")
        } else if let Some(sig) = status.signal() {
            format!("killed by signal {sig}")
        } else {
            status.to_string()
        };
        Err(ProviderError::Command {
            command: self.display(),
            status,
            stderr: stderr.to_owned(),
        })
    }
}

/// Copies `input` to the child's stdin until EOF. A broken pipe (the child
/// exited) ends the copy without an error: the child's status tells why.
fn pump(input: &mut dyn Read, mut stdin: ChildStdin) -> (u64, Option<io::Error>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return (bytes, None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (bytes, Some(e)),
        };
        match stdin.write_all(&buf[..n]) {
            Ok(()) => bytes += n as u64,
            Err(_) => return (bytes, None),
        }
    }
}

fn read_all_bounded(mut r: impl Read + Send + 'static, limit: usize) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        out
    })
}

fn read_tail(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > 2 * MAX_CAPTURED_STDERR {
                        out.drain(..out.len() - MAX_CAPTURED_STDERR);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if out.len() > MAX_CAPTURED_STDERR {
            out.drain(..out.len() - MAX_CAPTURED_STDERR);
        }
        out
    })
}

fn join_tail(h: JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
}

/// Kills the child when its deadline passes, never after it has been reaped
/// (so a recycled pid is never hit): the reaper first waits with `WNOWAIT`,
/// then tells the watchdog to stand down, then reaps.
struct Watchdog {
    shared: Option<(Arc<Watch>, JoinHandle<()>)>,
}

type Watch = (Mutex<WatchState>, Condvar);

#[derive(Default)]
struct WatchState {
    exited: bool,
    killed: bool,
}

impl Watchdog {
    fn start(child: &Child, timeout: Option<Duration>) -> Watchdog {
        let Some(timeout) = timeout else {
            return Watchdog { shared: None };
        };
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let pid = child.id().cast_signed();
        let s = shared.clone();
        let handle = std::thread::spawn(move || {
            let (lock, cond) = &*s;
            let state = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (mut state, _) = cond
                .wait_timeout_while(state, timeout, |st| !st.exited)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !state.exited {
                // SAFETY: the child has not been reaped (the reaper sets
                // `exited` under this lock before reaping), so `pid` is ours.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                state.killed = true;
            }
        });
        Watchdog {
            shared: Some((shared, handle)),
        }
    }

    /// Waits for the child to exit; returns its status and whether the
    /// watchdog killed it.
    fn reap(self, child: &mut Child) -> Result<(ExitStatus, bool), ProviderError> {
        let mut killed = false;
        if let Some((shared, handle)) = self.shared {
            // Wait for exit without reaping, so the pid stays reserved.
            loop {
                // SAFETY: siginfo_t is plain data; waitid fills it.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let r = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        child.id() as libc::id_t,
                        &raw mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if r == 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(ProviderError::io("waiting for a command", e));
                }
            }
            let (lock, cond) = &*shared;
            {
                let mut st = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                st.exited = true;
                killed = st.killed;
                cond.notify_all();
            }
            let _ = handle.join();
        }
        let status = child
            .wait()
            .map_err(|e| ProviderError::io("waiting for a command", e))?;
        Ok((status, killed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_that_could_be_flags_are_refused() {
        for bad in ["-rf", "--force", "-", ""] {
            assert!(guard(bad).is_err(), "{bad:?} accepted");
            assert!(Cmd::new("true").user_arg(bad).is_err());
        }
        assert!(guard("vol-1").is_ok());
        assert!(Cmd::new("true").path_arg(Path::new("rel/x")).is_err());
        assert!(Cmd::new("true").path_arg(Path::new("/abs/-x")).is_ok());
    }

    #[test]
    fn arguments_reach_the_program_verbatim_without_a_shell() {
        let out = Cmd::new("printf")
            .arg("%s|")
            .user_arg("a b;$(echo no)*")
            .unwrap()
            .run()
            .unwrap();
        assert_eq!(out.stdout_str(), "a b;$(echo no)*|");
    }

    #[test]
    fn failure_carries_status_and_stderr() {
        let err = Cmd::new("sh")
            .arg("-c")
            .arg("echo boom >&2; exit 3")
            .run()
            .unwrap_err();
        match err {
            ProviderError::Command { status, stderr, .. } => {
                assert_eq!(status, "exit status 3");
                assert_eq!(stderr.trim(), "boom");
            }
            other => panic!("{other:?}"),
        }
        let err = Cmd::new("/nonexistent/program").run().unwrap_err();
        assert!(
            matches!(err, ProviderError::Command { ref status, .. } if status == "not started"),
            "{err:?}"
        );
    }

    #[test]
    fn streams_in_and_out() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let (n, _) = Cmd::new("head")
            .arg("-c")
            .arg("3000000")
            .arg("/dev/zero")
            .run_to(&mut out)
            .unwrap();
        assert_eq!(n, 3_000_000);
        assert_eq!(out.len(), 3_000_000);
        let (output, n) = Cmd::new("wc")
            .arg("-c")
            .run_from(&mut data.as_slice())
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(output.stdout_str().trim(), "3000000");
        // A child that exits early reports its own failure, not a broken pipe.
        let err = Cmd::new("sh")
            .arg("-c")
            .arg("head -c 10 >/dev/null; echo early >&2; exit 4")
            .run_from(&mut data.as_slice())
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Command { ref status, .. } if status == "exit status 4"),
            "{err:?}"
        );
    }

    #[test]
    fn programs_are_told_apart_by_file_name() {
        for (program, want) in [
            ("zfs", Program::Zfs),
            ("/usr/sbin/zfs", Program::Zfs),
            ("zpool", Program::Zpool),
            ("/sbin/btrfs", Program::Btrfs),
            ("zfs-helper", Program::Other),
            ("/zfs/sh", Program::Other),
            ("", Program::Other),
        ] {
            assert_eq!(Program::of(OsStr::new(program)), want, "{program:?}");
        }
    }

    /// `zpool` is a program no other unit test of this library runs, so
    /// its count moves only by this test's commands (the `other` count is
    /// shared with the tests running `sh`, `printf`... beside it).
    #[test]
    fn every_started_child_is_counted_under_its_program() {
        let dir = tempfile::tempdir().unwrap();
        let zpool = dir.path().join("zpool");
        let truth = ["/bin/true", "/usr/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("true(1) is installed");
        std::os::unix::fs::symlink(truth, &zpool).unwrap();
        let before = CommandCount::snapshot();
        Cmd::new(&zpool).run().unwrap();
        let err = Cmd::new(&zpool).arg("x").run_to(&mut io::sink());
        assert!(err.is_ok(), "{err:?}");
        Cmd::new(&zpool).run_from(&mut &b"in"[..]).unwrap();
        // Not started: not counted.
        let missing = dir.path().join("missing").join("zpool");
        assert!(Cmd::new(&missing).run().is_err());
        let ran = CommandCount::snapshot().since(before);
        assert_eq!(ran.zpool, 3, "{ran:?}");
        assert_eq!(ran.of(Program::Zpool), 3);
        assert!(ran.total() >= 3);
        assert_eq!(before.since(CommandCount::snapshot()).zpool, 0);
    }

    #[test]
    fn timeout_kills_the_child_and_says_so() {
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(100))
            .run()
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Command { ref status, .. } if status.starts_with("timed out")),
            "{err:?}"
        );
        // A quick command under a timeout is unaffected.
        Cmd::new("true")
            .timeout(Duration::from_secs(30))
            .run()
            .unwrap();
    }
}
