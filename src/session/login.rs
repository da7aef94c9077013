//! The login, the same in every protocol: check the local credential, get the upstream
//! credential for the account's mode, and only then open the account's upstream and log in
//! there; when upstream refuses a token that may be stale, refresh it and try once more. The
//! driver maps the outcome to the protocol's replies.

use crate::auth::accounts::LocalAuth;
use crate::auth::advice::aadsts_advice;
use crate::auth::oauth::{ErrorClass, TokenError};
use crate::auth::throttle::Attempt;
use crate::auth::upstream::{credential, UpstreamCredential};
use crate::codec::line::{sanitize_for_reply, shorten};
use crate::codec::sasl::Credentials;
use crate::config::{AccountAuth, AccountConfig};
use crate::secret::Secret;
use crate::session::upstream::{Target, UpstreamError};

/// How long an SMTP login waits for one of its mailbox's sessions across replicas.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::session::ListenerContext;
use crate::shared::Shared;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token older than this that upstream refuses is refreshed and tried once more, even without
/// an XOAUTH2 error challenge (Microsoft refuses directly, without the JSON challenge).
const STALE_TOKEN_AGE: Duration = Duration::from_secs(300);

/// How an upstream login attempt ended, with the server's reply.
#[derive(Debug)]
pub enum AuthResult<R> {
    /// Accepted, with the server's reply.
    Accepted(R),
    /// Refused. `token_rejected` is true when an XOAUTH2 error challenge said the token was
    /// invalid (status 401), so a fresh token may succeed.
    Rejected {
        /// The server's reply.
        reply: R,
        /// An XOAUTH2 error challenge said the token was invalid.
        token_rejected: bool,
    },
}

/// A protocol's upstream client, as far as the login is concerned.
pub trait UpstreamLogin {
    /// The server's answer to a login, relayed or explained to the client.
    type Reply: Send;
    /// The reply's status for metrics: `235`, `535`, `OK`, `NO`, `+OK`, `-ERR`.
    fn reply_code(reply: &Self::Reply) -> String;
    /// What the server offered before login (for the listener's capability cache), if this
    /// connection learned it.
    fn capabilities(&self) -> Option<Vec<Vec<u8>>>;
    /// Logs in with `credential`.
    fn authenticate(
        &mut self,
        credential: &UpstreamCredential,
    ) -> impl std::future::Future<Output = Result<AuthResult<Self::Reply>, UpstreamError>> + Send;
}

/// Opens a protocol's upstream connection to a target, up to the point where it can log in.
pub trait Dial {
    /// The protocol's upstream client.
    type Upstream: UpstreamLogin + Send;
    /// Connects, reads the greeting, finishes TLS and learns what the login needs.
    fn dial(
        &self,
        target: &Target,
    ) -> impl std::future::Future<Output = Result<Self::Upstream, UpstreamError>> + Send;
}

/// How the whole login ended.
pub enum LoginOutcome<U: UpstreamLogin> {
    /// Upstream accepted: relay `reply` and hand `upstream` to the protocol's after-login part.
    Accepted {
        /// The account logged in.
        account: Arc<AccountConfig>,
        /// The logged-in upstream connection.
        upstream: U,
        /// The server's reply, to relay.
        reply: U::Reply,
        /// The session's place among the mailbox's sessions across replicas, held while the
        /// session lives.
        slot: Option<crate::session::slot::SessionSlot>,
    },
    /// Unknown user or wrong local password (already logged and delayed).
    LocalRejected,
    /// Too many failed logins from this address or for this username: not tried at all.
    Throttled,
    /// No upstream credential could be had.
    TokenFailed {
        /// The account.
        account: Arc<AccountConfig>,
        /// Why.
        error: TokenError,
    },
    /// Upstream refused; `reply` is its answer (the connection is closed).
    UpstreamRejected {
        /// The server's answer.
        reply: U::Reply,
    },
    /// The upstream could not be reached, or failed during the login: temporary.
    UpstreamUnavailable(UpstreamError),
}

