//! The probes on the admin server: `/readyz` and `/metrics`. They answer any `Host` (scrapers
//! and health checks reach them by a container name), but name accounts only to the server's
//! own: a page that rebinds a DNS name to this address must not read account names, states and
//! last errors.

use super::{html, oauth_accounts, Admin, AdminState};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// 200 when the relay can serve: listeners bound (it is running), the token store readable.
/// The body lists every account with its state, or the reason it cannot be used yet.
pub(super) async fn readyz(State(admin): AdminState, headers: HeaderMap) -> Response {
    let store = admin.shared.tokens.store();
    let degraded = match store.refresh_view() {
        // Replicas: Redis away is not an outage (tokens in memory serve; changes wait).
        Err(e) if store.is_shared() => Some(e),
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
        }
        Ok(()) => None,
    };
    if admin.shared.close_sessions.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    let (accounts, failing) = account_states(&admin);
    let own = own_host(&admin, &headers);
    let mut reasons = Vec::new();
    if let Some(e) = degraded {
        reasons.push(format!(
            "{e}; tokens in memory are used, {} change(s) wait to be written",
            store.held_back()
        ));
    }
    if !failing.is_empty() {
        // Account names, states and last errors only for this server's own name: a page that
        // rebinds a DNS name to this address must not read them.
        reasons.push(if own {
            failing.join("; ")
        } else {
            format!("{} account(s) cannot get tokens", failing.len())
        });
    }
    let mut body = if reasons.is_empty() {
        String::from("ready\n")
    } else {
        format!("ready, degraded: {}\n", reasons.join("; "))
    };
    if !own {
        return body.into_response();
    }
    body.push_str(&spool_state(&admin));
    body.push_str(&accounts);
    body.into_response()
}

/// True when the request names this server (`localhost:PORT`, its address, or the host of
/// `public_url`), as the account pages require.
pub(super) fn own_host(admin: &Admin, headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    admin.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// A form posted from this server's own pages: its `Origin` (RFC 6454 §7, sent with every
/// POST by today's browsers) names one of this server's addresses, and `Sec-Fetch-Site` (W3C
/// Fetch Metadata) does not say another site or port sent it. Neither header present (curl, an
/// old browser) is let through: the CSRF token and the account's password still decide.
pub(super) fn same_origin(admin: &Admin, headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    let from_site = !matches!(text("sec-fetch-site"), Some("cross-site" | "same-site"));
    let origin_ok = match text("origin") {
        None => true,
        Some(origin) => origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|host| admin.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))),
    };
    from_site && origin_ok
}

