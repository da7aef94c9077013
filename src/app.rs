//! Starting the relay: from a validated [`Config`] to running listeners.

use crate::admin;
use crate::auth::accounts::Directory;
use crate::auth::oauth;
use crate::auth::tokens::TokenCache;
use crate::config::{Config, ListenerConfig, LocalTls};
use crate::net::tls;
use crate::session::listener;
use crate::session::ListenerContext;
use crate::shared::Shared;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running relay: its bound addresses and the handle to stop it.
pub struct Running {
    /// Each listener's name and bound address (and `admin`'s).
    pub addresses: Vec<(String, SocketAddr)>,
    /// Cancelled to stop accepting and start the drain.
    pub shutdown: CancellationToken,
    /// Every session and background task, to wait for at the end.
    pub tasks: TaskTracker,
    /// What sessions, the admin server and the upkeep share.
    pub shared: Arc<Shared>,
    /// The accept loop of each listener, by name (replaced on reload).
    listeners: tokio::sync::Mutex<HashMap<String, ListenerHandle>>,
    /// What a reload cannot change without a restart.
    fixed: (crate::config::AdminConfig, crate::config::StoreConfig),
    /// The `[security]` in force (a reload applies all but the token cache's settings).
    security: tokio::sync::Mutex<crate::config::SecurityConfig>,
}

struct ListenerHandle {
    config: ListenerConfig,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Applies a new, already validated configuration without dropping running sessions:
    /// accounts and app registrations are replaced (new logins see them at once), listeners
    /// that were added, removed or changed are started or stopped (their sessions go on). Returns
    /// what changed; on error nothing of the accounts changed and the old listeners still run,
    /// except a changed listener whose new address could not be bound (named in the error).
    pub async fn reload(&self, config: &Config) -> Result<Vec<String>, ReloadError> {
        let mut changes = Vec::new();
        let mut current = self.listeners.lock().await;
        // Everything that can fail before anything changes: TLS files, server names.
        let mut starting = Vec::new();
        for l in &config.listeners {
            if current.get(&l.name).is_some_and(|h| h.config == *l) {
                continue;
            }
            let ctx = listener_context(l, self.shared.clone()).map_err(|e| ReloadError(vec![e]))?;
            starting.push(Arc::new(ctx));
        }
        let stopping: Vec<String> = current
            .iter()
            .filter(|(name, h)| {
                !config
                    .listeners
                    .iter()
                    .any(|l| l.name == **name && l == &h.config)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stopping {
            if let Some(h) = current.remove(&name) {
                h.stop.cancel();
                let _ = h.task.await;
                changes.push(format!("listener.{name} stopped (its sessions go on)"));
            }
        }
        let mut errors = Vec::new();
        for ctx in starting {
            let name = ctx.config.name.clone();
            match bind(ctx).await {
                Ok(b) => {
                    self.tasks.spawn(listener::probe(b.ctx.clone()));
                    current.insert(name.clone(), self.spawn_listener(b));
                    changes.push(format!("listener.{name} started"));
                }
                Err(e) => errors.push(e),
            }
        }
        self.replace_accounts(config, &mut changes);
        self.apply_security(config, &mut changes).await;
        let (admin, store) = &self.fixed;
        if admin.listen != config.admin.listen
            || admin.public_url != config.admin.public_url
            || store.path != config.store.path
        {
            changes.push("[admin] and [store] changes need a restart".to_owned());
        }
        if errors.is_empty() {
            Ok(changes)
        } else {
            Err(ReloadError(errors))
        }
    }

    /// Swaps in the new accounts and app registrations, noting which were added or removed.
    fn replace_accounts(&self, config: &Config, changes: &mut Vec<String>) {
        let before: Vec<String> = self
            .shared
            .directory()
            .accounts()
            .map(|a| a.id.clone())
            .collect();
        let directory = Directory::new(&config.accounts, &config.security);
        self.shared
            .replace_accounts(directory, config.clients.clone());
        for a in &config.accounts {
            if !before.contains(&a.id) {
                changes.push(format!("account.{} added", a.id));
            }
        }
        for id in before {
            if !config.accounts.iter().any(|a| a.id == id) {
                changes.push(format!("account.{id} removed"));
            }
        }
    }

    /// Applies what of `[security]` can change at run time, noting what needs a restart.
    async fn apply_security(&self, config: &Config, changes: &mut Vec<String>) {
        let mut security = self.security.lock().await;
        let (applied, restart) = security.changes(&config.security);
        self.shared.throttle.set_limits(
            config.security.max_failures_per_address,
            config.security.max_failures_per_username,
            config.security.throttle_window,
        );
        if !applied.is_empty() {
            changes.push(format!("[security] {} applied", applied.join(", ")));
        }
        if !restart.is_empty() {
            changes.push(format!("[security] {} need a restart", restart.join(", ")));
        }
        let mut kept = config.security.clone();
        kept.refresh_margin = security.refresh_margin;
        kept.token_timeout = security.token_timeout;
        *security = kept;
    }

    fn spawn_listener(&self, b: listener::Bound) -> ListenerHandle {
        let stop = self.shutdown.child_token();
        let config = b.ctx.config.clone();
        let task = self
            .tasks
            .spawn(listener::serve(b, stop.clone(), self.tasks.clone()));
        ListenerHandle { config, stop, task }
    }

    /// Stops accepting, lets running sessions go on for up to `drain`, then closes the rest
    /// (pre-login sessions get their protocol's goodbye) and waits for them to end.
    pub async fn stop(self, drain: std::time::Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                sessions = self.tasks.len(),
                "drain deadline passed; closing the remaining sessions"
            );
            self.shared.close_sessions.cancel();
            self.tasks.wait().await;
        }
    }
}

