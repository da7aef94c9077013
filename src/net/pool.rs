//! Transfer buffers shared by all sessions, held only while data flows.
//!
//! A busy relay moves bulk data through few sessions at a time while thousands sit idle (an
//! IMAP client in IDLE, a POP3 client between commands). So no session owns a transfer
//! buffer: it takes one when its socket has data and gives it back as soon as it has none. The
//! pool keeps the freed ones for the next burst (a fresh buffer would cost an allocation, page
//! faults and zeroing).
//!
//! A buffer comes back with the extent its holder wrote, and that much is wiped before anyone
//! else can take it: the next session must never find the last one's plaintext (a message, a
//! password typed after the login, a token in an IMAP literal). The wipe costs one memset of
//! the bytes used, once per burst, not per record.

use std::sync::Mutex;

/// Size of every pooled buffer: four full TLS records (16 KiB of plaintext each), so that one
/// `recv` or `send` moves several records and the per-call cost of the loopback or NIC path
/// (a wake-up of the peer, an ACK) is paid once per 64 KiB rather than once per record.
pub const BUFFER: usize = 256 * 1024;

/// Buffers kept at most (4 MiB): enough for the sessions moving bulk data at once on a busy relay.
const KEEP: usize = 16;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A buffer of [`BUFFER`] bytes, from the pool when one is there.
pub fn take() -> Box<[u8]> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| vec![0; BUFFER].into_boxed_slice())
}

/// Returns a buffer taken with [`take`], of which the holder wrote at most the first `used`
/// bytes (a larger figure wipes the whole buffer). Those bytes are zeroed first, also when the
/// pool is full and the buffer is freed: freed memory goes back to the allocator as it is.
pub fn give_back(mut buf: Box<[u8]>, used: usize) {
    let used = used.min(buf.len());
    // One memset (zeroize's volatile byte writes cost about a cycle per byte: half the relay's
    // CPU per GiB). black_box keeps the compiler from dropping it as a dead store when the
    // buffer is freed right after.
    buf[..used].fill(0);
    std::hint::black_box(&mut buf[..]);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < KEEP {
        pool.push(buf);
    }
}

/// True when a kept buffer holds `needle` (for tests elsewhere: what was wiped).
#[cfg(test)]
pub fn any_holds(needle: &[u8]) -> bool {
    let pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.iter()
        .any(|b| b.windows(needle.len()).any(|w| w == needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let many: Vec<_> = (0..KEEP + 8).map(|_| take()).collect();
        assert!(many.iter().all(|b| b.len() == BUFFER));
        for b in many {
            give_back(b, 0);
        }
        assert!(POOL.lock().unwrap().len() <= KEEP);
    }

    #[test]
    fn what_a_holder_wrote_is_wiped_before_the_buffer_is_kept() {
        let mut buf = take();
        buf[..5].copy_from_slice(b"token");
        buf[BUFFER - 1] = 1;
        give_back(buf, usize::MAX);
        // The pool is shared with other tests: look for no secret in any kept buffer.
        let pool = POOL.lock().unwrap();
        assert!(pool
            .iter()
            .all(|b| &b[..5] != b"token" && b[BUFFER - 1] == 0));
    }
}
