//! A real Prometheus scraping the real daemon: the exposition parses, the counters add
//! up, the histogram buckets give per-region quantiles, and the queries that
//! `docs/metrics.md` recommends are valid PromQL.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e::{python_available, python_send};
use crate::harness::{Daemon, config, require};

/// True when a `prometheus` binary is on PATH and runs.
pub fn prometheus_on_path() -> bool {
    Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running Prometheus server; killed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second and waits until it is ready.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with(&[target], None).await
    }

    /// Starts Prometheus scraping `targets` (one job, `sloxide`) every second, with the
    /// rule file `rules` evaluated every second if given, and waits until it is ready.
    pub async fn start_with(targets: &[SocketAddr], rules: Option<&str>) -> Self {
        Self::start_job(targets, rules, "").await
    }

    /// As [`Prometheus::start_with`], with `job` (YAML lines indented for the scrape
    /// job, such as `scheme: https`) added to the job.
    pub async fn start_job(targets: &[SocketAddr], rules: Option<&str>, job: &str) -> Self {
        Self::start_args(targets, rules, job, &[]).await
    }

    /// As [`Prometheus::start_job`], with `args` added to Prometheus' command line.
    pub async fn start_args(
        targets: &[SocketAddr],
        rules: Option<&str>,
        job: &str,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: sloxide\n{job}    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        if let Some(rules) = rules {
            std::fs::write(dir.path().join("sloxide-rules.yaml"), rules).unwrap();
            config.push_str("rule_files: [sloxide-rules.yaml]\n");
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut prometheus = Self {
            child,
            addr,
            client,
            dir,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    /// Waits (at most 30 s) until `/-/ready` answers 200.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            let ready = self
                .client
                .get(format!("http://{}/-/ready", self.addr))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ready {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus was not ready within 30 s:\n{}", self.log());
    }

    /// What Prometheus logged.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; returns `data.result`, or the error Prometheus gave.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self
            .api("query", promql, &[("query", promql.to_owned())])
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The exemplars Prometheus stored for `promql` over the last hour: `data` of
    /// `/api/v1/query_exemplars`, or the error Prometheus gave.
    pub async fn exemplars(&self, promql: &str) -> Result<Vec<Value>, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let params = [
            ("query", promql.to_owned()),
            ("start", (now - 3600).to_string()),
            ("end", (now + 60).to_string()),
        ];
        let data = self.api("query_exemplars", promql, &params).await?;
        Ok(data.as_array().cloned().unwrap_or_default())
    }

    /// GETs `/api/v1/{endpoint}` with `params`; returns its `data`, or the error
    /// Prometheus gave (naming `promql`).
    async fn api(
        &self,
        endpoint: &str,
        promql: &str,
        params: &[(&str, String)],
    ) -> Result<Value, String> {
        let resp = self
            .client
            .get(format!("http://{}/api/v1/{endpoint}", self.addr))
            .query(params)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut body: Value = serde_json::from_str(&resp.text().await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        Ok(body["data"].take())
    }

    /// Polls `promql` (at most `limit` and at most 200 times) until `done` accepts its
    /// result; returns the last result.
    pub async fn poll(
        &self,
        promql: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut last = Vec::new();
        for _ in 0..200 {
            last = self.query(promql).await.unwrap_or_else(|e| panic!("{e}"));
            if done(&last) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a vector sample (`[t, "v"]`); NaN for "NaN".
pub fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

/// The value of the only sample of a result with no labels, if any.
fn scalar(result: &[Value]) -> Option<f64> {
    match result {
        [one] => Some(value(one)),
        _ => None,
    }
}

/// `label -> value` for each sample of a result.
fn by_label(result: &[Value], label: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = result
        .iter()
        .map(|s| {
            let l = s["metric"][label].as_str().unwrap_or("").to_owned();
            (l, value(s))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Sends `spans` spans of `duration_ms` for checkout in `region`, `errors` of them with
/// status ERROR, through the Python SDK.
fn send(protocol: &str, endpoint: &str, region: &str, spans: u32, errors: u32, duration_ms: u32) {
    python_send(&[
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--service",
        "checkout",
        "--region",
        region,
        "--spans",
        &spans.to_string(),
        "--errors",
        &errors.to_string(),
        "--duration-ms",
        &duration_ms.to_string(),
    ]);
}

/// The example queries of `docs/metrics.md`; each must be valid PromQL.
const DOCUMENTED_QUERIES: &[&str] = &[
    r#"histogram_quantile(0.99, sum by (le, region) (rate(sloxide_span_duration_seconds_bucket{service="checkout"}[5m])))"#,
    r#"max by (region) (sloxide_span_duration_quantile_seconds{service="checkout", quantile="0.99"})"#,
    r#"sum by (region) (rate(sloxide_spans_total{service="checkout",status_code="error"}[5m])) / sum by (region) (rate(sloxide_spans_total{service="checkout"}[5m]))"#,
    r#"sum by (service, region) (rate(sloxide_spans_total[5m]))"#,
    r#"sum by (service, region, severity) (rate(sloxide_log_records_total[5m]))"#,
    r#"sloxide_series_active"#,
    r#"rate(sloxide_series_overflow_total[5m]) > 0"#,
    r#"sum by (region) (rate(sloxide_span_duration_seconds_sum{service="checkout"}[5m])) / sum by (region) (rate(sloxide_span_duration_seconds_count{service="checkout"}[5m]))"#,
    r#"sum by (transport, reason) (rate(sloxide_receiver_refused_spans_total[5m]))"#,
    r#"sum by (reason) (increase(sloxide_receiver_refused_requests_total[1h]))"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_exact_counts_and_regional_quantiles() {
    if !require(prometheus_on_path(), "prometheus (the server binary)") || !python_available() {
        return;
    }
    let started = Instant::now();
    let d = Daemon::start(&config(""));
    let prom = Prometheus::start(d.metrics).await;
    let up = prom
        .poll("up", Duration::from_secs(15), |r| scalar(r) == Some(1.0))
        .await;
    assert_eq!(scalar(&up), Some(1.0), "prometheus scrapes sloxide: {up:?}");

    // Two waves, so that the buckets grow between scrapes and rate() sees the spans.
    // eu-west-1 over gRPC: 300 spans of 10 ms, 30 errors.
    // us-east-1 over HTTP: 200 spans of 100 ms, 20 errors.
    let (grpc, http) = (d.grpc.to_string(), d.http.to_string());
    tokio::task::spawn_blocking(move || {
        send("grpc", &grpc, "eu-west-1", 100, 10, 10);
        send("http", &http, "us-east-1", 100, 5, 100);
    })
    .await
    .unwrap();
    let first = prom
        .poll("sum(sloxide_spans_total)", Duration::from_secs(20), |r| {
            scalar(r) == Some(200.0)
        })
        .await;
    assert_eq!(scalar(&first), Some(200.0), "{first:?}");
    let (grpc, http) = (d.grpc.to_string(), d.http.to_string());
    tokio::task::spawn_blocking(move || {
        send("grpc", &grpc, "eu-west-1", 200, 20, 10);
        send("http", &http, "us-east-1", 100, 15, 100);
    })
    .await
    .unwrap();

    let total = prom
        .poll("sum(sloxide_spans_total)", Duration::from_secs(40), |r| {
            scalar(r) == Some(500.0)
        })
        .await;
    assert_eq!(scalar(&total), Some(500.0), "{total:?}");

    let per_region = prom
        .query("sum by (region) (sloxide_spans_total)")
        .await
        .unwrap();
    assert_eq!(
        by_label(&per_region, "region"),
        vec![("eu-west-1".into(), 300.0), ("us-east-1".into(), 200.0)]
    );

    let statuses = prom
        .query("sum by (status_code) (sloxide_spans_total)")
        .await
        .unwrap();
    assert_eq!(
        by_label(&statuses, "status_code"),
        vec![
            ("error".into(), 50.0),
            ("ok".into(), 0.0),
            ("unset".into(), 450.0)
        ]
    );

    // rate() over [1m] needs two samples in the window; the second wave is an increase.
    let p99_query = "histogram_quantile(0.99, sum by (le, region) (rate(sloxide_span_duration_seconds_bucket[1m])))";
    let p99 = prom
        .poll(p99_query, Duration::from_secs(20), |r| {
            r.len() == 2 && r.iter().all(|s| value(s).is_finite())
        })
        .await;
    let p99 = by_label(&p99, "region");
    assert_eq!(
        p99.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["eu-west-1", "us-east-1"],
        "{p99:?}"
    );
    // 10 ms lies in the (0.008, 0.016] bucket, 100 ms in (0.064, 0.128].
    assert!(p99[0].1 > 0.008 && p99[0].1 <= 0.016, "{p99:?}");
    assert!(p99[1].1 > 0.064 && p99[1].1 <= 0.128, "{p99:?}");

    let kinds = prom
        .query("sum by (span_kind) (sloxide_span_duration_seconds_count)")
        .await
        .unwrap();
    assert_eq!(
        by_label(&kinds, "span_kind"),
        vec![("server".into(), 500.0)]
    );

    let accepted = prom
        .query("sum by (transport) (sloxide_receiver_accepted_spans_total)")
        .await
        .unwrap();
    assert_eq!(
        by_label(&accepted, "transport"),
        vec![("grpc".into(), 300.0), ("http".into(), 200.0)]
    );

    for q in DOCUMENTED_QUERIES {
        if let Err(e) = prom.query(q).await {
            panic!("documented query is not valid PromQL: {e}");
        }
    }
    let error_rate = prom.query(DOCUMENTED_QUERIES[2]).await.unwrap();
    eprintln!(
        "prometheus e2e: p99 {p99:?}, error ratio {:?}, {:.1?}",
        by_label(&error_rate, "region"),
        started.elapsed()
    );
}
