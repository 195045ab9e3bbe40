//! The routes of the HTTP API (Flynn's volume API plus fork and abort of a
//! partial receive) and their handlers. Every handler validates ids and
//! bodies itself (400 with a code, never a 500 for bad input), then calls
//! the manager's public API. Every success is 200, as Flynn's client
//! requires (DELETE included, with an empty body).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures_util::{StreamExt, stream};
use serde::de::DeserializeOwned;
use tokio_util::io::ReaderStream;
use tracing::Instrument;

use super::api::{
    AddProviderRequest, CreateVolumeRequest, ForkRequest, Health, ProviderInfo, SendRequest,
    SnapshotRequest, Stats, VOLUME_TYPE_DATA, VolumeInfo,
};
use super::conn::{ClientAddr, StallLimited};
use super::error::ApiError;
use super::events;
use super::limits::format_duration;
use super::pull::pull_snapshot;
use super::server::Shared;
use super::slots::Full;
use crate::manager::{Manager, ManagerError};
use crate::provider::SendOptions;
use crate::state::{VolumeKind, VolumeStatus};
use crate::validate;

type AppState = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
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
pub(crate) fn note(op: &str, volume: &str) {
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

/// The address of the client that sent the request (`None` when the
/// router is served by something other than the agent's accept loop).
pub(crate) struct Client(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(
            parts.extensions.get::<ClientAddr>().map(|c| c.0.ip()),
        ))
    }
}

/// A request body, size-limited and read within the header-read timeout,
/// parsed as JSON whatever its content type (curl's `-d` says
/// form-urlencoded).
pub(crate) struct RawBody(pub Bytes);

impl FromRequest<Arc<Shared>> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, shared: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let limit = shared.options.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than the limit of {}",
                    byte_size(limit)
                ),
            )
        };
        // A declared length over the limit is refused from the head alone:
        // reading the body would invite it (hyper answers `Expect:
        // 100-continue` once the body is read) or wait for it (408).
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let timeout = shared.options.limits.header_read_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, shared)).await;
        match read {
            Ok(Ok(bytes)) => Ok(RawBody(bytes)),
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large()),
            Ok(Err(e)) => Err(ApiError::bad_request(
                "bad_body",
                format!("the request body could not be read: {}", e.body_text()),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} (--header-read-timeout)",
                    format_duration(timeout)
                ),
            )),
        }
    }
}

/// `64 KiB`, `1 MiB`, or bytes.
fn byte_size(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// What a JSON body's decoder said, in the API's words: `bad_json` for
/// bytes that are not JSON, `bad_body` for JSON of the wrong shape, with
/// serde's Rust type names (`struct SnapshotRequest`) said in JSON's terms.
pub(crate) fn json_error(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let mut message = e.to_string();
    for (rust, json) in [
        ("struct ", "a JSON object"),
        ("tuple struct ", "a JSON array"),
        ("enum ", "one of the documented values"),
        ("unit struct ", "null"),
    ] {
        // `expected struct Name` -> `expected a JSON object`.
        while let Some(at) = message.find(&format!("expected {rust}")) {
            let name_at = at + "expected ".len() + rust.len();
            let name_len = message[name_at..]
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(message.len() - name_at);
            message.replace_range(at + "expected ".len()..name_at + name_len, json);
        }
    }
    match e.classify() {
        Category::Data => ApiError::bad_request(
            "bad_body",
            format!("the JSON body does not have the expected shape: {message}"),
        ),
        _ => ApiError::bad_request("bad_json", format!("malformed JSON body: {message}")),
    }
}

impl RawBody {
    fn is_empty(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }

    /// Whether the body is JSON `null` (Go encodes a nil value so).
    fn is_null(&self) -> bool {
        self.0.trim_ascii() == b"null"
    }

    /// The body as `T`; an empty body or `null` is `T::default()`.
    pub(crate) fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.is_empty() || self.is_null() {
            return Ok(T::default());
        }
        self.json()
    }

    /// The body, a JSON object, as `T` (serde would also take an array
    /// for a struct: refused, the API's requests are objects).
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.0.trim_ascii_start().starts_with(b"[") {
            return Err(ApiError::bad_request(
                "bad_body",
                "the JSON body does not have the expected shape: expected a JSON object, \
                 not an array",
            ));
        }
        self.json_value()
    }

    /// The body as `T`, whatever JSON value it is.
    pub(crate) fn json_value<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.is_empty() {
            return Err(ApiError::bad_request("bad_json", "a JSON body is required"));
        }
        serde_json::from_slice(&self.0).map_err(|e| json_error(&e))
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

async fn stats(State(shared): AppState) -> Result<Json<Stats>, ApiError> {
    let s = shared.manager()?.stats();
    Ok(Json(Stats {
        durable_seq: s.durable_seq,
        checkpoint_seq: s.checkpoint_seq,
        checkpoints: s.checkpoints,
        checkpoint_failures: s.checkpoint_failures,
        operations: s.operations,
        journal_syncs: s.syncs,
        provider_syncs: s.provider_syncs,
    }))
}

