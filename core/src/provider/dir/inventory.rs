//! The directory provider's inventory: one scan of the content and marker
//! directories; untagged entries are foreign, half-made markers incomplete.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;

use super::layout::Entry;
use super::marker;
use super::{DirProvider, check_id};
use crate::model::{Details, VolumeKind};
use crate::provider::{Found, Presence, ProviderError, Tag};

impl DirProvider {
    /// Everything under the root, in one call (see [`crate::provider::Provider::inventory`]).
    pub(super) fn inventory_items(&self) -> Result<Vec<Found>, ProviderError> {
        let mut found = Vec::new();
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let content = self.content_dir(kind);
            let mut names: BTreeSet<Vec<u8>> = self
                .layout
                .names(&content)
                .map_err(|e| ProviderError::io(format!("listing {}", content.display()), e))?
                .into_iter()
                .collect();
            names.extend(
                marker::list(&*self.layout, &self.marker_dir(kind))?
                    .into_iter()
                    .map(String::into_bytes),
            );
            for name in names {
                let path = content.join(std::ffi::OsStr::from_bytes(&name));
                let shown = path.to_string_lossy().into_owned();
                let present = self.entry(&path)?;
                let marker = match std::str::from_utf8(&name) {
                    Ok(id) if check_id(id).is_ok() => self.marker(kind, id).transpose(),
                    _ => None,
                };
                let item = |tag, presence, details| Found {
                    name: shown.clone(),
                    tag,
                    presence,
                    location: shown.clone(),
                    details,
                    partial: None,
                };
                match marker {
                    None => {
                        // Untagged: foreign. Reported, never touched.
                        if present.is_some() {
                            found.push(item(None, Presence::Complete, Details::new()));
                        }
                    }
                    // Unreadable with no directory: a marker write a power
                    // cut interrupted before its barrier. Nothing is there;
                    // the next create of the id replaces it.
                    Some(Err(_)) if present.is_none() => {}
                    Some(Err(e)) => found.push(item(
                        None,
                        Presence::Incomplete {
                            reason: e.to_string(),
                        },
                        Details::new(),
                    )),
                    Some(Ok(m)) => {
                        let created = self.created(&m);
                        let tag = Some(Tag {
                            volume: m.volume.clone(),
                            op: m.op,
                            kind: m.kind,
                            parent: m.parent.clone(),
                        });
                        let presence = match (m.is_whole(), &present) {
                            // A whole item whose directory is gone: absent
                            // (lost, if the journal holds it).
                            (true, None) => continue,
                            (true, Some(Entry::Dir { .. })) => Presence::Complete,
                            (true, Some(_)) => Presence::Incomplete {
                                reason: format!("{shown} is not a directory"),
                            },
                            (false, _) => Presence::Incomplete {
                                reason: m.state.describe(m.parent.as_deref()),
                            },
                        };
                        found.push(Found {
                            name: shown.clone(),
                            tag,
                            presence,
                            location: created.location,
                            details: created.details,
                            partial: None,
                        });
                    }
                }
            }
        }
        Ok(found)
    }
}
