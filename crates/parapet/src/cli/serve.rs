//! `parapet serve`: loads `parapet.toml`, opens the log, loads the policies and runs the gateway
//! until Ctrl-C or SIGTERM (SIGHUP reloads the policies).

use crate::config::Config;
use anyhow::Context;
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

/// Installs a tracing subscriber (RUST_LOG, default `info`) once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
    let guard =
        Guard::load(&config.policy_source()).context("cannot load the policies of [policy]")?;
    let log = Log::open(&config.log.dir, &config.log.key).with_context(|| {
        format!(
            "cannot open the audit log in {} (create it with `parapet log init`)",
            config.log.dir.display()
        )
    })?;
    if let Some(policy) = witnesses {
        let (n, k) = (policy.witnesses.len(), policy.min_witnesses);
        log.start_witnessing(policy)
            .context("cannot start the log's witness client")?;
        eprintln!("parapet: the log's checkpoints are sent to {n} witnesses ({k} must cosign)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let gw = Gateway::bind(gw_config, Arc::new(guard), log).await?;
        eprintln!("parapet: gateway listening on {}", gw.local_addr()?);
        gw.run(stop_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
