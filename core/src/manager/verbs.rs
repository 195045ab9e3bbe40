//! The mutating verbs: each validates and claims against the state, then
//! runs the write path with its provider side effect.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::write_path::Claim;
use super::{
    Manager, ManagerError, check_id, done, find, found_ref, live_kind, noted_orphan, volume_ref,
};
use crate::provider::{
    Created, Provider, ProviderConfig, ProviderError, VolumeRef, VolumeSpec, volume_id,
};
use crate::state::{Action, Done, Meta, ProviderRecord, Volume, VolumeKind};
use crate::validate;

impl Manager {
    /// Registers a provider under `id`.
    pub async fn add_provider(
        &self,
        id: &str,
        kind: &str,
        config: ProviderConfig,
    ) -> Result<(), ManagerError> {
        check_id(id)?;
        validate::provider_config(kind, &config).map_err(ManagerError::InvalidInput)?;
        if !self.inner.factories.contains_key(kind) {
            return Err(ManagerError::InvalidInput(format!(
                "unknown provider kind {kind:?}"
            )));
        }
        let claim_id = format!("provider:{id}");
        let (claim, ()) = self.inner.claim(&[claim_id.as_str()], |s| {
            if s.providers.contains_key(id) {
                return Err(ManagerError::AlreadyExists(id.to_owned()));
            }
            if let Some(why) = super::overlap::conflict(s, &config) {
                return Err(ManagerError::InvalidInput(format!(
                    "refusing provider {id:?}: {why}"
                )));
            }
            Ok(())
        })?;
        let inner = self.inner.clone();
        let action = Action::AddProvider(ProviderRecord {
            id: id.to_owned(),
            kind: kind.to_owned(),
            config: config.clone(),
        });
        let id = id.to_owned();
        let kind = kind.to_owned();
        self.spawn(async move {
            let built: Arc<Mutex<Option<Arc<dyn Provider>>>> = Arc::default();
            let slot = built.clone();
            let inner2 = inner.clone();
            inner
                .run(claim, action, &id, move |_op| {
                    let p = inner2.build_provider(&kind, &config)?;
                    *slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p);
                    Ok(Done::default())
                })
                .await?;
            if let Some(p) = built
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                inner
                    .providers
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, p);
            }
            Ok(())
        })
        .await
    }

    /// Creates a data volume on `provider_id`; a UUID when `id` is `None`.
    pub async fn create_volume(
        &self,
        provider_id: &str,
        id: Option<&str>,
        meta: Meta,
    ) -> Result<Volume, ManagerError> {
        let id = id.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        check_id(&id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let provider = self.inner.provider(provider_id)?;
        let (claim, ()) = self.inner.claim(&[id.as_str()], |s| {
            if s.volumes.contains_key(&id) {
                return Err(ManagerError::AlreadyExists(id.clone()));
            }
            Ok(())
        })?;
        let action = Action::CreateVolume {
            provider: provider_id.to_owned(),
            volume: id.clone(),
            meta,
        };
        let inner = self.inner.clone();
        let provider_id = provider_id.to_owned();
        self.spawn(async move {
            let vid = id.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: volume_id(&vid)?,
                        op,
                        kind: VolumeKind::Data,
                    };
                    let created = provider.create_volume(&spec);
                    undo_on_error(provider.as_ref(), &spec, created)
                })
                .await?;
            inner.volume(&id)
        })
        .await
    }

    /// Destroys a volume or snapshot. Refused while it has dependents.
    pub async fn destroy_volume(&self, id: &str) -> Result<(), ManagerError> {
        check_id(id)?;
        let (claim, volume) = self.inner.claim(&[id], |s| {
            let v = s
                .volumes
                .get(id)
                .ok_or_else(|| ManagerError::NoSuchVolume(id.to_owned()))?;
            let dependents = s.dependents(id);
            if !dependents.is_empty() {
                return Err(ManagerError::HasDependents {
                    id: id.to_owned(),
                    dependents,
                });
            }
            Ok(v.clone())
        })?;
        let provider = self.inner.provider(&volume.provider)?;
        let action = Action::DestroyVolume {
            volume: id.to_owned(),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let provider_id = volume.provider.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    match provider.destroy(&volume_ref(&volume)?) {
                        Ok(()) => Ok(Done::default()),
                        // Busy: nothing was destroyed, the volume is there
                        // (the contract of `Provider::destroy`): no lookup
                        // (two `zfs` commands on ZFS) to find that out.
                        Err(e @ ProviderError::Busy { .. }) => Err(e),
                        // Failed after its side effect? If the volume is gone
                        // the destroy happened: journal Done, not Failed, or
                        // the state would keep a volume the provider lost.
                        Err(e) => match find(provider.as_ref(), &volume.id) {
                            Ok(None) => Ok(Done::default()),
                            _ => Err(e),
                        },
                    }
                })
                .await
        })
        .await
    }

    /// Takes a snapshot of data volume `id`.
    pub async fn create_snapshot(&self, id: &str, meta: Meta) -> Result<Volume, ManagerError> {
        self.create_snapshot_as(id, None, meta).await
    }

    /// Takes a snapshot of data volume `id` named `snapshot_id` (a UUID when
    /// `None`), so a caller that retries under the same name (the CSI
    /// plugin) finds the snapshot its earlier attempt made.
    pub async fn create_snapshot_as(
        &self,
        id: &str,
        snapshot_id: Option<&str>,
        meta: Meta,
    ) -> Result<Volume, ManagerError> {
        check_id(id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let snap_id = snapshot_id.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        check_id(&snap_id)?;
        let (claim, source) = self.inner.claim(&[id, snap_id.as_str()], |s| {
            let source = live_kind(s, id, VolumeKind::Data)?;
            if s.volumes.contains_key(&snap_id) {
                return Err(ManagerError::AlreadyExists(snap_id.clone()));
            }
            Ok(source.clone())
        })?;
        let action = Action::CreateSnapshot {
            source: id.to_owned(),
            snapshot: snap_id.clone(),
            meta,
        };
        self.derive(
            claim,
            action,
            source,
            snap_id,
            VolumeKind::Snapshot,
            |p, from, spec| p.create_snapshot(from, spec),
        )
        .await
    }

    /// Makes a writable volume from snapshot `snapshot_id`.
    pub async fn fork_volume(
        &self,
        snapshot_id: &str,
        id: Option<&str>,
        meta: Meta,
    ) -> Result<Volume, ManagerError> {
        check_id(snapshot_id)?;
        let id = id.map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        check_id(&id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        // The snapshot is only read: shared with sends and other forks.
        let (claim, snapshot) = self.inner.claim_with(&[id.as_str()], &[snapshot_id], |s| {
            let v = live_kind(s, snapshot_id, VolumeKind::Snapshot)?;
            if s.volumes.contains_key(&id) {
                return Err(ManagerError::AlreadyExists(id.clone()));
            }
            Ok(v.clone())
        })?;
        let action = Action::ForkVolume {
            snapshot: snapshot_id.to_owned(),
            volume: id.clone(),
            meta,
        };
        self.derive(
            claim,
            action,
            snapshot,
            id,
            VolumeKind::Data,
            |p, from, spec| p.fork_volume(from, spec),
        )
        .await
    }

    /// The write path of a verb that makes item `new_id` of `kind` from
    /// `from` with `make` (a snapshot of a data volume, a fork of a
    /// snapshot); whatever a failed `make` left tagged with the operation is
    /// removed ([`undo_on_error`]). Answers the new item.
    async fn derive(
        &self,
        claim: Claim,
        action: Action,
        from: Volume,
        new_id: String,
        kind: VolumeKind,
        make: fn(&dyn Provider, &VolumeRef<'_>, &VolumeSpec<'_>) -> Result<Created, ProviderError>,
    ) -> Result<Volume, ManagerError> {
        let provider = self.inner.provider(&from.provider)?;
        let inner = self.inner.clone();
        self.spawn(async move {
            let id = new_id.clone();
            let provider_id = from.provider.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: volume_id(&id)?,
                        op,
                        kind,
                    };
                    let created = make(provider.as_ref(), &volume_ref(&from)?, &spec);
                    undo_on_error(provider.as_ref(), &spec, created)
                })
                .await?;
            inner.volume(&new_id)
        })
        .await
    }

    /// Records an orphan reported by reconciliation as a volume.
    pub async fn adopt_orphan(
        &self,
        provider_id: &str,
        volume_id: &str,
    ) -> Result<Volume, ManagerError> {
        check_id(provider_id)?;
        check_id(volume_id)?;
        let (claim, orphan) = self.inner.claim(&[volume_id], |s| {
            if s.volumes.contains_key(volume_id) {
                return Err(ManagerError::AlreadyExists(volume_id.to_owned()));
            }
            noted_orphan(s, provider_id, volume_id)
        })?;
        let provider = self.inner.provider(provider_id)?;
        let action = Action::AdoptOrphan {
            provider: provider_id.to_owned(),
            volume: volume_id.to_owned(),
            kind: orphan.kind,
            tagged_op: orphan.tagged_op,
        };
        let inner = self.inner.clone();
        let provider_id = provider_id.to_owned();
        let volume_id = volume_id.to_owned();
        self.spawn(async move {
            let vid = volume_id.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    let found = find(provider.as_ref(), &vid)?;
                    let found =
                        found.ok_or_else(|| ProviderError::NotFound(format!("orphan {vid}")))?;
                    Ok(Done {
                        location: found.location,
                        details: found.details,
                    })
                })
                .await?;
            inner.volume(&volume_id)
        })
        .await
    }

    /// Destroys an orphan reported by reconciliation.
    pub async fn destroy_orphan(
        &self,
        provider_id: &str,
        volume_id: &str,
    ) -> Result<(), ManagerError> {
        check_id(provider_id)?;
        check_id(volume_id)?;
        let (claim, orphan) = self
            .inner
            .claim(&[volume_id], |s| noted_orphan(s, provider_id, volume_id))?;
        let provider = self.inner.provider(provider_id)?;
        let action = Action::DestroyOrphan {
            provider: provider_id.to_owned(),
            volume: volume_id.to_owned(),
        };
        let inner = self.inner.clone();
        let provider_id = provider_id.to_owned();
        self.spawn(async move {
            inner
                .run(claim, action, &provider_id, move |_op| {
                    if let Some(found) = find(provider.as_ref(), &orphan.volume)? {
                        provider.destroy(&found_ref(&found, &orphan.volume, orphan.kind)?)?;
                    }
                    Ok(Done::default())
                })
                .await
        })
        .await
    }
}

