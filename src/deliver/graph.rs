//! Delivery by Microsoft Graph: `POST {graph_url}/v1.0/users/{mailbox}/sendMail` with the
//! message in MIME form (`Content-Type: text/plain`, the base64 of the RFC 5322 message; "Send
//! messages with MIME content", learn.microsoft.com/graph/outlook-send-mime-message). `202
//! Accepted` is success. Graph needs no SMTP AUTH on the mailbox.
//!
//! - The MIME form has no envelope: Graph sends to the message's To, Cc and Bcc headers. The
//!   envelope's recipients that no header names (blind copies, which clients leave out of the
//!   header) are added as a `Bcc:` field, which Exchange removes before the message goes out.
//! - `429` and `5xx` are retried, honouring `Retry-After` ("Microsoft Graph throttling
//!   guidance", learn.microsoft.com/graph/throttling); other `4xx` are permanent.
//! - A `504`, a timeout or a connection lost after the request was sent leaves the outcome
//!   unknown (Graph may have sent it; reported on Microsoft Q&A). The message is marked, and
//!   before it is sent again its Message-ID is looked up in the mailbox's Sent Items, where
//!   MIME sends are saved; found means delivered.
//! - Bodies over 4 MB are refused by Graph (`413`; Microsoft Q&A reports, the sendMail page
//!   states no limit; `graph_max_mb` changes the figure). Larger messages go as a draft plus
//!   upload sessions ([`super::graph_upload`]); one that cannot be split fails at once, without
//!   an upload, with a reply naming the limit and the SMTP alternative; so does a `413`.

use super::graph_answer::{answer, read_body, success, MAX_ANSWER_BYTES};
use super::Attempt;
use crate::auth::tokens::{AccessToken, Audience};
use crate::codec::line::sanitize_for_reply;
use crate::config::{AccountConfig, GraphConfig};
use crate::session::ListenerContext;
use crate::spool::{DeliveryState, Envelope};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;

/// One attempt to send `message` through Graph for `account`. `state.unsure` asks for a Sent
/// Items lookup first.
pub(super) async fn deliver(
    ctx: &ListenerContext,
    account: &AccountConfig,
    graph: &GraphConfig,
    envelope: &Envelope,
    state: &DeliveryState,
    message: &[u8],
) -> Attempt {
    let mime = with_blind_copies(envelope, message);
    let body = base64::engine::general_purpose::STANDARD
        .encode(&mime)
        .into_bytes();
    let limit = graph.max_request_bytes;
    let how = if body.len() <= limit {
        How::Whole(body)
    } else {
        match super::graph_upload::split(&mime, limit) {
            Some(split) => How::Split(split),
            None => return Attempt::Failed(too_large(mime.len() * 4 / 3, limit)),
        }
    };
    let client = Client {
        http: ctx.shared.tokens.http(),
        url: user_url(graph, &account.mailbox),
        timeout: graph.request_timeout,
    };
    let mut token = match token(ctx, account, None).await {
        Ok(t) => t,
        Err(attempt) => return attempt,
    };
    if state.unsure {
        match sent_already(&client, &token, message).await {
            Ok(true) => return Attempt::Delivered,
            Ok(false) => {}
            Err(attempt) => return attempt,
        }
    }
    mark_unsure(ctx, envelope, state, graph.request_timeout);
    let mut answer = how.send(&client, &token).await;
    if matches!(answer, Answer::Status(401, _, _)) {
        // The token was refused (revoked, or expired early): one more try with a new one.
        token = match self::token(ctx, account, Some(&token)).await {
            Ok(t) => t,
            Err(attempt) => return attempt,
        };
        answer = how.send(&client, &token).await;
    }
    outcome(answer, mime.len() * 4 / 3, limit)
}

/// Records, before the request goes out, that its outcome may become unknown: a kill -9 while
/// Graph holds the answer must not lead to a second send without the Sent Items lookup, and
/// that lookup waits until the request would have ended (`timeout`), when Graph has either
/// sent the message or not. The attempt's own outcome replaces the record (or the message is
/// gone).
fn mark_unsure(
    ctx: &ListenerContext,
    envelope: &Envelope,
    state: &DeliveryState,
    timeout: Duration,
) {
    let Some(spool) = ctx.spool.as_ref() else {
        return;
    };
    let marked = DeliveryState {
        unsure: true,
        next_try: crate::store::unix_now() + timeout.as_secs() + 1,
        ..state.clone()
    };
    if let Err(e) = spool.spool.defer(&envelope.id, &marked) {
        tracing::warn!(queue_id = %envelope.id, error = %e, "could not mark a Graph send as in flight");
    }
}

