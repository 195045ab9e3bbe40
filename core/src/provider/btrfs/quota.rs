//! A volume's capacity: a limit on a level-1 qgroup of its own, which the
//! kernel makes every subvolume a tenant nests in the volume a member of.
//!
//! A qgroup limit on the volume's own qgroup `0/<id>` bounds only the
//! subvolume's tree: any user who may write a directory may create a
//! subvolume there (`BTRFS_IOC_SUBVOL_CREATE` needs no capability), whose
//! qgroup `0/<new>` was outside the limit (measured on Linux 6.18: 20 MiB
//! written in a nested subvolume of a volume limited to 1 MiB). So the
//! limit is on the volume's *group* `1/<id>` (`<id>` its subvolume id),
//! which holds `0/<id>` and the qgroup of every subvolume inside it, and
//! the provider needs *simple quotas* (Linux 6.7 and later), in which the
//! kernel makes a new subvolume a member of every qgroup its parent
//! subvolume's qgroup belongs to (`qgroup_auto_inherit`), however deep.
//! Full qgroups never do (measured on 6.18: the nested `0/<new>` stays
//! outside `1/<id>`).
//!
//! Modes ([`QuotaMode`], from the quota tree's status item):
//! - quotas off: the provider enables simple quotas when it opens
//!   (`BTRFS_IOC_QUOTA_CTL`, `BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA`: no
//!   btrfs-progs newer than 6.2 needed), so that every byte a volume
//!   writes is charged from the start. A kernel without them (`EINVAL`)
//!   keeps quotas off until a capacity is first set, then gets full
//!   quotas, as before (with a warning: nested subvolumes unbounded).
//! - full quotas, enabled by the operator or by a volmgr before this one:
//!   kept (the provider never switches an operator's mode). Capacities
//!   still go on the volume's group, with the subvolumes nested at that
//!   moment assigned to it, but a subvolume nested later is outside: a
//!   warning says so at open and at each capacity set.
//! - simple quotas: bound, with the limits below.
//!
//! Under simple quotas an extent is charged to the subvolume that
//! allocated it, for as long as it lives: a fork starts near 0 (its data
//! stays charged to the volume that wrote it), so its capacity bounds what
//! it writes after the fork. The floor of a capacity (never below what the
//! volume holds) is then the larger of the group's charge and the bytes
//! the file extents of the volume and of its nested subvolumes reference
//! ([`referenced_by_trees`], a walk of their trees by id).
//!
//! The kernel takes an inheritance list from any creator of a subvolume
//! (`btrfs subvolume create -i`, or `BTRFS_SUBVOL_QGROUP_INHERIT` in the
//! ioctl): an explicit list, even an empty one, replaces the automatic
//! inheritance, and it may name any existing group of higher level
//! (measured on 6.18, as `nobody`). A tenant that passes one escapes its
//! group. The provider moves every subvolume nested in a volume into the
//! volume's group (out of any other group) each time it sets the volume's
//! capacity, but between two such calls only the container runtime can
//! stop it (for instance a seccomp filter on `BTRFS_IOC_SUBVOL_CREATE_V2`
//! and `BTRFS_IOC_SNAP_CREATE_V2`).
//!
//! The group `1/<id>` is the provider's: created when a capacity is first
//! set, removed (members first: btrfs destroys no qgroup with members,
//! `EBUSY`) right after the subvolume is deleted, by every deletion
//! (destroy, the purge of a receive's old content, the trash). If the
//! volume holds nested subvolumes its limit is lifted first: deleting
//! them in a volume at its capacity needs room in the volume (`EDQUOT`,
//! measured); it is set again if the deletion fails (busy, say): the
//! volume lives on, bounded. A volume with none keeps its limit
//! throughout (its own entry is in the provider's directory). A
//! receive replaces the volume's subvolume by another (a new id): the new
//! content gets a group with the same limit before the exchange
//! ([`BtrfsProvider::carry_capacity`]; the limit on `0/<id>` before groups
//! was lost there).
//!
//! [`BtrfsProvider::carry_capacity`]: super::BtrfsProvider::carry_capacity

