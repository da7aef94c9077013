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
    if let Err(e) = store.refresh_view() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response();
    }
    if admin.shared.close_sessions.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    let mut body = String::from("ready\n");
    if !own_host(&admin, &headers) {
        // Account names, states and last errors only for this server's own name: a page that
        // rebinds a DNS name to this address must not read them.
        return body.into_response();
    }
    for a in oauth_accounts(&admin.shared) {
        let entry = store.entry(&a.id);
        let (state, usable) = html::state(&a, entry.as_ref(), &admin.shared.tokens);
        let plain = html::strip_tags(&state);
        body.push_str(&format!(
            "account {}: {} ({plain})\n",
            a.id,
            if usable { "usable" } else { "not usable" }
        ));
    }
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.shared.metrics.render(&expiry),
    )
        .into_response()
}
