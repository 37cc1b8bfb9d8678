//! `parapet quickstart`: a throw-away PostgreSQL cluster, a fresh log, a config with one target
//! and one user, and the gateway with the default pack — nothing to configure. Ctrl-C stops
//! everything and removes the directory (unless `--keep`).
//!
//! The gateway reaches the cluster as [`UPSTREAM_ROLE`], which is not a superuser: it owns the
//! target's database ([`UPSTREAM_DB`]) and may create databases, nothing more. Whatever gets past
//! the guardrails then still meets the server's own privileges (docs/config.md, "The upstream
//! role").

use crate::cli::serve::{init_tracing, stop_signal};
use crate::config::Config;
use crate::pgcluster::{PgCluster, PgOptions};
use anyhow::Context;
use parapet_gateway::{Gateway, Verifier};
use parapet_guard::Guard;
use parapet_log::Log;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `parapet quickstart`.
#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Address the gateway listens on.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: SocketAddr,
    /// Address the console (HTTP API over the audit trail) listens on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub console: SocketAddr,
    /// Keep the directory (cluster, log, config) after stopping.
    #[arg(long)]
    pub keep: bool,
}

/// The role the gateway logs in to the cluster as.
pub const UPSTREAM_ROLE: &str = "parapet_app";
/// The target's database, owned by [`UPSTREAM_ROLE`].
pub const UPSTREAM_DB: &str = "app";

/// Runs `parapet quickstart`.
pub fn run(args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let tmp = tempfile::Builder::new()
        .prefix("parapet-quickstart-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir = tmp.path().to_path_buf();
    // The postgres OS user must be able to reach its cluster directory inside.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let pg_dir = dir.join("pg");
    std::fs::create_dir(&pg_dir)?;
    eprintln!(
        "parapet: creating a PostgreSQL cluster in {} …",
        pg_dir.display()
    );
    let db_password = crate::cli::random_text(24);
    let mut cluster = PgCluster::start(
        &pg_dir,
        &PgOptions {
            password: db_password.clone(),
            no_fsync: false,
            max_connections: 100,
        },
    )?;
    // Least privilege: the gateway's role owns its database and may create databases.
    let app_password = crate::cli::random_text(24);
    cluster.psql(
        "postgres",
        &format!("CREATE ROLE {UPSTREAM_ROLE} LOGIN CREATEDB PASSWORD '{app_password}'"),
    )?;
    cluster.psql(
        "postgres",
        &format!("CREATE DATABASE {UPSTREAM_DB} OWNER {UPSTREAM_ROLE}"),
    )?;
    let log_dir = dir.join("log");
    let key_file = dir.join("log.key");
    let origin = format!(
        "parapet.quickstart/{}",
        crate::cli::random_text(8).to_lowercase()
    );
    let vkey = Log::init(&log_dir, &origin, &key_file).context("cannot create the audit log")?;
    std::fs::write(dir.join("log.vkey"), format!("{vkey}\n"))?;
    let password = crate::cli::random_text(20);
    let user = crate::cli::user::snippet(
        "alice",
        &Verifier::generate(&password),
        &["eng".to_string()],
    );
    let console_token = crate::console::auth::generate();
    let console_block = crate::cli::console::token_block(
        "quickstart",
        crate::config::ConsoleRole::Operator,
        &crate::console::auth::digest(&console_token),
        None,
    );
    let config_path = dir.join("parapet.toml");
    let config_text = format!(
        "# Written by `parapet quickstart`.\n[log]\ndir = \"log\"\nkey = \"log.key\"\norigin = \"{origin}\"\ndurability = \"before_forward\"\n\n\
         [listen]\npostgres = \"{}\"\n\n[[targets]]\nname = \"main\"\nupstream = \"{}\"\nenvironment = \"production\"\n\n\
         {user}\n[policy]\nfiles = []\ndefault_pack = true\n\n[console]\nlisten = \"{}\"\n\n{console_block}",
        args.listen,
        cluster.url_as(UPSTREAM_ROLE, &app_password, UPSTREAM_DB),
        args.console,
    );
    std::fs::write(&config_path, config_text)?;
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))?;
    let config = Config::load(&config_path)?;
    let guard =
        Guard::load(&config.policy_source()).context("cannot load the default policy pack")?;
    let log = Log::open(&config.log.dir, &config.log.key)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let gw = Gateway::bind(config.gateway()?, Arc::new(guard), log).await?;
        let addr = gw.local_addr()?;
        let section = config
            .console
            .as_ref()
            .context("the quickstart config has a [console]")?;
        let console =
            crate::cli::serve::start_console(section, &config.log.dir, gw.control(), None).await?;
        crate::outln!()?;
        crate::outln!("Parapet is running (default guardrail pack, durable audit log).")?;
        crate::outln!()?;
        crate::outln!("  connect:      PGPASSWORD='{password}' psql \"host={} port={} user=alice dbname=main\"", addr.ip(), addr.port())?;
        crate::outln!("  password:     {password}   (user alice, group eng)")?;
        crate::outln!("  upstream:     role {UPSTREAM_ROLE} on database {UPSTREAM_DB} (not a superuser: owns its database, may create databases)")?;
        crate::outln!("  console:      http://{}/  token: {console_token}", console.addr)?;
        crate::outln!("  config:       {}", config_path.display())?;
        crate::outln!("  audit log:    {}", log_dir.display())?;
        crate::outln!("  verifier key: {vkey}")?;
        crate::outln!("  verify with:  parapet verify --dir {} --vkey {}", log_dir.display(), dir.join("log.vkey").display())?;
        crate::outln!()?;
        crate::outln!("Press Ctrl-C to stop{}.", if args.keep { "" } else { " and remove everything" })?;
        let res = gw.run(stop_signal()).await;
        let _ = console.stop.send(());
        let _ = console.task.await;
        res?;
        anyhow::Ok(())
    });
    cluster.stop();
    if args.keep {
        let kept = tmp.keep();
        eprintln!("parapet: kept {}", kept.display());
    } else {
        drop(tmp);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
