//! The ZFS provider: datasets, snapshots and clones, driven through the
//! `zfs` and `zpool` commands (parsed with `-H -p`), run by
//! [`super::cmd::Cmd`] with separate arguments and no shell.
//!
//! # Configuration
//!
//! - `dataset` (required): the root dataset, e.g. `tank/volmgr`. Names are
//!   `[A-Za-z0-9_.:/-]`, components non-empty, not `.`/`..`, no leading `-`.
//! - `workdir` (default `/var/lib/volmgr/zfs`): data volumes are mounted at
//!   `<workdir>/mnt/data/<id>` (`mountpoint_base` is accepted as its alias).
//!   At every open, `<workdir>/mnt` and every directory above it pass the
//!   walk a `dir` root passes (`fsutil::trust`: root mounts volumes there),
//!   else [`ProviderError::InvalidConfig`]; it is made 0700 (a missing
//!   workdir too), or made so if looser (`zfs mount` made it 0755 before),
//!   so no other user lists or reads a volume, or a snapshot through its
//!   `.zfs/snapshot`, through the host path (`setup::private_mounts`).
//! - `pool_vdev` (optional, absolute path): a sparse file vdev. If the pool
//!   (the dataset's first component) is not imported, an existing file is
//!   imported (`zpool import -d FILE POOL`), never overwritten; a missing one
//!   is created sparse with `pool_size` bytes (suffixes K M G T; default 70%
//!   of the size of the file system holding the vdev, 100 GB if unknown) and
//!   a pool is created on it.
//! - `pool_name` (optional): must equal the dataset's first component.
//!
//! # Layout and tags
//!
//! ```text
//! <dataset>                   mountpoint=none setuid=off devices=off (created if missing; the two
//!                             are set on an existing one too, and every receive passes them with -o)
//!                             volmgr:root-owner=<agent id> (see "The root's owner")
//! <dataset>/data              mountpoint=none
//! <dataset>/data/<id>         data volume (or fork: a clone), mounted at <workdir>/mnt/data/<id>
//! <dataset>/data/<src>@<id>   snapshot <id> of data volume <src>
//! ```
//!
//! Every dataset, clone and snapshot we make carries the user properties
//! `volmgr:owner=volmgr`, `volmgr:volume-id`, `volmgr:op`, `volmgr:kind`
//! and (snapshots, forks) `volmgr:parent`, set atomically by `create -o`,
//! `clone -o` (clones do not inherit the origin's properties), and for a
//! snapshot by the channel program that takes it, in the same sync task
//! (`program.rs`).
//! User properties are inherited by children and snapshots, so an item counts
//! as ours only if its *own* name matches its tag: a filesystem
//! `<dataset>/data/<id>` tagged volume `<id>` kind `data`, a snapshot
//! `...@<id>` tagged volume `<id>` kind `snapshot`. Everything else under the
//! root is foreign (tag `None`): reported, never touched.
//!
//! # Lookup of one id
//!
//! [`Provider::lookup`] (what the manager asks after a failed call) reads
//! only what can carry the tag of volume `<id>`: by the rule above, the
//! filesystem `<dataset>/data/<id>` and the snapshots
//! `<dataset>/data/<src>@<id>`, and the id alone does not give `<src>`. No
//! `zfs list` finds a snapshot by its short name without listing every
//! snapshot of the root (`-t snapshot -r`), so one read-only channel
//! program (`zfs program -n`, `lua/lookup.lua`: no sync task, no wait for a
//! transaction group) asks `zfs.exists` of `<data>/<id>` and of
//! `<child>@<id>` for each child of `<data>`, in the kernel, and returns the
//! names that exist with that type (a zvol is no volume of ours; hidden
//! `%` datasets are skipped as `zfs list` skips them). Nothing found: one
//! command, `None`. Else one `zfs list` of exactly those names reads their
//! rows, judged by the inventory's own code (`found_of`, `tag_of`),
//! and the first tagged as `<id>` in `zfs list`'s order (the inventory's:
//! by name, a filesystem before its snapshots) is the answer: two commands.
//! Its cost is one `zfs.exists` per volume in the kernel, and one row
//! printed, where the inventory prints a row per dataset and snapshot. The
//! program is bounded by `zfs program`'s default limits (10 million Lua
//! instructions, a few tens per child; 10 MB): past them it fails naming
//! the limit. Every failure is an error, never `None`: the program's, and
//! the listing's, except that a name destroyed between the two commands
//! makes both run again (three times at most). A snapshot named without
//! its parent (`VolumeRef::parent` `None`) is found the same way.
//!
//! # The root's owner
//!
//! A root dataset belongs to one agent (one state directory). A provider
//! built by a manager ([`ZfsProvider::for_owner`]) knows that agent's
//! identity ([`AgentId`]) and claims the root dataset before anything in it
//! is changed (no `data` child made, no property set): its user property
//! `volmgr:root-owner` holds the agent id (36 bytes, lowercase hyphenated
//! UUID), set by the `create -o` that makes a new root, else by one `zfs set`
//! when it is unset (a root from before owners: one agent could only have
//! meant itself). One `zfs get -H -p -o value,source` reads it at every
//! open: naming this agent goes on; naming another, locally or inherited
//! from a dataset above (a root inside another agent's tree), is refused
//! ([`ProviderError::ForeignRoot`]: two agents on one dataset would each take
//! the other's datasets for orphans); anything else is refused as damaged.
//! A missing root is refused the same way before it is made when the
//! nearest existing dataset above it names another agent (set there or
//! inherited): the `create -o` would set ours locally and hide the owner
//! it inherits. A root that would *contain* another agent's root is
//! refused too: before the owner is set on an existing root (unset, or
//! only inherited), one `zfs get -r -t filesystem -s local` of the property
//! walks the root's filesystems, and one below naming another agent is
//! [`ProviderError::ForeignRoot`] naming that dataset and its agent (a
//! value there that is no agent id, a configuration error). That walk runs
//! once per root, when it is first claimed; never at a reopen of a root
//! that already names us, and never for a root just made. (The two data
//! roots would not overlap, but the outer agent's inventory lists its
//! whole tree: every dataset of the inner agent's would be reported as a
//! foreign item of it, and an operator's `zfs destroy -r` or handover of
//! the outer root would take the inner one along.)
//! Children inherit the property, which nothing reads below the root. A
//! provider built without an owner ([`ZfsProvider::from_config`]: tools and
//! tests outside a manager) neither reads nor sets it. Handing a root to
//! another agent is the operator's deliberate act (`zfs inherit
//! volmgr:root-owner <dataset>` with both agents stopped: README, "Handing a
//! provider root to another agent").
//!
//! `zfs get` then `zfs set` would let two agents starting together on an
//! unowned root both read "unset" and both claim it, and a user property
//! cannot be locked. So a provider with an owner first takes a host-local
//! lock of its root dataset, held until it is dropped: an exclusive `flock`
//! ([`crate::fsutil::hold_lock`]) on
//! `/run/volmgr/zfs-roots/<dataset, each / written %>.lock` (a dataset name
//! never holds `%`, so one dataset, one file name; always one plain path
//! component). The directories are made mode 0700 and refused if another
//! user owns them or can write them, or if they are symlinks; the lock
//! file is mode 0600, opened without following a symlink. Held by another
//! agent of this host: [`ProviderError::RootInUse`], nothing changed. A
//! root another agent owns is refused as such before the lock (one more
//! `zfs get` per open), and judged again under it. Agents of other hosts cannot share an imported pool, but as a
//! last check the property is read back after every `zfs set`: another
//! agent's id there is [`ProviderError::ForeignRoot`].
//!
//! # Nested roots
//!
//! The root lock is per root dataset, so it does not order two agents
//! claiming *nested* roots (A `tank/a`, B `tank/a/b`): each could read the
//! owners around its root before the other made or claimed its own, find
//! nothing, and go on. So the claim itself (the owners above and below
//! read, then the root made with `create -o` or its owner set) runs under
//! a second host-local lock, of the pool:
//! `/run/volmgr/zfs-pools/<pool>.lock` (a pool name is one plain path
//! component; the directory made and checked like the roots'), an
//! exclusive `flock` that a second claimer *waits* for
//! ([`crate::fsutil::wait_lock`]). One host suffices: a pool is imported on
//! one host at a time. It is taken after the root's own lock (always in
//! that order, so two claimers never wait for each other crosswise) and
//! released as soon as the claim is done, before the data root is made:
//! held for the provider's life it would make every other agent of the
//! pool wait (or be refused) until this one stopped. A wait lasts one
//! claim: a few `zfs` commands (`get` above, `create` or `get` and `set`
//! and its read-back, and the walk below on a first claim).
//!
//! A snapshot's `location` is `<mountpoint of its volume>/.zfs/snapshot/<id>`:
//! ZFS mounts it read-only on first access and it needs no mount state of
//! ours (it survives export/import). Its identity, `details[guid]`, is the
//! ZFS snapshot `guid` (decimal), which survives send/receive.
//!
//! # Send and receive
//!
//! Send is `zfs send [-i BASE] SNAP` (plain: no properties travel).
//! Receive reads the stream's `DRR_BEGIN` header itself (toguid, fromguid,
//! toname), checks it against the target first (an incremental's base must
//! be the target's newest snapshot, by GUID; a full stream needs a target
//! without snapshots; a GUID already present is refused), marks the target
//! `volmgr:receiving=<op>:<toguid>`, runs `zfs recv -F -s -x volmgr:...
//! <target>@<spec.id>` (`zfs recv` names the snapshot as told, a resumed
//! stream's too, so it arrives under its final name), then one channel
//! program finds the arrived snapshot BY GUID, tags it and clears the mark
//! in one sync task (`receive.rs`). The stream is bounded on the pool's
//! space as it passes (`space.rs`, `stream.rs`): its records are framed as
//! the kernel frames them and charged their bytes plus what they may
//! allocate; the pool's root dataset's `available` is measured before the
//! first byte and again (after `zpool sync`) whenever the charges pass the
//! last grant, and a room under 8 MiB beyond a reserve of 2% of the pool
//! (`used + available`), less the charges the kernel may not have written
//! yet, is [`ProviderError::NoSpace`]: the partial receive is discarded,
//! not left resumable (so are ZFS's own `ENOSPC`/`EDQUOT` and a stream the
//! bound cannot frame, [`ProviderError::Stream`]). A deduplicated stream
//! (`send -D`) is refused by its header. Until it is tagged the
//! arrival is not ours, final name or not: it inherits the target's tags,
//! which name the target, kind `data`; so it is foreign to
//! [`Provider::inventory`], refused (never adopted) by a retry, and removed
//! by [`Provider::abort_partial`]. A failed receive with a resume token is
//! aborted at once (`zfs recv -A`; the token is named in the error), and
//! [`Provider::abort_partial`] does the same after a crash (plus removing an
//! arrived-but-untagged snapshot of that operation, and mounting the target
//! again: a killed receive leaves it unmounted), so a partial receive never
//! blocks the dataset.
//!
//! # Durability and commands per verb
//!
//! The provider is [`Durability::OnReturn`]: `zfs create`, `clone`,
//! `destroy`, `set`, `inherit`, `recv` and `program` (a channel program:
//! the snapshot, a snapshot's destroy, a receive's tags) change the pool in a sync task
//! (`dsl_sync_task`) and return only after the transaction group that
//! carries the change has synced to disk. Their side effect is durable
//! when the command returns, so the manager's shared provider sync (issue
//! #13) has nothing to batch here: no `sync()` round, no `syncfs`.
//!
//! `zfs` commands per verb on the path where all goes well (counted by
//! [`super::cmd::CommandCount`]; asserted by `tests/zfs.rs`, printed by
//! `benches/providers.rs`), with a snapshot named with its parent (the
//! manager always names it):
//!
//! | verb     | commands | which |
//! |----------|----------|-------|
//! | create   | 1 | `create -o mountpoint -o tags` (success means created and mounted) |
//! | snapshot | 1 | `program`: is the source ours? the snapshot, its tags, its guid (an existing one's tags, for idempotence) |
//! | fork     | 2 | `list` snapshot (is it ours?), `clone -o mountpoint -o tags` |
//! | destroy  | 2 / 1 | a filesystem: `list` (is it ours? a partial receive to abort?), `destroy`; a snapshot: `program` (is it ours? destroy; its clones if it has any; its user holds if busy), then `destroy` only if it was busy without a hold that lasts (mounted, `EBUSY`) |
//! | send     | 2 | `list` the snapshot, and its base for an incremental, in one command (ours?), `send` |
//! | receive  | 5 | `list -d 1` the target and its snapshots (ours? partial? does the stream fit?), `get used,available` of the pool (the space bound's first grant; a `zpool sync` and a `get` per further grant of at most 256 MiB of charges), `set` mark, `recv` into `<target>@<id>`, `program`: the arrival by guid, its tags, the mark cleared (the target mounted? `/proc/self/mountinfo`, no command; `mount` only if not) |
//! | lookup   | 2 / 1 | `program -n`: the names that can carry the id's tag; `list` of them (none: the program only) (see "Lookup of one id") |
//!
//! Why not one each: the tag check must come *before* the act, because no
//! `zfs` command refuses to act on a dataset by its properties. A snapshot
//! or clone of a foreign dataset made first and checked after would, if the
//! manager died in between, be tagged ours with this operation's id, and
//! recovery would adopt foreign data as a volume; a destroy cannot be
//! checked after. A channel program (`zfs program`, zfs-program(8); the
//! guest's ZFS, 2.1.11, has `zfs.get_prop`, `zfs.exists`,
//! `zfs.list.snapshots`, `zfs.sync.snapshot`, `zfs.sync.set_prop` of user
//! properties, `zfs.sync.inherit`, `zfs.sync.destroy`, `zfs.list.clones`
//! and a `zfs.check.*` twin of each `zfs.sync.*`) runs the check and the
//! act in one sync task, so the snapshot is one command (the check, the
//! snapshot, its tags, and its guid, which `zfs snapshot` did not print and
//! a `list` had to read: 3 before) and so is a snapshot's destroy (2
//! before). The others cannot be: a channel program cannot clone (fork:
//! `list` and `clone`), nor unmount (a filesystem's destroy: `list` and
//! `destroy`; a snapshot mounted under `.zfs/snapshot` makes the program's
//! destroy fail with `EBUSY`, and `zfs destroy`, which unmounts it,
//! follows), nor read `mounted`, nor receive. Create needs no check:
//! `zfs create` itself refuses an existing name ("already exists", then
//! settled by the tag). A receive had 10: the target and its snapshots were
//! two listings, the arrival, the target's `mounted` and the renamed result
//! three more, and a `rename` gave the arrival its name. The first two
//! became one `list -d 1` (a filesystem, its snapshots, and its children,
//! which are left out), the last three another, and `recv` itself names the
//! snapshot: 6. Then the listing after `recv`, the tags' `set` and the
//! mark's `inherit` became one channel program (the arrival found by guid
//! with `zfs.list.snapshots`, its tags and the mark's inherit checked by
//! `zfs.check.*` before the first change, then made: one sync task, so the
//! arrival is never tagged while the mark is still set), and the target's
//! `mounted` is read from `/proc/self/mountinfo`, where libzfs reads it
//! too: 4. The space bound's first measurement made it 5 (a read of the
//! pool, before anything changes, so a full pool refuses with nothing
//! done). The four others each need their own command: the listing is the tag
//! check, before anything changes; the mark must be on disk before `recv`
//! starts (so a crash mid-way is found), and `recv -o` would set it within
//! the receive itself, whose failure paths do not say what stays set, so it
//! keeps its own `set`; a channel program cannot receive; the arrival
//! exists only after `recv`, and its tags are the snapshot's own
//! properties, which `recv -o` cannot set (it sets the filesystem's).
//!
//! # Errors
//!
//! "dataset is busy" is retried (bounded, growing back-off; a destroy stops
//! at once when a process or a mount elsewhere holds the dataset, which
//! waiting cannot outlast: `destroy_held`; a snapshot with a user hold
//! other than a running `zfs send -R`'s is not retried at all: its destroy
//! program reads the holds in the sync task that found it busy, and the
//! error names them, `holds.rs`) then reported as
//! [`ProviderError::Busy`] with ZFS's message as the cause (so is a
//! snapshot's `EAGAIN`: another snapshot of its filesystem in the same
//! transaction group, which `zfs snapshot` retried itself and a channel
//! program reports); a destroy's names the volume or snapshot, its
//! location and what can hold it (a process inside it: see
//! `ZfsProvider::in_use`), and a volume `zfs destroy` unmounted before it
//! failed is mounted again; destroying a snapshot with clones or a volume with
//! snapshots is [`ProviderError::HasDependents`]; destroying something
//! absent succeeds. A channel program that fails is a
//! [`ProviderError::Command`]: with `zfs program`'s status and stderr, or,
//! if a `zfs.sync` call inside it was refused (nothing made), with that
//! call and its errno.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::check_id;
use super::cmd::Cmd;
use super::{
    Created, Durability, Found, PartialReceive, Presence, Provider, ProviderConfig, ProviderError,
    SendOptions, SendStats, StreamIdentity, Tag, VolumeRef, VolumeSpec,
};
use crate::model::{AgentId, DETAIL_GUID, Details, OpId, VolumeId, VolumeKind};
use crate::validate::MAX_RESUME_TOKEN_LEN;
use program::DestroySnapshot;

