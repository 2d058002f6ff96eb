//! End-to-end load generator: sends pre-encoded OTLP trace requests to a server and
//! prints the accepted spans per second, with the server's CPU seconds.
//!
//! The comparison servers live in this file, so one command gives a figure and its
//! baseline from the same run:
//!
//! - `sloxide`: `sloxide::daemon::run` with the given (or embedded default) config;
//! - `null`: accepts `TraceService/Export` (gRPC, through tonic with `RawCodec`) or
//!   `POST /v1/traces` (HTTP, through axum), reads (and gunzips) the whole request and
//!   answers an empty `ExportTraceServiceResponse`: the transport floor;
//! - `prost`: like `null`, but decodes the request with prost and counts spans per
//!   service name into a `Mutex<HashMap<String, u64>>`.
//!
//! Every in-process server runs on its own multi-thread tokio runtime whose threads are
//! named `lg-srv`, with as many workers as sloxide's own runtime would have; its CPU
//! time is the sum of `/proc/self/task/<tid>/stat` over those threads. Every loop is
//! bounded in time and all traffic goes to 127.0.0.1 (or to `--addr`).
//!
//! ```sh
//! cargo run --release --example loadgen -- --target sloxide --transport grpc
//! cargo run --release --example loadgen -- --compare --rounds 5
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::grpc::RawCodec;
use tonic::codec::CompressionEncoding;
use tonic::server::{NamedService, UnaryService};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Thread name prefix of the server runtime (comm is at most 15 bytes).
const SERVER_THREADS: &str = "lg-srv";
const CLIENT_THREADS: &str = "lg-cli";
/// Distinct pre-encoded requests per run.
const DISTINCT_REQUESTS: usize = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DURATION_SECS: f64 = 120.0;
const MAX_WARMUP_SECS: f64 = 60.0;
const MAX_ROUNDS: usize = 20;
const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Sloxide,
    Null,
    Prost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    Grpc,
    Http,
}

/// Which gRPC client sends the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GrpcClient {
    /// tonic without --gzip, hyper with --gzip.
    Auto,
    /// `tonic::client::Grpc` with `RawCodec` over one `Channel` per connection. With
    /// --gzip tonic compresses every message again (level 6) on the client.
    Tonic,
    /// A hyper HTTP/2 connection sending pre-framed (and pre-compressed) gRPC messages.
    Hyper,
}

