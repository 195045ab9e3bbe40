//! Subvolumes a tenant makes inside a volume. Any user who may write a
//! directory on btrfs may create a subvolume there (`btrfs subvolume
//! create`, no capability needed), so a container can nest subvolumes in
//! its volume, and btrfs then refuses to delete the volume's subvolume
//! ("Directory not empty") and leaves the nested ones out of every snapshot
//! of it (each appears there as an empty directory). The provider finds
//! them by the volume's subvolume id in the root tree (`ROOT_REF` items,
//! `BTRFS_IOC_TREE_SEARCH`) and deletes them by id
//! (`BTRFS_IOC_SNAP_DESTROY_V2` with `BTRFS_SUBVOL_SPEC_BY_ID`) through the
//! provider root's descriptor: no path inside the volume, which the tenant
//! controls and may change under the agent, is resolved (invariant 9).
//!
//! The owner of a subvolume's root may also make it read-only
//! (`BTRFS_IOC_SUBVOL_SETFLAGS` needs ownership, no capability), and btrfs
//! deletes no subvolume whose parent is read-only (`EROFS`): a tenant that
//! nests a subvolume and then flips its volume (or a nested subvolume
//! holding another) read-only would make the volume impossible to destroy.
//! So a deletion refused with `EROFS` makes the parent writable again and is
//! retried; the parent is opened by its file handle (`open_by_handle_at`
//! of its root directory, inode 256 of its tree, with that inode's
//! generation read from the tree): again no path inside the volume.
//!
//! The tree search by key range ([`for_each_item`]) also serves module
//! `quota`, which reads the quota tree and a volume's file extents with it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::path::Path;

use super::subvol::{set_read_only_fd, subvol_info};
use crate::provider::ProviderError;

/// `BTRFS_ROOT_TREE_OBJECTID`: the tree of trees, holding `ROOT_REF` items.
const ROOT_TREE: u64 = 1;
/// `BTRFS_ROOT_REF_KEY`: `(parent tree id, ROOT_REF, child tree id)`.
const ROOT_REF_KEY: u32 = 156;
/// `BTRFS_FIRST_FREE_OBJECTID`: the lowest id of a subvolume.
const FIRST_FREE_OBJECTID: u64 = 256;
/// `BTRFS_INODE_ITEM_KEY`: `(inode number, INODE_ITEM, 0)`.
const INODE_ITEM_KEY: u32 = 1;
/// Rounds of "list, delete deepest first" before a tenant still creating
/// subvolumes makes [`remove_descendants`] give up.
const ROUNDS: usize = 4;

/// `struct btrfs_ioctl_search_key` (linux/btrfs.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
}

const SEARCH_KEY_SIZE: usize = 104;
const _: () = assert!(std::mem::size_of::<SearchKey>() == SEARCH_KEY_SIZE);

/// `struct btrfs_ioctl_search_args`: the key, then the items found, each a
/// `struct btrfs_ioctl_search_header` and its data.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - SEARCH_KEY_SIZE],
}

const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);
/// `sizeof(struct btrfs_ioctl_search_header)`: transid, objectid, offset
/// (u64 each), type, len (u32 each).
const SEARCH_HEADER_SIZE: usize = 32;
/// `_IOWR(BTRFS_IOCTL_MAGIC, 17, struct btrfs_ioctl_search_args)` (17 is `0x11`).
const BTRFS_IOC_TREE_SEARCH: u64 = (3 << 30) | (4096 << 16) | (0x94 << 8) | 0x11;

/// `struct btrfs_ioctl_vol_args_v2` with its last union as `subvolid`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    subvolid: u64,
    name_rest: [u8; 4040 - 8],
}

const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
/// `BTRFS_SUBVOL_SPEC_BY_ID`: the subvolume is named by `subvolid`.
const SUBVOL_SPEC_BY_ID: u64 = 1 << 4;
/// `_IOW(BTRFS_IOCTL_MAGIC, 63, struct btrfs_ioctl_vol_args_v2)` (63 is `0x3f`).
const BTRFS_IOC_SNAP_DESTROY_V2: u64 = (1 << 30) | (4096 << 16) | (0x94 << 8) | 0x3f;

/// A btrfs key: `(objectid, type, offset)`, ordered as btrfs orders them.
pub(super) type Key = (u64, u32, u64);

