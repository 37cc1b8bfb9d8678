//! `parapet init`: puts the gateway in front of a real database in one command. It logs in to the
//! upstream as the gateway will and says plainly when its role is a superuser, creates the audit
//! log and its key, a first gateway user, and a commented `parapet.toml`, then prints how to start
//! the gateway, connect through it, and verify the log. It never overwrites a set-up.

use crate::config::parse_upstream;
use anyhow::{bail, Context};
use parapet_gateway::probe::UpstreamProbe;
use parapet_gateway::Verifier;
use parapet_log::Log;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `parapet init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The database to guard: `postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=…]`, with the
    /// credentials the gateway will use (a role that is not a superuser; see docs/config.md).
    #[arg(long)]
    pub upstream: String,
    /// Directory of the set-up (config, log, key); created.
    #[arg(long, default_value = "parapet")]
    pub dir: PathBuf,
    /// The name clients give as the database.
    #[arg(long, default_value = "main")]
    pub target: String,
    /// The first gateway user (default: the upstream's user name).
    #[arg(long)]
    pub user: Option<String>,
    /// Address the gateway will listen on.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: SocketAddr,
    /// Directory of the audit log (default: DIR/log), e.g. /var/lib/parapet/log for the service.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The log's origin, its unique name in checkpoints (default: HOST/parapet/TARGET).
    #[arg(long)]
    pub origin: Option<String>,
}

/// `s` as a TOML string.
fn q(s: &str) -> String {
    toml::Value::from(s).to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        })
        .unwrap_or_else(|| "localhost".into())
}

/// What a superuser upstream role means, and how to make one that is not.
pub fn superuser_warning(p: &UpstreamProbe) -> String {
    format!(
        "warning: the upstream role {role:?} is a SUPERUSER.\n\
         \x20 The guardrails judge every statement, but the server's privileges are the line behind them:\n\
         \x20 a superuser can read and write server files, run programs, rewrite the system catalogs\n\
         \x20 (and so make logins that bypass the gateway), load code and ignore row-level security.\n\
         \x20 Give the gateway a role that owns the application's database and nothing more, e.g. as a superuser:\n\
         \x20   CREATE ROLE parapet_gw LOGIN PASSWORD '…';\n\
         \x20   ALTER DATABASE {db} OWNER TO parapet_gw;   -- or GRANT the rights the application needs\n\
         \x20 then change the user in [[targets]] upstream (docs/config.md, \"The upstream role\").",
        role = p.role,
        db = p.database
    )
}

/// One line on what the role may do.
pub fn describe(p: &UpstreamProbe) -> String {
    let mut attrs = Vec::new();
    for (on, name) in [
        (p.superuser, "SUPERUSER"),
        (p.create_db, "CREATEDB"),
        (p.create_role, "CREATEROLE"),
        (p.replication, "REPLICATION"),
        (p.bypass_rls, "BYPASSRLS"),
    ] {
        if on {
            attrs.push(name);
        }
    }
    let attrs = if attrs.is_empty() {
        "no role attributes".to_string()
    } else {
        attrs.join(", ")
    };
    format!(
        "role {:?} on database {:?} (PostgreSQL {}): {attrs}{}",
        p.role,
        p.database,
        p.server_version,
        if p.owns_database {
            ", owns the database"
        } else {
            ""
        }
    )
}

/// Runs `parapet init`.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let config_path = args.dir.join("parapet.toml");
    let log_dir = args.log_dir.clone().unwrap_or_else(|| args.dir.join("log"));
    let key_path = args.dir.join("log.key");
    for p in [&config_path, &log_dir, &key_path] {
        if p.exists() {
            bail!(
                "{} already exists: parapet init never overwrites a set-up; pick another --dir (or remove it)",
                p.display()
            );
        }
    }
    let upstream = parse_upstream(&args.upstream).context("--upstream")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let probe = rt
        .block_on(parapet_gateway::probe::probe(&upstream))
        .context(
            "checking the upstream (is the server up, and are the URL's credentials right?)",
        )?;
    eprintln!("parapet: upstream {}", describe(&probe));
    if probe.superuser {
        eprintln!("{}", superuser_warning(&probe));
    }

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let origin = args
        .origin
        .clone()
        .unwrap_or_else(|| format!("{}/parapet/{}", hostname(), args.target));
    let vkey = Log::init(&log_dir, &origin, &key_path).context("cannot create the audit log")?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    let vkey_path = args.dir.join("log.vkey");
    std::fs::write(&vkey_path, format!("{vkey}\n"))?;

    let user = args.user.clone().unwrap_or_else(|| upstream.user.clone());
    let password = crate::cli::random_text(20);
    let users = crate::cli::user::snippet(&user, &Verifier::generate(&password), &[]);
    let rel = |p: &Path| -> String {
        p.strip_prefix(&args.dir)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let text = format!(
        "# Written by `parapet init`. Reference: docs/config.md. Check it with `parapet doctor --config {config}`.\n\
         # Relative paths are relative to this file's directory.\n\n\
         [log]\n\
         # The audit log and its signing key (keep the key mode 0600; the verifier key is in log.vkey).\n\
         dir = {log}\n\
         key = {key}\n\
         origin = {origin}\n\
         # Decisions are durable before a statement reaches the database.\n\
         durability = \"before_forward\"\n\n\
         [listen]\n\
         # Where clients connect (add tls_cert / tls_key to offer TLS).\n\
         postgres = \"{listen}\"\n\n\
         [[targets]]\n\
         # Clients give this name as the database. The upstream URL holds the gateway's own\n\
         # credentials; users never see them.\n\
         name = {target}\n\
         upstream = {upstream}\n\
         environment = \"production\"\n\n\
         # Gateway users: add more with `parapet user add NAME`.\n\
         {users}\n\
         [policy]\n\
         # The built-in default pack; add your own Cedar files here.\n\
         files = []\n\
         default_pack = true\n",
        config = config_path.display(),
        log = q(&rel(&log_dir)),
        key = q(&rel(&key_path)),
        origin = q(&origin),
        listen = args.listen,
        target = q(&args.target),
        upstream = q(&args.upstream),
    );
    std::fs::write(&config_path, text)?;
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))?;

    crate::outln!("Parapet is set up in {}.", args.dir.display())?;
    crate::outln!()?;
    crate::outln!(
        "  start:        parapet serve --config {}",
        config_path.display()
    )?;
    crate::outln!(
        "  connect:      PGPASSWORD='{password}' psql \"host={} port={} user={user} dbname={}\"",
        args.listen.ip(),
        args.listen.port(),
        args.target
    )?;
    crate::outln!("  password:     {password}   (gateway user {user})")?;
    crate::outln!(
        "  check:        parapet doctor --config {}",
        config_path.display()
    )?;
    crate::outln!(
        "  verify:       parapet verify --dir {} --vkey {}",
        log_dir.display(),
        vkey_path.display()
    )?;
    crate::outln!("  verifier key: {vkey}")?;
    Ok(ExitCode::SUCCESS)
}
