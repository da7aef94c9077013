//! Brute-force throttling: failed logins counted per source address and per username in a
//! sliding window. Over either limit, logins are refused before any password is hashed (so a
//! flood costs no CPU), with a temporary-failure reply; the count decays on its own.
//!
//! **Attempts in flight count against the limit.** An attempt is registered before its check
//! ([`Throttle::begin`]) and settled after it (success, failure, or released when nothing was
//! proved either way). While failures plus attempts in flight reach a limit, a new attempt
//! waits for one to settle instead of starting: so however many connections race, at most
//! `limit` checks can fail per window (counting only after the check, which takes a second with
//! Argon2 and the failure delay, let 150 parallel guesses all through), and a burst of good
//! logins merely queues.
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

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a successful login keeps its address known good for the user.
pub const KNOWN_GOOD_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a login is not even tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many failed logins from this address.
    Address,
    /// Too many failed logins for this username.
    Username,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    since: Instant,
    /// Attempts begun and not yet settled (not reset with the window).
    in_flight: u32,
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
    /// Woken whenever an attempt settles.
    settled: Notify,
    limits: std::sync::RwLock<Limits>,
}

/// The configured limits (`[security]`, replaced by a reload).
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_address: u32,
    per_username: u32,
    window: Duration,
}

/// Entries kept before old ones are swept (bounds memory under a flood of addresses).
const SWEEP_ABOVE: usize = 10_000;

/// An attempt in flight: settle it with [`Throttle::failed`], [`Throttle::succeeded`] or
/// [`Throttle::release`].
#[derive(Debug)]
#[must_use = "an attempt must be settled"]
pub struct Attempt {
    address: Option<IpAddr>,
    user: Option<UserKey>,
}

#[derive(Debug)]
enum UserKey {
    Shared(String),
    Pair(Pair),
}

/// Why [`Throttle::try_begin`] did not start an attempt.
enum NotNow {
    Over(Throttled),
    /// Only attempts in flight stand in the way: wait for one to settle.
    Busy,
}

impl Throttle {
    /// `0` turns a limit off.
    pub fn new(per_address: u32, per_username: u32, window: Duration) -> Self {
        Throttle {
            by_address: DashMap::new(),
            by_username: DashMap::new(),
            by_pair: DashMap::new(),
            known_good: DashMap::new(),
            settled: Notify::new(),
            limits: std::sync::RwLock::new(Limits {
                per_address,
                per_username,
                window,
            }),
        }
    }

    /// Applies new limits (a configuration reload); the counts so far are kept.
    pub fn set_limits(&self, per_address: u32, per_username: u32, window: Duration) {
        *self.limits.write().expect("throttle limits") = Limits {
            per_address,
            per_username,
            window,
        };
        self.settled.notify_waiters();
    }

    fn limits(&self) -> Limits {
        *self.limits.read().expect("throttle limits")
    }

    fn is_known_good(&self, pair: &Pair) -> bool {
        self.known_good
            .get(pair)
            .is_some_and(|at| at.elapsed() < KNOWN_GOOD_FOR)
    }

    /// Registers an attempt before its check, waiting while attempts in flight hold the last
    /// places under a limit; `Err` when failures alone reach it.
    pub async fn begin(&self, address: IpAddr, username: &str) -> Result<Attempt, Throttled> {
        loop {
            let settled = self.settled.notified();
            match self.try_begin(address, username) {
                Ok(a) => return Ok(a),
                Err(NotNow::Over(why)) => return Err(why),
                Err(NotNow::Busy) => settled.await,
            }
        }
    }

