//! Where an OAuth account's token requests go: the provider's preset endpoints, what the
//! configuration overrides, and the app settings entered on the account page, resolved into one
//! [`Endpoints`].

use super::*;

/// App settings from outside the configuration (the account page), used where it leaves
/// them open.
#[derive(Debug, Clone, Default)]
pub struct AppOverrides {
    /// A client ID entered on the account page.
    pub client_id: Option<String>,
    /// A tenant entered on the account page.
    pub tenant: Option<String>,
    /// A client secret entered on the account page.
    pub client_secret: Option<Secret>,
}

/// Everything a token request needs, resolved.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The client ID used.
    pub client_id: String,
    /// The client secret used, if any.
    pub client_secret: Option<Secret>,
    /// The token endpoint.
    pub token_url: String,
    /// The authorization endpoint.
    pub authorize_url: String,
    /// `None` where the provider has no device flow for these scopes (Gmail).
    pub device_url: Option<String>,
    /// The scopes requested.
    pub scopes: Vec<String>,
    /// The configuration keys that decide `token_url` (for errors that must name what to fix).
    pub token_url_from: &'static str,
    /// The same for `device_url`.
    pub device_url_from: &'static str,
    /// The provider, which decides the OpenID Connect scopes a sign-in adds.
    pub provider: Provider,
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
        let token_url_from = match (&self.token_url, self.provider) {
            (Some(_), _) | (None, Provider::Custom) => "token_url",
            (None, Provider::Microsoft) => "authority and tenant",
            (None, Provider::Google) => "provider",
        };
        let device_url_from = match self.device_url {
            Some(_) => "device_url",
            None => token_url_from,
        };
        Ok(Endpoints {
            client_id,
            client_secret,
            token_url: pick(&self.token_url, token_url),
            authorize_url: pick(&self.authorize_url, authorize_url),
            device_url: self.device_url.clone().or(device_url),
            scopes: self.scopes.clone(),
            token_url_from,
            device_url_from,
            provider: self.provider,
        })
    }
}

/// True for a tenant ID (a GUID), a domain, `organizations`, `common` or `consumers`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 256
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}
