//! Reading the configuration: sources (file, environment, secret files), the root tables, and
//! the small sections (`[store]`, `[admin]`, `[log]`, `[service]`, `[security]`).

use super::*;

/// Loads and validates the configuration at `path`, with environment overrides.
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    let root = read_sources(path).map_err(|message| {
        vec![Problem {
            path: path.display().to_string(),
            message,
        }]
    })?;
    // Relative paths in the file are relative to the file, not to wherever the command runs
    // (systemd starts services in `/`; `authrelay login` may be run from anywhere).
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let base = std::path::absolute(dir.unwrap_or(Path::new("."))).map_err(|e| {
        vec![Problem {
            path: path.display().to_string(),
            message: format!("cannot tell its directory: {e}"),
        }]
    })?;
    from_value_at(root, Some(base))
}

pub(super) fn read_sources(path: &Path) -> Result<Value, String> {
    if !path.exists() {
        return Err("file not found (give --config PATH or set AUTHRELAY_CONFIG)".into());
    }
    let built = config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .add_source(
            Environment::with_prefix("AUTHRELAY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| without_source_excerpt(&e.to_string()))?;
    built
        .try_deserialize::<Value>()
        .map_err(|e| without_source_excerpt(&e.to_string()))
}

/// A TOML syntax error quotes the offending line, which may hold a secret: keep the position
/// and the explanation only.
pub(super) fn without_source_excerpt(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() < 3 || !lines.iter().any(|l| l.trim_start().starts_with('|')) {
        return message.to_owned();
    }
    // The excerpt lines look like `  |` and `2 | text`; the parser's reason follows them, then
    // the crate's own ` in FILE` (the caller names the file already).
    let is_excerpt = |l: &str| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    let reason: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !is_excerpt(l) && !l.starts_with("in "))
        .collect();
    match reason.is_empty() {
        true => lines[0].to_owned(),
        false => format!("{}: {}", lines[0], reason.join(" ")),
    }
}

/// The admin server's address in the configuration at `path` (with environment overrides),
/// reading only `[admin]`: `authrelay health` needs no secret file. `None` when it is disabled.
pub fn admin_listen(path: &Path) -> Result<Option<SocketAddr>, String> {
    let root = read_sources(path)?;
    let mut problems = Problems::default();
    let admin = match root.kind {
        config::ValueKind::Table(mut t) => read_admin(t.remove("admin"), &mut problems),
        _ => None,
    };
    match (admin, problems.0.first()) {
        (Some(a), None) => Ok(a.listen),
        (_, Some(p)) => Err(p.to_string()),
        (None, None) => Err("the file is not a table".into()),
    }
}

/// Loads a configuration from TOML text, without environment overrides (tests, tools).
pub fn from_toml_str(toml: &str) -> Result<Config, Vec<Problem>> {
    let value = config::Config::builder()
        .add_source(File::from_str(toml, FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| {
            vec![Problem {
                path: "(toml)".into(),
                message: without_source_excerpt(&e.to_string()),
            }]
        })?;
    from_value(value)
}

/// Validates an already merged configuration tree (relative paths stay as given).
pub fn from_value(root: Value) -> Result<Config, Vec<Problem>> {
    from_value_at(root, None)
}

/// Validates a configuration tree whose relative paths are relative to `base`.
fn from_value_at(root: Value, base: Option<PathBuf>) -> Result<Config, Vec<Problem>> {
    let mut problems = Problems(Vec::new(), base);
    let config = read_root(root, &mut problems);
    match config {
        Some(c) if problems.0.is_empty() => Ok(c),
        _ => Err(problems.0),
    }
}

pub(super) fn read_root(root: Value, problems: &mut Problems) -> Option<Config> {
    let mut t = Table::new("", root, problems)?;
    let listener_tables = t.take_value("listener");
    let account_tables = t.take_value("account");
    let log = t.take_value("log");
    let security = t.take_value("security");
    let service = t.take_value("service");
    let store = t.take_value("store");
    let spool = t.take_value("spool");
    let admin = t.take_value("admin");
    let client_tables = t.take_value("client");
    let alerts = t.take_value("alerts");
    t.finish();

    let mut listeners = Vec::new();
    match listener_tables {
        Some(v) => {
            if let Some(mut lt) = Table::new("listener", v, problems) {
                for (name, value) in lt.take_all() {
                    let path = format!("listener.{name}");
                    if let Some(l) = read_listener(&name, path, value, lt.problems()) {
                        listeners.push(l);
                    }
                }
            }
        }
        None => problems.push("listener", "missing (at least one [listener.NAME] table)"),
    }
    let mut accounts = Vec::new();
    if let Some(v) = account_tables {
        if let Some(mut at) = Table::new("account", v, problems) {
            for (name, value) in at.take_all() {
                let path = format!("account.{name}");
                if let Some(a) = read_account(&name, path, value, at.problems()) {
                    accounts.push(a);
                }
            }
        }
    }
    let clients = read_clients(client_tables, problems);
    check_unique_logins(&accounts, problems);
    check_unique_binds(&listeners, problems);
    super::devices::check_rewrites(&accounts, problems);

    let log = read_log(log, problems);
    let security = read_security(security, problems);
    let service = read_service(service, problems);
    let store = read_store(store, problems);
    let spool = read_spool(spool, problems);
    let admin = read_admin(admin, problems);
    let alerts = super::alerts::read_alerts(alerts, problems);
    if let Some(a) = &alerts {
        let spools = listeners.iter().any(|l| l.spool);
        super::alerts::check_alerts(a, &accounts, spools, problems);
    }
    Some(Config {
        listeners,
        accounts,
        log: log?,
        security: security?,
        service: service?,
        store: store?,
        spool: spool?,
        admin: admin?,
        clients,
        alerts: alerts?,
    })
}

/// `[client.NAME]`: app registrations for `mailbox~client_id` logins.
fn read_clients(value: Option<Value>, problems: &mut Problems) -> Vec<ClientConfig> {
    let mut clients = Vec::new();
    if let Some(v) = value {
        if let Some(mut ct) = Table::new("client", v, problems) {
            for (name, value) in ct.take_all() {
                let path = format!("client.{name}");
                if let Some(mut t) = Table::new(path, value, ct.problems()) {
                    let oauth = read_oauth(&mut t, Flow::Delegated);
                    if oauth.as_ref().is_some_and(|o| o.client_id.is_none()) {
                        t.problem(
                            "client_id",
                            "missing (logins name the app by its client id)",
                        );
                    }
                    t.finish();
                    if let Some(oauth) = oauth {
                        clients.push(ClientConfig { name, oauth });
                    }
                }
            }
        }
    }
    clients
}

pub(super) fn read_spool(value: Option<Value>, problems: &mut Problems) -> Option<SpoolConfig> {
    let mut s = SpoolConfig {
        path: problems.resolve(PathBuf::from("state/spool")),
        max_age: Duration::from_secs(120 * 3600),
        // Exchange Online's message size limit for SMTP AUTH submission: 35 MB.
        max_message_bytes: 35 * 1024 * 1024,
        // Exchange Online: 500 recipients per message.
        max_recipients: 500,
        min_free_bytes: 100 * 1024 * 1024,
        first_retry: Duration::from_secs(30),
    };
    let Some(v) = value else {
        return Some(s);
    };
    let mut t = Table::new("spool", v, problems)?;
    if let Some(p) = t.path("path") {
        s.path = p;
    }
    if let Some(h) = t.optional::<u64>("max_age_hours") {
        if h == 0 {
            t.problem("max_age_hours", "must be at least 1");
        }
        s.max_age = Duration::from_secs(h * 3600);
    }
    if let Some(n) = t.optional::<u64>("max_message_bytes") {
        s.max_message_bytes = n.max(1024);
    }
    if let Some(n) = t.optional::<usize>("max_recipients") {
        s.max_recipients = n.max(1);
    }
    if let Some(n) = t.optional::<u64>("min_free_mb") {
        s.min_free_bytes = n * 1024 * 1024;
    }
    if let Some(n) = t.optional::<u64>("first_retry_secs") {
        s.first_retry = Duration::from_secs(n.clamp(1, 3600));
    }
    t.finish();
    Some(s)
}

pub(super) fn read_store(value: Option<Value>, problems: &mut Problems) -> Option<StoreConfig> {
    let mut s = StoreConfig {
        path: problems.resolve(PathBuf::from("state/tokens.json")),
        key: None,
        auto_key: false,
        keepalive: Duration::from_secs(7 * 86400),
        check_interval: Duration::from_secs(60),
        backend: StoreBackend::File,
    };
    let mut seal = String::from("key");
    if let Some(v) = value {
        let mut t = Table::new("store", v, problems)?;
        s.backend = read_store_backend(&mut t);
        if let Some(p) = t.path("path") {
            s.path = p;
        }
        s.key = t.secret("key");
        if let Some(k) = &s.key {
            if let Err(e) = crate::store::Key::from_key_file(k) {
                t.problem("key", e);
            }
        }
        if let Some(v) = t.optional::<String>("seal") {
            seal = v;
        }
        match seal.as_str() {
            "key" => {}
            "password" if s.key.is_some() => t.problem(
                "seal",
                "\"password\" seals with each account's local password: leave out key_file, or leave out seal",
            ),
            "password" => {}
            other => t.problem(
                "seal",
                format!(
                    "unknown value {:?}: valid values are \"key\" (the default: a key file, made beside the store if key_file is not given) and \"password\" (each account's local password; the relay can use the tokens only after a device logged in)",
                    super::reader::clip(other)
                ),
            ),
        }
        if seal == "key" && s.key.is_none() && matches!(s.backend, StoreBackend::Redis(_)) {
            t.problem(
                "key_file",
                "missing: every replica sharing the store needs the same key (make one with: head -c 32 /dev/urandom | base64 > store.key; chmod 600 store.key), or set seal = \"password\"",
            );
        }
        if let Some(days) = t.optional::<u64>("keepalive_days") {
            if !(1..=60).contains(&days) {
                t.problem(
                    "keepalive_days",
                    "must be 1 to 60 (refresh tokens age out after 90 days unused)",
                );
            }
            s.keepalive = Duration::from_secs(days * 86400);
        }
        if let Some(secs) = t.optional::<u64>("check_interval_secs") {
            s.check_interval = Duration::from_secs(secs.max(1));
        }
        t.finish();
    }
    s.auto_key = seal == "key" && s.key.is_none();
    Some(s)
}

/// `backend`, and for Redis `url`, `username`, `password` (`password_file`), `prefix`, `ca`.
fn read_store_backend(t: &mut Table<'_>) -> StoreBackend {
    let backend: String = t.optional("backend").unwrap_or_else(|| "file".into());
    let url: Option<String> = t.optional("url");
    let username: Option<String> = t.optional("username");
    let password = t.secret("password");
    let prefix: String = t.optional("prefix").unwrap_or_else(|| "authrelay:".into());
    let ca = t.path("ca");
    match backend.as_str() {
        "file" => {
            for (key, given) in [
                ("url", url.is_some()),
                ("username", username.is_some()),
                ("password", password.is_some()),
                ("ca", ca.is_some()),
            ] {
                if given {
                    t.problem(key, "only for backend = \"redis\"");
                }
            }
            StoreBackend::File
        }
        "redis" => {
            let Some(url) = url else {
                t.problem(
                    "url",
                    "missing: redis://127.0.0.1:6379/0, or rediss://host:port/db for a server elsewhere",
                );
                return StoreBackend::File;
            };
            if let Err(e) = check_redis_url(&url) {
                t.problem("url", e);
            }
            StoreBackend::Redis(RedisConfig {
                url,
                username,
                password,
                prefix,
                ca,
            })
        }
        other => {
            t.problem(
                "backend",
                format!("unknown value {other:?}, expected file or redis"),
            );
            StoreBackend::File
        }
    }
}

/// `rediss://` anywhere (TLS, verified); `redis://` only to a loopback host, like
/// `upstream_tls = "none"`; no password in the URL (it would sit in the configuration and logs).
fn check_redis_url(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    if url.password().is_some() {
        return Err(
            "holds a password: give it as password_file (and the ACL user as username)".into(),
        );
    }
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "rediss" => Ok(()),
        "redis" if is_loopback_host(host.trim_start_matches('[').trim_end_matches(']')) => Ok(()),
        "redis" => Err(format!("redis:// to {host} would be unencrypted: use rediss:// (TLS) for a server that is not on loopback")),
        other => Err(format!("scheme {other}:// is not redis:// or rediss://")),
    }
}

pub(super) fn read_admin(value: Option<Value>, problems: &mut Problems) -> Option<AdminConfig> {
    let mut listen: Option<SocketAddr> = Some(SocketAddr::from(([127, 0, 0, 1], 9090)));
    let mut public_url = None;
    let mut redirect_path = "/register_microsoft_graph_api/".to_owned();
    if let Some(v) = value {
        let mut t = Table::new("admin", v, problems)?;
        let enabled: bool = t.optional("enabled").unwrap_or(true);
        let allow_remote: bool = t.optional("allow_remote").unwrap_or(false);
        if let Some(l) = t.optional::<String>("listen") {
            match l.parse::<SocketAddr>() {
                Ok(a) if !a.ip().is_loopback() && !allow_remote => t.problem(
                    "listen",
                    format!("{a} is not a loopback address; the admin pages hold the keys to every account: keep them on loopback, or set allow_remote = true behind your own access control"),
                ),
                Ok(a) => listen = Some(a),
                Err(_) => t.problem("listen", format!("{l:?} is not an IP address and port")),
            }
        }
        if !enabled {
            listen = None;
        }
        public_url = t.optional::<String>("public_url");
        if let Some(u) = &public_url {
            match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.path() == "/" => {}
                _ => t.problem(
                    "public_url",
                    format!(
                        "{u:?} must be an http(s) URL without a path, like http://localhost:9090"
                    ),
                ),
            }
        }
        if let Some(p) = t.optional::<String>("redirect_path") {
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                t.problem(
                    "redirect_path",
                    "must be a path starting with /, like /register_microsoft_graph_api/",
                );
            }
            redirect_path = p;
        }
        t.finish();
    }
    let port = listen.map_or(9090, |a| a.port());
    Some(AdminConfig {
        listen,
        public_url: public_url
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://localhost:{port}")),
        redirect_path,
    })
}

