//! POP3: client commands, server status lines and multi-line bodies, and the CAPA rewrite, which
//! must always produce a well-formed response that offers only what the relay offers.
#![no_main]

use authrelay::codec::line::next_line;
use authrelay::codec::pop3::{
    is_temporary_refusal, next_multiline, next_status, parse_command, rewrite_capa, CapaPolicy,
    Capabilities, Status, MAX_COMMAND_LINE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((line, used))) = next_line(rest, MAX_COMMAND_LINE) {
        let _ = parse_command(line);
        rest = &rest[used..];
    }
    if let Ok(Some((status, used))) = next_status(data) {
        assert!(used <= data.len());
        if let Status::Err(text) = status {
            let _ = is_temporary_refusal(text);
        }
        if let Ok(Some((lines, _))) = next_multiline(&data[used..]) {
            if lines.iter().all(|l| !l.contains(&b'\r')) {
                let policy = CapaPolicy {
                    offer_auth: true,
                    offer_stls: false,
                };
                let out = rewrite_capa(&lines, policy);
                let (status, n) = next_status(&out).unwrap().unwrap();
                assert!(matches!(status, Status::Ok(_)));
                let (again, m) = next_multiline(&out[n..]).unwrap().unwrap();
                assert_eq!(n + m, out.len());
                let caps = Capabilities::from_capa(&again);
                assert!(!caps.stls && caps.user);
                assert_eq!(caps.sasl, vec!["PLAIN".to_string(), "LOGIN".to_string()]);
            }
        }
    }
});
