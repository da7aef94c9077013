//! The token store in Redis (or Valkey), shared by every replica: the same sealed entries as
//! the file store, one hash field per account (`{prefix}store`), a counter bumped by every
//! write (`{prefix}store:version`) so readers reload only what changed, and the refresh leases
//! (`{prefix}lease:{account}`). Redis never sees a token, secret or password in clear: entries
//! are sealed before they leave the process, and the ACL password is sent only at login.
//!
//! Every call has a time limit and runs where the file store's I/O runs (blocking threads, the
//! store's poller thread, the CLI), never on a runtime worker. Writes are optimistic
//! transactions (WATCH, read, MULTI … EXEC; retried when another replica wrote in between), so
//! two replicas never overwrite each other's rotated refresh token.

use super::{Entry, StoreError, StoreFile, VERSION};
use crate::secret::Secret;
use redis::Commands;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// A Redis server for the token store, the refresh leases and the per-mailbox limits
/// (`[store] backend = "redis"`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (loopback only) or `rediss://host:port/db` (TLS, verified).
    pub url: String,
    /// The ACL user (Redis 6+), if any.
    pub username: Option<String>,
    /// Its password (`password_file`): never in the URL.
    pub password: Option<Secret>,
    /// Prefix of every key (several deployments can share one server).
    pub prefix: String,
    /// An extra CA to verify a `rediss://` server with (public roots are trusted too).
    pub ca: Option<PathBuf>,
}

/// The limit of every Redis call (connect, read, write).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Compare-and-delete: releases a lease only if this owner still holds it.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Takes a session slot of a mailbox if fewer than ARGV[1] are held: slots are members of a
/// sorted set scored by their expiry (the server's clock, so replicas' clocks do not matter);
/// expired ones are dropped first, and so is any slot scored beyond one `ttl` from now (no
/// replica writes one: a Redis others can write must not hold a mailbox's slots forever).
/// Returns 1 when taken.
const TAKE_SLOT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + tonumber(ARGV[2])), '+inf')
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"#;

/// Takes a start within ARGV[1] starts per minute (a sliding window of the last minute's
/// starts, on the server's clock): -1 when taken, else the milliseconds until one frees up.
/// Starts dated in the future (none is written so) are dropped.
const TAKE_START: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 60000)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + 60000 - now
"#;

