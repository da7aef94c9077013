//! The IMAP framer: feeding the same bytes all at once or one byte at a time gives the same
//! frames, consumed lengths never exceed the input, and limits are errors, not panics.
#![no_main]

use authrelay::codec::imap::{Frame, Framer, MAX_PRE_AUTH_LITERAL};
use libfuzzer_sys::fuzz_target;

fn frames(data: &[u8], step: usize) -> (Vec<Frame>, bool) {
    let mut f = Framer::new();
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = if step == 0 { data.len() } else { 0 };
    loop {
        match f.scan(&data[start..end], MAX_PRE_AUTH_LITERAL) {
            Ok(Frame::Incomplete) => {
                if end == data.len() {
                    return (out, false);
                }
                end = (end + step.max(1)).min(data.len());
            }
            Ok(Frame::Complete { len }) => {
                assert!(len > 0 && start + len <= end);
                out.push(Frame::Complete { len });
                start += len;
            }
            Ok(lit) => out.push(lit),
            Err(_) => return (out, true),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = frames(data, 0);
    let bytewise = frames(data, 1);
    assert_eq!(whole, bytewise);
});