/// How a message goes to Graph.
enum How {
    /// One `sendMail` request with this body.
    Whole(Vec<u8>),
    /// A draft, upload sessions, and a send.
    Split(super::graph_upload::Split),
}

impl How {
    async fn send(&self, client: &Client<'_>, token: &AccessToken) -> Answer {
        match self {
            How::Whole(body) => client.send(token, body).await,
            How::Split(split) => super::graph_upload::send(client, token, split).await,
        }
    }
}

/// The message with a `Bcc:` field for the envelope's recipients that no header names.
fn with_blind_copies<'m>(envelope: &Envelope, message: &'m [u8]) -> std::borrow::Cow<'m, [u8]> {
    let named = header_recipients(message);
    let blind: Vec<&str> = envelope
        .recipients
        .iter()
        .filter(|r| !named.iter().any(|n| n.eq_ignore_ascii_case(r)))
        .map(String::as_str)
        .collect();
    if blind.is_empty() {
        return message.into();
    }
    let mut with_bcc = format!("Bcc: {}\r\n", blind.join(", ")).into_bytes();
    with_bcc.extend_from_slice(message);
    with_bcc.into()
}

/// The addresses of the To, Cc and Bcc headers.
fn header_recipients(message: &[u8]) -> Vec<String> {
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(message) else {
        return Vec::new();
    };
    [parsed.to(), parsed.cc(), parsed.bcc()]
        .into_iter()
        .flatten()
        .flat_map(crate::spool::message::addresses)
        .collect()
}

/// The message's Message-ID with its angle brackets, as Graph's `internetMessageId` has it.
fn message_id(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
    parsed.message_id().map(|id| format!("<{id}>"))
}

fn user_url(graph: &GraphConfig, mailbox: &str) -> String {
    let user: String = url_escape(mailbox);
    format!("{}/v1.0/users/{user}", graph.url)
}

/// Percent-encodes everything but unreserved characters and `@` (RFC 3986 §2.3).
pub(super) fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn too_large(bytes: usize, limit: usize) -> String {
    format!(
        "413 the message is {:.1} MB as Graph sends it (base64), over Microsoft Graph's {} MB \
         request limit even without its attachments of 3 MB or more (which go up separately); \
         send it by SMTP instead (send = \"smtp\" for this account, up to 35 MB)",
        bytes as f64 / 1e6,
        limit / (1024 * 1024)
    )
}

async fn token(
    ctx: &ListenerContext,
    account: &AccountConfig,
    rejected: Option<&Arc<AccessToken>>,
) -> Result<Arc<AccessToken>, Attempt> {
    ctx.shared
        .tokens
        .access_token_for(account, None, rejected, Audience::Graph)
        .await
        .map_err(|e| {
            let why = sanitize_for_reply(&e.description, 200);
            Attempt::Deferred(format!("token: {} ({why})", e.code()))
        })
}

/// What a Graph request came to.
#[derive(Debug)]
pub(super) enum Answer {
    /// An HTTP answer: status, `Retry-After` seconds, Graph's error code and message.
    Status(u16, Option<u64>, String),
    /// No connection: nothing was sent.
    NotSent(String),
    /// Sent, but no answer (timeout, connection lost): it may have been sent.
    Unknown(String),
}

pub(super) struct Client<'a> {
    http: &'a reqwest::Client,
    /// `{graph_url}/v1.0/users/{mailbox}`.
    url: String,
    /// How long one request may take before its outcome counts as unknown.
    timeout: Duration,
}

