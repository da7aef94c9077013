//! Access-token cache: one entry per account, refreshed one at a time, ahead of expiry, and
//! kept in the token store so a restart or an outage loses nothing.
//!
//! The fast path (a cached token with more than the refresh margin left, and a store whose
//! entry has not changed since) takes a read lock and clones an `Arc`. Only when a refresh is
//! due does a login wait on the account's async mutex; whoever gets it first refreshes, and
//! everyone queued behind it finds the new token.
//!
//! The store is the source of truth for refresh tokens: an entry written by `authrelay login`
//! or the account page (a new generation) replaces what the cache holds, and a rotated refresh
//! token is written to the store before the new access token is used.

mod lease;
mod report;
mod upkeep;

use crate::auth::oauth::{self, ErrorClass, TokenError};
use crate::config::{AccountAuth, AccountConfig, AppOverrides, Flow, OAuthConfig};
use crate::credential::assertion::CertificateSigner;
use crate::secret::Secret;
use crate::store::{unix_now, Change, Key, Store};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;

/// An access token and when it stops being usable.
#[derive(Debug)]
pub struct AccessToken {
    /// The token itself.
    pub secret: Secret,
    /// When it was obtained (a token refused soon after is not retried).
    pub obtained_at: Instant,
    /// When it expires.
    pub expires_at: Instant,
}

impl AccessToken {
    /// Time left before it expires.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// A token read back from the store: its age is unknown, so it counts as old enough to be
    /// refreshed at once if upstream refuses it.
    fn from_store(secret: Secret, expires: SystemTime) -> AccessToken {
        let now = Instant::now();
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(oauth::MAX_TOKEN_LIFETIME);
        AccessToken {
            secret,
            obtained_at: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            expires_at: now + left,
        }
    }
}

/// The resource a token is for. A Microsoft access token has one audience: a token for IMAP,
/// POP and SMTP (`https://outlook.office.com/...`) is refused by Graph and the other way round,
/// while one refresh token is redeemed for both ("Microsoft identity platform access tokens",
/// learn.microsoft.com/entra/identity-platform/access-tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The account's own scopes: IMAP, POP and SMTP upstream logins.
    Mail,
    /// Microsoft Graph (`send = "graph"`): the account's `graph_scopes`.
    Graph,
}

impl Audience {
    fn slot(self) -> usize {
        match self {
            Audience::Mail => 0,
            Audience::Graph => 1,
        }
    }
}

/// One account's tokens: an access token per audience, one refresh token for both.
#[derive(Default)]
struct AccountTokens {
    /// The access token of each audience, indexed by [`Audience::slot`].
    current: [RwLock<Option<Arc<AccessToken>>>; 2],
    /// The store generation that `current` and the refresh token reflect.
    seen_generation: AtomicU64,
    /// Unix seconds of the last login that asked for a token.
    last_used: AtomicU64,
    /// The refresh state, behind the lock that makes refreshes single-flight.
    state: Mutex<RefreshState>,
}

#[derive(Default)]
struct RefreshState {
    /// The newest refresh token known (store, rotation, or configuration).
    refresh: Option<Secret>,
    generation: u64,
    /// The store holds a refresh token this process cannot open yet: it is sealed with the
    /// account's local password and no device has given it since start.
    locked: bool,
}

/// Why a token is being asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A login: any token with more than the margin left will do.
    Login,
    /// Keep-alive: use the refresh token even if the access token is still good.
    Refresh,
}

/// Access tokens per account: served from memory, refreshed once per account at a time (single flight), kept in the token store.
pub struct TokenCache {
    http: reqwest::Client,
    entries: DashMap<String, Arc<AccountTokens>>,
    margin: Duration,
    requests: AtomicU64,
    store: Arc<Store>,
    signers: DashMap<String, Arc<CertificateSigner>>,
    /// Where an administrator re-authorizes an account (the admin server), for warnings.
    admin_url: Option<String>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Where a refused grant or registration is raised, and its end resolved.
    alerts: Arc<crate::alerts::Alerts>,
    /// Accounts whose grant the identity provider refused for good at the last try, with why:
    /// a spool login then tells the device at once instead of queueing what cannot go out.
    dead_grants: DashMap<String, TokenError>,
}

impl TokenCache {
    /// Why the account's grant was refused for good at the last token request, if it was.
    pub fn dead_grant(&self, account_id: &str) -> Option<TokenError> {
        self.dead_grants.get(account_id).map(|e| e.clone())
    }

