//! Load benchmark: the same SMTP and IMAP work through four paths to one fast upstream, in one
//! run, side by side.
//!
//!   direct      client --TLS, XOAUTH2--> upstream
//!   bare        client --plain, XOAUTH2--> TLS byte relay --TLS--> upstream   (the floor)
//!   authrelay   client --plain, LOGIN/PLAIN--> authrelay --TLS, XOAUTH2--> upstream
//!   emailproxy  client --plain, LOGIN/PLAIN--> email-oauth2-proxy --TLS, XOAUTH2--> upstream
//!
//! Run everything (builds, makes the emailproxy venv, writes BENCHMARKS.md): `bash benches/run.sh`.
//! By hand: `cargo bench --bench load -- [--quick] [--out FILE] [--emailproxy PATH --python PATH]
//! [--criterion DIR]`. Figures are printed, never asserted: the machines are shared and noisy.
//!
//! The same executable is also the upstream (`load upstream ...`) and the bare relay (`load bare
//! ...`), started as child processes so that each one's CPU and memory are its own.

mod bare;
mod churn;
mod client;
mod io;
mod measure;
mod replicas;
mod report;
mod setup;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;

/// The message every transfer moves: exactly `bytes` long (at least 2), 77-byte lines, no line
/// starting with a dot, ending with CRLF.
pub fn message(bytes: usize) -> Vec<u8> {
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";
    let body = bytes.max(2) - 2;
    let mut m = Vec::with_capacity(bytes);
    while m.len() + line.len() <= body {
        m.extend_from_slice(line);
    }
    m.resize(body, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

/// How much work each measurement does.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub mib: usize,
    pub repeats: usize,
    pub latency_logins: usize,
    pub emailproxy_latency_logins: usize,
    pub rate_clients: usize,
    pub rate_secs: f64,
    pub burst: usize,
    pub idle: usize,
    pub slow_rate: u64,
    pub expired: usize,
    pub out: Option<PathBuf>,
    pub emailproxy: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub criterion: Option<PathBuf>,
    /// Only this phase (throughput, latency, rate, burst, idle, slow, expired, replicas, churn),
    /// for profiling.
    pub only: Option<String>,
}

impl Settings {
    pub fn runs(&self, phase: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == phase)
    }
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut s = Settings {
            quick,
            mib: 100,
            repeats: 3,
            latency_logins: 300,
            emailproxy_latency_logins: 30,
            rate_clients: 64,
            rate_secs: 10.0,
            burst: 1000,
            idle: 10_000,
            slow_rate: 1 << 20,
            expired: 1000,
            out: None,
            emailproxy: None,
            python: None,
            criterion: None,
            only: None,
        };
        if quick {
            // Small enough for the test command; the same phases, paths and checks.
            s.mib = 8;
            s.repeats = 1;
            s.latency_logins = 30;
            s.emailproxy_latency_logins = 5;
            s.rate_secs = 2.0;
            s.burst = 200;
            s.idle = 300;
            s.slow_rate = 8 << 20;
            s.expired = 200;
        }
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--quick" | "--bench" => {}
                "--out" => s.out = Some(value("--out")?.into()),
                "--emailproxy" => s.emailproxy = Some(value("--emailproxy")?.into()),
                "--python" => s.python = Some(value("--python")?.into()),
                "--criterion" => s.criterion = Some(value("--criterion")?.into()),
                "--only" => s.only = Some(value("--only")?),
                "--repeats" => {
                    s.repeats = value("--repeats")?
                        .parse()
                        .map_err(|_| "--repeats needs a number")?
                }
                "--mib" => {
                    s.mib = value("--mib")?
                        .parse()
                        .map_err(|_| "--mib needs a number")?
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(s)
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match args.first().map(String::as_str) {
        // Child processes: `load upstream CERT KEY SMTP IMAP TOKEN BYTES`, `load bare CA L U [L U]`.
        Some("upstream") => {
            let a = &args[1..];
            let result = runtime.block_on(upstream::run(
                a[0].as_ref(),
                a[1].as_ref(),
                addr(&a[2]),
                addr(&a[3]),
                addr(&a[4]),
                a[5].parse().expect("a size"),
            ));
            if let Err(e) = result {
                eprintln!("upstream: {e}");
                std::process::exit(1);
            }
        }
        Some("bare") => {
            let pairs = args[2..]
                .chunks(2)
                .map(|p| (addr(&p[0]), addr(&p[1])))
                .collect();
            if let Err(e) = runtime.block_on(bare::run(args[1].as_ref(), pairs)) {
                eprintln!("bare relay: {e}");
                std::process::exit(1);
            }
        }
        _ if !args.iter().any(|a| a == "--bench") => {
            // `cargo test --all-targets` runs bench binaries without --bench: nothing to check.
            println!("load: run with `cargo bench --bench load` (or benches/run.sh)");
        }
        _ => {
            let settings = match Settings::parse(&args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("load: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = runtime.block_on(run(settings)) {
                eprintln!("load: {e}");
                std::process::exit(1);
            }
        }
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let stack = setup::Stack::start(&settings).await?;
    let results = report::Results::measure(&settings, &stack).await?;
    let markdown = report::render(&settings, &stack, &results);
    println!("{markdown}");
    if let Some(out) = &settings.out {
        report::write(out, &markdown).map_err(|e| format!("{}: {e}", out.display()))?;
        println!("written to {}", out.display());
    }
    Ok(())
}
