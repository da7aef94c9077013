//! Devices that cannot log in (README: Devices that cannot log in): a spool listener whose
//! `trusted_networks` are 127.0.0.2, .4 and .5, and 127.0.0.3 as an outsider. Real clients
//! (swaks, Python's smtplib) send from those source addresses; the relay delivers through
//! Dovecot submission (XOAUTH2) and Postfix into the mailbox, where each message is read back.
//! HAProxy with PROXY v2 in front is the second path. `authrelay check` refuses the
//! configurations that would make an open relay or an ambiguous one.

mod support;

use std::process::Command;
use std::time::Duration;
use support::interop::*;

const TRUSTED: &str = "trusted_networks = [\"127.0.0.2/32\", \"127.0.0.4/32\", \"127.0.0.5/32\"]\n";

/// An `[account.NAME]` table of the harness identity provider, signed in already.
fn account(name: &str, mailbox: &str, extra: &str) -> String {
    let rt = new_refresh_token(mailbox);
    format!(
        "\n[account.{name}]\nlogin = \"{name}@example.com\"\npassword_hash = \"{}\"\nmailbox = \"{mailbox}\"\nprovider = \"custom\"\nclient_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\ntoken_url = \"http://{IDP}/token\"\nrefresh_token = \"{rt}\"\n{extra}\n",
        hash_password(LOCAL_PASSWORD)
    )
}

struct Lan {
    relay: RelayProcess,
    scanner: String,
    copier: String,
    capped: String,
}

/// The relay of these tests: `scanner` sends from 127.0.0.2 as its mailbox, `copier` from
/// 127.0.0.4 with `rewrite_sender`, `capped` from 127.0.0.5 with two recipients an hour.
fn lan(listener_extra: &str) -> Lan {
    stack();
    let (scanner, copier, capped) = (
        unique_user("lan-scanner"),
        unique_user("lan-copier"),
        unique_user("lan-capped"),
    );
    let rt = new_refresh_token(&scanner);
    let accounts = format!(
        "networks = [\"127.0.0.2/32\"]\n{}{}",
        account(
            "copier",
            &copier,
            "networks = [\"127.0.0.4/32\"]\nrewrite_sender = true"
        ),
        account(
            "capped",
            &capped,
            "networks = [\"127.0.0.5/32\"]\nmax_recipients_per_hour = 2"
        ),
    );
    let relay = RelayProcess::start_spool_with(
        AccountSpec {
            mailbox: &scanner,
            refresh_token: Some(&rt),
            token_url: format!("http://{IDP}/token"),
        },
        SUBMISSION,
        "starttls",
        &format!("{TRUSTED}{listener_extra}"),
        &accounts,
    );
    Lan {
        relay,
        scanner,
        copier,
        capped,
    }
}

/// One transaction with Python's smtplib from `source`: EHLO, AUTH when `login` is given,
/// MAIL, RCPT for each recipient, DATA. Prints the first reply that is not 250 (or DATA's).
fn send(
    port: u16,
    source: &str,
    login: Option<&str>,
    sender: &str,
    rcpts: &[&str],
    msg: &str,
) -> String {
    let script = r#"
import smtplib, sys
port, source, login, sender, rcpts, msg = sys.argv[1:7]
s = smtplib.SMTP('127.0.0.1', int(port), source_address=(source, 0), timeout=30)
s.ehlo('device.local')
if login != '-':
    s.login(login, sys.argv[7])
for step in [lambda: s.mail(sender)] + [lambda r=r: s.rcpt(r) for r in rcpts.split(',')]:
    code, text = step()
    if code != 250:
        print(code, text.decode()); sys.exit(0)
code, text = s.data(msg.encode())
print(code, text.decode())
s.quit()
"#;
    let out = run(Command::new("python3").args([
        "-c",
        script,
        &port.to_string(),
        source,
        login.unwrap_or("-"),
        sender,
        &rcpts.join(","),
        msg,
        LOCAL_PASSWORD,
    ]));
    text(&out).trim().to_owned()
}

fn marker(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), free_port())
}

