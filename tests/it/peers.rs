//! The test Collector (`tests/peers/otelcol`, built by `tests/peers/otelcol/build.sh`) as
//! a running peer, and the Python sender of a mixed load (`tests/e2e/send_mix.py`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::require;
use crate::prometheus::free_port;

/// The test Collector binary: `$SLOXIDE_OTELCOL`, or where `build.sh` puts it.
pub fn otelcol_binary() -> Option<PathBuf> {
    let path = match std::env::var_os("SLOXIDE_OTELCOL") {
        Some(path) => PathBuf::from(path),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("peers/otelcol-sloxide-test")
        }
    };
    path.is_file().then_some(path)
}

/// True when the test Collector is built (else SKIPPED, or a failure under
/// SLOXIDE_REQUIRE_E2E=1).
pub fn otelcol_available() -> bool {
    require(
        otelcol_binary().is_some(),
        "the test Collector (bash tests/peers/otelcol/build.sh)",
    )
}

/// A running Collector with an `otlp` receiver on loopback; stopped with SIGTERM (then
/// killed) when dropped.
pub struct Collector {
    child: Child,
    dir: tempfile::TempDir,
    /// Where its `otlp` receiver takes OTLP/gRPC.
    pub grpc: SocketAddr,
}

impl Collector {
    /// Starts the Collector with `exporters` (the YAML body of the `exporters:` map,
    /// indented by two spaces) and a traces pipeline otlp → batch → `traces_to`, and
    /// waits until it is ready.
    pub fn start(exporters: &str, traces_to: &[&str]) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: \"{grpc}\"}}\n\
             processors:\n  batch: {{timeout: 200ms}}\n\
             exporters:\n{exporters}\n\
             service:\n  telemetry:\n    metrics: {{level: none}}\n    logs: {{level: info}}\n  \
             pipelines:\n    traces: {{receivers: [otlp], processors: [batch], exporters: [{}]}}\n",
            traces_to.join(", ")
        );
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("otelcol.yaml");
        std::fs::write(&config_path, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("otelcol.log")).unwrap();
        let child = Command::new(otelcol_binary().expect("the test Collector is built"))
            .arg(format!("--config={}", config_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the test Collector starts");
        let mut collector = Self { child, dir, grpc };
        collector.wait_ready(&config);
        collector
    }

    /// Waits (at most 30 s) for "Everything is ready" in the log.
    fn wait_ready(&mut self, config: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the Collector exited with {status}:\n{}\nconfig:\n{config}",
                    self.log()
                );
            }
            if self.log().contains("Everything is ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the Collector was not ready within 30 s:\n{}\nconfig:\n{config}",
            self.log()
        );
    }

    /// What the Collector logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("otelcol.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (at most 60 s) for it to drain its queues and exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "the Collector exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the Collector did not stop within 60 s:\n{}", self.log());
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `send_mix.py` sent: span counts per (service, region, kind, status).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sent {
    /// Spans in all.
    pub total: u64,
    /// Spans per `[service, region, span_kind, status_code]`.
    pub counts: BTreeMap<[String; 4], u64>,
}

impl Sent {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Sent) {
        self.total += other.total;
        for (key, n) in &other.counts {
            *self.counts.entry(key.clone()).or_default() += n;
        }
    }

    /// The services among the counts.
    pub fn services(&self) -> std::collections::BTreeSet<String> {
        self.counts.keys().map(|k| k[0].clone()).collect()
    }
}

/// Runs `tests/e2e/send_mix.py` with `args` (over OTLP/gRPC to `endpoint`) and returns
/// what it sent; panics unless every export succeeded.
pub fn send_mix(endpoint: SocketAddr, args: &[&str]) -> Sent {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/send_mix.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--protocol", "grpc", "--endpoint", &endpoint.to_string()])
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "send_mix.py {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("send_mix.py prints JSON");
    let mut sent = Sent {
        total: report["total"].as_u64().unwrap(),
        ..Sent::default()
    };
    for (key, n) in report["counts"].as_object().unwrap() {
        let parts: Vec<String> = key.split('|').map(str::to_owned).collect();
        let key: [String; 4] = parts.try_into().expect("service|region|kind|status");
        sent.counts.insert(key, n.as_u64().unwrap());
    }
    sent
}

/// `sloxide_spans_total` on a `/metrics` page, summed per
/// `[service, region, span_kind, status_code]` over its other labels; keys whose sum
/// is 0 (the daemon writes a series for each status once a label set has any) are
/// left out.
pub fn spans_by_key(page: &str) -> BTreeMap<[String; 4], u64> {
    let mut out = BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("sloxide_spans_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("a sample line");
        let label = |name: &str| -> String {
            let start = format!("{name}=\"");
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&start))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let key = [
            label("service"),
            label("region"),
            label("span_kind"),
            label("status_code"),
        ];
        *out.entry(key).or_default() += value.parse::<f64>().unwrap() as u64;
    }
    out.retain(|_, n| *n > 0);
    out
}
