//! Pulls: `POST /storage/volumes/{id}/pull_snapshot` asks another agent's
//! `send` with this agent's haves and streams the answer into a receive.
//!
//! The source is Flynn's `host_id`, a configured peer, or volmgr's `source`
//! URL: a configured peer's URL, or any other only where the operator
//! allows arbitrary sources. What a source can do to this agent is
//! bounded: redirects are never followed (a source cannot point the agent
//! elsewhere, nor keep its POST going to another address), the credential
//! goes to configured peers only, an error answer is read up to
//! [`MAX_SOURCE_ERROR_BYTES`] within [`SOURCE_ERROR_DEADLINE`] and nothing of
//! it is echoed but a short sanitized message, and `resumed` reports what
//! this agent did, never what the source claims. A pull holds a slot among
//! `--max-pulls`, must keep a minimum rate and end before its deadline, and
//! can be cancelled (`pull_watch.rs`). The source's announced stream size
//! is shown in progress events only, never trusted for anything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use tokio_util::io::StreamReader;
use tracing::Instrument;

use super::api::{
    ErrorBody, ErrorEvent, PullProgress, PullRequest, PullResponse, SendRequest, VolumeInfo, events,
};
use super::client::describe_transport_error;
use super::error::ApiError;
use super::events::frame_named;
use super::peers::base_url;
use super::pull_watch::Watch;
use super::routes::{
    FEATURE_SPARSE, Id, RESUMED_HEADER, RawBody, STREAM_FEATURES_HEADER, STREAM_SIZE_HEADER, note,
    require, wants_event_stream,
};
use super::server::Shared;
use crate::manager::{Manager, ManagerError};
use crate::provider::ProviderError;
use crate::state::{
    DETAIL_RESUME_SNAPSHOT, DETAIL_RESUME_SOURCE, DETAIL_RESUME_TOKEN, META_PULL_SNAPSHOT,
    META_PULL_SOURCE, Meta, VolumeKind,
};
use crate::validate;

/// Most bytes of a source's error answer read (the rest is never read).
pub const MAX_SOURCE_ERROR_BYTES: usize = 4096;
/// Longest time spent reading a source's error answer.
pub const SOURCE_ERROR_DEADLINE: Duration = Duration::from_secs(10);
/// Longest part of a source's error message echoed (sanitized).
const MAX_ECHOED_CHARS: usize = 200;

/// Where a pull comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub base: String,
    /// The configured peer's host id; `None` for an arbitrary source (the
    /// operator allowed it), which never sees the credential.
    pub peer: Option<String>,
}

/// Resolves a pull's `host_id` or `source` (exactly one).
pub(crate) fn resolve(
    shared: &Shared,
    host_id: Option<&str>,
    source: Option<&str>,
) -> Result<Source, ApiError> {
    let peers = &shared.options.peers;
    // Go sends an unset string as "": absent.
    let host_id = host_id.filter(|h| !h.is_empty());
    let source = source.filter(|s| !s.is_empty());
    match (host_id, source) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_source",
            "give host_id or source, not both",
        )
        .field("host_id")),
        (None, None) => Err(ApiError::bad_request(
            "invalid_source",
            "host_id is required: the id of a configured peer (volmgr serve --peer HOST_ID=URL)",
        )
        .field("host_id")),
        (Some(host), None) => match peers.url(host) {
            Some(base) => Ok(Source {
                base: base.to_owned(),
                peer: Some(host.to_owned()),
            }),
            None => Err(ApiError::bad_request(
                "unknown_host",
                format!(
                    "unknown host {:?}: not a configured peer of this agent (volmgr serve --peer HOST_ID=URL)",
                    sanitize(host)
                ),
            )
            .field("host_id")),
        },
        (None, Some(source)) => {
            let base = base_url(source).map_err(|why| {
                ApiError::bad_request(
                    "invalid_source",
                    format!("invalid source {:?}: {why}", sanitize(source)),
                )
                .field("source")
            })?;
            if let Some(host) = peers.host_of(&base) {
                return Ok(Source {
                    peer: Some(host.to_owned()),
                    base,
                });
            }
            if shared.options.allow_any_source {
                return Ok(Source { base, peer: None });
            }
            Err(ApiError::bad_request(
                "source_not_allowed",
                format!(
                    "source {base} is not a configured peer: pull by host_id from a peer \
                     (volmgr serve --peer HOST_ID=URL), or start the agent with --allow-any-source"
                ),
            )
            .field("source"))
        }
    }
}

