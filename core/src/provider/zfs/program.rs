//! ZFS channel programs (`zfs program`, zfs-program(8)): the verbs that can
//! check our tags and act in one command, the end of a receive (the
//! arrival tagged and the target's mark cleared), and, read-only (`zfs
//! program -n`, which runs in open context, changes nothing and waits for
//! no transaction group), a lookup's search for the names that can carry
//! one id's tag (`lua/lookup.lua`). A channel program that changes runs as one
//! sync task in one transaction group, with no other administrative
//! operation in between, and `zfs program` returns once that group has
//! synced: a snapshot is taken and tagged together (never visible, nor left
//! by a crash, untagged), and a tag check is never separated from the
//! destroy it guards.
//!
//! The scripts (`lua/*.lua`) are compiled into the binary and given to
//! `zfs program` on its standard input (the script argument `-`): there is
//! no script file that a local user could replace or race between its
//! check and its use. Every argument is a dataset name or a tag built from
//! checked ids (each through [`Cmd::user_arg`]), after a `--` that ends
//! `zfs`'s options (glibc's getopt would otherwise read an argument after
//! the script as a flag); the scripts read them as strings and never
//! evaluate them. `-j` prints the returned table as JSON. Channel programs
//! run as root only (zfs-program(8); `zfs allow` cannot delegate them): the
//! provider needs root anyway, for its pool, mounts and receives.
//!
//! The scripts check tags by `lua/tagged.lua`, the rule of
//! [`ZfsProvider::tag_of`] (owner, volume id, kind, operation id), with the
//! operation id in hyphenated UUID form only, as the provider writes it (the
//! Rust rule also parses other UUID forms: the script is the stricter).
//! The scripts that take tags (the snapshot's and the receive's) split
//! their trailing `property=value` arguments by `lua/props.lua`
//! (`tag_args`), before their first change. Each shared part is a prefix
//! the program is concatenated from (`concat!`), ahead of the script that
//! uses it.
//! Within one program, a tag that ZFS refuses after the snapshot was taken
//! destroys the snapshot again in the same sync task, so no outcome leaves
//! an untagged snapshot; the receive's script checks each change
//! (`zfs.check.*`) before it makes the first, and undoes its tags if a
//! later change is refused, so it tags the arrival and clears the mark
//! together or changes nothing. A program's fatal error, as zfs-program(8)
//! warns, may leave what it did so far, and these scripts make none after
//! their first `zfs.sync` call.

use serde::Deserialize;

use super::holds::Holds;
use super::parse::Row;
use super::{Cmd, Created, Details, ProviderError, VolumeRef, VolumeSpec, ZfsProvider};
use crate::model::DETAIL_GUID;

/// Tag check, snapshot and its tags, and its guid.
pub const SNAPSHOT: &str = concat!(
    include_str!("lua/tagged.lua"),
    include_str!("lua/props.lua"),
    include_str!("lua/snapshot.lua")
);
/// Tag check and destroy of a snapshot (its clones if it has any).
const DESTROY_SNAPSHOT: &str = concat!(
    include_str!("lua/tagged.lua"),
    include_str!("lua/destroy_snapshot.lua")
);

/// After `zfs recv`: the arrival found by guid, tagged, and the target's
/// receiving mark cleared (no tag check: the target's was made before the
/// receive, and the arrival is found by the stream's guid).
pub const RECEIVED: &str = concat!(
    include_str!("lua/props.lua"),
    include_str!("lua/received.lua")
);

/// The names that can carry one volume id's tag, read without a change
/// (`zfs program -n`; see [`ZfsProvider::names_tagged_by`]).
const LOOKUP: &str = include_str!("lua/lookup.lua");

/// `EAGAIN`: a snapshot of the same filesystem was taken in the same
/// transaction group (the `zfs snapshot` command retries this itself; a
/// channel program's `zfs.sync.snapshot` returns it).
const EAGAIN: i64 = 11;

/// What `zfs program -j` prints: `{"return": VALUE}`.
#[derive(Deserialize)]
struct Reply<T> {
    #[serde(rename = "return")]
    value: T,
}

/// What `lua/snapshot.lua` returns.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum Snapshot {
    Made {
        guid: String,
    },
    Absent,
    Foreign,
    Exists {
        guid: String,
        owner: Option<String>,
        volume: Option<String>,
        op: Option<String>,
        kind: Option<String>,
    },
    Failed {
        errno: i64,
        step: String,
    },
}

