//! The typed configuration: what every table and key means once it has been read and checked.

use super::*;

#[derive(Debug, Clone)]
/// The whole configuration, as read and checked.
pub struct Config {
    /// `[listener.*]`.
    pub listeners: Vec<ListenerConfig>,
    /// `[account.*]`.
    pub accounts: Vec<AccountConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[security]`.
    pub security: SecurityConfig,
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[spool]`.
    pub spool: SpoolConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// App registrations for the `mailbox~client_id` login convention.
    pub clients: Vec<ClientConfig>,
    /// `[alerts]`.
    pub alerts: super::AlertsConfig,
}

/// `[spool]`: where accepted messages wait for delivery (the spool module), and the
/// limits of what a spool listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The spool directory.
    pub path: PathBuf,
    /// How long a message may wait before it is given up (Postfix's default: 5 days).
    pub max_age: Duration,
    /// The largest message accepted (announced with SIZE; Exchange Online's limit by default).
    pub max_message_bytes: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Free space the spool's file system must keep; below it, messages are refused with
    /// `452 4.3.1` before they are received.
    pub min_free_bytes: u64,
    /// The wait after a first temporary failure; it doubles with each attempt, up to an hour.
    pub first_retry: Duration,
}

/// Where tokens are kept (see [`crate::store`]).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The store file.
    pub path: PathBuf,
    /// Content of the store key file (`key_file`): seal every account with it.
    pub key: Option<Secret>,
    /// Neither `key_file` nor `seal = "password"` is given: the key is the one made on first
    /// use at [`StoreConfig::auto_key_path`] (see [`crate::store::keyfile`]).
    pub auto_key: bool,
    /// Refresh a refresh token that has not been used for this long, so it never ages out.
    pub keepalive: Duration,
    /// How often the background task looks for tokens to refresh.
    pub check_interval: Duration,
    /// Where the sealed records live: the file at `path` (default), or Redis.
    pub backend: StoreBackend,
}

/// Where the token store keeps its sealed records (`[store] backend`).
#[derive(Debug, Clone, Default)]
pub enum StoreBackend {
    /// One local file (`path`), shared by processes on one host through `flock`.
    #[default]
    File,
    /// A Redis (or Valkey) server shared by every replica.
    Redis(RedisConfig),
}

pub use crate::store::RedisConfig;

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
    /// The OAuth redirect URI the account pages use: `public_url` + `redirect_path`.
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
    /// The key in `[client.NAME]`.
    pub name: String,
    /// Its app registration.
    pub oauth: OAuthConfig,
}

#[derive(Debug, Clone)]
/// `[service]`: how the process runs.
pub struct ServiceConfig {
    /// On SIGTERM/SIGINT, how long running sessions may go on before they are closed.
    pub drain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
/// The protocol a listener speaks.
pub enum Protocol {
    /// SMTP submission (RFC 6409).
    Smtp,
    /// IMAP (RFC 9051).
    Imap,
    /// POP3 (RFC 1939).
    Pop3,
}

/// TLS between the legacy client and the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalTls {
    /// Plaintext (loopback, or a declared trusted network).
    None,
    /// STARTTLS or STLS on request (RFC 3207, RFC 2595).
    Starttls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

/// TLS between the relay and the mail provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// STARTTLS or STLS after the greeting; refuses to go on without it.
    Starttls,
    /// TLS from the first byte.
    Implicit,
    /// Plaintext: allowed only to a loopback address (test servers).
    None,
}

/// One upstream server: where it is and how its certificate is trusted. A listener names the
/// default one; an account may name its own per protocol (`[account.NAME.upstream]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// How the connection is secured.
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
    /// The server for SMTP listeners.
    pub smtp: Option<UpstreamSpec>,
    /// The server for IMAP listeners.
    pub imap: Option<UpstreamSpec>,
    /// The server for POP3 listeners.
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
/// `[listener.NAME]`: one local port and what it relays to.
pub struct ListenerConfig {
    /// The key in `[listener.NAME]`.
    pub name: String,
    /// The protocol it speaks.
    pub protocol: Protocol,
    /// The address it binds.
    pub listen: SocketAddr,
    /// TLS towards the device.
    pub tls: LocalTls,
    /// The certificate chain for local TLS (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The default upstream server (an account may name its own).
    pub upstream: UpstreamSpec,
    /// Connect to the upstream once at start to learn its capabilities (shown before login).
    pub upstream_probe: bool,
    /// SMTP: accept messages into the spool (`[spool]`) instead of piping the session live.
    pub spool: bool,
    /// The name the relay gives in its own EHLO before upstream STARTTLS.
    pub ehlo_name: String,
    /// Connections held at once; more are told to come back later.
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
    /// Accept passwords over plaintext from non-loopback clients (a trusted container network).
    pub remote_plaintext_auth: bool,
    /// Time for an upstream TCP connect, TLS handshake and greeting.
    pub connect_timeout: Duration,
    /// How long to wait for any one upstream reply before authentication.
    pub upstream_timeout: Duration,
    /// Time a device has to log in.
    pub pre_auth_timeout: Duration,
    /// After login, how long nothing may move before the session is closed.
    pub idle_timeout: Duration,
    /// Accept `mailbox~client_id` logins whose password is a refresh token.
    pub tilde_login: bool,
    /// Expect a PROXY protocol v2 header from `proxy_trusted` peers (load balancers).
    pub proxy_protocol: bool,
    /// Addresses whose PROXY headers are believed.
    pub proxy_trusted: Vec<crate::net::cidr::Cidr>,
    /// Client addresses allowed to connect; empty: any.
    pub allow: Vec<crate::net::cidr::Cidr>,
    /// Clients here may send without a login (spool listeners only; README: Devices that
    /// cannot log in).
    pub trusted_networks: Vec<crate::net::cidr::Cidr>,
    /// The oldest TLS version a device may use (`tls_min_version`); 1.0 and 1.1 need OpenSSL.
    pub tls_min_version: TlsVersion,
}

