//! Login latency while other accounts refresh and the token store fsyncs. One relay holds the
//! bench account (cached token) and two groups of sixteen other accounts: `steady` ones, whose
//! tokens stay cached, and `due` ones, whose tokens are always due (the token endpoint's
//! `/short/token` issues them for one second, inside the refresh margin), so that every login
//! of one, and the relay's own upkeep, requests a token and writes the store (a sealed file,
//! fsynced). The bench account's logins are timed three times: quiet; while two clients log the
//! steady accounts in, one login each every 10 ms (the same load without refreshes: the
//! baseline, since these two cores are shared by the clients, the relay and the endpoint); and
//! while the same clients log the due accounts in.

use crate::measure::{self, percentile};
use crate::report::{err, token_requests};
use crate::setup::{free_addr, password_target, relay_config, spawn_authrelay, wait_for, Stack};
use crate::Settings;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accounts other than the bench account.
const OTHERS: usize = 16;
/// Clients logging the other accounts in at once, and the pause after each login.
const CHURNERS: usize = 2;
const PAUSE: Duration = Duration::from_millis(10);

/// What the phase measured.
pub struct Churn {
    /// Login latency (ms) of the bench account: p50, p99, quiet, while the steady accounts log
    /// in, and while the due accounts log in (and refresh).
    pub quiet: (f64, f64),
    pub steady: (f64, f64),
    pub busy: (f64, f64),
    pub logins: usize,
    /// Logins of the other accounts, failures among them, and token requests (each one a store
    /// write with fsync) during the churn.
    pub other_logins: u64,
    pub other_failed: u64,
    pub refreshes: u64,
    pub secs: f64,
}

pub async fn measure(settings: &Settings, stack: &Stack) -> Result<Churn, String> {
    let imap = free_addr();
    let dir = stack._dir.path();
    let config = relay_config(
        dir,
        "churn",
        &[("imap", imap, stack.direct.imap)],
        stack.token_endpoint,
        true,
    )?;
    let hash = authrelay::credential::password::hash(&authrelay::secret::Secret::new(
        crate::setup::PASSWORD,
    ))?;
    let mut toml = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    for (group, path) in [("steady", "/token"), ("due", "/short/token")] {
        for i in 0..OTHERS {
            toml += &format!(
                "\n[account.{group}{i}]\nlogin = \"{group}{i}@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"{group}{i}@example.com\"\nprovider = \"custom\"\nclient_id = \"bench-client\"\ntoken_url = \"http://{}{path}\"\nrefresh_token = \"{group}-refresh-token-{i}\"\n",
                stack.token_endpoint
            );
        }
    }
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let mut relay = spawn_authrelay(&config)?;
    wait_for(imap, "authrelay (churn)", &mut relay).await?;
    eprintln!(
        "churn: login latency, quiet and while {OTHERS} other accounts refresh at every login"
    );
    let target = password_target(free_addr(), imap);
    // A p99 needs samples: 1,000 logins (a second or two each way) in the full run.
    let n = if settings.quick {
        settings.latency_logins
    } else {
        settings.latency_logins.max(1000)
    };
    measure::login_latency(&target, false, 3)
        .await
        .map_err(err("churn warm-up"))?;
    let quiet = measure::login_latency(&target, false, n)
        .await
        .map_err(err("churn, quiet"))?;

    let (steady, _) = during_logins_of("steady", imap, n, stack, &target).await?;
    let (busy, load) = during_logins_of("due", imap, n, stack, &target).await?;
    Ok(Churn {
        quiet: (percentile(&quiet, 50.0), percentile(&quiet, 99.0)),
        steady: (percentile(&steady, 50.0), percentile(&steady, 99.0)),
        busy: (percentile(&busy, 50.0), percentile(&busy, 99.0)),
        logins: n,
        other_logins: load.ok,
        other_failed: load.failed,
        refreshes: load.token_requests,
        secs: load.secs,
    })
}

/// What the other accounts' logins did meanwhile.
struct Load {
    ok: u64,
    failed: u64,
    token_requests: u64,
    secs: f64,
}

/// `n` timed logins to `target` while [`CHURNERS`] clients log the accounts of `group` in.
async fn during_logins_of(
    group: &'static str,
    imap: std::net::SocketAddr,
    n: usize,
    stack: &Stack,
    target: &crate::client::Target,
) -> Result<(Vec<f64>, Load), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let before = token_requests(stack).await?;
    let started = Instant::now();
    let mut churners = tokio::task::JoinSet::new();
    for c in 0..CHURNERS {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        churners.spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let mut other = password_target(free_addr(), imap);
                other.auth = crate::client::Auth::Password {
                    user: format!("{group}{}@example.com", i % OTHERS),
                    password: crate::setup::PASSWORD.into(),
                };
                match measure::login_latency(&other, false, 1).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += CHURNERS;
                tokio::time::sleep(PAUSE).await;
            }
        });
    }
    // Every account of the group once (their passwords checked, steady tokens fetched) before
    // timing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let timed = measure::login_latency(target, false, n)
        .await
        .map_err(err(group));
    stop.store(true, Ordering::Relaxed);
    while churners.join_next().await.is_some() {}
    let load = Load {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        token_requests: token_requests(stack).await? - before,
        secs: started.elapsed().as_secs_f64(),
    };
    Ok((timed?, load))
}

/// The phase as a Markdown section.
pub fn render(c: &Churn) -> String {
    format!(
        "\n### Login latency while other accounts refresh\n\n{} IMAP logins of one account with a cached token, one after another: quiet; while two clients log {OTHERS} other accounts with cached tokens in (one login each every 10 ms: the baseline, as the clients share the two cores); and while the same clients log {OTHERS} accounts in whose tokens are always due: {} logins of them ({} failed) in {:.1} s, {} token requests, each one a store write with fsync ({:.0} a second).\n\n| | login p50 | login p99 |\n|---|---|---|\n| quiet | {:.2} ms | {:.2} ms |\n| while others log in, tokens cached | {:.2} ms | {:.2} ms |\n| while others refresh | {:.2} ms | {:.2} ms ({:.2}x the p99 without refreshes) |\n",
        c.logins,
        c.other_logins,
        c.other_failed,
        c.secs,
        c.refreshes,
        c.refreshes as f64 / c.secs.max(f64::EPSILON),
        c.quiet.0,
        c.quiet.1,
        c.steady.0,
        c.steady.1,
        c.busy.0,
        c.busy.1,
        c.busy.1 / c.steady.1.max(f64::EPSILON),
    )
}
