//! A typed client of the agent's HTTP API (the CLI's transport; tests use
//! it too). Plain HTTP only: put TLS in front of an agent that leaves the
//! host, or keep it on loopback. An error answer is read up to
//! [`MAX_ERROR_BODY_BYTES`]; never followed redirects.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{
    AddProviderRequest, CreateVolumeRequest, ErrorBody, ErrorEvent, ForkRequest, PullProgress,
    PullRequest, PullResponse, SendRequest, SnapshotRequest, StringMap, VolumeInfo, events,
};
use super::server::DEFAULT_LISTEN;

/// Most bytes of an error answer read (the rest is never read).
pub const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;
/// Longest time spent reading an error answer.
const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Where a pull comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFrom<'a> {
    /// A peer of the pulling agent, by host id (Flynn's `host_id`).
    Host(&'a str),
    /// An agent's base URL: a peer's, or any where the pulling agent
    /// allows arbitrary sources.
    Url(&'a str),
}

impl PullFrom<'_> {
    fn request(self, snapshot_id: &str) -> PullRequest {
        let (host_id, source) = match self {
            PullFrom::Host(h) => (Some(h.to_owned()), None),
            PullFrom::Url(u) => (None, Some(u.to_owned())),
        };
        PullRequest {
            host_id,
            source,
            snapshot_id: snapshot_id.to_owned(),
        }
    }
}

/// The agent a client talks to by default.
pub fn default_agent_url() -> String {
    format!("http://{DEFAULT_LISTEN}")
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The agent answered with an error status and body.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent could not be reached (refused, timed out, reset).
    Unreachable(String),
    /// The answer did not make sense (not JSON, cut short).
    Protocol(String),
    /// The request could not be built (a bad agent URL).
    Invalid(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api {
                status,
                code,
                message,
            } => write!(f, "{message} ({status} {code})"),
            ClientError::Unreachable(e) => write!(f, "cannot reach the agent: {e}"),
            ClientError::Protocol(e) => write!(f, "unexpected answer from the agent: {e}"),
            ClientError::Invalid(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

// A `map_err` adapter: it takes the error the way `map_err` hands it over.
#[allow(clippy::needless_pass_by_value)]
fn transport(e: reqwest::Error) -> ClientError {
    let described = describe_transport_error(&e);
    if e.is_connect() || e.is_timeout() {
        ClientError::Unreachable(described)
    } else if e.is_builder() {
        ClientError::Invalid(described)
    } else {
        ClientError::Protocol(described)
    }
}

/// What went wrong with a request, cause first: `connection refused`,
/// `timed out`, `no such host`, `connection reset`, ... then the URL (not
/// only reqwest's `error sending request for url (...)`).
pub(crate) fn describe_transport_error(e: &reqwest::Error) -> String {
    let cause = transport_cause(e);
    match e.url() {
        Some(url) => format!("{cause} ({url})"),
        None => cause,
    }
}

fn transport_cause(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            let kind = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
                std::io::ErrorKind::ConnectionReset => Some("connection reset"),
                std::io::ErrorKind::ConnectionAborted => Some("connection aborted"),
                std::io::ErrorKind::TimedOut => Some("timed out"),
                std::io::ErrorKind::HostUnreachable => Some("host unreachable"),
                std::io::ErrorKind::NetworkUnreachable => Some("network unreachable"),
                std::io::ErrorKind::UnexpectedEof => Some("connection closed"),
                _ => None,
            };
            if let Some(kind) = kind {
                return kind.into();
            }
            if is_name_error(&text) {
                return format!("no such host: {text}");
            }
        }
        let text = s.to_string();
        if is_name_error(&text) {
            return format!("no such host: {text}");
        }
        innermost = text;
        source = s.source();
    }
    innermost
}

/// Whether a resolver's message says the name does not resolve.
fn is_name_error(text: &str) -> bool {
    [
        "failed to lookup address",
        "Name or service not known",
        "No address associated",
        "nodename nor servname",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    pub event: String,
    pub data: String,
}

impl SseMessage {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(&self.data).map_err(|e| {
            ClientError::Protocol(format!(
                "bad {} event data {:?}: {e}",
                self.event, self.data
            ))
        })
    }
}

/// Longest SSE line the parser keeps (a volume with maximal metadata fits).
const MAX_SSE_LINE_BYTES: usize = 1 << 20;

/// Server-sent events read from a response body. Lines end with LF, CR
/// or CRLF (the agent frames its extension events with CR).
pub struct EventStream {
    body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: BytesMut,
    event: String,
    data: Vec<String>,
    ended: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    fn new(response: reqwest::Response) -> Self {
        EventStream {
            body: Box::pin(response.bytes_stream()),
            buf: BytesMut::new(),
            event: String::new(),
            data: Vec::new(),
            ended: false,
        }
    }

