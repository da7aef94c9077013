//! Configuration: the typed schema, loading, and validation.
//!
//! Sources, later ones overriding earlier ones:
//! 1. a TOML file (`config/authrelay.toml` by default),
//! 2. environment variables `AUTHRELAY__SECTION__NAME__KEY` (for example
//!    `AUTHRELAY__ACCOUNT__SCANNER__TENANT`); names are lower-cased,
//! 3. for every secret `key`, the variant `key_file` naming a file that holds it.
//!
//! [`load`] reads everything and returns either a [`Config`] or the complete list of problems,
//! each with its key path, so `authrelay check` can show them all at once.

mod reader;

pub use reader::Problem;
use reader::{Problems, Table};

use crate::secret::Secret;
use config::{Environment, File, FileFormat, Value};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "config/authrelay.toml";

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub accounts: Vec<AccountConfig>,
    pub log: LogConfig,
    pub security: SecurityConfig,
    pub service: ServiceConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    /// App registrations for the `mailbox~client_id` login convention.
    pub clients: Vec<ClientConfig>,
}

/// Where tokens are kept (see [`crate::store`]).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Content of the store key file: seal every account with it instead of its local password.
    pub key: Option<Secret>,
    /// Refresh a refresh token that has not been used for this long, so it never ages out.
    pub keepalive: Duration,
    /// How often the background task looks for tokens to refresh.
    pub check_interval: Duration,
}

/// The admin HTTP server: account pages, the consent flow, health and metrics.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when disabled.
    pub listen: Option<SocketAddr>,
    /// The URL browsers use to reach the admin server; the OAuth redirect URI is built from it.
    pub public_url: String,
    /// Path of the OAuth redirect URI.
    pub redirect_path: String,
}

impl AdminConfig {
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}{}",
            self.public_url.trim_end_matches('/'),
            self.redirect_path
        )
    }
}

/// An app registration that clients name in `mailbox~client_id` logins.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub oauth: OAuthConfig,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// On SIGTERM/SIGINT, how long running sessions may go on before they are closed.
    pub drain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

/// TLS between the legacy client and the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalTls {
    None,
    Starttls,
    Implicit,
}

/// TLS between the relay and the mail provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Starttls,
    Implicit,
    /// Plaintext: allowed only to a loopback address (test servers).
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub tls: LocalTls,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub upstream_host: String,
    pub upstream_port: u16,
    pub upstream_tls: UpstreamTls,
    /// The name the upstream certificate must carry; defaults to the upstream host.
    pub upstream_name: String,
    pub upstream_ca: Option<PathBuf>,
    /// The name the relay gives in its own EHLO before upstream STARTTLS.
    pub ehlo_name: String,
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
    /// Accept passwords over plaintext from non-loopback clients (a trusted container network).
    pub remote_plaintext_auth: bool,
    pub connect_timeout: Duration,
    /// How long to wait for any one upstream reply before authentication.
    pub upstream_timeout: Duration,
    pub pre_auth_timeout: Duration,
    pub idle_timeout: Duration,
    /// Accept `mailbox~client_id` logins whose password is a refresh token.
    pub tilde_login: bool,
    /// Expect a PROXY protocol v2 header from `proxy_trusted` peers (load balancers).
    pub proxy_protocol: bool,
    pub proxy_trusted: Vec<crate::codec::proxy::Cidr>,
    /// Client addresses allowed to connect; empty: any.
    pub allow: Vec<crate::codec::proxy::Cidr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Microsoft,
    Google,
    Custom,
}

/// How the relay gets tokens for an OAuth account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Delegated: a user signs in once (page, device code, paste) and the relay keeps the
    /// refresh token.
    Delegated,
    /// App-only (client credentials): the app's own secret or certificate, no refresh token.
    ClientCredentials,
}

/// A certificate credential for client-credentials assertions (RFC 7523).
#[derive(Debug, Clone)]
pub struct CertificateCredential {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An OAuth account's settings as configured. Client id, tenant and secret may be left open
/// and entered later on the account page; [`OAuthConfig::endpoints`] merges the two.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub provider: Provider,
    pub flow: Flow,
    pub tenant: Option<String>,
    /// Microsoft authority host (national clouds), without the tenant.
    pub authority: String,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub certificate: Option<CertificateCredential>,
    pub refresh_token: Option<Secret>,
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
    pub device_url: Option<String>,
    pub scopes: Vec<String>,
}

