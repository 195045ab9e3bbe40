//! `volmgr serve` as a real process on 127.0.0.1:<ephemeral>: its address
//! comes from its `serving` log line, its token from the file it keeps in
//! its state directory; killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_volmgr");

/// Bound on waiting for the agent's own log lines (not a synchronisation
/// delay: the wait ends as soon as the line arrives).
const LOG_WAIT: Duration = Duration::from_secs(120);

pub struct ServeProcess {
    pub child: Child,
    logs: std_mpsc::Receiver<Value>,
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
        let mut child = Command::new(BIN)
            .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env_remove("VOLMGR_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volmgr serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
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

    /// Every log line received so far.
    pub fn logs(&self) -> Vec<Value> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(self.logs.try_iter());
        seen.clone()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
