//! What callers that adapt to a provider ask of it (the CSI plugin): whether
//! it enforces capacity, how much space is free, which volume options it
//! takes.

use super::{Manager, ManagerError, check_id, live_kind, volume_ref};
use crate::provider::ProviderConfig;
use crate::state::{Action, Done, Meta, Volume, VolumeKind};

/// What a registered provider can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTraits {
    /// `dir`, `btrfs`, `zfs`, ...
    pub kind: String,
    /// Whether a data volume's capacity is enforced (and can be expanded).
    pub enforces_capacity: bool,
}

impl Manager {
    /// What provider `id` can do.
    pub fn provider_traits(&self, id: &str) -> Result<ProviderTraits, ManagerError> {
        let provider = self.inner.provider(id)?;
        Ok(ProviderTraits {
            kind: provider.kind().to_owned(),
            enforces_capacity: provider.enforces_capacity(),
        })
    }

    /// Ids of the volumes whose parent is `id` (its snapshots, the forks of
    /// a snapshot), without copying the whole state.
    pub fn dependents(&self, id: &str) -> Vec<String> {
        self.with_state(|s| s.dependents(id))
    }

    /// Bytes available for new volumes on provider `id`, if it can tell.
    pub async fn provider_free_bytes(&self, id: &str) -> Result<Option<u64>, ManagerError> {
        let provider = self.inner.provider(id)?;
        let provider_id = id.to_owned();
        tokio::task::spawn_blocking(move || provider.free_bytes())
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(|error| ManagerError::Provider {
                provider: provider_id,
                error,
            })
    }

    /// Checks volume options (such as ZFS `compression`) against provider
    /// `id` without acting.
    pub fn check_volume_options(
        &self,
        id: &str,
        options: &ProviderConfig,
    ) -> Result<(), ManagerError> {
        self.inner
            .provider(id)?
            .check_volume_options(options)
            .map_err(|e| ManagerError::InvalidInput(e.to_string()))
    }
}

impl Manager {
    /// Sets data volume `id`'s enforced capacity (when `Some`; refused by a
    /// provider that cannot enforce one) and provider options, through the
    /// write path (journal action `set-attributes`). A pending one found at
    /// open is applied again (case `attributes-reapplied`).
    pub async fn set_volume_attributes(
        &self,
        id: &str,
        capacity_bytes: Option<u64>,
        options: ProviderConfig,
    ) -> Result<Volume, ManagerError> {
        check_id(id)?;
        let (claim, volume) = self
            .inner
            .claim(&[id], |s| live_kind(s, id, VolumeKind::Data).cloned())?;
        let provider = self.inner.provider(&volume.provider)?;
        if capacity_bytes.is_some() && !provider.enforces_capacity() {
            return Err(ManagerError::InvalidInput(format!(
                "provider {} ({}) cannot enforce a capacity",
                volume.provider,
                provider.kind()
            )));
        }
        provider
            .check_volume_options(&options)
            .map_err(|e| ManagerError::InvalidInput(e.to_string()))?;
        let action = Action::SetAttributes {
            volume: id.to_owned(),
            capacity_bytes,
            options: options.clone(),
        };
        let inner = self.inner.clone();
        let id = id.to_owned();
        self.spawn(async move {
            let provider_id = volume.provider.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    let v = volume_ref(&volume)?;
                    if let Some(bytes) = capacity_bytes {
                        provider.set_capacity(&v, bytes)?;
                    }
                    provider.set_volume_options(&v, &options)?;
                    Ok(Done::default())
                })
                .await?;
            inner.volume(&id)
        })
        .await
    }

    /// Creates a data volume with a capacity and provider options: checked
    /// first, then [`Manager::create_volume`] and, when there is anything
    /// to set, [`Manager::set_volume_attributes`]. Two journaled operations:
    /// a crash between them leaves the volume without its attributes, which
    /// a retry (the CSI plugin's) sets.
    pub async fn create_volume_with(
        &self,
        provider_id: &str,
        id: Option<&str>,
        meta: Meta,
        capacity_bytes: Option<u64>,
        options: ProviderConfig,
    ) -> Result<Volume, ManagerError> {
        let traits = self.provider_traits(provider_id)?;
        if capacity_bytes.is_some() && !traits.enforces_capacity {
            return Err(ManagerError::InvalidInput(format!(
                "provider {provider_id} ({}) cannot enforce a capacity",
                traits.kind
            )));
        }
        self.check_volume_options(provider_id, &options)?;
        let volume = self.create_volume(provider_id, id, meta).await?;
        if capacity_bytes.is_none() && options.is_empty() {
            return Ok(volume);
        }
        match self
            .set_volume_attributes(&volume.id, capacity_bytes, options)
            .await
        {
            Ok(v) => Ok(v),
            Err(e) => {
                // Nothing half-made stays: the new volume goes again.
                if let Err(undo) = self.destroy_volume(&volume.id).await {
                    tracing::warn!(volume = %volume.id, error = %undo, "removing a volume whose attributes failed");
                }
                Err(e)
            }
        }
    }
}
