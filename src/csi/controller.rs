//! The CSI Controller service: volumes (create, delete, list, validate,
//! expand), capacity, and the controller's capabilities. Snapshots are in
//! `snapshots`; the request checks shared with the node are in `checks`.
//!
//! `CreateVolume` is idempotent by name: the name maps to the volume id
//! (`names`), so a retry (after a timeout, or after the agent was killed
//! and reconciled) finds the volume the first attempt made and answers it if
//! the arguments are compatible, `ALREADY_EXISTS` if not. A volume source is
//! cloned through an internal snapshot (`csi-clone-src-<hash of the clone's
//! id>`), deleted with the clone. A volume with snapshots (or clones) cannot
//! be deleted: `FAILED_PRECONDITION`, as the spec allows for plugins whose
//! snapshots depend on their volume (ZFS snapshots and clones do); the CO
//! retries once they are gone.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::checks::{self, Requested, Source};
use super::names::{self, META_CLONE_OF, META_OPTIONS, META_REQUESTED_BYTES, META_SOURCE};
use super::proto::{
    self, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability, CreateSnapshotRequest, CreateSnapshotResponse,
    CreateVolumeRequest, CreateVolumeResponse, DeleteSnapshotRequest, DeleteSnapshotResponse,
    DeleteVolumeRequest, DeleteVolumeResponse, GetCapacityRequest, GetCapacityResponse,
    ListSnapshotsRequest, ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse,
    controller_service_capability::{self, rpc},
    list_volumes_response, validate_volume_capabilities_response,
};
use super::status::from_manager;
use super::{Plugin, node, snapshots};
use crate::manager::{Manager, ManagerError, ProviderTraits};
use crate::provider::ProviderConfig;
use crate::state::{DETAIL_CAPACITY, DETAIL_OPTION_PREFIX, Volume, VolumeKind, VolumeStatus};

pub(crate) struct Controller {
    plugin: Arc<Plugin>,
}

impl Controller {
    pub(crate) fn new(plugin: Arc<Plugin>) -> Controller {
        Controller { plugin }
    }
}

impl Plugin {
    /// Whether volumes can be expanded: the default provider enforces
    /// capacity (ZFS, btrfs; never the dir provider).
    pub(crate) fn expandable(&self) -> Result<bool, Status> {
        let m = self.manager()?;
        Ok(m.provider_traits(&self.options.default_provider)
            .map_err(from_manager)?
            .enforces_capacity)
    }

    /// The CSI view of data volume `v`.
    pub(crate) fn csi_volume(&self, v: &Volume) -> proto::Volume {
        proto::Volume {
            capacity_bytes: capacity_of(v).unwrap_or(0),
            volume_id: v.id.clone(),
            volume_context: HashMap::default(),
            content_source: v
                .meta
                .get(META_SOURCE)
                .and_then(|s| Source::parse(s))
                .map(Source::into_proto),
            accessible_topology: vec![checks::topology(&self.options.node_id)],
        }
    }
}

/// The enforced capacity of a volume, in bytes (CSI's int64).
pub(crate) fn capacity_of(v: &Volume) -> Option<i64> {
    v.details
        .get(DETAIL_CAPACITY)
        .and_then(|c| c.parse::<u64>().ok())
        .map(|c| i64::try_from(c).unwrap_or(i64::MAX))
}

/// The capacity a retry is judged against: the enforced one, else the one
/// asked for when the volume was made (kept in meta).
fn recorded_capacity(v: &Volume) -> Option<u64> {
    capacity_of(v)
        .and_then(|c| u64::try_from(c).ok())
        .or_else(|| {
            v.meta
                .get(META_REQUESTED_BYTES)
                .and_then(|c| c.parse().ok())
        })
}

/// Whether `v` is a volume whose `CreateVolume` (asking `capacity`, which
/// the provider enforces) made it and never set its limit: a limit once set
/// is never removed, and the create is answered only once it is set, so
/// such a volume was never answered (nor published). One made without a
/// capacity asked (no [`META_REQUESTED_BYTES`]) was answered unlimited.
fn limit_never_set(v: &Volume, capacity: Option<u64>) -> bool {
    capacity.is_some() && capacity_of(v).is_none() && v.meta.contains_key(META_REQUESTED_BYTES)
}

