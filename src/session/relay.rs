//! The post-authentication byte pipe.
//!
//! After a successful login nothing is parsed, rewritten or logged: bytes are copied both ways
//! with bounded buffers (back-pressure instead of growth) until one side closes, and the other
//! side then sees its half closed. A direction holds a buffer (`net::pool`) only while data
//! flows, so an idle session (an IMAP client in IDLE, a POP3 client between commands) holds
//! none; it gathers what its reader has (several TLS records) before writing. An idle watchdog
//! closes sessions with no bytes read in either direction for the listener's idle timeout.

use crate::net::conn::Conn;
use crate::net::pool;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the device to the server.
    pub client_to_upstream: u64,
    /// From the server to the device.
    pub upstream_to_client: u64,
}

/// Why a pipe ended before both sides closed.
#[derive(Debug)]
pub enum Broken {
    /// No byte either way for the idle timeout.
    Idle,
    /// Reading from or writing to the device failed: its own doing, or its network's.
    Device(io::Error),
    /// Reading from or writing to the server failed: a reset, a TLS record that does not open,
    /// a fatal alert, a protocol violation. The device was told, in its protocol's words.
    Upstream(io::Error),
    /// The relay is shutting down.
    Shutdown,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Idle => f.write_str("idle timeout"),
            Broken::Device(e) => write!(f, "device connection failed: {e}"),
            Broken::Upstream(e) => write!(f, "server connection failed: {e}"),
            Broken::Shutdown => f.write_str("closed at shutdown"),
        }
    }
}

/// Copies `client` ⇄ `upstream` until both directions are finished or the pipe is idle for
/// `idle`. Bytes already buffered on either side are delivered first, in order. When the
/// server's side fails, the device gets `lost` (its protocol's "connection lost" line) before
/// its connection is closed, so it reports a server fault instead of a silent close. A server
/// that just closes its connection (with or without TLS `close_notify`) is not a fault: the
/// device sees the close, as it would without the relay.
pub async fn pipe(
    client: Conn,
    upstream: Conn,
    idle: Duration,
    lost: &[u8],
) -> Result<Transferred, Broken> {
    let (mut client, client_pending) = client.into_parts();
    let (mut upstream, upstream_pending) = upstream.into_parts();
    if !client_pending.is_empty() {
        let sent = upstream.write_all(&client_pending).await;
        sent.and(upstream.flush().await).map_err(Broken::Upstream)?;
    }
    if !upstream_pending.is_empty() {
        let sent = client.write_all(&upstream_pending).await;
        sent.and(client.flush().await).map_err(Broken::Device)?;
    }
    drop((client_pending, upstream_pending));

    // Bytes read either way so far: the idle watchdog below looks for a change.
    let activity = AtomicU64::new(0);
    let result = {
        let copy = copy_both_ways(&mut client, &mut upstream, &activity);
        watch_idle(copy, &activity, idle).await
    };
    if let Err(Broken::Upstream(e)) = &result {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            let farewell = async {
                client.write_all(lost).await?;
                client.shutdown().await
            };
            let _ = tokio::time::timeout(FAREWELL, farewell).await;
        }
    }
    result
}

/// How long the device's "connection lost" line may take to leave.
const FAREWELL: Duration = Duration::from_secs(5);