/// App settings from outside the configuration (the account page), used where it leaves
/// them open.
#[derive(Debug, Clone, Default)]
pub struct AppOverrides {
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    pub client_secret: Option<Secret>,
}

/// Everything a token request needs, resolved.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub token_url: String,
    pub authorize_url: String,
    /// `None` where the provider has no device flow for these scopes (Gmail).
    pub device_url: Option<String>,
    pub scopes: Vec<String>,
}

impl OAuthConfig {
    /// Resolves the endpoints from the provider preset, the configuration and `overrides`
    /// (used only for what the configuration leaves open).
    pub fn endpoints(&self, overrides: &AppOverrides) -> Result<Endpoints, String> {
        let client_id = self
            .client_id
            .clone()
            .or_else(|| overrides.client_id.clone())
            .ok_or("no client id yet: enter the app registration on the account page, or set client_id")?;
        let client_secret = self
            .client_secret
            .clone()
            .or_else(|| overrides.client_secret.clone());
        let (token_url, authorize_url, device_url) = match self.provider {
            Provider::Microsoft => {
                let tenant = self
                    .tenant
                    .clone()
                    .or_else(|| overrides.tenant.clone())
                    .ok_or("no tenant yet: enter the directory (tenant) ID on the account page, or set tenant")?;
                if !valid_tenant(&tenant) {
                    return Err(format!("tenant {tenant:?} is not a tenant ID, a domain, organizations, common or consumers"));
                }
                let base = format!(
                    "{}/{tenant}/oauth2/v2.0",
                    self.authority.trim_end_matches('/')
                );
                (
                    format!("{base}/token"),
                    format!("{base}/authorize"),
                    Some(format!("{base}/devicecode")),
                )
            }
            Provider::Google => (
                GOOGLE_TOKEN_URL.to_owned(),
                GOOGLE_AUTHORIZE_URL.to_owned(),
                // Google's device flow does not allow the Gmail scope.
                None,
            ),
            Provider::Custom => (String::new(), String::new(), None),
        };
        let pick = |over: &Option<String>, preset: String| over.clone().unwrap_or(preset);
        Ok(Endpoints {
            client_id,
            client_secret,
            token_url: pick(&self.token_url, token_url),
            authorize_url: pick(&self.authorize_url, authorize_url),
            device_url: self.device_url.clone().or(device_url),
            scopes: self.scopes.clone(),
        })
    }
}

pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 256
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

#[derive(Debug, Clone)]
pub enum AccountAuth {
    /// XOAUTH2 with an access token the relay obtains and refreshes.
    OAuth(Box<OAuthConfig>),
    /// AUTH PLAIN/LOGIN upstream with a stored app password.
    AppPassword(Secret),
    /// The client's own username and password are forwarded unchanged.
    Passthrough,
}

#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// The account's key in the configuration (`[account.NAME]`).
    pub id: String,
    /// The username the legacy client sends.
    pub login: String,
    /// Argon2id PHC string of the local password (absent only for pass-through accounts).
    pub password_hash: Option<Secret>,
    /// The mailbox used upstream (XOAUTH2 `user=`).
    pub mailbox: String,
    pub auth: AccountAuth,
    /// Sender addresses SMTP accepts after login (MAIL FROM); empty means only the mailbox, and
    /// `"*"` turns the check off (for send-as permissions granted upstream).
    pub allowed_from: Vec<String>,
    /// True for accounts made up for one `mailbox~client_id` login: nothing is stored.
    pub ephemeral: bool,
}

