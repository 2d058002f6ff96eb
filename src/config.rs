//! The configuration file: the serde types that read it, the documented defaults, and
//! validation into the checked [`Config`] that the rest of the daemon uses unchecked.
//!
//! Reading happens in two steps. serde fills `Raw*` structs, in which every key is
//! optional and carries its line and column ([`Spanned`]). Validation then turns them
//! into the checked types below, filling in the defaults that `docs/reference.md`
//! lists, so an error names the file, the position, the key path and the fix.

pub mod duration;
pub mod slo;
#[cfg(test)]
mod tests;

pub use duration::{DurationError, SizeError, format_duration, parse_duration, parse_size};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_saphyr::{Location, MessageFormatter, Spanned};

/// The embedded default configuration, `config/default.yaml`.
pub const DEFAULT_YAML: &str = include_str!("../config/default.yaml");

/// The origin that errors in [`DEFAULT_YAML`] name.
pub const EMBEDDED_ORIGIN: &str = "<embedded default>";

/// Label names that sloxide writes itself, so a dimension may not become one of them.
pub const BUILTIN_LABELS: [&str; 9] = [
    "service",
    "region",
    "span_kind",
    "status_code",
    "le",
    "quantile",
    "severity",
    "slo",
    "window",
];

/// The largest accepted `timing.late_slack`.
pub const MAX_LATE_SLACK: Duration = Duration::from_secs(86_400);
/// The largest accepted `timing.max_skew`.
pub const MAX_SKEW: Duration = Duration::from_secs(3_600);
/// The smallest accepted `limits.max_label_bytes`.
pub const MIN_LABEL_BYTES: usize = 16;

/// Checked configuration. Every value has been validated; later code relies on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listen addresses.
    pub listen: Listen,
    /// Where the region label comes from.
    pub region: Region,
    /// Span attributes that become extra labels on span metrics. Unique, non-empty, and
    /// none maps (through [`dimension_label`]) to a label in [`BUILTIN_LABELS`].
    pub dimensions: Vec<String>,
    /// Histogram buckets and summary quantiles.
    pub histogram: Histogram,
    /// How late or early an event may be and still count in its own time slot.
    pub timing: Timing,
    /// Bounds on requests and series.
    pub limits: Limits,
    /// Checkpointing.
    pub state: State,
    /// The SLOs, in file order, with unique names.
    pub slos: Vec<slo::Slo>,
    /// Multiwindow burn-rate alert tiers.
    pub alerting: slo::Alerting,
    /// Bearer tokens that OTLP requests must carry; `None`: no authentication.
    pub auth: Option<Auth>,
    /// TLS on both OTLP ports; `None` serves them in clear text.
    pub tls: Option<Tls>,
    /// The metrics port's own settings.
    pub metrics: Metrics,
}

/// `tls` and `metrics.tls`: a certificate and its key, and optionally the CA that client
/// certificates must chain to, in the OpenTelemetry Collector's vocabulary. Validation
/// has read every file once and found a usable certificate, key and CA in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate that chains to
    /// one of them.
    pub client_ca_file: Option<PathBuf>,
    /// The oldest TLS version accepted. Default 1.2.
    pub min_version: TlsVersion,
}

/// A TLS version (`min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl TlsVersion {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }
}

/// `metrics`: the metrics port's settings (its address is `listen.metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metrics {
    /// TLS on the metrics port; `None` serves it in clear text.
    pub tls: Option<Tls>,
    /// Bearer tokens that `GET /metrics` must carry; `None`: none needed.
    pub auth: Option<Auth>,
}

/// `auth`: bearer-token authentication, in the vocabulary of the OpenTelemetry
/// Collector's `bearertokenauth` extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// A file of tokens, one per line (blank lines and `#` comments skipped). Readable,
    /// with at least one token, when the configuration is checked; reread when it
    /// changes.
    pub bearer_tokens_file: PathBuf,
    /// The request header that carries the token. A valid header name. Default
    /// `Authorization`.
    pub header: String,
    /// The scheme before the token in that header (`<scheme> <token>`, matched without
    /// regard to case); empty: the whole value is the token. Default `Bearer`.
    pub scheme: String,
}

