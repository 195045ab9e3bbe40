//! A received btrfs stream cannot fill the file system every volume lives
//! on. Story: the btrfs provider piped the peer's bytes straight into
//! `btrfs receive`, so a stream larger than the free space (a real `btrfs
//! send` of a big snapshot, or many small WRITEs each taking a whole
//! block) filled the disk until `ENOSPC`, and a send-stream v2 FALLOCATE of
//! a few dozen bytes reserved as much of it as it named. Each test below
//! receives such a stream on a small loop-mounted btrfs and checks that it
//! is refused with `NoSpace` *by the guard* (before the file system is
//! full, not by `btrfs receive`'s own `ENOSPC`), that the free space comes
//! back, that nothing is left in stage or trash and that the target volume
//! is unchanged.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use common::{BtrfsFs, noise, tree};
use uuid::Uuid;
use volmgr::model::VolumeId;
use volmgr::provider::btrfs::{BtrfsProvider, subvol_info};
use volmgr::provider::{Provider, ProviderError, SendOptions, VolumeRef, VolumeSpec};
use volmgr::state::{Details, VolumeKind};

const MIB: u64 = 1 << 20;

fn btrfs(args: &[&str], path: &Path) {
    let out = Command::new("btrfs").args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "btrfs {args:?} {}: {out:?}",
        path.display()
    );
}

/// Free bytes as `statvfs` reports them once every deleted subvolume is
/// cleaned up and the transaction committed.
fn settled_free(mnt: &Path) -> u64 {
    btrfs(&["subvolume", "sync"], mnt);
    btrfs(&["filesystem", "sync"], mnt);
    let c = CString::new(mnt.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &raw mut s) }, 0);
    s.f_bavail * s.f_frsize
}

fn total_bytes(mnt: &Path) -> u64 {
    let c = CString::new(mnt.as_os_str().as_bytes()).unwrap();
    // SAFETY: as above.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &raw mut s) }, 0);
    s.f_blocks * s.f_frsize
}

