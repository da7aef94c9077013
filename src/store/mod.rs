//! The token store: one local JSON file with every account's tokens, sealed at rest.
//!
//! Each account's secret fields (refresh token, access token, client secret) are encrypted with
//! XChaCha20-Poly1305 under a 256-bit key, with `authrelay-store-v1`, the account and the field
//! name as associated data, so a value cannot be moved to another account or field. The key is
//! either
//! - derived from the account's local password (Argon2id, random salt, parameters stored in the
//!   entry): the default; tokens can be read only while someone who knows the password logs in;
//! - or derived from a store key file (`[store] key_file`), for unattended sidecars: then the
//!   relay can refresh in the background before any client logs in.
//!
//! Metadata (expiry, last refresh, last error, client id, tenant) is stored in the clear: it is
//! what the account page and `/readyz` show.
//!
//! Writes take an exclusive lock on `PATH.lock` (so `authrelay login` and a running relay never
//! interleave), re-read the file, apply the change, write `PATH.tmp`, fsync it, rename it over
//! `PATH` and fsync the directory: a crash at any moment leaves the old or the new store.
//!
//! **A live session never waits on the disk.** Reads come from an in-memory view that a writer
//! replaces only once its write is done, so a reader never waits for `flock` or `fsync`; changes
//! by other processes (`authrelay login`, another replica) are noticed by the file's size, inode
//! and modification time, looked at no more than once a second. Async code writes through
//! [`Store::update_async`] and [`Store::record_error_async`], which run the write on a blocking
//! thread: a store held locked by another process stalls that write, not the runtime.

mod crypto;
pub mod keyfile;
mod redis_store;
mod shared;
#[cfg(test)]
mod tests;
mod write;

pub use crypto::{Key, Seal};
pub use redis_store::{Lease, RedisConfig};

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: u32 = 1;

/// How often readers look at the file for changes made by other processes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the poller asks Redis whether another replica wrote.
pub const REDIS_POLL: Duration = Duration::from_millis(200);

/// A random owner token for a lease.
fn random_owner() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its directory could not be read or written.
    #[error("token store {path}: {message}")]
    Io {
        /// The store file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The file is not a store this version can read.
    #[error("token store {path} is not a valid store file: {message}")]
    Corrupt {
        /// The store file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entry was sealed with another key (another local password, or the store key changed).
    #[error("the stored tokens of account {0} were sealed with another key (was the local password or the store key changed?); authorize the account again")]
    WrongKey(String),
}

/// One sealed value: random 24-byte nonce and ciphertext with tag, both base64.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    nonce: String,
    ct: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed")
    }
}

/// One account's entry as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Entry {
    /// How the secret fields are sealed; absent while the entry holds only metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
    /// Bumped at every change of a token or of the app settings: readers compare it to decide
    /// whether their cached tokens are still current.
    #[serde(default)]
    pub generation: u64,
    /// A fixed value sealed with the entry's key: tells a wrong key (another password with the
    /// same salt) from a right one before anything is overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    check: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<Sealed>,
    /// Unix seconds when the stored access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<u64>,
    /// Unix seconds when the refresh token was obtained (authorization) or last rotated/used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the account was last authorized (Unix seconds).
    pub authorized_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When its token was last refreshed (Unix seconds).
    pub last_refresh_at: Option<u64>,
    /// The last failed token request: code and description, never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the last error happened (Unix seconds).
    pub last_error_at: Option<u64>,
    /// When the spool first delivered a message for this account (Unix seconds): from then on a
    /// refused grant holds its mail instead of refusing devices (see README, "What a device
    /// may be told").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<u64>,
    /// App settings entered on the account page (the configuration's own values win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A tenant entered on the account page.
    pub tenant: Option<String>,
    /// Who the last sign-in was as, when its answer said (an ID token's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_in_as: Option<String>,
}

const CHECK_VALUE: &str = "authrelay";

impl Entry {
    /// True when `key` is the key this entry's secrets are sealed with.
    fn sealed_with(&self, account: &str, key: &Key) -> bool {
        self.seal.as_ref() == Some(&key.seal)
            && self.check.as_ref().is_some_and(|c| {
                key.open(account, "check", c)
                    .is_some_and(|v| v.expose() == CHECK_VALUE)
            })
    }

