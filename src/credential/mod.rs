//! Credential formats that the configuration checks and the login uses, with no knowledge of
//! accounts or sessions:
//!
//! - [`password`]: Argon2id hashes of local passwords (RFC 9106, PHC string format).
//! - [`assertion`]: signed certificate assertions for client credentials (RFC 7523).

pub mod assertion;
pub mod password;