/// crc32c as btrfs computes a send command's: seed 0, no final inversion.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut v = ty.to_le_bytes().to_vec();
    v.extend_from_slice(&u16::try_from(value.len()).unwrap().to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// One command with the crc32c `btrfs receive` checks.
fn command(cmd: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
    let attrs = attrs.concat();
    let mut v = u32::try_from(attrs.len()).unwrap().to_le_bytes().to_vec();
    v.extend_from_slice(&cmd.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&attrs);
    let crc = crc32c(&v);
    v[6..10].copy_from_slice(&crc.to_le_bytes());
    v
}

const ATTR_UUID: u16 = 1;
const ATTR_CTRANSID: u16 = 2;
const ATTR_INO: u16 = 3;
const ATTR_SIZE: u16 = 4;
const ATTR_PATH: u16 = 15;
const ATTR_FILE_OFFSET: u16 = 18;
const ATTR_DATA: u16 = 19;
const ATTR_FALLOCATE_MODE: u16 = 25;

/// A stream of `version` that makes subvolume `evil` holding file `f`,
/// then runs `body` on it.
fn crafted(version: u32, body: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut s = b"btrfs-stream\0".to_vec();
    s.extend_from_slice(&version.to_le_bytes());
    s.extend(command(
        1,
        &[
            attr(ATTR_PATH, b"evil"),
            attr(ATTR_UUID, Uuid::new_v4().as_bytes()),
            attr(ATTR_CTRANSID, &1u64.to_le_bytes()),
        ],
    ));
    s.extend(command(
        3,
        &[attr(ATTR_PATH, b"f"), attr(ATTR_INO, &257u64.to_le_bytes())],
    ));
    for c in body {
        s.extend(c);
    }
    s.extend(command(21, &[]));
    s
}

/// A provider on `fs` with a data volume `t` holding one file.
struct Receiver {
    provider: BtrfsProvider,
    root: std::path::PathBuf,
}

impl Receiver {
    fn new(fs: &BtrfsFs) -> Receiver {
        let root = fs.path().join("volumes");
        let provider = BtrfsProvider::new(&root).unwrap();
        provider
            .create_volume(&VolumeSpec {
                id: VolumeId::new("t").unwrap(),
                op: Uuid::now_v7(),
                kind: VolumeKind::Data,
            })
            .unwrap();
        std::fs::write(root.join("data/t/vol/who"), b"old").unwrap();
        Receiver { provider, root }
    }

    fn receive(&self, stream: &[u8]) -> Result<(), ProviderError> {
        let details = Details::new();
        let target = VolumeRef {
            id: VolumeId::new("t").unwrap(),
            kind: VolumeKind::Data,
            parent: None,
            location: "",
            details: &details,
        };
        let snapshot = Uuid::new_v4().to_string();
        let spec = VolumeSpec {
            id: VolumeId::new(&snapshot).unwrap(),
            op: Uuid::now_v7(),
            kind: VolumeKind::Snapshot,
        };
        self.provider
            .receive_snapshot(&target, &spec, &mut &stream[..])
            .map(drop)
    }

    /// Receives `stream` (which wants more than the free space) and checks
    /// every property of the story above.
    fn refuses(&self, fs: &BtrfsFs, stream: &[u8]) {
        let mnt = fs.path();
        let before = settled_free(mnt);
        let target = self.root.join("data/t/vol");
        let (content, uuid) = (tree(&target), subvol_info(&target).unwrap().uuid);
        let err = self
            .receive(stream)
            .expect_err("a stream wanting more than the free space was received");
        match &err {
            ProviderError::NoSpace { detail, .. } => assert!(
                detail.contains("may make btrfs use"),
                "refused by the guard, before the disk is full, not by ENOSPC: {err}"
            ),
            other => panic!("wanted NoSpace, got {other:?}"),
        }
        let after = settled_free(mnt);
        println!("free before {before}, after the refused receive {after}: {err}");
        let slack = total_bytes(mnt) / 50;
        assert!(
            after + slack >= before,
            "free space back: {before} before, {after} after"
        );
        for dir in [".volmgr/stage", ".volmgr/trash", "snapshot"] {
            let left: Vec<_> = std::fs::read_dir(self.root.join(dir))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "{dir} keeps {left:?}");
        }
        assert_eq!(tree(&target), content, "the target's content is unchanged");
        assert_eq!(subvol_info(&target).unwrap().uuid, uuid, "same subvolume");
        assert_eq!(
            fs.subvolume_count(),
            1,
            "only the target's subvolume is left"
        );
    }
}

#[test]
fn a_real_send_larger_than_the_free_space_is_refused_before_the_disk_is_full() {
    let test = "a_real_send_larger_than_the_free_space_is_refused_before_the_disk_is_full";
    let Some(small) = BtrfsFs::for_test(test, 256) else {
        return;
    };
    let Some(big) = BtrfsFs::for_test(test, 768) else {
        return;
    };
    let receiver = Receiver::new(&small);
    let free = settled_free(small.path());

    let sender = BtrfsProvider::new(big.path().join("volumes")).unwrap();
    let op = Uuid::now_v7();
    let id = |s: &'static str| VolumeId::new(s).unwrap();
    sender
        .create_volume(&VolumeSpec {
            id: id("src"),
            op,
            kind: VolumeKind::Data,
        })
        .unwrap();
    let data = noise(7, usize::try_from(free + 16 * MIB).unwrap());
    std::fs::write(big.path().join("volumes/data/src/vol/big"), &data).unwrap();
    drop(data);
    let details = Details::new();
    let src = VolumeRef {
        id: id("src"),
        kind: VolumeKind::Data,
        parent: None,
        location: "",
        details: &details,
    };
    sender
        .create_snapshot(
            &src,
            &VolumeSpec {
                id: id("s1"),
                op: Uuid::now_v7(),
                kind: VolumeKind::Snapshot,
            },
        )
        .unwrap();
    let s1 = VolumeRef {
        id: id("s1"),
        kind: VolumeKind::Snapshot,
        parent: Some("src"),
        location: "",
        details: &details,
    };
    let mut stream = Vec::new();
    sender
        .send_snapshot(&s1, None, &SendOptions::default(), &mut stream)
        .unwrap();
    assert!(stream.len() as u64 > free, "{} > {free}", stream.len());
    receiver.refuses(&small, &stream);
}

