//! The routes of the HTTP API (Flynn's volume API plus fork) and their
//! handlers. Every handler validates ids and bodies itself (400 with a code,
//! never a 500 for bad input), then calls the manager's public API.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures_util::{Stream, StreamExt, stream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::io::{ReaderStream, StreamReader};
use tracing::Instrument;

use super::api::{
    AddProviderRequest, CreateVolumeRequest, ErrorBody, ErrorEvent, ForkRequest, Health, IdEvent,
    LaggedEvent, ProviderInfo, PullProgress, PullRequest, PullResponse, SendRequest,
    SnapshotRequest, VolumeInfo, events,
};
use super::error::ApiError;
use super::server::Shared;
use crate::manager::{Manager, ManagerError};
use crate::provider::ProviderError;
use crate::state::{
    DETAIL_RESUME_SNAPSHOT, DETAIL_RESUME_SOURCE, DETAIL_RESUME_TOKEN, Event, META_PULL_SNAPSHOT,
    META_PULL_SOURCE, Meta, VolumeKind, VolumeStatus,
};
use crate::validate;

type AppState = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/storage/providers", post(add_provider))
        .route(
            "/storage/providers/{provider_id}/volumes",
            post(create_volume),
        )
        .route("/storage/volumes", get(list_volumes))
        .route(
            "/storage/volumes/{id}",
            get(get_volume).delete(destroy_volume),
        )
        .route("/storage/volumes/{id}/snapshot", put(snapshot))
        .route("/storage/volumes/{id}/fork", post(fork))
        .route("/storage/volumes/{id}/send", get(send).post(send))
        .route("/storage/volumes/{id}/pull_snapshot", post(pull_snapshot))
        .route("/storage/volumes/{id}/receive", delete(abort_receive))
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// Records the operation and its volume on the request's span.
fn note(op: &str, volume: &str) {
    let span = tracing::Span::current();
    span.record("op", op);
    if !volume.is_empty() {
        span.record("volume", volume);
    }
}

/// A validated id from the path (`{id}` or `{provider_id}`).
pub(crate) struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        validate::id(&id).map_err(|why| {
            ApiError::bad_request("invalid_id", format!("invalid id {id:?}: {why}"))
        })?;
        Ok(Id(id))
    }
}

/// A request body, size-limited, parsed as JSON whatever its content type
/// (curl's `-d` says form-urlencoded).
pub(crate) struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        e.body_text(),
                    )
                } else {
                    ApiError::bad_request("bad_body", e.body_text())
                }
            })
    }
}

impl RawBody {
    fn is_empty(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }

    /// The body as `T`; an empty body is `T::default()`.
    fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            return Ok(T::default());
        }
        self.json()
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            return Err(ApiError::bad_request("bad_json", "a JSON body is required"));
        }
        serde_json::from_slice(&self.0)
            .map_err(|e| ApiError::bad_request("bad_json", format!("malformed JSON body: {e}")))
    }
}

async fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn healthz(State(shared): AppState) -> Result<Json<Health>, ApiError> {
    match shared.phase_error() {
        Some(e) => Err(e),
        None => Ok(Json(Health {
            status: "ok".into(),
        })),
    }
}

async fn add_provider(
    State(shared): AppState,
    body: RawBody,
) -> Result<Json<ProviderInfo>, ApiError> {
    let req: AddProviderRequest = body.json()?;
    note("add-provider", "");
    tracing::Span::current().record("volume", req.id.as_str());
    let manager = shared.manager()?;
    manager
        .add_provider(&req.id, &req.kind, req.config.clone())
        .await?;
    let info = manager
        .providers()
        .iter()
        .find(|p| p.id == req.id)
        .map(ProviderInfo::from)
        .unwrap_or(ProviderInfo {
            id: req.id,
            kind: req.kind,
            config: req.config,
        });
    Ok(Json(info))
}

async fn create_volume(
    State(shared): AppState,
    Id(provider): Id,
    body: RawBody,
) -> Result<Json<VolumeInfo>, ApiError> {
    let req: CreateVolumeRequest = body.json_or_default()?;
    note("create", req.id.as_deref().unwrap_or(""));
    let manager = shared.manager()?;
    let v = match req.capacity_bytes {
        None => {
            manager
                .create_volume(&provider, req.id.as_deref(), req.meta)
                .await?
        }
        Some(bytes) => {
            manager
                .create_volume_with(
                    &provider,
                    req.id.as_deref(),
                    req.meta,
                    Some(bytes),
                    Default::default(),
                )
                .await?
        }
    };
    note("create", &v.id);
    Ok(Json(VolumeInfo::from(&v)))
}

async fn list_volumes(State(shared): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    note("list", "");
    let manager = shared.manager()?;
    if wants_event_stream(&headers) {
        return Ok(volume_events(&manager, &shared).into_response());
    }
    let list: Vec<VolumeInfo> = manager.volumes().iter().map(VolumeInfo::from).collect();
    Ok(Json(list).into_response())
}