/// After a failed creating call, removes whatever the provider holds that is
/// tagged with this very operation (never anything else), so a Failed outcome
/// leaves no orphan behind. If the cleanup itself fails, the item stays and the
/// next open reports it as an orphan: visible, never silent.
pub(super) fn undo_on_error(
    provider: &dyn Provider,
    spec: &VolumeSpec<'_>,
    created: Result<Created, ProviderError>,
) -> Result<Done, ProviderError> {
    let error = match created {
        Ok(created) => return Ok(done(created)),
        // Kept on purpose: resumable.
        Err(e @ ProviderError::Suspended { .. }) => return Err(e),
        Err(e) => e,
    };
    if let Err(e) = provider.abort_partial(spec.op) {
        tracing::warn!(op = %spec.op, error = %e, "cleanup of partial state failed");
    }
    match find(provider, spec.id) {
        Ok(Some(found)) if found.tag.as_ref().is_some_and(|t| t.op == spec.op) => {
            if let Err(e) = found_ref(&found, spec.id, spec.kind).and_then(|r| provider.destroy(&r))
            {
                tracing::warn!(op = %spec.op, volume = %spec.id, error = %e, "cleanup after failure failed");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(op = %spec.op, error = %e, "inventory after failure failed"),
    }
    Err(error)
}
