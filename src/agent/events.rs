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
//! a reconnecting client loses no volume. The listing is streamed page by
//! page ([`LIST_PAGE`] volumes), never built whole per subscriber, and still
//! exact (see [`event_stream`]). A subscriber that falls behind gets a
//! `lagged` event and the stream ends, so a client reconnects and lists
//! again rather than silently missing events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use super::api::{VolumeEvent, VolumeInfo};
use crate::manager::{Manager, VolumePage};
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

/// Volumes listed per page of the initial listing: a subscriber holds at
/// most this many volumes of it at once, whatever the number of volumes.
pub const LIST_PAGE: usize = 64;

/// The volume events of `manager`: the listing (streamed page by page),
/// `current`, then live ones. The subscription starts before the listing,
/// so nothing falls between.
pub fn volume_events(
    manager: &Manager,
    max_pending: usize,
) -> impl Stream<Item = VolumeEvent> + use<> {
    let rx = manager.subscribe();
    let manager = manager.clone();
    event_stream(
        move |after: Option<&str>, rx: &mut Receiver<Event>| {
            manager.volume_page(after, LIST_PAGE, rx)
        },
        LIST_PAGE,
        rx,
        max_pending,
    )
}

/// The id an event is about.
fn event_volume(event: &Event) -> Option<&str> {
    match event {
        Event::Created(v) => Some(&v.id),
        Event::Destroyed { id, .. } | Event::Lost { id } | Event::Found { id } => Some(id),
        Event::ProviderAdded { .. } => None,
    }
}

/// The wire event of a state event (`None`: not a volume event).
fn volume_event(event: Event) -> Option<VolumeEvent> {
    Some(match event {
        Event::Created(v) => VolumeEvent::Create {
            volume: VolumeInfo::from(&v),
        },
        Event::Destroyed { volume, .. } => VolumeEvent::Destroy {
            volume: VolumeInfo::from(volume.as_ref()),
        },
        Event::Lost { id } => VolumeEvent::Lost { id },
        Event::Found { id } => VolumeEvent::Found { id },
        Event::ProviderAdded { .. } => return None,
    })
}

/// Where a subscriber is.
struct Subscriber<P> {
    /// Reads the next page (after an id) and drains `rx` in one instant;
    /// `None` once the listing is complete.
    pages: Option<P>,
    page_len: usize,
    rx: Receiver<Event>,
    /// The last id listed.
    cursor: Option<String>,
    /// Events on ids already listed, received during the listing: sent
    /// after it, in order.
    pending: Vec<Event>,
    max_pending: usize,
    out: VecDeque<VolumeEvent>,
    ended: bool,
}