    /// True when a refresh token is stored.
    pub fn has_refresh_token(&self) -> bool {
        self.refresh_token.is_some()
    }
    /// True when a client secret is stored.
    pub fn has_client_secret(&self) -> bool {
        self.client_secret.is_some()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    #[serde(default)]
    accounts: BTreeMap<String, Entry>,
}

/// The secrets of one entry, opened with its key.
#[derive(Debug, Default)]
pub struct Opened {
    /// The refresh token.
    pub refresh_token: Option<Secret>,
    /// The access token and when it expires.
    pub access_token: Option<(Secret, SystemTime)>,
    /// A client secret entered on the account page.
    pub client_secret: Option<Secret>,
}

/// A change to one entry. Secret fields are sealed with the key given to [`Store::update`].
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// A new refresh token to keep.
    pub refresh_token: Option<Secret>,
    /// A new access token and its expiry.
    pub access_token: Option<(Secret, SystemTime)>,
    /// Drop the stored access token (it was refused upstream).
    pub clear_access_token: bool,
    /// A client secret to keep.
    pub client_secret: Option<Secret>,
    /// A client ID to keep.
    pub client_id: Option<String>,
    /// A tenant to keep.
    pub tenant: Option<String>,
    /// A fresh authorization (page, device code, paste): clears the last error and records
    /// `signed_in_as`.
    pub authorized: bool,
    /// The user a fresh authorization signed in as, if its answer said.
    pub signed_in_as: Option<String>,
    /// A successful refresh: records the time, clears the last error.
    pub refreshed: bool,
}

/// File identity used to notice a change made by another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        ino: m.ino(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// What the view was read at: the file's identity, or Redis's write counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    File(Stamp),
    Redis(u64),
}

struct Loaded {
    mark: Option<Mark>,
    file: StoreFile,
}

