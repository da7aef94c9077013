//! Queue IDs: made so that they sort by arrival, and checked wherever one names a file.

use super::SpoolError;
use std::time::{SystemTime, UNIX_EPOCH};

/// A queue ID as it appears in file names: hex digits and a hyphen only, so no path can be
/// named through it.
pub(super) fn checked_id(id: &str) -> Result<&str, SpoolError> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(SpoolError::Damaged {
            path: id.chars().take(64).collect(),
            reason: "not a queue ID".into(),
        })
    }
}

/// A new queue ID: the time in microseconds (so IDs sort by arrival) and 48 random bits.
pub fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let random: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
    format!("{micros:016x}-{random:012x}")
}