/// `listen`: the three listen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// OTLP/gRPC, default `0.0.0.0:4317`.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP, default `0.0.0.0:4318`.
    pub otlp_http: SocketAddr,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`, default `0.0.0.0:9464`.
    pub metrics: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            otlp_grpc: SocketAddr::from(([0, 0, 0, 0], 4317)),
            otlp_http: SocketAddr::from(([0, 0, 0, 0], 4318)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

/// `region`: where the region label comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Attribute keys looked up on the resource, then on the span or log; first hit wins.
    /// Unique and non-empty; the list itself may be empty. Default `[cloud.region]`.
    pub attributes: Vec<String>,
    /// The region when no attribute is found. Non-empty. Default `unknown`.
    pub default: String,
}

impl Default for Region {
    fn default() -> Self {
        Self {
            attributes: vec!["cloud.region".to_owned()],
            default: "unknown".to_owned(),
        }
    }
}

/// `histogram`: bucket bounds and summary quantiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds in seconds: non-empty, finite, positive and strictly ascending.
    pub buckets: Vec<f64>,
    /// Quantiles, each strictly between 0 and 1, strictly ascending. May be empty.
    pub quantiles: Vec<f64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![
                0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
                8.192, 16.384,
            ],
            quantiles: vec![0.5, 0.9, 0.99, 0.999],
        }
    }
}

/// `timing`: the window in which an event counts at its own time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// An event that ended longer ago than this counts at arrival time. At most
    /// [`MAX_LATE_SLACK`]. Default 5m.
    pub late_slack: Duration,
    /// An event that ends further in the future than this counts at arrival time. At most
    /// [`MAX_SKEW`]. Default 1m.
    pub max_skew: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            late_slack: Duration::from_secs(300),
            max_skew: Duration::from_secs(60),
        }
    }
}

/// `limits`: bounds on requests, series and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body as received (compressed). Positive. Default 16MiB.
    pub max_request_bytes: usize,
    /// Largest body once decompressed; at least `max_request_bytes`. Default 64MiB.
    pub max_decompressed_bytes: usize,
    /// Most records (spans or log records) in one request; a request with more is
    /// refused before its batch is built. Positive. Default 100000.
    pub max_records_per_request: usize,
    /// Series per metric family before new label sets fold into overflow. Positive.
    /// Default 100000.
    pub max_series: usize,
    /// Series per service and family before overflow. Positive. Default 5000.
    pub max_series_per_service: usize,
    /// Longer label values are cut at a UTF-8 boundary. At least [`MIN_LABEL_BYTES`].
    /// Default 256.
    pub max_label_bytes: usize,
    /// A label set without events for this long leaves `/metrics`. Positive. Default 15m.
    pub series_idle_expiry: Duration,
    /// The compressions request bodies may use; uncompressed bodies are always accepted.
    /// Default: all of them ([`Compressions::ALL`]).
    pub compression: Compressions,
    /// The bytes all requests in flight may hold at once: bodies as they arrive, their
    /// decompressed form and their decode. At least 1MiB. Default 256MiB.
    pub max_in_flight_bytes: usize,
    /// How long a request body may take to arrive, from its headers to its last byte;
    /// a body still arriving then is refused (408 / DEADLINE_EXCEEDED). At least 100ms,
    /// at most 1h. Default 30s.
    pub body_read_timeout: Duration,
    /// How long a request waits for room in `max_in_flight_bytes` before it is refused
    /// (503 / UNAVAILABLE). At most 1m; 0s refuses at once. Default 1s.
    pub admission_wait: Duration,
    /// Open connections per OTLP port; at the cap a new connection closes a silent or
    /// idle one to make room, or waits until one closes (the descriptor budget may lower
    /// it, see `net`). Positive. Default 4096.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head (TLS handshake included)
    /// this long after it opened, or after its first byte of a later HTTP/1 request, is
    /// closed. Positive. Default 10s.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with a
    /// GOAWAY). Positive. Default 60s.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_records_per_request: 100_000,
            max_series: 100_000,
            max_series_per_service: 5_000,
            max_label_bytes: 256,
            series_idle_expiry: Duration::from_secs(900),
            compression: Compressions::ALL,
            max_in_flight_bytes: 256 << 20,
            body_read_timeout: Duration::from_secs(30),
            admission_wait: Duration::from_secs(1),
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A compression that request bodies may use (`limits.compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip: `Content-Encoding: gzip`, `grpc-encoding: gzip`.
    Gzip,
    /// zstd: `Content-Encoding: zstd`, `grpc-encoding: zstd`.
    Zstd,
    /// zlib-wrapped deflate: `Content-Encoding: deflate` or `zlib`, `grpc-encoding: deflate`.
    Deflate,
    /// Snappy: `Content-Encoding: snappy` (block or framed) or `x-snappy-framed`,
    /// `grpc-encoding: snappy`.
    Snappy,
}

impl Compression {
    /// Every compression, in the order sloxide lists them.
    pub const ALL: [Self; 4] = [Self::Gzip, Self::Zstd, Self::Deflate, Self::Snappy];

    /// The name in `limits.compression`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Deflate => "deflate",
            Self::Snappy => "snappy",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Compression`]s: the ones `limits.compression` turns on.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Compressions(u8);

impl Compressions {
    /// Every compression.
    pub const ALL: Self = Self(0b1111);
    /// None: only uncompressed bodies.
    pub const NONE: Self = Self(0);

    /// The set holding `compressions`.
    pub fn of(compressions: &[Compression]) -> Self {
        Self(compressions.iter().fold(0, |bits, c| bits | c.bit()))
    }

    /// Whether `compression` is in the set.
    pub fn contains(self, compression: Compression) -> bool {
        self.0 & compression.bit() != 0
    }

    /// The members, in [`Compression::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Compression> {
        Compression::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// The set as a number, for an atomic; [`Compressions::from_bits`] reads it back.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set from [`Compressions::bits`].
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & Self::ALL.0)
    }
}

impl fmt::Debug for Compressions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The content codings a client may send: the members, then `identity` (`gzip, zstd or
/// identity`; `identity only` for the empty set).
impl fmt::Display for Compressions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::NONE {
            return f.write_str("identity only");
        }
        let last = self.iter().count() - 1;
        for (i, c) in self.iter().enumerate() {
            let then = if i == last { " or " } else { ", " };
            write!(f, "{c}{then}")?;
        }
        f.write_str("identity")
    }
}

/// `state`: checkpoint and restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Where state is checkpointed and restored from; `None` keeps state in memory only.
    pub data_dir: Option<PathBuf>,
    /// How often a checkpoint is written. Positive. Default 15s.
    pub checkpoint_interval: Duration,
}

impl Default for State {
    fn default() -> Self {
        Self {
            data_dir: None,
            checkpoint_interval: Duration::from_secs(15),
        }
    }
}

