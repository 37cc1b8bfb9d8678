//! The fleet log's appender: the thread that takes each batch from this process's queue (group
//! commit) and sequences it in PostgreSQL in one statement, its own transaction: the counter
//! row gives the batch its first index (`UPDATE … RETURNING`, the row lock held until the
//! commit) and the batch is inserted as one row. The batch's tickets resolve once that commit
//! returned (`synchronous_commit = on`). A failed statement fails the batch's tickets and drops
//! the connection; the next batch reconnects (PostgreSQL restarted, network cut).

use super::{connect, pg_error, url_location};
use crate::blocking::BlockingRuntime;
use crate::error::LogError;
use crate::flush::Ack;
use crate::queue::{Gather, Item, LocalQueue, Next, Queue};
use crate::tile::push_bundle_entry;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The statement that sequences one batch: allocates `$1` indices from the counter and inserts
/// the batch at the first of them, atomically.
const SEQUENCE: &str = "WITH s AS (UPDATE parapet_fleet_sequence SET next = next + $1 \
     WHERE id = 1 RETURNING next - $1 AS first) \
     INSERT INTO parapet_fleet_batches (first, count, entries) \
     SELECT first, $2, $3 FROM s RETURNING first";

/// Longest a batch waits for PostgreSQL's answer: then its tickets fail (the gateway refuses
/// the statements) and the connection is dropped, rather than every statement hanging on an
/// unresponsive server.
const SEQUENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The appender thread's state.
struct Appender {
    rt: BlockingRuntime,
    url: String,
    location: String,
    client: Option<(tokio_postgres::Client, tokio_postgres::Statement)>,
    queue: Arc<LocalQueue>,
    /// Highest index + 1 this process had acknowledged.
    acked: Arc<AtomicU64>,
}

/// Starts the appender thread of a fleet log at `url`, fed by `queue`.
pub(crate) fn start(
    url: &str,
    queue: Arc<LocalQueue>,
    acked: Arc<AtomicU64>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let mut a = Appender {
        rt: BlockingRuntime::new("parapet-fleet-append", 1)?,
        url: url.to_string(),
        location: url_location(url),
        client: None,
        queue,
        acked,
    };
    // Connect now: a misconfigured URL is reported when the log is opened.
    a.connection()?;
    std::thread::Builder::new()
        .name("parapet-fleet-append".into())
        .spawn(move || a.run())
}

impl Appender {
    fn run(mut self) {
        let mut gather = Gather::new();
        loop {
            let items = match self.queue.next_batch(&mut gather, || None) {
                Next::Batch { items, .. } => items,
                Next::Stop => return,
            };
            if items.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let close = self.process(items);
            gather.committed_in(started.elapsed());
            if let Some(tx) = close {
                let _ = tx.send(Ok(()));
                return;
            }
        }
    }

    /// The connection, (re)connected if needed.
    fn connection(&mut self) -> io::Result<()> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (url, location) = (self.url.clone(), self.location.clone());
            let c = self.rt.block_on(async move {
                let c = connect(&url, "parapet fleet appender").await?;
                let st = c
                    .prepare(SEQUENCE)
                    .await
                    .map_err(|e| pg_error(&location, "preparing the sequencing statement", e))?;
                Ok::<_, io::Error>((c, st))
            })??;
            self.client = Some(c);
        }
        Ok(())
    }

    /// Sequences one batch of `count` entries (`entries`, bundle-encoded); returns its first
    /// index once committed.
    fn sequence(&mut self, count: u64, entries: Vec<u8>) -> io::Result<u64> {
        let location = self.location.clone();
        self.connection()?;
        let Some((client, st)) = self.client.as_ref() else {
            return Err(io::Error::other("no connection"));
        };
        let (count_i64, count_i32) = (count as i64, count as i32);
        let r = self.rt.block_on(async {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&count_i64, &count_i32, &entries];
            let query = client.query_one(st, &params);
            match tokio::time::timeout(SEQUENCE_TIMEOUT, query).await {
                Ok(r) => r
                    .map(|row| row.get::<_, i64>(0))
                    .map_err(|e| pg_error(&location, "sequencing a batch", e)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "fleet log sequencer {location}: sequencing a batch got no answer within \
                         {} s",
                        SEQUENCE_TIMEOUT.as_secs()
                    ),
                )),
            }
        })?;
        match r {
            Ok(first) => Ok(first as u64),
            Err(e) => {
                // Whatever the state of the connection, start afresh with the next batch.
                self.client = None;
                Err(e)
            }
        }
    }

    /// Sequences `items`; returns the closing item's sender if the log was closed.
    fn process(
        &mut self,
        items: Vec<Item>,
    ) -> Option<tokio::sync::oneshot::Sender<Result<(), LogError>>> {
        let mut close = None;
        let mut entries = Vec::new();
        let mut acks = Vec::with_capacity(items.len());
        let mut n = 0u64;
        for it in items {
            match it {
                Item::One { entry, tx, .. } => {
                    push_bundle_entry(&mut entries, &entry);
                    acks.push(Ack::One(tx, n));
                    n += 1;
                }
                Item::Many { batch, tx } => {
                    let start = n;
                    for (e, _) in batch.iter() {
                        push_bundle_entry(&mut entries, e);
                        n += 1;
                    }
                    acks.push(Ack::Many(tx, start..n));
                }
                Item::Close { tx } => close = Some(tx),
            }
        }
        if n == 0 {
            return close;
        }
        match self.sequence(n, entries) {
            Ok(first) => {
                self.acked.fetch_max(first + n, Ordering::AcqRel);
                for a in acks {
                    match a {
                        Ack::One(tx, i) => Ack::One(tx, first + i).ok(),
                        Ack::Many(tx, r) => Ack::Many(tx, first + r.start..first + r.end).ok(),
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "fleet log: a batch could not be sequenced");
                let e = LogError::io(
                    format!(
                        "fleet log {}: sequencing a batch failed (nothing of it was \
                         acknowledged; later appends reconnect — check that PostgreSQL is up)",
                        self.location
                    ),
                    e,
                );
                for a in acks {
                    a.fail(e.clone());
                }
            }
        }
        close
    }
}
