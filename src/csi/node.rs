//! The CSI Node service: publish a volume as a `nosuid,nodev` bind mount of
//! its location at the CO's target path (read-only on request), unpublish
//! (idempotent), volume statistics, node info and capabilities.
//!
//! There is no staging step (`STAGE_UNSTAGE_VOLUME` is not advertised): a
//! volume is a directory on this node already. Raw block access and fs types
//! other than the one the volume lives on are `INVALID_ARGUMENT`. Mounts and
//! unmounts are serialised by one lock and run on the blocking pool.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Plugin;
use super::checks;
use super::controller::data_volume;
use super::mount::{self, BindOptions};
use super::proto::{
    self, NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
    NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, VolumeUsage,
    node_service_capability::{self, rpc},
    volume_capability::access_mode::Mode,
    volume_usage::Unit,
};

/// Longest target path accepted.
const MAX_PATH_LEN: usize = 4096;
/// Mounts stacked on one target that unpublish removes at most.
const MAX_STACKED_MOUNTS: usize = 16;

pub(crate) struct Node {
    plugin: Arc<Plugin>,
}

impl Node {
    pub(crate) fn new(plugin: Arc<Plugin>) -> Node {
        Node { plugin }
    }
}

/// A target path: absolute, no `.` or `..` components, no NUL, bounded.
fn target_path(path: &str, what: &str) -> Result<PathBuf, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    let p = Path::new(path);
    // `components()` hides `.`; the raw segments are checked too.
    let plain = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.split('/').any(|seg| seg == "." || seg == "..");
    if path.len() > MAX_PATH_LEN || !p.is_absolute() || !plain || path.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{what} {path:?} must be an absolute path without . or .. components"
        )));
    }
    Ok(p.to_owned())
}

// Called as `map_err(|e| internal(what, e))`: it takes the error as handed over.
#[allow(clippy::needless_pass_by_value)]
fn internal(what: &str, e: io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// Runs blocking node work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("node task failed: {e}")))?
}

/// Whether a mount capability's fs type can be honoured for the volume at
/// `location`: unset, or the type of the file system the volume lives on
/// (`INVALID_ARGUMENT` saying why not). Blocking (a `statfs`).
pub(crate) fn check_fs_type(location: &Path, fs_type: &str) -> Result<(), Status> {
    if fs_type.is_empty() {
        return Ok(());
    }
    let actual = mount::fs_type(location).map_err(|e| internal("examining the volume", e))?;
    if Some(fs_type) != actual {
        return Err(Status::invalid_argument(format!(
            "fs type {fs_type:?} cannot be honoured: the volume is a directory on {}",
            actual.unwrap_or("an unnamed file system")
        )));
    }
    Ok(())
}

fn publish(
    location: &Path,
    target: &Path,
    fs_type: &str,
    options: BindOptions,
) -> Result<(), Status> {
    check_fs_type(location, fs_type)?;
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Status::invalid_argument(format!(
                "target {} exists and is not a directory",
                target.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| internal("creating the target", e))?;
        }
        Err(e) => return Err(internal("examining the target", e)),
    }
    if mount::is_mount_point(target).map_err(|e| internal("reading the mount table", e))? {
        let same =
            mount::same_dir(target, location).map_err(|e| internal("examining the target", e))?;
        let s = mount::stats(target).map_err(|e| internal("examining the target", e))?;
        let mounted = BindOptions {
            readonly: s.readonly,
            noexec: s.noexec,
            noatime: s.noatime,
        };
        if same && mounted == options {
            return Ok(()); // published already, alike (idempotent)
        }
        return Err(Status::already_exists(format!(
            "{} is already published with other options or another volume",
            target.display()
        )));
    }
    mount::bind(location, target, options).map_err(|e| internal("bind mount", e))
}

/// Whether the topmost mount at `target` is the volume's bind mount: the
/// same directory as `location`, or, when that directory is gone (a lost
/// volume, removed or replaced behind the manager's back), a mount whose
/// device and root in the mount table are what a bind mount of `location`
/// showed (see [`mount::holds_bind_of`]).
fn holds_volume(target: &Path, location: &Path) -> Result<bool, Status> {
    if mount::same_dir(target, location).unwrap_or(false) {
        return Ok(true);
    }
    mount::holds_bind_of(target, location).map_err(|e| internal("reading the mount table", e))
}

/// What an unpublish may unmount at its target.
enum Published {
    /// A recorded volume's bind mount: of its location (or of what was
    /// there, for a lost volume).
    Volume(PathBuf),
    /// A volume id the manager has no record of (destroyed while still
    /// published, say): a bind mount of something below one of these
    /// provider directories, and nothing else. Without a record there is
    /// no location to match; but a mount that is not a provider's (a
    /// `/proc`, another driver's volume, whatever a confused caller names
    /// as the target) is never the plugin's to remove.
    Unrecorded(Vec<PathBuf>),
}