impl Config {
    /// Parses and validates a configuration. `origin` names the file in errors: a path, or
    /// [`EMBEDDED_ORIGIN`].
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let options = serde_saphyr::options! {
            // YAML 1.1's `yes`/`no`/`on`/`off` stay strings, so `env: no` means "no".
            strict_booleans: true,
        };
        // `Option`, so that a document that is only `---` or `~` means the defaults too.
        let raw: Option<RawConfig> = serde_saphyr::from_str_with_options(text, options)
            .map_err(|error| parse_error(text, origin, &error))?;
        raw.unwrap_or_default()
            .validate()
            .map_err(|invalid| invalid.in_file(origin))
    }

    /// Reads the file at `path` and calls [`Config::from_yaml`] on it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The embedded default configuration, [`DEFAULT_YAML`]. A unit test proves it valid.
    pub fn embedded_default() -> Config {
        match Self::from_yaml(DEFAULT_YAML, EMBEDDED_ORIGIN) {
            Ok(config) => config,
            Err(error) => panic!("the embedded default configuration is invalid: {error}"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::embedded_default()
    }
}

/// The Prometheus label name that a dimension attribute becomes: each character outside
/// `[a-zA-Z0-9_]` turns into `_`, and a leading digit gets a `_` in front
/// (`http.route` becomes `http_route`).
pub fn dimension_label(attribute: &str) -> String {
    let mut label = String::with_capacity(attribute.len() + 1);
    if attribute.starts_with(|c: char| c.is_ascii_digit()) {
        label.push('_');
    }
    label.extend(
        attribute
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    label
}

/// A position in the config file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column in characters, from 1.
    pub column: u64,
}

impl Position {
    /// The position of a serde-saphyr location; `None` for a value with no place in the
    /// file.
    fn of(location: &Location) -> Option<Position> {
        (location.line() > 0).then(|| Position {
            line: location.line(),
            column: location.column(),
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A configuration error. Its `Display` names the file, the line and column when known,
/// the key path (`limits.max_series`, `slos[1].objective`) and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read; the cause is the source.
    #[error("{}: cannot read the configuration file; {}", .path.display(), read_hint(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML, or does not fit the schema: an unknown key, a list where a
    /// value belongs, a number that is not one.
    #[error("{}: {message}", Place::new(.origin, .at, .key.as_deref()))]
    Parse {
        /// The file, or [`EMBEDDED_ORIGIN`].
        origin: String,
        /// Where, when known.
        at: Option<Position>,
        /// The key path, when the document could be read far enough to find it.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A value of the right shape that is not allowed.
    #[error("{}: {message}", Place::new(.origin, .at, Some(.key.as_str())))]
    Invalid {
        /// The file, or [`EMBEDDED_ORIGIN`].
        origin: String,
        /// Where, when the value comes from the file.
        at: Option<Position>,
        /// The key path, e.g. `slos[1].objective`.
        key: String,
        /// What is wrong, and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The position in the file, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { at, .. } | ConfigError::Invalid { at, .. } => *at,
        }
    }

    /// The key path, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// What to do about a file that cannot be read; the I/O error itself is the source.
fn read_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => "check the path",
        std::io::ErrorKind::PermissionDenied => "check the file's permissions",
        std::io::ErrorKind::InvalidData => "the file must be UTF-8 text",
        std::io::ErrorKind::IsADirectory => "give the path of a file, not a directory",
        _ => "check that it is a readable file",
    }
}

/// `origin[:line:column][: key]`, the prefix of every error.
struct Place<'a> {
    origin: &'a str,
    at: Option<Position>,
    key: Option<&'a str>,
}

impl<'a> Place<'a> {
    fn new(origin: &'a str, at: &Option<Position>, key: Option<&'a str>) -> Self {
        Self {
            origin,
            at: *at,
            key,
        }
    }
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { origin, at, key } = self;
        f.write_str(origin)?;
        if let Some(at) = at {
            write!(f, ":{at}")?;
        }
        if let Some(key) = key {
            write!(f, ": {key}")?;
        }
        Ok(())
    }
}

/// A validation failure before the origin is known.
#[derive(Debug)]
struct Invalid {
    at: Option<Position>,
    key: String,
    message: String,
}

impl Invalid {
    fn new(location: &Location, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: Position::of(location),
            key: key.into(),
            message: message.into(),
        }
    }

    fn in_file(self, origin: &str) -> ConfigError {
        let Self { at, key, message } = self;
        ConfigError::Invalid {
            origin: origin.to_owned(),
            at,
            key,
            message,
        }
    }
}

/// Appends `key` to a key path: `.key`, or `["key"]` when the key has characters that
/// would make the path ambiguous (`attributes["http.route"]`).
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str(&format!("[{key:?}]"));
    }
}

/// `path` with `key` appended, as [`push_key`] does.
fn join_key(path: &str, key: &str) -> String {
    let mut joined = path.to_owned();
    push_key(&mut joined, key);
    joined
}

/// A serde-saphyr error as a [`ConfigError::Parse`], with the key path found by reading
/// the document again as a plain tree.
fn parse_error(text: &str, origin: &str, error: &serde_saphyr::Error) -> ConfigError {
    let location = error.location();
    let at = location.as_ref().and_then(Position::of);
    let message: String = parse_message(text, location.as_ref(), error)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    ConfigError::Parse {
        origin: origin.to_owned(),
        at,
        key: at.and_then(|at| key_path_at(text, at)),
        message,
    }
}

