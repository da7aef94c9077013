//! Token endpoint requests (RFC 6749 refresh-token grant, through the `oauth2` crate) and the
//! classification of their failures (RFC 6749 §5.2; Microsoft Entra error codes, learn.microsoft.com/entra/identity-platform/reference-error-codes).

use super::id_token::{self, OAuthResponse};
use crate::config::Endpoints;
use crate::credential::assertion::CertificateSigner;
use crate::secret::Secret;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    TokenResponse, TokenUrl,
};
use std::fmt;
use std::time::Duration;

/// A successful token response.
#[derive(Debug)]
pub struct Grant {
    /// The access token.
    pub access_token: Secret,
    /// How long it is valid (capped at 24 hours).
    pub expires_in: Duration,
    /// Present when the provider rotated the refresh token.
    pub refresh_token: Option<Secret>,
    /// The user the answer's ID token names (a sign-in asks for one; see [`id_token`]).
    pub signed_in_as: Option<String>,
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
    /// What kind of failure this is, which decides the reply.
    pub class: ErrorClass,
    /// The OAuth `error` value (`invalid_grant`, …) or a short tag (`network`, `timeout`, …).
    pub error: String,
    /// The Microsoft Entra code (`AADSTS700082` → 700082), when the description carries one.
    pub aadsts: Option<u32>,
    /// The provider's description, sanitized.
    pub description: String,
}

impl TokenError {
    /// A failure of `class` with OAuth error `error` and its description.
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

/// OAuth `error` values that name their own cause (RFC 6749 §5.2, RFC 8628 §3.5, OpenID
/// Connect Core §3.1.2.6): an endpoint that sends one is the right endpoint.
const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "authorization_pending",
    "slow_down",
    "expired_token",
    "temporarily_unavailable",
    "server_error",
    "interaction_required",
    "consent_required",
    "login_required",
];

impl TokenError {
    /// Names the endpoint asked and the configuration keys that chose it, when the failure
    /// does not come from a recognised OAuth answer (unreachable, an HTML 404, an unknown
    /// `error`): those are what a wrong `authority`, `tenant` or `token_url` looks like.
    fn at_endpoint(mut self, url: &str, keys: &str) -> TokenError {
        if self.aadsts.is_some() || OAUTH_ERRORS.contains(&self.error.as_str()) {
            return self;
        }
        // Only scheme, host and path: a query could carry something not meant for a log.
        let url = url.split(['?', '#']).next().unwrap_or("");
        let url = crate::codec::line::sanitize_for_reply(url, 120);
        self.description = format!("{} at {url} (check {keys})", self.description);
        self
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

fn bad_url(what: &str) -> TokenError {
    TokenError::new(
        ErrorClass::Configuration,
        "endpoint_url",
        format!("the {what} URL is not valid"),
    )
}

/// The `oauth2` crate's client as the relay uses it: RFC 6749 errors, token responses that may
/// carry an ID token, and only the token endpoint set up front.
type OAuthClient = Client<
    BasicErrorResponse,
    OAuthResponse,
    BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The crate's client for `ep`, with the token endpoint and (if any) the client secret.
fn client(ep: &Endpoints) -> Result<OAuthClient, TokenError> {
    let token_url = TokenUrl::new(ep.token_url.clone()).map_err(|_| bad_url("token"))?;
    let mut client = Client::new(ClientId::new(ep.client_id.clone()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_url);
    if let Some(secret) = &ep.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
    }
    Ok(client)
}

/// A sign-in's scopes: the account's, and those that make the answer name the user.
fn sign_in_scopes(ep: &Endpoints) -> impl Iterator<Item = Scope> + '_ {
    let extra = id_token::sign_in_scopes(ep.provider)
        .iter()
        .filter(|s| !ep.scopes.iter().any(|have| have == *s))
        .map(|s| (*s).to_owned());
    ep.scopes.iter().cloned().chain(extra).map(Scope::new)
}

/// The longest access-token lifetime believed: Microsoft issues 60-90 minutes, Google one hour.
/// A larger `expires_in` (up to 2^64-1 s from a broken or hostile endpoint) is clamped to this,
/// so no instant or time stamp computed from it can overflow.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token the relay will put in an XOAUTH2 string, a header or the store: RFC 6750 §2.1's
/// b64token characters, generously read as visible ASCII without `"`, `\` and `,`. Anything else
/// (a control character, a space, non-ASCII) would corrupt the SASL string or the store line.
fn plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 16 * 1024
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b','))
}

