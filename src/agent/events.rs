//! The volume event stream (`GET /storage/volumes` with `Accept:
//! text/event-stream`) and its framing.
//!
//! Flynn's reader (`pkg/sse`) is not a standard SSE parser: it splits lines
//! on `\n` only, keeps only lines starting `data: `, ends an event when the
//! next byte is `\n`, and JSON-decodes whatever data it gathered, so an
//! event without data (a standard `:\n\n` keep-alive) fails to decode and
//! drops the stream. Hence:
//! - Flynn's events (`create`, `destroy`: `{"type","volume"}`) are framed
//!   with `\n`: `event: NAME\ndata: JSON\n\n`.
//! - volmgr's extension events (`current`, `lost`, `found`, `lagged`) are
//!   framed with `\r` only: `event: NAME\rdata: JSON\r\r`. A standard reader
//!   (the SSE specification allows CR, LF or CRLF line ends) dispatches them
//!   like any other; Flynn's reader sees no `\n` in them, so they become part
//!   of one ignored line that starts `event: ` and never reach its decoder.
//! - Keep-alives are Flynn's own: a bare `:\n` line (a comment to a standard
//!   reader, an ignored line to Flynn's, never a blank line).
//!
//! `Last-Event-Id` (sent by Flynn's resuming stream) is ignored: every
//! connection starts with the whole current listing as `create` events, so
//! a reconnecting client loses no volume. A subscriber that falls behind
//! gets a `lagged` event and the stream ends, so a client reconnects and
//! lists again rather than silently missing events.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::broadcast::error::RecvError;

use super::api::{VolumeEvent, VolumeInfo};
use crate::manager::Manager;
use crate::state::Event;

/// A keep-alive line, as Flynn's server sends it.
pub const KEEP_ALIVE: &[u8] = b":\n";

/// Frames one event: `\n`-terminated lines for Flynn's events, `\r` for
/// the extensions (see the module doc).
pub fn frame(event: &VolumeEvent) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    // serde_json escapes control characters inside strings: one line.
    debug_assert!(!data.contains(['\n', '\r']));
    let end = if event.is_flynn() { '\n' } else { '\r' };
    Bytes::from(format!(
        "event: {name}{end}data: {data}{end}{end}",
        name = event.name()
    ))
}

/// A generic SSE frame with `\n` line ends (pull progress streams).
pub fn frame_named<T: serde::Serialize>(name: &str, data: &T) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// An event-stream response of `frames`, with a keep-alive line whenever
/// `keep_alive` passes without a frame.
pub fn response<S>(frames: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let first = tokio::time::Instant::now() + keep_alive;
    let mut tick = tokio::time::interval_at(first, keep_alive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = stream::unfold(
        (Box::pin(frames), tick),
        |(mut frames, mut tick)| async move {
            let bytes = tokio::select! {
                biased;
                next = frames.next() => {
                    tick.reset();
                    next?
                }
                _ = tick.tick() => Bytes::from_static(KEEP_ALIVE),
            };
            Some((Ok::<_, Infallible>(bytes), (frames, tick)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// The volume events of `manager`: the listing, `current`, then live ones.
/// The subscription starts before the listing, so nothing falls between.
pub fn volume_events(manager: &Manager) -> impl Stream<Item = VolumeEvent> + use<> {
    let rx = manager.subscribe();
    let initial: Vec<VolumeInfo> = manager.volumes().iter().map(VolumeInfo::from).collect();
    event_stream(initial, rx)
}

/// Existing volumes as `create` events, `current`, then live
/// create/destroy/lost/found events; `lagged` and the end if the
/// subscriber fell behind.
pub(crate) fn event_stream(
    initial: Vec<VolumeInfo>,
    rx: tokio::sync::broadcast::Receiver<Event>,
) -> impl Stream<Item = VolumeEvent> {
    let first = initial
        .into_iter()
        .map(|volume| VolumeEvent::Create { volume })
        .chain([VolumeEvent::Current {}]);
    let live = stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        loop {
            let event = match rx.recv().await {
                Ok(Event::Created(v)) => VolumeEvent::Create {
                    volume: VolumeInfo::from(&v),
                },
                Ok(Event::Destroyed { volume, .. }) => VolumeEvent::Destroy {
                    volume: VolumeInfo::from(volume.as_ref()),
                },
                Ok(Event::Lost { id }) => VolumeEvent::Lost { id },
                Ok(Event::Found { id }) => VolumeEvent::Found { id },
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    return Some((VolumeEvent::Lagged { missed }, None));
                }
                Err(RecvError::Closed) => return None,
            };
            return Some((event, Some(rx)));
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
    async fn a_subscriber_that_falls_behind_gets_a_lagged_event_and_the_stream_ends() {
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        for id in ["a", "b", "c", "d"] {
            tx.send(Event::Created(volume(id))).unwrap();
        }
        let got: Vec<VolumeEvent> = event_stream(vec![VolumeInfo::from(&volume("x"))], rx)
            .collect()
            .await;
        let names: Vec<&str> = got.iter().map(VolumeEvent::name).collect();
        assert_eq!(names, ["create", "current", "lagged"], "{got:?}");
        assert_eq!(got[2], VolumeEvent::Lagged { missed: 2 });
        drop(tx);
    }

    #[tokio::test]
    async fn a_destroy_event_carries_the_volume_as_it_was() {
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let mut gone = volume("gone");
        gone.meta.insert("app".into(), "web".into());
        tx.send(Event::Destroyed {
            id: "gone".into(),
            volume: Box::new(gone.clone()),
        })
        .unwrap();
        drop(tx);
        let got: Vec<VolumeEvent> = event_stream(Vec::new(), rx).collect().await;
        assert_eq!(
            got,
            [
                VolumeEvent::Current {},
                VolumeEvent::Destroy {
                    volume: VolumeInfo::from(&gone)
                }
            ]
        );
        let text = String::from_utf8(frame(&got[1]).to_vec()).unwrap();
        assert!(
            text.starts_with("event: destroy\ndata: {\"type\":\"destroy\",\"volume\":{\"id\":\"gone\",\"type\":\"data\",")
                && text.ends_with("}}\n\n"),
            "{text}"
        );
        let current = String::from_utf8(frame(&got[0]).to_vec()).unwrap();
        assert_eq!(current, "event: current\rdata: {\"type\":\"current\"}\r\r");
    }
}
