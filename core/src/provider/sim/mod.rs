//! A simulated, in-memory provider for deterministic fault injection.
//!
//! Named as such: it never replaces the real-provider tests. It keeps volumes
//! as maps of file name to bytes, tags them like a real provider would, and can
//! fail any call before or after its side effect ([`SimFault`]), or report an
//! item as half-made, so tests can build every reconciliation situation and
//! every crash window of the write path. Clones share one store, so a test can
//! hand the same instance to successive manager opens (a provider that
//! "persists" across restarts).
//!
//! Resumable transfers, simulated: with [`SimProvider::set_resumable`], a
//! receive whose stream breaks keeps the bytes that arrived as a partial
//! receive with the token `1_<offset hex>_<guid>_<base guid or 0>`, and a
//! sender continues a stream from such a token; [`SimProvider::cut_sends`]
//! cuts a sender's streams short after N bytes.
//!
//! Batched durability, simulated: with [`SimProvider::set_batched`], side
//! effects on items are visible at once but durable only after
//! [`Provider::sync`] (partial receives, a ZFS feature, stay durable when
//! their call returns, as on ZFS);
//! [`SimProvider::power_cut_copy`] is the provider a power cut leaves (the
//! state of the last sync, plus any unsynced change a seed chooses to keep).
//! The sync can go through a [`Storage`] directory sync, so a power-cut sweep
//! over that storage counts it as one of its sync points.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{
    Created, Durability, Found, PartialReceive, Presence, Provider, ProviderConfig, ProviderError,
    ProviderFactory, SendOptions, SendStats, Tag, VolumeRef, VolumeSpec,
};
use crate::model::{DETAIL_GUID, Details, OpId, VolumeKind};
use crate::storage::Storage;

mod gate;
mod resume;

pub use gate::Gate;

pub const KIND: &str = "sim";

/// The provider calls a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimCall {
    Create,
    Snapshot,
    Fork,
    Destroy,
    Send,
    Receive,
    Inventory,
    /// The batched durability step ([`Provider::sync`]).
    Sync,
}

/// Whether the injected failure comes before or after the side effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimFault {
    pub call: SimCall,
    pub when: When,
    /// 1-based occurrence of `call` that fails.
    pub nth: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    volume: String,
    op: OpId,
    kind: VolumeKind,
    parent: Option<String>,
    complete: bool,
    files: BTreeMap<String, Vec<u8>>,
    guid: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Store {
    gate: Option<(SimCall, Arc<Gate>)>,
    items: BTreeMap<String, Item>,
    /// Untagged names under the root.
    foreign: Vec<String>,
    fault: Option<SimFault>,
    calls: BTreeMap<String, u64>,
    partial_ops: Vec<OpId>,
    next_guid: u64,
    /// Resumable partial receives, by target volume, with the bytes that
    /// arrived (none for planted ones).
    partials: BTreeMap<String, PartialReceive>,
    partial_bytes: BTreeMap<String, Vec<u8>>,
    resumable: bool,
    cut_sends: Option<usize>,
    /// Batched durability: what the last sync made durable (`None`: every
    /// side effect is durable when its call returns).
    durable: Option<Persistent>,
    /// A directory sync that stands for this provider's sync.
    sync_through: Option<(Arc<dyn Storage>, PathBuf)>,
}

/// What a simulated power cut does to the changes made since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimCut {
    DropUnsynced,
    KeepUnsynced,
    /// Each changed item kept or lost as a seed decides.
    Random(u64),
}

/// What a power cut takes back to the last sync: the tagged items. (Partial
/// receives, a ZFS feature, are durable when their call returns, as on ZFS.)
#[derive(Debug, Default, Clone)]
struct Persistent {
    items: BTreeMap<String, Item>,
}

impl Store {
    fn persistent(&self) -> Persistent {
        Persistent {
            items: self.items.clone(),
        }
    }
}

/// Keeps, per key, the current value or the durable one (absent if absent).
fn cut_map<V: Clone>(
    now: &BTreeMap<String, V>,
    durable: &BTreeMap<String, V>,
    keep: &mut impl FnMut() -> bool,
) -> BTreeMap<String, V> {
    let keys: std::collections::BTreeSet<&String> = now.keys().chain(durable.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let pick = if keep() { now.get(k) } else { durable.get(k) };
            pick.map(|v| (k.clone(), v.clone()))
        })
        .collect()
}

/// The simulated provider. Cheap to clone; clones share the store.
#[derive(Debug, Clone, Default)]
pub struct SimProvider {
    store: Arc<Mutex<Store>>,
}

#[derive(Serialize, Deserialize)]
struct SimStream {
    guid: String,
    base_guid: Option<String>,
    files: BTreeMap<String, Vec<u8>>,
    deleted: Vec<String>,
}

