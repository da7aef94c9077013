//! Alerts: the relay calls for help when an administrator must act, instead of waiting to be
//! looked at. An event is raised by whoever sees the problem (a token request, a delivery, the
//! periodic watch), told once, told again with back-off while it lasts (after `repeat_hours`,
//! then twice as long each time), and followed by one "resolved" when it clears.
//!
//! Each event goes to the log and, with `[alerts]`, to a webhook (one JSON POST, [`Event`]) and
//! by e-mail through the `email_account` (queued in the spool like any message): the tasks that
//! send them and watch for what no request sees are in `alerting`, above the parts that raise
//! events.
//! Nothing secret is in an event: accounts are named by their configuration key, replies are
//! the upstream's or the identity provider's own texts, and tokens, passwords, keys and the
//! webhook's URL never appear.
//!
//! Which events there are, and the key that makes each one "the same event":
//!
//! | kind | key | raised by | resolved by |
//! |---|---|---|---|
//! | `GrantRefused` | `grant:ACCOUNT` | a token request refused for good (invalid_grant, AADSTS70043 sign-in frequency, AADSTS700082 inactivity) | the next token obtained |
//! | `SetupRefused` | `setup:ACCOUNT` | the app registration refused (wrong secret, tenant, authority, client id) | the next token obtained |
//! | `SecretExpiring` | `secret:ACCOUNT` | `client_secret_expires` within `expiry_warning_days` | a later date configured |
//! | `CertificateExpiring` | `certificate:ACCOUNT` | the certificate's notAfter within `expiry_warning_days` | a newer certificate |
//! | `SpoolStuck` | `spool` | a queued message older than `spool_stuck_minutes` | no message that old |
//! | `MessagesFailed` | `failed:ACCOUNT` | a message given up (5xx, too old) | the account's next delivery |
//! | `AdminActionNeeded` | `exchange:ACCOUNT:CODE` | an upstream answer only an admin can fix (5.7.139, 5.7.30, 5.7.60, ...) | the account's next delivery |

use crate::config::AlertsConfig;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// The longest wait between two reminders of an event that is still firing.
const MAX_REPEAT: Duration = Duration::from_secs(7 * 86400);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// The account's grant was refused: someone must sign in again.
    GrantRefused,
    /// The app registration or endpoints were refused: the configuration must change.
    SetupRefused,
    /// The account's sign-in must be renewed soon: a Conditional Access sign-in frequency, or
    /// a refresh token unused for nearly Microsoft's 90 days.
    GrantExpiring,
    /// The app's client secret expires soon (or has).
    SecretExpiring,
    /// The app's certificate expires soon (or has).
    CertificateExpiring,
    /// The spool is not moving: a message has waited longer than `spool_stuck_minutes`.
    SpoolStuck,
    /// Messages were given up and their senders told.
    MessagesFailed,
    /// The upstream answered something only an administrator can fix.
    AdminActionNeeded,
}

/// Whether the event is going on or over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It is happening (first told, or a reminder).
    Firing,
    /// It is over.
    Resolved,
}

/// One alert as sent: the webhook's JSON body, and the e-mail's subject and text.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Always `authrelay`.
    pub source: &'static str,
    /// The relay's host name, to tell replicas and sites apart.
    pub relay: String,
    /// What happened.
    pub event: Kind,
    /// Going on or over.
    pub status: Status,
    /// The account concerned (`[account.NAME]`), if one is.
    pub account: Option<String>,
    /// What is wrong, in a sentence.
    pub summary: String,
    /// What to do about it.
    pub action: String,
    /// When it started (RFC 3339).
    pub since: String,
    /// When this was sent (RFC 3339).
    pub at: String,
    /// All of it in one line, for receivers that show a `text` field (Slack, Teams workflows,
    /// ntfy, Mattermost).
    pub text: String,
}

impl Event {
    /// The e-mail subject: `[authrelay HOST] FIRING: GrantRefused for account scanner`.
    pub fn subject(&self) -> String {
        let status = match self.status {
            Status::Firing => "FIRING",
            Status::Resolved => "RESOLVED",
        };
        let account = self
            .account
            .as_deref()
            .map(|a| format!(" for account {a}"))
            .unwrap_or_default();
        format!(
            "[authrelay {}] {status}: {:?}{account}",
            self.relay, self.event
        )
    }
}

