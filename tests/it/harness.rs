//! Starts the real `sloxide` binary on loopback ports and reads its `/metrics`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

/// True when CI asked that tests needing outside programs fail instead of skipping.
pub fn e2e_required() -> bool {
    std::env::var("SLOXIDE_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

/// Skips (returns false) or, under `SLOXIDE_REQUIRE_E2E=1`, fails, when `what` is missing.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !e2e_required(),
        "SLOXIDE_REQUIRE_E2E=1 but {what} is not available"
    );
    eprintln!("SKIPPED: {what} is not available");
    record_skip(what);
    false
}

/// Every skip so far: (test name, what was missing).
static SKIPS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Registers [`report_skips`] with `atexit` on the first skip.
static REPORT_AT_EXIT: Once = Once::new();

/// Records a skip, for the summary printed when the test binary exits. libtest captures
/// the `eprintln!` of a passing test, so without this a skip would be invisible.
fn record_skip(what: &str) {
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("(unnamed test)")
        .to_owned();
    SKIPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((test, what.to_owned()));
    REPORT_AT_EXIT.call_once(|| {
        // SAFETY: `report_skips` is a plain `extern "C" fn()` that never unwinds.
        let failed = unsafe { libc::atexit(report_skips) } != 0;
        if failed {
            eprintln!("SKIPPED: could not register the skip summary with atexit");
        }
    });
}

/// Prints the skips to stderr after libtest's summary, so they are the last lines of
/// `cargo test`. Runs from `atexit`: it must not panic, and ignores write errors.
extern "C" fn report_skips() {
    let _ = std::panic::catch_unwind(|| {
        use std::io::Write;
        let skips = match SKIPS.lock() {
            Ok(skips) => skips,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut tests: Vec<&str> = skips.iter().map(|(test, _)| test.as_str()).collect();
        tests.sort_unstable();
        tests.dedup();
        let mut text = format!(
            "\nSKIPPED: {} {} skipped because outside programs are missing \
             (run bash tests/run to install them):\n",
            tests.len(),
            if tests.len() == 1 { "test" } else { "tests" },
        );
        let mut lines: Vec<String> = skips
            .iter()
            .map(|(test, what)| format!("  {test}: {what} is not available\n"))
            .collect();
        lines.sort_unstable();
        lines.dedup();
        text.extend(lines);
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    });
}

/// The daemon binary, copied into a directory anyone may enter: the build's own may sit
/// under a home directory that another user (the tests run some daemons as nobody)
/// cannot reach.
pub fn binary_for_anyone() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("sloxide");
        std::fs::copy(env!("CARGO_BIN_EXE_sloxide"), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    });
    path.clone()
}

/// Ports chosen by the OS, for OTLP/gRPC, OTLP/HTTP and metrics.
pub const ANY_PORTS: [&str; 3] = ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"];

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    /// OTLP/gRPC address.
    pub grpc: SocketAddr,
    /// OTLP/HTTP address.
    pub http: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    _dir: tempfile::TempDir,
    stderr: mpsc::Receiver<String>,
    /// What it logged up to "sloxide listening".
    pub startup: Vec<String>,
}

