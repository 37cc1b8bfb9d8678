//! What `parapet serve` starts around the log for a gateway of a fleet (`[log] backend =
//! "postgres"`): the verified mirror of the fleet's published log in `[log] dir` (which the
//! console, its index, alerts and the gateway's lock/approval rebuild read as a log directory),
//! and the fleet's shared state in PostgreSQL (user locks, single-use approvals).

use crate::config::Config;
use anyhow::{bail, Context};
use parapet_gateway::fleet::PgFleetState;
use parapet_gateway::FleetOptions;
use parapet_log::driver::S3Driver;
use parapet_log::mirror::{Mirror, MirrorHandle, MIRROR_POLL};
use std::time::Duration;

/// How long `serve` waits for the mirror's first look at the bucket before giving up.
const FIRST_SYNC: Duration = Duration::from_secs(60);

/// Starts mirroring the fleet's log from its bucket into `[log] dir` (verified with the key of
/// `[log] key`) and waits until the mirror holds the bucket's current checkpoint, so that what
/// reads the directory next sees the log as it is. `None` for a `dir` backend.
pub fn start_mirror(config: &Config) -> anyhow::Result<Option<MirrorHandle>> {
    let Some((_, s3)) = config.log.fleet() else {
        return Ok(None);
    };
    let vkey = parapet_log::read_signing_key(&config.log.key)
        .context("cannot read the log's signing key ([log] key)")?
        .verifier();
    let source = S3Driver::new(&s3).with_context(|| {
        format!(
            "cannot read the fleet's log from bucket {} (its mirror in {})",
            s3.bucket,
            config.log.dir.display()
        )
    })?;
    let mirror = Mirror::open(source, &config.log.dir, vkey).with_context(|| {
        format!(
            "cannot mirror the fleet's log into {} ([log] dir)",
            config.log.dir.display()
        )
    })?;
    let handle = mirror
        .start(MIRROR_POLL)
        .context("cannot start the log's mirror")?;
    let status = handle.wait_checked(FIRST_SYNC);
    if let Some(alarm) = status.alarm {
        bail!("the fleet's published log does not verify, so this gateway does not start: {alarm}");
    }
    if status.checked.is_none() {
        bail!(
            "cannot mirror the fleet's log from bucket {} within {} s: {} (check [log] bucket, \
             endpoint and the AWS_* credentials; `parapet log init --config` creates the log)",
            s3.bucket,
            FIRST_SYNC.as_secs(),
            status.last_error.unwrap_or_else(|| "no answer".to_string())
        );
    }
    eprintln!(
        "parapet: mirroring the fleet's log from bucket {} into {} ({} entries verified)",
        s3.bucket,
        config.log.dir.display(),
        status.size
    );
    Ok(Some(handle))
}

/// The fleet's shared state in the database of `[log] postgres_url` (tables `parapet_*`), for
/// [`parapet_gateway::Gateway::bind_with`]. `None` for a `dir` backend. Call on the runtime
/// (it listens for lock changes there).
pub async fn fleet_options(config: &Config) -> anyhow::Result<Option<FleetOptions>> {
    let Some((url, _)) = config.log.fleet() else {
        return Ok(None);
    };
    let state = PgFleetState::connect(url)
        .await
        .context("cannot use the fleet's PostgreSQL for user locks and approvals")?;
    Ok(Some(FleetOptions {
        state,
        log_dir: config.log.dir.clone(),
    }))
}
