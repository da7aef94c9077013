//! The account directory: legacy login -> account, and local password verification.

use crate::auth::password;
use crate::config::{AccountAuth, AccountConfig};
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The outcome of checking a local login.
#[derive(Debug)]
pub enum LocalAuth {
    /// The password matched (or the account forwards it unchanged).
    Accepted(Arc<AccountConfig>),
    /// Unknown user or wrong password: the client is not told which.
    Rejected,
}

/// All accounts, indexed by lower-cased login.
pub struct Directory {
    by_login: HashMap<String, Arc<AccountConfig>>,
    hashing: Arc<Semaphore>,
    failure_delay: Duration,
    /// Verified against for unknown users, so that they cost the same time as a wrong password.
    dummy_hash: Secret,
}

impl Directory {
    pub fn new(
        accounts: &[AccountConfig],
        hash_concurrency: usize,
        failure_delay: Duration,
    ) -> Self {
        let by_login = accounts
            .iter()
            .map(|a| (a.login.to_ascii_lowercase(), Arc::new(a.clone())))
            .collect();
        let dummy_hash = Secret::new(
            password::hash(&Secret::new("authrelay-dummy-password"))
                .expect("argon2 with default parameters"),
        );
        Directory {
            by_login,
            hashing: Arc::new(Semaphore::new(hash_concurrency.max(1))),
            failure_delay,
            dummy_hash,
        }
    }

    /// Every account, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<AccountConfig>> {
        self.by_login.values()
    }

    /// The pause before a failed login is answered.
    pub fn failure_delay(&self) -> Duration {
        self.failure_delay
    }

    pub fn account(&self, login: &str) -> Option<&Arc<AccountConfig>> {
        self.by_login.get(&login.to_ascii_lowercase())
    }

    /// Checks a legacy login. Unknown users are hashed against a dummy so that both failures take
    /// the same time; every failure is then delayed by the configured failure delay.
    pub async fn verify(&self, username: &str, password: &Secret) -> LocalAuth {
        let account = self.account(username).cloned();
        if let Some(a) = &account {
            if matches!(a.auth, AccountAuth::Passthrough) && a.password_hash.is_none() {
                return LocalAuth::Accepted(a.clone());
            }
        }
        let phc = account
            .as_ref()
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.clone();
        let matched = match self.hashing.clone().acquire_owned().await {
            Ok(permit) => tokio::task::spawn_blocking(move || {
                let ok = password::verify(&password, &phc);
                drop(permit);
                ok
            })
            .await
            .unwrap_or(false),
            Err(_) => false,
        };
        match account {
            Some(a) if matched => LocalAuth::Accepted(a),
            _ => {
                tokio::time::sleep(self.failure_delay).await;
                LocalAuth::Rejected
            }
        }
    }
}
