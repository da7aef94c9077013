//! The command line, run as a user would run it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn authrelay(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authrelay"));
    cmd.args(args)
        .env_remove("AUTHRELAY_CONFIG")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const EXAMPLE: &str = "config/authrelay.example.toml";

#[test]
fn the_example_config_is_valid() {
    let out = authrelay(&["check", "--config", EXAMPLE], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (1 listener(s), 1 account(s))"));
    // Whether the kernel could take TLS over is said either way (these machines have no tls
    // module: "not available (the kernel has no tls module)").
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("kernel TLS: "));
    assert!(
        line.is_some_and(|l| l.contains("available") && l.contains("user space")),
        "{stdout}"
    );
}

#[test]
fn check_lists_three_mistakes_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(format!("{}/{EXAMPLE}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let broken = example
        .replace("upstream_tls = \"starttls\"", "upstream_tls = \"startls\"")
        .replace(
            "listen = \"127.0.0.1:2525\"",
            "listen = \"127.0.0.1:2525\"\nlisten_backlog = 5",
        )
        .replace(
            "tenant = \"contoso.onmicrosoft.com\"",
            "tenant = \"contoso/evil\"",
        );
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let out = authrelay(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 3, "{err}");
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with("error: listener.smtp.upstream_tls: ")
                && l.contains(
                    "\"startls\" is not a valid value; valid values are: starttls, implicit, none"
                )),
        "{err}"
    );
    assert!(
        errors.contains(&"error: listener.smtp.listen_backlog: unknown key"),
        "{err}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with("error: account.scanner.tenant: must be a tenant ID")),
        "{err}"
    );
    assert!(err.contains("3 problems found"));
}