impl SimProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory that always returns this same instance.
    pub fn factory(&self) -> ProviderFactory {
        let me = self.clone();
        Arc::new(
            move |_config: &ProviderConfig, _owner: &crate::model::AgentId| {
                Ok(Arc::new(me.clone()) as Arc<dyn Provider>)
            },
        )
    }

    /// An independent copy of the store as it is now (faults and call counts
    /// included): the provider as a crash left it, to reconcile one journal
    /// image against without disturbing the next.
    pub fn deep_copy(&self) -> SimProvider {
        SimProvider {
            store: Arc::new(Mutex::new(self.lock().clone())),
        }
    }

    /// From now on side effects are durable only after [`Provider::sync`]
    /// (whatever exists now counts as durable). The sync first syncs
    /// directory `through.1` of storage `through.0`, when given, and fails
    /// if that fails.
    pub fn set_batched(&self, through: Option<(Arc<dyn Storage>, PathBuf)>) {
        let mut s = self.lock();
        s.durable = Some(s.persistent());
        s.sync_through = through;
    }

    /// Makes the sync go through directory `through.1` of storage
    /// `through.0` (or through nothing): the same provider, on the storage
    /// of the next life of a power-cut sweep.
    pub fn set_sync_through(&self, through: Option<(Arc<dyn Storage>, PathBuf)>) {
        self.lock().sync_through = through;
    }

    /// The provider a power cut leaves: a copy (faults, gate and sync path
    /// cleared) holding what the last sync made durable, and of the changes
    /// made since, none, all, or each as a seed decides. Without batched
    /// durability, an exact copy. The copy keeps batched durability.
    pub fn power_cut_copy(&self, cut: SimCut) -> SimProvider {
        let mut copy = self.lock().clone();
        copy.sync_through = None;
        copy.gate = None;
        copy.fault = None;
        if let Some(durable) = copy.durable.take() {
            let mut x = match cut {
                SimCut::Random(seed) => seed | 1,
                _ => 1,
            };
            let mut keep = || match cut {
                SimCut::DropUnsynced => false,
                SimCut::KeepUnsynced => true,
                SimCut::Random(_) => {
                    // xorshift64: deterministic per seed.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x & 1 == 1
                }
            };
            copy.items = cut_map(&copy.items, &durable.items, &mut keep);
            copy.durable = Some(copy.persistent());
        }
        SimProvider {
            store: Arc::new(Mutex::new(copy)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_fault(&self, fault: Option<SimFault>) {
        let mut s = self.lock();
        s.fault = fault;
        s.calls.clear();
    }

    /// How many times `call` was entered since the last [`Self::set_fault`].
    pub fn calls(&self, call: SimCall) -> u64 {
        self.lock()
            .calls
            .get(&format!("{call:?}/{:?}", When::Before))
            .copied()
            .unwrap_or(0)
    }

    /// Writes a file into a volume (what a container would do).
    pub fn write_file(&self, volume: &str, name: &str, data: &[u8]) {
        let mut s = self.lock();
        let item = s
            .items
            .get_mut(volume)
            .expect("volume exists in the simulation");
        item.files.insert(name.to_owned(), data.to_vec());
    }

    pub fn read_file(&self, volume: &str, name: &str) -> Option<Vec<u8>> {
        self.lock().items.get(volume)?.files.get(name).cloned()
    }

    /// Ids of every tagged item, complete or not.
    pub fn volume_ids(&self) -> Vec<String> {
        self.lock().items.keys().cloned().collect()
    }

    /// Removes an item behind the manager's back (a lost volume).
    pub fn remove_behind_back(&self, volume: &str) {
        self.lock().items.remove(volume);
    }

    /// Adds a tagged item no journal knows (an orphan).
    pub fn plant_orphan(&self, volume: &str, op: OpId, kind: VolumeKind, complete: bool) {
        self.lock().items.insert(
            volume.to_owned(),
            Item {
                volume: volume.to_owned(),
                op,
                kind,
                parent: None,
                complete,
                files: BTreeMap::new(),
                guid: None,
            },
        );
    }

    /// Adds an untagged item under the root.
    pub fn plant_foreign(&self, name: &str) {
        self.lock().foreign.push(name.to_owned());
    }

    pub fn foreign(&self) -> Vec<String> {
        self.lock().foreign.clone()
    }

    /// Marks an item half-made.
    pub fn set_complete(&self, volume: &str, complete: bool) {
        if let Some(item) = self.lock().items.get_mut(volume) {
            item.complete = complete;
        }
    }

    /// The next `call` blocks inside the provider until the gate is released.
    pub fn hold_next(&self, call: SimCall) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.lock().gate = Some((call, gate.clone()));
        gate
    }

    fn check(&self, call: SimCall, when: When) -> Result<(), ProviderError> {
        if when == When::Before {
            let gate = {
                let mut s = self.lock();
                match &s.gate {
                    Some((c, _)) if *c == call => s.gate.take().map(|(_, g)| g),
                    _ => None,
                }
            };
            if let Some(gate) = gate {
                gate.pass();
            }
        }
        let mut s = self.lock();
        let key = format!("{call:?}/{when:?}");
        let n = {
            let c = s.calls.entry(key).or_insert(0);
            *c += 1;
            *c
        };
        if let Some(f) = s.fault
            && f.call == call
            && f.when == when
            && f.nth == n
        {
            return Err(ProviderError::Other(format!(
                "simulated fault: {call:?} {when:?} #{n}"
            )));
        }
        Ok(())
    }

    fn created(item: &Item) -> Created {
        let mut details = Details::new();
        if let Some(g) = &item.guid {
            details.insert(DETAIL_GUID.into(), g.clone());
        }
        Created {
            location: format!("sim://{}", item.volume),
            details,
        }
    }

    fn make(
        &self,
        call: SimCall,
        spec: &VolumeSpec<'_>,
        parent: Option<&str>,
        files: BTreeMap<String, Vec<u8>>,
        guid: Option<String>,
    ) -> Result<Created, ProviderError> {
        self.check(call, When::Before)?;
        let created = {
            let mut s = self.lock();
            if let Some(existing) = s.items.get_mut(spec.id.as_str()) {
                if existing.op != spec.op {
                    return Err(ProviderError::AlreadyExists(spec.id.to_string()));
                }
                existing.complete = true;
                Self::created(existing)
            } else {
                let guid = match (spec.kind, guid) {
                    (VolumeKind::Snapshot, None) => {
                        s.next_guid += 1;
                        Some(format!("sim-{}-{}", spec.id, s.next_guid))
                    }
                    (_, g) => g,
                };
                let item = Item {
                    volume: spec.id.to_string(),
                    op: spec.op,
                    kind: spec.kind,
                    parent: parent.map(str::to_owned),
                    complete: true,
                    files,
                    guid,
                };
                let created = Self::created(&item);
                s.items.insert(spec.id.to_string(), item);
                created
            }
        };
        self.check(call, When::After)?;
        Ok(created)
    }

    fn files_of(&self, id: &str) -> Result<BTreeMap<String, Vec<u8>>, ProviderError> {
        self.lock()
            .items
            .get(id)
            .map(|i| i.files.clone())
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))
    }
}

