//! Resumable transfers, simulated: planted and broken receives keep what
//! arrived as a partial receive with a token `1_<offset hex>_<guid>_<base guid
//! or 0>`, senders continue from such a token, and sends can be cut short, so
//! the agent's resume logic is tested deterministically on the host.

use std::io::Write;

use super::{SimProvider, SimStream};
use crate::model::OpId;
use crate::provider::{PartialReceive, ProviderError};

impl SimProvider {
    /// Leaves a resumable partial receive of `op` (a stream of snapshot
    /// `guid`) on data volume `target`, as an interrupted receive would.
    pub fn plant_partial(&self, target: &str, op: OpId, guid: &str, token: &str) {
        self.lock().partials.insert(
            target.to_owned(),
            PartialReceive {
                token: token.to_owned(),
                guid: guid.to_owned(),
                op: Some(op),
            },
        );
    }

    /// A resumable receive: the stream continues the target's partial
    /// receive, or replaces it; if it breaks, what arrived is kept.
    pub(super) fn settle_resumable(
        &self,
        target: &str,
        op: OpId,
        bytes: Vec<u8>,
        read: std::io::Result<usize>,
    ) -> Result<SimStream, ProviderError> {
        let held = self.lock().partial_bytes.remove(target);
        self.lock().partials.remove(target);
        let mut whole = held.clone().unwrap_or_default();
        whole.extend_from_slice(&bytes);
        if read.is_ok() {
            for candidate in [&whole, &bytes] {
                if let Ok(stream) = serde_json::from_slice::<SimStream>(candidate) {
                    return Ok(stream);
                }
            }
        }
        // Broken: keep what arrived (a continuation extends the old part).
        let prefix = if held.is_some() && Self::partial_of_prefix(&whole).is_some() {
            whole
        } else {
            bytes
        };
        let cause = match read {
            Err(e) => format!("reading the stream: {e}"),
            Ok(_) => "the stream ended early".to_owned(),
        };
        let Some(mut partial) = Self::partial_of_prefix(&prefix) else {
            return Err(ProviderError::Stream(cause));
        };
        partial.op = Some(op);
        let mut s = self.lock();
        s.partials.insert(target.to_owned(), partial.clone());
        s.partial_bytes.insert(target.to_owned(), prefix);
        Err(ProviderError::Suspended {
            what: target.to_owned(),
            partial: Box::new(partial),
            cause,
        })
    }

    /// Receives that break keep what arrived, resumable (like ZFS).
    pub fn set_resumable(&self, resumable: bool) {
        self.lock().resumable = resumable;
    }

    /// From now on every send writes only its first `bytes` bytes and ends
    /// there, as a transfer whose connection drops half-way looks to the
    /// receiver (a short stream); `None` ends that.
    pub fn cut_sends(&self, bytes: Option<usize>) {
        self.lock().cut_sends = bytes;
    }

    /// The bytes of the stream of `snapshot`, incremental from `base`.
    pub(super) fn stream_bytes(
        &self,
        snapshot: &str,
        base: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), ProviderError> {
        let (guid, files) = {
            let s = self.lock();
            let item = s
                .items
                .get(snapshot)
                .ok_or_else(|| ProviderError::NotFound(snapshot.to_owned()))?;
            (item.guid.clone().unwrap_or_default(), item.files.clone())
        };
        let (base_guid, files, deleted) = match base {
            None => (None, files, Vec::new()),
            Some(b) => {
                let base_files = self.files_of(b)?;
                let base_guid = self.lock().items.get(b).and_then(|i| i.guid.clone());
                let changed = files
                    .iter()
                    .filter(|(k, v)| base_files.get(*k) != Some(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let deleted = base_files
                    .keys()
                    .filter(|k| !files.contains_key(*k))
                    .cloned()
                    .collect();
                (base_guid, changed, deleted)
            }
        };
        let bytes = serde_json::to_vec(&SimStream {
            guid,
            base_guid: base_guid.clone(),
            files,
            deleted,
        })
        .map_err(|e| ProviderError::Stream(e.to_string()))?;
        Ok((bytes, base_guid))
    }

    /// Writes `bytes`, or only their first part if a cut is armed; returns
    /// how many.
    pub(super) fn write_stream(
        &self,
        bytes: &[u8],
        out: &mut dyn Write,
    ) -> Result<u64, ProviderError> {
        let cut = self.lock().cut_sends;
        let n = cut.map_or(bytes.len(), |n| n.min(bytes.len()));
        out.write_all(&bytes[..n])
            .map_err(|e| ProviderError::io("send", e))?;
        Ok(n as u64)
    }

    /// (offset, guid, base guid) of a simulated resume token.
    pub(super) fn parse_token(token: &str) -> Option<(usize, String, Option<String>)> {
        let mut parts = token.split('_');
        if parts.next()? != "1" {
            return None;
        }
        let offset = usize::from_str_radix(parts.next()?, 16).ok()?;
        let guid = parts.next()?.to_owned();
        let base = parts.next()?;
        if parts.next().is_some() || guid.is_empty() {
            return None;
        }
        Some((offset, guid, (base != "0").then(|| base.to_owned())))
    }

    /// The partial receive a broken stream leaves: what arrived, if it is
    /// far enough in to name its snapshot and base.
    pub(super) fn partial_of_prefix(prefix: &[u8]) -> Option<PartialReceive> {
        let text = std::str::from_utf8(prefix).ok().or_else(|| {
            // A cut inside a multi-byte character: the valid part.
            std::str::from_utf8(&prefix[..prefix.len().saturating_sub(3)]).ok()
        })?;
        let rest = text.strip_prefix("{\"guid\":\"")?;
        let (guid, rest) = rest.split_once('"')?;
        let rest = rest.strip_prefix(",\"base_guid\":")?;
        let base = if rest.starts_with("null") {
            "0".to_owned()
        } else {
            rest.strip_prefix('"')?.split_once('"')?.0.to_owned()
        };
        if !rest.contains(",\"files\":") {
            return None;
        }
        Some(PartialReceive {
            token: format!("1_{:x}_{guid}_{base}", prefix.len()),
            guid: guid.to_owned(),
            op: None,
        })
    }

    /// The partial receive `target` holds.
    pub fn partial(&self, target: &str) -> Option<PartialReceive> {
        self.lock().partials.get(target).cloned()
    }

    /// Operations whose partial state `abort_partial` has not removed.
    pub fn partial_ops(&self) -> Vec<OpId> {
        self.lock().partial_ops.clone()
    }
}
