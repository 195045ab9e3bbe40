//! CSI snapshots: `CreateSnapshot` (idempotent by name), `DeleteSnapshot`
//! (idempotent; `FAILED_PRECONDITION` while a volume was made from it),
//! `ListSnapshots` (filters by snapshot id and source volume, paginated).
//! The plugin's internal clone sources are not CSI snapshots and are never
//! listed.

use prost_types::Timestamp;
use tonic::Status;

use super::Plugin;
use super::checks;
use super::controller::{data_volume, page};
use super::names;
use super::proto::{self, CreateSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse};
use super::status::from_manager;
use crate::manager::{Manager, ManagerError};
use crate::state::{Volume, VolumeKind, VolumeStatus};

/// Snapshot `id` as a CSI snapshot (not an internal one), or `NOT_FOUND`.
pub(crate) fn csi_snapshot_of(m: &Manager, id: &str) -> Result<Volume, Status> {
    match m.volume(id) {
        Ok(v) if v.kind == VolumeKind::Snapshot && !names::is_internal(&v) => {
            if v.status == VolumeStatus::Lost {
                return Err(Status::failed_precondition(format!(
                    "snapshot {id} is lost: its provider no longer shows it"
                )));
            }
            Ok(v)
        }
        _ => Err(Status::not_found(format!("no snapshot {id}"))),
    }
}

fn to_proto(v: &Volume) -> proto::Snapshot {
    let ms = v.created_at_ms;
    proto::Snapshot {
        size_bytes: 0,
        snapshot_id: v.id.clone(),
        source_volume_id: v.parent.clone().unwrap_or_default(),
        creation_time: Some(Timestamp {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

pub(crate) async fn create(
    plugin: &Plugin,
    r: CreateSnapshotRequest,
) -> Result<proto::Snapshot, Status> {
    let m = plugin.manager()?;
    checks::name(&r.name)?;
    if r.source_volume_id.is_empty() {
        return Err(Status::invalid_argument("source_volume_id is required"));
    }
    if let Some(key) = r
        .parameters
        .keys()
        .find(|k| !k.starts_with("csi.storage.k8s.io/"))
    {
        return Err(Status::invalid_argument(format!(
            "snapshot parameter {key:?} is not supported"
        )));
    }
    let id = names::id_for_name(&r.name);
    if let Ok(v) = m.volume(&id) {
        if names::made_for(&v, &r.name)
            && v.kind == VolumeKind::Snapshot
            && v.parent.as_deref() == Some(r.source_volume_id.as_str())
        {
            return Ok(to_proto(&v));
        }
        return Err(Status::already_exists(format!(
            "snapshot name {:?} is taken (by {} of {})",
            r.name,
            v.id,
            v.parent.as_deref().unwrap_or("nothing")
        )));
    }
    if crate::validate::id(&r.source_volume_id).is_err() {
        return Err(Status::not_found(format!(
            "no volume {:?}",
            r.source_volume_id
        )));
    }
    data_volume(m, &r.source_volume_id)?;
    let v = m
        .create_snapshot_as(&r.source_volume_id, Some(&id), names::meta_for(&r.name))
        .await
        .map_err(from_manager)?;
    Ok(to_proto(&v))
}

pub(crate) async fn delete(plugin: &Plugin, id: &str) -> Result<(), Status> {
    let m = plugin.manager()?;
    if id.is_empty() {
        return Err(Status::invalid_argument("snapshot_id is required"));
    }
    if crate::validate::id(id).is_err() {
        return Ok(()); // names nothing: already deleted (idempotent)
    }
    match m.volume(id) {
        Ok(v) if v.kind == VolumeKind::Snapshot && !names::is_internal(&v) => {}
        Ok(_) => return Ok(()), // not a snapshot of ours: no snapshot to delete
        Err(_) => {}            // unknown: gone, or being made (the manager says busy)
    }
    match m.destroy_volume(id).await {
        Ok(()) | Err(ManagerError::NoSuchVolume(_)) => Ok(()),
        Err(e) => Err(from_manager(e)),
    }
}

pub(crate) fn list(
    plugin: &Plugin,
    r: &ListSnapshotsRequest,
) -> Result<ListSnapshotsResponse, Status> {
    let m = plugin.manager()?;
    let snapshots: Vec<Volume> = m
        .volumes()
        .into_iter()
        .filter(|v| v.kind == VolumeKind::Snapshot && !names::is_internal(v))
        .filter(|v| r.snapshot_id.is_empty() || v.id == r.snapshot_id)
        .filter(|v| {
            r.source_volume_id.is_empty()
                || v.parent.as_deref() == Some(r.source_volume_id.as_str())
        })
        .collect();
    let (snapshots, next_token) = page(snapshots, |v| &v.id, r.max_entries, &r.starting_token)?;
    Ok(ListSnapshotsResponse {
        entries: snapshots
            .iter()
            .map(|v| proto::list_snapshots_response::Entry {
                snapshot: Some(to_proto(v)),
            })
            .collect(),
        next_token,
    })
}
