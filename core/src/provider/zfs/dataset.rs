//! The ZFS commands on datasets by name that need nothing of the provider's
//! configuration: `zfs list` (one dataset, a tree, a filesystem with or
//! without its snapshots), `zfs set` and `zfs inherit` of properties,
//! `zfs mount` until mounted, `zfs recv -A`, and the bounded retry while ZFS
//! says a dataset is busy.

use std::time::Duration;

use super::parse::{Row, is_busy, is_not_found, parse_rows, stderr_of};
use super::{BUSY_ATTEMPTS, COLUMNS, P_RECEIVING, ProviderError, ZfsProvider};
use crate::fsutil;
use crate::provider::cmd::Cmd;

impl ZfsProvider {
    /// `zfs list` of `name` (with `-r` when `recursive`); empty if absent.
    pub(super) fn list(name: &str, recursive: bool) -> Result<Vec<Row>, ProviderError> {
        Self::list_names(&[name], recursive)
    }

    /// `zfs list` of every dataset of `names` in one command (with `-r` when
    /// `recursive`); empty if any is absent (ZFS then fails the command).
    pub(super) fn list_names(names: &[&str], recursive: bool) -> Result<Vec<Row>, ProviderError> {
        match Self::list_exact(names, recursive) {
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            other => other,
        }
    }

    /// `zfs list` of every dataset of `names` in one command (with `-r` when
    /// `recursive`), in `zfs list`'s own order (the inventory's: by name, a
    /// filesystem before its snapshots, snapshots by `createtxg`); any
    /// failure, an absent dataset's included, is the error.
    pub(super) fn list_exact(names: &[&str], recursive: bool) -> Result<Vec<Row>, ProviderError> {
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
        for name in names {
            cmd = cmd.user_arg(name)?;
        }
        parse_rows(&cmd.run()?.stdout_str())
    }

    pub(super) fn one(name: &str) -> Result<Option<Row>, ProviderError> {
        Ok(Self::list(name, false)?
            .into_iter()
            .find(|r| r.name == name))
    }

    /// Snapshots of filesystem `fs` (depth 1), oldest first by createtxg.
    pub(super) fn snapshots_of(fs: &str) -> Result<Vec<Row>, ProviderError> {
        Ok(Self::depth_one(fs, "snapshot")?.1)
    }

    /// Filesystem `fs` itself and its snapshots (oldest first by
    /// createtxg), read by one `zfs list -d 1` (its child filesystems, also
    /// at depth 1, are left out); `(None, [])` if `fs` is absent.
    pub(super) fn with_snapshots(fs: &str) -> Result<(Option<Row>, Vec<Row>), ProviderError> {
        Self::depth_one(fs, "filesystem,snapshot")
    }