/// Logs `credentials` in: the local check first, then the upstream credential, then the
/// account's upstream (dialled only now: a failed login costs no upstream connection).
pub async fn log_in<D: Dial + Sync>(
    ctx: &ListenerContext,
    peer: IpAddr,
    credentials: &Credentials,
    dialer: &D,
) -> LoginOutcome<D::Upstream> {
    let started = Instant::now();
    let mut verdict = match check_locally(ctx, peer, credentials).await {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    let account = verdict.account.clone();
    // A local password proves the device now; pass-through and `~` logins only when upstream
    // (or the identity provider) accepts what the device sent.
    if account.password_hash.is_some() && !account.ephemeral {
        verdict.proved();
    }
    // Across replicas, an SMTP session to the mailbox takes one of its slots first.
    let slot = if ctx.config.protocol == crate::config::Protocol::Smtp {
        match crate::session::slot::take(ctx.shared.tokens.store(), &account, SLOT_WAIT).await {
            Ok(slot) => slot,
            Err(crate::session::slot::Busy) => {
                verdict.refused(true);
                tracing::warn!(account = %account.id, "every session of the mailbox is in use across the replicas");
                return LoginOutcome::UpstreamUnavailable(UpstreamError::MailboxBusy(
                    account.concurrency,
                ));
            }
        }
    } else {
        None
    };
    let mut login = log_in_upstream(ctx, &account, credentials, dialer, &mut verdict).await;
    if let LoginOutcome::Accepted { slot: held, .. } = &mut login {
        *held = slot;
    }
    if let LoginOutcome::Accepted { .. } = login {
        verdict.proved();
        ctx.shared.metrics.login_latency(started.elapsed());
        tracing::info!(
            latency_ms = started.elapsed().as_millis() as u64,
            "upstream login accepted"
        );
    }
    login
}

/// Spool mode's login: the local password alone (the session has no upstream; delivery gets
/// the token later). Accounts whose password only the mail server can check (pass-through,
/// `mailbox~client_id`) cannot be spooled: their messages could never be delivered later.
pub async fn log_in_locally<U: UpstreamLogin>(
    ctx: &ListenerContext,
    peer: IpAddr,
    credentials: &Credentials,
) -> Result<Arc<AccountConfig>, LoginOutcome<U>> {
    let mut verdict = check_locally(ctx, peer, credentials).await?;
    let account = verdict.account.clone();
    if account.password_hash.is_none() || account.ephemeral {
        tracing::warn!(account = %account.id, "login refused: a pass-through or refresh-token login cannot use a spool listener (its password is checked by the mail server at each delivery); use a listener with spool = false");
        verdict.refused(false);
        return Err(LoginOutcome::LocalRejected);
    }
    verdict.proved();
    // With a store sealed by local passwords, the password just verified is what lets delivery
    // open the account's tokens later: derive its key now, while it is at hand.
    if matches!(account.auth, crate::config::AccountAuth::OAuth(_)) {
        let store = ctx.shared.tokens.store();
        if !store.has_store_key() {
            let _ = store.unlock(&account.id, Some(&credentials.password)).await;
        }
    }
    // Fail fast while setting up, hold once it worked. An account that has never delivered
    // asks for its token now: a refusal no retry can fix (wrong secret, tenant or authority; a
    // refused grant) is told to the device at AUTH, with the advice the pipe gives, instead of a
    // `250` for mail that could never go out. Once the account has delivered, a refused grant
    // holds its mail (nothing lost; delivered once re-authorized) and the admin is told. Not yet
    // authorized at all, or trouble that passes (the provider away), is the spool's to wait out.
    let tokens = &ctx.shared.tokens;
    let delivered_before = tokens
        .store()
        .entry(&account.id)
        .is_some_and(|e| e.delivered_at.is_some());
    if !delivered_before && matches!(account.auth, crate::config::AccountAuth::OAuth(_)) {
        if let Err(error) = tokens
            .access_token(&account, Some(&credentials.password), None)
            .await
        {
            let permanent = matches!(
                error.class,
                ErrorClass::Reauthorize | ErrorClass::Configuration
            );
            if permanent && error.error != "no_refresh_token" {
                return Err(LoginOutcome::TokenFailed { account, error });
            }
        }
    }
    tracing::info!("local login accepted (spool)");
    Ok(account)
}

/// The throttle and the local check: the account with its pending throttle verdict (which
/// counts as a failure if dropped undecided); or the refusal (already logged and counted).
async fn check_locally<'a, U: UpstreamLogin>(
    ctx: &'a ListenerContext,
    peer: IpAddr,
    credentials: &'a Credentials,
) -> Result<Verdict<'a>, LoginOutcome<U>> {
    let shared = &ctx.shared;
    let user = || sanitize_for_reply(&credentials.username, 120);
    let attempt = match shared.throttle.begin(peer, &credentials.username).await {
        Ok(a) => a,
        Err(why) => {
            tracing::warn!(user = %user(), over = ?why, "login refused: too many failed logins");
            shared.metrics.local_failure();
            tokio::time::sleep(shared.directory().failure_delay()).await;
            return Err(LoginOutcome::Throttled);
        }
    };
    let tilde = ctx
        .config
        .tilde_login
        .then(|| tilde_account(shared, &credentials.username, &credentials.password))
        .flatten();
    let local = match tilde {
        Some(a) => LocalAuth::Accepted(a),
        None => {
            shared
                .directory()
                .verify(&credentials.username, &credentials.password)
                .await
        }
    };
    match local {
        LocalAuth::Accepted(account) => {
            tracing::Span::current().record("account", account.id.as_str());
            Ok(Verdict {
                shared,
                peer,
                username: &credentials.username,
                account,
                attempt: Some(attempt),
            })
        }
        LocalAuth::Rejected => {
            shared.throttle.failed(attempt);
            shared.metrics.local_failure();
            tracing::info!(user = %user(), "login failed: unknown user or wrong local password");
            Err(LoginOutcome::LocalRejected)
        }
    }
}