/// Reads the store's hash (KEYS[1]) and its counter (KEYS[2]) on the server, keeping only
/// fields whose name is at most ARGV[1] bytes and whose value is at most ARGV[2] bytes, and at
/// most ARGV[3] of them: a Redis others can write may hold a field of 512 MB or millions of
/// fields, and none of that must reach the relay's memory. Returns the kept fields (flat), the
/// skipped ones (name cut to 100 bytes, then its value's size; flat), and the counter.
const READ_STORE: &str = r#"
local kept, skipped, count = {}, {}, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local k, v = all[i], all[i + 1]
  if #k <= tonumber(ARGV[1]) and #v <= tonumber(ARGV[2]) and count < tonumber(ARGV[3]) then
    kept[#kept + 1] = k
    kept[#kept + 1] = v
    count = count + 1
  else
    skipped[#skipped + 1] = string.sub(k, 1, 100)
    skipped[#skipped + 1] = #v
  end
end
return {kept, skipped, redis.call('GET', KEYS[2])}
"#;

/// The longest account name and entry read from Redis (an entry holds a few sealed tokens:
/// a few KiB), and the most entries.
const MAX_NAME_BYTES: usize = 256;
const MAX_ENTRY_BYTES: usize = 256 * 1024;
const MAX_ENTRIES: usize = 10_000;

/// Takes a refresh lease (ARGV[1] the owner, ARGV[2] its time in ms): 1 when taken. A lease
/// held without an expiry or for longer than that (none is set so) is cut to it, so no key
/// planted in Redis can stop an account's refreshes for good.
const TAKE_LEASE: &str = r#"
local ttl = tonumber(ARGV[2])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl) then
  return 1
end
local left = redis.call('PTTL', KEYS[1])
if left == -1 or left > ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 0
"#;

/// What [`READ_STORE`] returns.
type Stored = (BTreeMap<String, String>, Vec<(String, u64)>, Option<u64>);

/// A connection to the store's Redis server, re-established after an error.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// `redis://host:port/db` as configured (no secret in it: the configuration refuses one).
    describe: String,
    /// The ACL user, for messages.
    user: Option<String>,
    conn: Mutex<Option<redis::Connection>>,
}

/// What taking a refresh lease came to.
#[derive(Debug)]
pub enum Lease {
    /// This process holds it until it releases it or it expires; the owner token releases it.
    Acquired(String),
    /// Another replica holds it: wait for its result.
    Busy,
    /// No cross-replica lease here (the file store), or Redis cannot be reached (the error).
    Unavailable(Option<String>),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.describe)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A client for `config` (nothing is sent until the first call).
    pub fn new(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let error = |message: String| StoreError::Io {
            path: config.url.clone(),
            message,
        };
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| error(format!("not a Redis URL: {e}")))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = match &config.ca {
            Some(ca) => {
                let root = std::fs::read(ca)
                    .map_err(|e| error(format!("cannot read the CA {}: {e}", ca.display())))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| error(e.to_string()))?;
        Ok(RedisStore {
            client,
            prefix: config.prefix.clone(),
            describe: config.url.clone(),
            user: config.username.clone(),
            conn: Mutex::new(None),
        })
    }

    /// The server, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.describe.clone(),
            message: e.to_string(),
        }
    }

    /// Runs `f` with the connection held (connecting first if there is none); an error drops
    /// the connection so the next call starts afresh.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().expect("redis connection");
        if slot.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(CALL_TIMEOUT)
                .map_err(|e| match e.kind() {
                    redis::ErrorKind::AuthenticationFailed => self.error(format!(
                        "the server refused the login of {} (wrong username or password_file?): {e}",
                        self.user.as_deref().unwrap_or("the default user"),
                    )),
                    _ => self.error(format!("cannot connect: {e}")),
                })?;
            conn.set_read_timeout(Some(CALL_TIMEOUT))
                .and_then(|()| conn.set_write_timeout(Some(CALL_TIMEOUT)))
                .map_err(|e| self.error(e))?;
            *slot = Some(conn);
        }
        let result = f(slot.as_mut().expect("connected above"));
        if matches!(result, Err(StoreError::Io { .. })) {
            *slot = None;
        }
        result
    }

    /// One call (or pipeline) on the connection.
    fn call<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.with_conn(|c| f(c).map_err(|e| self.error(e)))
    }

    /// Checks the server answers and the ACL user may use the store's keys.
    pub fn ping(&self) -> Result<(), StoreError> {
        let key = self.key("store:version");
        self.call(|c| {
            redis::cmd("PING").query::<String>(c)?;
            c.get::<_, Option<u64>>(&key).map(|_| ())
        })
    }

    /// The write counter: it changes whenever any replica wrote.
    pub fn version(&self) -> Result<u64, StoreError> {
        let key = self.key("store:version");
        self.call(|c| c.get::<_, Option<u64>>(&key))
            .map(Option::unwrap_or_default)
    }

    /// Every entry, with the counter they go with.
    pub fn load(&self) -> Result<(u64, StoreFile), StoreError> {
        self.with_conn(|c| self.read(c).map(|(v, file, _)| (v, file)))
    }

    /// The counter, the entries, and each entry's JSON as stored.
    #[allow(clippy::type_complexity)]
    fn read(
        &self,
        c: &mut redis::Connection,
    ) -> Result<(u64, StoreFile, BTreeMap<String, String>), StoreError> {
        let (store, version) = (self.key("store"), self.key("store:version"));
        let (fields, skipped, counter): Stored = redis::Script::new(READ_STORE)
            .key(&store)
            .key(&version)
            .arg(MAX_NAME_BYTES)
            .arg(MAX_ENTRY_BYTES)
            .arg(MAX_ENTRIES)
            .invoke(c)
            .map_err(|e| self.error(e))?;
        for (field, bytes) in &skipped {
            let field = crate::codec::line::sanitize_for_reply(field, 100);
            tracing::warn!(store = %self.describe, field = %field, bytes, "a store field in Redis is too large, or one too many, and is skipped");
        }
        let mut accounts = BTreeMap::new();
        for (account, json) in &fields {
            // One field that is no entry (written by someone else, or damaged) is skipped: it
            // must not make the store unusable for every other account. Saving that account's
            // entry again replaces it.
            match serde_json::from_str::<Entry>(json) {
                Ok(entry) => {
                    accounts.insert(account.clone(), entry);
                }
                Err(e) => {
                    let field = crate::codec::line::sanitize_for_reply(account, 100);
                    tracing::warn!(store = %self.describe, field = %field, error = ?e.classify(), "a store entry in Redis is unreadable and is skipped");
                }
            }
        }
        let file = StoreFile {
            version: VERSION,
            accounts,
        };
        Ok((counter.unwrap_or_default(), file, fields))
    }

    /// Read, modify, write as one optimistic transaction on one connection (WATCH, read, MULTI,
    /// the changed entries and the counter, EXEC; again if another replica wrote in between);
    /// returns `f`'s result, the new counter and every entry as written.
    pub fn modify<T>(
        &self,
        f: impl Fn(&mut StoreFile) -> Result<T, StoreError>,
    ) -> Result<(T, u64, StoreFile), StoreError> {
        let (store, version) = (self.key("store"), self.key("store:version"));
        self.with_conn(|c| {
            for _ in 0..50 {
                redis::cmd("WATCH")
                    .arg(&store)
                    .arg(&version)
                    .query::<()>(c)
                    .map_err(|e| self.error(e))?;
                let (_, mut file, stored) = self.read(c)?;
                let result = match f(&mut file) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = redis::cmd("UNWATCH").query::<()>(c);
                        return Err(e);
                    }
                };
                let mut pipe = redis::pipe();
                pipe.atomic();
                for (account, entry) in &file.accounts {
                    let json = serde_json::to_string(entry).expect("an entry serializes");
                    if stored.get(account) != Some(&json) {
                        pipe.hset(&store, account, json).ignore();
                    }
                }
                pipe.incr(&version, 1);
                let done: Option<(u64,)> = pipe.query(c).map_err(|e| self.error(e))?;
                if let Some((counter,)) = done {
                    return Ok((result, counter, file));
                }
                // Another replica wrote between WATCH and EXEC: read again and re-apply.
            }
            Err(self.error("the store kept changing under this write (50 tries)"))
        })
    }

    /// Takes `account`'s refresh lease for `ttl`, or says who has it.
    pub fn lease(&self, account: &str, ttl: Duration) -> Lease {
        let owner = super::random_owner();
        let key = self.key(&format!("lease:{account}"));
        let script = redis::Script::new(TAKE_LEASE);
        let taken = self.call(|c| {
            script
                .key(&key)
                .arg(&owner)
                .arg(ttl.as_millis() as u64)
                .invoke::<i64>(c)
        });
        match taken {
            Ok(1) => Lease::Acquired(owner),
            Ok(_) => Lease::Busy,
            Err(e) => Lease::Unavailable(Some(e.to_string())),
        }
    }

    /// Whether `account`'s lease is still held by someone.
    pub fn lease_held(&self, account: &str) -> Result<bool, StoreError> {
        let key = self.key(&format!("lease:{account}"));
        self.call(|c| c.exists::<_, bool>(&key))
    }

    /// Releases the lease if `owner` still holds it (it may have expired and been taken).
    pub fn release(&self, account: &str, owner: &str) {
        let key = self.key(&format!("lease:{account}"));
        let script = redis::Script::new(RELEASE);
        if let Err(e) = self.call(|c| script.key(&key).arg(owner).invoke::<i64>(c)) {
            tracing::warn!(account = %account, error = %e, "the refresh lease could not be released; it expires by itself");
        }
    }

    /// Takes (or renews) the session slot `owner` of `account`, if fewer than `limit` are held
    /// across replicas; a slot not renewed within `ttl` frees itself (a replica that died).
    pub fn take_slot(
        &self,
        account: &str,
        limit: usize,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.key(&format!("sessions:{account}"));
        let script = redis::Script::new(TAKE_SLOT);
        self.call(|c| {
            script
                .key(&key)
                .arg(limit)
                .arg(ttl.as_millis() as u64)
                .arg(owner)
                .invoke::<i64>(c)
        })
        .map(|taken| taken == 1)
    }

    /// Gives a slot back.
    pub fn release_slot(&self, account: &str, owner: &str) {
        let key = self.key(&format!("sessions:{account}"));
        if let Err(e) = self.call(|c| c.zrem::<_, _, i64>(&key, owner)) {
            tracing::debug!(account = %account, error = %e, "a session slot could not be given back; it expires by itself");
        }
    }

    /// Takes a delivery start within `per_minute` across replicas, or says how long until one
    /// frees up.
    pub fn take_start(
        &self,
        account: &str,
        per_minute: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let key = self.key(&format!("starts:{account}"));
        let script = redis::Script::new(TAKE_START);
        let id = super::random_owner();
        self.call(|c| script.key(&key).arg(per_minute).arg(&id).invoke::<i64>(c))
            .map(|wait| (wait >= 0).then(|| Duration::from_millis(wait as u64)))
    }
}
