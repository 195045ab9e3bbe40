//! The directory provider's claim on its root: the ownership marker written
//! before anything else, the refusal of a foreign non-empty root, and the
//! refusal of a root nested in another provider's tree (see the parent
//! module's "Layout").

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::tree::{self, lstat, sync_dir};
use super::{CONFIG_ROOT, MARKERS};
use crate::provider::ProviderError;

/// The ownership marker of a provider root: `<root>/.volmgr/provider`.
pub(super) const ROOT_MARKER: &str = "provider";
pub(super) const ROOT_MARKER_TEXT: &str = "volmgr dir provider root (format 1)\n";

/// Refuses a root that lies inside the tree of a volmgr provider (its root,
/// a volume, a snapshot, the staging area): any strict ancestor holding a
/// `.volmgr` directory. Providers and volumes never nest.
pub(super) fn refuse_nested_root(root: &Path) -> Result<(), ProviderError> {
    let mut probe = root.to_path_buf();
    // Resolve the longest existing prefix, so a symlink cannot hide nesting.
    while fs::symlink_metadata(&probe).is_err() {
        if !probe.pop() {
            break;
        }
    }
    let real = fs::canonicalize(&probe).unwrap_or(probe);
    for ancestor in real.ancestors().chain(root.ancestors()) {
        if ancestor == root || ancestor == real {
            continue;
        }
        if tree::is_real_dir(&ancestor.join(MARKERS)).unwrap_or(false) {
            return Err(ProviderError::InvalidConfig(format!(
                "{CONFIG_ROOT} {} lies inside {}, the tree of another volmgr provider (a volume, \
                 a snapshot or its state): providers never nest",
                root.display(),
                ancestor.display()
            )));
        }
    }
    Ok(())
}

/// Makes sure `root` is ours before anything under it is touched: it carries
/// our ownership marker, or it is empty (the marker is written first), or it
/// is a root made by an earlier volmgr (a `.volmgr` directory, adopted).
/// Anything else is refused: volmgr never takes over, let alone empties, a
/// directory it did not create.
pub(super) fn claim_root(root: &Path) -> Result<(), ProviderError> {
    let markers = root.join(MARKERS);
    let marker = markers.join(ROOT_MARKER);
    if lstat(&marker)?.is_some_and(|md| md.file_type().is_file()) {
        return Ok(());
    }
    let names = tree::sorted_names(root)?;
    let legacy = tree::is_real_dir(&markers)?;
    if !names.is_empty() && !legacy {
        let shown: Vec<String> = names
            .iter()
            .take(3)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        return Err(ProviderError::InvalidConfig(format!(
            "{CONFIG_ROOT} {} is not empty ({}{}) and carries no volmgr ownership marker \
             ({MARKERS}/{ROOT_MARKER}): volmgr only uses a new or empty directory",
            root.display(),
            shown.join(", "),
            if names.len() > 3 { ", ..." } else { "" }
        )));
    }
    if !legacy {
        DirBuilder::new()
            .mode(0o755)
            .create(&markers)
            .map_err(|e| ProviderError::io(format!("creating {}", markers.display()), e))?;
        sync_dir(root)?;
    }
    tree::write_atomic(&markers, ROOT_MARKER, ROOT_MARKER_TEXT.as_bytes())
}