impl AccountConfig {
    /// Whether SMTP may send as `address` (`<>` is always allowed).
    pub fn may_send_as(&self, address: &str) -> bool {
        address.is_empty()
            || address.eq_ignore_ascii_case(&self.mailbox)
            || self
                .allowed_from
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(address))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    /// How many password hashes may be computed at once.
    pub hash_concurrency: usize,
    /// Delay before answering a failed local login.
    pub failure_delay: Duration,
    /// How long a successful password check is remembered (as a keyed HMAC) so that the same
    /// password is accepted again without Argon2 (0: check every login).
    pub password_cache: Duration,
    /// Refresh an access token when less than this remains.
    pub refresh_margin: Duration,
    /// Timeout of one token endpoint request.
    pub token_timeout: Duration,
    /// Failed logins from one address, or for one username, within `throttle_window` after
    /// which further logins are refused unchecked (0: no limit).
    pub max_failures_per_address: u32,
    pub max_failures_per_username: u32,
    pub throttle_window: Duration,
}

impl SecurityConfig {
    /// The keys whose values differ between `self` and `other`, split into those a reload
    /// applies and those that need a restart (the token cache keeps its margin and HTTP client).
    pub fn changes(&self, other: &SecurityConfig) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut applied = Vec::new();
        let mut restart = Vec::new();
        let note = |same: bool, key, list: &mut Vec<&'static str>| {
            if !same {
                list.push(key)
            }
        };
        note(
            self.hash_concurrency == other.hash_concurrency,
            "hash_concurrency",
            &mut applied,
        );
        note(
            self.failure_delay == other.failure_delay,
            "failure_delay_ms",
            &mut applied,
        );
        note(
            self.password_cache == other.password_cache,
            "password_cache_secs",
            &mut applied,
        );
        note(
            self.max_failures_per_address == other.max_failures_per_address,
            "max_failures_per_address",
            &mut applied,
        );
        note(
            self.max_failures_per_username == other.max_failures_per_username,
            "max_failures_per_username",
            &mut applied,
        );
        note(
            self.throttle_window == other.throttle_window,
            "throttle_window_secs",
            &mut applied,
        );
        note(
            self.refresh_margin == other.refresh_margin,
            "refresh_margin_secs",
            &mut restart,
        );
        note(
            self.token_timeout == other.token_timeout,
            "token_timeout_secs",
            &mut restart,
        );
        (applied, restart)
    }
}

/// Scopes that give one Microsoft token for IMAP, POP and SMTP (protocol.md §1.2).
pub const MICROSOFT_SCOPES: [&str; 4] = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];
pub const GOOGLE_SCOPES: [&str; 1] = ["https://mail.google.com/"];
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
pub const GOOGLE_AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
/// The app-only scope for Exchange Online IMAP, POP and SMTP (client credentials).
pub const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";
pub const MICROSOFT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Loads and validates the configuration at `path`, with environment overrides.
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    let root = read_sources(path).map_err(|message| {
        vec![Problem {
            path: path.display().to_string(),
            message,
        }]
    })?;
    from_value(root)
}

