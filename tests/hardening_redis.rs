//! A Redis that others can write (issue 26, finding 16, and the lease): what is planted there
//! must not make the shared store unusable, hold a mailbox's session slots or delivery starts
//! forever, or stop an account's refreshes for good. Against a real redis-server (Debian's),
//! the keys written with redis-cli as an intruder would.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::redis::*;
use support::*;

fn store(redis: &RedisServer) -> std::sync::Arc<authrelay::store::Store> {
    store_at(redis, &redis.url())
}

/// The store of `redis`'s test, reached at `url` (the server itself or a proxy to it).
fn store_at(redis: &RedisServer, url: &str) -> std::sync::Arc<authrelay::store::Store> {
    let key_file = redis.dir.path().join("store.key");
    std::fs::write(&key_file, "redis-hardening-key-0123456789abcdef").unwrap();
    let table = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nusername = \"{REDIS_USER}\"\npassword_file = \"{}\"\nkey_file = \"{}\"\npath = \"{}\"\n",
        redis.password_file.display(),
        key_file.display(),
        redis.dir.path().join("tokens.json").display()
    );
    let toml = relay_toml(
        "127.0.0.1:1".parse().unwrap(),
        "none",
        "http://127.0.0.1:1/token",
        "",
        &table,
    );
    let cfg = authrelay::config::from_toml_str(&toml).unwrap_or_else(|p| panic!("{p:?}"));
    cfg.store.open().unwrap()
}

/// One unparseable field in the store's hash made the store invalid for every account:
/// nothing could be saved. Now that field is skipped and the others are read and written.
#[test]
fn an_unreadable_field_in_the_store_hash_is_skipped() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let mut good = authrelay::store::Entry::default();
    good.client_id = Some("good-client".into());
    store
        .import(BTreeMap::from([("good".to_owned(), good)]))
        .unwrap();
    redis.cli(&["HSET", "authrelay:store", "evil", "{not json"]);
    redis.cli(&["INCR", "authrelay:store:version"]);
    store.reload_now().unwrap();
    assert_eq!(
        store.entry("good").and_then(|e| e.client_id).as_deref(),
        Some("good-client")
    );
    assert!(store.entry("evil").is_none());
    // Writing still works, for the others and for the damaged account (which replaces it).
    let mut fixed = authrelay::store::Entry::default();
    fixed.client_id = Some("evil-fixed".into());
    store
        .import(BTreeMap::from([("evil".to_owned(), fixed)]))
        .unwrap();
    store.reload_now().unwrap();
    assert_eq!(
        store.entry("evil").and_then(|e| e.client_id).as_deref(),
        Some("evil-fixed")
    );
}

/// Session slots planted with far-future scores never expired: the mailbox's deliveries
/// waited forever, silently. Delivery starts dated in the future likewise. A lease key
/// without an expiry stopped refreshes for good. Each is now cut back to what the relay itself
/// writes.
#[test]
fn planted_slots_starts_and_leases_do_not_hold_forever() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let far = "99999999999999";
    redis.cli(&[
        "ZADD",
        "authrelay:sessions:user",
        far,
        "a",
        far,
        "b",
        far,
        "c",
    ]);
    let owner = authrelay::store::Store::new_owner();
    assert!(
        store
            .take_slot("user", 3, &owner, Duration::from_secs(120))
            .unwrap(),
        "three planted slots held the mailbox"
    );
    let left: Vec<String> = redis
        .cli(&["ZRANGE", "authrelay:sessions:user", "0", "-1"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(left, vec![owner.clone()]);

    for i in 0..30 {
        redis.cli(&["ZADD", "authrelay:starts:user", far, &format!("s{i}")]);
    }
    assert_eq!(
        store.take_start("user", 30).unwrap(),
        None,
        "planted starts held the minute"
    );

    // A lease planted without an expiry, or for 31 years, is cut to the relay's own 10 s.
    for planted in [&["intruder"][..], &["intruder", "PX", "999999999999"]] {
        let mut set = vec!["SET", "authrelay:lease:user"];
        set.extend_from_slice(planted);
        redis.cli(&set);
        assert!(matches!(
            store.lease("user", Duration::from_secs(10)),
            authrelay::store::Lease::Busy
        ));
        let ttl: i64 = redis
            .cli(&["PTTL", "authrelay:lease:user"])
            .trim()
            .parse()
            .unwrap();
        assert!(
            (1..=10_000).contains(&ttl),
            "the lease planted as {planted:?} keeps {ttl} ms"
        );
    }
}

/// The test process's peak resident memory, in MiB.
fn peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib >> 10
}

