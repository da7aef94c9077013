//! An account's limits across replicas (`[store] backend = "redis"`): before each delivery the
//! session takes (or renews) one of the mailbox's `concurrency` session slots and one of its
//! `messages_per_minute` starts, both kept in Redis on the server's clock, so three replicas
//! together still open at most three sessions to a mailbox Exchange Online limits to three.
//! A slot not renewed within [`SLOT_TTL`] frees itself (a replica that died). Without a shared
//! store, or while Redis cannot be reached, the process's own limits are the only ones (logged
//! once per session).

use crate::config::AccountConfig;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// How long a session slot lasts without renewal (renewed before every message).
const SLOT_TTL: Duration = Duration::from_secs(120);
/// How often a session waiting for a slot asks again.
const SLOT_WAIT: Duration = Duration::from_millis(200);

/// One delivery session's hold on its account's shared limits.
pub(super) struct SharedLimits {
    store: Arc<Store>,
    account: String,
    concurrency: usize,
    per_minute: u32,
    owner: String,
    held: bool,
    warned: bool,
}

impl SharedLimits {
    pub(super) fn new(store: Arc<Store>, account: &AccountConfig) -> SharedLimits {
        SharedLimits {
            store,
            account: account.id.clone(),
            concurrency: account.concurrency,
            per_minute: account.messages_per_minute,
            owner: Store::new_owner(),
            held: false,
            warned: false,
        }
    }

    /// Waits for a session slot and a start within the minute, across replicas.
    pub(super) async fn before_delivery(&mut self) {
        if !self.store.is_shared() {
            return;
        }
        loop {
            let (store, account, owner, limit) = (
                self.store.clone(),
                self.account.clone(),
                self.owner.clone(),
                self.concurrency,
            );
            let taken = tokio::task::spawn_blocking(move || {
                store.take_slot(&account, limit, &owner, SLOT_TTL)
            })
            .await;
            match taken {
                Ok(Ok(true)) => {
                    self.held = true;
                    break;
                }
                Ok(Ok(false)) => tokio::time::sleep(SLOT_WAIT).await,
                Ok(Err(e)) => return self.unavailable(&e.to_string()),
                Err(e) => return self.unavailable(&e.to_string()),
            }
        }
        loop {
            let (store, account, per_minute) =
                (self.store.clone(), self.account.clone(), self.per_minute);
            let start =
                tokio::task::spawn_blocking(move || store.take_start(&account, per_minute)).await;
            match start {
                Ok(Ok(None)) => return,
                Ok(Ok(Some(wait))) => tokio::time::sleep(wait.max(SLOT_WAIT)).await,
                Ok(Err(e)) => return self.unavailable(&e.to_string()),
                Err(e) => return self.unavailable(&e.to_string()),
            }
        }
    }

    fn unavailable(&mut self, why: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(account = %self.account, reason = %why, "the replicas' shared limits cannot be reached: this replica keeps to its own");
        }
    }

    /// Gives the slot back (the session ends).
    pub(super) async fn release(self) {
        if self.held {
            let (store, account, owner) = (self.store, self.account, self.owner);
            let _ = tokio::task::spawn_blocking(move || store.release_slot(&account, &owner)).await;
        }
    }
}
