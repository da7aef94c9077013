//! IMAP through authrelay against Dovecot, which accepts only XOAUTH2 tokens: every legacy login
//! form (atoms, quoted strings, synchronizing and non-synchronizing literals, AUTHENTICATE PLAIN
//! and LOGIN) from a raw client, Python imaplib, curl, fetchmail, mbsync and s-nail, in every
//! local TLS mode; APPEND and FETCH of 30 MB; IDLE; and the refusals.

mod support;

use std::process::Command;
use std::time::Duration;
use support::interop::*;

fn relay_for(user: &str, upstream: &str, upstream_tls: &str) -> RelayProcess {
    support::interop::relay_for("imap", user, upstream, upstream_tls)
}

const MODES: [&str; 3] = ["plain", "starttls", "implicit"];

fn imaplib(
    r: &RelayProcess,
    mode: &str,
    how: &str,
    user: &str,
    password: &str,
    action: &[&str],
) -> String {
    let out = run(Command::new("python3")
        .arg(root().join("tests/interop/imap_client.py"))
        .args([&port(r, mode).to_string(), mode, how, user, password])
        .arg(&r.cert.cert)
        .args(action));
    text(&out).trim().to_string()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

fn lf_only(msg: &[u8]) -> Vec<u8> {
    msg.iter().filter(|&&b| b != b'\r').copied().collect()
}

fn b64(s: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

#[test]
fn every_login_form_and_the_capability_rewrite() {
    let user = unique_user("imap-raw");
    seed_maildir(&user, "1.raw", b"Subject: raw\n\nhello\n");
    let r = relay_for(&user, IMAP, "starttls");
    let pw = LOCAL_PASSWORD.as_bytes();
    let mut c = Raw::connect(r.plain);
    let greeting = c.line();
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    for absent in [
        "XOAUTH2",
        "OAUTHBEARER",
        "LOGINDISABLED",
        "STARTTLS",
        "LITERAL+",
    ] {
        assert!(!greeting.contains(absent), "{absent} in {greeting}");
    }
    assert!(
        greeting.contains(" AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL-]"),
        "{greeting}"
    );
    c.write(b"c1 CAPABILITY\r\n");
    let caps = c.until("c1");
    assert!(
        caps.starts_with("* CAPABILITY IMAP4rev1 ")
            && caps.contains("AUTH=PLAIN")
            && !caps.contains("XOAUTH2"),
        "{caps}"
    );
    assert!(caps.ends_with("c1 OK CAPABILITY completed\r\n"));
    c.write(b"c2 SELECT INBOX\r\n");
    assert_eq!(c.line(), "c2 BAD Log in first\r\n");
    c.write(b"c3 AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.line(), "+ \r\n");
    c.write(b"*\r\n");
    assert_eq!(c.line(), "c3 BAD AUTHENTICATE cancelled\r\n");
    c.write(b"c4 AUTHENTICATE CRAM-MD5\r\n");
    assert_eq!(c.line(), "c4 NO Unsupported authentication mechanism\r\n");
    c.write(b"c5 LOGIN scanner@example.com wrong\r\n");
    assert_eq!(
        c.line(),
        "c5 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    c.write(b"c6 LOGIN nobody@example.com \"x\"\r\n");
    assert_eq!(
        c.line(),
        "c6 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    );
    // A synchronizing literal for the password, and a command pipelined behind the login.
    c.write(format!("a3 LOGIN scanner@example.com {{{}}}\r\n", pw.len()).as_bytes());
    assert_eq!(c.line(), "+ Ready for literal data\r\n");
    c.write(&[pw, b"\r\na4 SELECT INBOX\r\n"].concat());
    let ok = c.until("a3");
    assert!(ok.contains("a3 OK "), "{ok}");
    let select = c.until("a4");
    assert!(
        select.contains("* 1 EXISTS") && select.contains("a4 OK"),
        "{select}"
    );
    c.write(b"a5 LOGOUT\r\n");
    c.until("a5");

    // Quoted with escapes, two synchronizing literals, non-synchronizing literals, SASL-IR,
    // AUTHENTICATE LOGIN: each one logs in.
    let quoted = {
        let mut q = b"a2 LOGIN \"scanner@example.com\" \"".to_vec();
        for &b in pw {
            if b == b'"' || b == b'\\' {
                q.push(b'\\');
            }
            q.push(b);
        }
        q.extend_from_slice(b"\"\r\n");
        q
    };
    let two_literals = format!(
        "a4 LOGIN {{19}}\r\nscanner@example.com {{{}}}\r\n",
        pw.len()
    );
    let non_sync = [
        format!(
            "a5 LOGIN {{19+}}\r\nscanner@example.com {{{}+}}\r\n",
            pw.len()
        )
        .as_bytes(),
        pw,
        b"\r\n",
    ]
    .concat();
    let sasl_ir = format!(
        "a6 AUTHENTICATE PLAIN {}\r\n",
        b64(&[b"\0scanner@example.com\0", pw].concat())
    );
    for (name, first) in [
        ("quoted", quoted),
        ("non-sync", non_sync),
        ("sasl-ir", sasl_ir.into_bytes()),
    ] {
        let mut c = Raw::connect(r.plain);
        c.line();
        c.write(&first);
        let tag = String::from_utf8_lossy(&first[..2]).into_owned();
        let reply = c.until(&tag);
        assert!(reply.contains(&format!("{tag} OK")), "{name}: {reply}");
    }
    let mut c = Raw::connect(r.plain);
    c.line();
    c.write(two_literals.as_bytes());
    assert_eq!(c.line(), "+ Ready for literal data\r\n");
    assert_eq!(c.line(), "+ Ready for literal data\r\n");
    c.write(&[pw, b"\r\n"].concat());
    assert!(c.until("a4").contains("a4 OK"));
    let mut c = Raw::connect(r.plain);
    c.line();
    c.write(b"a7 AUTHENTICATE LOGIN\r\n");
    assert_eq!(c.line(), "+ VXNlcm5hbWU6\r\n");
    c.write(format!("{}\r\n", b64(b"scanner@example.com")).as_bytes());
    assert_eq!(c.line(), "+ UGFzc3dvcmQ6\r\n");
    c.write(format!("{}\r\n", b64(pw)).as_bytes());
    assert!(c.until("a7").contains("a7 OK"));

    // A literal too big before login is refused and the connection closed: a synchronizing
    // one over 8 KiB, and a non-synchronizing one over LITERAL-'s 4096 octets.
    for (tag, marker) in [("a8", "{4294967296}"), ("a9", "{5000+}")] {
        let mut c = Raw::connect(r.plain);
        c.line();
        c.write(format!("{tag} LOGIN scanner@example.com {marker}\r\n").as_bytes());
        assert_eq!(c.line(), format!("{tag} BAD [TOOBIG] Literal too big\r\n"));
        assert!(c.closed());
    }

    // The STARTTLS listener offers STARTTLS and refuses plaintext pipelined behind it.
    let mut c = Raw::connect(r.starttls);
    assert!(c.line().contains(" STARTTLS]"));
    c.write(b"s1 STARTTLS\r\ns2 LOGIN injected x\r\n");
    assert_eq!(c.line(), "s1 OK Begin TLS negotiation now\r\n");
    assert!(c.closed());
    r.assert_no_secrets();
}

#[test]
fn imaplib_in_every_mode_with_login_and_authenticate_plain() {
    let user = unique_user("imap-lib");
    let msg = lf_only(&message("imap-lib", 0));
    seed_maildir(&user, "1.lib", &msg);
    let as_imap: Vec<u8> = String::from_utf8_lossy(&msg)
        .replace('\n', "\r\n")
        .into_bytes();
    let r = relay_for(&user, IMAP, "starttls");
    let dir = tempfile::tempdir().unwrap();
    for mode in MODES {
        // Writes: APPEND a message through the relay in this mode.
        let file = dir.path().join(format!("{mode}.eml"));
        std::fs::write(
            &file,
            format!("Subject: appended over {mode}\r\n\r\nhello\r\n"),
        )
        .unwrap();
        let out = imaplib(
            &r,
            mode,
            "login",
            "scanner@example.com",
            LOCAL_PASSWORD,
            &["append", file.to_str().unwrap()],
        );
        assert_eq!(out, "APPEND OK", "{mode}");
        // Reads: message 1 (the seeded one) byte for byte, with LOGIN and AUTHENTICATE PLAIN.
        for how in ["login", "plain"] {
            let out = imaplib(
                &r,
                mode,
                how,
                "scanner@example.com",
                LOCAL_PASSWORD,
                &["fetch1"],
            );
            assert!(
                unhex(&out) == as_imap,
                "{mode} {how}: {}",
                &out[..out.len().min(200)]
            );
        }
    }
    assert_eq!(
        imaplib(
            &r,
            "plain",
            "plain",
            "scanner@example.com",
            LOCAL_PASSWORD,
            &["count"]
        ),
        "COUNT 4"
    );
    r.assert_no_secrets();
}

#[test]
fn thirty_megabytes_appended_and_fetched_back_intact() {
    let user = unique_user("imap-big");
    // Implicit TLS upstream (IMAPS).
    let r = relay_for(&user, IMAPS, "implicit");
    let dir = tempfile::tempdir().unwrap();
    let msg = message("imap-big", 30 * 1024 * 1024);
    let file = dir.path().join("big.eml");
    std::fs::write(&file, &msg).unwrap();
    let out = imaplib(
        &r,
        "implicit",
        "login",
        "scanner@example.com",
        LOCAL_PASSWORD,
        &["append", file.to_str().unwrap()],
    );
    assert_eq!(out, "APPEND OK");
    let out = imaplib(
        &r,
        "starttls",
        "plain",
        "scanner@example.com",
        LOCAL_PASSWORD,
        &["fetch1"],
    );
    assert!(
        unhex(&out) == msg,
        "the fetched message differs from the appended one ({} hex chars)",
        out.len()
    );
    r.assert_no_secrets();
}

#[test]
fn idle_sees_a_new_message() {
    let user = unique_user("imap-idle");
    seed_maildir(&user, "1.first", b"Subject: first\n\none\n");
    let r = relay_for(&user, IMAP, "starttls");
    let mut c = Raw::connect(r.plain);
    c.line();
    c.write(
        format!(
            "a1 AUTHENTICATE PLAIN {}\r\n",
            b64(format!("\0scanner@example.com\0{LOCAL_PASSWORD}").as_bytes())
        )
        .as_bytes(),
    );
    assert!(c.until("a1").contains("a1 OK"));
    c.write(b"a2 SELECT INBOX\r\n");
    assert!(c.until("a2").contains("* 1 EXISTS"));
    c.write(b"a3 IDLE\r\n");
    assert!(c.line().starts_with("+ "));
    seed_maildir(&user, "2.second", b"Subject: second\n\ntwo\n");
    let mut seen = String::new();
    for _ in 0..5 {
        seen.push_str(&c.line());
        if seen.contains("* 2 EXISTS") {
            break;
        }
    }
    assert!(seen.contains("* 2 EXISTS"), "{seen}");
    c.write(b"DONE\r\n");
    assert!(c.until("a3").contains("a3 OK"));
    r.assert_no_secrets();
}

#[test]
fn curl_fetchmail_mbsync_and_s_nail_in_every_mode() {
    let user = unique_user("imap-clients");
    let marker = format!("imap-clients-{}", free_port());
    let r = relay_for(&user, IMAP, "starttls");
    let dir = tempfile::tempdir().unwrap();
    let cert = r.cert.cert.display().to_string();
    for mode in MODES {
        seed_maildir(
            &user,
            &format!("{mode}.msg"),
            format!("Subject: {marker} {mode}\nFrom: a@example.com\n\nbody {marker} {mode}\n")
                .as_bytes(),
        );
        let p = port(&r, mode);

        // curl: AUTHENTICATE PLAIN (SASL-IR); lists the mailbox.
        let url = if mode == "implicit" {
            format!("imaps://127.0.0.1:{p}/INBOX")
        } else {
            format!("imap://127.0.0.1:{p}/INBOX")
        };
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-u",
            &format!("scanner@example.com:{LOCAL_PASSWORD}"),
            "--cacert",
            &cert,
            "-X",
            "SEARCH ALL",
            &url,
        ]);
        if mode == "starttls" {
            cmd.arg("--ssl-reqd");
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success() && text(&out).contains("* SEARCH 1"),
            "curl {mode}: {}",
            text(&out)
        );

        // s-nail: the LOGIN command.
        let pw = LOCAL_PASSWORD.replace(' ', "%20");
        let scheme = if mode == "implicit" { "imaps" } else { "imap" };
        let mut cmd = Command::new("s-nail");
        cmd.args([
            "-:/",
            "-Sv15-compat",
            "-Simap-auth=login",
            "-Stls-verify=strict",
            &format!("-Stls-ca-file={cert}"),
        ]);
        if mode == "starttls" {
            cmd.arg("-Simap-use-starttls");
        }
        cmd.args([
            "-H",
            "-f",
            &format!("{scheme}://scanner%40example.com:{pw}@localhost:{p}/INBOX"),
        ]);
        let out = run(&mut cmd);
        // s-nail cuts the subject to its line width; the marker is unique to this test, and
        // fetchmail below empties the mailbox before the next mode.
        assert!(
            text(&out).contains(&marker),
            "s-nail {mode}: {}",
            text(&out)
        );

        // mbsync: the LOGIN command; pulls INBOX into a local maildir.
        let local = dir.path().join(format!("mbsync-{mode}"));
        std::fs::create_dir_all(&local).unwrap();
        let ssl = match mode {
            "plain" => "None",
            "starttls" => "STARTTLS",
            _ => "IMAPS",
        };
        let rc = dir.path().join(format!("mbsyncrc-{mode}"));
        std::fs::write(
            &rc,
            format!(
                "IMAPAccount relay\nHost localhost\nPort {p}\nUser scanner@example.com\nPass \"{LOCAL_PASSWORD}\"\nAuthMechs LOGIN\nSSLType {ssl}\nCertificateFile {cert}\n\nIMAPStore remote\nAccount relay\n\nMaildirStore local\nPath {}/\nInbox {}/INBOX\n\nChannel pull\nFar :remote:\nNear :local:\nPatterns INBOX\nSync Pull\nCreate Near\nSyncState *\n",
                local.display(),
                local.display()
            ),
        )
        .unwrap();
        let out = run(Command::new("mbsync").args(["-c", rc.to_str().unwrap(), "pull"]));
        assert!(out.status.success(), "mbsync {mode}: {}", text(&out));
        let pulled = std::fs::read_dir(local.join("INBOX/new"))
            .map(|d| d.count())
            .unwrap_or(0)
            + std::fs::read_dir(local.join("INBOX/cur"))
                .map(|d| d.count())
                .unwrap_or(0);
        assert!(pulled >= 1, "mbsync {mode} pulled nothing: {}", text(&out));

        // fetchmail: the LOGIN command; downloads and deletes.
        let tls = match mode {
            "plain" => "sslproto ''".to_string(),
            "starttls" => {
                format!("sslproto 'TLS1.2+' sslcertck sslcommonname localhost sslcertfile '{cert}'")
            }
            _ => format!("ssl sslcertck sslcommonname localhost sslcertfile '{cert}'"),
        };
        let out_file = dir.path().join(format!("fetchmail-{mode}.out"));
        let fetchmailrc = dir.path().join(format!("fetchmailrc-{mode}"));
        std::fs::write(
            &fetchmailrc,
            format!(
                "set no syslog\npoll localhost via 127.0.0.1 service {p} proto IMAP auth password\n  user \"scanner@example.com\" password \"{LOCAL_PASSWORD}\" is \"root\" here\n  {tls} fetchall\n  mda \"/bin/sh -c 'cat >> {}'\"\n",
                out_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &fetchmailrc,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let out = run(Command::new("fetchmail")
            .env("FETCHMAILHOME", dir.path())
            .args(["-f", fetchmailrc.to_str().unwrap(), "--nodetach"]));
        assert!(out.status.success(), "fetchmail {mode}: {}", text(&out));
        let got = std::fs::read_to_string(&out_file).unwrap_or_default();
        assert!(
            got.contains(&format!("body {marker} {mode}")),
            "fetchmail {mode}: {got}"
        );
    }
    r.assert_no_secrets();
}

#[test]
fn refused_logins_get_their_exact_reply() {
    let user = unique_user("imap-neg");
    let r = relay_for(&user, IMAP, "starttls");
    assert_eq!(
        imaplib(
            &r,
            "plain",
            "login",
            "scanner@example.com",
            "wrong",
            &["count"]
        ),
        "ERR [AUTHENTICATIONFAILED] Invalid credentials"
    );
    assert_eq!(
        imaplib(
            &r,
            "plain",
            "plain",
            "nobody@example.com",
            LOCAL_PASSWORD,
            &["count"]
        ),
        "ERR [AUTHENTICATIONFAILED] Invalid credentials"
    );
    idp_post("/admin/revoke", &format!(r#"{{"user":"{user}"}}"#));
    assert_eq!(
        imaplib(&r, "plain", "login", "scanner@example.com", LOCAL_PASSWORD, &["count"]),
        format!("ERR [AUTHENTICATIONFAILED] Sign-in for {user} failed (AADSTS70000): the refresh token expired or was revoked: re-authorize the account with `authrelay login scanner`")
    );
    r.assert_no_secrets();
    drop(r);
    let down_url = format!("http://127.0.0.1:{}/token", free_port());
    let down = RelayProcess::start_protocol(
        "imap",
        AccountSpec {
            mailbox: &user,
            refresh_token: Some("rt-unused"),
            token_url: down_url.clone(),
        },
        IMAP,
        "starttls",
    );
    assert_eq!(
        imaplib(&down, "plain", "login", "scanner@example.com", LOCAL_PASSWORD, &["count"]),
        format!("ERR [UNAVAILABLE] Temporary authentication failure (the identity provider is unreachable at {down_url} (check token_url); network)")
    );
    down.assert_no_secrets();
}

#[test]
fn a_revoked_access_token_is_replaced_after_the_error_challenge() {
    let user = unique_user("imap-revoke");
    let r = relay_for(&user, IMAP, "starttls");
    assert_eq!(
        imaplib(
            &r,
            "plain",
            "login",
            "scanner@example.com",
            LOCAL_PASSWORD,
            &["count"]
        ),
        "COUNT 0"
    );
    idp_post("/admin/revoke-access", &format!(r#"{{"user":"{user}"}}"#));
    assert_eq!(
        imaplib(
            &r,
            "plain",
            "login",
            "scanner@example.com",
            LOCAL_PASSWORD,
            &["count"]
        ),
        "COUNT 0"
    );
    assert!(r.log_text().contains("refreshing it and trying once more"));
    r.assert_no_secrets();
}

/// Shows mutt's screen until `needle` appears (or 20 s pass); returns the last screen.
fn tmux_wait_for(session: &str, needle: &str) -> String {
    let mut screen = String::new();
    for _ in 0..100 {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", session])
            .output()
            .unwrap();
        screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains(needle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    screen
}

#[test]
fn mutt_in_tmux_reads_the_mailbox_in_every_mode() {
    let user = unique_user("imap-mutt");
    let marker = format!("mutt-{}", free_port());
    seed_maildir(
        &user,
        "1.mutt",
        format!("Subject: {marker}\nFrom: a@example.com\n\nbody\n").as_bytes(),
    );
    let r = relay_for(&user, IMAP, "starttls");
    let dir = tempfile::tempdir().unwrap();
    let cert = r.cert.cert.display().to_string();
    for mode in MODES {
        let p = port(&r, mode);
        let (folder, tls) = match mode {
            "plain" => (
                format!("imap://localhost:{p}/"),
                "set ssl_starttls=no ssl_force_tls=no",
            ),
            "starttls" => (
                format!("imap://localhost:{p}/"),
                "set ssl_starttls=yes ssl_force_tls=yes",
            ),
            _ => (format!("imaps://localhost:{p}/"), "set ssl_force_tls=yes"),
        };
        let rc = dir.path().join(format!("muttrc-{mode}"));
        std::fs::write(
            &rc,
            format!(
                "set imap_user=\"scanner@example.com\"\nset imap_pass=\"{LOCAL_PASSWORD}\"\nset imap_authenticators=\"login\"\nset folder=\"{folder}\"\nset spoolfile=\"+INBOX\"\n{tls}\nset ssl_ca_certificates_file=\"{cert}\"\nset certificate_file=\"{cert}\"\nset move=no\nset mbox_type=Maildir\nset header_cache=\"\"\nset message_cachedir=\"\"\n"
            ),
        )
        .unwrap();
        let session = format!("authrelay-mutt-{}-{mode}", std::process::id());
        let started = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "40"])
            .arg(format!("TERM=xterm mutt -n -F {}", rc.display()))
            .status()
            .unwrap();
        assert!(started.success());
        let screen = tmux_wait_for(&session, &marker);
        let _ = Command::new("tmux")
            .args(["send-keys", "-t", &session, "q"])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &session])
            .status();
        assert!(
            screen.contains(&marker),
            "mutt {mode} did not show the message:\n{screen}"
        );
    }
    r.assert_no_secrets();
}

#[test]
fn compress_deflate_passes_through_the_pipe() {
    let user = unique_user("imap-compress");
    seed_maildir(&user, "1.z", b"Subject: z\n\nz\n");
    let r = relay_for(&user, IMAP, "starttls");
    let out = run(Command::new("python3")
        .arg(root().join("tests/interop/imap_compress.py"))
        .args([&r.plain.to_string(), "scanner@example.com", LOCAL_PASSWORD]));
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("* 1 EXISTS") && t.contains("a4 OK"),
        "{t}"
    );
    r.assert_no_secrets();
}