pub(super) async fn metrics(State(admin): AdminState, headers: HeaderMap) -> Response {
    let now = crate::store::unix_now() as f64;
    let tokens = &admin.shared.tokens;
    // Per-account series (they name the accounts) only for this server's own name.
    let accounts = if own_host(&admin, &headers) {
        oauth_accounts(&admin.shared)
    } else {
        Vec::new()
    };
    let expiry: Vec<(String, Option<f64>)> = accounts
        .iter()
        .filter(|a| matches!(a.auth, crate::config::AccountAuth::OAuth(_)))
        .map(|a| {
            let secs = tokens
                .remaining(&a.id)
                .map(|r| r.as_secs_f64())
                .or_else(|| {
                    tokens
                        .store()
                        .entry(&a.id)
                        .and_then(|e| e.access_expires_at)
                        .map(|t| t as f64 - now)
                });
            (a.id.clone(), secs.filter(|s| *s > 0.0))
        })
        .collect();
    let mut text = admin.shared.metrics.render(&expiry);
    if !accounts.is_empty() {
        use std::fmt::Write;
        text.push_str("# HELP authrelay_account_usable 1 while the account can get a token (what /readyz says), else 0.\n# TYPE authrelay_account_usable gauge\n");
        for (id, usable, _) in account_usability(&admin) {
            let _ = writeln!(
                text,
                "authrelay_account_usable{{account=\"{}\"}} {}",
                crate::metrics::label(&id),
                u8::from(usable)
            );
        }
    }
    render_spool(&admin, !accounts.is_empty(), &mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The spool's depth (queued and failed messages) and the age of its oldest queued message,
/// per account when `per_account` (the server's own name asked).
fn render_spool(admin: &Admin, per_account: bool, out: &mut String) {
    use std::fmt::Write;
    let Some(handle) = admin.shared.spool.get() else {
        return;
    };
    let now = crate::store::unix_now();
    let mut depth: std::collections::BTreeMap<(String, &str), (u64, u64)> = Default::default();
    for (state, list) in [
        ("queued", handle.spool.queued()),
        ("failed", handle.spool.failed()),
    ] {
        for e in list.unwrap_or_default() {
            let account = if per_account {
                e.account
            } else {
                String::new()
            };
            let slot = depth.entry((account, state)).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(now.saturating_sub(e.arrived));
        }
    }
    out.push_str("# HELP authrelay_spool_messages Messages in the spool, by state (and account).\n# TYPE authrelay_spool_messages gauge\n");
    out.push_str("# HELP authrelay_spool_oldest_seconds Age of the oldest message in the spool, by state (and account).\n# TYPE authrelay_spool_oldest_seconds gauge\n");
    for ((account, state), (n, oldest)) in depth {
        let labels = if per_account {
            format!(
                "account=\"{}\",state=\"{state}\"",
                crate::metrics::label(&account)
            )
        } else {
            format!("state=\"{state}\"")
        };
        let _ = writeln!(out, "authrelay_spool_messages{{{labels}}} {n}");
        let _ = writeln!(out, "authrelay_spool_oldest_seconds{{{labels}}} {oldest}");
    }
}

/// Each OAuth account as delivery and logins experience it: usable or not, and its state in
/// words. `/readyz` and `/metrics` both read it, so they never disagree.
fn account_usability(admin: &Admin) -> Vec<(String, bool, String)> {
    let store = admin.shared.tokens.store();
    let mut out = Vec::new();
    for a in oauth_accounts(&admin.shared) {
        let entry = store.entry(&a.id);
        let (state, mut usable) = html::state(&a, entry.as_ref(), &admin.shared.tokens);
        let mut plain = html::strip_tags(&state);
        if let Some(e) = admin.shared.tokens.dead_grant(&a.id) {
            usable = false;
            if !plain.contains(&e.code()) {
                plain.push_str(&format!("; its grant was refused ({})", e.code()));
            }
        }
        out.push((a.id.clone(), usable, plain));
    }
    out
}

/// Each OAuth account's line for `/readyz`, and the failing ones: an account that cannot get
/// a token makes the relay degraded (still 200: other accounts work, and a restart would not
/// help), named with its reason.
fn account_states(admin: &Admin) -> (String, Vec<String>) {
    let mut accounts = String::new();
    let mut failing = Vec::new();
    for (id, usable, plain) in account_usability(admin) {
        if !usable {
            failing.push(format!("account {id}: {plain}"));
        }
        accounts.push_str(&format!(
            "account {id}: {} ({plain})\n",
            if usable { "usable" } else { "not usable" }
        ));
    }
    (accounts, failing)
}

/// The spool's lines for `/readyz`: what waits, and which accounts' mail is held.
fn spool_state(admin: &Admin) -> String {
    let mut body = String::new();
    let Some(handle) = admin.shared.spool.get() else {
        return body;
    };
    let queued = handle.spool.queued().unwrap_or_default();
    let failed = handle.spool.failed().map_or(0, |f| f.len());
    body.push_str(&format!(
        "spool: {} queued, {failed} failed\n",
        queued.len()
    ));
    let mut held: Vec<&str> = queued.iter().map(|e| e.account.as_str()).collect();
    held.sort_unstable();
    held.dedup();
    for account in held {
        if let Some(e) = admin.shared.tokens.dead_grant(account) {
            body.push_str(&format!(
                "spool held for account {account}: its grant was refused ({}); authorize it again\n",
                e.code()
            ));
        }
    }
    body
}
