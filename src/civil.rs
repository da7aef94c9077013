//! Civil dates and times in UTC without a time-zone database: the day arithmetic (Howard
//! Hinnant's algorithms, public domain) and the two text forms the relay writes, RFC 5322 §3.3
//! for mail headers and RFC 3339 for machines (alerts, `--json`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The civil date (year, month 1-12, day 1-31) of a day counted from 1970-01-01, proleptic
/// Gregorian.
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The day, counted from 1970-01-01, of a civil date: the inverse of [`civil_date`].
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Midnight UTC of a `YYYY-MM-DD` date (a configured expiry date), or why it is not one.
pub fn parse_date(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("{text:?} is not a date in the form YYYY-MM-DD");
    let mut parts = text.split('-');
    let mut next = |len: usize| {
        parts
            .next()
            .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i64>().ok())
    };
    let (Some(y), Some(m), Some(d)) = (next(4), next(2), next(2)) else {
        return Err(bad());
    };
    let days = days_from_civil(y, m, d);
    if parts.next().is_some() || !(1..=12).contains(&m) || civil_date(days) != (y, m, d) {
        return Err(bad());
    }
    let secs = u64::try_from(days).map_err(|_| bad())? * 86400;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn split(t: SystemTime) -> (i64, (u64, u64, u64)) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86400) as i64;
    (days, (secs % 86400 / 3600, secs % 3600 / 60, secs % 60))
}

/// A date in RFC 5322 §3.3 form, in UTC: `Mon, 30 Nov 2026 19:59:01 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let (days, (h, m, s)) = split(t);
    let (year, month, day) = civil_date(days);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} +0000",
        DAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// A time in RFC 3339 form, in UTC, to the second: `2026-11-30T19:59:01Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (days, (h, m, s)) = split(t);
    let (year, month, day) = civil_date(days);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// A length of time in seconds as a person reads it: `28 s`, `3 min`, `5 h`, `2 days`.
pub fn span(d: u64) -> String {
    match d {
        0..=119 => format!("{d} s"),
        120..=7199 => format!("{} min", d / 60),
        7200..=172_799 => format!("{} h", d / 3600),
        _ => format!("{} days", d / 86400),
    }
}

/// How far Unix time `at` is from `now`, as a person reads it: `3 min ago`, `in 28 s`, `now`.
pub fn relative(at: u64, now: u64) -> String {
    match at.cmp(&now) {
        std::cmp::Ordering::Less => format!("{} ago", span(now - at)),
        std::cmp::Ordering::Equal => "now".to_owned(),
        std::cmp::Ordering::Greater => format!("in {}", span(at - now)),
    }
}

/// Unix seconds as a [`SystemTime`], at most 9999-12-31T23:59:59Z (what a four-digit year
/// can print; a damaged state file must not overflow the clock).
pub fn unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(253_402_300_799))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_print_in_both_forms() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_068_741);
        assert_eq!(rfc5322_date(t), "Mon, 30 Nov 2026 19:59:01 +0000");
        assert_eq!(rfc3339(t), "2026-11-30T19:59:01Z");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        for days in [-800_000, -1, 0, 59, 60, 365, 11_016, 20_787, 1_000_000] {
            let (y, m, d) = civil_date(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let midnight = UNIX_EPOCH + Duration::from_secs(20_787 * 86400);
        assert_eq!(parse_date("2026-11-30"), Ok(midnight));
        assert_eq!(
            parse_date("2028-02-29").map(rfc3339),
            Ok("2028-02-29T00:00:00Z".into())
        );
        for bad in [
            "2027-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-11-30",
            "2026-11-30x",
            "",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_read_as_a_person_says_them() {
        assert_eq!(relative(100, 280), "3 min ago");
        assert_eq!(relative(128, 100), "in 28 s");
        assert_eq!(relative(5, 5), "now");
        assert_eq!(span(3 * 86400), "3 days");
        assert_eq!(rfc3339(unix(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(unix(u64::MAX)), "9999-12-31T23:59:59Z");
    }
}
