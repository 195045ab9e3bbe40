//! Wire types of the agent's HTTP API, shared by the server and the client.
//!
//! The shapes are Flynn's (`host/volume`: `volume.Info`, `ProviderSpec`,
//! `PullCoordinate`, `volume.Event`; `pkg/httphelper.JSONError`), so Flynn's
//! own client works unchanged; volmgr's extensions are extra fields, which
//! Go's JSON decoding ignores. Every body is JSON except a snapshot stream
//! (`application/octet-stream`). Requests refuse unknown fields (a typo is a
//! 400, not a silently ignored option). Timestamps are RFC 3339 in UTC with
//! millisecond precision (`2026-11-25T15:12:00.123Z`), which Go's
//! `time.Time` decodes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{ProviderRecord, Volume, VolumeKind, VolumeStatus};

/// Metadata and provider configuration maps on the wire.
pub type StringMap = BTreeMap<String, String>;

/// `data` or `snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Data,
    Snapshot,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Data => "data",
            Kind::Snapshot => "snapshot",
        })
    }
}

/// `live`, or `lost` when the provider no longer shows a recorded volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Live,
    Lost,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Live => "live",
            Status::Lost => "lost",
        })
    }
}

/// Flynn's volume type of every volume volmgr holds (data volumes and
/// their snapshots; Flynn's `squashfs` and `ext2` imports do not exist here).
pub const VOLUME_TYPE_DATA: &str = "data";

fn data_type() -> String {
    VOLUME_TYPE_DATA.to_owned()
}

/// A volume as the API shows it: Flynn's `volume.Info` (`id`, `type`,
/// `meta`, `created_at`) plus volmgr's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: String,
    /// Flynn's `type`: always [`VOLUME_TYPE_DATA`].
    #[serde(rename = "type", default = "data_type")]
    pub volume_type: String,
    pub meta: StringMap,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    pub provider: String,
    pub kind: Kind,
    /// Snapshot: the volume it was taken of (or received into). Fork: the
    /// snapshot it was made from. Otherwise null.
    pub parent: Option<String>,
    /// Where the volume's files are (a directory for the dir provider).
    pub location: String,
    pub status: Status,
    /// Provider facts (a snapshot's `guid`, its identity in transfers).
    #[serde(default)]
    pub details: StringMap,
    /// The enforced capacity in bytes (ZFS refquota, btrfs qgroup limit);
    /// absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
}

impl From<&Volume> for VolumeInfo {
    fn from(v: &Volume) -> Self {
        VolumeInfo {
            id: v.id.clone(),
            volume_type: data_type(),
            provider: v.provider.clone(),
            kind: match v.kind {
                VolumeKind::Data => Kind::Data,
                VolumeKind::Snapshot => Kind::Snapshot,
            },
            parent: v.parent.clone(),
            meta: v.meta.clone(),
            created_at: rfc3339_ms(v.created_at_ms),
            location: v.location.clone(),
            status: match v.status {
                VolumeStatus::Live => Status::Live,
                VolumeStatus::Lost => Status::Lost,
            },
            details: v.details.clone(),
            capacity_bytes: v
                .details
                .get(crate::state::DETAIL_CAPACITY)
                .and_then(|c| c.parse().ok()),
        }
    }
}

/// A registered provider: Flynn's `ProviderSpec` (`metadata` is its
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub id: String,
    pub kind: String,
    #[serde(rename = "metadata", alias = "config")]
    pub config: StringMap,
}

impl From<&ProviderRecord> for ProviderInfo {
    fn from(p: &ProviderRecord) -> Self {
        ProviderInfo {
            id: p.id.clone(),
            kind: p.kind.clone(),
            config: p.config.clone(),
        }
    }
}

/// `POST /storage/providers`: Flynn's `ProviderSpec`. An empty or absent
/// `id` gets a UUID; `metadata` (also accepted as `config`) is the
/// provider's configuration, a map of strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddProviderRequest {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub kind: String,
    #[serde(
        default,
        rename = "metadata",
        alias = "config",
        deserialize_with = "null_as_default"
    )]
    pub config: StringMap,
}

/// `POST /storage/providers/{provider_id}/volumes`: Flynn's whole
/// `volume.Info` (the body is optional; `null` too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// A UUID is chosen when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Flynn's volume type: absent, `""` or `"data"`; any other is refused.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: StringMap,
    /// Sent by Flynn's client (its zero time); ignored: the agent stamps
    /// the creation time itself.
    #[serde(default, skip_serializing)]
    pub created_at: Option<serde_json::Value>,
    /// A capacity to enforce, in bytes (providers that enforce capacity:
    /// zfs, btrfs; others answer 400 `invalid_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
}

/// `null` (as Go encodes a nil map) decodes as the default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `PUT /storage/volumes/{id}/snapshot` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: StringMap,
}

/// `POST /storage/volumes/{snapshot_id}/fork` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: StringMap,
}

/// `GET|POST /storage/volumes/{id}/send`: the snapshot identities (GUIDs)
/// the caller already has. The body is Flynn's bare JSON array of haves
/// (raw JSON values: strings are GUIDs, anything else matches nothing),
/// `null` or empty (none: a full stream), or this object (volmgr's form,
/// with a resume token). The stream's form (holes as holes) is asked with
/// the `x-volmgr-stream-features` request header, not here: an older
/// agent refuses an unknown field but ignores an unknown header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub haves: Vec<String>,
    /// The receiver's resume token of an interrupted stream of this
    /// snapshot: if the source can continue it, only the rest is sent (the
    /// answer's `x-volmgr-resumed` header says `true`); else a whole stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
}

