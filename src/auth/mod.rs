//! Who may log in, and with what upstream credential.
//!
//! - [`advice`]: what a user can do about an Entra error code or an upstream refusal.
//! - [`accounts`]: the account directory: maps a legacy login to an account and verifies the
//!   local password in constant time, with the same cost for unknown users.
//! - [`oauth`]: token endpoint requests (refresh, authorization code with PKCE, device code,
//!   client credentials) and error classification.
//! - [`authorize`]: what the account page and `authrelay login` share.
//! - [`id_token`]: who signed in, from a sign-in's OpenID Connect ID token.
//! - [`throttle`]: failed logins counted per address and per username.
//! - [`tokens`]: the access-token cache with one refresh at a time per account.
//! - [`upstream`]: what the sessions need to log in upstream, whatever the account's mode.

pub mod accounts;
pub mod advice;
pub mod authorize;
pub mod id_token;
pub mod oauth;
pub mod quota;
pub mod throttle;
pub mod tokens;
pub mod upstream;