impl Client<'_> {
    /// `POST {user}/{path}` with a base64 MIME body (or none); the answer's body if it is 2xx.
    pub(super) async fn post_raw(
        &self,
        token: &AccessToken,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Answer> {
        let request = self
            .http
            .post(format!("{}/{path}", self.url))
            .bearer_auth(token.secret.expose())
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .timeout(self.timeout)
            .body(body);
        success(request.send().await).await
    }

    /// `POST {user}/{path}` with a JSON body; the answer's body if it is 2xx.
    pub(super) async fn post_json(
        &self,
        token: &AccessToken,
        path: &str,
        json: &serde_json::Value,
    ) -> Result<Vec<u8>, Answer> {
        let request = self
            .http
            .post(format!("{}/{path}", self.url))
            .bearer_auth(token.secret.expose())
            .json(json)
            .timeout(self.timeout);
        success(request.send().await).await
    }

    /// One range of an upload session. The URL carries its own authorization: Microsoft asks
    /// that no `Authorization` header be sent with it.
    pub(super) async fn put_range(
        &self,
        url: &str,
        range: &str,
        chunk: Vec<u8>,
    ) -> Result<(), Answer> {
        let request = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_RANGE, range)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(self.timeout)
            .body(chunk);
        success(request.send().await).await.map(|_| ())
    }

    /// `DELETE {user}/{path}`, best effort (a draft left behind by a failed attempt).
    pub(super) async fn delete(&self, token: &AccessToken, path: &str) {
        let request = self
            .http
            .delete(format!("{}/{path}", self.url))
            .bearer_auth(token.secret.expose())
            .timeout(self.timeout);
        if let Err(e) = request.send().await {
            tracing::debug!(error = %e.without_url(), "the draft could not be deleted");
        }
    }

    async fn send(&self, token: &AccessToken, body: &[u8]) -> Answer {
        let request = self
            .http
            .post(format!("{}/sendMail", self.url))
            .bearer_auth(token.secret.expose())
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .timeout(self.timeout)
            .body(body.to_vec());
        answer(request.send().await).await
    }

    /// Sent Items messages with `internet_message_id` (the Graph `$filter` syntax quotes a
    /// string in single quotes and doubles a quote inside).
    async fn lookup(&self, token: &AccessToken, internet_message_id: &str) -> Result<bool, Answer> {
        let filter = format!(
            "internetMessageId eq '{}'",
            internet_message_id.replace('\'', "''")
        );
        let response = self
            .http
            .get(format!("{}/mailFolders/sentitems/messages", self.url))
            .query(&[
                ("$filter", filter.as_str()),
                ("$select", "internetMessageId"),
            ])
            .bearer_auth(token.secret.expose())
            .timeout(self.timeout)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                let body = read_body(r, MAX_ANSWER_BYTES)
                    .await
                    .map_err(|e| Answer::Unknown(format!("Sent Items lookup: {e}")))?;
                let found: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
                    Answer::Unknown("Sent Items lookup: the answer is not JSON".into())
                })?;
                Ok(found["value"].as_array().is_some_and(|v| !v.is_empty()))
            }
            other => Err(answer(other).await),
        }
    }
}

/// Whether an earlier attempt whose outcome is unknown did send the message: its Message-ID is
/// in Sent Items. A lookup Graph refuses (no `Mail.ReadBasic` permission) cannot tell, and the
/// message is sent again (at least once, never lost), with a warning naming the permission.
async fn sent_already(
    client: &Client<'_>,
    token: &AccessToken,
    message: &[u8],
) -> Result<bool, Attempt> {
    let Some(id) = message_id(message) else {
        return Ok(false);
    };
    match client.lookup(token, &id).await {
        Ok(found) => {
            if found {
                tracing::info!(message_id = %sanitize_for_reply(&id, 200), "found in Sent Items after an unanswered send: not sent again");
            }
            Ok(found)
        }
        Err(Answer::Status(403 | 404, _, why)) => {
            tracing::warn!(reason = %why, "Sent Items cannot be searched (the app needs Mail.ReadBasic): sending again, a duplicate is possible");
            Ok(false)
        }
        Err(other) => Err(match outcome(other, 0, 0) {
            Attempt::Unsure(r) | Attempt::Deferred(r) => Attempt::Unsure(r),
            attempt => attempt,
        }),
    }
}