/// Printable ASCII only, at most [`MAX_ECHOED_CHARS`]: what of a peer's or
/// caller's text may appear in a message.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MAX_ECHOED_CHARS)
        .collect();
    if text.chars().count() > MAX_ECHOED_CHARS {
        out.push_str("...");
    }
    out
}

/// Reads at most `limit` bytes of `response`'s body within `deadline`;
/// the rest is never read. Shared with the client.
pub(crate) async fn bounded_prefix(
    response: reqwest::Response,
    limit: usize,
    deadline: Duration,
) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut body = response.bytes_stream();
    let _ = tokio::time::timeout(deadline, async {
        while let Some(Ok(chunk)) = body.next().await {
            let room = limit - prefix.len();
            prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if prefix.len() >= limit {
                break;
            }
        }
    })
    .await;
    prefix
}

/// Maps an error answer of the source agent: its status and, from a JSON
/// error body, only its code and a sanitized, shortened message.
fn source_error(status: reqwest::StatusCode, body: &[u8]) -> ApiError {
    let said = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => format!("{} ({})", sanitize(&e.message), sanitize(e.volmgr_code())),
        Err(_) => "an answer that is not an error object".to_owned(),
    };
    let message = format!("the source agent answered {}: {said}", status.as_u16());
    match status.as_u16() {
        404 => ApiError::new(StatusCode::NOT_FOUND, "source_not_found", message),
        409 => ApiError::new(StatusCode::CONFLICT, "source_conflict", message),
        300..=399 => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_failed",
            format!(
                "the source agent answered {} (a redirect, never followed)",
                status.as_u16()
            ),
        ),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "source_failed", message),
    }
}

/// A pull's progress: bytes received, and the stream's size if the source
/// announced it.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub bytes: Arc<AtomicU64>,
    pub total: OnceLock<u64>,
}

impl Progress {
    fn now(&self) -> PullProgress {
        PullProgress {
            bytes: self.bytes.load(Ordering::Relaxed),
            total: self.total.get().copied(),
        }
    }
}

/// The pull itself: ask the source's send endpoint with our haves, count
/// the bytes, feed the stream into the manager's receive; all under the
/// pull's limits (a slot, a minimum rate, a deadline, cancellation).
pub(crate) async fn run_pull(
    shared: Arc<Shared>,
    manager: Manager,
    target: String,
    source: Source,
    snapshot_id: String,
    haves: Vec<String>,
    progress: Arc<Progress>,
) -> Result<PullResponse, ApiError> {
    let ticket = shared.pulls.register(&target, &shared.transfers)?;
    let limits = &shared.options.limits;
    let watch = Watch::new(&ticket, limits);
    let url = format!("{}/storage/volumes/{snapshot_id}/send", source.base);
    // An interrupted pull into this target left a resume token: hand it
    // back; the source continues the stream if the token fits.
    let resume_token = manager
        .volume(&target)?
        .details
        .get(DETAIL_RESUME_TOKEN)
        .cloned();
    let handed_token = resume_token.is_some();
    tracing::info!(%url, peer = ?source.peer, haves = haves.len(), resume = handed_token, "pulling");
    // The source sends holes as holes only if asked (an older source
    // ignores the header; either form is read here).
    let mut request = shared
        .http
        .post(&url)
        .header(STREAM_FEATURES_HEADER, FEATURE_SPARSE)
        .json(&SendRequest {
            haves,
            resume_token,
        });
    if source.peer.is_some()
        && let Some(token) = &shared.options.token
    {
        request = request.bearer_auth(token);
    }
    // A send is a read: asking again is safe. Once, for a pooled
    // connection the source closed after a broken transfer.
    let again = request.try_clone();
    let asked = async {
        match (request.send().await, again) {
            (Ok(response), _) => Ok(response),
            (Err(e), Some(again)) if !e.is_timeout() => {
                tracing::debug!(error = %e, "asking the source again");
                again.send().await
            }
            (Err(e), _) => Err(e),
        }
    };
    let response = tokio::select! {
        stop = watch.stopped() => return Err(stop.error(limits, false)),
        asked = asked => asked,
    }
    .map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_unreachable",
            format!("cannot reach {url}: {}", describe_transport_error(&e)),
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        let body = bounded_prefix(response, MAX_SOURCE_ERROR_BYTES, SOURCE_ERROR_DEADLINE).await;
        return Err(source_error(status, &body));
    }
    if let Some(total) = response
        .headers()
        .get(STREAM_SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        let _ = progress.total.set(total);
    }
    let source_says_resumed = response
        .headers()
        .get(RESUMED_HEADER)
        .is_some_and(|v| v.as_bytes() == b"true");
    let meta = Meta::from([
        (META_PULL_SOURCE.to_owned(), source.base.clone()),
        (META_PULL_SNAPSHOT.to_owned(), snapshot_id.clone()),
    ]);
    // The stream's first bytes, to judge a ZFS stream's own header.
    let head = Arc::new(Mutex::new(Vec::new()));
    let head_in = head.clone();
    let chunks = response.bytes_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            let mut head = head_in
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let room = ZFS_HEADER_BYTES.saturating_sub(head.len());
            head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        chunk
    });
    let chunks = watch.watch(Box::pin(chunks), progress.bytes.clone());
    let reader = StreamReader::new(chunks);
    let snapshot = match manager.receive_snapshot_with(&target, meta, reader).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let kept = matches!(
                e,
                ManagerError::Provider {
                    error: ProviderError::Suspended { .. },
                    ..
                }
            );
            return Err(match watch.stopped_by() {
                Some(stop) => stop.error(limits, kept),
                None => receive_error(e, &url),
            });
        }
    };
    drop(ticket);
    let bytes = progress.bytes.load(Ordering::Relaxed);
    let head = head
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let resumed = handed_token
        && source_says_resumed
        && stream_continues(&manager, &snapshot.provider, &head);
    tracing::info!(snapshot = %snapshot.id, bytes, resumed, "pulled");
    Ok(PullResponse {
        snapshot: VolumeInfo::from(&snapshot),
        bytes,
        resumed,
    })
}

