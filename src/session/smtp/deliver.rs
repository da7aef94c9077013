//! Delivery from the spool by SMTP: each queued message goes to its account's upstream (the
//! spool listener's, or `[account.N.upstream] smtp`), logged in with the account's credential,
//! within the account's limits (`concurrency` sessions at once, `messages_per_minute`; by
//! default Exchange Online's 3 and 30: learn.microsoft.com/exchange/mail-flow-best-practices/
//! how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365).
//! A burst is paced, never refused.
//!
//! Replies decide the message's fate: `2xx` delivered (removed from the spool, durably); `4xx`
//! (and a connection or token problem) deferred with a growing wait until `max_age_hours`;
//! `5xx` failed (kept in the spool's `failed/` for inspection).

use super::upstream::SmtpUpstream;
use crate::auth::upstream::UpstreamCredential;
use crate::codec::line::sanitize_for_reply;
use crate::config::AccountConfig;
use crate::session::login::AuthResult;
use crate::session::ListenerContext;
use crate::spool::{DeliveryState, Envelope, SpoolHandle};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often due messages are looked for when nothing was committed.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the queue directory is read again (for `authrelay queue retry`, `flush` and
/// `delete`); in between, new messages are learned from the commits themselves.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    /// The message is no longer in the queue (delivered meanwhile, or deleted with
    /// `authrelay queue delete`): nothing to do.
    Gone,
    Delivered,
    /// Try again later; the reason is kept for the queue listing.
    Deferred(String),
    /// Will never succeed.
    Failed(String),
}

/// An account's limits in force.
struct Limits {
    sessions: Arc<Semaphore>,
    /// When the deliveries of the last minute started.
    starts: Mutex<VecDeque<Instant>>,
    per_minute: usize,
}

impl Limits {
    /// Takes a start within the per-minute limit, or says when one frees up.
    fn start(&self, now: Instant) -> Result<(), Instant> {
        let mut starts = self.starts.lock().expect("limits lock");
        while starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            starts.pop_front();
        }
        if starts.len() >= self.per_minute {
            return Err(starts[0] + Duration::from_secs(60));
        }
        starts.push_back(now);
        Ok(())
    }
}

/// Delivers the spool's messages until `shutdown`. `ctx` is the spool listener's context: its
/// upstream, time limits and name.
pub async fn run(ctx: Arc<ListenerContext>, shutdown: CancellationToken) {
    let Some(spool) = ctx.spool.clone() else {
        return;
    };
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut limits: HashMap<String, Arc<Limits>> = HashMap::new();
    let mut known = Known::default();
    loop {
        if let Err(e) = known.refresh(&spool) {
            tracing::error!(error = %e, "the spool cannot be read");
        }
        schedule(&ctx, &spool, &in_flight, &mut limits, &mut known);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = spool.spool.committed().notified() => {}
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
    }
}

/// The queued messages the deliverer knows of, with when each is due.
#[derive(Default)]
struct Known {
    messages: std::collections::BTreeMap<String, (Envelope, DeliveryState)>,
    last_scan: Option<Instant>,
}

impl Known {
    /// Takes the newly committed (and deferred) messages; reads the whole queue again now and
    /// then.
    fn refresh(&mut self, spool: &SpoolHandle) -> Result<(), crate::spool::SpoolError> {
        for (e, state) in spool.spool.take_recent() {
            self.messages.insert(e.id.clone(), (e, state));
        }
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < RESCAN_INTERVAL)
        {
            return Ok(());
        }
        self.last_scan = Some(Instant::now());
        let mut fresh = std::collections::BTreeMap::new();
        for e in spool.spool.queued()? {
            let state = spool.spool.state(&e.id)?;
            fresh.insert(e.id.clone(), (e, state));
        }
        self.messages = fresh;
        Ok(())
    }
}