use std::io;
use std::os::unix::io::RawFd;
use std::path::Path;

use super::io_err;
use super::nested::{Key, descendants_deepest_first, for_each_item};
use super::subvol::subvol_info;
use crate::provider::ProviderError;

/// `BTRFS_QUOTA_TREE_OBJECTID`.
const QUOTA_TREE: u64 = 8;
/// `BTRFS_QGROUP_STATUS_KEY`: `(0, STATUS, 0)`.
const QGROUP_STATUS_KEY: u32 = 240;
/// `BTRFS_QGROUP_INFO_KEY`: `(0, INFO, qgroupid)`.
const QGROUP_INFO_KEY: u32 = 242;
/// `BTRFS_QGROUP_LIMIT_KEY`: `(0, LIMIT, qgroupid)`.
const QGROUP_LIMIT_KEY: u32 = 244;
/// `BTRFS_QGROUP_RELATION_KEY`: `(a, RELATION, b)` and `(b, RELATION, a)`.
const QGROUP_RELATION_KEY: u32 = 246;
/// `BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT`.
const STATUS_INCONSISTENT: u64 = 1 << 2;
/// `BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE`.
const STATUS_SIMPLE_MODE: u64 = 1 << 3;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`.
const LIMIT_MAX_RFER: u64 = 1;
/// `BTRFS_EXTENT_DATA_KEY`: `(inode, EXTENT_DATA, file offset)`.
const EXTENT_DATA_KEY: u32 = 108;
/// `BTRFS_FIRST_FREE_OBJECTID`: the lowest inode number of files.
const FIRST_FREE_OBJECTID: u64 = 256;
/// `BTRFS_FILE_EXTENT_INLINE`.
const FILE_EXTENT_INLINE: u8 = 0;

/// `_IOWR(BTRFS_IOCTL_MAGIC, 40, struct btrfs_ioctl_quota_ctl_args)` (40
/// is `0x28`).
const BTRFS_IOC_QUOTA_CTL: u64 = (3 << 30) | (16 << 16) | (0x94 << 8) | 0x28;
/// `BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA`.
const QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
/// `_IOW(BTRFS_IOCTL_MAGIC, 41, struct btrfs_ioctl_qgroup_assign_args)`
/// (41 is `0x29`).
const BTRFS_IOC_QGROUP_ASSIGN: u64 = (1 << 30) | (24 << 16) | (0x94 << 8) | 0x29;
/// `_IOW(BTRFS_IOCTL_MAGIC, 42, struct btrfs_ioctl_qgroup_create_args)`
/// (42 is `0x2a`).
const BTRFS_IOC_QGROUP_CREATE: u64 = (1 << 30) | (16 << 16) | (0x94 << 8) | 0x2a;
/// `_IOR(BTRFS_IOCTL_MAGIC, 43, struct btrfs_ioctl_qgroup_limit_args)`
/// (43 is `0x2b`; `_IOR` in linux/btrfs.h, though the kernel reads it).
const BTRFS_IOC_QGROUP_LIMIT: u64 = (2 << 30) | (48 << 16) | (0x94 << 8) | 0x2b;

/// How quotas are accounted on the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QuotaMode {
    Off,
    /// Full qgroups: nested subvolumes are not made members of the
    /// volume's group.
    Full,
    /// Simple quotas: they are.
    Simple,
}

/// The quota state: the mode and whether btrfs marked its numbers
/// inconsistent (full mode: a rescan is due).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QuotaStatus {
    pub(super) mode: QuotaMode,
    pub(super) inconsistent: bool,
}

/// The qgroup id `level/id`.
pub(super) fn qgroupid(level: u16, id: u64) -> u64 {
    (u64::from(level) << 48) | (id & ((1 << 48) - 1))
}

/// `level/id`, as btrfs prints qgroup ids.
pub(super) fn show(qgroup: u64) -> String {
    format!("{}/{}", qgroup >> 48, qgroup & ((1 << 48) - 1))
}

/// The group of the volume whose subvolume id is `tree_id`.
pub(super) fn group_of(tree_id: u64) -> u64 {
    qgroupid(1, tree_id)
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// The status of `struct btrfs_qgroup_status_item` (`flags` at byte 16).
pub(super) fn parse_status(item: &[u8]) -> Option<QuotaStatus> {
    let flags = le_u64(item, 16)?;
    Some(QuotaStatus {
        mode: if flags & STATUS_SIMPLE_MODE != 0 {
            QuotaMode::Simple
        } else {
            QuotaMode::Full
        },
        inconsistent: flags & STATUS_INCONSISTENT != 0,
    })
}

/// The quota status of the file system `fd` is on: its quota tree's status
/// item; no quota tree (`ENOENT`) is [`QuotaMode::Off`].
pub(super) fn status(fd: RawFd) -> io::Result<QuotaStatus> {
    let mut found = None;
    let key = (0, QGROUP_STATUS_KEY, 0);
    match for_each_item(fd, QUOTA_TREE, key, key, |_, data| {
        found = parse_status(data);
    }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => other?,
    }
    Ok(found.unwrap_or(QuotaStatus {
        mode: QuotaMode::Off,
        inconsistent: false,
    }))
}

/// Enables simple quotas (`EINVAL` on kernels without them).
pub(super) fn enable_simple(fd: RawFd) -> io::Result<()> {
    let mut args = [QUOTA_CTL_ENABLE_SIMPLE_QUOTA, 0u64];
    // SAFETY: `struct btrfs_ioctl_quota_ctl_args` is two u64s.
    if unsafe { libc::ioctl(fd, BTRFS_IOC_QUOTA_CTL as _, args.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The referenced bytes of `qgroup` as of the last commit (its info
/// item's `rfer`, at byte 8), `None` if it does not exist.
pub(super) fn referenced(fd: RawFd, qgroup: u64) -> io::Result<Option<u64>> {
    let mut found = None;
    let key = (0, QGROUP_INFO_KEY, qgroup);
    for_each_item(fd, QUOTA_TREE, key, key, |_, data| {
        found = le_u64(data, 8);
    })?;
    Ok(found)
}

/// The limit on `qgroup`'s referenced bytes (its limit item: `flags`,
/// then `max_rfer`), `None` if it has none.
pub(super) fn max_referenced(fd: RawFd, qgroup: u64) -> io::Result<Option<u64>> {
    let mut found = None;
    let key = (0, QGROUP_LIMIT_KEY, qgroup);
    for_each_item(fd, QUOTA_TREE, key, key, |_, data| {
        found = parse_max_referenced(data);
    })?;
    Ok(found)
}

pub(super) fn parse_max_referenced(item: &[u8]) -> Option<u64> {
    let flags = le_u64(item, 0)?;
    (flags & LIMIT_MAX_RFER != 0)
        .then(|| le_u64(item, 8))
        .flatten()
}

/// The qgroups related to `qgroup`: its members (lower ids: lower
/// levels) and the groups it belongs to (higher ids).
pub(super) fn related(fd: RawFd, qgroup: u64) -> io::Result<(Vec<u64>, Vec<u64>)> {
    let (mut members, mut groups) = (Vec::new(), Vec::new());
    for_each_item(
        fd,
        QUOTA_TREE,
        (qgroup, QGROUP_RELATION_KEY, 0),
        (qgroup, QGROUP_RELATION_KEY, u64::MAX),
        |(_, _, other), _| {
            if other < qgroup {
                members.push(other);
            } else if other > qgroup {
                groups.push(other);
            }
        },
    )?;
    Ok((members, groups))
}

fn ioctl_u64s<const N: usize>(fd: RawFd, request: u64, mut args: [u64; N]) -> io::Result<i32> {
    // SAFETY: each request's struct is exactly these u64s (asserted by
    // the request numbers' sizes, tested against linux/btrfs.h).
    let r = unsafe { libc::ioctl(fd, request as _, args.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Creates `qgroup`; `Ok(false)` if it already existed.
pub(super) fn create(fd: RawFd, qgroup: u64) -> io::Result<bool> {
    match ioctl_u64s(fd, BTRFS_IOC_QGROUP_CREATE, [1, qgroup]) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Destroys `qgroup` (which must have no members); `Ok(())` if absent.
pub(super) fn destroy(fd: RawFd, qgroup: u64) -> io::Result<()> {
    match ioctl_u64s(fd, BTRFS_IOC_QGROUP_CREATE, [0, qgroup]) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `member` a member of `group` (`assign`) or no longer one;
/// `Ok(true)` when btrfs reports its numbers inconsistent after it (full
/// quotas: a rescan is due). Already so: `Ok(false)`.
pub(super) fn relate(fd: RawFd, member: u64, group: u64, assign: bool) -> io::Result<bool> {
    match ioctl_u64s(
        fd,
        BTRFS_IOC_QGROUP_ASSIGN,
        [u64::from(assign), member, group],
    ) {
        Ok(r) => Ok(r > 0),
        Err(e) if assign && e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) if !assign && e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Limits `qgroup`'s referenced bytes to `bytes`, or clears that limit.
pub(super) fn limit(fd: RawFd, qgroup: u64, bytes: Option<u64>) -> io::Result<()> {
    // `struct btrfs_ioctl_qgroup_limit_args`: the qgroup id, then `struct
    // btrfs_qgroup_limit` (flags, max_rfer, max_excl, rsv_rfer,
    // rsv_excl); `u64::MAX` clears a limit.
    let max_rfer = bytes.unwrap_or(u64::MAX);
    ioctl_u64s(
        fd,
        BTRFS_IOC_QGROUP_LIMIT,
        [qgroup, LIMIT_MAX_RFER, max_rfer, 0, 0, 0],
    )
    .map(drop)
}

