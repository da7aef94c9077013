//! The account directory: legacy login -> account, and local password verification.
//!
//! Argon2id makes a password check cost ~20 MiB and tens of milliseconds on purpose, which is
//! right for a guess and wrong for a scanner that logs in every minute. So each account
//! remembers its last successful check for `password_cache` as an HMAC of the password under a
//! key drawn at start and never stored: a device that sends the same password again is accepted
//! after one HMAC, while any other password still pays the full Argon2 check. Checks of one
//! account run one at a time, so a burst of logins with the same password costs one Argon2
//! check, not one each. A new Directory (start, reload) starts with nothing remembered.

use crate::config::{AccountAuth, AccountConfig, SecurityConfig};
use crate::credential::password;
use crate::secret::Secret;
use ring::hmac;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The outcome of checking a local login.
#[derive(Debug)]
pub enum LocalAuth {
    /// The password matched (or the account forwards it unchanged).
    Accepted(Arc<AccountConfig>),
    /// Unknown user or wrong password: the client is not told which.
    Rejected,
}

/// One account and what its password checks remember.
struct Entry {
    config: Arc<AccountConfig>,
    /// HMAC of the password of the last successful check, and when it was made.
    verified: Mutex<Option<(hmac::Tag, Instant)>>,
    /// Held while this account's password is checked.
    checking: tokio::sync::Mutex<()>,
}

/// All accounts, indexed by lower-cased login.
pub struct Directory {
    by_login: HashMap<String, Entry>,
    hashing: Arc<Semaphore>,
    failure_delay: Duration,
    /// Verified against for unknown users, so that they cost the same time as a wrong password.
    dummy_hash: Secret,
    /// Keys the remembered password HMACs; random per directory, never stored or logged.
    cache_key: hmac::Key,
    password_cache: Duration,
    /// Argon2 checks run so far.
    hashes: AtomicU64,
}

impl Directory {
    /// The accounts of a configuration, with the `[security]` settings for checking them.
    pub fn new(accounts: &[AccountConfig], security: &SecurityConfig) -> Self {
        let by_login = accounts
            .iter()
            .map(|a| {
                let entry = Entry {
                    config: Arc::new(a.clone()),
                    verified: Mutex::new(None),
                    checking: tokio::sync::Mutex::new(()),
                };
                (a.login.to_ascii_lowercase(), entry)
            })
            .collect();
        let dummy_hash = Secret::new(
            password::hash(&Secret::new("authrelay-dummy-password"))
                .expect("argon2 with default parameters"),
        );
        let rng = ring::rand::SystemRandom::new();
        Directory {
            by_login,
            hashing: Arc::new(Semaphore::new(security.hash_concurrency.max(1))),
            failure_delay: security.failure_delay,
            dummy_hash,
            cache_key: hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                .expect("the system random number generator"),
            password_cache: security.password_cache,
            hashes: AtomicU64::new(0),
        }
    }