/// A field of 64 MiB planted in the store's hash was read whole into the relay at every reload
/// (Redis takes values up to 512 MB), and so was any number of fields. Now the hash is read on
/// the server by a script that keeps fields up to 256 KiB, at most 10,000 of them: the relay's
/// memory stays put and the other accounts' entries are read as before.
#[test]
fn a_huge_field_or_a_flood_of_fields_stays_in_redis() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let mut good = authrelay::store::Entry::default();
    good.client_id = Some("good-client".into());
    store
        .import(BTreeMap::from([("good".to_owned(), good)]))
        .unwrap();
    let huge = redis.dir.path().join("huge");
    // Written a MiB at a time: the test's own peak memory must not hide the relay's.
    let mut file = std::fs::File::create(&huge).unwrap();
    for _ in 0..64 {
        std::io::Write::write_all(&mut file, &[b'{'; 1 << 20]).unwrap();
    }
    drop(file);
    let planted = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "-x",
            "HSET",
            "authrelay:store",
            "huge",
        ])
        .stdin(std::fs::File::open(&huge).unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&planted.stdout).trim(), "1");
    redis.cli(&["INCR", "authrelay:store:version"]);
    let before = peak_mib();
    store.reload_now().unwrap();
    let grown = peak_mib().saturating_sub(before);
    assert!(grown < 32, "the relay's peak memory grew by {grown} MiB");
    assert!(store.entry("huge").is_none());
    assert_eq!(
        store.entry("good").and_then(|e| e.client_id).as_deref(),
        Some("good-client")
    );
    println!("a 64 MiB field planted in Redis: peak memory +{grown} MiB, skipped");

    // 10,500 readable entries planted at once: 10,000 are read, the rest stay in Redis.
    redis.cli(&["HDEL", "authrelay:store", "huge", "good"]);
    redis.cli(&[
        "EVAL",
        "for i = 1, 10500 do redis.call('HSET', KEYS[1], 'f' .. i, '{}') end return 1",
        "1",
        "authrelay:store",
    ]);
    redis.cli(&["INCR", "authrelay:store:version"]);
    store.reload_now().unwrap();
    let read = (1..=10_500)
        .filter(|i| store.entry(&format!("f{i}")).is_some())
        .count();
    assert_eq!(read, 10_000);
}

/// A proxy in front of the test's redis-server that, once `garbage` holds a reply, answers
/// every request with it instead of the server's answer (the connection stays open): a
/// Redis that goes wrong in the middle of a session.
struct GarbageProxy {
    port: u16,
    garbage: std::sync::Arc<std::sync::Mutex<Option<&'static [u8]>>>,
}

impl GarbageProxy {
    fn start(upstream: u16) -> GarbageProxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let garbage = std::sync::Arc::new(std::sync::Mutex::new(None::<&'static [u8]>));
        let mode = garbage.clone();
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let mode = mode.clone();
                std::thread::spawn(move || {
                    let mut server = std::net::TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    // The server's answers go back as they come; in garbage mode nothing is
                    // forwarded to it, so nothing comes.
                    let (mut answers, mut back) =
                        (server.try_clone().unwrap(), client.try_clone().unwrap());
                    std::thread::spawn(move || std::io::copy(&mut answers, &mut back));
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let reply = *mode.lock().unwrap();
                        let sent = match reply {
                            Some(reply) => client.write_all(reply),
                            None => server.write_all(&buf[..n]),
                        };
                        if sent.is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        GarbageProxy { port, garbage }
    }

    fn answer(&self, garbage: Option<&'static [u8]>) {
        *self.garbage.lock().unwrap() = garbage;
    }
}

/// A Redis answering protocol garbage mid-session (a web server or another service behind the
/// address, a broken proxy, a truncated or mistyped reply): every call ends in an error within
/// its timeout, nothing panics, no error shows the ACL password, and once the server answers
/// properly again the store reads and writes as before.
#[test]
fn a_redis_answering_garbage_mid_session_is_an_error_and_then_recovered() {
    let redis = RedisServer::start();
    let proxy = GarbageProxy::start(redis.port);
    let store = store_at(&redis, &format!("redis://127.0.0.1:{}/0", proxy.port));
    let mut good = authrelay::store::Entry::default();
    good.client_id = Some("good-client".into());
    store
        .import(BTreeMap::from([("good".to_owned(), good)]))
        .unwrap();
    let kinds: [(&str, &[u8]); 6] = [
        (
            "an HTTP server",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        ),
        ("an error to everything", b"-ERR unknown command\r\n"),
        ("OK to everything", b"+OK\r\n"),
        ("binary noise", b"\x00\xff\xfe garbage \x01\r\n"),
        ("a truncated array", b"*3\r\n$1\r\na\r\n"),
        ("a bulk that never comes", b"$1000000\r\nxyz"),
    ];
    for (name, garbage) in kinds {
        proxy.answer(Some(garbage));
        let started = std::time::Instant::now();
        let read = store.reload_now();
        let lease = store.lease("good", Duration::from_secs(10));
        let took = started.elapsed();
        let said = format!("{read:?} {lease:?}");
        assert!(read.is_err(), "{name}: read {said}");
        assert!(
            matches!(lease, authrelay::store::Lease::Unavailable(Some(_))),
            "{name}: lease {said}"
        );
        assert!(!said.contains(REDIS_PASSWORD), "{name}: {said}");
        // Two calls, each a few 1.5 s timeouts at most (a reconnect, a script's retry): a
        // bound for a hang, not a measure of speed.
        assert!(took < Duration::from_secs(60), "{name}: {took:?}");
        proxy.answer(None);
        store
            .reload_now()
            .unwrap_or_else(|e| panic!("{name}: after: {e}"));
        assert_eq!(
            store.entry("good").and_then(|e| e.client_id).as_deref(),
            Some("good-client"),
            "{name}"
        );
        println!("{name}: an error in {took:?}, then read again");
    }
}
