//! Replicas sharing a Redis store (`[store] backend = "redis"`, Debian's redis-server): the
//! login latency of one replica against the file-store relay of the same run, and the refresh
//! storm: three replicas whose shared token is inside its refresh margin, `expired` logins
//! spread over them at once while the token endpoint takes 300 ms per answer. Skipped (and
//! said so) where redis-server is not installed.

use crate::measure::{self, percentile};
use crate::report::{control, err, token_requests};
use crate::setup::{
    die_with_parent, free_addr, password_target, relay_config_with, spawn_authrelay, wait_for,
    Proc, Stack,
};
use crate::Settings;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the replicas phase measured.
pub struct Replicas {
    /// Login latency (ms) of the file-store relay and of a Redis-store replica: p50, p99.
    pub file: (f64, f64),
    pub redis: (f64, f64),
    pub storm_logins: usize,
    pub storm_succeeded: usize,
    pub storm_requests: u64,
    pub storm_secs: f64,
}

/// Runs the phase; `None` without redis-server.
pub async fn measure(
    settings: &Settings,
    stack: &Stack,
    file_latency: &[f64],
) -> Result<Option<Replicas>, String> {
    let port = free_addr().port();
    let Ok(child) = die_with_parent(&mut Command::new("redis-server"))
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("replicas: redis-server is not installed; skipped");
        return Ok(None);
    };
    let mut redis = Proc(child);
    // Listening before any other port is picked: the port was free when chosen, and the next
    // free_addr() could otherwise be handed the same one again.
    let redis_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(redis_addr, "redis-server", &mut redis).await?;
    eprintln!("replicas: three authrelay processes sharing redis-server on port {port}");
    // The token the first replica fetches at start is inside its refresh margin (600 s) within
    // five seconds: the storm below finds it due.
    control(stack, "expires_in=605").await?;
    let store = format!("backend = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"\n");
    let mut replicas = Vec::new();
    let mut targets = Vec::new();
    for i in 0..3 {
        let imap = free_addr();
        // The stack's directory: its CA and store key are there.
        let config = relay_config_with(
            stack._dir.path(),
            &format!("replica{i}"),
            &[("imap", imap, stack.direct.imap)],
            stack.token_endpoint,
            true,
            &store,
        )?;
        let mut proc = spawn_authrelay(&config)?;
        wait_for(imap, "authrelay (replica)", &mut proc).await?;
        replicas.push(proc);
        targets.push(password_target(free_addr(), imap));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    control(stack, "expires_in=3600&delay_ms=300").await?;
    let before = token_requests(stack).await?;
    let started = Instant::now();
    let per = settings.expired / 3;
    let (a, b, c) = tokio::join!(
        measure::simultaneous_logins(&targets[0], per),
        measure::simultaneous_logins(&targets[1], per),
        measure::simultaneous_logins(&targets[2], settings.expired - 2 * per),
    );
    let storm_secs = started.elapsed().as_secs_f64();
    let after = token_requests(stack).await?;
    control(stack, "delay_ms=0").await?;
    // Login latency with the token cached: a replica on Redis, and the file-store relay of this
    // run, measured one after the other.
    let n = settings.latency_logins;
    let mut redis = measure::login_latency(&targets[0], false, n)
        .await
        .map_err(err("replica"))?;
    redis.sort_by(f64::total_cmp);
    let mut file = if file_latency.is_empty() {
        measure::login_latency(&stack.authrelay_target, false, n)
            .await
            .map_err(err("authrelay"))?
    } else {
        file_latency.to_vec()
    };
    file.sort_by(f64::total_cmp);
    Ok(Some(Replicas {
        file: (percentile(&file, 50.0), percentile(&file, 99.0)),
        redis: (percentile(&redis, 50.0), percentile(&redis, 99.0)),
        storm_logins: settings.expired,
        storm_succeeded: a + b + c,
        storm_requests: after - before,
        storm_secs,
    }))
}

/// The phase as a Markdown section.
pub fn render(r: &Replicas) -> String {
    format!(
        "\n### Replicas sharing a Redis store\n\n| | login p50 | login p99 |\n|---|---|---|\n| authrelay, file store | {:.2} ms | {:.2} ms |\n| authrelay replica, Redis store | {:.2} ms | {:.2} ms ({:.2}x the file store's p99) |\n\nRefresh storm: {} IMAP logins at once spread over three replicas whose shared token is due, the token endpoint answering in 300 ms: {} logged in, {} token request(s), {:.2} s.\n",
        r.file.0,
        r.file.1,
        r.redis.0,
        r.redis.1,
        r.redis.1 / r.file.1.max(f64::EPSILON),
        r.storm_logins,
        r.storm_succeeded,
        r.storm_requests,
        r.storm_secs,
    )
}
