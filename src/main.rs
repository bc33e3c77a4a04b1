//! The `mqtt-ha-gateway` binary: command line, logging, signals, exit codes.
//!
//! Loads and validates the config before binding anything (exit 64 when it
//! is invalid), runs until SIGTERM/SIGINT, then drains (exit 0). A failure
//! to start exits 1; a stage that fails while running exits 70, after the
//! same drain, for the supervisor (Docker, systemd, Kubernetes) to restart.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mqtt_ha_gateway::app::Options;
use mqtt_ha_gateway::config::{self, Config, LogFormat};
use mqtt_ha_gateway::reload::Reloader;
use mqtt_ha_gateway::supervise::{FailStage, EXIT_STAGE_FAILED};
use tokio_util::sync::CancellationToken;

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(version, about = "Gateway between MQTT and Home Assistant")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the config file is.
#[derive(Args)]
struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short, env = "MQTT_HA_GATEWAY_CONFIG", default_value = "config/gateway.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log and publish the service calls that would be made, without
        /// making them: for wiring up a device safely.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the config and print every problem with its key path.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also reach the broker and Home Assistant with the token.
        #[arg(long)]
        online: bool,
    },
    /// Ask a running gateway's health endpoint (for container health checks).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:9184/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { config: ConfigArg { config }, dry_run } => run(&config, dry_run),
        Cmd::Check { config: ConfigArg { config }, online } => check(&config, online),
        Cmd::Health { url } => health(&url),
    }
}

fn load(path: &PathBuf) -> Result<Config, config::ConfigErrors> {
    let explicit =
        std::env::var_os("MQTT_HA_GATEWAY_CONFIG").is_some() || path != &PathBuf::from("config/gateway.toml");
    config::load(path, explicit, std::env::vars())
}

/// Reloads from the same file and environment; watches the file and `routes.d/`.
fn reloader(path: &Path) -> Reloader {
    let path_buf = path.to_path_buf();
    Reloader { load: Box::new(move || load(&path_buf)), watch: vec![path.to_path_buf(), config::routes_dir(path)] }
}

/// Libraries whose trace output carries wire data (the websocket auth frame
/// with the token, MQTT CONNECT with the password, TLS records): never below
/// debug, whatever `RUST_LOG` or `log.level` say.
const WIRE_LOGGERS: &[&str] =
    &["tungstenite", "tokio_tungstenite", "rumqttc", "hyper", "hyper_util", "reqwest", "rustls", "h2"];

fn init_logging(config: &Config) {
    let spec =
        std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| config.log.level.clone());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // A cap, not a raise: only when something asks for trace.
    if spec.to_ascii_lowercase().contains("trace") {
        for target in WIRE_LOGGERS {
            filter = filter.add_directive(format!("{target}=debug").parse().expect("a target=level directive parses"));
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built on any supported platform")
}

fn run(path: &PathBuf, dry_run: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mqtt-ha-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config);
    runtime().block_on(async move {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        let fail_stage = injected_failure();
        let trigger = fail_stage.as_ref().map(|f| f.trigger.clone());
        let options = Options { dry_run, reloader: Some(reloader(path)), fail_stage };
        let running = match mqtt_ha_gateway::app::start(config, options, shutdown.clone()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(signals.wait(shutdown.clone(), running.hup.clone()));
        if let Some(trigger) = trigger {
            trigger.cancel();
        }
        match running.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, exit_code = EXIT_STAGE_FAILED, "exiting after a stage failed");
                ExitCode::from(EXIT_STAGE_FAILED)
            }
        }
    })
}

/// Debug builds only, for the supervision tests: `HA_GATEWAY_TEST_FAIL_STAGE=<stage>`
/// makes that stage panic once the gateway has started. Release builds
/// have no such hook. (Not `MQTT_HA_GATEWAY_*`: that prefix is config.)
fn injected_failure() -> Option<FailStage> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let stage = std::env::var("HA_GATEWAY_TEST_FAIL_STAGE").ok().filter(|s| !s.is_empty())?;
    Some(FailStage { stage, trigger: CancellationToken::new() })
}

/// SIGTERM/SIGINT (shut down) and SIGHUP (reload), installed before anything
/// starts so that an early signal is never fatal.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait(mut self, shutdown: CancellationToken, hup: tokio::sync::watch::Sender<u64>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: re-reading the token file, reloading access rules and routes");
                    hup.send_modify(|n| *n += 1);
                }
            }
        }
        shutdown.cancel();
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn wait(self, shutdown: CancellationToken, _hup: tokio::sync::watch::Sender<u64>) {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}

fn check(path: &PathBuf, online: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            for problem in &e.0 {
                println!("error: {problem}");
            }
            println!("{} problem(s) in {}", e.0.len(), path.display());
            return ExitCode::FAILURE;
        }
    };
    println!("config ok: {}", path.display());
    if !online {
        return ExitCode::SUCCESS;
    }
    let ok = runtime().block_on(mqtt_ha_gateway::app::check_online(&config, Duration::from_secs(10)));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn health(url: &str) -> ExitCode {
    let result = runtime()
        .block_on(async { reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?.get(url).send().await });
    match result {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
