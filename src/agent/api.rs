//! Wire types of the agent's HTTP API, shared by the server and the client.
//!
//! Every body is JSON except a snapshot stream (`application/octet-stream`).
//! Requests refuse unknown fields (a typo is a 400, not a silently ignored
//! option). Timestamps are RFC 3339 in UTC with millisecond precision
//! (`2026-11-25T15:12:00.123Z`).

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

/// A volume as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: String,
    pub provider: String,
    pub kind: Kind,
    /// Snapshot: the volume it was taken of (or received into). Fork: the
    /// snapshot it was made from. Otherwise null.
    pub parent: Option<String>,
    pub meta: StringMap,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
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

/// A registered provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub id: String,
    pub kind: String,
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

/// `POST /storage/providers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddProviderRequest {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub config: StringMap,
}

/// `POST /storage/providers/{provider_id}/volumes` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// A UUID is chosen when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub meta: StringMap,
    /// A capacity to enforce, in bytes (providers that enforce capacity:
    /// zfs, btrfs; others answer 400 `invalid_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
}

/// `PUT /storage/volumes/{id}/snapshot` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    #[serde(default)]
    pub meta: StringMap,
}

/// `POST /storage/volumes/{snapshot_id}/fork` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub meta: StringMap,
}

/// `GET|POST /storage/volumes/{id}/send`: the snapshot identities (GUIDs)
/// the caller already has. An empty body means none (a full stream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    #[serde(default)]
    pub haves: Vec<String>,
    /// The receiver's resume token of an interrupted stream of this
    /// snapshot: if the source can continue it, only the rest is sent (the
    /// answer's `x-volmgr-resumed` header says `true`); else a whole stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
}

/// `POST /storage/volumes/{id}/pull_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// Base URL of the other agent, e.g. `http://10.0.0.2:1113`.
    pub source: String,
    /// The snapshot's id on that agent.
    pub snapshot_id: String,
}

/// The answer to a pull: the new snapshot, plus what crossed the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    #[serde(flatten)]
    pub snapshot: VolumeInfo,
    /// Bytes of the snapshot stream received from the source.
    pub bytes: u64,
    /// The stream continued an interrupted pull (only the rest was sent).
    #[serde(default)]
    pub resumed: bool,
}

/// Progress event of a pull streamed as server-sent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    pub bytes: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, `starting` or `stopping`.
    pub status: String,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, snake_case (see the README's table).
    pub code: String,
    pub message: String,
}

/// Names of the server-sent events of `GET /storage/volumes`.
pub mod events {
    /// Data: a volume (also sent once per existing volume on subscribe).
    pub const CREATE: &str = "create";
    /// Data: `{"id"}`.
    pub const DESTROY: &str = "destroy";
    /// Data: `{"id"}`: recorded, but the provider no longer shows it.
    pub const LOST: &str = "lost";
    /// Data: `{"id"}`: a lost volume is back.
    pub const FOUND: &str = "found";
    /// Data: `{}`: the initial listing is complete; live events follow.
    pub const CURRENT: &str = "current";
    /// Data: `{"missed"}`: the subscriber fell behind; list again.
    pub const LAGGED: &str = "lagged";
    /// Pull progress: `{"bytes"}`.
    pub const PROGRESS: &str = "progress";
    /// Pull result: a [`super::PullResponse`].
    pub const DONE: &str = "done";
    /// Pull failure: an [`super::ErrorBody`] plus `status`.
    pub const ERROR: &str = "error";
}

/// Data of `destroy`, `lost` and `found` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdEvent {
    pub id: String,
}

/// Data of a `lagged` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaggedEvent {
    pub missed: u64,
}

/// Data of a pull's `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_764_083_520_123), "2025-11-25T15:12:00.123Z");
    }
}
