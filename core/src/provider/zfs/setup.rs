//! Opening the ZFS provider: its configuration, the pool (imported, or made
//! on a sparse file vdev) and the root datasets with `setuid=off
//! devices=off`.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The device every `zfs` and `zpool` command opens: missing when the
/// kernel module is not loaded.
const ZFS_DEVICE: &str = "/dev/zfs";

/// Refuses a ZFS provider on a host without ZFS (`device` missing), naming
/// the cause, before any command runs: a request for a provider this host
/// cannot serve (400 `invalid_config`), not a failed command (a 500).
pub(super) fn zfs_available(device: &Path) -> Result<(), ProviderError> {
    if device.exists() {
        return Ok(());
    }
    Err(ProviderError::InvalidConfig(format!(
        "ZFS is not available on this host: {} is missing (the zfs kernel module is not loaded)",
        device.display()
    )))
}

/// The host-local directory of the root datasets' locks (see "The root's
/// owner"): made by root, mode 0700, on `/run` (a tmpfs: nothing stale
/// outlives a boot).
pub(super) const ROOT_LOCK_DIR: &str = "/run/volmgr/zfs-roots";

/// The name of the lock file of root dataset `dataset` in
/// [`ROOT_LOCK_DIR`]: the name with every `/` written `%`, then `.lock`.
/// One-to-one, since a valid dataset name ([`check_dataset`]) holds no
/// `%`, and always one plain path component (no `/`, never `.` or `..`,
/// at most 205 bytes); checked here again, so a name that somehow is not
/// valid never becomes a path.
pub(super) fn root_lock_name(dataset: &str) -> Result<String, ProviderError> {
    check_dataset(dataset)?;
    if dataset.contains('%') {
        return Err(ProviderError::InvalidConfig(format!(
            "{CONFIG_DATASET} {dataset:?}: contains '%'"
        )));
    }
    let name = format!("{}.lock", dataset.replace('/', "%"));
    // Pair assertion: one component, as `Dir` will check again.
    debug_assert!(!name.contains(['/', '\0']) && name != "." && name != "..");
    Ok(name)
}

/// The host-local directory of the pools' claim locks (see "Nested
/// roots"), beside [`ROOT_LOCK_DIR`] and made the same way.
pub(super) const POOL_CLAIM_DIR: &str = "/run/volmgr/zfs-pools";

/// The name of the claim lock file of pool `pool` in [`POOL_CLAIM_DIR`]:
/// `<pool>.lock`, one plain path component (a pool name is one valid
/// dataset component: no `/`, never `.` or `..`).
pub(super) fn pool_claim_lock_name(pool: &str) -> Result<String, ProviderError> {
    check_dataset(pool)?;
    if pool.contains('/') {
        return Err(ProviderError::InvalidConfig(format!(
            "pool {pool:?}: contains '/'"
        )));
    }
    let name = format!("{pool}.lock");
    debug_assert!(!name.contains(['/', '\0']) && name != "." && name != "..");
    Ok(name)
}

/// Takes the host-local claim lock of pool `pool` in `dir` (see "Nested
/// roots"), waiting while another agent of this host claims a root in the
/// same pool: it holds it only across its claim's few `zfs` commands.
pub(super) fn lock_pool_claim(
    dir: &Path,
    pool: &str,
) -> Result<crate::fsutil::HeldLock, ProviderError> {
    let name = pool_claim_lock_name(pool)?;
    let handle = private_lock_dir(dir)?;
    crate::fsutil::wait_lock(&handle, name.as_bytes())
        .map_err(|e| ProviderError::io(format!("locking {}", dir.join(&name).display()), e))
}

/// Makes `dir` (and its parent) if missing, mode 0700, and checks that
/// each is a real directory (not a symlink) of this user that no one
/// else can write: a lock directory another user could change would let
/// that user replace a lock file under an agent's feet.
fn private_lock_dir(dir: &Path) -> Result<crate::fsutil::Dir, ProviderError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: no arguments, cannot fail.
    let me = unsafe { libc::geteuid() };
    for d in [dir.parent(), Some(dir)].into_iter().flatten() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ProviderError::io(format!("creating {}", d.display()), e)),
        }
        let md = std::fs::symlink_metadata(d)
            .map_err(|e| ProviderError::io(format!("examining {}", d.display()), e))?;
        if !md.is_dir() || md.uid() != me || md.mode() & 0o022 != 0 {
            return Err(ProviderError::InvalidConfig(format!(
                "the ZFS root lock directory {} is not a directory of uid {me} that only it \
                 can write (found uid {}, mode {:o}{}): remove it, volmgr makes it",
                d.display(),
                md.uid(),
                md.mode() & 0o7777,
                if md.file_type().is_symlink() {
                    ", a symlink"
                } else {
                    ""
                }
            )));
        }
    }
    crate::fsutil::Dir::open(dir)
        .map_err(|e| ProviderError::io(format!("opening {}", dir.display()), e))
}

