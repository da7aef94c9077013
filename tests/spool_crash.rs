//! kill -9 during a burst of commits: every message the spool acknowledged is in the queue,
//! whole, after the next open. The child is this test binary run again in the child role; it
//! prints each acknowledged ID with a digest of its bytes, and the parent kills it at a random
//! moment.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "AUTHRELAY_SPOOL_CRASH_CHILD";

fn digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn message(n: u64) -> Vec<u8> {
    let mut m = format!("Subject: crash test {n}\r\n\r\n").into_bytes();
    m.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, 20_000));
    m.extend_from_slice(b"\r\n");
    m
}

/// The child: 16 writers commit messages as fast as they can and print each acknowledgement.
async fn child(dir: &str) {
    let spool = authrelay::spool::Spool::open(std::path::Path::new(dir)).unwrap();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (spool, counter) = (spool.clone(), counter.clone());
            tokio::spawn(async move {
                loop {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let id = authrelay::spool::new_id();
                    let envelope = authrelay::spool::Envelope {
                        id: id.clone(),
                        account: "crash".into(),
                        sender: "a@example.com".into(),
                        recipients: vec!["b@example.com".into()],
                        arrived: 0,
                        client: "127.0.0.1".into(),
                        bounce: false,
                    };
                    let body = message(n);
                    let mut m = spool.begin(&envelope).await.unwrap();
                    m.write(&body).await.unwrap();
                    m.commit().await.unwrap();
                    println!("ACK {id} {}", digest(&body));
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.await;
    }
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(child(&dir));
        return;
    }
    let rounds = 12;
    let (mut acked_total, mut found_total, mut extra_total) = (0, 0, 0);
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "every_acknowledged_message_survives_kill_9",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(150 + (round * 97 % 500));
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (id, sha) = rest.split_once(' ').unwrap();
                    acked.push((id.to_owned(), sha.to_owned()));
                }
            }
            acked
        });
        while started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(10));
        }
        // SIGKILL: no destructor, no flush, no goodbye.
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        let spool = authrelay::spool::Spool::open(dir.path()).unwrap();
        let queued = spool.queued().unwrap();
        for (id, sha) in &acked {
            let (_, bytes) = spool
                .read(id)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged {id} lost: {e}"));
            assert_eq!(&digest(&bytes), sha, "round {round}: {id} damaged");
        }
        acked_total += acked.len();
        found_total += queued.len();
        extra_total += queued.len() - acked.len();
    }
    println!(
        "{rounds} rounds of kill -9: {acked_total} acknowledged, all found whole; {found_total} queued in all ({extra_total} committed but killed before their acknowledgement was printed)"
    );
    assert!(acked_total > 0);
}