/// The bytes a file extent item references: an inline extent's length, a
/// regular or preallocated extent's `num_bytes` (byte 45), a hole none
/// (`disk_bytenr`, byte 21, is 0).
pub(super) fn extent_referenced(item: &[u8]) -> u64 {
    match item.get(20) {
        Some(&FILE_EXTENT_INLINE) => le_u64(item, 8).unwrap_or(0),
        Some(_) if le_u64(item, 21).is_some_and(|b| b != 0) => le_u64(item, 45).unwrap_or(0),
        _ => 0,
    }
}

/// The bytes the file extents of subvolume `tree_id` and of every
/// subvolume inside it reference (a walk of their trees by id, no path:
/// what the volume holds, whoever is charged for it). Shared extents count
/// once per reference, so this is at least what the subvolumes hold.
pub(super) fn referenced_by_trees(fd: RawFd, tree_id: u64) -> io::Result<u64> {
    let mut total = 0u64;
    let trees = std::iter::once(tree_id).chain(
        descendants_deepest_first(fd, tree_id)?
            .into_iter()
            .map(|(id, _)| id),
    );
    for tree in trees {
        let min: Key = (FIRST_FREE_OBJECTID, EXTENT_DATA_KEY, 0);
        let max: Key = (u64::MAX, EXTENT_DATA_KEY, u64::MAX);
        for_each_item(fd, tree, min, max, |(_, kind, _), data| {
            if kind == EXTENT_DATA_KEY {
                total = total.saturating_add(extent_referenced(data));
            }
        })?;
    }
    Ok(total)
}

