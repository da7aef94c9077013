//! The end of an SMTP `DATA` message (RFC 5321 §4.1.1.4), found while the message streams.
//!
//! After login the relay passes messages on without parsing them, but it must know where each
//! one ends, because what follows is the next command, and every `MAIL FROM` is checked.
//! The relay and the server must agree on that end to the byte: if the server saw an end the
//! relay did not (a bare LF or CR in `<LF>.<LF>`, `<CR>.<CR>`), the bytes after it would reach
//! the server as commands nobody checked ("SMTP smuggling"). So line ends are made canonical
//! on the way through: a bare CR, a bare LF and CRLF all leave as CRLF (RFC 5321 §2.3.8 forbids
//! the bare ones), and the end is the line `.` in that canonical stream. A well-formed message
//! passes byte for byte.
//!
//! An end line next to a bare line end (`<LF>.<LF>`, `<CR><LF>.<LF>`, `<LF>.<CR><LF>`, and the
//! same with a bare CR) MUST NOT end a message (RFC 5321 §4.1.1.4): where the sender meant the
//! message to end is unknown. The scanner stops there all the same, so that nothing after it
//! reaches the server as message text, and says so ([`DataScanner::ended_bare`]): the session
//! then refuses the message without sending its end, and closes.

/// Finds the end of one message and writes the message on, with canonical line ends.
#[derive(Debug, Clone)]
pub struct DataScanner {
    /// The next byte starts a line (true at the start: `DATA` ended a line).
    line_start: bool,
    /// The current line so far is exactly `.`.
    dot_only: bool,
    /// The previous byte was a CR (already written as CRLF): an LF right after it is its own.
    after_cr: bool,
    /// The end line `.` ended with a CR; an LF right after it still belongs to it.
    ended_at_cr: bool,
    /// The last line end in the input was a bare CR or LF (a CR until its LF shows otherwise).
    bare: bool,
    /// The end found was next to a bare line end.
    ended_bare: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        DataScanner {
            line_start: true,
            dot_only: false,
            after_cr: false,
            ended_at_cr: false,
            bare: false,
            ended_bare: false,
        }
    }
}

/// What [`DataScanner::scan`] found at the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes are message bytes with canonical line ends: send them as they are.
    Pass(usize),
    /// The first `n` bytes, unchanged, end the message with its `.` line; what follows is the
    /// client's next command.
    End(usize),
    /// A bare CR or LF comes first: pass that one byte through [`DataScanner::feed`].
    Fix,
    /// Only a CR whose LF has not arrived yet: read more.
    NeedMore,
}

/// What one [`DataScanner::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used; the rest (after the end) is the client's next command.
    pub consumed: usize,
    /// The end of the message was reached (its `.` line is in the output).
    pub done: bool,
}

impl DataScanner {
    /// The end found was next to a bare line end: not an end RFC 5321 allows, so the message
    /// must be refused, not ended.
    pub fn ended_bare(&self) -> bool {
        self.ended_bare
    }

    /// The zero-copy path: how much of `input` can be sent as it is (a well-formed message is
    /// all of it), or that the next byte needs [`Self::feed`]. The state moves past exactly the
    /// bytes it reports, so the two may be mixed freely: the output is the same.
    pub fn scan(&mut self, input: &[u8]) -> Scan {
        let Some(&first) = input.first() else {
            return Scan::NeedMore;
        };
        if self.ended_at_cr || (self.after_cr && first == b'\n') {
            return Scan::Fix;
        }
        self.after_cr = false;
        let stop = |i: usize, at_start: Scan| if i == 0 { at_start } else { Scan::Pass(i) };
        let mut i = 0;
        if !self.dot_only {
            i = plain_lines(input, self.line_start);
            if i > 0 {
                self.line_start = true;
                self.bare = false;
            }
        }
        while i < input.len() {
            match input[i] {
                b'\r' => match input.get(i + 1) {
                    None => return stop(i, Scan::NeedMore),
                    Some(b'\n') => {
                        i += 2;
                        if self.dot_only {
                            self.ended_bare = self.bare;
                            return Scan::End(i);
                        }
                        self.line_start = true;
                        self.bare = false;
                    }
                    Some(_) => return stop(i, Scan::Fix),
                },
                b'\n' => return stop(i, Scan::Fix),
                _ => {
                    let end =
                        memchr::memchr2(b'\r', b'\n', &input[i..]).map_or(input.len(), |p| i + p);
                    self.dot_only = self.line_start && &input[i..end] == b".";
                    self.line_start = false;
                    i = end;
                }
            }
        }
        Scan::Pass(i)
    }

