//! Runs the measurements in order and renders them as the Markdown tables of BENCHMARKS.md.

use crate::measure::{self, median, percentile, Burst, Idle, Rate, Slow, Transfer};
use crate::setup::Stack;
use crate::Settings;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// Everything measured for one path.
pub struct PathResult {
    pub name: &'static str,
    pub what: &'static str,
    pub pid: Option<u32>,
    pub smtp: Vec<Transfer>,
    pub imap: Vec<Transfer>,
    pub smtp_latency: Vec<f64>,
    pub imap_latency: Vec<f64>,
    pub rate: Option<Rate>,
    pub burst: Option<Burst>,
    pub idle: Option<Idle>,
    pub slow: Option<Slow>,
}

pub struct Expired {
    pub logins: usize,
    pub succeeded: usize,
    pub token_requests: u64,
}

pub struct Results {
    pub bytes: usize,
    pub paths: Vec<PathResult>,
    pub expired: Option<Expired>,
    pub replicas: Option<crate::replicas::Replicas>,
    pub churn: Option<crate::churn::Churn>,
    /// The floor of relaying TLS to plaintext on this machine (s/GiB), measured after the
    /// transfers.
    pub floor: Option<f64>,
    pub codecs: Vec<(String, f64)>,
}

pub(crate) fn err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub(crate) async fn token_requests(stack: &Stack) -> Result<u64, String> {
    let body = crate::upstream::http(stack.token_endpoint, "GET", "/count", "")
        .await
        .map_err(err("token endpoint"))?;
    body.trim()
        .parse()
        .map_err(|_| format!("bad count {body:?}"))
}

pub(crate) async fn control(stack: &Stack, query: &str) -> Result<(), String> {
    crate::upstream::http(
        stack.token_endpoint,
        "POST",
        &format!("/control?{query}"),
        "",
    )
    .await
    .map(drop)
    .map_err(err("token endpoint"))
}