async fn get_volume(State(shared): AppState, Id(id): Id) -> Result<Json<VolumeInfo>, ApiError> {
    note("inspect", &id);
    let v = shared.manager()?.volume(&id)?;
    Ok(Json(VolumeInfo::from(&v)))
}

async fn destroy_volume(State(shared): AppState, Id(id): Id) -> Result<StatusCode, ApiError> {
    note("destroy", &id);
    shared.manager()?.destroy_volume(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot(
    State(shared): AppState,
    Id(id): Id,
    body: RawBody,
) -> Result<Json<VolumeInfo>, ApiError> {
    note("snapshot", &id);
    let req: SnapshotRequest = body.json_or_default()?;
    let v = shared.manager()?.create_snapshot(&id, req.meta).await?;
    Ok(Json(VolumeInfo::from(&v)))
}

async fn fork(
    State(shared): AppState,
    Id(id): Id,
    body: RawBody,
) -> Result<Json<VolumeInfo>, ApiError> {
    note("fork", &id);
    let req: ForkRequest = body.json_or_default()?;
    let v = shared
        .manager()?
        .fork_volume(&id, req.id.as_deref(), req.meta)
        .await?;
    Ok(Json(VolumeInfo::from(&v)))
}

/// `{"haves": [...], "resume_token": ...}`, a bare JSON array of haves, or
/// an empty body (no haves).
fn parse_send(body: &RawBody) -> Result<SendRequest, ApiError> {
    if body.is_empty() {
        return Ok(SendRequest::default());
    }
    if let Ok(haves) = serde_json::from_slice::<Vec<String>>(&body.0) {
        return Ok(SendRequest {
            haves,
            resume_token: None,
        });
    }
    body.json::<SendRequest>()
}

/// Discards the resumable partial receive volume `{id}` holds (204; also
/// when it holds none).
async fn abort_receive(State(shared): AppState, Id(id): Id) -> Result<StatusCode, ApiError> {
    note("abort-receive", &id);
    shared.manager()?.abort_receive(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 409 unless `id` is a live volume of `kind`.
fn require(manager: &Manager, id: &str, kind: VolumeKind) -> Result<(), ApiError> {
    let v = manager.volume(id)?;
    if v.status == VolumeStatus::Lost {
        return Err(ManagerError::VolumeLost(id.to_owned()).into());
    }
    if v.kind != kind {
        return Err(ManagerError::WrongKind {
            id: id.to_owned(),
            expected: kind,
        }
        .into());
    }
    Ok(())
}

/// Streams snapshot `id` (incremental from the newest snapshot among the
/// caller's haves). The stream is not buffered: the provider writes into a
/// pipe the response body reads. Errors found before the first byte are
/// JSON answers; a failure mid-stream aborts the response, so the receiver
/// sees a broken transfer, never a short one.
async fn send(State(shared): AppState, Id(id): Id, body: RawBody) -> Result<Response, ApiError> {
    note("send", &id);
    let SendRequest {
        haves,
        resume_token,
    } = parse_send(&body)?;
    let manager = shared.manager()?;
    require(&manager, &id, VolumeKind::Snapshot)?;
    // Decided before the first byte, so the answer can say so.
    let resume_token = match resume_token {
        Some(token) if manager.resume_fits(&id, &token).await? => Some(token),
        _ => None,
    };
    let resumed = resume_token.is_some();
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let send_id = id.clone();
    let task = shared.tracker.spawn(
        async move {
            manager
                .send_snapshot_resuming(&send_id, &haves, resume_token.as_deref(), writer)
                .await
        }
        .instrument(tracing::Span::current()),
    );
    let mut chunks = ReaderStream::with_capacity(reader, 64 * 1024);
    let first = chunks.next().await;
    let first = match first {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("reading the stream: {e}"),
            ));
        }
        None => match task.await {
            Ok(Ok(_)) => {
                return Ok((
                    [
                        (header::CONTENT_TYPE, "application/octet-stream"),
                        (
                            header::HeaderName::from_static(RESUMED_HEADER),
                            if resumed { "true" } else { "false" },
                        ),
                    ],
                    Body::empty(),
                )
                    .into_response());
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("send failed: {e}"),
                ));
            }
        },
    };
    let span = tracing::Span::current();
    let tail = stream::once(async move {
        match task.await {
            Ok(Ok(stats)) => {
                span.in_scope(|| {
                    tracing::info!(
                        bytes = stats.bytes,
                        incremental = stats.incremental,
                        "snapshot sent"
                    );
                });
                None
            }
            Ok(Err(e)) => {
                span.in_scope(|| tracing::error!(error = %e, "send failed mid-stream"));
                Some(Err(io::Error::other(e.to_string())))
            }
            Err(e) => Some(Err(io::Error::other(e.to_string()))),
        }
    })
    .filter_map(|item| async move { item });
    let body = stream::once(async move { Ok::<_, io::Error>(first) })
        .chain(chunks)
        .chain(tail);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::HeaderName::from_static(RESUMED_HEADER),
                if resumed { "true" } else { "false" },
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Answer header of a send: `true` if the stream continues the caller's
/// interrupted one (its resume token fitted), else `false`.
pub const RESUMED_HEADER: &str = "x-volmgr-resumed";

