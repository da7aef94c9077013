//! The token store in Redis, shared by replicas, against a real redis-server (Debian's) with an
//! ACL user: sealed records only, `authrelay check`, one store seen by every replica, and one
//! token request for a thousand logins on three replicas when the token has expired.

mod support;

use authrelay::secret::Secret;
use std::time::{Duration, Instant, SystemTime};
use support::redis::*;
use support::*;

const STORE_KEY: &str = "redis-store-key-canary-0123456789abcdef";

/// The `[store]` table of a relay on `redis`, with the key file in `dir`.
fn store_table(redis: &RedisServer, password_file: &std::path::Path) -> String {
    let key_file = redis.dir.path().join("store.key");
    std::fs::write(&key_file, STORE_KEY).unwrap();
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nusername = \"{REDIS_USER}\"\npassword_file = \"{}\"\nkey_file = \"{}\"\npath = \"{}\"\n",
        redis.url(),
        password_file.display(),
        key_file.display(),
        redis.dir.path().join("tokens.json").display()
    )
}

fn config(toml: &str) -> authrelay::config::Config {
    authrelay::config::from_toml_str(toml).unwrap_or_else(|p| panic!("{p:?}"))
}

#[test]
fn the_shared_store_is_sealed_checked_and_seen_by_every_replica() {
    let redis = RedisServer::start();
    let toml = relay_toml(
        "127.0.0.1:1".parse().unwrap(),
        "none",
        "http://127.0.0.1:1/token",
        "",
        &store_table(&redis, &redis.password_file),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authrelay.toml");
    std::fs::write(&path, &toml).unwrap();
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .arg("check")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&path);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("store: {} answers", redis.url())),
        "{said}"
    );
    // A wrong ACL password is named as such.
    let wrong = redis.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let bad = path.with_file_name("bad.toml");
    std::fs::write(
        &bad,
        toml.replace(
            &redis.password_file.display().to_string(),
            &wrong.display().to_string(),
        ),
    )
    .unwrap();
    let out = check(&bad);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        said.contains("error: store: ")
            && said.contains("refused the login of authrelay (wrong username or password_file?)"),
        "{said}"
    );
    assert!(!said.contains("not-the-password"), "{said}");

    // Two replicas' stores: a grant written through one is seen by the other.
    let cfg = config(&toml);
    let (a, b) = (cfg.store.open().unwrap(), cfg.store.open().unwrap());
    let key = a.known_key("user").unwrap();
    let rt = "rt-in-redis-canary-4242";
    let at = "at-in-redis-canary-4343";
    let secret = "client-secret-in-redis-canary-4444";
    a.update(
        "user",
        Some(&key),
        authrelay::store::Change {
            refresh_token: Some(Secret::new(rt)),
            access_token: Some((
                Secret::new(at),
                SystemTime::now() + Duration::from_secs(3600),
            )),
            client_secret: Some(Secret::new(secret)),
            authorized: true,
            ..Default::default()
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while b.generation("user") == 0 {
        assert!(
            Instant::now() < deadline,
            "the other replica never saw the write"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = b.open_entry("user", &b.known_key("user").unwrap()).unwrap();
    assert_eq!(opened.refresh_token.as_ref().map(|s| s.expose()), Some(rt));
    // Redis holds sealed values only.
    let dump = redis.dump();
    assert!(dump.contains("authrelay:store"), "{dump}");
    for canary in [rt, at, secret, STORE_KEY, REDIS_PASSWORD] {
        assert!(
            !dump.contains(canary),
            "{canary} is in Redis in clear:\n{dump}"
        );
    }
}

/// Three replicas on one Redis behind HAProxy (round robin), the access token expired: a
/// thousand logins at once make exactly one token request in all; the others wait for the lease holder's
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_refresh_once_for_a_thousand_logins() {
    let redis = RedisServer::start();
    let (tokens, upstream) = token_world().await;
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "max_connections = 2000\nmax_connections_per_address = 2000",
        &store_table(&redis, &redis.password_file),
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Relay::start(&toml).await);
    }
    // The token fetched at start by one of them (the lease) is in Redis for all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.count() == 0
        || replicas
            .iter()
            .any(|r| r.running.shared.tokens.store().generation("user") == 0)
    {
        assert!(Instant::now() < deadline, "no start-up token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tokens.count(),
        1,
        "three replicas starting fetched one token"
    );
    // The access token expires (written as another replica would).
    let cfg = config(&toml);
    let store = cfg.store.open().unwrap();
    expire_token(&store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // HAProxy (Debian's) in front, round robin, as the replicas would run.
    let front = free_tcp_port();
    let cfg = format!(
        "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend smtp\n  bind 127.0.0.1:{front}\n  default_backend relays\nbackend relays\n  balance roundrobin\n{}",
        replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("  server r{i} {}\n", r.addr))
            .collect::<String>()
    );
    let haproxy_cfg = redis.dir.path().join("haproxy.cfg");
    std::fs::write(&haproxy_cfg, cfg).unwrap();
    let mut haproxy = RelayChild(
        std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&haproxy_cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (Debian's package; tests/harness/start.sh installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let front: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    let before = tokens.count();
    let logins: Vec<_> = (0..1000)
        .map(|_| {
            let addr = front;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.reply().await;
                c.ehlo().await;
                c.send(&format!(
                    "AUTH PLAIN {}\r\n",
                    plain("user@example.com", PASSWORD)
                ))
                .await;
                c.reply().await
            })
        })
        .collect();
    let mut ok = 0;
    for l in logins {
        let reply = l.await.unwrap();
        assert!(reply.starts_with("235"), "{reply}");
        ok += 1;
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    let requests = tokens.count() - before;
    let served: Vec<u64> = replicas.iter().map(upstream_logins).collect();
    println!("three replicas behind HAProxy, 1000 concurrent logins on an expired token: {ok} logged in ({served:?} per replica), {requests} token request(s)");
    assert!(served.iter().all(|n| *n >= 300), "round robin: {served:?}");
    assert_eq!(requests, 1);
    assert!(
        !redis.dump().contains("access-2"),
        "an access token in clear"
    );
    assert_logs_clean();
}

/// Redis stopped for 30 s under steady logins is not an outage: logins with the cached token go
/// on, a refresh needed meanwhile happens locally (no lease to take), readiness says degraded,
/// and the rotated refresh token is written to Redis when it is back (restarted on its data):
/// never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_away_is_not_an_outage_and_a_rotation_is_written_back() {
    let mut redis = RedisServer::start();
    let (tokens, upstream) = token_world().await;
    // Tokens good for five seconds past the refresh margin (600 s): the next one is due soon.
    tokens
        .expires_in
        .store(605, std::sync::atomic::Ordering::SeqCst);
    let extra = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        store_table(&redis, &redis.password_file)
    );
    let toml = relay_toml(upstream.addr, "none", &tokens.url(), "", &extra);
    let relay = Relay::start(&toml).await;
    let admin = relay.admin_addr();
    let login = || async {
        let mut c = Client::connect(relay.addr).await;
        c.reply().await;
        c.ehlo().await;
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            plain("user@example.com", PASSWORD)
        ))
        .await;
        c.reply().await
    };
    assert!(login().await.starts_with("235"));
    let first = tokens.count();
    // The next token (the refresh while Redis is away) lasts an hour.
    tokens
        .expires_in
        .store(3600, std::sync::atomic::Ordering::SeqCst);
    redis.stop();
    let stopped_at = Instant::now();
    // The cached token serves.
    for _ in 0..5 {
        assert!(login().await.starts_with("235"));
    }
    assert_eq!(tokens.count(), first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ready = String::new();
    while !ready.contains("degraded") {
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = support::spool::http_get(admin, "/readyz").await;
    }
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // The token comes due while Redis is away: the relay refreshes alone, and the rotation
    // waits to be written.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(login().await.starts_with("235"));
    assert_eq!(tokens.count(), first + 1);
    let ready = support::spool::http_get(admin, "/readyz").await;
    assert!(ready.contains("1 change(s) wait to be written"), "{ready}");
    // Steady logins for the rest of 30 s without Redis, on the new token.
    let mut steady = 0;
    while stopped_at.elapsed() < Duration::from_secs(30) {
        assert!(login().await.starts_with("235"));
        steady += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tokens.count(), first + 1, "no refresh beyond the one due");
    // Redis is back: the rotated refresh token is written to it.
    redis.restart();
    wait_for_refresh_token(&toml, &format!("rt-{}", first + 1)).await;
    let ready = support::spool::http_get(admin, "/readyz").await;
    assert!(!ready.contains("degraded"), "{ready}");
    assert!(login().await.starts_with("235"));
    println!("redis stopped for 30 s: {} logins, none failed, 1 local refresh, readiness degraded and back, the rotated refresh token written back", 6 + steady);
}

