//! Mode bookkeeping of the directory provider: the *true* mode of an entry
//! (the one its user set, the one that travels in streams) versus the mode
//! its inode stores here ([`Policy`]), and the exceptions a tree keeps where
//! the two cannot be told apart by rule ([`Modes`]).
//!
//! Setuid and setgid never survive: every mode that enters a tree of ours,
//! from a stream or from a copy of a volume (whose copies belong to root), is
//! masked with [`KEPT_BITS`]. The sticky bit is kept: it only restricts who
//! may delete entries of a directory, grants nothing, and is what a shared
//! scratch directory (`1777`) needs.

use std::collections::BTreeMap;
use std::path::Path;

use super::tree::chmod_dir;
use crate::fsutil::{Dir, Kind};
use crate::provider::ProviderError;

/// Permission bits a mode field may carry (rwx for all, setuid, setgid, sticky).
pub(crate) const PERM_BITS: u32 = 0o7777;
/// Permission bits volmgr ever stores or sends: no setuid, no setgid.
pub(crate) const KEPT_BITS: u32 = 0o1777;

/// How a tree stores its entries' modes on disk.
///
/// The *true* mode of an entry is the one the user set and the one that
/// travels in streams; the *stored* mode is what the inode carries here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Data volumes: stored = true.
    Plain,
    /// Snapshots: stored = true without write bits (read-only tree) but with
    /// owner read (and search, for directories), so the provider can always
    /// read its own snapshots; the true mode is stored | `u+w` unless an
    /// exception records otherwise.
    Snapshot,
    /// Receive staging: stored = true plus `u+rwx` (directories) or `u+rw`
    /// (files), so the provider can always fill and read it; the true mode is
    /// the stored one unless an exception records otherwise.
    Staging,
}

impl Policy {
    pub(crate) fn stored(self, true_mode: u32, is_dir: bool) -> u32 {
        let m = true_mode & KEPT_BITS;
        match self {
            Policy::Plain => m,
            Policy::Snapshot => (m & !0o222) | if is_dir { 0o500 } else { 0o400 },
            Policy::Staging => m | if is_dir { 0o700 } else { 0o600 },
        }
    }

    fn default_true(self, stored: u32) -> u32 {
        let m = stored & KEPT_BITS;
        match self {
            Policy::Plain | Policy::Staging => m,
            Policy::Snapshot => m | 0o200,
        }
    }
}

/// The true modes of a tree: its policy plus the exceptions to the policy's
/// default rule, keyed by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Modes {
    pub(crate) policy: Policy,
    pub(crate) exceptions: BTreeMap<Vec<u8>, u32>,
    /// Sum of the exception keys' lengths, to bound memory.
    key_bytes: usize,
}

impl Modes {
    pub(crate) fn new(policy: Policy) -> Self {
        Modes {
            policy,
            exceptions: BTreeMap::new(),
            key_bytes: 0,
        }
    }

    pub(crate) fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// The true mode of `rel`, whose inode carries `stored`.
    pub(crate) fn true_mode(&self, rel: &[u8], stored: u32) -> u32 {
        match self.policy {
            Policy::Plain => stored & KEPT_BITS,
            _ => self
                .exceptions
                .get(rel)
                .copied()
                .unwrap_or_else(|| self.policy.default_true(stored)),
        }
    }

    /// Records that `rel` has true mode `true_mode`; returns the mode to store.
    pub(crate) fn record(&mut self, rel: &[u8], true_mode: u32, is_dir: bool) -> u32 {
        let true_mode = true_mode & KEPT_BITS;
        let stored = self.policy.stored(true_mode, is_dir);
        if self.policy.default_true(stored) == true_mode {
            if self.exceptions.remove(rel).is_some() {
                self.key_bytes -= rel.len();
            }
        } else if self.exceptions.insert(rel.to_vec(), true_mode).is_none() {
            self.key_bytes += rel.len();
        }
        stored
    }

