//! Sockets and TLS: the TLS configurations, address ranges, and the connection type the
//! sessions read and write through. Knows nothing of protocols or accounts.

pub mod cidr;
pub mod conn;
pub mod ktls;
#[cfg(feature = "legacy-tls")]
pub mod legacy_tls;
pub mod pool;
pub mod read_ahead;
pub mod records;
pub mod tls;

/// Every session holds two sockets (client and upstream), so the usual soft limit of 1,024 open
/// files would refuse connections long before `max_connections`. Raise it to the hard limit,
/// as servers do; the hard limit (systemd's LimitNOFILE=, docker's --ulimit) stays the cap.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