#[test]
fn environment_and_secret_files_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client_secret");
    std::fs::write(&secret, "value-from-a-file\n").unwrap();
    let out = authrelay(
        &["check", "--config", EXAMPLE],
        &[
            ("AUTHRELAY__ACCOUNT__SCANNER__TENANT", "not a tenant"),
            (
                "AUTHRELAY__ACCOUNT__SCANNER__CLIENT_SECRET_FILE",
                "/nonexistent/secret",
            ),
        ],
    );
    let err = stderr(&out);
    assert!(
        err.contains("error: account.scanner.tenant: must be a tenant ID"),
        "{err}"
    );
    assert!(
        err.contains("error: account.scanner.client_secret_file: cannot read /nonexistent/secret"),
        "{err}"
    );
    let out = authrelay(
        &["check", "--config", EXAMPLE],
        &[(
            "AUTHRELAY__ACCOUNT__SCANNER__CLIENT_SECRET_FILE",
            secret.to_str().unwrap(),
        )],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("value-from-a-file"));
    // The config path can come from AUTHRELAY_CONFIG.
    let out = authrelay(&["check"], &[("AUTHRELAY_CONFIG", EXAMPLE)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = authrelay(&["check", "--config", "/nonexistent.toml"], &[]);
    assert!(
        stderr(&out).contains("error: /nonexistent.toml: file not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pass word\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let phc = authrelay::secret::Secret::new(phc.trim());
    assert!(authrelay::credential::password::verify(
        &"pass word".into(),
        &phc
    ));
    assert!(!authrelay::credential::password::verify(
        &"pass word\n".into(),
        &phc
    ));

    let out = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the password is empty"));
}

#[test]
fn help_answers_the_first_questions() {
    let out = authrelay(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "run",
        "check",
        "hash-password",
        "AUTHRELAY__",
        "_file",
        "config/authrelay.toml",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    let out = authrelay(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("authrelay "));
}

#[test]
fn run_refuses_a_port_in_use_with_the_listener_name() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = authrelay(
        &["run", "--config", EXAMPLE],
        &[(
            "AUTHRELAY__LISTENER__SMTP__LISTEN",
            &format!("127.0.0.1:{port}"),
        )],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("listener.smtp: cannot listen on 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_starts_with_the_example_config_and_stops_on_sigterm() {
    // No client connects: with the example config a session would contact the real provider.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["run", "--config", EXAMPLE])
        .env(
            "AUTHRELAY__LISTENER__SMTP__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("AUTHRELAY__ADMIN__LISTEN", "127.0.0.1:0")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen.contains("ready") && std::time::Instant::now() < deadline {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains(&format!("127.0.0.1:{port}")), "{seen}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{seen}{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}

/// Each password check allocates Argon2's 19 MiB; the relay must give it back to the system
/// afterwards (glibc would otherwise keep it: 129 MB resident after three logins).
#[test]
fn password_checks_do_not_leave_their_memory_resident() {
    use std::io::{BufRead, BufReader, Read};
    use std::net::{TcpListener, TcpStream};
    // A POP3 upstream that only greets: the local password check happens before any login
    // upstream.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in upstream.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.write_all(b"+OK ready\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            });
        }
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[listener.pop3]\nprotocol = \"pop3\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{upstream_addr}\"\nupstream_tls = \"none\"\n\n[admin]\nenabled = false\n\n[store]\npath = \"{}\"\n\n[security]\nfailure_delay_ms = 0\nmax_failures_per_address = 0\nmax_failures_per_username = 0\n\n[account.a]\nlogin = \"a@example.com\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$MU94ng1n/4lRz6cR7lqPIA$K2jT1rxrDDJDO0vBsM+K23hAUXmLOj3Nhz9TI77Hs2A\"\nprovider = \"custom\"\nclient_id = \"c\"\ntoken_url = \"http://127.0.0.1:1/token\"\n",
            dir.path().join("tokens.json").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..10 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        r.get_mut()
            .write_all(b"USER a@example.com\r\nPASS wrong\r\n")
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "-ERR [AUTH] Authentication failed\r\n");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!("RSS after 10 password checks: {rss_kib} KiB");
    assert!(
        rss_kib < 48 * 1024,
        "{rss_kib} KiB resident after 10 password checks"
    );
}

/// Each session holds two sockets: started with a soft open-files limit of 256 under a hard one
/// of 1,024, the relay runs with 1,024, and says that 1,000 connections need more.
#[test]
fn run_raises_its_open_files_limit_and_warns_when_it_is_too_low() {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_authrelay"));
    command
        .args(["run", "--config", EXAMPLE])
        .env(
            "AUTHRELAY__LISTENER__SMTP__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("AUTHRELAY__ADMIN__LISTEN", "127.0.0.1:0")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and only changes the child's own limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("ready") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, ["1024", "1024"], "{limits}");
    assert!(
        seen.contains("the open-files limit is below what max_connections needs"),
        "{seen}"
    );
    assert!(seen.contains("wanted=2064"), "{seen}");
}

#[test]
fn check_refuses_a_password_hash_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(format!("{}/{EXAMPLE}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let full = "$argon2id$v=19$m=19456,t=2,p=1$6aW2CDU7XzDGXu49Mzs85Q$Zd3pikVJGyoLWjoh9INFDcfST6poXIfexugiArv7y2Q";
    assert!(example.contains(full));
    let path = dir.path().join("cut.toml");
    std::fs::write(
        &path,
        example.replace(full, "$argon2id$v=19$m=19456,t=2,p=1"),
    )
    .unwrap();
    let out = authrelay(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: account.scanner.password_hash: incomplete"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn health_asks_the_admin_server_the_configuration_names() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("a.toml");
    std::fs::write(&path, format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    // Nothing runs there: not ready, and the address asked is the configuration's.
    let out = authrelay(&["health", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("nothing answers at 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    // The environment overrides the file, as for `run`.
    let out = authrelay(
        &["health", "--config", path.to_str().unwrap()],
        &[("AUTHRELAY__ADMIN__LISTEN", "127.0.0.1:1")],
    );
    assert!(
        stderr(&out).contains("nothing answers at 127.0.0.1:1 "),
        "{}",
        stderr(&out)
    );
    std::fs::write(&path, "[admin]\nenabled = false\n").unwrap();
    let out = authrelay(&["health", "--config", path.to_str().unwrap()], &[]);
    assert!(
        stderr(&out).contains("the admin server is disabled"),
        "{}",
        stderr(&out)
    );
}
