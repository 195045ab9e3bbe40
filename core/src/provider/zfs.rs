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
//! <dataset>                   mountpoint=none (created if missing)
//! <dataset>/data              mountpoint=none
//! <dataset>/data/<id>         data volume (or fork: a clone), mounted at <workdir>/mnt/data/<id>
//! <dataset>/data/<src>@<id>   snapshot <id> of data volume <src>
//! ```
//!
//! Every dataset, clone and snapshot we make carries the user properties
//! `volmgr:owner=volmgr`, `volmgr:volume-id`, `volmgr:op`, `volmgr:kind`
//! and (snapshots, forks) `volmgr:parent`, set atomically by `create -o`,
//! `snapshot -o`, `clone -o` (clones do not inherit the origin's properties).
//! User properties are inherited by children and snapshots, so an item counts
//! as ours only if its *own* name matches its tag: a filesystem
//! `<dataset>/data/<id>` tagged volume `<id>` kind `data`, a snapshot
//! `...@<id>` tagged volume `<id>` kind `snapshot`. Everything else under the
//! root is foreign (tag `None`): reported, never touched.
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
//! `volmgr:receiving=<op>:<toguid>`, runs `zfs recv -F -s -x volmgr:...`,
//! then finds the arrived snapshot BY GUID, tags it and renames it to
//! `<target>@<spec.id>`, and clears the mark. A failed receive with a resume
//! token is aborted at once (`zfs recv -A`; the token is named in the error),
//! and [`Provider::abort_partial`] does the same after a crash (plus removing
//! an arrived-but-untagged snapshot of that operation, and mounting the
//! target again: a killed receive leaves it unmounted), so a partial receive
//! never blocks the dataset.
//!
//! # Errors
//!
//! "dataset is busy" is retried (bounded, growing back-off) then reported as
//! [`ProviderError::Busy`] with ZFS's message as the cause; destroying a
//! snapshot with clones or a volume with snapshots is
//! [`ProviderError::HasDependents`]; destroying something absent succeeds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cmd::Cmd;
use super::dir::check_id;
use super::{
    Created, Found, PartialReceive, Presence, Provider, ProviderConfig, ProviderError, SendStats,
    Tag, VolumeRef, VolumeSpec,
};
use crate::state::{DETAIL_GUID, Details, OpId, VolumeKind};
use crate::validate::MAX_RESUME_TOKEN_LEN;

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
/// Pool size when the state disk's size is unknown.
pub const FALLBACK_POOL_SIZE: u64 = 100 * 1000 * 1000 * 1000;

const P_OWNER: &str = "volmgr:owner";
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

/// `DMU_BACKUP_MAGIC` of a send stream's begin record.
const BACKUP_MAGIC: u64 = 0x2_f5ba_cbac;
/// Size of the `DRR_BEGIN` record (type, payload length, begin body).
const BEGIN_LEN: usize = 8 + 8 + 8 + 8 + 4 + 4 + 8 + 8 + 256;

