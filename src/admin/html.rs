//! The admin pages' HTML. Every value from outside is escaped; no secret is ever an argument.

use crate::auth::tokens::TokenCache;
use crate::civil::span;
use crate::config::{AccountAuth, AccountConfig, Flow, OAuthConfig, Provider};
use crate::store::{unix_now, Entry};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}\
.ok{color:#176317}.warn{color:#8a5a00}.error{color:#a11;font-weight:600}.notice{color:#176317;font-weight:600}\
form{margin:1rem 0;padding:1rem;border:1px solid #ddd;border-radius:6px}label{display:block;margin:.4rem 0}\
input[type=text],input[type=password]{width:100%;max-width:30rem;padding:.3rem}button{padding:.5rem 1rem;font-size:1rem}\
code{background:#f3f3f3;padding:0 .2rem}\
td,th,p,li,code{overflow-wrap:anywhere}#spool td:last-child{white-space:nowrap}";

pub fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} - authrelay</title><style>{STYLE}</style></head><body><h1>{}</h1>{body}<hr><p><a href=\"/\">All accounts</a></p></body></html>",
        escape(title),
        escape(title)
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// The text of a fragment of this module's HTML (tags removed, entities decoded).
pub fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let text = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `2026-11-22 10:04 UTC` from Unix seconds (proleptic Gregorian, no time-zone database).
pub fn format_time(secs: u64) -> String {
    let rem = secs % 86400;
    let (y, m, d) = crate::civil::civil_date((secs / 86400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// How long ago the Unix time `at` was: `3 min ago`.
fn ago(at: u64) -> String {
    format!("{} ago", span(unix_now().saturating_sub(at)))
}

fn mode(account: &AccountConfig) -> &'static str {
    match &account.auth {
        AccountAuth::OAuth(o) if o.flow == Flow::ClientCredentials => {
            "OAuth, client credentials (app-only)"
        }
        AccountAuth::OAuth(o) => match o.provider {
            Provider::Microsoft => "OAuth, Microsoft",
            Provider::Google => "OAuth, Google",
            Provider::Custom => "OAuth",
        },
        AccountAuth::AppPassword(_) => "app password",
        AccountAuth::Passthrough => "pass-through",
    }
}

/// The account's token state in one line of HTML, and whether it is usable.
pub fn state(
    account: &AccountConfig,
    entry: Option<&Entry>,
    tokens: &TokenCache,
) -> (String, bool) {
    let AccountAuth::OAuth(oauth) = &account.auth else {
        return ("<span class=\"ok\">no token needed</span>".into(), true);
    };
    let now = unix_now();
    let expiry = tokens
        .remaining(&account.id)
        .map(|r| now + r.as_secs())
        .filter(|e| *e > now)
        .or_else(|| entry.and_then(|e| e.access_expires_at).filter(|e| *e > now));
    let has_refresh = entry.is_some_and(|e| e.has_refresh_token()) || oauth.refresh_token.is_some();
    let failing = entry.and_then(|e| {
        let err = e.last_error.as_ref()?;
        let at = e.last_error_at.unwrap_or(0);
        (e.last_refresh_at.unwrap_or(0) <= at && e.authorized_at.unwrap_or(0) <= at)
            .then_some((err, at))
    });
    let mut s = String::new();
    match expiry {
        Some(e) => {
            let _ = write!(
                s,
                "<span class=\"ok\">valid until {}</span>",
                format_time(e)
            );
        }
        None if oauth.flow == Flow::ClientCredentials => s.push_str(
            "<span class=\"warn\">no token yet (one is fetched at the first login)</span>",
        ),
        None if has_refresh => s.push_str(
            "<span class=\"warn\">authorized; an access token is fetched at the next login</span>",
        ),
        None => s.push_str("<span class=\"warn\">not authorized yet</span>"),
    }
    if let Some(at) = entry.and_then(|e| e.last_refresh_at) {
        let _ = write!(s, "<br>last refresh {}", ago(at));
    }
    if let Some((err, at)) = failing {
        let _ = write!(
            s,
            "<br><span class=\"error\">last error {}: {}</span>",
            ago(at),
            escape(err)
        );
    }
    let who = entry.and_then(|e| e.signed_in_as.as_deref());
    if let Some(said) = who.and_then(|w| crate::auth::id_token::mismatch(w, &account.mailbox)) {
        let _ = write!(
            s,
            "<br><span class=\"warn\" id=\"signed-in-as\">{}</span>",
            escape(&said)
        );
    }
    let usable = failing.is_none()
        && (expiry.is_some() || has_refresh || oauth.flow == Flow::ClientCredentials);
    (s, usable)
}

pub fn overview(accounts: &[std::sync::Arc<AccountConfig>], tokens: &TokenCache) -> String {
    let mut s = String::from(
        "<table><tr><th>Account</th><th>Login</th><th>Mailbox</th><th>Mode</th><th>State</th></tr>",
    );
    for a in accounts {
        let entry = tokens.store().entry(&a.id);
        let (state, _) = state(a, entry.as_ref(), tokens);
        let _ = write!(
            s,
            "<tr><td><a href=\"/account/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{state}</td></tr>",
            escape(&a.login),
            escape(&a.mailbox),
            mode(a),
            id = escape(&a.id),
        );
    }
    if accounts.is_empty() {
        s.push_str("<tr><td colspan=5>No accounts configured: add an [account.NAME] table to the configuration.</td></tr>");
    }
    s.push_str("</table>");
    s
}

pub struct AccountView<'a> {
    pub account: &'a AccountConfig,
    pub tokens: &'a TokenCache,
    pub csrf: &'a str,
    pub redirect_uri: &'a str,
    pub notice: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The account's messages in the spool: envelope, delivery state, and `queued` or `failed`.
    pub spool: Vec<(
        crate::spool::Envelope,
        crate::spool::DeliveryState,
        &'static str,
    )>,
}

fn password_field(why: &str) -> String {
    format!(
        "<label>Local password of this account ({why})<br><input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>"
    )
}

fn app_form(v: &AccountView<'_>, oauth: &OAuthConfig, entry: Option<&Entry>) -> String {
    let id = escape(&v.account.id);
    let mut fields = String::new();
    let current = |configured: &Option<String>, stored: Option<&String>| {
        configured
            .as_ref()
            .or(stored)
            .map(|s| escape(s))
            .unwrap_or_default()
    };
    if oauth.client_id.is_none() {
        let _ = write!(fields, "<label>Application (client) ID<br><input type=\"text\" name=\"client_id\" id=\"client_id\" value=\"{}\"></label>", current(&None, entry.and_then(|e| e.client_id.as_ref())));
    }
    if oauth.provider == Provider::Microsoft && oauth.tenant.is_none() {
        let _ = write!(fields, "<label>Directory (tenant) ID, or organizations / common / consumers<br><input type=\"text\" name=\"tenant\" id=\"tenant\" value=\"{}\"></label>", current(&None, entry.and_then(|e| e.tenant.as_ref())));
    }
    if oauth.client_secret.is_none() && oauth.certificate.is_none() {
        let stored = if entry.is_some_and(|e| e.has_client_secret()) {
            " (one is stored; leave empty to keep it)"
        } else {
            " (leave empty for a public client)"
        };
        let _ = write!(fields, "<label>Client secret: the secret's <b>Value</b>, not its Secret ID{stored}<br><input type=\"password\" name=\"client_secret\" id=\"client_secret\" autocomplete=\"off\"></label>");
    }
    if fields.is_empty() {
        return String::new();
    }
    format!(
        "<form method=\"post\" action=\"/account/{id}/app\"><h2>App registration</h2><p>The configuration leaves these open. Register an app in Microsoft Entra ID (App registrations), add the redirect URI <code>{}</code> under Web, and copy the values here.</p>{fields}{}<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"save-app\">Save</button></form>",
        escape(v.redirect_uri),
        password_field("every change needs it"),
        escape(v.csrf),
    )
}

/// The account's messages in the spool, if any: what waits and why.
fn spool_table(v: &AccountView<'_>) -> String {
    if v.spool.is_empty() {
        return String::new();
    }
    let now = crate::store::unix_now();
    let mut s = format!("<h2>Spool</h2><form method=\"post\" action=\"/account/{}/spool\"><table id=\"spool\"><tr><th>Queue ID</th><th>Age</th><th>To</th><th>State</th><th>Attempts</th><th>Last reply</th><th>Next try</th><th></th></tr>", escape(&v.account.id));
    for (e, state, what) in &v.spool {
        let next = if *what == "failed" || state.next_try <= now {
            String::new()
        } else {
            crate::civil::relative(state.next_try, now)
        };
        let id = escape(&e.id);
        let _ = write!(
            s,
            "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{what}</td><td>{}</td><td>{}</td><td>{next}</td><td><button type=\"submit\" name=\"retry\" value=\"{id}\">Retry</button> <button type=\"submit\" name=\"delete\" value=\"{id}\">Delete</button></td></tr>",
            ago(e.arrived),
            escape(&e.recipients.join(", ")),
            state.attempts,
            escape(&state.last_reply),
        );
    }
    let _ = write!(
        s,
        "</table>{}<input type=\"hidden\" name=\"csrf\" value=\"{}\"></form><p>Retry sends a message now (a failed one goes back to the queue); Delete removes it for good. <code>authrelay queue retry ID</code> and <code>authrelay queue delete ID</code> do the same.</p>",
        password_field("Retry and Delete need it"),
        escape(v.csrf)
    );
    s
}

pub fn account(v: &AccountView<'_>) -> String {
    let a = v.account;
    let id = escape(&a.id);
    let entry = v.tokens.store().entry(&a.id);
    let (state, _) = state(a, entry.as_ref(), v.tokens);
    let mut s = String::new();
    if let Some(n) = v.notice {
        let _ = write!(s, "<p class=\"notice\" id=\"notice\">{}</p>", escape(n));
    }
    if let Some(e) = v.error {
        let _ = write!(s, "<p class=\"error\" id=\"error\">{}</p>", escape(e));
    }
    let _ = write!(
        s,
        "<table><tr><th>Login</th><td>{}</td></tr><tr><th>Mailbox</th><td>{}</td></tr><tr><th>Mode</th><td>{}</td></tr><tr><th>Token</th><td id=\"state\">{state}</td></tr></table>",
        escape(&a.login),
        escape(&a.mailbox),
        mode(a)
    );
    s.push_str(&spool_table(v));
    let AccountAuth::OAuth(oauth) = &a.auth else {
        return s;
    };
    s.push_str(&app_form(v, oauth, entry.as_ref()));
    if oauth.flow == Flow::Delegated {
        let _ = write!(
            s,
            "<form method=\"post\" action=\"/account/{id}/authorize\"><h2>Sign in</h2><p>Sign in as <b>{}</b> at the identity provider and consent; you come back to <code>{}</code> and the refresh token is stored here. No browser on this machine? Run <code>authrelay login {id} --device</code> or <code>--paste</code>.</p>{}<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"get-refresh-token\">Get refresh token</button></form>",
            escape(&a.mailbox),
            escape(v.redirect_uri),
            password_field("every sign-in needs it"),
            escape(v.csrf),
        );
    } else {
        s.push_str("<p>Client credentials need no sign-in: the relay asks for an app-only token with the app's own secret or certificate.</p>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_waits_read_as_people_say_them() {
        let now = unix_now();
        // The queue's age is counted from the message's arrival, not from 1970.
        assert_eq!(ago(now - 180), "3 min ago");
        assert_eq!(ago(now + 5), "0 s ago");
        assert_eq!(span(28), "28 s");
        assert_eq!(span(7200), "2 h");
        assert_eq!(span(3 * 86400), "3 days");
    }

    #[test]
    fn formats_dates_and_escapes() {
        assert_eq!(format_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_time(1_795_342_440), "2026-11-22 10:14 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(
            escape("<a href=\"x\">'&\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;\u{fffd}"
        );
    }
}