/// The attempt's outcome from Graph's answer to a send of `bytes` bytes (`limit` for a 413).
fn outcome(sent: Answer, bytes: usize, limit: usize) -> Attempt {
    match sent {
        // Graph's only success for a send is `202 Accepted` ("user: sendMail", "message: send",
        // learn.microsoft.com/graph/api). Any other 2xx is not Graph (a web server or proxy
        // behind a wrong `graph_url` answering `200 OK` to everything): the message waits
        // rather than counting as sent and being deleted.
        Answer::Status(202, _, _) => Attempt::Delivered,
        Answer::Status(status @ 200..=299, _, _) => Attempt::Deferred(format!(
            "{status} is not Graph's answer to a send (202 Accepted): the message was probably not sent; check graph_url"
        )),
        Answer::Status(413, _, _) => Attempt::Failed(too_large(bytes, limit)),
        Answer::Status(504, _, why) => Attempt::Unsure(format!("504 Graph gateway timeout {why}")),
        Answer::Status(status @ (429 | 500..=599), after, why) => {
            let reason = format!("{status} Graph {why}");
            match after {
                Some(secs) => Attempt::Throttled(reason, Duration::from_secs(secs)),
                None => Attempt::Deferred(reason),
            }
        }
        // Still refused after a new token: the grant or the app's permissions need fixing,
        // which an administrator may do; not a reason to lose the message yet.
        Answer::Status(401, _, why) => {
            Attempt::Deferred(format!("401 Graph refused the token: {why}"))
        }
        // The client follows no redirect (a bearer token must never go to another host): a 3xx
        // is a misconfigured `graph_url` or an endpoint in trouble, which may be fixed in time.
        Answer::Status(status @ 300..=399, _, _) => Attempt::Deferred(format!(
            "{status} Graph answered with a redirect, which the relay does not follow with a token; check graph_url"
        )),
        Answer::Status(403, _, why) => Attempt::Failed(format!(
            "403 Graph refused to send as this mailbox ({why}); the app needs the Mail.Send \
             permission for it (and, with RBAC for Applications, a scope that includes it)"
        )),
        Answer::Status(status, _, why) => Attempt::Failed(format!("{status} Graph {why}")),
        Answer::NotSent(why) => Attempt::Deferred(why),
        Answer::Unknown(why) => Attempt::Unsure(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            id: "q1".into(),
            account: "a".into(),
            sender: "s@x.example".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            arrived: 0,
            client: "127.0.0.1".into(),
            bounce: false,
        }
    }

    #[test]
    fn blind_recipients_become_a_bcc_field_and_named_ones_do_not() {
        let message = b"To: A <a@x.example>\r\nCc: b@x.example\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n";
        let body = with_blind_copies(&envelope(&["A@x.example", "b@x.example"]), message);
        assert_eq!(&body[..], &message[..]);
        let body = with_blind_copies(
            &envelope(&["a@x.example", "c@x.example", "d@x.example"]),
            message,
        );
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!(
                "Bcc: c@x.example, d@x.example\r\n{}",
                String::from_utf8_lossy(message)
            )
        );
    }

    #[test]
    fn answers_map_to_outcomes_as_graph_documents_them() {
        let s = |status, after| Answer::Status(status, after, "Code: text".into());
        assert!(matches!(
            outcome(s(202, None), 1, 4 << 20),
            Attempt::Delivered
        ));
        assert!(
            matches!(outcome(s(200, None), 1, 4 << 20), Attempt::Deferred(r) if r.contains("graph_url"))
        );
        assert!(
            matches!(outcome(s(429, Some(7)), 1, 4 << 20), Attempt::Throttled(r, d) if r.starts_with("429") && d == Duration::from_secs(7))
        );
        assert!(
            matches!(outcome(s(503, None), 1, 4 << 20), Attempt::Deferred(r) if r.starts_with("503"))
        );
        assert!(matches!(
            outcome(s(504, None), 1, 4 << 20),
            Attempt::Unsure(_)
        ));
        assert!(
            matches!(outcome(s(413, None), 5_000_000, 4 << 20), Attempt::Failed(r) if r.contains("send = \"smtp\""))
        );
        assert!(
            matches!(outcome(s(403, None), 1, 4 << 20), Attempt::Failed(r) if r.contains("Mail.Send"))
        );
        assert!(
            matches!(outcome(s(400, None), 1, 4 << 20), Attempt::Failed(r) if r.starts_with("400"))
        );
        assert!(matches!(
            outcome(Answer::Unknown("t".into()), 1, 4 << 20),
            Attempt::Unsure(_)
        ));
        assert!(matches!(
            outcome(Answer::NotSent("c".into()), 1, 4 << 20),
            Attempt::Deferred(_)
        ));
    }

    #[test]
    fn the_mailbox_is_escaped_in_the_url_and_the_message_id_keeps_its_brackets() {
        let graph = GraphConfig {
            url: "https://graph.microsoft.com".into(),
            scopes: vec![],
            max_request_bytes: 4 << 20,
            request_timeout: Duration::from_secs(120),
        };
        assert_eq!(
            user_url(&graph, "a b/c@x.example"),
            "https://graph.microsoft.com/v1.0/users/a%20b%2Fc@x.example"
        );
        assert_eq!(
            message_id(b"Message-ID: <abc@relay>\r\n\r\n").as_deref(),
            Some("<abc@relay>")
        );
        assert!(too_large(5_600_000, 4 << 20).contains("5.6 MB"));
    }
}