    fn depth_one(fs: &str, types: &'static str) -> Result<(Option<Row>, Vec<Row>), ProviderError> {
        let out = Cmd::new("zfs")
            .arg("list")
            .arg("-H")
            .arg("-p")
            .arg("-t")
            .arg(types)
            .arg("-d")
            .arg("1")
            .arg("-o")
            .arg(COLUMNS)
            .user_arg(fs)?
            .run();
        let rows = match out {
            Ok(out) => parse_rows(&out.stdout_str())?,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut own = None;
        let mut snaps = Vec::new();
        for r in rows {
            if r.is_snapshot && r.name.split('@').next() == Some(fs) {
                snaps.push(r);
            } else if !r.is_snapshot && r.name == fs {
                own = Some(r);
            }
        }
        snaps.sort_by_key(|r| r.createtxg);
        Ok((own, snaps))
    }

    /// Runs `f` again while ZFS says the dataset is busy (bounded), then
    /// reports [`ProviderError::Busy`] naming ZFS's message.
    pub(super) fn retry_busy<T>(
        what: &str,
        f: impl FnMut() -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        Self::retry_busy_unless_held(what, |_, _| None, f)
    }

    /// As [`Self::retry_busy`], but stops at the first busy answer that
    /// `held` (given that answer and its attempt, from 1) says a process or
    /// a mount holds, with why: retrying cannot help until it leaves, and
    /// each retry would keep the caller (and its claim) waiting. The retries
    /// are for what passes by itself (a concurrent receive or send, a
    /// running `zfs send -R`'s temporary hold, a mount being torn down; a
    /// snapshot's lasting user hold is found by its destroy program
    /// before any retry: `holds.rs`).
    pub(super) fn retry_busy_unless_held<T>(
        what: &str,
        held: impl Fn(&ProviderError, u32) -> Option<&'static str>,
        f: impl FnMut() -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        // The holder seen, and at which attempt: the retries stop there.
        let mut held_at = None;
        let busy = |e: &ProviderError, attempt: u32| {
            if !is_busy(e) {
                return false;
            }
            held_at = held(e, attempt).map(|why| (why, attempt));
            held_at.is_none()
        };
        match fsutil::retry_busy(BUSY_ATTEMPTS, Duration::from_millis(100), busy, f) {
            Ok(Err(e)) if let Some((why, attempt)) = held_at => Err(ProviderError::Busy {
                what: what.to_owned(),
                cause: format!(
                    "{} (held: {why}; not retried after {attempt} attempt(s))",
                    stderr_of(&e).trim(),
                ),
            }),
            Ok(other) => other,
            Err(still) => Err(ProviderError::Busy {
                what: what.to_owned(),
                cause: format!(
                    "{} (still busy after {} attempts: open files, a mount in another namespace, a concurrent receive or a hold)",
                    stderr_of(&still.last).trim(),
                    still.attempts
                ),
            }),
        }
    }

    /// Mounts filesystem `name` if it is not (bounded retries: a create may
    /// report "created, but not mounted").
    pub(super) fn ensure_mounted(name: &str) -> Result<Row, ProviderError> {
        let mut last = None;
        for attempt in 0..5u32 {
            let row = Self::one(name)?.ok_or_else(|| ProviderError::NotFound(name.to_owned()))?;
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
        let row = Self::one(name)?.ok_or_else(|| ProviderError::NotFound(name.to_owned()))?;
        if row.mounted {
            return Ok(row);
        }
        Err(last.unwrap_or_else(|| ProviderError::Other(format!("{name} does not mount"))))
    }

    /// Whether filesystem `name` is mounted in this process's mount
    /// namespace, read from `/proc/self/mountinfo` (where libzfs reads the
    /// `mounted` property from too): a file read instead of a `zfs list`.
    /// `None` if the file cannot be read (the caller then asks ZFS).
    pub(super) fn mounted_here(name: &str) -> Option<bool> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Some(mounted_in(&text, name))
    }

    pub(super) fn set_props(name: &str, props: &[String]) -> Result<(), ProviderError> {
        let mut cmd = Cmd::new("zfs").arg("set");
        for p in props {
            cmd = cmd.user_arg(p)?;
        }
        cmd.user_arg(name)?.run().map(|_| ())
    }

    pub(super) fn clear_receiving(name: &str) -> Result<(), ProviderError> {
        Cmd::new("zfs")
            .arg("inherit")
            .arg(P_RECEIVING)
            .user_arg(name)?
            .run()
            .map(|_| ())
    }

    /// Discards the partial state of an interrupted `recv -s` on `name`.
    pub(super) fn recv_abort(name: &str) -> Result<(), ProviderError> {
        Self::retry_busy(name, || {
            match Cmd::new("zfs").arg("recv").arg("-A").user_arg(name)?.run() {
                Ok(_) => Ok(()),
                Err(e) if stderr_of(&e).contains("does not have any resumable") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

/// Whether `mountinfo` (proc(5): `... - FSTYPE SOURCE OPTIONS` per line)
/// has a `zfs` mount of dataset `name`. Our dataset names need none of
/// mountinfo's octal escapes (no space, tab, newline or backslash).
fn mounted_in(mountinfo: &str, name: &str) -> bool {
    mountinfo.lines().any(|line| {
        line.split_once(" - ").is_some_and(|(_, tail)| {
            let mut f = tail.split(' ');
            f.next() == Some("zfs") && f.next() == Some(name)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{ProviderError, ZfsProvider, mounted_in};

    fn busy(stderr: &str) -> ProviderError {
        ProviderError::Command {
            command: "zfs destroy tank/v".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn a_busy_destroy_is_retried_until_it_passes_unless_a_holder_shows() {
        // A passing busy state: retried, and the third attempt succeeds.
        let mut calls = 0;
        let r = ZfsProvider::retry_busy_unless_held(
            "tank/v",
            |_, _| None,
            || {
                calls += 1;
                if calls < 3 {
                    Err(busy("cannot destroy 'tank/v': dataset is busy"))
                } else {
                    Ok(calls)
                }
            },
        );
        assert_eq!(r.unwrap(), 3);

        // A holder shown at the second attempt: no third one.
        let mut calls = 0;
        let err = ZfsProvider::retry_busy_unless_held(
            "tank/v",
            |_, attempt| (attempt >= 2).then_some("mounted elsewhere"),
            || -> Result<(), _> {
                calls += 1;
                Err(busy("cannot destroy 'tank/v': dataset is busy"))
            },
        )
        .unwrap_err();
        assert_eq!(calls, 2);
        match err {
            ProviderError::Busy { what, cause } => {
                assert_eq!(what, "tank/v");
                assert_eq!(
                    cause,
                    "cannot destroy 'tank/v': dataset is busy \
                     (held: mounted elsewhere; not retried after 2 attempt(s))"
                );
            }
            other => panic!("expected Busy, got {other:?}"),
        }

        // Not busy: returned as it is, whatever `held` would say.
        let err = ZfsProvider::retry_busy_unless_held(
            "tank/v",
            |_, _| Some("never asked"),
            || -> Result<(), _> { Err(busy("permission denied")) },
        )
        .unwrap_err();
        assert!(matches!(err, ProviderError::Command { .. }), "{err:?}");
    }

    #[test]
    fn a_dataset_is_mounted_when_mountinfo_has_a_zfs_mount_of_it() {
        let info = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
93 22 0:45 / /var/lib/volmgr/zfs/mnt/data/t rw,nosuid,nodev shared:50 - zfs tank/volmgr/data/t rw,xattr,posixacl
94 22 0:46 / /mnt/x rw shared:51 master:3 - zfs tank/volmgr/data/tt rw
";
        assert!(mounted_in(info, "tank/volmgr/data/t"));
        assert!(mounted_in(info, "tank/volmgr/data/tt"));
        assert!(!mounted_in(info, "tank/volmgr/data/u"), "absent");
        assert!(
            !mounted_in(info, "tank/volmgr/data"),
            "a prefix is not a mount"
        );
        assert!(!mounted_in(info, "/dev/vda1"), "not zfs");
    }
}
