//! Admission under attack and under bursts, with the real binary on loopback: stalled
//! senders hold only what they sent and are dropped at `limits.body_read_timeout`, or
//! give their room up sooner to requests that wait for it; bursts of concurrent exports are absorbed, not refused; large decodes stay off the
//! workers that answer `/healthz`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use sloxide::fixture::{self, Shape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bad_input::{grpc_call, refused, rss_bytes};
use crate::e2e::post;
use crate::harness::{Daemon, config, grpc_export_head};

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn spans(n: usize) -> Vec<u8> {
    fixture::traces(&Shape {
        resources: 4,
        per_resource: n / 4,
        services: 4,
        ..Shape::default()
    })
    .encode_to_vec()
}

async fn accepted(d: &Daemon, transport: &str) -> f64 {
    d.metric(
        "sloxide_receiver_accepted_spans_total",
        &[("transport", transport)],
    )
    .await
    .unwrap_or(0.0)
}

/// Opens an HTTP/1.1 connection and sends a protobuf trace export's head declaring a
/// `len`-byte body, then `sent` of it, and nothing more.
async fn http1_export_head(d: &Daemon, len: usize, sent: &[u8]) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: sloxide\r\ncontent-type: application/x-protobuf\r\ncontent-length: {len}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(sent).await.unwrap();
    tcp
}

/// Opens one HTTP/2 connection to the gRPC port with `n` trace export streams, each
/// of which sends `sent` (nothing when empty) and no more. Each task returns its
/// response's grpc-status header, if any (a refusal's).
async fn grpc_streams_that_stall(
    d: &Daemon,
    n: usize,
    sent: &[u8],
) -> Vec<tokio::task::JoinHandle<Result<Option<String>, h2::Error>>> {
    let tcp = tokio::net::TcpStream::connect(d.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    (0..n)
        .map(|_| {
            let mut client = client.clone();
            let addr = d.grpc;
            let sent = Bytes::copy_from_slice(sent);
            tokio::spawn(async move {
                client = client.ready().await.unwrap();
                let (response, mut body) =
                    client.send_request(grpc_export_head(addr), false).unwrap();
                if !sent.is_empty() {
                    body.send_data(sent, false).unwrap();
                }
                let response = response.await;
                drop(body);
                response.map(|r| {
                    r.headers()
                        .get("grpc-status")
                        .map(|v| v.to_str().unwrap().to_owned())
                })
            })
        })
        .collect()
}

/// Reads an HTTP/1 request's answer to the end: it has `status` and closes its
/// connection.
async fn answered_and_closed(mut tcp: tokio::net::TcpStream, status: &str) {
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the request is answered and its connection closed")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
}

/// The grpc-status a stream task (which returns the response's, if any) got, within
/// `secs` seconds.
async fn stream_status(
    stream: tokio::task::JoinHandle<Result<Option<String>, h2::Error>>,
    secs: u64,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(secs), stream)
        .await
        .expect("the stream is answered")
        .unwrap()
        .expect("a response, not a reset")
}

/// 64 HTTP/1.1 requests that stall mid-body, and one HTTP/2 connection whose streams all
/// stall mid-message, while other clients export on both transports: every other
/// export is answered, and quickly. At `body_read_timeout` the stalled ones get 408 /
/// DEADLINE_EXCEEDED, counted as `timeout`, and hold nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_streams_do_not_starve_other_clients() {
    let d = Daemon::start(&config("limits:\n  body_read_timeout: 4s\n"));
    let started = Instant::now();

    let mut stalled = Vec::new();
    for _ in 0..64 {
        stalled.push(http1_export_head(&d, 100_000, b"0123456789").await);
    }

    // One HTTP/2 connection opens 64 streams. Each declares a 100 000-byte message and
    // sends 10 bytes of it.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&100_000u32.to_be_bytes());
    prefix.extend_from_slice(b"0123456789");
    let streams = grpc_streams_that_stall(&d, 64, &prefix).await;

    // Meanwhile, others export over both transports, one after another.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = spans(100);
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        grpc_call(&d, TRACE_EXPORT, body.clone(), None)
            .await
            .expect("a gRPC export while others stall");
        let (status, _, _) = post(
            &d,
            "/v1/traces",
            "application/x-protobuf",
            None,
            body.clone(),
        )
        .await;
        assert_eq!(status, 200);
        slowest = slowest.max(t.elapsed());
        assert_eq!(d.get("/healthz").await.0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the other clients were served before the stalled ones timed out ({:?})",
        started.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest export pair {slowest:?}"
    );

    // The stalled HTTP/1 requests are answered 408 and their connections closed.
    for tcp in stalled {
        answered_and_closed(tcp, "408").await;
    }
    // Every stalled stream is answered DEADLINE_EXCEEDED (4).
    for stream in streams {
        assert_eq!(stream_status(stream, 30).await.as_deref(), Some("4"));
    }
    assert_eq!(refused(&d, "http", "timeout").await, Some(64.0));
    assert_eq!(refused(&d, "grpc", "timeout").await, Some(64.0));
    assert_eq!(refused(&d, "http", "overloaded").await, Some(0.0));
    assert_eq!(refused(&d, "grpc", "overloaded").await, Some(0.0));
    assert_eq!(accepted(&d, "grpc").await, 1000.0);
    assert_eq!(accepted(&d, "http").await, 1000.0);
    assert_eq!(
        d.metric("sloxide_receiver_in_flight_bytes", &[]).await,
        Some(0.0)
    );
}

