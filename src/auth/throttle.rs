//! Brute-force throttling: failed local logins counted per source address and per username in
//! a sliding window. Over either limit, logins are refused before any password is hashed (so a
//! flood costs no CPU), with a temporary-failure reply; the count decays on its own.
//!
//! Usernames are counted whether or not they exist, so the throttle tells an attacker nothing
//! about which logins are real.

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Why a login is not even tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    Address,
    Username,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    since: Instant,
}

pub struct Throttle {
    by_address: DashMap<IpAddr, Window>,
    by_username: DashMap<String, Window>,
    per_address: u32,
    per_username: u32,
    window: Duration,
}

/// Entries kept before old ones are swept (bounds memory under a flood of addresses).
const SWEEP_ABOVE: usize = 10_000;

impl Throttle {
    /// `0` turns a limit off.
    pub fn new(per_address: u32, per_username: u32, window: Duration) -> Self {
        Throttle {
            by_address: DashMap::new(),
            by_username: DashMap::new(),
            per_address,
            per_username,
            window,
        }
    }

    fn over<K: std::hash::Hash + Eq>(&self, map: &DashMap<K, Window>, key: &K, limit: u32) -> bool {
        limit > 0
            && map
                .get(key)
                .is_some_and(|w| w.since.elapsed() < self.window && w.failures >= limit)
    }

    /// Checked before the password: `Some` when this address or username is over its limit.
    pub fn check(&self, address: IpAddr, username: &str) -> Option<Throttled> {
        if self.over(&self.by_address, &address, self.per_address) {
            return Some(Throttled::Address);
        }
        let user = username.to_ascii_lowercase();
        if self.over(&self.by_username, &user, self.per_username) {
            return Some(Throttled::Username);
        }
        None
    }

    fn count<K: std::hash::Hash + Eq + Clone>(&self, map: &DashMap<K, Window>, key: K) {
        let now = Instant::now();
        let mut w = map.entry(key).or_insert(Window {
            failures: 0,
            since: now,
        });
        if w.since.elapsed() >= self.window {
            *w = Window {
                failures: 0,
                since: now,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }

    /// A failed local login.
    pub fn failed(&self, address: IpAddr, username: &str) {
        self.count(&self.by_address, address);
        self.count(&self.by_username, username.to_ascii_lowercase());
        if self.by_address.len() + self.by_username.len() > SWEEP_ABOVE {
            let window = self.window;
            self.by_address.retain(|_, w| w.since.elapsed() < window);
            self.by_username.retain(|_, w| w.since.elapsed() < window);
        }
    }

    /// A successful login clears the username's count (not the address's: one good password
    /// must not reset a spray from the same address).
    pub fn succeeded(&self, username: &str) {
        self.by_username.remove(&username.to_ascii_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_per_username() {
        let t = Throttle::new(5, 3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.check(a, "Scanner@x"), None);
            t.failed(a, "scanner@X");
        }
        // The username is over its limit from any address, whatever its case.
        assert_eq!(t.check(b, "SCANNER@x"), Some(Throttled::Username));
        assert_eq!(t.check(b, "other@x"), None);
        t.failed(a, "u1");
        t.failed(a, "u2");
        // Five failures from a: every username is refused from it.
        assert_eq!(t.check(a, "fresh@x"), Some(Throttled::Address));
        t.succeeded("scanner@x");
        assert_eq!(t.check(b, "scanner@x"), None);
    }

    #[test]
    fn counts_decay_after_the_window_and_zero_turns_a_limit_off() {
        let t = Throttle::new(1, 0, Duration::from_millis(50));
        let a: IpAddr = "::1".parse().unwrap();
        t.failed(a, "u");
        assert_eq!(t.check(a, "u"), Some(Throttled::Address));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.check(a, "u"), None);
        let off = Throttle::new(0, 0, Duration::from_secs(60));
        for _ in 0..100 {
            off.failed(a, "u");
        }
        assert_eq!(off.check(a, "u"), None);
    }
}