/// What `lua/destroy_snapshot.lua` returns.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum DestroyReply {
    Destroyed,
    Absent,
    Foreign,
    Clones {
        clones: String,
    },
    /// Its user holds: the first tags in hex, comma separated, and how
    /// many there are (see `holds.rs`).
    Busy {
        holds: String,
        count: u64,
    },
    Failed {
        errno: i64,
        step: String,
    },
}

/// How a snapshot's destroy by channel program ended (its failures are
/// errors).
#[derive(Debug)]
pub(super) enum DestroySnapshot {
    Destroyed,
    Absent,
    /// Not tagged as the snapshot named: untouched.
    Foreign,
    /// It has clones (full names, comma separated): untouched.
    Clones {
        clones: String,
    },
    /// `EBUSY`: mounted under `.zfs/snapshot`, or held; its user holds
    /// (none when it is only mounted, or being sent without `-R`).
    Busy {
        holds: Holds,
    },
}

/// What `lua/received.lua` returns.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum ReceivedReply {
    Done { name: String, guid: String },
    Absent,
    Missing,
    Elsewhere { name: String },
    Failed { errno: i64, step: String },
}

/// How the program after `zfs recv` ended (its failures are errors).
#[derive(Debug)]
pub(super) enum Received {
    /// Tagged under its final name, the mark cleared; its guid as ZFS
    /// prints it.
    Done { guid: String },
    /// It arrived under another name: untouched (tagged, renamed and the
    /// mark cleared by separate commands).
    Elsewhere { name: String },
}

/// What `lua/lookup.lua` returns.
#[derive(Debug, Deserialize)]
struct LookupReply {
    /// Comma separated, empty if none.
    names: String,
}

/// `EBUSY`.
const EBUSY: i64 = 16;

/// A `zfs.sync` call's error number as a command failure naming it.
fn sync_failure(command: &Cmd, step: &str, errno: i64) -> ProviderError {
    let text = i32::try_from(errno).map_or_else(
        |_| format!("errno {errno}"),
        |e| std::io::Error::from_raw_os_error(e).to_string(),
    );
    ProviderError::Command {
        command: command.display(),
        status: format!("channel program returned errno {errno}"),
        stderr: format!("zfs.sync.{step}: {text}"),
    }
}

/// A guid as a channel program prints it (a Lua integer: signed 64 bits,
/// so a guid above `i64::MAX` is negative) as ZFS prints it (unsigned).
fn unsigned_guid(lua: &str) -> Result<String, ProviderError> {
    lua.parse::<i64>()
        .map(|g| g.cast_unsigned().to_string())
        .map_err(|_| ProviderError::Other(format!("channel program returned guid {lua:?}")))
}

/// The argument `lua/received.lua` compares with `"guid=" ..
/// tostring(zfs.get_prop(snap, "guid"))`.
fn guid_arg(guid: u64) -> String {
    format!("guid={}", guid.cast_signed())
}

impl ZfsProvider {
    /// The pool the root dataset is in (where the programs run).
    pub(super) fn pool(&self) -> &str {
        self.dataset.split('/').next().unwrap_or(&self.dataset)
    }

    /// `zfs program -j -- POOL - ARGS...` with `script` on stdin; its
    /// returned table. A script's fatal error (or one `zfs program` reports
    /// itself) is the [`ProviderError::Command`] carrying its stderr.
    fn program<T: for<'de> Deserialize<'de>>(
        &self,
        script: &str,
        args: &[&str],
    ) -> Result<(T, Cmd), ProviderError> {
        self.run_program(Cmd::new("zfs").arg("program").arg("-j"), script, args)
    }

    /// [`Self::program`] read-only (`zfs program -n`): the script runs in
    /// open context, changes nothing, and waits for no transaction group.
    fn read_program<T: for<'de> Deserialize<'de>>(
        &self,
        script: &str,
        args: &[&str],
    ) -> Result<(T, Cmd), ProviderError> {
        let cmd = Cmd::new("zfs").arg("program").arg("-j").arg("-n");
        self.run_program(cmd, script, args)
    }