/// An event that is firing.
struct Active {
    kind: Kind,
    account: Option<String>,
    summary: String,
    action: String,
    since: SystemTime,
    told: Instant,
    /// The wait before the next reminder.
    repeat: Duration,
}

/// The events firing now, and where new ones go. Shared by the whole relay; kept in memory (a
/// restart tells what is still wrong again, once).
pub struct Alerts {
    relay: String,
    repeat: Duration,
    active: Mutex<HashMap<String, Active>>,
    outbox: Option<mpsc::UnboundedSender<Event>>,
}

impl Alerts {
    /// Alerts as `[alerts]` configures them, and the queue the sender takes them from (none
    /// when alerts go to the log only).
    pub fn new(config: &AlertsConfig) -> (Alerts, Option<mpsc::UnboundedReceiver<Event>>) {
        let (outbox, inbox) = match config.sends() {
            true => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let relay = gethostname::gethostname().to_string_lossy().into_owned();
        let alerts = Alerts {
            relay,
            repeat: config.repeat,
            active: Mutex::new(HashMap::new()),
            outbox,
        };
        (alerts, inbox)
    }

    /// Alerts that go nowhere but the log (tools and tests that build a relay by hand).
    pub fn log_only() -> Alerts {
        Alerts::new(&AlertsConfig::default()).0
    }

    /// Raises the event `key`: told now if it is new, or if its reminder is due.
    pub fn raise(&self, key: &str, kind: Kind, account: Option<&str>, summary: &str, action: &str) {
        let mut active = self.active.lock().expect("alerts lock");
        let now = Instant::now();
        let a = match active.get_mut(key) {
            Some(a) if now.duration_since(a.told) < a.repeat => return,
            Some(a) => {
                a.told = now;
                a.repeat = (a.repeat * 2).min(MAX_REPEAT);
                a.summary = summary.to_owned();
                a
            }
            None => active.entry(key.to_owned()).or_insert(Active {
                kind,
                account: account.map(str::to_owned),
                summary: summary.to_owned(),
                action: action.to_owned(),
                since: SystemTime::now(),
                told: now,
                repeat: self.repeat,
            }),
        };
        let event = self.event(a, Status::Firing);
        drop(active);
        self.tell(event);
    }

    /// Resolves the event `key`, if it is firing.
    pub fn resolve(&self, key: &str) {
        let Some(a) = self.active.lock().expect("alerts lock").remove(key) else {
            return;
        };
        let event = self.event(&a, Status::Resolved);
        self.tell(event);
    }

    /// Resolves every firing event of `account` of one of `kinds`.
    pub fn resolve_account(&self, account: &str, kinds: &[Kind]) {
        let keys: Vec<String> = self
            .active
            .lock()
            .expect("alerts lock")
            .iter()
            .filter(|(_, a)| a.account.as_deref() == Some(account) && kinds.contains(&a.kind))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.resolve(&key);
        }
    }

    /// The keys of the events firing now, sorted.
    pub fn firing(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .active
            .lock()
            .expect("alerts lock")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// A message of `account`'s was delivered: its failed messages and upstream refusals are
    /// over.
    pub fn on_delivered(&self, account: &str) {
        self.resolve_account(account, &[Kind::MessagesFailed, Kind::AdminActionNeeded]);
    }

    /// The upstream answered `account`'s delivery with `reply`, which names `code`: only an
    /// administrator can fix it, with `action`.
    pub fn on_admin_needed(&self, account: &str, code: &str, reply: &str, action: &str) {
        let summary = format!("the upstream answered {}", one_line(reply));
        let key = format!("exchange:{account}:{code}");
        self.raise(
            &key,
            Kind::AdminActionNeeded,
            Some(account),
            &summary,
            action,
        );
    }

    /// A message of `account`'s was given up with `reason` (its sender is told by a DSN).
    pub fn on_failed(&self, account: &str, queue_id: &str, reason: &str) {
        let summary = format!("message {queue_id} failed for good: {}", one_line(reason));
        let action = "see `authrelay queue list` and `authrelay queue show ID`; the sender was sent a delivery-status notification; once the cause is fixed, `authrelay queue retry ID` sends it again";
        self.raise(
            &format!("failed:{account}"),
            Kind::MessagesFailed,
            Some(account),
            &summary,
            action,
        );
    }

    fn event(&self, a: &Active, status: Status) -> Event {
        let now = SystemTime::now();
        let mut e = Event {
            source: "authrelay",
            relay: self.relay.clone(),
            event: a.kind,
            status,
            account: a.account.clone(),
            summary: a.summary.clone(),
            action: a.action.clone(),
            since: crate::civil::rfc3339(a.since),
            at: crate::civil::rfc3339(now),
            text: String::new(),
        };
        let took = now.duration_since(a.since).unwrap_or_default().as_secs();
        e.text = match status {
            Status::Firing => format!("{}: {}. What to do: {}", e.subject(), e.summary, e.action),
            Status::Resolved => format!("{} after {took} s: {}", e.subject(), e.summary),
        };
        e
    }

    fn tell(&self, event: Event) {
        match event.status {
            Status::Firing => tracing::warn!(
                alert = ?event.event,
                account = event.account.as_deref().unwrap_or("-"),
                "alert: {}. What to do: {}",
                event.summary,
                event.action
            ),
            Status::Resolved => tracing::info!(
                alert = ?event.event,
                account = event.account.as_deref().unwrap_or("-"),
                "alert resolved: {}",
                event.summary
            ),
        }
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(event);
        }
    }
}

