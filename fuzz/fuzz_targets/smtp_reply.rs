//! Upstream replies and the EHLO rewrite: whatever the server sends, the rewritten reply is a
//! well-formed 250 reply that offers exactly the relay's own AUTH and STARTTLS.
#![no_main]

use authrelay::codec::smtp::{next_reply, rewrite_ehlo, Capabilities, EhloPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((reply, used))) = next_reply(rest) {
        assert!(used > 0 && used <= rest.len());
        assert!((200..600).contains(&reply.code));
        let _ = Capabilities::from_ehlo(&reply);
        if reply.lines.iter().all(|l| !l.contains(&b'\r')) {
            for policy in [
                EhloPolicy {
                    offer_auth: true,
                    offer_starttls: false,
                },
                EhloPolicy {
                    offer_auth: false,
                    offer_starttls: true,
                },
            ] {
                let out = rewrite_ehlo(&reply, policy);
                let (again, n) = next_reply(&out)
                    .expect("rewritten reply parses")
                    .expect("complete");
                assert_eq!(n, out.len());
                assert_eq!(again.code, 250);
                let caps = Capabilities::from_ehlo(&again);
                assert_eq!(caps.starttls, policy.offer_starttls);
                let expected: Vec<String> = if policy.offer_auth {
                    vec!["PLAIN".into(), "LOGIN".into()]
                } else {
                    vec![]
                };
                assert_eq!(caps.auth, expected);
            }
        }
        rest = &rest[used..];
    }
});