/// The reason of a parse error, in words for a config file's author rather than for a
/// Rust programmer where serde-saphyr's own wording is about types.
fn parse_message(text: &str, location: Option<&Location>, error: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error;
    let error = error.without_snippet();
    match error {
        Error::InvalidScalar { ty, .. } => {
            let wanted = match *ty {
                "floating point" | "f32" | "f64" => "a number",
                "boolean" => "true or false",
                ty if ty.starts_with(['u', 'i']) => "a whole number",
                ty => ty,
            };
            match location.and_then(|location| scalar_at(text, location)) {
                Some(value) => format!("`{value}` is not {wanted}"),
                None => format!("expected {wanted}"),
            }
        }
        Error::Unexpected { expected, .. } => match *expected {
            "string scalar" | "scalar" if unquoted_ipv6(text, location) => {
                "expected a single value here, not a list or a mapping; quote an IPv6 address \
                 and port, e.g. \"[::]:4317\", as YAML reads [...] as a list"
                    .to_owned()
            }
            "string scalar" | "scalar" => {
                "expected a single value here, not a list or a mapping".to_owned()
            }
            "mapping start" => "expected a mapping of keys to values here".to_owned(),
            "sequence start" => "expected a list here".to_owned(),
            expected => format!("expected {expected}"),
        },
        Error::SerdeUnknownField {
            field, expected, ..
        } if expected.is_empty() => {
            format!("unknown field `{field}`; this mapping takes no keys, so write {{}}")
        }
        error => serde_saphyr::UserMessageFormatter
            .format_message(error)
            .into_owned(),
    }
}

/// Whether the value at `location` is an unquoted `[IPv6]:port`, which YAML reads as a
/// list (or a mapping keyed by one).
fn unquoted_ipv6(text: &str, location: Option<&Location>) -> bool {
    let Some(start) = location
        .and_then(|l| l.span().byte_offset())
        .and_then(|offset| usize::try_from(offset).ok())
    else {
        return false;
    };
    let line = text.get(start..).unwrap_or("").lines().next().unwrap_or("");
    let value = line.split(" #").next().unwrap_or("").trim_end();
    value.starts_with('[')
        && value.rsplit_once("]:").is_some_and(|(address, port)| {
            address[1..].contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The source text of the scalar at `location`, when it is short enough to quote.
fn scalar_at<'a>(text: &'a str, location: &Location) -> Option<&'a str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let scalar = text.get(start..start.checked_add(len)?)?;
    (!scalar.is_empty() && scalar.len() <= 80 && !scalar.contains('\n')).then_some(scalar)
}

/// The key path of the node at `at`, found in a shape-only reading of the document.
/// `None` when the document is not readable YAML or `at` is before every key.
fn key_path_at(text: &str, at: Position) -> Option<String> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        // Keep both entries, so a duplicate key's error finds the second one.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    let root: Spanned<Shape> = serde_saphyr::from_str_with_options(text, options).ok()?;
    let mut path = String::new();
    let mut node = &root.value;
    loop {
        // The last child that starts at or before `at` is the one that holds it.
        let starts_before = |location: &Location| Position::of(location).is_some_and(|p| p <= at);
        match node {
            Shape::Leaf => break,
            Shape::Seq(items) => {
                let Some((index, item)) = items
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, item)| starts_before(&item.referenced))
                else {
                    break;
                };
                path.push_str(&format!("[{index}]"));
                node = &item.value;
            }
            Shape::Map(entries) => {
                let Some((key, value)) = entries
                    .iter()
                    .rev()
                    .find(|(key, _)| starts_before(&key.referenced))
                else {
                    break;
                };
                push_key(&mut path, &key.value.0);
                if Position::of(&key.referenced) == Some(at) {
                    break;
                }
                node = &value.value;
            }
        }
    }
    (!path.is_empty()).then_some(path)
}

/// A YAML node reduced to its shape, with positions.
enum Shape {
    Leaf,
    Seq(Vec<Spanned<Shape>>),
    Map(Vec<(Spanned<Text>, Spanned<Shape>)>),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;

        impl<'de> de::Visitor<'de> for ShapeVisitor {
            type Value = Shape;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_none<E>(self) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Shape, D::Error> {
                Shape::deserialize(inner)
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                inner: D,
            ) -> Result<Shape, D::Error> {
                Shape::deserialize(inner)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Shape::Seq(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Shape::Map(entries))
            }
        }

        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// Any YAML scalar as text. Numbers take their canonical form (`1.50` becomes `1.5`,
/// `0x10` becomes `16`), booleans are `true` or `false`, null is `null`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor).map(Text)
    }
}

/// Visits a scalar into its text. Sequences and mappings are refused.
struct TextVisitor;

impl de::Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_bool<E>(self, value: bool) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_i64<E>(self, value: i64) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_i128<E>(self, value: i128) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_u64<E>(self, value: u64) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_u128<E>(self, value: u128) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_f64<E>(self, value: f64) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_str<E>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }
    fn visit_string<E>(self, value: String) -> Result<String, E> {
        Ok(value)
    }
    fn visit_unit<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
    fn visit_none<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
}

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<RawListen>,
    region: Option<RawRegion>,
    dimensions: Option<Vec<Spanned<String>>>,
    histogram: Option<RawHistogram>,
    timing: Option<RawTiming>,
    limits: Option<RawLimits>,
    state: Option<RawState>,
    slos: Option<Vec<Spanned<slo::RawSlo>>>,
    alerting: Option<slo::RawAlerting>,
    auth: Option<Spanned<RawAuth>>,
    tls: Option<Spanned<RawTls>>,
    metrics: Option<RawMetrics>,
}

/// `tls` and `metrics.tls` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    client_ca_file: Option<Spanned<String>>,
    min_version: Option<Spanned<String>>,
}

/// `metrics` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    tls: Option<Spanned<RawTls>>,
    auth: Option<Spanned<RawAuth>>,
}

/// `auth` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    bearer_tokens_file: Option<Spanned<String>>,
    header: Option<Spanned<String>>,
    scheme: Option<Spanned<String>>,
}

