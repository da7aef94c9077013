//! Token endpoint requests (RFC 6749 refresh-token grant, through the `oauth2` crate) and the
//! classification of their failures (protocol.md §1.7).

use crate::config::OAuthConfig;
use crate::secret::Secret;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use std::fmt;
use std::time::Duration;

/// A successful token response.
#[derive(Debug)]
pub struct Grant {
    pub access_token: Secret,
    pub expires_in: Duration,
    /// Present when the provider rotated the refresh token.
    pub refresh_token: Option<Secret>,
}

/// What the relay can do about a failed token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user must sign in again (refresh token expired or revoked, MFA, consent).
    Reauthorize,
    /// The app registration, secret or tenant is wrong, or a policy blocks the sign-in: an
    /// administrator must act. Never retried automatically.
    Configuration,
    /// The identity provider is unreachable, slow or failing: try again later; the refresh token
    /// is kept.
    Temporary,
}

/// A failed token request. Holds no secret: only the OAuth error code, the AADSTS code and a
/// short description, safe to log and to show to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub class: ErrorClass,
    /// The OAuth `error` value (`invalid_grant`, …) or a short tag (`network`, `timeout`, …).
    pub error: String,
    /// The Microsoft Entra code (`AADSTS700082` → 700082), when the description carries one.
    pub aadsts: Option<u32>,
    pub description: String,
}

impl TokenError {
    pub fn new(class: ErrorClass, error: &str, description: impl Into<String>) -> Self {
        TokenError {
            class,
            error: error.to_owned(),
            aadsts: None,
            description: description.into(),
        }
    }

    /// `AADSTS700082` or the OAuth error code: what a user can look up.
    pub fn code(&self) -> String {
        match self.aadsts {
            Some(n) => format!("AADSTS{n}"),
            None => self.error.clone(),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description, self.code())
    }
}

/// The HTTP client used for every token request: no redirects (a token endpoint never
/// redirects, and following one could leak the request), bounded time.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("authrelay/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

/// Exchanges a refresh token for an access token.
pub async fn refresh(
    http: &reqwest::Client,
    oauth: &OAuthConfig,
    refresh_token: &Secret,
) -> Result<Grant, TokenError> {
    let token_url = TokenUrl::new(oauth.token_url.clone()).map_err(|_| {
        TokenError::new(
            ErrorClass::Configuration,
            "token_url",
            "the token URL is not valid",
        )
    })?;
    let mut client = BasicClient::new(ClientId::new(oauth.client_id.clone()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_url);
    if let Some(secret) = &oauth.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
    }
    let rt = RefreshToken::new(refresh_token.expose().to_owned());
    let response = client
        .exchange_refresh_token(&rt)
        .add_scopes(oauth.scopes.iter().cloned().map(Scope::new))
        .request_async(http)
        .await;
    match response {
        Ok(token) => Ok(Grant {
            access_token: Secret::new(token.access_token().secret().clone()),
            // Microsoft and Google always send expires_in; a missing one is taken as one hour.
            expires_in: token.expires_in().unwrap_or(Duration::from_secs(3600)),
            refresh_token: token
                .refresh_token()
                .map(|r| Secret::new(r.secret().clone())),
        }),
        Err(e) => Err(classify(e)),
    }
}

type OAuthRequestError = RequestTokenError<
    oauth2::HttpClientError<reqwest::Error>,
    oauth2::StandardErrorResponse<BasicErrorResponseType>,
>;

/// Maps a failed request to a [`TokenError`]. The raw body (which `Parse` errors carry) is never
/// kept: it may hold a token.
fn classify(e: OAuthRequestError) -> TokenError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let error = r.error().to_string();
            let description = r.error_description().map(String::as_str).unwrap_or("");
            classify_server_error(&error, description)
        }
        RequestTokenError::Request(inner) => {
            let timeout = matches!(&inner, oauth2::HttpClientError::Reqwest(r) if r.is_timeout());
            if timeout {
                TokenError::new(ErrorClass::Temporary, "timeout", "the identity provider did not answer in time")
            } else {
                TokenError::new(ErrorClass::Temporary, "network", "the identity provider is unreachable")
            }
        }
        RequestTokenError::Parse(_, _) => TokenError::new(
            ErrorClass::Temporary,
            "bad_response",
            "the identity provider sent a response that is not an OAuth token response (HTTP error or invalid JSON)",
        ),
        RequestTokenError::Other(_) => TokenError::new(
            ErrorClass::Temporary,
            "bad_response",
            "the identity provider sent an unexpected response",
        ),
    }
}

/// Classifies an OAuth error response (protocol.md §1.7). Decisions rest on `error`; the AADSTS
/// code refines them and is kept for the user.
pub fn classify_server_error(error: &str, description: &str) -> TokenError {
    let aadsts = aadsts_code(description);
    let class = match (error, aadsts) {
        ("temporarily_unavailable" | "server_error", _) => ErrorClass::Temporary,
        (_, Some(50033 | 90006 | 90024)) => ErrorClass::Temporary,
        (_, Some(53003 | 530035 | 50057 | 50053 | 50055 | 50196)) => ErrorClass::Configuration,
        (_, Some(65001)) => ErrorClass::Reauthorize,
        ("invalid_grant" | "interaction_required" | "consent_required" | "login_required", _) => {
            ErrorClass::Reauthorize
        }
        _ => ErrorClass::Configuration,
    };
    TokenError {
        class,
        error: error.to_owned(),
        aadsts,
        description: first_sentence(description, error),
    }
}

/// Extracts `NNN` from `AADSTSNNN:` anywhere in a description.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let at = description.find("AADSTS")?;
    let digits: String = description[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The first line of a description, without the `AADSTSNNN:` prefix, cut to 200 characters and
/// free of control characters; the error code when there is no description.
fn first_sentence(description: &str, fallback: &str) -> String {
    let line = description.lines().next().unwrap_or("").trim();
    let line = match line.find(": ") {
        Some(i) if line.starts_with("AADSTS") => &line[i + 2..],
        _ => line,
    };
    let text = if line.is_empty() { fallback } else { line };
    crate::codec::line::sanitize_for_reply(text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_entra_errors() {
        let e = classify_server_error(
            "invalid_grant",
            "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x\r\nCorrelation ID: y",
        );
        assert_eq!(e.class, ErrorClass::Reauthorize);
        assert_eq!(e.aadsts, Some(700082));
        assert_eq!(e.code(), "AADSTS700082");
        assert_eq!(
            e.description,
            "The refresh token has expired due to inactivity."
        );

        let e = classify_server_error(
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
        assert_eq!(
            (e.class, e.aadsts),
            (ErrorClass::Configuration, Some(7000215))
        );
        let e = classify_server_error(
            "invalid_grant",
            "AADSTS53003: Access has been blocked by Conditional Access policies.",
        );
        assert_eq!(e.class, ErrorClass::Configuration);
        let e = classify_server_error("temporarily_unavailable", "");
        assert_eq!(
            (e.class, e.description.as_str()),
            (ErrorClass::Temporary, "temporarily_unavailable")
        );
        let e = classify_server_error("invalid_grant", "Token has been expired or revoked.");
        assert_eq!((e.class, e.aadsts), (ErrorClass::Reauthorize, None));
    }
}
