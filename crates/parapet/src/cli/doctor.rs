//! `parapet doctor`: checks a set-up the way an operator would, one line per check (✓ or ✗, and
//! what to do about a ✗): the config, each target's upstream and its role, the log (it verifies;
//! how old its checkpoint is), the signing key's file mode, the TLS certificate's expiry, the
//! policies, and each alert's receiver (reachable; nothing is sent). Exits non-zero when any
//! check fails.

use crate::config::Config;
use anyhow::Context;
use parapet_log::note::NoteVerifier;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Arguments of `parapet doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Configuration file.
    #[arg(long, short, default_value = "parapet.toml", env = "PARAPET_CONFIG")]
    pub config: PathBuf,
}

/// A certificate expiring within this long is a ✗.
const CERT_WARN: Duration = Duration::from_secs(14 * 24 * 3600);

struct Report {
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: impl std::fmt::Display) -> anyhow::Result<()> {
        crate::outln!("✓ {what}")
    }

    fn fail(
        &mut self,
        what: impl std::fmt::Display,
        fix: impl std::fmt::Display,
    ) -> anyhow::Result<()> {
        self.failed += 1;
        crate::outln!("✗ {what} — {fix}")
    }
}

/// Runs `parapet doctor`.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut r = Report { failed: 0 };
    let config = match Config::load(&args.config) {
        Ok(c) => {
            r.ok(format_args!("config {} reads", args.config.display()))?;
            c
        }
        Err(e) => {
            r.fail(
                format_args!("config {}: {e:#}", args.config.display()),
                "fix the file (docs/config.md), or create one with `parapet init`",
            )?;
            return Ok(ExitCode::FAILURE);
        }
    };
    match config.gateway() {
        Ok(_) => r.ok("gateway settings are consistent (targets, users, TLS)")?,
        Err(e) => r.fail(format_args!("gateway settings: {e:#}"), "fix parapet.toml")?,
    }
    targets(&config, &mut r)?;
    key_mode(&config.log.key, &mut r)?;
    log(&config, &mut r)?;
    if let Some(cert) = &config.listen.tls_cert {
        certificate(cert, &mut r)?;
    }
    match parapet_guard::Guard::load(&config.policy_source()) {
        Ok(g) => r.ok(format_args!(
            "policies compile ({} rules, set {})",
            g.rules().len(),
            &g.policy_hash()[..12.min(g.policy_hash().len())]
        ))?,
        Err(e) => r.fail(
            format_args!("policies: {e}"),
            "fix the files in [policy] files (`parapet policy check` shows each problem)",
        )?,
    }
    alerts(&config, &mut r)?;
    Ok(if r.failed == 0 {
        ExitCode::SUCCESS
    } else {
        crate::outln!("{} check(s) failed", r.failed)?;
        ExitCode::FAILURE
    })
}

/// Each target: the upstream answers the gateway's login, and its role is not a superuser.
fn targets(config: &Config, r: &mut Report) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for t in &config.targets {
        let up = match crate::config::parse_upstream(&t.upstream) {
            Ok(u) => u,
            Err(e) => {
                r.fail(
                    format_args!("target {:?}: upstream URL: {e:#}", t.name),
                    "fix [[targets]] upstream",
                )?;
                continue;
            }
        };
        let probe = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), parapet_gateway::probe::probe(&up)).await
        });
        match probe {
            Err(_) => r.fail(
                format_args!("target {:?}: {}:{} does not answer within 10 s", t.name, up.host, up.port),
                "start the server, or fix host and port in [[targets]] upstream",
            )?,
            Ok(Err(e)) => r.fail(
                format_args!("target {:?}: {e}", t.name),
                "start the server, or fix the URL's host, port, user or password",
            )?,
            Ok(Ok(p)) if p.superuser => r.fail(
                format_args!("target {:?}: {}", t.name, crate::cli::init::describe(&p)),
                "give the gateway a role that is not a superuser (docs/config.md, \"The upstream role\")",
            )?,
            Ok(Ok(p)) => r.ok(format_args!(
                "target {:?}: upstream reachable; {}",
                t.name,
                crate::cli::init::describe(&p)
            ))?,
        }
    }
    if config.targets.is_empty() {
        r.fail("no [[targets]]", "add one (docs/config.md)")?;
    }
    Ok(())
}

/// Each `[[alerts]]` receiver accepts a connection (and, for `https://`, shows a certificate
/// its CAs vouch for). Nothing is sent: a test request would be a false alert.
fn alerts(config: &Config, r: &mut Report) -> anyhow::Result<()> {
    if config.alerts.is_empty() {
        return Ok(());
    }
    let specs = match config.alerts() {
        Ok(s) => s,
        Err(e) => {
            return r.fail(
                format_args!("alerts: {e:#}"),
                "fix [[alerts]] (docs/config.md, \"[[alerts]]\")",
            )
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for s in &specs {
        let probe = match crate::alerts::http::Client::new(&s.url, s.ca_file.as_deref()) {
            Ok(c) => rt.block_on(async { c.probe().await.map(|()| c.origin()) }),
            Err(e) => Err(e),
        };
        match probe {
            Ok(origin) => r.ok(format_args!(
                "alert {:?}: receiver {origin} reachable",
                s.name
            ))?,
            Err(e) => r.fail(
                format_args!("alert {:?}: {e}", s.name),
                "start the receiver or fix its url / ca_file; until then its alerts wait (none is lost)",
            )?,
        }
    }
    Ok(())
}

/// The signing key is readable by its owner only.
fn key_mode(key: &Path, r: &mut Report) -> anyhow::Result<()> {
    match std::fs::metadata(key) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                r.fail(
                    format_args!(
                        "signing key {} has mode {mode:o}: others may read it",
                        key.display()
                    ),
                    format_args!("chmod 600 {}", key.display()),
                )
            } else {
                r.ok(format_args!(
                    "signing key {} has mode {mode:o}",
                    key.display()
                ))
            }
        }
        Err(e) => r.fail(
            format_args!("signing key {}: {e}", key.display()),
            "fix [log] key (it is made by `parapet log init` or `parapet init`)",
        ),
    }
}