fn read_sources(path: &Path) -> Result<Value, String> {
    if !path.exists() {
        return Err("file not found (give --config PATH or set AUTHRELAY_CONFIG)".into());
    }
    let built = config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .add_source(
            Environment::with_prefix("AUTHRELAY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| without_source_excerpt(&e.to_string()))?;
    built
        .try_deserialize::<Value>()
        .map_err(|e| without_source_excerpt(&e.to_string()))
}

/// A TOML syntax error quotes the offending line, which may hold a secret: keep the position
/// and the explanation only.
fn without_source_excerpt(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() < 3 || !lines.iter().any(|l| l.trim_start().starts_with('|')) {
        return message.to_owned();
    }
    let last = lines[lines.len() - 1];
    format!("{}: {last}", lines[0])
}

/// Loads a configuration from TOML text, without environment overrides (tests, tools).
pub fn from_toml_str(toml: &str) -> Result<Config, Vec<Problem>> {
    let value = config::Config::builder()
        .add_source(File::from_str(toml, FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| {
            vec![Problem {
                path: "(toml)".into(),
                message: without_source_excerpt(&e.to_string()),
            }]
        })?;
    from_value(value)
}

/// Validates an already merged configuration tree.
pub fn from_value(root: Value) -> Result<Config, Vec<Problem>> {
    let mut problems = Problems::default();
    let config = read_root(root, &mut problems);
    match config {
        Some(c) if problems.0.is_empty() => Ok(c),
        _ => Err(problems.0),
    }
}

fn read_root(root: Value, problems: &mut Problems) -> Option<Config> {
    let mut t = Table::new("", root, problems)?;
    let listener_tables = t.take_value("listener");
    let account_tables = t.take_value("account");
    let log = t.take_value("log");
    let security = t.take_value("security");
    let service = t.take_value("service");
    let store = t.take_value("store");
    let admin = t.take_value("admin");
    let client_tables = t.take_value("client");
    t.finish();

    let mut listeners = Vec::new();
    match listener_tables {
        Some(v) => {
            if let Some(mut lt) = Table::new("listener", v, problems) {
                for (name, value) in lt.take_all() {
                    let path = format!("listener.{name}");
                    if let Some(l) = read_listener(&name, path, value, lt.problems()) {
                        listeners.push(l);
                    }
                }
            }
        }
        None => problems.push("listener", "missing (at least one [listener.NAME] table)"),
    }
    let mut accounts = Vec::new();
    if let Some(v) = account_tables {
        if let Some(mut at) = Table::new("account", v, problems) {
            for (name, value) in at.take_all() {
                let path = format!("account.{name}");
                if let Some(a) = read_account(&name, path, value, at.problems()) {
                    accounts.push(a);
                }
            }
        }
    }
    let mut clients = Vec::new();
    if let Some(v) = client_tables {
        if let Some(mut ct) = Table::new("client", v, problems) {
            for (name, value) in ct.take_all() {
                let path = format!("client.{name}");
                if let Some(mut t) = Table::new(path, value, ct.problems()) {
                    let oauth = read_oauth(&mut t, Flow::Delegated);
                    if oauth.as_ref().is_some_and(|o| o.client_id.is_none()) {
                        t.problem(
                            "client_id",
                            "missing (logins name the app by its client id)",
                        );
                    }
                    t.finish();
                    if let Some(oauth) = oauth {
                        clients.push(ClientConfig { name, oauth });
                    }
                }
            }
        }
    }
    check_unique_logins(&accounts, problems);
    check_unique_binds(&listeners, problems);

    let log = read_log(log, problems);
    let security = read_security(security, problems);
    let service = read_service(service, problems);
    let store = read_store(store, problems);
    let admin = read_admin(admin, problems);
    Some(Config {
        listeners,
        accounts,
        log: log?,
        security: security?,
        service: service?,
        store: store?,
        admin: admin?,
        clients,
    })
}

fn read_store(value: Option<Value>, problems: &mut Problems) -> Option<StoreConfig> {
    let mut s = StoreConfig {
        path: PathBuf::from("state/tokens.json"),
        key: None,
        keepalive: Duration::from_secs(7 * 86400),
        check_interval: Duration::from_secs(60),
    };
    if let Some(v) = value {
        let mut t = Table::new("store", v, problems)?;
        if let Some(p) = t.optional::<PathBuf>("path") {
            s.path = p;
        }
        s.key = t.secret("key");
        if let Some(k) = &s.key {
            if let Err(e) = crate::store::Key::from_key_file(k) {
                t.problem("key", e);
            }
        }
        if let Some(days) = t.optional::<u64>("keepalive_days") {
            if !(1..=60).contains(&days) {
                t.problem(
                    "keepalive_days",
                    "must be 1 to 60 (refresh tokens age out after 90 days unused)",
                );
            }
            s.keepalive = Duration::from_secs(days * 86400);
        }
        if let Some(secs) = t.optional::<u64>("check_interval_secs") {
            s.check_interval = Duration::from_secs(secs.max(1));
        }
        t.finish();
    }
    Some(s)
}

fn read_admin(value: Option<Value>, problems: &mut Problems) -> Option<AdminConfig> {
    let mut listen: Option<SocketAddr> = Some(SocketAddr::from(([127, 0, 0, 1], 9090)));
    let mut public_url = None;
    let mut redirect_path = "/register_microsoft_graph_api/".to_owned();
    if let Some(v) = value {
        let mut t = Table::new("admin", v, problems)?;
        let enabled: bool = t.optional("enabled").unwrap_or(true);
        let allow_remote: bool = t.optional("allow_remote").unwrap_or(false);
        if let Some(l) = t.optional::<String>("listen") {
            match l.parse::<SocketAddr>() {
                Ok(a) if !a.ip().is_loopback() && !allow_remote => t.problem(
                    "listen",
                    format!("{a} is not a loopback address; the admin pages hold the keys to every account: keep them on loopback, or set allow_remote = true behind your own access control"),
                ),
                Ok(a) => listen = Some(a),
                Err(_) => t.problem("listen", format!("{l:?} is not an IP address and port")),
            }
        }
        if !enabled {
            listen = None;
        }
        public_url = t.optional::<String>("public_url");
        if let Some(u) = &public_url {
            match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.path() == "/" => {}
                _ => t.problem(
                    "public_url",
                    format!(
                        "{u:?} must be an http(s) URL without a path, like http://localhost:9090"
                    ),
                ),
            }
        }
        if let Some(p) = t.optional::<String>("redirect_path") {
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                t.problem(
                    "redirect_path",
                    "must be a path starting with /, like /register_microsoft_graph_api/",
                );
            }
            redirect_path = p;
        }
        t.finish();
    }
    let port = listen.map_or(9090, |a| a.port());
    Some(AdminConfig {
        listen,
        public_url: public_url
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://localhost:{port}")),
        redirect_path,
    })
}

fn read_log(value: Option<Value>, problems: &mut Problems) -> Option<LogConfig> {
    let mut log = LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    };
    if let Some(v) = value {
        let mut t = Table::new("log", v, problems)?;
        if let Some(level) = t.optional::<String>("level") {
            log.level = level;
        }
        if let Some(format) = t.optional("format") {
            log.format = format;
        }
        t.finish();
    }
    Some(log)
}

