//! The CSI Identity service: plugin name and version, capabilities, probe.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto::{
    self, GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
    plugin_capability::{self, service, volume_expansion},
};
use super::{PLUGIN_NAME, Plugin};

pub(crate) struct Identity {
    plugin: Arc<Plugin>,
}

impl Identity {
    pub(crate) fn new(plugin: Arc<Plugin>) -> Identity {
        Identity { plugin }
    }
}

fn service(t: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl proto::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: PLUGIN_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: HashMap::default(),
        }))
    }

    /// `CONTROLLER_SERVICE` and `VOLUME_ACCESSIBILITY_CONSTRAINTS` always;
    /// online volume expansion only when the default provider enforces
    /// capacity (so, once the manager is open).
    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![
            service(service::Type::ControllerService),
            service(service::Type::VolumeAccessibilityConstraints),
        ];
        if self.plugin.expandable()? {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    /// Ready once the manager has opened the journal and reconciled.
    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.plugin.manager.get().is_some()),
        }))
    }
}
