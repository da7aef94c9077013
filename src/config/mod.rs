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

#[derive(Debug, Clone)]
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
    /// Accept passwords over plaintext from non-loopback clients (a trusted container network).
    pub remote_plaintext_auth: bool,
    pub connect_timeout: Duration,
    /// How long to wait for any one upstream reply before authentication.
    pub upstream_timeout: Duration,
    pub pre_auth_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Microsoft,
    Google,
    Custom,
}

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub provider: Provider,
    pub tenant: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub token_url: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum AccountAuth {
    /// XOAUTH2 with an access token the relay obtains and refreshes.
    OAuth(OAuthConfig),
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

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// How many password hashes may be computed at once.
    pub hash_concurrency: usize,
    /// Delay before answering a failed local login.
    pub failure_delay: Duration,
    /// Refresh an access token when less than this remains.
    pub refresh_margin: Duration,
    /// Timeout of one token endpoint request.
    pub token_timeout: Duration,
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
        .map_err(|e| e.to_string())?;
    built.try_deserialize::<Value>().map_err(|e| e.to_string())
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
                message: e.to_string(),
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
    check_unique_logins(&accounts, problems);
    check_unique_binds(&listeners, problems);

    let log = read_log(log, problems);
    let security = read_security(security, problems);
    let service = read_service(service, problems);
    Some(Config {
        listeners,
        accounts,
        log: log?,
        security: security?,
        service: service?,
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
        refresh_margin: Duration::from_secs(600),
        token_timeout: Duration::from_secs(15),
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
        if let Some(secs) = t.optional::<u64>("refresh_margin_secs") {
            s.refresh_margin = Duration::from_secs(secs);
        }
        if let Some(secs) = t.optional::<u64>("token_timeout_secs") {
            s.token_timeout = Duration::from_secs(secs.max(1));
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
    let connect_timeout = Duration::from_secs(t.optional("connect_timeout_secs").unwrap_or(20));
    let upstream_timeout = Duration::from_secs(t.optional("upstream_timeout_secs").unwrap_or(60));
    let pre_auth_timeout = Duration::from_secs(t.optional("pre_auth_timeout_secs").unwrap_or(120));
    let idle_default = match protocol {
        Some(Protocol::Imap) => 35 * 60,
        _ => 15 * 60,
    };
    let idle_timeout = Duration::from_secs(t.optional("idle_timeout_secs").unwrap_or(idle_default));

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
        remote_plaintext_auth,
        connect_timeout,
        upstream_timeout,
        pre_auth_timeout,
        idle_timeout,
    })
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
        "oauth" => read_oauth(&mut t).map(AccountAuth::OAuth),
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
                format!("unknown value {other:?}, expected oauth, app_password or passthrough"),
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
    })
}

fn read_oauth(t: &mut Table<'_>) -> Option<OAuthConfig> {
    let provider: Option<Provider> = t.required("provider", "microsoft, google or custom");
    let tenant: Option<String> = t.optional("tenant");
    let client_id: Option<String> = t.required("client_id", "the application (client) ID");
    let client_secret = t.secret("client_secret");
    let refresh_token = t.secret("refresh_token");
    let token_url: Option<String> = t.optional("token_url");
    let authority: Option<String> = t.optional("authority");
    let scopes: Option<Vec<String>> = t.optional("scopes");
    let provider = provider?;
    let token_url = match provider {
        Provider::Microsoft => {
            let tenant = match &tenant {
                Some(tn)
                    if !tn.is_empty()
                        && tn
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) =>
                {
                    tn
                }
                Some(_) => {
                    t.problem(
                        "tenant",
                        "must be a tenant ID, a domain, organizations, common or consumers",
                    );
                    return None;
                }
                None => {
                    t.problem(
                        "tenant",
                        "missing (the directory (tenant) ID or domain; organizations, common or consumers for multi-tenant apps)",
                    );
                    return None;
                }
            };
            let authority = authority.unwrap_or_else(|| MICROSOFT_AUTHORITY.into());
            token_url.unwrap_or_else(|| {
                format!(
                    "{}/{tenant}/oauth2/v2.0/token",
                    authority.trim_end_matches('/')
                )
            })
        }
        Provider::Google => token_url.unwrap_or_else(|| GOOGLE_TOKEN_URL.into()),
        Provider::Custom => match token_url {
            Some(u) => u,
            None => {
                t.problem("token_url", "missing (required for provider = \"custom\")");
                return None;
            }
        },
    };
    if let Err(e) = reqwest::Url::parse(&token_url) {
        t.problem("token_url", format!("{token_url:?} is not a URL: {e}"));
    }
    let scopes = scopes.unwrap_or_else(|| {
        let defaults: &[&str] = match provider {
            Provider::Google => &GOOGLE_SCOPES,
            _ => &MICROSOFT_SCOPES,
        };
        defaults.iter().map(|s| s.to_string()).collect()
    });
    Some(OAuthConfig {
        provider,
        tenant,
        client_id: client_id?,
        client_secret,
        refresh_token,
        token_url,
        scopes,
    })
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
