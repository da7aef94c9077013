//! IMAP commands and responses before login: the parser never panics; a LOGIN's strings hold no
//! CR/LF unless they came from a literal; the capability rewrite never lets an upstream AUTH=,
//! STARTTLS or LOGINDISABLED through.
#![no_main]

use authrelay::codec::imap::{
    capability_code, parse_command, parse_response, quote, rewrite_capabilities, CapabilityPolicy,
    Command,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = parse_command(data) {
        assert!(!t.tag.is_empty());
        if let Command::Login { user, password } = &t.command {
            let password = password.expose();
            if !data.contains(&b'{') {
                assert!(!user.contains(&b'\n') && !password.contains(&b'\n'));
            }
            if let Some(q) = quote(password) {
                let wire = [b"x LOGIN u ".as_slice(), &q, b"\r\n"].concat();
                match parse_command(&wire).map(|t| t.command) {
                    Ok(Command::Login { password: back, .. }) => {
                        assert_eq!(back.expose().as_ref(), password.as_ref())
                    }
                    other => panic!("quoted password did not parse back: {other:?}"),
                }
            }
        }
    }
    let _ = parse_response(data);
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Some((_, list, _)) = capability_code(line) {
        let out = rewrite_capabilities(
            list,
            CapabilityPolicy {
                offer_auth: true,
                offer_starttls: false,
            },
        );
        for cap in out.split(|&b| b == b' ') {
            let upper = cap.to_ascii_uppercase();
            assert!(
                !upper.starts_with(b"AUTH=") || upper == b"AUTH=PLAIN" || upper == b"AUTH=LOGIN"
            );
            assert!(upper != b"STARTTLS" && upper != b"LOGINDISABLED");
        }
    }
});
