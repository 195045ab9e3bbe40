//! A provider that forwards every verb to a [`SimProvider`] and runs a hook
//! before and after each one (named by its [`SimCall`]): how a test learns
//! that an operation reached the provider, or holds it there. Included by
//! path (`#[path]`), so a test binary takes only this.
#![allow(dead_code)]

use std::sync::Arc;

use volmgr::provider::sim::{SimCall, SimProvider, When};
use volmgr::provider::{
    Created, Durability, Found, Provider, ProviderConfig, ProviderError, ProviderFactory,
    SendOptions, SendStats, VolumeRef, VolumeSpec,
};
use volmgr::state::OpId;

/// Runs at each verb, before (`When::Before`) and after (`When::After`) it.
pub type Hook = Arc<dyn Fn(SimCall, When) + Send + Sync>;

/// The simulated provider `sim`, registered under kind `kind`, with a hook
/// around each verb (`finish` and `abort_partial` have no [`SimCall`] and
/// run unhooked).
#[derive(Clone)]
pub struct HookedSim {
    pub sim: SimProvider,
    kind: &'static str,
    hook: Hook,
}

impl std::fmt::Debug for HookedSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedSim")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl HookedSim {
    pub fn new(
        sim: SimProvider,
        kind: &'static str,
        hook: impl Fn(SimCall, When) + Send + Sync + 'static,
    ) -> HookedSim {
        HookedSim {
            sim,
            kind,
            hook: Arc::new(hook),
        }
    }

    /// A factory that always returns this same provider.
    pub fn factory(&self) -> ProviderFactory {
        let me = self.clone();
        Arc::new(
            move |_config: &ProviderConfig, _owner: &volmgr::provider::AgentId| {
                Ok(Arc::new(me.clone()) as Arc<dyn Provider>)
            },
        )
    }

    fn around<T>(&self, call: SimCall, verb: impl FnOnce() -> T) -> T {
        (self.hook)(call, When::Before);
        let result = verb();
        (self.hook)(call, When::After);
        result
    }
}

impl Provider for HookedSim {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn config(&self) -> ProviderConfig {
        ProviderConfig::new()
    }
    fn durability(&self) -> Durability {
        self.sim.durability()
    }
    fn sync(&self) -> Result<(), ProviderError> {
        self.around(SimCall::Sync, || self.sim.sync())
    }
    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        self.around(SimCall::Create, || self.sim.create_volume(spec))
    }
    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.around(SimCall::Snapshot, || self.sim.create_snapshot(source, spec))
    }
    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.around(SimCall::Fork, || self.sim.fork_volume(snapshot, spec))
    }
    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.around(SimCall::Destroy, || self.sim.destroy(volume))
    }
    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
        out: &mut dyn std::io::Write,
    ) -> Result<SendStats, ProviderError> {
        self.around(SimCall::Send, || {
            self.sim.send_snapshot(snapshot, base, options, out)
        })
    }
    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn std::io::Read,
    ) -> Result<Created, ProviderError> {
        self.around(SimCall::Receive, || {
            self.sim.receive_snapshot(target, spec, input)
        })
    }
    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.around(SimCall::Inventory, || self.sim.inventory())
    }
    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        self.sim.finish(found)
    }
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        self.sim.abort_partial(op)
    }
}