/// `POST /storage/volumes/{id}/pull_snapshot`: Flynn's `PullCoordinate`
/// (`host_id`, a configured peer), or volmgr's `source` (a base URL: a
/// configured peer's, or any where the operator allows arbitrary sources).
/// Exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The id of a peer (`volmgr serve --peer HOST_ID=URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// Base URL of the other agent, e.g. `http://10.0.0.2:1113`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The snapshot's id on that agent.
    pub snapshot_id: String,
}

/// The answer to a pull: the new snapshot (a `volume.Info` to Flynn),
/// plus what crossed the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    #[serde(flatten)]
    pub snapshot: VolumeInfo,
    /// Bytes of the snapshot stream received from the source.
    pub bytes: u64,
    /// This agent continued the partial receive an interrupted pull left
    /// (only the rest crossed). What the receiver did, never what the
    /// source claims.
    #[serde(default)]
    pub resumed: bool,
}

/// Progress event of a pull streamed as server-sent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// Bytes of the stream received so far.
    pub bytes: u64,
    /// The stream's size, when the source announced it
    /// (`x-volmgr-stream-size`); a hint, never checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, `starting` or `stopping`.
    pub status: String,
}

/// `GET /stats`: the manager's counters since the agent opened it, and
/// the journal's position. `durable_seq - checkpoint_seq` records are what
/// a restart would replay; while checkpoints fail (`checkpoint_failures`,
/// reasons in the agent's log) that number keeps growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Sequence number of the last durable journal record.
    pub durable_seq: u64,
    /// The checkpoint a restart would start from (0: none).
    pub checkpoint_seq: u64,
    /// Checkpoints requested, and those that failed (see
    /// `ManagerStats::checkpoint_failures`).
    pub checkpoints: u64,
    pub checkpoint_failures: u64,
    /// Mutating operations completed through the write path.
    pub operations: u64,
    /// Journal commits (`fdatasync`s), and the provider syncs shared by
    /// batched operations.
    pub journal_syncs: u64,
    pub provider_syncs: u64,
}

/// Every error answer: Flynn's `JSONError` plus volmgr's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Flynn's code (`object_not_found`, `object_exists`,
    /// `validation_error`, `conflict`, ...).
    pub code: String,
    pub message: String,
    /// `{"field": NAME}` when a request field is at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// Asking again later may succeed.
    #[serde(default)]
    pub retry: bool,
    /// volmgr's own code, finer than Flynn's (see the README's table).
    #[serde(default)]
    pub volmgr_code: String,
}

impl ErrorBody {
    /// volmgr's code, or Flynn's when the answer has none.
    pub fn volmgr_code(&self) -> &str {
        if self.volmgr_code.is_empty() {
            &self.code
        } else {
            &self.volmgr_code
        }
    }
}

/// Names of the server-sent events (the `event:` field; Flynn's reader
/// ignores it and reads the `type` inside the data).
pub mod events {
    /// Data: `{"type":"create","volume":{..}}` (also sent once per existing
    /// volume on subscribe). Flynn's `volume.Event`.
    pub const CREATE: &str = "create";
    /// Data: `{"type":"destroy","volume":{..}}`: the volume as it was.
    /// Flynn's `volume.Event`.
    pub const DESTROY: &str = "destroy";
    /// Extension, data `{"type":"lost","id"}`: recorded, but the provider
    /// no longer shows it.
    pub const LOST: &str = "lost";
    /// Extension, data `{"type":"found","id"}`: a lost volume is back.
    pub const FOUND: &str = "found";
    /// Extension, data `{"type":"current"}`: the initial listing is
    /// complete; live events follow.
    pub const CURRENT: &str = "current";
    /// Extension, data `{"type":"lagged","missed"}`: the subscriber fell
    /// behind; the stream ends after it (reconnect: a fresh listing).
    pub const LAGGED: &str = "lagged";
    /// Pull progress: `{"bytes", "total"?}`.
    pub const PROGRESS: &str = "progress";
    /// Pull result: a [`super::PullResponse`].
    pub const DONE: &str = "done";
    /// Pull failure: an [`super::ErrorEvent`].
    pub const ERROR: &str = "error";
}

/// Data of an event of `GET /storage/volumes` as an event stream. `create`
/// and `destroy` are Flynn's `volume.Event`; the others are volmgr's
/// extensions, framed so that Flynn's reader never sees them (see
/// ARCHITECTURE.md, "Flynn compatibility").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum VolumeEvent {
    Create { volume: VolumeInfo },
    Destroy { volume: VolumeInfo },
    Lost { id: String },
    Found { id: String },
    Current {},
    Lagged { missed: u64 },
}

impl VolumeEvent {
    /// The `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            VolumeEvent::Create { .. } => events::CREATE,
            VolumeEvent::Destroy { .. } => events::DESTROY,
            VolumeEvent::Lost { .. } => events::LOST,
            VolumeEvent::Found { .. } => events::FOUND,
            VolumeEvent::Current {} => events::CURRENT,
            VolumeEvent::Lagged { .. } => events::LAGGED,
        }
    }

    /// Whether Flynn's client knows this event (create, destroy).
    pub fn is_flynn(&self) -> bool {
        matches!(
            self,
            VolumeEvent::Create { .. } | VolumeEvent::Destroy { .. }
        )
    }
}

/// Data of a pull's `error` event: the error answer plus its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub status: u16,
    #[serde(flatten)]
    pub error: ErrorBody,
}

pub use crate::timefmt::rfc3339_ms;
