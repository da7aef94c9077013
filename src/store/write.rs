//! Writing the store: every change is read, applied and written atomically under the
//! cross-process lock (see the module documentation of `store`); async code writes on a
//! blocking thread.

use super::*;

impl Store {
    /// Applies `change` to `account`'s entry and writes the store atomically. Secret fields are
    /// sealed with `key`; when the entry was sealed with another key, its old secret fields are
    /// dropped (they could never be opened again), but only when `change` brings a refresh token
    /// or a client secret of its own.
    pub fn update(
        &self,
        account: &str,
        key: Option<&Key>,
        change: Change,
    ) -> Result<u64, StoreError> {
        // Behind changes still waiting for the shared store: wait in line, in order.
        if self.redis.is_some() && self.held_back() > 0 {
            self.hold_back(account, key, change);
            return Err(StoreError::Io {
                path: self.path.display().to_string(),
                message: "earlier changes are still waiting for the shared store".into(),
            });
        }
        let kept = self.redis.is_some().then(|| change.clone());
        let result = self.write(account, key, change);
        if let (Err(StoreError::Io { .. }), Some(change)) = (&result, kept) {
            self.hold_back(account, key, change);
        }
        result
    }

    /// [`Self::update`] without holding back.
    pub(super) fn write(
        &self,
        account: &str,
        key: Option<&Key>,
        change: Change,
    ) -> Result<u64, StoreError> {
        let carries_secret = change.refresh_token.is_some()
            || change.access_token.is_some()
            || change.client_secret.is_some();
        if carries_secret && key.is_none() {
            return Err(StoreError::WrongKey(account.to_owned()));
        }
        self.modify(|file| {
            let entry = file.accounts.entry(account.to_owned()).or_default();
            if let Some(key) = key.filter(|_| carries_secret) {
                if entry.seal.is_some() && !entry.sealed_with(account, key) {
                    if change.refresh_token.is_none() && change.client_secret.is_none() {
                        return Err(StoreError::WrongKey(account.to_owned()));
                    }
                    entry.refresh_token = None;
                    entry.access_token = None;
                    entry.access_expires_at = None;
                    entry.client_secret = None;
                    entry.check = None;
                }
                if entry.seal.is_none() || entry.check.is_none() {
                    entry.check = Some(key.seal_value(account, "check", &Secret::new(CHECK_VALUE)));
                }
                entry.seal = Some(key.seal.clone());
            }
            let now = unix_now();
            if let (Some(rt), Some(key)) = (&change.refresh_token, key) {
                entry.refresh_token = Some(key.seal_value(account, "refresh_token", rt));
                entry.refresh_token_at = Some(now);
            }
            if change.clear_access_token {
                entry.access_token = None;
                entry.access_expires_at = None;
            }
            if let (Some((at, expires)), Some(key)) = (&change.access_token, key) {
                entry.access_token = Some(key.seal_value(account, "access_token", at));
                entry.access_expires_at = Some(to_unix(*expires));
            }
            if let (Some(cs), Some(key)) = (&change.client_secret, key) {
                entry.client_secret = Some(key.seal_value(account, "client_secret", cs));
            }
            if let Some(id) = change.client_id.clone() {
                entry.client_id = Some(id);
            }
            if let Some(t) = change.tenant.clone() {
                entry.tenant = Some(t);
            }
            if change.authorized {
                entry.authorized_at = Some(now);
                entry.signed_in_as = change.signed_in_as.clone();
            }
            if change.refreshed {
                entry.last_refresh_at = Some(now);
                entry.refresh_token_at = Some(now);
            }
            if change.authorized || change.refreshed {
                entry.last_error = None;
                entry.last_error_at = None;
            }
            entry.generation += 1;
            Ok(entry.generation)
        })
    }

