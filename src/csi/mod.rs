//! The CSI plugin: Kubernetes and Nomad drive volmgr through the Container
//! Storage Interface (v1.12.0) on a unix socket, served beside the HTTP API
//! on the same [`Manager`] (one process, one journal, one lock).
//!
//! [`CsiServer`] binds the socket (mode 0600) first and answers every
//! Controller and Node call with UNAVAILABLE (and Probe with `ready: false`)
//! until [`CsiServer::ready`] hands it the opened and reconciled manager.
//! The parts: `identity` (plugin info, capabilities, probe), `controller`
//! (volumes, clones, capacity, expansion), `snapshots`, `checks` (request
//! validation), `node` and `mount` (bind mounts at the CO's target paths,
//! volume statistics), `names` (CSI names to volume ids, the meta keys the
//! plugin records, list tokens), `status` (manager errors to the spec's gRPC
//! codes) and `client` (the CO's side of the socket, for tests and tools). CSI names become
//! volume ids (or hash to one when they are not valid ids), so idempotency
//! and `ListVolumes` survive restarts through the journal alone.

mod checks;
pub mod client;
mod controller;
mod identity;
mod mount;
pub mod names;
mod node;
pub mod proto;
mod snapshots;
mod status;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;

use crate::manager::{DEFAULT_PROVIDER_ID, Manager};

/// The plugin's name (`GetPluginInfo`), also the `CSIDriver` object's name.
pub const PLUGIN_NAME: &str = "volmgr.csi.local";
/// The topology key: volumes live on one node, named by its node id.
pub const TOPOLOGY_KEY: &str = "volmgr.csi.local/node";
/// Longest node id accepted (Kubernetes node names are DNS subdomains).
pub const MAX_NODE_ID_LEN: usize = 253;

/// How the plugin serves.
#[derive(Debug, Clone)]
pub struct CsiOptions {
    /// This node's id (`NodeGetInfo`, topology).
    pub node_id: String,
    /// The provider volumes are created on unless a `provider` parameter
    /// names another; its kind decides what the plugin advertises.
    pub default_provider: String,
}

impl CsiOptions {
    /// Options for `node_id` on the `default` provider; checks the id.
    pub fn new(node_id: &str) -> Result<CsiOptions, String> {
        check_node_id(node_id)?;
        Ok(CsiOptions {
            node_id: node_id.to_owned(),
            default_provider: DEFAULT_PROVIDER_ID.to_owned(),
        })
    }
}

/// A node id: 1 to 253 printable ASCII characters without spaces.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(format!(
            "node id must be 1 to {MAX_NODE_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "node id {id:?} has a space or a non-printable character"
        ));
    }
    Ok(())
}

/// This host's name, the default node id.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// The path of a CSI endpoint: `unix:///abs/path`, `unix:/abs/path` or a
/// plain absolute path.
pub fn endpoint_path(endpoint: &str) -> Result<PathBuf, String> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    let path = Path::new(path);
    if !path.is_absolute() || path.as_os_str().len() > 100 {
        return Err(format!(
            "CSI endpoint {endpoint:?} must be unix:///ABSOLUTE/PATH (at most 100 bytes)"
        ));
    }
    Ok(path.to_owned())
}

/// What every service shares: the options and, once ready, the manager.
#[derive(Debug)]
pub(crate) struct Plugin {
    options: CsiOptions,
    manager: OnceLock<Manager>,
    /// Serialises mounts and unmounts (rare, and racing ones on one target
    /// path must not interleave).
    node_lock: tokio::sync::Mutex<()>,
}

impl Plugin {
    /// The manager, or UNAVAILABLE while it opens.
    fn manager(&self) -> Result<&Manager, Status> {
        self.manager
            .get()
            .ok_or_else(|| Status::unavailable("starting: the journal is being opened"))
    }
}

/// The CSI gRPC server of one node.
#[derive(Debug, Clone)]
pub struct CsiServer {
    plugin: Arc<Plugin>,
}

impl CsiServer {
    pub fn new(options: CsiOptions) -> CsiServer {
        CsiServer {
            plugin: Arc::new(Plugin {
                options,
                manager: OnceLock::new(),
                node_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Starts answering with `manager` (opened and reconciled). Returns the
    /// manager back if the server already has one.
    pub fn ready(&self, manager: Manager) -> Result<(), Manager> {
        self.plugin.manager.set(manager)
    }

    /// Binds `path` as a unix socket readable and writable by its owner only
    /// (0600), replacing a stale socket file left by a killed agent. Refuses a
    /// path that exists and is not a socket, and a socket directory another
    /// user could change (the walk of `fsutil::trust`, the state directory's
    /// rule: every directory on the way owned by root or us and not group- or
    /// other-writable, a sticky one like `/tmp` as an ancestor only). In such
    /// a directory a local user could put a socket of its own at the path
    /// before the agent starts, or between two runs, and take the CO's calls
    /// (with whatever secrets it sends), or swap the path for a symlink
    /// while the agent sets the socket's mode.
    pub fn bind(path: &Path) -> io::Result<UnixListener> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        use volmgr_core::fsutil::trust::{Last, Walked, check_dir_path, check_dir_path_to_create};
        let parent = path
            .parent()
            .filter(|p| path.is_absolute() && !p.as_os_str().is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: the socket path must be absolute", path.display()),
                )
            })?;
        let untrusted = |e: volmgr_core::fsutil::trust::Untrusted| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the CSI socket's directory is one another user could change: {e}; \
                     put the socket in a directory only root can write"
                ),
            )
        };
        if check_dir_path_to_create(parent, Last::RootOrEuid).map_err(untrusted)? == Walked::Missing
        {
            std::fs::create_dir_all(parent)?;
            check_dir_path(parent, Last::RootOrEuid).map_err(untrusted)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The socket is created with the umask's mode: narrowed around bind
        // so no other user can ever connect. Then checked without following
        // a symlink (no chmod by path, which would follow one).
        // SAFETY: umask only swaps the process mask; restored right after.
        let old = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener?;
        let m = std::fs::symlink_metadata(path)?;
        if !m.file_type().is_socket()
            || m.uid() != volmgr_core::fsutil::trust::euid()
            || m.mode() & 0o777 != 0o600
        {
            return Err(io::Error::other(format!(
                "{} is not the owner-only socket just bound (uid {}, mode {:o})",
                path.display(),
                m.uid(),
                m.mode() & 0o7777
            )));
        }
        Ok(listener)
    }

    /// Serves Identity, Controller and Node on `listener` until `shutdown`
    /// resolves, then lets calls in flight finish. Removes the socket file.
    pub async fn serve<F>(
        self,
        listener: UnixListener,
        shutdown: F,
    ) -> Result<(), tonic::transport::Error>
    where
        F: Future<Output = ()> + Send,
    {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        let result = tonic::transport::Server::builder()
            .add_service(proto::identity_server::IdentityServer::new(
                identity::Identity::new(self.plugin.clone()),
            ))
            .add_service(proto::controller_server::ControllerServer::new(
                controller::Controller::new(self.plugin.clone()),
            ))
            .add_service(proto::node_server::NodeServer::new(node::Node::new(
                self.plugin.clone(),
            )))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        if let Some(path) = path {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}