impl Provider for SimProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn config(&self) -> ProviderConfig {
        ProviderConfig::new()
    }

    fn durability(&self) -> Durability {
        if self.lock().durable.is_some() {
            Durability::Batched
        } else {
            Durability::OnReturn
        }
    }

    fn sync(&self) -> Result<(), ProviderError> {
        self.check(SimCall::Sync, When::Before)?;
        let through = self.lock().sync_through.clone();
        if let Some((storage, dir)) = through {
            storage
                .sync_dir(&dir)
                .map_err(|e| ProviderError::io(format!("syncing {}", dir.display()), e))?;
        }
        {
            let mut s = self.lock();
            if s.durable.is_some() {
                s.durable = Some(s.persistent());
            }
        }
        self.check(SimCall::Sync, When::After)
    }

    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        self.make(SimCall::Create, spec, None, BTreeMap::new(), None)
    }

    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        let files = self.files_of(source.id)?;
        self.make(SimCall::Snapshot, spec, Some(source.id), files, None)
    }

    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        let files = self.files_of(snapshot.id)?;
        self.make(SimCall::Fork, spec, Some(snapshot.id), files, None)
    }

    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.check(SimCall::Destroy, When::Before)?;
        self.lock().items.remove(volume.id.as_str());
        self.check(SimCall::Destroy, When::After)
    }

    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        _options: &SendOptions,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError> {
        self.check(SimCall::Send, When::Before)?;
        let (bytes, base_guid) = self.stream_bytes(snapshot.id, base.map(|b| b.id.as_str()))?;
        let written = self.write_stream(&bytes, out)?;
        self.check(SimCall::Send, When::After)?;
        Ok(SendStats {
            bytes: written,
            incremental: base_guid.is_some(),
            resumed: false,
            read_bytes: 0,
        })
    }

    fn send_size(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        _options: &SendOptions,
    ) -> Result<Option<u64>, ProviderError> {
        let (bytes, _) = self.stream_bytes(snapshot.id, base.map(|b| b.id.as_str()))?;
        Ok(Some(bytes.len() as u64))
    }

    fn resume_fits(&self, snapshot: &VolumeRef<'_>, token: &str) -> Result<bool, ProviderError> {
        let s = self.lock();
        let guid = s
            .items
            .get(snapshot.id.as_str())
            .and_then(|i| i.guid.clone());
        Ok(Self::parse_token(token).is_some_and(|(_, g, base)| {
            Some(&g) == guid.as_ref()
                && base.is_none_or(|b| s.items.values().any(|i| i.guid.as_deref() == Some(&b)))
        }))
    }

    fn send_resumed(
        &self,
        snapshot: &VolumeRef<'_>,
        token: &str,
        out: &mut dyn Write,
    ) -> Result<Option<SendStats>, ProviderError> {
        self.check(SimCall::Send, When::Before)?;
        if !self.resume_fits(snapshot, token)? {
            return Ok(None);
        }
        let (offset, _, base_guid) = Self::parse_token(token).expect("checked");
        let base = base_guid.as_ref().and_then(|g| {
            let s = self.lock();
            s.items
                .values()
                .find(|i| {
                    i.guid.as_deref() == Some(g) && i.parent == snapshot.parent.map(str::to_owned)
                })
                .map(|i| i.volume.clone())
        });
        let (bytes, _) = self.stream_bytes(snapshot.id, base.as_deref())?;
        let rest = bytes.get(offset..).ok_or_else(|| {
            ProviderError::Stream(format!("resume offset {offset} is past the stream's end"))
        })?;
        let written = self.write_stream(rest, out)?;
        Ok(Some(SendStats {
            bytes: written,
            incremental: base_guid.is_some(),
            resumed: true,
            read_bytes: 0,
        }))
    }

    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        let mut bytes = Vec::new();
        let read = input.take(64 << 20).read_to_end(&mut bytes);
        let resumable = self.lock().resumable;
        let stream = if resumable {
            self.settle_resumable(target.id, spec.op, bytes, read)?
        } else {
            read.map_err(|e| ProviderError::io("receive", e))?;
            serde_json::from_slice::<SimStream>(&bytes)
                .map_err(|e| ProviderError::Stream(e.to_string()))?
        };
        self.lock().partial_ops.push(spec.op);
        let mut files = match &stream.base_guid {
            None => BTreeMap::new(),
            Some(base) => {
                let s = self.lock();
                s.items
                    .values()
                    .find(|i| {
                        i.guid.as_deref() == Some(base.as_str())
                            && i.parent.as_deref() == Some(target.id)
                    })
                    .map(|i| i.files.clone())
                    .ok_or_else(|| {
                        ProviderError::Stream(format!(
                            "base {base} not present on target {}",
                            target.id
                        ))
                    })?
            }
        };
        for d in &stream.deleted {
            files.remove(d);
        }
        files.extend(stream.files);
        if let Some(t) = self.lock().items.get_mut(target.id.as_str()) {
            t.files = files.clone();
        }
        let created = self.make(
            SimCall::Receive,
            spec,
            Some(target.id),
            files,
            Some(stream.guid),
        )?;
        self.lock().partial_ops.retain(|op| *op != spec.op);
        Ok(created)
    }

    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.check(SimCall::Inventory, When::Before)?;
        let s = self.lock();
        let mut found: Vec<Found> = s
            .items
            .values()
            .map(|i| Found {
                name: format!("sim/{}", i.volume),
                tag: Some(Tag {
                    volume: i.volume.clone(),
                    op: i.op,
                    kind: i.kind,
                    parent: i.parent.clone(),
                }),
                presence: if i.complete {
                    Presence::Complete
                } else {
                    Presence::Incomplete {
                        reason: "simulated half-made".into(),
                    }
                },
                location: Self::created(i).location,
                details: Self::created(i).details,
                partial: s.partials.get(&i.volume).cloned(),
            })
            .collect();
        found.extend(s.foreign.iter().map(|name| Found {
            name: format!("sim/{name}"),
            tag: None,
            presence: Presence::Complete,
            location: format!("sim://{name}"),
            details: Details::new(),
            partial: None,
        }));
        Ok(found)
    }

    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        let tag = found
            .tag
            .as_ref()
            .ok_or_else(|| ProviderError::Other("untagged".into()))?;
        let mut s = self.lock();
        let item = s
            .items
            .get_mut(&tag.volume)
            .ok_or_else(|| ProviderError::NotFound(tag.volume.clone()))?;
        item.complete = true;
        Ok(Self::created(item))
    }

    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        let mut s = self.lock();
        s.partial_ops.retain(|o| *o != op);
        s.partials.retain(|_, p| p.op != Some(op));
        Ok(())
    }

    fn partial_receive(
        &self,
        target: &VolumeRef<'_>,
    ) -> Result<Option<PartialReceive>, ProviderError> {
        Ok(self.lock().partials.get(target.id.as_str()).cloned())
    }

    fn abort_receive(&self, target: &VolumeRef<'_>) -> Result<(), ProviderError> {
        let mut s = self.lock();
        s.partials.remove(target.id.as_str());
        s.partial_bytes.remove(target.id.as_str());
        Ok(())
    }
}
