//! Starts the measured stack on loopback: the upstream and its token endpoint, the bare relay,
//! authrelay (twice: one instance with a store key and a cached token, one fresh for the
//! expired-token burst) and, when given, email-oauth2-proxy. Every process is killed on drop.

use crate::client::{Auth, Target};
use crate::Settings;
use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

pub const USER: &str = "bench@example.com";
pub const PASSWORD: &str = "bench-local-password";

/// A child process killed when dropped.
pub struct Proc(pub(crate) Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Stack {
    pub _dir: tempfile::TempDir,
    pub _upstream: Proc,
    pub bare: Proc,
    pub authrelay: Proc,
    pub _fresh: Proc,
    pub emailproxy: Option<(Proc, String)>,
    pub token_endpoint: SocketAddr,
    pub direct: Target,
    pub bare_target: Target,
    pub authrelay_target: Target,
    pub fresh_target: Target,
    pub emailproxy_target: Option<Target>,
    /// The open-files limit every process here runs with.
    pub nofile: u64,
}

pub(crate) fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Makes a child die with this process (SIGKILL when the parent exits, even when it is killed or
/// interrupted and no destructor runs), so that no relay outlives a stopped benchmark.
pub(crate) fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Starts this executable as a child (`upstream` or `bare`) and waits for its `ready` line.
fn spawn_self(args: &[String]) -> Result<Proc, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = die_with_parent(&mut Command::new(exe))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args[0]))?;
    let stdout = child.stdout.take().expect("piped");
    let proc = Proc(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("{} did not start", args[0]));
    }
    Ok(proc)
}

/// Waits until `addr` accepts connections.
pub(crate) async fn wait_for(addr: SocketAddr, what: &str, proc: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before listening on {addr}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what} did not listen on {addr} within 60 s"))
}

pub(crate) fn relay_config(
    dir: &Path,
    name: &str,
    listeners: &[(&str, SocketAddr, SocketAddr)],
    token: SocketAddr,
    store_key: bool,
) -> Result<PathBuf, String> {
    relay_config_with(dir, name, listeners, token, store_key, "")
}

