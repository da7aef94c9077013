//! Where alerts go: the webhook (one JSON POST of [`Event`] per event, tried three times) and
//! an e-mail to `email_to`, queued in the spool for `email_account` like any message, so an
//! upstream that is down delays an alert mail but does not lose it.

use crate::alerts::Event;
use crate::config::AlertsConfig;
use crate::shared::Shared;
use crate::spool::Envelope;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `client` recorded in an alert mail's envelope (`authrelay queue list` shows it).
pub const ALERT_CLIENT: &str = "authrelay alerts";

/// The waits before the webhook's second and third tries.
const WEBHOOK_RETRIES: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];

/// Sends each event of `inbox` until `shutdown`.
pub async fn run(
    mut inbox: mpsc::UnboundedReceiver<Event>,
    config: AlertsConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let http = crate::auth::oauth::http_client(Duration::from_secs(10));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = inbox.recv() => match e { Some(e) => e, None => return },
        };
        if let (Some(to), Some(account)) = (&config.email_to, &config.email_account) {
            queue_mail(&shared, account, to, &event).await;
        }
        if let Some(url) = &config.webhook_url {
            post(&http, url.expose(), &event).await;
        }
    }
}

/// POSTs the event; the URL is never logged (it is the webhook's credential).
async fn post(http: &reqwest::Client, url: &str, event: &Event) {
    let mut waits = WEBHOOK_RETRIES.iter();
    loop {
        let why = match http.post(url).json(event).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(alert = ?event.event, "alert posted to the webhook");
                return;
            }
            Ok(r) => format!("the webhook answered {}", r.status()),
            Err(e) => format!("the webhook cannot be reached: {}", e.without_url()),
        };
        let Some(wait) = waits.next() else {
            tracing::error!(alert = ?event.event, "alert not delivered to the webhook: {why}");
            return;
        };
        tracing::warn!(alert = ?event.event, "{why}; trying again in {} s", wait.as_secs());
        tokio::time::sleep(*wait).await;
    }
}

/// Queues the alert mail from `account`'s mailbox to `to`.
async fn queue_mail(shared: &Shared, account: &str, to: &str, event: &Event) {
    let Some(spool) = shared.spool.get() else {
        tracing::error!("alert mails need a spool listener; the alert went to the log only");
        return;
    };
    let Some(from) = shared
        .directory()
        .accounts()
        .find(|a| a.id == account)
        .map(|a| a.mailbox.clone())
    else {
        tracing::error!(
            account,
            "the alerts' email_account is not configured; the alert went to the log only"
        );
        return;
    };
    let envelope = Envelope::own(account, &from, to, ALERT_CLIENT);
    let message = match mail(event, &from, to, &envelope.id) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "the alert mail could not be written");
            return;
        }
    };
    let stored = spool.spool.store(&envelope, &message).await;
    match stored {
        Ok(()) => {
            tracing::info!(queue_id = %envelope.id, alert = ?event.event, "alert mail queued")
        }
        Err(e) => {
            tracing::error!(error = %e, alert = ?event.event, "the alert mail could not be queued")
        }
    }
}

/// The alert as an RFC 5322 message (mail-builder writes the headers, encodings and line
/// lengths).
fn mail(event: &Event, from: &str, to: &str, id: &str) -> std::io::Result<Vec<u8>> {
    let domain = from.rsplit('@').next().unwrap_or("localhost");
    let mut body = format!(
        "{}\n\nWhat to do: {}\n\nEvent: {:?} ({:?})\nRelay: {}\nSince: {}\nSent: {}\n",
        event.summary, event.action, event.event, event.status, event.relay, event.since, event.at
    );
    if let Some(a) = &event.account {
        body.push_str(&format!("Account: {a}\n"));
    }
    body.push_str("\nThis message was sent by authrelay's [alerts] settings.\n");
    mail_builder::MessageBuilder::new()
        .from(("authrelay", from))
        .to(to)
        .subject(event.subject())
        .message_id(format!("{id}.alert@{domain}"))
        .date(crate::store::unix_now())
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(body)
        .write_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Kind, Status};

    #[test]
    fn an_alert_mail_is_a_parseable_auto_submitted_message() {
        let event = Event {
            source: "authrelay",
            relay: "box".into(),
            event: Kind::GrantRefused,
            status: Status::Firing,
            account: Some("scanner".into()),
            summary: "the grant was refused (invalid_grant)".into(),
            action: "sign in again on the account page".into(),
            since: "2026-12-07T06:00:00Z".into(),
            at: "2026-12-07T06:00:01Z".into(),
            text: String::new(),
        };
        let raw = mail(&event, "alerts@example.com", "admin@example.com", "0001").unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(
            parsed.subject(),
            Some("[authrelay box] FIRING: GrantRefused for account scanner")
        );
        assert_eq!(parsed.message_id(), Some("0001.alert@example.com"));
        assert!(parsed
            .body_text(0)
            .unwrap()
            .contains("What to do: sign in again"));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Auto-Submitted: auto-generated"), "{text}");
    }
}
