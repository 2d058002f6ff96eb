//! End-to-end load generator: sends pre-encoded OTLP trace requests to a server and
//! prints the accepted spans per second beside the server's CPU per span.
//!
//! The comparison servers live in this file, so one command gives a figure and its
//! baselines from the same run:
//!
//! - `sloxide`: `sloxide::daemon::run` in this process, with the given (or embedded
//!   default) config, always without a data directory;
//! - `null` (the default baseline): a raw hyper server, tuned (TCP_NODELAY, 1 MiB HTTP/2
//!   frames, 16 MiB stream and 32 MiB connection windows, 1024 streams per connection;
//!   the `--null-*` flags change them). Over gRPC it reads the whole request, checks
//!   the 5-byte message prefix against the body, inflates gzip or zstd messages, and
//!   answers an empty `ExportTraceServiceResponse` with `grpc-status: 0`; over HTTP
//!   (HTTP/1.1) it reads the body, inflates it by `Content-Encoding` and answers 200
//!   with an empty protobuf response: the transport floor;
//! - `prost`: the same server, which also decodes the request with prost and counts
//!   spans per service name into a `Mutex<HashMap<String, u64>>`;
//! - `null-tonic`: the earlier null server (tonic with `RawCodec`, or axum over HTTP),
//!   for reference; `--baseline-h2` and `--baseline-nodelay` apply to it only;
//! - `sloxide-process`: the release `sloxide` binary as a child process (`--config`
//!   with its data directory dropped, loopback ports), measured as `otelcol` is;
//! - `otelcol`: the OpenTelemetry Collector built for the tests
//!   (`tests/peers/otelcol`) as a child process: the `otlp` receiver, the
//!   `spanmetrics` connector (sloxide's histogram buckets, its dimensions and region
//!   attribute) and the `prometheus` exporter.
//!
//! Every in-process server runs on its own multi-thread tokio runtime whose threads are
//! named `lg-srv`, with as many workers as sloxide's own runtime would have; its CPU
//! time is the sum of `/proc/self/task/<tid>/stat` over those threads. A child
//! process's CPU is `/proc/<pid>/stat`, its memory `VmRSS` and `VmHWM` in
//! `/proc/<pid>/status`: at idle (before any load), sampled every 100 ms under load,
//! and its `/metrics` is scraped after the load. Every result line has
//! `server_ns_per_span` (server CPU per accepted span) beside the throughput, since
//! client and server share the cores. Every loop is bounded in time and all traffic
//! goes to 127.0.0.1 (or to a loopback `--addr`).
//!
//! ```sh
//! cargo build --release --example loadgen --bin sloxide
//! target/release/examples/loadgen --target sloxide --transport grpc
//! target/release/examples/loadgen --compare --rounds 5   # sloxide, null, prost
//! SLOXIDE_OTELCOL=target/peers/otelcol-sloxide-test target/release/examples/loadgen \
//!     --compare --targets sloxide-process,otelcol --config config/example.yaml
//! ```
//! `benches/e2e_compare.sh` runs the comparisons of docs/benchmarks.md.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use sloxide::fixture::{self, Mix, Shape};
use sloxide::ingest::grpc::RawCodec;
use tonic::codec::CompressionEncoding;
use tonic::server::{NamedService, UnaryService};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Thread name prefix of the server runtime (comm is at most 15 bytes).
const SERVER_THREADS: &str = "lg-srv";
const CLIENT_THREADS: &str = "lg-cli";
/// Distinct pre-encoded requests per run.
const DISTINCT_REQUESTS: usize = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DURATION_SECS: f64 = 120.0;
const MAX_WARMUP_SECS: f64 = 60.0;
const MAX_ROUNDS: usize = 20;
const MAX_IN_FLIGHT: usize = 256;
/// The most a baseline server inflates one request to.
const MAX_INFLATED: u64 = 64 << 20;
/// How long a child process may take to open its ports.
const CHILD_START: Duration = Duration::from_secs(30);
/// How often a child's `VmRSS` is sampled under load.
const RSS_SAMPLE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Sloxide,
    Null,
    Prost,
    NullTonic,
    SloxideProcess,
    Otelcol,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Sloxide => "sloxide",
            Self::Null => "null",
            Self::Prost => "prost",
            Self::NullTonic => "null-tonic",
            Self::SloxideProcess => "sloxide-process",
            Self::Otelcol => "otelcol",
        }
    }

    fn is_process(self) -> bool {
        matches!(self, Self::SloxideProcess | Self::Otelcol)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    Grpc,
    Http,
}

/// Which requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Traffic {
    /// `fixture::mixed_traces`: 25 resources per request, --services services in
    /// --regions regions, five span kinds, routes and status codes, unknown attributes.
    Mixed,
    /// `fixture::traces`: up to 10 resources of one server span shape.
    Uniform,
}

/// Which gRPC client sends the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GrpcClient {
    /// tonic without --gzip/--zstd, hyper with them.
    Auto,
    /// `tonic::client::Grpc` with `RawCodec` over one `Channel` per connection. With
    /// --gzip tonic compresses every message again (level 6) on the client.
    Tonic,
    /// A hyper HTTP/2 connection sending pre-framed (and pre-compressed) gRPC messages.
    Hyper,
}