    fn run_program<T: for<'de> Deserialize<'de>>(
        &self,
        cmd: Cmd,
        script: &str,
        args: &[&str],
    ) -> Result<(T, Cmd), ProviderError> {
        let mut cmd = cmd.arg("--").user_arg(self.pool())?.arg("-");
        for a in args {
            cmd = cmd.user_arg(a)?;
        }
        let (out, _) = cmd.run_from(&mut script.as_bytes())?;
        let text = out.stdout_str();
        let reply: Reply<T> = serde_json::from_str(&text).map_err(|e| {
            ProviderError::Other(format!(
                "`{}` printed {text:?} (expected the JSON of the script's result: {e})",
                cmd.display()
            ))
        })?;
        Ok((reply.value, cmd))
    }

    /// The datasets whose own name can carry the tag of volume `id` (the
    /// filesystem `<data>/<id>` and the snapshots `<data>/<child>@<id>`,
    /// the only names [`ZfsProvider::tag_of`] can match with `id`), those
    /// that exist with that type, by one read-only channel program (see
    /// `lua/lookup.lua`): one `zfs.exists` per child of the data root, in
    /// the kernel, and nothing listed. Bounded by `zfs program`'s default
    /// limits (10 million Lua instructions, a few tens per child; 10 MB of
    /// memory): beyond them it fails, naming the limit, and never answers
    /// "none". Any failure is an error.
    pub(super) fn names_tagged_by(&self, id: &str) -> Result<Vec<String>, ProviderError> {
        let data = self.data_root();
        let (reply, _) = self.read_program::<LookupReply>(LOOKUP, &[&data, id])?;
        Ok(reply
            .names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Snapshot `name` (`<src>@<id>`) of data volume `source`, by one
    /// channel program (see `lua/snapshot.lua`); retried while ZFS answers
    /// `EAGAIN`, then [`ProviderError::Busy`].
    pub(super) fn snapshot_by_program(
        &self,
        source: &VolumeRef<'_>,
        src: &str,
        name: &str,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        let tags = Self::tags(spec, Some(source.id));
        let mut args = vec![src, source.id.as_str(), name];
        args.extend(tags.iter().map(String::as_str));
        let (outcome, cmd) = Self::retry_busy(name, || {
            let (outcome, cmd) = self.program::<Snapshot>(SNAPSHOT, &args)?;
            match outcome {
                // `is_busy` matches this stderr: nothing was made, try again.
                Snapshot::Failed { errno: EAGAIN, .. } => Err(ProviderError::Command {
                    command: cmd.display(),
                    status: format!("channel program returned errno {EAGAIN}"),
                    stderr: format!(
                        "{src} is busy: another snapshot of it in this transaction group (EAGAIN)"
                    ),
                }),
                other => Ok((other, cmd)),
            }
        })?;
        let created = |guid: &str| -> Result<Created, ProviderError> {
            let mut details = Details::new();
            details.insert(DETAIL_GUID.to_owned(), unsigned_guid(guid)?);
            Ok(Created {
                location: self.snap_location(source.id, spec.id),
                details,
            })
        };
        match outcome {
            Snapshot::Made { guid } => created(&guid),
            Snapshot::Absent => Err(ProviderError::NotFound(format!(
                "{} {} ({src})",
                source.kind, source.id
            ))),
            Snapshot::Foreign => Err(ProviderError::Other(format!(
                "{src} is not tagged as {} {}: refusing to use it",
                source.kind, source.id
            ))),
            // Idempotent: this very operation made it before.
            Snapshot::Exists {
                guid,
                owner,
                volume,
                op,
                kind,
            } => {
                let row = Row::snapshot(name, owner, volume, op, kind);
                match self.tag_of(&row) {
                    Some(t) if t.op == spec.op => created(&guid),
                    Some(t) => Err(ProviderError::AlreadyExists(format!(
                        "{name} (made by operation {})",
                        t.op
                    ))),
                    None => Err(ProviderError::AlreadyExists(format!(
                        "{name} (not tagged as ours)"
                    ))),
                }
            }
            Snapshot::Failed { errno, step } => Err(sync_failure(&cmd, &step, errno)),
        }
    }

    /// Destroys snapshot `name` if it is tagged as snapshot `id`, by one
    /// channel program (see `lua/destroy_snapshot.lua`). `Busy` is left to
    /// the caller, with the snapshot's user holds read in the same sync
    /// task (`zfs destroy` unmounts a snapshot mounted under
    /// `.zfs/snapshot`, which a channel program cannot; a hold that waiting
    /// does not release makes that pointless).
    pub(super) fn destroy_snapshot_by_program(
        &self,
        name: &str,
        id: &str,
    ) -> Result<DestroySnapshot, ProviderError> {
        let (outcome, cmd) = self.program::<DestroyReply>(DESTROY_SNAPSHOT, &[name, id])?;
        Ok(match outcome {
            DestroyReply::Destroyed => DestroySnapshot::Destroyed,
            DestroyReply::Absent => DestroySnapshot::Absent,
            DestroyReply::Foreign => DestroySnapshot::Foreign,
            DestroyReply::Clones { clones } => DestroySnapshot::Clones { clones },
            DestroyReply::Busy { holds, count } => DestroySnapshot::Busy {
                holds: Holds::parse(&holds, count)?,
            },
            DestroyReply::Failed { errno, step } => return Err(sync_failure(&cmd, &step, errno)),
        })
    }

    /// After `zfs recv` into `target` (filesystem `tname`) succeeded: one
    /// channel program (see `lua/received.lua`) finds the snapshot of guid
    /// `toguid` among the target's, and if it is `want`, sets `tags` on it
    /// and clears the receiving mark `mark` of the target, in one sync task.
    /// Retried while ZFS answers `EAGAIN` or `EBUSY` (nothing changed), then
    /// [`ProviderError::Busy`]. No arrival of that guid is a
    /// [`ProviderError::Stream`]; a change ZFS refused, the
    /// [`ProviderError::Command`] naming it; neither changes anything (the
    /// arrival stays untagged, the mark set).
    pub(super) fn received_by_program(
        &self,
        tname: &str,
        want: &str,
        toguid: u64,
        mark: &str,
        tags: &[String],
    ) -> Result<Received, ProviderError> {
        // As the script compares it: the guid as a channel program prints
        // one (signed), after `guid=` (a command argument never starts with
        // `-`).
        let guid = guid_arg(toguid);
        let mut args = vec![tname, want, guid.as_str(), mark];
        args.extend(tags.iter().map(String::as_str));
        let (outcome, cmd) = Self::retry_busy(tname, || {
            let (outcome, cmd) = self.program::<ReceivedReply>(RECEIVED, &args)?;
            match outcome {
                // `is_busy` matches this stderr: nothing changed, try again.
                ReceivedReply::Failed {
                    errno: errno @ (EAGAIN | EBUSY),
                    step,
                } => Err(ProviderError::Command {
                    command: cmd.display(),
                    status: format!("channel program returned errno {errno}"),
                    stderr: format!("zfs.sync.{step}: {tname} is busy (errno {errno})"),
                }),
                other => Ok((other, cmd)),
            }
        })?;
        match outcome {
            ReceivedReply::Done { name, guid } => {
                let guid = unsigned_guid(&guid)?;
                if name != want || guid != toguid.to_string() {
                    return Err(ProviderError::Other(format!(
                        "`{}` tagged {name} (guid {guid}), expected {want} (guid {toguid})",
                        cmd.display()
                    )));
                }
                Ok(Received::Done { guid })
            }
            ReceivedReply::Elsewhere { name } => Ok(Received::Elsewhere { name }),
            ReceivedReply::Absent => Err(ProviderError::NotFound(format!(
                "{tname} (gone after `zfs recv` into it)"
            ))),
            ReceivedReply::Missing => Err(ProviderError::Stream(format!(
                "`zfs recv` succeeded but no snapshot with the stream's guid {toguid} is in {tname}: \
                 nothing tagged, {tname} still marked"
            ))),
            ReceivedReply::Failed { errno, step } => Err(sync_failure(&cmd, &step, errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_above_i64_max_are_printed_unsigned() {
        assert_eq!(
            unsigned_guid("-3611531173648224048").unwrap(),
            "14835212900061327568"
        );
        assert_eq!(unsigned_guid("42").unwrap(), "42");
        assert!(unsigned_guid("x").is_err());
    }

    #[test]
    fn the_scripts_share_one_tag_rule_written_before_them() {
        for script in [SNAPSHOT, DESTROY_SNAPSHOT] {
            assert!(script.starts_with(include_str!("lua/tagged.lua")));
            assert_eq!(script.matches("local function tagged").count(), 1);
        }
    }

    /// Every program whose own script calls `tag_args` is its shared
    /// prefixes, the last of them `lua/props.lua` (so `tag_args` is defined
    /// once, before its use), then that script; no script splits its
    /// arguments itself.
    #[test]
    fn the_scripts_that_take_tags_share_one_argument_parser_written_before_them() {
        let props = include_str!("lua/props.lua");
        let programs = [
            (SNAPSHOT, include_str!("lua/snapshot.lua")),
            (DESTROY_SNAPSHOT, include_str!("lua/destroy_snapshot.lua")),
            (RECEIVED, include_str!("lua/received.lua")),
        ];
        let mut taking_tags = 0;
        for (program, own) in programs {
            let prefixes = program.strip_suffix(own).expect("the script comes last");
            assert!(!own.contains("string.find(argv"), "{own}");
            if own.contains("tag_args(") {
                taking_tags += 1;
                assert!(prefixes.ends_with(props), "{prefixes}");
                assert_eq!(program.matches("local function tag_args").count(), 1);
            }
        }
        assert_eq!(taking_tags, 2, "the snapshot's and the receive's");
    }

    #[test]
    fn script_results_parse_as_zfs_program_prints_them() {
        let made: Reply<Snapshot> =
            serde_json::from_str(r#"{"return":{"result":"made","guid":"-5"}}"#).unwrap();
        assert!(matches!(made.value, Snapshot::Made { guid } if guid == "-5"));
        let exists: Reply<Snapshot> = serde_json::from_str(
            r#"{"return":{"result":"exists","guid":"7","owner":"volmgr","kind":"data"}}"#,
        )
        .unwrap();
        assert!(
            matches!(exists.value, Snapshot::Exists { volume: None, ref kind, .. } if kind.as_deref() == Some("data"))
        );
        let clones: Reply<DestroyReply> =
            serde_json::from_str(r#"{"return":{"result":"clones","clones":"p/d/a,p/d/b"}}"#)
                .unwrap();
        assert!(matches!(clones.value, DestroyReply::Clones { .. }));
        let done: Reply<ReceivedReply> = serde_json::from_str(
            r#"{"return":{"result":"done","name":"p/d/t@r","guid":"-3611531173648224048"}}"#,
        )
        .unwrap();
        assert!(matches!(done.value, ReceivedReply::Done { ref name, .. } if name == "p/d/t@r"));
        let failed: Reply<ReceivedReply> = serde_json::from_str(
            r#"{"return":{"result":"failed","errno":28,"step":"set_prop volmgr:op"}}"#,
        )
        .unwrap();
        assert!(matches!(
            failed.value,
            ReceivedReply::Failed { errno: 28, .. }
        ));
        let missing: Reply<ReceivedReply> =
            serde_json::from_str(r#"{"return":{"result":"missing"}}"#).unwrap();
        assert!(matches!(missing.value, ReceivedReply::Missing));
    }

    #[test]
    fn the_lookup_programs_names_parse_as_zfs_program_prints_them() {
        let none: Reply<LookupReply> = serde_json::from_str(r#"{"return":{"names":""}}"#).unwrap();
        assert!(none.value.names.is_empty());
        let two: Reply<LookupReply> =
            serde_json::from_str(r#"{"return":{"names":"p/d/a,p/d/b@a"}}"#).unwrap();
        assert_eq!(two.value.names, "p/d/a,p/d/b@a");
    }

    #[test]
    fn the_guid_argument_is_signed_as_lua_prints_it_and_never_flag_like() {
        // The guid argument is what `tostring(zfs.get_prop(snap, "guid"))`
        // prints for the same guid: signed, and back to ZFS's form unsigned.
        let toguid: u64 = 14_835_212_900_061_327_568;
        assert_eq!(guid_arg(toguid), "guid=-3611531173648224048");
        assert_eq!(guid_arg(42), "guid=42");
        assert_eq!(
            unsigned_guid("-3611531173648224048").unwrap(),
            toguid.to_string()
        );
        // Never flag-like, whatever the guid's sign.
        assert!(
            crate::provider::cmd::Cmd::new("zfs")
                .user_arg(&guid_arg(toguid))
                .is_ok()
        );
    }
}
