//! Delivery by SMTP: to the account's upstream (the spool listener's, or
//! `[account.N] upstream.smtp`), logged in with the account's credential, one session reused
//! for consecutive messages (RSET between).
//!
//! At-least-once window: a message counts as delivered when the upstream answers the final dot
//! with 2xx (RFC 5321 §4.1.1.4). If the connection is lost after the dot was sent and before
//! that reply arrived, the relay cannot know whether the upstream took it and sends it again
//! later; SMTP offers nothing to ask. The window is one round trip plus the upstream's time to
//! store the message.

use super::Attempt;
use crate::auth::upstream::UpstreamCredential;
use crate::codec::line::sanitize_for_reply;
use crate::config::AccountConfig;
use crate::session::login::AuthResult;
use crate::session::smtp::upstream::{OwnedReply, SmtpUpstream};
use crate::session::ListenerContext;
use crate::spool::Envelope;

/// One delivery attempt of one message, on the session's connection (opened and logged in
/// when there is none; dropped when it fails).
pub(super) async fn deliver(
    ctx: &ListenerContext,
    account: &AccountConfig,
    envelope: &Envelope,
    message: &[u8],
    up: &mut Option<SmtpUpstream>,
) -> Attempt {
    if up.is_none() {
        match open(ctx, account).await {
            Ok(session) => *up = Some(session),
            Err(attempt) => return attempt,
        }
    }
    let session = up.as_mut().expect("opened above");
    match transaction(session, envelope, message).await {
        Ok(Attempt::Deferred(reason)) if reason.starts_with("421") => {
            // The server is closing the connection (RFC 5321 §3.8): the next message needs a
            // new one.
            *up = None;
            Attempt::Deferred(reason)
        }
        Ok(attempt) => attempt,
        Err(e) => {
            *up = None;
            Attempt::Deferred(format!("upstream failed: {e}"))
        }
    }
}

/// A logged-in upstream session for `account`, or the attempt's outcome when there is none.
async fn open(ctx: &ListenerContext, account: &AccountConfig) -> Result<SmtpUpstream, Attempt> {
    let credential = token(ctx, account, None).await?;
    let target = ctx
        .target(account)
        .map_err(|e| Attempt::Deferred(e.to_string()))?;
    let mut up = SmtpUpstream::connect(&target)
        .await
        .map_err(|e| Attempt::Deferred(format!("upstream unreachable: {e}")))?;
    let failed = |e: crate::session::upstream::UpstreamError| {
        Attempt::Deferred(format!("upstream failed: {e}"))
    };
    let ehlo = up.ehlo(target.ehlo_name.as_bytes()).await.map_err(failed)?;
    if ehlo.code != 250 {
        return Err(classify(&ehlo));
    }
    let mut result = up.login(&credential).await.map_err(failed)?;
    // A refused token (revoked, or cut short by a policy) is replaced once, on the same
    // connection: a refresh tells whether the grant itself still holds.
    if let (AuthResult::Rejected { .. }, UpstreamCredential::Bearer { token: old, .. }) =
        (&result, &credential)
    {
        let fresh = token(ctx, account, Some(old)).await?;
        result = up.login(&fresh).await.map_err(failed)?;
    }
    match result {
        AuthResult::Accepted(_) => Ok(up),
        // A refused login may heal (a token refreshed, an account re-authorized): defer.
        AuthResult::Rejected { reply, .. } => Err(Attempt::Deferred(format!(
            "login refused: {}",
            text(&reply)
        ))),
    }
}

/// The account's upstream credential (`rejected`: a token the server just refused).
async fn token(
    ctx: &ListenerContext,
    account: &AccountConfig,
    rejected: Option<&std::sync::Arc<crate::auth::tokens::AccessToken>>,
) -> Result<UpstreamCredential, Attempt> {
    crate::auth::upstream::credential(account, None, &ctx.shared.tokens, rejected)
        .await
        .map_err(|e| {
            let why = sanitize_for_reply(&e.description, 200);
            Attempt::Deferred(format!("token: {} ({why})", e.code()))
        })
}

/// RSET, MAIL, RCPT, DATA on a logged-in session. `Err` for a connection problem (deferred).
async fn transaction(
    up: &mut SmtpUpstream,
    envelope: &Envelope,
    message: &[u8],
) -> Result<Attempt, crate::session::upstream::UpstreamError> {
    // Whatever the previous message left (a refused RCPT ends a transaction half-way).
    let reset = up.command(&[b"RSET\r\n"]).await?;
    if reset.code != 250 {
        return Ok(classify(&reset));
    }
    let mail = up
        .command(&[b"MAIL FROM:<", envelope.sender.as_bytes(), b">\r\n"])
        .await?;
    if mail.code != 250 {
        return Ok(classify(&mail));
    }
    let mut accepted = 0;
    let mut refused = None;
    let mut refused_recipients = Vec::new();
    for rcpt in &envelope.recipients {
        let reply = up
            .command(&[b"RCPT TO:<", rcpt.as_bytes(), b">\r\n"])
            .await?;
        match reply.code {
            250 | 251 => accepted += 1,
            400..=499 => return Ok(classify(&reply)),
            _ => {
                tracing::warn!(recipient = %sanitize_for_reply(rcpt, 200), reply = %text(&reply), "recipient refused");
                refused = Some(text(&reply));
                refused_recipients.push(rcpt.clone());
            }
        }
    }
    if accepted == 0 {
        let reason = refused.unwrap_or_else(|| "every recipient was refused".into());
        return Ok(Attempt::Failed(reason));
    }
    let go = up.command(&[b"DATA\r\n"]).await?;
    if go.code != 354 {
        return Ok(classify(&go));
    }
    up.conn
        .send(&dot_stuff(message))
        .await
        .map_err(crate::session::upstream::UpstreamError::Io)?;
    let done = up.command(&[b".\r\n"]).await?;
    Ok(match (classify(&done), refused) {
        (Attempt::Delivered, Some(reply)) if !refused_recipients.is_empty() => {
            Attempt::PartlyDelivered(refused_recipients, reply)
        }
        (attempt, _) => attempt,
    })
}

fn text(reply: &OwnedReply) -> String {
    sanitize_for_reply(&format!("{} {}", reply.code, reply.first_text()), 300)
}

/// 2xx delivered, 4xx deferred, 5xx failed (RFC 5321 §4.2.1).
fn classify(reply: &OwnedReply) -> Attempt {
    match reply.code {
        200..=299 => Attempt::Delivered,
        400..=499 => Attempt::Deferred(text(reply)),
        _ => Attempt::Failed(text(reply)),
    }
}

/// The message as DATA sends it: a dot doubled at each line's start (RFC 5321 §4.5.2), a
/// final CRLF if the message lacks one.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 2);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_stuffed_at_line_starts_only() {
        assert_eq!(dot_stuff(b".a\r\nb.c\r\n..\r\n"), b"..a\r\nb.c\r\n...\r\n");
        assert_eq!(dot_stuff(b"no end"), b"no end\r\n");
    }
}
