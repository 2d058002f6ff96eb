//! Memory per (SLO, region) series, measured from outside: the `VmRSS` difference
//! between two runs of the release daemon whose configurations differ only in their
//! SLOs, fed the same OTLP traffic, scraped and browsed the same way.
//!
//! Each round starts `target/release/sloxide` once with no SLO (run A) and once for
//! each size N (run B): N availability and latency SLOs of 30 days, spread over the
//! services of the traffic. The traffic puts every service in every one of R regions,
//! so run B has N x R (SLO, region) series. After the traffic (a few requests per
//! region over a few seconds), each run waits out a few ticks, scrapes `/metrics`
//! three times (once as OpenMetrics), loads the status list `GET /` twice (gzipped, as
//! a browser takes it, and plain) and one detail page, waits for two more ticks, then
//! reads `VmRSS` (and the peak, `VmHWM`) from `/proc/<pid>/status`. No data directory: nothing is
//! checkpointed. The order of the runs in a round is rotated every round.
//!
//! It prints, per size, (RSS_B - RSS_A) / (N x R) for every round and its median, and
//! the slope between the sizes, (RSS_B(N2) - RSS_B(N1)) / ((N2 - N1) x R), which no
//! fixed offset enters.
//!
//! ```sh
//! cargo build --release --bin sloxide
//! cargo run --example slo_memory -- --rounds 5 --slos 100,400 --regions 10
//! ```
//!
//! All traffic goes to 127.0.0.1; every wait is bounded.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use sloxide::fixture::{self, Shape};