mod attributes;
mod dataset;
mod holds;
mod parse;
mod program;
mod receive;
mod setup;
mod space;
pub mod stream;

pub use attributes::{COMPRESSION_VALUES, check_volume_option};
#[allow(clippy::wildcard_imports)]
use parse::*;
pub use parse::{
    StreamHeader, TokenContents, check_dataset, check_token, parse_begin, parse_size,
    parse_token_contents,
};
/// The snapshot's and the receive's channel programs as the provider runs
/// them, for the guest tests that run them by hand (`tests/zfs.rs`).
#[doc(hidden)]
pub use program::{RECEIVED as RECEIVED_PROGRAM, SNAPSHOT as SNAPSHOT_PROGRAM};

/// Why attempt `attempt` (from 1) of `zfs destroy` of `name`, which failed
/// busy with `e`, shows a holder that retries cannot outwait (measured in
/// the guest, `OpenZFS` 2.1.11), or `None` (retried):
/// - "cannot unmount": the unmount of the volume failed, a process is in it;
/// - a snapshot still mounted here: its unmount under `.zfs/snapshot`
///   failed, a process is in it (a send is retried, and so is a running
///   `zfs send -R`'s hold; a lasting user hold stopped the destroy before
///   any `zfs destroy`: [`holds`]);
/// - a volume busy while unmounted here, on a second attempt: `zfs destroy`
///   unmounted it (or a killed one did), so it is mounted elsewhere (a
///   container's mount namespace, a bind mount). The first such answer is
///   retried once, for a mount being torn down.
fn destroy_held(name: &str, e: &ProviderError, attempt: u32) -> Option<&'static str> {
    if stderr_of(e).contains("cannot unmount") {
        return Some("it could not be unmounted: a process is inside it");
    }
    let mounted = ZfsProvider::mounted_here(name)?;
    if name.contains('@') {
        return mounted
            .then_some("it is still mounted under .zfs/snapshot: a process is inside it");
    }
    (!mounted && attempt >= 2).then_some("busy while unmounted here: it is mounted elsewhere")
}