/// Bytes of a ZFS stream's begin record (`zfs::parse_begin` reads them).
const ZFS_HEADER_BYTES: usize = 312;

/// Whether the stream this agent received continued its partial receive.
/// Only a provider with resumable receives ever held one (the pull handed
/// its token over). On ZFS the stream's own begin record says so (and
/// `zfs recv` accepts a resuming stream only on top of the partial receive
/// of the same snapshot); other providers with resumable receives (the
/// simulated one) are judged by the source's answer.
fn stream_continues(manager: &Manager, provider: &str, head: &[u8]) -> bool {
    let kind = manager
        .providers()
        .into_iter()
        .find(|p| p.id == provider)
        .map(|p| p.kind);
    match kind.as_deref() {
        Some(crate::provider::zfs::KIND) => {
            crate::provider::zfs::parse_begin(head).is_ok_and(|h| h.resuming)
        }
        Some(crate::provider::dir::KIND | crate::provider::btrfs::KIND) => false,
        _ => true,
    }
}

fn receive_error(e: ManagerError, url: &str) -> ApiError {
    match e {
        ManagerError::Provider {
            error: error @ ProviderError::Suspended { .. },
            ..
        } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "transfer_interrupted",
            format!(
                "the transfer from {url} broke; the partial receive is kept: pull again to resume ({error})"
            ),
        ),
        ManagerError::Provider {
            error: ProviderError::Stream(why),
            ..
        } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_stream",
            format!("the source's stream was refused: {why}"),
        ),
        ManagerError::Stream(why) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_stream_failed",
            format!("the transfer from {url} broke: {why}"),
        ),
        other => other.into(),
    }
}

