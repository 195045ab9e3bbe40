//! Connections: the agent's own accept loop (in place of `axum::serve`), so
//! that every connection is bounded in number and in time before any
//! request on it is authenticated.
//!
//! - **A cap.** At most [`Limits::max_connections`] connections are open.
//!   At the cap, a new connection replaces the one idle the longest (no
//!   request in flight): a flood of idle connections keeps rotating while a
//!   client that sends its request at once (a health probe, the CLI) is
//!   served. If every connection has a request in flight, the new one is
//!   closed at once. Accepting never stops, so the kernel's backlog never
//!   fills with connections nobody looks at.
//! - **Timeouts, enforced on the socket** ([`Guarded`]): with no request in
//!   flight, a connection is closed after [`Limits::idle_timeout`] without
//!   a byte, or [`Limits::header_read_timeout`] after the first byte of a
//!   request head that has not been completed (a slow-loris head); a write
//!   that makes no progress for [`Limits::write_timeout`] closes the
//!   connection whatever is in flight, so a client that stops reading a
//!   send or an event stream lets go of its buffers, its send slot and its
//!   blocking thread.
//! - **HTTP/1.1 only**, heads of at most [`MAX_HEAD_BYTES`].
//!
//! Each request carries its [`ClientAddr`] (per-client limits use it). A
//! connection counts as busy from the moment its request head is parsed
//! until its response body has been written or dropped.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::Limits;

/// Largest request head (request line and headers) read; a longer one is
/// answered 431 by the HTTP layer.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The address of the client that sent a request (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// What one connection shares with the table, its socket and its requests.
#[derive(Debug)]
struct ConnState {
    /// Requests whose response is not yet written or dropped.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight (or was accepted).
    idle_since: Mutex<Instant>,
    /// Cancelled to close the connection (evicted for a newer one).
    evict: CancellationToken,
    /// The task that last waited to read: woken when the connection turns
    /// idle, so its idle deadline is armed even if nothing arrives.
    reader: Mutex<Option<Reader>>,
    /// The connection turned idle inside its reader's own task, which was
    /// not woken (see [`InFlight`]): its next write or flush arms the idle
    /// deadline.
    rearm: AtomicBool,
}

/// A task waiting to read without a deadline (the connection was busy).
#[derive(Debug)]
struct Reader {
    waker: Waker,
    /// Its tokio task, if it runs in one.
    task: Option<tokio::task::Id>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evict: CancellationToken::new(),
            reader: Mutex::new(None),
            rearm: AtomicBool::new(false),
        }
    }

    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// Marks a request in flight on its connection until dropped (with the
/// response body, or with the request if it never got one).
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut since = self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
            drop(since);
            // The reader may wait without a deadline (it was busy): let it
            // arm the idle one. Dropped in the reader's own task (hyper
            // drops a response body in the connection's task, after writing
            // it), it is running now: a wake would reschedule it as a task
            // that yielded, and tokio wakes another worker thread for that,
            // once a request. Its flush of that response, in this same
            // poll, arms the deadline instead.
            let reader = self
                .0
                .reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match reader {
                Some(r) if r.task.is_some() && r.task == tokio::task::try_id() => {
                    self.0.rearm.store(true, Ordering::Release);
                }
                Some(r) => r.waker.wake(),
                None => {}
            }
        }
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct Table {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
}

impl Table {
    /// Admits a connection under `max`, evicting the one idle the longest
    /// if at the cap; `None` if every connection is busy.
    fn admit(&self, max: usize) -> Option<(u64, Arc<ConnState>)> {
        let mut conns = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if conns.len() >= max {
            let victim = conns
                .iter()
                .filter(|(_, c)| c.is_idle())
                .min_by_key(|(_, c)| c.idle_since())
                .map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&victim) {
                c.evict.cancel();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new());
        conns.insert(id, state.clone());
        debug_assert!(conns.len() <= max);
        Some((id, state))
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    fn len(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Accepts and serves connections until `stop` resolves, then asks every
/// connection to finish its request in flight and close. Returns the
/// tracker of the connection tasks (closed: wait on it) and the token that
/// drops every connection still open.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: F,
) -> (TaskTracker, CancellationToken)
where
    F: Future<Output = ()> + Send,
{
    let table = Arc::new(Table::default());
    let tracker = TaskTracker::new();
    let stopping = CancellationToken::new();
    let abort = CancellationToken::new();
    let limits = Arc::new(limits);
    let mut refused: u64 = 0;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors (or another resource): back off a
                // little; the connections' own timeouts free some.
                tracing::warn!(error = %e, open = table.len(), "accept failed");
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some((id, state)) = table.admit(limits.max_connections) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max_connections = limits.max_connections,
                    "connection refused: every connection has a request in flight"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_connection(
            stream,
            addr,
            state,
            limits.clone(),
            router.clone(),
            stopping.clone(),
            abort.clone(),
        );
        let table = table.clone();
        tracker.spawn(async move {
            conn.await;
            table.remove(id);
        });
    }
    drop(listener);
    stopping.cancel();
    tracker.close();
    (tracker, abort)
}

/// Errors of `accept` that concern one connection only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    state: Arc<ConnState>,
    limits: Arc<Limits>,
    router: Router,
    stopping: CancellationToken,
    abort: CancellationToken,
) {
    let io = TokioIo::new(Guarded::new(stream, state.clone(), limits));
    let requests = state.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = InFlight::enter(requests.clone());
        req.extensions_mut().insert(ClientAddr(addr));
        let mut router = router.clone();
        async move {
            let response: Response<Body> =
                match tower_service::Service::call(&mut router, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut graceful = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(client = %addr, error = %e, "connection ended");
                }
                return;
            }
            () = state.evict.cancelled() => {
                tracing::debug!(client = %addr, "idle connection closed for a new one");
                return;
            }
            () = abort.cancelled() => return,
            () = stopping.cancelled(), if !graceful => {
                conn.as_mut().graceful_shutdown();
                graceful = true;
            }
        }
    }
}

