//! Who signed in: the OpenID Connect ID token that comes with a sign-in's token response.
//!
//! A sign-in asks for the `openid` scope too (with `profile` at Microsoft, `email` at Google), so
//! the token endpoint answers with an ID token naming the user (OpenID Connect Core 1.0 §3.1.3.3;
//! learn.microsoft.com/entra/identity-platform/id-token-claims-reference: `preferred_username`
//! needs `profile`; developers.google.com/identity/openid-connect/openid-connect: `email`). The
//! relay reads it only to tell an admin who signed in as someone other than the mailbox. Its
//! signature is not checked: it came straight from the token endpoint over TLS, which OpenID
//! Connect Core §3.1.3.7 (6) allows in place of the signature, and nothing is granted on it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::basic::BasicTokenType;
use oauth2::{ExtraTokenFields, StandardTokenResponse};
use serde::{Deserialize, Serialize};

/// The token response fields beyond RFC 6749's that the relay reads.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    /// The ID token (a JWT), present when `openid` was among the scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// An ID token is an identity assertion: a Debug print of a token response must not show it,
/// as the `oauth2` crate keeps its access and refresh tokens out of Debug.
impl std::fmt::Debug for IdTokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.id_token {
            Some(_) => "IdTokenField([REDACTED])",
            None => "IdTokenField(None)",
        })
    }
}

impl ExtraTokenFields for IdTokenField {}

/// A token response as the relay reads it.
pub type OAuthResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// The scopes a sign-in adds so that its answer names the user (none for a custom provider,
/// which may not speak OpenID Connect).
pub fn sign_in_scopes(provider: crate::config::Provider) -> &'static [&'static str] {
    use crate::config::Provider;
    match provider {
        Provider::Microsoft => &["openid", "profile"],
        Provider::Google => &["openid", "email"],
        Provider::Custom => &[],
    }
}

/// The user an ID token names: `preferred_username` (Entra, usually the UPN), else `upn`, else
/// `email`. `None` for anything that is not a readable JWT.
pub fn user_of(id_token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Claims {
        preferred_username: Option<String>,
        upn: Option<String>,
        email: Option<String>,
    }
    let payload = id_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let c: Claims = serde_json::from_slice(&bytes).ok()?;
    let user = c.preferred_username.or(c.upn).or(c.email)?;
    let user = crate::codec::line::sanitize_for_reply(user.trim(), 254);
    (!user.is_empty()).then_some(user)
}

/// What to tell the admin when `signed_in_as` is not `mailbox`, or `None` when it is.
pub fn mismatch(signed_in_as: &str, mailbox: &str) -> Option<String> {
    if signed_in_as.eq_ignore_ascii_case(mailbox) {
        return None;
    }
    Some(format!(
        "signed in as {signed_in_as}, not as the account's mailbox {mailbox}: the mailbox server accepts this token for {mailbox} only if {signed_in_as} has Full Access and Send As on it (a shared mailbox); otherwise sign in again as {mailbox}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn the_user_is_read_from_the_claims_entra_and_google_send() {
        assert_eq!(
            user_of(&jwt(
                r#"{"preferred_username":"Bob@Contoso.com","upn":"x"}"#
            ))
            .as_deref(),
            Some("Bob@Contoso.com")
        );
        assert_eq!(
            user_of(&jwt(r#"{"email":"a@gmail.com"}"#)).as_deref(),
            Some("a@gmail.com")
        );
        assert_eq!(user_of(&jwt(r#"{"sub":"1"}"#)), None);
        assert_eq!(user_of("not a jwt"), None);
        assert_eq!(user_of("a.!!!.c"), None);
        assert!(mismatch("SCANNER@contoso.com", "scanner@contoso.com").is_none());
        let said = mismatch("admin@contoso.com", "scanner@contoso.com").unwrap();
        assert!(
            said.starts_with("signed in as admin@contoso.com, not as"),
            "{said}"
        );
    }
}