/// Checks `<workdir>/mnt` and every directory above it with the walk a
/// `dir` root passes (root mounts volumes there: a user who could swap a
/// directory on the way could have them mounted anywhere), makes it (and a
/// missing workdir) [`PRIVATE_DIR_MODE`](crate::provider::PRIVATE_DIR_MODE), or makes an existing one so
/// if looser (the provider's own: `zfs mount` made it 0755 before), then
/// checks again (what was missing may have been made by another user
/// meanwhile, in a sticky parent).
pub(super) fn private_mounts(workdir: &Path) -> Result<(), ProviderError> {
    const LABEL: &str = "zfs workdir";
    let mounts = workdir.join("mnt");
    crate::provider::refuse_untrusted_root(LABEL, &mounts)?;
    crate::provider::make_private_dir(&mounts, true)?;
    crate::provider::refuse_untrusted_root(LABEL, &mounts)
}

/// Takes the host-local lock of root dataset `dataset` in `dir` (see
/// "The root's owner"): another agent of this host running on it holds
/// it, [`ProviderError::RootInUse`].
pub(super) fn lock_root_dataset(
    dir: &Path,
    dataset: &str,
) -> Result<crate::fsutil::HeldLock, ProviderError> {
    let name = root_lock_name(dataset)?;
    let path = dir.join(&name);
    let handle = private_lock_dir(dir)?;
    crate::fsutil::hold_lock(&handle, name.as_bytes())
        .map_err(|e| ProviderError::io(format!("locking {}", path.display()), e))?
        .ok_or_else(|| ProviderError::RootInUse {
            root: dataset.to_owned(),
            lock: path.display().to_string(),
        })
}

