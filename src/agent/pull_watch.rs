//! What bounds a pull in flight: the registry of pulls by target (one at a
//! time per target, [`Limits::max_pulls`] in all, cancellable by `DELETE
//! /storage/volumes/{id}/receive` and by shutdown), and the watch on its
//! stream (a minimum rate over a window, an overall deadline).
//!
//! A stopped pull is never cut off by dropping its receive half-way: the
//! watched stream yields an error, the provider's receive fails on it like
//! on any broken stream, and the outcome (Failed, or Suspended with a resume
//! token where the provider can resume) is journaled before the pull
//! answers. [`Stop`] then says why, in the answer's code.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::limits::{Limits, format_duration};

/// Why a pull was stopped before its stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Fewer bytes than the minimum rate asks arrived in a window.
    Stalled { bytes: u64 },
    /// The pull ran past its deadline.
    Deadline,
    /// `DELETE /storage/volumes/{id}/receive`.
    Cancelled,
    /// The agent is shutting down (the grace period is over).
    Stopping,
}

impl Stop {
    /// The answer of a pull stopped so; `kept` if the target keeps a
    /// resumable partial receive.
    pub(crate) fn error(self, limits: &Limits, kept: bool) -> ApiError {
        let resume = if kept {
            " The partial receive is kept: pull again to resume."
        } else {
            ""
        };
        match self {
            Stop::Stalled { bytes } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "transfer_stalled",
                format!(
                    "the source sent {bytes} bytes in {}, below the minimum rate of {} bytes/s \
                     (--pull-min-rate, --pull-stall-window): the pull was stopped.{resume}",
                    format_duration(limits.pull_stall_window),
                    limits.pull_min_rate
                ),
            ),
            Stop::Deadline => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "transfer_deadline",
                format!(
                    "the pull ran longer than its deadline of {} (--pull-deadline): it was \
                     stopped.{resume}",
                    format_duration(limits.pull_deadline)
                ),
            ),
            Stop::Cancelled => ApiError::new(
                StatusCode::CONFLICT,
                "cancelled",
                "the pull was cancelled (DELETE .../receive)",
            ),
            Stop::Stopping => ApiError::unavailable(
                "stopping",
                format!("the agent is shutting down: the pull was cancelled.{resume}"),
            ),
        }
    }
}

/// One registered pull, as the registry and its watch see it.
#[derive(Debug, Clone)]
struct Entry {
    cancel: CancellationToken,
    reason: Arc<OnceLock<Stop>>,
    /// Cancelled when the pull has ended (its ticket dropped).
    ended: CancellationToken,
}

/// The pulls in flight, by target volume.
#[derive(Debug)]
pub(crate) struct Registry {
    max: usize,
    pulls: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A registered pull; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct Ticket {
    pulls: Arc<Mutex<HashMap<String, Entry>>>,
    target: String,
    entry: Entry,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.target);
        self.entry.ended.cancel();
    }
}

impl Registry {
    pub(crate) fn new(max: usize) -> Self {
        Registry {
            max,
            pulls: Arc::default(),
        }
    }

    /// Registers a pull into `target`, cancelled with `parent` too: 409
    /// `busy` if one is in flight into it, 503 `too_many_pulls` at the cap.
    pub(crate) fn register(
        &self,
        target: &str,
        parent: &CancellationToken,
    ) -> Result<Ticket, ApiError> {
        let mut pulls = self
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pulls.contains_key(target) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                format!("a pull into {target} is in flight (DELETE .../receive cancels it)"),
            ));
        }
        if pulls.len() >= self.max {
            return Err(ApiError::unavailable(
                "too_many_pulls",
                format!(
                    "{} pulls are running, the most this agent runs at once (--max-pulls): \
                     retry later",
                    self.max
                ),
            ));
        }
        let entry = Entry {
            cancel: parent.child_token(),
            reason: Arc::default(),
            ended: CancellationToken::new(),
        };
        pulls.insert(target.to_owned(), entry.clone());
        Ok(Ticket {
            pulls: self.pulls.clone(),
            target: target.to_owned(),
            entry,
        })
    }

    /// Cancels the pull into `target`, if one is in flight; returns a token
    /// cancelled once it has ended (its outcome journaled).
    pub(crate) fn cancel(&self, target: &str) -> Option<CancellationToken> {
        let pulls = self
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = pulls.get(target)?;
        let _ = entry.reason.set(Stop::Cancelled);
        entry.cancel.cancel();
        Some(entry.ended.clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// The limits of one pull in flight; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    cancel: CancellationToken,
    reason: Arc<OnceLock<Stop>>,
    deadline: Instant,
    window: Duration,
    min_bytes: u64,
}

impl Watch {
    /// The watch of `ticket`'s pull, starting now.
    pub(crate) fn new(ticket: &Ticket, limits: &Limits) -> Watch {
        Watch {
            cancel: ticket.entry.cancel.clone(),
            reason: ticket.entry.reason.clone(),
            deadline: Instant::now() + limits.pull_deadline,
            window: limits.pull_stall_window,
            min_bytes: limits.pull_min_bytes_per_window(),
        }
    }

    /// Records `why` unless a reason is recorded already; returns the one
    /// that holds.
    fn stop(&self, why: Stop) -> Stop {
        *self.reason.get_or_init(|| why)
    }

    /// Why the pull was stopped, if it was.
    pub(crate) fn stopped_by(&self) -> Option<Stop> {
        self.reason.get().copied()
    }

    /// Resolves when the pull is cancelled or its deadline passes.
    pub(crate) async fn stopped(&self) -> Stop {
        tokio::select! {
            () = self.cancel.cancelled() => self.stop(Stop::Stopping),
            () = tokio::time::sleep_until(self.deadline) => self.stop(Stop::Deadline),
        }
    }

    /// `chunks` under this watch: an error (and the end) once the pull is
    /// cancelled, past its deadline, or stalled; each chunk's length added
    /// to `counter`.
    pub(crate) fn watch<S>(&self, chunks: S, counter: Arc<AtomicU64>) -> Watched<S> {
        let now = Instant::now();
        Watched {
            inner: chunks,
            watch: self.clone(),
            counter,
            cancelled: Box::pin(self.cancel.clone().cancelled_owned()),
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
            window_end: Box::pin(tokio::time::sleep_until(now + self.window)),
            window_bytes: 0,
            ended: false,
        }
    }
}

/// A pull's stream under its [`Watch`].
pub(crate) struct Watched<S> {
    inner: S,
    watch: Watch,
    counter: Arc<AtomicU64>,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    deadline: Pin<Box<Sleep>>,
    window_end: Pin<Box<Sleep>>,
    window_bytes: u64,
    ended: bool,
}

impl<S> Watched<S> {
    fn fail(&mut self, why: Stop) -> Poll<Option<io::Result<Bytes>>> {
        self.ended = true;
        let why = self.watch.stop(why);
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("pull stopped: {why:?}"),
        ))))
    }
}

