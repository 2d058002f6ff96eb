//! The threads that decompress and decode large and compressed bodies, off the async
//! workers that serve connections, `/healthz` and `/metrics`.
//!
//! A fixed pool of one thread per core, at a lower scheduling priority (nice 10 on
//! Linux): when a core is contended, the async workers run first, so a health check
//! is answered in milliseconds even while every decode thread is busy with a 60 MB
//! JSON body; when it is not, the decodes use all of it. A job needs a [`Slot`], one per
//! thread, and holds it until it has run (so a request cancelled while its job runs
//! does not let another job queue behind it): jobs never queue in the pool, callers
//! wait for a slot, for as long as they choose.

use std::cell::Cell;
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of low-priority threads.
#[derive(Debug)]
pub struct DecodePool {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// One per thread.
    slots: Arc<Semaphore>,
}

/// The right to run one job on the pool now: a thread is free for it, and is given back
/// when the slot is dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The niceness of decode threads: below the async workers, above nothing else.
const NICENESS: i32 = 10;

impl DecodePool {
    /// Starts `threads` threads.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sloxide-decode-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only to take one job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool is gone
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a decode thread: {e}");
            }
        }
        Self {
            jobs: Mutex::new(tx),
            slots: Arc::new(Semaphore::new(threads)),
        }
    }

    /// Waits for a free thread until `deadline`; `None` if none came free by then.
    pub async fn slot(&self, deadline: Instant) -> Option<Slot> {
        let acquire = self.slots.clone().acquire_owned();
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Some(Slot { _permit: permit }),
            _ => None,
        }
    }

    /// Runs `work` on the thread `slot` stands for and returns its result. The job
    /// holds the slot until it has run. When the caller is gone before the job starts
    /// (its client reset the stream, or closed the connection), the work is not done:
    /// `work` is dropped, and what it holds (the request's reservation) with it. While
    /// it runs, the function `work` is given says whether the caller is still there.
    pub async fn run<T: Send + 'static>(
        &self,
        slot: Slot,
        work: impl FnOnce(&dyn Fn() -> bool) -> T + Send + 'static,
    ) -> Result<T, RunError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _slot = slot;
            if tx.is_closed() {
                return;
            }
            let done = contain(|| work(&|| !tx.is_closed()));
            let _ = tx.send(done.map_err(|Panicked| RunError::Panicked));
        });
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs.send(job).is_ok(),
            Err(_) => false,
        };
        if !sent {
            tracing::error!("no decode thread is running to take a request (see the log at start)");
            return Err(RunError::Unavailable);
        }
        rx.await.unwrap_or(Err(RunError::Unavailable))
    }
}

thread_local! {
    /// True while this thread runs work under [`contain`].
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// A decode that panicked: a bug in sloxide, which its request is refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked;

/// Runs `work` (a request's decode and recording), turning a panic into [`Panicked`]:
/// the request is refused as `internal`, and the thread and every other request carry
/// on. While it runs, a panic is reported by [`install_panic_hook`]'s hook at most once
/// every [`crate::telemetry::REFUSAL_LOG_EVERY`], so a body that always fails cannot
/// flood the log.
pub fn contain<T>(work: impl FnOnce() -> T) -> Result<T, Panicked> {
    let outer = CONTAINED.replace(true);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    CONTAINED.set(outer);
    out.map_err(|_| Panicked)
}

/// Makes panics inside [`contain`] one log line (through `tracing`, so in the log's
/// format) at most every [`crate::telemetry::REFUSAL_LOG_EVERY`], with their message,
/// place and number since the last line. Every other panic goes to the hook that was
/// there before. The daemon installs it at start.
pub fn install_panic_hook() {
    let earlier = std::panic::take_hook();
    let spell = crate::telemetry::EveryFew::default();
    std::panic::set_hook(Box::new(move |info| {
        if !CONTAINED.get() {
            return earlier(info);
        }
        let now = std::time::Instant::now();
        if let Some(n) = spell.note(now, crate::telemetry::REFUSAL_LOG_EVERY) {
            tracing::error!(
                panics = n,
                "a decode failed on a request, refused as internal (a bug in sloxide; please report it): {info}"
            );
        }
    }));
}

/// Why [`DecodePool::run`] gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunError {
    /// The work panicked (a bug; the log has the panic's message).
    Panicked,
    /// No decode thread took the job: none could be started, or it was dropped
    /// without running.
    Unavailable,
}

