//! Client command lines: framing with the pre-auth and AUTH limits, then the grammar.
#![no_main]

use authrelay::codec::line::next_line;
use authrelay::codec::smtp::{parse_command, Command, MAX_AUTH_LINE, MAX_COMMAND_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [MAX_COMMAND_LINE, MAX_AUTH_LINE] {
        let mut rest = data;
        while let Ok(Some((line, used))) = next_line(rest, max) {
            assert!(used > 0 && used <= rest.len() && used <= max);
            assert!(!line.contains(&b'\n'));
            if let Command::Auth {
                mechanism,
                initial_response,
            } = parse_command(line)
            {
                assert!(!mechanism.contains(&b' '));
                assert!(initial_response.is_none_or(|r| !r.expose().is_empty()));
            }
            rest = &rest[used..];
        }
    }
});