    /// A cache that requests tokens with `http`, refreshes `margin` before expiry, and keeps them in `store`; `admin_url` is named in re-authorization advice.
    pub fn new(
        http: reqwest::Client,
        margin: Duration,
        store: Arc<Store>,
        admin_url: Option<String>,
        (metrics, alerts): (Arc<crate::metrics::Metrics>, Arc<crate::alerts::Alerts>),
    ) -> Self {
        TokenCache {
            http,
            entries: DashMap::new(),
            margin,
            requests: Default::default(),
            dead_grants: DashMap::new(),
            store,
            signers: DashMap::new(),
            admin_url,
            metrics,
            alerts,
        }
    }

    /// Where the cache raises refused grants (the relay's alerts).
    pub fn alerts(&self) -> &Arc<crate::alerts::Alerts> {
        &self.alerts
    }

    /// The token store behind the cache.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The HTTP client used for the identity provider.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How many token requests this cache has made (for tests and metrics).
    pub fn requests_made(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn entry(&self, account_id: &str) -> Arc<AccountTokens> {
        if let Some(e) = self.entries.get(account_id) {
            return e.clone();
        }
        self.entries
            .entry(account_id.to_owned())
            .or_default()
            .clone()
    }

    /// How many accounts have cached state (a bound a test can watch).
    pub fn cached_accounts(&self) -> usize {
        self.entries.len()
    }

    /// Drops what is cached for an account (a failed `mailbox~client_id` login, whose made-up
    /// account must leave nothing behind).
    pub fn forget(&self, account_id: &str) {
        self.entries.remove(account_id);
        self.signers.remove(account_id);
    }

    /// The cached access token's time left, if there is one.
    pub fn remaining(&self, account_id: &str) -> Option<Duration> {
        let e = self.entries.get(account_id)?;
        let current = e.current[Audience::Mail.slot()]
            .read()
            .expect("token lock poisoned");
        current.as_ref().map(|t| t.remaining())
    }

    /// How to re-authorize `account_id`, for messages: "at URL" or "with `authrelay login`".
    pub fn reauthorize_hint(&self, account_id: &str) -> String {
        match &self.admin_url {
            Some(url) => format!("at {url}/account/{account_id}"),
            None => format!("with `authrelay login {account_id}`"),
        }
    }

    /// A token with more than the margin left. `password` is the client's verified local
    /// password (it unlocks a password-sealed store entry). With `rejected`, the caller saw that
    /// token refused upstream: a different, newer token is returned, refreshing if no one else
    /// has already.
    pub async fn access_token(
        &self,
        account: &AccountConfig,
        password: Option<&Secret>,
        rejected: Option<&Arc<AccessToken>>,
    ) -> Result<Arc<AccessToken>, TokenError> {
        self.access_token_for(account, password, rejected, Audience::Mail)
            .await
    }

    /// [`TokenCache::access_token`] for another audience (Microsoft Graph), redeeming the same
    /// refresh token under the same single-flight lock.
    pub async fn access_token_for(
        &self,
        account: &AccountConfig,
        password: Option<&Secret>,
        rejected: Option<&Arc<AccessToken>>,
        audience: Audience,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let entry = self.entry(&account.id);
        entry.last_used.store(unix_now(), Ordering::Relaxed);
        let generation = if account.ephemeral {
            0
        } else {
            self.store.generation(&account.id)
        };
        if entry.seen_generation.load(Ordering::Acquire) == generation {
            if let Some(t) = self.usable(&entry, audience, rejected) {
                return Ok(t);
            }
        }
        self.obtain(account, &entry, password, rejected, (Need::Login, audience))
            .await
    }

    async fn obtain(
        &self,
        account: &AccountConfig,
        entry: &AccountTokens,
        password: Option<&Secret>,
        rejected: Option<&Arc<AccessToken>>,
        (need, audience): (Need, Audience),
    ) -> Result<Arc<AccessToken>, TokenError> {
        let AccountAuth::OAuth(oauth) = &account.auth else {
            return Err(TokenError::new(
                ErrorClass::Configuration,
                "not_oauth",
                "the account does not use OAuth",
            ));
        };
        let mut state = entry.state.lock().await;
        let (key, overrides) = if account.ephemeral {
            if state.refresh.is_none() {
                state.refresh = oauth.refresh_token.clone();
            }
            (None, AppOverrides::default())
        } else {
            self.sync_from_store(account, entry, &mut state, password)
                .await
        };
        // Someone else may have refreshed while we waited for the lock.
        if need == Need::Login {
            if let Some(t) = self.usable(entry, audience, rejected) {
                return Ok(t);
            }
        }
        // Across replicas: take the lease, or use what its holder wrote.
        let _lease = match self
            .lease_or_wait(
                account,
                entry,
                &mut state,
                password,
                (need, audience),
                rejected,
            )
            .await
        {
            lease::Leased::Token(t) => return Ok(t),
            lease::Leased::Go(guard) => guard,
        };
        let result = self
            .request(account, oauth, &overrides, &state, audience)
            .await;
        self.metrics.refresh(
            match &result {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.code(),
            }
            .as_str(),
        );
        let grant = match result {
            Ok(g) => g,
            Err(e) => {
                self.report_failure(account, &e).await;
                return Err(e);
            }
        };
        Ok(self
            .keep_grant(account, entry, &mut state, key.as_ref(), grant, audience)
            .await)
    }

    /// Makes a new grant current: the rotated refresh token written to the store first (before
    /// the access token is used), then the access token for its audience.
    async fn keep_grant(
        &self,
        account: &AccountConfig,
        entry: &AccountTokens,
        state: &mut RefreshState,
        key: Option<&Key>,
        grant: oauth::Grant,
        audience: Audience,
    ) -> Arc<AccessToken> {
        let obtained = Instant::now();
        let expires = SystemTime::now() + grant.expires_in;
        if !account.ephemeral {
            // Keep the rotated refresh token before the new access token is used.
            // The store keeps the mail audience's access token; a Graph token lives in memory.
            let keep = (audience == Audience::Mail).then_some(expires);
            self.persist(account, entry, state, key, &grant, keep).await;
        }
        if let Some(rotated) = grant.refresh_token {
            state.refresh = Some(rotated);
        }
        let token = Arc::new(AccessToken {
            secret: grant.access_token,
            obtained_at: obtained,
            expires_at: obtained + grant.expires_in,
        });
        *entry.current[audience.slot()]
            .write()
            .expect("token lock poisoned") = Some(token.clone());
        self.grant_renewed(&account.id);
        tracing::info!(
            account = %account.id,
            audience = ?audience,
            expires_in_secs = grant.expires_in.as_secs(),
            "access token refreshed"
        );
        token
    }

    /// Writes a grant's tokens to the store (when its key is known) and records the generation
    /// written, so this process does not take its own write for another's. The access token is
    /// written only with its expiry `expires` (the mail audience's).
    async fn persist(
        &self,
        account: &AccountConfig,
        entry: &AccountTokens,
        state: &mut RefreshState,
        key: Option<&Key>,
        grant: &oauth::Grant,
        expires: Option<SystemTime>,
    ) {
        let Some(key) = key else {
            tracing::debug!(account = %account.id, "no key for the token store yet; the new tokens are kept in memory");
            return;
        };
        let change = Change {
            refresh_token: grant.refresh_token.clone(),
            access_token: expires.map(|e| (grant.access_token.clone(), e)),
            refreshed: true,
            ..Default::default()
        };
        match self
            .store
            .update_async(&account.id, Some(key), change)
            .await
        {
            Ok(generation) => {
                state.generation = generation;
                entry.seen_generation.store(generation, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(account = %account.id, "the new tokens could not be saved: {e}")
            }
        }
    }

    /// Brings the entry up to date with the store (a new refresh token from `authrelay login`,
    /// the page, or another replica), and returns the store key and the page's app settings.
    async fn sync_from_store(
        &self,
        account: &AccountConfig,
        entry: &AccountTokens,
        state: &mut RefreshState,
        password: Option<&Secret>,
    ) -> (Option<Key>, AppOverrides) {
        let id = &account.id;
        // The slow path (a token request may follow): look at the file now, not within the
        // second the fast path allows, so a sign-in made by another process a moment ago counts.
        if let Err(e) = self.store.refresh_view() {
            tracing::warn!(account = %id, "cannot read the token store: {e}");
        }
        let key = self.store.unlock(id, password).await;
        let stored = self.store.entry(id);
        let generation = stored.as_ref().map_or(0, |e| e.generation);
        let mut overrides = AppOverrides {
            client_id: stored.as_ref().and_then(|e| e.client_id.clone()),
            tenant: stored.as_ref().and_then(|e| e.tenant.clone()),
            client_secret: None,
        };
        // The entry counts as seen only once its secrets were read: an entry sealed with a key
        // this process does not have yet (a local password no device has given since start)
        // must be read again when one is given, or its refresh token would never be used.
        let mut read = stored.as_ref().is_none_or(|e| e.seal.is_none());
        if let Some(k) = &key {
            match self.store.open_entry(id, k) {
                Ok(opened) => {
                    read = true;
                    overrides.client_secret = opened.client_secret;
                    if state.generation != generation {
                        if opened.refresh_token.is_some() {
                            // A new sign-in (the page, `authrelay login`, another replica).
                            self.grant_renewed(id);
                            state.refresh = opened.refresh_token;
                        }
                        let stored_token = opened
                            .access_token
                            .map(|(s, exp)| Arc::new(AccessToken::from_store(s, exp)));
                        *entry.current[Audience::Mail.slot()]
                            .write()
                            .expect("token lock poisoned") = stored_token;
                        // A new grant (perhaps another user's): no older Graph token stays.
                        *entry.current[Audience::Graph.slot()]
                            .write()
                            .expect("token lock poisoned") = None;
                    }
                }
                Err(e) => {
                    if state.generation != generation {
                        tracing::warn!(account = %id, "{e}");
                    }
                }
            }
        }
        if state.refresh.is_none() {
            if let AccountAuth::OAuth(o) = &account.auth {
                state.refresh = o.refresh_token.clone();
            }
        }
        state.locked = !read && stored.as_ref().is_some_and(|e| e.has_refresh_token());
        if read {
            state.generation = generation;
            entry.seen_generation.store(generation, Ordering::Release);
        }
        (key, overrides)
    }

    async fn request(
        &self,
        account: &AccountConfig,
        oauth: &OAuthConfig,
        overrides: &AppOverrides,
        state: &RefreshState,
        audience: Audience,
    ) -> Result<oauth::Grant, TokenError> {
        let mut ep = oauth
            .endpoints(overrides)
            .map_err(|e| TokenError::new(ErrorClass::Configuration, "not_configured", e))?;
        if audience == Audience::Graph {
            let crate::config::Sending::Graph(graph) = &account.send else {
                return Err(TokenError::new(
                    ErrorClass::Configuration,
                    "not_graph",
                    "the account does not send through Microsoft Graph",
                ));
            };
            ep.scopes = graph.scopes.clone();
        }
        match oauth.flow {
            Flow::Delegated => {
                let Some(rt) = state.refresh.as_ref() else {
                    if state.locked {
                        return Err(TokenError::new(
                            ErrorClass::Temporary,
                            "store_locked",
                            "the stored refresh token is sealed with the account's local password and no device has logged in since the relay started; it is used at the next device login (a store key, the default, avoids this)",
                        ));
                    }
                    return Err(TokenError::new(
                        ErrorClass::Reauthorize,
                        "no_refresh_token",
                        "the account has no refresh token yet; authorize it once",
                    ));
                };
                self.requests.fetch_add(1, Ordering::Relaxed);
                oauth::refresh(&self.http, &ep, rt).await
            }
            Flow::ClientCredentials => {
                let signer = self.signer(account, oauth)?;
                self.requests.fetch_add(1, Ordering::Relaxed);
                oauth::client_credentials(&self.http, &ep, signer.as_deref()).await
            }
        }
    }

    fn signer(
        &self,
        account: &AccountConfig,
        oauth: &OAuthConfig,
    ) -> Result<Option<Arc<CertificateSigner>>, TokenError> {
        let Some(c) = &oauth.certificate else {
            return Ok(None);
        };
        if let Some(s) = self.signers.get(&account.id) {
            return Ok(Some(s.clone()));
        }
        let signer = CertificateSigner::load(&c.cert, &c.key)
            .map(Arc::new)
            .map_err(|e| TokenError::new(ErrorClass::Configuration, "certificate", e))?;
        self.signers.insert(account.id.clone(), signer.clone());
        Ok(Some(signer))
    }

    fn usable(
        &self,
        entry: &AccountTokens,
        audience: Audience,
        rejected: Option<&Arc<AccessToken>>,
    ) -> Option<Arc<AccessToken>> {
        let current = entry.current[audience.slot()]
            .read()
            .expect("token lock poisoned");
        let t = current.as_ref()?;
        if rejected.is_some_and(|r| r.secret == t.secret) {
            return None;
        }
        (t.remaining() > self.margin).then(|| t.clone())
    }
}
