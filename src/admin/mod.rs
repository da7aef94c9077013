//! The admin HTTP server (default 127.0.0.1:9090): account pages and the consent flow.
//!
//! - `GET /` lists the accounts with their token state;
//! - `GET /account/NAME` shows one account, a form for the app registration the configuration
//!   leaves open, and the "Get refresh token" button;
//! - `POST /account/NAME/authorize` starts the authorization-code flow (PKCE S256, random
//!   `state`) and redirects the browser to the identity provider;
//! - `GET /register_microsoft_graph_api/` (configurable) receives the code, exchanges it, and
//!   stores the tokens;
//! - `POST /account/NAME/app` stores client id, tenant and client secret.
//!
//! The pages hold the keys to every mailbox, so: loopback by default; the `Host` header must
//! name this server (no DNS rebinding); every form carries a per-process CSRF token; responses
//! are `no-store` with a strict content security policy; no page ever shows a token, a secret,
//! a code or a PKCE verifier.

mod html;
mod probes;
mod spool;

use crate::auth::accounts::LocalAuth;
use crate::auth::authorize;
use crate::auth::oauth;
use crate::config::{AccountConfig, AdminConfig, Flow};
use crate::secret::Secret;
use crate::shared::Shared;
use crate::store::Key;
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use dashmap::DashMap;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a started sign-in may take before its `state` is forgotten.
const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
const MAX_PENDING: usize = 64;

/// A sign-in waiting for its redirect.
struct Pending {
    account: String,
    verifier: Secret,
    key: Key,
    started: Instant,
}

struct Admin {
    shared: Arc<Shared>,
    config: AdminConfig,
    csrf: Secret,
    /// Keyed by the `state` value sent to the identity provider.
    pending: DashMap<String, Pending>,
    /// Host header values this server answers to.
    hosts: Vec<String>,
}

type AdminState = State<Arc<Admin>>;

/// Serves the admin pages on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    config: AdminConfig,
    shutdown: CancellationToken,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .map(|h| format!("{h}:{port}"))
        .collect();
    if let Ok(u) = reqwest::Url::parse(&config.public_url) {
        if let Some(h) = u.host_str() {
            hosts.push(match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            });
        }
    }
    let admin = Arc::new(Admin {
        shared,
        csrf: Secret::new(random_token()),
        pending: DashMap::new(),
        hosts,
        config: config.clone(),
    });
    // Health, readiness and metrics are scraped by name from other hosts (container networks):
    // they answer any Host, but name accounts only to this server's own (see `own_host`).
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics));
    let pages = Router::new()
        .route("/", get(overview))
        .route("/account/{name}", get(account_page))
        .route("/account/{name}/authorize", post(start_authorization))
        .route("/account/{name}/app", post(save_app))
        .route("/account/{name}/spool", post(spool::act))
        .route(&config.redirect_path, get(callback))
        .layer(middleware::from_fn_with_state(admin.clone(), guard));
    let app = pages.merge(probes).with_state(admin);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!("admin server stopped: {e}");
    }
}

fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Refuses requests for another host name (DNS rebinding) and adds the security headers.
async fn guard(State(admin): AdminState, request: Request, next: Next) -> Response {
    if !probes::own_host(&admin, request.headers()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this admin server answers only to its own address (see [admin] public_url)\n",
        )
            .into_response();
    }
    let reads = [Method::GET, Method::HEAD].contains(request.method());
    if !reads && !probes::same_origin(&admin, request.headers()) {
        tracing::warn!(origin = ?request.headers().get(header::ORIGIN), "admin form refused: posted from another site");
        return (
            StatusCode::FORBIDDEN,
            "this form was sent from another site: use the account page of this admin server\n",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it a browser sends `Origin: null` with the pages' own form posts
    // (Fetch, "serialize a request origin"), which could not be told from a forged one. Under
    // `same-origin` the pages' posts name this server and nothing leaves for other sites.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn oauth_accounts(shared: &Shared) -> Vec<Arc<AccountConfig>> {
    let directory = shared.directory();
    let mut v: Vec<_> = directory.accounts().cloned().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn find_account(admin: &Admin, name: &str) -> Option<Arc<AccountConfig>> {
    let directory = admin.shared.directory();
    let found = directory.accounts().find(|a| a.id == name).cloned();
    found
}

async fn overview(State(admin): AdminState) -> Response {
    let accounts = oauth_accounts(&admin.shared);
    html::page("Accounts", &html::overview(&accounts, &admin.shared.tokens))
}

#[derive(Deserialize)]
struct AccountQuery {
    #[serde(default)]
    authorized: Option<String>,
    #[serde(default)]
    saved: Option<String>,
    #[serde(default)]
    spool: Option<String>,
}

async fn account_page(
    State(admin): AdminState,
    Path(name): Path<String>,
    Query(q): Query<AccountQuery>,
) -> Response {
    let Some(account) = find_account(&admin, &name) else {
        return not_found(&name);
    };
    let notice = if q.authorized.is_some() {
        Some("Authorized: the refresh token is stored.")
    } else if q.saved.is_some() {
        Some("App registration saved.")
    } else if let Some(done) = q.spool.as_deref() {
        Some(match done {
            "deleted" => "The message was deleted from the spool.",
            _ => "The message will be tried again now.",
        })
    } else {
        None
    };
    render_account(&admin, &account, notice, None, StatusCode::OK)
}

fn render_account(
    admin: &Admin,
    account: &AccountConfig,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let view = html::AccountView {
        account,
        tokens: &admin.shared.tokens,
        csrf: admin.csrf.expose(),
        redirect_uri: &admin.config.redirect_uri(),
        notice,
        error,
        spool: spool::of_account(admin, &account.id),
    };
    let mut r = html::page(&format!("Account {}", account.id), &html::account(&view));
    *r.status_mut() = status;
    r
}

fn not_found(name: &str) -> Response {
    let mut r = html::page(
        "Not found",
        &format!(
            "<p>No account named <b>{}</b>. <a href=\"/\">All accounts</a></p>",
            html::escape(name)
        ),
    );
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

#[derive(Deserialize)]
struct AuthorizeForm {
    csrf: String,
    #[serde(default)]
    password: Option<String>,
}

/// Checks the CSRF token in constant time.
fn csrf_ok(admin: &Admin, given: &str) -> bool {
    let (a, b) = (given.as_bytes(), admin.csrf.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The account a form was posted for, if it exists and the form carries this server's CSRF
/// token; otherwise the page to answer with.
fn posted_account(
    admin: &Admin,
    name: &str,
    csrf: &str,
) -> Result<Arc<AccountConfig>, Box<Response>> {
    let Some(account) = find_account(admin, name) else {
        return Err(Box::new(not_found(name)));
    };
    if !csrf_ok(admin, csrf) {
        return Err(Box::new(refuse(
            admin,
            &account,
            "The form expired; reload the page and try again.",
            StatusCode::FORBIDDEN,
        )));
    }
    Ok(account)
}

/// The account page with an error at its top.
fn refuse(admin: &Admin, account: &AccountConfig, error: &str, status: StatusCode) -> Response {
    render_account(admin, account, None, Some(error), status)
}

/// Proves the visitor knows the account's local password, as a mail login would: the same
/// throttle (per address and per username, checked before the hash), the same failure delay,
/// one log line per failure. Every change and every sign-in on the pages needs it, whatever the
/// store mode. Returns the account's store key: the store key file's, or the one the password
/// derives.
async fn unlock(
    admin: &Admin,
    account: &AccountConfig,
    password: Option<String>,
    peer: SocketAddr,
) -> Result<Key, &'static str> {
    let shared = &admin.shared;
    let password = Secret::new(password.unwrap_or_default());
    if password.is_empty() {
        return Err("Enter the account's local password: every change on this page needs it.");
    }
    let attempt = match shared.throttle.begin(peer.ip(), &account.login).await {
        Ok(a) => a,
        Err(why) => {
            tracing::warn!(account = %account.id, peer = %peer.ip(), over = ?why, "account page: refused, too many failed logins");
            shared.metrics.local_failure();
            return Err("Too many failed logins from this address or for this account; try again later. Nothing was changed.");
        }
    };
    match shared.directory().verify(&account.login, &password).await {
        LocalAuth::Accepted(a) if a.id == account.id => {
            shared
                .throttle
                .succeeded(peer.ip(), &account.login, attempt);
            let store = shared.tokens.store();
            let key = if store.has_store_key() {
                store.known_key(&account.id)
            } else {
                store.unlock(&account.id, Some(&password)).await
            };
            key.ok_or("the key could not be derived")
        }
        _ => {
            shared.throttle.failed(attempt);
            shared.metrics.local_failure();
            tracing::info!(account = %account.id, peer = %peer.ip(), "account page: wrong local password");
            Err("Wrong local password for this account. Nothing was changed.")
        }
    }
}

async fn start_authorization(
    State(admin): AdminState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Form(form): Form<AuthorizeForm>,
) -> Response {
    let account = match posted_account(&admin, &name, &form.csrf) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    match authorize::oauth_of(&account) {
        Ok(o) if o.flow == Flow::Delegated => {}
        Ok(_) => {
            return refuse(
                &admin,
                &account,
                "This account uses client credentials: it needs no sign-in.",
                StatusCode::BAD_REQUEST,
            )
        }
        Err(e) => return refuse(&admin, &account, &e, StatusCode::BAD_REQUEST),
    }
    let key = match unlock(&admin, &account, form.password, peer).await {
        Ok(k) => k,
        Err(e) => return refuse(&admin, &account, e, StatusCode::FORBIDDEN),
    };
    let store = admin.shared.tokens.store();
    let ep = match authorize::endpoints(store, &account, Some(&key)) {
        Ok(ep) => ep,
        Err(e) => return refuse(&admin, &account, &e.description, StatusCode::BAD_REQUEST),
    };
    let request = match oauth::authorization_request(
        &ep,
        &admin.config.redirect_uri(),
        Some(&account.mailbox),
    ) {
        Ok(r) => r,
        Err(e) => return refuse(&admin, &account, &e.description, StatusCode::BAD_REQUEST),
    };
    admin
        .pending
        .retain(|_, p| p.started.elapsed() < PENDING_TTL);
    if admin.pending.len() >= MAX_PENDING {
        return refuse(
            &admin,
            &account,
            "Too many sign-ins are under way; finish or wait for them.",
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    admin.pending.insert(
        request.state.expose().to_owned(),
        Pending {
            account: account.id.clone(),
            verifier: request.verifier,
            key,
            started: Instant::now(),
        },
    );
    tracing::info!(account = %account.id, "sign-in started on the account page");
    Redirect::to(&request.url).into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The redirect of a sign-in this relay did not start. With a code and a state it is most likely
/// `authrelay login NAME --paste`, whose redirect URI is this page: the command, not the page,
/// finishes it.
fn unknown_sign_in(looks_pasted: bool) -> Response {
    if looks_pasted {
        return html::page(
            "Finish the sign-in in the terminal",
            "<p>This relay did not start this sign-in, so it is not finished here. If <code>authrelay login NAME --paste</code> is waiting in a terminal, copy this page's whole address from the address bar and paste it there: the command stores the token and the running relay uses it.</p><p>Started on the account page instead? It must finish within 15 minutes, in the browser that started it: <a href=\"/\">start again</a>.</p>",
        );
    }
    let mut r = html::page(
        "Sign-in not recognized",
        "<p class=\"error\">This sign-in is unknown or expired (it must finish within 15 minutes, in the browser that started it, on this relay). <a href=\"/\">Start again</a>.</p>",
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

async fn callback(State(admin): AdminState, Query(q): Query<CallbackQuery>) -> Response {
    let pending = q
        .state
        .as_deref()
        .and_then(|s| admin.pending.remove(s))
        .map(|(_, p)| p);
    let Some(pending) = pending.filter(|p| p.started.elapsed() < PENDING_TTL) else {
        return unknown_sign_in(q.code.is_some() && q.state.is_some());
    };
    let Some(account) = find_account(&admin, &pending.account) else {
        return not_found(&pending.account);
    };
    if let Some(error) = q.error {
        let e = oauth::classify_server_error(&error, q.error_description.as_deref().unwrap_or(""));
        tracing::warn!(account = %account.id, code = %e.code(), "sign-in refused by the identity provider: {}", e.description);
        let text = format!(
            "The identity provider refused the sign-in ({}): {}",
            e.code(),
            e.description
        );
        return refuse(&admin, &account, &text, StatusCode::BAD_REQUEST);
    }
    let Some(code) = q.code.map(Secret::new) else {
        return refuse(
            &admin,
            &account,
            "The identity provider sent no code.",
            StatusCode::BAD_REQUEST,
        );
    };
    let store = admin.shared.tokens.store();
    let result = async {
        let ep = authorize::endpoints(store, &account, Some(&pending.key))?;
        oauth::exchange_code(
            admin.shared.tokens.http(),
            &ep,
            &admin.config.redirect_uri(),
            &code,
            &pending.verifier,
        )
        .await
    }
    .await;
    let grant = match result {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(account = %account.id, code = %e.code(), "code exchange failed: {}", e.description);
            let text = format!(
                "The code could not be exchanged for tokens ({}): {}",
                e.code(),
                e.description
            );
            return refuse(&admin, &account, &text, StatusCode::BAD_GATEWAY);
        }
    };
    if grant.refresh_token.is_none() {
        tracing::warn!(account = %account.id, "the identity provider returned no refresh token");
    }
    if let Some(said) = authorize::wrong_user(&account, &grant) {
        tracing::warn!(account = %account.id, "{said}");
    }
    match authorize::save_grant_async(store, &account.id, &pending.key, &grant).await {
        Ok(_) => {
            tracing::info!(account = %account.id, "account authorized on the account page");
            Redirect::to(&format!("/account/{}?authorized=1", account.id)).into_response()
        }
        Err(e) => {
            tracing::error!(account = %account.id, "cannot store the tokens: {e}");
            refuse(
                &admin,
                &account,
                &format!("The tokens could not be stored: {e}"),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        }
    }
}

#[derive(Deserialize)]
struct AppForm {
    csrf: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

async fn save_app(
    State(admin): AdminState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Form(form): Form<AppForm>,
) -> Response {
    let account = match posted_account(&admin, &name, &form.csrf) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let nonempty = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let client_id = nonempty(form.client_id);
    let tenant = nonempty(form.tenant);
    let client_secret = nonempty(form.client_secret).map(Secret::new);
    if let Some(id) = &client_id {
        if id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return refuse(
                &admin,
                &account,
                "The client id must be the Application (client) ID, letters, digits and dashes.",
                StatusCode::BAD_REQUEST,
            );
        }
    }
    if let Some(t) = &tenant {
        if !crate::config::valid_tenant(t) {
            return refuse(&admin, &account, "The tenant must be a Directory (tenant) ID, a domain, organizations, common or consumers.", StatusCode::BAD_REQUEST);
        }
    }
    let key = match unlock(&admin, &account, form.password, peer).await {
        Ok(k) => k,
        Err(e) => return refuse(&admin, &account, e, StatusCode::FORBIDDEN),
    };
    let change = crate::store::Change {
        client_id,
        tenant,
        client_secret,
        ..Default::default()
    };
    match admin
        .shared
        .tokens
        .store()
        .update_async(&account.id, Some(&key), change)
        .await
    {
        Ok(_) => Redirect::to(&format!("/account/{}?saved=1", account.id)).into_response(),
        Err(e) => refuse(
            &admin,
            &account,
            &e.to_string(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    }
}