    /// Appends `input`'s message bytes to `out`, up to and including the end line.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut i = 0;
        while i < input.len() {
            if self.ended_at_cr {
                let crlf = input[i] == b'\n';
                self.ended_bare = self.bare || !crlf;
                let consumed = if crlf { i + 1 } else { i };
                return Fed {
                    consumed,
                    done: true,
                };
            }
            match input[i] {
                b'\n' if self.after_cr => {
                    self.after_cr = false;
                    self.bare = false;
                    i += 1;
                }
                b @ (b'\r' | b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                    if self.dot_only {
                        if b == b'\n' {
                            self.ended_bare = true;
                            return Fed {
                                consumed: i,
                                done: true,
                            };
                        }
                        self.ended_at_cr = true;
                        continue;
                    }
                    self.after_cr = b == b'\r';
                    self.bare = true;
                    self.line_start = true;
                    self.dot_only = false;
                }
                _ => {
                    let end =
                        memchr::memchr2(b'\r', b'\n', &input[i..]).map_or(input.len(), |p| i + p);
                    let chunk = &input[i..end];
                    self.dot_only = self.line_start && chunk == b".";
                    self.line_start = false;
                    self.after_cr = false;
                    out.extend_from_slice(chunk);
                    i = end;
                }
            }
        }
        Fed {
            consumed: i,
            done: false,
        }
    }
}

/// `BDAT <size> [LAST]` (RFC 3030 §2): the chunk size and whether it is the last.
pub fn parse_bdat(line: &[u8]) -> Option<(u64, bool)> {
    let rest = line.get(5..)?;
    if !line[..5].eq_ignore_ascii_case(b"BDAT ") {
        return None;
    }
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// The length of the longest start of `input` made of whole lines that end in CRLF, with no
/// bare CR or LF and no line starting with a dot: such bytes pass unchanged and cannot hold the
/// end line, so they need no per-line look. `line_start`: `input` starts a line (the caller
/// knows the byte before is neither a CR nor part of a line that is only a dot). 0 when the
/// first bytes do not qualify. Compares 16 bytes at a time, four blocks per test (SSE2, part of
/// every x86-64 CPU): every LF must follow a CR and every CR precede an LF (the LF mask of a
/// block equals the CR mask of the same block one byte earlier), and no dot may follow an LF.
#[cfg(target_arch = "x86_64")]
fn plain_lines(input: &[u8], line_start: bool) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_xor_si128,
    };
    let Some(&first) = input.first() else {
        return 0;
    };
    if first == b'\n' || (line_start && first == b'.') {
        return 0;
    }
    // The bytes of one 16-byte block at `j` that break the rule: an LF not after a CR or a CR
    // not before an LF (the two masks differ), or a dot after an LF.
    // SAFETY: SSE2 is always present on x86-64; the loads read 16 bytes from j - 1 >= 0 and
    // from j, and every caller below keeps j + 16 <= input.len().
    let bad = |j: usize| unsafe {
        let eq = |v, byte: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8));
        let here = _mm_loadu_si128(input.as_ptr().add(j).cast());
        let before = _mm_loadu_si128(input.as_ptr().add(j - 1).cast());
        _mm_or_si128(
            _mm_xor_si128(eq(here, b'\n'), eq(before, b'\r')),
            _mm_and_si128(eq(here, b'.'), eq(before, b'\n')),
        )
    };
    // SAFETY: SSE2 register operations only.
    let none = |v: __m128i| unsafe { _mm_movemask_epi8(v) == 0 };
    let mut good = 1;
    // Four blocks per test while they pass, then one at a time.
    while good + 64 <= input.len() {
        // SAFETY: SSE2 register operations only.
        let any = unsafe {
            _mm_or_si128(
                _mm_or_si128(bad(good), bad(good + 16)),
                _mm_or_si128(bad(good + 32), bad(good + 48)),
            )
        };
        if !none(any) {
            break;
        }
        good += 64;
    }
    while good + 16 <= input.len() && none(bad(good)) {
        good += 16;
    }
    // Up to the last line end of the blocks that passed.
    memchr::memrchr(b'\n', &input[..good]).map_or(0, |p| p + 1)
}