    /// [`Self::update`] on a blocking thread, for async code: waiting for the file lock or an
    /// fsync then holds that thread, never a runtime worker. Returns once the change is on disk.
    pub async fn update_async(
        self: &Arc<Self>,
        account: &str,
        key: Option<&Key>,
        change: Change,
    ) -> Result<u64, StoreError> {
        let (store, account, key) = (self.clone(), account.to_owned(), key.cloned());
        tokio::task::spawn_blocking(move || store.update(&account, key.as_ref(), change))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    message: format!("the write did not finish: {e}"),
                })
            })
    }

    /// [`Self::record_error`] on a blocking thread, for async code.
    pub async fn record_error_async(
        self: &Arc<Self>,
        account: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        let (store, account, error) = (self.clone(), account.to_owned(), error.to_owned());
        tokio::task::spawn_blocking(move || store.record_error(&account, &error))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    message: format!("the write did not finish: {e}"),
                })
            })
    }

    /// Records a failed token request (no secret: a code and a description).
    pub fn record_error(&self, account: &str, error: &str) -> Result<(), StoreError> {
        self.modify(|file| {
            let entry = file.accounts.entry(account.to_owned()).or_default();
            entry.last_error = Some(error.to_owned());
            entry.last_error_at = Some(unix_now());
            Ok(())
        })
    }

    /// Records the account's first delivery (once: later deliveries find it set and write
    /// nothing).
    pub async fn record_first_delivery(self: &Arc<Self>, account: &str) {
        if self
            .entry(account)
            .is_some_and(|e| e.delivered_at.is_some())
        {
            return;
        }
        let (store, id) = (self.clone(), account.to_owned());
        let written = tokio::task::spawn_blocking(move || {
            store.modify(|file| {
                let entry = file.accounts.entry(id.clone()).or_default();
                entry.delivered_at.get_or_insert_with(unix_now);
                Ok(())
            })
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(account = %account, "cannot record the first delivery in the token store: {e}");
        }
    }

    /// Read, modify, write under the cross-process lock.
    pub(super) fn modify<T>(
        &self,
        f: impl Fn(&mut StoreFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let writer = self.writer.lock().expect("store writer");
        if let Some(redis) = &self.redis {
            let (result, version, file) = redis.modify(f)?;
            *self.view.write().expect("store view") = Arc::new(Loaded {
                mark: Some(Mark::Redis(version)),
                file,
            });
            drop(writer);
            return Ok(result);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| self.io_error("cannot create its directory", e))?;
            }
        }
        self.check_directory()?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.sibling("lock"))
            .map_err(|e| self.io_error("cannot open the lock file", e))?;
        lock.lock().map_err(|e| self.io_error("cannot lock", e))?;
        let (_, mut file) = self.read_file()?;
        let result = f(&mut file)?;
        self.write_atomically(&file)?;
        *self.view.write().expect("store view") = Arc::new(Loaded {
            mark: stamp(&self.path).map(Mark::File),
            file,
        });
        drop(lock);
        drop(writer);
        Ok(result)
    }

    /// Refuses a store directory that others can write to: they could plant or swap the store's
    /// files (a symlink as the temporary file, a store of their own).
    pub(super) fn check_directory(&self) -> Result<(), StoreError> {
        if self.redis.is_some() {
            return Ok(());
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Ok(meta) = fs::metadata(dir) else {
            return Ok(()); // not created yet: it will be, with mode 0700
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StoreError::Io {
                path: self.path.display().to_string(),
                message: format!(
                    "its directory {} is writable by group or others (mode {mode:o}): make it private (chmod 700 {})",
                    dir.display(),
                    dir.display()
                ),
            });
        }
        Ok(())
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".");
        name.push(suffix);
        self.path.with_file_name(name)
    }

    fn write_atomically(&self, file: &StoreFile) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(file).expect("the store serializes");
        let tmp = self.sibling("tmp");
        // A temporary file left by a crash is removed (a symlink is removed, not followed), and
        // the new one must be created here and now: O_EXCL and O_NOFOLLOW, so a link planted in
        // between makes the write fail instead of writing through it.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error("cannot remove an old temporary file", e)),
        }
        let mut out = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| self.io_error("cannot create the temporary file", e))?;
        out.write_all(&bytes)
            .and_then(|_| out.sync_all())
            .map_err(|e| self.io_error("cannot write the temporary file", e))?;
        drop(out);
        fs::rename(&tmp, &self.path).map_err(|e| self.io_error("cannot replace the store", e))?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}
