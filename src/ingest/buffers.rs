//! A bounded pool of byte buffers for request bodies, so that reading and
//! decompressing a body reuses memory instead of allocating per request.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

/// A pool of `Vec<u8>`, last in first out: the buffer handed out is the one given back
/// most recently, whose memory is likely still in cache, and under steady traffic only
/// as many buffers as there are requests in flight are ever touched. (A first in, first
/// out queue handed out the least recently used of up to 64 buffers of about 0.5 MB.
/// Copying each body into its buffer is 12.7% of the daemon's CPU under 1000-span gRPC
/// requests, as much as the kernel's copy from the socket; handing out the warm buffer
/// took 3.5% off the server's CPU per span, docs/benchmarks.md.) A buffer that grew
/// past `keep_capacity` is freed instead of returned, so one huge request does not pin
/// its memory forever. The lock is held for one push or pop, once per request.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    slots: usize,
    keep_capacity: usize,
}

impl BufferPool {
    /// A pool holding at most `slots` idle buffers of at most `keep_capacity` bytes.
    pub fn new(slots: usize, keep_capacity: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(slots.max(1))),
            slots: slots.max(1),
            keep_capacity,
        }
    }

    fn free(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An empty buffer, reused when one is idle. It owns a handle on the pool, so it
    /// can move to a blocking thread for decoding.
    pub fn get(self: &Arc<Self>) -> PooledBuf {
        let mut buf = self.free().pop().unwrap_or_default();
        buf.clear();
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }
}

/// A buffer that goes back to its pool when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if self.buf.capacity() <= self.pool.keep_capacity {
            let buf = std::mem::take(&mut self.buf);
            let mut free = self.pool.free();
            // A full pool drops the buffer (below, once the lock is released): the pool
            // is a cache, not a queue.
            if free.len() < self.pool.slots {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_oversized_ones_dropped() {
        let pool = Arc::new(BufferPool::new(2, 1024));
        let ptr = {
            let mut b = pool.get();
            b.extend_from_slice(&[1; 100]);
            b.as_ptr()
        };
        let b = pool.get();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the idle buffer is handed out again");
        drop(b);
        {
            let mut big = pool.get();
            big.resize(4096, 0);
        }
        assert!(pool.get().capacity() < 4096);
    }

    #[test]
    fn the_buffer_given_back_last_is_handed_out_first() {
        let pool = Arc::new(BufferPool::new(4, 1024));
        let (mut a, mut b) = (pool.get(), pool.get());
        a.reserve(10);
        b.reserve(10);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        drop(a);
        drop(b);
        let first = pool.get();
        assert_eq!(first.as_ptr(), pb, "b was given back last");
        assert_eq!(pool.get().as_ptr(), pa);
    }
}
