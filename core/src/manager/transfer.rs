//! Snapshot transfers: haves, send (full, incremental or resumed) and
//! receive, bridging async streams to the providers' blocking readers and
//! writers through bounded channels.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::provider::{
    ProviderError, SendOptions, SendStats, StreamIdentity, VolumeSpec, volume_id,
};
use crate::state::{
    Action, DETAIL_GUID, Done, Meta, OpId, State, Volume, VolumeKind, VolumeStatus,
};
use crate::validate;

use super::verbs::undo_on_error;
use super::{Manager, ManagerError, check_id, live, live_kind, volume_ref};

impl Manager {
    /// Identities (GUIDs) of the snapshots of data volume `id`: what a sender
    /// may use as the base of an incremental stream.
    pub fn list_haves(&self, id: &str) -> Result<Vec<String>, ManagerError> {
        check_id(id)?;
        self.with_state(|s| {
            live(s, id)?;
            Ok(snapshots_of(s, id)
                .filter_map(|v| v.details.get(DETAIL_GUID).cloned())
                .collect())
        })
    }

    /// Streams snapshot `id` to `out`: incremental from the newest older
    /// snapshot of the same volume whose GUID is among `haves`, else full;
    /// in the form every receiver reads ([`SendOptions::default`]; see
    /// [`Manager::send_snapshot_with`]).
    pub async fn send_snapshot<W>(
        &self,
        id: &str,
        haves: &[String],
        out: W,
    ) -> Result<SendStats, ManagerError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.send_snapshot_with(id, haves, None, &SendOptions::default(), out)
            .await
    }

    /// Whether the provider can continue a stream of snapshot `id` from a
    /// receiver's resume `token` (a dry run; nothing is sent).
    pub async fn resume_fits(&self, id: &str, token: &str) -> Result<bool, ManagerError> {
        check_id(id)?;
        validate::resume_token(token).map_err(ManagerError::InvalidInput)?;
        let snapshot = self.with_state(|s| live_kind(s, id, VolumeKind::Snapshot).cloned())?;
        let provider = self.inner.provider(&snapshot.provider)?;
        let token = token.to_owned();
        let provider_id = snapshot.provider.clone();
        tokio::task::spawn_blocking(move || {
            volume_ref(&snapshot).and_then(|r| provider.resume_fits(&r, &token))
        })
        .await
        .map_err(|e| ManagerError::Internal(e.to_string()))?
        .map_err(|error| ManagerError::Provider {
            provider: provider_id,
            error,
        })
    }

    /// As [`Manager::send_snapshot`], but if the receiver hands back the
    /// resume token of an interrupted stream of this snapshot, and the
    /// provider can continue it, only the rest is sent
    /// ([`SendStats::resumed`]). A token that does not fit is ignored: the
    /// stream is then a whole one, and the receiver discards its partial state.
    pub async fn send_snapshot_resuming<W>(
        &self,
        id: &str,
        haves: &[String],
        resume_token: Option<&str>,
        out: W,
    ) -> Result<SendStats, ManagerError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.send_snapshot_with(id, haves, resume_token, &SendOptions::default(), out)
            .await
    }

    /// As [`Manager::send_snapshot_resuming`], in the form `options` says
    /// the receiver reads (holes as holes: [`SendOptions::sparse`]). Ask
    /// only for what the receiver said it reads: Flynn's client and older
    /// volmgr agents read the default form only. A resumed stream is the
    /// provider's own continuation, whatever the options.
    pub async fn send_snapshot_with<W>(
        &self,
        id: &str,
        haves: &[String],
        resume_token: Option<&str>,
        options: &SendOptions,
        mut out: W,
    ) -> Result<SendStats, ManagerError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        check_id(id)?;
        let options = *options;
        if let Some(token) = resume_token {
            validate::resume_token(token).map_err(ManagerError::InvalidInput)?;
        }
        let resume_token = resume_token.map(str::to_owned);
        // A shared claim for the whole send: the snapshot cannot be
        // destroyed under it (busy), other sends and forks go on.
        let (claim, (snapshot, base)) = self.inner.claim_with(&[], &[id], |s| {
            let snap = live_kind(s, id, VolumeKind::Snapshot)?.clone();
            let base = send_base(s, &snap, haves);
            Ok::<_, ManagerError>((snap, base))
        })?;
        // The base of an incremental stream is read too; one that another
        // operation holds (a destroy in flight) is not used: a full stream.
        let (base_claim, base) = match base {
            Some(b) => match self.inner.claim_with(&[], &[b.id.as_str()], |_| Ok(())) {
                Ok((c, ())) => (Some(c), Some(b)),
                Err(_) => (None, None),
            },
            None => (None, None),
        };
        let provider = self.inner.provider(&snapshot.provider)?;
        let provider_id = snapshot.provider.clone();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let producer = tokio::task::spawn_blocking(move || {
            let mut writer = ChannelWriter {
                tx,
                buf: Vec::new(),
            };
            let snap = volume_ref(&snapshot)?;
            let base = base.as_ref().map(volume_ref).transpose()?;
            let resumed = match resume_token {
                Some(token) => provider.send_resumed(&snap, &token, &mut writer)?,
                None => None,
            };
            let stats = match resumed {
                Some(stats) => stats,
                None => provider.send_snapshot(&snap, base.as_ref(), &options, &mut writer)?,
            };
            std::io::Write::flush(&mut writer).map_err(|e| ProviderError::io("send", e))?;
            Ok::<_, ProviderError>(stats)
        });
        let mut write_error = None;
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = out.write_all(&chunk).await {
                write_error = Some(e);
                break;
            }
        }
        drop(rx);
        let result = producer
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        if let Some(e) = write_error {
            return Err(ManagerError::Stream(format!("writing the stream: {e}")));
        }
        let stats = result.map_err(|error| ManagerError::Provider {
            provider: provider_id,
            error,
        })?;
        out.flush()
            .await
            .map_err(|e| ManagerError::Stream(format!("flushing the stream: {e}")))?;
        drop((claim, base_claim));
        Ok(stats)
    }

    /// The size in bytes of the stream [`Manager::send_snapshot`] would
    /// write for these `haves`, if the provider knows it before sending
    /// (`None` otherwise). A hint for progress displays: the stream may
    /// still differ if the state changes meanwhile.
    pub async fn send_size(&self, id: &str, haves: &[String]) -> Result<Option<u64>, ManagerError> {
        self.send_size_with(id, haves, &SendOptions::default())
            .await
    }

    /// As [`Manager::send_size`], for the stream
    /// [`Manager::send_snapshot_with`] writes with `options` (a sparse
    /// stream is smaller than the files' lengths).
    pub async fn send_size_with(
        &self,
        id: &str,
        haves: &[String],
        options: &SendOptions,
    ) -> Result<Option<u64>, ManagerError> {
        check_id(id)?;
        let options = *options;
        let (snapshot, base) = self.with_state(|s| {
            let snap = live_kind(s, id, VolumeKind::Snapshot)?.clone();
            let base = send_base(s, &snap, haves);
            Ok::<_, ManagerError>((snap, base))
        })?;
        let provider = self.inner.provider(&snapshot.provider)?;
        let provider_id = snapshot.provider.clone();
        tokio::task::spawn_blocking(move || {
            let snap = volume_ref(&snapshot)?;
            let base = base.as_ref().map(volume_ref).transpose()?;
            provider.send_size(&snap, base.as_ref(), &options)
        })
        .await
        .map_err(|e| ManagerError::Internal(e.to_string()))?
        .map_err(|error| ManagerError::Provider {
            provider: provider_id,
            error,
        })
    }

    /// Receives a stream into data volume `id`; returns the new snapshot.
    pub async fn receive_snapshot<Rd>(&self, id: &str, input: Rd) -> Result<Volume, ManagerError>
    where
        Rd: AsyncRead + Unpin + Send,
    {
        self.receive_snapshot_with(id, Meta::new(), input).await
    }

    /// Receives a stream into data volume `id` as a new snapshot with `meta`.
    ///
    /// A stream that stops part-way on a provider with resumable receives
    /// (ZFS) leaves its partial state on the target and fails with
    /// [`ProviderError::Suspended`]; the journal records the resume token and
    /// the target's `details` show it ([`crate::state::DETAIL_RESUME_TOKEN`]),
    /// so the sender can continue the stream
    /// ([`Manager::send_snapshot_resuming`]) into a later receive. Any other
    /// stream into the target, a destroy, or [`Manager::abort_receive`]
    /// discards the partial state.
    pub async fn receive_snapshot_with<Rd>(
        &self,
        id: &str,
        meta: Meta,
        mut input: Rd,
    ) -> Result<Volume, ManagerError>
    where
        Rd: AsyncRead + Unpin + Send,
    {
        check_id(id)?;
        validate::meta(&meta).map_err(ManagerError::InvalidMeta)?;
        let snap_id = Uuid::new_v4().to_string();
        let (claim, target) = self.inner.claim(&[id, snap_id.as_str()], |s| {
            live_kind(s, id, VolumeKind::Data).cloned()
        })?;
        let provider = self.inner.provider(&target.provider)?;
        // The stream's head: what it declares it carries must fit the
        // target (checked before anything is journaled or changed). A read
        // error goes to the provider after the head, as any read error does.
        let mut head = Vec::new();
        let head_read = (&mut input)
            .take(provider.stream_head_len() as u64)
            .read_to_end(&mut head)
            .await;
        if head_read.is_ok()
            && let Some(identity) = provider.stream_identity(&head)
        {
            self.with_state(|s| stream_fits(s, &target, &identity))?;
        }
        let action = Action::ReceiveSnapshot {
            target: id.to_owned(),
            snapshot: snap_id.clone(),
            meta,
        };
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(16);
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let sid = snap_id.clone();
            let provider_id = target.provider.clone();
            inner
                .run(claim, action, &provider_id, move |op| {
                    let spec = VolumeSpec {
                        id: volume_id(&sid)?,
                        op,
                        kind: VolumeKind::Snapshot,
                    };
                    let mut reader = ChannelReader {
                        rx,
                        buf: Vec::new(),
                        pos: 0,
                    };
                    let received = volume_ref(&target)
                        .and_then(|r| provider.receive_snapshot(&r, &spec, &mut reader));
                    undo_on_error(provider.as_ref(), &spec, received)
                })
                .await?;
            inner.volume(&snap_id)
        });
        // Pump the caller's stream to the provider; if the caller stops, the
        // provider sees a short stream and the operation fails cleanly.
        let mut chunk = vec![0u8; 256 * 1024];
        let mut read_error = None;
        // A failed read of the head is the loop's first read.
        let mut head_failed = head_read.err();
        if head.is_empty() || tx.send(Ok(head)).await.is_ok() {
            loop {
                let read = match head_failed.take() {
                    Some(e) => Err(e),
                    None => input.read(&mut chunk).await,
                };
                match read {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Ok(chunk[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        // The provider must see a failed read, not the end of
                        // a stream that may parse as complete.
                        let _ = tx
                            .send(Err(std::io::Error::new(e.kind(), e.to_string())))
                            .await;
                        read_error = Some(e);
                        break;
                    }
                }
            }
        }
        drop(tx);
        let result = task
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?;
        match (result, read_error) {
            (Ok(v), _) => Ok(v),
            // A suspended receive is reported as it is (the partial receive
            // is kept: that is what the caller must know), as is any error
            // while the stream was read without fault.
            (
                Err(
                    e @ ManagerError::Provider {
                        error: ProviderError::Suspended { .. },
                        ..
                    },
                ),
                _,
            )
            | (Err(e), None) => Err(e),
            (Err(e), Some(read)) => Err(ManagerError::Stream(format!(
                "reading the stream: {read} ({e})"
            ))),
        }
    }

    /// Discards the resumable partial receive data volume `id` holds (see
    /// [`Manager::receive_snapshot_with`]). Succeeds if it holds none.
    pub async fn abort_receive(&self, id: &str) -> Result<(), ManagerError> {
        check_id(id)?;
        let (claim, target) = self
            .inner
            .claim(&[id], |s| live_kind(s, id, VolumeKind::Data).cloned())?;
        let provider = self.inner.provider(&target.provider)?;
        let action = Action::AbortReceive {
            target: id.to_owned(),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let provider_id = target.provider.clone();
            inner
                .run(claim, action, &provider_id, move |_op| {
                    provider.abort_receive(&volume_ref(&target)?)?;
                    Ok(Done::default())
                })
                .await
        })
        .await
    }
}

