//! The container image as users run it (issue 28), with podman: built from the repository's
//! Dockerfile (tests/container/build.sh: the base images pulled or, where the registries cannot
//! be reached, local stand-ins under the same names), then run the way the README and
//! docker-compose.yml describe (`AUTHRELAY__…` variables and secret files), against the
//! interop stack on the host's loopback (`--network host`): a device's message arrives in
//! Dovecot through the container; the HEALTHCHECK passes with the admin server moved and fails
//! once the relay is stopped; the state volume is private and owned by 65532; the tokens
//! survive `podman restart`; `podman stop` ends the relay within its grace period and a spooled
//! message is still there afterwards; the log is JSON on stdout.
//!
//! The README's test command runs it (tests/run-all.sh sets `AUTHRELAY_CONTAINER_TESTS=1`);
//! a plain `cargo test` skips it: it needs root and podman, and a cold build takes minutes
//! (the base images, then authrelay compiled in release mode inside the build image).

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::interop::*;

const WORK: &str = "/var/tmp/authrelay-container";

fn podman(args: &[&str]) -> std::process::Output {
    run(Command::new("podman")
        .env("CONTAINERS_CONF", format!("{WORK}/containers.conf"))
        .args(args))
}

/// A container removed (with its volume) however the test ends.
struct Container {
    name: String,
    volume: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        podman(&["rm", "-f", "-t", "0", &self.name]);
        podman(&["volume", "rm", "-f", &self.volume]);
    }
}

/// Sends one message as the legacy app does (Python's smtplib, AUTH LOGIN, no TLS).
fn send(port: u16, mailbox: &str, marker: &str) -> String {
    let script = "import smtplib,sys\n\
        s=smtplib.SMTP('127.0.0.1',int(sys.argv[1]),timeout=60)\n\
        s.login('legacy-app',sys.argv[2])\n\
        s.sendmail(sys.argv[3],[sys.argv[3]],('From: %s\\r\\nSubject: %s\\r\\n\\r\\nfrom the container test\\r\\n' % (sys.argv[3], sys.argv[4])).encode())\n\
        s.quit()\nprint('sent')";
    let out = run(Command::new("python3").args([
        "-c",
        script,
        &port.to_string(),
        LOCAL_PASSWORD,
        mailbox,
        marker,
    ]));
    text(&out)
}

fn healthy(name: &str) -> bool {
    podman(&["healthcheck", "run", name]).status.success()
}