impl RawAuth {
    /// The checked section at `key` (`auth`, `metrics.auth`).
    fn validate(self, key: &str, at: &Location) -> Result<Auth, Invalid> {
        let RawAuth {
            bearer_tokens_file,
            header,
            scheme,
        } = self;
        let file_key = format!("{key}.bearer_tokens_file");
        let Some(file) = bearer_tokens_file else {
            return Err(Invalid::new(
                at,
                file_key,
                "missing; give the file of bearer tokens, one per line",
            ));
        };
        let bearer_tokens_file = checked(Some(file), &file_key, PathBuf::new(), |path| {
            let path = PathBuf::from(path);
            match crate::auth::read_tokens(&path) {
                Ok(tokens) if tokens.is_empty() => Err(format!(
                    "{} holds no token; write one per line",
                    path.display()
                )),
                Ok(_) => Ok(path),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            }
        })?;
        let header = checked(
            header,
            &format!("{key}.header"),
            "Authorization".to_owned(),
            |h| {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(format!("{h:?} is not a valid HTTP header name"));
                }
                Ok(h)
            },
        )?;
        let scheme = checked(scheme, &format!("{key}.scheme"), "Bearer".to_owned(), |s| {
            if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "{s:?} has spaces or control characters; a scheme is one word, such as Bearer"
                ));
            }
            Ok(s)
        })?;
        Ok(Auth {
            bearer_tokens_file,
            header,
            scheme,
        })
    }
}

/// `listen` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    otlp_grpc: Option<Spanned<String>>,
    otlp_http: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

/// `region` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRegion {
    attributes: Option<Vec<Spanned<String>>>,
    default: Option<Spanned<String>>,
}

/// `histogram` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHistogram {
    buckets: Option<Spanned<Vec<Spanned<f64>>>>,
    quantiles: Option<Vec<Spanned<f64>>>,
}

/// `timing` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTiming {
    late_slack: Option<Spanned<String>>,
    max_skew: Option<Spanned<String>>,
}

/// `limits` as written. Sizes are text, so both `1024` and `16MiB` read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_request_bytes: Option<Spanned<String>>,
    max_decompressed_bytes: Option<Spanned<String>>,
    max_records_per_request: Option<Spanned<String>>,
    max_series: Option<Spanned<String>>,
    max_series_per_service: Option<Spanned<String>>,
    max_label_bytes: Option<Spanned<String>>,
    series_idle_expiry: Option<Spanned<String>>,
    compression: Option<Vec<Spanned<Compression>>>,
    max_in_flight_bytes: Option<Spanned<String>>,
    body_read_timeout: Option<Spanned<String>>,
    admission_wait: Option<Spanned<String>>,
    max_connections: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
}

/// `state` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    data_dir: Option<Spanned<String>>,
    checkpoint_interval: Option<Spanned<String>>,
}

/// The checked value of an optional key: `default` when the key is absent or null,
/// else `check` applied to the value, with its errors placed at the value.
fn checked<T, U>(
    value: Option<Spanned<T>>,
    key: &str,
    default: U,
    check: impl FnOnce(T) -> Result<U, String>,
) -> Result<U, Invalid> {
    match value {
        None => Ok(default),
        Some(Spanned {
            value, referenced, ..
        }) => check(value).map_err(|message| Invalid::new(&referenced, key, message)),
    }
}

/// Where a value sits, or [`Location::UNKNOWN`] for a default.
fn location_of<T>(value: &Option<Spanned<T>>) -> Location {
    value
        .as_ref()
        .map_or(Location::UNKNOWN, |value| value.referenced)
}

/// A duration key within `min..=max`. A `min` of 1ns means "positive".
fn duration_in(
    value: Option<Spanned<String>>,
    key: &str,
    default: Duration,
    min: Duration,
    max: Option<Duration>,
) -> Result<Duration, Invalid> {
    checked(value, key, default, |text| {
        let duration = parse_duration(&text).map_err(|error| error.to_string())?;
        if duration.is_zero() && !min.is_zero() {
            return Err(format!("`{text}` is zero; give a positive duration"));
        }
        if duration < min {
            return Err(format!(
                "`{text}` is too short; the minimum is {}",
                format_duration(min)
            ));
        }
        if let Some(max) = max
            && duration > max
        {
            return Err(format!(
                "`{text}` is too long; the maximum is {}",
                format_duration(max)
            ));
        }
        Ok(duration)
    })
}

/// A size key in bytes, at least `min`.
fn size_at_least(
    value: Option<Spanned<String>>,
    key: &str,
    default: usize,
    min: usize,
) -> Result<usize, Invalid> {
    checked(value, key, default, |text| {
        let bytes = parse_size(&text).map_err(|error| error.to_string())?;
        let bytes = usize::try_from(bytes)
            .map_err(|_| format!("`{text}` does not fit in this machine's memory"))?;
        if bytes < min {
            return Err(format!("`{text}` is too small; the minimum is {min} bytes"));
        }
        Ok(bytes)
    })
}

/// A whole number written with digits and optional `_` separators (`100_000`).
fn parse_count(text: &str) -> Result<u64, String> {
    let digits: String = text.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || text.starts_with('_') {
        return Err(format!(
            "`{text}` is not a whole number; write digits, e.g. 100000"
        ));
    }
    digits
        .parse()
        .map_err(|_| format!("`{text}` is too large to represent"))
}

/// A positive count.
fn positive_count(
    value: Option<Spanned<String>>,
    key: &str,
    default: usize,
) -> Result<usize, Invalid> {
    checked(value, key, default, |text| {
        let count = parse_count(&text)?;
        if count == 0 {
            return Err(format!(
                "0 is not allowed; give a positive number, e.g. {default}"
            ));
        }
        usize::try_from(count).map_err(|_| format!("{count} does not fit in this machine's memory"))
    })
}

