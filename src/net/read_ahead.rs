//! Large socket reads below TLS.
//!
//! rustls asks its transport for at most 4 KiB at a time, so a TLS stream read straight from a
//! socket costs a `recv` (and, on the receiving side of the kernel, often a window update sent
//! back) per 4 KiB: on a bulk transfer that per-call cost is most of the relay's CPU (see
//! BENCHMARKS.md, "Where the CPU goes"). [`ReadAhead`] reads up to 64 KiB in one call and
//! serves rustls' small reads from memory. Its buffer is pooled: taken when the socket has data,
//! given back once rustls has taken every byte, so an idle connection holds none.
//!
//! It only ever wraps a socket from the start of a TLS handshake on, so nothing it reads ahead
//! can be plaintext that arrived before TLS (see `Conn::take_plain`).

use super::pool;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket read 64 KiB at a time; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// How far `buf` was ever filled: what the pool wipes when it comes back.
    used: usize,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`, holding no buffer yet.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: None,
            pos: 0,
            end: 0,
            used: 0,
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give_back(buf, self.used);
        }
        (self.pos, self.end, self.used) = (0, 0, 0);
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.end {
            if out.remaining() >= pool::BUFFER {
                // As large as ours: no point in a copy.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let buf = this.buf.get_or_insert_with(pool::take);
            let mut read = ReadBuf::new(buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    (this.pos, this.end) = (0, read.filled().len());
                    this.used = this.used.max(this.end);
                    if this.end == 0 {
                        this.release();
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    this.release();
                    return Poll::Pending;
                }
            }
        }
        let buf = this.buf.as_ref().expect("bytes are buffered");
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&buf[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.end {
            this.release();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
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
    async fn small_reads_see_every_byte_in_order_and_the_buffer_goes_back() {
        let (mut far, near) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            far.write_all(&sent).await.unwrap();
            far.shutdown().await.unwrap();
            far
        });
        let mut r = ReadAhead::new(near);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert!(r.buf.is_none(), "a drained reader holds no buffer");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (_far, near) = tokio::io::duplex(1024);
        let mut r = ReadAhead::new(near);
        let mut small = [0u8; 16];
        let polled = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut small);
            Poll::Ready(Pin::new(&mut r).poll_read(cx, &mut rb))
        })
        .await;
        assert!(polled.is_pending());
        assert!(r.buf.is_none());
    }
}