/// Existing volumes as `create` events (read with `pages`, one page of
/// `page_len` at a time), `current`, then live create/destroy/lost/found
/// events; `lagged` and the end if the subscriber fell behind (or more than
/// `max_pending` events arrived during the listing).
///
/// Each page is read in the same instant as the events `rx` holds: an
/// event on an id not listed yet is reflected by a later page (dropped), an
/// event on an id already listed happened after its page (kept, sent after
/// `current`). Nothing is missed or doubled.
pub(crate) fn event_stream<P>(
    pages: P,
    page_len: usize,
    rx: Receiver<Event>,
    max_pending: usize,
) -> impl Stream<Item = VolumeEvent>
where
    P: FnMut(Option<&str>, &mut Receiver<Event>) -> VolumePage + Send + 'static,
{
    let subscriber = Subscriber {
        pages: Some(pages),
        page_len: page_len.max(1),
        rx,
        cursor: None,
        pending: Vec::new(),
        max_pending,
        out: VecDeque::new(),
        ended: false,
    };
    stream::unfold(subscriber, |mut sub| async move {
        loop {
            if let Some(event) = sub.out.pop_front() {
                return Some((event, sub));
            }
            if sub.ended {
                return None;
            }
            if let Some(pages) = sub.pages.as_mut() {
                let page = pages(sub.cursor.as_deref(), &mut sub.rx);
                sub.list(page);
                continue;
            }
            match sub.rx.recv().await {
                Ok(event) => sub.out.extend(volume_event(event)),
                Err(RecvError::Lagged(missed)) => {
                    sub.out.push_back(VolumeEvent::Lagged { missed });
                    sub.ended = true;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

impl<P> Subscriber<P> {
    /// Takes one page of the listing.
    fn list(&mut self, page: VolumePage) {
        if page.missed > 0 {
            self.out.push_back(VolumeEvent::Lagged {
                missed: page.missed,
            });
            self.ended = true;
            return;
        }
        let cursor = self.cursor.as_deref();
        let listed = |e: &Event| event_volume(e).is_some_and(|id| cursor.is_some_and(|c| id <= c));
        self.pending.extend(page.events.into_iter().filter(listed));
        if self.pending.len() > self.max_pending {
            self.out.push_back(VolumeEvent::Lagged {
                missed: self.pending.len() as u64,
            });
            self.ended = true;
            return;
        }
        debug_assert!(page.volumes.len() <= self.page_len);
        let complete = page.volumes.len() < self.page_len;
        if let Some(last) = page.volumes.last() {
            debug_assert!(self.cursor.as_deref().is_none_or(|c| c < last.id.as_str()));
            self.cursor = Some(last.id.clone());
        }
        self.out
            .extend(page.volumes.iter().map(|volume| VolumeEvent::Create {
                volume: VolumeInfo::from(volume),
            }));
        if complete {
            self.pages = None;
            self.out.push_back(VolumeEvent::Current {});
            self.out
                .extend(self.pending.drain(..).filter_map(volume_event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Details, OpId};
    use crate::state::{Meta, VolumeKind, VolumeStatus};

    fn volume(id: &str) -> crate::state::Volume {
        crate::state::Volume {
            id: id.into(),
            provider: "p".into(),
            kind: VolumeKind::Data,
            parent: None,
            meta: Meta::default(),
            created_at_ms: 0,
            location: String::new(),
            status: VolumeStatus::Live,
            op: OpId::nil(),
            details: Details::default(),
        }
    }

    /// A manager's state and event broadcast in miniature: changes apply
    /// and broadcast under one lock, pages drain and read under it.
    /// The volumes and the sender of events, under one lock.
    type Shared = std::sync::Mutex<(
        std::collections::BTreeMap<String, crate::state::Volume>,
        tokio::sync::broadcast::Sender<Event>,
    )>;

    #[derive(Clone)]
    struct Model {
        inner: std::sync::Arc<Shared>,
    }

    impl Model {
        fn new(ids: &[&str], capacity: usize) -> Model {
            let (tx, _) = tokio::sync::broadcast::channel(capacity);
            let volumes = ids.iter().map(|id| (id.to_string(), volume(id))).collect();
            Model {
                inner: std::sync::Arc::new(std::sync::Mutex::new((volumes, tx))),
            }
        }
        fn subscribe(&self) -> Receiver<Event> {
            self.inner.lock().unwrap().1.subscribe()
        }
        fn create(&self, id: &str) {
            let mut m = self.inner.lock().unwrap();
            m.0.insert(id.into(), volume(id));
            let _ = m.1.send(Event::Created(volume(id)));
        }
        fn destroy(&self, id: &str) {
            let mut m = self.inner.lock().unwrap();
            let v = m.0.remove(id).unwrap();
            let _ = m.1.send(Event::Destroyed {
                id: id.into(),
                volume: Box::new(v),
            });
        }
        fn page(&self, after: Option<&str>, limit: usize, rx: &mut Receiver<Event>) -> VolumePage {
            let m = self.inner.lock().unwrap();
            let mut page = VolumePage::default();
            loop {
                match rx.try_recv() {
                    Ok(e) => page.events.push(e),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => page.missed += n,
                    Err(_) => break,
                }
            }
            page.volumes =
                m.0.values()
                    .filter(|v| after.is_none_or(|a| v.id.as_str() > a))
                    .take(limit)
                    .cloned()
                    .collect();
            page
        }
        fn ids(&self) -> Vec<String> {
            self.inner.lock().unwrap().0.keys().cloned().collect()
        }
    }

    /// The ids a client holds after applying `events` (create as insert,
    /// destroy as remove), refusing a create of an id it holds or a destroy
    /// of one it does not.
    fn apply(events: &[VolumeEvent]) -> Vec<String> {
        let mut held = std::collections::BTreeSet::new();
        for e in events {
            match e {
                VolumeEvent::Create { volume } => {
                    assert!(
                        held.insert(volume.id.clone()),
                        "created twice: {}",
                        volume.id
                    );
                }
                VolumeEvent::Destroy { volume } => {
                    assert!(held.remove(&volume.id), "destroyed unheld: {}", volume.id);
                }
                _ => {}
            }
        }
        held.into_iter().collect()
    }

    #[tokio::test]
    async fn a_listing_streamed_in_pages_during_changes_misses_and_doubles_nothing() {
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let model = Model::new(&ids, 64);
        let rx = model.subscribe();
        // Changes between pages, on ids already listed and not yet listed.
        let mut script: std::collections::VecDeque<Vec<(bool, &str)>> = [
            vec![],
            vec![(true, "b2"), (true, "z"), (false, "h"), (false, "a")],
            vec![(true, "c1"), (false, "z"), (true, "zz")],
            vec![(false, "b2"), (true, "e5")],
        ]
        .into();
        let m = model.clone();
        let pages = move |after: Option<&str>, rx: &mut Receiver<Event>| {
            for (create, id) in script.pop_front().unwrap_or_default() {
                if create { m.create(id) } else { m.destroy(id) }
            }
            m.page(after, 3, rx)
        };
        let mut stream = Box::pin(event_stream(pages, 3, rx, 100));
        let mut got = Vec::new();
        while let Some(e) = stream.next().await {
            let current = e == VolumeEvent::Current {};
            got.push(e);
            if current {
                break;
            }
        }
        // What happened during the listing follows `current`; then live
        // events, up to this one.
        model.create("after");
        loop {
            let e = stream.next().await.unwrap();
            let last = matches!(&e, VolumeEvent::Create { volume } if volume.id == "after");
            got.push(e);
            if last {
                break;
            }
        }
        assert_eq!(apply(&got), model.ids(), "{got:?}");
        let listed = got
            .iter()
            .position(|e| *e == VolumeEvent::Current {})
            .unwrap();
        assert!(listed >= 3, "{got:?}");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_lagged_event_and_the_stream_ends() {
        let model = Model::new(&["x"], 2);
        let rx = model.subscribe();
        for id in ["a", "b", "c", "d"] {
            model.create(id);
        }
        let m = model.clone();
        let got: Vec<VolumeEvent> = event_stream(
            move |after: Option<&str>, rx: &mut Receiver<Event>| m.page(after, 3, rx),
            3,
            rx,
            100,
        )
        .collect()
        .await;
        assert_eq!(got, [VolumeEvent::Lagged { missed: 2 }]);
        // Lagging after the listing: the listing, current, lagged.
        let model = Model::new(&["x"], 2);
        let rx = model.subscribe();
        let m = model.clone();
        let mut stream = Box::pin(event_stream(
            move |after: Option<&str>, rx: &mut Receiver<Event>| m.page(after, 3, rx),
            3,
            rx,
            100,
        ));
        assert_eq!(stream.next().await.unwrap().name(), "create");
        assert_eq!(stream.next().await.unwrap(), VolumeEvent::Current {});
        for id in ["a", "b", "c", "d"] {
            model.create(id);
        }
        let rest: Vec<VolumeEvent> = stream.collect().await;
        assert_eq!(rest, [VolumeEvent::Lagged { missed: 2 }]);
    }

    #[tokio::test]
    async fn a_destroy_event_carries_the_volume_as_it_was() {
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let mut gone = volume("gone");
        gone.meta.insert("app".into(), "web".into());
        // The destroy happens after the (empty) listing was read.
        let pages = |_: Option<&str>, _: &mut Receiver<Event>| VolumePage::default();
        let mut stream = Box::pin(event_stream(pages, 3, rx, 100));
        let mut got = vec![stream.next().await.unwrap()];
        tx.send(Event::Destroyed {
            id: "gone".into(),
            volume: Box::new(gone.clone()),
        })
        .unwrap();
        drop(tx);
        got.extend(stream.collect::<Vec<_>>().await);
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
