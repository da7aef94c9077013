//! Delivery from the spool: each queued message goes out for its account, by SMTP
//! ([`smtp`]: the spool listener's upstream or the account's own) or by Microsoft Graph
//! ([`graph`]), within the account's limits (`concurrency` sessions at once, `messages_per_minute`; by
//! default Exchange Online's 3 and 30: learn.microsoft.com/exchange/mail-flow-best-practices/
//! how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365).
//! A burst is paced, never refused.
//!
//! Replies decide the message's fate: delivered (removed from the spool, durably); deferred
//! (SMTP `4xx`, Graph `429`/`5xx`, a connection or token problem) with a growing wait, or the
//! server's `Retry-After`, until `max_age_hours`; failed (SMTP `5xx`, Graph's other `4xx`:
//! kept in the spool's `failed/` for inspection, the sender told by a DSN).

mod graph;
mod graph_answer;
mod graph_upload;
mod shared;
mod smtp;

use crate::config::{AccountConfig, Sending};
use crate::session::smtp::upstream::SmtpUpstream;
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
    /// Try again after the server's `Retry-After`; the account's other messages wait too.
    Throttled(String, Duration),
    /// Try again later, but the message may have gone out (no answer to a Graph send): look
    /// before sending it again.
    Unsure(String),
    /// Will never succeed.
    Failed(String),
}

impl Attempt {
    /// The upstream's answer or the error, for an attempt that did not deliver everything.
    fn reply(&self) -> Option<&str> {
        match self {
            Attempt::Gone | Attempt::Delivered => None,
            Attempt::PartlyDelivered(_, r)
            | Attempt::Deferred(r)
            | Attempt::Throttled(r, _)
            | Attempt::Unsure(r)
            | Attempt::Failed(r) => Some(r),
        }
    }
}

/// An account's limits in force.
struct Limits {
    /// When the deliveries of the last minute started.
    starts: Mutex<VecDeque<Instant>>,
    per_minute: usize,
    /// No delivery starts before this (the server asked to wait: `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
}

