//! `volmgr serve` as a real process on 127.0.0.1:<ephemeral>: its address
//! comes from its `serving` log line, its token from the file it keeps in
//! its state directory; stopped with a signal ([`ServeProcess::terminate`])
//! or killed on drop. The one harness for a real agent process (the CSI tests
//! start theirs through `csi_support`, which waits on the CSI socket
//! instead of the log). Also: the `volmgr` command for one-shot runs, and an
//! [`Output`] described for assertion messages.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_volmgr");

/// Bound on waiting for the agent's own log lines (not a synchronisation
/// delay: the wait ends as soon as the line arrives).
const LOG_WAIT: Duration = Duration::from_secs(120);

pub struct ServeProcess {
    pub child: Child,
    logs: std_mpsc::Receiver<Value>,
    /// Held by the thread reading the agent's stderr after each line it
    /// reads: [`ServeProcess::stall_logs`] holds it to stop the reading.
    reading: Arc<Mutex<()>>,
    /// Every log line read so far.
    seen: Mutex<Vec<Value>>,
    pub url: String,
    pub state_dir: PathBuf,
    /// The token from `<state-dir>/token` (empty with --insecure-no-auth).
    pub token: String,
}

impl ServeProcess {
    /// Starts `volmgr serve --state-dir DIR --listen 127.0.0.1:0 ARGS...`
    /// and waits for `ready`.
    pub fn start(state_dir: &Path, args: &[&str]) -> ServeProcess {
        let mut child = serve_command(state_dir, "json", args)
            .spawn()
            .expect("spawn volmgr serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = std_mpsc::channel();
        let reading = Arc::new(Mutex::new(()));
        let gate = reading.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                drop(
                    gate.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"fields": {"message": line}}));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut p = ServeProcess {
            child,
            logs,
            reading,
            seen: Mutex::new(Vec::new()),
            url: String::new(),
            state_dir: state_dir.to_owned(),
            token: String::new(),
        };
        let serving = p.wait_for("serving");
        p.url = format!("http://{}", serving["fields"]["addr"].as_str().unwrap());
        p.token = volmgr::agent::credential::read_token_file(&state_dir.join("token"))
            .unwrap_or_default();
        p.wait_for("ready");
        p
    }

    /// The next log line whose message is `message`.
    pub fn wait_for(&self, message: &str) -> Value {
        loop {
            let line = self
                .logs
                .recv_timeout(LOG_WAIT)
                .unwrap_or_else(|e| panic!("no {message:?} log line: {e}"));
            self.seen.lock().unwrap().push(line.clone());
            if line["fields"]["message"] == message {
                return line;
            }
        }
    }

    /// Stops reading the agent's stderr (after at most the line being
    /// read) until the guard is dropped: a log reader that does not read.
    pub fn stall_logs(&self) -> MutexGuard<'_, ()> {
        self.reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every log line received so far.
    pub fn logs(&self) -> Vec<Value> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(self.logs.try_iter());
        seen.clone()
    }

    /// The first log line so far whose message is `message`.
    pub fn logged(&self, message: &str) -> Option<Value> {
        self.logs()
            .into_iter()
            .find(|l| l["fields"]["message"] == message)
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child this process spawned and has
        // not yet reaped (`self.child` is waited for only by `terminate` and
        // drop).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
    }

    /// SIGTERM, then waits for the agent to exit; returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("wait for volmgr serve")
    }
}

/// `volmgr` with none of the environment that points it at an agent, a
/// token or a state directory, and no stdin.
/// `volmgr serve --log-format FORMAT --listen 127.0.0.1:0 --state-dir DIR
/// ARGS...` at `RUST_LOG=info`, its stderr piped (where it logs), stdout
/// discarded: what [`ServeProcess::start`] and every test that reads a real
/// agent's log start.
pub fn serve_command(state_dir: &Path, log_format: &str, args: &[&str]) -> Command {
    let mut cmd = volmgr_command();
    cmd.args([
        "serve",
        "--log-format",
        log_format,
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--state-dir")
    .arg(state_dir)
    .args(args)
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

/// Runs `volmgr serve` with `args` until it exits by itself; fails (after
/// killing it) if it gets ready instead: a test of a refusal fails, never
/// hangs, when the agent starts after all. Returns its log messages (JSON
/// log lines by their message and fields, other lines as they are).
#[allow(dead_code)]
pub fn serve_until_exit(state: &Path, args: &[&str]) -> (ExitStatus, Vec<String>) {
    let mut child = serve_command(state, "json", args).spawn().unwrap();
    let mut messages = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| serde_json::json!({"fields": {"message": line}}));
        let message = value["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if message == "ready" {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent got ready: {messages:?}");
        }
        messages.push(format!("{message} {}", value["fields"]));
    }
    (child.wait().unwrap(), messages)
}

pub fn volmgr_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("VOLMGR_TOKEN")
        .env_remove("VOLMGR_AGENT")
        .env_remove("VOLMGR_STATE_DIR")
        .stdin(Stdio::null());
    cmd
}

/// A finished run's exit, stdout and stderr, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