/// `BTRFS_IOC_TREE_SEARCH` through `fd` for up to `nr_items` items of
/// tree `tree_id` whose keys lie from `min` to `max` (compound keys, as
/// btrfs orders them; `CAP_SYS_ADMIN`); the items found follow the key in
/// `buf`, and `key.nr_items` says how many.
fn search_keys(
    fd: RawFd,
    tree_id: u64,
    min: Key,
    max: Key,
    nr_items: u32,
) -> io::Result<SearchArgs> {
    // SAFETY: plain data; zero is valid for every field.
    let mut args: SearchArgs = unsafe { std::mem::zeroed() };
    args.key = SearchKey {
        tree_id,
        min_objectid: min.0,
        max_objectid: max.0,
        min_offset: min.2,
        max_offset: max.2,
        min_transid: 0,
        max_transid: u64::MAX,
        min_type: min.1,
        max_type: max.1,
        nr_items,
        unused: 0,
        unused1: [0; 4],
    };
    // SAFETY: the request matches the struct's size and layout
    // (asserted); the kernel writes at most `buf.len()` bytes of items.
    if unsafe { libc::ioctl(fd, BTRFS_IOC_TREE_SEARCH as _, &raw mut args) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(args)
}

/// [`search_keys`] of the items keyed `(objectid, kind, offset in offsets)`.
fn search(
    fd: RawFd,
    tree_id: u64,
    objectid: u64,
    kind: u32,
    offsets: std::ops::RangeInclusive<u64>,
    nr_items: u32,
) -> io::Result<SearchArgs> {
    search_keys(
        fd,
        tree_id,
        (objectid, kind, *offsets.start()),
        (objectid, kind, *offsets.end()),
        nr_items,
    )
}

/// The key right after `key`, if any.
fn next_key(key: Key) -> Option<Key> {
    let (objectid, kind, offset) = key;
    if offset < u64::MAX {
        Some((objectid, kind, offset + 1))
    } else if kind < u32::from(u8::MAX) {
        Some((objectid, kind + 1, 0))
    } else {
        objectid.checked_add(1).map(|o| (o, 0, 0))
    }
}

/// Calls `each` with the key and data of every item of tree `tree_id`
/// from key `min` to key `max`, in key order, through `fd`
/// (`CAP_SYS_ADMIN`). One fixed buffer, read again from the key after the
/// last one returned until the range is done: nothing is allocated from
/// what the tree holds, and every round moves past at least one item.
pub(super) fn for_each_item(
    fd: RawFd,
    tree_id: u64,
    min: Key,
    max: Key,
    mut each: impl FnMut(Key, &[u8]),
) -> io::Result<()> {
    let mut from = min;
    loop {
        let args = search_keys(fd, tree_id, from, max, 4096)?;
        let found = args.key.nr_items as usize;
        if found == 0 {
            return Ok(());
        }
        let mut at = 0usize;
        let mut last = None;
        for _ in 0..found {
            let Some(header) = args.buf.get(at..at + SEARCH_HEADER_SIZE) else {
                return Err(io::Error::other(
                    "BTRFS_IOC_TREE_SEARCH: an item header past the buffer",
                ));
            };
            let u64_at = |i: usize| u64::from_ne_bytes(header[i..i + 8].try_into().expect("8"));
            let u32_at = |i: usize| u32::from_ne_bytes(header[i..i + 4].try_into().expect("4"));
            let key = (u64_at(8), u32_at(24), u64_at(16));
            let len = u32_at(28) as usize;
            let start = at + SEARCH_HEADER_SIZE;
            let Some(data) = args.buf.get(start..start + len) else {
                return Err(io::Error::other(
                    "BTRFS_IOC_TREE_SEARCH: an item's data past the buffer",
                ));
            };
            each(key, data);
            at = start + len;
            last = Some(key);
        }
        match last.and_then(next_key) {
            Some(next) if next > from && next <= max => from = next,
            _ => return Ok(()),
        }
    }
}

/// The ids of the subvolumes directly inside subvolume `tree_id`, read
/// through `fd` (any descriptor on the file system; `CAP_SYS_ADMIN`).
pub(super) fn children(fd: RawFd, tree_id: u64) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let args = search(fd, ROOT_TREE, tree_id, ROOT_REF_KEY, from..=u64::MAX, 4096)?;
        let found = args.key.nr_items as usize;
        if found == 0 {
            return Ok(out);
        }
        let mut at = 0usize;
        let mut last = None;
        for _ in 0..found {
            let Some(header) = args.buf.get(at..at + SEARCH_HEADER_SIZE) else {
                return Err(io::Error::other(
                    "BTRFS_IOC_TREE_SEARCH: an item header past the buffer",
                ));
            };
            let u64_at = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&header[i..i + 8]);
                u64::from_ne_bytes(b)
            };
            let u32_at = |i: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(&header[i..i + 4]);
                u32::from_ne_bytes(b)
            };
            let (objectid, offset, kind, len) = (u64_at(8), u64_at(16), u32_at(24), u32_at(28));
            at += SEARCH_HEADER_SIZE + len as usize;
            if objectid == tree_id && kind == ROOT_REF_KEY && offset >= FIRST_FREE_OBJECTID {
                out.push(offset);
            }
            last = Some(offset);
        }
        match last.and_then(|o| o.checked_add(1)) {
            Some(next) if next > from => from = next,
            _ => return Ok(out),
        }
    }
}

