//! The spool's arriving message: DATA fed in any two pieces gives the same message as fed at
//! once (the end line found in the same place, dots un-stuffed alike), and nothing panics.
#![no_main]

use authrelay::spool::message::{MessageSink, Verdict};
use libfuzzer_sys::fuzz_target;

fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, bool, Option<Verdict>) {
    let mut sink = MessageSink::new(64 * 1024, "id", "relay.test");
    let (mut out, mut buffered, mut pos, mut ended) = (Vec::new(), Vec::new(), 0, false);
    for &cut in cuts {
        buffered.extend_from_slice(&input[pos..cut]);
        pos = cut;
        let (used, end) = sink.feed_data(&buffered, false, &mut out);
        assert!(used <= buffered.len());
        buffered.drain(..used);
        if end {
            ended = true;
            break;
        }
    }
    let verdict = ended.then(|| sink.finish(&mut out));
    // The added Date: depends on the clock; leave it out of the comparison.
    let text: Vec<u8> = out
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"Date: "))
        .flatten()
        .copied()
        .collect();
    (text, ended, verdict)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let split = if input.is_empty() { 0 } else { first as usize % input.len() };
    let whole = run(input, &[input.len()]);
    let parts = run(input, &[split, input.len()]);
    assert_eq!(whole, parts);
});
