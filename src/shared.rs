//! What every session of every listener, the admin server and the background upkeep share:
//! the accounts (replaced on reload), the token cache, the throttle, metrics, and the signal
//! that closes sessions at the end of a drain.

use crate::auth::accounts::Directory;
use crate::auth::tokens::TokenCache;
use crate::config::ClientConfig;
use std::sync::{Arc, RwLock};

/// What every session of every listener shares. Accounts and app registrations can be replaced
/// at run time (SIGHUP); a session keeps the snapshot it started its login with.
pub struct Shared {
    directory: RwLock<Arc<Directory>>,
    clients: RwLock<Arc<Vec<ClientConfig>>>,
    /// Access tokens per account.
    pub tokens: TokenCache,
    /// Cancelled when the drain deadline passes: sessions still running say their protocol's
    /// goodbye (before login) or close the pipe (after login).
    pub close_sessions: tokio_util::sync::CancellationToken,
    /// The counters behind `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Failed logins per address and per username (kept across reloads).
    pub throttle: crate::auth::throttle::Throttle,
    /// Recipients per account of mail sent without a login, for `max_recipients_per_hour`.
    pub quota: crate::auth::quota::Quota,
    /// Events that need an administrator (log only until the relay's start sets `[alerts]`).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// The spool, opened at start when a listener spools.
    pub spool: std::sync::OnceLock<Arc<crate::spool::SpoolHandle>>,
}

impl Shared {
    /// What a started relay shares.
    pub fn new(
        directory: Directory,
        clients: Vec<ClientConfig>,
        tokens: TokenCache,
        metrics: Arc<crate::metrics::Metrics>,
        throttle: crate::auth::throttle::Throttle,
    ) -> Self {
        let alerts = tokens.alerts().clone();
        Shared {
            throttle,
            directory: RwLock::new(Arc::new(directory)),
            clients: RwLock::new(Arc::new(clients)),
            tokens,
            close_sessions: tokio_util::sync::CancellationToken::new(),
            metrics,
            alerts,
            quota: Default::default(),
            spool: std::sync::OnceLock::new(),
        }
    }

    /// The accounts, as of now.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().expect("directory lock").clone()
    }

    /// App registrations for `mailbox~client_id` logins, as of now.
    pub fn clients(&self) -> Arc<Vec<ClientConfig>> {
        self.clients.read().expect("clients lock").clone()
    }

    /// Replaces the accounts and app registrations (a configuration reload). Password-derived
    /// store keys are forgotten: a password may have changed.
    pub fn replace_accounts(&self, directory: Directory, clients: Vec<ClientConfig>) {
        *self.directory.write().expect("directory lock") = Arc::new(directory);
        *self.clients.write().expect("clients lock") = Arc::new(clients);
        self.tokens.store().forget_keys();
    }
}
