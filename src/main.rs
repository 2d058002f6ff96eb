//! The `sloxide` binary: parse the command line, load the configuration, run.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use sloxide::config::Config;

/// sloxide turns OpenTelemetry spans and logs into SLI, error-budget and burn-rate
/// series for Prometheus.
#[derive(Debug, Parser)]
#[command(name = "sloxide", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run(RunArgs),
    /// Validate a configuration file and print a one-line summary per SLO.
    Check {
        /// The configuration file.
        #[arg(long, env = "SLOXIDE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Print Prometheus recording and alerting rules (YAML) for the configured SLOs, and
    /// alerts on sloxide itself.
    Rules {
        /// The configuration file.
        #[arg(long, env = "SLOXIDE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a Grafana dashboard (JSON) for the configured SLOs.
    Dashboard {
        /// The configuration file.
        #[arg(long, env = "SLOXIDE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Look at the state a data directory holds.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print what the checkpoint holds: version, time, clean or not, series per family,
    /// and the SLOs with their regions and event counts. Exits 1 on a file that cannot
    /// be read. Reads only; it takes no lock and moves nothing.
    Inspect {
        /// The data directory (state.data_dir).
        #[arg(long, env = "SLOXIDE_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file; without it the embedded default is used.
    #[arg(long, env = "SLOXIDE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// OTLP/gRPC listen address (overrides listen.otlp_grpc).
    #[arg(long, env = "SLOXIDE_OTLP_GRPC_LISTEN", value_name = "ADDR")]
    otlp_grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP listen address (overrides listen.otlp_http).
    #[arg(long, env = "SLOXIDE_OTLP_HTTP_LISTEN", value_name = "ADDR")]
    otlp_http_listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address (overrides listen.metrics).
    #[arg(long, env = "SLOXIDE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// State directory for checkpoints (overrides state.data_dir).
    #[arg(long, env = "SLOXIDE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Also reload the configuration when its file changes (polled every 2 s), as
    /// Kubernetes ConfigMaps change files and send no signal. SIGHUP always reloads.
    #[arg(long, env = "SLOXIDE_WATCH_CONFIG")]
    watch_config: bool,
    /// Log level (error, warn, info, debug, trace or off), or comma-separated
    /// target=level directives (info,sloxide::ingest=debug).
    #[arg(
        long,
        env = "SLOXIDE_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// Log line format on standard error: text, or json (one object per line).
    #[arg(
        long,
        env = "SLOXIDE_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check { config }) => check(&config),
        Some(Command::Rules { config }) => generate(&config, sloxide::generate::rules),
        Some(Command::Dashboard { config }) => generate(&config, sloxide::generate::dashboard),
        Some(Command::State {
            command: StateCommand::Inspect { data_dir },
        }) => inspect(&data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sloxide: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line. The run flags' environment variables are read for `run`
/// only: a container's `SLOXIDE_METRICS_LISTEN` that does not parse fails `run`, as it
/// should, and not `check`, `rules`, `dashboard` or `state`, which do not take it.
fn parse() -> Cli {
    let mut command = Cli::command();
    // A first look, ignoring every error, for the subcommand's name. (`--help` and the
    // like are errors to this look: then the real parse below prints them.)
    let other = command
        .clone()
        .ignore_errors(true)
        .try_get_matches()
        .is_ok_and(|m| m.subcommand_name().is_some_and(|name| name != "run"));
    if other {
        // Only the top-level (run) arguments: a subcommand keeps its own variables.
        command = command.mut_args(|arg| arg.env(None::<&str>));
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    })
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    if let Some(dir) = &config.state.data_dir {
        sloxide::state::DataDir::check(dir)?;
    }
    println!(
        "{}: ok, {} SLO(s), listening on {} (gRPC), {} (HTTP), {} (metrics)",
        path.display(),
        config.slos.len(),
        config.listen.otlp_grpc,
        config.listen.otlp_http,
        config.listen.metrics
    );
    for slo in &config.slos {
        println!("{}", slo.summary(&config.alerting));
    }
    Ok(())
}

/// Loads the configuration and prints what `generator` makes of it. A closed pipe
/// (`sloxide rules | head`) is not an error.
fn generate(path: &Path, generator: fn(&Config) -> String) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(generator(&config).as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("cannot write to standard output"),
    }
}

/// The command line's overrides of the file, applied at start and at every reload.
#[derive(Debug, Clone)]
struct Overrides {
    otlp_grpc_listen: Option<SocketAddr>,
    otlp_http_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.otlp_grpc_listen {
            config.listen.otlp_grpc = addr;
        }
        if let Some(addr) = self.otlp_http_listen {
            config.listen.otlp_http = addr;
        }
        if let Some(addr) = self.metrics_listen {
            config.listen.metrics = addr;
        }
        if let Some(dir) = &self.data_dir {
            config.state.data_dir = Some(dir.clone());
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        config: path,
        otlp_grpc_listen,
        otlp_http_listen,
        metrics_listen,
        data_dir,
        watch_config,
        log_level,
        log_format,
    } = args;
    let overrides = Overrides {
        otlp_grpc_listen,
        otlp_http_listen,
        metrics_listen,
        data_dir,
    };
    let filter = sloxide::logging::filter(&log_level).map_err(anyhow::Error::msg)?;
    sloxide::logging::init(
        filter,
        match log_format {
            LogFormat::Text => sloxide::logging::Format::Text,
            LogFormat::Json => sloxide::logging::Format::Json,
        },
    );
    sloxide::ingest::decoders::install_panic_hook();

    let mut config = load(path.as_deref())?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.as_deref().map_or("the embedded default".into(), |p| p.display().to_string()),
        slos = config.slos.len(),
        "sloxide starting"
    );
    overrides.apply(&mut config);
    if watch_config && path.is_none() {
        anyhow::bail!(
            "--watch-config needs --config FILE: the embedded default has no file to watch"
        );
    }
    let reload = path.map(|path| sloxide::daemon::Reload {
        watch: watch_config.then(|| (path.clone(), std::time::Duration::from_secs(2))),
        read: Box::new(move || {
            let mut config = Config::load(&path).map_err(|e| e.to_string())?;
            overrides.apply(&mut config);
            Ok(config)
        }),
    });

    sloxide::memory::configure();
    sloxide::memory::one_heap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let signals =
            sloxide::daemon::Signals::install().context("cannot install the signal handlers")?;
        sloxide::daemon::run_with(config, signals, reload, |_| {}).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// `sloxide state inspect`: what the checkpoints of `dir` hold. A file that cannot be
/// read is reported and the other generation still shown; the exit status is 1 then.
fn inspect(dir: &Path) -> anyhow::Result<()> {
    use sloxide::state::file::{self, Generation};
    let mut out = String::new();
    let mut found = false;
    let mut bad = Vec::new();
    for generation in [Generation::Current, Generation::Previous] {
        let path = dir.join(generation.file_name());
        match file::read(&path) {
            Ok(Some(checkpoint)) => {
                found = true;
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out.push_str(&sloxide::state::snapshot::describe(
                    &checkpoint,
                    &path,
                    size,
                ));
                out.push('\n');
            }
            Ok(None) => {}
            Err(e) => bad.push(format!("{}: {e}", path.display())),
        }
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        result => result.context("cannot write to standard output")?,
    }
    if !bad.is_empty() {
        anyhow::bail!("{}", bad.join("; "));
    }
    if !found {
        anyhow::bail!(
            "{}: no checkpoint ({} or {})",
            dir.display(),
            file::CURRENT,
            file::PREVIOUS
        );
    }
    Ok(())
}