/// Every subvolume below `tree_id` with its parent's id, each listed after
/// all of its own descendants (the order in which they can be deleted).
pub(super) fn descendants_deepest_first(fd: RawFd, tree_id: u64) -> io::Result<Vec<(u64, u64)>> {
    // Breadth first: a parent before its children; reversed, every child
    // before its parent.
    let mut order: Vec<(u64, u64)> = children(fd, tree_id)?
        .into_iter()
        .map(|id| (id, tree_id))
        .collect();
    let mut next = 0;
    while next < order.len() {
        let parent = order[next].0;
        order.extend(children(fd, parent)?.into_iter().map(|id| (id, parent)));
        next += 1;
    }
    order.reverse();
    Ok(order)
}

/// The generation of the root directory (inode 256) of subvolume
/// `tree_id`, read from its tree through `fd`: what a file handle of it
/// must carry.
fn root_dir_generation(fd: RawFd, tree_id: u64) -> io::Result<u32> {
    let args = search(fd, tree_id, FIRST_FREE_OBJECTID, INODE_ITEM_KEY, 0..=0, 1)?;
    // The item's header, then its data, whose first field is the inode's
    // generation (`struct btrfs_inode_item`, little-endian on disk).
    let data = (args.key.nr_items == 1)
        .then(|| args.buf.get(SEARCH_HEADER_SIZE..SEARCH_HEADER_SIZE + 8))
        .flatten()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("subvolume id {tree_id} has no root directory inode"),
            )
        })?;
    // A file handle carries its low 32 bits (`struct btrfs_fid`'s `gen`,
    // the inode's `i_generation`): the first four bytes, little-endian.
    Ok(u32::from_le_bytes(data[..4].try_into().expect("4 bytes")))
}

/// `FILEID_BTRFS_WITHOUT_PARENT`: a handle of `struct btrfs_fid`'s first
/// three fields (object id, root id, generation: 20 bytes).
const FILEID_BTRFS_WITHOUT_PARENT: i32 = 0x4d;

/// `struct file_handle` holding a `FILEID_BTRFS_WITHOUT_PARENT` handle.
#[repr(C)]
struct BtrfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 20],
}

/// Opens the root directory of subvolume `tree_id` by its file handle,
/// through `fd` (a descriptor on the same mount; `CAP_DAC_READ_SEARCH`):
/// no path is resolved.
fn open_subvolume_by_id(fd: RawFd, tree_id: u64) -> io::Result<OwnedFd> {
    let generation = root_dir_generation(fd, tree_id)?;
    let mut handle = BtrfsHandle {
        handle_bytes: 20,
        handle_type: FILEID_BTRFS_WITHOUT_PARENT,
        f_handle: [0; 20],
    };
    handle.f_handle[0..8].copy_from_slice(&FIRST_FREE_OBJECTID.to_ne_bytes());
    handle.f_handle[8..16].copy_from_slice(&tree_id.to_ne_bytes());
    handle.f_handle[16..20].copy_from_slice(&generation.to_ne_bytes());
    // SAFETY: `handle` is a `struct file_handle` whose `handle_bytes` match
    // the bytes that follow it; the kernel only reads it.
    let opened = unsafe {
        libc::open_by_handle_at(
            fd,
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if opened < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just opened, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(opened) })
}

/// Makes subvolume `tree_id` writable (clears its read-only flag) through
/// `fd`, so that the subvolumes inside it can be deleted.
fn make_writable_by_id(fd: RawFd, tree_id: u64) -> io::Result<()> {
    let dir = open_subvolume_by_id(fd, tree_id)?;
    set_read_only_fd(dir.as_raw_fd(), false)
}