impl ZfsProvider {
    /// Builds the provider from its configuration (see the module docs):
    /// imports or creates the pool if a vdev is configured, creates the root
    /// datasets if missing. No owner: see [`ZfsProvider::for_owner`].
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        Self::open(config, None)
    }

    /// [`ZfsProvider::from_config`] for the agent `owner` (what the
    /// manager's factory builds): the root dataset is claimed for `owner`
    /// (`volmgr:root-owner`), and one another agent owns is refused with
    /// [`ProviderError::ForeignRoot`] before anything in it is changed (see
    /// "The root's owner").
    pub fn for_owner(config: &ProviderConfig, owner: &AgentId) -> Result<Self, ProviderError> {
        Self::open(config, Some(*owner))
    }

    fn open(config: &ProviderConfig, owner: Option<AgentId>) -> Result<Self, ProviderError> {
        let known = [
            CONFIG_DATASET,
            CONFIG_WORKDIR,
            CONFIG_MOUNTPOINT_BASE,
            CONFIG_POOL_VDEV,
            CONFIG_POOL_SIZE,
            CONFIG_POOL_NAME,
        ];
        if let Some(key) = config.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ProviderError::InvalidConfig(format!(
                "unknown key {key:?} (the zfs provider takes {known:?})"
            )));
        }
        let dataset = config
            .get(CONFIG_DATASET)
            .ok_or_else(|| ProviderError::InvalidConfig(format!("missing {CONFIG_DATASET:?}")))?
            .trim_end_matches('/')
            .to_owned();
        check_dataset(&dataset)?;
        let pool = dataset.split('/').next().expect("non-empty").to_owned();
        if let Some(p) = config.get(CONFIG_POOL_NAME)
            && *p != pool
        {
            return Err(ProviderError::InvalidConfig(format!(
                "{CONFIG_POOL_NAME} {p:?} is not the first component of {CONFIG_DATASET} {dataset:?}"
            )));
        }
        let workdir = PathBuf::from(
            config
                .get(CONFIG_WORKDIR)
                .or_else(|| config.get(CONFIG_MOUNTPOINT_BASE))
                .map_or(DEFAULT_WORKDIR, String::as_str),
        );
        let abs_ok = |p: &Path| {
            p.is_absolute()
                && p.to_str().is_some_and(|s| {
                    !s.contains(['\0', ',', '\n']) && !s.split('/').any(|c| c == "..")
                })
        };
        if !abs_ok(&workdir) {
            return Err(ProviderError::InvalidConfig(format!(
                "{CONFIG_WORKDIR} {}: must be an absolute UTF-8 path without '..' or ','",
                workdir.display()
            )));
        }
        let size = match config.get(CONFIG_POOL_SIZE) {
            Some(s) => Some(parse_size(s).filter(|&n| n >= 64 << 20).ok_or_else(|| {
                ProviderError::InvalidConfig(format!(
                    "{CONFIG_POOL_SIZE} {s:?}: a size of at least 64M (bytes or K/M/G/T)"
                ))
            })?),
            None => None,
        };
        zfs_available(Path::new(ZFS_DEVICE))?;
        private_mounts(&workdir)?;
        let mut p = ZfsProvider {
            config: config.clone(),
            dataset,
            workdir,
            root_lock: None,
        };
        if let Some(vdev) = config.get(CONFIG_POOL_VDEV) {
            let vdev = PathBuf::from(vdev);
            if !abs_ok(&vdev) {
                return Err(ProviderError::InvalidConfig(format!(
                    "{CONFIG_POOL_VDEV} {}: must be an absolute path",
                    vdev.display()
                )));
            }
            ZfsProvider::ensure_pool(&pool, &vdev, size)?;
        }
        if let Some(owner) = owner {
            // A root another agent owns is refused as such (naming it)
            // before the lock; judged again under it (`ensure_root`).
            p.refuse_foreign_root(owner)?;
            // Held as long as the provider lives, taken before the root's
            // owner is judged (see "The root's owner").
            p.root_lock = Some(lock_root_dataset(Path::new(ROOT_LOCK_DIR), &p.dataset)?);
        }
        p.ensure_root(owner)?;
        Ok(p)
    }

    pub(super) fn ensure_pool(
        pool: &str,
        vdev: &Path,
        size: Option<u64>,
    ) -> Result<(), ProviderError> {
        let imported = Cmd::new("zpool")
            .arg("list")
            .arg("-H")
            .arg("-o")
            .arg("name")
            .user_arg(pool)?
            .run();
        if imported.is_ok() {
            return Ok(());
        }
        if vdev.exists() {
            Cmd::new("zpool")
                .arg("import")
                .arg("-d")
                .path_arg(vdev)?
                .user_arg(pool)?
                .run()?;
            return Ok(());
        }
        let size = size.unwrap_or_else(|| default_pool_size(vdev));
        if let Some(dir) = vdev.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ProviderError::io(format!("creating {}", dir.display()), e))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(vdev)
            .map_err(|e| ProviderError::io(format!("creating {}", vdev.display()), e))?;
        file.set_len(size)
            .map_err(|e| ProviderError::io(format!("sizing {}", vdev.display()), e))?;
        drop(file);
        let created = Cmd::new("zpool")
            .arg("create")
            .arg("-m")
            .arg("none")
            .user_arg(pool)?
            .path_arg(vdev)?
            .run();
        if let Err(e) = created {
            // Only what we just made goes; an existing file is never touched.
            let _ = std::fs::remove_file(vdev);
            return Err(e);
        }
        Ok(())
    }

    /// Creates the root datasets if missing and sets `setuid=off
    /// devices=off` on the root; with an `owner`, claims the root dataset
    /// first (a new one is created naming it), so a root another agent owns
    /// is refused before anything in it is changed. The claim (the owners
    /// above and below read, then the root made or its owner set) runs
    /// under the pool's claim lock, and only it (see "Nested roots").
    pub(super) fn ensure_root(&self, owner: Option<AgentId>) -> Result<(), ProviderError> {
        if let Some(owner) = owner {
            let _claim = lock_pool_claim(Path::new(POOL_CLAIM_DIR), self.pool())?;
            if !Self::exists(&self.dataset)? {
                // Created with our owner set locally, the new root would
                // hide the owner it inherits: a root inside another
                // agent's tree is refused before it is made.
                self.refuse_root_in_foreign_tree(owner)?;
                // Built from a parsed agent id: never a flag.
                Self::create_if_missing(&self.dataset, Some(&format!("{P_ROOT_OWNER}={owner}")))?;
            }
            self.claim_root(owner)?;
        } else if !Self::exists(&self.dataset)? {
            Self::create_if_missing(&self.dataset, None)?;
        }
        let data_root = self.data_root();
        if !Self::exists(&data_root)? {
            Self::create_if_missing(&data_root, None)?;
        }
        // An existing root (made by an earlier version, or by the operator)
        // gets them too: every dataset below inherits them.
        Cmd::new("zfs")
            .arg("set")
            .arg(SETUID_OFF)
            .arg(DEVICES_OFF)
            .user_arg(&self.dataset)?
            .run()?;
        Ok(())
    }

    /// Whether dataset `name` exists (a filesystem or snapshot).
    fn exists(name: &str) -> Result<bool, ProviderError> {
        Ok(!Self::list(name, false)?.is_empty())
    }

    /// `zfs create -p` of `name` with `mountpoint=none setuid=off
    /// devices=off` and `owned` (the root owner's `property=value`), if
    /// another did not make it meanwhile.
    fn create_if_missing(name: &str, owned: Option<&str>) -> Result<(), ProviderError> {
        let mut cmd = Cmd::new("zfs").arg("create").arg("-p");
        for prop in ["mountpoint=none", SETUID_OFF, DEVICES_OFF] {
            cmd = cmd.arg("-o").arg(prop);
        }
        if let Some(owned) = owned {
            cmd = cmd.arg("-o").user_arg(owned)?;
        }
        match cmd.user_arg(name)?.run() {
            Err(e) if !stderr_of(&e).contains("already exists") => Err(e),
            _ => Ok(()),
        }
    }
}

