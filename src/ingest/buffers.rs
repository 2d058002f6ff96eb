//! A bounded pool of byte buffers for request bodies, so that joining and
//! decompressing a body reuses memory instead of allocating per request, and
//! [`Received`], a body kept in the frames it arrived in.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

/// A pool of `Vec<u8>`, last in first out: the buffer handed out is the one given back
/// most recently, whose memory is likely still in cache, and under steady traffic only
/// as many buffers as there are requests in flight are ever touched. (A first in, first
/// out queue handed out the least recently used of up to 64 buffers of about 0.5 MB.
/// Copying each body into its buffer was 12.7% of the daemon's CPU under 1000-span gRPC
/// requests, as much as the kernel's copy from the socket; handing out the warm buffer
/// took 3.5% off the server's CPU per span, docs/benchmarks.md. Since then such bodies
/// are not copied at all: see [`Received`].) A buffer that grew
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

/// How many pieces (a transport's frames) of a body are kept as they arrived. A body
/// in more pieces is copied into one buffer as it arrives, so that a client sending many
/// small frames makes the daemon hold one buffer, not a handle per frame.
pub const KEPT_PIECES: usize = 16;

/// The smallest piece kept as it arrived when more of the body follows it. A piece is a
/// slice of the transport's read buffer and keeps all of that buffer alive (up to the
/// largest frame, 256 KiB over gRPC); a small one, held while the client takes its time
/// with the rest, would pin far more memory than the bytes it holds, which are what the
/// in-flight budget charges. So a body is joined as soon as a piece below this size is
/// followed by another: only the last piece may be small.
pub const MIN_KEPT_PIECE: usize = 64 << 10;

/// A request body as it arrived. Its pieces (the frames hyper hands over, each a
/// reference into the transport's read buffer) are kept as they are: an uncompressed
/// protobuf body is walked where it lies ([`crate::otlp::spans::walk_traces_pieces`]),
/// and copying every body into one buffer was about 7% of the daemon's CPU under
/// 1000-span gRPC requests. What must be one slice (decompression, JSON, a body in more
/// than [`KEPT_PIECES`] pieces or with a piece under [`MIN_KEPT_PIECE`] before its
/// last) is joined into the pooled buffer, once, and its pieces let go.
#[derive(Debug)]
pub struct Received {
    pieces: Vec<Bytes>,
    len: usize,
    /// The joined body, once joined; until then, what a walk of the pieces copies (the
    /// messages that lie across two pieces).
    buf: PooledBuf,
    joined: bool,
}

/// A [`Received`] body, as it is held.
pub enum View<'a> {
    /// In one slice.
    Joined(&'a [u8]),
    /// In pieces, with the buffer a walk joins what lies across them into.
    Pieces(&'a [Bytes], &'a mut Vec<u8>),
}

impl Received {
    /// An empty body, joining into `buf` when it has to.
    pub fn new(buf: PooledBuf) -> Self {
        Self {
            pieces: Vec::new(),
            len: 0,
            buf,
            joined: false,
        }
    }