/// Runs `copy` until it ends, or until `activity` has not changed for `idle`.
async fn watch_idle(
    copy: impl std::future::Future<Output = Result<(u64, u64), Broken>>,
    activity: &AtomicU64,
    idle: Duration,
) -> Result<Transferred, Broken> {
    tokio::pin!(copy);
    let tick = (idle / 4).max(Duration::from_millis(50));
    let mut last_seen = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            result = &mut copy => {
                let (up, down) = result?;
                return Ok(Transferred { client_to_upstream: up, upstream_to_client: down });
            }
            _ = tokio::time::sleep(tick) => {
                let now = activity.load(Ordering::Relaxed);
                if now == last_seen {
                    quiet += tick;
                    if quiet >= idle {
                        return Err(Broken::Idle);
                    }
                } else {
                    last_seen = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

/// Which end of one direction failed.
enum Failed {
    Reading(io::Error),
    Writing(io::Error),
}

/// One direction of the pipe. Its buffer is taken from the pool when the reader has data and
/// given back as soon as the reader has none and everything read was written: an idle session
/// holds no buffer at all. Otherwise as tokio's `copy`: bounded, flushes when the reader
/// stalls, shuts the writer down at the reader's end.
#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    /// How far `buf` was ever filled: what the pool wipes when it comes back.
    used: usize,
    read_done: bool,
    need_flush: bool,
    amt: u64,
    done: bool,
}

impl Direction {
    /// Reads what `reader` has right now into the (pooled) buffer, up to a full buffer: a TLS
    /// stream yields one record per read, and one write of several records costs the writer's
    /// socket one call instead of one per record. Returns the bytes read; sets `read_done` at
    /// the reader's end. `Ok(0)` without `read_done` means nothing is there yet (the reader will
    /// wake the task).
    fn gather<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        activity: &AtomicU64,
    ) -> io::Result<usize> {
        let buf = self.buf.get_or_insert_with(pool::take);
        let mut read = ReadBuf::new(buf);
        while read.remaining() > 0 {
            let before = read.filled().len();
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().len() == before => {
                    self.read_done = true;
                    break;
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        let n = read.filled().len();
        self.used = self.used.max(n);
        activity.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Gives the buffer back to the pool (which wipes what was written into it).
    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give_back(buf, self.used);
        }
        self.used = 0;
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (mut reader, mut writer): (Pin<&mut R>, Pin<&mut W>),
        activity: &AtomicU64,
    ) -> Poll<Result<u64, Failed>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                let n = (self.gather(cx, reader.as_mut(), activity)).map_err(Failed::Reading)?;
                if n == 0 && !self.read_done {
                    self.release();
                    if self.need_flush {
                        std::task::ready!(writer.as_mut().poll_flush(cx))
                            .map_err(Failed::Writing)?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                (self.pos, self.cap) = (0, n);
            }
            while self.pos < self.cap {
                let buf = self.buf.as_ref().expect("data is in the buffer");
                let written =
                    std::task::ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]));
                let n = written.map_err(Failed::Writing)?;
                if n == 0 {
                    let e =
                        io::Error::new(io::ErrorKind::WriteZero, "the other side took no bytes");
                    return Poll::Ready(Err(Failed::Writing(e)));
                }
                self.pos += n;
                self.amt += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                self.release();
                let flushed = std::task::ready!(writer.as_mut().poll_flush(cx));
                flushed.map_err(Failed::Writing)?;
                let shut = std::task::ready!(writer.as_mut().poll_shutdown(cx));
                shut.map_err(Failed::Writing)?;
                return Poll::Ready(Ok(self.amt));
            }
        }
    }
}

/// Copies `a` (the device) ⇄ `b` (the server) until both directions have ended (each end
/// shuts the other side's writing half down); the bytes moved each way. Every byte read is
/// added to `activity`.
async fn copy_both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    activity: &AtomicU64,
) -> Result<(u64, u64), Broken>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let result = std::future::poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(r) =
                up.poll_copy(cx, (Pin::new(&mut *a), Pin::new(&mut *b)), activity)
            {
                r.map_err(|f| match f {
                    Failed::Reading(e) => Broken::Device(e),
                    Failed::Writing(e) => Broken::Upstream(e),
                })?;
                up.done = true;
            }
        }
        if !down.done {
            if let Poll::Ready(r) =
                down.poll_copy(cx, (Pin::new(&mut *b), Pin::new(&mut *a)), activity)
            {
                r.map_err(|f| match f {
                    Failed::Reading(e) => Broken::Upstream(e),
                    Failed::Writing(e) => Broken::Device(e),
                })?;
                down.done = true;
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok((up.amt, down.amt)))
        } else {
            Poll::Pending
        }
    })
    .await;
    up.release();
    down.release();
    result
}

