//! A bounded pool of byte buffers for request bodies, so that reading and
//! decompressing a body reuses memory instead of allocating per request.

use crossbeam_queue::ArrayQueue;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A lock-free pool of `Vec<u8>`. A buffer that grew past `keep_capacity` is freed
/// instead of returned, so one huge request does not pin its memory forever.
#[derive(Debug)]
pub struct BufferPool {
    free: ArrayQueue<Vec<u8>>,
    keep_capacity: usize,
}

impl BufferPool {
    /// A pool holding at most `slots` idle buffers of at most `keep_capacity` bytes.
    pub fn new(slots: usize, keep_capacity: usize) -> Self {
        Self {
            free: ArrayQueue::new(slots.max(1)),
            keep_capacity,
        }
    }

    /// An empty buffer, reused when one is idle. It owns a handle on the pool, so it
    /// can move to a blocking thread for decoding.
    pub fn get(self: &Arc<Self>) -> PooledBuf {
        let mut buf = self.free.pop().unwrap_or_default();
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
            // A full pool drops the buffer: the pool is a cache, not a queue.
            let _ = self.pool.free.push(buf);
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
}