    /// Every account, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<AccountConfig>> {
        self.by_login.values().map(|e| &e.config)
    }

    /// The pause before a failed login is answered.
    pub fn failure_delay(&self) -> Duration {
        self.failure_delay
    }

    /// The account whose login is `login` (case-insensitive).
    pub fn account(&self, login: &str) -> Option<&Arc<AccountConfig>> {
        self.by_login
            .get(&login.to_ascii_lowercase())
            .map(|e| &e.config)
    }

    /// True if `password` is the one this account's last successful check, within the cache
    /// lifetime, was made with (HMAC compared in constant time).
    fn remembered(&self, entry: &Entry, password: &Secret) -> bool {
        let verified = entry.verified.lock().expect("not poisoned");
        verified.as_ref().is_some_and(|(tag, at)| {
            at.elapsed() < self.password_cache
                && hmac::verify(&self.cache_key, password.expose().as_bytes(), tag.as_ref()).is_ok()
        })
    }

    fn remember(&self, entry: &Entry, password: &Secret) {
        if self.password_cache.is_zero() {
            return;
        }
        let tag = hmac::sign(&self.cache_key, password.expose().as_bytes());
        *entry.verified.lock().expect("not poisoned") = Some((tag, Instant::now()));
    }

    /// How many Argon2 checks this directory has run.
    pub fn hashes_computed(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// Argon2 check on a blocking thread, bounded by `hash_concurrency`.
    async fn argon2(&self, password: &Secret, phc: Secret) -> bool {
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let password = password.clone();
        match self.hashing.clone().acquire_owned().await {
            Ok(permit) => tokio::task::spawn_blocking(move || {
                let ok = password::verify(&password, &phc);
                drop(permit);
                ok
            })
            .await
            .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Checks a legacy login. Unknown users are hashed against a dummy so that both failures take
    /// the same time; every failure is then delayed by the configured failure delay.
    pub async fn verify(&self, username: &str, password: &Secret) -> LocalAuth {
        let entry = self.by_login.get(&username.to_ascii_lowercase());
        let matched = match entry {
            Some(e)
                if matches!(e.config.auth, AccountAuth::Passthrough)
                    && e.config.password_hash.is_none() =>
            {
                return LocalAuth::Accepted(e.config.clone());
            }
            Some(e) => {
                if self.remembered(e, password) {
                    return LocalAuth::Accepted(e.config.clone());
                }
                let checking = e.checking.lock().await;
                // A check of this account that finished while we waited may have been ours.
                if self.remembered(e, password) {
                    return LocalAuth::Accepted(e.config.clone());
                }
                let phc = e.config.password_hash.clone();
                let ok = self
                    .argon2(password, phc.unwrap_or_else(|| self.dummy_hash.clone()))
                    .await;
                if ok && e.config.password_hash.is_some() {
                    self.remember(e, password);
                }
                drop(checking);
                ok && e.config.password_hash.is_some()
            }
            None => {
                self.argon2(password, self.dummy_hash.clone()).await;
                false
            }
        };
        match entry {
            Some(e) if matched => LocalAuth::Accepted(e.config.clone()),
            _ => {
                tokio::time::sleep(self.failure_delay).await;
                LocalAuth::Rejected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "scanner-local-password";

    fn directory(cache: Duration) -> Arc<Directory> {
        let hash = password::hash(&Secret::new(PASSWORD)).unwrap();
        let toml = format!(
            "[listener.smtp]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:2525\"\nupstream = \"smtp.example.com:587\"\nupstream_tls = \"starttls\"\n\n[account.scanner]\nlogin = \"Scanner@Contoso.com\"\npassword_hash = \"{hash}\"\nprovider = \"custom\"\nclient_id = \"c\"\ntoken_url = \"https://idp.example.com/token\"\n"
        );
        let mut config = crate::config::from_toml_str(&toml).unwrap();
        config.security.failure_delay = Duration::ZERO;
        config.security.password_cache = cache;
        Arc::new(Directory::new(&config.accounts, &config.security))
    }

    async fn accepted(d: &Directory, user: &str, password: &str) -> bool {
        matches!(
            d.verify(user, &Secret::new(password)).await,
            LocalAuth::Accepted(_)
        )
    }

    #[tokio::test]
    async fn a_remembered_password_skips_argon2_and_any_other_password_does_not() {
        let d = directory(Duration::from_secs(3600));
        assert!(accepted(&d, "scanner@contoso.com", PASSWORD).await);
        assert_eq!(d.hashes_computed(), 1);
        assert!(accepted(&d, "SCANNER@contoso.com", PASSWORD).await);
        assert_eq!(
            d.hashes_computed(),
            1,
            "the second login with the same password"
        );
        assert!(!accepted(&d, "scanner@contoso.com", "scanner-local-passwore").await);
        assert!(!accepted(&d, "scanner@contoso.com", "").await);
        assert_eq!(
            d.hashes_computed(),
            3,
            "wrong passwords always pay for Argon2"
        );
        assert!(!accepted(&d, "nobody@contoso.com", PASSWORD).await);
        assert_eq!(d.hashes_computed(), 4, "unknown users too");
        assert!(accepted(&d, "scanner@contoso.com", PASSWORD).await);
        assert_eq!(
            d.hashes_computed(),
            4,
            "a failure does not forget the right password"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_logins_with_one_password_costs_one_check() {
        let d = directory(Duration::from_secs(3600));
        let logins: Vec<_> = (0..50)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { accepted(&d, "scanner@contoso.com", PASSWORD).await })
            })
            .collect();
        for login in logins {
            assert!(login.await.unwrap());
        }
        assert_eq!(d.hashes_computed(), 1);
    }

    #[tokio::test]
    async fn the_memory_expires_and_can_be_turned_off() {
        let d = directory(Duration::from_millis(200));
        assert!(accepted(&d, "scanner@contoso.com", PASSWORD).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(accepted(&d, "scanner@contoso.com", PASSWORD).await);
        assert_eq!(
            d.hashes_computed(),
            2,
            "checked again after the cache lifetime"
        );

        let d = directory(Duration::ZERO);
        for _ in 0..3 {
            assert!(accepted(&d, "scanner@contoso.com", PASSWORD).await);
        }
        assert_eq!(
            d.hashes_computed(),
            3,
            "password_cache_secs = 0 checks every login"
        );
    }
}