/// Load an OTLP trace receiver and print accepted spans per second.
#[derive(Debug, Parser, Clone)]
#[command(name = "loadgen")]
struct Args {
    /// Which server to load (started in-process unless --addr is given).
    #[arg(long, value_enum, default_value = "sloxide")]
    target: Target,
    #[arg(long, value_enum, default_value = "grpc")]
    transport: TransportKind,
    /// Compress requests (grpc-encoding: gzip, or Content-Encoding: gzip).
    #[arg(long)]
    gzip: bool,
    /// Compress requests with zstd (level 3) instead (grpc-encoding or Content-Encoding:
    /// zstd). The gRPC client is then hyper, with pre-compressed messages.
    #[arg(long, conflicts_with = "gzip")]
    zstd: bool,
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
    /// Distinct service names in the fixture.
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// Distinct regions in the fixture.
    #[arg(long, default_value_t = 2)]
    regions: usize,
    /// Every n-th span is an error (0: none).
    #[arg(long, default_value_t = 10)]
    error_every: usize,
    /// sloxide configuration file (default: the embedded default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Load an already running server at HOST:PORT instead of starting one.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
    /// With --addr: the server's process id, to read its CPU seconds.
    #[arg(long, requires = "addr")]
    pid: Option<u32>,
    /// Run sloxide, null and prost one after the other, --rounds times, and print
    /// medians and ratios.
    #[arg(long, conflicts_with = "addr")]
    compare: bool,
    /// Rounds of --compare.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Set TCP_NODELAY on the null and prost servers' accepted sockets. Off by default,
    /// as in sloxide, whose listeners (tonic's `TcpIncoming::from`, `axum::serve`) leave
    /// Nagle's algorithm on.
    #[arg(long)]
    baseline_nodelay: bool,
    /// HTTP/2 settings of the null and prost gRPC servers: tonic's defaults (16 KiB
    /// frames, 1 MiB windows), or the ones sloxide's src/daemon.rs sets at the time of
    /// writing (256 KiB frames, 4 MiB stream and 8 MiB connection windows).
    #[arg(long, value_enum, default_value = "tonic")]
    baseline_h2: BaselineH2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BaselineH2 {
    Tonic,
    Sloxide,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    validate(&args)?;
    // The allocator settings the daemon's main sets, so that the in-process sloxide
    // allocates as the daemon does (they apply to the whole process: the baselines too).
    sloxide::memory::configure();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let config = match &args.config {
        Some(path) => sloxide::config::Config::load(path)?,
        None => sloxide::config::Config::embedded_default(),
    };
    if !args.compare {
        let result = run_once(&args, args.target, &config, workers, &client_rt)?;
        println!("{}", result.line(&args));
        return Ok(());
    }
    let targets = [Target::Sloxide, Target::Null, Target::Prost];
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, target) in targets.iter().enumerate() {
            let result = run_once(&args, *target, &config, workers, &client_rt)?;
            println!("round={} {}", round + 1, result.line(&args));
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
    if args.compare && !(1..=MAX_ROUNDS).contains(&args.rounds) {
        bail!("--rounds must be in [1, {MAX_ROUNDS}]");
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

/// The wire bodies to send: protobuf, gzipped when asked for, and for the hyper gRPC
/// client already framed (5-byte prefix).
struct Bodies {
    bodies: Vec<Bytes>,
    /// Uncompressed protobuf bytes of the first request.
    raw_len: usize,
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
}

fn bodies(args: &Args, framed_grpc: bool) -> anyhow::Result<Bodies> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut out = Vec::with_capacity(DISTINCT_REQUESTS);
    let mut raw_len = 0;
    for i in 0..DISTINCT_REQUESTS {
        // Distinct end times, a few ms apart, so no two requests are the same bytes.
        let request = fixture::traces(&shape(args, now - (i as u64 + 1) * 3_000_000));
        let raw = request.encode_to_vec();
        raw_len = raw.len();
        let compress = args.transport == TransportKind::Http || framed_grpc;
        let payload = match args.compression() {
            Some("gzip") if compress => gzip(&raw)?,
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
        out.push(body);
    }
    Ok(Bodies {
        bodies: out,
        raw_len,
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
// CPU accounting

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

/// What a baseline server does with a request body (already gunzipped).
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

/// The baseline `TraceService` (tonic, `RawCodec`, gzip accepted).
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

fn start_baseline(target: Target, args: &Args, workers: usize) -> anyhow::Result<Server> {
    let (transport, nodelay, h2) = (args.transport, args.baseline_nodelay, args.baseline_h2);
    let baseline = Baseline {
        counts: (target == Target::Prost).then(Counts::default),
    };
    start_server(workers, move |stop, addr_tx| {
        Box::pin(async move {
            let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.into()));
                    return;
                }
            };
            let addr = listener.local_addr();
            let _ = addr_tx.send(addr.map_err(Into::into));
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
                if data.len() < 5 || data[0] != 0 {
                    return Err("unexpected gRPC response framing".into());
                }
                rejected_of(&data[5..])
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

    fn line(&self, args: &Args) -> String {
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "na".to_owned(), |v| format!("{v:.prec$}"))
        };
        let mut line = format!(
            "target={} transport={} compression={} client={} batch={} conns={} streams={} \
             bytes_per_req={} raw_bytes_per_req={} secs={:.1} requests={} spans={} \
             spans_per_sec={:.0} failures={} rejected={} server_cpu_secs={} \
             spans_per_cpu_sec={} client_cpu_secs={:.2} warmup_failures={}",
            self.target,
            match args.transport {
                TransportKind::Grpc => "grpc",
                TransportKind::Http => "http",
            },
            args.compression().unwrap_or("none"),
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
            self.client_cpu,
            self.warmup_failures,
        );
        if self.target == "null" || self.target == "prost" {
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
        if let Some(e) = &self.sample_error {
            line.push_str(&format!(" sample_error={e:?}"));
        }
        line
    }
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
    let (server, addr, cpu_source) = match args.addr {
        Some(addr) => (None, addr, args.pid.map_or(CpuSource::None, CpuSource::Pid)),
        None => {
            let server = match target {
                Target::Sloxide => start_sloxide(config, args.transport, workers)?,
                _ => start_baseline(target, args, workers)?,
            };
            let addr = server.addr;
            (Some(server), addr, CpuSource::OwnThreads)
        }
    };
    let outcome = client_rt.block_on(drive(
        args,
        addr,
        grpc_client.unwrap_or(GrpcClient::Tonic),
        &bodies.bodies,
        cpu_source,
    ));
    // The clients are dropped by now, so a graceful shutdown has nothing to wait for.
    if let Some(server) = server {
        server.stop();
    }
    let (secs, counters, server_cpu, client_cpu, warmup_failures, sample_error) = outcome?;
    Ok(RunResult {
        target: match (args.addr, target) {
            (Some(_), _) => "external",
            (None, Target::Sloxide) => "sloxide",
            (None, Target::Null) => "null",
            (None, Target::Prost) => "prost",
        },
        client: match grpc_client {
            None => "hyper-http1",
            Some(GrpcClient::Hyper) => "hyper-h2",
            Some(_) => "tonic",
        },
        wire_bytes: bodies.bodies[0].len(),
        raw_bytes: bodies.raw_len,
        secs,
        counters,
        server_cpu,
        client_cpu,
        warmup_failures,
        sample_error,
    })
}

type DriveOutcome = (f64, Counters, Option<f64>, f64, u64, Option<String>);

async fn drive(
    args: &Args,
    addr: SocketAddr,
    grpc_client: GrpcClient,
    bodies: &[Bytes],
    cpu_source: CpuSource,
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
    tokio::time::sleep_until(warm_end).await;
    let (c0, cpu0, t0) = (stats.snapshot(), cpu_snapshot(cpu_source), Instant::now());
    tokio::time::sleep_until(end).await;
    let (c1, cpu1, t1) = (stats.snapshot(), cpu_snapshot(cpu_source), Instant::now());
    while loops.join_next().await.is_some() {}
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
    Ok((
        secs,
        counters,
        server_cpu,
        client_cpu,
        c0.failures,
        sample_error,
    ))
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

fn summarize(args: &Args, targets: &[Target], results: &[Vec<RunResult>]) {
    let transport = match args.transport {
        TransportKind::Grpc => "grpc",
        TransportKind::Http => "http",
    };
    for (target, runs) in targets.iter().zip(results) {
        let rates: Vec<f64> = runs.iter().map(RunResult::spans_per_sec).collect();
        let per_cpu: Vec<f64> = runs
            .iter()
            .filter_map(RunResult::spans_per_cpu_sec)
            .collect();
        let (lo, hi) = min_max(&rates);
        let failures: u64 = runs.iter().map(|r| r.counters.failures).sum();
        println!(
            "summary target={} transport={transport} compression={} rounds={} \
             median_spans_per_sec={:.0} min={:.0} max={:.0} \
             median_spans_per_cpu_sec={:.0} failures={failures}",
            runs.first().map_or("?", |r| r.target),
            args.compression().unwrap_or("none"),
            runs.len(),
            median(&rates),
            lo,
            hi,
            median(&per_cpu),
        );
        let _ = target;
    }
    let ratio = |name: &str, a: &[RunResult], b: &[RunResult]| {
        let rates: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| x.spans_per_sec() / y.spans_per_sec())
            .collect();
        let per_cpu: Vec<f64> = a
            .iter()
            .zip(b)
            .filter_map(|(x, y)| Some(x.spans_per_cpu_sec()? / y.spans_per_cpu_sec()?))
            .collect();
        let (lo, hi) = min_max(&rates);
        let (clo, chi) = min_max(&per_cpu);
        println!(
            "ratio {name} transport={transport} compression={} spans_per_sec median={:.3} min={:.3} \
             max={:.3} spans_per_cpu_sec median={:.3} min={:.3} max={:.3}",
            args.compression().unwrap_or("none"),
            median(&rates),
            lo,
            hi,
            median(&per_cpu),
            clo,
            chi,
        );
    };
    ratio("sloxide/null", &results[0], &results[1]);
    ratio("sloxide/prost", &results[0], &results[2]);
}