/// Starts a delivery for every message that is due and within its account's limits.
fn schedule(
    ctx: &Arc<ListenerContext>,
    spool: &Arc<SpoolHandle>,
    in_flight: &Arc<Mutex<HashSet<String>>>,
    limits: &mut HashMap<String, Arc<Limits>>,
    known: &mut Known,
) {
    let now_unix = crate::store::unix_now();
    let directory = ctx.shared.directory();
    let mut started = Vec::new();
    for (id, (envelope, state)) in &known.messages {
        if state.next_try > now_unix || in_flight.lock().expect("in-flight lock").contains(id) {
            continue;
        }
        let (envelope, state) = (envelope.clone(), state.clone());
        let Some(account) = directory
            .accounts()
            .find(|a| a.id == envelope.account)
            .cloned()
        else {
            continue; // held until the account is configured again
        };
        let limit = limits
            .entry(account.id.clone())
            .or_insert_with(|| {
                Arc::new(Limits {
                    sessions: Arc::new(Semaphore::new(account.concurrency)),
                    starts: Mutex::new(VecDeque::new()),
                    per_minute: account.messages_per_minute as usize,
                })
            })
            .clone();
        let Ok(permit) = limit.sessions.clone().try_acquire_owned() else {
            continue;
        };
        if limit.start(Instant::now()).is_err() {
            continue;
        }
        in_flight
            .lock()
            .expect("in-flight lock")
            .insert(envelope.id.clone());
        started.push(envelope.id.clone());
        let (ctx, spool, in_flight) = (ctx.clone(), spool.clone(), in_flight.clone());
        tokio::spawn(async move {
            let id = envelope.id.clone();
            let attempt = deliver(&ctx, &spool, &account, &envelope).await;
            let settled = settle(&spool, &ctx.shared.metrics, &envelope, state, attempt);
            if let Some(state) = settled {
                spool.spool.retried(envelope, state);
            }
            drop(permit);
            in_flight.lock().expect("in-flight lock").remove(&id);
            spool.spool.committed().notify_one();
        });
    }
    // Started deliveries leave the list; a deferred one comes back through `retried`.
    for id in started {
        known.messages.remove(&id);
    }
}