fn read_service(value: Option<Value>, problems: &mut Problems) -> Option<ServiceConfig> {
    let mut s = ServiceConfig {
        drain: Duration::from_secs(30),
    };
    if let Some(v) = value {
        let mut t = Table::new("service", v, problems)?;
        if let Some(secs) = t.optional::<u64>("drain_secs") {
            s.drain = Duration::from_secs(secs);
        }
        t.finish();
    }
    Some(s)
}

fn read_security(value: Option<Value>, problems: &mut Problems) -> Option<SecurityConfig> {
    let mut s = SecurityConfig {
        hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        failure_delay: Duration::from_millis(1000),
        password_cache: Duration::from_secs(3600),
        refresh_margin: Duration::from_secs(600),
        token_timeout: Duration::from_secs(15),
        max_failures_per_address: 30,
        max_failures_per_username: 10,
        throttle_window: Duration::from_secs(900),
    };
    if let Some(v) = value {
        let mut t = Table::new("security", v, problems)?;
        if let Some(n) = t.optional::<usize>("hash_concurrency") {
            if n == 0 {
                t.problem("hash_concurrency", "must be at least 1");
            }
            s.hash_concurrency = n.max(1);
        }
        if let Some(ms) = t.optional::<u64>("failure_delay_ms") {
            s.failure_delay = Duration::from_millis(ms);
        }
        if let Some(secs) = t.optional::<u64>("password_cache_secs") {
            s.password_cache = Duration::from_secs(secs);
        }
        if let Some(secs) = t.optional::<u64>("refresh_margin_secs") {
            s.refresh_margin = Duration::from_secs(secs);
        }
        if let Some(secs) = t.optional::<u64>("token_timeout_secs") {
            s.token_timeout = Duration::from_secs(secs.max(1));
        }
        if let Some(n) = t.optional::<u32>("max_failures_per_address") {
            s.max_failures_per_address = n;
        }
        if let Some(n) = t.optional::<u32>("max_failures_per_username") {
            s.max_failures_per_username = n;
        }
        if let Some(secs) = t.optional::<u64>("throttle_window_secs") {
            s.throttle_window = Duration::from_secs(secs.max(1));
        }
        t.finish();
    }
    Some(s)
}

