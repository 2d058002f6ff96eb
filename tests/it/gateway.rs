//! sloxide behind a real OpenTelemetry Collector acting as a gateway: the Python SDK →
//! the Collector's `otlp` receiver → its `otlp_grpc` or `otlp_http` exporter (gzip, the
//! Collector's default, or zstd) → sloxide. Counts must be exact per service, region,
//! span kind and status; and a SIGTERM restart of sloxide while the Collector keeps
//! sending loses nothing and counts nothing twice, thanks to the Collector's retries.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::e2e::python_available;
use crate::harness::{Daemon, config};
use crate::peers::{Collector, Sent, otelcol_available, send_mix, spans_by_key};
use crate::prometheus::free_port;

/// The exporter that sends to sloxide, with quick retries and a queue.
fn exporter(kind: &str, endpoint: &str, compression: &str) -> String {
    let endpoint = match kind {
        "otlp_http" => format!("http://{endpoint}"),
        _ => endpoint.to_owned(),
    };
    let tls = match kind {
        "otlp_http" => "",
        _ => "\n    tls: {insecure: true}",
    };
    format!(
        "  {kind}:\n    endpoint: \"{endpoint}\"{tls}\n    compression: {compression}\n    \
         retry_on_failure: {{enabled: true, initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 120s}}\n    \
         sending_queue: {{enabled: true, num_consumers: 4, queue_size: 1000}}\n"
    )
}

/// Polls sloxide until its span counts equal `sent` (at most 60 s); returns the last
/// counts it served.
async fn wait_counts(d: &Daemon, sent: &Sent) -> BTreeMap<[String; 4], u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = spans_by_key(&d.scrape().await);
        if counts == sent.counts || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One gateway run: `kind` exporter with `compression` to a fresh sloxide that accepts
/// that compression only (and uncompressed bodies), so a Collector that sent anything
/// else would be refused and the counts would not match.
async fn through_the_gateway(kind: &str, compression: &str) {
    let accepted = match compression {
        "zlib" => "deflate",
        other => other,
    };
    let d = Daemon::start(&config(&format!("limits:\n  compression: [{accepted}]\n")));
    let target = match kind {
        "otlp_http" => d.http.to_string(),
        _ => d.grpc.to_string(),
    };
    let collector = Collector::start(&exporter(kind, &target, compression), &[kind]);
    let endpoint = collector.grpc;
    let sent = tokio::task::spawn_blocking(move || {
        send_mix(endpoint, &["--services", "6", "--rounds", "25"])
    })
    .await
    .unwrap();
    assert_eq!(sent.total, 6 * 3 * 25);
    let counts = wait_counts(&d, &sent).await;
    assert_eq!(
        counts,
        sent.counts,
        "{kind} with {compression}: sloxide's counts differ from what the SDK sent\nCollector log:\n{}",
        collector.log()
    );
    // Every (service, region, kind, status) of the mix is there, so this is no
    // degenerate match.
    assert_eq!(sent.services().len(), 6);
    assert!(sent.counts.len() >= 6 * 3 * 5, "{:?}", sent.counts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_gateway_over_grpc_with_gzip_counts_exactly() {
    if !otelcol_available() || !python_available() {
        return;
    }
    through_the_gateway("otlp_grpc", "gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_gateway_over_http_with_gzip_counts_exactly() {
    if !otelcol_available() || !python_available() {
        return;
    }
    through_the_gateway("otlp_http", "gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_gateway_with_zstd_counts_exactly() {
    if !otelcol_available() || !python_available() {
        return;
    }
    through_the_gateway("otlp_grpc", "zstd").await;
    through_the_gateway("otlp_http", "zstd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_gateway_with_snappy_and_deflate_counts_exactly() {
    if !otelcol_available() || !python_available() {
        return;
    }
    through_the_gateway("otlp_grpc", "snappy").await;
    through_the_gateway("otlp_http", "snappy").await;
    through_the_gateway("otlp_http", "deflate").await;
    through_the_gateway("otlp_http", "zlib").await;
}

/// sloxide is stopped with SIGTERM and started again on the same ports and data dir
/// while the Collector keeps sending; the Collector's retries deliver the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_retries_across_a_sigterm_restart_lose_and_double_nothing() {
    if !otelcol_available() || !python_available() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let ports: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let listen = [ports[0].as_str(), ports[1].as_str(), ports[2].as_str()];
    let mut d = Daemon::start_on(&config(""), state.path(), &[], listen);
    let collector = Collector::start(&exporter("otlp_grpc", listen[0], "gzip"), &["otlp_grpc"]);
    let endpoint = collector.grpc;
    // 8 services × 3 regions, 60 rounds over 6 s: 2,880 spans.
    let sender = tokio::task::spawn_blocking(move || {
        send_mix(
            endpoint,
            &["--services", "8", "--rounds", "60", "--seconds", "6"],
        )
    });

    // Stop sloxide once part of the load has arrived, mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let counted: u64 = spans_by_key(&d.scrape().await).values().sum();
        if counted >= 300 || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        before >= 300,
        "only {before} spans arrived before the restart"
    );
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(30))
        .expect("sloxide exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    // The Collector meets a closed port for a while, and retries.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let d = restart_on(state.path(), listen);
    // What the first process had counted when it stopped, as its clean checkpoint
    // brought it back.
    let restored: u64 = spans_by_key(&d.scrape().await).values().sum();
    let sent = sender.await.unwrap();
    assert_eq!(sent.total, 8 * 3 * 60);
    let counts = wait_counts(&d, &sent).await;
    let counted: u64 = counts.values().sum();
    assert_eq!(
        counts,
        sent.counts,
        "after a SIGTERM restart sloxide counted {counted} spans of {} sent\nCollector log:\n{}",
        sent.total,
        collector.log()
    );
    let log = collector.log();
    assert!(
        log.contains("retry") || log.contains("Retry"),
        "the Collector never retried, so the restart was not seen:\n{log}"
    );
    // The second process restored the first one's clean checkpoint, and the rest of
    // the load reached it after the restart.
    assert_eq!(
        d.metric("sloxide_restore_outcome", &[("outcome", "clean")])
            .await,
        Some(1.0)
    );
    assert!(
        before <= restored && restored < sent.total,
        "counted {before} before the SIGTERM, {restored} at the restart, of {}",
        sent.total
    );
}

/// Starts sloxide again on `listen`, retrying for a few seconds if another test took
/// one of its ports in the moment they were free.
fn restart_on(state: &std::path::Path, listen: [&str; 3]) -> Daemon {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sloxide.yaml");
        std::fs::write(&path, config("")).unwrap();
        match Daemon::spawn_on(dir, &path, state, &[], None, listen) {
            Ok(d) => return d,
            Err((status, lines)) if Instant::now() > deadline => {
                panic!(
                    "sloxide did not start again ({status:?}):\n{}",
                    lines.join("\n")
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
