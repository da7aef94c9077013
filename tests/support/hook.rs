//! A webhook receiver for the alert tests: a real HTTP/1.1 server on 127.0.0.1 that records
//! every POST and answers 200, as Slack-, Teams- or ntfy-style receivers do.

use std::time::{Duration, Instant};

/// A webhook receiver on loopback: records each POST's path and body, answers 200.
pub struct Hook {
    pub port: u16,
    pub posts: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Hook {
    pub fn start() -> Hook {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let posts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = posts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut r = std::io::BufReader::new(conn);
                let mut request = String::new();
                let _ = r.read_line(&mut request);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = r.read_exact(&mut body);
                let path = request.split(' ').nth(1).unwrap_or("").to_owned();
                seen.lock()
                    .unwrap()
                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Hook { port, posts }
    }

    /// The bodies received, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let posts = self.posts.lock().unwrap();
        posts
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }

    /// Waits for `event` with `status`; returns how long it took from `since`.
    pub fn wait_for(&self, event: &str, status: &str, since: Instant, wait: Duration) -> Duration {
        let deadline = Instant::now() + wait;
        loop {
            if self
                .events()
                .iter()
                .any(|e| e["event"] == event && e["status"] == status)
            {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "no {event} {status} within {wait:?}: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many events of `event` with `status` arrived.
    pub fn count(&self, event: &str, status: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == event && e["status"] == status)
            .count()
    }
}