fn received(user: &str, marker: &str) -> String {
    let stored = delivered(user, marker, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{marker} was not delivered to {user}"));
    String::from_utf8_lossy(&stored).into_owned()
}

#[test]
fn trusted_clients_send_without_login_and_outsiders_are_asked_to_log_in() {
    let lan = lan("");
    let r = &lan.relay;
    // swaks from the trusted address, no AUTH: queued, delivered as the mailbox.
    let m = marker("nologin-swaks");
    let out = run(Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &r.plain.to_string()])
        .args(["--local-interface", "127.0.0.2"])
        .args(["--from", &lan.scanner, "--to", &lan.scanner])
        .args(["--header", &format!("Subject: {m}")]));
    let said = text(&out);
    assert!(said.contains("250 2.0.0 Ok: queued as "), "{said}");
    assert!(received(&lan.scanner, &m).contains(&format!("Subject: {m}")));

    // The outsider: 530 exactly as before, and nothing queued.
    let msg = format!("Subject: {}\r\n\r\nx\r\n", marker("outsider"));
    let said = send(
        r.plain,
        "127.0.0.3",
        None,
        &lan.scanner,
        &[&lan.scanner],
        &msg,
    );
    assert_eq!(said, "530 5.7.0 Authentication required", "{said}");

    // A sender no account of 127.0.0.2 may use: refused, naming the client and what to set.
    let said = send(
        r.plain,
        "127.0.0.2",
        None,
        "someone@elsewhere.example",
        &[&lan.scanner],
        &msg,
    );
    assert!(said.starts_with("550 5.7.60 Sender <someone@elsewhere.example> is no mailbox or allowed_from of the accounts for client 127.0.0.2 (scanner)"), "{said}");
    // A trusted client in no account's networks... 127.0.0.5 belongs to `capped`, so the
    // scanner's mailbox is not its to use.
    let said = send(
        r.plain,
        "127.0.0.5",
        None,
        &lan.scanner,
        &[&lan.scanner],
        &msg,
    );
    assert!(said.starts_with("550 5.7.60 Sender <"), "{said}");

    // AUTH still works, from the outsider and from the trusted network, and then wins.
    for source in ["127.0.0.3", "127.0.0.2"] {
        let m = marker(&format!("auth-{source}"));
        let msg = format!("From: {}\r\nSubject: {m}\r\n\r\nx\r\n", lan.scanner);
        let said = send(
            r.plain,
            source,
            Some("scanner@example.com"),
            &lan.scanner,
            &[&lan.scanner],
            &msg,
        );
        assert!(
            said.starts_with("250 2.0.0 Ok: queued as"),
            "{source}: {said}"
        );
        received(&lan.scanner, &m);
    }
    let log = r.log_text();
    assert_eq!(
        log.matches("message spooled without login").count(),
        1,
        "{log}"
    );
    assert!(log.contains("account=scanner client=127.0.0.2"), "{log}");
    assert!(log.contains("message without login refused"), "{log}");
    r.assert_no_secrets();
}