/// Gets the credential, dials the account's upstream and logs in there; a refused token that
/// may be stale is refreshed and tried once more on the same connection.
async fn log_in_upstream<D: Dial + Sync>(
    ctx: &ListenerContext,
    account: &Arc<AccountConfig>,
    credentials: &Credentials,
    dialer: &D,
    verdict: &mut Verdict<'_>,
) -> LoginOutcome<D::Upstream> {
    let target = match ctx.target(account) {
        Ok(t) => t,
        Err(e) => {
            verdict.refused(true);
            return LoginOutcome::UpstreamUnavailable(UpstreamError::Settings(e));
        }
    };
    let mut upstream: Option<D::Upstream> = None;
    let mut rejected_token = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tokens = &ctx.shared.tokens;
        let cred = match credential(account, Some(credentials), tokens, rejected_token.as_ref())
            .await
        {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(error = %error.error, code = %error.code(), class = ?error.class, description = %error.description, "token request failed");
                verdict.refused(error.class == ErrorClass::Temporary);
                let account = account.clone();
                return LoginOutcome::TokenFailed { account, error };
            }
        };
        let up = match upstream {
            Some(ref mut up) => up,
            None => match dial(ctx, &target, dialer).await {
                Ok(up) => upstream.insert(up),
                Err(e) => {
                    verdict.refused(true);
                    return LoginOutcome::UpstreamUnavailable(e);
                }
            },
        };
        let result = match up.authenticate(&cred).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(upstream = %target.spec.address(), error = %e, "upstream failed during the login");
                verdict.refused(true);
                return LoginOutcome::UpstreamUnavailable(e);
            }
        };
        let (AuthResult::Accepted(reply) | AuthResult::Rejected { reply, .. }) = &result;
        let code = D::Upstream::reply_code(reply);
        ctx.shared.metrics.upstream_auth(ctx.config.protocol, &code);
        let (reply, token_rejected) = match result {
            AuthResult::Accepted(reply) => {
                let upstream = upstream.expect("dialled above");
                let account = account.clone();
                return LoginOutcome::Accepted {
                    account,
                    upstream,
                    reply,
                    slot: None,
                };
            }
            AuthResult::Rejected {
                reply,
                token_rejected,
            } => (reply, token_rejected),
        };
        if let UpstreamCredential::Bearer { token, .. } = cred {
            let stale = token.obtained_at.elapsed() > STALE_TOKEN_AGE;
            if attempt == 1 && (token_rejected || stale) {
                tracing::info!("upstream refused the token; refreshing it and trying once more");
                rejected_token = Some(token);
                continue;
            }
        }
        verdict.refused(false);
        return LoginOutcome::UpstreamRejected { reply };
    }
}

/// Dials `target` and remembers what it offered.
async fn dial<D: Dial + Sync>(
    ctx: &ListenerContext,
    target: &Target,
    dialer: &D,
) -> Result<D::Upstream, UpstreamError> {
    match dialer.dial(target).await {
        Ok(up) => {
            ctx.learned(target, up.capabilities());
            Ok(up)
        }
        Err(e) => {
            tracing::warn!(upstream = %target.spec.address(), error = %e, "upstream unavailable");
            Err(e)
        }
    }
}

/// What the throttle hears about one login: a success; a refusal of what the device sent (a
/// pass-through password, a `~` refresh token), counted as a failure; or a temporary failure,
/// which proves nothing either way. A login abandoned half-way counts as failed.
struct Verdict<'a> {
    shared: &'a Shared,
    peer: IpAddr,
    username: &'a str,
    account: Arc<AccountConfig>,
    attempt: Option<Attempt>,
}