/// While others wait for room, clients that hold room and send nothing give it up, as
/// many as the waiting requests need: two HTTP/1.1 requests that declare a 1 MB body
/// and send none of it, and four gRPC streams that send only their headers, together
/// hold all but about 180 KB of an 8 MiB budget. Exports of 1000 spans (each needs
/// about 0.8 MB) over both transports are served within their wait; the squatters whose
/// room they took are refused as overloaded (HTTP/1: and their connections closed),
/// and counted as reclaimed; the others keep their room, which nobody else needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hold_room_and_send_nothing_give_it_up_to_waiting_ones() {
    let d = Daemon::start(&config("limits:\n  max_in_flight_bytes: 8MiB\n"));
    let mut squatting = Vec::new();
    for _ in 0..2 {
        squatting.push(http1_export_head(&d, 1_000_000, b"").await);
    }
    let streams = grpc_streams_that_stall(&d, 4, b"").await;
    // All six are admitted: the budget holds them.
    let held = 2.0 * (2_000_000.0 + 4096.0) + 4.0 * 1048576.0;
    assert_eq!(
        d.wait_metric("sloxide_receiver_in_flight_bytes", &[], held)
            .await,
        Some(held)
    );
    // Past the grace they all are behind, so the first request that waits finds all six
    // at once (later ones, each served at once, would wait for nothing).
    tokio::time::sleep(Duration::from_millis(800)).await;

    let body = spans(1000);
    assert!(body.len() > 200_000, "{} bytes", body.len());
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        grpc_call(&d, TRACE_EXPORT, body.clone(), None)
            .await
            .expect("a gRPC export while others hold the room");
        let (status, _, _) = post(
            &d,
            "/v1/traces",
            "application/x-protobuf",
            None,
            body.clone(),
        )
        .await;
        assert_eq!(status, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest export pair {slowest:?}"
    );

    // Some squatters gave their room up, not all: the exports, one after another,
    // needed about 1 MiB at a time, and one HTTP squatter holds 2 MB.
    let reclaimed = d
        .metric("sloxide_receiver_reclaimed_requests_total", &[])
        .await
        .unwrap();
    assert!(
        (1.0..=2.0).contains(&reclaimed),
        "{reclaimed} of 6 reclaimed"
    );
    let refused_http = refused(&d, "http", "overloaded").await.unwrap_or(0.0);
    let refused_grpc = refused(&d, "grpc", "overloaded").await.unwrap_or(0.0);
    assert_eq!(refused_http + refused_grpc, reclaimed);
    // Those were answered at once: HTTP/1 with 503 and the connection closed, gRPC
    // with UNAVAILABLE (14), which clients retry. The others still wait for their body.
    let mut kept = Vec::new();
    for tcp in squatting {
        let mut byte = [0; 1];
        match tokio::time::timeout(Duration::from_millis(500), tcp.peek(&mut byte)).await {
            Ok(_) => answered_and_closed(tcp, "503").await,
            Err(_) => kept.push(tcp),
        }
    }
    let mut answered = 2 - kept.len();
    assert_eq!(answered as f64, refused_http);
    for mut stream in streams {
        match tokio::time::timeout(Duration::from_millis(500), &mut stream).await {
            Ok(status) => {
                let status = status.unwrap().expect("a response, not a reset");
                assert_eq!(status.as_deref(), Some("14"));
                answered += 1;
            }
            // It leaves: its task, ended, drops the stream, which resets it.
            Err(_) => stream.abort(),
        }
    }
    assert_eq!(answered as f64, reclaimed);
    assert_eq!(accepted(&d, "grpc").await, 3000.0);
    assert_eq!(accepted(&d, "http").await, 3000.0);
    // The squatters that kept their room leave; what they held comes back.
    drop(kept);
    assert_eq!(
        d.wait_metric("sloxide_receiver_in_flight_bytes", &[], 0.0)
            .await,
        Some(0.0)
    );
}

