//! Checks of CSI request fields shared by the Controller and Node services:
//! names and ids, volume capabilities (access modes, raw block, fs types),
//! `StorageClass` parameters, capacity ranges, topology, content sources.
//! Every failure is `INVALID_ARGUMENT` (or what the spec names), never a panic.

use std::collections::{BTreeMap, HashMap};

use tonic::Status;

use super::TOPOLOGY_KEY;
use super::proto::{
    CapacityRange, Topology, TopologyRequirement, VolumeCapability, VolumeContentSource,
    volume_capability::{self, access_mode::Mode},
    volume_content_source,
};
use crate::provider::ProviderConfig;
use crate::validate;

/// Longest CSI name accepted (the spec asks for at least 128 bytes).
pub const MAX_NAME_LEN: usize = 1024;
/// The `StorageClass` parameter naming the provider.
pub const PARAM_PROVIDER: &str = "provider";
/// Parameters the Kubernetes sidecars add themselves (PVC name, namespace,
/// ...): accepted and ignored.
const SIDECAR_PARAM_PREFIX: &str = "csi.storage.k8s.io/";
/// At most this many parameters.
const MAX_PARAMETERS: usize = 64;

pub fn name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name is required"));
    }
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "name must be at most {MAX_NAME_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// A volume or snapshot id: required; one that is no valid id names
/// nothing (the caller decides whether that is `NOT_FOUND` or OK).
pub fn volume_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    Ok(())
}

/// Access modes a node-local volume can honour: one node.
fn mode_supported(mode: i32) -> bool {
    matches!(
        Mode::try_from(mode),
        Ok(Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter)
    )
}

/// Mount flags a bind mount can honour.
pub const MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "noexec",
    "exec",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
];

/// One capability: mount access (raw block does not exist yet), a
/// single-node access mode, mount flags a bind mount honours. The fs type
/// is checked where the volume's file system is known (`NodePublishVolume`).
pub fn capability(cap: &VolumeCapability) -> Result<(), Status> {
    match &cap.access_type {
        None => {
            return Err(Status::invalid_argument(
                "a volume capability needs an access type (mount)",
            ));
        }
        Some(volume_capability::AccessType::Block(_)) => {
            return Err(Status::invalid_argument(
                "raw block volumes are not supported; use a mount capability",
            ));
        }
        Some(volume_capability::AccessType::Mount(mount)) => {
            if let Some(flag) = mount
                .mount_flags
                .iter()
                .find(|f| !MOUNT_FLAGS.contains(&f.as_str()))
            {
                return Err(Status::invalid_argument(format!(
                    "mount flag {flag:?} is not supported (supported: {})",
                    MOUNT_FLAGS.join(", ")
                )));
            }
            if !mount.volume_mount_group.is_empty() {
                return Err(Status::invalid_argument(
                    "volume_mount_group is not supported",
                ));
            }
        }
    }
    let mode = cap.access_mode.as_ref().map_or(0, |m| m.mode);
    if !mode_supported(mode) {
        return Err(Status::invalid_argument(format!(
            "access mode {} is not supported: volumes are local to one node",
            Mode::try_from(mode).map_or("UNKNOWN", |m| m.as_str_name())
        )));
    }
    Ok(())
}

/// A non-empty list of supported capabilities.
pub fn capabilities(caps: &[VolumeCapability]) -> Result<(), Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities are required"));
    }
    caps.iter().try_for_each(capability)
}

/// Capabilities where they are optional (`GetCapacity`).
pub fn capabilities_if_any(caps: &[VolumeCapability]) -> Result<(), Status> {
    caps.iter().try_for_each(capability)
}

/// The fs type of a mount capability ("" when unset).
pub fn fs_type(cap: &VolumeCapability) -> &str {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => &m.fs_type,
        _ => "",
    }
}

/// Mount flags of a mount capability.
pub fn mount_flags(cap: &VolumeCapability) -> &[String] {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => &m.mount_flags,
        _ => &[],
    }
}

