//! `[alerts]`: where the relay calls for help when an administrator must act: a webhook that
//! gets one JSON POST per event, and e-mail to an admin address sent through one of the relay's
//! own accounts.

use super::{is_loopback_host, Problems, Table};
use crate::secret::Secret;
use config::Value;
use std::time::Duration;

/// `[alerts]` as configured; with neither `webhook_url` nor `email_to` nothing is sent (events
/// are still logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// The webhook's URL. A secret: Slack's and Teams' webhook URLs are their own credential.
    pub webhook_url: Option<Secret>,
    /// The administrator's address for alert mails.
    pub email_to: Option<String>,
    /// The account (`[account.NAME]`) whose upstream sends alert mails, from its mailbox.
    pub email_account: Option<String>,
    /// A queued message older than this means the spool is not moving.
    pub spool_stuck: Duration,
    /// An event still firing is told again after this, then after twice as long, and so on.
    pub repeat: Duration,
    /// How long ahead of a client secret's or certificate's expiry the warning comes.
    pub expiry_warning: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            email_to: None,
            email_account: None,
            spool_stuck: Duration::from_secs(30 * 60),
            repeat: Duration::from_secs(24 * 3600),
            expiry_warning: Duration::from_secs(14 * 86400),
        }
    }
}

impl AlertsConfig {
    /// True when alerts go anywhere besides the log.
    pub fn sends(&self) -> bool {
        self.webhook_url.is_some() || self.email_to.is_some()
    }
}

pub(super) fn read_alerts(value: Option<Value>, problems: &mut Problems) -> Option<AlertsConfig> {
    let mut a = AlertsConfig::default();
    let Some(v) = value else {
        return Some(a);
    };
    let mut t = Table::new("alerts", v, problems)?;
    a.webhook_url = t.secret("webhook_url");
    if let Some(url) = &a.webhook_url {
        if let Err(e) = check_webhook_url(url.expose()) {
            t.problem("webhook_url", e);
        }
    }
    a.email_to = t.optional::<String>("email_to");
    if let Some(to) = &a.email_to {
        if !plain_address(to) {
            t.problem(
                "email_to",
                format!("{to:?} is not a plain address like it-admin@contoso.com"),
            );
        }
    }
    a.email_account = t.optional::<String>("email_account");
    match (&a.email_to, &a.email_account) {
        (Some(_), None) => t.problem(
            "email_account",
            "missing (the account whose upstream sends the alert mails, for example \"alerts\")",
        ),
        (None, Some(_)) => t.problem("email_to", "missing (the address alert mails go to)"),
        _ => {}
    }
    let minutes = |t: &mut Table<'_>, key: &str, unit: u64| {
        t.optional::<u64>(key).map(|n| {
            if n == 0 {
                t.problem(key, "must be at least 1");
            }
            Duration::from_secs(n.max(1) * unit)
        })
    };
    if let Some(d) = minutes(&mut t, "spool_stuck_minutes", 60) {
        a.spool_stuck = d;
    }
    if let Some(d) = minutes(&mut t, "repeat_hours", 3600) {
        a.repeat = d;
    }
    if let Some(d) = minutes(&mut t, "expiry_warning_days", 86400) {
        a.expiry_warning = d;
    }
    t.finish();
    Some(a)
}

/// What `[alerts]` needs from the rest of the configuration: the sending account exists, and
/// a listener spools (alert mails are queued like any other message, so an upstream that is
/// down delays them instead of losing them).
pub(super) fn check_alerts(
    alerts: &AlertsConfig,
    accounts: &[super::AccountConfig],
    spools: bool,
    problems: &mut Problems,
) {
    let Some(name) = &alerts.email_account else {
        return;
    };
    if !accounts.iter().any(|a| &a.id == name) {
        let known: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
        problems.push(
            "alerts.email_account",
            format!(
                "no [account.{name}] (accounts: {}); name an account that can send, not the one being watched",
                known.join(", ")
            ),
        );
    }
    if !spools {
        problems.push(
            "alerts.email_to",
            "alert mails are queued in the spool: add spool = true to a [listener.NAME] with protocol = \"smtp\", or use webhook_url alone",
        );
    }
}

/// A webhook must be HTTPS: the URL is its credential and the alert names accounts. Plain
/// HTTP is accepted to a loopback address only (a local receiver, tests).
fn check_webhook_url(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|_| "is not a URL".to_owned())?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback_host_bracketed) => Ok(()),
        _ => Err("must be an https:// URL (http:// only to a loopback address)".to_owned()),
    }
}

fn is_loopback_host_bracketed(host: &str) -> bool {
    is_loopback_host(host.trim_start_matches('[').trim_end_matches(']'))
}

/// `local@domain` without a display name, spaces or line breaks (it goes into a header and an
/// SMTP envelope as it is).
fn plain_address(a: &str) -> bool {
    let mut parts = a.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && a.bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[],;:\\\"".contains(&b))
}
