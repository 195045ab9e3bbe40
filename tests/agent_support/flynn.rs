//! Flynn's host client on the wire, rebuilt from its documented behaviour
//! (pkg/cluster `Host` over pkg/httpclient, pkg/httphelper, pkg/sse; facts
//! in the project's notes), so the agent is judged by Flynn's rules without
//! Flynn's code:
//! - requests are written byte for byte as Go's net/http writes them for
//!   that client: request line, `Host`, `User-Agent: Go-http-client/1.1`,
//!   `Content-Length` (absent for a GET or DELETE without body, `0` for a
//!   POST or PUT without one), then the headers sorted by name, then the
//!   transport's `Accept-Encoding: gzip`; every request carries
//!   `Content-Type: application/json`, JSON calls `Accept:
//!   application/json`, the key goes as HTTP Basic with an empty user;
//! - success is status 200 exactly; an error is decoded as httphelper's
//!   `JSONError` (only when the answer's Content-Type says JSON);
//! - an event stream is read as pkg/sse's `Reader` reads it.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use base64::Engine;
use serde_json::Value;

/// Go's `json.Marshal(&volume.Info{})`: empty id and type, zero time, no meta.
pub const EMPTY_INFO: &str = r#"{"id":"","type":"","created_at":"0001-01-01T00:00:00Z"}"#;

/// Go's `json.Marshal` of a `volume.Info` with an id (and meta).
pub fn info_json(id: &str, volume_type: &str, meta: Option<(&str, &str)>) -> String {
    let meta = meta
        .map(|(k, v)| format!(r#""meta":{{"{k}":"{v}"}},"#))
        .unwrap_or_default();
    format!(r#"{{"id":"{id}","type":"{volume_type}",{meta}"created_at":"0001-01-01T00:00:00Z"}}"#)
}

/// A client of one agent, as `cluster.NewHost` plus `httpclient.Client.Key`.
#[derive(Debug, Clone)]
pub struct FlynnHost {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `httpclient.Client.Key` (empty: no Authorization header).
    pub key: String,
}

/// An answer: status, headers (names lower-cased), body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// httpclient's verdict: `Ok(body)` for 200 exactly, else the error it
    /// would return: the decoded `JSONError` if the answer is JSON.
    pub fn flynn_result(&self) -> Result<&[u8], FlynnError> {
        if self.status == 200 {
            return Ok(&self.body);
        }
        if self
            .header("content-type")
            .is_some_and(|c| c.contains("application/json"))
            && let Ok(e) = serde_json::from_slice::<Value>(&self.body)
            && e["code"].is_string()
            && e["message"].is_string()
            && (e.get("retry").is_none() || e["retry"].is_boolean())
        {
            return Err(FlynnError::Json {
                status: self.status,
                code: e["code"].as_str().unwrap().to_owned(),
                body: e,
            });
        }
        Err(FlynnError::UnexpectedStatus(self.status))
    }

    /// The body decoded as Flynn's `volume.Info` (+ volmgr's extra fields):
    /// `id`, `type` "data", `created_at` a Go `time.Time` (RFC 3339).
    #[track_caller]
    pub fn info(&self) -> Value {
        let body = self.flynn_result().expect("status 200");
        let v: Value = serde_json::from_slice(body).expect("JSON");
        assert_info(&v);
        v
    }
}

/// Asserts `v` decodes as Flynn's `volume.Info`.
#[track_caller]
pub fn assert_info(v: &Value) {
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert_eq!(v["type"], "data", "Info.Type: {v}");
    let created = v["created_at"].as_str().expect("created_at");
    assert!(
        is_rfc3339(created),
        "created_at {created:?} is not RFC 3339"
    );
    assert!(v["meta"].is_null() || v["meta"].is_object(), "{v}");
}

/// What Go's `time.Time.UnmarshalJSON` accepts here:
/// `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z')
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .into_iter()
            .all(|r| b[r].iter().all(u8::is_ascii_digit))
}

/// The error httpclient returns for a non-200 answer.
#[derive(Debug, Clone, PartialEq)]
pub enum FlynnError {
    /// `httphelper.JSONError`.
    Json {
        status: u16,
        code: String,
        body: Value,
    },
    /// `httpclient: raw req: unexpected status N` (or `ErrNotFound` for 404).
    UnexpectedStatus(u16),
}

impl FlynnError {
    pub fn code(&self) -> Option<&str> {
        match self {
            FlynnError::Json { code, .. } => Some(code),
            FlynnError::UnexpectedStatus(_) => None,
        }
    }
}

impl FlynnHost {
    pub fn new(url: &str, key: &str) -> FlynnHost {
        FlynnHost {
            addr: url.trim_start_matches("http://").to_owned(),
            key: key.to_owned(),
        }
    }

    /// The request bytes Go writes for this client's call.
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Vec<u8> {
        let mut sorted: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if !sorted.iter().any(|(k, _)| k == "Content-Type") {
            sorted.push(("Content-Type".into(), "application/json".into()));
        }
        if !self.key.is_empty() {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{}", self.key));
            sorted.push(("Authorization".into(), format!("Basic {basic}")));
        }
        sorted.sort();
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Go-http-client/1.1\r\n",
            self.addr
        );
        match (body, method) {
            (Some(b), _) => write!(out, "Content-Length: {}\r\n", b.len()).unwrap(),
            (None, "POST" | "PUT" | "PATCH") => out.push_str("Content-Length: 0\r\n"),
            (None, _) => {}
        }
        for (k, v) in sorted {
            write!(out, "{k}: {v}\r\n").unwrap();
        }
        out.push_str("Accept-Encoding: gzip\r\n\r\n");
        if let Some(b) = body {
            out.push_str(b);
        }
        out.into_bytes()
    }

    /// Opens a connection and writes the request; returns the reader of
    /// the answer after its head.
    pub fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Vec<(String, String)>, BodyReader) {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        stream
            .write_all(&self.request_bytes(method, path, headers, body))
            .expect("write request");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header line");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        let body = BodyReader {
            inner: reader,
            chunked,
            remaining: if chunked { 0 } else { length.unwrap_or(0) },
            done: false,
        };
        (status, headers, body)
    }

    /// One whole request and answer.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let (status, headers, mut reader) = self.open(method, path, headers, body);
        let mut body = Vec::new();
        reader.read_to_end(&mut body).expect("answer body");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `httpclient.Send` (Get, Put, Post, Delete): `Accept: application/json`.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call(method, path, &[("Accept", "application/json")], body)
    }

    /// `Host.SendSnapshot(snapID, haves)`: haves is Go's JSON of a
    /// `[]json.RawMessage` (`null` when nil).
    pub fn send_snapshot(&self, snap: &str, haves_json: &str) -> Answer {
        self.call(
            "GET",
            &format!("/storage/volumes/{snap}/send"),
            &[("Accept", "application/vnd.zfs.snapshot-stream")],
            Some(haves_json),
        )
    }

    /// `Host.StreamVolumes`: a resuming stream's first connection.
    pub fn stream_volumes(&self) -> (u16, Vec<(String, String)>, BodyReader) {
        self.open(
            "GET",
            "/storage/volumes",
            &[("Accept", "text/event-stream"), ("Last-Event-Id", "0")],
            None,
        )
    }
}