fn read_listener(
    name: &str,
    path: String,
    value: Value,
    problems: &mut Problems,
) -> Option<ListenerConfig> {
    let mut t = Table::new(path, value, problems)?;
    let protocol: Option<Protocol> = t.required("protocol", "smtp, imap or pop3");
    let listen: Option<String> = t.required("listen", "an address such as 127.0.0.1:2525");
    let tls: LocalTls = t.optional("tls").unwrap_or(LocalTls::None);
    let cert: Option<PathBuf> = t.optional("cert");
    let key: Option<PathBuf> = t.optional("key");
    let upstream: Option<String> = t.required("upstream", "host:port of the mail server");
    let upstream_tls: Option<UpstreamTls> = t.required(
        "upstream_tls",
        "starttls, implicit, or none for a loopback test server",
    );
    let upstream_name: Option<String> = t.optional("upstream_name");
    let upstream_ca: Option<PathBuf> = t.optional("upstream_ca");
    let allow_remote: bool = t.optional("allow_remote").unwrap_or(false);
    let remote_plaintext_auth: bool = t.optional("remote_plaintext_auth").unwrap_or(false);
    let ehlo_name: String = t
        .optional("ehlo_name")
        .unwrap_or_else(|| "localhost".into());
    let max_connections: usize = t.optional("max_connections").unwrap_or(1000);
    // One address may hold a quarter of the slots by default, so no single client (or scanner)
    // can take them all. Behind a balancer without PROXY v2 every client has its address.
    let max_connections_per_address: usize = t
        .optional("max_connections_per_address")
        .unwrap_or((max_connections / 4).max(1));
    let connect_timeout = Duration::from_secs(t.optional("connect_timeout_secs").unwrap_or(20));
    let upstream_timeout = Duration::from_secs(t.optional("upstream_timeout_secs").unwrap_or(60));
    let pre_auth_timeout = Duration::from_secs(t.optional("pre_auth_timeout_secs").unwrap_or(120));
    let idle_default = match protocol {
        Some(Protocol::Imap) => 35 * 60,
        _ => 15 * 60,
    };
    let idle_timeout = Duration::from_secs(t.optional("idle_timeout_secs").unwrap_or(idle_default));
    let tilde_login: bool = t.optional("tilde_login").unwrap_or(false);
    let proxy_protocol: bool = t.optional("proxy_protocol").unwrap_or(false);
    let proxy_trusted = read_cidrs(&mut t, "proxy_trusted");
    let allow = read_cidrs(&mut t, "allow");
    if proxy_protocol && proxy_trusted.is_empty() {
        t.problem(
            "proxy_trusted",
            "missing: with proxy_protocol = true, list the load balancers' addresses (CIDR ranges) whose PROXY headers to believe",
        );
    }

    let listen = listen.and_then(|s| match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            t.problem("listen", format!("{s:?} is not an IP address and port"));
            None
        }
    });
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && !allow_remote {
            t.problem(
                "listen",
                format!("{addr} is not a loopback address; set allow_remote = true to serve other hosts"),
            );
        }
        if !addr.ip().is_loopback()
            && allow_remote
            && tls == LocalTls::None
            && !remote_plaintext_auth
        {
            t.problem(
                "tls",
                "a listener that serves other hosts needs tls = \"starttls\" or \"implicit\", or remote_plaintext_auth = true for a trusted network (passwords then cross it in clear)",
            );
        }
    }
    if tls != LocalTls::None {
        if cert.is_none() {
            t.problem(
                "cert",
                "missing (a PEM certificate chain is needed for local TLS)",
            );
        }
        if key.is_none() {
            t.problem("key", "missing (a PEM private key is needed for local TLS)");
        }
        if let (Some(c), Some(k)) = (&cert, &key) {
            if let Err(e) = crate::net::tls::server_config(c, k) {
                t.problem("cert", e.to_string());
            }
        }
    }
    let upstream = upstream.and_then(|s| match split_host_port(&s) {
        Some(hp) => Some(hp),
        None => {
            t.problem("upstream", format!("{s:?} is not host:port"));
            None
        }
    });
    if let (Some((host, _)), Some(UpstreamTls::None)) = (&upstream, upstream_tls) {
        if !is_loopback_host(host) {
            t.problem(
                "upstream_tls",
                "\"none\" is allowed only for a loopback upstream; use starttls or implicit",
            );
        }
    }
    if let Some(ca) = &upstream_ca {
        if let Err(e) = crate::net::tls::load_certs(ca) {
            t.problem("upstream_ca", e.to_string());
        }
    }
    if max_connections == 0 {
        t.problem("max_connections", "must be at least 1");
    }
    if max_connections_per_address == 0 {
        t.problem("max_connections_per_address", "must be at least 1");
    }
    t.finish();
    let (host, port) = upstream?;
    Some(ListenerConfig {
        name: name.to_owned(),
        protocol: protocol?,
        listen: listen?,
        tls,
        cert,
        key,
        upstream_name: upstream_name.unwrap_or_else(|| host.clone()),
        upstream_host: host,
        upstream_port: port,
        upstream_tls: upstream_tls?,
        upstream_ca,
        ehlo_name,
        max_connections,
        max_connections_per_address,
        remote_plaintext_auth,
        connect_timeout,
        upstream_timeout,
        pre_auth_timeout,
        idle_timeout,
        tilde_login,
        proxy_protocol,
        proxy_trusted,
        allow,
    })
}