    /// The bytes received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the next piece.
    pub fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        if !self.joined
            && (self.pieces.len() == KEPT_PIECES
                || self.pieces.last().is_some_and(|p| p.len() < MIN_KEPT_PIECE))
        {
            self.join();
        }
        if self.joined {
            self.buf.extend_from_slice(&piece);
        } else if !piece.is_empty() {
            self.pieces.push(piece);
        }
    }

    /// Copies the first bytes of the body into `out`; returns how many there were.
    pub fn head(&self, out: &mut [u8]) -> usize {
        if self.joined {
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            return n;
        }
        let mut n = 0;
        for piece in &self.pieces {
            let k = piece.len().min(out.len() - n);
            out[n..n + k].copy_from_slice(&piece[..k]);
            n += k;
            if n == out.len() {
                break;
            }
        }
        n
    }

    /// Copies the last bytes of the body into the end of `out`; returns how many there
    /// were.
    pub fn tail(&self, out: &mut [u8]) -> usize {
        if self.joined {
            let n = out.len().min(self.buf.len());
            let at = out.len() - n;
            out[at..].copy_from_slice(&self.buf[self.buf.len() - n..]);
            return n;
        }
        let mut n = 0;
        for piece in self.pieces.iter().rev() {
            let k = piece.len().min(out.len() - n);
            let at = out.len() - n - k;
            out[at..at + k].copy_from_slice(&piece[piece.len() - k..]);
            n += k;
            if n == out.len() {
                break;
            }
        }
        n
    }

    /// The body in one slice: the pieces are copied into the pooled buffer the first
    /// time.
    pub fn join(&mut self) -> &[u8] {
        if !self.joined {
            self.buf.clear();
            self.buf.reserve(self.len);
            for piece in self.pieces.drain(..) {
                self.buf.extend_from_slice(&piece);
            }
            self.joined = true;
        }
        &self.buf
    }

    /// The body as it is held.
    pub fn view(&mut self) -> View<'_> {
        if self.joined {
            View::Joined(&self.buf)
        } else {
            View::Pieces(&self.pieces, &mut self.buf)
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
    fn a_body_is_kept_in_its_pieces_until_it_must_be_joined() {
        let pool = Arc::new(BufferPool::new(2, 1 << 20));
        let mut body = Received::new(pool.get());
        let big = |b: u8| Bytes::from(vec![b; MIN_KEPT_PIECE]);
        // Large pieces, an empty one, and a small last one are kept as they are.
        for piece in [big(1), Bytes::new(), big(2), Bytes::from_static(b"tail")] {
            body.push(piece);
        }
        assert_eq!(body.len(), 2 * MIN_KEPT_PIECE + 4);
        let mut head = [0; 4];
        assert_eq!(body.head(&mut head), 4);
        assert_eq!(head, [1; 4]);
        // The last bytes, across the pieces.
        let mut tail = [0; 6];
        assert_eq!(body.tail(&mut tail), 6);
        assert_eq!(&tail, b"\x02\x02tail");
        match body.view() {
            View::Pieces(pieces, _) => assert_eq!(pieces.len(), 3, "empty pieces are dropped"),
            View::Joined(_) => panic!("joined before it had to be"),
        }
        let joined = body.join().to_vec();
        assert_eq!(joined.len(), 2 * MIN_KEPT_PIECE + 4);
        assert_eq!(&joined[2 * MIN_KEPT_PIECE..], b"tail");
        assert!(matches!(body.view(), View::Joined(b) if b == &joined[..]));
        let mut head = [0; 8];
        assert_eq!(body.head(&mut head), 8);
        let mut tail = [0; 6];
        assert_eq!(body.tail(&mut tail), 6);
        assert_eq!(&tail, b"\x02\x02tail");
        // A body shorter than asked for fills the end of `out`.
        let mut short = Received::new(pool.get());
        short.push(Bytes::from_static(b"ab"));
        let mut tail = [0; 4];
        assert_eq!(short.tail(&mut tail), 2);
        assert_eq!(&tail[2..], b"ab");
    }

    #[test]
    fn a_small_piece_followed_by_more_joins_the_body() {
        let pool = Arc::new(BufferPool::new(2, 1 << 20));
        let mut body = Received::new(pool.get());
        body.push(Bytes::from(vec![7; MIN_KEPT_PIECE]));
        body.push(Bytes::from_static(b"ab"));
        assert!(
            matches!(body.view(), View::Pieces(..)),
            "a small last piece is kept"
        );
        body.push(Bytes::from_static(b"cd"));
        assert!(matches!(body.view(), View::Joined(b) if b.len() == MIN_KEPT_PIECE + 4));
    }

    #[test]
    fn a_body_in_many_pieces_is_joined_as_it_arrives() {
        let pool = Arc::new(BufferPool::new(2, 1 << 20));
        let mut body = Received::new(pool.get());
        let mut all = Vec::new();
        for i in 0..(KEPT_PIECES as u8 + 5) {
            let piece = vec![i; MIN_KEPT_PIECE];
            all.extend_from_slice(&piece);
            body.push(Bytes::from(piece));
        }
        assert!(matches!(body.view(), View::Joined(b) if b == &all[..]));
        assert_eq!(body.len(), all.len());
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