/// Checks a dataset name from the configuration.
pub fn check_dataset(name: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| {
        Err(ProviderError::InvalidConfig(format!(
            "{CONFIG_DATASET} {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1..=200 bytes");
    }
    if name.starts_with('-') {
        return bad("starts with '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')))
    {
        return bad(&format!("contains {c:?} (allowed: A-Z a-z 0-9 _ . : / -)"));
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('-'))
    {
        return bad("has an empty, '.', '..' or '-'-prefixed component");
    }
    Ok(())
}

/// ZFS `compression` values a volume may ask for.
pub const COMPRESSION_VALUES: &[&str] = &[
    "on",
    "off",
    "lz4",
    "lzjb",
    "zle",
    "gzip",
    "gzip-1",
    "gzip-2",
    "gzip-3",
    "gzip-4",
    "gzip-5",
    "gzip-6",
    "gzip-7",
    "gzip-8",
    "gzip-9",
    "zstd",
    "zstd-fast",
];

/// Checks one volume option: `compression` (one of [`COMPRESSION_VALUES`],
/// or `zstd-1`..`zstd-19`) or `recordsize` (a power of two from 512 bytes
/// to 1 MiB, bytes or with a K/M suffix).
pub fn check_volume_option(key: &str, value: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| {
        Err(ProviderError::InvalidConfig(format!(
            "{key}={value:?}: {why}"
        )))
    };
    match key {
        "compression" => {
            let zstd_level = value
                .strip_prefix("zstd-")
                .and_then(|l| l.parse::<u8>().ok())
                .is_some_and(|l| (1..=19).contains(&l));
            if COMPRESSION_VALUES.contains(&value) || zstd_level {
                Ok(())
            } else {
                bad("not a ZFS compression algorithm")
            }
        }
        "recordsize" => match parse_size(value) {
            Some(n) if n.is_power_of_two() && (512..=1 << 20).contains(&n) => Ok(()),
            _ => bad("must be a power of two from 512 to 1M"),
        },
        _ => Err(ProviderError::InvalidConfig(format!(
            "the zfs provider has no volume option {key:?} (compression, recordsize)"
        ))),
    }
}

/// Parses a size: bytes, or with a K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// One row of `zfs list -H -p -o COLUMNS`.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    is_snapshot: bool,
    guid: String,
    createtxg: u64,
    mounted: bool,
    token: Option<String>,
    owner: Option<String>,
    volume: Option<String>,
    op: Option<String>,
    kind: Option<String>,
    parent: Option<String>,
    receiving: Option<String>,
}

fn prop(v: &str) -> Option<String> {
    (v != "-" && !v.is_empty()).then(|| v.to_owned())
}

fn parse_rows(out: &str) -> Result<Vec<Row>, ProviderError> {
    let mut rows = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 13 {
            return Err(ProviderError::Other(format!(
                "unexpected `zfs list` line ({} fields): {line:?}",
                f.len()
            )));
        }
        rows.push(Row {
            name: f[0].to_owned(),
            is_snapshot: f[1] == "snapshot",
            guid: f[2].to_owned(),
            createtxg: f[3].parse().unwrap_or(0),
            mounted: f[5] == "yes",
            token: prop(f[6]),
            owner: prop(f[7]),
            volume: prop(f[8]),
            op: prop(f[9]),
            kind: prop(f[10]),
            parent: prop(f[11]),
            receiving: prop(f[12]),
        });
    }
    Ok(rows)
}

fn stderr_of(e: &ProviderError) -> &str {
    match e {
        ProviderError::Command { stderr, .. } => stderr,
        _ => "",
    }
}

fn is_not_found(e: &ProviderError) -> bool {
    let s = stderr_of(e);
    s.contains("does not exist") || s.contains("no such pool or dataset")
}

fn is_busy(e: &ProviderError) -> bool {
    stderr_of(e).contains("is busy")
}

fn kv(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// The header of a send stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub toguid: u64,
    pub fromguid: u64,
    pub toname: String,
    /// A resumed stream (`zfs send -t`): it continues a partial receive.
    pub resuming: bool,
}

/// `DMU_BACKUP_FEATURE_RESUMING` as a bit of the begin record's versioninfo
/// (feature flags start at bit 2).
const FEATURE_RESUMING: u64 = 1 << 22;

/// Checks a resume token from a caller: `<version>-<hex>-<hex>-<hex>`, ASCII
/// hex digits and dashes only, bounded, never flag-like.
pub fn check_token(token: &str) -> Result<(), ProviderError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_RESUME_TOKEN_LEN
        && token.starts_with(|c: char| c.is_ascii_digit())
        && token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Stream(format!(
            "invalid resume token ({} bytes): expected hex digits and dashes, at most {MAX_RESUME_TOKEN_LEN}",
            token.len()
        )))
    }
}

/// What `zfs send -nvP -t TOKEN` says a token continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenContents {
    pub toguid: u64,
    pub fromguid: Option<u64>,
    pub toname: String,
}