/// A reply of one or more lines as one line (a multi-line SMTP reply's lines joined).
pub fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerts(repeat: Duration) -> (Alerts, mpsc::UnboundedReceiver<Event>) {
        let config = AlertsConfig {
            webhook_url: Some(crate::secret::Secret::new("https://hooks.example.com/x")),
            repeat,
            ..AlertsConfig::default()
        };
        let (a, rx) = Alerts::new(&config);
        (a, rx.expect("a sending configuration has an outbox"))
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<(Kind, Status)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.event, e.status))
            .collect()
    }

    #[test]
    fn an_event_is_told_once_then_resolved_once() {
        let (a, mut rx) = alerts(Duration::from_secs(3600));
        for _ in 0..3 {
            a.raise(
                "grant:s",
                Kind::GrantRefused,
                Some("s"),
                "refused",
                "sign in",
            );
        }
        a.resolve("grant:s");
        a.resolve("grant:s");
        assert_eq!(
            drain(&mut rx),
            [
                (Kind::GrantRefused, Status::Firing),
                (Kind::GrantRefused, Status::Resolved)
            ]
        );
        assert!(a.firing().is_empty());
    }

    #[test]
    fn a_lasting_event_is_repeated_with_back_off() {
        let (a, mut rx) = alerts(Duration::from_millis(40));
        a.raise("spool", Kind::SpoolStuck, None, "stuck", "look");
        std::thread::sleep(Duration::from_millis(50));
        a.raise("spool", Kind::SpoolStuck, None, "still stuck", "look");
        // The next reminder waits twice as long: 80 ms.
        std::thread::sleep(Duration::from_millis(50));
        a.raise("spool", Kind::SpoolStuck, None, "still stuck", "look");
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[test]
    fn exchange_answers_that_need_an_admin_are_raised_and_a_delivery_clears_them() {
        let (a, mut rx) = alerts(Duration::from_secs(3600));
        a.on_admin_needed(
            "s",
            "5.7.139",
            "535 5.7.139 Authentication unsuccessful\r\n",
            "enable it",
        );
        a.on_failed("s", "0001", "550 5.7.60 SendAsDenied");
        assert_eq!(a.firing(), ["exchange:s:5.7.139", "failed:s"]);
        a.on_delivered("other");
        assert_eq!(
            a.firing().len(),
            2,
            "another account's delivery clears nothing"
        );
        a.on_delivered("s");
        assert!(a.firing().is_empty());
        let told = drain(&mut rx);
        assert_eq!(told.len(), 4);
        assert_eq!(
            told.iter().filter(|(_, s)| *s == Status::Resolved).count(),
            2
        );
    }

    #[test]
    fn the_json_body_has_the_documented_fields() {
        let (a, mut rx) = alerts(Duration::from_secs(3600));
        a.raise(
            "grant:s",
            Kind::GrantRefused,
            Some("s"),
            "refused",
            "sign in",
        );
        let e = rx.try_recv().unwrap();
        let v = serde_json::to_value(&e).unwrap();
        for field in [
            "source", "relay", "event", "status", "account", "summary", "action", "since", "at",
            "text",
        ] {
            assert!(v.get(field).is_some(), "{field} in {v}");
        }
        assert_eq!(v["event"], "GrantRefused");
        assert_eq!(v["status"], "firing");
        assert!(e.subject().ends_with("FIRING: GrantRefused for account s"));
    }
}