impl Limits {
    /// Takes a start within the per-minute limit and after any pause, or says when to ask again.
    fn start(&self, now: Instant) -> Result<(), Instant> {
        if let Some(until) = *self.paused_until.lock().expect("limits lock") {
            if until > now {
                return Err(until);
            }
        }
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
                paused_until: Mutex::new(None),
            })
        })
        .clone();
    let mut up: Option<SmtpUpstream> = None;
    let mut shared = shared::SharedLimits::new(d.ctx.shared.tokens.store().clone(), &account);
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
        shared.before_delivery().await;
        let attempt = deliver(&d.ctx, &d.spool, &account, &envelope, &state, &mut up).await;
        if let Attempt::Throttled(_, wait) = &attempt {
            *limit.paused_until.lock().expect("limits lock") = Some(Instant::now() + *wait);
        }
        // The header section, for a notification, while the message is still in the queue.
        let headers = match &attempt {
            Attempt::PartlyDelivered(..) => d.spool.spool.show(&envelope.id).map(|(_, h)| h).ok(),
            _ => None,
        };
        learn(&d, &envelope, &attempt).await;
        match settle(&d.spool, &d.ctx.shared.metrics, &envelope, state, attempt) {
            Settled::Requeued(state) => d.spool.spool.retried(envelope.clone(), state),
            Settled::Failed(reason) => {
                d.ctx
                    .shared
                    .alerts
                    .on_failed(&envelope.account, &envelope.id, &reason);
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
    shared.release().await;
}

/// What an attempt tells the alerts and the store: a delivery is on record (the account has
/// delivered before, so a later refused grant holds mail instead of refusing devices).
async fn learn(d: &Deliverer, envelope: &Envelope, attempt: &Attempt) {
    if !envelope.bounce {
        // A notification or alert the relay made says nothing about devices' mail.
        tell_alerts(&d.ctx.shared.alerts, &envelope.account, attempt);
    }
    if matches!(attempt, Attempt::Delivered | Attempt::PartlyDelivered(..)) {
        let store = d.ctx.shared.tokens.store();
        store.record_first_delivery(&envelope.account).await;
    }
}

/// Delivered: the account's alerts about failures are over; refused with an answer only an
/// administrator can fix: an alert.
fn tell_alerts(alerts: &crate::alerts::Alerts, account: &str, attempt: &Attempt) {
    match attempt.reply() {
        None if matches!(attempt, Attempt::Delivered) => alerts.on_delivered(account),
        Some(reply) => {
            if let Some((code, action)) = crate::auth::advice::admin_action(reply) {
                alerts.on_admin_needed(account, code, reply, action);
            }
        }
        None => {}
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
    let envelope = Envelope::own(&account.id, &account.mailbox, &failed.sender, "authrelay");
    let stored = d.spool.spool.store(&envelope, &body).await;
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
        Attempt::Deferred(r) | Attempt::Throttled(r, _) | Attempt::Unsure(r) => {
            ("deferred", r.as_str())
        }
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
        Attempt::Deferred(_) | Attempt::Throttled(..) | Attempt::Unsure(_) => {
            let (reason, asked) = match attempt {
                Attempt::Throttled(r, wait) => (r, Some(wait)),
                Attempt::Unsure(r) => {
                    state.unsure = true;
                    (r, None)
                }
                Attempt::Deferred(r) => (r, None),
                _ => unreachable!("matched above"),
            };
            let now = crate::store::unix_now();
            let expired = now.saturating_sub(envelope.arrived) > spool.config.max_age.as_secs();
            state.attempts += 1;
            state.last_reply = reason.clone();
            let backoff = spool
                .config
                .first_retry
                .saturating_mul(1 << state.attempts.saturating_sub(1).min(10));
            let wait = asked.unwrap_or(backoff).min(MAX_BACKOFF);
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
    recorded(result, envelope, settled)
}

/// What is left to do once the spool recorded an attempt (or could not).
fn recorded(
    result: Result<(), crate::spool::SpoolError>,
    envelope: &Envelope,
    settled: Settled,
) -> Settled {
    match result {
        Err(crate::spool::SpoolError::NotQueued { .. }) => {
            // `authrelay queue delete` or the account page took it during the attempt: what
            // upstream was told stands, and nothing is retried or bounced.
            tracing::info!(queue_id = %envelope.id, account = %envelope.account, "the message was deleted while it was being delivered");
            Settled::Done
        }
        Err(e) => {
            tracing::error!(queue_id = %envelope.id, error = %e, "the spool could not record a delivery");
            settled
        }
        Ok(()) => settled,
    }
}

/// One delivery attempt of one message: by Graph, or on the session's SMTP connection `up`
/// (opened when there is none; dropped when it fails).
async fn deliver(
    ctx: &ListenerContext,
    spool: &SpoolHandle,
    account: &AccountConfig,
    envelope: &Envelope,
    state: &DeliveryState,
    up: &mut Option<SmtpUpstream>,
) -> Attempt {
    let (_, message) = match spool.spool.read(&envelope.id) {
        Ok(m) => m,
        Err(_) if !spool.spool.is_queued(&envelope.id) => return Attempt::Gone,
        Err(e) => return Attempt::Deferred(e.to_string()),
    };
    match &account.send {
        Sending::Smtp => smtp::deliver(ctx, account, envelope, &message, up).await,
        Sending::Graph(g) => graph::deliver(ctx, account, g, envelope, state, &message).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_minute_limit_paces_starts() {
        let limits = Limits {
            starts: Mutex::new(VecDeque::new()),
            per_minute: 2,
            paused_until: Mutex::new(None),
        };
        let t = Instant::now();
        assert!(limits.start(t).is_ok());
        assert!(limits.start(t).is_ok());
        assert_eq!(limits.start(t), Err(t + Duration::from_secs(60)));
        assert!(limits.start(t + Duration::from_secs(61)).is_ok());
        *limits.paused_until.lock().unwrap() = Some(t + Duration::from_secs(200));
        assert_eq!(
            limits.start(t + Duration::from_secs(130)),
            Err(t + Duration::from_secs(200))
        );
    }
}
