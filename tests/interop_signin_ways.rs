//! The newcomer's path (see support/newcomer.rs) for the ways a token enters the relay besides
//! a sign-in: client credentials (the app's own secret, no user), a refresh token handed over in
//! `refresh_token_file`, and a token store moved to Redis with `store migrate`. Each against the
//! harness (Dovecot checking every token at the identity provider): the running relay delivers
//! spooled mail and serves live IMAP and POP3 logins, and does again after a restart with no
//! device logging in.
//! Also: what a device is told while an account is set up wrongly, and a sign-in as another
//! user. The device-code, paste and account-page sign-ins are in interop_unattended.rs.

mod support;

use std::io::{BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::interop::*;
use support::newcomer::{modes, Newcomer};
use support::redis::{RedisServer, REDIS_USER};

/// Spooled delivery, live logins, a restart, and delivery again: what every way must give.
fn serves_and_survives_a_restart(r: &mut Newcomer, tag: &str) {
    let first = format!("{tag}-first-{}", free_port());
    assert_eq!(r.send(&first), "OK", "{}", r.log_text());
    assert!(
        delivered(&r.user, &first, Duration::from_secs(60)).is_some(),
        "{}",
        r.log_text()
    );
    assert_eq!(r.imap_count(), "COUNT 1", "{}", r.log_text());
    assert!(r.pop3_stat().starts_with("STAT 1 "), "{}", r.log_text());
    let live = run(&mut r.command(Path::new("/"), &["check", "--live"]));
    assert!(live.status.success(), "{}", text(&live));
    r.stop();
    r.start();
    let second = format!("{tag}-second-{}", free_port());
    assert_eq!(r.send(&second), "OK", "{}", r.log_text());
    assert!(
        delivered(&r.user, &second, Duration::from_secs(60)).is_some(),
        "after the restart: {}",
        r.log_text()
    );
    assert_eq!(r.imap_count(), "COUNT 2", "{}", r.log_text());
    let log = r.log_text();
    assert!(!log.contains("no_refresh_token"), "{log}");
    assert!(!log.contains("invalid_grant"), "{log}");
}

#[test]
fn newcomer_with_client_credentials() {
    let mut r = Newcomer::new("newapp");
    let secret = format!("app-secret-canary-{}", free_port());
    // The app registration with its own secret, acting for the mailbox (what an Exchange
    // service principal with mailbox access gives).
    register_client(&format!(
        r#"{{"client_id":"{}","secret":"{secret}","mailbox":"{}"}}"#,
        r.client_id, r.user
    ));
    r.set("ACCOUNT__SCANNER__AUTH", "client_credentials");
    r.set("ACCOUNT__SCANNER__CLIENT_SECRET", &secret);
    r.start();
    // `authrelay login` proves the registration, from another directory.
    let login = run(&mut r.command(Path::new("/"), &["login", "scanner"]));
    assert!(login.status.success(), "{}", text(&login));
    serves_and_survives_a_restart(&mut r, "app");
    for (what, t) in [("log", r.log_text()), ("login output", text(&login))] {
        assert_eq!(
            find_secret(&t, std::slice::from_ref(&secret)),
            None,
            "secret in the {what}"
        );
    }
}

#[test]
fn newcomer_with_a_refresh_token_file() {
    let mut r = Newcomer::new("newrtfile");
    // A refresh token from elsewhere (another tool's sign-in), in a private file beside the
    // configuration. The identity provider rotates it at the first use and forgets the old
    // one: after a restart only the store's rotated token works.
    let token = new_refresh_token(&r.user);
    let file = r.config.parent().unwrap().join("scanner.refresh_token");
    std::fs::write(&file, &token).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    r.set(
        "ACCOUNT__SCANNER__REFRESH_TOKEN_FILE",
        &file.display().to_string(),
    );
    r.start();
    serves_and_survives_a_restart(&mut r, "rtfile");
    assert_eq!(find_secret(&r.log_text(), &[token]), None);
    for (path, mode) in modes(&r.state()) {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}", path.display());
    }
}

/// A newcomer who starts with the file store and moves to Redis (for replicas): the sign-in's
/// token goes over with `authrelay store migrate --to redis`, sealed, and the relay on Redis
/// uses it at once and after a restart.
#[test]
fn newcomer_with_a_store_moved_to_redis() {
    let redis = RedisServer::start();
    let mut r = Newcomer::new("newredis");
    // Replicas share one key: it is given, not made.
    let key = r.config.parent().unwrap().join("store.key");
    std::fs::write(&key, "a-store-key-of-at-least-32-characters-canary").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    r.set("STORE__KEY_FILE", &key.display().to_string());
    r.start();
    let output = r.sign_in("--device");
    assert!(output.contains("authorized"), "{output}");
    r.stop();
    r.set("STORE__BACKEND", "redis");
    r.set("STORE__URL", &redis.url());
    r.set("STORE__USERNAME", REDIS_USER);
    r.set(
        "STORE__PASSWORD_FILE",
        &redis.password_file.display().to_string(),
    );
    let moved = run(&mut r.command(Path::new("/"), &["store", "migrate", "--to", "redis"]));
    assert!(
        moved.status.success() && text(&moved).contains("1 account(s) copied"),
        "{}",
        text(&moved)
    );
    r.start();
    serves_and_survives_a_restart(&mut r, "redis");
    // Redis holds sealed entries only.
    let dump = redis.dump();
    assert!(dump.contains("scanner"), "{dump}");
    let canaries = [
        LOCAL_PASSWORD.to_owned(),
        std::fs::read_to_string(&key).unwrap(),
    ];
    assert_eq!(find_secret(&dump, &canaries), None);
}