/// Records an attempt's outcome in the spool; the new state when the message stays queued.
fn settle(
    spool: &SpoolHandle,
    metrics: &crate::metrics::Metrics,
    envelope: &Envelope,
    mut state: DeliveryState,
    attempt: Attempt,
) -> Option<DeliveryState> {
    let id = &envelope.id;
    let mut requeued = None;
    let (outcome, reason) = match &attempt {
        Attempt::Gone => ("gone", ""),
        Attempt::Delivered => ("delivered", "250"),
        Attempt::Deferred(r) => ("deferred", r.as_str()),
        Attempt::Failed(r) => ("failed", r.as_str()),
    };
    let code = reason
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    metrics.delivery(outcome, code.unwrap_or("error"));
    let result = match attempt {
        Attempt::Gone => return None,
        Attempt::Delivered => {
            tracing::info!(queue_id = %id, account = %envelope.account, "message delivered");
            spool.spool.delivered(id)
        }
        Attempt::Failed(reason) => {
            tracing::warn!(queue_id = %id, account = %envelope.account, reason = %reason, "message failed permanently");
            state.last_reply = reason;
            let _ = spool.spool.defer(id, &state);
            spool.spool.fail(id)
        }
        Attempt::Deferred(reason) => {
            let now = crate::store::unix_now();
            let expired = now.saturating_sub(envelope.arrived) > spool.config.max_age.as_secs();
            state.attempts += 1;
            state.last_reply = reason.clone();
            let wait = spool
                .config
                .first_retry
                .saturating_mul(1 << state.attempts.saturating_sub(1).min(10))
                .min(MAX_BACKOFF);
            state.next_try = now + wait.as_secs();
            tracing::info!(queue_id = %id, account = %envelope.account, attempts = state.attempts, retry_in_secs = wait.as_secs(), reason = %reason, "delivery deferred");
            match spool.spool.defer(id, &state) {
                Ok(()) if expired => spool.spool.fail(id),
                other => {
                    requeued = Some(state);
                    other
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::error!(queue_id = %id, error = %e, "the spool could not record a delivery");
    }
    requeued
}

/// One delivery attempt of one message.
async fn deliver(
    ctx: &ListenerContext,
    spool: &SpoolHandle,
    account: &AccountConfig,
    envelope: &Envelope,
) -> Attempt {
    let (_, message) = match spool.spool.read(&envelope.id) {
        Ok(m) => m,
        Err(_) if !spool.spool.is_queued(&envelope.id) => return Attempt::Gone,
        Err(e) => return Attempt::Deferred(e.to_string()),
    };
    let credential = match credential(ctx, account).await {
        Ok(c) => c,
        Err(reason) => return Attempt::Deferred(reason),
    };
    let target = match ctx.target(account) {
        Ok(t) => t,
        Err(e) => return Attempt::Deferred(e.to_string()),
    };
    let mut up = match SmtpUpstream::connect(&target).await {
        Ok(up) => up,
        Err(e) => return Attempt::Deferred(format!("upstream unreachable: {e}")),
    };
    let attempt = transaction(&mut up, &target.ehlo_name, &credential, envelope, &message).await;
    up.quit().await;
    attempt.unwrap_or_else(|e| Attempt::Deferred(format!("upstream failed: {e}")))
}

async fn credential(
    ctx: &ListenerContext,
    account: &AccountConfig,
) -> Result<UpstreamCredential, String> {
    use crate::config::AccountAuth;
    match &account.auth {
        AccountAuth::OAuth(oauth) => {
            let token = ctx
                .shared
                .tokens
                .access_token(account, None, None)
                .await
                .map_err(|e| {
                    format!(
                        "token: {} ({})",
                        e.code(),
                        sanitize_for_reply(&e.description, 200)
                    )
                })?;
            Ok(UpstreamCredential::Bearer {
                user: account.mailbox.clone(),
                token,
                mechanism: oauth.mechanism,
            })
        }
        AccountAuth::AppPassword(password) => Ok(UpstreamCredential::Password {
            user: account.mailbox.clone(),
            password: password.clone(),
        }),
        AccountAuth::Passthrough => {
            Err("a pass-through account cannot deliver from the spool".into())
        }
    }
}

/// EHLO, AUTH, MAIL, RCPT, DATA. `Err` for a connection problem (deferred).
async fn transaction(
    up: &mut SmtpUpstream,
    ehlo_name: &str,
    credential: &UpstreamCredential,
    envelope: &Envelope,
    message: &[u8],
) -> Result<Attempt, crate::session::upstream::UpstreamError> {
    let ehlo = up.ehlo(ehlo_name.as_bytes()).await?;
    if ehlo.code != 250 {
        return Ok(classify(&ehlo));
    }
    match up.login(credential).await? {
        AuthResult::Accepted(_) => {}
        AuthResult::Rejected { reply, .. } => {
            // A refused login may heal (a token refreshed, an account re-authorized): defer.
            return Ok(Attempt::Deferred(format!(
                "login refused: {}",
                text(&reply)
            )));
        }
    }
    let mail = up
        .command(&[b"MAIL FROM:<", envelope.sender.as_bytes(), b">\r\n"])
        .await?;
    if mail.code != 250 {
        return Ok(classify(&mail));
    }
    let mut accepted = 0;
    for rcpt in &envelope.recipients {
        let reply = up
            .command(&[b"RCPT TO:<", rcpt.as_bytes(), b">\r\n"])
            .await?;
        match reply.code {
            250 | 251 => accepted += 1,
            400..=499 => return Ok(classify(&reply)),
            _ => {
                tracing::warn!(recipient = %sanitize_for_reply(rcpt, 200), reply = %text(&reply), "recipient refused")
            }
        }
    }
    if accepted == 0 {
        return Ok(Attempt::Failed("every recipient was refused".into()));
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
    Ok(classify(&done))
}

fn text(reply: &super::upstream::OwnedReply) -> String {
    sanitize_for_reply(&format!("{} {}", reply.code, reply.first_text()), 300)
}

/// 2xx delivered, 4xx deferred, 5xx failed (RFC 5321 §4.2.1).
fn classify(reply: &super::upstream::OwnedReply) -> Attempt {
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

    #[test]
    fn the_per_minute_limit_paces_starts() {
        let limits = Limits {
            sessions: Arc::new(Semaphore::new(3)),
            starts: Mutex::new(VecDeque::new()),
            per_minute: 2,
        };
        let t = Instant::now();
        assert!(limits.start(t).is_ok());
        assert!(limits.start(t).is_ok());
        assert_eq!(limits.start(t), Err(t + Duration::from_secs(60)));
        assert!(limits.start(t + Duration::from_secs(61)).is_ok());
    }
}
