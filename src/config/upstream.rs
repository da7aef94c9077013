//! Reading upstream servers: the listener's (`upstream`, `upstream_tls`, `upstream_name`,
//! `upstream_ca`, `upstream_pin`) and an account's own per protocol (`[account.NAME.upstream]`,
//! each entry `"host:port"` or a table with `address`, `tls`, `name`, `ca`, `pin`).

use super::*;
use config::ValueKind;

/// The key names one upstream is read from.
pub(super) struct Keys {
    pub address: &'static str,
    pub tls: &'static str,
    pub name: &'static str,
    pub ca: &'static str,
    pub pin: &'static str,
}

/// The listener's names.
pub(super) const LISTENER_KEYS: Keys = Keys {
    address: "upstream",
    tls: "upstream_tls",
    name: "upstream_name",
    ca: "upstream_ca",
    pin: "upstream_pin",
};

/// The names inside an account's `upstream.PROTOCOL` table.
const ACCOUNT_KEYS: Keys = Keys {
    address: "address",
    tls: "tls",
    name: "name",
    ca: "ca",
    pin: "pin",
};

/// Reads one upstream from `t`. Without a `tls` key the mode follows the well-known ports when
/// `tls_from_port` (465, 993, 995: implicit; 25, 587, 143, 110: STARTTLS), else it is required.
pub(super) fn read_spec(
    t: &mut Table<'_>,
    keys: &Keys,
    tls_from_port: bool,
) -> Option<UpstreamSpec> {
    let address: Option<String> = t.required(keys.address, "host:port of the mail server");
    let tls_given = t.has(keys.tls);
    let tls: Option<UpstreamTls> = t.choice(keys.tls);
    let name: Option<String> = t.optional(keys.name);
    let ca = t.path(keys.ca);
    let pin_texts: Vec<String> = match t.optional::<OneOrMany>(keys.pin) {
        None => Vec::new(),
        Some(OneOrMany::One(p)) => vec![p],
        Some(OneOrMany::Many(v)) => v,
    };
    let mut pin = Vec::new();
    for text in &pin_texts {
        match crate::net::tls::Pin::parse(text) {
            Ok(p) => pin.push(p),
            Err(e) => t.problem(keys.pin, format!("{text:?}: {e}")),
        }
    }
    let (host, port) = match address.as_deref().map(|s| (s, split_host_port(s))) {
        Some((_, Some(hp))) => hp,
        Some((s, None)) => {
            t.problem(keys.address, format!("{s:?} is not host:port"));
            return None;
        }
        None => return None,
    };
    let tls = match tls.or_else(|| tls_from_port.then(|| tls_for_port(port)).flatten()) {
        Some(tls) => tls,
        None if tls_given => return None,
        None => {
            t.problem(
                keys.tls,
                "missing (starttls, implicit, or none for a loopback test server)",
            );
            return None;
        }
    };
    if tls == UpstreamTls::None && !is_loopback_host(&host) {
        t.problem(
            keys.tls,
            "\"none\" is allowed only for a loopback upstream; use starttls or implicit",
        );
    }
    if let Some(path) = &ca {
        if let Err(e) = crate::net::tls::load_certs(path) {
            t.problem(keys.ca, e.to_string());
        }
        if !pin.is_empty() {
            t.problem(
                keys.pin,
                format!(
                    "give {} or {}, not both: a pin is the whole trust",
                    keys.pin, keys.ca
                ),
            );
        }
    }
    if let Some(n) = &name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            t.problem(keys.name, format!("{n:?} is not a valid TLS server name"));
        }
    }
    Some(UpstreamSpec {
        name: name.unwrap_or_else(|| host.clone()),
        host,
        port,
        tls,
        ca,
        pin,
    })
}

/// The TLS mode the registered port of a mail service implies (RFC 8314 §7.3, RFC 6409 §3.1).
fn tls_for_port(port: u16) -> Option<UpstreamTls> {
    match port {
        465 | 993 | 995 => Some(UpstreamTls::Implicit),
        25 | 587 | 143 | 110 => Some(UpstreamTls::Starttls),
        _ => None,
    }
}

/// Reads `[account.NAME.upstream]`: per protocol, `"host:port"` or a table.
pub(super) fn read_account_upstreams(t: &mut Table<'_>) -> AccountUpstreams {
    let mut out = AccountUpstreams::default();
    let Some(value) = t.take_value("upstream") else {
        return out;
    };
    let path = t.key_path("upstream");
    let Some(mut table) = Table::new(path, value, t.problems()) else {
        return out;
    };
    for (protocol, value) in table.take_all() {
        let entry_path = format!("{}.{protocol}", table.key_path("").trim_end_matches('.'));
        let spec = match value.kind {
            ValueKind::String(s) => {
                let mut map = config::Map::new();
                map.insert("address".to_owned(), Value::new(None, ValueKind::String(s)));
                let v = Value::new(None, ValueKind::Table(map));
                Table::new(entry_path.clone(), v, table.problems()).and_then(|mut e| {
                    let spec = read_spec(&mut e, &ACCOUNT_KEYS, true);
                    e.finish();
                    spec
                })
            }
            _ => Table::new(entry_path.clone(), value, table.problems()).and_then(|mut e| {
                let spec = read_spec(&mut e, &ACCOUNT_KEYS, true);
                e.finish();
                spec
            }),
        };
        let slot = match protocol.as_str() {
            "smtp" => &mut out.smtp,
            "imap" => &mut out.imap,
            "pop3" => &mut out.pop3,
            _ => {
                table
                    .problems()
                    .push(entry_path, "unknown protocol (smtp, imap or pop3)");
                continue;
            }
        };
        *slot = spec;
    }
    out
}

/// A key that takes one string or a list of them.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}