#[test]
fn a_fallocate_of_almost_all_free_space_is_refused() {
    let test = "a_fallocate_of_almost_all_free_space_is_refused";
    let Some(fs) = BtrfsFs::for_test(test, 256) else {
        return;
    };
    let receiver = Receiver::new(&fs);
    let free = settled_free(fs.path());
    // What would leave half the reserve free: a 4 KiB-aligned length.
    let len = (free - total_bytes(fs.path()) / 100) & !4095;
    let stream = crafted(
        2,
        [command(
            23,
            &[
                attr(ATTR_PATH, b"f"),
                attr(ATTR_FALLOCATE_MODE, &0u32.to_le_bytes()),
                attr(ATTR_FILE_OFFSET, &0u64.to_le_bytes()),
                attr(ATTR_SIZE, &len.to_le_bytes()),
            ],
        )],
    );
    assert!(stream.len() < 200, "a few bytes: {}", stream.len());
    receiver.refuses(&fs, &stream);
}

#[test]
fn many_one_byte_writes_each_taking_a_block_are_refused() {
    let test = "many_one_byte_writes_each_taking_a_block_are_refused";
    let Some(fs) = BtrfsFs::for_test(test, 256) else {
        return;
    };
    let receiver = Receiver::new(&fs);
    let free = settled_free(fs.path());
    // One byte in every 4 KiB block of a file longer than the free space:
    // 32 bytes of stream take 4 KiB of disk.
    let writes = (free + 16 * MIB) / 4096;
    let stream = crafted(
        1,
        (0..writes).map(|i| {
            command(
                15,
                &[
                    attr(ATTR_PATH, b"f"),
                    attr(ATTR_FILE_OFFSET, &(i * 4096).to_le_bytes()),
                    attr(ATTR_DATA, b"x"),
                ],
            )
        }),
    );
    assert!((stream.len() as u64) < free / 64, "{}", stream.len());
    receiver.refuses(&fs, &stream);
}

/// The crafted streams above are streams `btrfs receive` accepts (their
/// CRCs included): the same shape, small, is received.
#[test]
fn a_small_crafted_stream_is_received() {
    let test = "a_small_crafted_stream_is_received";
    let Some(fs) = BtrfsFs::for_test(test, 256) else {
        return;
    };
    let receiver = Receiver::new(&fs);
    let stream = crafted(
        2,
        [
            command(
                23,
                &[
                    attr(ATTR_PATH, b"f"),
                    attr(ATTR_FALLOCATE_MODE, &0u32.to_le_bytes()),
                    attr(ATTR_FILE_OFFSET, &0u64.to_le_bytes()),
                    attr(ATTR_SIZE, &MIB.to_le_bytes()),
                ],
            ),
            command(
                15,
                &[
                    attr(ATTR_PATH, b"f"),
                    attr(ATTR_FILE_OFFSET, &0u64.to_le_bytes()),
                    // Version 2: DATA has no length, it runs to the end.
                    [ATTR_DATA.to_le_bytes().as_slice(), b"new"].concat(),
                ],
            ),
        ],
    );
    receiver.receive(&stream).unwrap();
    let f = receiver.root.join("data/t/vol/f");
    let content = std::fs::read(&f).unwrap();
    assert_eq!(content.len() as u64, MIB);
    assert_eq!(&content[..3], b"new");
}
