//! [`PgSequencer`]: the sequencer of a log whose batches are made durable in PostgreSQL. A batch
//! record is one row of `parapet_log_records`, inserted (and committed with
//! `synchronous_commit = on`) before its tickets resolve; `parapet_log_state` holds the
//! integration state: the generation of the writer that holds the log, and the tree (size,
//! root) it last committed before publishing.
//!
//! Opening takes the log over: the generation is incremented, which fences any older writer. A
//! record is inserted only while the row of state still carries the writer's generation (read
//! with `FOR SHARE`, so a takeover waits for inserts in flight and every insert after it fails),
//! and [`Sequencer::fence`] commits the tree state under the same condition: a stale writer
//! sequences nothing more and publishes nothing. What this does not do yet is let several
//! processes sequence at once: one writer holds the log at a time (see `docs/log.md`).

use super::{PendingSync, Sequencer};
use crate::blocking::BlockingRuntime;
use crate::hash::Hash;
use std::io;
use std::sync::Arc;

/// The tables, created if missing.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS parapet_log_state (
    id int PRIMARY KEY CHECK (id = 1),
    generation bigint NOT NULL,
    size bigint NOT NULL,
    root bytea
);
CREATE TABLE IF NOT EXISTS parapet_log_records (
    mark bigint PRIMARY KEY,
    record bytea NOT NULL
);
INSERT INTO parapet_log_state (id, generation, size) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING;
";

/// The sequencer of a log kept in PostgreSQL (see the module documentation).
pub struct PgSequencer {
    rt: BlockingRuntime,
    client: Arc<tokio_postgres::Client>,
    generation: i64,
    next_mark: u64,
    location: String,
}

impl std::fmt::Debug for PgSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSequencer")
            .field("location", &self.location)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn pg_error(what: &str, e: tokio_postgres::Error) -> io::Error {
    io::Error::other(format!(
        "PostgreSQL sequencer: {what}: {}",
        crate::pg_tls::describe(&e)
    ))
}

fn fenced(generation: i64) -> io::Error {
    io::Error::other(format!(
        "PostgreSQL sequencer: another writer took the log over (this one holds generation \
         {generation}, no longer the current one): this writer stops sequencing and publishing"
    ))
}

impl PgSequencer {
    /// Connects to `url` (a libpq URL or key=value string; TLS as [`crate::pg_tls`] says),
    /// creates the tables
    /// if missing, and takes the log over (a new generation).
    pub fn connect(url: &str) -> io::Result<PgSequencer> {
        let rt = BlockingRuntime::new("parapet-pg-sequencer", 1)?;
        let url_owned = url.to_string();
        let (client, generation, next_mark) = rt.block_on(async move {
            let (url, tls) = crate::pg_tls::prepare(&url_owned)
                .map_err(|e| io::Error::other(format!("PostgreSQL sequencer: {e}")))?;
            let (client, conn) = tokio_postgres::connect(&url, tls)
                .await
                .map_err(|e| pg_error("connecting", e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
                .batch_execute("SET synchronous_commit = on")
                .await
                .map_err(|e| pg_error("setting synchronous_commit", e))?;
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| pg_error("creating the tables", e))?;
            let row = client
                .query_one(
                    "UPDATE parapet_log_state SET generation = generation + 1 WHERE id = 1 \
                     RETURNING generation",
                    &[],
                )
                .await
                .map_err(|e| pg_error("taking the log over", e))?;
            let generation: i64 = row.get(0);
            let row = client
                .query_one(
                    "SELECT COALESCE(MAX(mark) + 1, 0) FROM parapet_log_records",
                    &[],
                )
                .await
                .map_err(|e| pg_error("reading the records", e))?;
            let next: i64 = row.get(0);
            Ok::<_, io::Error>((client, generation, next as u64))
        })??;
        let location = match url.split_once('@') {
            Some((_, host)) => format!("postgres://…@{host}"),
            None => "PostgreSQL".to_string(),
        };
        Ok(PgSequencer {
            rt,
            client: Arc::new(client),
            generation,
            next_mark,
            location,
        })
    }

    /// This writer's generation.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Runs `f` with the client on the runtime.
    fn run<T: Send, F>(&self, f: impl FnOnce(Arc<tokio_postgres::Client>) -> F) -> io::Result<T>
    where
        F: std::future::Future<Output = io::Result<T>> + Send,
    {
        self.rt.block_on(f(self.client.clone()))?
    }
}

impl Sequencer for PgSequencer {
    fn sequence(&mut self, record: &[u8]) -> io::Result<Option<PendingSync>> {
        let mark = self.next_mark;
        let generation = self.generation;
        let record = record.to_vec();
        let inserted = self.run(|c| async move {
            c.execute(
                "INSERT INTO parapet_log_records (mark, record) \
                 SELECT $1, $2 FROM (SELECT generation FROM parapet_log_state \
                 WHERE id = 1 AND generation = $3 FOR SHARE) AS s",
                &[&(mark as i64), &record, &generation],
            )
            .await
            .map_err(|e| pg_error("inserting a batch record", e))
        })?;
        if inserted == 0 {
            return Err(fenced(generation));
        }
        self.next_mark = mark + 1;
        // Committed (synchronous_commit = on): durable already.
        Ok(Some(PendingSync::done(mark)))
    }

    fn withdraw_from(&mut self, mark: u64) -> io::Result<()> {
        self.run(|c| async move {
            c.execute(
                "DELETE FROM parapet_log_records WHERE mark >= $1",
                &[&(mark as i64)],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_error("withdrawing records", e))
        })
    }

    fn discard_last(&mut self, record: &[u8]) -> io::Result<()> {
        let record = record.to_vec();
        self.run(|c| async move {
            c.execute(
                "DELETE FROM parapet_log_records WHERE record = $1 AND mark = \
                 (SELECT MAX(mark) FROM parapet_log_records)",
                &[&record],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_error("discarding the last record", e))
        })
    }

    fn records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.run(|c| async move {
            let rows = c
                .query("SELECT record FROM parapet_log_records ORDER BY mark", &[])
                .await
                .map_err(|e| pg_error("reading the records", e))?;
            Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
        })
    }

    fn clear(&mut self) -> io::Result<()> {
        let (end, generation) = (self.next_mark, self.generation);
        let cleared = self.run(|c| async move {
            c.execute(
                "DELETE FROM parapet_log_records WHERE mark < $1 AND EXISTS \
                 (SELECT 1 FROM parapet_log_state WHERE id = 1 AND generation = $2 FOR SHARE)",
                &[&(end as i64), &generation],
            )
            .await
            .map_err(|e| pg_error("clearing records", e))?;
            let current: i64 = c
                .query_one("SELECT generation FROM parapet_log_state WHERE id = 1", &[])
                .await
                .map_err(|e| pg_error("reading the generation", e))?
                .get(0);
            Ok(current == generation)
        })?;
        if cleared {
            Ok(())
        } else {
            Err(fenced(generation))
        }
    }

    fn end_mark(&self) -> u64 {
        self.next_mark
    }

    fn fence(&mut self, size: u64, root: &Hash) -> io::Result<()> {
        let (generation, root) = (self.generation, root.to_vec());
        let updated = self.run(|c| async move {
            c.execute(
                "UPDATE parapet_log_state SET size = $1, root = $2 \
                 WHERE id = 1 AND generation = $3",
                &[&(size as i64), &root, &generation],
            )
            .await
            .map_err(|e| pg_error("committing the tree state", e))
        })?;
        if updated == 0 {
            return Err(fenced(generation));
        }
        Ok(())
    }
}
