//! Devices that speak only TLS 1.0 or 1.1 (README: Devices that speak only old TLS): a
//! `tls_min_version = "1.0"` listener (OpenSSL, an RSA certificate as such devices need) takes
//! `openssl s_client -tls1` and Python's `ssl` capped at TLSv1 and TLSv1.1, and their messages
//! arrive in the mailbox through Dovecot; a default listener (rustls) refuses the same clients;
//! TLS 1.2 and 1.3 clients work on both. The suites on offer are enumerated and printed.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::interop::*;

struct Relay {
    child: Child,
    /// (listener name, port): `legacy` implicit TLS from 1.0, `legacy_starttls` STARTTLS from
    /// 1.0, `legacy11` implicit from 1.1, `modern` implicit with the defaults.
    ports: Vec<(&'static str, u16)>,
    config: PathBuf,
    log: PathBuf,
    user: String,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RSA certificate for `localhost`, made with the openssl command as an admin would.
fn rsa_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("rsa.pem"), dir.join("rsa-key.pem"));
    let out = run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(out.status.success(), "{}", text(&out));
    (cert, key)
}

fn relay() -> Relay {
    stack();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rsa_cert(dir.path());
    let user = unique_user("oldtls");
    let rt = new_refresh_token(&user);
    let ports = vec![
        ("legacy", free_port()),
        ("legacy_starttls", free_port()),
        ("legacy11", free_port()),
        ("modern", free_port()),
    ];
    let mut config = String::new();
    for (name, port) in &ports {
        let (tls, min) = match *name {
            "legacy" => ("implicit", "tls_min_version = \"1.0\""),
            "legacy_starttls" => ("starttls", "tls_min_version = \"1.0\""),
            "legacy11" => ("implicit", "tls_min_version = \"1.1\""),
            _ => ("implicit", ""),
        };
        config.push_str(&format!(
            "[listener.{name}]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{port}\"\ntls = \"{tls}\"\ncert = \"{}\"\nkey = \"{}\"\n{min}\nupstream = \"{SUBMISSION}\"\nupstream_tls = \"starttls\"\nupstream_ca = \"{}\"\nupstream_name = \"localhost\"\n\n",
            cert.display(),
            key.display(),
            upstream_ca().display()
        ));
    }
    let key_file = dir.path().join("store.key");
    std::fs::write(&key_file, STORE_KEY).unwrap();
    config.push_str(&format!(
        "[spool]\npath = \"{}\"\nfirst_retry_secs = 1\nmin_free_mb = 1\n\n[store]\npath = \"{}\"\nkey_file = \"{}\"\n\n[admin]\nenabled = false\n\n[account.scanner]\nlogin = \"scanner@example.com\"\npassword_hash = \"{}\"\nmailbox = \"{user}\"\nprovider = \"custom\"\nclient_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\ntoken_url = \"http://{IDP}/token\"\nrefresh_token = \"{rt}\"\n",
        dir.path().join("spool").display(),
        dir.path().join("tokens.json").display(),
        key_file.display(),
        hash_password(LOCAL_PASSWORD),
    ));
    let all: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
    let (child, config, log) = spawn_relay(dir.path(), &config, &all);
    Relay {
        child,
        ports,
        config,
        log,
        user,
        _dir: dir,
    }
}

fn auth_plain() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(format!("\0scanner@example.com\0{LOCAL_PASSWORD}"))
}

/// A whole submission through `openssl s_client` with `args` (`-tls1`, `-starttls smtp`...).
fn s_client(port: u16, args: &[&str], marker: &str, user: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-crlf", "-quiet", "-ign_eof", "-servername", "localhost"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "EHLO oldprinter\nAUTH PLAIN {}\nMAIL FROM:<{user}>\nRCPT TO:<{user}>\nDATA\nFrom: {user}\nSubject: {marker}\n\nscanned\n.\nQUIT\n",
        auth_plain()
    );
    let mut stdin = child.stdin.take().unwrap();
    // One command at a time, as a device's firmware does (the replies are not awaited).
    for line in script.lines() {
        let _ = stdin.write_all(format!("{line}\n").as_bytes());
        std::thread::sleep(Duration::from_millis(60));
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    text(&out)
}

/// Python's smtplib over TLS capped at `version` (`TLSv1`, `TLSv1_1`, `TLSv1_2`, `TLSv1_3`);
/// prints `SENT` or the error.
fn smtplib(port: u16, version: &str, starttls: bool, marker: &str, user: &str) -> String {
    let script = r#"
import smtplib, ssl, sys
port, version, starttls, marker, user, password = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
v = getattr(ssl.TLSVersion, version)
ctx.minimum_version = v
ctx.maximum_version = v
ctx.set_ciphers('DEFAULT:@SECLEVEL=0')
try:
    if starttls == '1':
        s = smtplib.SMTP('127.0.0.1', int(port), timeout=20)
        s.starttls(context=ctx)
    else:
        s = smtplib.SMTP_SSL('127.0.0.1', int(port), context=ctx, timeout=20)
    s.login('scanner@example.com', password)
    s.sendmail(user, [user], ('From: %s\r\nSubject: %s\r\n\r\nold tls\r\n' % (user, marker)).encode())
    print('SENT', s.sock.version())
    s.quit()
except Exception as e:
    print('ERROR', type(e).__name__, e)
"#;
    let out = run(Command::new("python3").args([
        "-c",
        script,
        &port.to_string(),
        version,
        if starttls { "1" } else { "0" },
        marker,
        user,
        LOCAL_PASSWORD,
    ]));
    text(&out).trim().to_owned()
}

