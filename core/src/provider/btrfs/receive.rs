//! The steps of a btrfs receive after `btrfs receive` ran: the arrived
//! subvolume, the exchange into the target, the commit, and the base check
//! of an incremental stream. See the parent module's "Verbs".

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::fsutil::Dir;

impl BtrfsProvider {
    /// The received subvolume of receive `op`: still staged, or in place.
    pub(super) fn received_vol(&self, op: OpId, snapshot: &str) -> Option<PathBuf> {
        let staged = self.stage(op).join("in").join(VOL);
        if is_subvolume(&staged) {
            return Some(staged);
        }
        match self.in_place(VolumeKind::Snapshot, snapshot) {
            InPlace::Ours { tag, has_vol: true } if tag.op == op => {
                Some(self.location(VolumeKind::Snapshot, snapshot))
            }
            _ => None,
        }
    }

    pub(super) fn receive_steps(
        &self,
        target: &str,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        let stage = self.stage(spec.op);
        let tag = Tag {
            volume: spec.id.to_string(),
            op: spec.op,
            kind: VolumeKind::Snapshot,
            parent: Some(target.to_owned()),
        };
        fs::create_dir(&stage).map_err(io_err(format!("create {}", stage.display())))?;
        write_tag(&stage, &tag)?;
        let incoming = stage.join("in");
        fs::create_dir(&incoming).map_err(io_err(format!("create {}", incoming.display())))?;
        // Every command is charged before it passes (module doc, "A
        // receive cannot fill the disk"); a refusal kills `btrfs receive`.
        let root =
            Dir::open(&self.root).map_err(io_err(format!("open {}", self.root.display())))?;
        let mut budget = stream::ReceiveBudget::new(root, self.receiving.clone())?;
        let block = budget.block;
        let mut guarded = stream::StreamGuard::new(input, block, |n| budget.charge(n));
        let received = self
            .btrfs()
            .arg("receive")
            .arg("--chroot")
            .path_arg(&incoming)?
            .run_from(&mut guarded);
        if let Some(refusal) = guarded.take_refusal() {
            return Err(refusal);
        }
        received.map_err(no_space_reported)?;
        // Exactly one read-only subvolume with a received UUID must be there.
        let entries: Vec<_> = fs::read_dir(&incoming)
            .map_err(io_err(format!("read {}", incoming.display())))?
            .flatten()
            .map(|e| e.path())
            .collect();
        let [received] = entries.as_slice() else {
            return Err(ProviderError::Stream(format!(
                "expected one subvolume from the stream, found {} entries",
                entries.len()
            )));
        };
        let info = subvol_info(received)
            .map_err(|e| ProviderError::Stream(format!("received item is no subvolume: {e}")))?;
        if !info.read_only || info.received_uuid.is_none() {
            return Err(ProviderError::Stream(
                "the stream did not complete (no read-only received subvolume)".into(),
            ));
        }
        if let Some(base) = info.parent_uuid {
            self.check_base(target, base)?;
        }
        let vol = incoming.join(VOL);
        if received != &vol {
            fs::rename(received, &vol).map_err(io_err(format!("rename {}", vol.display())))?;
        }
        write_tag(&incoming, &tag)?;
        // The target's new content: a writable snapshot, exchanged atomically
        // with its current subvolume.
        let fresh = stage.join("new");
        self.btrfs()
            .arg("subvolume")
            .arg("snapshot")
            .path_arg(&vol)?
            .path_arg(&fresh)?
            .run()?;
        let target_vol = self.location(VolumeKind::Data, target);
        self.carry_capacity(&target_vol, &fresh)?;
        exchange_subvolumes(&fresh, &target_vol)
            .map_err(io_err(format!("exchange {}", target_vol.display())))?;
        self.commit(&incoming, VolumeKind::Snapshot, spec.id)?;
        // The one barrier of a receive: the received files' data are
        // written back by the kernel on its own schedule, and a transaction
        // commit does not wait for them, so the commit point below must not
        // reach the disk before they do. (The metadata steps above need no
        // sync: any transaction holding the commit point holds them.)
        self.handle.sync_all()?;
        // Commit: the stage (now holding the old content) leaves. Durable
        // with the manager's batched sync, which runs before the outcome.
        let trashed = self.trash_root().join(spec.op.to_string());
        fs::rename(&stage, &trashed)
            .map_err(io_err(format!("move {} to trash", stage.display())))?;
        if let Err(e) = self.purge(&trashed) {
            tracing::warn!(path = %trashed.display(), error = %e, "old target content not deleted yet");
        }
        Ok(Created {
            location: self
                .location(VolumeKind::Snapshot, spec.id)
                .to_string_lossy()
                .into_owned(),
            details: Details::from([(DETAIL_GUID.to_owned(), info.guid().to_string())]),
        })
    }