/// Load an OTLP trace receiver and print accepted spans per second and server CPU per
/// span.
#[derive(Debug, Parser, Clone)]
#[command(name = "loadgen")]
struct Args {
    /// Which server to load (started by this tool unless --addr is given).
    #[arg(long, value_enum, default_value = "sloxide")]
    target: Target,
    /// With --compare: the servers to run each round, comma-separated; the ratios are
    /// of the first against each other one. The order rotates every round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sloxide,null,prost"
    )]
    targets: Vec<Target>,
    #[arg(long, value_enum, default_value = "grpc")]
    transport: TransportKind,
    /// Which requests to send.
    #[arg(long, value_enum, default_value = "mixed")]
    traffic: Traffic,
    /// Compress requests (grpc-encoding: gzip, or Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// Compress requests with zstd (level 3) instead (grpc-encoding or Content-Encoding:
    /// zstd). The gRPC client is then hyper, with pre-compressed messages.
    #[arg(long, conflicts_with = "gzip")]
    zstd: bool,
    /// With --zstd: write each body as a Collector does, one streamed frame that states
    /// no content size, with a 4 MiB window (one-shot compression states the size).
    #[arg(long, requires = "zstd")]
    zstd_streamed: bool,
    /// gRPC client implementation.
    #[arg(long, value_enum, default_value = "auto")]
    grpc_client: GrpcClient,
    /// Spans per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Connections (gRPC: one HTTP/2 connection each; HTTP: one client each, which
    /// opens up to --streams HTTP/1.1 connections).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Concurrent in-flight requests per connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Measured seconds (at most 120).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring (at most 60).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Distinct service names in the requests (mixed traffic: at most 60).
    #[arg(long, default_value_t = 60)]
    services: usize,
    /// Distinct regions in the requests (mixed traffic: at most 8).
    #[arg(long, default_value_t = 6)]
    regions: usize,
    /// Uniform traffic: every n-th span is an error (0: none).
    #[arg(long, default_value_t = 10)]
    error_every: usize,
    /// sloxide configuration file (default: the embedded default). Its data directory
    /// is always dropped.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Load an already running server at HOST:PORT instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
    /// With --addr: the server's process id, to read its CPU seconds.
    #[arg(long, requires = "addr")]
    pid: Option<u32>,
    /// Run --targets one after the other, --rounds times, and print medians and
    /// ratios.
    #[arg(long, conflicts_with = "addr")]
    compare: bool,
    /// Rounds of --compare.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// HTTP/2 frame size of the null and prost servers, bytes (16384 to 16777215).
    #[arg(long, default_value_t = 1 << 20)]
    null_frame: u32,
    /// Initial HTTP/2 stream window of the null and prost servers, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    null_stream_window: u32,
    /// Initial HTTP/2 connection window of the null and prost servers, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    null_conn_window: u32,
    /// Let hyper size the null and prost servers' windows by the measured bandwidth
    /// instead (BDP estimate; the two window flags are then ignored).
    #[arg(long)]
    null_adaptive_window: bool,
    /// null-tonic only: set TCP_NODELAY on its accepted sockets.
    #[arg(long)]
    baseline_nodelay: bool,
    /// null-tonic only: its HTTP/2 settings, tonic's defaults (16 KiB frames, 1 MiB
    /// windows), or 256 KiB frames with 4 MiB stream and 8 MiB connection windows.
    #[arg(long, value_enum, default_value = "tonic")]
    baseline_h2: BaselineH2,
    /// The Collector binary for --target otelcol.
    #[arg(
        long,
        env = "SLOXIDE_OTELCOL",
        value_name = "FILE",
        default_value = "target/peers/otelcol-sloxide-test"
    )]
    otelcol: PathBuf,
    /// The sloxide binary for --target sloxide-process (default: `sloxide` beside this
    /// example's directory, i.e. target/release/sloxide).
    #[arg(long, value_name = "FILE")]
    sloxide_bin: Option<PathBuf>,
    /// Child processes: seconds from the ports opening to the idle RSS reading.
    #[arg(long, default_value_t = 3.0)]
    idle_secs: f64,
    /// otelcol: the spanmetrics connector's metrics_flush_interval, seconds.
    #[arg(long, default_value_t = 5)]
    otelcol_flush_secs: u64,
    /// Child processes: GETs of /metrics after the load, for the scrape time.
    #[arg(long, default_value_t = 20)]
    scrapes: usize,
    /// Child processes: write the last /metrics body to DIR/<target>.prom.
    #[arg(long, value_name = "DIR")]
    metrics_dump: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BaselineH2 {
    Tonic,
    Sloxide,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    validate(&args)?;
    // The allocator thresholds the daemon's main sets, so that the in-process sloxide
    // allocates as the daemon does (they apply to the whole process: the baselines too).
    // Not the daemon's one heap (`memory::one_heap`): this process's client and prost
    // baseline would queue on its lock (prost took twice the CPU per span), so the
    // in-process sloxide runs without it and without huge pages; the
    // `sloxide-process` target is the daemon as it ships.
    sloxide::memory::configure();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let mut config = match &args.config {
        Some(path) => sloxide::config::Config::load(path)?,
        None => sloxide::config::Config::embedded_default(),
    };
    // Checkpoint writes are not what is measured, and the example's directory need
    // not exist here.
    config.state.data_dir = None;
    if !args.compare {
        let result = run_once(&args, args.target, &config, workers, &client_rt)?;
        for line in result.lines(&args) {
            println!("{line}");
        }
        return Ok(());
    }
    let targets = args.targets.clone();
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        // Rotate the order every round, so that no target always runs first (on a
        // cold machine) or right after the same neighbour.
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let result = run_once(&args, targets[i], &config, workers, &client_rt)?;
            for line in result.lines(&args) {
                println!("round={} {line}", round + 1);
            }
            std::io::stdout().flush().ok();
            results[i].push(result);
        }
    }
    summarize(&args, &targets, &results);
    Ok(())
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_SECS) {
        bail!("--duration must be in (0, {MAX_DURATION_SECS}] seconds");
    }
    if !(0.0..=MAX_WARMUP_SECS).contains(&args.warmup) {
        bail!("--warmup must be in [0, {MAX_WARMUP_SECS}] seconds");
    }
    if !(0.0..=60.0).contains(&args.idle_secs) {
        bail!("--idle-secs must be in [0, 60]");
    }
    if !(1..=60).contains(&args.otelcol_flush_secs) {
        bail!("--otelcol-flush-secs must be in [1, 60]");
    }
    if !(1..=1000).contains(&args.scrapes) {
        bail!("--scrapes must be in [1, 1000]");
    }
    if args.batch == 0 || args.batch > 100_000 {
        bail!("--batch must be in [1, 100000]");
    }
    if args.connections == 0 || args.streams == 0 || args.connections * args.streams > MAX_IN_FLIGHT
    {
        bail!("--connections x --streams must be in [1, {MAX_IN_FLIGHT}]");
    }
    if args.services == 0 || args.regions == 0 {
        bail!("--services and --regions must be at least 1");
    }
    if args.traffic == Traffic::Mixed
        && (args.services > Mix::MAX_SERVICES || args.regions > fixture::MIX_REGIONS.len())
    {
        bail!(
            "mixed traffic has at most {} services and {} regions",
            Mix::MAX_SERVICES,
            fixture::MIX_REGIONS.len()
        );
    }
    if !(16_384..=16_777_215).contains(&args.null_frame) {
        bail!("--null-frame must be in [16384, 16777215]");
    }
    if args.compare && !(1..=MAX_ROUNDS).contains(&args.rounds) {
        bail!("--rounds must be in [1, {MAX_ROUNDS}]");
    }
    if args.compare && args.targets.is_empty() {
        bail!("--targets is empty");
    }
    if let Some(addr) = args.addr
        && !addr.ip().is_loopback()
    {
        bail!("--addr must be a loopback address (this tool only loads this machine)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Requests

fn shape(args: &Args, end_unix_nanos: u64) -> Shape {
    // As many resources as possible up to 10, dividing the batch exactly.
    let resources = (1..=10.min(args.batch))
        .rev()
        .find(|r| args.batch.is_multiple_of(*r))
        .unwrap_or(1);
    let defaults = ["eu-west-1", "us-east-1"];
    Shape {
        resources,
        per_resource: args.batch / resources,
        services: args.services,
        service_names: Vec::new(),
        regions: (0..args.regions)
            .map(|i| {
                defaults
                    .get(i)
                    .map_or_else(|| format!("region-{i}"), |s| (*s).to_owned())
            })
            .collect(),
        error_every: args.error_every,
        end_unix_nanos,
    }
}

/// The wire bodies to send: protobuf, compressed when asked for, and for the hyper gRPC
/// client already framed (5-byte prefix).
struct Bodies {
    bodies: Vec<Bytes>,
    /// Uncompressed protobuf bytes per request, on average.
    raw_len: usize,
    /// Wire bytes per request, on average.
    wire_len: usize,
}

impl Args {
    /// The request compression: `gzip`, `zstd`, or `None`.
    fn compression(&self) -> Option<&'static str> {
        if self.gzip {
            Some("gzip")
        } else if self.zstd {
            Some("zstd")
        } else {
            None
        }
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            TransportKind::Grpc => "grpc",
            TransportKind::Http => "http",
        }
    }

    fn traffic_name(&self) -> &'static str {
        match self.traffic {
            Traffic::Mixed => "mixed",
            Traffic::Uniform => "uniform",
        }
    }
}

/// `raw` as one zstd frame at level 3 written as a stream, as a Collector writes its
/// bodies: no content size, a 4 MiB window.
fn zstd_streamed(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3)?;
    enc.include_contentsize(false)?;
    enc.window_log(22)?;
    enc.write_all(raw)?;
    Ok(enc.finish()?)
}

