//! Scrapers that never read cannot grow memory or lock others out for long: at most
//! `MAX_SCRAPES` scrapes are in progress (more get 503), scrapes that arrive together
//! share one render, and a connection whose client takes nothing for `WRITE_STALL` is
//! closed, giving its slot and its response back.

use std::time::{Duration, Instant};

use prost::Message;
use sloxide::export::serve::{MAX_SCRAPES, WRITE_STALL};
use sloxide::fixture::{self, Shape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Daemon, config};

/// The daemon's resident memory in bytes.
fn rss(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A GET /metrics that reads only the status line, or nothing at all.
async fn scraper(d: &Daemon) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(d.metrics).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: sloxide\r\n\r\n")
        .await
        .unwrap();
    tcp
}

/// Sends `regions` trace requests of 500 services with 4 routes each, one region per
/// request: 2 000 span series and 500 quantile series per region, on a daemon with
/// `http.route` as a dimension.
pub async fn post_span_series(d: &Daemon, regions: usize) {
    for region in 0..regions {
        let request = fixture::traces(&Shape {
            resources: 500,
            per_resource: 4,
            services: 500,
            service_names: (0..500).map(|i| format!("svc-{i}")).collect(),
            regions: vec![format!("region-{region}")],
            ..Shape::default()
        });
        let (status, _, body) = crate::e2e::post(
            d,
            "/v1/traces",
            "application/x-protobuf",
            None,
            request.encode_to_vec(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapers_that_never_read_are_bounded_and_dropped() {
    // 20 000 span series: 500 services x 10 regions x 4 routes.
    let d = Daemon::start(&config("dimensions: [http.route]\n"));
    post_span_series(&d, 10).await;
    let page = d.scrape().await;
    let series = page
        .lines()
        .filter(|l| l.starts_with("sloxide_spans_total{"))
        .count();
    assert!(series >= 20_000, "{series} span series");
    let page_bytes = page.len() as u64;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(&d);

    // Ten scrapers that never read.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(scraper(&d).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss(&d);
    assert!(
        during <= before + (MAX_SCRAPES as u64 + 1) * page_bytes + (64 << 20),
        "RSS grew by {} MiB for {} MiB pages",
        (during - before) >> 20,
        page_bytes >> 20
    );

    // Health stays quick, and a scrape beyond the cap is refused at once.
    let started = Instant::now();
    assert_eq!(d.get("/healthz").await.0, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = d.get("/metrics").await;
    assert_eq!(status, 503, "the cap of {MAX_SCRAPES} scrapes in progress");

    // Once their writes have stalled for WRITE_STALL, the stalled connections are
    // closed and scraping works again; their memory is given back.
    let deadline = Instant::now() + WRITE_STALL + Duration::from_secs(10);
    loop {
        let (status, _) = d.get("/metrics").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scrapes still refused after the stall limit"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Renders ran one after another, so the last stalled scraper started its stall
    // clock later than the first: give it the whole limit too before reading, since
    // reading would unstall it. Then the stalled scrapers' connections were closed
    // (reading gets what was in flight, then the end); the refused ones got their 503
    // and stay open.
    tokio::time::sleep(WRITE_STALL + Duration::from_secs(2)).await;
    let mut outcomes = Vec::new();
    for tcp in &mut stalled {
        let mut sink = vec![0u8; 1 << 20];
        let mut head = Vec::new();
        let mut total = 0usize;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if head.len() < 12 {
                            head.extend_from_slice(&sink[..n.min(12)]);
                        }
                        total += n;
                    }
                }
            }
        })
        .await
        .is_ok();
        let status = String::from_utf8_lossy(&head[..head.len().min(12)]).into_owned();
        outcomes.push((status, total, ended));
    }
    let closed_ok = outcomes
        .iter()
        .filter(|(status, _, ended)| status.ends_with("200") && *ended)
        .count();
    let refused = outcomes
        .iter()
        .filter(|(status, _, _)| status.ends_with("503"))
        .count();
    assert!(
        closed_ok == MAX_SCRAPES && refused == 10 - MAX_SCRAPES,
        "{outcomes:?}"
    );
    let after = rss(&d);
    assert!(
        after <= before + (64 << 20),
        "RSS {} MiB before, {} MiB with the stalled scrapers, {} MiB after",
        before >> 20,
        during >> 20,
        after >> 20
    );
}
