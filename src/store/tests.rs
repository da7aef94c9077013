use super::*;
use std::os::unix::fs::PermissionsExt;

fn key_material() -> Secret {
    Secret::new("0123456789abcdef0123456789abcdef-store-key")
}

fn tokens(rt: &str, at: &str) -> Change {
    Change {
        refresh_token: Some(Secret::new(rt)),
        access_token: Some((
            Secret::new(at),
            SystemTime::now() + Duration::from_secs(3600),
        )),
        authorized: true,
        ..Default::default()
    }
}

#[test]
fn store_key_round_trip_and_file_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/tokens.json");
    let store = Store::open(&path, Some(&key_material())).unwrap();
    let key = store.known_key("a").unwrap();
    assert_eq!(
        store
            .update("a", Some(&key), tokens("rt-canary-1", "at-canary-1"))
            .unwrap(),
        1
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains("canary"), "secrets are sealed: {text}");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // A second process (here: a second Store) reads it back.
    let other = Store::open(&path, Some(&key_material())).unwrap();
    let opened = other
        .open_entry("a", &other.known_key("a").unwrap())
        .unwrap();
    assert_eq!(opened.refresh_token.unwrap().expose(), "rt-canary-1");
    assert_eq!(opened.access_token.unwrap().0.expose(), "at-canary-1");

    // The first store notices the other's write.
    other
        .update(
            "a",
            other.known_key("a").as_ref(),
            Change {
                refresh_token: Some(Secret::new("rt-canary-2")),
                ..Default::default()
            },
        )
        .unwrap();
    // Within a second on its own; at once when asked (the token cache asks before a refresh).
    store.refresh_view().unwrap();
    assert_eq!(store.generation("a"), 2);
    let opened = store.open_entry("a", &key).unwrap();
    assert_eq!(opened.refresh_token.unwrap().expose(), "rt-canary-2");

    // Another store key cannot open it.
    let wrong = Store::open(
        &path,
        Some(&Secret::new("another-key-another-key-another-key!")),
    )
    .unwrap();
    assert!(matches!(
        wrong.open_entry("a", &wrong.known_key("a").unwrap()),
        Err(StoreError::WrongKey(_))
    ));
}

#[tokio::test]
async fn password_sealed_entries_need_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = Store::open(&path, None).unwrap();
    assert!(store.known_key("a").is_none(), "no key before a login");
    let pw = Secret::new("local-password");
    let key = store.unlock("a", Some(&pw)).await.unwrap();
    store
        .update("a", Some(&key), tokens("rt-1", "at-1"))
        .unwrap();
    let before = fs::read(&path).unwrap();

    // A fresh process with the wrong password derives another key: opening fails, and a
    // change that brings no new token is refused, so nothing is lost.
    let fresh = Store::open(&path, None).unwrap();
    let wrong = fresh
        .unlock("a", Some(&Secret::new("wrong")))
        .await
        .unwrap();
    assert!(matches!(
        fresh.open_entry("a", &wrong),
        Err(StoreError::WrongKey(_))
    ));
    assert!(fresh
        .update(
            "a",
            Some(&wrong),
            Change {
                access_token: Some((Secret::new("x"), SystemTime::now())),
                ..Default::default()
            }
        )
        .is_err());
    assert_eq!(fs::read(&path).unwrap(), before, "the store is unchanged");

    let fresh = Store::open(&path, None).unwrap();
    let right = fresh.unlock("a", Some(&pw)).await.unwrap();
    assert_eq!(
        fresh
            .open_entry("a", &right)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "rt-1"
    );
    assert!(
        fresh.known_key("a").is_some(),
        "kept after a verified login"
    );
}

#[test]
fn values_are_bound_to_account_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = Store::open(&path, Some(&key_material())).unwrap();
    let key = store.known_key("a").unwrap();
    store
        .update("a", Some(&key), tokens("rt-a", "at-a"))
        .unwrap();
    store
        .update("b", Some(&key), tokens("rt-b", "at-b"))
        .unwrap();
    // Swap the sealed refresh tokens of a and b in the file: neither opens any more.
    let mut file: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let a = file["accounts"]["a"]["refresh_token"].take();
    let b = file["accounts"]["b"]["refresh_token"].take();
    file["accounts"]["a"]["refresh_token"] = b;
    file["accounts"]["b"]["refresh_token"] = a.clone();
    file["accounts"]["b"]["access_token"] = a;
    fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    store.refresh_view().unwrap();
    assert!(store.open_entry("a", &key).is_err());
    assert!(store.open_entry("b", &key).is_err());
}

#[test]
fn corrupt_file_is_reported_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    fs::write(&path, b"{not json").unwrap();
    let err = Store::open(&path, Some(&key_material())).unwrap_err();
    assert!(err.to_string().contains("not a valid store file"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"{not json");
}

#[test]
fn errors_are_recorded_and_cleared_by_a_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = Store::open(&path, Some(&key_material())).unwrap();
    store.record_error("a", "AADSTS700082: expired").unwrap();
    assert_eq!(
        store.entry("a").unwrap().last_error.as_deref(),
        Some("AADSTS700082: expired")
    );
    let key = store.known_key("a").unwrap();
    store
        .update(
            "a",
            Some(&key),
            Change {
                access_token: Some((Secret::new("at"), SystemTime::now())),
                refreshed: true,
                ..Default::default()
            },
        )
        .unwrap();
    let e = store.entry("a").unwrap();
    assert!(e.last_error.is_none() && e.last_refresh_at.is_some());
}

#[test]
fn a_planted_temporary_file_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "do not touch").unwrap();
    let state = dir.path().join("state");
    fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
    let path = state.join("tokens.json");
    std::os::unix::fs::symlink(&victim, state.join("tokens.json.tmp")).unwrap();
    let store = Store::open(&path, Some(&key_material())).unwrap();
    let key = store.known_key("a").unwrap();
    store
        .update("a", Some(&key), tokens("rt-canary-1", "at-canary-1"))
        .unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "do not touch");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(store.generation("a"), 1);
}

#[test]
fn a_store_directory_others_can_write_to_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("loose");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let err = match Store::open(&state.join("tokens.json"), Some(&key_material())) {
        Ok(_) => panic!("a loose directory was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("writable by group or others (mode 777)"),
        "{err}"
    );
    assert!(err.contains("chmod 700"), "{err}");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o750)).unwrap();
    assert!(Store::open(&state.join("tokens.json"), Some(&key_material())).is_ok());
}
