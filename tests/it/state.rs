//! Durable state with the real binary: SIGTERM loses nothing, kill -9 loses at most one
//! checkpoint interval, bad files never stop the daemon, two daemons cannot share a
//! data directory, reload keeps what it should, and `sloxide state inspect`. Also: the
//! checkpoint types are what prost-build makes of the .proto.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use sloxide::fixture::{self, Shape};

use crate::e2e::post;
use crate::harness::{Daemon, sample};

/// Two span SLOs on `checkout`, a log SLO on `deployer`, checkpoints every second.
const CONFIG: &str = r#"
dimensions: [http.route]
state: {checkpoint_interval: 1s}
slos:
  - name: checkout-availability
    service: checkout
    objective: 99.9
    indicator: {availability: {}}
  - name: checkout-latency
    service: checkout
    objective: 99
    indicator: {latency: {threshold: 300ms}}
  - name: deployments
    service: deployer
    source: logs
    objective: 95
    filter: {attributes: {event.name: deployment}}
    indicator: {events: {bad: {severity_at_least: error}}}
"#;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Services over three regions, `per_resource` spans or logs per resource.
fn shape(per_resource: usize) -> Shape {
    Shape {
        resources: 6,
        per_resource,
        services: 3,
        service_names: ["checkout", "deployer", "cart"].map(String::from).to_vec(),
        regions: ["eu-west-1", "us-east-1", "ap-south-1"]
            .map(String::from)
            .to_vec(),
        error_every: 7,
        end_unix_nanos: now_nanos(),
    }
}

async fn send_mix(d: &Daemon) {
    let traces = fixture::traces(&shape(50)).encode_to_vec();
    let logs = fixture::logs(&shape(20)).encode_to_vec();
    let (status, _, _) = post(d, "/v1/traces", "application/x-protobuf", None, traces).await;
    assert_eq!(status, 200);
    let (status, _, _) = post(d, "/v1/logs", "application/x-protobuf", None, logs).await;
    assert_eq!(status, 200);
}

/// Polls `/metrics` until `name{labels}` is present and `ok` of it holds.
async fn wait_for(
    d: &Daemon,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = d.scrape().await;
        if sample(&text, name, labels).is_some_and(&ok) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never held:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The samples that must survive a restart: every `sloxide_*` sample but the ones that
/// describe this process (lock holds, checkpoint and restore and reload self-metrics)
/// and the quantile values (of the last complete minute, which moves with the clock).
fn lasting(text: &str) -> BTreeMap<String, String> {
    const PROCESS: [&str; 7] = [
        "sloxide_series_lock_hold",
        "sloxide_checkpoint_",
        "sloxide_restore_",
        "sloxide_config_",
        "sloxide_connections_",
        "sloxide_accept_errors_",
        "sloxide_tls_",
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| !PROCESS.iter().any(|p| l.starts_with(p)))
        .filter(|l| !l.contains("quantile=\""))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.to_owned()))
        })
        .collect()
}

fn exit_ok(d: &mut Daemon) {
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut d = Daemon::start_with(CONFIG, &state, &[]);
    send_mix(&d).await;
    let roll_up = [("slo", "deployments"), ("region", ""), ("window", "1h")];
    wait_for(&d, "sloxide_slo_window_events", &roll_up, |v| v > 0.0).await;
    // One more tick, so that every value the scrape shows is settled.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = d.scrape().await;
    exit_ok(&mut d);

    let d = Daemon::start_with(CONFIG, &state, &[]);
    assert!(
        d.startup.iter().any(|l| l.contains("restored checkpoint")),
        "{:#?}",
        d.startup
    );
    let clean = [("outcome", "clean"), ("generation", "current")];
    let after = wait_for(&d, "sloxide_restore_outcome", &clean, |v| v == 1.0).await;
    let (before, after) = (lasting(&before), lasting(&after));
    assert!(before.len() > 200, "{} samples", before.len());
    for key in [
        "sloxide_spans_total{",
        "sloxide_span_duration_seconds_bucket{",
        "sloxide_span_duration_quantile_seconds_count{",
        "sloxide_log_records_total{",
        "sloxide_slo_events_total{",
        "sloxide_slo_window_bad_events{",
        "sloxide_slo_sli_ratio{",
        "sloxide_slo_burn_rate{",
        "sloxide_slo_error_budget_remaining_ratio{",
        "sloxide_slo_alert{",
        "sloxide_receiver_accepted_spans_total{",
    ] {
        assert!(before.keys().any(|k| k.starts_with(key)), "no {key} sample");
    }
    let differ: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.get(k)))
        .chain(
            after
                .keys()
                .filter(|k| !before.contains_key(*k))
                .map(|k| format!("{k}: new after restart")),
        )
        .collect();
    assert!(
        differ.is_empty(),
        "changed across SIGTERM:\n{}",
        differ.join("\n")
    );
}