#[test]
fn rewrite_sender_sends_any_sender_as_the_mailbox_and_missing_fields_are_added() {
    let lan = lan("");
    let r = &lan.relay;
    let m = marker("rewrite");
    // What a copier's firmware sends: its own address, a display name, no Date or Message-ID.
    let msg = format!("From: \"Copier 3rd floor\" <copier@printer.local>\r\nTo: {}\r\nSubject: {m}\r\n\r\nscan attached\r\n", lan.copier);
    let said = send(
        r.plain,
        "127.0.0.4",
        None,
        "copier@printer.local",
        &[&lan.copier],
        &msg,
    );
    assert!(said.starts_with("250 2.0.0 Ok: queued as"), "{said}");
    let got = received(&lan.copier, &m);
    let head = got.split("\r\n\r\n").next().unwrap().replace("\r\n", "\n");
    assert!(
        head.contains(&format!("From: \"Copier 3rd floor\" <{}>", lan.copier)),
        "{head}"
    );
    assert!(
        head.contains("Reply-To: \"Copier 3rd floor\" <copier@printer.local>"),
        "{head}"
    );
    assert!(
        head.contains("X-Authrelay-Rewritten: sender <copier@printer.local> sent as"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Return-Path: <{}>", lan.copier)),
        "the envelope sender too: {head}"
    );
    assert!(
        head.contains("\nDate: ") && head.contains("\nMessage-ID: <"),
        "{head}"
    );
    assert!(
        !head.contains("From: \"Copier 3rd floor\" <copier@printer.local>"),
        "{head}"
    );

    // No From: at all from the scanner (no rewrite): the mailbox is added as From.
    let m = marker("no-from");
    let msg = format!("Subject: {m}\r\n\r\nbody\r\n");
    let said = send(
        r.plain,
        "127.0.0.2",
        None,
        &lan.scanner,
        &[&lan.scanner],
        &msg,
    );
    assert!(said.starts_with("250 2.0.0 Ok: queued as"), "{said}");
    let got = received(&lan.scanner, &m).replace("\r\n", "\n");
    assert!(
        got.contains(&format!("\nFrom: <{}>\n", lan.scanner)),
        "{got}"
    );
}

#[test]
fn the_hourly_recipient_cap_holds_for_mail_without_login() {
    let lan = lan("");
    let r = &lan.relay;
    let m = marker("capped");
    let msg = format!("From: {}\r\nSubject: {m}\r\n\r\nx\r\n", lan.capped);
    let second = format!("copy-{}", lan.capped);
    let said = send(
        r.plain,
        "127.0.0.5",
        None,
        &lan.capped,
        &[&lan.capped, &second],
        &msg,
    );
    assert!(said.starts_with("250 2.0.0 Ok: queued as"), "{said}");
    received(&lan.capped, &m);
    let said = send(
        r.plain,
        "127.0.0.5",
        None,
        &lan.capped,
        &[&lan.capped],
        &msg,
    );
    assert_eq!(said, "450 4.7.1 Account capped has reached its limit of 2 recipients per hour for mail without a login; try again later", "{said}");
    // The cap is for mail without a login: the same account logged in still sends.
    let m = marker("capped-login");
    let msg = format!("From: {}\r\nSubject: {m}\r\n\r\nx\r\n", lan.capped);
    let said = send(
        r.plain,
        "127.0.0.5",
        Some("capped@example.com"),
        &lan.capped,
        &[&lan.capped],
        &msg,
    );
    assert!(said.starts_with("250 2.0.0 Ok: queued as"), "{said}");
}

#[test]
fn through_haproxy_with_proxy_v2_the_clients_own_address_decides() {
    let lan = lan("proxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n");
    let proxy = support::haproxy::haproxy(&[lan.relay.plain]);
    let front = proxy.port;
    let m = marker("via-haproxy");
    let msg = format!("From: {}\r\nSubject: {m}\r\n\r\nx\r\n", lan.scanner);
    let said = send(
        front,
        "127.0.0.2",
        None,
        &lan.scanner,
        &[&lan.scanner],
        &msg,
    );
    assert!(said.starts_with("250 2.0.0 Ok: queued as"), "{said}");
    received(&lan.scanner, &m);
    // HAProxy itself is 127.0.0.1: the header's address is the one that counts.
    let said = send(
        front,
        "127.0.0.3",
        None,
        &lan.scanner,
        &[&lan.scanner],
        &msg,
    );
    assert_eq!(said, "530 5.7.0 Authentication required", "{said}");
    assert!(lan.relay.log_text().contains("client=127.0.0.2"));
}

/// `authrelay check` on a configuration with one listener and two accounts, `listener` and
/// `accounts` added to their tables.
fn check(listener: &str, scanner: &str, copier: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password(LOCAL_PASSWORD);
    let config = format!(
        "[listener.lan]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"{SUBMISSION}\"\nupstream_tls = \"starttls\"\n{listener}\n\n[store]\npath = \"{}\"\n\n[spool]\npath = \"{}\"\n\n[account.scanner]\nlogin = \"scanner\"\npassword_hash = \"{hash}\"\nmailbox = \"scanner@contoso.com\"\napp_password = \"x\"\nauth = \"app_password\"\n{scanner}\n\n[account.copier]\nlogin = \"copier\"\npassword_hash = \"{hash}\"\nmailbox = \"copier@contoso.com\"\napp_password = \"x\"\nauth = \"app_password\"\n{copier}\n",
        free_port(),
        dir.path().join("tokens.json").display(),
        dir.path().join("spool").display(),
    );
    let path = dir.path().join("authrelay.toml");
    std::fs::write(&path, config).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .arg("check")
        .arg("--config")
        .arg(&path));
    (out.status.success(), text(&out))
}

#[test]
fn check_refuses_open_ambiguous_and_too_wide_configurations() {
    let lan24 = "trusted_networks = [\"192.168.10.0/24\"]";
    let net = "networks = [\"192.168.10.0/24\"]";
    let (ok, said) = check(lan24, net, "");
    assert!(ok, "{said}");
    assert!(said.contains("warning: listener.lan.trusted_networks: clients in 192.168.10.0/24 may send without a login"), "{said}");

    let cases: [(&str, &str, &str, &str); 6] = [
        ("trusted_networks = [\"0.0.0.0/0\"]\nallow_wide_networks = true", net, "", "error: listener.lan.trusted_networks: 0.0.0.0/0 is every address: that is an open relay, and it is refused"),
        ("trusted_networks = [\"10.0.0.0/8\"]", net, "", "error: listener.lan.trusted_networks: 10.0.0.0/8 is wider than a /16 (IPv4) or /48 (IPv6); list the devices' own network, or set allow_wide_networks = true if you mean it"),
        ("trusted_networks = [\"203.0.113.0/24\"]", net, "", "error: listener.lan.trusted_networks: 203.0.113.0/24 reaches addresses on the Internet"),
        (&format!("{lan24}\nspool = false"), net, "", "error: listener.lan.trusted_networks: only a spooling SMTP listener (spool = true) may take mail without a login"),
        (lan24, &format!("{net}\nrewrite_sender = true"), "networks = [\"192.168.10.128/25\"]\nrewrite_sender = true", "also rewrites senders from 192.168.10."),
        (lan24, "rewrite_sender = true", "", "error: account.scanner.rewrite_sender: applies to mail sent without a login; give the account networks = [...]"),
    ];
    for (listener, scanner, copier, expected) in cases {
        let (ok, said) = check(listener, scanner, copier);
        assert!(!ok, "{listener} / {scanner} / {copier}: {said}");
        assert!(
            said.contains(expected),
            "{listener} / {scanner} / {copier}: {said}"
        );
    }
    // A wide private range is allowed when said so; a public one too.
    let (ok, said) = check(
        "trusted_networks = [\"10.0.0.0/8\", \"203.0.113.0/24\"]\nallow_wide_networks = true",
        net,
        "",
    );
    assert!(ok, "{said}");
}

