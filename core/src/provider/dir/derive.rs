//! Snapshots and forks: a copy of the source tree as a new item, under a
//! `copying` marker written first (a retry by the same operation starts the
//! copy over; an item of another operation, or foreign, is refused), marked
//! `complete` once every copied file and directory is durable.
//!
//! Every file operation goes through the provider's `Layout` seam (the copy
//! itself is [`Layout::copy_tree`](super::layout::Layout::copy_tree)), so
//! the power-cut sweep (`tests/torture_dir_powercut.rs`) runs this code on
//! the simulated file system. The order, each step durable before the next:
//! marker `copying` (file and directory fsynced) → the copy (every file
//! fsynced after its content, every directory after its entries) → a
//! snapshot's mode manifest (fsynced with its directory; a stale one
//! removed when there are no exceptions) → fsync of the content directory
//! (the copy's own entry) → marker `complete` (fsynced). A failure removes
//! the half-made item before returning (`discard`); a cut leaves a
//! `copying` marker, which the next open finishes (a fork: the copy is
//! redone from its immutable snapshot) or the manager's reconciliation
//! removes (a snapshot: its source may have changed since).

use std::path::Path;

use uuid::Uuid;

use super::marker::{self, MARKER_FORMAT, Marker, MarkerState};
use super::tree::Policy;
use super::{DirProvider, check_id, guid_hex};
use crate::model::VolumeKind;
use crate::provider::{Created, ProviderError, VolumeRef, VolumeSpec};

impl DirProvider {
    /// Copies `src` (kind `src_kind`, id `src_id`) into the item of marker
    /// `m` (state `copying`, directory absent) and marks it complete.
    pub(super) fn copy_into(
        &self,
        src_kind: VolumeKind,
        src_id: &str,
        src: &Path,
        m: &Marker,
    ) -> Result<Created, ProviderError> {
        let src_modes = self.modes_of(src_kind, src_id)?;
        let dst = self.path(m.kind, &m.volume);
        let policy = match m.kind {
            VolumeKind::Data => Policy::Plain,
            VolumeKind::Snapshot => Policy::Snapshot,
        };
        let modes = self.layout.copy_tree(src, &src_modes, &dst, policy, true)?;
        if m.kind == VolumeKind::Snapshot {
            marker::write_manifest(&*self.layout, &self.modes_dir(), &m.volume, &modes)?;
        }
        self.sync_dir(&self.content_dir(m.kind))?;
        let done = m.with_state(MarkerState::Complete);
        self.put_marker(&done)?;
        Ok(self.created(&done))
    }

    /// Snapshot and fork: a copy of `source` as a new item of kind `kind`.
    pub(super) fn derive(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        kind: VolumeKind,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if spec.kind != kind {
            return Err(ProviderError::Other(format!(
                "asked to make {} {} as a {kind}",
                spec.kind, spec.id
            )));
        }
        let (_, src) = self.require(source)?;
        let dst = self.path(kind, spec.id);
        let m = match self.marker(kind, spec.id)? {
            Some(m) if m.op != spec.op => {
                return Err(ProviderError::AlreadyExists(format!(
                    "{kind} {} (made by operation {})",
                    spec.id, m.op
                )));
            }
            Some(m) if m.state == MarkerState::Complete => {
                if self.is_dir(&dst)? {
                    return Ok(self.created(&m));
                }
                return Err(ProviderError::Other(format!(
                    "{kind} {} is marked complete but {} is missing",
                    spec.id,
                    dst.display()
                )));
            }
            Some(m) if m.state == MarkerState::Copying => {
                // Retried by the same operation: start the copy over.
                self.remove_own_tree(&dst)?;
                m
            }
            Some(m) => {
                return Err(ProviderError::Other(format!(
                    "{kind} {}: {}",
                    spec.id,
                    m.state.describe(m.parent.as_deref())
                )));
            }
            None => {
                if self.entry(&dst)?.is_some() {
                    return Err(ProviderError::AlreadyExists(format!(
                        "{} (not tagged as ours)",
                        dst.display()
                    )));
                }
                let m = Marker {
                    format: MARKER_FORMAT,
                    volume: spec.id.to_string(),
                    op: spec.op,
                    kind,
                    parent: Some(source.id.to_string()),
                    guid: (kind == VolumeKind::Snapshot)
                        .then(|| guid_hex(Uuid::new_v4().as_u128())),
                    state: MarkerState::Copying,
                };
                self.put_marker(&m)?;
                m
            }
        };
        self.copy_into(source.kind, source.id, &src, &m)
            .map_err(|e| e.or_no_space(&format!("the copy of {}", source.id)))
            .inspect_err(|_| self.discard(kind, spec.id, spec.op))
    }
}