/// Whether a stream declaring `identity` fits data volume `target`, by the
/// rule ZFS applies (the one rule of every provider, checked here so that
/// the dir, btrfs and ZFS providers answer alike): the target must not hold
/// the stream's snapshot already (a second pull of it), an incremental
/// stream's base must be the target's newest live snapshot (pulling an older
/// snapshot would put the target's content back behind its newer
/// snapshots), and a full stream needs a target without snapshots.
fn stream_fits(s: &State, target: &Volume, identity: &StreamIdentity) -> Result<(), ManagerError> {
    let snaps: Vec<&Volume> = snapshots_of(s, &target.id)
        .filter(|v| v.status == VolumeStatus::Live)
        .collect();
    let guid_of = |v: &Volume| v.details.get(DETAIL_GUID).cloned();
    let refuse = |reason: String| {
        Err(ManagerError::StreamDoesNotFit {
            target: target.id.clone(),
            reason,
        })
    };
    if let Some(held) = snaps
        .iter()
        .find(|v| guid_of(v).as_deref() == Some(identity.guid.as_str()))
    {
        return refuse(format!(
            "it already holds the stream's snapshot (guid {}) as snapshot {}",
            identity.guid, held.id
        ));
    }
    let newest = snaps.last().map(|v| {
        format!(
            "{} (guid {})",
            v.id,
            guid_of(v).unwrap_or_else(|| "unknown".into())
        )
    });
    match (&identity.base, snaps.last()) {
        (None, None) => Ok(()),
        (None, Some(_)) => refuse(format!(
            "a full stream needs a target without snapshots; it has {} (newest {}): \
             destroy them first, or pull into a new volume",
            snaps.len(),
            newest.unwrap_or_default()
        )),
        (Some(base), Some(last)) if guid_of(last).as_deref() == Some(base.as_str()) => Ok(()),
        (Some(base), _) => refuse(format!(
            "an incremental stream from guid {base} applies on top of the target's newest \
             snapshot, which is {}",
            newest.unwrap_or_else(|| "none".into())
        )),
    }
}

