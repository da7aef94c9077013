//! The `authrelay` command line.

use authrelay::config::{self, LogFormat};
use authrelay::secret::Secret;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

mod queue;
mod signin;
mod store_cli;

const AFTER_HELP: &str = "\
Configuration: a TOML file (default config/authrelay.toml, or $AUTHRELAY_CONFIG), overridden by
environment variables AUTHRELAY__SECTION__NAME__KEY, e.g. AUTHRELAY__ACCOUNT__SCANNER__TENANT.
Every secret KEY may instead be given as KEY_file, the path of a file that holds it.
See config/authrelay.example.toml for every key, and README.md for a walk-through.

Examples:
  authrelay check --config config/authrelay.toml
  authrelay login scanner --device
  printf '%s' 'the-local-password' | authrelay hash-password
  authrelay run --config config/authrelay.toml --log-format json";

#[derive(Parser)]
#[command(name = "authrelay", version, about = "Local SMTP, IMAP and POP3 relay that turns legacy username/password logins into OAuth 2.0 (XOAUTH2) logins upstream", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGINT or SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format: human-readable text, or one JSON object per line for collectors.
        #[arg(long, value_enum)]
        log_format: Option<CliLogFormat>,
        /// Log level or filter (error, warn, info, debug, trace); overrides [log] level and RUST_LOG.
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Validate the configuration: print every problem with its key path, exit 1 if any.
    ///
    /// With --live, also log in as every account through every listener, as a device's login
    /// would (a token from the identity provider, then the upstream's AUTH), and exit 1 if any
    /// fails. Safe while the relay runs; nothing is sent.
    Check {
        /// Also try each account's token and upstream login now.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read a password on standard input and print its Argon2id hash (for password_hash).
    HashPassword,
    /// Ask a running relay whether it is ready (GET /readyz on its admin server): prints its
    /// answer, exits 0 when ready (also when degraded: the answer names what needs attention),
    /// 1 when not ready or not running. For container HEALTHCHECKs, where there is no curl.
    Health {
        /// The admin server's address; default: `[admin] listen` of the configuration
        /// (AUTHRELAY__ADMIN__LISTEN overrides it), or 127.0.0.1:9090 without a configuration.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Look at and manage the spool: messages waiting for delivery, and those that failed.
    #[command(after_help = QUEUE_HELP)]
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The token store: `migrate --to redis|file` copies the sealed entries between the file and
    /// a Redis server shared by replicas.
    Store {
        #[command(subcommand)]
        command: store_cli::StoreCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Authorize an OAuth account and keep its tokens in the token store.
    ///
    /// Works while `authrelay run` is running: the relay uses the new token at the next login.
    /// Without --device or --paste: the device-code flow where the provider has one, else the
    /// paste flow. For auth = "client_credentials" it fetches an app-only token to prove the
    /// app registration works. When the store is sealed with local passwords (no [store] key),
    /// the account's local password is asked for (standard input when it is not a terminal).
    #[command(after_help = LOGIN_HELP)]
    Login {
        /// The account's NAME, as in [account.NAME].
        account: String,
        /// Device code: print a URL and a code to enter on any device with a browser.
        #[arg(long, conflicts_with = "paste")]
        device: bool,
        /// Print the sign-in URL; after signing in, paste the address the browser lands on.
        #[arg(long)]
        paste: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

const QUEUE_HELP: &str = "\
Examples:
  authrelay queue list                 # what waits, and why
  authrelay queue list --json          # one JSON object per message, RFC 3339 times
  authrelay queue show 00066183f74deafa-5de53dfd3103
  authrelay queue retry 00066183f74deafa-5de53dfd3103
  authrelay queue flush                # try everything again now

Works whether or not `authrelay run` is running; a running relay notices within ten seconds.";

const LOGIN_HELP: &str = "\
Examples:
  authrelay login scanner --device     # Microsoft 365: enter the code at the printed URL
  authrelay login scanner --paste      # any provider; the redirect URI must be registered
  authrelay login app-only             # client credentials: check the app registration

The redirect URI for --paste and the account page is [admin] public_url + redirect_path,
http://localhost:9090/register_microsoft_graph_api/ by default: register exactly that (platform
\"Web\") in the app registration.";

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, short, global = true, env = "AUTHRELAY_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    return_large_allocations_to_the_system();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, live } => match check(&config.config) {
            ExitCode::SUCCESS if live => live_check(&config.config),
            code => code,
        },
        Command::HashPassword => hash_password(),
        Command::Queue { command, config } => match config::load(&config.config) {
            Ok(cfg) => queue::run(&cfg, command),
            Err(problems) => {
                print_problems(&problems);
                ExitCode::FAILURE
            }
        },
        Command::Store { command, config } => match config::load(&config.config) {
            Ok(cfg) => store_cli::run(&cfg, command),
            Err(problems) => {
                print_problems(&problems);
                ExitCode::FAILURE
            }
        },
        Command::Health { addr, config } => match health_address(addr, &config.config) {
            Ok(addr) => health(addr),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Login {
            account,
            device,
            paste,
            config,
        } => signin::run(&config.config, &account, device, paste),
        Command::Run {
            config,
            log_format,
            log_level,
        } => run(&config.config, log_format, log_level),
    }
}

/// Each password check allocates Argon2's 19 MiB working memory. glibc's malloc raises its mmap
/// threshold after such a block is freed and then keeps later ones in its arenas, so a relay that
/// checked a few hundred passwords would hold hundreds of MiB it no longer uses. A fixed
/// threshold keeps every large block mmapped, and returned to the system when freed.
fn return_large_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn print_problems(problems: &[config::Problem]) {
    for p in problems {
        eprintln!("error: {p}");
    }
    eprintln!(
        "{} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            let store = cfg.store.open_to_read();
            if let Err(e) = &store {
                eprintln!("error: store: {e}");
                return ExitCode::FAILURE;
            }
            let sealed_by_password = cfg.store.key.is_none() && !cfg.store.auto_key;
            if sealed_by_password && cfg.listeners.iter().any(|l| l.spool) {
                eprintln!("warning: store.seal: \"password\" with a spooling listener: after a restart, spooled mail waits until a device logs in again; leave seal out (a store key is made beside the store) or give key_file");
            }
            if let Some(s) = store.as_ref().ok().filter(|s| s.is_shared()) {
                // The shared store must answer now: a replica without it would run alone.
                match s.probe().and_then(|()| s.refresh_view()) {
                    Ok(()) => println!("store: {} answers", s.path().display()),
                    Err(e) => {
                        eprintln!("error: store: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            for w in config::warnings(&cfg) {
                eprintln!("warning: {w}");
            }
            for a in &cfg.accounts {
                if let config::AccountAuth::OAuth(o) = &a.auth {
                    let stored = store
                        .as_ref()
                        .ok()
                        .and_then(|s| s.entry(&a.id))
                        .is_some_and(|e| e.has_refresh_token());
                    if o.flow == config::Flow::Delegated && o.refresh_token.is_none() && !stored {
                        eprintln!("warning: account.{}: not authorized yet; run `authrelay login {}` or use the account page", a.id, a.id);
                    }
                }
            }
            println!(
                "kernel TLS: {}; authrelay encrypts and decrypts TLS records in user space (rustls)",
                authrelay::net::ktls::probe()
            );
            println!(
                "{}: OK ({} listener(s), {} account(s))",
                path.display(),
                cfg.listeners.len(),
                cfg.accounts.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print_problems(&problems);
            ExitCode::FAILURE
        }
    }
}

/// `check --live`: every account through every listener, one line each.
fn live_check(path: &std::path::Path) -> ExitCode {
    let Ok(cfg) = config::load(path) else {
        return ExitCode::FAILURE; // check has printed why
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let findings = match runtime.block_on(authrelay::live::check(&cfg)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for f in &findings {
        let (mark, text) = match &f.outcome {
            Ok(t) => ("ok", t),
            Err(t) => {
                failed += 1;
                ("FAILED", t)
            }
        };
        println!(
            "live: account {} via listener {} ({}): {mark}: {text}",
            f.account, f.listener, f.upstream
        );
    }
    if failed > 0 {
        eprintln!("{failed} of {} login(s) failed", findings.len());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: cannot read standard input: {e}");
        return ExitCode::FAILURE;
    }
    let trimmed = input.strip_suffix('\n').unwrap_or(&input);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    let password = Secret::new(trimmed);
    drop(zeroize::Zeroizing::new(input));
    if password.is_empty() {
        eprintln!("error: the password is empty (pipe it in: printf '%s' 'password' | authrelay hash-password)");
        return ExitCode::FAILURE;
    }
    match authrelay::credential::password::hash(&password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where `authrelay health` asks: `--addr`, else the configuration's admin server; without a
/// configuration file at the default place, the default admin address.
fn health_address(
    addr: Option<std::net::SocketAddr>,
    path: &std::path::Path,
) -> Result<std::net::SocketAddr, String> {
    if let Some(a) = addr {
        return Ok(a);
    }
    if !path.exists() && path == std::path::Path::new(config::DEFAULT_PATH) {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 9090)));
    }
    match config::admin_listen(path) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(format!(
            "{}: the admin server is disabled ([admin] enabled = false), so there is nothing to ask; give --addr",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn health(addr: std::net::SocketAddr) -> ExitCode {
    use std::io::Write;
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        // Its own address as Host: the relay names accounts only to its own name.
        let request = format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        s.take(64 * 1024).read_to_end(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })();
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("not ready: nothing answers at {addr} ({e}); is the relay running?");
            return ExitCode::FAILURE;
        }
    };
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or("");
    let ok = status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200");
    let body = body.trim_end();
    if ok {
        println!("{body}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", if body.is_empty() { status } else { body });
        ExitCode::FAILURE
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not in files, journald or container logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.fmt_fields(authrelay::logging::SafeFields).init(),
    }
}

fn run(
    path: &std::path::Path,
    log_format: Option<CliLogFormat>,
    log_level: Option<String>,
) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::FAILURE;
        }
    };
    let level = log_level
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| cfg.log.level.clone());
    let format = match log_format {
        Some(CliLogFormat::Json) => LogFormat::Json,
        Some(CliLogFormat::Text) => LogFormat::Text,
        None => cfg.log.format,
    };
    init_logging(&level, format);
    tracing::debug!(
        kernel_tls = %authrelay::net::ktls::probe(),
        "TLS records are encrypted and decrypted in user space (rustls)"
    );
    let open_files = authrelay::net::raise_open_files_limit();
    let wanted: u64 = cfg
        .listeners
        .iter()
        .map(|l| 2 * l.max_connections as u64)
        .sum::<u64>()
        + 64;
    if open_files != 0 && open_files < wanted {
        tracing::warn!(
            open_files,
            wanted,
            "the open-files limit is below what max_connections needs (two sockets per session); raise LimitNOFILE= or the container's nofile ulimit"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = match Signals::catch() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let running = match authrelay::app::start(&cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        for (name, addr) in &running.addresses {
            tracing::info!(listener = %name, address = %addr, "ready");
        }
        serve_signals(signals, &running, path).await;
        tracing::info!(
            drain_secs = cfg.service.drain.as_secs(),
            "shutting down: no new connections; waiting for running sessions"
        );
        running.stop(cfg.service.drain).await;
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or SIGINT; reloads the configuration on each SIGHUP meanwhile.
/// SIGTERM, SIGINT and SIGHUP, caught from the moment this is created: before the relay says
/// "ready", so that a supervisor's prompt signal is never met by the default action (exit).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Until SIGTERM or SIGINT; SIGHUP reloads the configuration.
async fn serve_signals(
    mut signals: Signals,
    running: &authrelay::app::Running,
    path: &std::path::Path,
) {
    loop {
        tokio::select! {
            _ = signals.int.recv() => return,
            _ = signals.term.recv() => return,
            _ = signals.hup.recv() => reload(running, path).await,
        }
    }
}

/// A new configuration that does not validate is refused with its problems; the running one
/// stays.
async fn reload(running: &authrelay::app::Running, path: &std::path::Path) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    match config::load(path) {
        Err(problems) => {
            for p in &problems {
                tracing::error!(problem = %p, "configuration not reloaded");
            }
            tracing::error!(
                problems = problems.len(),
                "configuration not reloaded; the running configuration stays"
            );
        }
        Ok(cfg) => match running.reload(&cfg).await {
            Ok(changes) if changes.is_empty() => {
                tracing::info!("configuration reloaded: no change")
            }
            Ok(changes) => {
                tracing::info!(changes = %changes.join("; "), "configuration reloaded")
            }
            Err(e) => tracing::error!("configuration reloaded only in part: {e}"),
        },
    }
}