/// [`relay_config`] with `store_extra` added to its `[store]` table (a shared store).
pub(crate) fn relay_config_with(
    dir: &Path,
    name: &str,
    listeners: &[(&str, SocketAddr, SocketAddr)],
    token: SocketAddr,
    store_key: bool,
    store_extra: &str,
) -> Result<PathBuf, String> {
    let hash = authrelay::credential::password::hash(&authrelay::secret::Secret::new(PASSWORD))?;
    let ca = dir.join("cert.pem");
    let mut toml = format!(
        "[log]\nlevel = \"warn\"\n\n[admin]\nenabled = false\n\n[store]\npath = \"{}\"\ncheck_interval_secs = 3600\n",
        dir.join(format!("{name}-tokens.json")).display()
    );
    if store_key {
        let key = dir.join("store.key");
        std::fs::write(&key, "bench-store-key-0123456789abcdefghijklmnop")
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        toml += &format!("key_file = \"{}\"\n", key.display());
    } else {
        // The "fresh" instance measures a store sealed with each account's password: without
        // this the relay would make its own key beside the store.
        toml += "seal = \"password\"\n";
    }
    toml += store_extra;
    toml += "\n[security]\nfailure_delay_ms = 200\n";
    for (protocol, listen, upstream) in listeners {
        toml += &format!(
            "\n[listener.{protocol}]\nprotocol = \"{protocol}\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\nupstream_tls = \"implicit\"\nupstream_ca = \"{}\"\nupstream_name = \"localhost\"\nmax_connections = 20000\nmax_connections_per_address = 20000\nspool = false\n",
            ca.display()
        );
    }
    toml += &format!(
        "\n[account.bench]\nlogin = \"{USER}\"\npassword_hash = \"{hash}\"\nmailbox = \"{USER}\"\nprovider = \"custom\"\nclient_id = \"bench-client\"\ntoken_url = \"http://{token}/token\"\nrefresh_token = \"bench-refresh-token\"\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).map_err(|e| e.to_string())?;
    Ok(path)
}

pub(crate) fn spawn_authrelay(config: &Path) -> Result<Proc, String> {
    die_with_parent(&mut Command::new(env!("CARGO_BIN_EXE_authrelay")))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .map(Proc)
        .map_err(|e| format!("cannot start authrelay: {e}"))
}

pub(crate) fn password_target(smtp: SocketAddr, imap: SocketAddr) -> Target {
    Target {
        smtp,
        imap,
        tls: None,
        auth: Auth::Password {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        sender: USER.into(),
    }
}

impl Stack {
    pub async fn start(settings: &Settings) -> Result<Stack, String> {
        // Children inherit the raised limit.
        let nofile = authrelay::net::raise_open_files_limit();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| e.to_string())?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key, ck.key_pair.serialize_pem()).map_err(|e| e.to_string())?;

        let (up_smtp, up_imap, token_endpoint) = (free_addr(), free_addr(), free_addr());
        let path = |p: &Path| p.display().to_string();
        let upstream = spawn_self(&[
            "upstream".into(),
            path(&cert),
            path(&key),
            up_smtp.to_string(),
            up_imap.to_string(),
            token_endpoint.to_string(),
            (settings.mib << 20).to_string(),
        ])?;
        let grant = "grant_type=refresh_token&refresh_token=bench&client_id=bench-direct";
        let json = crate::upstream::http(token_endpoint, "POST", "/token", grant)
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let token = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["access_token"].as_str().map(str::to_owned))
            .ok_or("the token endpoint issued no token")?;
        let xoauth2 = Auth::XOAuth2 {
            user: USER.into(),
            token: token.clone(),
        };
        let connector = TlsConnector::from(
            authrelay::net::tls::client_config(Some(&cert)).map_err(|e| e.to_string())?,
        );
        let direct = Target {
            smtp: up_smtp,
            imap: up_imap,
            tls: Some(connector),
            auth: xoauth2.clone(),
            sender: USER.into(),
        };

        let (bare_smtp, bare_imap) = (free_addr(), free_addr());
        let bare = spawn_self(&[
            "bare".into(),
            path(&cert),
            bare_smtp.to_string(),
            up_smtp.to_string(),
            bare_imap.to_string(),
            up_imap.to_string(),
        ])?;
        let bare_target = Target {
            smtp: bare_smtp,
            imap: bare_imap,
            tls: None,
            auth: xoauth2,
            sender: USER.into(),
        };

        let (ar_smtp, ar_imap) = (free_addr(), free_addr());
        let config = relay_config(
            dir.path(),
            "authrelay",
            &[("smtp", ar_smtp, up_smtp), ("imap", ar_imap, up_imap)],
            token_endpoint,
            true,
        )?;
        let mut authrelay = spawn_authrelay(&config)?;
        wait_for(ar_imap, "authrelay", &mut authrelay).await?;

        let fresh_imap = free_addr();
        let config = relay_config(
            dir.path(),
            "fresh",
            &[("imap", fresh_imap, up_imap)],
            token_endpoint,
            false,
        )?;
        let mut fresh = spawn_authrelay(&config)?;
        wait_for(fresh_imap, "authrelay (fresh)", &mut fresh).await?;

        let (emailproxy, emailproxy_target) = match &settings.emailproxy {
            None => (None, None),
            Some(exe) => {
                let (p, t) = start_emailproxy(
                    settings,
                    exe,
                    dir.path(),
                    &cert,
                    &token,
                    token_endpoint,
                    up_smtp,
                    up_imap,
                )
                .await?;
                (Some(p), Some(t))
            }
        };

        Ok(Stack {
            _dir: dir,
            _upstream: upstream,
            bare,
            authrelay,
            _fresh: fresh,
            emailproxy,
            token_endpoint,
            direct,
            bare_target,
            authrelay_target: password_target(ar_smtp, ar_imap),
            fresh_target: password_target(free_addr(), fresh_imap),
            emailproxy_target,
            nofile,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_emailproxy(
    settings: &Settings,
    exe: &Path,
    dir: &Path,
    ca: &Path,
    token: &str,
    token_endpoint: SocketAddr,
    up_smtp: SocketAddr,
    up_imap: SocketAddr,
) -> Result<((Proc, String), Target), String> {
    let python = settings
        .python
        .clone()
        .unwrap_or_else(|| exe.with_file_name("python"));
    let (smtp, imap) = (free_addr(), free_addr());
    let config = dir.join("emailproxy.config");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/emailproxy_config.py");
    let status = Command::new(&python)
        .arg(script)
        .arg(&config)
        .args([
            USER,
            PASSWORD,
            token,
            &format!("http://{token_endpoint}/token"),
        ])
        .args([smtp.port(), up_smtp.port(), imap.port(), up_imap.port()].map(|p| p.to_string()))
        .status()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !status.success() {
        return Err("emailproxy_config.py failed".into());
    }
    let version = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('emailproxy'))",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut proc = die_with_parent(&mut Command::new(exe))
        .args(["--no-gui", "--config-file"])
        .arg(&config)
        .arg("--log-file")
        .arg(dir.join("emailproxy.log"))
        .env("SSL_CERT_FILE", ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    wait_for(imap, "emailproxy", &mut proc).await?;
    wait_for(smtp, "emailproxy", &mut proc).await?;
    Ok(((proc, version), password_target(smtp, imap)))
}
