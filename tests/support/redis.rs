//! A redis-server of the test's own (Debian's package, installed by tests/harness/start.sh) on
//! an ephemeral loopback port, with an ACL user for the relay; stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The relay's ACL user and its password (a canary: it must never appear in a log).
pub const REDIS_USER: &str = "authrelay";
pub const REDIS_PASSWORD: &str = "redis-acl-canary-7788";

pub struct RedisServer {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
    /// A file holding [`REDIS_PASSWORD`], for `password_file`.
    pub password_file: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_tcp_port();
        let password_file = dir.path().join("redis-password");
        std::fs::write(&password_file, REDIS_PASSWORD).unwrap();
        let mut server = RedisServer {
            port,
            child: Self::spawn(port, dir.path()),
            dir,
            password_file,
        };
        server.wait_ready();
        server
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--user", "default", "on", "nopass", "~*", "&*", "+@all"])
            .args([
                "--user",
                REDIS_USER,
                "on",
                &format!(">{REDIS_PASSWORD}"),
                "~authrelay:*",
                "&*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server (Debian's redis-server package; tests/harness/start.sh installs it)",
            )
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` as the default user.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key with its value (strings, and hashes field by field), for secret scans.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for key in self.cli(&["--scan"]).lines() {
            let kind = self.cli(&["TYPE", key]);
            let value = match kind.trim() {
                "hash" => self.cli(&["HGETALL", key]),
                "string" => self.cli(&["GET", key]),
                "zset" => self.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
                other => format!("({other})"),
            };
            out.push_str(&format!("{key} = {value}\n"));
        }
        out
    }

    /// Stops the server (kill -9) and starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready();
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
