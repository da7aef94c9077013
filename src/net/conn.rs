//! A connection with its receive buffer, upgradable to TLS in place.
//!
//! The sessions read through [`Conn::fill`] into one buffer and let the codecs cut units out of
//! it. Owning the buffer (rather than a `BufReader`) is what makes the STARTTLS injection
//! defence possible: before a TLS handshake the buffer must be empty, or the plaintext that was
//! pipelined behind STARTTLS would be treated as if it had come through TLS (CVE-2011-0411).

use super::read_ahead::ReadAhead;
use super::records::{self, RecordStream};
use super::tls::Acceptor;
use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{server, TlsConnector};

/// Initial receive buffer capacity: pre-authentication lines are short.
const INITIAL_BUFFER: usize = 4096;

/// A TCP stream, possibly inside TLS (as server towards clients, as client towards upstream).
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS as the server (towards a device).
    ServerTls(Box<server::TlsStream<ReadAhead<TcpStream>>>),
    /// TLS as the client (towards upstream).
    ClientTls(Box<RecordStream>),
    /// TLS 1.0-1.3 as the server through OpenSSL (a `tls_min_version` listener).
    #[cfg(feature = "legacy-tls")]
    LegacyTls(Box<tokio_openssl::SslStream<TcpStream>>),
    /// Only while a handshake is in progress.
    Detached,
}

impl Stream {
    /// True once TLS is up.
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::ServerTls(_) | Stream::ClientTls(_) => true,
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(_) => true,
            Stream::Plain(_) | Stream::Detached => false,
        }
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost during a TLS handshake",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ServerTls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ClientTls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(s) => s.is_write_vectored(),
            Stream::Detached => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(s) => Pin::new(s).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "legacy-tls")]
            Stream::LegacyTls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// A stream and the bytes received on it that no one has consumed yet.
pub struct Conn {
    stream: Stream,
    buf: BytesMut,
}

impl Conn {
    /// A plaintext connection with an empty buffer.
    pub fn new(tcp: TcpStream) -> Self {
        Conn {
            stream: Stream::Plain(tcp),
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
        }
    }

    /// True once TLS is up.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops `n` bytes from the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Makes room for at least `n` more bytes, so the next [`Self::fill`] can read that much at
    /// once (a message streaming through wants large reads; pre-login lines do not).
    pub fn reserve(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() < n {
            self.buf.reserve(n);
        }
    }

    /// Gives a large buffer back once a transfer is over, keeping what it holds: a session that
    /// streamed a message through with [`Self::reserve`] does not keep that much memory while it
    /// waits for its next command.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > 4 * INITIAL_BUFFER && self.buf.len() <= INITIAL_BUFFER {
            let mut small = BytesMut::with_capacity(INITIAL_BUFFER);
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(INITIAL_BUFFER);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Writes all of `data` and flushes.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    /// Sends several pieces as one write where the stream allows it (a command and its CRLF).
    pub async fn send_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut joined = zeroize::Zeroizing::new(Vec::with_capacity(total));
        for p in parts {
            joined.extend_from_slice(p);
        }
        self.send(&joined).await
    }

    /// Runs the server side of a TLS handshake (implicit TLS, or after STARTTLS). The receive
    /// buffer must be empty: bytes that arrived before the handshake are never carried into TLS.
    pub async fn accept_tls(&mut self, acceptor: &Acceptor) -> io::Result<()> {
        let tcp = self.take_plain()?;
        match acceptor {
            Acceptor::Rustls(acceptor) => {
                let tls = acceptor.accept(ReadAhead::new(tcp)).await?;
                self.stream = Stream::ServerTls(Box::new(tls));
            }
            #[cfg(feature = "legacy-tls")]
            Acceptor::Legacy(acceptor) => {
                let ssl = openssl::ssl::Ssl::new(acceptor.context()).map_err(io::Error::other)?;
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).map_err(io::Error::other)?;
                Pin::new(&mut tls)
                    .accept()
                    .await
                    .map_err(io::Error::other)?;
                self.stream = Stream::LegacyTls(Box::new(tls));
            }
        }
        Ok(())
    }

    /// Runs the client side of a TLS handshake towards upstream, verifying `name`.
    pub async fn connect_tls(
        &mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let tcp = self.take_plain()?;
        let (tls, early) = records::connect(connector.config().clone(), name, tcp).await?;
        // Application data the server sent with its last handshake flight, decrypted.
        self.buf.extend_from_slice(&early);
        self.stream = Stream::ClientTls(Box::new(tls));
        Ok(())
    }

    fn take_plain(&mut self) -> io::Result<TcpStream> {
        if !self.buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "plaintext received before the TLS handshake (STARTTLS injection)",
            ));
        }
        match std::mem::replace(&mut self.stream, Stream::Detached) {
            Stream::Plain(tcp) => Ok(tcp),
            other => {
                self.stream = other;
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is already active",
                ))
            }
        }
    }

    /// The stream and the unconsumed bytes, for the post-authentication pipe.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Closes the write side (TLS close_notify first), best effort.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// A TLS connector for one upstream.
pub fn connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector::from(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_buffer_grown_for_a_message_shrinks_back_and_keeps_what_is_unread() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = Conn::new(listener.accept().await.unwrap().0);
        conn.reserve(256 * 1024);
        peer.write_all(b"message end\r\n.\r\nQUIT\r\n")
            .await
            .unwrap();
        while !conn.buffered().ends_with(b"QUIT\r\n") {
            conn.fill().await.unwrap();
        }
        conn.consume(b"message end\r\n.\r\n".len());
        assert!(conn.buf.capacity() > 4 * INITIAL_BUFFER);
        conn.shrink();
        assert!(
            conn.buf.capacity() <= 4 * INITIAL_BUFFER,
            "the large buffer is given back"
        );
        assert_eq!(conn.buffered(), b"QUIT\r\n", "the next command is kept");
    }
}