fn marker(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), free_port())
}

fn arrives(user: &str, marker: &str) {
    assert!(
        delivered(user, marker, Duration::from_secs(30)).is_some(),
        "{marker} was not delivered"
    );
}

#[test]
fn tls_1_0_and_1_1_devices_deliver_through_a_legacy_listener_only() {
    let r = relay();
    let user = r.user.clone();
    // openssl s_client with TLS 1.0, implicit and STARTTLS.
    for (listener, args) in [
        ("legacy", vec!["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
        (
            "legacy_starttls",
            vec![
                "-tls1",
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-starttls",
                "smtp",
            ],
        ),
    ] {
        let m = marker(&format!("s-client-{listener}"));
        let said = s_client(r.port(listener), &args, &m, &user);
        assert!(said.contains("235 2.7.0"), "{listener}: {said}");
        assert!(
            said.contains("250 2.0.0 Ok: queued as"),
            "{listener}: {said}"
        );
        arrives(&user, &m);
    }
    // Python's ssl at each version, on each listener.
    let cases = [
        ("legacy", "TLSv1", false, true),
        ("legacy", "TLSv1_1", false, true),
        ("legacy", "TLSv1_2", false, true),
        ("legacy", "TLSv1_3", false, true),
        ("legacy_starttls", "TLSv1", true, true),
        ("legacy11", "TLSv1", false, false),
        ("legacy11", "TLSv1_1", false, true),
        ("modern", "TLSv1", false, false),
        ("modern", "TLSv1_1", false, false),
        ("modern", "TLSv1_2", false, true),
        ("modern", "TLSv1_3", false, true),
    ];
    for (listener, version, starttls, works) in cases {
        let m = marker(&format!("py-{listener}-{version}"));
        let said = smtplib(r.port(listener), version, starttls, &m, &user);
        if works {
            assert!(said.starts_with("SENT"), "{listener} {version}: {said}");
            arrives(&user, &m);
        } else {
            assert!(
                said.starts_with("ERROR SSLError"),
                "{listener} {version}: {said}"
            );
        }
        println!("{listener:16} {version:8} {said}");
    }
    // The default listener refuses openssl s_client -tls1 in the handshake.
    let said = s_client(
        r.port("modern"),
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        "x",
        &user,
    );
    assert!(!said.contains("220 "), "{said}");
    assert!(
        said.to_lowercase().contains("alert") || said.contains("error"),
        "{said}"
    );

    // check warns about the listeners that take old TLS.
    let out = run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["check", "--config"])
        .arg(&r.config));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "warning: listener.legacy.tls_min_version: accepts TLS 1.0 and 1.1 from devices"
        ),
        "{said}"
    );
    assert!(
        said.contains("warning: listener.legacy11.tls_min_version: accepts TLS 1.1 from devices"),
        "{said}"
    );
    assert!(!said.contains("listener.modern.tls_min_version"), "{said}");
    let log = std::fs::read_to_string(&r.log).unwrap();
    assert!(!log.contains(LOCAL_PASSWORD), "{log}");
}

/// What the legacy listener offers, enumerated one handshake per suite and version: ECDHE and
/// RSA key exchange with AES only, never RC4, 3DES, export, NULL or anonymous suites.
#[test]
fn the_legacy_listener_offers_only_the_documented_suites() {
    let r = relay();
    let out = run(Command::new("python3")
        .arg(root().join("tests/interop/tls_enumerate.py"))
        .arg(r.port("legacy").to_string()));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    println!("legacy listener (tls_min_version = \"1.0\", RSA certificate):\n{said}");
    let lines: Vec<&str> = said.lines().collect();
    for expected in [
        "TLSv1 ECDHE-RSA-AES128-SHA",
        "TLSv1 AES256-SHA",
        "TLSv1.1 ECDHE-RSA-AES256-SHA",
        "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256",
        "TLSv1.2 AES256-GCM-SHA384",
    ] {
        assert!(lines.contains(&expected), "{expected} missing:\n{said}");
    }
    let refused = [
        "RC4", "DES", "NULL", "EXP", "ADH", "AECDH", "PSK", "SRP", "CAMELLIA", "ARIA", "CCM",
        "CHACHA", "DSS",
    ];
    for line in lines.iter().filter(|l| !l.starts_with("TLSv1.3 ")) {
        let suite = line.split(' ').nth(1).unwrap_or_default();
        let allowed = suite.contains("AES") && !refused.iter().any(|bad| suite.contains(bad));
        assert!(allowed, "offered: {line}");
    }
    assert!(lines.iter().any(|l| l.starts_with("TLSv1.3 ")), "{said}");
    // The default listener: nothing below TLS 1.2.
    let out = run(Command::new("python3")
        .arg(root().join("tests/interop/tls_enumerate.py"))
        .arg(r.port("modern").to_string()));
    let said = text(&out);
    println!("default listener (rustls):\n{said}");
    assert!(
        said.lines()
            .all(|l| l.starts_with("TLSv1.2 ") || l.starts_with("TLSv1.3 ")),
        "{said}"
    );
}
