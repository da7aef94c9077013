//! Refreshing once across replicas (`[store] backend = "redis"`): before a token request the
//! replica takes the account's lease (SET NX PX with a random owner; released by
//! compare-and-delete). A replica that finds the lease taken waits for the holder's write (the
//! store's poller brings it within 200 ms) and uses the token it wrote; if the holder dies, its
//! lease expires and the next one takes over. A replica that cannot reach Redis refreshes
//! alone, and says so: a login is never refused for want of the lease.

use super::{AccessToken, AccountTokens, Audience, Need, RefreshState, TokenCache};
use crate::config::AccountConfig;
use crate::secret::Secret;
use crate::store::{Lease, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lease lasts: longer than a token request may take (its timeout plus the store
/// write), short enough that a replica's death delays the others little.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a waiting replica looks for the holder's write.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// What the lease step decided.
pub(super) enum Leased {
    /// Another replica refreshed meanwhile: its token.
    Token(Arc<AccessToken>),
    /// Go ahead and refresh; the guard (if a lease was taken) releases it when dropped.
    Go(Option<LeaseGuard>),
}

/// Releases a taken lease when dropped (after the new tokens are written).
pub(super) struct LeaseGuard {
    store: Arc<Store>,
    account: String,
    owner: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let (store, account, owner) = (
            self.store.clone(),
            std::mem::take(&mut self.account),
            std::mem::take(&mut self.owner),
        );
        tokio::task::spawn_blocking(move || store.release(&account, &owner));
    }
}

impl TokenCache {
    /// Takes the account's lease, or waits for the replica that holds it and returns its token.
    /// Without a shared store there is nothing to take.
    pub(super) async fn lease_or_wait(
        &self,
        account: &AccountConfig,
        entry: &AccountTokens,
        state: &mut RefreshState,
        password: Option<&Secret>,
        (need, audience): (Need, Audience),
        rejected: Option<&Arc<AccessToken>>,
    ) -> Leased {
        if !self.store.is_shared() || account.ephemeral {
            return Leased::Go(None);
        }
        let deadline = Instant::now() + LEASE_TTL + Duration::from_secs(1);
        loop {
            let (store, id) = (self.store.clone(), account.id.clone());
            let lease = tokio::task::spawn_blocking(move || store.lease(&id, LEASE_TTL))
                .await
                .unwrap_or(Lease::Unavailable(Some(
                    "the lease call did not finish".into(),
                )));
            match lease {
                Lease::Acquired(owner) => {
                    let guard = LeaseGuard {
                        store: self.store.clone(),
                        account: account.id.clone(),
                        owner,
                    };
                    // The last holder may have written just before it let go: read the store
                    // now rather than refresh again.
                    let store = self.store.clone();
                    let _ = tokio::task::spawn_blocking(move || store.reload_now()).await;
                    if self.store.generation(&account.id) != state.generation {
                        self.sync_from_store(account, entry, state, password).await;
                        // Fresh from another replica: good for a login, and a keep-alive's
                        // purpose (using the refresh token) is served too.
                        if let Some(t) = self.usable(entry, audience, rejected) {
                            return Leased::Token(t);
                        }
                    }
                    return Leased::Go(Some(guard));
                }
                Lease::Unavailable(why) => {
                    tracing::warn!(account = %account.id, reason = why.as_deref().unwrap_or("no shared store"), "refreshing without the replicas' lease: the shared store cannot be reached");
                    return Leased::Go(None);
                }
                Lease::Busy => {}
            }
            // Another replica is refreshing: wait for its write, or for its lease to end.
            let seen = state.generation;
            while self.store.generation(&account.id) == seen && Instant::now() < deadline {
                tokio::time::sleep(WAIT_STEP).await;
                let (store, id) = (self.store.clone(), account.id.clone());
                let held = tokio::task::spawn_blocking(move || store.lease_held(&id))
                    .await
                    .unwrap_or(false);
                if !held && self.store.generation(&account.id) == seen {
                    // Released (or expired) without a write we can see yet: one poll more.
                    tokio::time::sleep(crate::store::REDIS_POLL).await;
                    break;
                }
            }
            let refreshed = self.store.generation(&account.id) != seen;
            self.sync_from_store(account, entry, state, password).await;
            if need == Need::Login || refreshed {
                if let Some(t) = self.usable(entry, audience, rejected) {
                    tracing::debug!(account = %account.id, "token refreshed by another replica");
                    return Leased::Token(t);
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(account = %account.id, "the replica holding the refresh lease wrote nothing in time; refreshing here");
                return Leased::Go(None);
            }
        }
    }
}