/// A connection's socket with its timeouts (see the module doc). A timeout
/// is an I/O error, which closes the connection.
struct Guarded {
    io: TcpStream,
    state: Arc<ConnState>,
    limits: Arc<Limits>,
    /// When the head of the next request began to arrive.
    head_started: Option<Instant>,
    read_timer: Option<Pin<Box<Sleep>>>,
    /// Since when a write has been waiting for the client.
    write_stalled: Option<Instant>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn new(io: TcpStream, state: Arc<ConnState>, limits: Arc<Limits>) -> Self {
        Guarded {
            io,
            state,
            limits,
            head_started: None,
            read_timer: None,
            write_stalled: None,
            write_timer: None,
        }
    }

    /// When an idle connection (no request in flight) must have read more.
    fn read_deadline(&mut self) -> Option<Instant> {
        if !self.state.is_idle() {
            self.head_started = None;
            return None;
        }
        let idle_since = self.state.idle_since();
        match self.head_started {
            Some(t) if t >= idle_since => Some(t + self.limits.header_read_timeout),
            _ => {
                self.head_started = None;
                Some(idle_since + self.limits.idle_timeout)
            }
        }
    }

    /// `Pending` until `deadline`; then the timeout error. Registers the
    /// waker so the connection is polled again at the deadline.
    fn wait_until(
        timer: &mut Option<Pin<Box<Sleep>>>,
        deadline: Instant,
        cx: &mut Context<'_>,
        what: &str,
    ) -> Poll<io::Error> {
        if Instant::now() >= deadline {
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()));
        }
        let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Arms the idle deadline for a connection that turned idle in this
    /// task without waking it (see [`InFlight`]); the deadline's timer
    /// wakes this task, whose read then times out.
    fn rearm_idle(&mut self, cx: &mut Context<'_>) {
        if !self.state.rearm.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Some(deadline) = self.read_deadline()
            && Self::wait_until(&mut self.read_timer, deadline, cx, "idle").is_ready()
        {
            // Already past: the read reports it.
            cx.waker().wake_by_ref();
        }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.rearm_idle(cx);
        match polled {
            Poll::Ready(r) => {
                self.write_stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let since = *self.write_stalled.get_or_insert_with(Instant::now);
                let deadline = since + self.limits.write_timeout;
                match Self::wait_until(
                    &mut self.write_timer,
                    deadline,
                    cx,
                    "write timed out: the client stopped reading",
                ) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && me.state.is_idle() {
                    let idle_since = me.state.idle_since();
                    if me.head_started.is_none_or(|t| t < idle_since) {
                        me.head_started = Some(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = if let Some(d) = me.read_deadline() {
                    d
                } else {
                    // Busy: no deadline. Leave the waker for the turn
                    // to idle, then look again (it may have turned).
                    *me.state
                        .reader
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Reader {
                        waker: cx.waker().clone(),
                        task: tokio::task::try_id(),
                    });
                    match me.read_deadline() {
                        Some(d) => d,
                        None => return Poll::Pending,
                    }
                };
                // Armed here: nothing left for a write to arm.
                me.state.rearm.store(false, Ordering::Release);
                let what = if me.head_started.is_some() {
                    "request head timed out"
                } else {
                    "idle connection timed out"
                };
                match Self::wait_until(&mut me.read_timer, deadline, cx, what) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_write(cx, data);
        me.on_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_flush(cx);
        me.on_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_shutdown(cx);
        me.on_write(cx, polled)
    }
}

/// An [`AsyncWrite`] whose writes fail once one has waited longer than
/// `timeout` for the reader (a send's pipe to its response body, when the
/// body is not polled: the agent may be embedded behind a server without
/// write timeouts of its own).
pub(crate) struct StallLimited<W> {
    inner: W,
    timeout: Duration,
    stalled: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<W> StallLimited<W> {
    pub(crate) fn new(inner: W, timeout: Duration) -> Self {
        StallLimited {
            inner,
            timeout,
            stalled: None,
            timer: None,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallLimited<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                me.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let since = *me.stalled.get_or_insert_with(Instant::now);
                let what = "the client stopped reading the stream";
                match Guarded::wait_until(&mut me.timer, since + me.timeout, cx, what) {
                    Poll::Ready(e) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let table = Table::default();
        let (a, sa) = table.admit(2).unwrap();
        let (_b, sb) = table.admit(2).unwrap();
        // Both idle: the older one (a) goes.
        *sb.idle_since.lock().unwrap() = Instant::now() + Duration::from_secs(1);
        let (_c, sc) = table.admit(2).unwrap();
        assert!(sa.evict.is_cancelled());
        assert!(!table.conns.lock().unwrap().contains_key(&a));
        // b and c busy: a fourth connection is refused, nobody is evicted.
        let _rb = InFlight::enter(sb.clone());
        let rc = InFlight::enter(sc.clone());
        assert!(table.admit(2).is_none());
        assert!(!sb.evict.is_cancelled() && !sc.evict.is_cancelled());
        assert_eq!(table.len(), 2);
        // c's response is done: c is idle again, and evictable.
        drop(rc);
        assert!(table.admit(2).is_some());
        assert!(sc.evict.is_cancelled() && !sb.evict.is_cancelled());
    }
}