    fn try_begin(&self, address: IpAddr, username: &str) -> Result<Attempt, NotNow> {
        let Limits {
            per_address,
            per_username,
            window,
        } = self.limits();
        let user = username.to_ascii_lowercase();
        let pair = (user.clone(), address);
        let user_key = if self.is_known_good(&pair) {
            UserKey::Pair(pair)
        } else {
            UserKey::Shared(user)
        };
        // Locks are taken in one order (address, then user), so racing attempts cannot deadlock.
        let mut by_address =
            (per_address > 0).then(|| self.by_address.entry(address).or_insert_with(new_window));
        if let Some(w) = by_address.as_mut() {
            room(w, window, per_address, Throttled::Address)?;
        }
        let mut by_user = match &user_key {
            _ if per_username == 0 => None,
            UserKey::Shared(u) => Some(UserWindow::Shared(
                self.by_username.entry(u.clone()).or_insert_with(new_window),
            )),
            UserKey::Pair(p) => Some(UserWindow::Pair(
                self.by_pair.entry(p.clone()).or_insert_with(new_window),
            )),
        };
        if let Some(w) = by_user.as_mut() {
            room(w.get_mut(), window, per_username, Throttled::Username)?;
        }
        if let Some(w) = by_address.as_mut() {
            w.in_flight += 1;
        }
        if let Some(w) = by_user.as_mut() {
            w.get_mut().in_flight += 1;
        }
        drop((by_address, by_user));
        self.sweep();
        Ok(Attempt {
            address: (per_address > 0).then_some(address),
            user: (per_username > 0).then_some(user_key),
        })
    }

    /// Ends an attempt; `failed` adds it to the failures of the current window.
    fn settle(&self, attempt: Attempt, failed: bool) {
        let window = self.limits().window;
        let end = |w: &mut Window| {
            w.in_flight = w.in_flight.saturating_sub(1);
            if failed {
                if w.since.elapsed() >= window {
                    w.failures = 0;
                    w.since = Instant::now();
                }
                w.failures = w.failures.saturating_add(1);
            }
        };
        if let Some(address) = attempt.address {
            end(&mut self.by_address.entry(address).or_insert_with(new_window));
        }
        match attempt.user {
            Some(UserKey::Shared(u)) => {
                end(&mut self.by_username.entry(u).or_insert_with(new_window))
            }
            Some(UserKey::Pair(p)) => end(&mut self.by_pair.entry(p).or_insert_with(new_window)),
            None => {}
        }
        self.settled.notify_waiters();
    }

    /// True when the failures from `address` reach the per-address limit: mail without a
    /// login is refused from it as logins are.
    pub fn address_over(&self, address: IpAddr) -> bool {
        let Limits {
            per_address,
            window,
            ..
        } = self.limits();
        per_address > 0
            && self
                .by_address
                .get(&address)
                .is_some_and(|w| w.since.elapsed() < window && w.failures >= per_address)
    }

    /// Counts a refusal of what `address` sent without a login (a sender no account may use)
    /// as a failed attempt of that address.
    pub fn refused_without_login(&self, address: IpAddr) {
        if self.limits().per_address == 0 {
            return;
        }
        self.by_address
            .entry(address)
            .or_insert_with(new_window)
            .in_flight += 1;
        self.settle(
            Attempt {
                address: Some(address),
                user: None,
            },
            true,
        );
    }

    /// A failed attempt: a wrong password, or a pass-through password or `~` refresh token
    /// that upstream refused.
    pub fn failed(&self, attempt: Attempt) {
        self.settle(attempt, true);
    }

    /// An attempt that proved nothing either way (the identity provider or the upstream was
    /// unreachable before it could say).
    pub fn release(&self, attempt: Attempt) {
        self.settle(attempt, false);
    }

    /// A successful login: the address becomes known good for the user (its own counter starts
    /// afresh). The user's shared counter is not cleared: one good password must not reset a
    /// spray from elsewhere.
    pub fn succeeded(&self, address: IpAddr, username: &str, attempt: Attempt) {
        self.settle(attempt, false);
        let pair = (username.to_ascii_lowercase(), address);
        if let Some(mut w) = self.by_pair.get_mut(&pair) {
            w.failures = 0;
        }
        self.known_good.insert(pair, Instant::now());
    }

    fn sweep(&self) {
        let total = self.by_address.len() + self.by_username.len() + self.by_pair.len();
        if total + self.known_good.len() > SWEEP_ABOVE {
            let window = self.limits().window;
            let stale = |w: &Window| w.in_flight == 0 && w.since.elapsed() >= window;
            self.by_address.retain(|_, w| !stale(w));
            self.by_username.retain(|_, w| !stale(w));
            self.by_pair.retain(|_, w| !stale(w));
            self.known_good
                .retain(|_, at| at.elapsed() < KNOWN_GOOD_FOR);
        }
    }
}

fn new_window() -> Window {
    Window {
        failures: 0,
        since: Instant::now(),
        in_flight: 0,
    }
}

