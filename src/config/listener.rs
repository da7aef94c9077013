//! Reading `[listener.NAME]` tables: addresses, TLS on both sides, limits, PROXY v2, allow lists.

use super::*;

pub(super) fn read_listener(
    name: &str,
    path: String,
    value: Value,
    problems: &mut Problems,
) -> Option<ListenerConfig> {
    let mut t = Table::new(path, value, problems)?;
    let protocol: Option<Protocol> = t.required_choice("protocol");
    let listen: Option<String> = t.required("listen", "an address such as 127.0.0.1:2525");
    let tls: LocalTls = t.choice("tls").unwrap_or(LocalTls::None);
    let cert = t.path("cert");
    let key = t.path("key");
    let upstream = upstream::read_spec(&mut t, &upstream::LISTENER_KEYS, false);
    let upstream_probe: bool = t.optional("upstream_probe").unwrap_or(true);
    let spool: Option<bool> = t.optional("spool");
    let allow_remote: bool = t.optional("allow_remote").unwrap_or(false);
    let remote_plaintext_auth: bool = t.optional("remote_plaintext_auth").unwrap_or(false);
    let ehlo_name: String = t
        .optional("ehlo_name")
        .unwrap_or_else(|| "localhost".into());
    let (max_connections, max_connections_per_address) = read_connection_limits(&mut t);
    let connect_timeout = Duration::from_secs(t.optional("connect_timeout_secs").unwrap_or(20));
    let upstream_timeout = Duration::from_secs(t.optional("upstream_timeout_secs").unwrap_or(60));
    let pre_auth_timeout = Duration::from_secs(t.optional("pre_auth_timeout_secs").unwrap_or(120));
    let idle_default = match protocol {
        Some(Protocol::Imap) => 35 * 60,
        _ => 15 * 60,
    };
    let idle_timeout = Duration::from_secs(t.optional("idle_timeout_secs").unwrap_or(idle_default));
    let tilde_login: bool = t.optional("tilde_login").unwrap_or(false);
    // SMTP spools unless told otherwise; a listener for refresh-token logins cannot (the token
    // would be needed again at delivery), so it pipes live by default.
    let spool = spool.unwrap_or(protocol == Some(Protocol::Smtp) && !tilde_login);
    let proxy_protocol: bool = t.optional("proxy_protocol").unwrap_or(false);
    let proxy_trusted = read_cidrs(&mut t, "proxy_trusted");
    if spool {
        check_spool(&mut t, protocol, tilde_login);
    }
    let allow = read_cidrs(&mut t, "allow");
    let (trusted_networks, tls_min_version) =
        super::devices::read_listener_devices(&mut t, spool, tls);
    if proxy_protocol && proxy_trusted.is_empty() {
        t.problem(
            "proxy_trusted",
            "missing: with proxy_protocol = true, list the load balancers' addresses (CIDR ranges) whose PROXY headers to believe",
        );
    }

    let listen = check_listen(&mut t, listen, tls, allow_remote, remote_plaintext_auth);
    if tls != LocalTls::None {
        check_local_tls(&mut t, cert.as_deref(), key.as_deref(), tls_min_version);
    }
    t.finish();
    let upstream = upstream?;
    Some(ListenerConfig {
        name: name.to_owned(),
        protocol: protocol?,
        listen: listen?,
        tls,
        cert,
        key,
        upstream,
        upstream_probe,
        spool,
        ehlo_name,
        max_connections,
        max_connections_per_address,
        remote_plaintext_auth,
        connect_timeout,
        upstream_timeout,
        pre_auth_timeout,
        idle_timeout,
        tilde_login,
        proxy_protocol,
        proxy_trusted,
        allow,
        trusted_networks,
        tls_min_version,
    })
}

/// The listen address: an IP address and port, loopback unless `allow_remote`, and then with
/// TLS unless the network is declared trusted.
fn check_listen(
    t: &mut Table<'_>,
    listen: Option<String>,
    tls: LocalTls,
    allow_remote: bool,
    remote_plaintext_auth: bool,
) -> Option<SocketAddr> {
    let text = listen?;
    let Ok(addr) = text.parse::<SocketAddr>() else {
        t.problem("listen", format!("{text:?} is not an IP address and port"));
        return None;
    };
    if !addr.ip().is_loopback() && !allow_remote {
        t.problem(
            "listen",
            format!(
                "{addr} is not a loopback address; set allow_remote = true to serve other hosts"
            ),
        );
    }
    if !addr.ip().is_loopback() && allow_remote && tls == LocalTls::None && !remote_plaintext_auth {
        t.problem(
            "tls",
            "a listener that serves other hosts needs tls = \"starttls\" or \"implicit\", or remote_plaintext_auth = true for a trusted network (passwords then cross it in clear)",
        );
    }
    Some(addr)
}

/// `max_connections` and `max_connections_per_address`. One address may hold a quarter of the
/// slots by default, so no single client (or scanner) can take them all. Behind a balancer
/// without PROXY v2 every client has its address.
fn read_connection_limits(t: &mut Table<'_>) -> (usize, usize) {
    let max: usize = t.optional("max_connections").unwrap_or(1000);
    let per_address: usize = t
        .optional("max_connections_per_address")
        .unwrap_or((max / 4).max(1));
    if max == 0 {
        t.problem("max_connections", "must be at least 1");
    }
    if per_address == 0 {
        t.problem("max_connections_per_address", "must be at least 1");
    }
    (max, per_address)
}

/// Only SMTP spools, and a spool listener cannot take refresh-token logins.
fn check_spool(t: &mut Table<'_>, protocol: Option<Protocol>, tilde_login: bool) {
    if protocol.is_some_and(|p| p != Protocol::Smtp) {
        t.problem(
            "spool",
            "only SMTP listeners spool (IMAP and POP3 are always live)",
        );
    }
    if tilde_login {
        t.problem(
            "tilde_login",
            "a spool listener cannot take refresh-token logins (the token would be needed again at delivery)",
        );
    }
}

/// Local TLS needs a certificate chain and its key, which must load.
fn check_local_tls(t: &mut Table<'_>, cert: Option<&Path>, key: Option<&Path>, min: TlsVersion) {
    if cert.is_none() {
        t.problem(
            "cert",
            "missing (a PEM certificate chain is needed for local TLS)",
        );
    }
    if key.is_none() {
        t.problem("key", "missing (a PEM private key is needed for local TLS)");
    }
    if let (Some(c), Some(k)) = (cert, key) {
        if let Err(e) = crate::net::tls::Acceptor::new(c, k, min) {
            t.problem("cert", e.to_string());
        }
    }
}

pub(super) fn read_cidrs(t: &mut Table<'_>, key: &str) -> Vec<crate::net::cidr::Cidr> {
    let list: Vec<String> = t.optional(key).unwrap_or_default();
    let mut out = Vec::new();
    for item in list {
        match item.parse() {
            Ok(c) => out.push(c),
            Err(e) => t.problem(key, e),
        }
    }
    out
}

pub(super) fn check_unique_binds(listeners: &[ListenerConfig], problems: &mut Problems) {
    for (i, a) in listeners.iter().enumerate() {
        if let Some(b) = listeners[..i].iter().find(|b| b.listen == a.listen) {
            problems.push(
                format!("listener.{}.listen", a.name),
                format!("{} is already used by listener.{}", a.listen, b.name),
            );
        }
    }
}

/// Splits `host:port` (with `[v6]:port` for IPv6).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// True for `localhost` and loopback addresses.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
