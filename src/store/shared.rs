//! The store shared by replicas (`[store] backend = "redis"`): opening it, its poller, its
//! health, and the refresh leases. The entries are the file store's, sealed the same way.

use super::*;

impl Store {
    /// Opens the store: the file at `path`, or the Redis server. A Redis server that
    /// cannot be reached now is not fatal: the store starts empty, says why in
    /// [`Store::backend_error`], and a poller thread reads it once it answers (and every change
    /// any replica makes, within [`REDIS_POLL`]).
    pub fn open_with(
        path: &Path,
        key_material: Option<&Secret>,
        redis: Option<&RedisConfig>,
    ) -> Result<Arc<Store>, StoreError> {
        let Some(redis) = redis else {
            return Store::open(path, key_material);
        };
        let backend = redis_store::RedisStore::new(redis)?;
        let mut store = Store::empty(
            PathBuf::from(backend.describe()),
            key_material,
            Some(backend),
        )?;
        // Changes held back by an earlier run (Redis was away when it stopped) go first.
        let journal = Store::open(&journal_path(path), key_material)?;
        for (account, entry) in journal.export() {
            tracing::info!(account = %account, "a change held back before the last stop waits for the shared store");
            store
                .pending
                .lock()
                .expect("store pending")
                .push(Held::Entry(account, entry));
        }
        store.journal = Some(journal);
        match store.reload_if_changed() {
            Ok(()) => store.write_back(),
            Err(e) => tracing::error!("the token store cannot be read now; tokens obtained meanwhile are kept in memory: {e}"),
        }
        let store = Arc::new(store);
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("store-poller".into())
            .spawn(move || loop {
                std::thread::sleep(REDIS_POLL);
                let Some(store) = weak.upgrade() else { return };
                if store.reload_if_changed().is_ok() {
                    store.write_back();
                }
            })
            .map_err(|e| StoreError::Io {
                path: redis.url.clone(),
                message: format!("cannot start the poller: {e}"),
            })?;
        Ok(store)
    }

    /// Why the shared store (Redis) could not be read at the last look, if it could not.
    pub fn backend_error(&self) -> Option<String> {
        self.backend_error
            .lock()
            .expect("store backend error")
            .clone()
    }

    /// True when the entries live in Redis, shared by replicas.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Checks that the backend answers (`authrelay check`): the file's directory, or a Redis
    /// round trip with the configured user.
    pub fn probe(&self) -> Result<(), StoreError> {
        match &self.redis {
            Some(r) => r.ping(),
            None => self.check_directory(),
        }
    }

    /// Takes the account's refresh lease (shared store only; blocking: call it on a blocking
    /// thread). See [`Lease`].
    pub fn lease(&self, account: &str, ttl: Duration) -> Lease {
        match &self.redis {
            Some(r) => r.lease(account, ttl),
            None => Lease::Unavailable(None),
        }
    }

    /// Reads the backend now (blocking: call it on a blocking thread), whatever the last look.
    pub fn reload_now(&self) -> Result<(), StoreError> {
        self.reload_if_changed()
    }

    /// Whether the account's refresh lease is held (by any replica); an error counts as not.
    pub fn lease_held(&self, account: &str) -> bool {
        self.redis
            .as_ref()
            .is_some_and(|r| r.lease_held(account).unwrap_or(false))
    }

    /// Releases a lease this process took.
    pub fn release(&self, account: &str, owner: &str) {
        if let Some(r) = &self.redis {
            r.release(account, owner);
        }
    }

    pub(super) fn reload_redis(&self, redis: &redis_store::RedisStore) -> Result<(), StoreError> {
        let version = redis.version()?;
        if self.view().mark == Some(Mark::Redis(version)) {
            return Ok(());
        }
        let (version, file) = redis.load()?;
        *self.view.write().expect("store view") = Arc::new(Loaded {
            mark: Some(Mark::Redis(version)),
            file,
        });
        Ok(())
    }

