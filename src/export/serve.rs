//! What keeps scrapes cheap and bounded: one render shared by the scrapes that arrive
//! while it runs, a cap on scrapes in progress (each holds its response until the client
//! has taken it), and connections whose writes stall are closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// Scrapes in progress at once, from the render until the client has taken the last
/// byte; more are refused with 503. Two Prometheus servers, a third during a rollout
/// and a person with curl fit.
pub const MAX_SCRAPES: usize = 4;

/// How long a write to a metrics client may make no progress before the connection is
/// closed: a scraper that stops reading holds nothing for longer.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// The size of the frames a response is handed to the connection in: the response
/// stays shared, and the connection asks for the next frame only when it has written
/// the last.
const FRAME: usize = 64 << 10;

/// A response body that hands out `bytes` (shared with the other scrapes of the same
/// render) a frame at a time, and holds its scrape slot until it is dropped: when the
/// connection has taken it all, or is gone. Its size is then counted as freed
/// ([`crate::memory::note_rendered`]), so that the tick gives large renders' memory
/// back.
pub struct ScrapeBody {
    bytes: Bytes,
    rendered: usize,
    _slot: OwnedSemaphorePermit,
}

impl ScrapeBody {
    /// A body of `bytes` holding `slot`.
    pub fn new(bytes: Bytes, slot: OwnedSemaphorePermit) -> Self {
        Self {
            rendered: bytes.len(),
            bytes,
            _slot: slot,
        }
    }
}

impl Drop for ScrapeBody {
    fn drop(&mut self) {
        crate::memory::note_rendered(self.rendered);
    }
}

impl http_body::Body for ScrapeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.bytes.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.bytes.len().min(FRAME);
        let frame = self.bytes.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.len() as u64)
    }
}

/// A connection whose writes fail with `TimedOut` once one has been pending for
/// `limit` without progress.
pub struct StallGuarded<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuarded<T> {
    /// Guards `inner`.
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write or flush returned `poll`: Pending starts (or goes on with) the
    /// stall clock, which fails the write once it runs out; progress stops it.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for too long",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        let limit = Duration::from_millis(300);
        // A pipe of 64 bytes that nobody reads.
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut guarded = StallGuarded::new(ours, limit);
        guarded.write_all(&[1; 64]).await.unwrap();
        let stalled = guarded.write_all(&[2; 64]);
        let err = tokio::time::timeout(Duration::from_secs(10), stalled)
            .await
            .expect("the stalled write fails by itself")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // A reader that keeps taking bytes, each time within the limit, never trips
        // it, though the whole write takes several times the limit.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut guarded = StallGuarded::new(ours, limit);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 64 * 12 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            total
        });
        guarded.write_all(&[3; 64 * 12]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64 * 12);
    }
}
