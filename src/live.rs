//! `authrelay check --live`: what a device's login and a spooled delivery would meet now.
//!
//! For every account and every listener, the relay's own code does what a session does after
//! the local password was accepted: it gets the account's credential (refreshing a token at the
//! identity provider through the token cache, as delivery does; a rotated refresh token is kept)
//! and logs in to the listener's upstream with it, then logs out. Nothing is sent. The findings
//! use the words a device would be told.

use crate::auth::advice::upstream_advice;
use crate::auth::upstream::credential;
use crate::config::{AccountAuth, AccountConfig, Config, Protocol};
use crate::session::imap::upstream::ImapUpstream;
use crate::session::login::{explain_token_failure, AuthResult};
use crate::session::pop3::upstream::Pop3Upstream;
use crate::session::smtp::upstream::SmtpUpstream;
use crate::session::ListenerContext;
use std::sync::Arc;

/// One account through one listener.
#[derive(Debug)]
pub struct Finding {
    /// The account's name.
    pub account: String,
    /// The listener's name.
    pub listener: String,
    /// The upstream it logs in to (`host:port`).
    pub upstream: String,
    /// `Ok(what happened)` or `Err(why not, with what to do)`; never a secret.
    pub outcome: Result<String, String>,
}

/// Checks every account through every listener, one at a time.
pub async fn check(config: &Config) -> Result<Vec<Finding>, crate::app::StartError> {
    let (alerts, _) = crate::alerts::Alerts::new(&Default::default());
    let shared = Arc::new(crate::app::shared_state(config, alerts)?);
    let mut findings = Vec::new();
    for listener in &config.listeners {
        let ctx = crate::app::listener_context(listener, shared.clone())?;
        for account in &config.accounts {
            let target = ctx.target(account).map(|t| t.spec.clone());
            let upstream = match &target {
                Ok(spec) => format!("{}:{}", spec.host, spec.port),
                Err(_) => String::from("?"),
            };
            findings.push(Finding {
                account: account.id.clone(),
                listener: listener.name.clone(),
                upstream,
                outcome: log_in(&ctx, account).await,
            });
        }
    }
    Ok(findings)
}

/// The account's credential, then a login at the listener's upstream, as a session does it.
async fn log_in(ctx: &ListenerContext, account: &AccountConfig) -> Result<String, String> {
    if matches!(account.auth, AccountAuth::Passthrough) {
        return Ok("skipped: pass-through accounts log in with the device's own password".into());
    }
    let cred = credential(account, None, &ctx.shared.tokens, None)
        .await
        .map_err(|e| explain_token_failure(&ctx.shared, account, &e).text)?;
    let target = ctx.target(account).map_err(|e| e.to_string())?;
    let unreachable =
        |e: crate::session::upstream::UpstreamError| format!("upstream unreachable: {e}");
    let refused = |text: String| match upstream_advice(&text) {
        Some(advice) => format!("the upstream refused the login ({text}): {advice}"),
        None => format!("the upstream refused the login ({text})"),
    };
    match ctx.config.protocol {
        Protocol::Smtp => {
            let mut up = SmtpUpstream::connect(&target).await.map_err(unreachable)?;
            up.ehlo(target.ehlo_name.as_bytes())
                .await
                .map_err(unreachable)?;
            let result = up.login(&cred).await.map_err(unreachable)?;
            up.quit().await;
            match result {
                AuthResult::Accepted(_) => Ok("logged in (SMTP AUTH accepted)".into()),
                AuthResult::Rejected { reply, .. } => Err(refused(
                    String::from_utf8_lossy(reply.raw.trim_ascii_end()).into_owned(),
                )),
            }
        }
        Protocol::Imap => {
            let mut up = ImapUpstream::connect(&target).await.map_err(unreachable)?;
            up.login_tag = b"a1".to_vec();
            let result = up.login(&cred).await.map_err(unreachable)?;
            up.logout().await;
            match result {
                AuthResult::Accepted(_) => Ok("logged in (IMAP AUTHENTICATE accepted)".into()),
                AuthResult::Rejected { reply, .. } => Err(refused(reply.tagged.text_lossy())),
            }
        }
        Protocol::Pop3 => {
            let mut up = Pop3Upstream::connect(&target).await.map_err(unreachable)?;
            let result = up.login(&cred).await.map_err(unreachable)?;
            up.quit().await;
            match result {
                AuthResult::Accepted(_) => Ok("logged in (POP3 AUTH accepted)".into()),
                AuthResult::Rejected { reply, .. } => Err(refused(reply.text_lossy())),
            }
        }
    }
}