    /// Keeps a change the shared store could not take, to write it once it answers: in memory,
    /// and sealed on local disk (the journal) in case this process stops first.
    pub(super) fn hold_back(&self, account: &str, key: Option<&Key>, change: Change) {
        tracing::warn!(account = %account, "the shared store cannot be reached: the change is kept (memory and local journal) and written when it answers again");
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.update(account, key, change.clone()) {
                tracing::error!(account = %account, error = %e, "the held-back change could not be journalled; it is kept in memory only");
            }
        }
        self.pending
            .lock()
            .expect("store pending")
            .push(Held::Change(account.to_owned(), key.cloned(), change));
    }

    /// Writes the held-back changes, oldest first; stops at the first that still fails. Once
    /// all are written the journal is emptied.
    fn write_back(&self) {
        loop {
            let next = self.pending.lock().expect("store pending").first().cloned();
            let Some(held) = next else {
                if let Some(journal) = &self.journal {
                    if !journal.export().is_empty() {
                        let _ = journal.modify(|file| {
                            file.accounts.clear();
                            Ok(())
                        });
                    }
                }
                return;
            };
            let (account, written) = match held {
                Held::Change(account, key, change) => {
                    let r = self.write(&account, key.as_ref(), change).map(drop);
                    (account, r)
                }
                Held::Entry(account, entry) => {
                    let r = self.modify(|file| {
                        merge_newer(file, &account, &entry);
                        Ok(())
                    });
                    (account, r)
                }
            };
            match written {
                Ok(()) => {
                    tracing::info!(account = %account, "a change held back while the shared store was away is written");
                    self.pending.lock().expect("store pending").remove(0);
                }
                Err(e) => {
                    tracing::debug!(account = %account, error = %e, "the held-back change waits");
                    return;
                }
            }
        }
    }

    /// How many changes wait for the shared store.
    pub fn held_back(&self) -> usize {
        self.pending.lock().expect("store pending").len()
    }

    /// Takes or renews a mailbox session slot across replicas (blocking). `Ok(true)` without a
    /// shared store: the process's own limit is the only one. An error means the shared store
    /// cannot be reached; the caller decides.
    pub fn take_slot(
        &self,
        account: &str,
        limit: usize,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match &self.redis {
            Some(r) => r.take_slot(account, limit, owner, ttl),
            None => Ok(true),
        }
    }

    /// Gives a slot back (blocking).
    pub fn release_slot(&self, account: &str, owner: &str) {
        if let Some(r) = &self.redis {
            r.release_slot(account, owner);
        }
    }

    /// Takes a delivery start within `per_minute` across replicas (blocking): `Ok(None)` when
    /// taken (always, without a shared store), else how long to wait.
    pub fn take_start(
        &self,
        account: &str,
        per_minute: u32,
    ) -> Result<Option<Duration>, StoreError> {
        match &self.redis {
            Some(r) => r.take_start(account, per_minute),
            None => Ok(None),
        }
    }

    /// A new owner token for a slot.
    pub fn new_owner() -> String {
        random_owner()
    }

    /// Every entry as stored (sealed), for `authrelay store migrate`.
    pub fn export(&self) -> BTreeMap<String, Entry> {
        self.view().file.accounts.clone()
    }

    /// Puts `entries` in, replacing those of the same accounts; each gets a generation above
    /// both the old and the copied one, so running relays take it. Returns how many.
    pub fn import(&self, entries: BTreeMap<String, Entry>) -> Result<usize, StoreError> {
        let n = entries.len();
        self.modify(|file| {
            for (account, entry) in &entries {
                let old = file.accounts.get(account).map_or(0, |e| e.generation);
                let mut entry = entry.clone();
                entry.generation = old.max(entry.generation) + 1;
                file.accounts.insert(account.clone(), entry);
            }
            Ok(())
        })?;
        Ok(n)
    }
}

/// A change waiting for the shared store.
#[derive(Clone)]
pub(super) enum Held {
    /// Made by this process since it started.
    Change(String, Option<Key>, Change),
    /// Journalled by an earlier run: the sealed entry as it was then.
    Entry(String, Entry),
}

/// The journal of held-back changes beside the configured store file.
fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".held-back");
    path.with_file_name(name)
}

/// Puts the journalled tokens of `held` into `file` if they are newer than what is there and
/// sealed with the same key (a sign-in made meanwhile, with another key, wins).
fn merge_newer(file: &mut StoreFile, account: &str, held: &Entry) {
    let current = file.accounts.entry(account.to_owned()).or_default();
    let newer = current.refresh_token_at.unwrap_or(0) <= held.refresh_token_at.unwrap_or(0);
    let same_key = current.seal.is_none() || current.seal == held.seal;
    if !(newer && same_key) {
        tracing::warn!(account = %account, "a held-back change is older than the shared store's (or sealed with another key): the shared store's is kept");
        return;
    }
    current.seal = held.seal.clone();
    current.check = held.check.clone().or(current.check.take());
    if held.refresh_token.is_some() {
        current.refresh_token = held.refresh_token.clone();
        current.refresh_token_at = held.refresh_token_at;
    }
    if held.access_token.is_some() {
        current.access_token = held.access_token.clone();
        current.access_expires_at = held.access_expires_at;
    }
    current.last_refresh_at = held.last_refresh_at.max(current.last_refresh_at);
    current.generation = current.generation.max(held.generation) + 1;
}