impl Drop for Verdict<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.attempt.take() {
            self.shared.throttle.failed(a);
        }
    }
}

impl Verdict<'_> {
    fn proved(&mut self) {
        if let Some(a) = self.attempt.take() {
            self.shared.throttle.succeeded(self.peer, self.username, a);
        }
    }

    fn refused(&mut self, temporary: bool) {
        if let Some(a) = self.attempt.take() {
            if temporary {
                self.shared.throttle.release(a);
            } else {
                self.shared.throttle.failed(a);
                self.shared.metrics.local_failure();
            }
        }
        // A failed `~` login leaves nothing behind: its made-up account is not kept.
        if self.account.ephemeral {
            self.shared.tokens.forget(&self.account.id);
        }
    }
}

/// The `mailbox~client_id` convention: the password is a refresh token of the app registration
/// `[client.*]` with that client id, used for `mailbox`. Only for usernames that are no
/// configured login. The made-up account is ephemeral: its tokens live in memory only, keyed by
/// a digest of the refresh token, so one client's token is never used for another.
fn tilde_account(shared: &Shared, username: &str, password: &Secret) -> Option<Arc<AccountConfig>> {
    let (mailbox, client_id) = username.rsplit_once('~')?;
    if mailbox.is_empty() || password.is_empty() || shared.directory().account(username).is_some() {
        return None;
    }
    let clients = shared.clients();
    let client = clients
        .iter()
        .find(|c| c.oauth.client_id.as_deref() == Some(client_id))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, password.expose().as_bytes());
    let tag: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut oauth = client.oauth.clone();
    oauth.refresh_token = Some(password.clone());
    Some(Arc::new(AccountConfig {
        id: format!("~{}:{}:{tag}", client.name, mailbox.to_ascii_lowercase()),
        login: username.to_owned(),
        password_hash: None,
        mailbox: mailbox.to_owned(),
        auth: AccountAuth::OAuth(Box::new(oauth)),
        allowed_from: Vec::new(),
        ephemeral: true,
        upstreams: Default::default(),
        concurrency: 3,
        messages_per_minute: 30,
        send: Default::default(),
        networks: Vec::new(),
        rewrite_sender: false,
        max_recipients_per_hour: None,
    }))
}

/// A failed token request in words every protocol shares; the session adds its own status
/// (`454 4.7.0` or `535 5.7.8`, `-ERR [SYS/TEMP]` or `-ERR [AUTH]`).
pub struct Explanation {
    /// The failure may heal by itself (identity provider unreachable or slow): the client should
    /// retry later and keep its password.
    pub temporary: bool,
    /// The explanation, free of secrets.
    pub text: String,
}

/// Explains a failed token request (Microsoft Entra error codes, learn.microsoft.com/entra/identity-platform/reference-error-codes): what happened, the code to look up, and
/// what to do. Holds no secret; control characters are removed.
pub fn explain_token_failure(
    shared: &Shared,
    account: &AccountConfig,
    e: &TokenError,
) -> Explanation {
    let mailbox = sanitize_for_reply(&account.mailbox, 120);
    let code = e.code();
    if let Some(advice) = e.aadsts.and_then(aadsts_advice) {
        let where_ = if e.class == ErrorClass::Reauthorize && !account.ephemeral {
            format!(" {}", shared.tokens.reauthorize_hint(&account.id))
        } else {
            String::new()
        };
        return Explanation {
            temporary: e.class == ErrorClass::Temporary,
            text: sanitize_for_reply(
                &format!("Sign-in for {mailbox} failed ({code}): {advice}{where_}"),
                400,
            ),
        };
    }
    let (temporary, text) = match e.class {
        ErrorClass::Temporary => (
            true,
            format!("Temporary authentication failure ({}; {code})", shorten(&e.description, 240)),
        ),
        ErrorClass::Reauthorize => (
            false,
            if account.ephemeral {
                format!("Sign-in for {mailbox} must be renewed ({code}): the refresh token sent as the password no longer works")
            } else {
                sanitize_for_reply(&format!("Sign-in for {mailbox} must be renewed ({code}): re-authorize {}", shared.tokens.reauthorize_hint(&account.id)), 400)
            },
        ),
        ErrorClass::Configuration => (
            false,
            format!(
                "The relay cannot get a token for {mailbox} ({code}: {}); contact the administrator",
                shorten(&e.description, 240)
            ),
        ),
    };
    Explanation { temporary, text }
}
