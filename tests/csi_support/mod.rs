//! An agent process serving the CSI plugin, for the CSI tests: started as
//! `volmgr serve --csi-endpoint unix://... --node-id ...` on a fresh (or
//! given) state directory, reached over its socket with the plugin's own
//! client, killed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use volmgr::csi::client::CsiClients;
use volmgr::csi::proto::ProbeRequest;

/// Node id the test agents serve.
pub const NODE: &str = "test-node";
/// How long an agent may take to open and reconcile (a loaded CI machine).
const READY_WITHIN: Duration = Duration::from_secs(120);

pub struct CsiAgent {
    child: Option<Child>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl CsiAgent {
    /// Starts an agent on `state_dir` with the CSI socket `socket`; `extra`
    /// are further `serve` flags (`--provider-kind btrfs ...`).
    pub fn start(state_dir: &Path, socket: &Path, extra: &[String]) -> CsiAgent {
        let log = state_dir.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_volmgr"))
            .arg("serve")
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--csi-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["--node-id", NODE])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn volmgr serve");
        CsiAgent {
            child: Some(child),
            state_dir: state_dir.to_owned(),
            socket: socket.to_owned(),
            log,
        }
    }

    /// Connects once the plugin probes ready (polls until it does, or fails
    /// after [`READY_WITHIN`] or when the agent exits).
    pub async fn ready(&mut self) -> CsiClients {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "agent exited ({status}) before ready; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(mut c) = CsiClients::connect(&self.socket).await
                && let Ok(r) = c.identity.probe(ProbeRequest {}).await
                && r.into_inner().ready == Some(true)
            {
                return c;
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "agent not ready within {READY_WITHIN:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for the clean shutdown; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        child.wait().ok().and_then(|s| s.code())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for CsiAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this process runs as root (bind mounts need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