/// Checks a pull's source: an `http://host[:port][/prefix]` base URL.
fn source_base(source: &str) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            "invalid_source",
            format!("invalid source {source:?}: {why}"),
        )
    };
    let url = reqwest::Url::parse(source).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(bad("only http:// sources are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("a base URL has no query, fragment or credentials"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Maps an error answer of the source agent.
fn source_error(status: reqwest::StatusCode, body: &[u8]) -> ApiError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => (
            "unknown".to_owned(),
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    };
    let message = format!("source agent answered {status} {code}: {message}");
    match status.as_u16() {
        404 => ApiError::new(StatusCode::NOT_FOUND, "source_not_found", message),
        409 => ApiError::new(StatusCode::CONFLICT, "source_conflict", message),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "source_failed", message),
    }
}

/// The pull itself: ask the source's send endpoint with our haves, count
/// the bytes, feed the stream into the manager's receive.
async fn run_pull(
    shared: Arc<Shared>,
    manager: Manager,
    target: String,
    base: String,
    snapshot_id: String,
    haves: Vec<String>,
    progress: Arc<AtomicU64>,
) -> Result<PullResponse, ApiError> {
    let url = format!("{base}/storage/volumes/{snapshot_id}/send");
    // An interrupted pull into this target left a resume token: hand it
    // back; the source continues the stream if the token fits.
    let resume_token = manager
        .volume(&target)?
        .details
        .get(DETAIL_RESUME_TOKEN)
        .cloned();
    tracing::info!(%url, haves = haves.len(), resume = resume_token.is_some(), "pulling");
    let mut request = shared.http.post(&url).json(&SendRequest {
        haves,
        resume_token,
    });
    if let Some(token) = &shared.options.token {
        request = request.bearer_auth(token);
    }
    // A send is a read: asking again is safe. Once, for a pooled
    // connection the source closed after a broken transfer.
    let again = request.try_clone();
    let response = match (request.send().await, again) {
        (Ok(response), _) => Ok(response),
        (Err(e), Some(again)) if !e.is_timeout() => {
            tracing::debug!(error = %e, "asking the source again");
            again.send().await
        }
        (Err(e), _) => Err(e),
    }
    .map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_unreachable",
            format!("cannot reach {url}: {e}"),
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(source_error(status, &body));
    }
    let resumed = response
        .headers()
        .get(RESUMED_HEADER)
        .is_some_and(|v| v.as_bytes() == b"true");
    let meta = Meta::from([
        (META_PULL_SOURCE.to_owned(), base.clone()),
        (META_PULL_SNAPSHOT.to_owned(), snapshot_id.clone()),
    ]);
    let counter = progress.clone();
    let chunks = response.bytes_stream().map(move |chunk| match chunk {
        Ok(bytes) => {
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(bytes)
        }
        Err(e) => Err(io::Error::other(e)),
    });
    let reader = StreamReader::new(Box::pin(chunks));
    let snapshot = manager
        .receive_snapshot_with(&target, meta, reader)
        .await
        .map_err(|e| match e {
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
        })?;
    let bytes = progress.load(Ordering::Relaxed);
    tracing::info!(snapshot = %snapshot.id, bytes, "pulled");
    Ok(PullResponse {
        snapshot: VolumeInfo::from(&snapshot),
        bytes,
        resumed,
    })
}

