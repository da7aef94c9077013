//! The PROXY v2 header parser: never panics, never reads past its input, and a header it
//! accepts parses the same when more bytes follow (what a client sends after it).
#![no_main]

use authrelay::codec::proxy::{parse, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, used))) = parse(data) {
        assert!(used >= 16 && used <= data.len() && used <= 16 + MAX_PAYLOAD);
        let mut longer = data[..used].to_vec();
        longer.extend_from_slice(b"EHLO client\r\n");
        assert_eq!(parse(&longer), Ok(Some((header, used))));
        // Every prefix of an accepted header asks for more bytes.
        for n in 0..used {
            assert_eq!(parse(&data[..n]), Ok(None));
        }
    }
});
