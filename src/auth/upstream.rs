//! The credential a session presents upstream, whatever the account's mode.

use crate::auth::oauth::TokenError;
use crate::auth::tokens::{AccessToken, TokenCache};
use crate::codec::sasl::{BearerMechanism, Credentials};
use crate::config::{AccountAuth, AccountConfig};
use crate::secret::Secret;
use std::sync::Arc;

#[derive(Debug)]
/// What the relay presents upstream for an account.
pub enum UpstreamCredential {
    /// A bearer token for `user` (the mailbox), sent with XOAUTH2 or OAUTHBEARER.
    Bearer {
        /// The mailbox the token is for.
        user: String,
        /// The access token.
        token: Arc<AccessToken>,
        /// How it is presented (XOAUTH2 or OAUTHBEARER).
        mechanism: BearerMechanism,
    },
    /// SASL PLAIN or LOGIN with a password (app password, or the client's own in pass-through).
    Password {
        /// The upstream username.
        user: String,
        /// The password sent with it.
        password: Secret,
    },
}

/// Gets what the account needs upstream. `client` is what the device sent, when a device is
/// logging in (the spool delivers without one: then a pass-through account has nothing to
/// send). For OAuth accounts `rejected` names a token that the server just refused, so that a
/// fresh one is fetched.
pub async fn credential(
    account: &AccountConfig,
    client: Option<&Credentials>,
    tokens: &TokenCache,
    rejected: Option<&Arc<AccessToken>>,
) -> Result<UpstreamCredential, TokenError> {
    match &account.auth {
        AccountAuth::OAuth(oauth) => {
            let password = client.map(|c| &c.password);
            let token = tokens.access_token(account, password, rejected).await?;
            Ok(UpstreamCredential::Bearer {
                user: account.mailbox.clone(),
                token,
                mechanism: oauth.mechanism,
            })
        }
        AccountAuth::AppPassword(password) => Ok(UpstreamCredential::Password {
            user: account.mailbox.clone(),
            password: password.clone(),
        }),
        AccountAuth::Passthrough => match client {
            Some(c) => Ok(UpstreamCredential::Password {
                user: c.username.clone(),
                password: c.password.clone(),
            }),
            None => Err(TokenError::new(
                crate::auth::oauth::ErrorClass::Configuration,
                "passthrough",
                "a pass-through account has no credential of its own",
            )),
        },
    }
}