fn wait_healthy(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(name) {
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            text(&podman(&["logs", name]))
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every path under `dir`: (path, mode, uid).
fn modes(dir: &Path, out: &mut Vec<(String, u32, u32)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        out.push((
            e.path().display().to_string(),
            m.permissions().mode() & 0o7777,
            m.uid(),
        ));
        if m.is_dir() {
            modes(&e.path(), out);
        }
    }
}

#[test]
fn the_image_relays_stays_healthy_keeps_its_state_and_stops_cleanly() {
    if std::env::var_os("AUTHRELAY_CONTAINER_TESTS").is_none() {
        eprintln!("skipped: tests/run-all.sh runs it (AUTHRELAY_CONTAINER_TESTS=1: root, podman, a few minutes)");
        return;
    }
    stack();
    // Not `run`: a cold build takes longer than its three minutes.
    let built = Command::new("timeout")
        .args(["1800", "bash"])
        .arg(root().join("tests/container/build.sh"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    eprintln!("{}", text(&built).trim());

    let mailbox = unique_user("container");
    let rt = new_refresh_token(&mailbox);
    let secrets = tempfile::tempdir().unwrap();
    let put = |name: &str, value: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(65532), Some(65532)).unwrap();
    };
    put("store_key", STORE_KEY);
    put("client_secret", CLIENT_SECRET);
    put("refresh_token", &rt);
    put("app_password_hash", &hash_password(LOCAL_PASSWORD));
    put(
        "upstream_ca.pem",
        &std::fs::read_to_string(upstream_ca()).unwrap(),
    );
    std::fs::set_permissions(secrets.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (smtp, admin) = (free_port(), free_port());
    let c = Container {
        name: format!("authrelay-test-{}", std::process::id()),
        volume: format!("authrelay-test-state-{}", std::process::id()),
    };
    let env = [
        format!("AUTHRELAY__LISTENER__SMTP__LISTEN=127.0.0.1:{smtp}"),
        format!("AUTHRELAY__LISTENER__SMTP__UPSTREAM={SUBMISSION}"),
        "AUTHRELAY__LISTENER__SMTP__UPSTREAM_CA=/run/secrets/upstream_ca.pem".into(),
        "AUTHRELAY__LISTENER__SMTP__SPOOL=true".into(),
        format!("AUTHRELAY__ADMIN__LISTEN=127.0.0.1:{admin}"),
        format!("AUTHRELAY__ADMIN__PUBLIC_URL=http://localhost:{admin}"),
        "AUTHRELAY__ACCOUNT__APP__LOGIN=legacy-app".into(),
        "AUTHRELAY__ACCOUNT__APP__PASSWORD_HASH_FILE=/run/secrets/app_password_hash".into(),
        format!("AUTHRELAY__ACCOUNT__APP__MAILBOX={mailbox}"),
        "AUTHRELAY__ACCOUNT__APP__PROVIDER=custom".into(),
        format!("AUTHRELAY__ACCOUNT__APP__TOKEN_URL=http://{IDP}/token"),
        "AUTHRELAY__ACCOUNT__APP__CLIENT_ID=interop-client".into(),
        "AUTHRELAY__ACCOUNT__APP__CLIENT_SECRET_FILE=/run/secrets/client_secret".into(),
        "AUTHRELAY__ACCOUNT__APP__REFRESH_TOKEN_FILE=/run/secrets/refresh_token".into(),
    ];
    let mut args: Vec<String> = ["run", "-d", "--name", &c.name, "--network", "host"]
        .map(String::from)
        .to_vec();
    args.extend(["-v".into(), format!("{}:/var/lib/authrelay", c.volume)]);
    args.extend([
        "-v".into(),
        format!("{}:/run/secrets:ro", secrets.path().display()),
    ]);
    for e in &env {
        args.extend(["-e".into(), e.clone()]);
    }
    args.push("authrelay".into());
    let started = podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(started.status.success(), "{}", text(&started));

    // Healthy with the admin server moved; a device's message arrives through it.
    wait_healthy(&c.name);
    let first = format!("container-first-{}", free_port());
    assert_eq!(send(smtp, &mailbox, &first).trim(), "sent");
    assert!(
        delivered(&mailbox, &first, Duration::from_secs(30)).is_some(),
        "{}",
        text(&podman(&["logs", &c.name]))
    );

    // The state volume: private, and the relay's own.
    let mount = text(&podman(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        &c.volume,
    ]));
    let mut found = Vec::new();
    modes(Path::new(mount.trim()), &mut found);
    assert!(
        found.iter().any(|(p, _, _)| p.ends_with("tokens.json")),
        "{found:?}"
    );
    for (path, mode, uid) in &found {
        assert_eq!(*uid, 65532, "{path}");
        assert!(*mode == 0o700 || *mode == 0o600, "{path}: {mode:o}");
    }

    // The tokens survive a restart: the access token is revoked and the refresh token the
    // secret file holds was rotated away, so only the stored one can log in.
    idp_post(
        "/admin/revoke-access",
        &format!(r#"{{"user":"{mailbox}"}}"#),
    );
    let restarted = podman(&["restart", "-t", "20", &c.name]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    wait_healthy(&c.name);
    let second = format!("container-second-{}", free_port());
    assert_eq!(send(smtp, &mailbox, &second).trim(), "sent");
    assert!(delivered(&mailbox, &second, Duration::from_secs(30)).is_some());

    // A message spooled while the upstream cannot take it is still there after a stop; the
    // stop takes less than its grace period.
    idp_post("/admin/revoke", &format!(r#"{{"user":"{mailbox}"}}"#));
    let held = format!("container-held-{}", free_port());
    let sent = send(smtp, &mailbox, &held);
    let t = Instant::now();
    let stopped = podman(&["stop", "-t", "20", &c.name]);
    let took = t.elapsed();
    assert!(stopped.status.success(), "{}", text(&stopped));
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    assert!(
        !healthy(&c.name),
        "the health check fails once the relay is stopped"
    );
    let logs = text(&podman(&["logs", &c.name]));
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    let queued = std::fs::read_dir(Path::new(mount.trim()).join("spool/queue"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        sent.contains("sent") && queued == 1,
        "{sent} / {queued} queued\n{logs}"
    );
    eprintln!(
        "stop took {took:?}; {} paths in the state volume",
        found.len()
    );
}
