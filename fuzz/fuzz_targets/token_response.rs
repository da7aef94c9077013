//! Token endpoint answers, as the relay reads them: whatever JSON arrives, reading it never
//! panics (no overflow from `expires_in`), and a grant it accepts has a bounded lifetime and
//! tokens that fit in an XOAUTH2 string (visible ASCII, no separator characters).
#![no_main]

use authrelay::auth::oauth::{grant_from_json, MAX_TOKEN_LIFETIME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(grant) = grant_from_json(data) {
        assert!(grant.expires_in <= MAX_TOKEN_LIFETIME);
        let now = std::time::Instant::now();
        let _ = now + grant.expires_in;
        let _ = std::time::SystemTime::now() + grant.expires_in;
        let token = grant.access_token.expose();
        assert!(!token.is_empty());
        assert!(token.bytes().all(|b| b.is_ascii_graphic() && b != b','));
        if let Some(rt) = &grant.refresh_token {
            assert!(rt.expose().bytes().all(|b| b.is_ascii_graphic()));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // The same with an OAuth error: the code repeated to clients never carries a line end.
        let e = authrelay::auth::oauth::classify_server_error(text, text);
        assert!(!e.code().contains(['\r', '\n']));
        assert!(!e.description.contains(['\r', '\n', '\u{2028}']));
    }
});
