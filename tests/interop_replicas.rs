//! Replicas sharing one Redis (Debian's redis-server, an ACL user) in front of real servers:
//! three spool relays deliver for one mailbox through the harness's Dovecot submission that
//! allows each user three sessions at once, like Exchange Online; together they never open a
//! fourth.

mod support;

use std::process::Command;
use std::time::Duration;
use support::interop::*;
use support::redis::*;

/// The `[store]` table of a replica on `redis`.
fn shared_store(redis: &RedisServer) -> String {
    let key_file = redis.dir.path().join("store.key");
    std::fs::write(&key_file, STORE_KEY).unwrap();
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nusername = \"{REDIS_USER}\"\npassword_file = \"{}\"\nkey_file = \"{}\"\npath = \"{}\"\n",
        redis.url(),
        redis.password_file.display(),
        key_file.display(),
        redis.dir.path().join("tokens.json").display()
    )
}

#[test]
fn three_replicas_keep_a_mailbox_within_three_sessions() {
    stack();
    let redis = RedisServer::start();
    let user = unique_user("replicas");
    let rt = new_refresh_token(&user);
    let store = shared_store(&redis);
    let relays: Vec<RelayProcess> = (0..3)
        .map(|_| {
            RelayProcess::start_spool_shared(
                AccountSpec {
                    mailbox: &user,
                    refresh_token: Some(&rt),
                    token_url: format!("http://{IDP}/token"),
                },
                "127.0.0.2:11588",
                "starttls",
                "messages_per_minute = 6000",
                &store,
            )
        })
        .collect();
    let run_id = format!("replicas-{}", free_port());
    let send = |port: u16, i: usize| -> String {
        let script = format!(
            "import smtplib,sys\ns=smtplib.SMTP('127.0.0.1',{port})\ns.login('scanner@example.com',sys.argv[1])\ntry:\n  s.sendmail('{user}',['{user}'],'From: {user}\\r\\nSubject: {run_id}-{i}\\r\\n\\r\\nscan {i}\\r\\n')\n  print('ok')\nexcept smtplib.SMTPException as e:\n  print('refused', e)\n"
        );
        text(&run(Command::new("python3").args([
            "-c",
            &script,
            LOCAL_PASSWORD,
        ])))
    };
    let results: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..60)
            .map(|i| {
                let port = relays[i % 3].plain;
                let send = &send;
                scope.spawn(move || send(port, i))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&String> = results.iter().filter(|r| !r.starts_with("ok")).collect();
    assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
    for i in 0..60 {
        let marker = format!("Subject: {run_id}-{i}\n");
        assert!(
            delivered(&user, &marker, Duration::from_secs(120)).is_some(),
            "{run_id}-{i} was not delivered"
        );
    }
    let copies = maildir_files(&user)
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| t.contains(&format!("Subject: {run_id}-")))
        })
        .count();
    assert_eq!(copies, 60, "each of the 60 messages exactly once");
    for r in &relays {
        let log = r.log_text();
        assert!(
            !log.contains("Maximum number of connections"),
            "a fourth session was opened: {log}"
        );
        r.assert_no_secrets();
    }
    let dump = redis.dump();
    for canary in [
        rt.as_str(),
        LOCAL_PASSWORD,
        CLIENT_SECRET,
        STORE_KEY,
        REDIS_PASSWORD,
    ] {
        assert!(!dump.contains(canary), "{canary} is in Redis in clear");
    }
    println!("three replicas, one Redis: 60 devices at once, 60 accepted, 60 delivered once, no session over Dovecot's limit of 3 per user");
}
