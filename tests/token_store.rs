//! Token custody, in process: the store behind the token cache, against a fake token endpoint
//! and a fake upstream. Single flight, rotation persisted across restarts, transient failures
//! that keep the refresh token, wrong passwords that change nothing, background refresh with a
//! store key, keep-alive refreshes, and a store that survives kill -9 during writes.

mod support;

use authrelay::config::AccountConfig;
use authrelay::secret::Secret;
use authrelay::store::Store;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::*;

async fn world(extra: &str) -> World {
    world_with(UpstreamOptions::default(), "none", "", extra, None).await
}

fn account(relay: &Relay) -> Arc<AccountConfig> {
    relay
        .running
        .shared
        .directory()
        .account("user@example.com")
        .unwrap()
        .clone()
}

fn password() -> Secret {
    Secret::new(PASSWORD)
}

/// Opens the relay's store as a second process would, with the account's password.
async fn stored_refresh_token(path: &std::path::Path) -> Option<String> {
    let store = Store::open(path, None).unwrap();
    let key = store.unlock("user", Some(&password())).await.unwrap();
    store
        .open_entry("user", &key)
        .unwrap()
        .refresh_token
        .map(|s| s.expose().to_owned())
}

async fn smtp_login(relay: &Relay, pass: &str) -> String {
    let mut c = Client::connect(relay.addr).await;
    c.reply().await;
    c.ehlo().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("user@example.com", pass)
    ))
    .await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_logins_on_an_expired_token_make_one_request() {
    let w = world("").await;
    let cache = &w.relay.running.shared.tokens;
    let a = account(&w.relay);
    // A token that lives one second: expired (inside the refresh margin) at once.
    w.tokens.expires_in.store(1, Ordering::SeqCst);
    cache
        .access_token(&a, Some(&password()), None)
        .await
        .unwrap();
    assert_eq!(w.tokens.count(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.tokens.expires_in.store(3600, Ordering::SeqCst);
    let shared = w.relay.running.shared.clone();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (shared, a) = (shared.clone(), a.clone());
            tokio::spawn(async move {
                shared
                    .tokens
                    .access_token(&a, Some(&password()), None)
                    .await
                    .map(|t| t.secret.expose().to_owned())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "access-2");
    }
    assert_eq!(w.tokens.count(), 2, "exactly one request for 1,000 logins");
}

#[tokio::test]
async fn the_rotated_refresh_token_is_stored_and_used_after_a_restart() {
    let w = world("").await;
    let path = w.relay.config.store.path.clone();
    assert_eq!(
        smtp_login(&w.relay, PASSWORD).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    // The endpoint rotated rt-initial to rt-1; the store has rt-1, sealed.
    assert_eq!(stored_refresh_token(&path).await.as_deref(), Some("rt-1"));
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(!raw.contains("rt-1") && !raw.contains("access-1"), "{raw}");
    assert!(!raw.contains("canary"));

    // A restart with the same store: the stored access token is used, no request...
    let World {
        upstream,
        tokens,
        relay,
    } = w;
    relay.running.stop(Duration::from_millis(100)).await;
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "",
        &format!(
            "[store]\npath = \"{}\"\nseal = \"password\"",
            path.display()
        ),
    );
    let second = Relay::start(&toml).await;
    assert_eq!(
        smtp_login(&second, PASSWORD).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(tokens.count(), 1);
    // ...and when upstream refuses it, the refresh uses rt-1 (the configuration's
    // rt-initial is no longer valid at the endpoint).
    let a = account(&second);
    let cache = &second.running.shared.tokens;
    let current = cache
        .access_token(&a, Some(&password()), None)
        .await
        .unwrap();
    let fresh = cache
        .access_token(&a, Some(&password()), Some(&current))
        .await
        .unwrap();
    assert_eq!(fresh.secret.expose(), "access-2");
    assert_eq!(stored_refresh_token(&path).await.as_deref(), Some("rt-2"));
}

#[tokio::test]
async fn transient_failures_keep_the_refresh_token() {
    let w = world("").await;
    let path = w.relay.config.store.path.clone();
    let a = account(&w.relay);
    let cache = &w.relay.running.shared.tokens;
    // First a working refresh, so the store holds rt-1.
    cache
        .access_token(&a, Some(&password()), None)
        .await
        .unwrap();
    let before = stored_refresh_token(&path).await;
    assert_eq!(before.as_deref(), Some("rt-1"));
    for behaviour in [
        TokenBehaviour::ServerError,
        TokenBehaviour::Hang,
        TokenBehaviour::Garbage,
    ] {
        w.tokens.set(behaviour.clone());
        let current = cache
            .access_token(&a, Some(&password()), None)
            .await
            .unwrap();
        let err = cache
            .access_token(&a, Some(&password()), Some(&current))
            .await
            .unwrap_err();
        assert_eq!(
            err.class,
            authrelay::auth::oauth::ErrorClass::Temporary,
            "{behaviour:?}"
        );
        assert_eq!(stored_refresh_token(&path).await, before, "{behaviour:?}");
        let entry = Store::open(&path, None).unwrap().entry("user").unwrap();
        assert!(
            entry.last_error.is_some(),
            "{behaviour:?}: the failure is recorded"
        );
    }
    // The endpoint recovers: the kept refresh token works.
    w.tokens.set(TokenBehaviour::Issue);
    let current = cache
        .access_token(&a, Some(&password()), None)
        .await
        .unwrap();
    let fresh = cache
        .access_token(&a, Some(&password()), Some(&current))
        .await
        .unwrap();
    assert!(fresh.secret.expose().starts_with("access-"));
    let entry = Store::open(&path, None).unwrap().entry("user").unwrap();
    assert!(entry.last_error.is_none(), "a refresh clears the error");
}

#[tokio::test]
async fn a_wrong_password_leaves_the_store_unchanged() {
    let w = world("").await;
    let path = w.relay.config.store.path.clone();
    assert_eq!(
        smtp_login(&w.relay, PASSWORD).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    let before = std::fs::read(&path).unwrap();
    for _ in 0..3 {
        assert_eq!(
            smtp_login(&w.relay, "not-the-password").await,
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(w.tokens.count(), 1);
    drop(w.upstream);
}

#[tokio::test]
async fn with_a_store_key_tokens_are_fetched_before_any_login_and_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("store.key");
    std::fs::write(&key, "f3Jd0x2QmV0ZXJrZXlmaWxlY29udGVudHM9PT0K\n").unwrap();
    let path = dir.path().join("tokens.json");
    let w = world(&format!(
        "[store]\npath = \"{}\"\nkey_file = \"{}\"\ncheck_interval_secs = 1",
        path.display(),
        key.display()
    ))
    .await;
    // No client logged in: the background task fetched a token with the configured one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.tokens.count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.tokens.count(), 1);
    let store = Store::open(
        &path,
        Some(&Secret::new(std::fs::read_to_string(&key).unwrap())),
    )
    .unwrap();
    let k = store.known_key("user").unwrap();
    assert_eq!(
        store
            .open_entry("user", &k)
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "rt-1"
    );
    // Eight days without a refresh (edited in the clear metadata): the keep-alive refresh.
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let old = authrelay::store::unix_now() - 8 * 86400;
    file["accounts"]["user"]["refresh_token_at"] = old.into();
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.tokens.count() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.tokens.count(), 2);
    let entry = store.entry("user").unwrap();
    assert!(entry.refresh_token_at.unwrap() > old);
    // And the first login needs no request at all.
    assert_eq!(
        smtp_login(&w.relay, PASSWORD).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(w.tokens.count(), 2);
}

/// The writer half of the kill test: runs in a child process (this test binary, re-executed).
fn store_writer(path: &str) {
    let key = Secret::new("kill-test-store-key-0123456789abcdef0123");
    let store = Store::open(std::path::Path::new(path), Some(&key)).unwrap();
    let k = store.known_key("a").unwrap();
    for n in 0..1000u32 {
        store
            .update(
                "a",
                Some(&k),
                authrelay::store::Change {
                    refresh_token: Some(Secret::new(format!("rt-{n}"))),
                    refreshed: true,
                    ..Default::default()
                },
            )
            .unwrap();
    }
}

#[test]
fn kill_9_during_store_writes_never_leaves_an_unreadable_store() {
    if let Ok(path) = std::env::var("AUTHRELAY_STORE_WRITER") {
        store_writer(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let key = Secret::new("kill-test-store-key-0123456789abcdef0123");
    let exe = std::env::current_exe().unwrap();
    let mut last = -1i64;
    let mut kills = 0;
    let mut writes_seen = 0;
    for round in 0..30u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "kill_9_during_store_writes_never_leaves_an_unreadable_store",
                "--nocapture",
            ])
            .env("AUTHRELAY_STORE_WRITER", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment each round (SIGKILL: no cleanup at all).
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 200));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let store = Store::open(&path, Some(&key)).expect("the store is readable after kill -9");
        if let Some(k) = store.known_key("a") {
            let rt = store
                .open_entry("a", &k)
                .expect("the entry opens after kill -9")
                .refresh_token;
            if let Some(rt) = rt {
                let n: i64 = rt.expose().trim_start_matches("rt-").parse().unwrap();
                assert!((0..1000).contains(&n));
                writes_seen += 1;
                last = n;
            }
        }
    }
    assert!(kills >= 10, "only {kills} kills landed mid-write");
    assert!(writes_seen > 0 && last >= 0);
    println!("{kills} kills during writes; the store was readable after each");
}

/// While another process holds the store's lock for 8 s, writes wait on blocking threads: an
/// established session of another account answers NOOP at once, and a login whose token is
/// cached completes. (Before, two such writes held both runtime workers and every session
/// stalled for the whole 8 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_process_stalls_no_session() {
    let extra = ["b", "c"]
        .iter()
        .map(|n| {
            format!(
                "[account.{n}]\nlogin = \"{n}@example.com\"\npassword_hash = \"{HASH_OF_PASSWORD}\"\nprovider = \"custom\"\nclient_id = \"client-id\"\ntoken_url = \"TOKEN_URL\"\nrefresh_token = \"rt-{n}-not-valid\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let w = world(&extra.replace("TOKEN_URL", &tokens.url())).await;
    let relay = &w.relay;
    // An established session of `user`, its token cached.
    let mut established = Client::connect(relay.addr).await;
    established.reply().await;
    established.ehlo().await;
    established
        .send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
    assert_eq!(
        established.reply().await,
        "235 2.7.0 Authentication successful\r\n"
    );
    // Another process takes the store's lock and keeps it for 8 s.
    let lock_path = relay.config.store.path.with_file_name("tokens.json.lock");
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap();
        f.lock().unwrap();
        held_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(8));
    });
    held_rx.recv().unwrap();
    // Two logins whose token requests fail: each records the error in the store, and waits.
    let waiting: Vec<_> = ["b@example.com", "c@example.com"]
        .into_iter()
        .map(|user| {
            let addr = relay.addr;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.reply().await;
                c.ehlo().await;
                c.send(&format!("AUTH PLAIN {}\r\n", plain(user, PASSWORD)))
                    .await;
                c.reply().await
            })
        })
        .collect();
    // A blocking sleep: this thread is not a runtime worker, and a tokio timer would not fire
    // while the workers are stalled (which is the failure this test looks for).
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    established.send("NOOP\r\n").await;
    assert_eq!(established.reply().await, "250 2.0.0 Ok\r\n");
    let noop = started.elapsed();
    let started = std::time::Instant::now();
    assert_eq!(
        smtp_login(relay, PASSWORD).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    let login = started.elapsed();
    println!("store locked elsewhere: NOOP answered in {noop:?}, cached login in {login:?}");
    // Generous bounds (a shared machine): the failure this guards against takes the full 8 s.
    assert!(noop < Duration::from_secs(2), "NOOP took {noop:?}");
    assert!(login < Duration::from_secs(3), "login took {login:?}");
    for w in waiting {
        let reply = w.await.unwrap();
        assert!(reply.starts_with("535 5.7.8 Sign-in for"), "{reply}");
    }
    holder.join().unwrap();
}

#[tokio::test]
async fn every_log_line_of_these_tests_is_captured_and_scanned() {
    let w = world("").await;
    assert_eq!(
        smtp_login(&w.relay, PASSWORD).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    let log = captured_log();
    assert!(log.contains("upstream login accepted"), "{log}");
    assert!(log.contains("TRACE"), "trace level is captured");
    // The scanner finds each kind of secret.
    for planted in [
        format!("x {PASSWORD} y"),
        "token=access-12 ".into(),
        "refresh \"rt-3\"".into(),
        "client-secret-canary-91ab".into(),
    ] {
        assert!(find_secret_in(&planted).is_some(), "{planted}");
    }
    assert!(find_secret_in("access token refreshed, sort-1 rt-initial").is_none());
}

/// Upgrading: a store sealed with the local password, opened by a relay that makes and uses a
/// store key (the default now). The next device login moves the entry to the store key; from
/// then on the tokens open without any password.
#[tokio::test]
async fn a_password_sealed_store_moves_to_the_store_key_at_the_next_login() {
    let w = world("").await;
    let path = w.relay.config.store.path.clone();
    assert!(smtp_login(&w.relay, PASSWORD).await.starts_with("235 "));
    assert_eq!(stored_refresh_token(&path).await.as_deref(), Some("rt-1"));
    let World {
        upstream,
        tokens,
        relay,
    } = w;
    relay.running.stop(Duration::from_millis(100)).await;
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "",
        &format!("[store]\npath = \"{}\"", path.display()),
    );
    let second = Relay::start(&toml).await;
    assert!(smtp_login(&second, PASSWORD).await.starts_with("235 "));
    let material = std::fs::read_to_string(path.with_file_name("store.key")).unwrap();
    let store = Store::open(&path, Some(&Secret::new(material.trim()))).unwrap();
    let key = store.known_key("user").unwrap();
    let opened = store.open_entry("user", &key).unwrap();
    assert_eq!(
        opened
            .refresh_token
            .map(|s| s.expose().to_owned())
            .as_deref(),
        Some("rt-1")
    );
    // The password seals nothing any more.
    let by_password = Store::open(&path, None).unwrap();
    let derived = by_password.unlock("user", Some(&password())).await.unwrap();
    assert!(by_password.open_entry("user", &derived).is_err());
}