/// Resumes every pull that was interrupted (by a broken transfer, or by a
/// crash that reconciliation recorded as resumable): a data volume whose
/// details hold a resume token and the pull's source. Run once when the
/// agent becomes ready. The source must still be allowed (a configured
/// peer, or any where arbitrary sources are allowed). A pull that fails for
/// a transient reason (the source is unreachable, the transfer broke again)
/// stays resumable; any other failure discards the partial receive, so it
/// never blocks the volume.
pub(crate) async fn resume_interrupted_pulls(shared: Arc<Shared>) {
    let Ok(manager) = shared.manager() else {
        return;
    };
    for v in manager.volumes() {
        let (Some(_), Some(source), Some(snapshot)) = (
            v.details.get(DETAIL_RESUME_TOKEN),
            v.details.get(DETAIL_RESUME_SOURCE),
            v.details.get(DETAIL_RESUME_SNAPSHOT),
        ) else {
            continue;
        };
        let span = tracing::info_span!("resume-pull", volume = %v.id, %source, %snapshot);
        let pulled = async {
            let source = resolve(&shared, None, Some(source))?;
            validate::id(snapshot).map_err(|why| ApiError::bad_request("invalid_id", why))?;
            let haves = manager.list_haves(&v.id)?;
            let progress = Arc::new(Progress::default());
            run_pull(
                shared.clone(),
                manager.clone(),
                v.id.clone(),
                source,
                snapshot.clone(),
                haves,
                progress,
            )
            .await
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match pulled {
            Ok(done) => tracing::info!(
                bytes = done.bytes,
                resumed = done.resumed,
                snapshot = %done.snapshot.id,
                "interrupted pull finished"
            ),
            Err(e)
                if matches!(
                    e.code,
                    "transfer_interrupted"
                        | "source_unreachable"
                        | "source_stream_failed"
                        | "transfer_stalled"
                        | "transfer_deadline"
                        | "too_many_pulls"
                        | "busy"
                        | "stopping"
                ) =>
            {
                tracing::warn!(code = e.code, error = %e.message, "interrupted pull kept resumable");
            }
            Err(e) => {
                tracing::warn!(code = e.code, error = %e.message, "interrupted pull cannot be resumed; discarding its partial receive");
                if let Err(e) = manager.abort_receive(&v.id).await {
                    tracing::error!(error = %e, "discarding the partial receive failed");
                }
            }
        }
    }
}

/// Pulls snapshot `snapshot_id` of the agent named by `host_id` (or
/// `source`) into data volume `{id}`. With `Accept: text/event-stream` the
/// answer is a stream of `progress` events and one `done` (or `error`)
/// event.
pub(crate) async fn pull_snapshot(
    State(shared): State<Arc<Shared>>,
    Id(id): Id,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    note("pull", &id);
    let req: PullRequest = body.json()?;
    validate::id(&req.snapshot_id).map_err(|why| {
        ApiError::bad_request(
            "invalid_id",
            format!(
                "invalid snapshot_id {:?}: {why}",
                sanitize(&req.snapshot_id)
            ),
        )
        .field("snapshot_id")
    })?;
    let source = resolve(&shared, req.host_id.as_deref(), req.source.as_deref())?;
    let manager = shared.manager()?;
    require(&manager, &id, VolumeKind::Data)?;
    let haves = manager.list_haves(&id)?;
    let progress = Arc::new(Progress::default());
    let job = shared.tracker.spawn(
        run_pull(
            shared.clone(),
            manager,
            id,
            source,
            req.snapshot_id,
            haves,
            progress.clone(),
        )
        .instrument(tracing::Span::current()),
    );
    if !wants_event_stream(&headers) {
        let result = job.await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("pull failed: {e}"),
            )
        })??;
        return Ok(Json(result).into_response());
    }
    let mut tick = tokio::time::interval(shared.options.pull_progress_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frames = stream::unfold(Some((job, tick)), move |state| {
        let progress = progress.clone();
        async move {
            let (mut job, mut tick) = state?;
            tokio::select! {
                biased;
                result = &mut job => {
                    let frame = match result {
                        // The last progress (with the total, which a
                        // fast pull never showed), then the result.
                        Ok(Ok(done)) => [
                            frame_named(events::PROGRESS, &progress.now()),
                            frame_named(events::DONE, &done),
                        ]
                        .concat()
                        .into(),
                        Ok(Err(e)) => frame_named(events::ERROR, &ErrorEvent {
                            status: e.status.as_u16(),
                            error: e.body(),
                        }),
                        Err(e) => {
                            let e = ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "internal",
                                format!("pull failed: {e}"),
                            );
                            frame_named(events::ERROR, &ErrorEvent {
                                status: e.status.as_u16(),
                                error: e.body(),
                            })
                        }
                    };
                    Some((frame, None))
                }
                _ = tick.tick() => {
                    Some((frame_named(events::PROGRESS, &progress.now()), Some((job, tick))))
                }
            }
        }
    });
    Ok(super::events::response(
        frames,
        shared.options.event_keep_alive,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_error_echoes_only_a_short_sanitized_message() {
        let hostile = format!(
            r#"{{"code":"x","message":"\u001b[31mred\u202e {} end","volmgr_code":"evil\nline"}}"#,
            "A".repeat(5000)
        );
        let e = source_error(
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            hostile.as_bytes(),
        );
        assert_eq!((e.status.as_u16(), e.code), (502, "source_failed"));
        assert!(e.message.len() < 600, "{}", e.message.len());
        assert!(
            e.message.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
            "{:?}",
            e.message
        );
        let e = source_error(
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            b"<html>secret</html>",
        );
        assert!(!e.message.contains("secret"), "{}", e.message);
        let e = source_error(reqwest::StatusCode::TEMPORARY_REDIRECT, b"");
        assert!(e.message.contains("never followed"), "{}", e.message);
    }
}