#[derive(Debug, Parser)]
struct Args {
    /// The daemon to measure.
    #[arg(long, default_value = "target/release/sloxide")]
    binary: PathBuf,
    /// Rounds (pairs of runs per size).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// SLO counts of the B runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,400")]
    slos: Vec<usize>,
    /// Regions every service (and so every SLO) is seen in.
    #[arg(long, default_value_t = 10)]
    regions: usize,
    /// Services in the traffic; the SLOs are spread over them.
    #[arg(long, default_value_t = 20)]
    services: usize,
    /// Seconds of traffic (one round of requests per second).
    #[arg(long, default_value_t = 3)]
    traffic_secs: u64,
    /// Keep each run's configuration file and log in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    rss_kb: u64,
    /// `VmHWM`: the peak resident set, traffic, scrapes and pages included.
    hwm_kb: u64,
    metrics_bytes: usize,
    list_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bin sloxide`",
            args.binary.display()
        );
    }
    let dir = match &args.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sloxide-slo-memory-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let bodies = traffic(&args, unix_nanos());
    println!(
        "{} services x {} regions, {} requests of {} B per second for {} s; sizes {:?} SLOs",
        args.services,
        args.regions,
        bodies.len(),
        bodies.first().map_or(0, Vec::len),
        args.traffic_secs,
        args.slos
    );
    // Every round: A, then each size, rotated.
    let sizes: Vec<usize> = std::iter::once(0)
        .chain(args.slos.iter().copied())
        .collect();
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); sizes.len()];
    for round in 0..args.rounds {
        for k in 0..sizes.len() {
            let i = (k + round) % sizes.len();
            let run = run_once(&args, &dir, sizes[i], round)?;
            println!(
                "round {round} slos {:>4}: VmRSS {} kB, VmHWM {} kB, /metrics {} B, / {} B",
                sizes[i], run.rss_kb, run.hwm_kb, run.metrics_bytes, run.list_bytes
            );
            results[i].push(run);
        }
    }
    println!();
    let base: Vec<u64> = results[0].iter().map(|r| r.rss_kb).collect();
    println!("A (0 SLOs): VmRSS median {} kB {:?}", median(&base), base);
    for (i, &n) in sizes.iter().enumerate().skip(1) {
        let series = (n * args.regions) as f64;
        let per: Vec<f64> = results[i]
            .iter()
            .zip(&results[0])
            .map(|(b, a)| (b.rss_kb as f64 - a.rss_kb as f64) * 1024.0 / series)
            .collect();
        let peak: Vec<f64> = results[i]
            .iter()
            .zip(&results[0])
            .map(|(b, a)| (b.hwm_kb as f64 - a.hwm_kb as f64) * 1024.0 / series)
            .collect();
        let rss: Vec<u64> = results[i].iter().map(|r| r.rss_kb).collect();
        println!(
            "B ({n} SLOs, {} series): VmRSS median {} kB; per (SLO, region) median {:.0} B, rounds {:?}; peak (VmHWM) per (SLO, region) median {:.0} B, rounds {:?}; /metrics {} B ({:.0} B per series), / {} B ({:.0} B per series)",
            n * args.regions,
            median(&rss),
            median_f(&per),
            per.iter().map(|v| v.round()).collect::<Vec<_>>(),
            median_f(&peak),
            peak.iter().map(|v| v.round()).collect::<Vec<_>>(),
            results[i][0].metrics_bytes,
            (results[i][0].metrics_bytes as f64 - results[0][0].metrics_bytes as f64) / series,
            results[i][0].list_bytes,
            (results[i][0].list_bytes as f64 - results[0][0].list_bytes as f64) / series,
        );
    }
    for w in (1..sizes.len()).collect::<Vec<_>>().windows(2) {
        let (lo, hi) = (w[0], w[1]);
        let d = ((sizes[hi] - sizes[lo]) * args.regions) as f64;
        let slope: Vec<f64> = results[hi]
            .iter()
            .zip(&results[lo])
            .map(|(b, a)| (b.rss_kb as f64 - a.rss_kb as f64) * 1024.0 / d)
            .collect();
        println!(
            "slope {} -> {} SLOs: median {:.0} B per (SLO, region), rounds {:?}",
            sizes[lo],
            sizes[hi],
            median_f(&slope),
            slope.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// One request per region, each holding every service with events ending at `now`
/// (Unix nanoseconds): a tenth of them errors, latencies from 1 ms to about 1 s.
fn traffic(args: &Args, now: u64) -> Vec<Vec<u8>> {
    (0..args.regions)
        .map(|r| {
            fixture::traces(&Shape {
                resources: args.services,
                per_resource: 20,
                services: args.services,
                service_names: Vec::new(),
                regions: vec![format!("region-{r}")],
                error_every: 10,
                end_unix_nanos: now,
            })
            .encode_to_vec()
        })
        .collect()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The configuration of a run: everything on loopback, no data directory, and `slos`
/// SLOs (half availability, half latency) over the services of the traffic.
fn config(ports: &Ports, slos: usize, services: usize) -> String {
    let mut yaml = format!(
        "listen:\n  otlp_grpc: {}\n  otlp_http: {}\n  metrics: {}\nstate:\n  data_dir: null\n",
        ports.grpc, ports.http, ports.metrics
    );
    if slos == 0 {
        yaml.push_str("slos: []\n");
        return yaml;
    }
    yaml.push_str("slos:\n");
    for i in 0..slos {
        let service = i % services;
        let indicator = if i % 2 == 0 {
            "{availability: {}}"
        } else {
            "{latency: {threshold: 300ms}}"
        };
        yaml.push_str(&format!(
            "  - {{name: slo-{i}, service: service-{service}, objective: 99.9, period: 30d, indicator: {indicator}}}\n"
        ));
    }
    yaml
}

#[derive(Debug)]
struct Ports {
    grpc: SocketAddr,
    http: SocketAddr,
    metrics: SocketAddr,
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// Kills the daemon when the run ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_once(args: &Args, dir: &Path, slos: usize, round: usize) -> anyhow::Result<Run> {
    let ports = Ports {
        grpc: free_port()?,
        http: free_port()?,
        metrics: free_port()?,
    };
    let file = dir.join(format!("slos-{slos}-round-{round}.yaml"));
    std::fs::write(&file, config(&ports, slos, args.services))?;
    let log = std::fs::File::create(dir.join(format!("slos-{slos}-round-{round}.log")))?;
    let daemon = Daemon(
        Command::new(&args.binary)
            .arg("--config")
            .arg(&file)
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", args.binary.display()))?,
    );
    let pid = daemon.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = get(ports.metrics, "/readyz", &[]) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the daemon did not get ready in 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The traffic: every region's request once a second, with events of that second.
    for _ in 0..args.traffic_secs {
        let started = Instant::now();
        for body in &traffic(args, unix_nanos()) {
            let code = post(ports.http, "/v1/traces", body)?;
            if code != 200 {
                bail!("POST /v1/traces answered {code}");
            }
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    }
    // Ticks, then what an operator's Prometheus and browser do.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut metrics_bytes = 0;
    for accept in [
        "text/plain",
        "application/openmetrics-text; version=1.0.0",
        "text/plain",
    ] {
        let (code, body) = get(ports.metrics, "/metrics", &[("Accept", accept)])?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        metrics_bytes = body.len();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, _) = get(ports.metrics, "/", &[("Accept-Encoding", "gzip")])?;
    let (code, list) = get(ports.metrics, "/", &[])?;
    if code != 200 {
        bail!("GET / answered {code}");
    }
    if slos > 0 {
        let (code, _) = get(ports.metrics, "/slo/slo-0", &[("Accept-Encoding", "gzip")])?;
        if code != 200 {
            bail!("GET /slo/slo-0 answered {code}");
        }
    }
    std::thread::sleep(Duration::from_millis(2_000));
    let rss_kb = status_kb(pid, "VmRSS:")?;
    let hwm_kb = status_kb(pid, "VmHWM:")?;
    drop(daemon);
    Ok(Run {
        rss_kb,
        hwm_kb,
        metrics_bytes,
        list_bytes: list.len(),
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/PID/status"))
}

/// An HTTP/1.1 request on its own connection; the status code and the body.
fn request(
    addr: SocketAddr,
    head: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{head} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&answer[..split])?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let mut body = answer[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((code, body))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line])?.trim(), 16)?;
        data = &data[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).context("short chunk")?;
    }
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, Vec<u8>)> {
    request(addr, &format!("GET {path}"), headers, &[])
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<u16> {
    let (code, _) = request(
        addr,
        &format!("POST {path}"),
        &[("Content-Type", "application/x-protobuf")],
        body,
    )?;
    Ok(code)
}

fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

fn median_f(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}