fn bodies(args: &Args, framed_grpc: bool) -> anyhow::Result<Bodies> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut out = Vec::with_capacity(DISTINCT_REQUESTS);
    let (mut raw_total, mut wire_total) = (0, 0);
    for i in 0..DISTINCT_REQUESTS {
        // Distinct end times, a few ms apart, so no two requests are the same bytes.
        let end = now - (i as u64 + 1) * 3_000_000;
        let request = match args.traffic {
            Traffic::Uniform => fixture::traces(&shape(args, end)),
            Traffic::Mixed => fixture::mixed_traces(&Mix {
                records: args.batch,
                services: args.services,
                regions: args.regions,
                seed: i as u64 + 1,
                end_unix_nanos: end,
                ..Mix::default()
            }),
        };
        let raw = request.encode_to_vec();
        raw_total += raw.len();
        let compress = args.transport == TransportKind::Http || framed_grpc;
        let payload = match args.compression() {
            Some("gzip") if compress => gzip(&raw)?,
            Some("zstd") if compress && args.zstd_streamed => zstd_streamed(&raw)?,
            Some("zstd") if compress => zstd::bulk::compress(&raw, 3)?,
            _ => raw,
        };
        let body = if framed_grpc {
            let mut framed = BytesMut::with_capacity(payload.len() + 5);
            framed.put_u8(u8::from(args.compression().is_some()));
            framed.put_u32(payload.len() as u32);
            framed.put_slice(&payload);
            framed.freeze()
        } else {
            Bytes::from(payload)
        };
        wire_total += body.len();
        out.push(body);
    }
    Ok(Bodies {
        bodies: out,
        raw_len: raw_total / DISTINCT_REQUESTS,
        wire_len: wire_total / DISTINCT_REQUESTS,
    })
}

fn gzip(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(raw)?;
    Ok(enc.finish()?)
}

fn gunzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() * 8);
    flate2::read::GzDecoder::new(raw).read_to_end(&mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------
// CPU and memory accounting

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime (clock ticks) from the text of a `stat` file.
fn stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU ticks per live thread of this process whose name starts with `prefix`.
fn thread_ticks(prefix: &str) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let named = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(prefix));
        if !named {
            continue;
        }
        if let Some(ticks) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_ticks)
        {
            out.insert(tid, ticks);
        }
    }
    out
}

/// Where the server's CPU time is read.
#[derive(Clone, Copy)]
enum CpuSource {
    /// Threads of this process named `lg-srv*`.
    OwnThreads,
    /// Another process.
    Pid(u32),
    None,
}

struct CpuSnapshot {
    server: HashMap<u32, u64>,
    server_total: Option<u64>,
    process: u64,
}

fn cpu_snapshot(source: CpuSource) -> CpuSnapshot {
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(stat_ticks)
        .unwrap_or(0);
    match source {
        CpuSource::OwnThreads => CpuSnapshot {
            server: thread_ticks(SERVER_THREADS),
            server_total: None,
            process,
        },
        CpuSource::Pid(pid) => CpuSnapshot {
            server: HashMap::new(),
            server_total: std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(stat_ticks),
            process,
        },
        CpuSource::None => CpuSnapshot {
            server: HashMap::new(),
            server_total: None,
            process,
        },
    }
}

/// (server CPU seconds, this process's CPU seconds outside the server) between two
/// snapshots. A server thread that exited in between loses its time: the runtimes are
/// built with a long keep-alive so that their threads do not exit.
fn cpu_between(source: CpuSource, a: &CpuSnapshot, b: &CpuSnapshot) -> (Option<f64>, f64) {
    let tck = clock_ticks();
    let process = b.process.saturating_sub(a.process) as f64 / tck;
    match source {
        CpuSource::OwnThreads => {
            let ticks: u64 = b
                .server
                .iter()
                .map(|(tid, t)| t.saturating_sub(a.server.get(tid).copied().unwrap_or(0)))
                .sum();
            let server = ticks as f64 / tck;
            (Some(server), (process - server).max(0.0))
        }
        CpuSource::Pid(_) => {
            let server = match (a.server_total, b.server_total) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / tck),
                _ => None,
            };
            (server, process)
        }
        CpuSource::None => (None, process),
    }
}

// ---------------------------------------------------------------------------------
// Servers

/// A server running on its own runtime in its own thread.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Server {
    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.done.recv_timeout(Duration::from_secs(15)).is_err() {
            eprintln!("warning: the server did not stop within 15 s; leaving it behind");
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// A server's top future: built and driven by `block_on` in the server's own thread.
type LocalFuture = Pin<Box<dyn Future<Output = ()> + 'static>>;

/// Starts `serve(stop) -> addr` on a fresh runtime named `lg-srv` in a thread of its own.
fn start_server<F>(workers: usize, serve: F) -> anyhow::Result<Server>
where
    F: FnOnce(BoxFuture<()>, std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>) -> LocalFuture
        + Send
        + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("{SERVER_THREADS}-main"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name(SERVER_THREADS)
                .thread_keep_alive(Duration::from_secs(600))
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.into()));
                    return;
                }
            };
            let stop: BoxFuture<()> = Box::pin(async move {
                let _ = stop_rx.await;
            });
            rt.block_on(serve(stop, addr_tx));
            rt.shutdown_timeout(Duration::from_secs(2));
            let _ = done_tx.send(());
        })?;
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the server did not start within 10 s")??;
    Ok(Server {
        addr,
        stop: Some(stop_tx),
        done: done_rx,
    })
}

fn start_sloxide(
    config: &sloxide::config::Config,
    transport: TransportKind,
    workers: usize,
) -> anyhow::Result<Server> {
    let mut config = config.clone();
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    config.listen.otlp_grpc = any;
    config.listen.otlp_http = any;
    config.listen.metrics = any;
    start_server(workers, move |stop, addr_tx| {
        Box::pin(async move {
            let on_bound = {
                let addr_tx = addr_tx.clone();
                move |bound: sloxide::daemon::BoundAddrs| {
                    let addr = match transport {
                        TransportKind::Grpc => bound.otlp_grpc,
                        TransportKind::Http => bound.otlp_http,
                    };
                    let _ = addr_tx.send(Ok(addr));
                }
            };
            if let Err(e) = sloxide::daemon::run(config, stop, on_bound).await {
                eprintln!("sloxide: {e}");
                let _ = addr_tx.send(Err(e.into()));
            }
        })
    })
}

/// Span counts per service name, for the prost baseline.
type Counts = Arc<Mutex<HashMap<String, u64>>>;

/// What a baseline server does with a request body (already inflated).
#[derive(Clone)]
struct Baseline {
    counts: Option<Counts>,
}

impl Baseline {
    fn handle(&self, body: &[u8]) -> Result<(), String> {
        let Some(counts) = &self.counts else {
            return Ok(());
        };
        let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
        let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
        for rs in &request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                })
                .unwrap_or("unknown_service");
            let spans: u64 = rs.scope_spans.iter().map(|ss| ss.spans.len() as u64).sum();
            match counts.get_mut(service) {
                Some(n) => *n += spans,
                None => {
                    counts.insert(service.to_owned(), spans);
                }
            }
        }
        Ok(())
    }
}

/// The `null-tonic` `TraceService` (tonic, `RawCodec`, gzip and zstd accepted).
#[derive(Clone)]
struct BaselineGrpc(Baseline);

