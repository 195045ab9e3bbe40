//! `volmgr serve`'s log lines, written off the request path. The agent
//! logs every request; written straight to stderr, a log reader that stops
//! reading (a stalled journald, a pipe nobody drains) blocked the worker
//! thread writing a line, then every worker, and so the whole agent:
//! measured, the 64 KiB pipe full after 237 creates, every later request
//! and `/healthz` hung. Each line is now queued (at most [`QUEUE_LINES`]) to
//! one thread that writes them in order; a line that finds the queue full
//! is dropped and counted, and the writer reports the count before the
//! next line it writes. [`flush`] waits, for a bounded time, until what was
//! queued before it is written (before a fatal message and at exit).
//!
//! **Invariant:** nothing on the logging side of a request blocks on the
//! log's reader: [`LineWriter`] only appends to its own buffer and
//! `try_send`s it when dropped.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue holds (a JSON request line is about 400 bytes: at most a
/// few hundred KiB held).
pub const QUEUE_LINES: usize = 1024;

/// How long [`flush`] waits for the writer (a reader that never reads would
/// otherwise hold the exit for ever).
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

/// The queue's sending side: a [`MakeWriter`] for `tracing_subscriber`.
#[derive(Clone)]
pub struct LogSink {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// One event's bytes, queued as one line when dropped.
pub struct LineWriter<'a> {
    sink: &'a LogSink,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if let Err(TrySendError::Full(_)) = self.sink.tx.try_send(Msg::Line(line)) {
            self.sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self,
            buf: Vec::new(),
        }
    }
}

impl LogSink {
    /// A queue of `capacity` lines and the thread that writes them to
    /// `out`; `json`: the drop report is a JSON line like the others.
    pub fn spawn<W: Write + Send + 'static>(
        out: W,
        capacity: usize,
        json: bool,
    ) -> io::Result<LogSink> {
        let (tx, rx) = sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("volmgr-log".into())
            .spawn(move || write_lines(&rx, &counted, out, json))?;
        Ok(LogSink { tx, dropped })
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits, at most `wait`, until every line queued before the call is
    /// written; whether it was.
    pub fn flush(&self, wait: Duration) -> bool {
        let (ack, done) = sync_channel(1);
        // The queue may be full (a reader that does not read): hand the
        // request to a thread, so only it waits for room.
        let tx = self.tx.clone();
        let sent = std::thread::Builder::new()
            .name("volmgr-log-flush".into())
            .spawn(move || {
                let _ = tx.send(Msg::Flush(ack));
            });
        sent.is_ok() && done.recv_timeout(wait).is_ok()
    }
}

/// The writer thread: every queued line in order, each preceded by the
/// report of lines dropped since the last one written.
fn write_lines<W: Write>(rx: &Receiver<Msg>, dropped: &AtomicU64, mut out: W, json: bool) {
    for msg in rx {
        let n = dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            let _ = out.write_all(drop_report(n, json).as_bytes());
        }
        match msg {
            Msg::Line(line) => {
                let _ = out.write_all(&line);
            }
            Msg::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.send(());
            }
        }
    }
}

/// The line that reports `n` dropped lines.
fn drop_report(n: u64, json: bool) -> String {
    const MESSAGE: &str = "log lines dropped: stderr was not read fast enough";
    if json {
        format!(
            "{}\n",
            serde_json::json!({
                "level": "WARN",
                "fields": { "message": MESSAGE, "dropped": n },
                "target": module_path!(),
            })
        )
    } else {
        format!(" WARN {}: {MESSAGE} dropped={n}\n", module_path!())
    }
}

/// The agent's sink, once logging is set up (`None` before, or if its thread
/// could not start: logs then go straight to stderr).
static SINK: OnceLock<LogSink> = OnceLock::new();

/// Starts the sink on stderr for `volmgr serve`; `None` if its thread
/// cannot start.
pub fn stderr_sink(json: bool) -> Option<LogSink> {
    let sink = LogSink::spawn(io::stderr(), QUEUE_LINES, json).ok()?;
    Some(SINK.get_or_init(|| sink).clone())
}

/// [`LogSink::flush`] of the agent's sink, if any, for at most
/// [`FLUSH_WAIT`].
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush(FLUSH_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc::Sender;

    /// A writer that blocks each write until the test lets it go, and keeps
    /// what it was given: a reader that does not read.
    struct Gated {
        gate: Arc<Mutex<Receiver<()>>>,
        written: Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.gate.lock().unwrap().recv().map_err(io::Error::other)?;
            let _ = self.written.send(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(sink: &LogSink, line: &str) {
        let mut w = sink.make_writer();
        w.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn a_reader_that_never_reads_blocks_no_line_and_the_dropped_ones_are_reported() {
        let (open, gate) = std::sync::mpsc::channel();
        let (written, out) = std::sync::mpsc::channel();
        let gated = Gated {
            gate: Arc::new(Mutex::new(gate)),
            written,
        };
        let sink = LogSink::spawn(gated, 4, false).unwrap();
        // The writer thread takes one line and blocks in its write; four
        // more fill the queue; the rest are dropped, never blocking.
        for i in 0..20 {
            log(&sink, &format!("line {i}\n"));
        }
        assert!(!sink.flush(Duration::from_millis(1)), "the writer is stuck");
        // The reader reads again.
        for _ in 0..100 {
            open.send(()).unwrap();
        }
        assert!(sink.flush(FLUSH_WAIT), "the writer catches up");
        log(&sink, "after\n");
        assert!(sink.flush(FLUSH_WAIT));
        let text: String = out
            .try_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"after"), "{text}");
        let kept: Vec<&&str> = lines.iter().filter(|l| l.starts_with("line ")).collect();
        let in_order: Vec<String> = (0..kept.len()).map(|i| format!("line {i}")).collect();
        assert_eq!(
            kept,
            in_order.iter().collect::<Vec<_>>(),
            "the first lines, in order: {text}"
        );
        let kept = kept.len();
        let reported: u64 = lines
            .iter()
            .filter_map(|l| {
                l.rsplit_once(" dropped=")
                    .map(|(_, n)| n.parse::<u64>().unwrap())
            })
            .sum();
        assert!(
            kept <= 5 && reported >= 15,
            "at most the queue and the line being written are kept, the rest reported: {text}"
        );
        assert_eq!(
            kept + usize::try_from(reported).unwrap(),
            20,
            "every line is written or reported dropped: {text}"
        );
    }

    #[test]
    fn the_json_drop_report_is_one_json_line() {
        let line = drop_report(7, true);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["fields"]["dropped"], 7);
        assert_eq!(v["level"], "WARN");
    }
}