impl Results {
    pub async fn measure(settings: &Settings, stack: &Stack) -> Result<Results, String> {
        let mut paths = vec![
            path(
                "direct",
                "client speaks TLS and XOAUTH2 to the upstream",
                None,
            ),
            path(
                "bare TLS relay",
                "plaintext in, TLS out, bytes copied (a naive tokio-rustls relay)",
                Some(stack.bare.pid()),
            ),
            path(
                "authrelay",
                "LOGIN/AUTH PLAIN in, XOAUTH2 over TLS out",
                Some(stack.authrelay.pid()),
            ),
        ];
        let mut targets = vec![
            stack.direct.clone(),
            stack.bare_target.clone(),
            stack.authrelay_target.clone(),
        ];
        if let (Some((proc, _)), Some(t)) = (&stack.emailproxy, &stack.emailproxy_target) {
            paths.push(path(
                "email-oauth2-proxy",
                "LOGIN/AUTH PLAIN in, XOAUTH2 over TLS out",
                Some(proc.pid()),
            ));
            targets.push(t.clone());
        }
        let body = crate::message(settings.mib << 20);
        let bytes = body.len();

        eprintln!("warm-up: one login and one small transfer per path");
        for (p, t) in paths.iter().zip(&targets) {
            measure::login_latency(t, true, 1)
                .await
                .map_err(err(p.name))?;
            measure::login_latency(t, false, 1)
                .await
                .map_err(err(p.name))?;
        }

        if settings.runs("throughput") {
            eprintln!(
                "throughput: {} x {} MiB SMTP DATA and IMAP FETCH per path, paths alternating",
                settings.repeats, settings.mib
            );
            for _ in 0..settings.repeats {
                for (p, t) in paths.iter_mut().zip(&targets) {
                    p.smtp.push(
                        measure::smtp_transfer(t, &body, p.pid)
                            .await
                            .map_err(err(p.name))?,
                    );
                    let (imap, size) = measure::imap_transfer(t, p.pid)
                        .await
                        .map_err(err(p.name))?;
                    if size as usize != bytes {
                        return Err(format!(
                            "{}: fetched {size} bytes, expected {bytes}",
                            p.name
                        ));
                    }
                    p.imap.push(imap);
                }
            }
        }
        drop(body);
        let floor = settings
            .runs("throughput")
            .then(measure::floor_secs_per_gib);

        for (p, t) in paths
            .iter_mut()
            .zip(&targets)
            .filter(|_| settings.runs("latency"))
        {
            let n = if p.name == "email-oauth2-proxy" {
                settings.emailproxy_latency_logins
            } else {
                settings.latency_logins
            };
            eprintln!(
                "login latency: {n} SMTP and {n} IMAP logins one after another via {}",
                p.name
            );
            p.smtp_latency = measure::login_latency(t, true, n)
                .await
                .map_err(err(p.name))?;
            p.imap_latency = measure::login_latency(t, false, n)
                .await
                .map_err(err(p.name))?;
        }

        for (p, t) in paths
            .iter_mut()
            .zip(&targets)
            .filter(|_| settings.runs("rate"))
        {
            eprintln!(
                "login rate: {} clients for {} s via {}",
                settings.rate_clients, settings.rate_secs, p.name
            );
            p.rate = Some(measure::login_rate(t, settings.rate_clients, settings.rate_secs).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        for (p, t) in paths
            .iter_mut()
            .zip(&targets)
            .skip(1)
            .filter(|_| settings.runs("burst"))
        {
            eprintln!(
                "connect burst: {} SMTP clients at once via {}",
                settings.burst, p.name
            );
            p.burst =
                Some(measure::connect_burst(t.smtp, settings.burst, Duration::from_secs(10)).await);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }

        // Each relay holds a client and an upstream socket per session.
        let idle = settings
            .idle
            .min((stack.nofile.saturating_sub(256) / 2) as usize);
        for (p, t) in paths
            .iter_mut()
            .zip(&targets)
            .skip(1)
            .take(2)
            .filter(|_| settings.runs("idle"))
        {
            eprintln!(
                "idle sessions: {idle} authenticated IMAP sessions via {}",
                p.name
            );
            let pid = p.pid.expect("a relay process");
            p.idle = Some(
                measure::idle_sessions(t, pid, idle)
                    .await
                    .map_err(err(p.name))?,
            );
        }

        if settings.runs("slow") {
            eprintln!(
            "slow reader: {} MiB FETCH read at {:.0} MiB/s via the bare relay and authrelay at once",
            settings.mib,
            settings.slow_rate as f64 / MIB
        );
            let (bare, ours) = tokio::join!(
                measure::slow_reader(&targets[1], paths[1].pid.expect("pid"), settings.slow_rate),
                measure::slow_reader(&targets[2], paths[2].pid.expect("pid"), settings.slow_rate),
            );
            paths[1].slow = Some(bare.map_err(err("bare slow reader"))?);
            paths[2].slow = Some(ours.map_err(err("authrelay slow reader"))?);
        }

        let expired = if settings.runs("expired") {
            Some(expired_burst(settings, stack).await?)
        } else {
            None
        };
        let replicas = if settings.runs("replicas") {
            crate::replicas::measure(settings, stack, &paths[2].imap_latency).await?
        } else {
            None
        };
        let churn = if settings.runs("churn") {
            Some(crate::churn::measure(settings, stack).await?)
        } else {
            None
        };
        Ok(Results {
            bytes,
            paths,
            expired,
            replicas,
            churn,
            floor,
            codecs: settings
                .criterion
                .as_deref()
                .map(read_criterion)
                .unwrap_or_default(),
        })
    }
}

fn path(name: &'static str, what: &'static str, pid: Option<u32>) -> PathResult {
    PathResult {
        name,
        what,
        pid,
        smtp: Vec::new(),
        imap: Vec::new(),
        smtp_latency: Vec::new(),
        imap_latency: Vec::new(),
        rate: None,
        burst: None,
        idle: None,
        slow: None,
    }
}

/// The fresh authrelay gets a token that is already inside its refresh margin (expires_in 605 s,
/// margin 600 s), then `n` clients log in at once while the endpoint takes 300 ms per answer.
async fn expired_burst(settings: &Settings, stack: &Stack) -> Result<Expired, String> {
    eprintln!(
        "expired token: {} simultaneous IMAP logins via a relay whose token expired",
        settings.expired
    );
    control(stack, "expires_in=605").await?;
    measure::login_latency(&stack.fresh_target, false, 1)
        .await
        .map_err(err("fresh authrelay"))?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    control(stack, "expires_in=3600&delay_ms=300").await?;
    let before = token_requests(stack).await?;
    let succeeded = measure::simultaneous_logins(&stack.fresh_target, settings.expired).await;
    let after = token_requests(stack).await?;
    control(stack, "delay_ms=0").await?;
    Ok(Expired {
        logins: settings.expired,
        succeeded,
        token_requests: after - before,
    })
}

/// Criterion's mean estimate for every benchmark under `dir` (target/criterion), in ns.
fn read_criterion(dir: &Path) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let new = entry.path().join("new");
        let read = |f: &str| {
            std::fs::read_to_string(new.join(f))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        };
        if let (Some(b), Some(e)) = (read("benchmark.json"), read("estimates.json")) {
            if let (Some(id), Some(ns)) =
                (b["full_id"].as_str(), e["mean"]["point_estimate"].as_f64())
            {
                out.push((id.to_owned(), ns));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.0} GiB RAM, Linux {}, {rustc}",
        mem_kib as f64 / 1024.0 / 1024.0,
        read("/proc/sys/kernel/osrelease").trim()
    )
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / MIB / secs
}

/// Relay CPU seconds per GiB over every transfer of a path (both protocols).
fn cpu_per_gib(p: &PathResult, bytes: usize) -> Option<f64> {
    p.pid?;
    let cpu: f64 = p.smtp.iter().chain(&p.imap).map(|t| t.relay_cpu).sum();
    let moved = (p.smtp.len() + p.imap.len()) as f64 * bytes as f64;
    Some(cpu / (moved / GIB))
}

/// Relay CPU seconds per GiB of one protocol's transfers: "SMTP / IMAP".
fn cpu_split(p: &PathResult, bytes: usize) -> String {
    let per = |t: &[Transfer]| {
        let cpu: f64 = t.iter().map(|t| t.relay_cpu).sum();
        cpu / (t.len() as f64 * bytes as f64 / GIB)
    };
    format!("{:.2} / {:.2}", per(&p.smtp), per(&p.imap))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

pub fn render(settings: &Settings, stack: &Stack, r: &Results) -> String {
    let mut md = String::new();
    let find = |name: &str| r.paths.iter().find(|p| p.name == name);
    let direct = find("direct").expect("direct path");
    let bare = find("bare TLS relay").expect("bare path");
    let ours = find("authrelay").expect("authrelay path");
    let peer = find("email-oauth2-proxy");
    let med = |v: &[Transfer]| median(&v.iter().map(|t| t.secs).collect::<Vec<_>>());
    let smtp_ratio = med(&direct.smtp) / med(&ours.smtp);
    let imap_ratio = med(&direct.imap) / med(&ours.imap);
    let ours_cpu = cpu_per_gib(ours, r.bytes).unwrap_or(f64::NAN);
    let cpu_ratio = ours_cpu / cpu_per_gib(bare, r.bytes).unwrap_or(f64::NAN);
    let floor_ratio = ours_cpu / r.floor.unwrap_or(f64::NAN);
    let (smtp_vs_bare, imap_vs_bare) = (
        med(&bare.smtp) / med(&ours.smtp),
        med(&bare.imap) / med(&ours.imap),
    );
    let p = |v: &[f64], q: f64| percentile(v, q);
    let added = |proto_smtp: bool, q: f64| {
        let (a, d) = if proto_smtp {
            (&ours.smtp_latency, &direct.smtp_latency)
        } else {
            (&ours.imap_latency, &direct.imap_latency)
        };
        p(a, q) - p(d, q)
    };
    let rate = |x: &PathResult| x.rate.map(|r| r.per_sec).unwrap_or(f64::NAN);
    let _ = writeln!(md, "Machine: {}.", machine());
    let _ = writeln!(
        md,
        "Run: {} mode, {} MiB messages, {} transfer(s) per path and protocol (median shown), {} logins for latency ({} via email-oauth2-proxy), {} clients for {} s for the login rate. email-oauth2-proxy: {}.",
        if settings.quick { "quick (the short form in the test command)" } else { "full" },
        settings.mib,
        settings.repeats,
        settings.latency_logins,
        settings.emailproxy_latency_logins,
        settings.rate_clients,
        settings.rate_secs,
        stack.emailproxy.as_ref().map(|(_, v)| format!("{v} (PyPI), --no-gui, debug off")).unwrap_or_else(|| "not run".into()),
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "### Targets\n");
    let _ = writeln!(md, "| figure | target | measured | |");
    let _ = writeln!(md, "|---|---|---|---|");
    let mut row = |figure: String, target: &str, measured: Option<(String, Option<bool>)>| {
        let (value, ok) = measured.unwrap_or_else(|| ("not measured in this run".into(), None));
        let ok = ok.map(verdict).unwrap_or("");
        let _ = writeln!(md, "| {figure} | {target} | {value} | {ok} |");
    };
    let moved = !ours.smtp.is_empty();
    for (proto, ratio) in [("SMTP DATA", smtp_ratio), ("IMAP FETCH", imap_ratio)] {
        row(
            format!("{proto} throughput, {} MiB, vs direct", settings.mib),
            ">= 0.90x",
            moved.then(|| (format!("{ratio:.2}x"), Some(ratio >= 0.9))),
        );
    }
    row(
        "relay CPU seconds per GiB, vs the bare relay".into(),
        "<= 0.6x",
        moved.then(|| (format!("{cpu_ratio:.2}x"), Some(cpu_ratio <= 0.6))),
    );
    row(
        "relay CPU seconds per GiB, vs the floor measured in this run (AES-GCM + one memcpy per byte)".into(),
        "<= 2x",
        moved.then(|| (format!("{floor_ratio:.2}x"), Some(floor_ratio <= 2.0))),
    );
    row(
        "throughput vs the bare relay, SMTP DATA / IMAP FETCH".into(),
        ">= 1.2x both",
        moved.then(|| {
            let text = format!("{smtp_vs_bare:.2}x / {imap_vs_bare:.2}x");
            (text, Some(smtp_vs_bare >= 1.2 && imap_vs_bare >= 1.2))
        }),
    );
    for (proto, is_smtp) in [("SMTP", true), ("IMAP", false)] {
        let (a50, a99) = (added(is_smtp, 50.0), added(is_smtp, 99.0));
        row(
            format!("{proto} login latency added vs direct, cached token, p50 / p99"),
            "<= 2 ms p50",
            (!ours.imap_latency.is_empty())
                .then(|| (format!("{a50:.2} ms / {a99:.2} ms"), Some(a50 <= 2.0))),
        );
    }
    let logins = ours.rate.map(|_| match peer {
        Some(peer) => {
            let x = rate(ours) / rate(peer);
            let text = format!("{:.0}/s vs {:.1}/s = {x:.0}x", rate(ours), rate(peer));
            (text, Some(x >= 20.0))
        }
        None => (format!("{:.0}/s (peer not run)", rate(ours)), None),
    });
    row(
        format!(
            "IMAP logins per second, {} clients, cached token",
            settings.rate_clients
        ),
        ">= 20x email-oauth2-proxy",
        logins,
    );
    row(
        format!("{} simultaneous connects", settings.burst),
        "100% greeted",
        ours.burst.map(|b| {
            let text = format!(
                "{}/{} greeted, last after {:.0} ms",
                b.greeted, b.n, b.last_ms
            );
            (text, Some(b.greeted == b.n))
        }),
    );
    row(
        format!(
            "{} idle authenticated IMAP sessions",
            ours.idle.map_or(settings.idle, |i| i.sessions)
        ),
        "<= 16 KiB RSS per session",
        ours.idle.map(|i| {
            let text = format!("{:.1} KiB", i.per_session / 1024.0);
            (text, Some(i.per_session <= 16.0 * 1024.0))
        }),
    );
    row(
        format!(
            "slow reader at {:.0} MiB/s while {} MiB are relayed",
            settings.slow_rate as f64 / MIB,
            settings.mib
        ),
        "growth <= 1 MiB",
        ours.slow.map(|s| {
            let text = format!("{:.2} MiB", s.growth as f64 / MIB);
            (text, Some(s.growth as f64 <= MIB))
        }),
    );
    row(
        format!(
            "{} concurrent logins with an expired token",
            settings.expired
        ),
        "exactly 1 token request",
        r.expired.as_ref().map(|e| {
            let text = format!(
                "{} request(s), {}/{} logins succeeded",
                e.token_requests, e.succeeded, e.logins
            );
            (text, Some(e.token_requests == 1 && e.succeeded == e.logins))
        }),
    );
    row(
        "login p99 while other accounts refresh and the store fsyncs".into(),
        "<= 2x the p99 without",
        r.churn.as_ref().map(|c| {
            let x = c.busy.1 / c.steady.1.max(f64::EPSILON);
            let text = format!("{:.2} vs {:.2} ms = {x:.2}x", c.busy.1, c.steady.1);
            (text, Some(x <= 2.0))
        }),
    );
    row(
        "criterion micro-benchmarks of each codec".into(),
        "report ns per command",
        (!r.codecs.is_empty()).then(|| (format!("{} benchmarks, below", r.codecs.len()), None)),
    );

    if let Some(replicas) = &r.replicas {
        md.push_str(&crate::replicas::render(replicas));
    }
    if let Some(churn) = &r.churn {
        md.push_str(&crate::churn::render(churn));
    }
    let _ = writeln!(
        md,
        "\n### Throughput and relay CPU ({} MiB per transfer)\n",
        settings.mib
    );
    let _ = writeln!(md, "| path | what it does | SMTP DATA MiB/s | vs direct | IMAP FETCH MiB/s | vs direct | relay CPU s/GiB, SMTP / IMAP | relay CPU s/GiB | vs bare |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let bare_cpu = cpu_per_gib(bare, r.bytes).unwrap_or(f64::NAN);
    for x in &r.paths {
        let (s, i) = (mbps(r.bytes, med(&x.smtp)), mbps(r.bytes, med(&x.imap)));
        let cpu = cpu_per_gib(x, r.bytes);
        let _ = writeln!(
            md,
            "| {} | {} | {s:.0} | {:.2}x | {i:.0} | {:.2}x | {} | {} | {} |",
            x.name,
            x.what,
            med(&direct.smtp) / med(&x.smtp),
            med(&direct.imap) / med(&x.imap),
            x.pid.map_or_else(|| "-".into(), |_| cpu_split(x, r.bytes)),
            cpu.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
            cpu.map(|c| format!("{:.2}x", c / bare_cpu))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let floor = r.floor.unwrap_or(f64::NAN);
    let ours = r
        .paths
        .iter()
        .find(|p| p.name == "authrelay")
        .and_then(|p| cpu_per_gib(p, r.bytes));
    let _ = writeln!(
        md,
        "\nThe floor, measured in this run: AES-128-GCM opening of 16 KiB records plus one memcpy per byte, one core: {floor:.3} s/GiB; authrelay's relay CPU is {} the floor, the bare relay's {:.2}x.",
        ours.map_or_else(|| "-".into(), |c| format!("{:.2}x", c / floor)),
        bare_cpu / floor,
    );

    let _ = writeln!(
        md,
        "\n### Login latency, cached token (connect to 235 / tagged OK), ms\n"
    );
    let _ = writeln!(
        md,
        "| path | logins | SMTP p50 | SMTP p99 | IMAP p50 | IMAP p99 | IMAP p50 added vs direct |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for x in &r.paths {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:+.2} |",
            x.name,
            x.imap_latency.len(),
            p(&x.smtp_latency, 50.0),
            p(&x.smtp_latency, 99.0),
            p(&x.imap_latency, 50.0),
            p(&x.imap_latency, 99.0),
            p(&x.imap_latency, 50.0) - p(&direct.imap_latency, 50.0),
        );
    }

    let _ = writeln!(
        md,
        "\n### IMAP logins per second ({} concurrent clients, login + LOGOUT, {} s)\n",
        settings.rate_clients, settings.rate_secs
    );
    let _ = writeln!(
        md,
        "| path | logins/s | succeeded | failed | vs email-oauth2-proxy |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for x in &r.paths {
        let Some(rt) = x.rate else { continue };
        let vs = peer
            .map(|pp| format!("{:.1}x", rt.per_sec / rate(pp)))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {vs} |",
            x.name, rt.per_sec, rt.ok, rt.failed
        );
    }

    let _ = writeln!(md, "\n### Connections and memory\n");
    let _ = writeln!(md, "| path | simultaneous connects greeted (10 s wait) | idle IMAP sessions: RSS before / held / after close, per session | slow reader: bytes, seconds, RSS growth |");
    let _ = writeln!(md, "|---|---|---|---|");
    for x in r.paths.iter().skip(1) {
        let b = x
            .burst
            .map(|b| format!("{}/{} (last {:.0} ms)", b.greeted, b.n, b.last_ms))
            .unwrap_or_else(|| "-".into());
        let i = x
            .idle
            .map(|i| {
                format!(
                    "{} sessions: {:.1} / {:.1} / {:.1} MiB, {:.1} KiB (NOOP answered on {})",
                    i.sessions,
                    i.before as f64 / MIB,
                    i.held as f64 / MIB,
                    i.after_close as f64 / MIB,
                    i.per_session / 1024.0,
                    i.noop_checked
                )
            })
            .unwrap_or_else(|| "not measured".into());
        let s = x
            .slow
            .map(|s| {
                format!(
                    "{:.0} MiB in {:.1} s, {:.2} MiB",
                    s.bytes as f64 / MIB,
                    s.secs,
                    s.growth as f64 / MIB
                )
            })
            .unwrap_or_else(|| "not measured".into());
        let _ = writeln!(md, "| {} | {b} | {i} | {s} |", x.name);
    }

    if !r.codecs.is_empty() {
        let _ = writeln!(md, "\n### Codec micro-benchmarks (criterion, mean)\n");
        let _ = writeln!(md, "| benchmark | ns per call |");
        let _ = writeln!(md, "|---|---|");
        for (name, ns) in &r.codecs {
            let _ = writeln!(md, "| {name} | {ns:.0} |");
        }
    }
    md
}

const START: &str = "<!-- generated by benches/run.sh: start -->";
const END: &str = "<!-- generated by benches/run.sh: end -->";

/// Replaces the generated part of `out` (between the markers), keeping the hand-written rest.
pub fn write(out: &Path, generated: &str) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(out).unwrap_or_default();
    let block = format!("{START}\n{generated}\n{END}");
    let text = match (existing.find(START), existing.find(END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{block}{}", &existing[..a], &existing[b + END.len()..])
        }
        _ => format!("# Benchmarks\n\n{block}\n"),
    };
    std::fs::write(out, text)
}
