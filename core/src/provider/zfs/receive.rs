//! The receive of the ZFS provider: the stream's header checked against the
//! target and its snapshots (one listing) first, the pool's space measured
//! for the stream's bound (`zfs get`; [`super::space`]: the records are
//! charged as they pass into `zfs recv`, refused as
//! [`ProviderError::NoSpace`] before the pool's last 2%), the target marked
//! (`zfs set`, on disk before the receive starts), `zfs recv -F -s` into the
//! final snapshot name with our properties excluded and `setuid=off
//! devices=off` forced, then one channel program (`lua/received.lua`) that
//! finds the arrived snapshot by GUID, tags it and clears the mark in one
//! sync task: 5 commands (plus a `zpool sync` and a `zfs get` per further
//! grant of the bound, at most 256 MiB of charges each). A refusal of the
//! bound (or ZFS's own `ENOSPC`/`EDQUOT`, or a record the bound cannot
//! read) is ours: the partial receive is discarded (`zfs recv -A`), never
//! left resumable, the mark cleared and the target mounted again
//! ([`ZfsProvider::after_refused_receive`]). Whether the target is still mounted is read from
//! `/proc/self/mountinfo` (not a command); it is mounted again only if not.
//! And what a failed or resumable receive leaves: a crash between `zfs recv`
//! and the program leaves the arrival untagged and the mark set (a retry
//! refuses the arrival, `abort_partial` removes it), a crash after it the
//! finished receive (a retry returns it); no state has the one without the
//! other.

#[allow(clippy::wildcard_imports)]
use super::*;
use program::Received;
use space::{Bounded, PoolMeasure, SpaceBound};