/// The provider and its volume options from `StorageClass` parameters:
/// `provider` (default: the plugin's), keys the sidecars add (ignored), and
/// everything else a provider option, checked by the provider itself.
pub fn parameters(
    params: &HashMap<String, String>,
    default_provider: &str,
) -> Result<(String, ProviderConfig), Status> {
    if params.len() > MAX_PARAMETERS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_PARAMETERS} parameters"
        )));
    }
    let mut provider = default_provider.to_owned();
    let mut options = BTreeMap::new();
    for (key, value) in params {
        if key.starts_with(SIDECAR_PARAM_PREFIX) {
            continue;
        }
        if key == PARAM_PROVIDER {
            validate::id(value).map_err(|why| {
                Status::invalid_argument(format!("parameter provider {value:?}: {why}"))
            })?;
            provider.clone_from(value);
            continue;
        }
        let ok = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        };
        if !ok(key) || !ok(value) {
            return Err(Status::invalid_argument(format!(
                "parameter {key:?}={value:?}: keys and values are 1 to 128 of [A-Za-z0-9._:-], starting with a letter or digit"
            )));
        }
        options.insert(key.clone(), value.clone());
    }
    Ok((provider, options))
}

/// Options as recorded in meta: `k=v` pairs in key order, joined by `,`.
pub fn encode_options(options: &ProviderConfig) -> String {
    options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A capacity range: at least `required`, at most `limit` (when set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requested {
    pub required: u64,
    pub limit: Option<u64>,
}

impl Requested {
    pub fn from_proto(range: Option<&CapacityRange>) -> Result<Requested, Status> {
        let Some(r) = range else {
            return Ok(Requested::default());
        };
        let required = u64::try_from(r.required_bytes)
            .map_err(|_| Status::invalid_argument("required_bytes must not be negative"))?;
        let limit = u64::try_from(r.limit_bytes)
            .map_err(|_| Status::invalid_argument("limit_bytes must not be negative"))?;
        let limit = (limit > 0).then_some(limit);
        if limit.is_some_and(|l| l < required) {
            return Err(Status::out_of_range(
                "limit_bytes is smaller than required_bytes",
            ));
        }
        Ok(Requested { required, limit })
    }

    /// The capacity to give a new volume: the required bytes, else the
    /// limit, else none (unlimited).
    pub fn bytes(&self) -> Option<u64> {
        (self.required > 0).then_some(self.required).or(self.limit)
    }

    /// Whether an existing capacity satisfies the range.
    pub fn admits(&self, capacity: u64) -> bool {
        capacity >= self.required && self.limit.is_none_or(|l| capacity <= l)
    }
}

/// The topology of this node.
pub fn topology(node_id: &str) -> Topology {
    Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node_id.to_owned())]),
    }
}

/// Whether `t` names this node (a topology without our key names any node).
pub fn topology_is_node(t: &Topology, node_id: &str) -> bool {
    t.segments.get(TOPOLOGY_KEY).is_none_or(|n| n == node_id)
}

/// A volume can be made here unless the requisite topologies all name
/// other nodes: then `RESOURCE_EXHAUSTED`, as the spec says.
pub fn topology_admits(req: Option<&TopologyRequirement>, node_id: &str) -> Result<(), Status> {
    let Some(req) = req else { return Ok(()) };
    if req.requisite.is_empty() || req.requisite.iter().any(|t| topology_is_node(t, node_id)) {
        return Ok(());
    }
    Err(Status::resource_exhausted(format!(
        "volumes are made on the node that asks ({TOPOLOGY_KEY}={node_id}); no requisite topology names it"
    )))
}

/// A volume's content source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