/// What sessions, the admin server and the upkeep share: the store, the token cache, the
/// accounts, the throttle and the metrics.
pub(crate) fn shared_state(
    config: &Config,
    alerts: crate::alerts::Alerts,
) -> Result<Shared, StartError> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let alerts = Arc::new(alerts);
    let store = config.store.open()?;
    let admin_url = config.admin.listen.map(|_| config.admin.public_url.clone());
    let tokens = TokenCache::new(
        oauth::http_client(config.security.token_timeout),
        config.security.refresh_margin,
        store,
        admin_url,
        (metrics.clone(), alerts.clone()),
    );
    let directory = Directory::new(&config.accounts, &config.security);
    let throttle = crate::auth::throttle::Throttle::new(
        config.security.max_failures_per_address,
        config.security.max_failures_per_username,
        config.security.throttle_window,
    );
    Ok(Shared::new(
        directory,
        config.clients.clone(),
        tokens,
        metrics,
        throttle,
    ))
}

/// Devices connecting right after start should see the upstreams' real capabilities: the
/// probes get a short head start, then the listeners accept anyway (an upstream that is down or
/// slow must not keep them closed; its probe goes on in the background).
async fn probe_with_head_start(tasks: &TaskTracker, bound: &[listener::Bound]) {
    let probes: Vec<_> = bound
        .iter()
        .map(|b| tasks.spawn(listener::probe(b.ctx.clone())))
        .collect();
    let head_start = tokio::time::Instant::now() + PROBE_HEAD_START;
    for probe in probes {
        let _ = tokio::time::timeout_at(head_start, probe).await;
    }
}

/// How long the listeners wait at start for their upstream probes before accepting anyway.
const PROBE_HEAD_START: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) fn listener_context(
    config: &ListenerConfig,
    shared: Arc<Shared>,
) -> Result<ListenerContext, StartError> {
    let where_ = |source| StartError::Tls {
        listener: config.name.clone(),
        source,
    };
    let acceptor = match (config.tls, &config.cert, &config.key) {
        (LocalTls::None, _, _) => None,
        (_, Some(cert), Some(key)) => {
            Some(tls::Acceptor::new(cert, key, config.tls_min_version).map_err(where_)?)
        }
        _ => {
            let missing = tls::TlsError::Config("local TLS needs cert and key".into());
            return Err(where_(missing));
        }
    };
    let spool = config.spool.then(|| shared.spool.get().cloned()).flatten();
    let mut ctx = ListenerContext::new(config.clone(), acceptor, shared).map_err(where_)?;
    ctx.spool = spool;
    Ok(ctx)
}

/// Opens the spool when a listener spools (once; a reload that adds a spool listener later
/// needs a restart to open it).
fn open_spool(config: &Config, shared: &Shared) -> Result<(), StartError> {
    if !config.listeners.iter().any(|l| l.spool) {
        return Ok(());
    }
    let spool = crate::spool::Spool::open(&config.spool.path)?;
    let handle = crate::spool::SpoolHandle {
        spool,
        config: config.spool.clone(),
    };
    let _ = shared.spool.set(Arc::new(handle));
    Ok(())
}

/// Binds a listener's address; the error names the listener and the address.
async fn bind(ctx: Arc<ListenerContext>) -> Result<listener::Bound, StartError> {
    let (name, address) = (ctx.config.name.clone(), ctx.config.listen);
    listener::bind(ctx)
        .await
        .map_err(|source| StartError::Bind {
            listener: name,
            address,
            source,
        })
}