/// An HTTP/2 client that sends the bodies of its streams one after another, at about
/// 400 KB/s, while another request waits for room: the streams not begun yet receive
/// nothing for a second or more, but their connection is busy with the others, so they
/// keep their room and all three are answered OK. Meanwhile an HTTP/1 request that
/// sends nothing, on its own connection, is refused: room is being taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_connection_is_busy_with_others_keep_their_room() {
    let d = Daemon::start(&config(
        "limits:\n  max_in_flight_bytes: 4MiB\n  admission_wait: 5s\n",
    ));
    let squatter = http1_export_head(&d, 100_000, b"").await;
    let tcp = tokio::net::TcpStream::connect(d.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let body = spans(1000);
    let mut message = vec![0u8];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes());
    message.extend_from_slice(&body);
    let mut sends = Vec::new();
    let mut responses = Vec::new();
    for _ in 0..3 {
        let mut client = client.clone().ready().await.unwrap();
        let (response, send) = client
            .send_request(grpc_export_head(d.grpc), false)
            .unwrap();
        sends.push(send);
        responses.push(response);
    }
    // Each stream holds 1 MiB until its prefix arrives: 3 MiB of the 4, beside the
    // squatter's 200 KB.
    let held = 3.0 * 1048576.0 + 200_000.0 + 4096.0;
    assert_eq!(
        d.wait_metric("sloxide_receiver_in_flight_bytes", &[], held)
            .await,
        Some(held)
    );
    // The bodies, one after another, 16 KiB every 40 ms, from now on.
    let sender = tokio::spawn(async move {
        for send in &mut sends {
            for chunk in message.chunks(16 << 10) {
                send.reserve_capacity(chunk.len());
                send.send_data(Bytes::copy_from_slice(chunk), false)
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            send.send_data(Bytes::new(), true).unwrap();
        }
        sends
    });
    // A request that needs the whole budget waits for room, up to 5 s.
    let waiting = http1_export_head(&d, 3_000_000, b"").await;
    assert_eq!(
        d.wait_metric("sloxide_receiver_admission_waits_total", &[], 1.0)
            .await,
        Some(1.0)
    );
    answered_and_closed(squatter, "503").await;
    let _sends = sender.await.unwrap();
    for response in responses {
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered")
            .expect("a response, not a reset");
        // A refusal comes in the headers (trailers only); an answer, in the trailers.
        let mut status = response.headers().get("grpc-status").cloned();
        if status.is_none() {
            let mut body = response.into_body();
            while let Some(data) = body.data().await {
                data.unwrap();
            }
            let trailers = body.trailers().await.unwrap().unwrap_or_default();
            status = trailers.get("grpc-status").cloned();
        }
        assert_eq!(status.as_ref().map(|v| v.to_str().unwrap()), Some("0"));
    }
    assert_eq!(
        d.metric("sloxide_receiver_reclaimed_requests_total", &[])
            .await,
        Some(1.0)
    );
    assert_eq!(accepted(&d, "grpc").await, 3000.0);
    drop(waiting);
}

