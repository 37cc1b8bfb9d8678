//! The fleet log: one log that any number of processes append to at once, sequenced in
//! PostgreSQL and published to an S3-compatible bucket, after Tessera's `storage/mysql` and
//! `storage/aws` (see `docs/log.md`, "Fleet").
//!
//! - Appending ([`append`]): each process's queue hands its batches (group commit) to an
//!   appender thread, which makes each batch durable in one PostgreSQL statement (its own
//!   transaction, `synchronous_commit = on`): it takes the next index from the counter row
//!   (`UPDATE … RETURNING`, which holds the row lock until the commit) and inserts the batch as
//!   one row (first index, count, entries in the entry-bundle encoding). Only then do the
//!   batch's tickets resolve. Indices are contiguous and gap-free: a failed transaction
//!   allocates nothing, and the row lock orders the commits as the indices.
//! - Integrating ([`publish`]): one process of the fleet at a time, elected with a PostgreSQL
//!   advisory lock held by a dedicated connection, and fenced by a generation number in the
//!   state row. The holder appends the batches past its tree to the tree, commits the new tree
//!   state (size, root) under its generation before publishing anything, writes tiles and
//!   bundles, then the signed checkpoint, then deletes the batches that checkpoint covers.

pub(crate) mod append;
pub(crate) mod publish;

use crate::blocking::BlockingRuntime;
use crate::error::LogError;
use std::io;
use std::time::Duration;

/// The fleet's tables (in the database of the PostgreSQL URL), created by `init`.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS parapet_fleet_sequence (
    id int PRIMARY KEY CHECK (id = 1),
    next bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS parapet_fleet_batches (
    first bigint PRIMARY KEY,
    count int NOT NULL,
    entries bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS parapet_fleet_state (
    id int PRIMARY KEY CHECK (id = 1),
    origin text NOT NULL,
    generation bigint NOT NULL,
    size bigint NOT NULL,
    root bytea NOT NULL
);
";

/// Key of the advisory lock that elects the integrator (`parapet` in ASCII).
pub(crate) const INTEGRATOR_LOCK: i64 = 0x0070_6172_6170_6574;

/// Longest a connection attempt to PostgreSQL takes before it counts as failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL URL without its password, for messages.
pub(crate) fn url_location(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => format!("postgres://…@{host}"),
        None if url.contains("password") => "PostgreSQL".to_string(),
        None => url.to_string(),
    }
}

/// A PostgreSQL error as an I/O error saying what was being done, and where.
pub(crate) fn pg_error(location: &str, what: &str, e: tokio_postgres::Error) -> io::Error {
    let detail = crate::pg_tls::describe(&e);
    io::Error::other(format!("fleet log sequencer {location}: {what}: {detail}"))
}

/// Connects to `url` (TLS as `crate::pg_tls` says) on the current runtime, with
/// `synchronous_commit = on` for the session.
pub(crate) async fn connect(url: &str, name: &str) -> io::Result<tokio_postgres::Client> {
    let location = url_location(url);
    let (url, tls) = crate::pg_tls::prepare(url).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fleet log sequencer {location}: {e}"),
        )
    })?;
    let connecting = tokio_postgres::connect(&url, tls);
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "fleet log sequencer {location}: connecting timed out after {} s; is \
                     PostgreSQL running and reachable?",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| pg_error(&location, "connecting", e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(&format!(
            "SET synchronous_commit = on; SET application_name = '{name}'"
        ))
        .await
        .map_err(|e| pg_error(&location, "setting synchronous_commit", e))?;
    Ok(client)
}

/// Creates the fleet's tables and its state row (size 0) for a log of origin `origin`;
/// refuses if the database holds a fleet log already.
pub(crate) fn create_tables(url: &str, origin: &str) -> Result<(), LogError> {
    let location = url_location(url);
    let rt = BlockingRuntime::new("parapet-fleet-init", 1)
        .map_err(|e| LogError::io("starting a runtime", e))?;
    let url = url.to_string();
    let origin = origin.to_string();
    let empty = crate::hash::empty_root().to_vec();
    rt.block_on(async move {
        let mut client = connect(&url, "parapet log init").await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error(&location, "starting a transaction", e))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(|e| pg_error(&location, "creating the tables", e))?;
        let inserted = tx
            .execute(
                "INSERT INTO parapet_fleet_state (id, origin, generation, size, root) \
                 VALUES (1, $1, 0, 0, $2) ON CONFLICT (id) DO NOTHING",
                &[&origin, &empty],
            )
            .await
            .map_err(|e| pg_error(&location, "creating the state row", e))?;
        if inserted == 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{location}: table parapet_fleet_state"),
            ));
        }
        tx.execute(
            "INSERT INTO parapet_fleet_sequence (id, next) VALUES (1, 0) \
             ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await
        .map_err(|e| pg_error(&location, "creating the sequence row", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error(&location, "committing", e))
    })
    .and_then(|r| r)
    .map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            LogError::AlreadyExists {
                path: e.to_string(),
            }
        } else {
            LogError::io("creating the fleet log's tables", e)
        }
    })
}

/// The origin recorded in the state row of the fleet log at `url`; an error saying to run
/// `parapet log init` if there is none.
pub(crate) fn read_origin(url: &str) -> Result<String, LogError> {
    let location = url_location(url);
    let rt = BlockingRuntime::new("parapet-fleet-open", 1)
        .map_err(|e| LogError::io("starting a runtime", e))?;
    let url = url.to_string();
    let loc = location.clone();
    let row = rt
        .block_on(async move {
            let client = connect(&url, "parapet").await?;
            let exists: bool = client
                .query_one("SELECT to_regclass('parapet_fleet_state') IS NOT NULL", &[])
                .await
                .map_err(|e| pg_error(&loc, "looking for the fleet's tables", e))?
                .get(0);
            if !exists {
                return Ok(None);
            }
            client
                .query_opt("SELECT origin FROM parapet_fleet_state WHERE id = 1", &[])
                .await
                .map(|r| r.map(|r| r.get::<_, String>(0)))
                .map_err(|e| pg_error(&loc, "reading the state row", e))
        })
        .and_then(|r| r)
        .map_err(|e| LogError::io("opening the fleet log", e))?;
    row.ok_or_else(|| LogError::NotALog {
        dir: format!("{location} (no parapet_fleet_state table)"),
    })
}

/// How many entries the fleet log at `url` has sequenced, and the tree size its integrator
/// last committed (published within a second of that commit).
pub(crate) fn sizes(url: &str) -> Result<(u64, u64), LogError> {
    let location = url_location(url);
    let rt = BlockingRuntime::new("parapet-fleet-status", 1)
        .map_err(|e| LogError::io("starting a runtime", e))?;
    let url = url.to_string();
    rt.block_on(async move {
        let client = connect(&url, "parapet doctor").await?;
        let row = client
            .query_one(
                "SELECT (SELECT next FROM parapet_fleet_sequence WHERE id = 1), \
                 (SELECT size FROM parapet_fleet_state WHERE id = 1)",
                &[],
            )
            .await
            .map_err(|e| pg_error(&location, "reading the fleet's state", e))?;
        let (a, b): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        match (a, b) {
            (Some(a), Some(b)) => Ok((a as u64, b as u64)),
            _ => Err(io::Error::other(format!(
                "{location}: the fleet's tables hold no log; create it with `parapet log init`"
            ))),
        }
    })
    .and_then(|r| r)
    .map_err(|e| LogError::io("reading the fleet log's state", e))
}
