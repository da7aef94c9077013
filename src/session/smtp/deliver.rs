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
use crate::codec::line::sanitize_for_reply;
use crate::config::AccountConfig;
use crate::session::login::AuthResult;
use crate::session::ListenerContext;
use crate::spool::{DeliveryState, Envelope, SpoolHandle};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// Delivered to some recipients; these were refused for good, with the server's reply.
    PartlyDelivered(Vec<String>, String),
    /// Try again later; the reason is kept for the queue listing.
    Deferred(String),
    /// Will never succeed.
    Failed(String),
}

/// An account's limits in force.
struct Limits {
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

/// Per account: the messages waiting for one of its sessions, and how many sessions run.
#[derive(Default)]
struct Waiting {
    due: VecDeque<(Envelope, DeliveryState)>,
    sessions: usize,
}

/// What the scheduler and the delivery sessions share.
struct Deliverer {
    ctx: Arc<ListenerContext>,
    spool: Arc<SpoolHandle>,
    in_flight: Mutex<HashSet<String>>,
    waiting: Mutex<HashMap<String, Waiting>>,
    limits: Mutex<HashMap<String, Arc<Limits>>>,
}

/// Delivers the spool's messages until `shutdown`. `ctx` is the spool listener's context: its
/// upstream, time limits and name.
pub async fn run(ctx: Arc<ListenerContext>, shutdown: CancellationToken) {
    let Some(spool) = ctx.spool.clone() else {
        return;
    };
    let deliverer = Arc::new(Deliverer {
        ctx,
        spool,
        in_flight: Mutex::default(),
        waiting: Mutex::default(),
        limits: Mutex::default(),
    });
    let mut known = Known::default();
    loop {
        if let Err(e) = known.refresh(&deliverer.spool) {
            tracing::error!(error = %e, "the spool cannot be read");
        }
        schedule(&deliverer, &mut known);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = deliverer.spool.spool.committed().notified() => {}
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

/// Hands every due message to its account's sessions, starting sessions up to the account's
/// `concurrency`.
fn schedule(d: &Arc<Deliverer>, known: &mut Known) {
    let now_unix = crate::store::unix_now();
    let directory = d.ctx.shared.directory();
    let mut handed = Vec::new();
    for (id, (envelope, state)) in &known.messages {
        if state.next_try > now_unix
            || !d
                .in_flight
                .lock()
                .expect("in-flight lock")
                .insert(id.clone())
        {
            continue;
        }
        handed.push(id.clone());
        let mut waiting = d.waiting.lock().expect("waiting lock");
        let queue = waiting.entry(envelope.account.clone()).or_default();
        queue.due.push_back((envelope.clone(), state.clone()));
    }
    // Handed messages leave the list; a deferred one comes back through `retried`.
    for id in handed {
        known.messages.remove(&id);
    }
    let mut waiting = d.waiting.lock().expect("waiting lock");
    for (account_id, queue) in waiting.iter_mut() {
        let Some(account) = directory.accounts().find(|a| &a.id == account_id).cloned() else {
            continue; // held until the account is configured again
        };
        while queue.sessions < account.concurrency && queue.sessions < queue.due.len() {
            queue.sessions += 1;
            tokio::spawn(session(d.clone(), account.clone()));
        }
    }
}

/// One upstream session of an account: it takes the account's waiting messages one after
/// another, paced by the per-minute limit, on one connection (RSET between messages) while the
/// connection holds, and ends when none is left.
async fn session(d: Arc<Deliverer>, account: Arc<AccountConfig>) {
    let limit = d
        .limits
        .lock()
        .expect("limits lock")
        .entry(account.id.clone())
        .or_insert_with(|| {
            Arc::new(Limits {
                starts: Mutex::new(VecDeque::new()),
                per_minute: account.messages_per_minute as usize,
            })
        })
        .clone();
    let mut up: Option<SmtpUpstream> = None;
    loop {
        let next = {
            let mut waiting = d.waiting.lock().expect("waiting lock");
            let queue = waiting.entry(account.id.clone()).or_default();
            let next = queue.due.pop_front();
            if next.is_none() {
                queue.sessions -= 1;
            }
            next
        };
        let Some((envelope, state)) = next else { break };
        // Paced, never refused: wait for the minute's window.
        while let Err(at) = limit.start(Instant::now()) {
            tokio::time::sleep_until(at.into()).await;
        }
        let attempt = deliver(&d.ctx, &d.spool, &account, &envelope, &mut up).await;
        // The header section, for a notification, while the message is still in the queue.
        let headers = match &attempt {
            Attempt::PartlyDelivered(..) => d.spool.spool.show(&envelope.id).map(|(_, h)| h).ok(),
            _ => None,
        };
        match settle(&d.spool, &d.ctx.shared.metrics, &envelope, state, attempt) {
            Settled::Requeued(state) => d.spool.spool.retried(envelope.clone(), state),
            Settled::Failed(reason) => {
                let headers = d.spool.spool.show(&envelope.id).map(|(_, h)| h).ok();
                notify_sender(&d, &account, &envelope, &reason, headers).await;
            }
            Settled::Refused(recipients, reply) => {
                let refused = Envelope {
                    recipients,
                    ..envelope.clone()
                };
                notify_sender(&d, &account, &refused, &reply, headers).await;
            }
            Settled::Done => {}
        }
        d.in_flight
            .lock()
            .expect("in-flight lock")
            .remove(&envelope.id);
        d.spool.spool.committed().notify_one();
    }
    if let Some(mut up) = up {
        up.quit().await;
    }
}

/// Tells the sender of a message that failed for good (RFC 3464), through the same account:
/// the notification is a message of the spool like any other, never bounced itself.
async fn notify_sender(
    d: &Deliverer,
    account: &AccountConfig,
    failed: &Envelope,
    reason: &str,
    headers: Option<String>,
) {
    if failed.bounce || failed.sender.is_empty() {
        return;
    }
    let headers = headers.unwrap_or_default();
    let body = crate::spool::dsn::bounce(
        failed,
        reason,
        &account.mailbox,
        &d.ctx.config.ehlo_name,
        headers.as_bytes(),
    );
    let envelope = Envelope {
        id: crate::spool::new_id(),
        account: account.id.clone(),
        sender: account.mailbox.clone(),
        recipients: vec![failed.sender.clone()],
        arrived: crate::store::unix_now(),
        client: "authrelay".into(),
        bounce: true,
    };
    let stored = async {
        let mut m = d.spool.spool.begin(&envelope).await?;
        m.write(&body).await?;
        m.commit().await
    }
    .await;
    match stored {
        Ok(()) => {
            tracing::info!(queue_id = %envelope.id, failed = %failed.id, "delivery-status notification queued for the sender")
        }
        Err(e) => {
            tracing::error!(failed = %failed.id, error = %e, "the delivery-status notification could not be queued")
        }
    }
}

/// What became of a message after an attempt.
enum Settled {
    /// Still queued, with this state.
    Requeued(DeliveryState),
    /// Given up (a permanent refusal, or too old): the sender is to be told why.
    Failed(String),
    /// Delivered, but these recipients were refused for good: the sender is to be told.
    Refused(Vec<String>, String),
    /// Delivered, or gone.
    Done,
}

/// Records an attempt's outcome in the spool.
fn settle(
    spool: &SpoolHandle,
    metrics: &crate::metrics::Metrics,
    envelope: &Envelope,
    mut state: DeliveryState,
    attempt: Attempt,
) -> Settled {
    let id = &envelope.id;
    let mut settled = Settled::Done;
    let (outcome, reason) = match &attempt {
        Attempt::Gone => ("gone", ""),
        Attempt::Delivered | Attempt::PartlyDelivered(..) => ("delivered", "250"),
        Attempt::Deferred(r) => ("deferred", r.as_str()),
        Attempt::Failed(r) => ("failed", r.as_str()),
    };
    let code = reason
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    metrics.delivery(outcome, code.unwrap_or("error"));
    let result = match attempt {
        Attempt::Gone => return Settled::Done,
        Attempt::PartlyDelivered(refused, reply) => {
            tracing::info!(queue_id = %id, account = %envelope.account, refused = refused.len(), "message delivered to some recipients");
            settled = Settled::Refused(refused, reply);
            spool.spool.delivered(id)
        }
        Attempt::Delivered => {
            tracing::info!(queue_id = %id, account = %envelope.account, "message delivered");
            spool.spool.delivered(id)
        }
        Attempt::Failed(reason) => {
            tracing::warn!(queue_id = %id, account = %envelope.account, reason = %reason, "message failed permanently");
            state.last_reply = reason.clone();
            let _ = spool.spool.defer(id, &state);
            settled = Settled::Failed(reason);
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
                Ok(()) if expired => {
                    let hours = spool.config.max_age.as_secs() / 3600;
                    settled = Settled::Failed(format!("{reason} (given up after {hours} hours)"));
                    spool.spool.fail(id)
                }
                other => {
                    settled = Settled::Requeued(state);
                    other
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::error!(queue_id = %id, error = %e, "the spool could not record a delivery");
    }
    settled
}

/// One delivery attempt of one message, on the session's connection (opened and logged in
/// when there is none; dropped when it fails).
async fn deliver(
    ctx: &ListenerContext,
    spool: &SpoolHandle,
    account: &AccountConfig,
    envelope: &Envelope,
    up: &mut Option<SmtpUpstream>,
) -> Attempt {
    let (_, message) = match spool.spool.read(&envelope.id) {
        Ok(m) => m,
        Err(_) if !spool.spool.is_queued(&envelope.id) => return Attempt::Gone,
        Err(e) => return Attempt::Deferred(e.to_string()),
    };
    if up.is_none() {
        match open(ctx, account).await {
            Ok(session) => *up = Some(session),
            Err(attempt) => return attempt,
        }
    }
    let session = up.as_mut().expect("opened above");
    match transaction(session, envelope, &message).await {
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
    let credential = crate::auth::upstream::credential(account, None, &ctx.shared.tokens, None)
        .await
        .map_err(|e| {
            let why = sanitize_for_reply(&e.description, 200);
            Attempt::Deferred(format!("token: {} ({why})", e.code()))
        })?;
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
    match up.login(&credential).await.map_err(failed)? {
        AuthResult::Accepted(_) => Ok(up),
        // A refused login may heal (a token refreshed, an account re-authorized): defer.
        AuthResult::Rejected { reply, .. } => Err(Attempt::Deferred(format!(
            "login refused: {}",
            text(&reply)
        ))),
    }
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