/// 120 concurrent exports of 2000 spans each, from clients that never retry (the
/// JavaScript gRPC exporter does not retry UNAVAILABLE): over gRPC on 120 connections
/// and on one, and over HTTP. Nothing is refused, and every span is counted. Then, on
/// 120 connections each, with a budget that holds only a few of them at once: they
/// wait their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_concurrent_exports_lose_nothing() {
    for (budget, extra) in [
        ("default", ""),
        (
            "16MiB",
            "limits:\n  max_in_flight_bytes: 16MiB\n  admission_wait: 20s\n",
        ),
    ] {
        let d = Daemon::start(&config(extra));
        let body = Bytes::from(spans(2000));
        assert!(body.len() > 200_000, "{} bytes", body.len());

        // 120 connections, one export each, all at once.
        let calls: Vec<_> = (0..120)
            .map(|_| {
                let body = body.to_vec();
                let d = &d;
                async move { grpc_call(d, TRACE_EXPORT, body, None).await }
            })
            .collect();
        let results = futures_join_all(calls).await;
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "budget {budget}: {failed:?}");

        // One channel, 120 calls at once on it. Only under the default budget, which
        // admits a whole connection's streams at once: under a budget that makes some
        // of them wait, those hold the connection's flow-control window with what they
        // have sent, and the admitted ones can stall behind them until the waits end
        // (docs/operations.md).
        if budget == "default" {
            let channel = tonic::transport::Channel::from_shared(format!("http://{}", d.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let calls: Vec<_> = (0..120)
                .map(|_| {
                    let mut client = tonic::client::Grpc::new(channel.clone());
                    let body = body.clone();
                    async move {
                        client.ready().await.unwrap();
                        client
                            .unary(
                                tonic::Request::new(body),
                                http::uri::PathAndQuery::from_static(TRACE_EXPORT),
                                sloxide::ingest::grpc::RawCodec,
                            )
                            .await
                            .map(|_| ())
                    }
                })
                .collect();
            let results = futures_join_all(calls).await;
            let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert!(
                failed.is_empty(),
                "budget {budget}, one channel: {failed:?}"
            );
        }

        // HTTP: 120 at once, no retry.
        let client = reqwest::Client::new();
        let url = format!("http://{}/v1/traces", d.http);
        let posts: Vec<_> = (0..120)
            .map(|_| {
                client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
            })
            .collect();
        for response in futures_join_all(posts).await {
            let response = response.unwrap();
            assert_eq!(response.status(), 200, "budget {budget}");
        }

        let waits = d
            .metric("sloxide_receiver_admission_waits_total", &[])
            .await
            .unwrap();
        eprintln!("budget {budget}: {waits} requests waited for room");
        if budget != "default" {
            assert!(
                waits > 0.0,
                "with a small budget, requests waited their turn"
            );
        }
        let calls = if budget == "default" { 2.0 } else { 1.0 };
        assert_eq!(
            accepted(&d, "grpc").await,
            calls * 120.0 * 2000.0,
            "{budget}"
        );
        assert_eq!(accepted(&d, "http").await, 120.0 * 2000.0, "{budget}");
        for transport in ["grpc", "http"] {
            assert_eq!(
                refused(&d, transport, "overloaded").await,
                Some(0.0),
                "{budget}"
            );
        }
    }
}

