//! Counters for `/metrics`, in the Prometheus text format (version 0.0.4).
//!
//! Plain atomics and a few small maps; nothing here holds a secret or an address. Labels are
//! fixed words (protocol, outcome), reply codes, OAuth/AADSTS error codes and account names.

use crate::config::Protocol;
use dashmap::DashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const PROTOCOLS: [Protocol; 3] = [Protocol::Smtp, Protocol::Imap, Protocol::Pop3];
const OUTCOMES: [Outcome; 4] = [
    Outcome::Relayed,
    Outcome::ClientLeft,
    Outcome::Refused,
    Outcome::UpstreamFailed,
];
/// Login latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Smtp => 0,
        Protocol::Imap => 1,
        Protocol::Pop3 => 2,
    }
}

/// The protocol's label value.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Smtp => "smtp",
        Protocol::Imap => "imap",
        Protocol::Pop3 => "pop3",
    }
}

/// The outcome's label value.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Relayed => "relayed",
        Outcome::ClientLeft => "client_left",
        Outcome::Refused => "refused",
        Outcome::UpstreamFailed => "upstream_failed",
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

#[derive(Default)]
/// The counters behind `/metrics` (Prometheus text format).
pub struct Metrics {
    active: [AtomicU64; 3],
    sessions: [[AtomicU64; 4]; 3],
    /// (protocol, upstream reply code) → logins.
    upstream_auth: DashMap<(usize, String), AtomicU64>,
    /// [protocol][0 = client to upstream, 1 = upstream to client]
    bytes: [[AtomicU64; 2]; 3],
    /// `ok` or the error code → refreshes.
    refreshes: DashMap<String, AtomicU64>,
    /// (outcome, reply code) → spool delivery attempts.
    deliveries: DashMap<(String, String), AtomicU64>,
    local_failures: AtomicU64,
    login_latency: Histogram,
    /// Account → messages accepted without a login (trusted networks).
    no_login: DashMap<String, AtomicU64>,
}

impl Metrics {
    /// A session of `p` began.
    pub fn session_started(&self, p: Protocol) {
        self.active[protocol_index(p)].fetch_add(1, Ordering::Relaxed);
    }

