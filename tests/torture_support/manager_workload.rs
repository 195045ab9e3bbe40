//! A manager workload shared by the power-cut and failpoint suites, the model
//! of what its acknowledgements promise, and the agreement check between the
//! state and the simulated provider after a reopen. The provider keeps
//! partial receives (resumable, like ZFS), and the workload cuts a stream
//! short then resumes it, every round.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use volmgr::journal::JournalConfig;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::sim::{SimCall, SimProvider};
use volmgr::provider::{
    Created, Durability, Found, PartialReceive, Provider, ProviderConfig, ProviderError,
    ProviderFactory, SendOptions, SendStats, VolumeRef, VolumeSpec,
};
use volmgr::state::{DETAIL_RESUME_TOKEN, Meta, OpId, VolumeStatus};
use volmgr::storage::Storage;

pub const STATE_DIR: &str = "/state";
pub const PROVIDER: &str = "p";

/// Counts the calls that reach the simulated provider, by [`SimCall`], so a
/// dry run tells how many occurrences each provider failpoint can target.
#[derive(Debug, Clone)]
pub struct CountingProvider {
    pub inner: SimProvider,
    pub counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CountingProvider {
    pub fn new(inner: SimProvider) -> Self {
        inner.set_resumable(true);
        CountingProvider {
            inner,
            counts: Arc::default(),
        }
    }

    fn count(&self, call: SimCall) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(format!("{call:?}"))
            .or_insert(0) += 1;
    }

    pub fn calls(&self, call: SimCall) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(&format!("{call:?}"))
            .copied()
            .unwrap_or(0)
    }

    pub fn factory(&self) -> ProviderFactory {
        let me = self.clone();
        Arc::new(
            move |_config: &ProviderConfig, _owner: &volmgr::provider::AgentId| {
                Ok(Arc::new(me.clone()) as Arc<dyn Provider>)
            },
        )
    }
}

impl Provider for CountingProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn config(&self) -> ProviderConfig {
        self.inner.config()
    }
    fn durability(&self) -> Durability {
        self.inner.durability()
    }
    fn sync(&self) -> Result<(), ProviderError> {
        self.count(SimCall::Sync);
        self.inner.sync()
    }
    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        self.count(SimCall::Create);
        self.inner.create_volume(spec)
    }
    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.count(SimCall::Snapshot);
        self.inner.create_snapshot(source, spec)
    }
    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.count(SimCall::Fork);
        self.inner.fork_volume(snapshot, spec)
    }
    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.count(SimCall::Destroy);
        self.inner.destroy(volume)
    }
    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError> {
        self.count(SimCall::Send);
        self.inner.send_snapshot(snapshot, base, options, out)
    }
    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        self.count(SimCall::Receive);
        self.inner.receive_snapshot(target, spec, input)
    }
    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.count(SimCall::Inventory);
        self.inner.inventory()
    }
    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        self.inner.finish(found)
    }
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        self.inner.abort_partial(op)
    }
    fn partial_receive(
        &self,
        target: &VolumeRef<'_>,
    ) -> Result<Option<PartialReceive>, ProviderError> {
        self.inner.partial_receive(target)
    }
    fn abort_receive(&self, target: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.inner.abort_receive(target)
    }
    fn resume_fits(&self, snapshot: &VolumeRef<'_>, token: &str) -> Result<bool, ProviderError> {
        self.inner.resume_fits(snapshot, token)
    }
    fn send_resumed(
        &self,
        snapshot: &VolumeRef<'_>,
        token: &str,
        out: &mut dyn Write,
    ) -> Result<Option<SendStats>, ProviderError> {
        self.count(SimCall::Send);
        self.inner.send_resumed(snapshot, token, out)
    }
}

/// A manager configuration on `storage` with small segments and frequent
/// checkpoints, so a short workload rotates, checkpoints and deletes.
pub fn config(storage: Arc<dyn Storage>, provider: &CountingProvider) -> ManagerConfig {
    let mut config = ManagerConfig {
        journal: JournalConfig {
            segment_size: 4096,
            max_batch_bytes: 2048,
            queue_depth: 64,
        },
        checkpoint_every: 7,
        checkpoint_grows_with_state: false,
        storage: Some(storage),
        ..ManagerConfig::default()
    };
    config.factories.insert("sim".into(), provider.factory());
    config
}

/// Opens the manager and registers the provider if the journal has none.
pub async fn open(
    storage: Arc<dyn Storage>,
    provider: &CountingProvider,
) -> Result<Manager, ManagerError> {
    let m = Manager::open(Path::new(STATE_DIR), config(storage, provider)).await?;
    if m.providers().is_empty() {
        m.add_provider(PROVIDER, "sim", ProviderConfig::new())
            .await?;
    }
    Ok(m)
}