/// Parses the `resume token contents:` nvlist dump of `zfs send -nv -t`.
pub fn parse_token_contents(text: &str) -> Option<TokenContents> {
    let mut toguid = None;
    let mut fromguid = None;
    let mut toname = None;
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(" = ") else {
            continue;
        };
        let hex = |v: &str| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok();
        match k {
            "toguid" => toguid = hex(v),
            "fromguid" => fromguid = hex(v),
            "toname" => toname = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    Some(TokenContents {
        toguid: toguid?,
        fromguid,
        toname: toname?,
    })
}

/// Parses the `DRR_BEGIN` record at the start of a (non-compound) stream.
pub fn parse_begin(b: &[u8]) -> Result<StreamHeader, ProviderError> {
    if b.len() < BEGIN_LEN {
        return Err(ProviderError::Stream(
            "shorter than a ZFS stream header".into(),
        ));
    }
    let le = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let be = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u64_at: &dyn Fn(usize) -> u64 = if le(8) == BACKUP_MAGIC {
        &le
    } else if be(8) == BACKUP_MAGIC {
        &be
    } else {
        return Err(ProviderError::Stream(
            "not a ZFS send stream (bad magic)".into(),
        ));
    };
    let drr_type = u64_at(0) & 0xffff_ffff;
    let drr_type_be = u64_at(0) >> 32;
    if drr_type != 0 && drr_type_be != 0 {
        return Err(ProviderError::Stream(
            "stream does not start with BEGIN".into(),
        ));
    }
    // DMU_GET_STREAM_HDRTYPE: 1 substream, 2 compound (send -R).
    if u64_at(16) & 0x3 == 2 {
        return Err(ProviderError::Stream(
            "compound (send -R) streams are not accepted".into(),
        ));
    }
    let name = &b[56..56 + 256];
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok(StreamHeader {
        toguid: u64_at(40),
        fromguid: u64_at(48),
        toname: String::from_utf8_lossy(&name[..end]).into_owned(),
        resuming: u64_at(16) & FEATURE_RESUMING != 0,
    })
}

/// ZFS datasets under a root dataset. See the module documentation.
#[derive(Debug)]
pub struct ZfsProvider {
    config: ProviderConfig,
    dataset: String,
    workdir: PathBuf,
}

impl ZfsProvider {
    /// Builds the provider from its configuration (see the module docs):
    /// imports or creates the pool if a vdev is configured, creates the root
    /// datasets if missing.
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
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
        let p = ZfsProvider {
            config: config.clone(),
            dataset,
            workdir,
        };
        if let Some(vdev) = config.get(CONFIG_POOL_VDEV) {
            let vdev = PathBuf::from(vdev);
            if !abs_ok(&vdev) {
                return Err(ProviderError::InvalidConfig(format!(
                    "{CONFIG_POOL_VDEV} {}: must be an absolute path",
                    vdev.display()
                )));
            }
            p.ensure_pool(&pool, &vdev, size)?;
        }
        p.ensure_root()?;
        Ok(p)
    }

    /// The factory for [`super::builtin_factories`].
    pub fn factory() -> super::ProviderFactory {
        std::sync::Arc::new(|config: &ProviderConfig| {
            Ok(std::sync::Arc::new(ZfsProvider::from_config(config)?)
                as std::sync::Arc<dyn Provider>)
        })
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    fn ensure_pool(&self, pool: &str, vdev: &Path, size: Option<u64>) -> Result<(), ProviderError> {
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

    fn ensure_root(&self) -> Result<(), ProviderError> {
        for name in [self.dataset.clone(), self.data_root()] {
            if self.list(&name, false)?.is_empty() {
                let made = Cmd::new("zfs")
                    .arg("create")
                    .arg("-p")
                    .arg("-o")
                    .arg("mountpoint=none")
                    .user_arg(&name)?
                    .run();
                if let Err(e) = made
                    && !stderr_of(&e).contains("already exists")
                {
                    return Err(e);
                }
            }
        }
        Ok(())
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

    /// `zfs list` of `name` (with `-r` when `recursive`); empty if absent.
    fn list(&self, name: &str, recursive: bool) -> Result<Vec<Row>, ProviderError> {
        let mut cmd = Cmd::new("zfs")
            .arg("list")
            .arg("-H")
            .arg("-p")
            .arg("-t")
            .arg("filesystem,snapshot")
            .arg("-o")
            .arg(COLUMNS);
        if recursive {
            cmd = cmd.arg("-r");
        }
        match cmd.user_arg(name)?.run() {
            Ok(out) => parse_rows(&out.stdout_str()),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn one(&self, name: &str) -> Result<Option<Row>, ProviderError> {
        Ok(self.list(name, false)?.into_iter().find(|r| r.name == name))
    }

    /// Snapshots of filesystem `fs` (depth 1), oldest first by createtxg.
    fn snapshots_of(&self, fs: &str) -> Result<Vec<Row>, ProviderError> {
        let out = Cmd::new("zfs")
            .arg("list")
            .arg("-H")
            .arg("-p")
            .arg("-t")
            .arg("snapshot")
            .arg("-d")
            .arg("1")
            .arg("-o")
            .arg(COLUMNS)
            .user_arg(fs)?
            .run();
        let mut rows = match out {
            Ok(out) => parse_rows(&out.stdout_str())?,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        rows.retain(|r| r.is_snapshot && r.name.split('@').next() == Some(fs));
        rows.sort_by_key(|r| r.createtxg);
        Ok(rows)
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

    /// The resumable partial receive a filesystem row holds: its token, and
    /// the stream's guid and operation from our `volmgr:receiving` mark.
    fn partial_of(&self, row: &Row) -> Option<PartialReceive> {
        let token = row.token.clone()?;
        let (op, guid) = match row.receiving.as_deref().and_then(|m| m.split_once(':')) {
            Some((op, guid)) => (op.parse().ok(), guid.to_owned()),
            None => (None, String::new()),
        };
        Some(PartialReceive { token, guid, op })
    }

    fn location_of(&self, row: &Row) -> String {
        let rest = row
            .name
            .strip_prefix(&format!("{}/", self.data_root()))
            .unwrap_or(&row.name);
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

    fn tags(&self, spec: &VolumeSpec<'_>, parent: Option<&str>) -> Vec<String> {
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
        let Some(row) = self.one(name)? else {
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

    /// Runs `f` again while ZFS says the dataset is busy (bounded), then
    /// reports [`ProviderError::Busy`] naming ZFS's message.
    fn retry_busy<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e) if is_busy(&e) => {
                    attempt += 1;
                    if attempt >= BUSY_ATTEMPTS {
                        return Err(ProviderError::Busy {
                            what: what.to_owned(),
                            cause: format!(
                                "{} (still busy after {attempt} attempts: open files, a mount in another namespace, a concurrent receive or a hold)",
                                stderr_of(&e).trim()
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50 << attempt.min(5)));
                }
                other => return other,
            }
        }
    }

    /// Mounts filesystem `name` if it is not (bounded retries: a create may
    /// report "created, but not mounted").
    fn ensure_mounted(&self, name: &str) -> Result<Row, ProviderError> {
        let mut last = None;
        for attempt in 0..5u32 {
            let row = self
                .one(name)?
                .ok_or_else(|| ProviderError::NotFound(name.to_owned()))?;
            if row.mounted {
                return Ok(row);
            }
            match Cmd::new("zfs").arg("mount").user_arg(name)?.run() {
                Ok(_) => {}
                Err(e) if stderr_of(&e).contains("already mounted") => {}
                Err(e) => last = Some(e),
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
            }
        }
        let row = self
            .one(name)?
            .ok_or_else(|| ProviderError::NotFound(name.to_owned()))?;
        if row.mounted {
            return Ok(row);
        }
        Err(last.unwrap_or_else(|| ProviderError::Other(format!("{name} does not mount"))))
    }

    /// Runs a creating command (`create`, `clone`). Success means created
    /// and mounted (ZFS exits non-zero with "created, but not mounted"
    /// otherwise): nothing more to ask. "Not mounted" is finished by
    /// mounting; "already exists" is settled by the tag (idempotent: ours
    /// from this very op, then mounted if it is not).
    fn make_fs(
        &self,
        cmd: Cmd,
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
        let row = self.ensure_mounted(name)?;
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
                    .inventory()?
                    .into_iter()
                    .find(|f| {
                        f.tag
                            .as_ref()
                            .is_some_and(|t| t.volume == v.id && t.kind == VolumeKind::Snapshot)
                    })
                    .map(|f| f.name)
                    .ok_or_else(|| ProviderError::NotFound(format!("snapshot {}", v.id))),
            },
        }
    }

    /// An input volume: it must exist and be ours.
    fn require(&self, v: &VolumeRef<'_>) -> Result<(String, Row), ProviderError> {
        let name = self.name_of(v)?;
        let row = self
            .one(&name)?
            .ok_or_else(|| ProviderError::NotFound(format!("{} {} ({name})", v.kind, v.id)))?;
        match self.tag_of(&row) {
            Some(t) if t.volume == v.id => Ok((name, row)),
            _ => Err(ProviderError::Other(format!(
                "{name} is not tagged as {} {}: refusing to use it",
                v.kind, v.id
            ))),
        }
    }

    fn set_props(&self, name: &str, props: &[String]) -> Result<(), ProviderError> {
        let mut cmd = Cmd::new("zfs").arg("set");
        for p in props {
            cmd = cmd.user_arg(p)?;
        }
        cmd.user_arg(name)?.run().map(|_| ())
    }

    fn clear_receiving(&self, name: &str) -> Result<(), ProviderError> {
        Cmd::new("zfs")
            .arg("inherit")
            .arg(P_RECEIVING)
            .user_arg(name)?
            .run()
            .map(|_| ())
    }

    /// Discards the partial state of an interrupted `recv -s` on `name`.
    fn recv_abort(&self, name: &str) -> Result<(), ProviderError> {
        self.retry_busy(name, || {
            match Cmd::new("zfs").arg("recv").arg("-A").user_arg(name)?.run() {
                Ok(_) => Ok(()),
                Err(e) if stderr_of(&e).contains("does not have any resumable") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn receive_into(
        &self,
        tname: &str,
        spec: &VolumeSpec<'_>,
        target: &VolumeRef<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        let mut head = vec![0u8; BEGIN_LEN];
        input
            .read_exact(&mut head)
            .map_err(|e| ProviderError::Stream(format!("reading the stream header: {e}")))?;
        let header = parse_begin(&head)?;
        let toguid = header.toguid.to_string();
        let partial = self.one(tname)?.and_then(|r| self.partial_of(&r));
        if header.resuming {
            // A resumed stream continues the partial receive the target holds,
            // or nothing: refused, the partial state is discarded so it can
            // never block the target.
            match &partial {
                Some(p) if p.guid == toguid => {}
                other => {
                    let held = other.as_ref().map_or("no partial receive".to_owned(), |p| {
                        format!("a partial receive of guid {}", p.guid)
                    });
                    if other.is_some() {
                        self.recv_abort(tname)?;
                    }
                    return Err(ProviderError::Stream(format!(
                        "resumed stream of guid {toguid}, but {tname} holds {held}"
                    )));
                }
            }
        }
        let fits = self.check_stream_fits(tname, spec, &header);
        if header.resuming && !matches!(fits, Ok(None)) {
            self.recv_abort(tname)?;
        }
        if let Some(created) = fits? {
            return Ok(created);
        }
        if !header.resuming && partial.is_some() {
            self.recv_abort(tname)?;
        }
        self.set_props(tname, &[kv(P_RECEIVING, &format!("{}:{toguid}", spec.op))])?;
        let mut cmd = Cmd::new("zfs").arg("recv").arg("-F").arg("-s");
        for p in [P_OWNER, P_VOLUME, P_OP, P_KIND, P_PARENT, P_RECEIVING] {
            cmd = cmd.arg("-x").user_arg(p)?;
        }
        let cmd = cmd.user_arg(tname)?;
        let mut stream = std::io::Cursor::new(head).chain(input);
        if let Err(e) = cmd.run_from(&mut stream) {
            return Err(self.after_failed_receive(tname, partial.as_ref(), header.resuming, e));
        }
        let arrived = self
            .snapshots_of(tname)?
            .into_iter()
            .find(|r| r.guid == toguid)
            .ok_or_else(|| {
                ProviderError::Stream(format!(
                    "`zfs recv` succeeded but no snapshot with the stream's guid {toguid} ({}) is in {tname}",
                    header.toname
                ))
            })?;
        let want = format!("{tname}@{}", spec.id);
        self.set_props(&arrived.name, &self.tags(spec, Some(target.id)))?;
        if arrived.name != want {
            self.retry_busy(&arrived.name, || {
                Cmd::new("zfs")
                    .arg("rename")
                    .user_arg(&arrived.name)?
                    .user_arg(&want)?
                    .run()
                    .map(|_| ())
            })?;
        }
        self.clear_receiving(tname)?;
        self.ensure_mounted(tname)?;
        let row = self
            .one(&want)?
            .ok_or_else(|| ProviderError::NotFound(want.clone()))?;
        if row.guid != toguid {
            return Err(ProviderError::Stream(format!(
                "{want} has guid {} after the rename, expected {toguid}",
                row.guid
            )));
        }
        Ok(self.created_of(&row))
    }

    /// Checks a stream's header against the target before anything changes:
    /// an incremental's base must be the target's newest snapshot (by GUID);
    /// a full stream needs a target without snapshots; a GUID already present
    /// is this very receive done before (its result: idempotent) or refused.
    fn check_stream_fits(
        &self,
        tname: &str,
        spec: &VolumeSpec<'_>,
        header: &StreamHeader,
    ) -> Result<Option<Created>, ProviderError> {
        let snaps = self.snapshots_of(tname)?;
        let toguid = header.toguid.to_string();
        if let Some(have) = snaps.iter().find(|r| r.guid == toguid) {
            if let Some(t) = self.tag_of(have)
                && t.volume == spec.id
                && t.op == spec.op
            {
                return Ok(Some(self.created_of(have)));
            }
            return Err(ProviderError::AlreadyExists(format!(
                "{tname} already holds snapshot guid {toguid} as {}",
                have.name
            )));
        }
        if header.fromguid != 0 {
            let from = header.fromguid.to_string();
            if snaps.last().map(|r| r.guid.as_str()) != Some(from.as_str()) {
                return Err(ProviderError::Stream(format!(
                    "incremental stream from guid {from}, but the newest snapshot of {tname} is {}",
                    snaps
                        .last()
                        .map_or("none".into(), |r| format!("{} (guid {})", r.name, r.guid))
                )));
            }
        } else if !snaps.is_empty() {
            return Err(ProviderError::Stream(format!(
                "full stream into {tname}, which has {} snapshot(s): destroy them first",
                snaps.len()
            )));
        }
        Ok(None)
    }

    /// Settles a `zfs recv` that failed. If the target now holds a partial
    /// receive that moved on (a new token), it is kept, resumable:
    /// [`ProviderError::Suspended`]. A resume that made no progress (same
    /// token: ZFS refused it) is discarded, so a stuck partial receive never
    /// blocks the target; so is anything else, as before.
    fn after_failed_receive(
        &self,
        tname: &str,
        before: Option<&PartialReceive>,
        resuming: bool,
        error: ProviderError,
    ) -> ProviderError {
        let now = self
            .one(tname)
            .ok()
            .flatten()
            .and_then(|r| self.partial_of(&r));
        let _ = self.ensure_mounted(tname);
        match now {
            Some(p) if !(resuming && before.is_some_and(|b| b.token == p.token)) => {
                ProviderError::Suspended {
                    what: tname.to_owned(),
                    partial: Box::new(p),
                    cause: error.to_string(),
                }
            }
            Some(_) => {
                let aborted = self.recv_abort(tname);
                let _ = self.clear_receiving(tname);
                ProviderError::Stream(format!(
                    "the resumed receive made no progress; partial state {}: {error}",
                    if aborted.is_ok() {
                        "discarded (recv -A)"
                    } else {
                        "could not be discarded"
                    }
                ))
            }
            None => {
                let _ = self.clear_receiving(tname);
                error
            }
        }
    }

    /// What `token` continues, if that is a stream of `snapshot` (this very
    /// snapshot and guid, so a token can never reach another dataset).
    fn fitting_token(
        &self,
        snapshot: &VolumeRef<'_>,
        token: &str,
    ) -> Result<Option<TokenContents>, ProviderError> {
        check_token(token)?;
        let (snap, row) = self.require(snapshot)?;
        Ok(self
            .token_contents(token)?
            .filter(|c| c.toname == snap && c.toguid.to_string() == row.guid))
    }

    /// The contents of a resume token, by a dry run (`zfs send -nvP -t`).
    /// `None` if ZFS does not accept the token.
    fn token_contents(&self, token: &str) -> Result<Option<TokenContents>, ProviderError> {
        let out = Cmd::new("zfs")
            .arg("send")
            .arg("-nvP")
            .arg("-t")
            .user_arg(token)?
            .run();
        match out {
            Ok(out) => Ok(parse_token_contents(&format!(
                "{}\n{}",
                out.stdout_str(),
                out.stderr
            ))),
            Err(ProviderError::Command { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// 70% of the size of the file system that will hold `vdev`, else 100 GB.
fn default_pool_size(vdev: &Path) -> u64 {
    let dir = vdev.parent().unwrap_or(Path::new("/"));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return FALLBACK_POOL_SIZE;
    };
    // SAFETY: statvfs fills the zeroed struct; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return FALLBACK_POOL_SIZE;
    }
    let total = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64);
    if total == 0 {
        FALLBACK_POOL_SIZE
    } else {
        total / 10 * 7
    }
}

impl Provider for ZfsProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn enforces_capacity(&self) -> bool {
        true
    }

    /// The filesystem's `refquota` (its own data, snapshots not counted).
    fn set_capacity(&self, volume: &VolumeRef<'_>, bytes: u64) -> Result<(), ProviderError> {
        if volume.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "a capacity is set on data volumes, not on snapshot {}",
                volume.id
            )));
        }
        let (name, _) = self.require(volume)?;
        self.set_props(&name, &[format!("refquota={bytes}")])
    }

    fn free_bytes(&self) -> Result<Option<u64>, ProviderError> {
        let out = Cmd::new("zfs")
            .arg("get")
            .arg("-H")
            .arg("-p")
            .arg("-o")
            .arg("value")
            .arg("available")
            .user_arg(&self.dataset)?
            .run()?;
        let text = out.stdout_str();
        text.trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ProviderError::Other(format!("zfs get available: {text:?}")))
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
        self.check_volume_options(options)?;
        if options.is_empty() {
            return Ok(());
        }
        let (name, _) = self.require(volume)?;
        let props: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.set_props(&name, &props)
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
        for t in self.tags(spec, None) {
            cmd = cmd.arg("-o").user_arg(&t)?;
        }
        let cmd = cmd.user_arg(&name)?;
        self.make_fs(cmd, &name, spec)
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
        let (src, _) = self.require(source)?;
        let name = format!("{src}@{}", spec.id);
        let mut cmd = Cmd::new("zfs").arg("snapshot");
        for t in self.tags(spec, Some(source.id)) {
            cmd = cmd.arg("-o").user_arg(&t)?;
        }
        match cmd.user_arg(&name)?.run() {
            Ok(_) => {}
            // Idempotent: this very operation made it before.
            Err(e) if stderr_of(&e).contains("already exists") => {
                if let Some(row) = self.existing(&name, spec)? {
                    return Ok(self.created_of(&row));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        // Its guid, the snapshot's identity in transfers.
        let row = self
            .one(&name)?
            .ok_or_else(|| ProviderError::NotFound(name.clone()))?;
        Ok(self.created_of(&row))
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
        for t in self.tags(spec, Some(snapshot.id)) {
            cmd = cmd.arg("-o").user_arg(&t)?;
        }
        let cmd = cmd.user_arg(&snap)?.user_arg(&name)?;
        self.make_fs(cmd, &name, spec)
    }

    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        let name = match self.name_of(volume) {
            Ok(n) => n,
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(row) = self.one(&name)? else {
            return Ok(());
        };
        match self.tag_of(&row) {
            Some(t) if t.volume == volume.id => {}
            _ => {
                return Err(ProviderError::Other(format!(
                    "{name} is not tagged as {} {}: refusing to destroy it",
                    volume.kind, volume.id
                )));
            }
        }
        if row.token.is_some() {
            self.recv_abort(&name)?;
        }
        let result = self.retry_busy(&name, || {
            Cmd::new("zfs")
                .arg("destroy")
                .user_arg(&name)?
                .run()
                .map(|_| ())
        });
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
                let dependents = clones
                    .trim()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.rsplit('/').next().unwrap_or(s).to_owned())
                    .collect();
                return Err(ProviderError::HasDependents {
                    what: name,
                    dependents,
                });
            }
            Err(e) if stderr_of(&e).contains("has children") => {
                let dependents = self
                    .snapshots_of(&name)?
                    .into_iter()
                    .map(|r| r.name.rsplit('@').next().unwrap_or_default().to_owned())
                    .collect();
                return Err(ProviderError::HasDependents {
                    what: name,
                    dependents,
                });
            }
            Err(e) => return Err(e),
        }
        if volume.kind == VolumeKind::Data {
            // The empty mountpoint directory; never anything with content.
            let _ = std::fs::remove_dir(self.mountpoint(volume.id));
        }
        Ok(())
    }

    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError> {
        if snapshot.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "only snapshots are sent ({} {} given)",
                snapshot.kind, snapshot.id
            )));
        }
        let (snap, _) = self.require(snapshot)?;
        let mut cmd = Cmd::new("zfs").arg("send");
        if let Some(base) = base {
            let (b, _) = self.require(base)?;
            if b.split('@').next() != snap.split('@').next() {
                return Err(ProviderError::Other(format!(
                    "incremental base {b} is not a snapshot of the same volume as {snap}"
                )));
            }
            cmd = cmd.arg("-i").user_arg(&b)?;
        }
        let (bytes, _) = cmd.user_arg(&snap)?.run_to(out)?;
        Ok(SendStats {
            bytes,
            incremental: base.is_some(),
            resumed: false,
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
        let (tname, _) = self.require(target)?;
        self.receive_into(&tname, spec, target, input)
    }

    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        let rows = self.list(&self.dataset, true)?;
        let data_root = self.data_root();
        Ok(rows
            .into_iter()
            .filter(|r| r.name != self.dataset && r.name != data_root)
            .map(|r| {
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
                    partial: self.partial_of(&r),
                    name: r.name,
                    presence,
                    location: created.location,
                    details: created.details,
                }
            })
            .collect())
    }

    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        let Some(tag) = &found.tag else {
            return Err(ProviderError::Other(format!(
                "{} is not ours: nothing to finish",
                found.name
            )));
        };
        let row = self
            .one(&found.name)?
            .ok_or_else(|| ProviderError::NotFound(found.name.clone()))?;
        if row.is_snapshot {
            return Ok(self.created_of(&row));
        }
        let _ = tag;
        let row = self.ensure_mounted(&found.name)?;
        Ok(self.created_of(&row))
    }

    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        let rows = self.list(&self.dataset, true)?;
        let prefix = format!("{op}:");
        for r in rows.iter().filter(|r| !r.is_snapshot) {
            let Some(guid) = r.receiving.as_deref().and_then(|v| v.strip_prefix(&prefix)) else {
                continue;
            };
            if r.token.is_some() {
                self.recv_abort(&r.name)?;
            }
            // A snapshot that arrived but was never tagged as ours.
            for s in self.snapshots_of(&r.name)? {
                if s.guid == guid && self.tag_of(&s).is_none() {
                    self.retry_busy(&s.name, || {
                        Cmd::new("zfs")
                            .arg("destroy")
                            .user_arg(&s.name)?
                            .run()
                            .map(|_| ())
                    })?;
                }
            }
            self.clear_receiving(&r.name)?;
            // A receive killed mid-way leaves the target unmounted (the
            // receive unmounts it to swap or roll it back).
            self.ensure_mounted(&r.name)?;
        }
        Ok(())
    }

    fn partial_receive(
        &self,
        target: &VolumeRef<'_>,
    ) -> Result<Option<PartialReceive>, ProviderError> {
        let name = self.name_of(target)?;
        Ok(self.one(&name)?.and_then(|r| self.partial_of(&r)))
    }

    fn abort_receive(&self, target: &VolumeRef<'_>) -> Result<(), ProviderError> {
        let name = self.name_of(target)?;
        let Some(row) = self.one(&name)? else {
            return Ok(());
        };
        if row.token.is_some() {
            self.recv_abort(&name)?;
        }
        if row.receiving.is_some() {
            self.clear_receiving(&name)?;
        }
        self.ensure_mounted(&name).map(|_| ())
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
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_that_could_be_flags_or_escape_are_refused() {
        for bad in [
            "",
            "-o",
            "tank/-x",
            "tank//a",
            "tank/../x",
            "tank/a b",
            "tank@s",
            "/tank",
            "t%a",
        ] {
            assert!(check_dataset(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["tank", "tank/volmgr", "t_1/a.b:c-d"] {
            check_dataset(good).unwrap();
        }
    }

    #[test]
    fn volume_options_are_checked_before_any_command() {
        for (k, v) in [
            ("compression", "lz4"),
            ("compression", "zstd-19"),
            ("compression", "off"),
            ("recordsize", "128K"),
            ("recordsize", "512"),
            ("recordsize", "1M"),
        ] {
            assert!(check_volume_option(k, v).is_ok(), "{k}={v}");
        }
        for (k, v) in [
            ("compression", "zstd-20"),
            ("compression", "-o"),
            ("compression", "lz4 mountpoint=/"),
            ("recordsize", "100K"),
            ("recordsize", "2M"),
            ("recordsize", "256"),
            ("mountpoint", "/etc"),
            ("refquota", "1"),
        ] {
            assert!(check_volume_option(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn stream_header_gives_guids_and_name() {
        let mut b = vec![0u8; BEGIN_LEN];
        b[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
        b[16..24].copy_from_slice(&1u64.to_le_bytes());
        b[40..48].copy_from_slice(&42u64.to_le_bytes());
        b[48..56].copy_from_slice(&7u64.to_le_bytes());
        b[56..62].copy_from_slice(b"p/a@s1");
        let h = parse_begin(&b).unwrap();
        assert_eq!((h.toguid, h.fromguid, h.toname.as_str()), (42, 7, "p/a@s1"));
        b[8] ^= 1;
        assert!(matches!(parse_begin(&b), Err(ProviderError::Stream(_))));
        assert!(parse_begin(&b[..10]).is_err());
    }

    #[test]
    fn a_resumed_stream_is_told_by_its_header_feature_flag() {
        let mut b = vec![0u8; BEGIN_LEN];
        b[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
        // versioninfo of a real `zfs send -t` stream (OpenZFS 2.1).
        b[16..24].copy_from_slice(&0x0040_0011u64.to_le_bytes());
        assert!(parse_begin(&b).unwrap().resuming);
        b[16..24].copy_from_slice(&0x0000_0011u64.to_le_bytes());
        assert!(!parse_begin(&b).unwrap().resuming);
    }

    #[test]
    fn token_contents_are_read_from_the_dry_run_and_junk_tokens_refused() {
        // As `zfs send -nvP -t` prints it (OpenZFS 2.1.11).
        let out = "resume token contents:\nnvlist version: 0\n\tfromguid = 0xdf70feb473014f96\n\tobject = 0x80\n\toffset = 0x2a0000\n\tbytes = 0x2c3c20\n\ttoguid = 0xcdd3b5a9c1c885cc\n\ttoname = tank/src@s2\nincremental\ttank/src@s1\ttank/src@s2\t7613904\nsize\t7613904\n";
        let c = parse_token_contents(out).unwrap();
        assert_eq!(c.toguid, 0xcdd3_b5a9_c1c8_85cc);
        assert_eq!(c.fromguid, Some(0xdf70_feb4_7301_4f96));
        assert_eq!(c.toname, "tank/src@s2");
        assert!(parse_token_contents("cannot resume send: resume token is corrupt").is_none());
        for bad in ["", "-t", "x-1", "1-ab cd", "1-ab/../cd"] {
            assert!(check_token(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_token("1-9924c2c09-b8-789c636064").is_ok());
    }

    #[test]
    fn unknown_and_bad_configuration_is_refused_before_any_command() {
        let cfg = |pairs: &[(&str, &str)]| -> ProviderConfig {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        for bad in [
            cfg(&[]),
            cfg(&[("dataset", "-rf")]),
            cfg(&[("dataset", "tank/v"), ("colour", "red")]),
            cfg(&[("dataset", "tank/v"), ("pool_name", "other")]),
            cfg(&[("dataset", "tank/v"), ("workdir", "relative")]),
            cfg(&[
                ("dataset", "tank/v"),
                ("pool_size", "1K"),
                ("pool_vdev", "/x"),
            ]),
            cfg(&[("dataset", "tank/v"), ("pool_vdev", "rel/file")]),
        ] {
            assert!(
                matches!(
                    ZfsProvider::from_config(&bad),
                    Err(ProviderError::InvalidConfig(_))
                ),
                "{bad:?}"
            );
        }
    }
}
