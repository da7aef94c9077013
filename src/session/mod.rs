//! Sessions: one task per accepted connection.
//!
//! Before login every protocol runs the same [`driver`]: it reads the client's commands through
//! the protocol's description ([`smtp`], [`imap`], [`pop3`]), answers them locally (greeting and
//! capabilities from the [`ListenerContext::capabilities`] cache), checks the local password,
//! and only then opens the account's upstream ([`upstream::Target`]) and logs in there. After
//! login the protocol takes over: a byte pipe ([`relay::pipe`]), or for SMTP accounts whose
//! senders are checked, a command-aware loop.

pub mod client;
pub mod driver;
pub mod imap;
pub mod listener;
pub mod login;
pub mod pop3;
pub mod relay;
pub mod slot;
pub mod smtp;
pub mod upstream;

use crate::config::{AccountConfig, ListenerConfig, UpstreamSpec};
use crate::net::tls::Acceptor as TlsAcceptor;
use crate::shared::Shared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use upstream::Target;

/// What the sessions of one listener share.
pub struct ListenerContext {
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// Present when the listener offers TLS (implicit or STARTTLS).
    pub acceptor: Option<TlsAcceptor>,
    /// The listener's upstream: the default for accounts without their own.
    pub upstream: Arc<Target>,
    /// Targets of accounts with their own upstream, built on first use.
    targets: Mutex<HashMap<UpstreamSpec, Arc<Target>>>,
    /// What the listener's upstream offered when last seen, shown before login.
    pub capabilities: CapabilityCache,
    /// The spool and its limits, for a spool listener.
    pub spool: Option<Arc<crate::spool::SpoolHandle>>,
    /// What every listener shares.
    pub shared: Arc<Shared>,
}

impl ListenerContext {
    /// The context of one listener; fails when its upstream's TLS settings cannot be used.
    pub fn new(
        config: ListenerConfig,
        acceptor: Option<TlsAcceptor>,
        shared: Arc<Shared>,
    ) -> Result<Self, crate::net::tls::TlsError> {
        let upstream = Arc::new(Target::new(&config.upstream, &config)?);
        Ok(ListenerContext {
            config,
            acceptor,
            upstream,
            targets: Mutex::new(HashMap::new()),
            capabilities: CapabilityCache::default(),
            spool: None,
            shared,
        })
    }

    /// The spool's limits, for a spool listener.
    pub fn spool_limits(&self) -> Option<&crate::config::SpoolConfig> {
        self.spool.as_ref().map(|s| &s.config)
    }

    /// The server `account` logs in to through this listener: its own, or the listener's.
    pub fn target(
        &self,
        account: &AccountConfig,
    ) -> Result<Arc<Target>, crate::net::tls::TlsError> {
        let Some(spec) = account.upstreams.get(self.config.protocol) else {
            return Ok(self.upstream.clone());
        };
        if *spec == self.config.upstream {
            return Ok(self.upstream.clone());
        }
        let mut targets = self.targets.lock().expect("targets lock");
        if let Some(t) = targets.get(spec) {
            return Ok(t.clone());
        }
        let target = Arc::new(Target::new(spec, &self.config)?);
        targets.insert(spec.clone(), target.clone());
        Ok(target)
    }

    /// Remembers what `target` offered, when it is the listener's own upstream (the one whose
    /// capabilities devices see before login).
    pub fn learned(&self, target: &Target, capabilities: Option<Vec<Vec<u8>>>) {
        if let Some(caps) = capabilities {
            if target.spec == self.config.upstream {
                self.capabilities.set(caps);
            }
        }
    }
}

/// The capabilities the listener's upstream offered when it was last seen (EHLO keywords, IMAP
/// capability words, POP3 CAPA lines), or none before the first connection.
#[derive(Default)]
pub struct CapabilityCache(RwLock<Option<Arc<Vec<Vec<u8>>>>>);

impl CapabilityCache {
    /// The cached list, if the upstream was ever seen.
    pub fn get(&self) -> Option<Arc<Vec<Vec<u8>>>> {
        self.0.read().expect("capability cache").clone()
    }

    fn set(&self, caps: Vec<Vec<u8>>) {
        let mut slot = self.0.write().expect("capability cache");
        if slot.as_deref() != Some(&caps) {
            tracing::debug!(count = caps.len(), "upstream capabilities learned");
            *slot = Some(Arc::new(caps));
        }
    }
}

pub use crate::metrics::Outcome;
