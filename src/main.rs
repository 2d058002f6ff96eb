//! The `sloxide` binary: parse the command line, load the configuration, run.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
    /// Print Prometheus alerting rules (YAML) for the configured SLOs.
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
    /// State directory (overrides state.data_dir); accepted, not used yet.
    #[arg(long, env = "SLOXIDE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(
        long,
        env = "SLOXIDE_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check { config }) => check(&config),
        Some(Command::Rules { config }) => generate(&config, sloxide::generate::rules),
        Some(Command::Dashboard { config }) => generate(&config, sloxide::generate::dashboard),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sloxide: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    })
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
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

fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        config,
        otlp_grpc_listen,
        otlp_http_listen,
        metrics_listen,
        data_dir,
        log_level,
    } = args;
    let filter = tracing_subscriber::EnvFilter::try_new(&log_level).with_context(|| {
        format!("invalid --log-level {log_level:?}; use error, warn, info, debug or trace")
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut config = load(config.as_deref())?;
    if let Some(addr) = otlp_grpc_listen {
        config.listen.otlp_grpc = addr;
    }
    if let Some(addr) = otlp_http_listen {
        config.listen.otlp_http = addr;
    }
    if let Some(addr) = metrics_listen {
        config.listen.metrics = addr;
    }
    if let Some(dir) = data_dir {
        config.state.data_dir = Some(dir);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown =
            sloxide::daemon::shutdown_signal().context("cannot install the signal handlers")?;
        sloxide::daemon::run(config, shutdown, |_| {}).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