/// Whether `v` still lacks the capacity or an option a `CreateVolume` asked for.
fn needs_attributes(v: &Volume, capacity: Option<u64>, options: &ProviderConfig) -> bool {
    (capacity.is_some() && capacity_of(v).is_none())
        || options
            .iter()
            .any(|(k, val)| v.details.get(&format!("{DETAIL_OPTION_PREFIX}{k}")) != Some(val))
}

/// What a `CreateVolume`'s parameters ask for.
struct Parameters {
    provider: String,
    options: ProviderConfig,
    traits: ProviderTraits,
}

/// The provider and options `parameters` name, checked as `CreateVolume`
/// and `ValidateVolumeCapabilities` both check them: no mutable parameters
/// (no `MODIFY_VOLUME`), well-formed keys and values, a known provider, and
/// options that provider accepts. `INVALID_ARGUMENT` saying why not.
fn parameters(
    plugin: &Plugin,
    parameters: &HashMap<String, String>,
    mutable_parameters: &HashMap<String, String>,
) -> Result<Parameters, Status> {
    let m = plugin.manager()?;
    if !mutable_parameters.is_empty() {
        return Err(Status::invalid_argument(
            "mutable parameters are not supported (no MODIFY_VOLUME)",
        ));
    }
    let (provider, options) = checks::parameters(parameters, &plugin.options.default_provider)?;
    let traits = m.provider_traits(&provider).map_err(from_manager)?;
    m.check_volume_options(&provider, &options)
        .map_err(from_manager)?;
    Ok(Parameters {
        provider,
        options,
        traits,
    })
}

/// Whether volume `v` is what `parameters` ask for: on their provider,
/// with each of their options set as they say (`INVALID_ARGUMENT` saying
/// why not). No parameters ask for nothing.
fn has_parameters(
    plugin: &Plugin,
    v: &Volume,
    parameters: &HashMap<String, String>,
    mutable_parameters: &HashMap<String, String>,
) -> Result<(), Status> {
    if parameters.is_empty() && mutable_parameters.is_empty() {
        return Ok(());
    }
    let asked = self::parameters(plugin, parameters, mutable_parameters)?;
    if asked.provider != v.provider {
        return Err(Status::invalid_argument(format!(
            "volume {} is on provider {}, not {}",
            v.id, v.provider, asked.provider
        )));
    }
    for (k, val) in &asked.options {
        if v.details.get(&format!("{DETAIL_OPTION_PREFIX}{k}")) != Some(val) {
            return Err(Status::invalid_argument(format!(
                "volume {} was not made with {k}={val}",
                v.id
            )));
        }
    }
    Ok(())
}

