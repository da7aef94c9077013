//! Brute-force throttling: failed logins counted per source address and per username in a
//! sliding window. Over either limit, logins are refused before any password is hashed (so a
//! flood costs no CPU), with a temporary-failure reply; the count decays on its own.
//!
//! **Every attempt is counted before it is checked.** [`Throttle::begin`] reserves one failure
//! in each counter, atomically with the limit check, and only a success gives it back. So however
//! many connections race, at most `limit` password checks run per window: counting after the
//! check (Argon2 and the failure delay take a second) let 150 parallel guesses all through.
//!
//! **Guessing from elsewhere cannot lock the real device out.** An address that logged in as a
//! user successfully (within [`KNOWN_GOOD_FOR`]) is *known good* for that user: its attempts
//! are counted against a counter of that user *and that address* instead of the user's shared
//! counter. A spray from other addresses fills the shared counter and is refused, while the
//! device keeps logging in; a device that starts guessing is still stopped by its own counter
//! and the per-address limit. Known-good pairs live in memory: after a restart an address is
//! known good again after its first successful login.
//!
//! Usernames are counted whether or not they exist, so the throttle tells an attacker nothing
//! about which logins are real.

use dashmap::mapref::one::RefMut;
use dashmap::DashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a successful login keeps its address known good for the user.
pub const KNOWN_GOOD_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

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

type Pair = (String, IpAddr);

/// The failure counters; see the module documentation.
pub struct Throttle {
    by_address: DashMap<IpAddr, Window>,
    by_username: DashMap<String, Window>,
    /// Counters of known-good (username, address) pairs.
    by_pair: DashMap<Pair, Window>,
    /// Last successful login of a (username, address) pair.
    known_good: DashMap<Pair, Instant>,
    per_address: u32,
    per_username: u32,
    window: Duration,
}

/// Entries kept before old ones are swept (bounds memory under a flood of addresses).
const SWEEP_ABOVE: usize = 10_000;

/// Where an attempt's reservation was counted, to give it back on success.
#[derive(Debug)]
#[must_use = "an attempt counts as failed unless `succeeded` or `release` is called"]
pub struct Attempt {
    address: Option<(IpAddr, Instant)>,
    user: Option<(UserKey, Instant)>,
}

#[derive(Debug)]
enum UserKey {
    Shared(String),
    Pair(Pair),
}

impl Throttle {
    /// `0` turns a limit off.
    pub fn new(per_address: u32, per_username: u32, window: Duration) -> Self {
        Throttle {
            by_address: DashMap::new(),
            by_username: DashMap::new(),
            by_pair: DashMap::new(),
            known_good: DashMap::new(),
            per_address,
            per_username,
            window,
        }
    }

    /// The entry for `key`, its window restarted if it has passed.
    fn fresh<'a, K: Hash + Eq + Clone>(
        &self,
        map: &'a DashMap<K, Window>,
        key: K,
    ) -> RefMut<'a, K, Window> {
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
        w
    }

    fn is_known_good(&self, pair: &Pair) -> bool {
        self.known_good
            .get(pair)
            .is_some_and(|at| at.elapsed() < KNOWN_GOOD_FOR)
    }

    /// Checked before the password: over a limit, `Err`; otherwise the attempt is counted as a
    /// failure until [`Attempt::succeeded`] or [`Attempt::release`] gives it back.
    pub fn begin(&self, address: IpAddr, username: &str) -> Result<Attempt, Throttled> {
        let user = username.to_ascii_lowercase();
        let pair = (user.clone(), address);
        let user_key = if self.is_known_good(&pair) {
            UserKey::Pair(pair)
        } else {
            UserKey::Shared(user)
        };
        // Locks are taken in one order (address, then user), so racing attempts cannot deadlock.
        let mut by_address = (self.per_address > 0).then(|| self.fresh(&self.by_address, address));
        if by_address
            .as_ref()
            .is_some_and(|w| w.failures >= self.per_address)
        {
            return Err(Throttled::Address);
        }
        let mut by_user = (self.per_username > 0).then(|| match &user_key {
            UserKey::Shared(u) => UserWindow::Shared(self.fresh(&self.by_username, u.clone())),
            UserKey::Pair(p) => UserWindow::Pair(self.fresh(&self.by_pair, p.clone())),
        });
        if by_user
            .as_ref()
            .is_some_and(|w| w.get().failures >= self.per_username)
        {
            return Err(Throttled::Username);
        }
        let attempt = Attempt {
            address: by_address.as_mut().map(|w| {
                w.failures = w.failures.saturating_add(1);
                (address, w.since)
            }),
            user: by_user.as_mut().map(|w| {
                let w = w.get_mut();
                w.failures = w.failures.saturating_add(1);
                (user_key, w.since)
            }),
        };
        drop((by_address, by_user));
        self.sweep();
        Ok(attempt)
    }

    /// Gives an attempt's reservation back: it was neither a failure nor a guess (the identity
    /// provider or the upstream was unreachable before anything was proved).
    pub fn release(&self, attempt: Attempt) {
        if let Some((address, since)) = attempt.address {
            give_back(&self.by_address, &address, since);
        }
        match attempt.user {
            Some((UserKey::Shared(u), since)) => give_back(&self.by_username, &u, since),
            Some((UserKey::Pair(p), since)) => give_back(&self.by_pair, &p, since),
            None => {}
        }
    }

    /// A successful login: the reservation is given back, and the address becomes known good
    /// for the user (its counter starts afresh). The user's shared counter is not cleared: one
    /// good password must not reset a spray from elsewhere.
    pub fn succeeded(&self, address: IpAddr, username: &str, attempt: Attempt) {
        self.release(attempt);
        let pair = (username.to_ascii_lowercase(), address);
        self.by_pair.remove(&pair);
        self.known_good.insert(pair, Instant::now());
    }

    fn sweep(&self) {
        let total = self.by_address.len() + self.by_username.len() + self.by_pair.len();
        if total + self.known_good.len() > SWEEP_ABOVE {
            let window = self.window;
            self.by_address.retain(|_, w| w.since.elapsed() < window);
            self.by_username.retain(|_, w| w.since.elapsed() < window);
            self.by_pair.retain(|_, w| w.since.elapsed() < window);
            self.known_good
                .retain(|_, at| at.elapsed() < KNOWN_GOOD_FOR);
        }
    }
}

