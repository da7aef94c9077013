//! A live-pipe SMTP session's place among its mailbox's `concurrency` sessions across replicas
//! (`[store] backend = "redis"`): the same slots the spool's delivery sessions take, so devices
//! piped live and queued deliveries together stay within the mailbox's limit. The slot is
//! renewed while the session lives and given back when it ends; a replica that dies loses its
//! slots when they expire.

use crate::config::AccountConfig;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a slot lasts without renewal.
const TTL: Duration = Duration::from_secs(120);
/// How often a held slot is renewed.
const RENEW: Duration = Duration::from_secs(40);
/// How often a login waiting for a slot asks again.
const STEP: Duration = Duration::from_millis(200);

/// A held slot; given back when dropped.
pub struct SessionSlot {
    store: Arc<Store>,
    account: String,
    owner: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SessionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSlot")
            .field("account", &self.account)
            .finish()
    }
}

/// Every slot stayed taken for the whole wait.
#[derive(Debug)]
pub struct Busy;

/// Takes one of `account`'s session slots, waiting up to `wait`. `Ok(None)` without a shared
/// store, or when it cannot be reached (the replica's own limits then hold alone).
pub async fn take(
    store: &Arc<Store>,
    account: &AccountConfig,
    wait: Duration,
) -> Result<Option<SessionSlot>, Busy> {
    if !store.is_shared() {
        return Ok(None);
    }
    let owner = Store::new_owner();
    let deadline = Instant::now() + wait;
    loop {
        let (s, id, o, limit) = (
            store.clone(),
            account.id.clone(),
            owner.clone(),
            account.concurrency,
        );
        match tokio::task::spawn_blocking(move || s.take_slot(&id, limit, &o, TTL)).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) if Instant::now() < deadline => tokio::time::sleep(STEP).await,
            Ok(Ok(false)) => return Err(Busy),
            Ok(Err(e)) => {
                tracing::warn!(account = %account.id, error = %e, "the replicas' session limit cannot be reached: this session counts on this replica only");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        }
    }
    let (s, id, o, limit) = (
        store.clone(),
        account.id.clone(),
        owner.clone(),
        account.concurrency,
    );
    let renewal = tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW).await;
            let (s, id, o) = (s.clone(), id.clone(), o.clone());
            let _ = tokio::task::spawn_blocking(move || s.take_slot(&id, limit, &o, TTL)).await;
        }
    });
    Ok(Some(SessionSlot {
        store: store.clone(),
        account: account.id.clone(),
        owner,
        renewal,
    }))
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.renewal.abort();
        let (store, account, owner) = (
            self.store.clone(),
            std::mem::take(&mut self.account),
            std::mem::take(&mut self.owner),
        );
        tokio::task::spawn_blocking(move || store.release_slot(&account, &owner));
    }
}
