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
    let key_file = redis.dir.path().join("store.key");
    std::fs::write(&key_file, "redis-hardening-key-0123456789abcdef").unwrap();
    let table = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nusername = \"{REDIS_USER}\"\npassword_file = \"{}\"\nkey_file = \"{}\"\npath = \"{}\"\n",
        redis.url(),
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

    redis.cli(&["SET", "authrelay:lease:user", "intruder"]);
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
        "the planted lease keeps {ttl} ms"
    );
}