/// Flynn's `ProviderSpec`: an empty id gets a UUID, the kind is required.
async fn add_provider(
    State(shared): AppState,
    body: RawBody,
) -> Result<Json<ProviderInfo>, ApiError> {
    let mut req: AddProviderRequest = body.json()?;
    if req.id.is_empty() {
        req.id = uuid::Uuid::new_v4().to_string();
    }
    if req.kind.is_empty() {
        return Err(ApiError::bad_request("invalid_input", "kind must not be blank").field("kind"));
    }
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
    // Flynn's client sends its whole volume.Info: an empty id, type "" or
    // "data", its zero created_at (ignored).
    let id = req.id.as_deref().filter(|id| !id.is_empty());
    match req.volume_type.as_deref() {
        None | Some("" | VOLUME_TYPE_DATA) => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "unsupported_type",
                format!(
                    "volume type {:?} is not supported: only \"data\" volumes \
                     (imports of squashfs and ext2 images do not exist here)",
                    other.chars().take(64).collect::<String>()
                ),
            )
            .field("type"));
        }
    }
    note("create", id.unwrap_or(""));
    let manager = shared.manager()?;
    let v = match req.capacity_bytes {
        None => manager.create_volume(&provider, id, req.meta).await?,
        Some(bytes) => {
            manager
                .create_volume_with(
                    &provider,
                    id,
                    req.meta,
                    Some(bytes),
                    crate::provider::ProviderConfig::default(),
                )
                .await?
        }
    };
    if id.is_none() {
        // The id the manager chose; only then (a text log line shows a
        // field recorded again twice).
        tracing::Span::current().record("volume", v.id.as_str());
    }
    Ok(Json(VolumeInfo::from(&v)))
}

async fn list_volumes(State(shared): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    note("list", "");
    let manager = shared.manager()?;
    if wants_event_stream(&headers) {
        let limits = &shared.options.limits;
        let slot = shared.subscribers.try_take(None).map_err(|_| {
            ApiError::unavailable(
                "too_many_subscribers",
                format!(
                    "{} event-stream subscribers are connected, the most this agent serves \
                     (--max-subscribers): retry later",
                    limits.max_subscribers
                ),
            )
        })?;
        // Flynn's resuming stream sends Last-Event-Id: ignored, every
        // connection starts with the whole listing (see events.rs). The
        // subscriber's slot lives as long as its stream.
        let frames = events::volume_events(&manager, EVENTS_PENDING_MAX)
            .map(move |event| {
                let _held = &slot;
                events::frame(&event)
            })
            .take_until(shared.stopping.clone().cancelled_owned());
        return Ok(events::response(frames, shared.options.event_keep_alive));
    }
    let list: Vec<VolumeInfo> = manager.volumes().iter().map(VolumeInfo::from).collect();
    Ok(Json(list).into_response())
}

async fn get_volume(State(shared): AppState, Id(id): Id) -> Result<Json<VolumeInfo>, ApiError> {
    note("inspect", &id);
    let v = shared.manager()?.volume(&id)?;
    Ok(Json(VolumeInfo::from(&v)))
}