/// The base of an incremental send of `snap`: the newest older live
/// snapshot of the same volume on the same provider whose GUID the receiver
/// has.
fn send_base(s: &State, snap: &Volume, haves: &[String]) -> Option<Volume> {
    s.volumes
        .values()
        .filter(|v| {
            v.kind == VolumeKind::Snapshot
                && v.id != snap.id
                && v.status == VolumeStatus::Live
                && v.parent == snap.parent
                && v.provider == snap.provider
                && age(v) < age(snap)
                && v.details
                    .get(DETAIL_GUID)
                    .is_some_and(|g| haves.contains(g))
        })
        .max_by(|a, b| age(a).cmp(&age(b)))
        .cloned()
}

/// The snapshots of data volume `id`, oldest first (by [`age`]).
fn snapshots_of<'s>(s: &'s State, id: &str) -> impl Iterator<Item = &'s Volume> {
    let mut snaps: Vec<&Volume> = s
        .volumes
        .values()
        .filter(|v| v.kind == VolumeKind::Snapshot && v.parent.as_deref() == Some(id))
        .collect();
    snaps.sort_by(|a, b| age(a).cmp(&age(b)));
    snaps.into_iter()
}

/// The order in which a volume's snapshots were made: by creation time,
/// then by creating operation (a version 7 UUID: ordered by creation within
/// a process, so two snapshots made in the same millisecond keep their
/// order; a random id could not), then by id.
fn age(v: &Volume) -> (u64, OpId, &str) {
    (v.created_at_ms, v.op, v.id.as_str())
}

struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "receiver of the stream went away",
            )
        })
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str, at_ms: u64, op: u128, guid: &str) -> Volume {
        Volume {
            id: id.into(),
            provider: "p".into(),
            kind: VolumeKind::Snapshot,
            parent: Some("v".into()),
            meta: Meta::new(),
            created_at_ms: at_ms,
            location: String::new(),
            status: VolumeStatus::Live,
            op: OpId::from_u128(op),
            details: [(DETAIL_GUID.to_owned(), guid.to_owned())].into(),
        }
    }

    /// Two snapshots made in the same millisecond keep the order of their
    /// operations, whatever their ids: the base of a send, and the newest
    /// snapshot a stream must continue, are the ones made last.
    #[test]
    fn snapshots_of_one_millisecond_are_ordered_by_their_operations() {
        let mut s = State::default();
        // "z-first" was made first (smaller op) though its id sorts last.
        for v in [
            snapshot("z-first", 7, 1, "g1"),
            snapshot("a-second", 7, 2, "g2"),
            snapshot("m-third", 8, 3, "g3"),
        ] {
            s.volumes.insert(v.id.clone(), v);
        }
        let third = s.volumes["m-third"].clone();
        let haves = ["g1".to_owned(), "g2".to_owned()];
        assert_eq!(
            send_base(&s, &third, &haves).map(|v| v.id),
            Some("a-second".to_owned())
        );
        let mut target = third.clone();
        target.id = "v".into();
        target.kind = VolumeKind::Data;
        s.volumes.remove("m-third");
        let fits = |base: &str| {
            stream_fits(
                &s,
                &target,
                &StreamIdentity {
                    guid: "g9".into(),
                    base: Some(base.into()),
                },
            )
        };
        assert!(fits("g2").is_ok(), "the newest snapshot is a-second");
        assert!(matches!(
            fits("g1"),
            Err(ManagerError::StreamDoesNotFit { .. })
        ));
    }
}