impl Daemon {
    /// Starts the daemon with `config` (YAML text) on ports chosen by the OS, with a
    /// state directory of its own (whatever the YAML says).
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Self::start_with(config, &state, &[])
    }

    /// Starts the daemon with `config` (YAML text, written to a file the daemon can
    /// reread), state in `data_dir`, and `extra` arguments.
    pub fn start_with(config: &str, data_dir: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_on(config, data_dir, extra, ANY_PORTS)
    }

    /// As [`Daemon::start_with`], listening on `listen` (OTLP/gRPC, OTLP/HTTP, metrics),
    /// for a daemon that must come back on the same ports after a restart.
    pub fn start_on(
        config: &str,
        data_dir: &std::path::Path,
        extra: &[&str],
        listen: [&str; 3],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("sloxide.yaml");
        std::fs::write(&path, config).unwrap();
        Self::spawn_on(dir, &path, data_dir, extra, None, listen).unwrap_or_else(
            |(status, lines)| panic!("sloxide did not start ({status:?}):\n{}", lines.join("\n")),
        )
    }

    /// Starts the daemon on the configuration file `path` (kept alive by `dir`), or
    /// returns its exit status and what it logged when it does not come up.
    pub fn spawn(
        dir: tempfile::TempDir,
        path: &std::path::Path,
        data_dir: &std::path::Path,
        extra: &[&str],
        uid: Option<u32>,
    ) -> Result<Self, (Option<std::process::ExitStatus>, Vec<String>)> {
        Self::spawn_on(dir, path, data_dir, extra, uid, ANY_PORTS)
    }

    /// As [`Daemon::spawn`], listening on `listen` (OTLP/gRPC, OTLP/HTTP, metrics).
    pub fn spawn_on(
        dir: tempfile::TempDir,
        path: &std::path::Path,
        data_dir: &std::path::Path,
        extra: &[&str],
        uid: Option<u32>,
        listen: [&str; 3],
    ) -> Result<Self, (Option<std::process::ExitStatus>, Vec<String>)> {
        let command = match uid {
            Some(uid) => {
                use std::os::unix::process::CommandExt;
                let mut command = Command::new(binary_for_anyone());
                command.uid(uid).gid(uid);
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_sloxide")),
        };
        Self::launch(command, dir, path, data_dir, extra, listen)
    }

    /// Starts the daemon with `config` (YAML text) on ports chosen by the OS, under a
    /// descriptor limit (soft and hard) of `nofile`.
    pub fn start_with_nofile(config: &str, nofile: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("sloxide.yaml");
        std::fs::write(&path, config).unwrap();
        let state = dir.path().join("state");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sloxide"));
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // setrlimit, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: nofile as libc::rlim_t,
                    rlim_max: nofile as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::launch(command, dir, &path, &state, &[], ANY_PORTS).unwrap_or_else(
            |(status, lines)| panic!("sloxide did not start ({status:?}):\n{}", lines.join("\n")),
        )
    }

    fn launch(
        mut command: Command,
        dir: tempfile::TempDir,
        path: &std::path::Path,
        data_dir: &std::path::Path,
        extra: &[&str],
        listen: [&str; 3],
    ) -> Result<Self, (Option<std::process::ExitStatus>, Vec<String>)> {
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(path)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--otlp-grpc-listen", listen[0]])
            .args(["--otlp-http-listen", listen[1]])
            .args(["--metrics-listen", listen[2]])
            .args(["--log-level", "info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sloxide binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let status = child.try_wait().ok().flatten();
                if status.is_none() {
                    let _ = child.kill();
                }
                return Err((status, lines));
            };
            lines.push(line.clone());
            if line.contains("sloxide listening") {
                let field = |name: &str| -> SocketAddr {
                    let at =
                        line.find(&format!("{name}=")).expect("address field") + name.len() + 1;
                    line[at..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                return Ok(Self {
                    grpc: field("otlp_grpc"),
                    http: field("otlp_http"),
                    metrics: field("metrics"),
                    child,
                    _dir: dir,
                    stderr: rx,
                    startup: lines,
                });
            }
        }
    }

    /// Starts the daemon as user and group `uid` (when given) on the configuration file
    /// `path` (kept alive by `dir`).
    pub fn spawn_as(
        dir: tempfile::TempDir,
        path: &std::path::Path,
        data_dir: &std::path::Path,
        uid: Option<u32>,
    ) -> Self {
        Self::spawn(dir, path, data_dir, &[], uid).unwrap_or_else(|(status, lines)| {
            panic!("sloxide did not start ({status:?}):\n{}", lines.join("\n"))
        })
    }

    /// Lines the daemon has logged since the last call.
    pub fn logged(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Sends `signal` (a `libc::SIG*` number) to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid of our own child and a valid signal number.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "kill({signal}) failed");
    }

    /// The path of the configuration file the daemon reads.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("sloxide.yaml")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET http://metrics{path}`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.metrics))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The exposition text of `/metrics`.
    pub async fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// The value of the sample `name{labels}` (labels in any order, all must match).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.scrape().await, name, labels)
    }

    /// Polls until `name{labels}` equals `want` or a few seconds pass; returns the last value.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
        let mut last = None;
        for _ in 0..100 {
            last = self.metric(name, labels).await;
            if last == Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds one sample in exposition text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            // As in PromQL, `label=""` also matches a series without that label.
            let all = labels.iter().all(|(k, v)| {
                label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\""))
                    || (v.is_empty()
                        && !label_text
                            .split(',')
                            .any(|kv| kv.starts_with(&format!("{k}=\""))))
            });
            all.then(|| value.parse().ok()).flatten()
        })
}

/// The head of a gRPC trace export to `addr`, for a raw HTTP/2 client (`h2`) that
/// sends the message, or not, itself.
pub fn grpc_export_head(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!(
        "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap()
}

/// A minimal config: defaults plus the given YAML appended.
pub fn config(extra: &str) -> String {
    format!("# test configuration\n{extra}\n")
}
