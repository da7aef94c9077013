//! Who may log in, and with what upstream credential.
//!
//! - [`password`]: Argon2id hashes of local passwords.
//! - [`accounts`]: the account directory: maps a legacy login to an account and verifies the
//!   local password in constant time, with the same cost for unknown users.
//! - [`oauth`]: token endpoint requests (refresh-token grant) and error classification.
//! - [`tokens`]: the access-token cache with one refresh at a time per account.
//! - [`upstream`]: what the sessions need to log in upstream, whatever the account's mode.

pub mod accounts;
pub mod oauth;
pub mod password;
pub mod tokens;
pub mod upstream;