impl super::BtrfsProvider {
    /// At open: simple quotas enabled if quotas are off; a warning where
    /// capacities cannot bound nested subvolumes (module doc). Never fails
    /// the open: a capacity set later reports what goes wrong.
    pub(super) fn prepare_quotas(&self) {
        let fd = self.handle.fd();
        let root = self.root.display();
        match status(fd).map(|s| s.mode) {
            Ok(QuotaMode::Off) => match enable_simple(fd) {
                Ok(()) => tracing::info!(root = %root, "enabled btrfs simple quotas"),
                Err(e) => tracing::warn!(
                    root = %root,
                    error = %e,
                    "this kernel has no btrfs simple quotas (Linux 6.7 and later): a capacity \
                     will enable full quotas, which do not bound subvolumes a tenant nests in \
                     its volume"
                ),
            },
            Ok(QuotaMode::Full) => tracing::warn!(
                root = %root,
                "full btrfs quotas are enabled on this file system (kept as they are): a \
                 capacity does not bound subvolumes a tenant nests in its volume after the \
                 capacity is set; `btrfs quota disable`, then reopening the provider, switches \
                 to simple quotas, which do"
            ),
            Ok(QuotaMode::Simple) => {}
            Err(e) => tracing::warn!(root = %root, error = %e, "reading the btrfs quota status"),
        }
    }