/// Lowers the calling thread's scheduling priority (Linux threads have their own
/// niceness). Failing to is harmless: the thread runs at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contain_turns_a_panic_into_an_error_and_marks_only_its_own_run() {
        assert!(!CONTAINED.get());
        assert_eq!(contain(|| 7), Ok(7));
        assert_eq!(contain(|| -> u32 { panic!("in a decode") }), Err(Panicked));
        assert!(!CONTAINED.get(), "left marked after a panic");
        // Nested: the outer run is still contained after the inner one.
        assert_eq!(
            contain(|| {
                let inner = contain(|| -> u32 { panic!("inner") });
                (inner, CONTAINED.get())
            }),
            Ok((Err(Panicked), true))
        );
        assert!(!CONTAINED.get());
    }

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_panics_are_contained() {
        let pool = DecodePool::new(2);
        let soon = || Instant::now() + std::time::Duration::from_secs(5);
        let name = pool
            .run(pool.slot(soon()).await.unwrap(), |_| {
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("sloxide-decode-"));
        let slot = pool.slot(soon()).await.unwrap();
        assert_eq!(
            pool.run(slot, |_| -> u32 { panic!("in a decode") }).await,
            Err(RunError::Panicked)
        );
        // The thread that panicked is still there, and the slots came back.
        for _ in 0..4 {
            assert_eq!(
                pool.run(pool.slot(soon()).await.unwrap(), |_| 7).await,
                Ok(7)
            );
        }
        // Both slots held: no third until one is given back.
        let (a, b) = (pool.slot(soon()).await, pool.slot(soon()).await);
        assert!(a.is_some() && b.is_some());
        assert!(
            pool.slot(Instant::now() + std::time::Duration::from_millis(20))
                .await
                .is_none()
        );
        drop(a);
        assert!(pool.slot(soon()).await.is_some());
    }

    /// A job whose caller leaves while it runs is told so: it can then leave its
    /// request unrecorded, as the client will send it again.
    #[tokio::test]
    async fn a_running_job_is_told_when_its_caller_leaves() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = DecodePool::new(1);
        let soon = || Instant::now() + std::time::Duration::from_secs(5);
        let (started, saw_leave) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, l) = (started.clone(), saw_leave.clone());
        let slot = pool.slot(soon()).await.unwrap();
        let run = pool.run(slot, move |wanted| {
            s.store(true, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while wanted() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            l.store(!wanted(), Ordering::SeqCst);
        });
        // The caller waits while the job runs, then leaves.
        let waited = tokio::time::timeout(std::time::Duration::from_secs(2), run).await;
        assert!(waited.is_err() && started.load(Ordering::SeqCst));
        // The slot comes back once the job has noticed and returned.
        assert!(pool.slot(soon()).await.is_some());
        assert!(saw_leave.load(Ordering::SeqCst));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn decode_threads_run_at_a_lower_priority() {
        let pool = DecodePool::new(1);
        let slot = pool
            .slot(Instant::now() + std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let nice = pool
            .run(slot, |_| {
                let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                // Field 19 (niceness), counting from after the command name.
                let after = &stat[stat.rfind(')').unwrap() + 2..];
                after.split(' ').nth(16).unwrap().parse::<i32>().unwrap()
            })
            .await
            .unwrap();
        assert!(nice >= NICENESS, "{nice}");
    }
}
