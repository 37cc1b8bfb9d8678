//! The queue: submission and batching (group commit), the first of the log's four roles
//! (queue → sequencer → integrator → storage driver; see `docs/log.md`, "Architecture").
//!
//! `submit` pushes an entry (with its leaf hash, computed on the caller's thread) under a short
//! lock and returns at once; queue order is index order. The writer thread takes what is queued
//! as one batch with [`Queue::next_batch`], waiting briefly for appenders to rejoin (group
//! commit). The queue knows nothing of durability or storage: it is the same for every backend.

use crate::error::LogError;
use crate::hash::Hash;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest a writer waits for more entries to join a batch (it also waits no longer than the
/// previous batch took: waiting longer than a commit costs more latency than it saves).
const GATHER: Duration = Duration::from_millis(1);

/// Longest a lazily submitted entry ([`crate::Log::submit_lazy`]) waits for an ordinary
/// submission to start a commit before the writer commits it on its own.
pub const LAZY_COMMIT_DELAY: Duration = Duration::from_millis(20);

/// Most entries integrated in one batch (bounds the work and the garbage after a crash).
pub const MAX_BATCH_ENTRIES: usize = 1 << 16;

/// The queue role: what submitters and the writer thread need of it. An implementation must
/// keep submission order (it is index order), never lose an accepted item, and hand each item
/// out exactly once.
pub(crate) trait Queue: Send + Sync + 'static {
    /// Queues `item` unless the log is closed (then gives it back).
    fn push(&self, item: Item) -> Result<(), Item>;
    /// Queues the closing item: later pushes are refused. `false` if already closed.
    fn close(&self, item: Item) -> bool;
    /// Asks the writer to finish what is queued and stop (the last handle was dropped).
    fn shut_down(&self);
    /// Blocks until there is a batch to commit (or background work is due, at `idle()`), and
    /// takes it; [`Next::Stop`] once shut down and empty.
    fn next_batch(&self, gather: &mut Gather, idle: impl Fn() -> Option<Instant>) -> Next;
}

/// What [`Queue::next_batch`] hands the writer.
pub(crate) enum Next {
    /// A batch to commit, in index order (possibly empty), and whether the idle deadline passed.
    Batch { items: Vec<Item>, idle_due: bool },
    /// Shut down with nothing queued: the writer finishes.
    Stop,
}

/// The writer's group-commit memory: how big and how long the last batch was.
pub(crate) struct Gather {
    last_batch: usize,
    last_commit: Duration,
}

impl Gather {
    pub(crate) fn new() -> Gather {
        Gather {
            last_batch: 0,
            last_commit: GATHER,
        }
    }

    /// Records how long committing the last batch took.
    pub(crate) fn committed_in(&mut self, took: Duration) {
        self.last_commit = took;
    }
}

/// Entries of a bulk submission with their leaf hashes.
#[derive(Debug, Default)]
pub(crate) struct BatchData {
    pub(crate) data: Vec<u8>,
    pub(crate) ends: Vec<usize>,
    pub(crate) leaves: Vec<Hash>,
}

impl BatchData {
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Hash)> + '_ {
        let mut start = 0;
        self.ends.iter().zip(&self.leaves).map(move |(&end, h)| {
            let e = &self.data[start..end];
            start = end;
            (e, h)
        })
    }
}

/// A queued submission.
pub(crate) enum Item {
    One {
        entry: Vec<u8>,
        leaf: Hash,
        tx: oneshot::Sender<Result<u64, LogError>>,
        /// Does not start a commit by itself (see [`crate::Log::submit_lazy`]).
        lazy: bool,
    },
    Many {
        batch: BatchData,
        tx: oneshot::Sender<Result<Range<u64>, LogError>>,
    },
    Close {
        tx: oneshot::Sender<Result<(), LogError>>,
    },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::One { .. } => 1,
            Item::Many { batch, .. } => batch.ends.len(),
            Item::Close { .. } => 0,
        }
    }

    /// Whether this item asks for a commit as soon as possible.
    fn urgent(&self) -> bool {
        !matches!(self, Item::One { lazy: true, .. })
    }

    /// Answers the item with `e`; true if it was the closing item.
    pub(crate) fn fail(self, e: LogError) -> bool {
        match self {
            Item::One { tx, .. } => {
                let _ = tx.send(Err(e));
                false
            }
            Item::Many { tx, .. } => {
                let _ = tx.send(Err(e));
                false
            }
            Item::Close { tx } => {
                let _ = tx.send(Err(e));
                true
            }
        }
    }
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    /// Entries in `items`.
    entries: usize,
    closed: bool,
    shutdown: bool,
    writer_waiting: bool,
    /// Items in `items` that ask for a prompt commit (all but lazy entries).
    urgent: usize,
    /// When the oldest lazy entry still queued was queued.
    lazy_since: Option<Instant>,
    /// The sleeping writer wants to be woken once `entries` reaches this.
    wake_at: usize,
}

