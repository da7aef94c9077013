//! The store key made on first start: when the configuration gives no `[store] key_file` and
//! does not ask for password sealing, the relay (or `authrelay login`, whichever runs first)
//! writes 32 random bytes, base64, to `store.key` beside the store, mode 0600 in a 0700
//! directory. Every later run reads the same file, so the relay can refresh tokens and deliver
//! spooled mail after a restart with no device logging in first.

use super::StoreError;
use crate::secret::Secret;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What [`load`] found.
#[derive(Debug)]
pub enum AutoKey {
    /// The key file's content.
    Found(Secret),
    /// The file was created just now (say so once: it must be backed up with the store).
    Created(Secret),
    /// There is no key file, and `create` was false (`authrelay check`).
    Missing,
}

fn io(path: &Path, message: String) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message,
    }
}

/// Reads the key file at `path`, or with `create` makes it when there is none. A key file that
/// group or others can read is refused: whoever reads it can open every stored token.
pub fn load(path: &Path, create: bool) -> Result<AutoKey, StoreError> {
    match read(path)? {
        Some(k) => return Ok(AutoKey::Found(k)),
        None if !create => return Ok(AutoKey::Missing),
        None => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(path, format!("cannot create its directory: {e}")))?;
    }
    let material = {
        use base64::Engine;
        use rand::RngCore;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
        Secret::new(base64::engine::general_purpose::STANDARD.encode(&bytes[..]))
    };
    // Written under a temporary name and linked into place: a crash leaves no half a key, and
    // of two processes starting at once, one key wins and both use it.
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        super::random_owner()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode given at open is masked by the umask; set it again so a umask of 000
        // still leaves the key private.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(material.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(AutoKey::Created(material))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read(path)?
            .map(AutoKey::Found)
            .ok_or_else(|| io(path, "vanished while being created".into())),
        Err(e) => Err(io(path, format!("cannot create the store key: {e}"))),
    }
}

fn read(path: &Path) -> Result<Option<Secret>, StoreError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, format!("cannot read the store key: {e}"))),
    };
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io(
            path,
            format!(
                "the store key is readable by group or others (mode {mode:o}): chmod 600 {}",
                path.display()
            ),
        ));
    }
    let text = fs::read_to_string(path)
        .map_err(|e| io(path, format!("cannot read the store key: {e}")))?;
    Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/store.key");
        assert!(matches!(load(&path, false).unwrap(), AutoKey::Missing));
        let AutoKey::Created(made) = load(&path, true).unwrap() else {
            panic!("not created")
        };
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let AutoKey::Found(again) = load(&path, true).unwrap() else {
            panic!("made twice")
        };
        assert_eq!(made.expose(), again.expose());
        assert!(super::super::Key::from_key_file(&again).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&path, true).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
