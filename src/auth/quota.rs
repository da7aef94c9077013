//! Hourly recipient caps for mail sent without a login (`max_recipients_per_hour`): a device on
//! a trusted network that goes wrong, or a host there that is taken over, sends at most that
//! many recipients an hour as an account. Counted per account in this process, in a sliding
//! hour; with several replicas each counts its own.

use dashmap::DashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// Recipients accepted per account in the last hour.
#[derive(Default)]
pub struct Quota {
    sent: DashMap<String, VecDeque<(Instant, u32)>>,
}

impl Quota {
    /// Recipients of `account` accepted in the last hour.
    pub fn used(&self, account: &str) -> u64 {
        let Some(mut q) = self.sent.get_mut(account) else {
            return 0;
        };
        while q.front().is_some_and(|(at, _)| at.elapsed() >= HOUR) {
            q.pop_front();
        }
        q.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// A message of `account` to `recipients` was accepted.
    pub fn record(&self, account: &str, recipients: u32) {
        self.sent
            .entry(account.to_owned())
            .or_default()
            .push_back((Instant::now(), recipients));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_add_up_per_account() {
        let q = Quota::default();
        assert_eq!(q.used("scanner"), 0);
        q.record("scanner", 2);
        q.record("scanner", 3);
        q.record("printer", 1);
        assert_eq!(q.used("scanner"), 5);
        assert_eq!(q.used("printer"), 1);
    }
}
