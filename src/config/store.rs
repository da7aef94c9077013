//! Opening the configured token store, with the key the configuration names or the one made
//! beside the store on first use.

use super::*;

impl StoreConfig {
    /// The Redis server, with `backend = "redis"`.
    pub fn redis(&self) -> Option<&RedisConfig> {
        match &self.backend {
            StoreBackend::Redis(r) => Some(r),
            StoreBackend::File => None,
        }
    }

    /// Opens the store this describes (see [`crate::store::Store::open_with`]), making its key
    /// on first use when the configuration leaves that to the relay.
    pub fn open(&self) -> Result<std::sync::Arc<crate::store::Store>, crate::store::StoreError> {
        self.open_as(true)
    }

    /// [`Self::open`] for a look only (`authrelay check`): a key not made yet is not made.
    pub fn open_to_read(
        &self,
    ) -> Result<std::sync::Arc<crate::store::Store>, crate::store::StoreError> {
        self.open_as(false)
    }

    /// Where the key made on first use lives: `store.key` beside the store.
    pub fn auto_key_path(&self) -> PathBuf {
        self.path.with_file_name("store.key")
    }

    fn open_as(
        &self,
        create: bool,
    ) -> Result<std::sync::Arc<crate::store::Store>, crate::store::StoreError> {
        use crate::store::keyfile::{self, AutoKey};
        let made;
        let path = self.auto_key_path();
        let key = match (&self.key, self.auto_key) {
            (Some(k), _) => Some(k),
            (None, true) => match keyfile::load(&path, create)? {
                AutoKey::Found(k) => {
                    made = k;
                    Some(&made)
                }
                AutoKey::Created(k) => {
                    tracing::info!(
                        "made the store key {} (mode 0600): back it up with the store, which cannot be read without it",
                        path.display()
                    );
                    made = k;
                    Some(&made)
                }
                AutoKey::Missing => None,
            },
            (None, false) => None,
        };
        crate::store::Store::open_with(&self.path, key, self.redis())
    }
}
