//! The connection layer against many connections: idle and half-sent connections are
//! closed by the timeouts, a daemon out of descriptors keeps its metrics port and does
//! not spin, and the OTLP ports serve again once the flood is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Daemon, config, require};

/// Raises this process's soft descriptor limit to its hard limit; returns the limit.
fn raise_own_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid resource and pointers to locals.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// Polls `/healthz` every 100 ms until `done`; returns (polls, failures, slowest).
fn watch_health(
    metrics: SocketAddr,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Duration)> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (mut polls, mut failures, mut slowest) = (0, 0, Duration::ZERO);
        while !done.load(Ordering::Relaxed) {
            let started = Instant::now();
            let ok = client
                .get(format!("http://{metrics}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            slowest = slowest.max(started.elapsed());
            polls += 1;
            failures += u64::from(!ok);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (polls, failures, slowest)
    })
}

/// Waits until the peer closes `stream` (EOF or reset); false after `limit`.
async fn closed_by_peer(mut stream: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

const CONNECTIONS: usize = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_by_the_timeouts() {
    let nofile = raise_own_nofile();
    if !require(
        nofile >= 2 * CONNECTIONS as u64 + 1000,
        &format!(
            "a descriptor limit (RLIMIT_NOFILE hard) of at least {} (it is {nofile})",
            2 * CONNECTIONS + 1000
        ),
    ) {
        return;
    }
    let d = Daemon::start(&config(
        "limits: {max_connections: 8000, header_read_timeout: 2s, idle_timeout: 3s}",
    ));
    let done = Arc::new(AtomicBool::new(false));
    let health = watch_health(d.metrics, done.clone());
    let rss_before = crate::bad_input::rss_bytes(&d);

    // A request answered, then the connection left open: the idle timeout's.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(d.http).await.unwrap();
        s.write_all(b"GET /v1/traces HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 405"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        idle.push(s);
    }
    // The rest: silent, or a request head cut short (HTTP/1 on the HTTP port, the
    // HTTP/2 preface and nothing more on the gRPC port).
    let opened = Instant::now();
    let mut header = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS - idle.len() {
        let (addr, partial): (SocketAddr, &[u8]) = match i % 4 {
            0 => (d.http, b""),
            1 => (d.grpc, b""),
            2 => (d.http, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Ty"),
            _ => (d.grpc, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        };
        let mut s = TcpStream::connect(addr).await.unwrap();
        if !partial.is_empty() {
            s.write_all(partial).await.unwrap();
        }
        header.push(s);
    }
    let opening = opened.elapsed();
    let open_now = d
        .metric("sloxide_connections_open", &[("port", "otlp_http")])
        .await
        .unwrap()
        + d.metric("sloxide_connections_open", &[("port", "otlp_grpc")])
            .await
            .unwrap();
    assert!(open_now > 1000.0, "{open_now} open after {opening:?}");

    // Every one is closed from the server's side, within the timeouts and a margin.
    let closes: Vec<_> = header
        .into_iter()
        .chain(idle)
        .map(|s| tokio::spawn(closed_by_peer(s, Duration::from_secs(15))))
        .collect();
    let mut still_open = 0;
    for c in closes {
        still_open += usize::from(!c.await.unwrap());
    }
    assert_eq!(still_open, 0, "connections the daemon left open");
    let all_closed = opened.elapsed();
    done.store(true, Ordering::Relaxed);
    let (polls, failures, slowest) = health.await.unwrap();
    assert!(polls >= 10, "{polls} polls");
    assert_eq!(failures, 0, "/healthz failed {failures} of {polls} times");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest /healthz {slowest:?}"
    );

    for port in ["otlp_http", "otlp_grpc"] {
        let open = d
            .wait_metric("sloxide_connections_open", &[("port", port)], 0.0)
            .await;
        assert_eq!(open, Some(0.0), "{port}");
    }
    let timed_out = |port, timeout| {
        let d = &d;
        async move {
            d.metric(
                "sloxide_connections_timed_out_total",
                &[("port", port), ("timeout", timeout)],
            )
            .await
            .unwrap()
        }
    };
    let header_timeouts =
        timed_out("otlp_http", "header").await + timed_out("otlp_grpc", "header").await;
    assert_eq!(header_timeouts, (CONNECTIONS - 50) as f64);
    assert_eq!(timed_out("otlp_http", "idle").await, 50.0);
    // What the connections held is given back: RSS within 64 MiB of where it started,
    // within 10 s.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut rss_after = crate::bad_input::rss_bytes(&d);
    while rss_after > rss_before + (64 << 20) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_after = crate::bad_input::rss_bytes(&d);
    }
    assert!(
        rss_after <= rss_before + (64 << 20),
        "RSS {} MiB before the connections, {} MiB after",
        rss_before >> 20,
        rss_after >> 20
    );
    eprintln!(
        "{CONNECTIONS} connections opened in {opening:?}, all closed by the daemon {all_closed:?} after the first; /healthz {polls} polls, slowest {slowest:?}; RSS {} MiB before, {} MiB after",
        rss_before >> 20,
        rss_after >> 20
    );
}

/// CPU ticks (user + system) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_metrics_port_answers_and_nothing_spins() {
    let nofile = raise_own_nofile();
    if !require(
        nofile >= 4000,
        &format!("a descriptor limit of at least 4000 (it is {nofile})"),
    ) {
        return;
    }
    let d = Daemon::start_with_nofile(&config(""), 256);
    let startup = d.startup.join("\n");
    assert!(
        startup.contains("limits.max_connections lowered from 4096 to 32"),
        "{startup}"
    );
    let limit = d
        .metric("sloxide_connections_limit", &[("port", "otlp_http")])
        .await;
    assert_eq!(limit, Some(32.0));

    // Far more connections than the daemon has descriptors, to both OTLP ports.
    let mut flood = Vec::new();
    for i in 0..1500 {
        let addr = if i % 2 == 0 { d.http } else { d.grpc };
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        {
            flood.push(s);
        }
    }
    assert!(flood.len() >= 1000, "{} connections", flood.len());
    for port in ["otlp_http", "otlp_grpc"] {
        let open = d
            .wait_metric("sloxide_connections_open", &[("port", port)], 32.0)
            .await;
        assert_eq!(open, Some(32.0), "{port} at its cap");
    }

    let before = cpu_ticks(d.pid());
    let started = Instant::now();
    for path in ["/healthz", "/readyz", "/metrics", "/healthz"] {
        let asked = Instant::now();
        let (status, _) = tokio::time::timeout(Duration::from_secs(1), d.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer within a second"));
        assert_eq!(status, 200, "{path}");
        assert!(asked.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ticks = cpu_ticks(d.pid()) - before;
    // SAFETY: sysconf with a valid name.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cores = ticks as f64 / per_second / started.elapsed().as_secs_f64();
    assert!(
        cores < 0.3,
        "the daemon used {cores:.2} cores while flooded"
    );
    eprintln!(
        "{} flood connections against RLIMIT_NOFILE 256: the daemon used {cores:.3} cores over {:?}",
        flood.len(),
        started.elapsed()
    );

    // The flood leaves: OTLP requests succeed again.
    drop(flood);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = match client
            .post(format!("http://{}/v1/traces", d.http))
            .header("content-type", "application/x-protobuf")
            .body(Vec::new())
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 200 => break,
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "OTLP/HTTP did not recover: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accept_errors = d
        .metric("sloxide_accept_errors_total", &[("port", "otlp_http")])
        .await
        .unwrap();
    assert!(accept_errors < 100.0, "{accept_errors} accept errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_a_goaway_and_a_busy_one_is_kept() {
    let d = Daemon::start(&config(
        "limits: {header_read_timeout: 1s, idle_timeout: 1s}",
    ));
    for addr in [d.http, d.grpc] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driven = tokio::spawn(connection);
        // A request every 400 ms for 2 s: never idle for the 1 s.
        let mut client = client;
        for _ in 0..5 {
            client = client.ready().await.unwrap();
            let request = http::Request::get(format!("http://{addr}/v1/traces"))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            response.await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert!(!driven.is_finished(), "closed while in use");
        // Then idle: the server says GOAWAY (NO_ERROR), and the connection ends cleanly.
        let ended = tokio::time::timeout(Duration::from_secs(5), driven)
            .await
            .expect("closed by the idle timeout")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }
    for port in ["otlp_http", "otlp_grpc"] {
        let idle = d
            .metric(
                "sloxide_connections_timed_out_total",
                &[("port", port), ("timeout", "idle")],
            )
            .await;
        assert_eq!(idle, Some(1.0), "{port}");
    }
}

/// A client that sends a request over HTTP/2 and never opens its window for the answer
/// (it still answers pings) holds nothing for long: once no request is being handled and
/// no response has moved for the idle timeout, its connection gets a GOAWAY, and it is
/// dropped when the stream still cannot finish. On both OTLP ports; without this, 4 096
/// such connections held every connection slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_takes_its_response_is_closed_as_idle() {
    let d = Daemon::start(&config(
        "limits: {header_read_timeout: 2s, idle_timeout: 1s}",
    ));
    // gRPC: an empty export, answered with a 5-byte message. HTTP: a content type the
    // port refuses, answered (415) with a Status message. Both answers are DATA, which
    // a shut window holds back.
    let requests = [
        (
            d.grpc,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "application/grpc",
            &[0u8, 0, 0, 0, 0][..],
        ),
        (d.http, "/v1/traces", "text/plain", &b"spans"[..]),
    ];
    for (addr, path, content_type, body) in requests {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let driven = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(bytes::Bytes::from_static(body), true)
            .unwrap();
        // The head is not flow-controlled: it arrives; the body cannot.
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("a response head")
            .unwrap();
        let mut answer = response.into_body();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), answer.data())
                .await
                .is_err(),
            "{path}: the body came through a shut window"
        );
        // Idle after 1 s, dropped 2 s after the GOAWAY: well within 6 s.
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(6), driven).await;
        assert!(
            ended.is_ok(),
            "{path}: still open {:?} after the response was held back",
            started.elapsed()
        );
        drop(answer);
    }
    for port in ["otlp_http", "otlp_grpc"] {
        let idle = d
            .metric(
                "sloxide_connections_timed_out_total",
                &[("port", port), ("timeout", "idle")],
            )
            .await;
        assert_eq!(idle, Some(1.0), "{port}");
    }
    // The ports still serve.
    let health = get(d.metrics, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

/// A request that never finishes (its client stalls mid-body and never leaves) does not
/// hold up a shutdown: its connection is dropped before the daemon's drain runs out, so
/// the drain completes and the final checkpoint is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_does_not_outlast_the_drain() {
    let mut d = Daemon::start(&config(""));
    let mut stalled = TcpStream::connect(d.http).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: sloxide\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    d.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = d.wait_exit(Duration::from_secs(20));
        (status, d.logged())
    })
    .await
    .unwrap();
    let (status, logged) = status;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = logged.join("\n");
    assert!(
        !log.contains("did not finish within"),
        "the drain ran out: {log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// Silent sockets that fill a port's connection cap do not keep new clients out: a
/// connection that arrives at the cap makes room by closing the one idle the longest
/// (here, never having sent a byte). The metrics port (64 connections) answers
/// `/healthz` at once with 80 silent sockets open, and an OTLP port at its cap (4)
/// serves new clients while the one connection with a request in flight (a body still
/// arriving) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_cap_make_room_for_new_ones() {
    let d = Daemon::start(&config("limits: {max_connections: 4}"));
    let mut silent = Vec::new();
    for _ in 0..80 {
        silent.push(TcpStream::connect(d.metrics).await.unwrap());
    }
    let started = Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(5), get(d.metrics, "/healthz"))
        .await
        .expect("/healthz answered");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/healthz took {:?}",
        started.elapsed()
    );
    let evicted = d
        .metric("sloxide_connections_evicted_total", &[("port", "metrics")])
        .await
        .unwrap();
    assert!(evicted >= 17.0, "{evicted} evicted");

    // The OTLP/HTTP port: one request in flight (its body stalls), three silent sockets.
    let mut busy = TcpStream::connect(d.http).await.unwrap();
    busy.write_all(
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    // Its head read and its request in flight (it holds part of the budget).
    let deadline = Instant::now() + Duration::from_secs(10);
    while d
        .metric("sloxide_receiver_in_flight_bytes", &[])
        .await
        .unwrap_or(0.0)
        == 0.0
    {
        assert!(Instant::now() < deadline, "the busy request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        silent.push(TcpStream::connect(d.http).await.unwrap());
    }
    // Silent for longer than a client about to send its head would be.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), export(d.http))
            .await
            .expect("an export answered at the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // The connection with a request in flight was not the one to go.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), busy.read(&mut buf)).await;
    assert!(read.is_err(), "the busy connection was closed: {read:?}");
    let evicted = d
        .metric(
            "sloxide_connections_evicted_total",
            &[("port", "otlp_http")],
        )
        .await
        .unwrap();
    assert!(evicted >= 1.0, "{evicted} evicted");
    drop(silent);
}

/// A plain HTTP/1 GET of `path` on `addr`, on a connection of its own; the response.
async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
    )
    .await
}

/// An empty OTLP/HTTP export on a connection of its own; the response.
async fn export(addr: SocketAddr) -> String {
    exchange(
        addr,
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await
}

async fn exchange(addr: SocketAddr, request: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}
