//! What a later run on a simulated file system can observe of it, as one
//! comparable value: [`Fingerprint`], taken by
//! [`SimStorage::fingerprint`](super::SimStorage::fingerprint). The
//! power-cut sweeps reopen and check one image of a crash point once, not
//! again for each seeded cut that left the very same image.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::SecondFault;
use super::fs::{DirChange, Fs, Inode, Node};

/// A simulated file system as a later run can observe it, exactly: two
/// file systems with equal fingerprints answer every call of
/// [`Storage`](crate::storage::Storage) and of the directory provider's
/// layout seam the same way, now and after any later power cut, sync
/// failure or crash, so a deterministic run on either sees the same.
///
/// Not a digest: it holds the state itself (every name with its kind and
/// inode number, every file's bytes as reads see them and as they are
/// durable, with the changes not yet durable in order, every directory's
/// queue of changes not yet durable, the moves of trees not yet durable,
/// the locks held, the armed crash, failure and second fault with their
/// counters, the capacity and the switches), so equal fingerprints are
/// equal states, with no collision to argue about. All of it is kept in
/// sorted order (no hash-map order, no address). Two counters are left
/// out because nothing outside the simulation sees their values: the
/// number the next directory change is queued under (it orders the
/// changes queued from then on after every queued one, whatever its
/// value; the queued ones keep theirs) and the token the next lock guard
/// gets (it only tells a guard whether it still holds its lock). The next
/// inode number is in: [`SimStorage::identity`](super::SimStorage::identity)
/// shows inode numbers.
///
/// An image a power cut leaves ([`SimStorage::power_cut_with`](super::SimStorage::power_cut_with))
/// has nothing pending, no lock, nothing armed: its fingerprint is its
/// names and its files' bytes, with the inode numbers and the switches
/// (capacity, exchange, cache drops) its source had.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    names: BTreeMap<PathBuf, Node>,
    durable_names: BTreeMap<PathBuf, Node>,
    dir_pending: BTreeMap<PathBuf, Vec<(u64, DirChange)>>,
    moves: Vec<PathBuf>,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    locks: BTreeSet<PathBuf>,
    sync_points: u64,
    crash_at: Option<u64>,
    fail_sync_at: Option<u64>,
    second_fault: Option<SecondFault>,
    since_failure: Option<(u64, u64)>,
    failed_move: Option<(PathBuf, PathBuf)>,
    frozen: bool,
    capacity: Option<u64>,
    no_exchange: bool,
    cache_drops_ignored: bool,
}

impl Fingerprint {
    /// The fingerprint of `fs` as it is now.
    pub(super) fn of(fs: &Fs) -> Fingerprint {
        // Every field of `Fs` is named here (no `..`), so a field added
        // later fails to build until it is in the fingerprint or left out
        // with a reason.
        let Fs {
            names,
            durable_names,
            dir_pending,
            next_change: _,
            moves,
            inodes,
            next_ino,
            locks,
            next_lock_token: _,
            sync_points,
            crash_at,
            fail_sync_at,
            second_fault,
            since_failure,
            failed_move,
            frozen,
            capacity,
            no_exchange,
            cache_drops_ignored,
        } = fs;
        Fingerprint {
            names: names.clone(),
            durable_names: durable_names.clone(),
            dir_pending: dir_pending.clone(),
            moves: moves.clone(),
            inodes: inodes.iter().map(|(i, n)| (*i, n.clone())).collect(),
            next_ino: *next_ino,
            locks: locks.keys().cloned().collect(),
            sync_points: *sync_points,
            crash_at: *crash_at,
            fail_sync_at: *fail_sync_at,
            second_fault: *second_fault,
            since_failure: *since_failure,
            failed_move: failed_move.clone(),
            frozen: *frozen,
            capacity: *capacity,
            no_exchange: *no_exchange,
            cache_drops_ignored: *cache_drops_ignored,
        }
    }
}
