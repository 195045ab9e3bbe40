//! A few long-lived threads for blocking calls a caller wants to run side
//! by side (the `fsync`s of a directory provider's round), parked between
//! calls. A thread per call costs more than the call: on the development
//! VM a thread spawn and join took 60 µs quiet and 750 µs while compiles
//! ran, against 150 to 200 µs for an `fsync`, and a lone create's round
//! spawned three. [`Workers`] spawns a thread only when more jobs wait than
//! threads are idle (up to its maximum), and keeps it until it is dropped.
//!
//! **Invariant:** every job submitted runs exactly once, on a worker or,
//! when no worker exists and none can be spawned, on the submitting thread;
//! a job's panic reaches its [`Handle`] as an error, never the worker.

use std::collections::VecDeque;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of at most `max` named threads (see the module doc).
#[derive(Debug)]
pub struct Workers {
    shared: Arc<Shared>,
    max: usize,
    name: &'static str,
    spawned: AtomicUsize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("Shared")
            .field("jobs", &q.jobs.len())
            .field("idle", &q.idle)
            .field("threads", &q.threads)
            .finish()
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads alive.
    threads: usize,
    /// The pool was dropped: threads exit once the queue is empty.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn work(&self) {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                // A job catches its own panic (see `Workers::spawn`).
                job();
                q = self.lock();
            } else if q.closed {
                q.threads -= 1;
                return;
            } else {
                q.idle += 1;
                q = self
                    .wake
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.idle -= 1;
            }
        }
    }
}

/// The result of one job: [`Handle::join`] waits for it.
#[derive(Debug)]
pub struct Handle<T> {
    rx: mpsc::Receiver<std::thread::Result<T>>,
}

impl<T> Handle<T> {
    /// Waits for the job; its panic is an error naming the pool.
    pub fn join(self) -> io::Result<T> {
        match self.rx.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => Err(io::Error::other("a job on a worker thread panicked")),
        }
    }
}

#[cfg(test)]
impl<T> Handle<T> {
    /// [`Handle::join`], failing the test instead of hanging it.
    fn join_within_a_minute(self) -> io::Result<T> {
        match self.rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(io::Error::other("a job on a worker thread panicked")),
            Err(e) => panic!("a job did not run within a minute: {e}"),
        }
    }
}

impl Workers {
    /// A pool of at most `max` threads named `name`; none is spawned yet.
    pub fn new(name: &'static str, max: usize) -> Workers {
        assert!(max > 0, "a pool has room for a thread");
        Workers {
            shared: Arc::default(),
            max,
            name,
            spawned: AtomicUsize::new(0),
        }
    }

    /// Threads spawned since the pool was made (reused ones count once).
    pub fn spawned(&self) -> usize {
        self.spawned.load(Ordering::Relaxed)
    }

    /// Runs `f` on a worker: an idle one, a new one if more jobs wait than
    /// threads are idle and the pool is not full, else the next to finish.
    pub fn spawn<T, F>(&self, f: F) -> Handle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        let mut q = self.shared.lock();
        q.jobs.push_back(job);
        if q.jobs.len() <= q.idle {
            drop(q);
            self.shared.wake.notify_one();
            return Handle { rx };
        }
        if q.threads < self.max {
            q.threads += 1;
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(self.name.to_owned())
                .spawn(move || shared.work());
            match spawned {
                Ok(_) => {
                    self.spawned.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    q.threads -= 1;
                    tracing::warn!(error = %e, pool = self.name, "could not spawn a worker thread");
                    if q.threads == 0 {
                        // No one else would run it: run it here.
                        let job = q.jobs.pop_back().expect("just pushed");
                        drop(q);
                        job();
                        return Handle { rx };
                    }
                }
            }
        }
        Handle { rx }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::Workers;

    #[test]
    fn threads_are_reused_across_calls() {
        let pool = Workers::new("test-worker", 4);
        for round in 0..50 {
            let handles: Vec<_> = (0..3).map(|i| pool.spawn(move || round * 10 + i)).collect();
            let got: Vec<_> = handles
                .into_iter()
                .map(|h| h.join_within_a_minute().unwrap())
                .collect();
            assert_eq!(got, vec![round * 10, round * 10 + 1, round * 10 + 2]);
        }
        // 150 jobs; a thread per job would be 150 threads. (Three at a
        // time may still meet a fourth thread: a worker that answered may
        // not be back to idle when the next three are queued.)
        assert!(
            pool.spawned() <= 4,
            "threads made once and reused ({} spawned)",
            pool.spawned()
        );
    }

    #[test]
    fn jobs_that_wait_for_each_other_get_a_thread_each_up_to_the_maximum() {
        let pool = Workers::new("test-worker", 4);
        // Four jobs that can only finish together: each must have its own
        // thread, at once.
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = barrier.clone();
                pool.spawn(move || {
                    b.wait();
                })
            })
            .collect();
        for h in handles {
            h.join_within_a_minute().unwrap();
        }
        assert_eq!(pool.spawned(), 4);
    }

    #[test]
    fn more_jobs_than_threads_all_run() {
        let pool = Workers::new("test-worker", 2);
        let handles: Vec<_> = (0..64).map(|i| pool.spawn(move || i * 2)).collect();
        let sum: usize = handles
            .into_iter()
            .map(|h| h.join_within_a_minute().unwrap())
            .sum();
        assert_eq!(sum, (0..64).map(|i| i * 2).sum::<usize>());
        assert!(pool.spawned() <= 2);
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_pool_goes_on() {
        let pool = Workers::new("test-worker", 1);
        let err = pool
            .spawn(|| panic!("boom"))
            .join_within_a_minute()
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(pool.spawn(|| 7).join_within_a_minute().unwrap(), 7);
        assert_eq!(pool.spawned(), 1, "the thread survived its job's panic");
    }
}
