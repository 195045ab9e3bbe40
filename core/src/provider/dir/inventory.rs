//! The directory provider's inventory: one scan of the content and marker
//! directories; untagged entries are foreign, half-made markers incomplete.
//! One item's lookup judges its directory and marker by the same rule.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::layout::Entry;
use super::marker::{self, Marker};
use super::{DirProvider, check_id};
use crate::model::{Details, VolumeId, VolumeKind};
use crate::provider::{Found, Presence, ProviderError, Tag};

impl DirProvider {
    /// Everything under the root, in one call (see [`crate::provider::Provider::inventory`]).
    pub(super) fn inventory_items(&self) -> Result<Vec<Found>, ProviderError> {
        let mut found = Vec::new();
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let content = self.content_dir(kind);
            // Two listings and one read a marker, each through one open
            // directory: no path resolved a volume, no `stat` where the
            // listing gives the entry's type. Both come sorted by name.
            let listed = self
                .layout
                .listing(&content)
                .map_err(|e| ProviderError::io(format!("listing {}", content.display()), e))?;
            let markers = marker::read_all(&*self.layout, &self.marker_dir(kind), kind)?
                .into_iter()
                .map(|(id, m)| (id.into_bytes(), m))
                .collect();
            for (name, present, marker) in join_by_name(listed, markers) {
                let path = content.join(std::ffi::OsStr::from_bytes(&name));
                found.extend(self.classify(&path, present, marker));
            }
        }
        Ok(found)
    }

    /// The item tagged as `id`, as [`Self::inventory_items`] reports it
    /// (see [`crate::provider::Provider::lookup`]): for each kind, an
    /// `lstat` of its directory and a read of its marker, judged by the
    /// same [`Self::classify`].
    pub(super) fn lookup_item(&self, id: &VolumeId) -> Result<Option<Found>, ProviderError> {
        check_id(id.as_str())?;
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let path = self.path(kind, id.as_str());
            let present = self.entry(&path)?.map(|e| matches!(e, Entry::Dir { .. }));
            let marker = self.marker(kind, id.as_str()).transpose();
            if let Some(f) = self.classify(&path, present, marker)
                && f.tag.as_ref().is_some_and(|t| t.volume == id.as_str())
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// What the inventory reports for the entry at `path` (`present`:
    /// whether it exists, and is a directory) with its marker (absent,
    /// unreadable, or read): `None` when nothing is there to report.
    fn classify(
        &self,
        path: &Path,
        present: Option<bool>,
        marker: Option<Result<Marker, ProviderError>>,
    ) -> Option<Found> {
        let shown = path.to_string_lossy().into_owned();
        let item = |tag, presence, details| Found {
            name: shown.clone(),
            tag,
            presence,
            location: shown.clone(),
            details,
            partial: None,
        };
        match marker {
            // Untagged: foreign. Reported, never touched.
            None => present.map(|_| item(None, Presence::Complete, Details::new())),
            // Unreadable with no directory: a marker write a power cut
            // interrupted before its barrier. Nothing is there; the next
            // create of the id replaces it.
            Some(Err(_)) if present.is_none() => None,
            Some(Err(e)) => Some(item(
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
                let presence = match (m.is_whole(), present) {
                    // A whole item whose directory is gone: absent (lost,
                    // if the journal holds it).
                    (true, None) => return None,
                    (true, Some(true)) => Presence::Complete,
                    (true, Some(false)) => Presence::Incomplete {
                        reason: format!("{shown} is not a directory"),
                    },
                    (false, _) => Presence::Incomplete {
                        reason: m.state.describe(m.parent.as_deref()),
                    },
                };
                Some(Found {
                    name: shown,
                    tag,
                    presence,
                    location: created.location,
                    details: created.details,
                    partial: None,
                })
            }
        }
    }
}

/// The full outer join of two lists sorted by name (each name at most once
/// in each): every name of either, with what each list holds for it.
fn join_by_name<A, B>(
    a: Vec<(Vec<u8>, A)>,
    b: Vec<(Vec<u8>, B)>,
) -> Vec<(Vec<u8>, Option<A>, Option<B>)> {
    debug_assert!(a.windows(2).all(|w| w[0].0 < w[1].0), "unsorted listing");
    debug_assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "unsorted markers");
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.0.cmp(&y.0),
        };
        out.push(match order {
            std::cmp::Ordering::Less => {
                let (name, x) = a.next().expect("peeked");
                (name, Some(x), None)
            }
            std::cmp::Ordering::Greater => {
                let (name, y) = b.next().expect("peeked");
                (name, None, Some(y))
            }
            std::cmp::Ordering::Equal => {
                let (name, x) = a.next().expect("peeked");
                let (_, y) = b.next().expect("peeked");
                (name, Some(x), Some(y))
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::join_by_name;

    #[test]
    fn join_by_name_gives_every_name_of_either_list_once_in_order() {
        let a = vec![(b"a".to_vec(), 1), (b"c".to_vec(), 3), (b"d".to_vec(), 4)];
        let b = vec![
            (b"b".to_vec(), 'b'),
            (b"c".to_vec(), 'c'),
            (b"e".to_vec(), 'e'),
        ];
        let joined = join_by_name(a, b);
        assert_eq!(
            joined,
            vec![
                (b"a".to_vec(), Some(1), None),
                (b"b".to_vec(), None, Some('b')),
                (b"c".to_vec(), Some(3), Some('c')),
                (b"d".to_vec(), Some(4), None),
                (b"e".to_vec(), None, Some('e')),
            ]
        );
        assert!(join_by_name::<u8, u8>(Vec::new(), Vec::new()).is_empty());
    }
}