/// Whether one more attempt fits under `limit` in `w` (its window restarted if it has passed).
fn room(w: &mut Window, window: Duration, limit: u32, why: Throttled) -> Result<(), NotNow> {
    if w.since.elapsed() >= window {
        w.failures = 0;
        w.since = Instant::now();
    }
    if w.failures >= limit {
        Err(NotNow::Over(why))
    } else if w.failures.saturating_add(w.in_flight) >= limit {
        Err(NotNow::Busy)
    } else {
        Ok(())
    }
}

/// The user's counter an attempt uses: the shared one or its known-good pair's.
enum UserWindow<'a> {
    Shared(dashmap::mapref::one::RefMut<'a, String, Window>),
    Pair(dashmap::mapref::one::RefMut<'a, Pair, Window>),
}

impl UserWindow<'_> {
    fn get_mut(&mut self) -> &mut Window {
        match self {
            UserWindow::Shared(w) => w,
            UserWindow::Pair(w) => w,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(t: &Throttle, a: IpAddr, user: &str) -> Result<(), Throttled> {
        t.begin(a, user).await.map(|attempt| t.failed(attempt))
    }

    #[tokio::test]
    async fn limits_per_address_and_per_username() {
        let t = Throttle::new(5, 3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            fail(&t, a, "scanner@X").await.unwrap();
        }
        // The username is over its limit from any address, whatever its case.
        assert_eq!(fail(&t, b, "SCANNER@x").await, Err(Throttled::Username));
        assert_eq!(fail(&t, b, "other@x").await, Ok(()));
        fail(&t, a, "u1").await.unwrap();
        fail(&t, a, "u2").await.unwrap();
        // Five failures from a: every username is refused from it.
        assert_eq!(fail(&t, a, "fresh@x").await, Err(Throttled::Address));
    }

    #[tokio::test]
    async fn attempts_in_flight_hold_places_and_later_ones_wait() {
        let t = std::sync::Arc::new(Throttle::new(0, 10, Duration::from_secs(60)));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first: Vec<_> = (0..10).map(|_| t.try_begin(a, "u").ok().unwrap()).collect();
        // The eleventh waits while ten are in flight.
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.begin(a, "u").await.map(|x| t.release(x)) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // Nine fail, one succeeds: the waiter gets the one free place.
        let mut first = first.into_iter();
        for _ in 0..9 {
            t.failed(first.next().unwrap());
        }
        t.succeeded(a, "u", first.next().unwrap());
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Nine failures so far: one more from another address, then the user is over.
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        fail(&t, b, "u").await.unwrap();
        assert_eq!(fail(&t, b, "u").await, Err(Throttled::Username));
    }

    #[tokio::test]
    async fn a_known_good_address_is_not_locked_out_by_guesses_from_elsewhere() {
        let t = Throttle::new(30, 3, Duration::from_secs(60));
        let device: IpAddr = "192.0.2.10".parse().unwrap();
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let ok = t.begin(device, "scanner").await.unwrap();
        t.succeeded(device, "scanner", ok);
        for _ in 0..3 {
            fail(&t, attacker, "scanner").await.unwrap();
        }
        assert_eq!(
            fail(&t, attacker, "scanner").await,
            Err(Throttled::Username)
        );
        // Other addresses share the user's counter and are refused too.
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        assert_eq!(fail(&t, other, "scanner").await, Err(Throttled::Username));
        // The device goes on, many times.
        for _ in 0..20 {
            let ok = t
                .begin(device, "SCANNER")
                .await
                .expect("the device is not locked out");
            t.succeeded(device, "scanner", ok);
        }
        // A known-good address that starts guessing has its own limit.
        for _ in 0..3 {
            fail(&t, device, "scanner").await.unwrap();
        }
        assert_eq!(fail(&t, device, "scanner").await, Err(Throttled::Username));
    }

    #[tokio::test]
    async fn counts_decay_after_the_window_and_zero_turns_a_limit_off() {
        let t = Throttle::new(1, 0, Duration::from_millis(50));
        let a: IpAddr = "::1".parse().unwrap();
        fail(&t, a, "u").await.unwrap();
        assert_eq!(fail(&t, a, "u").await, Err(Throttled::Address));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(fail(&t, a, "u").await, Ok(()));
        let off = Throttle::new(0, 0, Duration::from_secs(60));
        for _ in 0..100 {
            fail(&off, a, "u").await.unwrap();
        }
    }
}
