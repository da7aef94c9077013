//! The settings for devices that cannot log in or speak only old TLS: a listener's
//! `trusted_networks` and `tls_min_version`, an account's `networks`, `rewrite_sender` and
//! `max_recipients_per_hour` (README: Devices that cannot log in). Never an open relay: only
//! a spooling listener takes mail without a login, `0.0.0.0/0` is refused, and a range wider
//! than a site's or reaching the Internet needs `allow_wide_networks = true`.

use super::listener::read_cidrs;
use super::*;
use crate::net::cidr::Cidr;

/// `trusted_networks`, `allow_wide_networks` and `tls_min_version` of `[listener.NAME]`.
pub(super) fn read_listener_devices(
    t: &mut Table<'_>,
    spool: bool,
    tls: LocalTls,
) -> (Vec<Cidr>, TlsVersion) {
    let trusted = read_cidrs(t, "trusted_networks");
    let allow_wide: bool = t.optional("allow_wide_networks").unwrap_or(false);
    check_ranges(t, "trusted_networks", &trusted, allow_wide);
    if !trusted.is_empty() && !spool {
        t.problem(
            "trusted_networks",
            "only a spooling SMTP listener (spool = true) may take mail without a login: the relay must hold the message to choose the account and rewrite it",
        );
    }
    let min: TlsVersion = t.choice("tls_min_version").unwrap_or(TlsVersion::V1_2);
    if min.is_legacy() && tls == LocalTls::None {
        t.problem(
            "tls_min_version",
            "applies to a listener with tls = \"starttls\" or \"implicit\"",
        );
    }
    (trusted, min)
}

/// `networks`, `rewrite_sender` and `max_recipients_per_hour` of `[account.NAME]`.
pub(super) fn read_account_devices(t: &mut Table<'_>) -> (Vec<Cidr>, bool, Option<u32>) {
    let networks = read_cidrs(t, "networks");
    // An account's ranges only narrow a listener's trusted networks, which were checked.
    check_ranges(t, "networks", &networks, true);
    let rewrite: bool = t.optional("rewrite_sender").unwrap_or(false);
    let cap: Option<u32> = t.optional("max_recipients_per_hour");
    if networks.is_empty() {
        for (key, given) in [
            ("rewrite_sender", rewrite),
            ("max_recipients_per_hour", cap.is_some()),
        ] {
            if given {
                t.problem(
                    key,
                    "applies to mail sent without a login; give the account networks = [...]",
                );
            }
        }
    }
    if cap == Some(0) {
        t.problem(
            "max_recipients_per_hour",
            "must be at least 1 (leave it out for no cap)",
        );
    }
    (networks, rewrite, cap)
}

fn check_ranges(t: &mut Table<'_>, key: &str, ranges: &[Cidr], allow_wide: bool) {
    for r in ranges {
        if r.is_everything() {
            t.problem(
                key,
                format!("{r} is every address: that is an open relay, and it is refused"),
            );
        } else if !allow_wide && (r.is_wide() || r.is_public()) {
            let why = if r.is_wide() {
                "is wider than a /16 (IPv4) or /48 (IPv6)"
            } else {
                "reaches addresses on the Internet"
            };
            t.problem(
                key,
                format!("{r} {why}; list the devices' own network, or set allow_wide_networks = true if you mean it"),
            );
        }
    }
}

/// Across accounts: two accounts that could both rewrite the sender of one client are
/// ambiguous (which mailbox would the message go out as?).
pub(super) fn check_rewrites(accounts: &[AccountConfig], problems: &mut Problems) {
    let rewriting: Vec<&AccountConfig> = accounts.iter().filter(|a| a.rewrite_sender).collect();
    for (i, a) in rewriting.iter().enumerate() {
        for b in &rewriting[..i] {
            let shared = a
                .networks
                .iter()
                .find(|n| b.networks.iter().any(|m| m.overlaps(n)));
            if let Some(n) = shared {
                problems.push(
                    format!("account.{}.rewrite_sender", a.id),
                    format!(
                        "account.{} also rewrites senders from {n}: a device there would have two mailboxes; give the accounts networks that do not overlap",
                        b.id
                    ),
                );
            }
        }
    }
}

/// What `authrelay check` warns about: legal settings an administrator should know they chose.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in &config.listeners {
        if l.tls_min_version.is_legacy() {
            out.push(format!(
                "listener.{}.tls_min_version: accepts TLS {} from devices (OpenSSL; deprecated by RFC 8996); keep this listener for the devices that need it",
                l.name,
                if l.tls_min_version == TlsVersion::V1_0 { "1.0 and 1.1" } else { "1.1" }
            ));
        }
        if !l.trusted_networks.is_empty() {
            let ranges: Vec<String> = l.trusted_networks.iter().map(Cidr::to_string).collect();
            out.push(format!(
                "listener.{}.trusted_networks: clients in {} may send without a login, as the accounts whose networks contain them",
                l.name,
                ranges.join(", ")
            ));
        }
    }
    let trusted: Vec<&Cidr> = config
        .listeners
        .iter()
        .flat_map(|l| &l.trusted_networks)
        .collect();
    for a in &config.accounts {
        if let Some(n) = a
            .networks
            .iter()
            .find(|n| !trusted.iter().any(|t| t.overlaps(n)))
        {
            out.push(format!(
                "account.{}.networks: {n} is in no listener's trusted_networks, so no device there can send without a login",
                a.id
            ));
        }
    }
    out
}