    /// Forgets `rel` and everything under it.
    pub(crate) fn forget_subtree(&mut self, rel: &[u8]) {
        if self.exceptions.remove(rel).is_some() {
            self.key_bytes -= rel.len();
        }
        let doomed: Vec<Vec<u8>> = if rel.is_empty() {
            self.exceptions.keys().cloned().collect()
        } else {
            // Descendants are exactly the keys starting with "rel/": in
            // bytewise order they lie in ["rel/", "rel0") ('0' follows '/').
            let mut lo = rel.to_vec();
            lo.push(b'/');
            let mut hi = rel.to_vec();
            hi.push(b'0');
            self.exceptions
                .range(lo..hi)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in doomed {
            self.exceptions.remove(&k);
            self.key_bytes -= k.len();
        }
    }

    /// Sets the true modes on a staging tree (deepest paths first, so parents
    /// stay traversable), except the root's. Only meaningful for
    /// [`Policy::Staging`], where the tree otherwise already holds true modes.
    /// Every path is resolved beneath `root` without following symlinks.
    pub(crate) fn apply_true_modes(
        &self,
        root: &Path,
        skip_root: bool,
    ) -> Result<(), ProviderError> {
        let top = Dir::open(root)
            .map_err(|e| ProviderError::io(format!("opening {}", root.display()), e))?;
        let mut keys: Vec<&Vec<u8>> = self.exceptions.keys().collect();
        // Deepest first: by the number of path components.
        keys.sort_by_key(|k| std::cmp::Reverse(k.split(|&b| b == b'/').count()));
        for rel in keys {
            let mode = self.exceptions[rel];
            if rel.is_empty() {
                if !skip_root {
                    chmod_dir(root, mode)?;
                }
                continue;
            }
            let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
                Some(i) => (&rel[..i], &rel[i + 1..]),
                None => (&rel[..0], &rel[..]),
            };
            let at = |e| {
                ProviderError::io(
                    format!(
                        "setting the mode of {}/{}",
                        root.display(),
                        super::tree::show(rel)
                    ),
                    e,
                )
            };
            let dir = top.open_beneath(parent).map_err(at)?;
            if let Some(st) = dir.stat_at(name).map_err(at)?
                && matches!(st.kind, Kind::Dir | Kind::File)
            {
                dir.set_mode_at(name, mode).map_err(at)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::dir::tree::show;

    #[test]
    fn every_policy_round_trips_every_mode_without_setuid_or_setgid() {
        for mode in 0..=PERM_BITS {
            for is_dir in [false, true] {
                for policy in [Policy::Plain, Policy::Snapshot, Policy::Staging] {
                    let mut m = Modes::new(policy);
                    let stored = m.record(b"a/b", mode, is_dir);
                    assert_eq!(stored & 0o6000, 0, "{policy:?} stores {stored:o}");
                    let back = m.true_mode(b"a/b", stored);
                    assert_eq!(back, mode & KEPT_BITS, "{policy:?} {mode:o}");
                    if policy == Policy::Snapshot {
                        assert_eq!(stored & 0o222, 0);
                    }
                }
            }
        }
        let mut m = Modes::new(Policy::Snapshot);
        m.record(b"a/b", 0o644, false);
        assert!(
            m.exceptions.is_empty(),
            "the common case needs no exception"
        );
    }

    #[test]
    fn forget_subtree_removes_exactly_the_descendants() {
        let mut m = Modes::new(Policy::Snapshot);
        for k in ["a", "a/b", "a/b/c", "a0", "a.b", "ab", "b"] {
            m.record(k.as_bytes(), 0o444, false);
        }
        m.forget_subtree(b"a");
        let left: Vec<_> = m.exceptions.keys().map(|k| show(k)).collect();
        assert_eq!(left, ["a.b", "a0", "ab", "b"]);
        assert_eq!(m.key_bytes(), 3 + 2 + 2 + 1);
    }
}
