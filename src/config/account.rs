//! Reading `[account.NAME]` and `[client.NAME]` tables: the account modes and their OAuth settings.

use super::*;

/// A login and a mailbox must be usable as SASL usernames.
fn check_names(t: &mut Table<'_>, login: &Option<String>, mailbox: &Option<String>) {
    for (key, name) in [("login", login), ("mailbox", mailbox)] {
        if name
            .as_ref()
            .is_some_and(|n| crate::codec::sasl::parse_username(n.as_bytes()).is_err())
        {
            t.problem(key, "must be 1 to 320 bytes without control characters");
        }
    }
}

pub(super) fn read_account(
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
    let upstreams = super::upstream::read_account_upstreams(&mut t);
    let send = read_sending(&mut t, &mode);
    let (concurrency, messages_per_minute) = read_delivery_limits(&mut t, &send);
    let (networks, rewrite_sender, max_recipients_per_hour) =
        super::devices::read_account_devices(&mut t);

    check_names(&mut t, &login, &mailbox);
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
            if let Err(e) = crate::credential::password::check_hash(h) {
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
        upstreams,
        concurrency,
        messages_per_minute,
        send,
        networks,
        rewrite_sender,
        max_recipients_per_hour,
    })
}

/// `send`, `graph_url`, `graph_scopes`, `graph_max_mb` and `graph_timeout_secs`: SMTP (the default) or Microsoft Graph, which needs an
/// OAuth account (a token with the Graph audience).
fn read_sending(t: &mut Table<'_>, mode: &str) -> Sending {
    let send: String = t.optional("send").unwrap_or_else(|| "smtp".into());
    let url: Option<String> = t.optional("graph_url");
    let scopes: Option<Vec<String>> = t.optional("graph_scopes");
    let max_mb: Option<u32> = t.optional("graph_max_mb");
    let timeout: Option<u64> = t.optional("graph_timeout_secs");
    match send.as_str() {
        "smtp" => {
            for (key, given) in [
                ("graph_url", url.is_some()),
                ("graph_scopes", scopes.is_some()),
                ("graph_max_mb", max_mb.is_some()),
                ("graph_timeout_secs", timeout.is_some()),
            ] {
                if given {
                    t.problem(key, "only for send = \"graph\"");
                }
            }
            Sending::Smtp
        }
        "graph" => {
            if !matches!(mode, "oauth" | "client_credentials") {
                t.problem(
                    "send",
                    "\"graph\" needs auth = \"oauth\" or \"client_credentials\" (Graph takes OAuth tokens only)",
                );
            }
            let url = url.unwrap_or_else(|| GRAPH_URL.into());
            if let Err(e) = check_endpoint_url(&url) {
                t.problem("graph_url", e);
            }
            let url = url.trim_end_matches('/').to_owned();
            let scopes = scopes.unwrap_or_else(|| match mode {
                "client_credentials" => vec![format!("{url}/.default")],
                _ => vec![format!("{url}/Mail.Send"), "offline_access".into()],
            });
            if max_mb == Some(0) {
                t.problem("graph_max_mb", "must be at least 1");
            }
            if timeout == Some(0) {
                t.problem("graph_timeout_secs", "must be at least 1");
            }
            Sending::Graph(GraphConfig {
                url,
                scopes,
                max_request_bytes: max_mb.unwrap_or(4).max(1) as usize * 1024 * 1024,
                request_timeout: std::time::Duration::from_secs(timeout.unwrap_or(120).max(1)),
            })
        }
        other => {
            t.problem(
                "send",
                format!("unknown value {other:?}, expected smtp or graph"),
            );
            Sending::Smtp
        }
    }
}

pub(super) fn read_oauth(t: &mut Table<'_>, flow: Flow) -> Option<OAuthConfig> {
    let provider: Option<Provider> = t.required_choice("provider");
    let tenant: Option<String> = t.optional("tenant");
    let client_id: Option<String> = t.optional("client_id");
    let client_secret = t.secret("client_secret");
    let certificate = t.path("certificate");
    let certificate_key = t.path("certificate_key");
    let refresh_token = t.secret("refresh_token");
    let token_url: Option<String> = t.optional("token_url");
    let authorize_url: Option<String> = t.optional("authorize_url");
    let device_url: Option<String> = t.optional("device_url");
    let authority: Option<String> = t.optional("authority");
    let scopes: Option<Vec<String>> = t.optional("scopes");
    let mechanism = read_mechanism(t);
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
    let certificate = pair_certificate(t, certificate, certificate_key);
    if flow == Flow::ClientCredentials {
        let has_secret = client_secret.is_some() || certificate.is_some();
        let needs = ClientCredentialNeeds {
            client_id: client_id.is_some(),
            tenant: tenant.is_some() || provider != Provider::Microsoft,
            secret: has_secret,
            refresh_token: refresh_token.is_some(),
        };
        check_client_credentials(t, needs);
    }
    if let Some(c) = &certificate {
        if let Err(e) = crate::credential::assertion::CertificateSigner::load(&c.cert, &c.key) {
            t.problem("certificate", e);
        }
    }
    let scopes = scopes.unwrap_or_else(|| default_scopes(provider, flow));
    Some(OAuthConfig {
        provider,
        flow,
        tenant,
        authority: authority.unwrap_or_else(|| MICROSOFT_AUTHORITY.into()),
        client_id,
        client_secret,
        client_secret_expires: read_expiry(t, "client_secret_expires"),
        sign_in_frequency: read_days(t, "sign_in_frequency_days"),
        certificate,
        refresh_token,
        token_url,
        authorize_url,
        device_url,
        scopes,
        mechanism,
    })
}