/// Resumes every pull that was interrupted (by a broken transfer, or by a
/// crash that reconciliation recorded as resumable): a data volume whose
/// details hold a resume token and the pull's source. Run once when the
/// agent becomes ready. A pull that fails for a transient reason (the source
/// is unreachable, the transfer broke again) stays resumable; any other
/// failure discards the partial receive, so it never blocks the volume.
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
            let base = source_base(source)?;
            validate::id(snapshot)
                .map_err(|why| ApiError::bad_request("invalid_id", why.to_string()))?;
            let haves = manager.list_haves(&v.id)?;
            let progress = Arc::new(AtomicU64::new(0));
            run_pull(
                shared.clone(),
                manager.clone(),
                v.id.clone(),
                base,
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

/// Pulls snapshot `snapshot_id` of the agent at `source` into data volume
/// `{id}`. With `Accept: text/event-stream` the answer is a stream of
/// `progress` events and one `done` (or `error`) event.
async fn pull_snapshot(
    State(shared): AppState,
    Id(id): Id,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    note("pull", &id);
    let req: PullRequest = body.json()?;
    let base = source_base(&req.source)?;
    validate::id(&req.snapshot_id).map_err(|why| {
        ApiError::bad_request(
            "invalid_id",
            format!("invalid snapshot_id {:?}: {why}", req.snapshot_id),
        )
    })?;
    let manager = shared.manager()?;
    require(&manager, &id, VolumeKind::Data)?;
    let haves = manager.list_haves(&id)?;
    let progress = Arc::new(AtomicU64::new(0));
    let job = shared.tracker.spawn(
        run_pull(
            shared.clone(),
            manager,
            id,
            base,
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
    let events = stream::unfold(Some((job, tick)), move |state| {
        let progress = progress.clone();
        async move {
            let (mut job, mut tick) = state?;
            tokio::select! {
                biased;
                result = &mut job => {
                    let event = match result {
                        Ok(Ok(done)) => sse_json(events::DONE, &done),
                        Ok(Err(e)) => sse_json(events::ERROR, &ErrorEvent {
                            status: e.status.as_u16(),
                            code: e.code.to_owned(),
                            message: e.message,
                        }),
                        Err(e) => sse_json(events::ERROR, &ErrorEvent {
                            status: 500,
                            code: "internal".into(),
                            message: format!("pull failed: {e}"),
                        }),
                    };
                    Some((event, None))
                }
                _ = tick.tick() => {
                    let bytes = progress.load(Ordering::Relaxed);
                    Some((sse_json(events::PROGRESS, &PullProgress { bytes }), Some((job, tick))))
                }
            }
        }
    });
    Ok(Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn sse_json<T: Serialize>(name: &str, data: &T) -> SseEvent {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    SseEvent::default().event(name).data(data)
}

/// Existing volumes as `create` events, a `current` event, then live
/// create/destroy/lost/found events; `lagged` if the subscriber fell behind.
/// The subscription starts before the listing, so nothing falls between.
fn volume_events(
    manager: &Manager,
    shared: &Shared,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
    let rx = manager.subscribe();
    let initial: Vec<VolumeInfo> = manager.volumes().iter().map(VolumeInfo::from).collect();
    let stream = event_stream(initial, rx)
        .map(|(name, data)| Ok(SseEvent::default().event(name).data(data)))
        .take_until(shared.stopping.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn json_text<T: Serialize>(data: &T) -> String {
    serde_json::to_string(data).unwrap_or_else(|_| "{}".into())
}

/// The (event name, JSON data) pairs of the volume event stream.
fn event_stream(
    initial: Vec<VolumeInfo>,
    rx: tokio::sync::broadcast::Receiver<Event>,
) -> impl Stream<Item = (&'static str, String)> {
    let mut first: Vec<(&'static str, String)> = initial
        .iter()
        .map(|v| (events::CREATE, json_text(v)))
        .collect();
    first.push((events::CURRENT, "{}".to_owned()));
    let live = stream::unfold(rx, |mut rx| async move {
        loop {
            let event = match rx.recv().await {
                Ok(Event::Created(v)) => (events::CREATE, json_text(&VolumeInfo::from(&v))),
                Ok(Event::Destroyed { id }) => (events::DESTROY, json_text(&IdEvent { id })),
                Ok(Event::Lost { id }) => (events::LOST, json_text(&IdEvent { id })),
                Ok(Event::Found { id }) => (events::FOUND, json_text(&IdEvent { id })),
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    (events::LAGGED, json_text(&LaggedEvent { missed }))
                }
                Err(RecvError::Closed) => return None,
            };
            return Some((event, rx));
        }
    });
    stream::iter(first).chain(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{VolumeKind, VolumeStatus};

    fn volume(id: &str) -> crate::state::Volume {
        crate::state::Volume {
            id: id.into(),
            provider: "p".into(),
            kind: VolumeKind::Data,
            parent: None,
            meta: Default::default(),
            created_at_ms: 0,
            location: String::new(),
            status: VolumeStatus::Live,
            op: Default::default(),
            details: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_lagged_event_then_live_ones() {
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        for id in ["a", "b", "c", "d"] {
            tx.send(Event::Created(volume(id))).unwrap();
        }
        drop(tx);
        let got: Vec<(&str, String)> = event_stream(vec![VolumeInfo::from(&volume("x"))], rx)
            .collect()
            .await;
        let names: Vec<&str> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["create", "current", "lagged", "create", "create"],
            "{got:?}"
        );
        assert_eq!(got[2].1, r#"{"missed":2}"#);
        assert!(got[3].1.contains(r#""id":"c""#));
        assert!(got[4].1.contains(r#""id":"d""#));
    }
}
