//! A relay started from the shipped example configuration, as a newcomer would: the
//! configuration in a directory of its own, only endpoints and ports overridden through
//! `AUTHRELAY__...` variables, run from `/` under `umask 000`, `authrelay login` from another
//! directory. The newcomer tests (interop_unattended.rs, interop_signin_ways.rs) drive it.

use super::interop::*;
use std::io::{BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A relay started from the example configuration, as a newcomer would.
pub struct Newcomer {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    pub smtp: u16,
    pub imap: u16,
    pub pop3: u16,
    pub log: PathBuf,
    pub user: String,
    /// The admin server's port (the account page).
    pub admin: u16,
    /// The app registration's client ID at the harness identity provider.
    pub client_id: String,
    /// `[store] seal = "password"`: `authrelay login` asks for the local password.
    pub password_sealed: bool,
}

impl Newcomer {
    pub fn new(tag: &str) -> Newcomer {
        stack();
        let user = unique_user(tag);
        let client_id = format!("{tag}-client-{}", free_port());
        register_client(&format!(r#"{{"client_id":"{client_id}"}}"#));
        let dir = tempfile::tempdir().unwrap();
        // The configuration in a directory of its own, as /etc/authrelay would be.
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let config = dir.path().join("etc/authrelay.toml");
        std::fs::copy(root().join("config/authrelay.example.toml"), &config).unwrap();
        let (smtp, imap, pop3, admin) = (free_port(), free_port(), free_port(), free_port());
        let ca = upstream_ca().display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("ADMIN__LISTEN".into(), format!("127.0.0.1:{admin}")),
            (
                "ADMIN__PUBLIC_URL".into(),
                format!("http://localhost:{admin}"),
            ),
            ("SPOOL__FIRST_RETRY_SECS".into(), "1".into()),
            (
                "ACCOUNT__SCANNER__PASSWORD_HASH".into(),
                hash_password(LOCAL_PASSWORD),
            ),
            ("ACCOUNT__SCANNER__MAILBOX".into(), user.clone()),
            (
                "ACCOUNT__SCANNER__AUTHORITY".into(),
                format!("http://{IDP}"),
            ),
            ("ACCOUNT__SCANNER__TENANT".into(), "contoso".into()),
            ("ACCOUNT__SCANNER__CLIENT_ID".into(), client_id.clone()),
        ];
        for (name, port, upstream) in [
            ("SMTP", smtp, SUBMISSION),
            ("IMAP", imap, IMAP),
            ("POP3", pop3, POP3),
        ] {
            let l = |key: &str| format!("LISTENER__{name}__{key}");
            env.extend([
                (l("PROTOCOL"), name.to_lowercase()),
                (l("LISTEN"), format!("127.0.0.1:{port}")),
                (l("UPSTREAM"), upstream.to_owned()),
                (l("UPSTREAM_TLS"), "starttls".to_owned()),
                (l("UPSTREAM_CA"), ca.clone()),
                (l("UPSTREAM_NAME"), "localhost".to_owned()),
            ]);
        }
        let env = env
            .into_iter()
            .map(|(k, v)| (format!("AUTHRELAY__{k}"), v))
            .collect();
        let log = dir.path().join("relay.log");
        Newcomer {
            dir,
            config,
            env,
            child: None,
            smtp,
            imap,
            pop3,
            log,
            user,
            admin,
            client_id,
            password_sealed: false,
        }
    }

    /// The same with the token store sealed by each account's local password.
    pub fn password_sealed(tag: &str) -> Newcomer {
        let mut r = Newcomer::new(tag);
        r.env
            .push(("AUTHRELAY__STORE__SEAL".into(), "password".into()));
        r.password_sealed = true;
        r
    }

    /// `authrelay ARGS` under `umask 000`, from `cwd`, with the overrides.
    pub fn command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_authrelay"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // From `/`, as systemd starts services.
        let child = self
            .command(Path::new("/"), &["run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_listeners(&[self.smtp, self.imap, self.pop3], || self.log_text());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("etc/state")
    }

    /// A message through the SMTP listener, as the device sends it.
    pub fn send(&self, marker: &str) -> String {
        let file = self.dir.path().join(format!("{marker}.eml"));
        let body = String::from_utf8(message(marker, 0)).unwrap();
        std::fs::write(&file, body.replace("alice@example.com", &self.user)).unwrap();
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/smtp_client.py"))
            .args([
                &self.smtp.to_string(),
                "plain",
                "PLAIN",
                "scanner@contoso.com",
                LOCAL_PASSWORD,
                &self.user,
                &self.user,
            ])
            .arg(&file));
        text(&out).trim().to_owned()
    }

    pub fn imap_count(&self) -> String {
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/imap_client.py"))
            .args([
                &self.imap.to_string(),
                "plain",
                "login",
                "scanner@contoso.com",
                LOCAL_PASSWORD,
            ])
            .arg(upstream_ca())
            .arg("count"));
        text(&out).trim().to_owned()
    }

    pub fn pop3_stat(&self) -> String {
        let out = run(Command::new("python3")
            .arg(root().join("tests/interop/pop3_client.py"))
            .args([
                &self.pop3.to_string(),
                "plain",
                "userpass",
                "scanner@contoso.com",
                LOCAL_PASSWORD,
            ])
            .arg(upstream_ca())
            .arg("stat"));
        text(&out).trim().to_owned()
    }

    /// `authrelay login scanner --device` or `--paste` from another directory, completed at the
    /// identity provider as the mailbox; what it printed.
    /// Sets `AUTHRELAY__KEY` (overriding an earlier value).
    pub fn set(&mut self, key: &str, value: &str) {
        let key = format!("AUTHRELAY__{key}");
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.to_owned()));
    }

    /// The sign-in on the account page, as a browser does it: the page's form with the local
    /// password, consent at the identity provider, and back to the page.
    fn sign_in_on_the_page(&self) -> String {
        let base = format!("http://localhost:{}", self.admin);
        let page = text(&run(
            Command::new("curl").args(["-s", &format!("{base}/account/scanner")])
        ));
        let csrf = super::csrf_of(&page);
        let to_idp = text(&run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            "--data-urlencode",
            &format!("csrf={csrf}"),
            "--data-urlencode",
            &format!("password={LOCAL_PASSWORD}"),
            &format!("{base}/account/scanner/authorize"),
        ])));
        assert!(to_idp.contains("/oauth2/v2.0/authorize?"), "{to_idp}");
        let landed = consent_at_idp(&to_idp, &self.user);
        let back = text(&run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            &landed,
        ])));
        assert!(back.ends_with("/account/scanner?authorized=1"), "{back}");
        String::new()
    }

    pub fn sign_in(&self, way: &str) -> String {
        if way == "page" {
            return self.sign_in_on_the_page();
        }
        let elsewhere = tempfile::tempdir().unwrap();
        let mut child = self
            .command(elsewhere.path(), &["login", "scanner", way])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if self.password_sealed {
            writeln!(stdin, "{LOCAL_PASSWORD}").unwrap();
        }
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut printed = Vec::new();
        if way == "--device" {
            let lines = read_until(&mut out, "enter the code");
            let (url, code) = device_prompt(lines.last().unwrap());
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("Sign in as {}", self.user))),
                "the prompt names the mailbox: {lines:?}"
            );
            let page = run(Command::new("curl").args([
                "-s",
                "-d",
                &format!("user_code={code}&user={}", self.user),
                &url,
            ]));
            assert!(
                text(&page).contains("You have signed in"),
                "{}",
                text(&page)
            );
            printed.extend(lines);
        } else {
            let lines = read_until(&mut out, "/authorize?");
            let landed = consent_at_idp(lines.last().unwrap().trim(), &self.user);
            if self.running() {
                // The browser lands on the running relay's page, which sends the user back to
                // the terminal instead of calling the sign-in broken.
                let page = run(Command::new("curl").args(["-s", "-w", "%{http_code}", &landed]));
                let page = text(&page);
                assert!(
                    page.contains("Finish the sign-in in the terminal")
                        && page.contains("paste it there")
                        && page.ends_with("200"),
                    "{page}"
                );
            }
            printed.extend(lines);
            printed.extend(read_until(&mut out, "paste it here"));
            writeln!(stdin, "{landed}").unwrap();
        }
        drop(stdin);
        child.stdout = Some(out.into_inner());
        let (ok, output) = finish(child);
        let output = printed.concat() + &output;
        assert!(ok, "{output}");
        // Nothing was made where the command ran: it found the relay's store.
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        output
    }
}

impl Drop for Newcomer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every path under `dir` with its mode.
pub fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = vec![(
        dir.to_owned(),
        std::fs::metadata(dir).unwrap().mode() & 0o777,
    )];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            found.extend(modes(&e.path()));
        } else {
            found.push((e.path(), meta.mode() & 0o777));
        }
    }
    found
}