impl NamedService for BaselineGrpc {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl tower::Service<http::Request<tonic::body::Body>> for BaselineGrpc {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<GrpcResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let handler = BaselineUnary(self.0.clone());
        Box::pin(async move {
            if !req.uri().path().ends_with("/Export") {
                return Ok(tonic::Status::unimplemented("").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(usize::MAX);
            Ok(grpc.unary(handler, req).await)
        })
    }
}

struct BaselineUnary(Baseline);

impl UnaryService<Bytes> for BaselineUnary {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let body = request.into_inner();
        std::future::ready(
            self.0
                .handle(&body)
                .map(|()| {
                    tonic::Response::new(Bytes::from(
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    ))
                })
                .map_err(tonic::Status::invalid_argument),
        )
    }
}

async fn baseline_http(
    State(baseline): State<Baseline>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    let result = match encoding.as_deref() {
        Some(b"gzip") => match gunzip(&body) {
            Ok(inflated) => baseline.handle(&inflated),
            Err(e) => Err(e.to_string()),
        },
        Some(b"zstd") => match zstd::stream::decode_all(&body[..]) {
            Ok(inflated) => baseline.handle(&inflated),
            Err(e) => Err(e.to_string()),
        },
        _ => baseline.handle(&body),
    };
    match result {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// A listener on a free loopback port, whose address (or the failure) is sent on
/// `addr_tx` for `start_server`.
async fn bind_loopback(
    addr_tx: &std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>,
) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => {
            let _ = addr_tx.send(listener.local_addr().map_err(Into::into));
            Some(listener)
        }
        Err(e) => {
            let _ = addr_tx.send(Err(e.into()));
            None
        }
    }
}

/// The earlier null server (`null-tonic`): tonic over gRPC, axum over HTTP.
fn start_tonic_baseline(args: &Args, workers: usize) -> anyhow::Result<Server> {
    let (transport, nodelay, h2) = (args.transport, args.baseline_nodelay, args.baseline_h2);
    let baseline = Baseline { counts: None };
    start_server(workers, move |stop, addr_tx| {
        Box::pin(async move {
            let Some(listener) = bind_loopback(&addr_tx).await else {
                return;
            };
            let result = match transport {
                TransportKind::Grpc => match h2 {
                    BaselineH2::Tonic => tonic::transport::Server::builder(),
                    BaselineH2::Sloxide => tonic::transport::Server::builder()
                        .max_frame_size(Some(256 * 1024))
                        .initial_stream_window_size(Some(4 << 20))
                        .initial_connection_window_size(Some(8 << 20)),
                }
                .add_routes(tonic::service::Routes::new(BaselineGrpc(baseline)))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(nodelay.then_some(true)),
                    stop,
                )
                .await
                .map_err(|e| e.to_string()),
                TransportKind::Http => {
                    let app = axum::Router::new()
                        .route("/v1/traces", axum::routing::post(baseline_http))
                        .layer(DefaultBodyLimit::max(64 << 20))
                        .with_state(baseline);
                    if nodelay {
                        use axum::serve::ListenerExt;
                        let listener = listener.tap_io(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        });
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await
                            .map_err(|e| e.to_string())
                    } else {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
            };
            if let Err(e) = result {
                eprintln!("baseline server: {e}");
            }
        })
    })
}

// ---------------------------------------------------------------------------------
// The tuned baseline: a raw hyper server (null, prost)

/// A request compression the baseline servers inflate.
#[derive(Clone, Copy)]
enum Encoding {
    Gzip,
    Zstd,
}

fn encoding_of(value: Option<&http::HeaderValue>) -> Result<Option<Encoding>, String> {
    match value.map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(None),
        Some(b"gzip") => Ok(Some(Encoding::Gzip)),
        Some(b"zstd") => Ok(Some(Encoding::Zstd)),
        Some(other) => Err(format!(
            "unsupported encoding {:?}",
            String::from_utf8_lossy(other)
        )),
    }
}

impl Baseline {
    /// Inflates `body` when it is compressed, then handles it. The null server keeps
    /// nothing: an uncompressed body is only read (it was, to arrive), a compressed one
    /// inflated in full and dropped.
    fn accept(&self, mut body: impl Buf, encoding: Option<Encoding>) -> Result<(), String> {
        let Some(encoding) = encoding else {
            if self.counts.is_none() {
                body.advance(body.remaining());
                return Ok(());
            }
            let bytes = body.copy_to_bytes(body.remaining());
            return self.handle(&bytes);
        };
        // Inflated as sloxide inflates, the best way this crate knows (into a buffer's
        // spare room, a zstd context kept per thread), into a buffer kept per thread:
        // the tuned form of the work, so that what sloxide adds is all that differs.
        let body = body.copy_to_bytes(body.remaining());
        let format = match encoding {
            Encoding::Gzip => sloxide::ingest::Format::Gzip,
            Encoding::Zstd => sloxide::ingest::Format::Zstd,
        };
        INFLATED.with(|out| {
            let mut out = out.borrow_mut();
            out.clear();
            let handled =
                sloxide::ingest::decompress(format, &body, MAX_INFLATED as usize, &mut out)
                    .map_err(|e| format!("inflate: {e}"))
                    .and_then(|()| self.handle(&out));
            // Kept for the next request up to what a large batch needs, as sloxide's
            // buffer pool keeps its buffers.
            if out.capacity() > 8 << 20 {
                *out = Vec::new();
            }
            handled
        })
    }
}

thread_local! {
    /// The inflate buffer of a baseline server's thread, reused from request to request.
    static INFLATED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// HTTP/2 settings of the raw baseline server.
#[derive(Clone, Copy, Debug)]
struct H2Tuning {
    frame: u32,
    stream_window: u32,
    conn_window: u32,
    adaptive: bool,
}

impl Args {
    fn h2_tuning(&self) -> H2Tuning {
        H2Tuning {
            frame: self.null_frame,
            stream_window: self.null_stream_window,
            conn_window: self.null_conn_window,
            adaptive: self.null_adaptive_window,
        }
    }
}

/// A gRPC response body: one message, then the trailers.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// The framed empty `ExportTraceServiceResponse` (it encodes to no bytes).
const EMPTY_GRPC_MESSAGE: [u8; 5] = [0; 5];

fn grpc_response(status: u32, message: &str) -> http::Response<GrpcBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from(status));
    if !message.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(message)
    {
        trailers.insert("grpc-message", v);
    }
    let mut response = http::Response::new(GrpcBody {
        data: (status == 0).then_some(Bytes::from_static(&EMPTY_GRPC_MESSAGE)),
        trailers: Some(trailers),
    });
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

async fn raw_grpc(
    baseline: Baseline,
    request: http::Request<Incoming>,
) -> Result<http::Response<GrpcBody>, Infallible> {
    if request.uri().path() != EXPORT_PATH {
        return Ok(grpc_response(12, "unimplemented"));
    }
    let (parts, body) = request.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return Ok(grpc_response(13, &format!("body: {e}"))),
    };
    let mut buf = collected.aggregate();
    let result = (|| {
        if buf.remaining() < 5 {
            return Err("short gRPC message".to_owned());
        }
        let compressed = buf.get_u8();
        let len = buf.get_u32() as usize;
        if buf.remaining() != len {
            return Err(format!(
                "gRPC prefix says {len} bytes, the body holds {}",
                buf.remaining()
            ));
        }
        let encoding = match compressed {
            0 => None,
            1 => Some(
                encoding_of(parts.headers.get("grpc-encoding"))?
                    .ok_or("compressed message without grpc-encoding")?,
            ),
            _ => return Err("bad compression flag".to_owned()),
        };
        baseline.accept(buf, encoding)
    })();
    Ok(match result {
        Ok(()) => grpc_response(0, ""),
        Err(e) => grpc_response(3, &e),
    })
}

async fn raw_http(
    baseline: Baseline,
    request: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: Bytes| {
        let mut response = http::Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/v1/traces" || request.method() != http::Method::POST {
        return Ok(answer(StatusCode::NOT_FOUND, Bytes::new()));
    }
    let (parts, body) = request.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, e.to_string().into())),
    };
    let result = encoding_of(parts.headers.get(header::CONTENT_ENCODING))
        .and_then(|encoding| baseline.accept(collected.aggregate(), encoding));
    Ok(match result {
        Ok(()) => {
            // An empty ExportTraceServiceResponse encodes to no bytes.
            let mut response = answer(StatusCode::OK, Bytes::new());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            response
        }
        Err(e) => answer(StatusCode::BAD_REQUEST, e.into()),
    })
}