/// The token store. Cheap to share behind an `Arc`; every method is safe to call concurrently.
pub struct Store {
    path: PathBuf,
    /// Present when the store is sealed with a key file rather than with local passwords.
    store_key: Option<Key>,
    /// What readers see: replaced whole by a writer or a reload, never held across I/O.
    view: RwLock<Arc<Loaded>>,
    /// Serializes this process's writers (held across `flock`, on a blocking thread).
    writer: Mutex<()>,
    /// When the file was last looked at for changes by other processes.
    checked_at: Mutex<Option<Instant>>,
    /// Password-derived keys of accounts whose password was verified since start.
    password_keys: dashmap::DashMap<String, Key>,
    /// The Redis server holding the entries instead of the file (`[store] backend = "redis"`).
    redis: Option<redis_store::RedisStore>,
    /// Why the Redis server could not be read at the last look, while it cannot.
    backend_error: Mutex<Option<String>>,
    /// Changes the shared store could not take when they were made (Redis away): written, in
    /// order, once it answers again, so a rotated refresh token is never lost.
    pending: Mutex<Vec<shared::Held>>,
    /// The same changes on local disk (sealed, synced), for a restart before Redis returns.
    journal: Option<Arc<Store>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("redis", &self.redis)
            .field("sealed_with_key_file", &self.store_key.is_some())
            .finish()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stored time stamp; one no clock can represent (a damaged or hand-edited store) reads as
/// the epoch, i.e. long expired, instead of panicking.
fn to_system_time(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

fn to_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (or prepares to create) the store at `path`. `key_material` is the content of the
    /// store key file, when one is configured.
    pub fn open(path: &Path, key_material: Option<&Secret>) -> Result<Arc<Store>, StoreError> {
        let store = Store::empty(path.to_owned(), key_material, None)?;
        store.check_directory()?;
        store.reload_if_changed()?;
        Ok(Arc::new(store))
    }

    /// A store with nothing read yet: the file at `path`, or `redis`'s server (then `path` only
    /// names it in messages).
    fn empty(
        path: PathBuf,
        key_material: Option<&Secret>,
        redis: Option<redis_store::RedisStore>,
    ) -> Result<Store, StoreError> {
        let store_key = match key_material {
            Some(m) => Some(Key::from_key_file(m).map_err(|message| StoreError::Io {
                path: path.display().to_string(),
                message,
            })?),
            None => None,
        };
        Ok(Store {
            path,
            store_key,
            view: RwLock::new(Arc::new(Loaded {
                mark: None,
                file: StoreFile {
                    version: VERSION,
                    accounts: BTreeMap::new(),
                },
            })),
            writer: Mutex::new(()),
            checked_at: Mutex::new(None),
            password_keys: Default::default(),
            redis,
            backend_error: Mutex::new(None),
            pending: Mutex::default(),
            journal: None,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when tokens are sealed with a key file (background refresh possible).
    pub fn has_store_key(&self) -> bool {
        self.store_key.is_some()
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            message: format!("{what}: {e}"),
        }
    }

    fn read_file(&self) -> Result<(Option<Stamp>, StoreFile), StoreError> {
        let before = stamp(&self.path);
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((
                    None,
                    StoreFile {
                        version: VERSION,
                        ..Default::default()
                    },
                ))
            }
            Err(e) => return Err(self.io_error("cannot read", e)),
        };
        let file: StoreFile = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            // The message of a data error may quote a value: keep only its position and kind.
            message: format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        if file.version != VERSION {
            return Err(StoreError::Corrupt {
                path: self.path.display().to_string(),
                message: format!(
                    "version {} is not supported (expected {VERSION})",
                    file.version
                ),
            });
        }
        Ok((before, file))
    }

    fn reload_if_changed(&self) -> Result<(), StoreError> {
        *self.checked_at.lock().expect("store check time") = Some(Instant::now());
        if let Some(redis) = &self.redis {
            let result = self.reload_redis(redis);
            // Kept without the store's name, which `refresh_view` puts back.
            *self.backend_error.lock().expect("store backend error") =
                result.as_ref().err().map(|e| match e {
                    StoreError::Io { message, .. } => message.clone(),
                    other => other.to_string(),
                });
            return result;
        }
        let now = stamp(&self.path).map(Mark::File);
        if now.is_some() && now == self.view().mark {
            return Ok(());
        }
        let (stamp, file) = self.read_file()?;
        *self.view.write().expect("store view") = Arc::new(Loaded {
            mark: stamp.map(Mark::File),
            file,
        });
        Ok(())
    }

    /// The current view, reloaded first if another process may have changed the file and it
    /// was not looked at within [`CHECK_INTERVAL`].
    fn fresh_view(&self) -> Arc<Loaded> {
        if self.redis.is_some() {
            return self.view(); // the poller thread keeps it fresh; no I/O here
        }
        let due = {
            let mut checked = self.checked_at.lock().expect("store check time");
            let due = checked.is_none_or(|at| at.elapsed() >= CHECK_INTERVAL);
            if due {
                *checked = Some(Instant::now());
            }
            due
        };
        if due {
            let _ = self.reload_if_changed();
        }
        self.view()
    }

    fn view(&self) -> Arc<Loaded> {
        self.view.read().expect("store view").clone()
    }

    /// Re-reads the file if another process changed it. A file that cannot be read keeps the
    /// last good contents in memory, and the error is returned for the caller to report.
    /// With Redis this does no I/O (the poller thread keeps the view within [`REDIS_POLL`]) and
    /// returns the poller's last error.
    pub fn refresh_view(&self) -> Result<(), StoreError> {
        if self.redis.is_some() {
            return match self.backend_error() {
                Some(message) => Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    message,
                }),
                None => Ok(()),
            };
        }
        self.reload_if_changed()
    }

    /// The entry of `account` as last read (metadata and sealed values).
    pub fn entry(&self, account: &str) -> Option<Entry> {
        self.fresh_view().file.accounts.get(account).cloned()
    }

    /// The generation of `account`'s entry (0 when there is none).
    pub fn generation(&self, account: &str) -> u64 {
        self.entry(account).map_or(0, |e| e.generation)
    }

    /// The key for `account`: the store key, or the one derived from the local password (the
    /// caller has verified the password). Argon2id runs on a blocking thread, once per account
    /// and process; the derived key is then kept in memory.
    pub async fn unlock(&self, account: &str, password: Option<&Secret>) -> Option<Key> {
        if let Some(k) = &self.store_key {
            if let Some(password) = password {
                self.adopt_password_entry(account, password, k).await;
            }
            return Some(k.clone());
        }
        let existing = self.entry(account).and_then(|e| e.seal);
        if let Some(k) = self.password_keys.get(account) {
            let matches = match &existing {
                Some(seal) => *seal == k.seal,
                None => true,
            };
            if matches {
                return Some(k.clone());
            }
        }
        let password = password?.clone();
        let seal = match existing {
            Some(s @ Seal::Password { .. }) => s,
            _ => Seal::new_password(),
        };
        let key = tokio::task::spawn_blocking(move || Key::from_password(&password, seal))
            .await
            .ok()??;
        self.password_keys.insert(account.to_owned(), key.clone());
        Some(key)
    }

    /// An entry sealed with the account's local password (by an earlier version, or before a
    /// store key was configured) is opened with the password a device just gave and sealed
    /// again with the store key, so that from now on the relay can use it on its own. Happens
    /// once per account; the write is small and synchronous.
    async fn adopt_password_entry(&self, account: &str, password: &Secret, store_key: &Key) {
        let Some(seal @ Seal::Password { .. }) = self.entry(account).and_then(|e| e.seal) else {
            return;
        };
        let password = password.clone();
        let Ok(Some(old)) =
            tokio::task::spawn_blocking(move || Key::from_password(&password, seal)).await
        else {
            return;
        };
        let Ok(opened) = self.open_entry(account, &old) else {
            return; // another password sealed it: leave it for a new sign-in
        };
        let change = Change {
            refresh_token: opened.refresh_token,
            access_token: opened.access_token,
            client_secret: opened.client_secret,
            ..Default::default()
        };
        match self.update(account, Some(store_key), change) {
            Ok(_) => tracing::info!(
                account = %account,
                "the stored tokens, sealed with the local password until now, are sealed with the store key"
            ),
            Err(e) => {
                tracing::warn!(account = %account, "cannot seal the stored tokens with the store key: {e}")
            }
        }
    }

    /// The key already known for `account` without a password (store key, or a password key
    /// derived earlier in this process).
    pub fn known_key(&self, account: &str) -> Option<Key> {
        if let Some(k) = &self.store_key {
            return Some(k.clone());
        }
        let k = self.password_keys.get(account)?.clone();
        match self.entry(account).and_then(|e| e.seal) {
            Some(seal) if seal != k.seal => None,
            _ => Some(k),
        }
    }

    /// Forgets password-derived keys (the configuration changed).
    pub fn forget_keys(&self) {
        self.password_keys.clear();
    }

    /// Opens the secret fields of `account`'s entry. An entry sealed with another key is an
    /// error and is left untouched.
    pub fn open_entry(&self, account: &str, key: &Key) -> Result<Opened, StoreError> {
        let Some(entry) = self.entry(account) else {
            return Ok(Opened::default());
        };
        match &entry.seal {
            None => return Ok(Opened::default()),
            Some(_) if !entry.sealed_with(account, key) => {
                return Err(StoreError::WrongKey(account.to_owned()))
            }
            Some(_) => {}
        }
        let open = |field: &str, sealed: &Option<Sealed>| -> Result<Option<Secret>, StoreError> {
            match sealed {
                None => Ok(None),
                Some(s) => key
                    .open(account, field, s)
                    .map(Some)
                    .ok_or_else(|| StoreError::WrongKey(account.to_owned())),
            }
        };
        Ok(Opened {
            refresh_token: open("refresh_token", &entry.refresh_token)?,
            access_token: open("access_token", &entry.access_token)?
                .zip(entry.access_expires_at.map(to_system_time)),
            client_secret: open("client_secret", &entry.client_secret)?,
        })
    }
}
