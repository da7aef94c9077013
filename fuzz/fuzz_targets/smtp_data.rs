//! The end of a DATA message: however the input is cut into reads, the scanner finds the same
//! end, its output has only CRLF line ends, and the output ends with the end line exactly when
//! it found one; the zero-copy path (`scan`, with `feed` for one byte on `Fix`) gives the same
//! output as the copying one, and both say alike whether the end was next to a bare line end
//! (refused, RFC 5321 §4.1.1.4). This agreement is what keeps a smuggled second message from
//! the server.
#![no_main]

use authrelay::codec::smtp_data::{parse_bdat, DataScanner, Scan};
use libfuzzer_sys::fuzz_target;

fn scan(data: &[u8], step: usize) -> (Vec<u8>, Option<(usize, bool)>) {
    let mut scanner = DataScanner::default();
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let piece = &data[at..(at + step).min(data.len())];
        let fed = scanner.feed(piece, &mut out);
        assert!(fed.consumed <= piece.len());
        at += fed.consumed;
        if fed.done {
            return (out, Some((at, scanner.ended_bare())));
        }
        assert_eq!(fed.consumed, piece.len());
    }
    (out, None)
}

/// The session's zero-copy driver over reads of `step` bytes: the output and the bytes used.
fn zero_copy(data: &[u8], step: usize) -> (Vec<u8>, Option<(usize, bool)>) {
    let mut scanner = DataScanner::default();
    let mut out = Vec::new();
    let (mut start, mut end) = (0, 0);
    loop {
        let buf = &data[start..end];
        let (used, done) = match scanner.scan(buf) {
            Scan::NeedMore => {
                if end == data.len() {
                    return (out, None);
                }
                end = (end + step).min(data.len());
                continue;
            }
            Scan::Pass(n) => {
                out.extend_from_slice(&buf[..n]);
                (n, false)
            }
            Scan::End(n) => {
                out.extend_from_slice(&buf[..n]);
                (n, true)
            }
            Scan::Fix => {
                let fed = scanner.feed(&buf[..1], &mut out);
                (fed.consumed, fed.done)
            }
        };
        start += used;
        if done {
            return (out, Some((start, scanner.ended_bare())));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole, end) = scan(data, data.len().max(1));
    for step in [1, 2, 7] {
        let (out, e) = zero_copy(data, step);
        if e.is_some() && end.is_some() {
            assert_eq!((&out, e), (&whole, end), "zero-copy path, step {step}");
        }
        let (out, e) = scan(data, step);
        // A CR at the very end of the input may wait for the next byte: compare complete ends.
        if e.is_some() && end.is_some() {
            assert_eq!((&out, e), (&whole, end));
        }
    }
    for (i, &b) in whole.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(whole.get(i + 1), Some(&b'\n'));
        }
        if b == b'\n' {
            assert_eq!(i.checked_sub(1).map(|j| whole[j]), Some(b'\r'));
        }
    }
    if let Some((used, bare)) = end {
        assert!(whole == b".\r\n" || whole.ends_with(b"\r\n.\r\n"));
        // Bare exactly when the input's end line is not `.` between CRLFs.
        let input = &data[..used];
        let clean = input == b".\r\n" || input.ends_with(b"\r\n.\r\n");
        assert_eq!(bare, !clean, "{input:?}");
    }
    let _ = parse_bdat(data);
});