/// The grant in a token response, or why the response is unusable.
fn grant(token: &OAuthResponse) -> Result<Grant, TokenError> {
    let bad = |what: &str| {
        TokenError::new(
            ErrorClass::Temporary,
            "bad_response",
            format!("the identity provider sent {what}"),
        )
    };
    let access = token.access_token().secret();
    if !plausible_token(access) {
        return Err(bad("an access token with characters no token has"));
    }
    let refresh = token.refresh_token().map(|r| r.secret());
    if refresh.is_some_and(|r| !plausible_token(r)) {
        return Err(bad("a refresh token with characters no token has"));
    }
    Ok(Grant {
        access_token: Secret::new(access.clone()),
        // Microsoft and Google always send expires_in; a missing one is taken as one hour.
        expires_in: token
            .expires_in()
            .unwrap_or(Duration::from_secs(3600))
            .min(MAX_TOKEN_LIFETIME),
        refresh_token: refresh.map(|r| Secret::new(r.clone())),
        signed_in_as: token
            .extra_fields()
            .id_token
            .as_deref()
            .and_then(id_token::user_of),
    })
}

/// Reads a token endpoint's JSON answer as the relay does (for the fuzz target and tests).
pub fn grant_from_json(body: &[u8]) -> Result<Grant, TokenError> {
    let response: OAuthResponse = serde_json::from_slice(body).map_err(|_| {
        TokenError::new(
            ErrorClass::Temporary,
            "bad_response",
            "the identity provider sent a response that is not an OAuth token response",
        )
    })?;
    grant(&response)
}

/// Exchanges a refresh token for an access token.
pub async fn refresh(
    http: &reqwest::Client,
    ep: &Endpoints,
    refresh_token: &Secret,
) -> Result<Grant, TokenError> {
    let rt = RefreshToken::new(refresh_token.expose().to_owned());
    client(ep)?
        .exchange_refresh_token(&rt)
        .add_scopes(ep.scopes.iter().cloned().map(Scope::new))
        .request_async(http)
        .await
        .map_err(|e| classify(e).at_endpoint(&ep.token_url, ep.token_url_from))
        .and_then(|t| grant(&t))
}

/// The client-credentials grant (app-only), with the client secret or a signed certificate
/// assertion (RFC 7523).
pub async fn client_credentials(
    http: &reqwest::Client,
    ep: &Endpoints,
    signer: Option<&CertificateSigner>,
) -> Result<Grant, TokenError> {
    let mut ep = ep.clone();
    let assertion = match signer {
        Some(s) => {
            ep.client_secret = None;
            Some(
                s.assertion(&ep.client_id, &ep.token_url)
                    .map_err(|e| TokenError::new(ErrorClass::Configuration, "certificate", e))?,
            )
        }
        None => None,
    };
    let client = client(&ep)?;
    let mut request = client
        .exchange_client_credentials()
        .add_scopes(ep.scopes.iter().cloned().map(Scope::new));
    if let Some(a) = &assertion {
        request = request
            .add_extra_param(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .add_extra_param("client_assertion", a.expose().to_owned());
    }
    request
        .request_async(http)
        .await
        .map_err(|e| classify(e).at_endpoint(&ep.token_url, ep.token_url_from))
        .and_then(|t| grant(&t))
}

/// A started authorization-code request: send the browser to `url`; keep `state` and
/// `verifier` (both secret) until the redirect comes back.
pub struct AuthorizationRequest {
    /// Where to send the browser.
    pub url: String,
    /// The `state` value that ties the redirect to this request.
    pub state: Secret,
    /// The PKCE code verifier (RFC 7636), kept until the code comes back.
    pub verifier: Secret,
}

impl std::fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationRequest([REDACTED])")
    }
}