impl ZfsProvider {
    /// Claims the root dataset for `owner`: `volmgr:root-owner` naming
    /// `owner` goes on (set locally if only inherited); naming another
    /// agent, locally or inherited from a dataset above (a root inside
    /// another agent's tree), is [`ProviderError::ForeignRoot`]; a value
    /// that is no agent id is a configuration error naming the dataset and
    /// the property; unset, it is set (a root from before owners, when one
    /// agent could only have meant itself). One `zfs get`, and one `zfs set`
    /// only when it sets.
    pub(super) fn claim_root(&self, owner: AgentId) -> Result<(), ProviderError> {
        let (value, source) = self.root_owner()?;
        if value == "-" && source == "-" {
            self.refuse_foreign_roots_below(owner)?;
            self.set_root_owner(owner)?;
            tracing::info!(dataset = %self.dataset, %owner, "zfs provider: root dataset claimed for this agent");
            return Ok(());
        }
        let named = AgentId::parse(&value).map_err(|why| {
            ProviderError::InvalidConfig(format!(
                "zfs root dataset {}: its property {P_ROOT_OWNER} ({source}) is {value:?}, no \
                 agent id: {why}; nothing in the dataset was changed",
                self.dataset
            ))
        })?;
        if named != owner {
            return Err(ProviderError::ForeignRoot {
                root: self.dataset.clone(),
                owner: named.to_string(),
            });
        }
        if source != "local" {
            self.refuse_foreign_roots_below(owner)?;
            self.set_root_owner(owner)?;
        }
        Ok(())
    }