/// A list of distinct, non-empty strings.
/// Refuses `value`, at `location` and `key`, when `seen` holds it already: the one
/// check behind every "listed twice" error.
fn not_listed_twice<T: PartialEq + std::fmt::Display>(
    seen: &[T],
    value: &T,
    location: &Location,
    key: impl FnOnce() -> String,
) -> Result<(), Invalid> {
    if seen.contains(value) {
        return Err(Invalid::new(
            location,
            key(),
            format!("`{value}` is listed twice; remove one"),
        ));
    }
    Ok(())
}

fn distinct_names(values: Vec<Spanned<String>>, key: &str) -> Result<Vec<String>, Invalid> {
    let mut names: Vec<String> = Vec::with_capacity(values.len());
    for (
        index,
        Spanned {
            value, referenced, ..
        },
    ) in values.into_iter().enumerate()
    {
        let key = || format!("{key}[{index}]");
        if value.is_empty() {
            return Err(Invalid::new(
                &referenced,
                key(),
                "an empty name is not allowed; give an attribute key such as cloud.region",
            ));
        }
        not_listed_twice(&names, &value, &referenced, key)?;
        names.push(value);
    }
    Ok(names)
}

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let RawConfig {
            listen,
            region,
            dimensions,
            histogram,
            timing,
            limits,
            state,
            slos,
            alerting,
            auth,
            tls,
            metrics,
        } = self;
        let listen = listen.unwrap_or_default().validate()?;
        let region = region.unwrap_or_default().validate()?;
        let dimensions = validate_dimensions(dimensions.unwrap_or_default())?;
        let histogram = histogram.unwrap_or_default().validate()?;
        let timing = timing.unwrap_or_default().validate()?;
        let limits = limits.unwrap_or_default().validate()?;
        let max_label_bytes = limits.max_label_bytes;
        Ok(Config {
            listen,
            region,
            dimensions,
            histogram,
            timing,
            limits,
            state: state.unwrap_or_default().validate()?,
            slos: slo::validate_slos(slos.unwrap_or_default(), max_label_bytes)?,
            alerting: alerting.unwrap_or_default().validate()?,
            auth: auth
                .map(|a| a.value.validate("auth", &a.referenced))
                .transpose()?,
            tls: tls.map(|tls| validate_tls(tls, "tls")).transpose()?,
            metrics: {
                let RawMetrics { tls, auth } = metrics.unwrap_or_default();
                Metrics {
                    tls: tls
                        .map(|tls| validate_tls(tls, "metrics.tls"))
                        .transpose()?,
                    auth: auth
                        .map(|a| a.value.validate("metrics.auth", &a.referenced))
                        .transpose()?,
                }
            },
        })
    }
}

impl RawListen {
    fn validate(self) -> Result<Listen, Invalid> {
        let RawListen {
            otlp_grpc,
            otlp_http,
            metrics,
        } = self;
        let default = Listen::default();
        let mut seen: Vec<(&str, SocketAddr)> = Vec::with_capacity(3);
        let mut address = |value: Option<Spanned<String>>, name: &'static str, default| {
            let key = format!("listen.{name}");
            let location = location_of(&value);
            let address = checked(value, &key, default, |text| {
                text.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "`{text}` is not an address; write ip:port, e.g. 0.0.0.0:4317 or \"[::]:4317\""
                    )
                })
            })?;
            // Port 0 asks the OS for a free port, so it never clashes.
            if let Some((other, _)) = seen
                .iter()
                .find(|(_, other)| *other == address && address.port() != 0)
            {
                return Err(Invalid::new(
                    &location,
                    key,
                    format!("{address} is also listen.{other}; give each listener its own port"),
                ));
            }
            seen.push((name, address));
            Ok(address)
        };
        Ok(Listen {
            otlp_grpc: address(otlp_grpc, "otlp_grpc", default.otlp_grpc)?,
            otlp_http: address(otlp_http, "otlp_http", default.otlp_http)?,
            metrics: address(metrics, "metrics", default.metrics)?,
        })
    }
}

impl RawRegion {
    fn validate(self) -> Result<Region, Invalid> {
        let RawRegion {
            attributes,
            default: fallback,
        } = self;
        let default = Region::default();
        Ok(Region {
            attributes: match attributes {
                None => default.attributes,
                Some(attributes) => distinct_names(attributes, "region.attributes")?,
            },
            default: checked(fallback, "region.default", default.default, |value| {
                if value.is_empty() {
                    return Err(
                        "an empty region is not allowed; give a name such as unknown".to_owned(),
                    );
                }
                Ok(value)
            })?,
        })
    }
}

/// The most dimensions a configuration may name; each one multiplies the span series.
pub const MAX_DIMENSIONS: usize = 8;

/// The most `histogram.buckets` bounds: each is a counter and an exemplar slot (48 bytes
/// in all) in every span series, so the list sets the size of every one of them.
pub const MAX_BUCKETS: usize = 64;

/// The most `histogram.quantiles`: each is computed for every quantile series every
/// second, and is a sample of each on every scrape.
pub const MAX_QUANTILES: usize = 16;