#[cfg(not(target_arch = "x86_64"))]
fn plain_lines(_input: &[u8], _line_start: bool) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the output and the bytes left over.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
        let (out, rest, _) = run_with(input, step);
        (out, rest)
    }

    /// [`run`], and whether the end was next to a bare line end.
    fn run_with(input: &[u8], step: usize) -> (Vec<u8>, Vec<u8>, bool) {
        let mut s = DataScanner::default();
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let piece = &input[at..(at + step).min(input.len())];
            let fed = s.feed(piece, &mut out);
            at += fed.consumed;
            if fed.done {
                return (out, input[at..].to_vec(), s.ended_bare());
            }
            assert_eq!(fed.consumed, piece.len());
        }
        panic!("no end found in {input:?}");
    }

    #[test]
    fn a_well_formed_message_passes_unchanged_and_the_rest_is_left() {
        let msg = b"Subject: x\r\n\r\n..stuffed\r\n.not end\r\nend .\r\n.\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let mut input = msg.to_vec();
            input.extend_from_slice(b"MAIL FROM:<a@b>\r\n");
            let (out, rest) = run(&input, step);
            assert_eq!(out, msg, "step {step}");
            assert_eq!(rest, b"MAIL FROM:<a@b>\r\n", "step {step}");
        }
        assert_eq!(
            run(b".\r\nQUIT\r\n", 1),
            (b".\r\n".to_vec(), b"QUIT\r\n".to_vec())
        );
    }

    #[test]
    fn bare_line_ends_are_made_canonical_so_both_sides_see_the_same_end() {
        // The smuggling shapes: each ends the message here, and leaves as CRLF.CRLF.
        for (input, out) in [
            (&b"a\n.\nMAIL"[..], &b"a\r\n.\r\n"[..]),
            (b"a\r.\rMAIL", b"a\r\n.\r\n"),
            (b"a\r\n.\nMAIL", b"a\r\n.\r\n"),
            (b"a\n.\r\nMAIL", b"a\r\n.\r\n"),
        ] {
            for step in [1, 2, 100] {
                assert_eq!(
                    run_with(input, step),
                    (out.to_vec(), b"MAIL".to_vec(), true),
                    "{input:?}: stops here, and says the end is not one"
                );
                assert_eq!(run_scan_with(input, step), Some(run_with(input, step)));
            }
        }
        // Bare line ends elsewhere are fixed; an end between CRLFs is an end.
        for input in [
            &b"a\rb\nc\r\n.\r\n"[..],
            b".\r\n",
            b"a\r\n.\r\n",
            b"x\r\r\n.\r\n",
        ] {
            for step in [1, 2, 100] {
                let (_, _, bare) = run_with(input, step);
                assert!(!bare, "{input:?}");
                assert_eq!(run_scan_with(input, step), Some(run_with(input, step)));
            }
        }
        assert_eq!(run(b"a\rb\nc\r\n.\r\n", 1).0, b"a\r\nb\r\nc\r\n.\r\n");
    }

    /// Drives [`DataScanner::scan`] as the session does (feeding one byte on `Fix`), in pieces
    /// of `step` bytes; returns the output and the bytes left over.
    fn run_scan(input: &[u8], step: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        run_scan_with(input, step).map(|(out, rest, _)| (out, rest))
    }

    /// [`run_scan`], and whether the end was next to a bare line end.
    fn run_scan_with(input: &[u8], step: usize) -> Option<(Vec<u8>, Vec<u8>, bool)> {
        let mut s = DataScanner::default();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut fed_to = 0;
        loop {
            if buf.is_empty() || matches!(s.clone().scan(&buf), Scan::NeedMore) {
                if fed_to == input.len() {
                    return None;
                }
                let next = (fed_to + step).min(input.len());
                buf.extend_from_slice(&input[fed_to..next]);
                fed_to = next;
                continue;
            }
            match s.scan(&buf) {
                Scan::Pass(n) => {
                    out.extend_from_slice(&buf[..n]);
                    buf.drain(..n);
                }
                Scan::End(n) => {
                    out.extend_from_slice(&buf[..n]);
                    buf.drain(..n);
                    buf.extend_from_slice(&input[fed_to..]);
                    return Some((out, buf, s.ended_bare()));
                }
                Scan::Fix => {
                    let fed = s.feed(&buf[..1], &mut out);
                    buf.drain(..fed.consumed);
                    if fed.done {
                        buf.extend_from_slice(&input[fed_to..]);
                        return Some((out, buf, s.ended_bare()));
                    }
                }
                Scan::NeedMore => unreachable!(),
            }
        }
    }

    #[test]
    fn the_zero_copy_path_gives_the_same_output() {
        for input in [
            &b"Subject: x\r\n\r\n..stuffed\r\n.not end\r\nend .\r\n.\r\nMAIL FROM:<a@b>\r\n"[..],
            b".\r\nQUIT\r\n",
            b"a\n.\nMAIL",
            b"a\r.\rMAIL",
            b"a\r\n.\nMAIL",
            b"a\n.\r\nMAIL",
            b"a\rb\nc\r\n.\r\n",
            b"x\r\r\n.\r\n",
        ] {
            for step in [1, 2, 3, 100] {
                assert_eq!(
                    run_scan(input, step),
                    Some(run(input, step)),
                    "{input:?} / {step}"
                );
            }
        }
        // A well-formed message passes in one piece, without a copy.
        let msg = b"Subject: x\r\n\r\nbody\r\n.\r\n";
        assert_eq!(DataScanner::default().scan(msg), Scan::End(msg.len()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Long lines and rare line ends, dots and bare CR/LF: the 16-byte path sees most
        /// bytes, and still agrees with the copying path byte for byte.
        #[test]
        fn the_fast_path_agrees_with_the_copying_one(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::string::bytes_regex("[a-z ]{0,40}").unwrap(),
                    4 => proptest::strategy::Just(b"\r\n".to_vec()),
                    1 => proptest::strategy::Just(b"\r\n.".to_vec()),
                    1 => proptest::strategy::Just(b"\n".to_vec()),
                    1 => proptest::strategy::Just(b"\r".to_vec()),
                    1 => proptest::strategy::Just(b".".to_vec()),
                ],
                0..60,
            ),
            step in 1usize..200,
        ) {
            let mut input: Vec<u8> = pieces.concat();
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            proptest::prop_assert_eq!(run_scan_with(&input, step), Some(run_with(&input, step)));
        }
    }

    #[test]
    fn long_clean_lines_pass_in_one_piece_up_to_the_last_line_end() {
        let mut msg = Vec::new();
        for _ in 0..100 {
            msg.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n");
        }
        msg.extend_from_slice(b"partial");
        let mut s = DataScanner::default();
        assert_eq!(s.scan(&msg), Scan::Pass(msg.len()));
        // The 16-byte path ends on the last line end before its last whole block (lines here
        // are 57 bytes); the rest is scanned line by line.
        let fast = plain_lines(&msg, true);
        assert!(fast + 57 + 16 >= msg.len() - b"partial".len() && msg[fast - 1] == b'\n');
        // A line that is only a dot stops the fast path before it; the scanner ends there.
        msg.truncate(msg.len() - b"partial".len());
        let end = msg.len() + 3;
        msg.extend_from_slice(b".\r\nQUIT\r\n");
        assert!(plain_lines(&msg, true) < end);
        assert_eq!(DataScanner::default().scan(&msg), Scan::End(end));
    }

    #[test]
    fn bdat_lines() {
        assert_eq!(parse_bdat(b"BDAT 100"), Some((100, false)));
        assert_eq!(parse_bdat(b"bdat 0 last"), Some((0, true)));
        assert_eq!(parse_bdat(b"BDAT 1 LAST x"), None);
        assert_eq!(parse_bdat(b"BDAT -1"), None);
        assert_eq!(parse_bdat(b"BDAT 99999999999999999999"), None);
        assert_eq!(parse_bdat(b"BDAT"), None);
    }
}