/// The README's two examples ("Devices that cannot log in, or speak only old TLS"), completed
/// with what every configuration needs, pass `authrelay check` with the warnings it promises.
#[test]
fn the_readme_examples_pass_check() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Devices that cannot log in, or speak only old TLS")
        .nth(1)
        .unwrap();
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .take(2)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cert = support::TestCert::new();
    let hash = hash_password(LOCAL_PASSWORD);
    let listener_needs = format!("upstream = \"{SUBMISSION}\"\nupstream_tls = \"starttls\"\n");
    let lan = blocks[0]
        .replace("[account.scanner]\n", &format!("[account.scanner]\nlogin = \"scanner\"\npassword_hash = \"{hash}\"\nauth = \"app_password\"\napp_password = \"x\"\n"))
        .replace("trusted_networks =", &format!("{listener_needs}trusted_networks ="));
    let old = blocks[1]
        .replace("/etc/authrelay/rsa.pem", &cert.cert.display().to_string())
        .replace(
            "/etc/authrelay/rsa-key.pem",
            &cert.key.display().to_string(),
        )
        .replace(
            "tls_min_version =",
            &format!("{listener_needs}tls_min_version ="),
        );
    let config = format!(
        "{lan}\n{old}\n[store]\npath = \"{}\"\n\n[spool]\npath = \"{}\"\n",
        dir.path().join("tokens.json").display(),
        dir.path().join("spool").display()
    );
    let path = dir.path().join("authrelay.toml");
    std::fs::write(&path, &config).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .arg("check")
        .arg("--config")
        .arg(&path));
    let said = text(&out);
    assert!(out.status.success(), "{config}\n{said}");
    assert!(said.contains("warning: listener.lan.trusted_networks: clients in 192.168.10.0/24, 10.1.2.3/32 may send without a login"), "{said}");
    assert!(
        said.contains("warning: listener.oldprinters.tls_min_version: accepts TLS 1.0 and 1.1"),
        "{said}"
    );
}

/// The throttle holds for trusted clients too: a host on the trusted network that keeps trying
/// senders no account may use is refused like one guessing passwords (30 failures from an
/// address by default), and only that address.
#[test]
fn a_trusted_host_that_keeps_guessing_senders_is_throttled() {
    let lan = lan("");
    let script = r#"
import smtplib, sys
port, source, good = sys.argv[1:4]
s = smtplib.SMTP('127.0.0.1', int(port), source_address=(source, 0), timeout=30)
s.ehlo('device.local')
codes = []
for i in range(30):
    code, _ = s.mail('guess%d@elsewhere.example' % i)
    codes.append(code)
print(' '.join(sorted(set(str(c) for c in codes))))
code, text = s.mail(good)
print(code, text.decode())
"#;
    let out = run(Command::new("python3").args([
        "-c",
        script,
        &lan.relay.plain.to_string(),
        "127.0.0.2",
        &lan.scanner,
    ]));
    let said = text(&out);
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some("550"), "{said}");
    assert_eq!(
        lines.next(),
        Some("454 4.7.0 Too many refused messages or logins from this address, try again later"),
        "{said}"
    );
    // Another trusted address is not affected.
    let m = marker("after-throttle");
    let msg = format!("From: {}\r\nSubject: {m}\r\n\r\nx\r\n", lan.copier);
    let said = send(
        lan.relay.plain,
        "127.0.0.4",
        None,
        &lan.copier,
        &[&lan.copier],
        &msg,
    );
    assert!(said.starts_with("250 2.0.0 Ok: queued as"), "{said}");
}
