//! The measurements: each drives clients against one path and returns figures; nothing here
//! judges them (the report compares against the targets).

use crate::client::{self, Target};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A process's resident set, in bytes.
pub fn rss(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// A process's CPU time (user + system, all threads, including exited ones), in seconds.
pub fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

/// One transfer: wall seconds and the relay's CPU seconds during it.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub secs: f64,
    pub relay_cpu: f64,
}

/// Sends `body` as one message over a fresh authenticated session.
pub async fn smtp_transfer(
    t: &Target,
    body: &[u8],
    relay: Option<u32>,
) -> std::io::Result<Transfer> {
    let mut c = client::smtp_login(t).await?;
    let cpu0 = relay.map(cpu).unwrap_or(0.0);
    let took = client::smtp_send(&mut c, &t.sender, body).await?;
    let relay_cpu = relay.map(cpu).unwrap_or(0.0) - cpu0;
    client::smtp_quit(c).await;
    Ok(Transfer {
        secs: took.as_secs_f64(),
        relay_cpu,
    })
}

/// Fetches the upstream's message over a fresh authenticated session.
pub async fn imap_transfer(t: &Target, relay: Option<u32>) -> std::io::Result<(Transfer, u64)> {
    let mut c = client::imap_login(t).await?;
    let cpu0 = relay.map(cpu).unwrap_or(0.0);
    let (took, size) = client::imap_fetch(&mut c, None).await?;
    let relay_cpu = relay.map(cpu).unwrap_or(0.0) - cpu0;
    client::imap_logout(c).await;
    Ok((
        Transfer {
            secs: took.as_secs_f64(),
            relay_cpu,
        },
        size,
    ))
}

/// Login latencies in milliseconds (connect to the success reply), `n` logins one after another.
pub async fn login_latency(t: &Target, smtp: bool, n: usize) -> std::io::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        if smtp {
            let c = client::smtp_login(t).await?;
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            client::smtp_quit(c).await;
        } else {
            let c = client::imap_login(t).await?;
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            client::imap_logout(c).await;
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// IMAP logins (each followed by LOGOUT) by `clients` concurrent clients for `secs` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_sec: f64,
    pub ok: u64,
    pub failed: u64,
}

pub async fn login_rate(t: &Target, clients: usize, secs: f64) -> Rate {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (t, ok, failed) = (t.clone(), ok.clone(), failed.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let attempt =
                    tokio::time::timeout(Duration::from_secs(30), client::imap_login(&t)).await;
                match attempt {
                    Ok(Ok(c)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        client::imap_logout(c).await;
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let ok = ok.load(Ordering::Relaxed);
    Rate {
        per_sec: ok as f64 / started.elapsed().as_secs_f64(),
        ok,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// `n` clients connect at the same moment; how many read a greeting within `wait`, and when
/// the last of them did.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub greeted: usize,
    pub n: usize,
    pub last_ms: f64,
}

pub async fn connect_burst(addr: std::net::SocketAddr, n: usize, wait: Duration) -> Burst {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..n {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let greeted = tokio::time::timeout(wait, async {
                let mut c = client::connect(addr, None).await?;
                let mut line = Vec::new();
                let got = crate::io::read_line(&mut c, &mut line).await?;
                Ok::<_, std::io::Error>((got, c))
            })
            .await;
            match greeted {
                Ok(Ok((true, c))) => Some((started.elapsed(), c)),
                _ => None,
            }
        });
    }
    let mut held = Vec::new();
    let mut last = Duration::ZERO;
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some((at, c))) = r {
            last = last.max(at);
            held.push(c);
        }
    }
    Burst {
        greeted: held.len(),
        n,
        last_ms: last.as_secs_f64() * 1e3,
    }
}

/// `n` authenticated IMAP sessions left idle: the relay's resident memory per session.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub sessions: usize,
    pub before: u64,
    pub held: u64,
    pub after_close: u64,
    pub per_session: f64,
    pub noop_checked: usize,
}

pub async fn idle_sessions(t: &Target, pid: u32, n: usize) -> std::io::Result<Idle> {
    // Warm up: the first sessions fill caches and the allocator's arenas.
    for _ in 0..8 {
        client::imap_logout(client::imap_login(t).await?).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (t, gate) = (t.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("open");
            client::imap_login(&t).await
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        conns.push(r.expect("task")?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss(pid);
    // The sessions are real: every 100th answers a NOOP through the relay.
    let mut noop_checked = 0;
    for c in conns.iter_mut().step_by(100) {
        client::imap_noop(c).await?;
        noop_checked += 1;
    }
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Idle {
        sessions: n,
        before,
        held,
        after_close: rss(pid),
        per_session: held.saturating_sub(before) as f64 / n as f64,
        noop_checked,
    })
}

/// A client reading a FETCH at `rate` bytes per second: the relay's peak memory growth.
#[derive(Debug, Clone, Copy)]
pub struct Slow {
    pub bytes: u64,
    pub secs: f64,
    pub growth: u64,
}

pub async fn slow_reader(t: &Target, pid: u32, rate: u64) -> std::io::Result<Slow> {
    let mut c = client::imap_login(t).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let result = client::imap_fetch(&mut c, Some(rate)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let (took, bytes) = result?;
    client::imap_logout(c).await;
    Ok(Slow {
        bytes,
        secs: took.as_secs_f64(),
        growth: peak.load(Ordering::Relaxed).saturating_sub(before),
    })
}

/// `n` IMAP logins at once; how many succeeded (within 60 s each).
pub async fn simultaneous_logins(t: &Target, n: usize) -> usize {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (t, barrier) = (t.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            tokio::time::timeout(Duration::from_secs(60), client::imap_login(&t)).await
        });
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Ok(Ok(c))) = r {
            held.push(c);
        }
    }
    held.len()
}

/// The floor of relaying TLS to plaintext, measured on this machine: AES-128-GCM opening of
/// 16 KiB records (what every byte from a TLS upstream costs) plus one memcpy per byte (the
/// plaintext to the client's socket buffer), single-threaded, in CPU seconds per GiB.
pub fn floor_secs_per_gib() -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
    const RECORD: usize = 16 * 1024;
    const TOTAL: usize = 64 << 20;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).expect("a key"));
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    // Sealed records, as they arrive from the upstream.
    let mut records: Vec<Vec<u8>> = (0..TOTAL / RECORD)
        .map(|i| {
            let mut r = vec![(i % 251) as u8; RECORD];
            key.seal_in_place_append_tag(nonce(i), Aad::empty(), &mut r)
                .expect("seal");
            r
        })
        .collect();
    let mut out = vec![0u8; RECORD];
    let started = std::time::Instant::now();
    for (i, r) in records.iter_mut().enumerate() {
        let plain = key.open_in_place(nonce(i), Aad::empty(), r).expect("open");
        out.copy_from_slice(plain);
        std::hint::black_box(&out);
    }
    started.elapsed().as_secs_f64() * (1u64 << 30) as f64 / TOTAL as f64
}