/// Builds the authorization URL with PKCE (S256) and a random `state`. `login_hint` pre-fills
/// the account's mailbox on the sign-in page.
pub fn authorization_request(
    ep: &Endpoints,
    redirect_uri: &str,
    login_hint: Option<&str>,
) -> Result<AuthorizationRequest, TokenError> {
    let auth_url = AuthUrl::new(ep.authorize_url.clone()).map_err(|_| bad_url("authorize"))?;
    let redirect = RedirectUrl::new(redirect_uri.to_owned()).map_err(|_| bad_url("redirect"))?;
    let client = client(ep)?
        .set_auth_uri(auth_url)
        .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(sign_in_scopes(ep))
        .set_pkce_challenge(challenge)
        // Google issues a refresh token only with offline access and a fresh consent.
        .add_extra_param("access_type", "offline")
        .add_extra_param("prompt", "consent");
    if let Some(hint) = login_hint {
        request = request.add_extra_param("login_hint", hint.to_owned());
    }
    let (url, state) = request.url();
    Ok(AuthorizationRequest {
        url: url.to_string(),
        state: Secret::new(state.secret().clone()),
        verifier: Secret::new(verifier.secret().clone()),
    })
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    ep: &Endpoints,
    redirect_uri: &str,
    code: &Secret,
    verifier: &Secret,
) -> Result<Grant, TokenError> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned()).map_err(|_| bad_url("redirect"))?;
    client(ep)?
        .set_redirect_uri(redirect)
        .exchange_code(AuthorizationCode::new(code.expose().to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose().to_owned()))
        .request_async(http)
        .await
        .map_err(|e| classify(e).at_endpoint(&ep.token_url, ep.token_url_from))
        .and_then(|t| grant(&t))
}

/// The longest a device-code sign-in is waited for.
const DEVICE_CODE_MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// What the user must do to finish a device-code sign-in.
#[derive(Debug)]
pub struct DevicePrompt {
    /// Where the user enters the code.
    pub verification_uri: String,
    /// The code to enter.
    pub user_code: String,
    /// How long the code is valid.
    pub expires_in: Duration,
}

/// The device-code flow (RFC 8628): asks for a code, shows it through `prompt`, then polls
/// (authorization_pending waits, slow_down adds 5 s) until the user signs in, declines or the
/// code expires.
pub async fn device_flow(
    http: &reqwest::Client,
    ep: &Endpoints,
    prompt: impl FnOnce(&DevicePrompt),
) -> Result<Grant, TokenError> {
    let device_url = ep.device_url.clone().ok_or_else(|| {
        TokenError::new(
            ErrorClass::Configuration,
            "no_device_flow",
            "this provider has no device-code flow for these scopes; use the account page or `authrelay login --paste`",
        )
    })?;
    let device = DeviceAuthorizationUrl::new(device_url.clone()).map_err(|_| bad_url("device"))?;
    let client = client(ep)?.set_device_authorization_url(device);
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(sign_in_scopes(ep))
        .request_async(http)
        .await
        .map_err(|e| classify(e).at_endpoint(&device_url, ep.device_url_from))?;
    prompt(&DevicePrompt {
        verification_uri: details.verification_uri().to_string(),
        user_code: details.user_code().secret().clone(),
        expires_in: details.expires_in(),
    });
    client
        .exchange_device_access_token(&details)
        // Bounded by us, not by the provider's expires_in: a device code lasts 15 minutes at
        // Microsoft (RFC 8628 §3.2), and a huge value must not keep the command polling forever.
        .request_async(
            http,
            tokio::time::sleep,
            Some(details.expires_in().min(DEVICE_CODE_MAX_WAIT)),
        )
        .await
        .map_err(|e| classify(e).at_endpoint(&ep.token_url, ep.token_url_from))
        .and_then(|t| grant(&t))
}

