//! The flusher: makes journal records durable and acknowledges their batches, on its own
//! thread, so that the writer integrates the next batch while the disk flushes the last one.
//!
//! The writer writes each batch's journal record (without waiting for the disk) and hands the
//! flusher the record's [`PendingSync`], the batch's acknowledgements and the tree size after
//! it. The flusher takes everything queued, runs only the newest sync (it covers every record
//! written before it: one `fdatasync` for many batches), then acknowledges those batches in
//! order and raises the acknowledged size. A failed sync fails its batches and every later one
//! until the writer, through [`Flusher::drain`], has seen the failure and withdrawn the records
//! in doubt.
//!
//! A small batch (at most [`INLINE_MAX_ENTRIES`] entries, the usual case for a gateway) handed
//! over while the thread has nothing in flight is synced on the writer's own thread instead:
//! handing it over would cost a thread wake-up and a context switch each way per commit, which on
//! a busy two-core machine cost more than the overlap gains (there is next to nothing to integrate
//! meanwhile). Appenders that arrive during that sync queue up without waking the writer, and
//! share the next commit.

use crate::error::LogError;
use crate::sequencer::PendingSync;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Batches of at most this many entries are synced on the writer's thread when the flusher has
/// nothing in flight (see the module documentation). Larger batches keep the pipeline: the
/// writer integrates the next one while the flusher syncs.
pub(crate) const INLINE_MAX_ENTRIES: u64 = 32;

/// An acknowledgement owed to a submitter once its batch is durable.
pub(crate) enum Ack {
    /// One entry, at this index.
    One(oneshot::Sender<Result<u64, LogError>>, u64),
    /// Many entries, at these indices.
    Many(oneshot::Sender<Result<Range<u64>, LogError>>, Range<u64>),
}

impl Ack {
    /// Answers with success.
    pub(crate) fn ok(self) {
        match self {
            Ack::One(tx, i) => {
                let _ = tx.send(Ok(i));
            }
            Ack::Many(tx, r) => {
                let _ = tx.send(Ok(r));
            }
        }
    }

