//! Access-token cache: one entry per account, refreshed one at a time, ahead of expiry.
//!
//! The fast path (a cached token with more than the refresh margin left) takes a read lock and
//! clones an `Arc`. Only when a refresh is due does a login wait on the account's async mutex;
//! whoever gets it first refreshes, and everyone queued behind it finds the new token.

use crate::auth::oauth::{self, ErrorClass, TokenError};
use crate::config::{AccountConfig, OAuthConfig};
use crate::secret::Secret;
use dashmap::DashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// An access token and when it stops being usable.
#[derive(Debug)]
pub struct AccessToken {
    pub secret: Secret,
    pub obtained_at: Instant,
    pub expires_at: Instant,
}

impl AccessToken {
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

#[derive(Default)]
struct AccountTokens {
    current: RwLock<Option<Arc<AccessToken>>>,
    /// The refresh token, behind the lock that makes refreshes single-flight. `None` until the
    /// configuration (or, later, the store) supplies one.
    refresh: Mutex<Option<Secret>>,
}

pub struct TokenCache {
    http: reqwest::Client,
    entries: DashMap<String, Arc<AccountTokens>>,
    margin: Duration,
    requests: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    pub fn new(http: reqwest::Client, margin: Duration) -> Self {
        TokenCache {
            http,
            entries: DashMap::new(),
            margin,
            requests: Default::default(),
        }
    }

    /// Seeds the cache with the refresh tokens found in the configuration.
    pub fn seed(&self, accounts: &[AccountConfig]) {
        for a in accounts {
            if let crate::config::AccountAuth::OAuth(o) = &a.auth {
                let entry = AccountTokens {
                    current: RwLock::new(None),
                    refresh: Mutex::new(o.refresh_token.clone()),
                };
                self.entries.insert(a.id.clone(), Arc::new(entry));
            }
        }
    }

    /// How many token requests this cache has made (for tests and metrics).
    pub fn requests_made(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn entry(&self, account_id: &str) -> Arc<AccountTokens> {
        self.entries
            .entry(account_id.to_owned())
            .or_default()
            .clone()
    }

    /// A token with more than the margin left. With `rejected`, the caller saw that token refused
    /// upstream: a different, newer token is returned, refreshing if no one else has already.
    pub async fn access_token(
        &self,
        account_id: &str,
        oauth: &OAuthConfig,
        rejected: Option<&Arc<AccessToken>>,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let entry = self.entry(account_id);
        if let Some(t) = self.usable(&entry, rejected) {
            return Ok(t);
        }
        let mut refresh_token = entry.refresh.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        if let Some(t) = self.usable(&entry, rejected) {
            return Ok(t);
        }
        let Some(rt) = refresh_token.as_ref() else {
            return Err(TokenError::new(
                ErrorClass::Reauthorize,
                "no_refresh_token",
                "the account has no refresh token yet; sign in once to authorize it",
            ));
        };
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let grant = oauth::refresh(&self.http, oauth, rt).await?;
        if let Some(rotated) = grant.refresh_token {
            // Keep the rotated refresh token before the new access token is used.
            *refresh_token = Some(rotated);
        }
        let token = Arc::new(AccessToken {
            secret: grant.access_token,
            obtained_at: started,
            expires_at: started + grant.expires_in,
        });
        *entry.current.write().expect("token lock poisoned") = Some(token.clone());
        tracing::info!(
            account = account_id,
            expires_in_secs = grant.expires_in.as_secs(),
            "access token refreshed"
        );
        Ok(token)
    }

    fn usable(
        &self,
        entry: &AccountTokens,
        rejected: Option<&Arc<AccessToken>>,
    ) -> Option<Arc<AccessToken>> {
        let current = entry.current.read().expect("token lock poisoned");
        let t = current.as_ref()?;
        if rejected.is_some_and(|r| Arc::ptr_eq(r, t)) {
            return None;
        }
        (t.remaining() > self.margin).then(|| t.clone())
    }
}