type OAuthRequestError<T> =
    RequestTokenError<oauth2::HttpClientError<reqwest::Error>, oauth2::StandardErrorResponse<T>>;

/// Maps a failed request to a [`TokenError`]. The raw body (which `Parse` errors carry) is never
/// kept: it may hold a token.
fn classify<T: oauth2::ErrorResponseType + fmt::Display>(e: OAuthRequestError<T>) -> TokenError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let error = r.error().to_string();
            let description = r.error_description().map(String::as_str).unwrap_or("");
            classify_server_error(&error, description)
        }
        RequestTokenError::Request(inner) => {
            let timeout = matches!(&inner, oauth2::HttpClientError::Reqwest(r) if r.is_timeout());
            if timeout {
                TokenError::new(
                    ErrorClass::Temporary,
                    "timeout",
                    "the identity provider did not answer in time",
                )
            } else {
                TokenError::new(
                    ErrorClass::Temporary,
                    "network",
                    "the identity provider is unreachable",
                )
            }
        }
        RequestTokenError::Parse(_, _) => TokenError::new(
            ErrorClass::Temporary,
            "bad_response",
            "the identity provider sent no OAuth token response (an HTTP error or not JSON)",
        ),
        RequestTokenError::Other(_) => TokenError::new(
            ErrorClass::Temporary,
            "bad_response",
            "the identity provider sent an unexpected response",
        ),
    }
}

/// Classifies an OAuth error response (RFC 6749 §5.2; Microsoft Entra error codes, learn.microsoft.com/entra/identity-platform/reference-error-codes). Decisions rest on `error`; the AADSTS
/// code refines them and is kept for the user.
pub fn classify_server_error(error: &str, description: &str) -> TokenError {
    let aadsts = aadsts_code(description);
    let class = match (error, aadsts) {
        ("temporarily_unavailable" | "server_error", _) => ErrorClass::Temporary,
        // The device-code flow's end states: the user must start again.
        ("expired_token" | "access_denied", _) => ErrorClass::Reauthorize,
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
        error: error_code_text(error),
        aadsts,
        description: first_sentence(description, error),
    }
}

/// The OAuth `error` value as the relay repeats it: RFC 6749 §5.2 allows only %x20-21,
/// %x23-5B and %x5D-7E; anything else (a CR LF that would add a reply or log line, a quote)
/// becomes `?`, and the value is cut to 64 characters.
fn error_code_text(error: &str) -> String {
    let text: String = error
        .chars()
        .take(64)
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect();
    if text.is_empty() {
        "unknown_error".to_owned()
    } else {
        text
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

/// The first line of a description, without the `AADSTSNNN:` prefix, at most 400 bytes (ended
/// at a word, never inside one) and free of control characters; the error code when there is
/// no description. Replies shorten it further the same way; the account page shows it whole.
fn first_sentence(description: &str, fallback: &str) -> String {
    let line = description.lines().next().unwrap_or("").trim();
    let line = match line.find(": ") {
        Some(i) if line.starts_with("AADSTS") => &line[i + 2..],
        _ => line,
    };
    let text = if line.is_empty() { fallback } else { line };
    crate::codec::line::shorten(text, 400)
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

    #[test]
    fn a_wrong_endpoint_is_named_with_the_keys_that_chose_it() {
        let url = "https://login.example/wrong/contoso/oauth2/v2.0/token?x=1";
        let e = classify_server_error("not_found", "").at_endpoint(url, "authority and tenant");
        assert_eq!(
            e.to_string(),
            "not_found at https://login.example/wrong/contoso/oauth2/v2.0/token (check authority and tenant) (not_found)"
        );
        // An answer the endpoint understood names its own cause.
        let e = classify_server_error("invalid_client", "AADSTS7000215: Invalid client secret.");
        assert_eq!(e.clone().at_endpoint(url, "token_url"), e);
        let e = classify_server_error("invalid_grant", "revoked");
        assert_eq!(e.clone().at_endpoint(url, "token_url"), e);
    }
}