/// Why the relay could not start, or a reload could not start a listener.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The token store cannot be opened.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The spool cannot be opened.
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// A listener's TLS settings (local certificate, upstream CA, pins, name) cannot be used.
    #[error("listener.{listener}: {source}")]
    Tls {
        /// The listener's name.
        listener: String,
        /// What is wrong.
        #[source]
        source: tls::TlsError,
    },
    /// A listener's address cannot be bound.
    #[error("listener.{listener}: cannot listen on {address}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address.
        address: std::net::SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The admin server's address cannot be bound.
    #[error("admin.listen: cannot listen on {address}: {source} (set [admin] listen, or enabled = false)")]
    Admin {
        /// The address.
        address: std::net::SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// A reload that could start only some of its new listeners: each failure.
#[derive(Debug)]
pub struct ReloadError(pub Vec<StartError>);

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReloadError {}

/// Background token upkeep: refresh ahead of expiry and keep refresh tokens alive, for the
/// accounts whose store key is known (a store key file, or a login since start).
async fn upkeep(
    shared: Arc<Shared>,
    every: std::time::Duration,
    keepalive: std::time::Duration,
    shutdown: CancellationToken,
) {
    loop {
        let accounts: Vec<_> = shared.directory().accounts().cloned().collect();
        shared.tokens.maintain(&accounts, keepalive).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The alert sender (when `[alerts]` sends anywhere) and the watch for what no request sees.
fn spawn_alerts(
    tasks: &TaskTracker,
    config: &Config,
    shared: &Arc<Shared>,
    inbox: Option<tokio::sync::mpsc::UnboundedReceiver<crate::alerts::Event>>,
    shutdown: &CancellationToken,
) {
    if let Some(inbox) = inbox {
        let (config, shared) = (config.alerts.clone(), shared.clone());
        tasks.spawn(crate::alerting::send::run(
            inbox,
            config,
            shared,
            shutdown.clone(),
        ));
    }
    let watch =
        crate::alerting::watch::run(shared.clone(), config.alerts.clone(), shutdown.clone());
    tasks.spawn(watch);
}

/// Binds every listener (all or nothing) and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let (alerts, alert_inbox) = crate::alerts::Alerts::new(&config.alerts);
    let shared = Arc::new(shared_state(config, alerts)?);
    open_spool(config, &shared)?;
    let mut bound = Vec::new();
    for l in &config.listeners {
        let ctx = Arc::new(listener_context(l, shared.clone())?);
        bound.push(bind(ctx).await?);
    }
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Admin {
                    address: addr,
                    source,
                })?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut running = Running {
        addresses: Vec::new(),
        shutdown,
        tasks,
        shared: shared.clone(),
        listeners: Default::default(),
        fixed: (config.admin.clone(), config.store.clone()),
        security: tokio::sync::Mutex::new(config.security.clone()),
    };
    probe_with_head_start(&running.tasks, &bound).await;
    // Delivery from the spool runs with the first spool listener's upstream and limits.
    if let Some(b) = bound.iter().find(|b| b.ctx.config.spool) {
        let shutdown = running.shutdown.clone();
        running
            .tasks
            .spawn(crate::deliver::run(b.ctx.clone(), shutdown));
    }
    for b in bound {
        let addr = b.socket.local_addr().map_err(|source| StartError::Bind {
            listener: b.ctx.config.name.clone(),
            address: b.ctx.config.listen,
            source,
        })?;
        running.addresses.push((b.ctx.config.name.clone(), addr));
        let name = b.ctx.config.name.clone();
        let handle = running.spawn_listener(b);
        running.listeners.get_mut().insert(name, handle);
    }
    let (shutdown, tasks) = (running.shutdown.clone(), running.tasks.clone());
    if let (Some(l), Some(address)) = (admin_listener, config.admin.listen) {
        let bound = l
            .local_addr()
            .map_err(|source| StartError::Admin { address, source })?;
        running.addresses.push(("admin".to_owned(), bound));
        tasks.spawn(admin::serve(
            l,
            shared.clone(),
            config.admin.clone(),
            shutdown.clone(),
        ));
    }
    spawn_alerts(&tasks, config, &shared, alert_inbox, &shutdown);
    tasks.spawn(upkeep(
        shared.clone(),
        config.store.check_interval,
        config.store.keepalive,
        shutdown.clone(),
    ));
    Ok(running)
}