    /// [`ProviderError::ForeignRoot`] naming a filesystem below the root
    /// dataset whose own (local) `volmgr:root-owner` names another agent:
    /// that agent's root, which claiming this one would put inside our
    /// tree. A local value there that is no agent id is refused as
    /// damaged. One `zfs get -r -t filesystem -s local`, a walk of the
    /// root's tree (no snapshot): run only when the owner is about to be
    /// set ([`ZfsProvider::claim_root`]: a root from before owners, or
    /// one whose owner is only inherited), never at a reopen, and never
    /// for a root just made (nothing below it).
    fn refuse_foreign_roots_below(&self, owner: AgentId) -> Result<(), ProviderError> {
        let out = Cmd::new("zfs")
            .arg("get")
            .arg("-H")
            .arg("-p")
            .arg("-r")
            .arg("-t")
            .arg("filesystem")
            .arg("-s")
            .arg("local")
            .arg("-o")
            .arg("name,value")
            .arg(P_ROOT_OWNER)
            .user_arg(&self.dataset)?
            .run()?;
        for line in out.stdout_str().lines().filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once('\t').ok_or_else(|| {
                ProviderError::Other(format!(
                    "`zfs get -r {P_ROOT_OWNER} {}` answered {line:?}, not name and value",
                    self.dataset
                ))
            })?;
            if name == self.dataset {
                continue;
            }
            match AgentId::parse(value) {
                Ok(named) if named == owner => {}
                Ok(named) => {
                    return Err(ProviderError::ForeignRoot {
                        root: name.to_owned(),
                        owner: named.to_string(),
                    });
                }
                Err(why) => {
                    return Err(ProviderError::InvalidConfig(format!(
                        "zfs root dataset {}: {name} below it has {P_ROOT_OWNER} {value:?}, no \
                         agent id: {why}; the root is not claimed over another agent's root, \
                         nothing in it was changed",
                        self.dataset
                    )));
                }
            }
        }
        Ok(())
    }

    /// [`ProviderError::ForeignRoot`] if the root dataset exists and
    /// `volmgr:root-owner` names another agent; anything else (no dataset
    /// yet, unset, ours, damaged) is left to [`ZfsProvider::claim_root`],
    /// under the lock.
    fn refuse_foreign_root(&self, owner: AgentId) -> Result<(), ProviderError> {
        let Ok((value, _)) = self.root_owner() else {
            return Ok(());
        };
        match AgentId::parse(&value) {
            Ok(named) if named != owner => Err(ProviderError::ForeignRoot {
                root: self.dataset.clone(),
                owner: named.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// [`ProviderError::ForeignRoot`] if the nearest existing dataset above
    /// the (missing) root dataset has `volmgr:root-owner` naming another
    /// agent, set there or inherited: the root would be made inside that
    /// agent's tree. One `zfs get` per missing level above the root, and
    /// one for the first existing one (its value holds what it inherits).
    /// An unset or unreadable value there is no owner: nothing to refuse.
    fn refuse_root_in_foreign_tree(&self, owner: AgentId) -> Result<(), ProviderError> {
        let mut above = self.dataset.as_str();
        // Bounded: each round drops one component; the pool has none left.
        while let Some((parent, _)) = above.rsplit_once('/') {
            above = parent;
            match Self::owner_of(above) {
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
                Ok((value, _)) => {
                    return match AgentId::parse(&value) {
                        Ok(named) if named != owner => Err(ProviderError::ForeignRoot {
                            root: self.dataset.clone(),
                            owner: named.to_string(),
                        }),
                        _ => Ok(()),
                    };
                }
            }
        }
        Ok(())
    }

    /// `volmgr:root-owner` of the root dataset: its value and source, as
    /// `zfs get -H -p -o value,source` prints them (`-`, `-` when unset).
    fn root_owner(&self) -> Result<(String, String), ProviderError> {
        Self::owner_of(&self.dataset)
    }

    /// `volmgr:root-owner` of dataset `name` (see [`ZfsProvider::root_owner`]).
    fn owner_of(name: &str) -> Result<(String, String), ProviderError> {
        let out = Cmd::new("zfs")
            .arg("get")
            .arg("-H")
            .arg("-p")
            .arg("-o")
            .arg("value,source")
            .arg(P_ROOT_OWNER)
            .user_arg(name)?
            .run()?;
        let text = out.stdout_str();
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let (value, source) = line.split_once('\t').ok_or_else(|| {
            ProviderError::Other(format!(
                "`zfs get {P_ROOT_OWNER} {name}` answered {line:?}, not value and source"
            ))
        })?;
        Ok((value.to_owned(), source.to_owned()))
    }

    /// Sets `volmgr:root-owner` to `owner` on the root dataset and reads it
    /// back: another agent's id set meanwhile (by an agent of another host
    /// sharing the pool, which the host-local lock cannot see) is
    /// [`ProviderError::ForeignRoot`], anything else but `owner` (local)
    /// an error saying what was read.
    fn set_root_owner(&self, owner: AgentId) -> Result<(), ProviderError> {
        Cmd::new("zfs")
            .arg("set")
            .user_arg(&format!("{P_ROOT_OWNER}={owner}"))?
            .user_arg(&self.dataset)?
            .run()?;
        let (value, source) = self.root_owner()?;
        match AgentId::parse(&value) {
            Ok(named) if named == owner && source == "local" => Ok(()),
            Ok(named) if named != owner => Err(ProviderError::ForeignRoot {
                root: self.dataset.clone(),
                owner: named.to_string(),
            }),
            _ => Err(ProviderError::Other(format!(
                "zfs root dataset {}: {P_ROOT_OWNER} set to {owner} reads back as {value:?} \
                 ({source})",
                self.dataset
            ))),
        }
    }
}

/// 70% of the size of the file system that will hold `vdev`, else 100 GB.
pub(super) fn default_pool_size(vdev: &Path) -> u64 {
    let dir = vdev.parent().unwrap_or(Path::new("/"));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return FALLBACK_POOL_SIZE;
    };
    // SAFETY: statvfs fills the zeroed struct; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut st) } != 0 {
        return FALLBACK_POOL_SIZE;
    }
    let total = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64);
    if total == 0 {
        FALLBACK_POOL_SIZE
    } else {
        total / 10 * 7
    }
}
