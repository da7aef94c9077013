//! What no request sees: a spool that stops moving, and sign-ins, client secrets and
//! certificates that are about to expire. Looked at every [`EVERY`] while the relay runs.

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
            let entry = shared.tokens.store().entry(&account.id);
            if let Some(renew) = entry.as_ref().and_then(|e| renewal(account, e)) {
                let (at, why) = renew;
                let action = "sign in again as the mailbox (account page, `authrelay login NAME --device` or `--paste`) before then; mail is held, not lost, if it lapses";
                let what = format!("the sign-in ({why})");
                check(
                    &shared.alerts,
                    (Kind::GrantExpiring, "sign-in"),
                    &account.id,
                    Some(at),
                    config.expiry_warning,
                    (&what, action),
                );
            } else {
                shared.alerts.resolve(&format!("sign-in:{}", account.id));
            }
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

/// Microsoft's refresh tokens lapse after 90 days unused
/// (learn.microsoft.com/entra/identity-platform/refresh-tokens, "Token lifetime"; AADSTS700082).
const REFRESH_INACTIVITY: Duration = Duration::from_secs(90 * 86400);

/// When a delegated account's sign-in must be renewed, and why: its refresh token lapses 90
/// days after its last use (the relay uses it at least weekly while it can, `keepalive_days`;
/// a store the relay cannot open, or a stopped relay, lets it lapse), and a Conditional Access
/// sign-in frequency ends the session that long after the sign-in (AADSTS70043).
fn renewal(account: &AccountConfig, entry: &crate::store::Entry) -> Option<(SystemTime, String)> {
    let AccountAuth::OAuth(oauth) = &account.auth else {
        return None;
    };
    if oauth.flow != crate::config::Flow::Delegated || !entry.has_refresh_token() {
        return None;
    }
    let at = |unix: u64, after: Duration| crate::civil::unix(unix) + after;
    let unused = entry.refresh_token_at.or(entry.authorized_at).map(|t| {
        (
            at(t, REFRESH_INACTIVITY),
            "its refresh token lapses after 90 days unused".to_owned(),
        )
    });
    let frequency = oauth
        .sign_in_frequency
        .zip(entry.authorized_at)
        .map(|(f, t)| {
            (
                at(t, f),
                format!(
                    "a sign-in frequency of {} days, sign_in_frequency_days",
                    f.as_secs() / 86400
                ),
            )
        });
    [unused, frequency]
        .into_iter()
        .flatten()
        .min_by_key(|(t, _)| *t)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn account(extra: &str) -> AccountConfig {
        let toml = format!(
            "[listener.smtp]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:2525\"\nupstream = \"smtp.office365.com:587\"\nupstream_tls = \"starttls\"\n\n[account.scanner]\nlogin = \"scanner@contoso.com\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ\"\nprovider = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"c\"\n{extra}"
        );
        let c = crate::config::from_toml_str(&toml).unwrap();
        c.accounts.into_iter().next().unwrap()
    }

    #[test]
    fn a_sign_in_lapses_at_the_earlier_of_inactivity_and_sign_in_frequency() {
        let signed_in = 1_800_000_000;
        let entry: crate::store::Entry = serde_json::from_value(serde_json::json!({
            "refresh_token": {"nonce": "AAAA", "ct": "AAAA"},
            "authorized_at": signed_in,
            "refresh_token_at": signed_in + 86400,
        }))
        .unwrap();
        assert!(entry.has_refresh_token());
        let (at, why) = renewal(&account(""), &entry).unwrap();
        assert_eq!(at, crate::civil::unix(signed_in + 91 * 86400));
        assert!(why.contains("90 days unused"), "{why}");
        let (at, why) = renewal(&account("sign_in_frequency_days = 30\n"), &entry).unwrap();
        assert_eq!(at, crate::civil::unix(signed_in + 30 * 86400));
        assert!(why.contains("sign_in_frequency_days"), "{why}");
        // No refresh token: nothing to lapse (other alerts say it was never authorized).
        let none = crate::store::Entry::default();
        assert!(renewal(&account(""), &none).is_none());
    }
}
