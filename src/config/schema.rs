//! The typed configuration: what every table and key means once it has been read and checked.

use super::*;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Starttls,
    Implicit,
    /// Plaintext: allowed only to a loopback address (test servers).
    None,
}

/// One upstream server: where it is and how its certificate is trusted. A listener names the
/// default one; an account may name its own per protocol (`[account.NAME.upstream]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    /// The name the certificate must carry (defaults to `host`).
    pub name: String,
    /// Extra CA certificates (PEM) trusted besides the system's roots.
    pub ca: Option<PathBuf>,
    /// Trust exactly these certificates or keys (self-signed servers); no CA, no name.
    pub pin: Vec<crate::net::tls::Pin>,
}

impl UpstreamSpec {
    /// `host:port`, for log lines and replies.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The servers an account uses instead of the listener's, per protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountUpstreams {
    pub smtp: Option<UpstreamSpec>,
    pub imap: Option<UpstreamSpec>,
    pub pop3: Option<UpstreamSpec>,
}

impl AccountUpstreams {
    /// The account's own server for `protocol`, if it has one.
    pub fn get(&self, protocol: Protocol) -> Option<&UpstreamSpec> {
        match protocol {
            Protocol::Smtp => self.smtp.as_ref(),
            Protocol::Imap => self.imap.as_ref(),
            Protocol::Pop3 => self.pop3.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub tls: LocalTls,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The default upstream server (an account may name its own).
    pub upstream: UpstreamSpec,
    /// Connect to the upstream once at start to learn its capabilities (shown before login).
    pub upstream_probe: bool,
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
    pub proxy_trusted: Vec<crate::net::cidr::Cidr>,
    /// Client addresses allowed to connect; empty: any.
    pub allow: Vec<crate::net::cidr::Cidr>,
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
    /// How the token is presented upstream: XOAUTH2 (default) or OAUTHBEARER.
    pub mechanism: crate::codec::sasl::BearerMechanism,
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
    /// Servers of this account that replace the listener's (`[account.NAME.upstream]`).
    pub upstreams: AccountUpstreams,
}

impl AccountConfig {
    /// The server this account logs in to through a listener of `protocol`: its own, or the
    /// listener's `default`.
    pub fn upstream<'a>(
        &'a self,
        protocol: Protocol,
        default: &'a UpstreamSpec,
    ) -> &'a UpstreamSpec {
        self.upstreams.get(protocol).unwrap_or(default)
    }

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

/// Scopes that give one Microsoft token for IMAP, POP and SMTP (Microsoft: "Authenticate an IMAP, POP or SMTP connection using OAuth", learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth).
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
