//! Whether the kernel could take TLS records over (kTLS).
//!
//! With the kernel's `tls` module, a TCP socket can be switched to the `tls` upper-layer
//! protocol (`setsockopt(TCP_ULP, "tls")`) and given the traffic keys, after which the kernel
//! encrypts and decrypts records itself and plaintext can move between sockets with `splice(2)`
//! (Linux's Documentation/networking/tls.rst). authrelay does all TLS in user space (rustls);
//! this probe says whether the kernel it runs on would allow more, so that `authrelay check`
//! and the start-up log can say so. Without the module (`ENOENT`) nothing is lost: the user
//! space path is the one every session takes.

use std::fmt;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelTls {
    /// The `tls` upper-layer protocol exists.
    Available,
    /// It does not, and why (the errno's text).
    Unavailable(String),
}

impl fmt::Display for KernelTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelTls::Available => f.write_str("available (the kernel has the tls module)"),
            KernelTls::Unavailable(why) => write!(f, "not available ({why})"),
        }
    }
}

/// Asks the kernel on an unconnected TCP socket: the `tls` protocol is looked up (and its
/// module loaded where allowed) before the socket's state is checked, so `ENOTCONN` means it
/// exists and `ENOENT` that it does not.
pub fn probe() -> KernelTls {
    // SAFETY: a plain socket(2) call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return KernelTls::Unavailable(format!(
            "cannot open a socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let name = b"tls";
    // SAFETY: `name` outlives the call and its length is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    match (rc, error.raw_os_error()) {
        (0, _) | (_, Some(libc::ENOTCONN)) => KernelTls::Available,
        (_, Some(libc::ENOENT)) => KernelTls::Unavailable("the kernel has no tls module".into()),
        _ => KernelTls::Unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answers_and_says_why_when_it_is_missing() {
        match probe() {
            KernelTls::Available => assert!(probe().to_string().starts_with("available")),
            KernelTls::Unavailable(why) => {
                assert!(!why.is_empty());
                assert!(probe().to_string().contains(&why));
            }
        }
    }
}