impl Published {
    fn holds(&self, target: &Path) -> Result<bool, Status> {
        match self {
            Published::Volume(location) => holds_volume(target, location),
            Published::Unrecorded(dirs) => {
                for dir in dirs {
                    if mount::holds_bind_below(target, dir)
                        .map_err(|e| internal("reading the mount table", e))?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Published::Volume(location) => format!("this volume ({})", location.display()),
            Published::Unrecorded(_) => {
                "a volume (the volume id is not recorded, and the mount is of nothing below a \
                 provider's directory)"
                    .to_owned()
            }
        }
    }
}

fn unpublish(published: &Published, target: &Path) -> Result<(), Status> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(internal("examining the target", e)),
        Ok(_) => {}
    }
    for _ in 0..MAX_STACKED_MOUNTS {
        if !mount::is_mount_point(target).map_err(|e| internal("reading the mount table", e))? {
            break;
        }
        if !published.holds(target)? {
            return Err(Status::failed_precondition(format!(
                "{} holds a mount that is not of {}",
                target.display(),
                published.describe()
            )));
        }
        mount::unmount(target).map_err(|e| internal("unmount", e))?;
    }
    if mount::is_mount_point(target).map_err(|e| internal("reading the mount table", e))? {
        return Err(Status::internal(format!(
            "{} still holds mounts after {MAX_STACKED_MOUNTS} unmounts",
            target.display()
        )));
    }
    // The spec: the SP deletes the file or directory *it created*. Publish
    // only ever creates a directory (a target that is anything else is
    // refused), so only a directory, and only an empty one, is removed:
    // never a tree, and never a file, symlink or device the operator or
    // the CO put there (nothing of this volume is published at it: OK).
    let removed = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(internal("removing the target", e)),
    }
}

fn usage(unit: Unit, total: u64, available: u64, used: u64) -> VolumeUsage {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    VolumeUsage {
        available: i(available),
        total: i(total),
        used: i(used),
        unit: unit as i32,
    }
}

#[tonic::async_trait]
impl proto::node_server::Node for Node {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let m = self.plugin.manager()?;
        let r = request.into_inner();
        checks::volume_id(&r.volume_id)?;
        let target = target_path(&r.target_path, "target_path")?;
        let Some(cap) = r.volume_capability.as_ref() else {
            return Err(Status::invalid_argument("volume_capability is required"));
        };
        checks::capability(cap)?;
        let v = data_volume(m, &r.volume_id)?;
        let flags = checks::mount_flags(cap);
        let has = |f: &str| flags.iter().any(|x| x == f);
        let options = BindOptions {
            readonly: r.readonly
                || has("ro")
                || cap.access_mode.as_ref().map(|a| a.mode)
                    == Some(Mode::SingleNodeReaderOnly as i32),
            noexec: has("noexec"),
            noatime: has("noatime"),
        };
        let fs_type = checks::fs_type(cap).to_owned();
        let location = PathBuf::from(&v.location);
        let _guard = self.plugin.node_lock.lock().await;
        blocking(move || publish(&location, &target, &fs_type, options)).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let m = self.plugin.manager()?;
        let r = request.into_inner();
        checks::volume_id(&r.volume_id)?;
        let target = target_path(&r.target_path, "target_path")?;
        let published = m.volume(&r.volume_id).map_or_else(
            |_| Published::Unrecorded(m.provider_dirs()),
            |v| Published::Volume(PathBuf::from(v.location)),
        );
        let _guard = self.plugin.node_lock.lock().await;
        blocking(move || unpublish(&published, &target)).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let m = self.plugin.manager()?;
        let r = request.into_inner();
        checks::volume_id(&r.volume_id)?;
        if r.volume_path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        let v = m
            .volume(&r.volume_id)
            .map_err(|_| Status::not_found(format!("no volume {}", r.volume_id)))?;
        let path = PathBuf::from(&r.volume_path);
        let location = PathBuf::from(&v.location);
        let s = blocking(move || {
            let here = path.is_absolute() && mount::same_dir(&path, &location).unwrap_or(false);
            if !here {
                return Err(Status::not_found(format!(
                    "volume {} is not at {}",
                    v.id,
                    path.display()
                )));
            }
            mount::stats(&path).map_err(|e| internal("statvfs", e))
        })
        .await?;
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![
                usage(Unit::Bytes, s.bytes_total, s.bytes_available, s.bytes_used),
                usage(
                    Unit::Inodes,
                    s.inodes_total,
                    s.inodes_available,
                    s.inodes_used,
                ),
            ],
            volume_condition: None,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(
                    node_service_capability::Rpc {
                        r#type: rpc::Type::GetVolumeStats as i32,
                    },
                )),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let node_id = self.plugin.options.node_id.clone();
        Ok(Response::new(NodeGetInfoResponse {
            accessible_topology: Some(checks::topology(&node_id)),
            node_id,
            max_volumes_per_node: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths_must_be_absolute_and_plain() {
        assert!(target_path("/var/lib/kubelet/pods/x/mount", "t").is_ok());
        for bad in ["", "rel/path", "/a/../b", "/a/./b", "/a\0b"] {
            assert_eq!(
                target_path(bad, "t").unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }
}