fn validate_dimensions(dimensions: Vec<Spanned<String>>) -> Result<Vec<String>, Invalid> {
    if let Some(extra) = dimensions.get(MAX_DIMENSIONS) {
        return Err(Invalid::new(
            &extra.referenced,
            format!("dimensions[{MAX_DIMENSIONS}]"),
            format!(
                "at most {MAX_DIMENSIONS} dimensions are allowed, because each one multiplies the span series; remove some"
            ),
        ));
    }
    let mut labels: Vec<String> = Vec::with_capacity(dimensions.len());
    let mut names: Vec<String> = Vec::with_capacity(dimensions.len());
    for (
        index,
        Spanned {
            value, referenced, ..
        },
    ) in dimensions.into_iter().enumerate()
    {
        let fail = |message: String| {
            Err(Invalid::new(
                &referenced,
                format!("dimensions[{index}]"),
                message,
            ))
        };
        if value.is_empty() {
            return fail(
                "an empty attribute key is not allowed; give one such as http.route".to_owned(),
            );
        }
        let label = dimension_label(&value);
        if BUILTIN_LABELS.contains(&label.as_str()) {
            return fail(format!(
                "`{value}` would become the label `{label}`, which sloxide sets itself; remove it"
            ));
        }
        if label.starts_with("__") {
            return fail(format!(
                "`{value}` would become the label `{label}`, and names starting with __ are reserved by prometheus; remove it"
            ));
        }
        not_listed_twice(&names, &value, &referenced, || {
            format!("dimensions[{index}]")
        })?;
        if let Some(other) = labels.iter().position(|other| *other == label) {
            return fail(format!(
                "`{value}` and `{}` would both become the label `{label}`; keep one",
                names[other]
            ));
        }
        labels.push(label);
        names.push(value);
    }
    Ok(names)
}

impl RawHistogram {
    fn validate(self) -> Result<Histogram, Invalid> {
        let RawHistogram { buckets, quantiles } = self;
        let default = Histogram::default();
        let buckets = match buckets {
            None => default.buckets,
            Some(Spanned {
                value, referenced, ..
            }) => {
                if value.is_empty() {
                    return Err(Invalid::new(
                        &referenced,
                        "histogram.buckets",
                        "an empty list is not allowed; give at least one upper bound in seconds, e.g. [0.1, 1]",
                    ));
                }
                if value.len() > MAX_BUCKETS {
                    return Err(Invalid::new(
                        &referenced,
                        "histogram.buckets",
                        format!(
                            "{} bounds are more than the {MAX_BUCKETS} allowed: each bound is a counter and an exemplar slot in every span series",
                            value.len()
                        ),
                    ));
                }
                ascending(value, "histogram.buckets", |bound| {
                    (bound.is_finite() && bound > 0.0).then_some(()).ok_or_else(|| {
                        format!("{bound} is not a bucket bound; a bound is a positive number of seconds")
                    })
                })?
            }
        };
        let quantiles = match quantiles {
            None => default.quantiles,
            Some(value) if value.len() > MAX_QUANTILES => {
                return Err(Invalid::new(
                    &value[MAX_QUANTILES].referenced,
                    format!("histogram.quantiles[{MAX_QUANTILES}]"),
                    format!(
                        "{} quantiles are more than the {MAX_QUANTILES} allowed: each is computed for every quantile series every second",
                        value.len()
                    ),
                ));
            }
            Some(value) => ascending(value, "histogram.quantiles", |quantile| {
                (quantile > 0.0 && quantile < 1.0).then_some(()).ok_or_else(|| {
                    format!("{quantile} is out of range; a quantile is strictly between 0 and 1, e.g. 0.99")
                })
            })?,
        };
        Ok(Histogram { buckets, quantiles })
    }
}

/// Numbers that each pass `check` and are strictly ascending.
fn ascending(
    values: Vec<Spanned<f64>>,
    key: &str,
    check: impl Fn(f64) -> Result<(), String>,
) -> Result<Vec<f64>, Invalid> {
    let mut checked: Vec<f64> = Vec::with_capacity(values.len());
    for (
        index,
        Spanned {
            value, referenced, ..
        },
    ) in values.into_iter().enumerate()
    {
        let key = || format!("{key}[{index}]");
        check(value).map_err(|message| Invalid::new(&referenced, key(), message))?;
        if let Some(&previous) = checked.last()
            && value <= previous
        {
            return Err(Invalid::new(
                &referenced,
                key(),
                format!(
                    "{value} does not come after {previous}; list the values in strictly ascending order"
                ),
            ));
        }
        checked.push(value);
    }
    Ok(checked)
}

impl RawTiming {
    fn validate(self) -> Result<Timing, Invalid> {
        let RawTiming {
            late_slack,
            max_skew,
        } = self;
        let default = Timing::default();
        Ok(Timing {
            late_slack: duration_in(
                late_slack,
                "timing.late_slack",
                default.late_slack,
                Duration::ZERO,
                Some(MAX_LATE_SLACK),
            )?,
            max_skew: duration_in(
                max_skew,
                "timing.max_skew",
                default.max_skew,
                Duration::ZERO,
                Some(MAX_SKEW),
            )?,
        })
    }
}