    /// The next complete line, without its end; `None` if more bytes are
    /// needed. A CR at the end of the buffer waits for the next byte (it
    /// may be a CRLF), unless the body ended.
    fn line(&mut self) -> Option<String> {
        let pos = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r')?;
        let width = match (self.buf[pos], self.buf.get(pos + 1)) {
            (b'\r', Some(b'\n')) => 2,
            (b'\r', None) if !self.ended => return None,
            _ => 1,
        };
        let line = self.buf.split_to(pos + width);
        Some(String::from_utf8_lossy(&line[..pos]).into_owned())
    }

    /// The next event (comments and keep-alives skipped); `None` at the end.
    pub async fn next(&mut self) -> Option<Result<SseMessage, ClientError>> {
        loop {
            while let Some(line) = self.line() {
                if line.is_empty() {
                    if self.data.is_empty() && self.event.is_empty() {
                        continue;
                    }
                    let event = std::mem::take(&mut self.event);
                    let data = std::mem::take(&mut self.data).join("\n");
                    return Some(Ok(SseMessage {
                        event: if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        },
                        data,
                    }));
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => value.clone_into(&mut self.event),
                    "data" => self.data.push(value.to_owned()),
                    _ => {}
                }
            }
            if self.ended {
                return None;
            }
            if self.buf.len() > MAX_SSE_LINE_BYTES {
                return Some(Err(ClientError::Protocol("event line too long".into())));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(transport(e))),
                None => self.ended = true,
            }
        }
    }
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the agent at `base` (e.g. `http://127.0.0.1:1113`).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| ClientError::Invalid(format!("invalid agent URL {base:?}: {e}")))?;
        if url.scheme() != "http" {
            return Err(ClientError::Invalid(format!(
                "invalid agent URL {base:?}: only http:// is supported"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(Client {
            base: url.as_str().trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends, and turns an error status into [`ClientError::Api`].
    async fn execute(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body =
            super::pull::bounded_prefix(response, MAX_ERROR_BODY_BYTES, ERROR_BODY_DEADLINE).await;
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.volmgr_code().to_owned(),
                message: e.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "unknown".into(),
                message: String::from_utf8_lossy(&body[..body.len().min(512)])
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            },
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.execute(request).await?;
        let body = response.bytes().await.map_err(transport)?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("answer is not the expected JSON: {e}")))
    }

    fn with_json<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> reqwest::RequestBuilder {
        self.request(method, path).json(body)
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), ClientError> {
        self.execute(self.request(reqwest::Method::GET, "/healthz"))
            .await
            .map(drop)
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Result<super::api::Stats, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/stats"))
            .await
    }

    /// `POST /storage/providers`.
    pub async fn add_provider(
        &self,
        id: &str,
        kind: &str,
        config: StringMap,
    ) -> Result<super::api::ProviderInfo, ClientError> {
        let body = AddProviderRequest {
            id: id.into(),
            kind: kind.into(),
            config,
        };
        self.json(self.with_json(reqwest::Method::POST, "/storage/providers", &body))
            .await
    }

    /// `POST /storage/providers/{provider}/volumes`.
    pub async fn create_volume(
        &self,
        provider: &str,
        id: Option<&str>,
        meta: StringMap,
    ) -> Result<VolumeInfo, ClientError> {
        self.create_volume_sized(provider, id, meta, None).await
    }

    /// `POST /storage/providers/{provider}/volumes` with a capacity to enforce.
    pub async fn create_volume_sized(
        &self,
        provider: &str,
        id: Option<&str>,
        meta: StringMap,
        capacity_bytes: Option<u64>,
    ) -> Result<VolumeInfo, ClientError> {
        let body = CreateVolumeRequest {
            id: id.map(str::to_owned),
            meta,
            capacity_bytes,
            ..CreateVolumeRequest::default()
        };
        let path = format!("/storage/providers/{}/volumes", segment(provider)?);
        self.json(self.with_json(reqwest::Method::POST, &path, &body))
            .await
    }

    /// `GET /storage/volumes`.
    pub async fn list(&self) -> Result<Vec<VolumeInfo>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/storage/volumes"))
            .await
    }

    /// `GET /storage/volumes` as an event stream.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let request = self
            .request(reqwest::Method::GET, "/storage/volumes")
            .header(reqwest::header::ACCEPT, "text/event-stream");
        Ok(EventStream::new(self.execute(request).await?))
    }

    /// `GET /storage/volumes/{id}`.
    pub async fn get(&self, id: &str) -> Result<VolumeInfo, ClientError> {
        let path = format!("/storage/volumes/{}", segment(id)?);
        self.json(self.request(reqwest::Method::GET, &path)).await
    }

    /// `DELETE /storage/volumes/{id}`.
    pub async fn destroy(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/storage/volumes/{}", segment(id)?);
        self.execute(self.request(reqwest::Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// `DELETE /storage/volumes/{id}/receive`: discards a partial receive.
    pub async fn abort_receive(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/storage/volumes/{}/receive", segment(id)?);
        self.execute(self.request(reqwest::Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// `PUT /storage/volumes/{id}/snapshot`.
    pub async fn snapshot(&self, id: &str, meta: StringMap) -> Result<VolumeInfo, ClientError> {
        let path = format!("/storage/volumes/{}/snapshot", segment(id)?);
        let body = SnapshotRequest { meta };
        self.json(self.with_json(reqwest::Method::PUT, &path, &body))
            .await
    }

    /// `POST /storage/volumes/{snapshot}/fork`.
    pub async fn fork(
        &self,
        snapshot: &str,
        id: Option<&str>,
        meta: StringMap,
    ) -> Result<VolumeInfo, ClientError> {
        let path = format!("/storage/volumes/{}/fork", segment(snapshot)?);
        let body = ForkRequest {
            id: id.map(str::to_owned),
            meta,
        };
        self.json(self.with_json(reqwest::Method::POST, &path, &body))
            .await
    }

    /// `POST /storage/volumes/{id}/send`: the whole stream, in memory (for
    /// tests and small snapshots; agents pull with [`Client::pull`]).
    pub async fn send(&self, id: &str, haves: &[String]) -> Result<Bytes, ClientError> {
        let path = format!("/storage/volumes/{}/send", segment(id)?);
        let body = SendRequest {
            haves: haves.to_vec(),
            resume_token: None,
        };
        let response = self
            .execute(self.with_json(reqwest::Method::POST, &path, &body))
            .await?;
        response.bytes().await.map_err(transport)
    }

    /// `POST /storage/volumes/{target}/pull_snapshot`.
    pub async fn pull(
        &self,
        target: &str,
        from: PullFrom<'_>,
        snapshot_id: &str,
    ) -> Result<PullResponse, ClientError> {
        let path = format!("/storage/volumes/{}/pull_snapshot", segment(target)?);
        let body = from.request(snapshot_id);
        self.json(self.with_json(reqwest::Method::POST, &path, &body))
            .await
    }

    /// Like [`Client::pull`], calling `progress` with the bytes received so
    /// far (and the stream's size, if the source announced it) as the agent
    /// reports them.
    pub async fn pull_with_progress(
        &self,
        target: &str,
        from: PullFrom<'_>,
        snapshot_id: &str,
        mut progress: impl FnMut(PullProgress),
    ) -> Result<PullResponse, ClientError> {
        let path = format!("/storage/volumes/{}/pull_snapshot", segment(target)?);
        let body = from.request(snapshot_id);
        let request = self
            .with_json(reqwest::Method::POST, &path, &body)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let mut stream = EventStream::new(self.execute(request).await?);
        let mut total = None;
        while let Some(message) = stream.next().await {
            let message = message?;
            match message.event.as_str() {
                events::PROGRESS => {
                    let now = message.json::<PullProgress>()?;
                    total = now.total.or(total);
                    progress(now);
                }
                events::DONE => {
                    let done: PullResponse = message.json()?;
                    progress(PullProgress {
                        bytes: done.bytes,
                        total,
                    });
                    return Ok(done);
                }
                events::ERROR => {
                    let e: ErrorEvent = message.json()?;
                    return Err(ClientError::Api {
                        status: e.status,
                        code: e.error.volmgr_code().to_owned(),
                        message: e.error.message,
                    });
                }
                _ => {}
            }
        }
        Err(ClientError::Protocol(
            "the pull's event stream ended without a result".into(),
        ))
    }
}

/// Percent-encodes a path segment (ids are validated by the agent; this
/// keeps a hostile one from changing the route). `.` and `..` are refused:
/// URL parsing removes them (and `%2e`, a dot to it too), so they would
/// name another route: `DELETE /storage/volumes/./receive` is
/// `DELETE /storage/volumes/receive`, the destroy of volume `receive`.
fn segment(s: &str) -> Result<String, ClientError> {
    if s == "." || s == ".." {
        let why = crate::validate::id(s).err().unwrap_or_default();
        return Err(ClientError::Invalid(format!("invalid id {s:?}: {why}")));
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Ok(out)
}