    /// Whether quotas are off on the file system (no capacity was ever
    /// set, nor groups made); `context` ends the error's message.
    fn quotas_off(&self, context: &str) -> Result<bool, ProviderError> {
        let mode = status(self.handle.fd())
            .map_err(io_err(format!("reading the btrfs quota status{context}")))?
            .mode;
        Ok(mode == QuotaMode::Off)
    }

    /// Waits for a rescan of the quota numbers (full quotas).
    fn rescan(&self) -> Result<(), ProviderError> {
        self.btrfs()
            .arg("quota")
            .arg("rescan")
            .arg("-w")
            .path_arg(&self.root)?
            .run()
            .map(drop)
    }

    /// The capacity `bytes` of the data volume `what` whose subvolume is
    /// `path`: its group `1/<id>` made (if new), the volume's qgroup and
    /// those of the subvolumes inside it made its members (and of no other
    /// group), then limited, never below what the volume holds
    /// ([`ProviderError::CapacityBelowUsage`]). A stale limit on the
    /// volume's own qgroup (set by a volmgr before groups) is cleared.
    pub(super) fn limit_volume(
        &self,
        what: &str,
        path: &Path,
        bytes: u64,
    ) -> Result<(), ProviderError> {
        let fd = self.handle.fd();
        let tree_id = subvol_info(path)?.tree_id;
        let group = group_of(tree_id);
        let at = |doing: &str| format!("{doing} ({what}, subvolume id {tree_id})");
        let mut mode = status(fd)
            .map_err(io_err(at("reading the btrfs quota status")))?
            .mode;
        if mode == QuotaMode::Off {
            // A kernel without simple quotas (the open tried them).
            self.btrfs()
                .arg("quota")
                .arg("enable")
                .path_arg(&self.root)?
                .run()?;
            self.rescan()?;
            mode = QuotaMode::Full;
        }
        if mode == QuotaMode::Full {
            tracing::warn!(
                volume = what,
                "full btrfs quotas: this capacity does not bound subvolumes nested in the \
                 volume from now on (module doc of btrfs/quota.rs)"
            );
        }
        create(fd, group).map_err(io_err(at(&format!("creating qgroup {}", show(group)))))?;
        let nested: Vec<u64> = descendants_deepest_first(fd, tree_id)
            .map_err(io_err(at("listing the subvolumes inside")))?
            .into_iter()
            .map(|(id, _)| qgroupid(0, id))
            .collect();
        let mut inconsistent = false;
        for member in std::iter::once(qgroupid(0, tree_id)).chain(nested.iter().copied()) {
            inconsistent |= relate(fd, member, group, true).map_err(io_err(at(&format!(
                "assigning qgroup {} to {}",
                show(member),
                show(group)
            ))))?;
        }
        // A creator's inheritance list may have put a nested subvolume in
        // another group (module doc): out of it.
        for &member in &nested {
            let (_, groups) = related(fd, member)
                .map_err(io_err(at(&format!("reading qgroup {}", show(member)))))?;
            for other in groups.into_iter().filter(|&g| g != group) {
                inconsistent |= relate(fd, member, other, false).map_err(io_err(at(&format!(
                    "removing qgroup {} from {}",
                    show(member),
                    show(other)
                ))))?;
            }
        }
        // The info items are written at a commit.
        self.handle
            .commit()
            .map_err(io_err(at("committing the btrfs transaction")))?;
        if mode == QuotaMode::Full
            && (inconsistent
                || status(fd)
                    .map_err(io_err(at("reading the btrfs quota status")))?
                    .inconsistent)
        {
            self.rescan()?;
        }
        let charged = referenced(fd, group)
            .map_err(io_err(at(&format!("reading qgroup {}", show(group)))))?
            .unwrap_or(0);
        let used = if mode == QuotaMode::Simple {
            charged.max(
                referenced_by_trees(fd, tree_id).map_err(io_err(at("reading the file extents")))?,
            )
        } else {
            charged
        };
        if used > bytes {
            return Err(ProviderError::CapacityBelowUsage {
                what: what.to_owned(),
                used,
                capacity: bytes,
            });
        }
        limit(fd, group, Some(bytes))
            .map_err(io_err(at(&format!("limiting qgroup {}", show(group)))))?;
        let own = qgroupid(0, tree_id);
        if max_referenced(fd, own)
            .map_err(io_err(at(&format!("reading qgroup {}", show(own)))))?
            .is_some()
        {
            limit(fd, own, None)
                .map_err(io_err(at(&format!("clearing the limit of {}", show(own)))))?;
        }
        Ok(())
    }