/// Runs the pipe for an authenticated session until it ends or `close` is cancelled (shutdown),
/// and logs how it ended (byte counts only): a server fault at WARN, since it is the server's
/// (or its network's) to fix and every session of the account may meet it; anything else at
/// INFO. `lost` is the line the device gets when the server's side fails.
pub async fn run_authenticated(
    ctx: &crate::session::ListenerContext,
    client: Conn,
    upstream: Conn,
    account: &str,
    lost: &[u8],
) -> crate::session::Outcome {
    let close = &ctx.shared.close_sessions;
    let result = tokio::select! {
        r = pipe(client, upstream, ctx.config.idle_timeout, lost) => r,
        _ = close.cancelled() => Err(Broken::Shutdown),
    };
    if let Ok(t) = &result {
        ctx.shared.metrics.relayed(
            ctx.config.protocol,
            t.client_to_upstream,
            t.upstream_to_client,
        );
    }
    match result {
        Ok(t) => tracing::info!(
            account,
            bytes_up = t.client_to_upstream,
            bytes_down = t.upstream_to_client,
            "session relayed"
        ),
        Err(Broken::Upstream(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
            tracing::warn!(account, error = %e, "the server broke the session; the device was told")
        }
        Err(e) => tracing::info!(account, error = %e, "relay ended"),
    }
    crate::session::Outcome::Relayed
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_both_ways_and_each_end_is_passed_on() {
        let (mut device, mut near) = tokio::io::duplex(8 * 1024);
        let (mut far, mut server) = tokio::io::duplex(8 * 1024);
        let pipe = tokio::spawn(async move {
            let activity = AtomicU64::new(0);
            let moved = copy_both_ways(&mut near, &mut far, &activity).await;
            (moved, activity.load(Ordering::Relaxed))
        });
        device.write_all(b"a1 LOGOUT\r\n").await.unwrap();
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a1 LOGOUT\r\n");
        // More than both duplex buffers and the pipe's buffer: back-pressure, nothing lost.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            server.shutdown().await.unwrap();
            server
        });
        let mut received = Vec::new();
        device.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, big);
        let mut server = writer.await.unwrap();
        device.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let (moved, activity) = pipe.await.unwrap();
        assert_eq!(moved.unwrap(), (11, 200_000));
        assert_eq!(activity, 200_011, "every byte read counts as activity");
    }

    /// Yields its chunks one per read, then nothing yet.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                Some(chunk) => {
                    buf.put_slice(&chunk);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    /// Takes everything, noting the size of each write.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn records_ready_together_leave_in_one_write() {
        // Three TLS records' plaintext already decrypted: one write to the device, not three.
        let mut reader = Chunks(vec![vec![1u8; 16384], vec![2; 16384], vec![3; 100]].into());
        let mut writer = Writes::default();
        let activity = AtomicU64::new(0);
        let mut d = Direction::default();
        let polled = std::future::poll_fn(|cx| {
            let ends = (Pin::new(&mut reader), Pin::new(&mut writer));
            Poll::Ready(d.poll_copy(cx, ends, &activity))
        })
        .await;
        assert!(polled.is_pending());
        assert_eq!(writer.0, vec![16384 + 16384 + 100]);
        assert_eq!(activity.load(Ordering::Relaxed), 32868);
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (_device, mut near) = tokio::io::duplex(1024);
        let (mut far, _server) = tokio::io::duplex(1024);
        let mut d = Direction::default();
        let polled = std::future::poll_fn(|cx| {
            let ends = (Pin::new(&mut near), Pin::new(&mut far));
            Poll::Ready(d.poll_copy(cx, ends, &AtomicU64::new(0)))
        })
        .await;
        assert!(polled.is_pending());
        assert!(d.buf.is_none(), "an idle direction keeps no buffer");
    }
}