/// Deletes subvolume `id` (which must hold no subvolume) through `fd`, a
/// descriptor on the same file system.
pub(super) fn delete_by_id(fd: RawFd, id: u64) -> io::Result<()> {
    // SAFETY: plain data; zero is valid for every field.
    let mut args: VolArgsV2 = unsafe { std::mem::zeroed() };
    args.flags = SUBVOL_SPEC_BY_ID;
    args.subvolid = id;
    // SAFETY: the request matches the struct's size and layout (asserted).
    if unsafe { libc::ioctl(fd, BTRFS_IOC_SNAP_DESTROY_V2 as _, &raw const args) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes every subvolume below `tree_id`, deepest first, through `fd`;
/// returns how many. A tenant still creating subvolumes meanwhile makes a
/// deletion fail with `ENOTEMPTY`: the listing is read again, up to
/// [`ROUNDS`] times, then the last error is returned. A deletion refused
/// with `EROFS` (its parent made read-only by the tenant) makes the parent
/// writable and is tried again in the same round.
pub(super) fn remove_descendants(fd: RawFd, tree_id: u64) -> io::Result<usize> {
    let mut removed = 0;
    let mut last_error = None;
    for _ in 0..ROUNDS {
        let found = descendants_deepest_first(fd, tree_id)?;
        if found.is_empty() {
            return Ok(removed);
        }
        last_error = None;
        for (id, parent) in found {
            let mut deleted = delete_by_id(fd, id);
            if deleted
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EROFS))
            {
                make_writable_by_id(fd, parent).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "making subvolume id {parent} writable to delete subvolume id {id} \
                             inside it: {e}"
                        ),
                    )
                })?;
                deleted = delete_by_id(fd, id);
            }
            match deleted {
                Ok(()) => removed += 1,
                // Deleted meanwhile (by the operator, or a racing call).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                // Created inside meanwhile, or the parent made read-only
                // again: the next round.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EROFS)) => {
                    last_error = Some((id, e));
                    break;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("deleting subvolume id {id}: {e}"),
                    ));
                }
            }
        }
    }
    match last_error {
        Some((id, e)) => Err(io::Error::new(
            e.kind(),
            format!(
                "deleting subvolume id {id}: {e} (subvolumes were still being created \
                 inside it, or it made read-only, after {ROUNDS} rounds)"
            ),
        )),
        None if descendants_deepest_first(fd, tree_id)?.is_empty() => Ok(removed),
        None => Err(io::Error::other(format!(
            "subvolumes were still being created after {ROUNDS} rounds of deletion"
        ))),
    }
}

impl super::BtrfsProvider {
    /// Deletes every subvolume a tenant made inside subvolume `subvol`
    /// (ours: a volume's `vol`), by id; returns how many.
    pub(super) fn remove_nested(&self, subvol: &Path) -> Result<usize, ProviderError> {
        let tree_id = subvol_info(subvol)?.tree_id;
        let removed = remove_descendants(self.handle.fd(), tree_id).map_err(|e| {
            ProviderError::io(
                format!(
                    "deleting the subvolumes made inside {} (subvolume id {tree_id})",
                    subvol.display()
                ),
                e,
            )
        })?;
        if removed > 0 {
            tracing::info!(
                subvolume = %subvol.display(),
                removed,
                "deleted subvolumes made inside a volume"
            );
        }
        Ok(removed)
    }

    /// Refuses (`UnsupportedContent`) when subvolume `source` holds a
    /// subvolume of its own: a btrfs snapshot of it would hold an empty
    /// directory in its place, the content silently left out of the
    /// snapshot and of every transfer of it. Called after the snapshot is
    /// taken, so a subvolume made just before it is seen.
    pub(super) fn refuse_nested(&self, source: &Path, what: &str) -> Result<(), ProviderError> {
        let tree_id = subvol_info(source)?.tree_id;
        let found = children(self.handle.fd(), tree_id).map_err(|e| {
            ProviderError::io(
                format!(
                    "listing the subvolumes inside {} (subvolume id {tree_id})",
                    source.display()
                ),
                e,
            )
        })?;
        if found.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = found.iter().take(8).map(u64::to_string).collect();
        Err(ProviderError::UnsupportedContent(format!(
            "{what} holds {} btrfs subvolume(s) made inside it (subvolume id {}{}), which a \
             btrfs snapshot leaves out (each would be an empty directory in it): delete or \
             move them out of the volume first",
            found.len(),
            shown.join(", "),
            if found.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )))
    }
}