fn read_cidrs(t: &mut Table<'_>, key: &str) -> Vec<crate::codec::proxy::Cidr> {
    let list: Vec<String> = t.optional(key).unwrap_or_default();
    let mut out = Vec::new();
    for item in list {
        match item.parse() {
            Ok(c) => out.push(c),
            Err(e) => t.problem(key, e),
        }
    }
    out
}

fn read_account(
    name: &str,
    path: String,
    value: Value,
    problems: &mut Problems,
) -> Option<AccountConfig> {
    let mut t = Table::new(path, value, problems)?;
    let login: Option<String> = t.required("login", "the username the legacy client sends");
    let password_hash = t.secret("password_hash");
    let mailbox: Option<String> = t.optional("mailbox");
    let mode: String = t.optional("auth").unwrap_or_else(|| "oauth".into());
    let allowed_from: Vec<String> = t.optional("allowed_from").unwrap_or_default();

    if let Some(l) = &login {
        if crate::codec::sasl::parse_username(l.as_bytes()).is_err() {
            t.problem("login", "must be 1 to 320 bytes without control characters");
        }
    }
    if let Some(m) = &mailbox {
        if crate::codec::sasl::parse_username(m.as_bytes()).is_err() {
            t.problem(
                "mailbox",
                "must be 1 to 320 bytes without control characters",
            );
        }
    }
    let auth = match mode.as_str() {
        "oauth" => read_oauth(&mut t, Flow::Delegated).map(|o| AccountAuth::OAuth(Box::new(o))),
        "client_credentials" => {
            read_oauth(&mut t, Flow::ClientCredentials).map(|o| AccountAuth::OAuth(Box::new(o)))
        }
        "app_password" => match t.secret("app_password") {
            Some(p) => Some(AccountAuth::AppPassword(p)),
            None => {
                t.problem(
                    "app_password",
                    "missing (give app_password or app_password_file)",
                );
                None
            }
        },
        "passthrough" => Some(AccountAuth::Passthrough),
        other => {
            t.problem(
                "auth",
                format!("unknown value {other:?}, expected oauth, client_credentials, app_password or passthrough"),
            );
            None
        }
    };
    match (&password_hash, &auth) {
        (None, Some(AccountAuth::Passthrough)) => {}
        (None, _) => t.problem(
            "password_hash",
            "missing (make one with `authrelay hash-password`; give password_hash or password_hash_file)",
        ),
        (Some(h), _) => {
            if let Err(e) = crate::auth::password::check_hash(h) {
                t.problem("password_hash", e);
            }
        }
    }
    t.finish();
    let login = login?;
    Some(AccountConfig {
        id: name.to_owned(),
        mailbox: mailbox.unwrap_or_else(|| login.clone()),
        login,
        password_hash,
        auth: auth?,
        allowed_from,
        ephemeral: false,
    })
}