/// The log verifies against the key's own verifier key; its checkpoint's age.
fn log(config: &Config, r: &mut Report) -> anyhow::Result<()> {
    let dir = &config.log.dir;
    let vkey = match parapet_log::read_signing_key(&config.log.key) {
        Ok(s) => s.verifier(),
        Err(e) => {
            return r.fail(
                format_args!("cannot read the signing key: {e}"),
                "fix [log] key",
            )
        }
    };
    if let Some((url, s3)) = config.log.fleet() {
        return fleet_log(url, &s3, &vkey, r);
    }
    verify(dir, &vkey, r)?;
    let cp = dir.join("checkpoint");
    match std::fs::metadata(&cp).and_then(|m| m.modified()) {
        Ok(t) => {
            let age = SystemTime::now().duration_since(t).unwrap_or_default();
            r.ok(format_args!("checkpoint published {} ago", humantime(age)))
        }
        Err(e) => r.fail(
            format_args!("checkpoint {}: {e}", cp.display()),
            "check [log] dir",
        ),
    }
}

/// A fleet's log: PostgreSQL answers, the bucket verifies, and the integrator keeps up.
fn fleet_log(
    url: &str,
    s3: &parapet_log::driver::S3Config,
    vkey: &NoteVerifier,
    r: &mut Report,
) -> anyhow::Result<()> {
    let db = crate::cli::log::redact_url(url);
    let (sequenced, integrated) = match parapet_log::fleet_sizes(url) {
        Ok(s) => s,
        Err(e) => {
            return r.fail(
                format_args!("fleet log: PostgreSQL {db}: {e}"),
                "check [log] postgres_url and that PostgreSQL runs (`parapet log init --config FILE --key KEYFILE` creates the log)",
            )
        }
    };
    r.ok(format_args!(
        "fleet log: PostgreSQL {db} answers: {sequenced} entries sequenced, {integrated} integrated"
    ))?;
    let bucket = match parapet_log::driver::S3Driver::new(s3) {
        Ok(b) => b,
        Err(e) => return r.fail(
            format_args!("fleet log: bucket {}: {e}", s3.bucket),
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and check [log] bucket and endpoint",
        ),
    };
    match parapet_log::verify::verify_source(&bucket, vkey, None, &|_| {}) {
        Ok(report) => r.ok(format_args!(
            "fleet log: bucket {} verifies: {report}",
            s3.bucket
        )),
        Err(e) => r.fail(
            format_args!("fleet log: bucket {} does not verify: {e}", s3.bucket),
            "keep the bucket as it is for investigation and see docs/log.md, \"Fleet\"",
        ),
    }
}

fn verify(dir: &Path, vkey: &NoteVerifier, r: &mut Report) -> anyhow::Result<()> {
    match parapet_log::verify::verify_log(dir, vkey, None, &|_| {}) {
        Ok(report) => {
            r.ok(format_args!("log {} verifies: {report}", dir.display()))?;
            match parapet_log::unpublished_entries(dir, report.checkpoint.size) {
                Ok(0) | Err(_) => Ok(()),
                Ok(n) => r.fail(
                    format_args!("{n} acknowledged entries are only in the journal"),
                    format_args!(
                        "a running gateway publishes them within a second; if none runs, `parapet log recover --dir {} --key {}`",
                        dir.display(),
                        "KEYFILE"
                    ),
                ),
            }
        }
        Err(e) => r.fail(
            format_args!("log {} does not verify: {e}", dir.display()),
            "keep the directory as it is for investigation and see docs/log.md",
        ),
    }
}

/// The TLS certificate is valid for at least [`CERT_WARN`].
fn certificate(path: &Path, r: &mut Report) -> anyhow::Result<()> {
    match not_after(path) {
        Ok(t) => match t.duration_since(SystemTime::now()) {
            Ok(left) if left >= CERT_WARN => r.ok(format_args!(
                "TLS certificate {} expires in {}",
                path.display(),
                humantime(left)
            )),
            Ok(left) => r.fail(
                format_args!(
                    "TLS certificate {} expires in {}",
                    path.display(),
                    humantime(left)
                ),
                "renew it and reload (`systemctl reload parapet` or SIGHUP)",
            ),
            Err(_) => r.fail(
                format_args!("TLS certificate {} has expired", path.display()),
                "renew it",
            ),
        },
        Err(e) => r.fail(
            format_args!("TLS certificate {}: {e:#}", path.display()),
            "fix [listen] tls_cert",
        ),
    }
}

/// The end of the first certificate's validity in a PEM file.
fn not_after(path: &Path) -> anyhow::Result<SystemTime> {
    use x509_cert::der::DecodePem;
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cert = x509_cert::Certificate::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    Ok(cert.tbs_certificate.validity.not_after.to_system_time())
}

/// `3 d 4 h`, `5 min`, `12 s`.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}
