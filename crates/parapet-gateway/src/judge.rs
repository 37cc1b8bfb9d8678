//! Where statements are judged: small texts and texts whose decision is cached inline on the
//! session's tokio task (no thread hop on the common path), everything else on a bounded pool
//! of dedicated threads, so a session sending a multi-megabyte text cannot hold the async
//! workers, and with them every other session.
//!
//! Depth is not what decides the thread: the guard analyses a deep statement on a stack grown
//! to fit on any thread (see `parapet_guard::analyze::limits`). The threshold is about time: a
//! text of [`INLINE_MAX`] bytes is analysed in well under a millisecond.

use parapet_guard::{Decision, Guard, Mode, RequestContext, RuleHit, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Largest text judged inline when its decision is not cached, in bytes.
pub const INLINE_MAX: usize = 8 * 1024;

/// Texts at least this long leave garbage worth returning to the OS after their analysis.
const TRIM_AFTER: usize = 1 << 20;

/// Jobs queued or running per pool thread before submitters wait for a slot.
const QUEUE_PER_THREAD: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of judging threads fed through a queue bounded by a semaphore.
struct Pool {
    tx: Mutex<mpsc::Sender<Job>>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Set after a large analysis: an idle pool thread then returns freed memory to the OS.
static TRIM: AtomicBool = AtomicBool::new(false);

/// The process's judging pool: one thread per available core.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("parapet-judge-{i}"))
                // Deeper statements grow their own stack (see the module documentation).
                .stack_size(8 << 20)
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::error!("cannot start judging thread: {e}; judging inline instead");
            }
        }
        Pool {
            tx: Mutex::new(tx),
            slots: Arc::new(tokio::sync::Semaphore::new(threads * QUEUE_PER_THREAD)),
        }
    })
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv_timeout(Duration::from_millis(500)),
            Err(_) => return,
        };
        match next {
            Ok(job) => job(),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if TRIM.swap(false, Ordering::Relaxed) {
                    parapet_guard::release_memory();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Judges `sql` for `ctx`: inline when small or cached, else on the pool (waiting, without
/// blocking the task's thread, for a queue slot and then for the decision).
pub(crate) async fn decide(guard: &Arc<Guard>, sql: &str, ctx: &RequestContext) -> Decision {
    if sql.len() <= INLINE_MAX {
        return guard.decide(sql, ctx);
    }
    if let Some(d) = guard.cached_decision(sql, ctx) {
        return d;
    }
    let pool = pool();
    let Ok(permit) = pool.slots.clone().acquire_owned().await else {
        return guard.decide(sql, ctx);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = {
        let guard = guard.clone();
        let sql = sql.to_owned();
        let ctx = ctx.clone();
        Box::new(move || {
            let d = guard.decide(&sql, &ctx);
            if sql.len() >= TRIM_AFTER {
                TRIM.store(true, Ordering::Relaxed);
            }
            drop(sql);
            let _ = tx.send(d);
            drop(permit);
        })
    };
    let sent = pool.tx.lock().map(|t| t.send(job).is_ok()).unwrap_or(false);
    if !sent {
        return guard.decide(sql, ctx);
    }
    match rx.await {
        Ok(d) => d,
        Err(_) => failed(guard),
    }
}

/// The refusal when a judging thread died on a statement (fail closed).
fn failed(guard: &Guard) -> Decision {
    let reason = "the statement analyser failed on this text, so it is denied";
    Decision {
        verdict: Verdict::Deny,
        rules: vec![RuleHit {
            id: "parapet.unanalysable".into(),
            mode: Mode::Enforce,
            reason: reason.into(),
        }],
        reason: reason.into(),
        policy_hash: guard.policy_hash(),
        normalized: None,
        fingerprint: None,
        statements: Vec::new(),
        limits: Vec::new(),
    }
}