/// `null` and `prost`: hyper's HTTP/2 (gRPC) or HTTP/1 server connections on our own
/// accept loop, TCP_NODELAY on every accepted socket.
fn start_raw_baseline(target: Target, args: &Args, workers: usize) -> anyhow::Result<Server> {
    let (transport, tuning) = (args.transport, args.h2_tuning());
    let baseline = Baseline {
        counts: (target == Target::Prost).then(Counts::default),
    };
    start_server(workers, move |mut stop, addr_tx| {
        Box::pin(async move {
            let Some(listener) = bind_loopback(&addr_tx).await else {
                return;
            };
            loop {
                let tcp = tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            eprintln!("baseline accept: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let baseline = baseline.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(tcp);
                    let result = match transport {
                        TransportKind::Grpc => {
                            let mut builder =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                            builder
                                .max_frame_size(tuning.frame)
                                .max_concurrent_streams(1024);
                            if tuning.adaptive {
                                builder.adaptive_window(true);
                            } else {
                                builder
                                    .initial_stream_window_size(tuning.stream_window)
                                    .initial_connection_window_size(tuning.conn_window);
                            }
                            builder
                                .serve_connection(
                                    io,
                                    hyper::service::service_fn(move |req| {
                                        raw_grpc(baseline.clone(), req)
                                    }),
                                )
                                .await
                        }
                        TransportKind::Http => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(
                                    io,
                                    hyper::service::service_fn(move |req| {
                                        raw_http(baseline.clone(), req)
                                    }),
                                )
                                .await
                        }
                    };
                    // A client closing its connection at the end of a run is no news.
                    let _ = result;
                });
            }
        })
    })
}

// ---------------------------------------------------------------------------------
// Child processes: sloxide-process, otelcol