/// The provider kind.
pub const KIND: &str = "zfs";
pub const CONFIG_DATASET: &str = "dataset";
pub const CONFIG_WORKDIR: &str = "workdir";
pub const CONFIG_MOUNTPOINT_BASE: &str = "mountpoint_base";
pub const CONFIG_POOL_VDEV: &str = "pool_vdev";
pub const CONFIG_POOL_SIZE: &str = "pool_size";
pub const CONFIG_POOL_NAME: &str = "pool_name";
/// Default working directory (mounts under `<workdir>/mnt`).
pub const DEFAULT_WORKDIR: &str = "/var/lib/volmgr/zfs";
/// Set on the root dataset (so every volume, clone and received dataset
/// inherits them) and on every receive: no setuid executable and no device
/// node inside a volume works.
const SETUID_OFF: &str = "setuid=off";
const DEVICES_OFF: &str = "devices=off";
/// Pool size when the state disk's size is unknown.
pub const FALLBACK_POOL_SIZE: u64 = 100 * 1000 * 1000 * 1000;

const P_OWNER: &str = "volmgr:owner";
/// The agent the root dataset belongs to (see "The root's owner").
const P_ROOT_OWNER: &str = "volmgr:root-owner";
const P_VOLUME: &str = "volmgr:volume-id";
const P_OP: &str = "volmgr:op";
const P_KIND: &str = "volmgr:kind";
const P_PARENT: &str = "volmgr:parent";
const P_RECEIVING: &str = "volmgr:receiving";
const OWNER: &str = "volmgr";