pub(super) fn read_log(value: Option<Value>, problems: &mut Problems) -> Option<LogConfig> {
    let mut log = LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    };
    if let Some(v) = value {
        let mut t = Table::new("log", v, problems)?;
        if let Some(level) = t.optional::<String>("level") {
            log.level = level;
        }
        if let Some(format) = t.choice("format") {
            log.format = format;
        }
        t.finish();
    }
    Some(log)
}

pub(super) fn read_service(value: Option<Value>, problems: &mut Problems) -> Option<ServiceConfig> {
    let mut s = ServiceConfig {
        drain: Duration::from_secs(30),
    };
    if let Some(v) = value {
        let mut t = Table::new("service", v, problems)?;
        if let Some(secs) = t.optional::<u64>("drain_secs") {
            s.drain = Duration::from_secs(secs);
        }
        t.finish();
    }
    Some(s)
}

pub(super) fn read_security(
    value: Option<Value>,
    problems: &mut Problems,
) -> Option<SecurityConfig> {
    let mut s = SecurityConfig {
        hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        failure_delay: Duration::from_millis(1000),
        password_cache: Duration::from_secs(3600),
        refresh_margin: Duration::from_secs(600),
        token_timeout: Duration::from_secs(15),
        max_failures_per_address: 30,
        max_failures_per_username: 10,
        throttle_window: Duration::from_secs(900),
    };
    if let Some(v) = value {
        let mut t = Table::new("security", v, problems)?;
        if let Some(n) = t.optional::<usize>("hash_concurrency") {
            if n == 0 {
                t.problem("hash_concurrency", "must be at least 1");
            }
            s.hash_concurrency = n.max(1);
        }
        if let Some(ms) = t.optional::<u64>("failure_delay_ms") {
            s.failure_delay = Duration::from_millis(ms);
        }
        if let Some(secs) = t.optional::<u64>("password_cache_secs") {
            s.password_cache = Duration::from_secs(secs);
        }
        if let Some(secs) = t.optional::<u64>("refresh_margin_secs") {
            s.refresh_margin = Duration::from_secs(secs);
        }
        if let Some(secs) = t.optional::<u64>("token_timeout_secs") {
            s.token_timeout = Duration::from_secs(secs.max(1));
        }
        if let Some(n) = t.optional::<u32>("max_failures_per_address") {
            s.max_failures_per_address = n;
        }
        if let Some(n) = t.optional::<u32>("max_failures_per_username") {
            s.max_failures_per_username = n;
        }
        if let Some(secs) = t.optional::<u64>("throttle_window_secs") {
            s.throttle_window = Duration::from_secs(secs.max(1));
        }
        t.finish();
    }
    Some(s)
}

pub(super) fn check_unique_logins(accounts: &[AccountConfig], problems: &mut Problems) {
    for (i, a) in accounts.iter().enumerate() {
        if let Some(b) = accounts[..i]
            .iter()
            .find(|b| b.login.eq_ignore_ascii_case(&a.login))
        {
            problems.push(
                format!("account.{}.login", a.id),
                format!("{:?} is already the login of account.{}", a.login, b.id),
            );
        }
    }
}
