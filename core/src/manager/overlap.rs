//! Where providers may live: a new provider's directories must not be, hold
//! or lie inside another provider's, nor lie inside a volume. Otherwise one
//! provider would treat another's (or a volume user's) files as its own:
//! sweep them as trash, report them as foreign volumes, or let the content
//! of a volume pose as provider state.

use std::path::{Component, Path, PathBuf};

use crate::provider::ProviderConfig;
use crate::state::State;

/// Configuration keys whose values are directories a provider owns (dir and
/// btrfs `root`, ZFS `workdir` and its alias `mountpoint_base`).
pub const PATH_KEYS: [&str; 3] = ["root", "workdir", "mountpoint_base"];

/// `path` without `.` components, and with `..` applied lexically; then, if
/// it (or its longest existing ancestor) exists, with symlinks resolved.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut existing = out.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut real = real;
            for name in rest.iter().rev() {
                real.push(name);
            }
            return real;
        }
        match (
            existing.file_name().map(std::borrow::ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return out,
        }
    }
}

pub(super) fn paths_of(config: &ProviderConfig) -> Vec<PathBuf> {
    PATH_KEYS
        .iter()
        .filter_map(|k| config.get(*k))
        .map(Path::new)
        .filter(|p| p.is_absolute())
        .map(normal)
        .collect()
}

/// Why a provider configured with `config` may not be added next to what
/// `state` holds (`None`: it may).
pub fn conflict(state: &State, config: &ProviderConfig) -> Option<String> {
    let mine = paths_of(config);
    for new in &mine {
        for (id, other) in &state.providers {
            for theirs in paths_of(&other.config) {
                if new.starts_with(&theirs) || theirs.starts_with(new) {
                    return Some(format!(
                        "{} overlaps {} of provider {id:?}: providers' directories must be disjoint",
                        new.display(),
                        theirs.display()
                    ));
                }
            }
        }
        for (vid, v) in &state.volumes {
            let location = Path::new(&v.location);
            if location.is_absolute() && new.starts_with(normal(location)) {
                return Some(format!(
                    "{} lies inside volume {vid:?} ({}): a provider never lives in volume content",
                    new.display(),
                    v.location
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_resolves_dots_and_symlinks_of_existing_ancestors() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("l")).unwrap();
        assert_eq!(normal(&real.join("l/./x/../y")), real.join("a/y"));
        assert_eq!(
            normal(Path::new("/no/such/./dir/..")),
            PathBuf::from("/no/such")
        );
    }
}