impl Source {
    pub fn from_proto(s: &VolumeContentSource) -> Result<Source, Status> {
        let (source, id) = match &s.r#type {
            Some(volume_content_source::Type::Snapshot(snap)) => (
                Source::Snapshot(snap.snapshot_id.clone()),
                &snap.snapshot_id,
            ),
            Some(volume_content_source::Type::Volume(v)) => {
                (Source::Volume(v.volume_id.clone()), &v.volume_id)
            }
            None => return Err(Status::invalid_argument("volume_content_source is empty")),
        };
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "volume_content_source names no id",
            ));
        }
        if validate::id(id).is_err() {
            return Err(Status::not_found(format!("no source {id:?}")));
        }
        Ok(source)
    }

    pub fn into_proto(self) -> VolumeContentSource {
        use volume_content_source::{SnapshotSource, Type, VolumeSource};
        VolumeContentSource {
            r#type: Some(match self {
                Source::Snapshot(snapshot_id) => Type::Snapshot(SnapshotSource { snapshot_id }),
                Source::Volume(volume_id) => Type::Volume(VolumeSource { volume_id }),
            }),
        }
    }

    /// As recorded in meta.
    pub fn encode(&self) -> String {
        match self {
            Source::Snapshot(id) => format!("snapshot:{id}"),
            Source::Volume(id) => format!("volume:{id}"),
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        if let Some(id) = s.strip_prefix("snapshot:") {
            Some(Source::Snapshot(id.to_owned()))
        } else {
            s.strip_prefix("volume:")
                .map(|id| Source::Volume(id.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access: volume_capability::AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(access),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn mount(fs: &str, flags: &[&str]) -> volume_capability::AccessType {
        volume_capability::AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            volume_mount_group: String::new(),
        })
    }

    #[test]
    fn raw_block_multi_node_modes_and_unknown_mount_flags_are_invalid_arguments() {
        let bad = [
            cap(
                volume_capability::AccessType::Block(BlockVolume {}),
                Mode::SingleNodeWriter,
            ),
            cap(mount("", &[]), Mode::MultiNodeMultiWriter),
            cap(mount("", &[]), Mode::Unknown),
            cap(mount("", &["suid"]), Mode::SingleNodeWriter),
            cap(mount("", &["dev"]), Mode::SingleNodeWriter),
        ];
        for c in &bad {
            assert_eq!(
                capability(c).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{c:?}"
            );
        }
        assert!(capability(&cap(mount("", &["ro", "noatime"]), Mode::SingleNodeWriter)).is_ok());
        assert_eq!(
            capabilities(&[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn capacity_ranges_are_checked_and_judge_existing_capacities() {
        let r = |req, lim| CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(
            Requested::from_proto(Some(&r(-1, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Requested::from_proto(Some(&r(10, 5))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let q = Requested::from_proto(Some(&r(10, 20))).unwrap();
        assert_eq!(q.bytes(), Some(10));
        assert!(q.admits(10) && q.admits(20) && !q.admits(9) && !q.admits(21));
        assert_eq!(
            Requested::from_proto(Some(&r(0, 7))).unwrap().bytes(),
            Some(7)
        );
        assert_eq!(Requested::from_proto(None).unwrap().bytes(), None);
    }

    #[test]
    fn parameters_name_the_provider_skip_sidecar_keys_and_refuse_odd_characters() {
        let p = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let (provider, opts) = parameters(
            &p(&[
                ("provider", "tank"),
                ("compression", "lz4"),
                ("csi.storage.k8s.io/pvc/name", "x y"),
            ]),
            "default",
        )
        .unwrap();
        assert_eq!(provider, "tank");
        assert_eq!(encode_options(&opts), "compression=lz4");
        for bad in [
            p(&[("provider", "../x")]),
            p(&[("compression", "lz4,recordsize=1")]),
            p(&[("-o", "x")]),
            p(&[("k", "")]),
        ] {
            assert_eq!(
                parameters(&bad, "d").unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn requisite_topologies_of_other_nodes_are_resource_exhausted() {
        let other = TopologyRequirement {
            requisite: vec![topology("n2")],
            preferred: vec![],
        };
        assert_eq!(
            topology_admits(Some(&other), "n1").unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let mine = TopologyRequirement {
            requisite: vec![topology("n2"), topology("n1")],
            preferred: vec![],
        };
        assert!(topology_admits(Some(&mine), "n1").is_ok());
        assert!(topology_admits(None, "n1").is_ok());
    }
}
