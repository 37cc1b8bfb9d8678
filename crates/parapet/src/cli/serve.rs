//! `parapet serve`: loads `parapet.toml`, opens the log, loads the policies and runs the gateway
//! (with its console and alerts, when configured) until Ctrl-C or SIGTERM (SIGHUP reloads the
//! policies).

use crate::alerts::{AlertMetrics, Alerts};
use crate::config::Config;
use anyhow::{bail, Context};
use parapet_gateway::Gateway;
use parapet_guard::Guard;
use parapet_log::Log;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `parapet serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long, short, default_value = "parapet.toml", env = "PARAPET_CONFIG")]
    pub config: PathBuf,
}

/// Format of the process's own logging (`--log-format`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (journald, log shippers).
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<Option<LogFormat>> = std::sync::OnceLock::new();

/// Sets the `--log-format` given on the command line (before [`init_tracing`]).
pub fn set_log_format(f: Option<LogFormat>) {
    let _ = LOG_FORMAT.set(f);
}

/// Installs a tracing subscriber (RUST_LOG, default `info`) once, writing to stderr as text on
/// a terminal and as JSON lines otherwise, unless `--log-format` says which.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format =
        LOG_FORMAT
            .get()
            .copied()
            .flatten()
            .unwrap_or(if std::io::stderr().is_terminal() {
                LogFormat::Text
            } else {
                LogFormat::Json
            });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A console serving on the runtime: its address; fire `stop` and await `task` to end it.
pub struct RunningConsole {
    /// The address bound.
    pub addr: std::net::SocketAddr,
    /// Ends it.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// Its task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the console and serves it on the runtime until stopped (its `/metrics` with the
/// alerts' when given).
pub async fn start_console(
    section: &crate::config::ConsoleSection,
    log_dir: &std::path::Path,
    control: parapet_gateway::control::Control,
    alerts: Option<&crate::alerts::AlertMetrics>,
) -> anyhow::Result<RunningConsole> {
    let console = crate::console::Console::bind(section, log_dir, Some(control), alerts).await?;
    let addr = console.local_addr()?;
    let scheme = if console.is_tls() { "https" } else { "http" };
    eprintln!("parapet: console listening on {scheme}://{addr}/");
    if !console.is_tls() && !addr.ip().is_loopback() {
        tracing::warn!("the console serves plain HTTP on {addr}, off loopback: tokens and the audit trail cross the network in clear, and browsers refuse WebCrypto; set [console] tls_cert and tls_key");
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(console.run(async move {
        let _ = rx.await;
    }));
    Ok(RunningConsole {
        addr,
        stop: tx,
        task,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs `parapet serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let config = Config::load(&args.config)?;
    let gw_config = config.gateway()?;
    let witnesses = config.log.witness_policy()?;
    let alert_specs = config.alerts()?;
    let guard =
        Guard::load(&config.policy_source()).context("cannot load the policies of [policy]")?;
    let log = match config.log.fleet() {
        Some((url, s3)) => {
            if witnesses.is_some() {
                bail!("[[log.witnesses]] is not supported with [log] backend = \"postgres\" yet: remove the witnesses or use backend = \"dir\"");
            }
            Log::open_fleet(url, &s3, &config.log.key).with_context(|| {
                format!(
                    "cannot open the fleet's audit log (PostgreSQL {}, bucket {}; create it with \
                     `parapet log init --config FILE --key KEYFILE`)",
                    crate::cli::log::redact_url(url),
                    s3.bucket
                )
            })?
        }
        None => Log::open(&config.log.dir, &config.log.key).with_context(|| {
            format!(
                "cannot open the audit log in {} (create it with `parapet log init`)",
                config.log.dir.display()
            )
        })?,
    };
    if let Some(policy) = witnesses {
        let (n, k) = (policy.witnesses.len(), policy.min_witnesses);
        log.start_witnessing(policy)
            .context("cannot start the log's witness client")?;
        eprintln!("parapet: the log's checkpoints are sent to {n} witnesses ({k} must cosign)");
    }
    // A fleet's gateway: the verified mirror of the fleet's log in [log] dir comes first, as
    // the alerts, the console and the gateway's rebuild read that directory.
    let mirror = super::fleet::start_mirror(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        // Alerts start before the gateway, so a new alert's cursor stands before what this
        // gateway logs.
        let alert_metrics = AlertMetrics::default();
        let alerts = if alert_specs.is_empty() {
            None
        } else {
            let a = Alerts::start(alert_specs, &config.log.dir, &alert_metrics)
                .context("cannot start the alerts")?;
            eprintln!(
                "parapet: {} alerts send matching audit events (cursors in {})",
                a.len(),
                crate::alerts::cursor::dir(&config.log.dir).display()
            );
            Some(a)
        };
        let fleet = super::fleet::fleet_options(&config).await?;
        let gw = Gateway::bind_with(gw_config, Arc::new(guard), log, fleet).await?;
        eprintln!("parapet: gateway listening on {}", gw.local_addr()?);
        let console = match &config.console {
            Some(section) => Some(
                start_console(section, &config.log.dir, gw.control(), Some(&alert_metrics)).await?,
            ),
            None => None,
        };
        let res = gw.run(stop_signal()).await;
        if let Some(c) = console {
            let _ = c.stop.send(());
            let _ = c.task.await;
        }
        if let Some(a) = alerts {
            a.stop().await;
        }
        res?;
        anyhow::Ok(())
    })?;
    drop(mirror);
    Ok(ExitCode::SUCCESS)
}
