//! POP3 through authrelay against Dovecot, which accepts only XOAUTH2 tokens: Python poplib,
//! fetchmail, curl and s-nail log in with USER/PASS or AUTH PLAIN, in every local TLS mode, and
//! read, download and delete what is in the maildir.

mod support;

use std::process::Command;
use support::interop::*;

fn relay_for(user: &str, upstream: &str, upstream_tls: &str) -> RelayProcess {
    support::interop::relay_for("pop3", user, upstream, upstream_tls)
}

fn poplib(
    r: &RelayProcess,
    mode: &str,
    how: &str,
    user: &str,
    password: &str,
    action: &str,
) -> String {
    let out = run(Command::new("python3")
        .arg(root().join("tests/interop/pop3_client.py"))
        .args([&port(r, mode).to_string(), mode, how, user, password])
        .arg(&r.cert.cert)
        .arg(action));
    text(&out).trim().to_string()
}

/// The bytes a POP3 client receives for a maildir file: LF line ends become CRLF.
fn as_pop3(stored: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(stored)
        .replace('\n', "\r\n")
        .into_bytes()
}

fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

#[test]
fn local_forms_and_errors_are_exact() {
    let user = unique_user("pop-raw");
    seed_maildir(
        &user,
        "1.raw",
        &message("pop-raw", 0)
            .iter()
            .filter(|&&b| b != b'\r')
            .copied()
            .collect::<Vec<u8>>(),
    );
    let r = relay_for(&user, POP3, "starttls");
    let mut c = Raw::connect(r.plain);
    let greeting = c.line();
    assert!(
        greeting.starts_with("+OK ") && !greeting.contains('<'),
        "{greeting}"
    );
    assert_eq!(c.ask("CAPA\r\n"), "+OK Capability list follows\r\n");
    let capa = c.body();
    assert!(
        capa.contains("USER\r\n") && capa.contains("SASL PLAIN LOGIN\r\n"),
        "{capa}"
    );
    assert!(
        !capa.contains("XOAUTH2") && !capa.contains("STLS") && capa.contains("RESP-CODES\r\n"),
        "{capa}"
    );
    assert_eq!(c.ask("AUTH\r\n"), "+OK\r\n");
    assert_eq!(c.body(), "PLAIN\r\nLOGIN\r\n");
    assert_eq!(
        c.ask("APOP scanner@example.com c4c9334bac560ecc979e58001b3e22fb\r\n"),
        "-ERR APOP is not supported; log in with USER/PASS or AUTH PLAIN\r\n"
    );
    assert_eq!(c.ask("RETR 1\r\n"), "-ERR [AUTH] Authenticate first\r\n");
    assert_eq!(c.ask("PASS x\r\n"), "-ERR No USER given\r\n");
    assert_eq!(c.ask("USER scanner@example.com\r\n"), "+OK\r\n");
    assert_eq!(
        c.ask("STAT\r\n"),
        "-ERR Only PASS or QUIT may follow USER\r\n"
    );
    assert_eq!(c.ask("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(c.ask("*\r\n"), "-ERR Authentication cancelled\r\n");
    assert_eq!(
        c.ask("AUTH CRAM-MD5\r\n"),
        "-ERR Unsupported authentication mechanism\r\n"
    );
    assert_eq!(c.ask("AUTH PLAIN ###\r\n"), "-ERR Cannot decode base64\r\n");
    assert_eq!(c.ask("AUTH LOGIN\r\n"), "+ VXNlcm5hbWU6\r\n");
    assert_eq!(
        c.ask(&format!("{}\r\n", b64("scanner@example.com"))),
        "+ UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        c.ask(&format!("{}\r\n", b64("wrong"))),
        "-ERR [AUTH] Authentication failed\r\n"
    );
    assert_eq!(c.ask("USER nobody@example.com\r\n"), "+OK\r\n");
    assert_eq!(
        c.ask(&format!("PASS {LOCAL_PASSWORD}\r\n")),
        "-ERR [AUTH] Authentication failed\r\n"
    );
    // The password has spaces: everything after "PASS " is the password.
    assert_eq!(c.ask("USER scanner@example.com\r\n"), "+OK\r\n");
    let ok = c.ask(&format!("PASS {LOCAL_PASSWORD}\r\nSTAT\r\n"));
    assert!(ok.starts_with("+OK"), "{ok}");
    // STAT was pipelined behind PASS: it reaches Dovecot after the login, in order.
    assert!(c.line().starts_with("+OK 1 "));
    assert_eq!(c.ask("QUIT\r\n").get(..3), Some("+OK"));
    r.assert_no_secrets();
}

#[test]
fn poplib_reads_in_every_mode_with_user_pass_and_auth_plain() {
    let user = unique_user("pop-poplib");
    let msg: Vec<u8> = message("pop-poplib", 0)
        .iter()
        .filter(|&&b| b != b'\r')
        .copied()
        .collect();
    seed_maildir(&user, "1.poplib", &msg);
    let r = relay_for(&user, POP3, "starttls");
    for mode in ["plain", "stls", "implicit"] {
        for how in ["userpass", "plain"] {
            let out = poplib(
                &r,
                mode,
                how,
                "scanner@example.com",
                LOCAL_PASSWORD,
                "retr1",
            );
            let bytes: Vec<u8> = (0..out.len() / 2)
                .map(|i| u8::from_str_radix(&out[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect();
            assert_eq!(bytes, as_pop3(&msg), "{mode} {how}: {out}");
        }
    }
    r.assert_no_secrets();
}

#[test]
fn thirty_megabytes_retrieved_intact_then_deleted() {
    let user = unique_user("pop-big");
    let msg: Vec<u8> = message("pop-big", 30 * 1024 * 1024)
        .iter()
        .filter(|&&b| b != b'\r')
        .copied()
        .collect();
    seed_maildir(&user, "1.big", &msg);
    // Implicit TLS upstream (POP3S) this time.
    let r = relay_for(&user, POP3S, "implicit");
    let out = poplib(
        &r,
        "implicit",
        "userpass",
        "scanner@example.com",
        LOCAL_PASSWORD,
        "retr1",
    );
    assert!(
        out.len() > 60 * 1024 * 1024,
        "{}",
        &out[..out.len().min(300)]
    );
    let bytes: Vec<u8> = (0..out.len() / 2)
        .map(|i| u8::from_str_radix(&out[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        bytes == as_pop3(&msg),
        "the retrieved message differs from the maildir file"
    );
    assert_eq!(
        poplib(
            &r,
            "plain",
            "userpass",
            "scanner@example.com",
            LOCAL_PASSWORD,
            "dele-all"
        ),
        "DELETED 1"
    );
    assert_eq!(
        poplib(
            &r,
            "plain",
            "userpass",
            "scanner@example.com",
            LOCAL_PASSWORD,
            "stat"
        ),
        "STAT 0 0"
    );
    assert!(
        maildir_files(&user).is_empty(),
        "DELE + QUIT must remove the file"
    );
    r.assert_no_secrets();
}

#[test]
fn fetchmail_downloads_in_every_mode() {
    let user = unique_user("pop-fetchmail");
    let r = relay_for(&user, POP3, "starttls");
    let dir = tempfile::tempdir().unwrap();
    for mode in ["plain", "stls", "implicit"] {
        let marker = format!("fetchmail-{mode}-{}", free_port());
        seed_maildir(
            &user,
            &format!("{marker}.msg"),
            format!("Subject: {marker}\n\nbody {marker}\n").as_bytes(),
        );
        let tls = match mode {
            "plain" => "sslproto ''".to_string(),
            "stls" => format!(
                "sslproto 'TLS1.2+' sslcertck sslcommonname localhost sslcertfile '{}'",
                r.cert.cert.display()
            ),
            _ => format!(
                "ssl sslcertck sslcommonname localhost sslcertfile '{}'",
                r.cert.cert.display()
            ),
        };
        let out_file = dir.path().join(format!("{mode}.out"));
        let rc = dir.path().join(format!("{mode}.rc"));
        std::fs::write(
            &rc,
            format!(
                "set no syslog\npoll localhost via 127.0.0.1 service {} proto POP3 auth password\n  user \"scanner@example.com\" password \"{LOCAL_PASSWORD}\" is \"root\" here\n  {tls} fetchall\n  mda \"/bin/sh -c 'cat >> {}'\"\n",
                port(&r, mode),
                out_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let out = run(Command::new("fetchmail")
            .env("FETCHMAILHOME", dir.path())
            .args(["-f", rc.to_str().unwrap(), "--nodetach", "-v"]));
        assert!(out.status.success(), "fetchmail {mode}: {}", text(&out));
        let got = std::fs::read_to_string(&out_file).unwrap_or_default();
        assert!(
            got.contains(&format!("body {marker}")),
            "fetchmail {mode} did not deliver: {got}"
        );
    }
    // fetchmail deleted what it fetched (no `keep`).
    assert!(maildir_files(&user).is_empty());
    r.assert_no_secrets();
}

#[test]
fn curl_and_s_nail_read_in_every_mode() {
    let user = unique_user("pop-curl");
    let marker = format!("curl-snail-{}", free_port());
    seed_maildir(
        &user,
        "1.curl",
        format!("Subject: {marker}\nFrom: a@example.com\n\nbody {marker}\n").as_bytes(),
    );
    let r = relay_for(&user, POP3, "starttls");
    for mode in ["plain", "stls", "implicit"] {
        let p = port(&r, mode);
        let url = if mode == "implicit" {
            format!("pop3s://127.0.0.1:{p}/1")
        } else {
            format!("pop3://127.0.0.1:{p}/1")
        };
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-u",
            &format!("scanner@example.com:{LOCAL_PASSWORD}"),
            "--cacert",
        ])
        .arg(&r.cert.cert)
        .arg(&url);
        if mode == "stls" {
            cmd.arg("--ssl-reqd");
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success() && text(&out).contains(&format!("body {marker}")),
            "curl {mode}: {}",
            text(&out)
        );

        let pw = LOCAL_PASSWORD.replace(' ', "%20");
        let scheme = if mode == "implicit" { "pop3s" } else { "pop3" };
        let mut cmd = Command::new("s-nail");
        cmd.args([
            "-:/",
            "-Sv15-compat",
            "-Spop3-auth=plain",
            "-Stls-verify=strict",
        ])
        .arg(format!("-Stls-ca-file={}", r.cert.cert.display()));
        if mode == "stls" {
            cmd.arg("-Spop3-use-starttls");
        }
        cmd.args(["-H", "-f"]).arg(format!(
            "{scheme}://scanner%40example.com:{pw}@localhost:{p}"
        ));
        let out = run(&mut cmd);
        assert!(
            text(&out).contains(&marker),
            "s-nail {mode}: {}",
            text(&out)
        );
    }
    r.assert_no_secrets();
}

#[test]
fn refused_logins_get_their_exact_reply() {
    let user = unique_user("pop-neg");
    let r = relay_for(&user, POP3, "starttls");
    assert_eq!(
        poplib(
            &r,
            "plain",
            "userpass",
            "scanner@example.com",
            "wrong",
            "stat"
        ),
        "ERR -ERR [AUTH] Authentication failed"
    );
    assert_eq!(
        poplib(
            &r,
            "plain",
            "plain",
            "nobody@example.com",
            LOCAL_PASSWORD,
            "stat"
        ),
        "ERR -ERR [AUTH] Authentication failed"
    );
    idp_post("/admin/revoke", &format!(r#"{{"user":"{user}"}}"#));
    assert_eq!(
        poplib(
            &r,
            "plain",
            "userpass",
            "scanner@example.com",
            LOCAL_PASSWORD,
            "stat"
        ),
        "ERR -ERR [AUTH] Sign-in for ".to_string()
            + &user
            + " failed (AADSTS70000): the refresh token expired or was revoked: re-authorize the account with `authrelay login scanner`"
    );
    r.assert_no_secrets();
    drop(r);
    let down_url = format!("http://127.0.0.1:{}/token", free_port());
    let down = RelayProcess::start_protocol(
        "pop3",
        AccountSpec {
            mailbox: &user,
            refresh_token: Some("rt-unused"),
            token_url: down_url.clone(),
        },
        POP3,
        "starttls",
    );
    assert_eq!(
        poplib(&down, "plain", "userpass", "scanner@example.com", LOCAL_PASSWORD, "stat"),
        format!("ERR -ERR [SYS/TEMP] Temporary authentication failure (the identity provider is unreachable at {down_url} (check token_url); network)")
    );
    down.assert_no_secrets();
}

#[test]
fn a_revoked_access_token_is_replaced_after_the_error_challenge() {
    let user = unique_user("pop-revoke");
    let r = relay_for(&user, POP3, "starttls");
    assert_eq!(
        poplib(
            &r,
            "plain",
            "userpass",
            "scanner@example.com",
            LOCAL_PASSWORD,
            "stat"
        ),
        "STAT 0 0"
    );
    idp_post("/admin/revoke-access", &format!(r#"{{"user":"{user}"}}"#));
    assert_eq!(
        poplib(
            &r,
            "plain",
            "userpass",
            "scanner@example.com",
            LOCAL_PASSWORD,
            "stat"
        ),
        "STAT 0 0"
    );
    assert!(r.log_text().contains("refreshing it and trying once more"));
    r.assert_no_secrets();
}