/// Setting up with a wrong client secret, tenant or authority on a spooling listener: the
/// device's AUTH gets the same reply with advice as the live pipe gives (what the scanner's
/// "test e-mail" button shows), instead of `250` and days of retries. Nothing is queued.
#[test]
fn a_wrong_secret_tenant_or_authority_is_told_at_auth_while_setting_up() {
    for (key, value, told) in [
        (
            "CLIENT_SECRET",
            "the-secret-id-not-its-value".to_owned(),
            "(AADSTS7000215): wrong client secret: copy the secret's Value, not its Secret ID"
                .to_owned(),
        ),
        (
            "TENANT",
            "fabrikam".to_owned(),
            "(AADSTS90002): the tenant does not exist".to_owned(),
        ),
        (
            "AUTHORITY",
            format!("http://{IDP}/wrong"),
            format!("not_found at http://{IDP}/wrong/contoso/oauth2/v2.0/token (check authority and tenant)"),
        ),
    ] {
        let mut r = Newcomer::new("setup");
        let secret = format!("setup-secret-{}", free_port());
        register_client(&format!(
            r#"{{"client_id":"{}","secret":"{secret}","mailbox":"{}"}}"#,
            r.client_id, r.user
        ));
        r.set("ACCOUNT__SCANNER__AUTH", "client_credentials");
        r.set("ACCOUNT__SCANNER__CLIENT_SECRET", &secret);
        r.set(&format!("ACCOUNT__SCANNER__{key}"), &value);
        r.start();
        let reply = r.send(&format!("setup-{}", free_port()));
        assert!(
            reply.contains("535") && reply.contains(&told),
            "{key}: {reply}\n{}",
            r.log_text()
        );
        let queued = std::fs::read_dir(r.state().join("spool/queue")).map_or(0, |d| d.count());
        assert_eq!(queued, 0, "{key}: nothing is queued");
    }
}

/// A sign-in as someone other than the mailbox (the admin's own account, the usual slip) is
/// told at once, in the terminal and on the page, from the ID token of the answer; the mailbox
/// server then refuses the token, and a sign-in as the mailbox puts it right.
#[test]
fn a_device_code_sign_in_as_another_user_is_told() {
    stack();
    let user = unique_user("rightuser");
    let other = unique_user("wronguser");
    let client_id = format!("wronguser-client-{}", free_port());
    register_client(&format!(r#"{{"client_id":"{client_id}"}}"#));
    let r = FullRelay::start(&microsoft_account("scanner", &user, &client_id, ""), "");
    let sign_in = |who: &str| {
        let mut child = r.login_command("scanner", &["--device"]);
        writeln!(child.stdin.take().unwrap(), "{LOCAL_PASSWORD}").unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines = read_until(&mut out, "enter the code");
        let (url, code) = device_prompt(lines.last().unwrap());
        run(Command::new("curl").args(["-s", "-d", &format!("user_code={code}&user={who}"), &url]));
        child.stdout = Some(out.into_inner());
        let (ok, output) = finish(child);
        assert!(ok, "{output}");
        output
    };
    let output = sign_in(&other);
    assert!(
        output.contains(&format!(
            "warning: account scanner: signed in as {other}, not as the account's mailbox {user}"
        )),
        "{output}"
    );
    let page = http_get_page(&format!("{}/account/scanner", r.admin_url()));
    assert!(page.contains("id=\"signed-in-as\""), "{page}");
    // Dovecot checks the token's user against the login's: refused.
    let refused = r.imap_count("scanner@device.local", LOCAL_PASSWORD);
    assert!(refused.starts_with("ERR"), "{refused}");
    // Signed in as the mailbox: no warning, and the login works.
    let output = sign_in(&user);
    assert!(!output.contains("warning"), "{output}");
    assert!(!http_get_page(&format!("{}/account/scanner", r.admin_url())).contains("signed-in-as"));
    assert_eq!(
        r.imap_count("scanner@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
}

fn http_get_page(url: &str) -> String {
    text(&run(Command::new("curl").args(["-s", url])))
}