/// The user's counter an attempt uses: the shared one or its known-good pair's.
enum UserWindow<'a> {
    Shared(RefMut<'a, String, Window>),
    Pair(RefMut<'a, Pair, Window>),
}

impl UserWindow<'_> {
    fn get(&self) -> &Window {
        match self {
            UserWindow::Shared(w) => w,
            UserWindow::Pair(w) => w,
        }
    }
    fn get_mut(&mut self) -> &mut Window {
        match self {
            UserWindow::Shared(w) => w,
            UserWindow::Pair(w) => w,
        }
    }
}

/// Takes one reserved failure back, unless the window it was counted in has since restarted.
fn give_back<K: Hash + Eq>(map: &DashMap<K, Window>, key: &K, since: Instant) {
    if let Some(mut w) = map.get_mut(key) {
        if w.since == since {
            w.failures = w.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(t: &Throttle, a: IpAddr, user: &str) -> Result<(), Throttled> {
        t.begin(a, user).map(drop)
    }

    #[test]
    fn limits_per_address_and_per_username() {
        let t = Throttle::new(5, 3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            fail(&t, a, "scanner@X").unwrap();
        }
        // The username is over its limit from any address, whatever its case.
        assert_eq!(fail(&t, b, "SCANNER@x"), Err(Throttled::Username));
        assert_eq!(fail(&t, b, "other@x"), Ok(()));
        fail(&t, a, "u1").unwrap();
        fail(&t, a, "u2").unwrap();
        // Five failures from a: every username is refused from it.
        assert_eq!(fail(&t, a, "fresh@x"), Err(Throttled::Address));
    }

    #[test]
    fn attempts_in_flight_count_before_they_finish() {
        let t = Throttle::new(0, 10, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // 150 racing attempts, none finished yet: only 10 may go on to a password check.
        let started: Vec<_> = (0..150).filter_map(|_| t.begin(a, "u").ok()).collect();
        assert_eq!(started.len(), 10);
        // One of them succeeds: its reservation comes back, the others stay counted.
        let mut started = started.into_iter();
        t.release(started.next().unwrap());
        assert!(t.begin(a, "u").is_ok());
        assert_eq!(fail(&t, a, "u"), Err(Throttled::Username));
    }

    #[test]
    fn a_known_good_address_is_not_locked_out_by_guesses_from_elsewhere() {
        let t = Throttle::new(30, 3, Duration::from_secs(60));
        let device: IpAddr = "192.0.2.10".parse().unwrap();
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let ok = t.begin(device, "scanner").unwrap();
        t.succeeded(device, "scanner", ok);
        for _ in 0..3 {
            fail(&t, attacker, "scanner").unwrap();
        }
        assert_eq!(fail(&t, attacker, "scanner"), Err(Throttled::Username));
        // Other addresses share the user's counter and are refused too.
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        assert_eq!(fail(&t, other, "scanner"), Err(Throttled::Username));
        // The device goes on, many times.
        for _ in 0..20 {
            let ok = t
                .begin(device, "SCANNER")
                .expect("the device is not locked out");
            t.succeeded(device, "scanner", ok);
        }
        // A known-good address that starts guessing has its own limit.
        for _ in 0..3 {
            fail(&t, device, "scanner").unwrap();
        }
        assert_eq!(fail(&t, device, "scanner"), Err(Throttled::Username));
    }

    #[test]
    fn counts_decay_after_the_window_and_zero_turns_a_limit_off() {
        let t = Throttle::new(1, 0, Duration::from_millis(50));
        let a: IpAddr = "::1".parse().unwrap();
        fail(&t, a, "u").unwrap();
        assert_eq!(fail(&t, a, "u"), Err(Throttled::Address));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(fail(&t, a, "u"), Ok(()));
        let off = Throttle::new(0, 0, Duration::from_secs(60));
        for _ in 0..100 {
            fail(&off, a, "u").unwrap();
        }
    }
}
