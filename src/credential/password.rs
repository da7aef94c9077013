//! Argon2id hashes of local passwords (PHC strings).

use crate::secret::Secret;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes a password with Argon2id and the crate's recommended parameters, returning a PHC
/// string such as `$argon2id$v=19$m=19456,t=2,p=1$…`.
pub fn hash(password: &Secret) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks that a configured hash is an Argon2 PHC string the relay can verify against.
pub fn check_hash(phc: &Secret) -> Result<(), String> {
    let parsed = PasswordHash::new(phc.expose())
        .map_err(|_| "not a PHC string (make one with `authrelay hash-password`)".to_string())?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "algorithm {} is not supported; use an Argon2id hash from `authrelay hash-password`",
            parsed.algorithm
        ));
    }
    // A hash cut short when copied (`$argon2id$v=19$m=19456,t=2,p=1`) parses, but no password
    // could ever match it.
    if parsed.salt.is_none() || parsed.hash.is_none_or(|h| h.len() < 16) {
        return Err("incomplete: an Argon2 PHC string ends with $SALT$HASH (was it cut short when copied? make one with `authrelay hash-password`)".into());
    }
    if argon2::Params::try_from(&parsed).is_err() {
        return Err("its Argon2 parameters (m, t, p) are out of range; make a new one with `authrelay hash-password`".into());
    }
    Ok(())
}

/// Verifies `password` against `phc` in constant time (the comparison inside `argon2`). This is
/// CPU-heavy by design: call it from a blocking thread, bounded by the account directory.
pub fn verify(password: &Secret, phc: &Secret) -> bool {
    match PasswordHash::new(phc.expose()) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_and_foreign_hashes_are_refused() {
        let good = hash(&Secret::new("pw")).unwrap();
        assert_eq!(check_hash(&Secret::new(good.clone())), Ok(()));
        for bad in [
            "$argon2id$v=19$m=19456,t=2,p=1",
            "$argon2id$v=19$m=19456,t=2,p=1$6aW2CDU7XzDGXu49Mzs85Q",
            "not a hash",
        ] {
            assert!(check_hash(&Secret::new(bad)).is_err(), "{bad}");
        }
        let cut = &good[..good.len() - 30];
        assert!(check_hash(&Secret::new(cut)).is_err(), "{cut}");
    }

    #[test]
    fn hash_then_verify() {
        let pw = Secret::new("correct horse");
        let phc = Secret::new(hash(&pw).unwrap());
        assert!(phc.expose().starts_with("$argon2id$"));
        assert!(check_hash(&phc).is_ok());
        assert!(verify(&pw, &phc));
        assert!(!verify(&Secret::new("correct horsf"), &phc));
        assert!(check_hash(&Secret::new("plaintext")).is_err());
    }
}
