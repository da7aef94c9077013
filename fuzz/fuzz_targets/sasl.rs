//! SASL: strict base64, PLAIN parsing, and the XOAUTH2 blob round trip.
#![no_main]

use authrelay::codec::sasl::{decode_base64, parse_plain, xoauth2_response};
use authrelay::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode_base64(data) {
        if let Ok(c) = parse_plain(decoded.expose()) {
            assert!(!c.username.is_empty() && !c.username.chars().any(char::is_control));
            let blob = xoauth2_response(&c.username, &Secret::new("token")).unwrap();
            let raw = decode_base64(blob.expose()).unwrap();
            let expected = format!("user={}\x01auth=Bearer token\x01\x01", c.username);
            assert_eq!(raw.expose(), expected.as_bytes());
        }
    }
    let _ = parse_plain(data);
});