impl RawLimits {
    fn validate(self) -> Result<Limits, Invalid> {
        let RawLimits {
            max_request_bytes,
            max_decompressed_bytes,
            max_records_per_request,
            max_series,
            max_series_per_service,
            max_label_bytes,
            series_idle_expiry,
            compression,
            max_in_flight_bytes,
            body_read_timeout,
            admission_wait,
            max_connections,
            header_read_timeout,
            idle_timeout,
        } = self;
        let default = Limits::default();
        let request_at = location_of(&max_request_bytes);
        let decompressed_at = location_of(&max_decompressed_bytes);
        let limits = Limits {
            max_request_bytes: size_at_least(
                max_request_bytes,
                "limits.max_request_bytes",
                default.max_request_bytes,
                1,
            )?,
            max_decompressed_bytes: size_at_least(
                max_decompressed_bytes,
                "limits.max_decompressed_bytes",
                default.max_decompressed_bytes,
                1,
            )?,
            max_records_per_request: positive_count(
                max_records_per_request,
                "limits.max_records_per_request",
                default.max_records_per_request,
            )?,
            max_series: positive_count(max_series, "limits.max_series", default.max_series)?,
            max_series_per_service: positive_count(
                max_series_per_service,
                "limits.max_series_per_service",
                default.max_series_per_service,
            )?,
            max_label_bytes: size_at_least(
                max_label_bytes,
                "limits.max_label_bytes",
                default.max_label_bytes,
                MIN_LABEL_BYTES,
            )?,
            series_idle_expiry: duration_in(
                series_idle_expiry,
                "limits.series_idle_expiry",
                default.series_idle_expiry,
                Duration::from_nanos(1),
                None,
            )?,
            compression: match compression {
                None => default.compression,
                Some(listed) => compressions(listed)?,
            },
            max_in_flight_bytes: size_at_least(
                max_in_flight_bytes,
                "limits.max_in_flight_bytes",
                default.max_in_flight_bytes,
                1 << 20,
            )?,
            body_read_timeout: duration_in(
                body_read_timeout,
                "limits.body_read_timeout",
                default.body_read_timeout,
                Duration::from_millis(100),
                Some(Duration::from_secs(3600)),
            )?,
            admission_wait: duration_in(
                admission_wait,
                "limits.admission_wait",
                default.admission_wait,
                Duration::ZERO,
                Some(Duration::from_secs(60)),
            )?,
            max_connections: positive_count(
                max_connections,
                "limits.max_connections",
                default.max_connections,
            )?,
            header_read_timeout: duration_in(
                header_read_timeout,
                "limits.header_read_timeout",
                default.header_read_timeout,
                Duration::from_nanos(1),
                Some(Duration::from_secs(86_400)),
            )?,
            idle_timeout: duration_in(
                idle_timeout,
                "limits.idle_timeout",
                default.idle_timeout,
                Duration::from_nanos(1),
                Some(Duration::from_secs(86_400)),
            )?,
        };
        if limits.max_decompressed_bytes < limits.max_request_bytes {
            // Point at whichever of the two the file sets, preferring the smaller one.
            let at = if Position::of(&decompressed_at).is_some() {
                decompressed_at
            } else {
                request_at
            };
            return Err(Invalid::new(
                &at,
                "limits.max_decompressed_bytes",
                format!(
                    "{} bytes is less than limits.max_request_bytes ({} bytes); a body never shrinks by decompression, so raise max_decompressed_bytes",
                    limits.max_decompressed_bytes, limits.max_request_bytes
                ),
            ));
        }
        Ok(limits)
    }
}

/// `limits.compression`: each listed once; an empty list leaves only uncompressed bodies.
fn compressions(listed: Vec<Spanned<Compression>>) -> Result<Compressions, Invalid> {
    let mut seen: Vec<Compression> = Vec::with_capacity(listed.len());
    for (
        index,
        Spanned {
            value, referenced, ..
        },
    ) in listed.into_iter().enumerate()
    {
        not_listed_twice(&seen, &value, &referenced, || {
            format!("limits.compression[{index}]")
        })?;
        seen.push(value);
    }
    Ok(Compressions::of(&seen))
}

impl RawState {
    fn validate(self) -> Result<State, Invalid> {
        let RawState {
            data_dir,
            checkpoint_interval,
        } = self;
        let default = State::default();
        Ok(State {
            data_dir: checked(data_dir, "state.data_dir", default.data_dir, |dir| {
                if dir.is_empty() {
                    return Err("an empty path is not allowed; give a directory, or null to keep state in memory only".to_owned());
                }
                Ok(Some(PathBuf::from(dir)))
            })?,
            checkpoint_interval: duration_in(
                checkpoint_interval,
                "state.checkpoint_interval",
                default.checkpoint_interval,
                Duration::from_nanos(1),
                None,
            )?,
        })
    }
}

/// `tls` or `metrics.tls` (`key`): both files given, the version known, and every file
/// readable and holding what it should, so that a bad path stops `sloxide check` and
/// the start rather than the first handshake.
fn validate_tls(raw: Spanned<RawTls>, key: &str) -> Result<Tls, Invalid> {
    let Spanned {
        value: raw,
        referenced: at,
        ..
    } = raw;
    let RawTls {
        cert_file,
        key_file,
        client_ca_file,
        min_version,
    } = raw;
    let locations = [
        location_of(&cert_file),
        location_of(&key_file),
        location_of(&client_ca_file),
    ];
    let path = |value: Option<Spanned<String>>, name: &str| -> Result<Option<PathBuf>, Invalid> {
        checked(value, &format!("{key}.{name}"), None, |path| {
            if path.is_empty() {
                return Err("an empty path is not allowed; give a PEM file".to_owned());
            }
            Ok(Some(PathBuf::from(path)))
        })
    };
    let required = |path: Option<PathBuf>, name: &str| {
        path.ok_or_else(|| {
            Invalid::new(
                &at,
                format!("{key}.{name}"),
                format!("{key} needs both cert_file and key_file; give the path of the PEM {name}"),
            )
        })
    };
    let cert_file = required(path(cert_file, "cert_file")?, "cert_file")?;
    let key_file = required(path(key_file, "key_file")?, "key_file")?;
    let client_ca_file = path(client_ca_file, "client_ca_file")?;
    let min_version = checked(
        min_version,
        &format!("{key}.min_version"),
        TlsVersion::default(),
        |text| match text.as_str() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(format!(
                "`{text}` is not a TLS version sloxide accepts; write \"1.2\" or \"1.3\""
            )),
        },
    )?;
    let tls = Tls {
        cert_file,
        key_file,
        client_ca_file,
        min_version,
    };
    if let Err(e) = crate::net::tls::load(&tls) {
        let name = e.file.name();
        let location = match locations[e.file as usize] {
            location if Position::of(&location).is_some() => location,
            _ => at,
        };
        return Err(Invalid::new(
            &location,
            format!("{key}.{name}"),
            e.to_string(),
        ));
    }
    Ok(tls)
}