    /// Answers with `e`.
    pub(crate) fn fail(self, e: LogError) {
        match self {
            Ack::One(tx, _) => {
                let _ = tx.send(Err(e));
            }
            Ack::Many(tx, _) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// Turns an I/O error into the error the submitters see; the arguments are the acknowledged
/// size and what failed ("syncing the journal").
pub(crate) type ErrorFor = Arc<dyn Fn(io::Error, u64, &'static str) -> LogError + Send + Sync>;

enum Message {
    Batch {
        sync: PendingSync,
        acks: Vec<Ack>,
        /// Tree size once this batch is durable.
        size: u64,
    },
    /// Answered once every message before it is handled, with the first failed sync since the
    /// last barrier (the record to withdraw from, and the error); the failure is then cleared.
    Barrier(mpsc::SyncSender<Option<(u64, LogError)>>),
}

/// The writer's handle on the flusher thread.
pub(crate) struct Flusher {
    tx: mpsc::Sender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the thread when a sync fails (cleared by `drain`).
    failed: Arc<AtomicBool>,
    /// The acknowledged size and the error builder, shared with the thread.
    size: Arc<AtomicU64>,
    error_for: ErrorFor,
    /// A failed sync run on the writer's thread (see [`Flusher::submit`]).
    failure: Option<(u64, LogError)>,
    /// Batches sent to the thread and not yet answered (lowered by the thread once it has
    /// answered them).
    outstanding: Arc<AtomicUsize>,
}

impl Flusher {
    /// Starts the thread. `size` is the acknowledged size it raises; `error_for` builds the
    /// error for a failed sync.
    pub(crate) fn start(size: Arc<AtomicU64>, error_for: ErrorFor) -> io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Message>();
        let failed = Arc::new(AtomicBool::new(false));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (flag, acked, errors) = (failed.clone(), size.clone(), error_for.clone());
        let pending = outstanding.clone();
        let thread = std::thread::Builder::new()
            .name("parapet-log-flusher".into())
            .spawn(move || run(rx, &acked, &flag, &errors, &pending))?;
        Ok(Flusher {
            tx,
            thread: Some(thread),
            failed,
            size,
            error_for,
            failure: None,
            outstanding,
        })
    }

    /// Hands over a batch of `entries` entries whose journal record is written: `acks` are
    /// answered once `sync` (or a later one) has made it durable, and the acknowledged size is
    /// then raised to `size`. A small journal batch while nothing is in flight is synced and
    /// answered here, before this returns (see the module documentation).
    pub(crate) fn submit(&mut self, sync: PendingSync, acks: Vec<Ack>, size: u64, entries: u64) {
        // The thread sets `failed` before it answers, so once nothing is outstanding a failure
        // of its is visible here; a batch after one goes to the thread, which fails it unsynced.
        let inline = entries <= INLINE_MAX_ENTRIES
            && !sync.is_standalone()
            && self.outstanding.load(Ordering::Acquire) == 0
            && !self.has_failed();
        if inline {
            self.flush_here(sync, acks, size);
            return;
        }
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let msg = Message::Batch { sync, acks, size };
        // The thread is gone (it cannot panic short of a bug): sync here, the same way.
        if let Err(mpsc::SendError(msg)) = self.tx.send(msg) {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            if let Message::Batch { sync, acks, size } = msg {
                self.flush_here(sync, acks, size);
            }
        }
    }

    /// Syncs and answers one batch on the caller's thread, exactly as the thread would.
    fn flush_here(&mut self, sync: PendingSync, acks: Vec<Ack>, size: u64) {
        let mut batch = vec![(sync, acks, size)];
        flush(
            &mut batch,
            &mut self.failure,
            &self.size,
            &self.failed,
            &self.error_for,
        );
    }

    /// Whether a sync has failed since the last [`Flusher::drain`].
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Waits until every batch handed over is durable and acknowledged, or failed. Returns the
    /// first failure since the last drain: the journal mark to withdraw from, and the error.
    pub(crate) fn drain(&mut self) -> Option<(u64, LogError)> {
        // Nothing outstanding: the thread has answered everything (a failure among it would
        // have set `failed` first).
        if self.outstanding.load(Ordering::Acquire) == 0 && !self.has_failed() {
            return None;
        }
        let (reply_tx, reply) = mpsc::sync_channel(1);
        let sent = self.tx.send(Message::Barrier(reply_tx)).is_ok();
        let failure = if sent {
            reply.recv().ok().flatten()
        } else {
            None
        }
        .or_else(|| self.failure.take());
        self.failed.store(false, Ordering::Release);
        failure
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued and stop.
        drop(std::mem::replace(&mut self.tx, mpsc::channel().0));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: mpsc::Receiver<Message>,
    size: &AtomicU64,
    failed: &AtomicBool,
    error_for: &ErrorFor,
    outstanding: &AtomicUsize,
) {
    // The first failed sync since the last barrier: its record's mark and the error.
    let mut failure: Option<(u64, LogError)> = None;
    let mut batches: Vec<(PendingSync, Vec<Ack>, u64)> = Vec::new();
    // Flushes what is gathered, then tells the writer those batches are answered.
    let flush_all = |batches: &mut Vec<_>, failure: &mut Option<_>| {
        let n = batches.len();
        flush(batches, failure, size, failed, error_for);
        outstanding.fetch_sub(n, Ordering::AcqRel);
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            match msg {
                Message::Batch { sync, acks, size } => batches.push((sync, acks, size)),
                Message::Barrier(reply) => {
                    flush_all(&mut batches, &mut failure);
                    let _ = reply.send(failure.take());
                }
            }
        }
        flush_all(&mut batches, &mut failure);
    }
}

/// Makes `batches` durable with one journal sync (the newest: it covers the others) plus any
/// standalone ones, and answers them.
fn flush(
    batches: &mut Vec<(PendingSync, Vec<Ack>, u64)>,
    failure: &mut Option<(u64, LogError)>,
    size: &AtomicU64,
    failed: &AtomicBool,
    error_for: &ErrorFor,
) {
    let Some(first_mark) = batches.first().map(|(s, ..)| s.mark()) else {
        return;
    };
    let mut syncs = Vec::with_capacity(batches.len());
    let mut answers = Vec::with_capacity(batches.len());
    for (sync, acks, end) in batches.drain(..) {
        syncs.push(sync);
        answers.push((acks, end));
    }
    // The newest journal sync covers the older ones; a standalone sync (files other than the
    // journal) is covered by none, so each runs, in order, before the newest.
    let newest = syncs.pop();
    let mut order: Vec<PendingSync> = syncs.into_iter().filter(|s| s.is_standalone()).collect();
    order.extend(newest);
    // After a failure, later records are withdrawn with it: fail them without syncing.
    let result = match &failure {
        Some((_, e)) => Err(e.clone()),
        None => order.into_iter().try_for_each(|sync| {
            let what = if sync.is_standalone() {
                "syncing tiles and the checkpoint"
            } else {
                "syncing the journal"
            };
            sync.run()
                .map_err(|e| error_for(e, size.load(Ordering::Acquire), what))
        }),
    };
    match result {
        Ok(()) => {
            if let Some(end) = answers.last().map(|(_, end)| *end) {
                size.store(end, Ordering::Release);
            }
            for (acks, _) in answers {
                acks.into_iter().for_each(Ack::ok);
            }
        }
        Err(e) => {
            if failure.is_none() {
                tracing::error!(error = %e, "a log sync failed");
                *failure = Some((first_mark, e.clone()));
                failed.store(true, Ordering::Release);
            }
            for (acks, _) in answers {
                for a in acks {
                    a.fail(e.clone());
                }
            }
        }
    }
}
