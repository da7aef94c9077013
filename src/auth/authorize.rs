//! Authorizing an account: what the account page and `authrelay login` share.
//!
//! Both resolve the account's endpoints (configuration first, then the app settings entered on
//! the page), run one of the OAuth flows, and keep the result in the token store, sealed with
//! the account's key. A running relay picks the new entry up at the next login.

use crate::auth::oauth::{ErrorClass, Grant, TokenError};
use crate::config::{AccountAuth, AccountConfig, AppOverrides, Endpoints, OAuthConfig};
use crate::store::{Change, Key, Store, StoreError};
use std::sync::Arc;
use std::time::SystemTime;

/// The account's OAuth settings, or an error that says why it has none.
pub fn oauth_of(account: &AccountConfig) -> Result<&OAuthConfig, String> {
    match &account.auth {
        AccountAuth::OAuth(o) => Ok(o),
        _ => Err(format!(
            "account {} does not use OAuth (auth = app_password or passthrough)",
            account.id
        )),
    }
}

/// The endpoints for `account`, with the app settings and client secret from the store where
/// the configuration leaves them open. `key` opens a stored client secret.
pub fn endpoints(
    store: &Store,
    account: &AccountConfig,
    key: Option<&Key>,
) -> Result<Endpoints, TokenError> {
    let oauth = oauth_of(account)
        .map_err(|e| TokenError::new(ErrorClass::Configuration, "not_oauth", e))?;
    let entry = store.entry(&account.id);
    let mut overrides = AppOverrides {
        client_id: entry.as_ref().and_then(|e| e.client_id.clone()),
        tenant: entry.as_ref().and_then(|e| e.tenant.clone()),
        client_secret: None,
    };
    if entry.as_ref().is_some_and(|e| e.has_client_secret()) {
        if let Some(k) = key {
            overrides.client_secret = store
                .open_entry(&account.id, k)
                .ok()
                .and_then(|o| o.client_secret);
        }
    }
    oauth
        .endpoints(&overrides)
        .map_err(|e| TokenError::new(ErrorClass::Configuration, "not_configured", e))
}

/// Stores the tokens of a fresh authorization. Returns the entry's new generation.
pub fn save_grant(
    store: &Store,
    account_id: &str,
    key: &Key,
    grant: &Grant,
) -> Result<u64, StoreError> {
    store.update(account_id, Some(key), grant_change(grant))
}

/// What a fresh authorization writes: both tokens, marked authorized.
fn grant_change(grant: &Grant) -> Change {
    Change {
        refresh_token: grant.refresh_token.clone(),
        access_token: Some((
            grant.access_token.clone(),
            SystemTime::now() + grant.expires_in,
        )),
        authorized: true,
        signed_in_as: grant.signed_in_as.clone(),
        ..Default::default()
    }
}

/// What to tell the admin about who signed in for `account`: `None` when the sign-in was as
/// its mailbox, or its answer did not say.
pub fn wrong_user(account: &AccountConfig, grant: &Grant) -> Option<String> {
    crate::auth::id_token::mismatch(grant.signed_in_as.as_deref()?, &account.mailbox)
}

/// [`save_grant`] on a blocking thread, for async code (see [`Store::update_async`]).
pub async fn save_grant_async(
    store: &Arc<Store>,
    account_id: &str,
    key: &Key,
    grant: &Grant,
) -> Result<u64, StoreError> {
    store
        .update_async(account_id, Some(key), grant_change(grant))
        .await
}
