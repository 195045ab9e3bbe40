//! Helpers of the directory provider's tests (`provider_dir`) and the
//! security tests: a directory provider with its volumes, a stream crafter
//! that writes the documented directory-stream format by hand (an attacker's
//! sender), and the root requirement.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use uuid::Uuid;
use volmgr::model::VolumeId;
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{Created, Provider, ProviderError, VolumeRef, VolumeSpec};
use volmgr::state::{OpId, VolumeKind};

/// Whether this process is root; under `VOLMGR_REQUIRE_ROOT=1` (CI) a
/// missing root fails the test loudly instead of skipping it.
pub fn have_root(test: &str) -> bool {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("VOLMGR_REQUIRE_ROOT").is_none(),
        "{test} needs root and VOLMGR_REQUIRE_ROOT is set"
    );
    eprintln!("SKIP {test}: needs root");
    false
}

pub struct Vol {
    pub id: String,
    pub kind: VolumeKind,
    pub parent: Option<String>,
    pub op: OpId,
    pub c: Created,
}

impl Vol {
    pub fn r(&self) -> VolumeRef<'_> {
        VolumeRef {
            id: VolumeId::new(&self.id).unwrap(),
            kind: self.kind,
            parent: self.parent.as_deref(),
            location: &self.c.location,
            details: &self.c.details,
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.c.location)
    }
}

pub fn spec(id: &str, op: OpId, kind: VolumeKind) -> VolumeSpec<'_> {
    VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op,
        kind,
    }
}

pub fn provider(root: &Path) -> DirProvider {
    DirProvider::new(root.to_path_buf()).expect("provider opens")
}

pub fn create(p: &dyn Provider, id: &str) -> Vol {
    let op = Uuid::now_v7();
    let c = p
        .create_volume(&spec(id, op, VolumeKind::Data))
        .expect("create");
    Vol {
        id: id.into(),
        kind: VolumeKind::Data,
        parent: None,
        op,
        c,
    }
}

pub fn snapshot(p: &dyn Provider, src: &Vol, id: &str) -> Result<Vol, ProviderError> {
    let op = Uuid::now_v7();
    let c = p.create_snapshot(&src.r(), &spec(id, op, VolumeKind::Snapshot))?;
    Ok(Vol {
        id: id.into(),
        kind: VolumeKind::Snapshot,
        parent: Some(src.id.clone()),
        op,
        c,
    })
}

pub fn fork(p: &dyn Provider, snap: &Vol, id: &str) -> Result<Vol, ProviderError> {
    let op = Uuid::now_v7();
    let c = p.fork_volume(&snap.r(), &spec(id, op, VolumeKind::Data))?;
    Ok(Vol {
        id: id.into(),
        kind: VolumeKind::Data,
        parent: Some(snap.id.clone()),
        op,
        c,
    })
}

pub fn receive(
    p: &dyn Provider,
    target: &Vol,
    id: &str,
    input: &mut dyn std::io::Read,
) -> Result<Vol, ProviderError> {
    let op = Uuid::now_v7();
    let c = p.receive_snapshot(&target.r(), &spec(id, op, VolumeKind::Snapshot), input)?;
    Ok(Vol {
        id: id.into(),
        kind: VolumeKind::Snapshot,
        parent: Some(target.id.clone()),
        op,
        c,
    })
}

/// Builds directory streams by hand, following the documented format.
pub struct Craft {
    pub b: Vec<u8>,
    pub n: u64,
}

impl Craft {
    pub fn new(guid: u128) -> Self {
        let mut b = Vec::new();
        b.extend_from_slice(b"VMGRDIRS");
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&guid.to_be_bytes());
        b.extend_from_slice(&0u128.to_be_bytes());
        Craft { b, n: 0 }
    }

    pub fn rec(mut self, tag: u8, path: &[u8]) -> Self {
        self.n += 1;
        self.b.push(tag);
        self.b
            .extend_from_slice(&u16::try_from(path.len()).unwrap().to_be_bytes());
        self.b.extend_from_slice(path);
        self
    }

    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.b.extend_from_slice(bytes);
        self
    }

    pub fn dir(self, path: &[u8], mode: u32) -> Self {
        self.rec(b'D', path).raw(&mode.to_be_bytes())
    }

    pub fn file(self, path: &[u8], mode: u32, content: &[u8]) -> Self {
        self.rec(b'F', path)
            .raw(&mode.to_be_bytes())
            .raw(&(content.len() as u64).to_be_bytes())
            .raw(content)
    }

    /// A file record header declaring `len` bytes; the content follows.
    pub fn file_header(self, path: &[u8], mode: u32, len: u64) -> Self {
        self.rec(b'F', path)
            .raw(&mode.to_be_bytes())
            .raw(&len.to_be_bytes())
    }

    /// The header's version set to `version` (2 carries `S` records).
    pub fn version(mut self, version: u16) -> Self {
        self.b[8..10].copy_from_slice(&version.to_be_bytes());
        self
    }

    /// An `S` record (version 2): a file of `len` bytes whose data are
    /// `extents` (offset, content), holes elsewhere, then the terminator.
    pub fn sparse(mut self, path: &[u8], mode: u32, len: u64, extents: &[(u64, &[u8])]) -> Self {
        self = self
            .rec(b'S', path)
            .raw(&mode.to_be_bytes())
            .raw(&len.to_be_bytes());
        for (offset, content) in extents {
            self = self
                .raw(&offset.to_be_bytes())
                .raw(&(content.len() as u64).to_be_bytes())
                .raw(content);
        }
        self.raw(&[0u8; 16])
    }

    pub fn end(self) -> Vec<u8> {
        let n = self.n;
        let mut b = self.raw(b"E").raw(&n.to_be_bytes()).b;
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }
}

/// Every path under `root` with its mode, sorted (a fingerprint).
pub fn listing(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let md = e.path().symlink_metadata().unwrap();
            out.push((e.path(), md.mode()));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A small ext4 on a loop device, unmounted (and its image removed) on drop.
pub struct SmallFs {
    _tmp: tempfile::TempDir,
    pub mnt: PathBuf,
}

impl SmallFs {
    pub fn new(size_mb: u64, inodes: u64) -> SmallFs {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(size_mb << 20)
            .unwrap();
        let ok = |c: &mut std::process::Command| {
            let out = c.output().unwrap();
            assert!(out.status.success(), "{c:?}: {out:?}");
        };
        ok(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-N", &inodes.to_string(), "-m", "0"])
            .arg(&img));
        ok(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        SmallFs { _tmp: tmp, mnt }
    }

    pub fn free(&self) -> (u64, u64) {
        let d = volmgr::fsutil::Dir::open(&self.mnt).unwrap();
        let s = d.space().unwrap();
        (s.free_bytes, s.free_inodes.unwrap())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}