/// Runs futures concurrently on this task, in order of their results.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// 64 concurrent gzipped OTLP/JSON bodies of about 60 MB each (the most the default
/// `max_decompressed_bytes` allows): their decompression and decoding run on the
/// blocking pool, so `/healthz` answers within 250 ms throughout. Each request is
/// either counted whole or refused (503, for want of room in the budget), never half,
/// and within 10 s of the last answer RSS is back within 64 MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_json_bodies_do_not_stall_the_health_check() {
    let gzip_cli = std::process::Command::new("gzip")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::harness::require(gzip_cli, "gzip") {
        return;
    }
    // Each body holds about 180 000 spans.
    let d = Daemon::start(&config("limits:\n  max_records_per_request: 1000000\n"));
    // One span in OTLP/JSON, repeated: about 60 MB of text.
    let span = r#"{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"GET /api/orders","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000120000000","attributes":[{"key":"http.route","value":{"stringValue":"/api/orders"}},{"key":"http.response.status_code","value":{"intValue":"200"}}],"status":{}}"#;
    let per_request = 60_000_000 / (span.len() + 1);
    let mut json = String::with_capacity(61_000_000);
    json.push_str(r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"orders"}}]},"scopeSpans":[{"spans":["#);
    for i in 0..per_request {
        if i > 0 {
            json.push(',');
        }
        json.push_str(span);
    }
    json.push_str("]}]}]}");
    assert!(json.len() < 64 << 20);
    let mut gzip = std::process::Command::new("gzip")
        .arg("-1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = gzip.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        std::io::Write::write_all(&mut stdin, json.as_bytes()).unwrap();
    });
    let body = Bytes::from(gzip.wait_with_output().unwrap().stdout);
    writer.join().unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(&d);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/traces", d.http);
    let posts: Vec<_> = (0..64)
        .map(|_| {
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body.clone())
                .send();
            tokio::spawn(async move { request.await.map(|r| r.status().as_u16()) })
        })
        .collect();

    // Probe /healthz every 50 ms from a thread of its own (plain blocking I/O, so the
    // test's own busy runtime adds nothing to what is measured) until every post is
    // answered (bounded: 120 s).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        let addr = d.metrics;
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let (mut slowest, mut probes) = (Duration::ZERO, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let t = Instant::now();
                let mut tcp = std::net::TcpStream::connect(addr).unwrap();
                std::io::Write::write_all(
                    &mut tcp,
                    b"GET /healthz HTTP/1.1\r\nhost: sloxide\r\nconnection: close\r\n\r\n",
                )
                .unwrap();
                let mut reply = String::new();
                std::io::Read::read_to_string(&mut tcp, &mut reply).unwrap();
                assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
                slowest = slowest.max(t.elapsed());
                probes += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (slowest, probes)
        })
    };
    let mut answered = Vec::new();
    for post in posts {
        answered.push(post.await.unwrap().expect("an answer"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (slowest, probes) = prober.join().unwrap();
    let mut ok = 0;
    for status in answered {
        match status {
            200 => ok += 1,
            503 => {}
            other => panic!("status {other}"),
        }
    }
    eprintln!("{ok} of 64 accepted; {probes} probes, slowest {slowest:?}");
    assert!(ok >= 1, "at least one large body is accepted");
    assert!(probes >= 10, "{probes} probes");
    // A probe stalled behind one of these bodies would wait for its inflation and
    // decode: 0.31 - 0.65 s each with a release build (curl, one at a time), more with a
    // debug one. Healthy probes take 10 - 30 ms here, and a busy shared 2-core machine
    // has stretched one to 137 ms with nothing stalled. 250 ms keeps the stall far above
    // the bound and the machine's hiccups below it.
    assert!(
        slowest < Duration::from_millis(250),
        "/healthz took {slowest:?} at worst"
    );
    assert_eq!(accepted(&d, "http").await, (ok * per_request) as f64);
    assert_eq!(
        refused(&d, "http", "overloaded").await,
        Some((64 - ok) as f64)
    );

    let settle = Instant::now() + Duration::from_secs(10);
    let mut after = rss_bytes(&d);
    while after > before + (64 << 20) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_bytes(&d);
    }
    eprintln!("RSS {} MiB before, {} MiB after", before >> 20, after >> 20);
    assert!(
        after <= before + (64 << 20),
        "RSS {} MiB before, {} MiB 10 s after",
        before >> 20,
        after >> 20
    );
}

/// Compressed exports that arrive together, each inflating to far more than it took to
/// send (6 MB from about 320 KB), against a budget whose ceiling holds the inflated
/// form and decode of only one or two at once: they take turns, as uncompressed ones
/// do, rather than inflate together past the ceiling and be refused. Before room was
/// made for them ahead of inflating, 17 to 19 of these 32 were refused as overloaded
/// (3 runs). The wait is long, so that the test asks only for turns, not for how fast
/// a loaded machine inflates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_compressed_exports_take_turns() {
    let d = Daemon::start(&config(
        "limits:\n  max_in_flight_bytes: 16MiB\n  admission_wait: 60s\n",
    ));
    let raw = spans(16_000);
    let gzip = crate::e2e::gzip(&raw);
    // A single-shot zstd frame states its content size, as a gzip member does.
    let zstd = zstd::bulk::compress(&raw, 3).unwrap();
    assert!(raw.len() > 6_000_000 && gzip.len() < 400_000 && zstd.len() < 400_000);

    // Bodies compressed beforehand, so that each arrives right after its headers.
    let grpc: Vec<_> = (0..16)
        .map(|_| {
            let (d, gzip) = (&d, &gzip);
            async move {
                let (status, _) = crate::compression::raw_call(d, TRACE_EXPORT, "gzip", gzip).await;
                match status.code() {
                    tonic::Code::Ok => Ok(()),
                    _ => Err(format!("gRPC: {status:?}")),
                }
            }
        })
        .collect();
    let http: Vec<_> = [("gzip", &gzip); 8]
        .into_iter()
        .chain([("zstd", &zstd); 8])
        .map(|(encoding, body)| {
            let d = &d;
            async move {
                match post(
                    d,
                    "/v1/traces",
                    "application/x-protobuf",
                    Some(encoding),
                    body.clone(),
                )
                .await
                {
                    (200, ..) => Ok(()),
                    (status, _, body) => Err(format!(
                        "HTTP {encoding}: {status} {}",
                        String::from_utf8_lossy(&body)
                    )),
                }
            }
        })
        .collect();
    let started = Instant::now();
    let (grpc, http) = tokio::join!(futures_join_all(grpc), futures_join_all(http));
    eprintln!("32 compressed exports in {:?}", started.elapsed());
    let failed: Vec<_> = grpc
        .into_iter()
        .chain(http)
        .filter_map(Result::err)
        .collect();
    assert!(failed.is_empty(), "{} refused: {failed:?}", failed.len());
    assert_eq!(accepted(&d, "grpc").await, 16.0 * 16_000.0);
    assert_eq!(accepted(&d, "http").await, 16.0 * 16_000.0);
    for transport in ["grpc", "http"] {
        assert_eq!(refused(&d, transport, "overloaded").await, Some(0.0));
    }
    assert_eq!(
        d.metric("sloxide_receiver_in_flight_bytes", &[]).await,
        Some(0.0)
    );
}