    /// Gives subvolume `to` (a volume's next content: a receive's writable
    /// snapshot, not yet in place) the capacity of subvolume `from` (the
    /// content it replaces), if it has one: a group of its own with the
    /// same limit. Not checked against what `to` holds (the receive
    /// brought it; writes beyond the limit then fail, `EDQUOT`). Undone
    /// with `to` if the receive is: every deletion removes the group.
    pub(super) fn carry_capacity(&self, from: &Path, to: &Path) -> Result<(), ProviderError> {
        let fd = self.handle.fd();
        let (from_id, to_id) = (subvol_info(from)?.tree_id, subvol_info(to)?.tree_id);
        let at = |doing: String| {
            format!("{doing} (carrying the capacity of subvolume id {from_id} to {to_id})")
        };
        if self.quotas_off(&at(String::new()))? {
            return Ok(());
        }
        let Some(bytes) = max_referenced(fd, group_of(from_id)).map_err(io_err(at(format!(
            "reading qgroup {}",
            show(group_of(from_id))
        ))))?
        else {
            return Ok(());
        };
        let group = group_of(to_id);
        create(fd, group).map_err(io_err(at(format!("creating qgroup {}", show(group)))))?;
        relate(fd, qgroupid(0, to_id), group, true)
            .map_err(io_err(at(format!("assigning qgroup 0/{to_id}"))))?;
        limit(fd, group, Some(bytes))
            .map_err(io_err(at(format!("limiting qgroup {}", show(group)))))
    }

    /// Lifts the limit of the group of subvolume `tree_id`, before its
    /// deletion: deleting the subvolumes nested in a volume at its capacity
    /// needs room in it (measured: `EDQUOT`, the volume undestroyable).
    /// Returns the limit lifted, for [`BtrfsProvider::restore_limit`] if
    /// the deletion is refused.
    ///
    /// [`BtrfsProvider::restore_limit`]: super::BtrfsProvider::restore_limit
    pub(super) fn lift_limit(&self, tree_id: u64) -> Result<Option<u64>, ProviderError> {
        let fd = self.handle.fd();
        let group = group_of(tree_id);
        let at = |doing: String| format!("{doing} (subvolume id {tree_id}, to delete it)");
        if self.quotas_off(&at(String::new()))? {
            return Ok(None);
        }
        let lifted = max_referenced(fd, group)
            .map_err(io_err(at(format!("reading qgroup {}", show(group)))))?;
        if lifted.is_some() {
            limit(fd, group, None)
                .map_err(io_err(at(format!("lifting the limit of {}", show(group)))))?;
        }
        Ok(lifted)
    }

    /// Sets again a limit [`BtrfsProvider::lift_limit`] lifted (the
    /// deletion was refused: the volume lives on, bounded).
    ///
    /// [`BtrfsProvider::lift_limit`]: super::BtrfsProvider::lift_limit
    pub(super) fn restore_limit(&self, tree_id: u64, bytes: u64) -> Result<(), ProviderError> {
        let group = group_of(tree_id);
        limit(self.handle.fd(), group, Some(bytes)).map_err(io_err(format!(
            "setting the limit of {} again (subvolume id {tree_id}, whose deletion failed)",
            show(group)
        )))
    }