/// A server in a child process, stopped (SIGTERM, then SIGKILL after 10 s) on drop.
struct ChildServer {
    name: &'static str,
    child: Child,
    pid: u32,
    otlp: SocketAddr,
    metrics: SocketAddr,
    /// The spans counter summed to check the server counted what it accepted, and the
    /// prefix of its span series.
    calls_metric: &'static str,
    span_prefix: &'static str,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill takes two integers; the pid is our own child's, not yet
            // reaped (we wait for it below), so it cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "warning: pid {} ignored SIGTERM for 10 s; killing it",
            self.pid
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports (free when this returns; another process could
/// take one before the child binds it, which then fails to start, loudly).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

/// A sloxide config file's text with every `data_dir` set to null.
fn without_data_dir(text: &str) -> String {
    text.lines()
        .map(|line| {
            let body = line.trim_start();
            if body.starts_with("data_dir:") {
                format!("{}data_dir: null", &line[..line.len() - body.len()])
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Collector's configuration: the otlp receiver, the spanmetrics connector labelled
/// as sloxide's span series are (service, span kind, status code, sloxide's
/// dimensions and region attribute; not the span name), with sloxide's histogram
/// buckets and no exemplars, and the prometheus exporter. No batch processor: the
/// connector aggregates as the spans arrive.
fn otelcol_config(
    config: &sloxide::config::Config,
    grpc: SocketAddr,
    http: SocketAddr,
    metrics: SocketAddr,
    flush_secs: u64,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let buckets: Vec<String> = config
        .histogram
        .buckets
        .iter()
        .map(|b| format!("{}us", (b * 1e6).round() as u64))
        .collect();
    let dimensions: String = config
        .dimensions
        .iter()
        .chain(config.region.attributes.first())
        .map(|d| format!("      - name: {}\n", quote(d)))
        .collect();
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {grpc}\n        \
         max_recv_msg_size_mib: 64\n      http:\n        endpoint: {http}\n\
         connectors:\n  spanmetrics:\n    histogram:\n      explicit:\n        buckets: [{}]\n    \
         dimensions:\n{dimensions}    exclude_dimensions: [span.name]\n    \
         resource_metrics_key_attributes: [service.name]\n    exemplars:\n      enabled: false\n    \
         metrics_flush_interval: {flush_secs}s\n\
         exporters:\n  prometheus:\n    endpoint: {metrics}\n\
         service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n  \
         pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [spanmetrics]\n    \
         metrics:\n      receivers: [spanmetrics]\n      exporters: [prometheus]\n",
        buckets.join(", "),
    )
}

fn sloxide_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.sloxide_bin {
        return Ok(path.clone());
    }
    // target/release/examples/loadgen -> target/release/sloxide
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("sloxide"))
        .context("cannot place the sloxide binary beside this example")?;
    if !path.is_file() {
        bail!(
            "{} does not exist: cargo build --release --bin sloxide, or --sloxide-bin",
            path.display()
        );
    }
    Ok(path)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn start_child(
    target: Target,
    args: &Args,
    config: &sloxide::config::Config,
) -> anyhow::Result<ChildServer> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports(3)?;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (grpc, http, metrics) = (at(ports[0]), at(ports[1]), at(ports[2]));
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log)?;
    let (mut command, calls_metric, span_prefix) = match target {
        Target::SloxideProcess => {
            let mut command = Command::new(sloxide_binary(args)?);
            command.arg("run");
            if let Some(path) = &args.config {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let file = dir.path().join("sloxide.yaml");
                std::fs::write(&file, without_data_dir(&text))?;
                command.arg("--config").arg(file);
            }
            command
                .arg("--otlp-grpc-listen")
                .arg(grpc.to_string())
                .arg("--otlp-http-listen")
                .arg(http.to_string())
                .arg("--metrics-listen")
                .arg(metrics.to_string())
                .arg("--log-level")
                .arg("warn");
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("SLOXIDE_") {
                    command.env_remove(key);
                }
            }
            (command, "sloxide_spans_total", "sloxide_span")
        }
        Target::Otelcol => {
            if !args.otelcol.is_file() {
                bail!(
                    "no Collector at {} (bash tests/peers/otelcol/build.sh, then --otelcol \
                     or SLOXIDE_OTELCOL)",
                    args.otelcol.display()
                );
            }
            let file = dir.path().join("otelcol.yaml");
            std::fs::write(
                &file,
                otelcol_config(config, grpc, http, metrics, args.otelcol_flush_secs),
            )?;
            let mut command = Command::new(&args.otelcol);
            command.arg("--config").arg(file);
            (
                command,
                "traces_span_metrics_calls_total",
                "traces_span_metrics_",
            )
        }
        _ => bail!("{} is not a child process target", target.name()),
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", target.name()))?;
    let mut server = ChildServer {
        name: target.name(),
        pid: child.id(),
        child,
        otlp: match args.transport {
            TransportKind::Grpc => grpc,
            TransportKind::Http => http,
        },
        metrics,
        calls_metric,
        span_prefix,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + CHILD_START;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!(
                "{} exited at start ({status}):\n{}",
                target.name(),
                log_tail(&server.log)
            );
        }
        let up = |addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        if up(server.otlp).is_ok() && up(server.metrics).is_ok() {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not open its ports within {CHILD_START:?}:\n{}",
                target.name(),
                log_tail(&server.log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET /metrics: (time, body). A GET that fails is tried again, up to twice (a server
/// may close a kept-alive connection just as the next request goes out on it).
async fn scrape(
    client: &HyperClient<HttpConnector, Full<Bytes>>,
    uri: &http::Uri,
) -> anyhow::Result<(Duration, Bytes)> {
    let mut attempt = 0;
    loop {
        match scrape_once(client, uri).await {
            Ok(scraped) => return Ok(scraped),
            Err(e) if attempt < 2 => {
                eprintln!("warning: GET {uri}: {e:#}; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn scrape_once(
    client: &HyperClient<HttpConnector, Full<Bytes>>,
    uri: &http::Uri,
) -> anyhow::Result<(Duration, Bytes)> {
    let start = Instant::now();
    let response = client.get(uri.clone()).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let took = start.elapsed();
    if status != StatusCode::OK {
        bail!("GET {uri}: {status}");
    }
    Ok((took, body))
}

/// The sum of a counter's samples in a text exposition.
fn sum_samples(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| {
            let values = line.rfind('}').map_or(line, |i| &line[i + 1..]);
            values.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// After the load: waits until the server's spans counter holds what it accepted (the
/// Collector's after its next flush), then times `--scrapes` GETs of /metrics.
async fn after_load(
    args: &Args,
    server: &ChildServer,
    accepted: u64,
) -> anyhow::Result<(ProcStats, f64)> {
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: http::Uri = format!("http://{}/metrics", server.metrics).parse()?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(args.otelcol_flush_secs.max(1) * 2 + 10);
    let counted = loop {
        let (_, body) = scrape(&client, &uri).await?;
        let counted = sum_samples(&String::from_utf8_lossy(&body), server.calls_metric);
        if counted >= accepted as f64 || tokio::time::Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut times = Vec::with_capacity(args.scrapes);
    let mut last = Bytes::new();
    for _ in 0..args.scrapes {
        let (took, body) = scrape(&client, &uri).await?;
        times.push(took.as_secs_f64() * 1e3);
        last = body;
    }
    let text = String::from_utf8_lossy(&last);
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (mut series_lines, mut span_lines, mut counter_lines) = (0, 0, 0);
    for line in samples {
        series_lines += 1;
        if line.starts_with(server.span_prefix) {
            span_lines += 1;
        }
        if line
            .strip_prefix(server.calls_metric)
            .is_some_and(|rest| rest.starts_with('{'))
        {
            counter_lines += 1;
        }
    }
    if let Some(dir) = &args.metrics_dump {
        let file = dir.join(format!("{}.prom", server.name));
        std::fs::write(&file, &last).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok((
        ProcStats {
            metrics_bytes: last.len(),
            scrape_ms: median(&times),
            series_lines,
            span_lines,
            counter_lines,
            ..ProcStats::default()
        },
        counted,
    ))
}
// ---------------------------------------------------------------------------------
// Clients

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    spans: AtomicU64,
    rejected: AtomicU64,
    failures: AtomicU64,
    sample_error: Mutex<Option<String>>,
}

#[derive(Clone, Copy, Default)]
struct Counters {
    requests: u64,
    spans: u64,
    rejected: u64,
    failures: u64,
}

impl Stats {
    fn snapshot(&self) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::Relaxed),
            spans: self.spans.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn record(&self, batch: u64, outcome: Result<u64, String>) {
        match outcome {
            Ok(rejected) => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                self.spans
                    .fetch_add(batch.saturating_sub(rejected), Ordering::Relaxed);
                self.rejected.fetch_add(rejected, Ordering::Relaxed);
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut sample = self.sample_error.lock().unwrap_or_else(|e| e.into_inner());
                if sample.is_none() {
                    *sample = Some(e);
                }
            }
        }
    }
}

/// Rejected spans reported by a response's partial_success.
fn rejected_of(message: &[u8]) -> Result<u64, String> {
    let response = ExportTraceServiceResponse::decode(message).map_err(|e| e.to_string())?;
    Ok(response
        .partial_success
        .map_or(0, |p| p.rejected_spans.max(0) as u64))
}

/// One connection's sender; cloned by each of its streams.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a handful of these per run
enum Sender {
    Tonic(tonic::client::Grpc<tonic::transport::Channel>),
    /// With the `grpc-encoding` of compressed messages.
    Hyper(
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        http::Uri,
        &'static str,
    ),
    /// With the `Content-Encoding`, if any.
    Http(
        HyperClient<HttpConnector, Full<Bytes>>,
        http::Uri,
        Option<&'static str>,
    ),
}

impl Sender {
    async fn connect(
        args: &Args,
        addr: SocketAddr,
        grpc_client: GrpcClient,
    ) -> anyhow::Result<Self> {
        match (args.transport, grpc_client) {
            (TransportKind::Grpc, GrpcClient::Tonic) => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                let mut grpc = tonic::client::Grpc::new(channel)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(usize::MAX);
                if args.gzip {
                    grpc = grpc
                        .send_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Gzip);
                }
                Ok(Self::Tonic(grpc))
            }
            (TransportKind::Grpc, _) => {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                tcp.set_nodelay(true)?;
                let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(tcp))
                    .await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Self::Hyper(
                    send,
                    format!("http://{addr}{EXPORT_PATH}").parse()?,
                    args.compression().unwrap_or("identity"),
                ))
            }
            (TransportKind::Http, _) => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client = HyperClient::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(args.streams)
                    .build(connector);
                Ok(Self::Http(
                    client,
                    format!("http://{addr}/v1/traces").parse()?,
                    args.compression(),
                ))
            }
        }
    }

    /// Sends one request; Ok(rejected spans) when the server accepted it.
    async fn send(&mut self, body: Bytes) -> Result<u64, String> {
        match self {
            Self::Tonic(grpc) => {
                grpc.ready().await.map_err(|e| format!("channel: {e}"))?;
                let response = grpc
                    .unary::<Bytes, Bytes, _>(
                        tonic::Request::new(body),
                        http::uri::PathAndQuery::from_static(EXPORT_PATH),
                        RawCodec,
                    )
                    .await
                    .map_err(|s| format!("grpc status {:?}: {}", s.code(), s.message()))?;
                rejected_of(response.get_ref())
            }
            Self::Hyper(send, uri, encoding) => {
                send.ready().await.map_err(|e| format!("h2: {e}"))?;
                let mut request = http::Request::post(uri.clone())
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header(header::TE, "trailers");
                if body.first() == Some(&1) {
                    request = request.header("grpc-encoding", *encoding);
                }
                let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
                let response = send
                    .send_request(request)
                    .await
                    .map_err(|e| format!("h2: {e}"))?;
                let (parts, body) = response.into_parts();
                if parts.status != StatusCode::OK {
                    return Err(format!("http status {}", parts.status));
                }
                let collected = body.collect().await.map_err(|e| format!("h2 body: {e}"))?;
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let status = trailers
                    .get("grpc-status")
                    .or_else(|| parts.headers.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("missing")
                    .to_owned();
                if status != "0" {
                    let message = trailers
                        .get("grpc-message")
                        .or_else(|| parts.headers.get("grpc-message"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    return Err(format!("grpc-status {status}: {message}"));
                }
                let data = collected.to_bytes();
                if data.len() < 5 || data[0] > 1 {
                    return Err("unexpected gRPC response framing".into());
                }
                if data[0] == 0 {
                    return rejected_of(&data[5..]);
                }
                // grpc-go (the Collector) compresses its answer as the request was.
                let encoding = parts.headers.get("grpc-encoding").map(|v| v.as_bytes());
                let inflated = match encoding {
                    Some(b"gzip") => gunzip(&data[5..]),
                    Some(b"zstd") => zstd::stream::decode_all(&data[5..]),
                    _ => return Err("compressed gRPC response without a known encoding".into()),
                }
                .map_err(|e| format!("gRPC response: {e}"))?;
                rejected_of(&inflated)
            }
            Self::Http(client, uri, encoding) => {
                let mut request = http::Request::post(uri.clone())
                    .header(header::CONTENT_TYPE, "application/x-protobuf");
                if let Some(encoding) = encoding {
                    request = request.header(header::CONTENT_ENCODING, *encoding);
                }
                let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("http: {e}"))?;
                let status = response.status();
                let data = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("http body: {e}"))?
                    .to_bytes();
                if status != StatusCode::OK {
                    let text = String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned();
                    return Err(format!("http status {status}: {text}"));
                }
                rejected_of(&data)
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Runs

/// What is measured of a child process beside its CPU.
#[derive(Clone, Default)]
struct ProcStats {
    /// `VmRSS` --idle-secs after the ports opened, before any load (kB).
    rss_idle_kb: u64,
    /// The highest `VmRSS` sampled every 100 ms over the measured load (kB).
    rss_load_kb: u64,
    /// `VmHWM` after the load (kB): the peak of the whole run, warm-up included.
    hwm_kb: u64,
    /// The last /metrics body, after the load.
    metrics_bytes: usize,
    /// Median time of a GET /metrics (ms).
    scrape_ms: f64,
    /// Sample lines on /metrics, those of the span series, and those of the spans
    /// counter (one per label set of service, region or resource, span kind, status
    /// code and dimensions: the cardinality).
    series_lines: usize,
    span_lines: usize,
    counter_lines: usize,
    /// The server's spans counter after the load, against the spans it accepted.
    counted: f64,
    accepted: u64,
    /// Spans of requests that failed at the client (which the server may still count).
    in_doubt: u64,
}

impl ProcStats {
    fn count_ok(&self) -> bool {
        self.accepted > 0
            && self.counted >= self.accepted as f64
            && self.counted <= (self.accepted + self.in_doubt) as f64
    }
}

#[derive(Clone)]
struct RunResult {
    target: &'static str,
    client: &'static str,
    wire_bytes: usize,
    raw_bytes: usize,
    secs: f64,
    counters: Counters,
    server_cpu: Option<f64>,
    client_cpu: f64,
    warmup_failures: u64,
    sample_error: Option<String>,
    process: Option<ProcStats>,
}

impl RunResult {
    fn spans_per_sec(&self) -> f64 {
        self.counters.spans as f64 / self.secs
    }

    fn spans_per_cpu_sec(&self) -> Option<f64> {
        self.server_cpu
            .filter(|c| *c > 0.0)
            .map(|c| self.counters.spans as f64 / c)
    }

    /// Server CPU nanoseconds per accepted span.
    fn ns_per_span(&self) -> Option<f64> {
        self.server_cpu
            .filter(|_| self.counters.spans > 0)
            .map(|c| c * 1e9 / self.counters.spans as f64)
    }

    fn lines(&self, args: &Args) -> Vec<String> {
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "na".to_owned(), |v| format!("{v:.prec$}"))
        };
        let mut line = format!(
            "target={} transport={} compression={} traffic={} client={} batch={} conns={} \
             streams={} bytes_per_req={} raw_bytes_per_req={} secs={:.1} requests={} spans={} \
             spans_per_sec={:.0} failures={} rejected={} server_cpu_secs={} \
             spans_per_cpu_sec={} server_ns_per_span={} client_cpu_secs={:.2} \
             warmup_failures={}",
            self.target,
            args.transport_name(),
            args.compression().unwrap_or("none"),
            args.traffic_name(),
            self.client,
            args.batch,
            args.connections,
            args.streams,
            self.wire_bytes,
            self.raw_bytes,
            self.secs,
            self.counters.requests,
            self.counters.spans,
            self.spans_per_sec(),
            self.counters.failures,
            self.counters.rejected,
            opt(self.server_cpu, 2),
            opt(self.spans_per_cpu_sec(), 0),
            opt(self.ns_per_span(), 1),
            self.client_cpu,
            self.warmup_failures,
        );
        match self.target {
            "null" | "prost" if args.transport == TransportKind::Grpc => {
                let t = args.h2_tuning();
                if t.adaptive {
                    line.push_str(&format!(" h2_frame={} h2_window=adaptive", t.frame));
                } else {
                    line.push_str(&format!(
                        " h2_frame={} h2_stream_window={} h2_conn_window={}",
                        t.frame, t.stream_window, t.conn_window
                    ));
                }
            }
            "null-tonic" => {
                let h2 = match (args.transport, args.baseline_h2) {
                    (TransportKind::Http, _) => "na",
                    (_, BaselineH2::Tonic) => "tonic",
                    (_, BaselineH2::Sloxide) => "sloxide",
                };
                line.push_str(&format!(
                    " baseline_h2={h2} baseline_nodelay={}",
                    args.baseline_nodelay
                ));
            }
            _ => {}
        }
        if let Some(e) = &self.sample_error {
            line.push_str(&format!(" sample_error={e:?}"));
        }
        let mut lines = vec![line];
        if let Some(p) = &self.process {
            lines.push(format!(
                "process target={} rss_idle_kb={} rss_load_kb={} vmhwm_kb={} metrics_bytes={} \
                 scrape_ms={:.2} series_lines={} span_series_lines={} counter_series_lines={}",
                self.target,
                p.rss_idle_kb,
                p.rss_load_kb,
                p.hwm_kb,
                p.metrics_bytes,
                p.scrape_ms,
                p.series_lines,
                p.span_lines,
                p.counter_lines,
            ));
            lines.push(format!(
                "check target={} counted_spans={:.0} accepted_spans={} in_doubt_spans={} {}",
                self.target,
                p.counted,
                p.accepted,
                p.in_doubt,
                if p.count_ok() {
                    "ok: the server counted every span it accepted"
                } else {
                    "MISMATCH: the server's counter does not match the spans it accepted"
                },
            ));
        }
        lines
    }
}

/// What serves a run.
enum Running {
    InProcess(Server),
    Child(ChildServer),
    External,
}

fn run_once(
    args: &Args,
    target: Target,
    config: &sloxide::config::Config,
    workers: usize,
    client_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<RunResult> {
    let grpc_client = match (args.transport, args.grpc_client) {
        (TransportKind::Http, _) => None,
        (TransportKind::Grpc, GrpcClient::Auto) => Some(if args.compression().is_some() {
            GrpcClient::Hyper
        } else {
            GrpcClient::Tonic
        }),
        (TransportKind::Grpc, c) => Some(c),
    };
    let framed = grpc_client == Some(GrpcClient::Hyper);
    let bodies = bodies(args, framed)?;
    let (running, addr, cpu_source) = match args.addr {
        Some(addr) => (
            Running::External,
            addr,
            args.pid.map_or(CpuSource::None, CpuSource::Pid),
        ),
        None => match target {
            Target::Sloxide => {
                let server = start_sloxide(config, args.transport, workers)?;
                let addr = server.addr;
                (Running::InProcess(server), addr, CpuSource::OwnThreads)
            }
            Target::Null | Target::Prost => {
                let server = start_raw_baseline(target, args, workers)?;
                let addr = server.addr;
                (Running::InProcess(server), addr, CpuSource::OwnThreads)
            }
            Target::NullTonic => {
                let server = start_tonic_baseline(args, workers)?;
                let addr = server.addr;
                (Running::InProcess(server), addr, CpuSource::OwnThreads)
            }
            Target::SloxideProcess | Target::Otelcol => {
                let child = start_child(target, args, config)?;
                let (addr, pid) = (child.otlp, child.pid);
                (Running::Child(child), addr, CpuSource::Pid(pid))
            }
        },
    };
    let child_pid = match &running {
        Running::Child(child) => Some(child.pid),
        _ => None,
    };
    let rss_idle_kb = child_pid.map(|pid| {
        std::thread::sleep(Duration::from_secs_f64(args.idle_secs));
        status_kb(pid, "VmRSS").unwrap_or(0)
    });
    let outcome = client_rt.block_on(drive(
        args,
        addr,
        grpc_client.unwrap_or(GrpcClient::Tonic),
        &bodies.bodies,
        cpu_source,
        child_pid,
    ));
    let mut process = None;
    let outcome = outcome.and_then(|outcome| {
        if let Running::Child(child) = &running {
            let hwm_kb = status_kb(child.pid, "VmHWM").unwrap_or(0);
            let (mut stats, counted) = client_rt
                .block_on(after_load(args, child, outcome.accepted_total))
                .with_context(|| {
                    format!(
                        "after the load of {}; its log ends:\n{}",
                        target.name(),
                        log_tail(&child.log)
                    )
                })?;
            stats.rss_idle_kb = rss_idle_kb.unwrap_or(0);
            stats.rss_load_kb = outcome.rss_peak_kb;
            stats.hwm_kb = hwm_kb;
            stats.counted = counted;
            stats.accepted = outcome.accepted_total;
            stats.in_doubt = outcome.failed_total * args.batch as u64;
            process = Some(stats);
        }
        Ok(outcome)
    });
    // The clients are dropped by now, so a graceful shutdown has nothing to wait for.
    match running {
        Running::InProcess(server) => server.stop(),
        Running::Child(child) => drop(child),
        Running::External => {}
    }
    let outcome = outcome?;
    Ok(RunResult {
        target: if args.addr.is_some() {
            "external"
        } else {
            target.name()
        },
        client: match grpc_client {
            None => "hyper-http1",
            Some(GrpcClient::Hyper) => "hyper-h2",
            Some(_) => "tonic",
        },
        wire_bytes: bodies.wire_len,
        raw_bytes: bodies.raw_len,
        secs: outcome.secs,
        counters: outcome.counters,
        server_cpu: outcome.server_cpu,
        client_cpu: outcome.client_cpu,
        warmup_failures: outcome.warmup_failures,
        sample_error: outcome.sample_error,
        process,
    })
}

struct DriveOutcome {
    secs: f64,
    counters: Counters,
    server_cpu: Option<f64>,
    client_cpu: f64,
    warmup_failures: u64,
    sample_error: Option<String>,
    /// Spans accepted over the whole run, warm-up included, and requests that failed.
    accepted_total: u64,
    failed_total: u64,
    /// The highest `VmRSS` of the child sampled over the measured part (kB).
    rss_peak_kb: u64,
}

async fn drive(
    args: &Args,
    addr: SocketAddr,
    grpc_client: GrpcClient,
    bodies: &[Bytes],
    cpu_source: CpuSource,
    rss_pid: Option<u32>,
) -> anyhow::Result<DriveOutcome> {
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(Sender::connect(args, addr, grpc_client).await?);
    }
    let stats = Arc::new(Stats::default());
    let start = tokio::time::Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let batch = args.batch as u64;
    let mut loops = tokio::task::JoinSet::new();
    for (c, sender) in senders.iter().enumerate() {
        for s in 0..args.streams {
            let mut sender = sender.clone();
            let stats = stats.clone();
            let bodies: Vec<Bytes> = bodies.to_vec();
            let mut next = (c * args.streams + s) % bodies.len();
            loops.spawn(async move {
                while tokio::time::Instant::now() < end {
                    let body = bodies[next].clone();
                    next = (next + 1) % bodies.len();
                    let outcome =
                        match tokio::time::timeout(REQUEST_TIMEOUT, sender.send(body)).await {
                            Ok(outcome) => outcome,
                            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                        };
                    let failed = outcome.is_err();
                    stats.record(batch, outcome);
                    if failed {
                        // Don't spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            });
        }
    }
    drop(senders);
    // The child's memory under load: sampled over the measured part only.
    let sampler = rss_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_end).await;
            let mut tick = tokio::time::interval(RSS_SAMPLE);
            let mut peak = 0;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                peak = peak.max(status_kb(pid, "VmRSS").unwrap_or(0));
            }
            peak
        })
    });
    tokio::time::sleep_until(warm_end).await;
    let (c0, cpu0, t0) = (stats.snapshot(), cpu_snapshot(cpu_source), Instant::now());
    tokio::time::sleep_until(end).await;
    let (c1, cpu1, t1) = (stats.snapshot(), cpu_snapshot(cpu_source), Instant::now());
    while loops.join_next().await.is_some() {}
    let rss_peak_kb = match sampler {
        Some(sampler) => sampler.await.unwrap_or(0),
        None => 0,
    };
    let all = stats.snapshot();
    let secs = (t1 - t0).as_secs_f64();
    let counters = Counters {
        requests: c1.requests - c0.requests,
        spans: c1.spans - c0.spans,
        rejected: c1.rejected - c0.rejected,
        failures: c1.failures - c0.failures,
    };
    let (server_cpu, client_cpu) = cpu_between(cpu_source, &cpu0, &cpu1);
    let sample_error = stats
        .sample_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(DriveOutcome {
        secs,
        counters,
        server_cpu,
        client_cpu,
        warmup_failures: c0.failures,
        sample_error,
        accepted_total: all.spans,
        failed_total: all.failures,
        rss_peak_kb,
    })
}

// ---------------------------------------------------------------------------------
// --compare

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

/// `median [min, max]` of a series, at `prec` decimals.
fn spread(values: &[f64], prec: usize) -> String {
    if values.is_empty() {
        return "na".to_owned();
    }
    let (lo, hi) = min_max(values);
    format!("{:.prec$} [{lo:.prec$}, {hi:.prec$}]", median(values))
}

fn summarize(args: &Args, targets: &[Target], results: &[Vec<RunResult>]) {
    let head = format!(
        "transport={} compression={} traffic={}",
        args.transport_name(),
        args.compression().unwrap_or("none"),
        args.traffic_name()
    );
    for (target, runs) in targets.iter().zip(results) {
        let of = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
            runs.iter().filter_map(f).collect()
        };
        let failures: u64 = runs.iter().map(|r| r.counters.failures).sum();
        println!(
            "summary target={} {head} rounds={} spans_per_sec={} spans_per_cpu_sec={} \
             server_ns_per_span={} failures={failures}",
            target.name(),
            runs.len(),
            spread(&of(&|r| Some(r.spans_per_sec())), 0),
            spread(&of(&RunResult::spans_per_cpu_sec), 0),
            spread(&of(&RunResult::ns_per_span), 1),
        );
        if runs.iter().any(|r| r.process.is_some()) {
            let p = |f: &dyn Fn(&ProcStats) -> f64| -> Vec<f64> {
                runs.iter()
                    .filter_map(|r| r.process.as_ref().map(f))
                    .collect()
            };
            let checks_ok = runs
                .iter()
                .filter(|r| r.process.as_ref().is_some_and(ProcStats::count_ok))
                .count();
            println!(
                "summary-process target={} {head} rss_idle_kb={} rss_load_kb={} vmhwm_kb={} \
                 metrics_bytes={} scrape_ms={} series_lines={} span_series_lines={} \
                 counter_series_lines={} counted_every_span={checks_ok}/{}",
                target.name(),
                spread(&p(&|s| s.rss_idle_kb as f64), 0),
                spread(&p(&|s| s.rss_load_kb as f64), 0),
                spread(&p(&|s| s.hwm_kb as f64), 0),
                spread(&p(&|s| s.metrics_bytes as f64), 0),
                spread(&p(&|s| s.scrape_ms), 2),
                spread(&p(&|s| s.series_lines as f64), 0),
                spread(&p(&|s| s.span_lines as f64), 0),
                spread(&p(&|s| s.counter_lines as f64), 0),
                runs.len(),
            );
        }
    }
    // Per-round ratios of the first target against each other one.
    let (Some(first), Some(a)) = (targets.first(), results.first()) else {
        return;
    };
    for (other, b) in targets.iter().zip(results).skip(1) {
        let ratios = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
            a.iter()
                .zip(b)
                .filter_map(|(x, y)| Some(f(x)? / f(y)?))
                .collect()
        };
        println!(
            "ratio {}/{} {head} spans_per_sec={} spans_per_cpu_sec={} server_ns_per_span={}",
            first.name(),
            other.name(),
            spread(&ratios(&|r| Some(r.spans_per_sec())), 3),
            spread(&ratios(&RunResult::spans_per_cpu_sec), 3),
            spread(&ratios(&RunResult::ns_per_span), 3),
        );
        if first.is_process() && other.is_process() {
            let p = |f: fn(&ProcStats) -> f64| {
                ratios(&move |r: &RunResult| r.process.as_ref().map(f).filter(|v| *v > 0.0))
            };
            println!(
                "ratio-process {}/{} {head} rss_idle={} rss_load={} vmhwm={} metrics_bytes={} \
                 scrape_ms={}",
                first.name(),
                other.name(),
                spread(&p(|s| s.rss_idle_kb as f64), 3),
                spread(&p(|s| s.rss_load_kb as f64), 3),
                spread(&p(|s| s.hwm_kb as f64), 3),
                spread(&p(|s| s.metrics_bytes as f64), 3),
                spread(&p(|s| s.scrape_ms), 3),
            );
        }
    }
}