fn rpc_capability(t: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

/// Why an existing volume does not answer a `CreateVolume`, if it does not.
fn incompatible(
    v: &Volume,
    name: &str,
    provider: &str,
    options: &str,
    source: Option<&Source>,
    requested: &Requested,
) -> Option<String> {
    if !names::made_for(v, name) {
        return Some(format!(
            "volume {} exists and was not made for this name",
            v.id
        ));
    }
    if v.kind != VolumeKind::Data || names::is_internal(v) {
        return Some(format!("{} is not a volume", v.id));
    }
    if v.provider != provider {
        return Some(format!("{} is on provider {}", v.id, v.provider));
    }
    if v.meta.get(META_OPTIONS).map_or("", String::as_str) != options {
        return Some(format!("{} was made with other parameters", v.id));
    }
    let recorded = v.meta.get(META_SOURCE).map(String::as_str);
    if recorded != source.map(Source::encode).as_deref() {
        return Some(format!("{} was made from another content source", v.id));
    }
    if let Some(capacity) = recorded_capacity(v)
        && !requested.admits(capacity)
    {
        return Some(format!(
            "{} has a capacity of {capacity} bytes, outside the requested range",
            v.id
        ));
    }
    None
}

impl Controller {
    async fn create(&self, r: CreateVolumeRequest) -> Result<proto::Volume, Status> {
        let plugin = &self.plugin;
        let m = plugin.manager()?;
        checks::name(&r.name)?;
        checks::capabilities(&r.volume_capabilities)?;
        let Parameters {
            provider,
            options,
            traits,
        } = parameters(plugin, &r.parameters, &r.mutable_parameters)?;
        let options_text = checks::encode_options(&options);
        let requested = Requested::from_proto(r.capacity_range.as_ref())?;
        checks::topology_admits(
            r.accessibility_requirements.as_ref(),
            &plugin.options.node_id,
        )?;
        let source = r
            .volume_content_source
            .as_ref()
            .map(Source::from_proto)
            .transpose()?;
        let id = names::id_for_name(&r.name);

        // The capacity the provider enforces; elsewhere it is only recorded
        // (reported as 0, "unknown", never promised). The capacity asked for
        // is recorded in meta either way (`META_REQUESTED_BYTES`).
        let capacity = requested.bytes().filter(|_| traits.enforces_capacity);

        if let Ok(v) = m.volume(&id) {
            if let Some(why) = incompatible(
                &v,
                &r.name,
                &provider,
                &options_text,
                source.as_ref(),
                &requested,
            ) {
                return Err(Status::already_exists(why));
            }
            // An earlier attempt may have died between making the volume and
            // setting its attributes: finish it.
            if !needs_attributes(&v, capacity, &options) {
                return Ok(plugin.csi_volume(&v));
            }
            return match m.set_volume_attributes(&id, capacity, options).await {
                Ok(v) => Ok(plugin.csi_volume(&v)),
                Err(e) => {
                    // A volume whose create died before its limit was set
                    // was never answered: it goes, as the first attempt's
                    // does when its attributes fail (no volume without the
                    // limit asked for stays behind, e.g. a capacity below
                    // what a clone holds: OUT_OF_RANGE). One made without
                    // a limit, and answered, stays as it is.
                    if limit_never_set(&v, capacity) {
                        self.delete(&id).await?;
                    }
                    Err(from_manager(e))
                }
            };
        }

        let mut meta = names::meta_for(&r.name);
        if !options_text.is_empty() {
            meta.insert(META_OPTIONS.to_owned(), options_text);
        }
        if let Some(bytes) = requested.bytes() {
            meta.insert(META_REQUESTED_BYTES.to_owned(), bytes.to_string());
        }
        if let Some(s) = &source {
            meta.insert(META_SOURCE.to_owned(), s.encode());
        }
        let created = match &source {
            None => {
                return m
                    .create_volume_with(&provider, Some(&id), meta, capacity, options)
                    .await
                    .map(|v| plugin.csi_volume(&v))
                    .map_err(from_manager);
            }
            Some(Source::Snapshot(snap)) => {
                let s = snapshots::csi_snapshot_of(m, snap)?;
                if s.provider != provider {
                    return Err(Status::invalid_argument(format!(
                        "snapshot {snap} is on provider {}, not {provider}",
                        s.provider
                    )));
                }
                m.fork_volume(snap, Some(&id), meta).await
            }
            Some(Source::Volume(from)) => {
                let v = data_volume(m, from)?;
                if v.provider != provider {
                    return Err(Status::invalid_argument(format!(
                        "volume {from} is on provider {}, not {provider}",
                        v.provider
                    )));
                }
                let snap = clone_source(m, from, &id).await?;
                m.fork_volume(&snap, Some(&id), meta).await
            }
        };
        let v = created.map_err(from_manager)?;
        if !needs_attributes(&v, capacity, &options) {
            return Ok(plugin.csi_volume(&v));
        }
        match m.set_volume_attributes(&id, capacity, options).await {
            Ok(v) => Ok(plugin.csi_volume(&v)),
            Err(e) => {
                // Nothing half-made stays for a retry with other arguments.
                let _ = self.delete(&id).await;
                Err(from_manager(e))
            }
        }
    }

    /// Expands data volume `id` to the requested capacity (never shrinks:
    /// a smaller request answers the current capacity).
    async fn expand(&self, id: &str, requested: Requested) -> Result<i64, Status> {
        let m = self.plugin.manager()?;
        let v = data_volume(m, id)?;
        let traits = m.provider_traits(&v.provider).map_err(from_manager)?;
        if !traits.enforces_capacity {
            return Err(Status::failed_precondition(format!(
                "the {} provider of {id} does not enforce capacity, so it cannot expand",
                traits.kind
            )));
        }
        let Some(want) = requested.bytes() else {
            return Err(Status::invalid_argument("capacity_range asks for no bytes"));
        };
        let current = capacity_of(&v).and_then(|c| u64::try_from(c).ok());
        if let Some(current) = current
            && current >= want
        {
            if requested.limit.is_some_and(|l| current > l) {
                return Err(Status::out_of_range(format!(
                    "{id} has {current} bytes, more than limit_bytes; volumes never shrink"
                )));
            }
            return Ok(i64::try_from(current).unwrap_or(i64::MAX));
        }
        let v = m
            .set_volume_attributes(id, Some(want), ProviderConfig::default())
            .await
            .map_err(from_manager)?;
        Ok(capacity_of(&v).unwrap_or(0))
    }

    async fn delete(&self, id: &str) -> Result<(), Status> {
        let m = self.plugin.manager()?;
        checks::volume_id(id)?;
        if crate::validate::id(id).is_err() {
            return Ok(()); // names nothing: already deleted (idempotent)
        }
        let Ok(v) = m.volume(id) else {
            // Unknown: already deleted (idempotent), unless an operation
            // making it is in flight (then the manager says busy: ABORTED).
            return destroy(m, id).await;
        };
        if v.kind != VolumeKind::Data {
            return Ok(()); // a snapshot id is no volume of ours to delete
        }
        // Internal clone sources whose clone is gone are cleaned first.
        for dep in m.dependents(id) {
            if let Ok(d) = m.volume(&dep)
                && names::is_internal(&d)
                && m.dependents(&dep).is_empty()
            {
                destroy(m, &dep).await?;
            }
        }
        destroy(m, id).await?;
        // A clone takes its internal source snapshot with it.
        if let Some(parent) = &v.parent
            && let Ok(p) = m.volume(parent)
            && names::is_internal(&p)
            && p.meta.get(META_CLONE_OF).map(String::as_str) == Some(id)
            && m.dependents(parent).is_empty()
        {
            destroy(m, parent).await?;
        }
        Ok(())
    }
}

/// Destroys `id`; gone already is fine.
async fn destroy(m: &Manager, id: &str) -> Result<(), Status> {
    match m.destroy_volume(id).await {
        Ok(()) | Err(ManagerError::NoSuchVolume(_)) => Ok(()),
        Err(e) => Err(from_manager(e)),
    }
}

/// Live data volume `id`, or `NOT_FOUND`.
pub(crate) fn data_volume(m: &Manager, id: &str) -> Result<Volume, Status> {
    match m.volume(id) {
        Ok(v) if v.kind == VolumeKind::Data && v.status == VolumeStatus::Live => Ok(v),
        Ok(v) if v.kind == VolumeKind::Data => Err(Status::failed_precondition(format!(
            "volume {id} is lost: its provider no longer shows it"
        ))),
        _ => Err(Status::not_found(format!("no volume {id}"))),
    }
}

/// The internal snapshot of `from` that clone `clone_id` is made from:
/// found if an earlier attempt made it, else taken now.
async fn clone_source(m: &Manager, from: &str, clone_id: &str) -> Result<String, Status> {
    let snap = names::clone_source_id(clone_id);
    if let Ok(s) = m.volume(&snap) {
        if s.parent.as_deref() == Some(from) && names::is_internal(&s) {
            return Ok(snap);
        }
        return Err(Status::already_exists(format!(
            "{snap} exists and is not the clone source of {clone_id} from {from}"
        )));
    }
    let meta = crate::state::Meta::from([(META_CLONE_OF.to_owned(), clone_id.to_owned())]);
    m.create_snapshot_as(from, Some(&snap), meta)
        .await
        .map_err(from_manager)?;
    Ok(snap)
}

/// Page `items` (sorted by id) after `token`, at most `max` (0: all).
pub(crate) fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    max: i32,
    token: &str,
) -> Result<(Vec<T>, String), Status> {
    let Ok(max) = usize::try_from(max) else {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    };
    let start = if token.is_empty() {
        0
    } else {
        let after = names::parse_token(token)
            .ok_or_else(|| Status::aborted(format!("invalid starting_token {token:?}")))?;
        items.partition_point(|t| id(t) <= after)
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let mut next = String::new();
    if max > 0 && rest.len() > max {
        rest.truncate(max);
        next = names::token_after(id(&rest[rest.len() - 1]));
    }
    Ok((rest, next))
}

#[tonic::async_trait]
impl proto::controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let volume = self.create(request.into_inner()).await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.delete(&request.into_inner().volume_id).await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let m = self.plugin.manager()?;
        let r = request.into_inner();
        checks::volume_id(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        let v = data_volume(m, &r.volume_id)?;
        // Confirmed only if NodePublishVolume would honour each one, fs type
        // included (the volume's own file system).
        let fs_types: Vec<String> = r
            .volume_capabilities
            .iter()
            .map(|c| checks::fs_type(c).to_owned())
            .collect();
        let location = std::path::PathBuf::from(&v.location);
        // Confirmed also only for parameters CreateVolume accepts and the
        // volume has.
        let checked = checks::capabilities(&r.volume_capabilities)
            .and_then(|()| has_parameters(&self.plugin, &v, &r.parameters, &r.mutable_parameters))
            .and_then(|()| no_volume_context(&r.volume_context));
        let supported = match checked {
            Ok(()) => {
                node::blocking(move || {
                    fs_types
                        .iter()
                        .try_for_each(|fs| node::check_fs_type(&location, fs))
                })
                .await
            }
            Err(why) => Err(why),
        };
        let answer = match supported {
            Ok(()) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(why) if why.code() == tonic::Code::InvalidArgument => {
                ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: why.message().to_owned(),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Response::new(answer))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let m = self.plugin.manager()?;
        let r = request.into_inner();
        let volumes: Vec<Volume> = m
            .volumes()
            .into_iter()
            .filter(|v| v.kind == VolumeKind::Data)
            .collect();
        let (volumes, next_token) = page(volumes, |v| &v.id, r.max_entries, &r.starting_token)?;
        let entries = volumes
            .iter()
            .map(|v| list_volumes_response::Entry {
                volume: Some(self.plugin.csi_volume(v)),
                status: None,
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let m = self.plugin.manager()?;
        let r = request.into_inner();
        let (provider, _) =
            checks::parameters(&r.parameters, &self.plugin.options.default_provider)?;
        checks::capabilities_if_any(&r.volume_capabilities)?;
        let here = r
            .accessible_topology
            .as_ref()
            .is_none_or(|t| checks::topology_is_node(t, &self.plugin.options.node_id));
        let available = if here {
            m.provider_free_bytes(&provider)
                .await
                .map_err(from_manager)?
                .unwrap_or(0)
        } else {
            0
        };
        Ok(Response::new(GetCapacityResponse {
            available_capacity: i64::try_from(available).unwrap_or(i64::MAX),
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let mut capabilities: Vec<_> = [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::ListVolumes,
            rpc::Type::GetCapacity,
            rpc::Type::CreateDeleteSnapshot,
            rpc::Type::ListSnapshots,
            rpc::Type::CloneVolume,
        ]
        .into_iter()
        .map(rpc_capability)
        .collect();
        if self.plugin.expandable()? {
            capabilities.push(rpc_capability(rpc::Type::ExpandVolume));
        }
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let snapshot = snapshots::create(&self.plugin, request.into_inner()).await?;
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        snapshots::delete(&self.plugin, &request.into_inner().snapshot_id).await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Ok(Response::new(snapshots::list(
            &self.plugin,
            &request.into_inner(),
        )?))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        self.plugin.manager()?;
        let r = request.into_inner();
        checks::volume_id(&r.volume_id)?;
        let Some(range) = r.capacity_range.as_ref() else {
            return Err(Status::invalid_argument("capacity_range is required"));
        };
        let requested = Requested::from_proto(Some(range))?;
        if let Some(cap) = &r.volume_capability {
            checks::capability(cap)?;
        }
        let capacity_bytes = self.expand(&r.volume_id, requested).await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes,
            node_expansion_required: false,
        }))
    }
}

/// Confirms a `volume_context` only if it is empty: `CreateVolume` returns
/// none and nothing here reads one, so a context (a Nomad volume registered
/// with `context`, say) is something this plugin cannot honour, and
/// `ValidateVolumeCapabilities` says so instead of echoing it as confirmed.
fn no_volume_context(context: &HashMap<String, String>) -> Result<(), Status> {
    if context.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<&str> = context.keys().map(String::as_str).collect();
    keys.sort_unstable();
    Err(Status::invalid_argument(format!(
        "volume_context {keys:?} is not one this plugin gave: its volumes have no context"
    )))
}