/// The scopes an account asks for when the configuration names none.
fn default_scopes(provider: Provider, flow: Flow) -> Vec<String> {
    let defaults: &[&str] = match (provider, flow) {
        (_, Flow::ClientCredentials) => &[MICROSOFT_APP_SCOPE],
        (Provider::Google, _) => &GOOGLE_SCOPES,
        _ => &MICROSOFT_SCOPES,
    };
    defaults.iter().map(|s| s.to_string()).collect()
}

/// `concurrency` and `messages_per_minute`: how the spool delivers for this mailbox
/// (Exchange Online's limits by default: 3 SMTP sessions or 4 Graph requests at once, 30
/// messages a minute).
fn read_delivery_limits(t: &mut Table<'_>, send: &Sending) -> (usize, u32) {
    let default = match send {
        Sending::Smtp => 3,
        Sending::Graph(_) => 4,
    };
    let concurrency: usize = t.optional("concurrency").unwrap_or(default);
    let per_minute: u32 = t.optional("messages_per_minute").unwrap_or(30);
    if concurrency == 0 {
        t.problem("concurrency", "must be at least 1");
    }
    if per_minute == 0 {
        t.problem("messages_per_minute", "must be at least 1");
    }
    (concurrency.max(1), per_minute.max(1))
}

/// `mechanism`: how the token is presented upstream (RFC 7628 or Google's XOAUTH2).
fn read_mechanism(t: &mut Table<'_>) -> crate::codec::sasl::BearerMechanism {
    use crate::codec::sasl::BearerMechanism;
    match t.optional::<String>("mechanism").as_deref() {
        None | Some("xoauth2") => BearerMechanism::XOAuth2,
        Some("oauthbearer") => BearerMechanism::OAuthBearer,
        Some(other) => {
            t.problem(
                "mechanism",
                format!("unknown value {other:?}, expected xoauth2 or oauthbearer"),
            );
            BearerMechanism::XOAuth2
        }
    }
}

/// `certificate` and `certificate_key` come together or not at all.
fn pair_certificate(
    t: &mut Table<'_>,
    certificate: Option<PathBuf>,
    certificate_key: Option<PathBuf>,
) -> Option<CertificateCredential> {
    match (certificate, certificate_key) {
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
    }
}

/// What a client-credentials account has of what it needs.
struct ClientCredentialNeeds {
    client_id: bool,
    /// A tenant, where the provider needs one (Microsoft).
    tenant: bool,
    /// A client secret or a certificate.
    secret: bool,
    /// A refresh token, which this flow does not use.
    refresh_token: bool,
}

/// Client credentials need the app's ID, its tenant, and a secret or certificate.
fn check_client_credentials(t: &mut Table<'_>, has: ClientCredentialNeeds) {
    if !has.client_id {
        t.problem(
            "client_id",
            "missing (client credentials need the application (client) ID)",
        );
    }
    if !has.tenant {
        t.problem("tenant", "missing (client credentials need the directory (tenant) ID; common or organizations cannot be used)");
    }
    if !has.secret {
        t.problem("client_secret", "missing (client credentials need client_secret, client_secret_file, or certificate and certificate_key)");
    }
    if has.refresh_token {
        t.problem(
            "refresh_token",
            "not used with auth = \"client_credentials\"",
        );
    }
}

/// An identity provider URL must be https, or http to a loopback host (local test servers).
pub(super) fn check_endpoint_url(u: &str) -> Result<(), String> {
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

/// A `YYYY-MM-DD` date (UTC midnight), or a problem.
/// A whole number of days, at least one.
fn read_days(t: &mut Table<'_>, key: &str) -> Option<std::time::Duration> {
    let days = t.optional::<u64>(key)?;
    if !(1..=3650).contains(&days) {
        t.problem(key, "must be a number of days from 1 to 3650");
        return None;
    }
    Some(std::time::Duration::from_secs(days * 86400))
}

fn read_expiry(t: &mut Table<'_>, key: &str) -> Option<std::time::SystemTime> {
    let text = t.optional::<String>(key)?;
    crate::civil::parse_date(&text)
        .map_err(|e| t.problem(key, e))
        .ok()
}