    /// Removes the group of the subvolume whose id was `tree_id` (members
    /// first), if it has one: right after the subvolume is deleted (a
    /// deletion refused, busy say, leaves the volume its limit).
    pub(super) fn release_group(&self, tree_id: u64) -> Result<(), ProviderError> {
        let fd = self.handle.fd();
        let group = group_of(tree_id);
        let at = |doing: String| format!("{doing} (of deleted subvolume id {tree_id})");
        if self.quotas_off(&at(String::new()))? {
            return Ok(());
        }
        let (members, _) =
            related(fd, group).map_err(io_err(at(format!("reading qgroup {}", show(group)))))?;
        for member in members {
            relate(fd, member, group, false).map_err(io_err(at(format!(
                "removing qgroup {} from {}",
                show(member),
                show(group)
            ))))?;
        }
        destroy(fd, group).map_err(io_err(at(format!("destroying qgroup {}", show(group)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgroup_ids_are_level_and_id_as_btrfs_prints_them() {
        assert_eq!(qgroupid(1, 256), (1 << 48) | 256);
        assert_eq!(show(group_of(300)), "1/300");
        assert_eq!(show(qgroupid(0, 5)), "0/5");
    }

    #[test]
    fn ioctl_numbers_match_linux_btrfs_h() {
        // Values of the macros as linux/btrfs.h computes them on x86_64.
        assert_eq!(BTRFS_IOC_QUOTA_CTL, 0xc010_9428);
        assert_eq!(BTRFS_IOC_QGROUP_ASSIGN, 0x4018_9429);
        assert_eq!(BTRFS_IOC_QGROUP_CREATE, 0x4010_942a);
        assert_eq!(BTRFS_IOC_QGROUP_LIMIT, 0x8030_942b);
    }

    #[test]
    fn the_status_item_tells_simple_from_full_quotas() {
        let item = |flags: u64| {
            let mut b = vec![0u8; 40];
            b[16..24].copy_from_slice(&flags.to_le_bytes());
            b
        };
        let s = parse_status(&item(1 | STATUS_SIMPLE_MODE)).unwrap();
        assert_eq!((s.mode, s.inconsistent), (QuotaMode::Simple, false));
        let s = parse_status(&item(1 | STATUS_INCONSISTENT)).unwrap();
        assert_eq!((s.mode, s.inconsistent), (QuotaMode::Full, true));
        assert_eq!(parse_status(&[0u8; 20]), None);
    }

    #[test]
    fn a_limit_item_without_the_referenced_flag_is_no_limit() {
        let item = |flags: u64, max: u64| {
            let mut b = vec![0u8; 40];
            b[0..8].copy_from_slice(&flags.to_le_bytes());
            b[8..16].copy_from_slice(&max.to_le_bytes());
            b
        };
        assert_eq!(
            parse_max_referenced(&item(LIMIT_MAX_RFER, 1 << 20)),
            Some(1 << 20)
        );
        assert_eq!(parse_max_referenced(&item(0, 1 << 20)), None);
        assert_eq!(parse_max_referenced(&[1u8; 9]), None);
    }

    #[test]
    fn file_extents_reference_their_length_and_holes_nothing() {
        // generation, ram_bytes, compression, encryption, other_encoding
        // (2), type, then disk_bytenr, disk_num_bytes, offset, num_bytes.
        let item = |kind: u8, ram: u64, bytenr: u64, num: u64| {
            let mut b = vec![0u8; 53];
            b[8..16].copy_from_slice(&ram.to_le_bytes());
            b[20] = kind;
            b[21..29].copy_from_slice(&bytenr.to_le_bytes());
            b[45..53].copy_from_slice(&num.to_le_bytes());
            b
        };
        assert_eq!(extent_referenced(&item(1, 1 << 20, 1 << 30, 65536)), 65536);
        assert_eq!(extent_referenced(&item(2, 0, 1 << 30, 4096)), 4096);
        assert_eq!(extent_referenced(&item(1, 0, 0, 65536)), 0, "a hole");
        assert_eq!(extent_referenced(&item(0, 300, 0, 0)), 300, "inline");
        assert_eq!(extent_referenced(&[]), 0);
    }
}