/// `authrelay store migrate` copies the sealed entries from the file to Redis and back,
/// opening none: they open at the target with the same key.
#[test]
fn migrate_copies_the_sealed_entries_both_ways() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = redis.dir.path().join("tokens.json");
    let toml = relay_toml(
        "127.0.0.1:1".parse().unwrap(),
        "none",
        "http://127.0.0.1:1/token",
        "",
        &store_table(&redis, &redis.password_file),
    );
    let path = dir.path().join("authrelay.toml");
    std::fs::write(&path, &toml).unwrap();
    let cfg = config(&toml);
    let local = authrelay::store::Store::open(&cfg.store.path, cfg.store.key.as_ref()).unwrap();
    let key = local.known_key("user").unwrap();
    local
        .update(
            "user",
            Some(&key),
            authrelay::store::Change {
                refresh_token: Some(Secret::new("rt-migrate-canary-5151")),
                authorized: true,
                ..Default::default()
            },
        )
        .unwrap();
    let migrate = |to: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["store", "migrate", "--to", to, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        said
    };
    let said = migrate("redis");
    assert!(said.contains("1 account(s) copied"), "{said}");
    assert!(!redis.dump().contains("rt-migrate-canary-5151"));
    let shared = cfg.store.open().unwrap();
    let opened = shared.open_entry("user", &key).unwrap();
    assert_eq!(
        opened
            .refresh_token
            .map(|s| s.expose().to_owned())
            .as_deref(),
        Some("rt-migrate-canary-5151")
    );
    // And back, into a file that did not exist.
    std::fs::remove_file(&file).unwrap();
    migrate("file");
    let back = authrelay::store::Store::open(&cfg.store.path, cfg.store.key.as_ref()).unwrap();
    let opened = back.open_entry("user", &key).unwrap();
    assert_eq!(
        opened
            .refresh_token
            .map(|s| s.expose().to_owned())
            .as_deref(),
        Some("rt-migrate-canary-5151")
    );
}

