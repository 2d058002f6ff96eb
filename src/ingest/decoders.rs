//! The threads that decompress and decode large and compressed bodies, off the async
//! workers that serve connections, `/healthz` and `/metrics`.
//!
//! A fixed pool of one thread per core, at a lower scheduling priority (nice 10 on
//! Linux): when a core is contended, the async workers run first, so a health check
//! is answered in milliseconds even while every decode thread is busy with a 60 MB
//! JSON body; when it is not, the decodes use all of it. The caller bounds how many
//! jobs are in the pool at once (one per thread, by a slot the job itself holds, so a
//! request cancelled while its job runs does not let another job queue behind it).

use std::sync::{Arc, Mutex, mpsc};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of low-priority threads.
#[derive(Debug)]
pub struct DecodePool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// The niceness of decode threads: below the async workers, above nothing else.
const NICENESS: i32 = 10;

impl DecodePool {
    /// Starts `threads` threads.
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
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
        }
    }

    /// Runs `work` on a decode thread and returns its result; `None` if it panicked.
    /// When the caller is gone before the job starts (its client reset the stream, or
    /// closed the connection), the work is not done: `work` is dropped, and what it
    /// holds (its decode slot, its reservation) with it.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return;
            }
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tx.send(out.ok());
        });
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs.send(job).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return None;
        }
        rx.await.ok().flatten()
    }
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

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_panics_are_contained() {
        let pool = DecodePool::new(2);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("sloxide-decode-"));
        assert_eq!(pool.run(|| -> u32 { panic!("in a decode") }).await, None);
        // The thread that panicked is still there.
        for _ in 0..4 {
            assert_eq!(pool.run(|| 7).await, Some(7));
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn decode_threads_run_at_a_lower_priority() {
        let pool = DecodePool::new(1);
        let nice = pool
            .run(|| {
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