pub use crate::net::tls::TlsVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
/// The identity provider, which decides default endpoints and scopes.
pub enum Provider {
    /// Microsoft Entra ID.
    Microsoft,
    /// Google.
    Google,
    /// Any other OAuth 2.0 server (`token_url` required).
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
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its RSA private key (PEM).
    pub key: PathBuf,
}

/// An OAuth account's settings as configured. Client id, tenant and secret may be left open
/// and entered later on the account page; [`OAuthConfig::endpoints`] merges the two.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The identity provider.
    pub provider: Provider,
    /// Delegated (a user's refresh token) or client credentials (the app's own).
    pub flow: Flow,
    /// The Entra tenant (ID, domain, organizations, common or consumers).
    pub tenant: Option<String>,
    /// Microsoft authority host (national clouds), without the tenant.
    pub authority: String,
    /// The app registration's client ID (may come from the account page instead).
    pub client_id: Option<String>,
    /// Its client secret, if it has one.
    pub client_secret: Option<Secret>,
    /// When the client secret expires (`client_secret_expires = "YYYY-MM-DD"`, from the app
    /// registration's "Certificates & secrets"): alerts warn ahead of it.
    pub client_secret_expires: Option<std::time::SystemTime>,
    /// A Conditional Access sign-in frequency that applies to this app
    /// (`sign_in_frequency_days`): the sign-in must be renewed that often, and alerts warn
    /// ahead of it.
    pub sign_in_frequency: Option<std::time::Duration>,
    /// A certificate instead of a secret (client assertions, RFC 7523).
    pub certificate: Option<CertificateCredential>,
    /// A refresh token given in the configuration (the store's wins once it has one).
    pub refresh_token: Option<Secret>,
    /// Overrides the provider's token endpoint.
    pub token_url: Option<String>,
    /// Overrides the provider's authorization endpoint.
    pub authorize_url: Option<String>,
    /// Overrides the provider's device authorization endpoint (RFC 8628).
    pub device_url: Option<String>,
    /// The scopes requested.
    pub scopes: Vec<String>,
    /// How the token is presented upstream: XOAUTH2 (default) or OAUTHBEARER.
    pub mechanism: crate::codec::sasl::BearerMechanism,
}

#[derive(Debug, Clone)]
/// How an account logs in upstream.
pub enum AccountAuth {
    /// XOAUTH2 with an access token the relay obtains and refreshes.
    OAuth(Box<OAuthConfig>),
    /// AUTH PLAIN/LOGIN upstream with a stored app password.
    AppPassword(Secret),
    /// The client's own username and password are forwarded unchanged.
    Passthrough,
}

#[derive(Debug, Clone)]
/// `[account.NAME]`: a local login and how it reaches its mailbox.
pub struct AccountConfig {
    /// The account's key in the configuration (`[account.NAME]`).
    pub id: String,
    /// The username the legacy client sends.
    pub login: String,
    /// Argon2id PHC string of the local password (absent only for pass-through accounts).
    pub password_hash: Option<Secret>,
    /// The mailbox used upstream (XOAUTH2 `user=`).
    pub mailbox: String,
    /// How it logs in upstream.
    pub auth: AccountAuth,
    /// Sender addresses SMTP accepts after login (MAIL FROM); empty means only the mailbox, and
    /// `"*"` turns the check off (for send-as permissions granted upstream).
    pub allowed_from: Vec<String>,
    /// True for accounts made up for one `mailbox~client_id` login: nothing is stored.
    pub ephemeral: bool,
    /// Servers of this account that replace the listener's (`[account.NAME.upstream]`).
    pub upstreams: AccountUpstreams,
    /// Upstream SMTP sessions delivering from the spool at once (Exchange Online allows 3).
    pub concurrency: usize,
    /// Messages delivered from the spool per minute (Exchange Online allows 30).
    pub messages_per_minute: u32,
    /// How the spool sends this account's messages: SMTP (default) or Microsoft Graph.
    pub send: Sending,
    /// Clients of a listener's `trusted_networks` in these ranges may send as this account
    /// without a login.
    pub networks: Vec<crate::net::cidr::Cidr>,
    /// No-login mail from `networks` is sent as the mailbox whatever its sender.
    pub rewrite_sender: bool,
    /// Recipients per hour of no-login mail (none: no cap).
    pub max_recipients_per_hour: Option<u32>,
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
/// The log's format.
pub enum LogFormat {
    /// One line per event, `key=value` fields.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
/// `[log]`.
pub struct LogConfig {
    /// The level filter (`info`, `debug`, or an `EnvFilter` directive).
    pub level: String,
    /// Text or JSON.
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
/// `[security]`: password checks, the throttle, token timing.
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
    /// Failed logins for one username within the window before it is refused unchecked; 0: no limit.
    pub max_failures_per_username: u32,
    /// The window the failure counts cover.
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
/// Google's scope for IMAP, POP3 and SMTP (developers.google.com/gmail/imap/xoauth2-protocol).
pub const GOOGLE_SCOPES: [&str; 1] = ["https://mail.google.com/"];
/// Google's token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Google's authorization endpoint.
pub const GOOGLE_AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
/// The app-only scope for Exchange Online IMAP, POP and SMTP (client credentials).
pub const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";
/// Microsoft's global authority (national clouds override it).
pub const MICROSOFT_AUTHORITY: &str = "https://login.microsoftonline.com";