/// What the acknowledgements of a run promise, and how the run behaved
/// after its first journal failure.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// Volumes whose creation was acknowledged and destruction was not.
    pub must_exist: BTreeSet<String>,
    /// Volumes whose destruction was acknowledged.
    pub must_not_exist: BTreeSet<String>,
    pub acked: u64,
    pub errors: u64,
    /// A journal error was seen (the journal is poisoned from then on).
    pub journal_failed: bool,
    /// Mutating operations started after the first journal error.
    pub attempted_after_failure: u64,
    /// ... and how many of them were acknowledged (must be 0).
    pub accepted_after_failure: u64,
    /// Receives cut short that kept their partial state (durably recorded).
    pub suspended: u64,
    /// Acknowledged receives of the rest of a cut stream.
    pub resumed: u64,
}

impl Model {
    fn note<T>(
        &mut self,
        started_after_failure: bool,
        result: &Result<T, ManagerError>,
        created: Option<&str>,
        destroyed: Option<&str>,
    ) {
        if started_after_failure {
            self.attempted_after_failure += 1;
        }
        match result {
            Ok(_) => {
                self.acked += 1;
                if started_after_failure {
                    self.accepted_after_failure += 1;
                }
                if let Some(id) = created {
                    self.must_exist.insert(id.to_owned());
                }
                if let Some(id) = destroyed {
                    self.must_exist.remove(id);
                    self.must_not_exist.insert(id.to_owned());
                }
            }
            Err(e) => {
                self.errors += 1;
                if matches!(e, ManagerError::Journal(_)) {
                    self.journal_failed = true;
                }
                // A destroy that failed in the journal or the provider may
                // still have happened (its intent may be durable, the
                // provider may have acted): the volume is no longer promised.
                if let Some(id) = destroyed
                    && matches!(
                        e,
                        ManagerError::Journal(_)
                            | ManagerError::Provider { .. }
                            | ManagerError::ProviderUnavailable { .. }
                    )
                {
                    self.must_exist.remove(id);
                }
            }
        }
    }
}

/// Creates, snapshots, sends and receives, forks and destroys, `rounds`
/// times, two creates at a time. It keeps going after errors (so a
/// poisoned journal is asked for more and must refuse).
pub async fn run_ops(m: &Manager, rounds: u32, model: &mut Model) {
    for r in 0..rounds {
        let (a, b, fork) = (format!("v{r}a"), format!("v{r}b"), format!("f{r}"));
        let after = model.journal_failed;
        let (ra, rb) = tokio::join!(
            m.create_volume(PROVIDER, Some(&a), Meta::new()),
            m.create_volume(PROVIDER, Some(&b), Meta::new())
        );
        model.note(after, &ra, Some(&a), None);
        model.note(after, &rb, Some(&b), None);

        let after = model.journal_failed;
        let snap = m.create_snapshot(&a, Meta::new()).await;
        let snap_id = snap.as_ref().ok().map(|v| v.id.clone());
        model.note(after, &snap, snap_id.as_deref(), None);
        if let Some(snap_id) = &snap_id {
            let mut stream = Vec::new();
            if m.send_snapshot(snap_id, &[], &mut stream).await.is_ok() {
                let after = model.journal_failed;
                let received = m.receive_snapshot(&a, &stream[..]).await;
                let id = received.as_ref().ok().map(|v| v.id.clone());
                model.note(after, &received, id.as_deref(), None);

                // Cut short: the partial receive is kept; the rest completes it.
                let after = model.journal_failed;
                // (The volumes are empty: the last 2 bytes are past the
                // point a simulated partial receive needs.)
                let cut = m.receive_snapshot(&a, &stream[..stream.len() - 2]).await;
                match &cut {
                    // Its Suspended outcome is durable, like an acknowledgement.
                    Err(ManagerError::Provider {
                        error: ProviderError::Suspended { .. },
                        ..
                    }) => {
                        model.suspended += 1;
                        if after {
                            model.attempted_after_failure += 1;
                            model.accepted_after_failure += 1;
                        }
                    }
                    other => model.note(after, other, None, None),
                }
                let token = m
                    .volume(&a)
                    .ok()
                    .and_then(|v| v.details.get(DETAIL_RESUME_TOKEN).cloned());
                let mut rest = Vec::new();
                if let Some(token) = token
                    && m.send_snapshot_resuming(snap_id, &[], Some(&token), &mut rest)
                        .await
                        .is_ok()
                {
                    let after = model.journal_failed;
                    let resumed = m.receive_snapshot(&a, &rest[..]).await;
                    let id = resumed.as_ref().ok().map(|v| v.id.clone());
                    model.resumed += u64::from(resumed.is_ok());
                    model.note(after, &resumed, id.as_deref(), None);
                }
            }
            let after = model.journal_failed;
            let forked = m.fork_volume(snap_id, Some(&fork), Meta::new()).await;
            model.note(after, &forked, Some(&fork), None);
        }

        let after = model.journal_failed;
        let destroyed = m.destroy_volume(&b).await;
        model.note(after, &destroyed, None, Some(&b));
        if r % 2 == 1 {
            let after = model.journal_failed;
            let destroyed = m.destroy_volume(&fork).await;
            model.note(after, &destroyed, None, Some(&fork));
        }
    }
}