    /// A session of `p` ended with `o`.
    pub fn session_ended(&self, p: Protocol, o: Outcome) {
        let i = protocol_index(p);
        self.active[i].fetch_sub(1, Ordering::Relaxed);
        let j = OUTCOMES.iter().position(|x| *x == o).unwrap_or(0);
        self.sessions[i][j].fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream login answered with `code` (`235`, `535`, `OK`, `NO`, `+OK`, `-ERR`, …).
    /// A delivery attempt from the spool ended with `outcome` (`delivered`, `deferred`,
    /// `failed`) and the upstream's reply `code` (or `error` without one).
    pub fn delivery(&self, outcome: &str, code: &str) {
        self.deliveries
            .entry((outcome.to_owned(), code.to_owned()))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream login through protocol `p` got reply `code`.
    pub fn upstream_auth(&self, p: Protocol, code: &str) {
        self.upstream_auth
            .entry((protocol_index(p), code.to_owned()))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A message from a trusted network was accepted without a login, as `account`.
    pub fn no_login(&self, account: &str) {
        self.no_login
            .entry(account.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A login was refused locally.
    pub fn local_failure(&self) {
        self.local_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes relayed after a login, each way.
    pub fn relayed(&self, p: Protocol, up: u64, down: u64) {
        let b = &self.bytes[protocol_index(p)];
        b[0].fetch_add(up, Ordering::Relaxed);
        b[1].fetch_add(down, Ordering::Relaxed);
    }

    /// A token request ended: `ok`, or its error code (`AADSTS700082`, `timeout`, …).
    pub fn refresh(&self, outcome: &str) {
        self.refreshes
            .entry(outcome.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A successful login took `d`.
    pub fn login_latency(&self, d: Duration) {
        let h = &self.login_latency;
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The exposition text. `expiry` gives each OAuth account's token seconds-to-expiry.
    pub fn render(&self, expiry: &[(String, Option<f64>)]) -> String {
        let mut s = String::with_capacity(4096);
        self.render_sessions(&mut s);
        self.render_logins(&mut s);
        self.render_tokens(&mut s, expiry);
        self.render_latency(&mut s);
        s
    }

    /// Sessions open and ended, by protocol.
    fn render_sessions(&self, s: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP authrelay_sessions_active Sessions open now.\n# TYPE authrelay_sessions_active gauge\n");
        for p in PROTOCOLS {
            let _ = writeln!(
                s,
                "authrelay_sessions_active{{protocol=\"{}\"}} {}",
                protocol_name(p),
                load(&self.active[protocol_index(p)])
            );
        }
        s.push_str("# HELP authrelay_sessions_total Sessions ended, by how they ended.\n# TYPE authrelay_sessions_total counter\n");
        for p in PROTOCOLS {
            for (j, o) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "authrelay_sessions_total{{protocol=\"{}\",outcome=\"{}\"}} {}",
                    protocol_name(p),
                    outcome_name(*o),
                    load(&self.sessions[protocol_index(p)][j])
                );
            }
        }
    }

    /// Upstream logins by reply code, local failures, bytes relayed.
    fn render_logins(&self, s: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP authrelay_upstream_auth_total Upstream logins, by the server's reply code.\n# TYPE authrelay_upstream_auth_total counter\n");
        let mut auth: Vec<_> = self
            .upstream_auth
            .iter()
            .map(|e| (e.key().clone(), load(e.value())))
            .collect();
        auth.sort();
        for ((p, code), n) in auth {
            let _ = writeln!(
                s,
                "authrelay_upstream_auth_total{{protocol=\"{}\",code=\"{}\"}} {n}",
                protocol_name(PROTOCOLS[p]),
                label(&code)
            );
        }
        s.push_str("# HELP authrelay_local_auth_failures_total Logins refused locally (unknown user or wrong password).\n# TYPE authrelay_local_auth_failures_total counter\n");
        let _ = writeln!(
            s,
            "authrelay_local_auth_failures_total {}",
            load(&self.local_failures)
        );
        s.push_str("# HELP authrelay_relayed_bytes_total Bytes relayed after login.\n# TYPE authrelay_relayed_bytes_total counter\n");
        for p in PROTOCOLS {
            let b = &self.bytes[protocol_index(p)];
            let _ = writeln!(s, "authrelay_relayed_bytes_total{{protocol=\"{}\",direction=\"client_to_upstream\"}} {}", protocol_name(p), load(&b[0]));
            let _ = writeln!(s, "authrelay_relayed_bytes_total{{protocol=\"{}\",direction=\"upstream_to_client\"}} {}", protocol_name(p), load(&b[1]));
        }
    }

    /// Token requests by outcome, and each account's token expiry; spool deliveries.
    fn render_tokens(&self, s: &mut String, expiry: &[(String, Option<f64>)]) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP authrelay_spool_deliveries_total Delivery attempts from the spool, by outcome and reply code.\n# TYPE authrelay_spool_deliveries_total counter\n");
        let mut deliveries: Vec<_> = self
            .deliveries
            .iter()
            .map(|e| (e.key().clone(), load(e.value())))
            .collect();
        deliveries.sort();
        for ((outcome, code), n) in deliveries {
            let _ = writeln!(
                s,
                "authrelay_spool_deliveries_total{{outcome=\"{}\",code=\"{}\"}} {n}",
                label(&outcome),
                label(&code)
            );
        }
        s.push_str("# HELP authrelay_no_login_messages_total Messages accepted without a login from trusted networks, by account.\n# TYPE authrelay_no_login_messages_total counter\n");
        let mut no_login: Vec<_> = self
            .no_login
            .iter()
            .map(|e| (e.key().clone(), load(e.value())))
            .collect();
        no_login.sort();
        for (account, n) in no_login {
            let _ = writeln!(
                s,
                "authrelay_no_login_messages_total{{account=\"{}\"}} {n}",
                label(&account)
            );
        }
        s.push_str("# HELP authrelay_token_refresh_total Token requests, by outcome (ok or the error code).\n# TYPE authrelay_token_refresh_total counter\n");
        let mut refreshes: Vec<_> = self
            .refreshes
            .iter()
            .map(|e| (e.key().clone(), load(e.value())))
            .collect();
        refreshes.sort();
        for (code, n) in refreshes {
            let _ = writeln!(
                s,
                "authrelay_token_refresh_total{{outcome=\"{}\"}} {n}",
                label(&code)
            );
        }
        s.push_str("# HELP authrelay_token_expiry_seconds Seconds until the account's access token expires (negative: none or expired).\n# TYPE authrelay_token_expiry_seconds gauge\n");
        for (account, secs) in expiry {
            let _ = writeln!(
                s,
                "authrelay_token_expiry_seconds{{account=\"{}\"}} {}",
                label(account),
                secs.unwrap_or(-1.0)
            );
        }
    }

    /// The login latency histogram.
    fn render_latency(&self, s: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.push_str("# HELP authrelay_login_duration_seconds From the client's credentials to upstream's answer, for successful logins.\n# TYPE authrelay_login_duration_seconds histogram\n");
        let h = &self.login_latency;
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "authrelay_login_duration_seconds_bucket{{le=\"{le}\"}} {}",
                load(&h.buckets[i])
            );
        }
        let _ = writeln!(
            s,
            "authrelay_login_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            load(&h.count)
        );
        let _ = writeln!(
            s,
            "authrelay_login_duration_seconds_sum {}",
            load(&h.sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "authrelay_login_duration_seconds_count {}",
            load(&h.count)
        );
    }
}

/// A label value: printable ASCII without quotes or backslashes, at most 64 characters.
pub fn label(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.session_started(Protocol::Smtp);
        m.session_ended(Protocol::Smtp, Outcome::Relayed);
        m.upstream_auth(Protocol::Imap, "OK");
        m.relayed(Protocol::Pop3, 10, 2000);
        m.refresh("ok");
        m.refresh("AADSTS700082");
        m.no_login("scanner");
        m.no_login("scanner");
        m.login_latency(Duration::from_millis(30));
        let text = m.render(&[("scanner".into(), Some(3599.0)), ("x\"y".into(), None)]);
        for line in [
            "authrelay_sessions_active{protocol=\"smtp\"} 0",
            "authrelay_sessions_total{protocol=\"smtp\",outcome=\"relayed\"} 1",
            "authrelay_upstream_auth_total{protocol=\"imap\",code=\"OK\"} 1",
            "authrelay_relayed_bytes_total{protocol=\"pop3\",direction=\"upstream_to_client\"} 2000",
            "authrelay_token_refresh_total{outcome=\"AADSTS700082\"} 1",
            "authrelay_token_expiry_seconds{account=\"scanner\"} 3599",
            "authrelay_token_expiry_seconds{account=\"xy\"} -1",
            "authrelay_login_duration_seconds_bucket{le=\"0.025\"} 0",
            "authrelay_login_duration_seconds_bucket{le=\"0.05\"} 1",
            "authrelay_login_duration_seconds_count 1",
            "authrelay_no_login_messages_total{account=\"scanner\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}

/// How a session ended, for the session's log line and the `authrelay_sessions_total` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in and relayed until one side closed.
    Relayed,
    /// The client left (QUIT or closed) without logging in.
    ClientLeft,
    /// Closed by the relay before login: timeout, abuse, protocol violation.
    Refused,
    /// The upstream server could not be reached or failed.
    UpstreamFailed,
}