/// Spans of `checkout` acknowledged by the daemon, with when.
struct Sent {
    acks: Vec<(Instant, u64)>,
}

impl Sent {
    fn total(&self) -> u64 {
        self.acks.iter().map(|a| a.1).sum()
    }

    fn since(&self, t: Instant) -> u64 {
        self.acks.iter().filter(|a| a.0 >= t).map(|a| a.1).sum()
    }
}

/// Sends 100-span requests of `checkout` until `stop`; returns what was acknowledged.
async fn load_until(http: std::net::SocketAddr, stop: Instant) -> Sent {
    let client = reqwest::Client::new();
    let mut sent = Sent { acks: Vec::new() };
    while Instant::now() < stop {
        let body = fixture::traces(&Shape {
            resources: 1,
            per_resource: 100,
            services: 1,
            service_names: vec!["checkout".into()],
            regions: vec!["eu-west-1".into()],
            error_every: 9,
            end_unix_nanos: now_nanos(),
        })
        .encode_to_vec();
        let sent_at = Instant::now();
        let response = client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(2))
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status() == 200 => sent.acks.push((sent_at, 100)),
            Ok(_) | Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let window = [
        ("slo", "checkout-availability"),
        ("region", ""),
        ("window", "1h"),
    ];
    let mut counted_before = 0.0;
    let mut caught_writing = 0;
    let mut ages = Vec::new();
    // A fixed sequence of run lengths, so a failure can be replayed.
    let mut seed = 0x5107_1de5_u64;
    for cycle in 0..20 {
        let started_wall = now_nanos();
        let mut d = Daemon::start_with(CONFIG, &state, &[]);
        let (status, _) = d.get("/readyz").await;
        assert_eq!(status, 200, "cycle {cycle}: not ready");
        let text = d.scrape().await;
        if cycle > 0 {
            let outcome = ["current", "previous"].iter().find(|g| {
                sample(
                    &text,
                    "sloxide_restore_outcome",
                    &[("outcome", "crash"), ("generation", g)],
                ) == Some(1.0)
            });
            assert!(
                outcome.is_some(),
                "cycle {cycle}: not restored after a crash:\n{text}"
            );
            let spans: f64 = text
                .lines()
                .filter(|l| l.starts_with("sloxide_spans_total{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            assert_eq!(
                spans, 0.0,
                "cycle {cycle}: counters restart from zero after a crash"
            );
            assert_eq!(
                sample(
                    &text,
                    "sloxide_slo_events_total",
                    &[("slo", "checkout-availability")]
                ),
                Some(0.0),
                "cycle {cycle}: the SLO event counters restart from zero after a crash"
            );
        }
        let restored = sample(&text, "sloxide_slo_window_events", &window).unwrap_or(0.0);
        assert!(
            restored <= counted_before,
            "cycle {cycle}: {restored} restored, more than the {counted_before} counted"
        );
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let run = Duration::from_millis(1_200 + (seed >> 33) % 1_800);
        let stop = Instant::now() + run;
        let sender = tokio::spawn(load_until(d.http, stop));
        tokio::time::sleep(run.saturating_sub(Duration::from_millis(50))).await;
        // Half the cycles wait for a checkpoint write to be under way (its temporary
        // file exists) and kill the daemon then.
        if cycle % 2 == 1 {
            let tmp = state.join("checkpoint.pb.tmp");
            let deadline = Instant::now() + Duration::from_millis(1_500);
            while Instant::now() < deadline && !tmp.exists() {
                std::thread::sleep(Duration::from_micros(50));
            }
            caught_writing += usize::from(tmp.exists());
        }
        let (killed_at, killed_wall) = (Instant::now(), now_nanos());
        d.signal(libc::SIGKILL);
        d.wait_exit(Duration::from_secs(5)).expect("killed");
        let sent = sender.await.unwrap();
        // The checkpoint the restart reads: the newest complete file (a write cut short
        // left only its temporary file), else the one before it. With none yet, the
        // state is what the daemon started with.
        let taken = [
            state.join("checkpoint.pb"),
            state.join("checkpoint.pb.prev"),
        ]
        .iter()
        .find_map(|p| sloxide::state::file::read(p).ok().flatten())
        .map_or(started_wall, |c| {
            c.header.expect("a header").written_unix_nanos
        });
        let age = Duration::from_nanos(killed_wall.saturating_sub(taken));
        // What the daemon counted before the kill, seen by the restart.
        let d2 = Daemon::start_with(CONFIG, &state, &[]);
        let now_counted =
            sample(&d2.scrape().await, "sloxide_slo_window_events", &window).unwrap_or(0.0);
        drop(d2);
        let gained = now_counted - restored;
        let acked = sent.total() as f64;
        // Everything acknowledged before the checkpoint was taken is in it: the loss is
        // at most what was sent after, plus the one request in flight then (the sender
        // waits for each answer). 20 ms covers the wall clock against the monotonic one.
        let allowed = sent.since(killed_at - age - Duration::from_millis(20)) as f64 + 100.0;
        assert!(
            acked - gained <= allowed,
            "cycle {cycle}: lost {} of {acked} acknowledged spans, more than the {allowed} sent after the checkpoint taken {age:?} before the kill",
            acked - gained
        );
        // And that checkpoint is at most one interval (1 s) old, plus the write in
        // progress at the kill, plus the scheduling delays of a shared machine running
        // the whole suite at once (a 1.6 s old one was seen in CI).
        assert!(
            age <= Duration::from_millis(2_500),
            "cycle {cycle}: the newest checkpoint was taken {age:?} before the kill, not within one interval (1 s)"
        );
        assert!(
            gained <= acked + 100.0,
            "cycle {cycle}: {gained} restored, more than {acked} acknowledged plus one in flight"
        );
        eprintln!(
            "kill -9 cycle {cycle}: acknowledged {acked}, restored {gained}, lost {}, allowed {allowed}, checkpoint {age:?} old",
            acked - gained
        );
        ages.push(age);
        counted_before = now_counted;
        // The restart just made wrote nothing new if it lived under an interval; the
        // next cycle restores the same state or the one it checkpointed.
        let _ = d.wait_exit(Duration::from_millis(1));
    }
    // One cycle may meet a late write; the interval shows in the typical age. Kills at
    // random times find a checkpoint half an interval old, kills during a write one
    // interval old (1 s here): a median past 1.5 s is a longer interval than configured.
    ages.sort();
    let median = ages[ages.len() / 2];
    eprintln!("kill -9: the restored checkpoints' median age at the kill {median:?}");
    assert!(
        median <= Duration::from_millis(1_500),
        "the restored checkpoints were {median:?} old at the kill (median): not one 1 s interval"
    );
    eprintln!("kill -9: {caught_writing} of 10 targeted kills landed during a checkpoint write");
    assert!(
        caught_writing >= 1,
        "no kill landed during a checkpoint write: the crash-during-write case went untested"
    );
}

/// Writes a clean checkpoint into `state` with one daemon run on `config`.
async fn make_checkpoint(config: &str, state: &Path) {
    let mut d = Daemon::start_with(config, state, &[]);
    send_mix(&d).await;
    let roll_up = [("slo", "deployments"), ("region", ""), ("window", "1h")];
    wait_for(&d, "sloxide_slo_window_events", &roll_up, |v| v > 0.0).await;
    exit_ok(&mut d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkpoints_are_moved_aside_and_the_daemon_serves() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_checkpoint(CONFIG, &state).await;
    // Two generations: one more clean run.
    let mut d = Daemon::start_with(CONFIG, &state, &[]);
    exit_ok(&mut d);
    let good = std::fs::read(state.join("checkpoint.pb")).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let mut future = good.clone();
    future[8..12].copy_from_slice(&(sloxide::state::FORMAT_VERSION + 1).to_le_bytes());
    let end = future.len() - 4;
    let crc = crc32(&future[..end]);
    future[end..].copy_from_slice(&crc.to_le_bytes());
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() / 3].to_vec(), "truncated"),
        ("a flipped byte", flipped, "checksum"),
        ("empty", Vec::new(), "empty"),
        ("from a future version", future, "version"),
    ];
    for (what, bytes, reason) in cases {
        std::fs::write(state.join("checkpoint.pb"), &bytes).unwrap();
        std::fs::copy(state.join("checkpoint.pb"), state.join("bad.keep")).unwrap();
        std::fs::write(state.join("checkpoint.pb.prev"), &good).unwrap();
        let mut d = Daemon::start_with(CONFIG, &state, &[]);
        let text = d.scrape().await;
        assert_eq!(
            sample(
                &text,
                "sloxide_checkpoint_rejected_total",
                &[("reason", reason)]
            ),
            Some(1.0),
            "{what}"
        );
        assert_eq!(
            sample(
                &text,
                "sloxide_restore_outcome",
                &[("outcome", "crash"), ("generation", "previous")]
            ),
            Some(1.0),
            "{what}: the previous generation is used, windows only"
        );
        let logged = d.startup.join("\n");
        assert!(logged.contains("checkpoint refused"), "{what}: {logged}");
        if reason == "version" {
            assert!(logged.contains("written by sloxide"), "{logged}");
        }
        let moved = std::fs::read_dir(&state)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("checkpoint.corrupt-")
            })
            .count();
        assert!(moved >= 1, "{what}: the bad file is moved aside");
        let (status, _) = d.get("/readyz").await;
        assert_eq!(status, 200, "{what}");
        exit_ok(&mut d);
        for e in std::fs::read_dir(&state).unwrap().filter_map(Result::ok) {
            if e.file_name()
                .to_string_lossy()
                .starts_with("checkpoint.corrupt-")
            {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    // Both generations bad: the daemon starts empty and serves.
    std::fs::write(state.join("checkpoint.pb"), b"garbage").unwrap();
    std::fs::write(state.join("checkpoint.pb.prev"), b"").unwrap();
    let d = Daemon::start_with(CONFIG, &state, &[]);
    let text = d.scrape().await;
    assert_eq!(
        sample(
            &text,
            "sloxide_restore_outcome",
            &[("outcome", "discarded")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_checkpoint_rejected_total",
            &[("reason", "magic")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_checkpoint_rejected_total",
            &[("reason", "empty")]
        ),
        Some(1.0)
    );
}

/// The CRC-32 (IEEE) of `bytes`, bit by bit: the test's own, independent of the daemon's.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Runs `sloxide run` expecting it to fail at start; returns its stderr.
fn fails_to_start(state: &Path, uid: Option<u32>) -> String {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sloxide.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let binary = match uid {
        Some(_) => crate::harness::binary_for_anyone(),
        None => env!("CARGO_BIN_EXE_sloxide").into(),
    };
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(state)
        .args(["--otlp-grpc-listen", "127.0.0.1:0"])
        .args(["--otlp-http-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    if let Some(uid) = uid {
        open_to_all(dir.path());
        cmd.uid(uid).gid(uid);
    }
    let output = cmd.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn open_to_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_or_shared_data_dir_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be created, even by root.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = fails_to_start(&file.join("state"), None);
    assert!(
        err.contains("state.data_dir") && err.contains("cannot create it"),
        "{err}"
    );
    assert_eq!(
        err.matches("(os error").count(),
        1,
        "the OS error once: {err}"
    );

    // A directory this user cannot write in. Root writes anywhere, so as root the
    // daemon runs as nobody for this case.
    let readonly = dir.path().join("readonly");
    std::fs::create_dir(&readonly).unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    {
        use std::os::unix::fs::PermissionsExt;
        open_to_all(dir.path());
        std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let err = fails_to_start(&readonly, is_root.then_some(65_534));
    assert!(err.contains("cannot write in it"), "{err}");
    assert_eq!(
        err.matches("(os error").count(),
        1,
        "the OS error once: {err}"
    );

    // `sloxide check` says the same.
    let config = dir.path().join("check.yaml");
    std::fs::write(
        &config,
        format!("state: {{data_dir: {}}}\n", file.join("x").display()),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sloxide"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot create it"));

    // Two daemons, one directory.
    let state = dir.path().join("shared");
    let first = Daemon::start_with(CONFIG, &state, &[]);
    let err = fails_to_start(&state, None);
    assert!(err.contains("in use by another sloxide"), "{err}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_later_is_counted_and_retried() {
    let is_root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    open_to_all(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    if is_root {
        // The daemon runs as nobody, so that taking its write permission away holds.
        let path = std::ffi::CString::new(state.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 65_534, 65_534) }, 0);
    }
    let config_dir = tempfile::tempdir().unwrap();
    open_to_all(config_dir.path());
    let config = config_dir.path().join("sloxide.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut d =
        crate::harness::Daemon::spawn_as(config_dir, &config, &state, is_root.then_some(65_534));
    wait_for(
        &d,
        "sloxide_checkpoint_last_success_timestamp_seconds",
        &[],
        |v| v > 0.0,
    )
    .await;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    wait_for(
        &d,
        "sloxide_checkpoint_failures_total",
        &[("reason", "permission")],
        |v| v >= 1.0,
    )
    .await;
    let (status, _) = d.get("/readyz").await;
    assert_eq!(status, 200, "still serving");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let failed_at = sample(
        &d.scrape().await,
        "sloxide_checkpoint_last_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    wait_for(
        &d,
        "sloxide_checkpoint_last_success_timestamp_seconds",
        &[],
        |v| v > failed_at,
    )
    .await;
    exit_ok(&mut d);
}

const RELOAD_BEFORE: &str = r#"
state: {checkpoint_interval: 1s}
slos:
  - name: kept
    service: checkout
    objective: 99.9
    indicator: {availability: {}}
  - name: removed
    service: checkout
    objective: 99
    indicator: {availability: {}}
  - name: refiltered
    service: checkout
    objective: 99
    filter: {attributes: {http.route: /api/checkout}}
    indicator: {availability: {}}
  - name: reobjectived
    service: checkout
    objective: 99
    indicator: {latency: {threshold: 300ms}}
"#;

const RELOAD_AFTER: &str = r#"
state: {checkpoint_interval: 1s}
slos:
  - name: kept
    service: checkout
    objective: 99.9
    indicator: {availability: {}}
  - name: refiltered
    service: checkout
    objective: 99
    filter: {attributes: {http.route: /api/cart}}
    indicator: {availability: {}}
  - name: reobjectived
    service: checkout
    objective: 95
    indicator: {latency: {threshold: 300ms}}
  - name: added
    service: checkout
    objective: 99
    indicator: {availability: {}}
"#;

fn window_counts(text: &str, slo: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| {
            (l.starts_with("sloxide_slo_window_events{")
                || l.starts_with("sloxide_slo_window_bad_events{")
                || l.starts_with("sloxide_slo_events_total{"))
                && l.contains(&format!("slo=\"{slo}\""))
        })
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

async fn reloaded(d: &Daemon, after: f64) -> String {
    wait_for(
        d,
        "sloxide_config_last_reload_success_timestamp_seconds",
        &[],
        |v| v > after,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_valid_configs_keeps_counts_and_refuses_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Daemon::start_with(RELOAD_BEFORE, &state, &[]);
    send_mix(&d).await;
    let kept = [("slo", "kept"), ("region", ""), ("window", "1h")];
    let before = wait_for(&d, "sloxide_slo_window_events", &kept, |v| v > 0.0).await;
    let stamp = |t: &str| {
        sample(
            t,
            "sloxide_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap()
    };
    let t0 = stamp(&before);
    assert!(
        sample(
            &before,
            "sloxide_slo_window_events",
            &[("slo", "refiltered"), ("region", ""), ("window", "1h")]
        )
        .unwrap()
            > 0.0
    );

    // A valid edit, applied by SIGHUP.
    std::fs::write(d.config_path(), RELOAD_AFTER).unwrap();
    d.signal(libc::SIGHUP);
    let after = reloaded(&d, t0).await;
    assert_eq!(
        window_counts(&after, "kept"),
        window_counts(&before, "kept"),
        "untouched SLO keeps every count"
    );
    assert!(!window_counts(&after, "kept").is_empty());
    assert_eq!(
        window_counts(&after, "reobjectived"),
        window_counts(&before, "reobjectived"),
        "an objective change keeps the counts"
    );
    let objective = [("slo", "reobjectived")];
    assert_eq!(
        sample(&after, "sloxide_slo_objective_ratio", &objective),
        Some(0.95),
        "the new objective applies:\n{after}"
    );
    assert!(
        window_counts(&after, "removed").is_empty(),
        "a removed SLO leaves /metrics"
    );
    let refiltered = [("slo", "refiltered"), ("region", ""), ("window", "1h")];
    assert_eq!(
        sample(&after, "sloxide_slo_window_events", &refiltered),
        Some(0.0),
        "a changed filter starts empty"
    );
    let added = [("slo", "added"), ("region", ""), ("window", "1h")];
    assert_eq!(
        sample(&after, "sloxide_slo_window_events", &added),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "sloxide_config_last_reload_successful", &[]),
        Some(1.0)
    );
    for (decision, n) in [
        ("kept", 2.0),
        ("reset", 1.0),
        ("new", 1.0),
        ("removed", 1.0),
    ] {
        assert_eq!(
            sample(
                &after,
                "sloxide_restore_slo_decisions_total",
                &[("decision", decision)]
            ),
            Some(n),
            "{decision}"
        );
    }
    // Counting goes on into the new generation.
    send_mix(&d).await;
    let more = wait_for(&d, "sloxide_slo_window_events", &kept, |v| {
        v > sample(&before, "sloxide_slo_window_events", &kept).unwrap()
    })
    .await;
    assert!(sample(&more, "sloxide_slo_window_events", &added).unwrap() > 0.0);

    // A broken file is refused with check's message; nothing changes.
    let t1 = stamp(&more);
    std::fs::write(d.config_path(), "slos:\n  - name: x\n    objective: [\n").unwrap();
    let logged_before = d.logged();
    drop(logged_before);
    d.signal(libc::SIGHUP);
    let refused = wait_for(&d, "sloxide_config_last_reload_successful", &[], |v| {
        v == 0.0
    })
    .await;
    assert_eq!(stamp(&refused), t1);
    assert_eq!(
        window_counts(&refused, "kept"),
        window_counts(&more, "kept")
    );
    let logged = d.logged().join("\n");
    assert!(
        logged.contains("configuration not reloaded") && logged.contains("sloxide.yaml:"),
        "{logged}"
    );

    // Other signals do not kill it; SIGUSR1 writes a checkpoint.
    d.signal(libc::SIGUSR2);
    d.signal(libc::SIGUSR1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = d.get("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_a_changed_file_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Daemon::start_with(RELOAD_BEFORE, &state, &["--watch-config"]);
    let t0 = sample(
        &d.scrape().await,
        "sloxide_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    std::fs::write(d.config_path(), RELOAD_AFTER).unwrap();
    let after = reloaded(&d, t0).await;
    assert!(after.contains("slo=\"added\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_inspect_prints_the_checkpoint_and_fails_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_checkpoint(CONFIG, &state).await;
    let inspect = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sloxide"))
            .args(["state", "inspect", "--data-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };
    let output = inspect();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    for want in [
        "format 1, written by sloxide",
        "clean shutdown: yes",
        "series: spans",
        "checkout-availability",
        "deployments",
        "eu-west-1:",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    std::fs::write(state.join("checkpoint.pb"), b"SLOXCKPT broken").unwrap();
    let output = inspect();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("checkpoint.pb") && err.contains("truncated"),
        "{err}"
    );
}

/// The committed message types are exactly what prost-build makes of the .proto
/// (through protox: no protoc). `SLOXIDE_BLESS=1` rewrites them.
#[test]
fn checkpoint_types_are_generated_from_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = protox::compile(
        ["sloxide/checkpoint/v1/checkpoint.proto"],
        [root.join("proto")],
    )
    .expect("the .proto compiles");
    let out = tempfile::tempdir().unwrap();
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(files)
        .expect("prost-build generates the types");
    let generated = std::fs::read_to_string(out.path().join("sloxide.checkpoint.v1.rs")).unwrap();
    let committed_path = root.join("src/state/sloxide.checkpoint.v1.rs");
    if std::env::var("SLOXIDE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&committed_path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    assert!(
        committed == generated,
        "src/state/sloxide.checkpoint.v1.rs is not what the .proto generates; run SLOXIDE_BLESS=1 cargo test checkpoint_types"
    );
}

/// A clean checkpoint's counters come back once: a crash soon after the restart (before
/// any periodic checkpoint) must not restore them again, since Prometheus has scraped
/// larger values since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_checkpoint_is_used_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let slow = CONFIG.replace("checkpoint_interval: 1s", "checkpoint_interval: 1h");
    make_checkpoint(&slow, &state).await;
    let roll_up = [("slo", "deployments"), ("region", ""), ("window", "1h")];
    let d = Daemon::start_with(&slow, &state, &[]);
    let clean = [("outcome", "clean"), ("generation", "current")];
    let text = wait_for(&d, "sloxide_restore_outcome", &clean, |v| v == 1.0).await;
    let events = sample(
        &text,
        "sloxide_log_records_total",
        &[("service", "deployer"), ("severity", "error")],
    );
    assert!(events.is_some_and(|v| v > 0.0), "counters restored once");
    d.signal(libc::SIGKILL);
    drop(d);
    let d = Daemon::start_with(&slow, &state, &[]);
    let text = d.scrape().await;
    assert_eq!(
        sample(
            &text,
            "sloxide_restore_outcome",
            &[("outcome", "crash"), ("generation", "current")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_log_records_total",
            &[("service", "deployer")]
        ),
        None,
        "counters start from zero after the crash"
    );
    assert!(
        sample(&text, "sloxide_slo_window_events", &roll_up).is_some_and(|v| v > 0.0),
        "windows kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_writes_a_checkpoint_and_sigusr2_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let slow = CONFIG.replace("checkpoint_interval: 1s", "checkpoint_interval: 1h");
    let d = Daemon::start_with(&slow, &state, &[]);
    let last = "sloxide_checkpoint_last_success_timestamp_seconds";
    assert_eq!(
        sample(&d.scrape().await, last, &[]),
        Some(0.0),
        "no checkpoint yet"
    );
    d.signal(libc::SIGUSR2);
    d.signal(libc::SIGUSR1);
    wait_for(&d, last, &[], |v| v > 0.0).await;
    assert!(state.join("checkpoint.pb").exists());
    let (status, _) = d.get("/readyz").await;
    assert_eq!(status, 200, "SIGUSR2 did not stop it");
}

/// A checkpoint that exists but cannot be read (here a directory where the file should
/// be, which root cannot read either) stops the start instead of being moved aside.
#[test]
fn an_unreadable_checkpoint_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("checkpoint.pb")).unwrap();
    let err = fails_to_start(&state, None);
    assert!(
        err.contains("cannot read") && err.contains("checkpoint.pb"),
        "{err}"
    );
    assert!(state.join("checkpoint.pb").is_dir(), "left where it was");
}

/// Requests that arrive while a reload carries the counts across wait and are counted
/// once, in the new configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Daemon::start_with(CONFIG, &state, &[]);
    let stop = Instant::now() + Duration::from_millis(3_000);
    let sender = tokio::spawn(load_until(d.http, stop));
    let t0 = sample(
        &d.scrape().await,
        "sloxide_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    let mut stamp = t0;
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let objective = format!("objective: 99.{n}");
        std::fs::write(
            d.config_path(),
            CONFIG.replacen("objective: 99.9", &objective, 1),
        )
        .unwrap();
        d.signal(libc::SIGHUP);
        let text = reloaded(&d, stamp).await;
        stamp = sample(
            &text,
            "sloxide_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();
    }
    let sent = sender.await.unwrap();
    assert!(sent.total() > 0);
    let window = [
        ("slo", "checkout-availability"),
        ("region", ""),
        ("window", "1h"),
    ];
    let text = wait_for(&d, "sloxide_slo_window_events", &window, |v| {
        v == sent.total() as f64
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "sloxide_slo_events_total",
            &[("slo", "checkout-availability")]
        ),
        Some(sent.total() as f64)
    );
}

/// In-process: a pipeline on a driven clock, fed `n` availability events of `checkout`
/// in `eu-west-1` at Unix second `at`, one every `bad_every` bad.
mod in_process {
    use std::sync::Arc;

    use prost::Message;
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::fixture::{self, Shape};
    use sloxide::ingest::Recorder;
    use sloxide::otlp::spans::{TraceBatch, walk_traces};
    use sloxide::pipeline::Pipeline;
    use sloxide::state::snapshot::Scope;

    use crate::harness::sample;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_700_000_000;

    fn config(period: &str, extra: &str) -> Config {
        Config::from_yaml(
            &format!(
                "{extra}\nslos:\n  - {{name: avail, service: checkout, objective: 99, period: {period}, indicator: {{availability: {{}}}}}}\n"
            ),
            "t.yaml",
        )
        .unwrap()
    }

    fn feed(p: &Pipeline, clock: &ManualClock, at: u64, n: usize, service: &str) {
        clock.set(at * 1_000_000_000);
        let body = fixture::traces(&Shape {
            resources: 1,
            per_resource: n,
            services: 1,
            service_names: vec![service.into()],
            regions: vec!["eu-west-1".into()],
            error_every: 0,
            end_unix_nanos: at * 1_000_000_000,
        })
        .encode_to_vec();
        let mut batch = TraceBatch::default();
        walk_traces(&body, p.plan().trace_keys(), &mut batch).unwrap();
        p.aggregator().record_traces(&batch);
    }

    fn window(p: &Pipeline, w: &str) -> Option<f64> {
        p.tick();
        let labels = [("slo", "avail"), ("region", ""), ("window", w)];
        sample(&p.render(), "sloxide_slo_window_events", &labels)
    }

    /// 30d to 28d: no saved ring has the 28d window's slot size (40 320 s), and only the
    /// 1d ring's divides it; the 28d window is filled from the 30d ring's slots, placed
    /// by their start, so it keeps its 28 days of history (off by at most one 12 h slot).
    #[test]
    fn a_shorter_period_keeps_its_history() {
        let clock = Arc::new(ManualClock::new(0));
        let before = Pipeline::new(&config("30d", ""), clock.clone()).unwrap();
        let mut in_28d = 0;
        for k in 0..58u64 {
            let at = NOW - 29 * DAY + k * DAY / 2;
            feed(&before, &clock, at, 10, "checkout");
            if at > NOW - 28 * DAY {
                in_28d += 10;
            }
        }
        clock.set(NOW * 1_000_000_000);
        assert_eq!(window(&before, "30d"), Some(580.0));
        let saved = before.checkpoint(Scope::Everything, true);
        let after = Pipeline::new(&config("28d", ""), clock.clone()).unwrap();
        after.restore(&saved, true);
        let got = window(&after, "28d").unwrap();
        assert!(
            (got - f64::from(in_28d)).abs() <= 10.0,
            "28d window {got}, events in the last 28 days {in_28d}"
        );
    }

    /// A checkpoint written while the clock ran ten days ahead must not freeze the
    /// windows: its future slots are dropped and new events count.
    #[test]
    fn a_checkpoint_from_the_future_does_not_freeze_the_windows() {
        let clock = Arc::new(ManualClock::new(0));
        let ahead = Pipeline::new(&config("30d", ""), clock.clone()).unwrap();
        feed(&ahead, &clock, NOW + 10 * DAY, 7, "checkout");
        let saved = ahead.checkpoint(Scope::Everything, true);
        clock.set(NOW * 1_000_000_000);
        let p = Pipeline::new(&config("30d", ""), clock.clone()).unwrap();
        p.restore(&saved, false);
        feed(&p, &clock, NOW, 5, "checkout");
        clock.set(NOW * 1_000_000_000);
        assert_eq!(window(&p, "5m"), Some(5.0), "new events are counted");
        assert_eq!(
            window(&p, "30d"),
            Some(5.0),
            "the future slots were dropped"
        );
    }

    /// Frames `payload` as a checkpoint file with a valid checksum.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = b"SLOXCKPT".to_vec();
        out.extend_from_slice(&sloxide::state::FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(payload);
        let crc = super::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Hostile files: arbitrary bytes never panic the decoder, and whatever decodes
        /// (a valid frame around arbitrary bytes, or a real checkpoint with bytes
        /// flipped before the checksum is fixed up) restores without panicking.
        #[test]
        fn hostile_checkpoints_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..8),
            counters in proptest::prelude::any::<bool>(),
        ) {
            let _ = sloxide::state::file::decode(&bytes);
            let clock = Arc::new(ManualClock::new(NOW * 1_000_000_000));
            let p = Pipeline::new(&config("30d", "dimensions: [http.route]"), clock.clone()).unwrap();
            feed(&p, &clock, NOW, 20, "checkout");
            let mut real = p.checkpoint(Scope::Everything, true).encode_to_vec();
            for (at, x) in &flips {
                if !real.is_empty() {
                    let i = at % real.len();
                    real[i] ^= x;
                }
            }
            for payload in [bytes.as_slice(), real.as_slice()] {
                if let Ok(checkpoint) = sloxide::state::file::decode(&framed(payload)) {
                    let fresh = Pipeline::new(&config("28d", "dimensions: [http.route]"), clock.clone()).unwrap();
                    fresh.restore(&checkpoint, counters);
                    let _ = fresh.render();
                }
            }
        }
    }

    /// Overflow counts are cumulative counters too: a reload carries them.
    #[test]
    fn a_reload_keeps_the_overflow_counts() {
        let clock = Arc::new(ManualClock::new(NOW * 1_000_000_000));
        let cfg = config(
            "30d",
            "dimensions: [http.route]\nlimits: {max_series_per_service: 1}",
        );
        let p = Pipeline::new(&cfg, clock.clone()).unwrap();
        for route_service in ["checkout", "cart"] {
            feed(&p, &clock, NOW, 8, route_service);
        }
        let overflowed = |p: &Pipeline| {
            sample(
                &p.render(),
                "sloxide_series_overflow_total",
                &[("family", "sloxide_spans_total")],
            )
        };
        let before = overflowed(&p).unwrap();
        assert!(before > 0.0, "the routes beyond one per service overflow");
        p.reload(&cfg).unwrap();
        assert_eq!(overflowed(&p), Some(before));
    }
}
