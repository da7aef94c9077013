//! Background upkeep of the token cache: a token for accounts that have none (at start),
//! refreshes ahead of expiry for accounts in use, and every refresh token used at least once
//! per `keepalive` so it never ages out.

use super::{Audience, Need, TokenCache};
use crate::config::{AccountAuth, AccountConfig, Flow};
use crate::store::unix_now;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl TokenCache {
    /// One pass of background upkeep over `accounts` whose store key is known: fetch a token
    /// for accounts that have none (at start), refresh ahead of expiry for accounts in use, and
    /// use every refresh token at least once per `keepalive` so it never ages out.
    pub async fn maintain(&self, accounts: &[Arc<AccountConfig>], keepalive: Duration) {
        let now = unix_now();
        for account in accounts {
            let AccountAuth::OAuth(oauth) = &account.auth else {
                continue;
            };
            if account.ephemeral || self.store.known_key(&account.id).is_none() {
                continue;
            }
            let stored = self.store.entry(&account.id);
            let has_refresh = stored.as_ref().is_some_and(|e| e.has_refresh_token())
                || oauth.refresh_token.is_some();
            if oauth.flow == Flow::Delegated && !has_refresh {
                continue;
            }
            if stored
                .as_ref()
                .and_then(|e| e.last_error_at)
                .is_some_and(|at| {
                    stored.as_ref().and_then(|e| e.last_refresh_at).unwrap_or(0) < at
                        && now.saturating_sub(at) < 3600
                })
            {
                // Failed within the hour: wait for a fix or for a login rather than hammer.
                continue;
            }
            let entry = self.entry(&account.id);
            let used_recently = now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) < 3600;
            let remaining = self.remaining(&account.id);
            let stored_expiry = stored.as_ref().and_then(|e| e.access_expires_at);
            let last_use_of_rt = stored
                .as_ref()
                .and_then(|e| e.refresh_token_at)
                .unwrap_or(0);
            let keepalive_due = oauth.flow == Flow::Delegated
                && now.saturating_sub(last_use_of_rt) > keepalive.as_secs();
            let no_token = remaining.is_none()
                && stored_expiry.is_none_or(|e| e <= now + self.margin.as_secs());
            let expiring = used_recently && remaining.is_some_and(|r| r <= self.margin);
            let need = if keepalive_due {
                Some(Need::Refresh)
            } else if no_token || expiring {
                Some(Need::Login)
            } else {
                None
            };
            if let Some(need) = need {
                if let Err(e) = self
                    .obtain(account, &entry, None, None, (need, Audience::Mail))
                    .await
                {
                    tracing::warn!(account = %account.id, code = %e.code(), "background refresh failed: {}", e.description);
                }
            }
        }
    }
}
