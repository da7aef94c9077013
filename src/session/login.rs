//! The login, the same in every protocol: check the local credential, get the upstream
//! credential for the account's mode, log in upstream, and when upstream refuses a token that
//! may be stale, refresh it and try once more. The sessions map the outcome to their replies.

use crate::auth::accounts::LocalAuth;
use crate::auth::oauth::{ErrorClass, TokenError};
use crate::auth::upstream::{credential, UpstreamCredential};
use crate::codec::line::sanitize_for_reply;
use crate::codec::sasl::Credentials;
use crate::config::AccountConfig;
use crate::session::upstream::UpstreamError;
use crate::session::Shared;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token older than this that upstream refuses is refreshed and tried once more, even without
/// an XOAUTH2 error challenge (Microsoft refuses directly, without the JSON challenge).
const STALE_TOKEN_AGE: Duration = Duration::from_secs(300);

/// How an upstream login attempt ended, with the server's reply.
#[derive(Debug)]
pub enum AuthResult<R> {
    Accepted(R),
    /// Refused. `token_rejected` is true when an XOAUTH2 error challenge said the token was
    /// invalid (status 401), so a fresh token may succeed.
    Rejected {
        reply: R,
        token_rejected: bool,
    },
}

/// A protocol's upstream client, as far as the login is concerned.
pub trait UpstreamLogin {
    type Reply;
    fn authenticate(
        &mut self,
        credential: &UpstreamCredential,
    ) -> impl std::future::Future<Output = Result<AuthResult<Self::Reply>, UpstreamError>> + Send;
}

/// How the whole login ended.
#[derive(Debug)]
pub enum Login<R> {
    /// Upstream accepted: relay `reply` and start the pipe.
    Accepted {
        account: Arc<AccountConfig>,
        reply: R,
    },
    /// Unknown user or wrong local password (already logged and delayed).
    LocalRejected,
    /// No upstream credential could be had.
    TokenFailed {
        account: Arc<AccountConfig>,
        error: TokenError,
    },
    /// Upstream refused; `reply` is its answer.
    UpstreamRejected { reply: R },
    /// The upstream connection failed during the login.
    UpstreamLost(UpstreamError),
}

pub async fn login<U: UpstreamLogin + Send>(
    shared: &Shared,
    credentials: &Credentials,
    upstream: &mut U,
) -> Login<U::Reply> {
    let started = Instant::now();
    let account = match shared
        .directory
        .verify(&credentials.username, &credentials.password)
        .await
    {
        LocalAuth::Accepted(a) => a,
        LocalAuth::Rejected => {
            let user = sanitize_for_reply(&credentials.username, 120);
            tracing::info!(user = %user, "login failed: unknown user or wrong local password");
            return Login::LocalRejected;
        }
    };
    tracing::Span::current().record("account", account.id.as_str());
    let mut rejected_token = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cred = match credential(
            &account,
            credentials,
            &shared.tokens,
            rejected_token.as_ref(),
        )
        .await
        {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(error = %error.error, code = %error.code(), class = ?error.class, description = %error.description, "token request failed");
                return Login::TokenFailed { account, error };
            }
        };
        let result = match upstream.authenticate(&cred).await {
            Ok(r) => r,
            Err(e) => return Login::UpstreamLost(e),
        };
        match result {
            AuthResult::Accepted(reply) => {
                tracing::info!(
                    latency_ms = started.elapsed().as_millis() as u64,
                    "upstream login accepted"
                );
                return Login::Accepted { account, reply };
            }
            AuthResult::Rejected {
                reply,
                token_rejected,
            } => {
                let UpstreamCredential::XOAuth2 { token, .. } = cred else {
                    return Login::UpstreamRejected { reply };
                };
                let stale = token.obtained_at.elapsed() > STALE_TOKEN_AGE;
                if attempt == 1 && (token_rejected || stale) {
                    tracing::info!(
                        "upstream refused the token; refreshing it and trying once more"
                    );
                    rejected_token = Some(token);
                    continue;
                }
                return Login::UpstreamRejected { reply };
            }
        }
    }
}

/// A failed token request in words every protocol shares; the session adds its own status
/// (`454 4.7.0` or `535 5.7.8`, `-ERR [SYS/TEMP]` or `-ERR [AUTH]`).
pub struct Explanation {
    /// The failure may heal by itself (identity provider unreachable or slow): the client should
    /// retry later and keep its password.
    pub temporary: bool,
    pub text: String,
}

/// Explains a failed token request (protocol.md §1.7): what happened, the code to look up, and
/// what to do. Holds no secret; control characters are removed.
pub fn explain_token_failure(account: &AccountConfig, e: &TokenError) -> Explanation {
    let mailbox = sanitize_for_reply(&account.mailbox, 120);
    let code = e.code();
    let (temporary, text) = match e.class {
        ErrorClass::Temporary => (
            true,
            format!("Temporary authentication failure ({}; {code})", sanitize_for_reply(&e.description, 200)),
        ),
        ErrorClass::Reauthorize => (
            false,
            format!("Sign-in for {mailbox} must be renewed ({code}): give account.{} a new refresh token", account.id),
        ),
        ErrorClass::Configuration => (
            false,
            format!(
                "The relay cannot get a token for {mailbox} ({code}: {}); contact the administrator",
                sanitize_for_reply(&e.description, 160)
            ),
        ),
    };
    Explanation { temporary, text }
}