/// 200 with an empty body, as Flynn's server answers.
async fn destroy_volume(State(shared): AppState, Id(id): Id) -> Result<StatusCode, ApiError> {
    note("destroy", &id);
    shared.manager()?.destroy_volume(&id).await?;
    Ok(StatusCode::OK)
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

/// Most haves a send request may list.
const MAX_HAVES: usize = 4096;

/// The haves of a send: Flynn's bare JSON array of raw JSON values (`null`
/// or an empty body: none), or `{"haves": [...], "resume_token": ...}`.
/// Only strings can be volmgr's haves (GUIDs); other values (Flynn's ZFS
/// provider sends `{"snap_id"}` objects) match nothing.
fn parse_send(body: &RawBody) -> Result<SendRequest, ApiError> {
    if body.is_empty() || body.is_null() {
        return Ok(SendRequest::default());
    }
    let request = if body.0.trim_ascii_start().starts_with(b"[") {
        let values: Vec<serde_json::Value> = body.json_value()?;
        SendRequest {
            haves: values
                .into_iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            resume_token: None,
        }
    } else {
        body.json::<SendRequest>()?
    };
    if request.haves.len() > MAX_HAVES {
        return Err(
            ApiError::bad_request("invalid_input", format!("more than {MAX_HAVES} haves"))
                .field("haves"),
        );
    }
    Ok(request)
}

/// Cancels the pull into volume `{id}` if one is in flight (it answers
/// 409 `cancelled` once its outcome is journaled), then discards the
/// resumable partial receive `{id}` holds (200 with an empty body; also
/// when it holds none).
async fn abort_receive(State(shared): AppState, Id(id): Id) -> Result<StatusCode, ApiError> {
    note("abort-receive", &id);
    let manager = shared.manager()?;
    if let Some(ended) = shared.pulls.cancel(&id) {
        tracing::info!("cancelling the pull in flight");
        ended.cancelled().await;
    }
    manager.abort_receive(&id).await?;
    Ok(StatusCode::OK)
}

/// 409 unless `id` is a live volume of `kind`.
pub(crate) fn require(manager: &Manager, id: &str, kind: VolumeKind) -> Result<(), ApiError> {
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
/// caller's haves). Flynn's client asks with `Accept:
/// application/vnd.zfs.snapshot-stream` (volmgr's does not need to); the
/// answer is `application/octet-stream` either way. The stream is not buffered: the provider writes into a
/// pipe the response body reads. Errors found before the first byte are
/// JSON answers; a failure mid-stream aborts the response, so the receiver
/// sees a broken transfer, never a short one.
///
/// The stream's form is the provider's oldest unless the request's
/// `x-volmgr-stream-features` header ([`STREAM_FEATURES_HEADER`]) names
/// more the caller reads: `sparse` (the directory provider's version 2,
/// holes sent as holes). Flynn's client sends no such header and gets the
/// stream it always got, byte for byte.
///
/// A send holds a slot (`--max-sends`, `--max-sends-per-client`) and a
/// shared claim on its snapshot (a destroy of it is 409 `busy` meanwhile)
/// for as long as its body lives; a client that stops reading for
/// `--write-timeout` loses it.
async fn send(
    State(shared): AppState,
    Id(id): Id,
    Client(client): Client,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    note("send", &id);
    let SendRequest {
        haves,
        resume_token,
    } = parse_send(&body)?;
    let options = stream_features(&headers);
    let manager = shared.manager()?;
    require(&manager, &id, VolumeKind::Snapshot)?;
    let limits = &shared.options.limits;
    let slot = shared.sends.try_take(client).map_err(|full| match full {
        Full::All(max) => ApiError::unavailable(
            "too_many_sends",
            format!(
                "{max} sends are running, the most this agent serves at once (--max-sends): \
                 retry later"
            ),
        ),
        Full::Client(max) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sends",
            format!(
                "this client has {max} sends running, the most one client gets at once \
                 (--max-sends-per-client): retry later"
            ),
        ),
    })?;
    // Decided before the first byte, so the answer can say so.
    let resume_token = match resume_token {
        Some(token) if manager.resume_fits(&id, &token).await? => Some(token),
        _ => None,
    };
    let resumed = resume_token.is_some();
    // The stream's size, if the provider knows it before sending (a hint
    // for progress: the receiver never relies on it).
    let size = match &resume_token {
        None => manager
            .send_size_with(&id, &haves, &options)
            .await
            .unwrap_or(None),
        Some(_) => None,
    };
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    // A body nobody polls (a server without write timeouts) still lets go.
    let writer = StallLimited::new(writer, limits.write_timeout);
    let send_id = id.clone();
    let task = shared.tracker.spawn(
        async move {
            manager
                .send_snapshot_with(&send_id, &haves, resume_token.as_deref(), &options, writer)
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
        .chain(tail)
        .map(move |chunk| {
            // The send's slot lives as long as its body.
            let _held = &slot;
            chunk
        });
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::HeaderName::from_static(RESUMED_HEADER),
                if resumed { "true" } else { "false" },
            ),
        ],
        Body::from_stream(body),
    )
        .into_response();
    if let Some(size) = size {
        response.headers_mut().insert(
            header::HeaderName::from_static(STREAM_SIZE_HEADER),
            header::HeaderValue::from(size),
        );
    }
    Ok(response)
}

/// Request header of a send: the stream features the caller reads, a
/// comma-separated list (`sparse`); names this agent does not know are
/// ignored, so a newer caller can ask an older source.
pub const STREAM_FEATURES_HEADER: &str = "x-volmgr-stream-features";

/// The stream feature of [`STREAM_FEATURES_HEADER`]: holes sent as holes.
pub const FEATURE_SPARSE: &str = "sparse";

/// The send options a request's [`STREAM_FEATURES_HEADER`] asks for
/// (every value of the header, each a comma-separated list of names,
/// compared without case or surrounding blanks).
pub(crate) fn stream_features(headers: &HeaderMap) -> SendOptions {
    let sparse = headers
        .get_all(STREAM_FEATURES_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case(FEATURE_SPARSE));
    SendOptions::default().with_sparse(sparse)
}

/// Answer header of a send: the stream's size in bytes, when the provider
/// knows it before sending. A hint for progress only.
pub const STREAM_SIZE_HEADER: &str = "x-volmgr-stream-size";

/// Events a subscriber keeps while its listing is streamed (changes to
/// volumes it already listed); more, and it gets `lagged`.
const EVENTS_PENDING_MAX: usize = 1024;

/// Answer header of a send: `true` if the stream continues the caller's
/// interrupted one (its resume token fitted), else `false`.
pub const RESUMED_HEADER: &str = "x-volmgr-resumed";

pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}
