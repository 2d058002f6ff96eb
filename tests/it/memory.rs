//! The heap the series live in is backed by huge pages once it has grown
//! (`memory::use_huge_pages`, on the tick).

use std::time::{Duration, Instant};

use crate::harness::{Daemon, config, require};

/// Bytes of the daemon's `[heap]` mapping on transparent huge pages, from
/// `/proc/<pid>/smaps`.
fn heap_huge_bytes(d: &Daemon) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", d.pid())).unwrap();
    let mut in_heap = false;
    let mut kb = 0;
    for line in smaps.lines() {
        if let Some(first) = line.split_whitespace().next()
            && first.contains('-')
            && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            in_heap = line.ends_with("[heap]");
        } else if in_heap && let Some(v) = line.strip_prefix("AnonHugePages:") {
            kb += v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grown_heap_is_backed_by_huge_pages() {
    // With `[always]`, the kernel may put the heap on huge pages by itself, so this
    // passes without sloxide's collapse; in `[madvise]` mode (Debian's and Ubuntu's
    // default, and this project's machines) it fails without it.
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let collapse = (version.next(), version.next()) >= (Some(6), Some(1));
    if !require(
        (thp.contains("[always]") || thp.contains("[madvise]")) && collapse,
        "transparent huge pages and MADV_COLLAPSE (Linux 6.1)",
    ) {
        return;
    }
    // 4 000 span series and 1 000 quantile series (a minute histogram each): over
    // 13 MB of heap.
    let d = Daemon::start(&config("dimensions: [http.route]\n"));
    crate::scrape::post_span_series(&d, 2).await;
    // The tick runs once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut huge = heap_huge_bytes(&d);
    while huge < 4 << 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        huge = heap_huge_bytes(&d);
    }
    assert!(
        huge >= 4 << 20,
        "{} KiB of the heap on huge pages 5 s after it grew",
        huge >> 10
    );
}