    /// An incremental stream was applied on local subvolume `base` (btrfs
    /// picks it by received UUID, anywhere on the file system). Accept it only
    /// if `target` has a snapshot with the same identity, as a ZFS receive
    /// would: a stream is received into the volume that holds its base.
    pub(super) fn check_base(&self, target: &str, base: Uuid) -> Result<(), ProviderError> {
        let mut base_guid = None;
        let mut target_guids = BTreeSet::new();
        let dir = self.root.join(kind_dir(VolumeKind::Snapshot));
        for entry in fs::read_dir(&dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .flatten()
        {
            let Some(tag) = read_tag(&entry.path()) else {
                continue;
            };
            let Ok(info) = subvol_info(&entry.path().join(VOL)) else {
                continue;
            };
            if info.uuid == base {
                base_guid = Some(info.guid());
            }
            if tag.parent.as_deref() == Some(target) {
                target_guids.insert(info.guid());
            }
        }
        match base_guid {
            Some(g) if target_guids.contains(&g) => Ok(()),
            Some(g) => Err(ProviderError::Stream(format!(
                "incremental stream from base {g}, which volume {target} does not have"
            ))),
            None => Err(ProviderError::Stream(format!(
                "incremental stream applied on subvolume {base}, which is none of our snapshots"
            ))),
        }
    }
}

/// A failure of `btrfs receive` that reports a full file system or quota
/// (`ENOSPC`, `EDQUOT` in its message) as [`ProviderError::NoSpace`].
pub(super) fn no_space_reported(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Command { ref stderr, .. }
            if stderr.contains("No space left on device")
                || stderr.contains("Disk quota exceeded") =>
        {
            ProviderError::NoSpace {
                what: "the received stream".into(),
                detail: format!("btrfs receive: {}", stderr.trim()),
            }
        }
        other => other,
    }
}

/// `btrfs send`'s stream magic (with its NUL), then a little-endian `u32`
/// version.
const STREAM_MAGIC: &[u8; 13] = b"btrfs-stream\0";
/// Stream header (17) and one command header (`u32` length, `u16` command,
/// `u32` CRC), then the first command's attributes: the subvolume's name,
/// its UUID and transid, and, for an incremental stream, its base's.
/// Names are at most 255 bytes, so 1 KiB holds any first command.
pub const STREAM_HEAD_LEN: usize = 17 + 10 + 1024;
const CMD_SUBVOL: u16 = 1;
const CMD_SNAPSHOT: u16 = 2;
const ATTR_UUID: u16 = 1;
const ATTR_CLONE_UUID: u16 = 20;

/// The identity the first command of a `btrfs send` stream declares: its
/// `UUID` attribute (the sent subvolume's received UUID if it has one, else
/// its own: the form of [`SubvolInfo::guid`]) and, for a `SNAPSHOT`
/// command (an incremental stream), its `CLONE_UUID` (the base's, in the
/// same form). `None` for anything else; `btrfs receive` judges those.
pub fn stream_identity(head: &[u8]) -> Option<StreamIdentity> {
    let rest = head.strip_prefix(STREAM_MAGIC)?;
    let version = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    if !(1..=3).contains(&version) {
        return None;
    }
    let cmd = rest.get(4..14)?;
    let len = u32::from_le_bytes(cmd[..4].try_into().ok()?) as usize;
    let kind = u16::from_le_bytes(cmd[4..6].try_into().ok()?);
    let mut attrs = rest.get(14..14usize.checked_add(len)?)?;
    let (mut uuid, mut clone) = (None, None);
    while !attrs.is_empty() {
        let t = u16::from_le_bytes(attrs.get(..2)?.try_into().ok()?);
        let l = u16::from_le_bytes(attrs.get(2..4)?.try_into().ok()?) as usize;
        let value = attrs.get(4..4 + l)?;
        let as_uuid = || Some(Uuid::from_bytes(value.try_into().ok()?));
        match t {
            ATTR_UUID => uuid = Some(as_uuid()?),
            ATTR_CLONE_UUID => clone = Some(as_uuid()?),
            _ => {}
        }
        attrs = &attrs[4 + l..];
    }
    let guid = uuid?.to_string();
    match kind {
        CMD_SUBVOL => Some(StreamIdentity { guid, base: None }),
        CMD_SNAPSHOT => Some(StreamIdentity {
            guid,
            base: Some(clone?.to_string()),
        }),
        _ => None,
    }
}

/// Exchanges subvolumes `a` and `b` (`RENAME_EXCHANGE`; each is the only
/// entry of its own container directory). btrfs moves no read-only
/// subvolume to another directory (`EROFS`), and the owner of a volume's
/// root may make it read-only from inside (`BTRFS_IOC_SUBVOL_SETFLAGS`
/// needs only ownership): both are made writable first (one ioctl each, a
/// no-op when already writable), again if the tenant flips one back
/// meanwhile, a few times. Only data volumes' contents are exchanged: the
/// flag is the tenant's, and the content it was set on is being replaced.
pub(super) fn exchange_subvolumes(a: &Path, b: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        for side in [a, b] {
            subvol::set_read_only(side, false).map_err(|e| io::Error::other(e.to_string()))?;
        }
        match rename2(a, b, libc::RENAME_EXCHANGE) {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) && tries < 3 => tries += 1,
            done => return done,
        }
    }
}
