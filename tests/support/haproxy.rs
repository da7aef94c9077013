//! HAProxy (Debian's `haproxy`) in front of relays, as a load balancer does it: TCP mode,
//! round robin, each connection introduced with a PROXY protocol v2 header.

use super::interop::{free_port, KillOnDrop};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running HAProxy and the port it listens on.
pub struct Haproxy {
    pub port: u16,
    _process: KillOnDrop,
    _dir: tempfile::TempDir,
}

/// HAProxy on 127.0.0.1, balancing over the relays listening on `backends`; returns once it
/// accepts.
pub fn haproxy(backends: &[u16]) -> Haproxy {
    let port = free_port();
    let mut cfg = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend smtp\n  bind 127.0.0.1:{port}\n  default_backend relays\nbackend relays\n  balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("  server r{i} 127.0.0.1:{b} send-proxy-v2\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let process = KillOnDrop(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy {
        port,
        _process: process,
        _dir: dir,
    }
}