impl ZfsProvider {
    pub(super) fn receive_into(
        &self,
        tname: &str,
        row: &Row,
        snaps: &[Row],
        spec: &VolumeSpec<'_>,
        target: &VolumeRef<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        let mut head = vec![0u8; BEGIN_LEN];
        input
            .read_exact(&mut head)
            .map_err(|e| ProviderError::Stream(format!("reading the stream header: {e}")))?;
        let header = parse_begin(&head)?;
        let big_endian = stream::big_endian_of(&head);
        let begin: &[u8; stream::RECORD_LEN] = head[..]
            .try_into()
            .map_err(|_| ProviderError::Stream("begin record of the wrong size".into()))?;
        let begin_payload = stream::begin_payload(begin, big_endian)?;
        let toguid = header.toguid.to_string();
        // The partial receive the target holds and the target's snapshots,
        // from the one listing the caller made. Only a receive changes them,
        // and the manager holds the target exclusively for this whole verb,
        // so no receive of ours starts or ends between that read and this
        // use; an outside `zfs recv` could change them just after the read
        // as well as before this use, and `zfs recv` itself refuses a target
        // with partial state it was not told about (reported as a failed
        // receive, whose clean-up reads the target afresh).
        let partial = Self::partial_of(row);
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
                        Self::recv_abort(tname)?;
                    }
                    return Err(ProviderError::Stream(format!(
                        "resumed stream of guid {toguid}, but {tname} holds {held}"
                    )));
                }
            }
        }
        let fits = self.check_stream_fits(tname, snaps, spec, &header);
        if header.resuming && !matches!(fits, Ok(None)) {
            Self::recv_abort(tname)?;
        }
        if let Some(created) = fits? {
            return Ok(created);
        }
        if !header.resuming && partial.is_some() {
            Self::recv_abort(tname)?;
        }
        // Room for the stream, measured before anything changes: a pool
        // without room refuses it here (a resumed stream's partial state is
        // discarded, as when the stream does not fit).
        let mut bound = SpaceBound::new(
            PoolMeasure {
                pool: self.pool().to_owned(),
            },
            stream::StreamAccount::new(
                big_endian,
                begin_payload,
                header.fromguid != 0 || header.resuming,
            ),
            space::recv_queue_bytes(),
        );
        if let Err(e) = bound.start() {
            if header.resuming {
                Self::recv_abort(tname)?;
            }
            return Err(e);
        }
        Self::set_props(tname, &[kv(P_RECEIVING, &format!("{}:{toguid}", spec.op))])?;
        let want = format!("{tname}@{}", spec.id);
        let mut cmd = Cmd::new("zfs").arg("recv").arg("-F").arg("-s");
        for p in [P_OWNER, P_VOLUME, P_OP, P_KIND, P_PARENT, P_RECEIVING] {
            cmd = cmd.arg("-x").user_arg(p)?;
        }
        // Whatever the stream says (a `send -p` stream carries properties),
        // nothing received runs setuid or opens a device.
        cmd = cmd.arg("-o").arg(SETUID_OFF).arg("-o").arg(DEVICES_OFF);
        // Received straight under its final name (`zfs recv` names the
        // snapshot as told, a resumed stream too), so no rename follows.
        let cmd = cmd.user_arg(&want)?;
        let result = {
            let mut bounded = Bounded::new(input, &mut bound);
            let mut stream = std::io::Cursor::new(head).chain(&mut bounded);
            cmd.run_from(&mut stream)
        };
        if let Err(e) = result {
            if let Some(refusal) = bound.refusal.take() {
                return Err(Self::after_refused_receive(tname, refusal));
            }
            if is_no_space(&e) {
                let refusal = ProviderError::NoSpace {
                    what: "the received stream".into(),
                    detail: format!("zfs recv: {}", stderr_of(&e).trim()),
                };
                return Err(Self::after_refused_receive(tname, refusal));
            }
            return Err(Self::after_failed_receive(
                tname,
                partial.as_ref(),
                header.resuming,
                e,
            ));
        }
        self.finish_receive(target, spec, header.toguid)
    }

    /// The step of a receive after `zfs recv` into `target` succeeded: one
    /// channel program finds the arrival by the stream's guid `toguid`, tags
    /// it and clears the target's receiving mark, in one sync task; then
    /// the target is mounted again only if `/proc/self/mountinfo` does not
    /// show it mounted (a file read, not a `zfs` command). An arrival under
    /// another name (which `zfs recv`, told the name, never gives) is
    /// tagged, renamed, checked by guid and the mark cleared, one command
    /// each, as before the program. Its errors leave the arrival not ours
    /// and the mark set, what [`Provider::abort_partial`] removes (the
    /// manager runs it after a failed receive): untagged, or, when the
    /// rename of an arrival under another name fails, tagged with a
    /// snapshot id its name does not carry, which the inventory does not
    /// count as ours.
    ///
    /// Public, and hidden from the documentation, only so that the guest
    /// tests reach this step after a `zfs recv` of their own (the state a
    /// crash between the two leaves); [`Provider::receive_snapshot`] is the
    /// API.
    #[doc(hidden)]
    pub fn finish_receive(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        toguid: u64,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        let tname = self.name_of(target)?;
        let want = format!("{tname}@{}", spec.id);
        let tags = Self::tags(spec, Some(target.id));
        let guid = match self.received_by_program(&tname, &want, toguid, P_RECEIVING, &tags)? {
            Received::Done { guid } => guid,
            Received::Elsewhere { name } => {
                Self::set_props(&name, &tags)?;
                Self::retry_busy(&name, || {
                    Cmd::new("zfs")
                        .arg("rename")
                        .user_arg(&name)?
                        .user_arg(&want)?
                        .run()
                        .map(|_| ())
                })?;
                let row = Self::one(&want)?.ok_or_else(|| ProviderError::NotFound(want.clone()))?;
                if row.guid != toguid.to_string() {
                    return Err(ProviderError::Stream(format!(
                        "{want} has guid {} after the rename, expected {toguid}",
                        row.guid
                    )));
                }
                Self::clear_receiving(&tname)?;
                row.guid
            }
        };
        // `zfs recv` unmounts the target to swap or roll it back, and mounts
        // it again; the program neither mounts nor unmounts.
        if Self::mounted_here(&tname) != Some(true) {
            Self::ensure_mounted(&tname)?;
        }
        let mut details = Details::new();
        details.insert(DETAIL_GUID.to_owned(), guid);
        Ok(Created {
            location: self.snap_location(target.id, spec.id),
            details,
        })
    }

    /// Checks a stream's header against the target before anything changes:
    /// an incremental's base must be the target's newest snapshot (by GUID);
    /// a full stream needs a target without snapshots; a GUID already present
    /// is this very receive done before (its result: idempotent) or refused.
    pub(super) fn check_stream_fits(
        &self,
        tname: &str,
        snaps: &[Row],
        spec: &VolumeSpec<'_>,
        header: &StreamHeader,
    ) -> Result<Option<Created>, ProviderError> {
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
    pub(super) fn after_failed_receive(
        tname: &str,
        before: Option<&PartialReceive>,
        resuming: bool,
        error: ProviderError,
    ) -> ProviderError {
        let now = Self::one(tname)
            .ok()
            .flatten()
            .and_then(|r| Self::partial_of(&r));
        let _ = Self::ensure_mounted(tname);
        match now {
            Some(p) if !(resuming && before.is_some_and(|b| b.token == p.token)) => {
                ProviderError::Suspended {
                    what: tname.to_owned(),
                    partial: Box::new(p),
                    cause: error.to_string(),
                }
            }
            Some(_) => {
                let aborted = Self::recv_abort(tname);
                let _ = Self::clear_receiving(tname);
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
                let _ = Self::clear_receiving(tname);
                error
            }
        }
    }

    /// Settles a receive refused for want of space (by the space bound, or
    /// by ZFS itself: `ENOSPC`, `EDQUOT`) or for a record the bound could
    /// not read: the refusal is ours, so nothing of it stays, resumable or
    /// not: the partial state is discarded (`zfs recv -A`, which frees its
    /// space), the mark cleared, the target mounted again. Returns the
    /// refusal, noting a clean-up that failed (`abort_partial` finds the
    /// mark and finishes it).
    pub(super) fn after_refused_receive(tname: &str, refusal: ProviderError) -> ProviderError {
        let aborted = Self::recv_abort(tname);
        let cleared = Self::clear_receiving(tname);
        let mounted = Self::ensure_mounted(tname);
        match (aborted, cleared, mounted) {
            (Ok(()), Ok(()), Ok(_)) => refusal,
            (a, c, m) => {
                let why = [a.err(), c.err(), m.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                match refusal {
                    ProviderError::NoSpace { what, detail } => ProviderError::NoSpace {
                        what,
                        detail: format!("{detail} (clean-up of {tname} incomplete: {why})"),
                    },
                    ProviderError::Stream(s) => ProviderError::Stream(format!(
                        "{s} (clean-up of {tname} incomplete: {why})"
                    )),
                    other => other,
                }
            }
        }
    }

    /// What `token` continues, if that is a stream of `snapshot` (this very
    /// snapshot and guid, so a token can never reach another dataset).
    pub(super) fn fitting_token(
        &self,
        snapshot: &VolumeRef<'_>,
        token: &str,
    ) -> Result<Option<TokenContents>, ProviderError> {
        check_token(token)?;
        let (snap, row) = self.require(snapshot)?;
        Ok(Self::token_contents(token)?
            .filter(|c| c.toname == snap && c.toguid.to_string() == row.guid))
    }

    /// The contents of a resume token, by a dry run (`zfs send -nvP -t`).
    /// `None` if ZFS does not accept the token.
    pub(super) fn token_contents(token: &str) -> Result<Option<TokenContents>, ProviderError> {
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