fn read_oauth(t: &mut Table<'_>, flow: Flow) -> Option<OAuthConfig> {
    let provider: Option<Provider> = t.required("provider", "microsoft, google or custom");
    let tenant: Option<String> = t.optional("tenant");
    let client_id: Option<String> = t.optional("client_id");
    let client_secret = t.secret("client_secret");
    let certificate: Option<PathBuf> = t.optional("certificate");
    let certificate_key: Option<PathBuf> = t.optional("certificate_key");
    let refresh_token = t.secret("refresh_token");
    let token_url: Option<String> = t.optional("token_url");
    let authorize_url: Option<String> = t.optional("authorize_url");
    let device_url: Option<String> = t.optional("device_url");
    let authority: Option<String> = t.optional("authority");
    let scopes: Option<Vec<String>> = t.optional("scopes");
    let provider = provider?;

    for (key, url) in [
        ("token_url", &token_url),
        ("authorize_url", &authorize_url),
        ("device_url", &device_url),
        ("authority", &authority),
    ] {
        if let Some(u) = url {
            if let Err(e) = check_endpoint_url(u) {
                t.problem(key, e);
            }
        }
    }
    if let Some(tn) = &tenant {
        if !valid_tenant(tn) {
            t.problem(
                "tenant",
                "must be a tenant ID, a domain, organizations, common or consumers",
            );
        }
    }
    if provider == Provider::Custom && token_url.is_none() {
        t.problem("token_url", "missing (required for provider = \"custom\")");
    }
    let certificate = match (certificate, certificate_key) {
        (Some(cert), Some(key)) => Some(CertificateCredential { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            t.problem(
                "certificate_key",
                "missing (the PEM private key of certificate)",
            );
            None
        }
        (None, Some(_)) => {
            t.problem(
                "certificate",
                "missing (the PEM certificate of certificate_key)",
            );
            None
        }
    };
    if flow == Flow::ClientCredentials {
        if client_id.is_none() {
            t.problem(
                "client_id",
                "missing (client credentials need the application (client) ID)",
            );
        }
        if provider == Provider::Microsoft && tenant.is_none() {
            t.problem("tenant", "missing (client credentials need the directory (tenant) ID; common or organizations cannot be used)");
        }
        if client_secret.is_none() && certificate.is_none() {
            t.problem("client_secret", "missing (client credentials need client_secret, client_secret_file, or certificate and certificate_key)");
        }
        if refresh_token.is_some() {
            t.problem(
                "refresh_token",
                "not used with auth = \"client_credentials\"",
            );
        }
    }
    if let Some(c) = &certificate {
        if let Err(e) = crate::auth::assertion::CertificateSigner::load(&c.cert, &c.key) {
            t.problem("certificate", e);
        }
    }
    let scopes = scopes.unwrap_or_else(|| {
        let defaults: &[&str] = match (provider, flow) {
            (_, Flow::ClientCredentials) => &[MICROSOFT_APP_SCOPE],
            (Provider::Google, _) => &GOOGLE_SCOPES,
            _ => &MICROSOFT_SCOPES,
        };
        defaults.iter().map(|s| s.to_string()).collect()
    });
    Some(OAuthConfig {
        provider,
        flow,
        tenant,
        authority: authority.unwrap_or_else(|| MICROSOFT_AUTHORITY.into()),
        client_id,
        client_secret,
        certificate,
        refresh_token,
        token_url,
        authorize_url,
        device_url,
        scopes,
    })
}

/// An identity provider URL must be https, or http to a loopback host (local test servers).
fn check_endpoint_url(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http"
            if url.host_str().is_some_and(|h| {
                is_loopback_host(h.trim_start_matches('[').trim_end_matches(']'))
            }) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{u:?} must be an https URL (http only to a loopback host)"
        )),
    }
}

fn check_unique_logins(accounts: &[AccountConfig], problems: &mut Problems) {
    for (i, a) in accounts.iter().enumerate() {
        if let Some(b) = accounts[..i]
            .iter()
            .find(|b| b.login.eq_ignore_ascii_case(&a.login))
        {
            problems.push(
                format!("account.{}.login", a.id),
                format!("{:?} is already the login of account.{}", a.login, b.id),
            );
        }
    }
}

fn check_unique_binds(listeners: &[ListenerConfig], problems: &mut Problems) {
    for (i, a) in listeners.iter().enumerate() {
        if let Some(b) = listeners[..i].iter().find(|b| b.listen == a.listen) {
            problems.push(
                format!("listener.{}.listen", a.name),
                format!("{} is already used by listener.{}", a.listen, b.name),
            );
        }
    }
}

/// Splits `host:port` (with `[v6]:port` for IPv6).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
