//! What no request sees: a spool that stops moving, and client secrets and certificates that
//! are about to expire. Looked at every [`EVERY`] while the relay runs.

use crate::alerts::{Alerts, Kind};
use crate::config::{AccountAuth, AccountConfig, AlertsConfig};
use crate::shared::Shared;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How often the spool and the expiry dates are looked at.
pub const EVERY: Duration = Duration::from_secs(10);

/// Watches until `shutdown`.
pub async fn run(shared: Arc<Shared>, config: AlertsConfig, shutdown: CancellationToken) {
    loop {
        spool(&shared, &config);
        let accounts: Vec<_> = shared.directory().accounts().cloned().collect();
        for account in &accounts {
            expiry(&shared.alerts, account, config.expiry_warning);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// `SpoolStuck` while a queued message is older than `spool_stuck_minutes`.
fn spool(shared: &Shared, config: &AlertsConfig) {
    let Some(handle) = shared.spool.get() else {
        return;
    };
    let Ok(queued) = handle.spool.queued() else {
        return; // the deliverer logs what it cannot read
    };
    let now = crate::store::unix_now();
    let limit = config.spool_stuck.as_secs();
    let old: Vec<_> = queued
        .iter()
        .filter(|e| now.saturating_sub(e.arrived) > limit)
        .collect();
    let Some(oldest) = old.first() else {
        shared.alerts.resolve("spool");
        return;
    };
    let last = handle
        .spool
        .state(&oldest.id)
        .map(|s| s.last_reply)
        .unwrap_or_default();
    let summary = format!(
        "{} message(s) queued for more than {} min; the oldest ({}, account {}) has waited {} min{}",
        old.len(),
        limit / 60,
        oldest.id,
        oldest.account,
        now.saturating_sub(oldest.arrived) / 60,
        match last.is_empty() {
            true => String::new(),
            false => format!("; last answer: {}", crate::alerts::one_line(&last)),
        }
    );
    let action = "see `authrelay queue list` and the account page; the last answer says what holds the messages";
    shared
        .alerts
        .raise("spool", Kind::SpoolStuck, None, &summary, action);
}

/// `SecretExpiring` and `CertificateExpiring` within `warning` of the date.
fn expiry(alerts: &Alerts, account: &AccountConfig, warning: Duration) {
    let AccountAuth::OAuth(oauth) = &account.auth else {
        return;
    };
    let id = account.id.as_str();
    let secret = oauth.client_secret_expires;
    let what = "the client secret (client_secret_expires)";
    let action = "create a new client secret in the app registration (Certificates & secrets), then set client_secret and client_secret_expires";
    check(
        alerts,
        (Kind::SecretExpiring, "secret"),
        id,
        secret,
        warning,
        (what, action),
    );
    let cert = oauth
        .certificate
        .as_ref()
        .and_then(|c| crate::credential::assertion::certificate_not_after(&c.cert).ok());
    let what = "the app's certificate (notAfter)";
    let action = "upload a new certificate to the app registration, then point certificate and certificate_key at it";
    check(
        alerts,
        (Kind::CertificateExpiring, "certificate"),
        id,
        cert,
        warning,
        (what, action),
    );
}

fn check(
    alerts: &Alerts,
    (kind, prefix): (Kind, &str),
    account: &str,
    expires: Option<SystemTime>,
    warning: Duration,
    (what, action): (&str, &str),
) {
    let key = format!("{prefix}:{account}");
    let now = SystemTime::now();
    let Some(at) = expires.filter(|at| *at <= now + warning) else {
        alerts.resolve(&key);
        return;
    };
    let date = crate::civil::rfc3339(at);
    let summary = match at.duration_since(now) {
        Ok(left) => format!(
            "{what} of account {account} expires at {date}, in {} days",
            left.as_secs() / 86400
        ),
        Err(_) => format!("{what} of account {account} expired at {date}"),
    };
    alerts.raise(&key, kind, Some(account), &summary, action);
}