/// After a reopen: nothing pending, no lost volume, no orphan, the
/// provider's tagged items are exactly the state's volumes, and the model's
/// promises hold. Returns the disagreements found.
pub fn check_agreement(m: &Manager, sim: &SimProvider, model: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    let state = m.state();
    if !state.pending.is_empty() {
        problems.push(format!(
            "{} operations still pending: {:?}",
            state.pending.len(),
            state
                .pending
                .values()
                .map(|p| p.action.name())
                .collect::<Vec<_>>()
        ));
    }
    let lost: Vec<&String> = state
        .volumes
        .values()
        .filter(|v| v.status != VolumeStatus::Live)
        .map(|v| &v.id)
        .collect();
    if !lost.is_empty() {
        problems.push(format!("volumes marked lost: {lost:?}"));
    }
    if !state.orphans.is_empty() {
        problems.push(format!(
            "orphans: {:?}",
            state.orphans.keys().collect::<Vec<_>>()
        ));
    }
    let in_state: BTreeSet<String> = state.volumes.keys().cloned().collect();
    let in_provider: BTreeSet<String> = sim.volume_ids().into_iter().collect();
    if in_state != in_provider {
        problems.push(format!(
            "state and provider disagree: only in state {:?}, only in provider {:?}",
            in_state.difference(&in_provider).collect::<Vec<_>>(),
            in_provider.difference(&in_state).collect::<Vec<_>>()
        ));
    }
    // What the state records of partial receives is what the provider holds.
    for v in state.volumes.values() {
        let recorded = v.details.get(DETAIL_RESUME_TOKEN);
        let held = sim.partial(&v.id).map(|p| p.token);
        if recorded != held.as_ref() {
            problems.push(format!(
                "partial receive of {}: the state records {recorded:?}, the provider holds {held:?}",
                v.id
            ));
        }
    }
    let lost = lost_acknowledged(m, sim, model);
    if !lost.is_empty() {
        problems.push(format!("acknowledged operations lost: {lost:?}"));
    }
    problems
}

/// The acknowledged operations whose effect a reopened manager no longer
/// shows: a volume acknowledged created (and not destroyed) that the state
/// lacks, marks lost, or the provider no longer holds; a volume acknowledged
/// destroyed that the state or the provider holds again. One entry each.
pub fn lost_acknowledged(m: &Manager, sim: &SimProvider, model: &Model) -> Vec<String> {
    let state = m.state();
    let held: BTreeSet<String> = sim.volume_ids().into_iter().collect();
    let mut lost = Vec::new();
    for id in &model.must_exist {
        match state.volumes.get(id) {
            None => lost.push(format!("created {id}: absent")),
            Some(v) if v.status != VolumeStatus::Live => {
                lost.push(format!("created {id}: {:?}", v.status));
            }
            Some(_) if !held.contains(id) => {
                lost.push(format!("created {id}: not on the provider"));
            }
            Some(_) => {}
        }
    }
    for id in &model.must_not_exist {
        if state.volumes.contains_key(id) {
            lost.push(format!("destroyed {id}: back in the state"));
        } else if held.contains(id) {
            lost.push(format!("destroyed {id}: back on the provider"));
        }
    }
    lost
}

/// The reopened manager still works: a create and a destroy are
/// acknowledged and leave state and provider in agreement.
pub async fn probe(m: &Manager, sim: &SimProvider, model: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = m.create_volume(PROVIDER, Some("probe"), Meta::new()).await {
        problems.push(format!("create after reopen failed: {e}"));
    }
    if let Err(e) = m.destroy_volume("probe").await {
        problems.push(format!("destroy after reopen failed: {e}"));
    }
    problems.extend(check_agreement(m, sim, model));
    problems
}
