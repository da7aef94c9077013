//! What a refused token request leaves behind: the failure recorded in the store (the account
//! page shows it), a refused grant remembered (a spool login then answers at once), and the
//! alert an administrator needs.

use super::TokenCache;
use crate::auth::oauth::{ErrorClass, TokenError};
use crate::config::AccountConfig;

impl TokenCache {
    pub(super) async fn report_failure(&self, account: &AccountConfig, e: &TokenError) {
        // Not authorized or not configured yet: a state the page shows, not a failure.
        if account.ephemeral || matches!(e.error.as_str(), "no_refresh_token" | "not_configured") {
            return;
        }
        let text = format!("{}: {}", e.code(), e.description);
        if let Err(err) = self.store.record_error_async(&account.id, &text).await {
            tracing::warn!(account = %account.id, "cannot record the failure in the token store: {err}");
        }
        self.alert(account, e);
        if e.class == ErrorClass::Reauthorize {
            self.dead_grants.insert(account.id.clone(), e.clone());
            tracing::warn!(
                account = %account.id,
                code = %e.code(),
                "the refresh token no longer works; re-authorize {}",
                self.reauthorize_hint(&account.id)
            );
        }
    }

    /// Raises the alert a refusal calls for: a grant to renew, or a registration to fix.
    fn alert(&self, account: &AccountConfig, e: &TokenError) {
        use crate::alerts::Kind;
        let (kind, key, action) = match e.class {
            ErrorClass::Reauthorize => (
                Kind::GrantRefused,
                "grant",
                format!("sign in again: {}", self.reauthorize_hint(&account.id)),
            ),
            ErrorClass::Configuration => (
                Kind::SetupRefused,
                "setup",
                "fix the account's app registration settings (client_id, client_secret, tenant, authority), then `authrelay check`".to_owned(),
            ),
            _ => return,
        };
        let summary = format!(
            "the identity provider refused account {}'s token request: {} ({})",
            account.id,
            e.code(),
            e.description
        );
        let key = format!("{key}:{}", account.id);
        self.alerts
            .raise(&key, kind, Some(&account.id), &summary, &action);
    }

    /// The account has a working grant again: what its refusal raised is over.
    pub(super) fn grant_renewed(&self, account_id: &str) {
        use crate::alerts::Kind;
        self.dead_grants.remove(account_id);
        self.alerts
            .resolve_account(account_id, &[Kind::GrantRefused, Kind::SetupRefused]);
    }
}