/// Columns of every listing, in this order.
const COLUMNS: &str = "name,type,guid,createtxg,origin,mounted,receive_resume_token,volmgr:owner,volmgr:volume-id,volmgr:op,volmgr:kind,volmgr:parent,volmgr:receiving";

/// How often a busy dataset is retried.
const BUSY_ATTEMPTS: u32 = 8;

/// How often a lookup reads its names again when one of them was
/// destroyed between its two commands ([`ZfsProvider::tagged_as`]).
const LOOKUP_ATTEMPTS: u32 = 3;

/// ZFS datasets under a root dataset. See the module documentation.
#[derive(Debug)]
pub struct ZfsProvider {
    config: ProviderConfig,
    dataset: String,
    workdir: PathBuf,
    /// The root dataset's host-local lock, held as long as the provider
    /// lives; `None` without an owner (see "The root's owner"). Never
    /// read: dropping it releases the lock.
    #[allow(dead_code)]
    root_lock: Option<crate::fsutil::HeldLock>,
}

impl ZfsProvider {
    /// The factory for [`super::builtin_factories`].
    pub fn factory() -> super::ProviderFactory {
        std::sync::Arc::new(|config: &ProviderConfig, owner: &AgentId| {
            Ok(std::sync::Arc::new(ZfsProvider::for_owner(config, owner)?)
                as std::sync::Arc<dyn Provider>)
        })
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    fn data_root(&self) -> String {
        format!("{}/data", self.dataset)
    }

    fn fs_name(&self, id: &str) -> String {
        format!("{}/data/{id}", self.dataset)
    }

    fn mountpoint(&self, id: &str) -> PathBuf {
        self.workdir.join("mnt").join("data").join(id)
    }

    fn snap_location(&self, volume: &str, id: &str) -> String {
        self.mountpoint(volume)
            .join(".zfs")
            .join("snapshot")
            .join(id)
            .to_string_lossy()
            .into_owned()
    }

    /// The tag of a row, if the row is ours under its own name.
    fn tag_of(&self, row: &Row) -> Option<Tag> {
        let rest = row.name.strip_prefix(&format!("{}/", self.data_root()))?;
        let (own, kind) = match rest.split_once('@') {
            Some((fs, snap)) if row.is_snapshot && !fs.contains('/') => {
                (snap, VolumeKind::Snapshot)
            }
            None if !row.is_snapshot && !rest.contains('/') => (rest, VolumeKind::Data),
            _ => return None,
        };
        if row.owner.as_deref() != Some(OWNER)
            || row.volume.as_deref() != Some(own)
            || row.kind.as_deref() != Some(kind.as_str())
        {
            return None;
        }
        let op = row.op.as_deref()?.parse().ok()?;
        Some(Tag {
            volume: own.to_owned(),
            op,
            kind,
            parent: row.parent.clone(),
        })
    }

    /// What the inventory reports for row `r`: ours only under its own name
    /// ([`Self::tag_of`]), else foreign.
    fn found_of(&self, r: Row) -> Found {
        // A partial receive leaves its target whole (it is reported as
        // `partial`); a killed receive may leave it unmounted.
        let presence = if !r.is_snapshot && !r.mounted {
            Presence::Incomplete {
                reason: "not mounted".into(),
            }
        } else {
            Presence::Complete
        };
        let created = self.created_of(&r);
        Found {
            tag: self.tag_of(&r),
            partial: Self::partial_of(&r),
            name: r.name,
            presence,
            location: created.location,
            details: created.details,
        }
    }

    /// Every item tagged as volume `id`, as [`Provider::inventory`] reports
    /// it and in its order, without listing the inventory: only
    /// `<data>/<id>` and the snapshots `<data>/<child>@<id>` can be tagged
    /// as `id` ([`Self::tag_of`]). One read-only channel program names
    /// those that exist ([`Self::names_tagged_by`]; none: done, one
    /// command), then one `zfs list` of them reads their rows, judged by the
    /// inventory's own [`Self::found_of`], in `zfs list`'s order, which is
    /// the inventory's (two commands). A dataset destroyed between the two
    /// makes the listing fail as absent: both run again (bounded), and any
    /// other failure is the error, never "none".
    fn tagged_as(&self, id: &str) -> Result<Vec<Found>, ProviderError> {
        check_id(id)?;
        let mut attempt = 1;
        loop {
            let names = self.names_tagged_by(id)?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            match Self::list_exact(&names, false) {
                Ok(rows) => {
                    return Ok(rows
                        .into_iter()
                        .map(|r| self.found_of(r))
                        .filter(|f| f.tag.as_ref().is_some_and(|t| t.volume == id))
                        .collect());
                }
                Err(e) if is_not_found(&e) && attempt < LOOKUP_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The resumable partial receive a filesystem row holds: its token, and
    /// the stream's guid and operation from our `volmgr:receiving` mark.
    fn partial_of(row: &Row) -> Option<PartialReceive> {
        let token = row.token.clone()?;
        let (op, guid) = match row.receiving.as_deref().and_then(|m| m.split_once(':')) {
            Some((op, guid)) => (op.parse().ok(), guid.to_owned()),
            None => (None, String::new()),
        };
        Some(PartialReceive { token, guid, op })
    }

    fn location_of(&self, row: &Row) -> String {
        self.location_of_name(&row.name)
    }

    /// Where dataset or snapshot `name` (under the data root) is seen: its
    /// mountpoint, or `.zfs/snapshot/<id>` under its volume's.
    fn location_of_name(&self, name: &str) -> String {
        let rest = name
            .strip_prefix(&format!("{}/", self.data_root()))
            .unwrap_or(name);
        match rest.split_once('@') {
            Some((fs, snap)) => self.snap_location(fs, snap),
            None => self.mountpoint(rest).to_string_lossy().into_owned(),
        }
    }

    fn created_of(&self, row: &Row) -> Created {
        let mut details = Details::new();
        if row.is_snapshot {
            details.insert(DETAIL_GUID.to_owned(), row.guid.clone());
        }
        Created {
            location: self.location_of(row),
            details,
        }
    }

    fn tags(spec: &VolumeSpec<'_>, parent: Option<&str>) -> Vec<String> {
        let mut t = vec![
            kv(P_OWNER, OWNER),
            kv(P_VOLUME, spec.id),
            kv(P_OP, &spec.op.to_string()),
            kv(P_KIND, spec.kind.as_str()),
        ];
        if let Some(p) = parent {
            t.push(kv(P_PARENT, p));
        }
        t
    }

    /// An existing item for an idempotent create: ours with this op (Some),
    /// absent (None), or an error.
    fn existing(&self, name: &str, spec: &VolumeSpec<'_>) -> Result<Option<Row>, ProviderError> {
        let Some(row) = Self::one(name)? else {
            return Ok(None);
        };
        match self.tag_of(&row) {
            Some(t) if t.op == spec.op => Ok(Some(row)),
            Some(t) => Err(ProviderError::AlreadyExists(format!(
                "{name} (made by operation {})",
                t.op
            ))),
            None => Err(ProviderError::AlreadyExists(format!(
                "{name} (not tagged as ours)"
            ))),
        }
    }

    /// Runs a creating command (`create`, `clone`). Success means created
    /// and mounted (ZFS exits non-zero with "created, but not mounted"
    /// otherwise): nothing more to ask. "Not mounted" is finished by
    /// mounting; "already exists" is settled by the tag (idempotent: ours
    /// from this very op, then mounted if it is not).
    fn make_fs(
        &self,
        cmd: &Cmd,
        name: &str,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        match cmd.run() {
            Ok(_) => {
                return Ok(Created {
                    location: self.mountpoint(spec.id).to_string_lossy().into_owned(),
                    details: Details::new(),
                });
            }
            Err(e) if stderr_of(&e).contains("not mounted") => {}
            Err(e) if stderr_of(&e).contains("already exists") => {
                if self.existing(name, spec)?.is_none() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        let row = Self::ensure_mounted(name)?;
        Ok(self.created_of(&row))
    }

    /// The ZFS name of a volume the caller names; snapshots need their parent
    /// (else they are looked up by tag).
    fn name_of(&self, v: &VolumeRef<'_>) -> Result<String, ProviderError> {
        check_id(v.id)?;
        match v.kind {
            VolumeKind::Data => Ok(self.fs_name(v.id)),
            VolumeKind::Snapshot => match v.parent {
                Some(p) => {
                    check_id(p)?;
                    Ok(format!("{}@{}", self.fs_name(p), v.id))
                }
                None => self
                    .tagged_as(v.id)?
                    .into_iter()
                    .find(|f| {
                        f.tag
                            .as_ref()
                            .is_some_and(|t| t.kind == VolumeKind::Snapshot)
                    })
                    .map(|f| f.name)
                    .ok_or_else(|| ProviderError::NotFound(format!("snapshot {}", v.id))),
            },
        }
    }

    /// An input volume: it must exist and be ours.
    fn require(&self, v: &VolumeRef<'_>) -> Result<(String, Row), ProviderError> {
        let name = self.name_of(v)?;
        let row = Self::one(&name)?;
        self.ours(v, name, row)
    }

    /// Two input volumes, read by one `zfs list` naming both: the same
    /// rows, checked by the same rule, as [`Self::require`] of each (one
    /// command fewer for an incremental send). If either is absent, ZFS fails
    /// the whole listing; then each is required on its own, for the error
    /// that names the missing one.
    fn require_two(
        &self,
        a: &VolumeRef<'_>,
        b: &VolumeRef<'_>,
    ) -> Result<[(String, Row); 2], ProviderError> {
        let (name_a, name_b) = (self.name_of(a)?, self.name_of(b)?);
        let rows = Self::list_names(&[&name_a, &name_b], false)?;
        let row = |name: &str| rows.iter().find(|r| r.name == name).cloned();
        match (row(&name_a), row(&name_b)) {
            (Some(row_a), Some(row_b)) => Ok([
                self.ours(a, name_a, Some(row_a))?,
                self.ours(b, name_b, Some(row_b))?,
            ]),
            _ => Ok([self.require(a)?, self.require(b)?]),
        }
    }

    fn refuse_destroy(name: &str, volume: &VolumeRef<'_>) -> ProviderError {
        ProviderError::Other(format!(
            "{name} is not tagged as {} {}: refusing to destroy it",
            volume.kind, volume.id
        ))
    }

    /// [`ProviderError::HasDependents`] of snapshot `name` whose clones are
    /// `clones` (full names, comma separated): the clones' volume ids.
    fn has_clones(name: String, clones: &str) -> ProviderError {
        let dependents = clones
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.rsplit('/').next().unwrap_or(s).to_owned())
            .collect();
        ProviderError::HasDependents {
            what: name,
            dependents,
        }
    }

    /// `zfs destroy` of `name`, checked ours as `volume` (busy retried
    /// unless a process or mount holds it: [`destroy_held`]; dependents
    /// typed; absent is success).
    fn destroy_checked(&self, name: String, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        let result = Self::retry_busy_unless_held(
            &name,
            |e, attempt| destroy_held(&name, e, attempt),
            || {
                Cmd::new("zfs")
                    .arg("destroy")
                    .user_arg(&name)?
                    .run()
                    .map(|_| ())
            },
        );
        match result {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) if stderr_of(&e).contains("dependent clones") => {
                let clones = Cmd::new("zfs")
                    .arg("get")
                    .arg("-H")
                    .arg("-p")
                    .arg("-o")
                    .arg("value")
                    .arg("clones")
                    .user_arg(&name)?
                    .run()
                    .map(|o| o.stdout_str())
                    .unwrap_or_default();
                return Err(Self::has_clones(name, &clones));
            }
            Err(e) if stderr_of(&e).contains("has children") => {
                let dependents = Self::snapshots_of(&name)?
                    .into_iter()
                    .map(|r| r.name.rsplit('@').next().unwrap_or_default().to_owned())
                    .collect();
                return Err(ProviderError::HasDependents {
                    what: name,
                    dependents,
                });
            }
            Err(ProviderError::Busy { cause, .. }) => {
                return Err(self.in_use(&name, volume, &cause));
            }
            Err(e) => return Err(e),
        }
        if volume.kind == VolumeKind::Data {
            // The empty mountpoint directory; never anything with content.
            let _ = std::fs::remove_dir(self.mountpoint(volume.id));
        }
        Ok(())
    }

    /// The error of a destroy of `name` (input `volume`) that ZFS found
    /// busy after every attempt, or held (`zfs`:
    /// [`Self::retry_busy_unless_held`]'s cause), with
    /// the volume mounted again at its location if `zfs destroy` had
    /// unmounted it: nothing destroyed, nothing changed, no process touched.
    ///
    /// What keeps it busy (measured in the guest, `OpenZFS` 2.1.11): a process
    /// with its working directory or an open file in the volume or in the
    /// snapshot's `.zfs/snapshot/<id>` (a tenant can enter that from inside
    /// its volume), as root or not; for a data volume also a bind mount of
    /// it or a mount namespace holding a copy of its mount (a container's),
    /// where `zfs destroy` unmounts the host's mount first, then fails
    /// "dataset is busy" and leaves the volume unmounted, its location an
    /// empty directory a new tenant would write into; for a snapshot also a
    /// send (a user hold is named by [`Self::held`] instead, before any
    /// `zfs destroy`; one placed after the destroy program ran ends
    /// here). Neither `zfs destroy -f` nor a lazy unmount
    /// helps: the dataset stays busy until the last holder has left, and a
    /// lazily unmounted snapshot's `.zfs/snapshot/<id>` then fails `ELOOP`
    /// for everyone else.
    fn in_use(&self, name: &str, volume: &VolumeRef<'_>, zfs: &str) -> ProviderError {
        let location = self.location_of_name(name);
        let kind = match volume.kind {
            VolumeKind::Snapshot => "snapshot",
            VolumeKind::Data => "volume",
        };
        let what = format!("{kind} {} ({name})", volume.id);
        if volume.kind == VolumeKind::Data && Self::mounted_here(name) != Some(true) {
            // `zfs destroy` unmounted it before ZFS refused: mount it again
            // (ZFS gives it the superblock the holders still use).
            if let Err(e) = Self::ensure_mounted(name) {
                return ProviderError::Other(format!(
                    "{what} is busy ({zfs}) and was left unmounted by `zfs destroy`: \
                     mounting it again at {location} failed: {e}"
                ));
            }
        }
        let holders = match volume.kind {
            VolumeKind::Snapshot => {
                "a process has its working directory or an open file in it, or the \
                 snapshot has a `zfs hold` or is being sent"
            }
            VolumeKind::Data => {
                "a process has its working directory or an open file in it, or it is \
                 mounted elsewhere too (a bind mount, a container's mount namespace)"
            }
        };
        ProviderError::Busy {
            what,
            cause: format!(
                "in use at {location}: {holders}; nothing was destroyed and no process \
                 was stopped: destroy it again once it is released (zfs: {zfs})"
            ),
        }
    }

    /// The error of a destroy of snapshot `name` (input `volume`) that
    /// its destroy program found busy with user `holds` that waiting does
    /// not release ([`holds::Holds::lasting`]): [`ProviderError::Busy`]
    /// naming its location and those holds (tags escaped and cut short).
    /// Nothing was destroyed, nothing else was run.
    fn held(&self, name: &str, volume: &VolumeRef<'_>, holds: &holds::Holds) -> ProviderError {
        let location = self.location_of_name(name);
        ProviderError::Busy {
            what: format!("snapshot {} ({name})", volume.id),
            cause: format!(
                "held at {location}: it has user holds (`zfs holds`), which stay until \
                 released: {}; nothing was destroyed: destroy it again once they are \
                 released (`zfs release <tag> {name}`) (zfs: zfs.sync.destroy returned \
                 EBUSY, dataset is busy)",
                holds.describe()
            ),
        }
    }

    /// The row of input volume `v` named `name`, if it exists and is ours.
    fn ours(
        &self,
        v: &VolumeRef<'_>,
        name: String,
        row: Option<Row>,
    ) -> Result<(String, Row), ProviderError> {
        let row =
            row.ok_or_else(|| ProviderError::NotFound(format!("{} {} ({name})", v.kind, v.id)))?;
        match self.tag_of(&row) {
            Some(t) if t.volume == v.id => Ok((name, row)),
            _ => Err(ProviderError::Other(format!(
                "{name} is not tagged as {} {}: refusing to use it",
                v.kind, v.id
            ))),
        }
    }
}

impl Provider for ZfsProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Every `zfs` command that changes the pool returns after its
    /// transaction group synced (see the module documentation).
    fn durability(&self) -> Durability {
        Durability::OnReturn
    }

    fn enforces_capacity(&self) -> bool {
        true
    }

    fn set_capacity(&self, volume: &VolumeRef<'_>, bytes: u64) -> Result<(), ProviderError> {
        self.set_refquota(volume, bytes)
    }

    fn free_bytes(&self) -> Result<Option<u64>, ProviderError> {
        self.available_bytes()
    }

    fn check_volume_options(&self, options: &ProviderConfig) -> Result<(), ProviderError> {
        options
            .iter()
            .try_for_each(|(k, v)| check_volume_option(k, v))
    }

    fn set_volume_options(
        &self,
        volume: &VolumeRef<'_>,
        options: &ProviderConfig,
    ) -> Result<(), ProviderError> {
        self.set_options(volume, options)
    }

    fn config(&self) -> ProviderConfig {
        self.config.clone()
    }

    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if spec.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "create_volume asked for a {}",
                spec.kind
            )));
        }
        // One command when all goes well: an existing dataset is found by
        // `create`'s own "already exists" (make_fs settles it by the tag).
        let name = self.fs_name(spec.id);
        let mut cmd = Cmd::new("zfs").arg("create").arg("-o").user_arg(&kv(
            "mountpoint",
            &self.mountpoint(spec.id).to_string_lossy(),
        ))?;
        for t in Self::tags(spec, None) {
            cmd = cmd.arg("-o").user_arg(&t)?;
        }
        let cmd = cmd.user_arg(&name)?;
        self.make_fs(&cmd, &name, spec)
    }

    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if source.kind != VolumeKind::Data || spec.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "a snapshot is taken of a data volume ({} {} given)",
                source.kind, source.id
            )));
        }
        // One channel program: the source's tag check, the snapshot with
        // its tags, its guid (see `program.rs`).
        let src = self.name_of(source)?;
        let name = format!("{src}@{}", spec.id);
        self.snapshot_by_program(source, &src, &name, spec)
    }

    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if snapshot.kind != VolumeKind::Snapshot || spec.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "a fork is made from a snapshot ({} {} given)",
                snapshot.kind, snapshot.id
            )));
        }
        let (snap, _) = self.require(snapshot)?;
        let name = self.fs_name(spec.id);
        let mut cmd = Cmd::new("zfs").arg("clone").arg("-o").user_arg(&kv(
            "mountpoint",
            &self.mountpoint(spec.id).to_string_lossy(),
        ))?;
        for t in Self::tags(spec, Some(snapshot.id)) {
            cmd = cmd.arg("-o").user_arg(&t)?;
        }
        let cmd = cmd.user_arg(&snap)?.user_arg(&name)?;
        self.make_fs(&cmd, &name, spec)
    }

    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        let name = match self.name_of(volume) {
            Ok(n) => n,
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if volume.kind == VolumeKind::Snapshot {
            // One channel program: the tag check and the destroy.
            match self.destroy_snapshot_by_program(&name, volume.id)? {
                DestroySnapshot::Destroyed | DestroySnapshot::Absent => return Ok(()),
                DestroySnapshot::Foreign => return Err(Self::refuse_destroy(&name, volume)),
                DestroySnapshot::Clones { clones } => {
                    return Err(Self::has_clones(name, &clones));
                }
                // A user hold that waiting does not release: busy now, with
                // no `zfs destroy` and no retry (there were 8, ~6.3 s).
                DestroySnapshot::Busy { holds } if !holds.lasting().is_empty() => {
                    return Err(self.held(&name, volume, &holds));
                }
                // Mounted under `.zfs/snapshot` (or a send's passing
                // hold): `zfs destroy` unmounts it first, and retries.
                DestroySnapshot::Busy { .. } => return self.destroy_checked(name, volume),
            }
        }
        let Some(row) = Self::one(&name)? else {
            return Ok(());
        };
        match self.tag_of(&row) {
            Some(t) if t.volume == volume.id => {}
            _ => return Err(Self::refuse_destroy(&name, volume)),
        }
        if row.token.is_some() {
            Self::recv_abort(&name)?;
        }
        self.destroy_checked(name, volume)
    }

    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        _options: &SendOptions,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError> {
        if snapshot.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "only snapshots are sent ({} {} given)",
                snapshot.kind, snapshot.id
            )));
        }
        let (snap, base) = match base {
            None => (self.require(snapshot)?.0, None),
            Some(base) => {
                let [(snap, _), (b, _)] = self.require_two(snapshot, base)?;
                (snap, Some(b))
            }
        };
        let mut cmd = Cmd::new("zfs").arg("send");
        if let Some(b) = &base {
            if b.split('@').next() != snap.split('@').next() {
                return Err(ProviderError::Other(format!(
                    "incremental base {b} is not a snapshot of the same volume as {snap}"
                )));
            }
            cmd = cmd.arg("-i").user_arg(b)?;
        }
        let (bytes, _) = cmd.user_arg(&snap)?.run_to(out)?;
        Ok(SendStats {
            bytes,
            incremental: base.is_some(),
            resumed: false,
            read_bytes: 0,
        })
    }

    fn stream_head_len(&self) -> usize {
        parse::BEGIN_LEN
    }

    /// A resumed stream continues the partial receive its target holds:
    /// `receive_into` checks it against that, so it declares nothing here.
    fn stream_identity(&self, head: &[u8]) -> Option<StreamIdentity> {
        let header = parse_begin(head).ok().filter(|h| !h.resuming)?;
        Some(StreamIdentity {
            guid: header.toguid.to_string(),
            base: (header.fromguid != 0).then(|| header.fromguid.to_string()),
        })
    }

    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if target.kind != VolumeKind::Data || spec.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "a stream is received into a data volume as a snapshot ({} {} given)",
                target.kind, target.id
            )));
        }
        // The target (ours? a partial receive?) and its snapshots (does the
        // stream fit?) in one listing.
        let tname = self.name_of(target)?;
        let (row, snaps) = Self::with_snapshots(&tname)?;
        let (tname, row) = self.ours(target, tname, row)?;
        self.receive_into(&tname, &row, &snaps, spec, target, input)
    }

    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        let rows = Self::list(&self.dataset, true)?;
        let data_root = self.data_root();
        Ok(rows
            .into_iter()
            .filter(|r| r.name != self.dataset && r.name != data_root)
            .map(|r| self.found_of(r))
            .collect())
    }

    /// Two commands when a dataset that can carry the tag of `id` exists
    /// (ours or not), one when none does: a read-only channel program
    /// names those datasets, then one `zfs list` of them reads them as the
    /// inventory does (see the module documentation, "Lookup of one id").
    fn lookup(&self, id: &VolumeId) -> Result<Option<Found>, ProviderError> {
        Ok(self.tagged_as(id.as_str())?.into_iter().next())
    }

    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        let Some(tag) = &found.tag else {
            return Err(ProviderError::Other(format!(
                "{} is not ours: nothing to finish",
                found.name
            )));
        };
        let row =
            Self::one(&found.name)?.ok_or_else(|| ProviderError::NotFound(found.name.clone()))?;
        if row.is_snapshot {
            return Ok(self.created_of(&row));
        }
        let _ = tag;
        let row = Self::ensure_mounted(&found.name)?;
        Ok(self.created_of(&row))
    }

    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        let rows = Self::list(&self.dataset, true)?;
        let prefix = format!("{op}:");
        for r in rows.iter().filter(|r| !r.is_snapshot) {
            let Some(guid) = r.receiving.as_deref().and_then(|v| v.strip_prefix(&prefix)) else {
                continue;
            };
            if r.token.is_some() {
                Self::recv_abort(&r.name)?;
            }
            // A snapshot that arrived but was never tagged as ours.
            for s in Self::snapshots_of(&r.name)? {
                if s.guid == guid && self.tag_of(&s).is_none() {
                    Self::retry_busy(&s.name, || {
                        Cmd::new("zfs")
                            .arg("destroy")
                            .user_arg(&s.name)?
                            .run()
                            .map(|_| ())
                    })?;
                }
            }
            Self::clear_receiving(&r.name)?;
            // A receive killed mid-way leaves the target unmounted (the
            // receive unmounts it to swap or roll it back).
            Self::ensure_mounted(&r.name)?;
        }
        Ok(())
    }

    fn partial_receive(
        &self,
        target: &VolumeRef<'_>,
    ) -> Result<Option<PartialReceive>, ProviderError> {
        let name = self.name_of(target)?;
        Ok(Self::one(&name)?.and_then(|r| Self::partial_of(&r)))
    }

    fn abort_receive(&self, target: &VolumeRef<'_>) -> Result<(), ProviderError> {
        let name = self.name_of(target)?;
        let Some(row) = Self::one(&name)? else {
            return Ok(());
        };
        if row.token.is_some() {
            Self::recv_abort(&name)?;
        }
        if row.receiving.is_some() {
            Self::clear_receiving(&name)?;
        }
        Self::ensure_mounted(&name).map(|_| ())
    }

    fn resume_fits(&self, snapshot: &VolumeRef<'_>, token: &str) -> Result<bool, ProviderError> {
        Ok(self.fitting_token(snapshot, token)?.is_some())
    }

    fn send_resumed(
        &self,
        snapshot: &VolumeRef<'_>,
        token: &str,
        out: &mut dyn Write,
    ) -> Result<Option<SendStats>, ProviderError> {
        let Some(contents) = self.fitting_token(snapshot, token)? else {
            return Ok(None);
        };
        let (bytes, _) = Cmd::new("zfs")
            .arg("send")
            .arg("-t")
            .user_arg(token)?
            .run_to(out)?;
        Ok(Some(SendStats {
            bytes,
            incremental: contents.fromguid.is_some(),
            resumed: true,
            read_bytes: 0,
        }))
    }
}

#[cfg(test)]
mod tests;
