//! Sessions: one task per accepted connection.
//!
//! Each protocol has a pre-authentication state machine ([`smtp`]) that reads client commands
//! through the codecs, relays or answers them, performs the [`login`], and on success hands both
//! connections to [`relay::pipe`], which copies bytes until either side is done.

pub mod client;
pub mod imap;
pub mod login;
pub mod pop3;
pub mod relay;
pub mod smtp;
pub mod upstream;

use crate::config::ListenerConfig;
use crate::shared::Shared;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the sessions of one listener share.
pub struct ListenerContext {
    pub config: ListenerConfig,
    /// Present when the listener offers TLS (implicit or STARTTLS).
    pub acceptor: Option<TlsAcceptor>,
    pub connector: TlsConnector,
    pub upstream_name: ServerName<'static>,
    pub shared: Arc<Shared>,
}

/// How a session ended, for the session's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in and relayed until one side closed.
    Relayed,
    /// The client left (QUIT or closed) without logging in.
    ClientLeft,
    /// Closed by the relay before login: timeout, abuse, protocol violation.
    Refused,
    /// The upstream server could not be reached or failed.
    UpstreamFailed,
}