/// An answer body: by Content-Length or chunked.
pub struct BodyReader {
    inner: BufReader<TcpStream>,
    chunked: bool,
    remaining: usize,
    done: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.remaining == 0 {
            if !self.chunked {
                self.done = true;
                return Ok(0);
            }
            let mut size = String::new();
            if self.inner.read_line(&mut size)? == 0 {
                self.done = true;
                return Ok(0);
            }
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size {size:?}: {e}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.remaining = size;
        }
        let want = buf.len().min(self.remaining);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.remaining -= n;
        if self.remaining == 0 && self.chunked {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// pkg/sse's `Reader.Read`, step for step: lines split on `\n` only; a
/// line starting `event: error` marks an error; lines starting `data: `
/// are concatenated (without their `\n`); the event ends when the byte
/// after a line is `\n` (left unread). Returns the data of the next event,
/// `Ok(None)` at the end of the stream.
pub struct SseReader<R: Read> {
    inner: BufReader<R>,
}

/// What pkg/sse's decoder makes of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// `json.Unmarshal(data, &volume.Event{})` succeeded.
    Event(Value),
    /// `event: error`: the stream ends with this server error.
    ServerError(String),
    /// The data did not decode (an empty event): Flynn drops the stream.
    Undecodable(Vec<u8>),
}

impl<R: Read> SseReader<R> {
    pub fn new(inner: R) -> Self {
        SseReader {
            inner: BufReader::new(inner),
        }
    }

    pub fn next(&mut self) -> std::io::Result<Option<SseItem>> {
        let mut buf = Vec::new();
        let mut is_err = false;
        loop {
            let mut line = Vec::new();
            let n = self.inner.read_until(b'\n', &mut line)?;
            if n == 0 || !line.ends_with(b"\n") {
                // ReadBytes returns io.EOF with a partial line.
                return Ok(None);
            }
            if line.starts_with(b"event: error") {
                is_err = true;
            }
            if let Some(data) = line.strip_prefix(b"data: ") {
                buf.extend_from_slice(data.strip_suffix(b"\n").unwrap_or(data));
            }
            let peek = self.inner.fill_buf()?;
            if peek.first() == Some(&b'\n') {
                break;
            }
        }
        if is_err {
            return Ok(Some(SseItem::ServerError(
                String::from_utf8_lossy(&buf).into_owned(),
            )));
        }
        Ok(Some(match serde_json::from_slice::<Value>(&buf) {
            Ok(v) if v.is_object() => SseItem::Event(v),
            _ => SseItem::Undecodable(buf),
        }))
    }
}