impl<S, E> Stream for Watched<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = self.get_mut();
        if me.ended {
            return Poll::Ready(None);
        }
        if me.cancelled.as_mut().poll(cx).is_ready() {
            return me.fail(Stop::Stopping);
        }
        if me.deadline.as_mut().poll(cx).is_ready() {
            return me.fail(Stop::Deadline);
        }
        while me.window_end.as_mut().poll(cx).is_ready() {
            if me.window_bytes < me.watch.min_bytes {
                let bytes = me.window_bytes;
                return me.fail(Stop::Stalled { bytes });
            }
            me.window_bytes = 0;
            let next = me.window_end.deadline() + me.watch.window;
            me.window_end.as_mut().reset(next);
        }
        match Pin::new(&mut me.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                me.window_bytes = me.window_bytes.saturating_add(bytes.len() as u64);
                me.counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                me.ended = true;
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
            Poll::Ready(None) => {
                me.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn limits(window_ms: u64, rate: u64, deadline_ms: u64) -> Limits {
        Limits {
            pull_stall_window: Duration::from_millis(window_ms),
            pull_min_rate: rate,
            pull_deadline: Duration::from_millis(deadline_ms),
            ..Limits::default()
        }
    }

    /// A source that sends one byte and then nothing, on tokio's paused
    /// clock (time advances only when every task waits).
    #[tokio::test(start_paused = true)]
    async fn a_trickling_source_is_stopped_as_stalled_after_one_window() {
        let registry = Registry::new(4);
        let parent = CancellationToken::new();
        let ticket = registry.register("t", &parent).unwrap();
        let watch = Watch::new(&ticket, &limits(10_000, 100, 3_600_000));
        let source = futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"x"))])
            .chain(futures_util::stream::pending());
        let counter = Arc::new(AtomicU64::new(0));
        let mut watched = watch.watch(Box::pin(source), counter.clone());
        assert_eq!(watched.next().await.unwrap().unwrap(), "x");
        let started = Instant::now();
        let e = watched.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(watch.stopped_by(), Some(Stop::Stalled { bytes: 1 }));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(watched.next().await.is_none(), "ended after the error");
        assert_eq!(counter.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_source_outlives_many_windows_until_the_deadline() {
        let registry = Registry::new(4);
        let ticket = registry.register("t", &CancellationToken::new()).unwrap();
        let watch = Watch::new(&ticket, &limits(1_000, 10, 60_000));
        // 100 bytes a second: well above 10 bytes/s.
        let source = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, io::Error>(Bytes::from_static(b"0123456789")), ()))
        });
        let mut watched = watch.watch(Box::pin(source), Arc::default());
        let mut chunks = 0;
        let e = loop {
            match watched.next().await.unwrap() {
                Ok(_) => chunks += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(watch.stopped_by(), Some(Stop::Deadline));
        assert!((590..=600).contains(&chunks), "{chunks}");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_pull_ends_its_stream_and_says_why() {
        let registry = Registry::new(1);
        let parent = CancellationToken::new();
        let ticket = registry.register("t", &parent).unwrap();
        assert_eq!(registry.register("t", &parent).unwrap_err().code, "busy");
        assert_eq!(
            registry.register("u", &parent).unwrap_err().code,
            "too_many_pulls"
        );
        let watch = Watch::new(&ticket, &Limits::default());
        let source = futures_util::stream::pending::<Result<Bytes, io::Error>>();
        let mut watched = watch.watch(Box::pin(source), Arc::default());
        let ended = registry.cancel("t").expect("in flight");
        assert!(watched.next().await.unwrap().is_err());
        assert_eq!(watch.stopped_by(), Some(Stop::Cancelled));
        assert!(!ended.is_cancelled());
        drop(ticket);
        assert!(ended.is_cancelled());
        assert_eq!(registry.len(), 0);
        assert!(registry.cancel("t").is_none());
        // Shutdown cancels through the parent.
        let ticket = registry.register("t", &parent).unwrap();
        let watch = Watch::new(&ticket, &Limits::default());
        parent.cancel();
        assert_eq!(watch.stopped().await, Stop::Stopping);
    }
}