/// The in-process queue: a deque under a mutex, and a condition variable the writer sleeps on.
#[derive(Default)]
pub(crate) struct LocalQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

impl Queue for LocalQueue {
    fn push(&self, item: Item) -> Result<(), Item> {
        let mut q = self.state.lock();
        if q.closed {
            return Err(item);
        }
        let urgent = item.urgent();
        q.entries += item.len();
        q.items.push_back(item);
        let mut first_lazy = false;
        if urgent {
            q.urgent += 1;
        } else if q.lazy_since.is_none() {
            q.lazy_since = Some(Instant::now());
            first_lazy = true;
        }
        // A lazy entry wakes the writer only to start its LAZY_COMMIT_DELAY clock (the first one
        // queued); the commit itself waits for the next urgent item or for the delay.
        let wake =
            q.writer_waiting && (first_lazy || (urgent && (q.entries >= q.wake_at || q.closed)));
        if wake {
            q.writer_waiting = false;
        }
        // Woken after the lock is released: the writer's first step is to take it, and other
        // appenders would otherwise spin on it meanwhile.
        drop(q);
        if wake {
            self.cv.notify_one();
        }
        Ok(())
    }

    fn close(&self, item: Item) -> bool {
        let mut q = self.state.lock();
        if q.closed {
            return false;
        }
        q.items.push_back(item);
        q.urgent += 1;
        q.closed = true;
        q.wake_at = 0;
        q.writer_waiting = false;
        self.cv.notify_one();
        true
    }

    fn shut_down(&self) {
        let mut q = self.state.lock();
        q.shutdown = true;
        self.cv.notify_one();
    }

    fn next_batch(&self, gather: &mut Gather, idle: impl Fn() -> Option<Instant>) -> Next {
        let mut items = Vec::new();
        let mut idle_due = false;
        let mut q = self.state.lock();
        // Sleep until an item asks for a commit, the oldest lazy entry has waited
        // LAZY_COMMIT_DELAY, a publication or full sync is due, or the log is shutting down.
        loop {
            if q.items.is_empty() {
                if q.shutdown {
                    return Next::Stop;
                }
            } else if q.urgent > 0 || q.shutdown || q.closed {
                break;
            }
            q.writer_waiting = true;
            q.wake_at = 1;
            let lazy_deadline = q.lazy_since.map(|since| since + LAZY_COMMIT_DELAY);
            let deadline = [lazy_deadline, idle()].into_iter().flatten().min();
            match deadline {
                Some(deadline) => {
                    if self.cv.wait_until(&mut q, deadline).timed_out() {
                        let now = Instant::now();
                        idle_due = idle().is_some_and(|d| d <= now);
                        if idle_due && q.urgent == 0 && !q.closed && !q.shutdown {
                            // Idle with unpublished or unsynced batches: do that now.
                            q.writer_waiting = false;
                            break;
                        }
                        if lazy_deadline.is_some_and(|d| d <= now) {
                            break;
                        }
                    }
                }
                None => self.cv.wait(&mut q),
            }
        }
        q.writer_waiting = false;
        // Group commit: appenders acknowledged by the previous batch are likely about to submit
        // again; give them a moment (at most GATHER, and no longer than the last batch took) to
        // join this batch.
        let target = gather.last_batch.min(MAX_BATCH_ENTRIES);
        if q.entries < target && !q.closed && !q.shutdown {
            let deadline = Instant::now() + GATHER.min(gather.last_commit);
            while q.entries < target && !q.closed && !q.shutdown {
                q.writer_waiting = true;
                q.wake_at = target;
                if self.cv.wait_until(&mut q, deadline).timed_out() {
                    break;
                }
            }
            q.writer_waiting = false;
        }
        let mut n = 0usize;
        while let Some(front) = q.items.front() {
            if n > 0 && n + front.len() > MAX_BATCH_ENTRIES {
                break;
            }
            n += front.len();
            if let Some(it) = q.items.pop_front() {
                if it.urgent() {
                    q.urgent -= 1;
                }
                items.push(it);
            }
        }
        q.entries -= n;
        // Lazy entries left behind (a batch cut at MAX_BATCH_ENTRIES) restart their clock.
        q.lazy_since = q.items.iter().any(|it| !it.urgent()).then(Instant::now);
        gather.last_batch = n;
        Next::Batch { items, idle_due }
    }
}
