//! What an operator sees of the daemon itself: the startup line, `--log-format json`,
//! and a mistyped `--log-level` refused rather than silencing every line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Daemon;

fn sloxide() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sloxide"))
}

#[test]
fn a_mistyped_log_level_is_refused_naming_the_levels() {
    let output = sloxide()
        .args(["run", "--log-level", "warning"])
        .args(["--otlp-grpc-listen", "127.0.0.1:0"])
        .args(["--otlp-http-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown log level \"warning\"")
            && stderr.contains("error, warn, info, debug, trace or off"),
        "{stderr}"
    );
}

#[test]
fn the_run_variables_bind_run_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sloxide.yaml");
    std::fs::write(&config, "slos: []\n").unwrap();
    let broken = [
        ("SLOXIDE_METRICS_LISTEN", "not-an-address"),
        ("SLOXIDE_OTLP_GRPC_LISTEN", "[::]"),
        ("SLOXIDE_LOG_FORMAT", "yaml"),
    ];
    // A pod's environment is the daemon's: `check`, `rules` and `dashboard` run in it
    // and do not take these, so they do not fail on them.
    for sub in ["check", "rules", "dashboard"] {
        let output = sloxide()
            .arg(sub)
            .arg("--config")
            .arg(&config)
            .envs(broken)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{sub}: {:?} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // `run` (and no subcommand) still refuses each as a usage error.
    for (key, value) in broken {
        for sub in [&["run"][..], &[][..]] {
            let output = sloxide()
                .args(sub)
                .arg("--config")
                .arg(&config)
                .env(key, value)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{sub:?} {key}: {stderr}");
            assert!(stderr.contains(&format!("'{value}'")), "{key}: {stderr}");
        }
    }
}

#[test]
fn the_startup_line_names_the_version_and_the_config_source() {
    let d = Daemon::start("slos: []\n");
    let line = d
        .startup
        .iter()
        .find(|l| l.contains("sloxide starting"))
        .unwrap_or_else(|| panic!("no startup line in {:?}", d.startup));
    assert!(
        line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            || line.contains(&format!("version={}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(
        line.contains("sloxide.yaml") && line.contains("slos=0"),
        "{line}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = sloxide()
        .args(["run", "--log-format", "json", "--log-level", "info"])
        .args(["--otlp-grpc-listen", "127.0.0.1:0"])
        .args(["--otlp-http-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut events = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        let message = event["fields"]["message"].as_str().unwrap_or("").to_owned();
        events.push(event);
        if message == "sloxide listening" || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let starting = events
        .iter()
        .find(|e| e["fields"]["message"] == "sloxide starting")
        .unwrap_or_else(|| panic!("no startup event in {events:?}"));
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["fields"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(starting["fields"]["config"], "the embedded default");
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "sloxide listening"),
        "{events:?}"
    );
}

/// Refused requests are logged at warn with the reason and the peer's address, at
/// most once per reason every 10 s; the rest go to debug (and to the counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_at_warn_once_per_reason_with_the_peer() {
    let d = Daemon::start("slos: []\n");
    d.logged();
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let response = client
            .post(format!("http://{}/v1/traces", d.http))
            .header("content-type", "application/x-protobuf")
            .body(vec![0xff; 16])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines: Vec<String> = d
        .logged()
        .into_iter()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert!(
        line.contains("WARN")
            && line.contains("reason=\"decode\"")
            && line.contains("peer=127.0.0.1:")
            && line.contains("transport=\"http\""),
        "{line}"
    );
}

#[test]
fn a_port_in_use_is_reported_once_with_its_key_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = sloxide()
        .args(["run", "--log-level", "info"])
        .args(["--otlp-grpc-listen", "127.0.0.1:0"])
        .args(["--otlp-http-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches(&format!("cannot listen on {addr} (listen.metrics)"))
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
}