/// A relay process, killed when dropped (a failing test leaves none behind).
struct RelayChild(std::process::Child);

impl RelayChild {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relay process on `toml` with its listener on `port`.
fn spawn_relay(toml: &str, port: u16, dir: &std::path::Path, name: &str) -> RelayChild {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        toml.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    let child = RelayChild(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// kill -9 of the replica holding the refresh lease while the identity provider does not
/// answer: the other replica takes over once the lease expires (15 s) and completes the
/// refresh; the rotated refresh token is in Redis once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_of_a_killed_replica_expires_and_another_refreshes() {
    let redis = RedisServer::start();
    let (tokens, upstream) = token_world().await;
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "",
        &format!(
            "{}\n[security]\ntoken_timeout_secs = 60\n\n[admin]\nenabled = false\n",
            store_table(&redis, &redis.password_file)
        ),
    )
    .replace(
        "[security]\nfailure_delay_ms = 0\ntoken_timeout_secs = 2\n",
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_tcp_port(), free_tcp_port());
    let mut a = spawn_relay(&toml, port_a, dir.path(), "a");
    let mut b = spawn_relay(&toml, port_b, dir.path(), "b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.count() == 0 {
        assert!(Instant::now() < deadline, "no start-up token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tokens.count(), 1);
    // The token expires; the identity provider stops answering.
    let store = config(&toml).store.open().unwrap();
    expire_token(&store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokens.set(TokenBehaviour::Hang);
    let login = |port: u16| patient_login(port);
    let on_a = tokio::spawn(login(port_a));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.count() < 2 {
        assert!(Instant::now() < deadline, "a never asked for a token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leased_at = Instant::now();
    let on_b = tokio::spawn(login(port_b));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tokens.count(), 2, "b waits for the lease instead of asking");
    a.kill().unwrap();
    a.wait().unwrap();
    tokens.set(TokenBehaviour::Issue);
    let reply = on_b.await.unwrap();
    let took = leased_at.elapsed();
    assert!(reply.starts_with("235"), "{reply}");
    let _ = on_a.await;
    println!("the lease holder killed mid-refresh: the other replica refreshed {:.1} s after the lease was taken (lease 15 s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(19), "{took:?}");
    assert_eq!(tokens.count(), 3, "one more request, by b");
    // The rotated refresh token is in Redis, once: the one the endpoint now accepts.
    let accepted = tokens.valid_refresh.lock().unwrap().clone();
    let _ = store.reload_now();
    let stored = store
        .open_entry("user", &store.known_key("user").unwrap())
        .unwrap()
        .refresh_token
        .map(|s| s.expose().to_owned());
    assert_eq!(stored.as_ref(), accepted.first());
    b.kill().unwrap();
    b.wait().unwrap();
}

/// Logins a relay completed (its metrics' login-duration count).
fn upstream_logins(r: &Relay) -> u64 {
    r.running
        .shared
        .metrics
        .render(&[])
        .lines()
        .find_map(|l| l.strip_prefix("authrelay_login_duration_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// EHLO and AUTH PLAIN as `user@example.com`, waiting as long as it takes (the test's Client
/// gives up after seconds); the AUTH reply line, and the connection, kept open.
async fn patient_session(port: u16) -> (String, tokio::io::BufReader<tokio::net::TcpStream>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(tcp);
    let mut line = String::new();
    let auth = format!(
        "EHLO t\r\nAUTH PLAIN {}\r\n",
        plain("user@example.com", PASSWORD)
    );
    lines.get_mut().write_all(auth.as_bytes()).await.unwrap();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return ("closed".to_owned(), lines);
        }
        if line.starts_with("235") || line.starts_with('4') || line.starts_with('5') {
            return (line, lines);
        }
    }
}

async fn patient_login(port: u16) -> String {
    patient_session(port).await.0
}

/// Live-pipe SMTP sessions take the same mailbox slots across replicas: with `concurrency = 2`,
/// two sessions on two replicas hold both, a third waits and is told to try again later, and a
/// slot given back by a session that ends serves the next login at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_pipe_sessions_count_towards_the_mailbox_limit_across_replicas() {
    let redis = RedisServer::start();
    let (tokens, upstream) = token_world().await;
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "",
        &format!(
            "concurrency = 2\n{}",
            store_table(&redis, &redis.password_file)
        ),
    );
    let (a, b) = (Relay::start(&toml).await, Relay::start(&toml).await);
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let (first, one) = patient_session(pa).await;
    let (second, _two) = patient_session(pb).await;
    assert!(
        first.starts_with("235") && second.starts_with("235"),
        "{first} {second}"
    );
    let third = patient_login(pa).await;
    assert_eq!(
        third,
        "454 4.4.1 Upstream unreachable (all 2 sessions of this mailbox are in use), try again later\r\n"
    );
    drop(one);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fourth = patient_login(pb).await;
    assert!(fourth.starts_with("235"), "{fourth}");
    println!("live pipe, concurrency 2, two replicas: 2 sessions held, the 3rd told 454 4.4.1 after waiting 10 s, a freed slot served the 4th");
}

/// Writes an access token that expired a minute ago, as another replica would.
fn expire_token(store: &authrelay::store::Store) {
    store
        .update(
            "user",
            Some(&store.known_key("user").unwrap()),
            authrelay::store::Change {
                access_token: Some((
                    Secret::new("access-expired"),
                    SystemTime::now() - Duration::from_secs(60),
                )),
                ..Default::default()
            },
        )
        .unwrap();
}

/// The account pages write to the shared store: an app registration saved on one replica's
/// page (CSRF token and local password, as always) is in Redis, sealed where secret, and the
/// other replica reads it without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_account_page_writes_to_the_shared_store() {
    let redis = RedisServer::start();
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let extra = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        store_table(&redis, &redis.password_file)
    );
    let toml = relay_toml(
        "127.0.0.1:1".parse().unwrap(),
        "none",
        &tokens.url(),
        "",
        &extra,
    );
    let (a, b) = (Relay::start(&toml).await, Relay::start(&toml).await);
    let admin = |r: &Relay| r.admin_addr();
    let page = support::spool::http_get(admin(&a), "/account/user").await;
    let csrf = csrf_of(&page);
    let secret = "page-secret-canary-6262";
    let form = format!(
        "csrf={csrf}&password={}&client_id=page-client-7&client_secret={secret}",
        PASSWORD.replace(' ', "+")
    );
    let r = support::spool::http_post(admin(&a), "/account/user/app", &form).await;
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    let other = b.running.shared.tokens.store().clone();
    let deadline = Instant::now() + Duration::from_secs(3);
    while other.entry("user").and_then(|e| e.client_id).as_deref() != Some("page-client-7") {
        assert!(
            Instant::now() < deadline,
            "the other replica never saw the page's change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = other
        .open_entry("user", &other.known_key("user").unwrap())
        .unwrap();
    assert_eq!(
        opened.client_secret.as_ref().map(|s| s.expose()),
        Some(secret)
    );
    let dump = redis.dump();
    assert!(dump.contains("page-client-7"), "{dump}");
    assert!(
        !dump.contains(secret),
        "the client secret is in Redis in clear"
    );
}

/// `rediss://`: the server's certificate is verified, against the configured `ca` (a server
/// whose certificate no trusted root vouches for is refused, and `authrelay check` says so).
#[test]
fn rediss_is_verified_against_the_configured_ca() {
    let cert = TestCert::new();
    let port = free_tcp_port();
    let dir = tempfile::tempdir().unwrap();
    let _server = RelayChild(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert.cert)
            .arg("--tls-key-file")
            .arg(&cert.key)
            .arg("--tls-ca-cert-file")
            .arg(&cert.cert)
            .args(["--tls-auth-clients", "no", "--save", ""])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_file = dir.path().join("store.key");
    std::fs::write(&key_file, STORE_KEY).unwrap();
    let table = |ca: &str| {
        relay_toml(
            "127.0.0.1:1".parse().unwrap(),
            "none",
            "http://127.0.0.1:1/token",
            "",
            &format!(
                "[store]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:{port}/0\"\nkey_file = \"{}\"\npath = \"{}\"\n{ca}",
                key_file.display(),
                dir.path().join("tokens.json").display()
            ),
        )
    };
    let check = |toml: &str| {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let trusted = table(&format!("ca = \"{}\"\n", cert.cert.display()));
    let (ok, said) = check(&trusted);
    assert!(ok && said.contains("answers"), "{said}");
    let store = config(&trusted).store.open().unwrap();
    store
        .update(
            "user",
            Some(&store.known_key("user").unwrap()),
            authrelay::store::Change {
                refresh_token: Some(Secret::new("rt-over-tls")),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(store.generation("user"), 1);
    let (ok, said) = check(&table(""));
    assert!(!ok, "{said}");
    assert!(
        said.contains("error: store: ") && said.to_lowercase().contains("certificate"),
        "{said}"
    );
}

/// A rotation held back while Redis is away survives a kill -9 of its replica: it is journalled
/// (sealed) beside the store file, and the replica started after Redis returns writes it first,
/// before any refresh of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_back_rotation_survives_a_kill_9_of_its_replica() {
    let mut redis = RedisServer::start();
    let (tokens, upstream) = token_world().await;
    tokens
        .expires_in
        .store(605, std::sync::atomic::Ordering::SeqCst);
    let toml = relay_toml(
        upstream.addr,
        "none",
        &tokens.url(),
        "",
        &format!(
            "{}\n[admin]\nenabled = false\n",
            store_table(&redis, &redis.password_file)
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let mut first = spawn_relay(&toml, port, dir.path(), "first");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.count() == 0 {
        assert!(Instant::now() < deadline, "no start-up token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokens
        .expires_in
        .store(3600, std::sync::atomic::Ordering::SeqCst);
    redis.stop();
    // The start-up token comes due; the refresh happens without Redis, and is held back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let reply = patient_login(port).await;
    assert!(reply.starts_with("235"), "{reply}");
    assert_eq!(tokens.count(), 2);
    first.kill().unwrap();
    first.wait().unwrap();
    let rotated = tokens.valid_refresh.lock().unwrap()[0].clone();
    // Redis comes back with the old refresh token; a new replica starts on the same disk.
    redis.restart();
    let mut second = spawn_relay(&toml, free_tcp_port(), dir.path(), "second");
    wait_for_refresh_token(&toml, &rotated).await;
    assert_eq!(tokens.count(), 2, "no refresh with the stale refresh token");
    second.kill().unwrap();
    second.wait().unwrap();
    println!("a rotation held back while Redis was away, then kill -9: written to Redis by the next replica on the same disk");
}

/// Waits (10 s at most) until the shared store of `toml` holds `expected` as the refresh token,
/// looking through a store of its own (with its own journal: the relay's is the relay's).
async fn wait_for_refresh_token(toml: &str, expected: &str) {
    let cfg = config(toml);
    let own = tempfile::tempdir().unwrap();
    let store = authrelay::store::Store::open_with(
        &own.path().join("tokens.json"),
        cfg.store.key.as_ref(),
        cfg.store.redis(),
    )
    .unwrap();
    let key = store.known_key("user").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = store.reload_now();
        let rt = store
            .open_entry("user", &key)
            .ok()
            .and_then(|o| o.refresh_token)
            .map(|s| s.expose().to_owned());
        if rt.as_deref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rotation never reached Redis: {rt:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fake token endpoint (refresh token `rt-initial-canary-55cd`, rotating) and a fake SMTP
/// upstream that takes the first twenty access tokens it issues.
async fn token_world() -> (TokenEndpoint, FakeUpstream) {
    let tokens = TokenEndpoint::start("rt-initial-canary-55cd").await;
    let upstream = FakeUpstream::start(UpstreamOptions::default(), None).await;
    for n in 1..=20 {
        upstream.accept_token(&format!("access-{n}"), "mailbox@example.com");
    }
    (tokens, upstream)
}
