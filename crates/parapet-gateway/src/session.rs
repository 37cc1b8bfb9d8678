//! The proxy loop of an authenticated session: simple query, extended query (Parse/Bind/Execute/
//! Describe/Close/Sync/Flush, pipelined), COPY and everything else, in both directions.
//!
//! Two halves run concurrently on one task:
//! - the **frontend** half reads client messages, judges every Query and Parse with the guard,
//!   writes the decision to the log (waiting for it to be durable in `before_forward` mode) and
//!   forwards — or, for a refused statement, sends upstream something that fails the same way on
//!   the server, so client and server agree on the transaction state. It works per read: first
//!   every statement the read holds is judged and its decision submitted, then the decisions are
//!   waited for together (a pipelining client pays one log commit per write, not one per
//!   statement), then everything is forwarded in order with one write;
//! - the **backend** half relays server messages in large chunks, looks only at message headers,
//!   tracks ReadyForQuery / CommandComplete / ErrorResponse for outcome events (appended after
//!   the reply is written), rewrites the server's error for a refused statement into the gateway's
//!   own, and in `before_reply` mode holds reply bytes until the decisions they answer are durable.
//!
//! The halves talk through an ordered channel of [`Expect`]ations: each is sent before the
//! message it describes is forwarded, so it is always there when the server's answer arrives.
//! Every client message the server answers has one, so the backend half follows the server's
//! own state exactly: which prepared statement and portal each name denotes (the unnamed ones
//! included), which Syncs the server ignores inside COPY, and which error answers what.
//!
//! A refused statement reaches the server as text that fails in its grammar (a lone identifier
//! holding a fresh random nonce): nothing a client creates, replaces or sets changes how the
//! parser treats it, and the nonce tells its error apart from every other.

use crate::catalog::CatalogSlot;
use crate::config::Durability;
use crate::error::SessionError;
use crate::events::{
    rfc3339_micros, submit_decision, to_bytes, DecisionEvent, OutcomeEvent, SessionInfo,
};
use crate::messages::FrontendMessage;
use crate::params::{BoundParams, PortalParams};
use crate::protocol::{backend, cstr, frame, frontend, tag_rows};
use crate::shared::Shared;
use crate::upstream::Upstream;
use bytes::{Buf, BytesMut};
use parapet_guard::catalog::{Catalog, LOAD_QUERY};
use parapet_guard::{Decision, Mode, RequestContext, RowLimit, RuleHit, Verdict};
use parapet_log::AppendTicket;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{tcp, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

/// What the server is sent instead of a refused statement, and the nonce its error will name: a
/// lone identifier, which PostgreSQL's grammar rejects (SQLSTATE 42601) whatever the session has
/// created or set. As a simple Query it fails, aborting an open transaction block as the refused
/// statement's error would. As a Parse under the refused Parse's name it fails the same way, and
/// first drops the unnamed statement when it is the unnamed one, as the refused Parse would have;
/// the server then skips to Sync. The nonce is new each time and never shown to the client.
fn refusal_text() -> (String, String) {
    let nonce = format!("{:032x}", rand::random::<u128>());
    (format!("parapet_refused_{nonce}"), nonce)
}

/// Rule id of a statement refused because it came after one that may change how the server
/// reads statements, before the server could report the change (see [`Barrier::UntilSync`]).
pub(crate) const RULE_SETTING_PENDING: &str = "parapet.setting-pending";
/// Its reason.
const RULE_SETTING_PENDING_REASON: &str = "an earlier statement in this pipeline may change how statements are read (client_encoding, standard_conforming_strings) or what their functions are (the catalog), which the gateway learns only after a Sync; send Sync after it before sending more statements";

/// The longest a session waits for another to read the catalog again after its DDL.
const REREAD_WAIT: Duration = Duration::from_secs(5);

/// Flush to the client at least this often while relaying a large result.
const RELAY_CHUNK: usize = 256 * 1024;

/// The audit entry a statement was let through by: known at once in `before_forward` mode, filled
/// by the backend half once the ticket resolves in `before_reply` mode.
#[derive(Debug, Clone)]
enum DecisionRef {
    Index(u64),
    Pending(Arc<OnceLock<u64>>),
}

impl DecisionRef {
    fn index(&self) -> Option<u64> {
        match self {
            DecisionRef::Index(i) => Some(*i),
            DecisionRef::Pending(s) => s.get().copied(),
        }
    }
}

/// What the server will answer next, in order: one per client message that gets an answer.
#[derive(Debug)]
enum Expect {
    /// A forwarded simple Query; ends at ReadyForQuery. `copies`: the COPY FROM STDIN instances
    /// its statements may start, in order.
    Query {
        decision: Option<DecisionRef>,
        started: Instant,
        copies: Range<u64>,
        /// Row limits on its statements: the backend half watches its reply ([`Watch`]).
        limit: Option<LimitRun>,
    },
    /// A refused simple Query (or FunctionCall); the first ErrorResponse before ReadyForQuery is replaced.
    DenySimple { error: Vec<u8>, replaced: bool },
    /// A forwarded Parse; ends at ParseComplete or ErrorResponse. `types`: its declared
    /// parameter types (when bound values are recorded).
    Parse {
        name: String,
        decision: Option<DecisionRef>,
        types: Arc<[u32]>,
    },
    /// A refused Parse, sent as a failing Parse of the same name: the server's error naming
    /// `nonce` is replaced by `error`.
    DenyParse {
        name: String,
        error: Vec<u8>,
        nonce: String,
    },
    /// A Bind; ends at BindComplete or ErrorResponse. `params`: its values, when recorded.
    Bind {
        portal: String,
        stmt: String,
        params: Option<Arc<BoundParams>>,
    },
    /// A Describe; ends at RowDescription, NoData or ErrorResponse. `statement`: the statement
    /// described, when bound values are recorded (its ParameterDescription gives their types).
    Describe { statement: Option<String> },
    /// A Close; ends at CloseComplete or ErrorResponse.
    Close { statement: bool, name: String },
    /// A forwarded Execute; ends at CommandComplete, EmptyQueryResponse, PortalSuspended or
    /// ErrorResponse. `copies` as for `Query` (at most one instance).
    Exec {
        portal: String,
        started: Instant,
        copies: Range<u64>,
        /// The row limit of its statement: the backend half watches its reply ([`Watch`]).
        limit: Option<LimitRun>,
    },
    /// A Sync; ends at ReadyForQuery.
    Sync,
    /// `before_reply`: a decision being made durable; reply bytes wait for it.
    Ticket(AppendTicket, Arc<OnceLock<u64>>),
    /// The gateway's own query of the catalog ([`crate::catalog`]); ends at ReadyForQuery.
    /// Its reply goes to the frontend half, not to the client.
    Catalog(tokio::sync::oneshot::Sender<crate::upstream::Reply>),
}

/// A statement forwarded under row limits (`@max_rows`), for the backend half to watch.
#[derive(Debug)]
struct LimitRun {
    /// The limits, by statement of the message (an Execute's statement is statement 0).
    limits: Arc<[RowLimit]>,
    /// The decision that let it through (for the error's DETAIL).
    decision: Option<DecisionRef>,
    /// Told how it went: at ReadyForQuery (a simple Query; the ReadyForQuery is withheld for
    /// the frontend half, which ends the transaction it opened) or at the Execute's answer.
    report: tokio::sync::oneshot::Sender<LimitReport>,
}

/// How a statement under row limits went.
#[derive(Debug)]
struct LimitReport {
    /// The limit was exceeded: the gateway's ErrorResponse, already sent for a simple Query;
    /// the frontend half has the server raise an error in its place for an Execute.
    over: Option<Vec<u8>>,
    /// The status of the simple Query's (withheld) ReadyForQuery.
    status: u8,
}

/// The backend half's watch over the reply to a statement under row limits: rows of a limited
/// write are held until its command tag says how many rows it changed (RETURNING rows never
/// reach the client before the count is known); rows of a limited read are passed on up to the
/// limit. Past a limit, the rest of the reply is dropped.
#[derive(Debug)]
struct Watch {
    run: LimitRun,
    /// The statement of the message being answered (counted by CommandComplete).
    stmt: usize,
    /// Rows seen for it.
    rows: u64,
    /// Held DataRows.
    held: BytesMut,
    /// The limit was exceeded: the gateway's error.
    over: Option<Vec<u8>>,
}

impl Watch {
    fn limit(&self) -> Option<&RowLimit> {
        self.run.limits.iter().find(|l| l.statement == self.stmt)
    }
}

/// Most bytes of RETURNING rows the reply to a limited write may hold until its command tag
/// gives the count: past it the write is refused (fail closed), so one statement cannot make
/// the gateway hold an unbounded result. Rows past the limit itself are never held (the tag
/// will refuse the write anyway).
pub const HELD_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Why a statement under a row limit is refused.
#[derive(Debug, Clone, Copy)]
enum Over {
    /// This many rows (a write's count, or the read's row past the limit).
    Rows(u64),
    /// A write's RETURNING rows, held until the count is known, passed [`HELD_MAX_BYTES`].
    HeldBytes,
}

/// The gateway's error for a statement past its row limit (SQLSTATE 42501), naming the rule,
/// the count and the audit entry of its decision.
fn over_limit(l: &RowLimit, over: Over, index: Option<u64>) -> (Vec<u8>, String) {
    let message = match over {
        Over::HeldBytes => format!(
            "parapet: blocked by {}: the rows this limited write returns exceed {} MiB, more than the gateway holds until their count is known; nothing was changed",
            l.rule,
            HELD_MAX_BYTES / (1024 * 1024)
        ),
        Over::Rows(rows) if l.write => format!(
            "parapet: blocked by {}: {rows} rows affected, limit {}; nothing was changed",
            l.rule, l.max_rows
        ),
        Over::Rows(_) => format!(
            "parapet: blocked by {}: more than {} rows returned, limit {}; the result was stopped",
            l.rule, l.max_rows, l.max_rows
        ),
    };
    let detail = index.map(|i| format!("parapet audit entry {i}"));
    let mut out = BytesMut::new();
    backend::error("42501", &message, detail.as_deref(), false, &mut out);
    (out.to_vec(), message)
}

impl Expect {
    /// The COPY instances this expectation may start (empty for most).
    fn copies(&self) -> Range<u64> {
        match self {
            Expect::Query { copies, .. } | Expect::Exec { copies, .. } => copies.clone(),
            _ => 0..0,
        }
    }
}

/// What the backend half has seen of COPY FROM STDIN, for the frontend half: which instances
/// the server entered copy-in mode for (CopyInResponse), and below which instance every one has
/// ended. PostgreSQL ignores Sync and Flush in copy-in mode, so the frontend may only forward
/// one sent during a possible COPY once it knows whether that COPY started.
#[derive(Debug, Default)]
struct CopyTrack {
    state: Mutex<CopyState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct CopyState {
    /// Instances whose CopyInResponse was seen (pruned by the frontend as its window moves on).
    started: HashSet<u64>,
    /// Every instance below this has ended (its statement was answered or skipped).
    done_below: u64,
}

impl CopyTrack {
    fn start(&self, instance: u64) {
        self.state.lock().started.insert(instance);
        self.changed.notify_one();
    }

    fn finish(&self, copies: &Range<u64>) {
        if copies.is_empty() {
            return;
        }
        let mut s = self.state.lock();
        s.done_below = s.done_below.max(copies.end);
        drop(s);
        self.changed.notify_one();
    }

    /// Waits until it is known whether the server entered copy-in mode for `instance`.
    async fn started(&self, instance: u64) -> bool {
        loop {
            let wake = self.changed.notified();
            {
                let mut s = self.state.lock();
                if s.started.contains(&instance) {
                    s.started.retain(|&i| i >= instance);
                    return true;
                }
                if s.done_below > instance {
                    s.started.retain(|&i| i > instance);
                    return false;
                }
            }
            wake.await;
        }
    }
}

/// The frontend's view of a COPY FROM STDIN the server may be in: from a forwarded statement
/// that can start one until the client ends it (CopyDone, CopyFail) or sends anything else.
#[derive(Debug, Clone)]
struct CopyWindow {
    /// The instance the client's copy messages now go to.
    instance: u64,
    /// One past the statement's last instance (a simple Query may run several COPYs).
    end: u64,
}

/// How far the backend half has got: how many expectations (tickets aside) have been answered
/// or skipped. The frontend counts the ones it sent, so it can wait for the answer to one
/// (a barrier, see [`Barrier`]) and knows when nothing it asked for is outstanding (idle timeout).
#[derive(Debug, Default)]
struct Progress {
    answered: AtomicU64,
    changed: Notify,
    /// The number of the expectation (counted from 1) whose ReadyForQuery ends a statement
    /// that may change the catalog (0: none): when it comes with the session out of any
    /// transaction, the backend half marks the target's catalog as being read again
    /// ([`CatalogSlot::begin_reread`]) before the client sees the answer, and sets `owed`.
    catalog_at: AtomicU64,
    /// The frontend half owes [`CatalogSlot::end_reread`].
    owed: std::sync::atomic::AtomicBool,
    /// The transaction status of the server's last ReadyForQuery (`I`, `T` or `E`; `I` before
    /// the first, as a new session is idle).
    status: AtomicU8,
}

impl Progress {
    fn advance(&self) {
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// Waits until `n` expectations have been answered.
    async fn reach(&self, n: u64) {
        loop {
            let wake = self.changed.notified();
            if self.answered() >= n {
                return;
            }
            wake.await;
        }
    }
}

/// A statement that may change how the server reads what follows it (`client_encoding`,
/// `standard_conforming_strings`; see [`crate::reading`]) was forwarded: nothing after it may be
/// judged until the server has run it and reported the settings in force, which it does just
/// before ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barrier {
    None,
    /// An Execute of such a statement was forwarded and the client has not sent Sync yet: the
    /// server will not report until then, so a statement before the Sync is refused.
    UntilSync,
    /// Once this many expectations are answered (up to the Query or Sync that ends at the
    /// report), judging goes on.
    Answered(u64),
}

/// A client connection that can be split into independently usable read and write halves.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The read half.
    type Read: AsyncRead + Unpin + Send;
    /// The write half.
    type Write: AsyncWrite + Unpin + Send;
    /// Splits the connection.
    fn halves(self) -> (Self::Read, Self::Write);
}

/// Plain TCP splits for free: each half holds the socket, with no lock between them.
impl ClientStream for TcpStream {
    type Read = tcp::OwnedReadHalf;
    type Write = tcp::OwnedWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// A TLS session has one state for both directions, so its halves share it behind a lock.
impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;
    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Runs the session until the client terminates, either side closes, or the gateway shuts down.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    info: &SessionInfo,
    client: S,
    upstream: Upstream,
    (catalog_slot, (catalog, catalog_version)): (Arc<CatalogSlot>, (Arc<Catalog>, u64)),
    (stats, mut kill, cancel_key): (
        Arc<crate::control::SessionStats>,
        watch::Receiver<Option<String>>,
        (i32, i32),
    ),
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError>
where
    S: ClientStream,
{
    let (mut client_r, mut client_w) = client.halves();
    let Upstream {
        stream, leftover, ..
    } = upstream;
    let (mut up_r, mut up_w) = crate::upstream::into_split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let (notices, notices_rx) = mpsc::unbounded_channel();
    let copy = Arc::new(CopyTrack::default());
    let progress = Arc::new(Progress {
        status: AtomicU8::new(b'I'),
        ..Progress::default()
    });
    let mut ctx = info.request_context();
    ctx.catalog = Some(catalog);
    let mut front = Frontend {
        shared: &shared,
        info,
        ctx,
        tx,
        copy_stmts: HashSet::new(),
        copy_portals: HashSet::new(),
        discard: false,
        window: None,
        next_copy: 0,
        copy: copy.clone(),
        progress: progress.clone(),
        sent: AtomicU64::new(0),
        barrier_stmts: HashMap::new(),
        barrier_portals: HashMap::new(),
        barrier: Barrier::None,
        catalog_slot,
        catalog_version,
        stats,
        private_catalog: false,
        reload_catalog: false,
        record_params: shared.config.statement_text == crate::config::StatementText::Full,
        reason: Mutex::new(None),
        notices,
        ext_open: false,
        limited_stmts: HashMap::new(),
        limited_portals: HashMap::new(),
    };
    let mut back = Backend {
        shared: &shared,
        info,
        rx,
        queue: VecDeque::new(),
        tickets: Vec::new(),
        outcomes: Vec::new(),
        tag: None,
        rows: None,
        sqlstate: None,
        error: None,
        stmts: HashMap::new(),
        portals: HashMap::new(),
        copies_seen: 0,
        copies_started: Vec::new(),
        skipping: false,
        copy,
        progress,
        catalog_reply: None,
        catalog_slot: front.catalog_slot.clone(),
        notices: notices_rx,
        watch: None,
        cancel_key,
    };
    let res = tokio::select! {
        r = front.run(&mut client_r, &mut up_w) => r,
        r = back.run(leftover, &mut up_r, &mut client_w) => r,
        _ = shutdown.changed() => Err(SessionError::Shutdown),
        _ = kill.changed() => Err(SessionError::Terminated(
            kill.borrow().clone().unwrap_or_else(|| "parapet: terminating connection".into()),
        )),
    };
    // Whichever half ended the session, no outcome already seen is left out of the log.
    back.submit_outcomes();
    // Other sessions never wait for a catalog this one will not read.
    front.settle_reread();
    let fatal = match &res {
        Ok(()) => None,
        // As PostgreSQL: the COPY fails, then the connection, which can no longer be followed.
        Err(SessionError::CopyViolation(tag)) => {
            let mut out = BytesMut::new();
            let m = format!("unexpected message type 0x{tag:02X} during COPY from stdin");
            backend::error("08P01", &m, None, false, &mut out);
            let _ = client_w.write_all(&out).await;
            Some(("08P01", "terminating connection because protocol synchronization was lost".to_string()))
        }
        Err(SessionError::Protocol(m)) => Some(("08P01", format!("protocol violation: {m}"))),
        Err(SessionError::Shutdown) => Some(("57P01", "parapet: the gateway is shutting down".to_string())),
        Err(SessionError::Log(m)) => Some((
            "58030",
            format!("parapet: the audit log cannot be written ({m}); the statement's result is withheld and the session is closed"),
        )),
        Err(SessionError::Upstream(m)) => Some(("08006", format!("parapet: lost the database connection: {m}"))),
        Err(SessionError::Unreadable(m)) => Some(("0A000", m.clone())),
        Err(SessionError::Terminated(m)) => Some(("57P01", m.clone())),
        Err(SessionError::Idle) => Some(("57P05", "parapet: terminating connection due to idle timeout ([listen] idle_timeout_seconds)".to_string())),
        Err(SessionError::Io(_)) | Err(SessionError::AuthTimeout) => None,
    };
    if let Some((code, msg)) = fatal {
        let mut out = BytesMut::new();
        backend::error(code, &msg, None, true, &mut out);
        let _ = client_w.write_all(&out).await;
        let _ = client_w.flush().await;
    }
    let _ = client_w.shutdown().await;
    match res {
        Err(SessionError::Shutdown)
        | Err(SessionError::Idle)
        | Err(SessionError::Terminated(_)) => Ok(()),
        other => other,
    }
}

/// Client → server half.
struct Frontend<'a> {
    /// Extended-protocol messages were sent since the last Sync or Query (the server has not
    /// reported its transaction status since).
    ext_open: bool,
    /// Prepared statements under a row limit, by name.
    limited_stmts: HashMap<String, RowLimit>,
    /// Portals of such statements.
    limited_portals: HashMap<String, RowLimit>,
    shared: &'a Shared,
    info: &'a SessionInfo,
    ctx: RequestContext,
    tx: mpsc::UnboundedSender<Expect>,
    /// Prepared statements that may be a COPY FROM STDIN (a named one stays so until closed, as
    /// a second Parse of its name fails on the server): executing one opens a copy window.
    copy_stmts: HashSet<String>,
    /// Portals bound to such statements.
    copy_portals: HashSet<String>,
    /// After a refused Parse: drop messages until Sync, as the server does after an error.
    discard: bool,
    /// A COPY FROM STDIN the server may be in.
    window: Option<CopyWindow>,
    /// The next COPY instance number.
    next_copy: u64,
    copy: Arc<CopyTrack>,
    /// What the backend half has answered.
    progress: Arc<Progress>,
    /// Expectations sent (tickets aside).
    sent: AtomicU64,
    /// Prepared statements whose execution is a barrier (they may change how the server reads
    /// statements, see [`crate::reading`], or the catalog). Kept like `copy_stmts`.
    barrier_stmts: HashMap<String, Raise>,
    /// Portals bound to such statements.
    barrier_portals: HashMap<String, Raise>,
    barrier: Barrier,
    /// The target's catalog, shared by its sessions, and the version of it in `ctx`.
    catalog_slot: Arc<CatalogSlot>,
    catalog_version: u64,
    /// Counters the console shows.
    stats: Arc<crate::control::SessionStats>,
    /// `ctx` holds a catalog read inside a transaction (it sees the transaction's own DDL).
    private_catalog: bool,
    /// The catalog is read again when the barrier is crossed.
    reload_catalog: bool,
    /// Whether bound values are recorded in outcomes (not with `statement_text = "normalized"`).
    record_params: bool,
    /// The requester's reason for approvals (`SET parapet.reason = '…'`).
    reason: Mutex<Option<String>>,
    /// Messages for the client sent while the backend half relays (NOTICEs of held statements).
    notices: mpsc::UnboundedSender<Vec<u8>>,
}

/// The row limits of a forwarded message (`None`: none).
type Limits = Option<Arc<[RowLimit]>>;

enum Judged {
    /// Forward it; it may start this many COPY FROM STDIN; the barrier it raises; the row
    /// limits it runs under.
    Forward(DecisionRef, u32, Raise, Limits),
    Refuse(Vec<u8>),
}

/// Why running a statement is a barrier (see [`Barrier`]): nothing behind it is judged until the
/// server has run it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Raise {
    /// It may change how the server reads statements (`crate::reading`).
    reading: bool,
    /// It may change the catalog: read it again before judging more.
    catalog: bool,
}

impl Raise {
    fn any(self) -> bool {
        self.reading || self.catalog
    }
}

impl Frontend<'_> {
    async fn run<R, W>(&mut self, r: &mut R, w: &mut W) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let cap = self.shared.config.max_message_size;
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            if self.wait_input(r, w, &mut rbuf).await? == 0 {
                return Ok(());
            }
            // The complete messages of this read, each decoded once: type, length, message, and
            // the judgment made in phase 1.
            let mut steps: Vec<(u8, usize, FrontendMessage<'_>, Option<Pre>)> = Vec::new();
            // Phase 1: frame every complete message of this read and, for each statement, decide
            // and submit its decision event, without waiting. A client that pipelines several
            // statements in one write thus waits for one log commit, not one per statement.
            // Nothing after a statement that may start a COPY FROM STDIN is judged ahead: whether
            // what follows it reaches the server depends on whether the COPY started.
            let mut pos = 0;
            let mut discard = self.discard;
            self.follow_catalog().await;
            let mut ahead = self.window.is_none() && self.barrier == Barrier::None;
            while let Some((tag, len)) =
                frame(&rbuf[pos..], cap).map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                let m = FrontendMessage::decode(tag, &rbuf[pos..pos + len]);
                let pre = if !ahead {
                    None
                } else if discard {
                    // Skipped like the server skips after an error: not judged, not logged.
                    if tag == b'S' {
                        discard = false;
                    }
                    None
                } else {
                    let pre = self.prejudge(&m).await?;
                    if tag == b'P' && pre.as_ref().is_some_and(|p| !p.allowed) {
                        discard = true;
                    }
                    if pre
                        .as_ref()
                        .is_some_and(|p| p.copies > 0 || p.raise.any() || self.holds(p))
                        || self.may_copy(&m)
                        || self.raises(&m)
                    {
                        ahead = false;
                    }
                    pre
                };
                steps.push((tag, len, m, pre));
                pos += len;
                if tag == b'X' {
                    break;
                }
            }
            // Phase 2: wait for the decisions to be durable (before_forward), then forward in
            // order — the same bytes and expectations as handling each message on its own.
            let mut off = 0;
            for (tag, len, m, pre) in steps {
                let msg = &rbuf[off..off + len];
                off += len;
                if self.window.is_some() && !m.is_copy() && m != FrontendMessage::Terminate {
                    // The statement that may have started the COPY must reach the server first,
                    // with a Flush: in the extended protocol the server holds its replies until
                    // Sync or Flush (errors and CopyInResponse it sends at once). A Flush has no
                    // reply and no effect on the server's state, in copy-in mode or out of it.
                    frontend::flush(&mut out);
                    w.write_all(&out).await?;
                    out.clear();
                    if !self.in_copy(tag).await? {
                        continue;
                    }
                }
                let judged = match pre {
                    Some(p) => Some(self.settle_pre(p).await?),
                    None => self.cross_barrier(&m, &mut out, w).await?,
                };
                let judged = match (judged, &m) {
                    (
                        Some(Judged::Forward(d, n, raise, Some(limits))),
                        FrontendMessage::Query { .. },
                    ) if !self.discard => {
                        match self
                            .limited_query(msg, (d, n, raise, limits), &mut out, w)
                            .await?
                        {
                            None => continue,
                            Some(j) => Some(j),
                        }
                    }
                    (_, FrontendMessage::Execute { portal })
                        if !self.discard && self.limited_portals.contains_key(*portal) =>
                    {
                        self.limited_execute(msg, portal, &mut out, w).await?;
                        continue;
                    }
                    (j, _) => j,
                };
                let terminate = self.handle(msg, m, judged, &mut out).await?;
                if terminate {
                    w.write_all(&out).await?;
                    return Ok(());
                }
            }
            rbuf.advance(off);
            if !out.is_empty() {
                w.write_all(&out).await?;
                out.clear();
            }
        }
    }

    /// Reads more client bytes; with `[listen] idle_timeout_seconds`, ends the session when the
    /// client has sent nothing for that long while nothing it asked for is outstanding.
    async fn read<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        rbuf: &mut BytesMut,
    ) -> Result<usize, SessionError> {
        let Some(limit) = self.shared.config.idle_timeout else {
            return Ok(r.read_buf(rbuf).await?);
        };
        loop {
            // `read_buf` is cancel-safe: a timed-out read has taken nothing.
            match tokio::time::timeout(limit, r.read_buf(rbuf)).await {
                Ok(n) => return Ok(n?),
                Err(_) if self.sent.load(Ordering::Relaxed) == self.progress.answered() => {
                    return Err(SessionError::Idle)
                }
                Err(_) => {}
            }
        }
    }

    /// Whether this Bind or Execute may run a statement, parsed earlier, that is a barrier.
    fn raises(&self, m: &FrontendMessage<'_>) -> bool {
        match m {
            FrontendMessage::Bind { statement, .. } => self.barrier_stmts.contains_key(*statement),
            FrontendMessage::Execute { portal } => self.barrier_portals.contains_key(*portal),
            _ => false,
        }
    }

    /// Once the barrier's statement is answered (`progress` has reached it), reads the catalog
    /// again if the server is idle; returns false when it is not (extended-protocol messages
    /// sent after the statement await a Sync). Either way the re-read the backend half may have
    /// announced is over.
    async fn reread_catalog<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> Result<bool, SessionError> {
        let idle = self.sent.load(Ordering::Relaxed) == self.progress.answered();
        let res = if idle {
            self.read_catalog(w).await.map(|()| true)
        } else {
            Ok(false)
        };
        if idle {
            self.reload_catalog = false;
            self.barrier = Barrier::None;
        }
        self.settle_reread();
        res
    }

    /// Ends the re-read the backend half announced, if it did.
    fn settle_reread(&self) {
        if self.progress.owed.swap(false, Ordering::SeqCst) {
            self.catalog_slot.end_reread();
        }
    }

    /// Reads more client bytes; but when a statement that may change the catalog is answered
    /// first, reads the catalog again at once (other sessions wait for it).
    async fn wait_input<R, W>(
        &mut self,
        r: &mut R,
        w: &mut W,
        rbuf: &mut BytesMut,
    ) -> Result<usize, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if let (Barrier::Answered(n), true) = (self.barrier, self.reload_catalog) {
            let progress = self.progress.clone();
            tokio::select! {
                got = self.read(r, rbuf) => return got,
                _ = progress.reach(n) => {}
            }
            self.reread_catalog(w).await?;
        }
        self.read(r, rbuf).await
    }

    /// Takes up the target's newer catalog, if another session read one (a session's own
    /// catalog, read inside its transaction, stays until the transaction ends). While another
    /// session reads the catalog again after its DDL, waits for it.
    async fn follow_catalog(&mut self) {
        if self.private_catalog {
            return;
        }
        if self.catalog_slot.rereading() && !self.progress.owed.load(Ordering::SeqCst) {
            self.catalog_slot.settled(REREAD_WAIT).await;
        }
        if self.catalog_slot.version() == self.catalog_version {
            return;
        }
        if let Some((c, v)) = self.catalog_slot.current() {
            self.ctx.catalog = Some(c);
            self.catalog_version = v;
        }
    }

    /// Reads the catalog again over the session's own connection (idle: everything sent has
    /// been answered). Read in a transaction, it sees the transaction's own DDL and stays this
    /// session's; read outside one, it becomes the target's. If it cannot be read because the
    /// transaction has already failed (nothing runs until it ends), the catalog in use stays;
    /// any other failure ends the session (fail closed).
    async fn read_catalog<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<(), SessionError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.expect(Expect::Catalog(tx))?;
        let mut q = BytesMut::new();
        frontend::query(LOAD_QUERY, &mut q);
        w.write_all(&q).await?;
        let reply = rx
            .await
            .map_err(|_| SessionError::Upstream("session relay stopped".into()))?;
        let status = reply.status;
        // 25P02: the client's transaction had already failed; nothing runs until it ends, and
        // its end rolls back whatever DDL it held.
        let failed_before = reply.sqlstate.as_deref() == Some("25P02");
        match crate::catalog::build(reply).await {
            Ok(c) if status == b'I' => {
                self.ctx.catalog = Some(c.clone());
                self.catalog_version = self.catalog_slot.publish(c);
                self.private_catalog = false;
            }
            Ok(c) => {
                self.ctx.catalog = Some(c);
                self.private_catalog = true;
            }
            Err(e) if failed_before => {
                tracing::debug!("catalog not read in a failed transaction: {e}");
            }
            // Any other failure (a statement_timeout the session set, say) would leave what
            // follows judged with a catalog the DDL may have changed: fail closed.
            Err(e) => {
                return Err(SessionError::Unreadable(format!(
                    "parapet: terminating connection: the catalog could not be read again after a statement that may have changed it ({e}); reconnect"
                )))
            }
        }
        Ok(())
    }

    /// Refuses a statement that came behind a barrier the server cannot have answered yet.
    async fn refuse_pending(
        &self,
        sql: &str,
        protocol: &'static str,
        stmt: Option<&str>,
    ) -> Result<Option<Judged>, SessionError> {
        let mut d = crate::judge::decide(&self.shared.guard, sql, &self.ctx).await;
        d.verdict = Verdict::Deny;
        d.reason = RULE_SETTING_PENDING_REASON.to_string();
        d.rules.insert(
            0,
            RuleHit {
                id: RULE_SETTING_PENDING.into(),
                mode: Mode::Enforce,
                reason: d.reason.clone(),
            },
        );
        let pre = self.submit(d, sql, protocol, stmt).await?;
        Ok(Some(self.settle_pre(pre).await?))
    }

    /// Before a statement is judged in phase 2: if a barrier is up, sends what is pending and
    /// waits for the server's answer to the statement that raised it (`Answered`), or refuses
    /// the statement (`UntilSync`: the answer cannot come before the client's Sync). `None`:
    /// judge it as usual.
    async fn cross_barrier<W: AsyncWrite + Unpin>(
        &mut self,
        m: &FrontendMessage<'_>,
        out: &mut BytesMut,
        w: &mut W,
    ) -> Result<Option<Judged>, SessionError> {
        let (sql, protocol, stmt) = match *m {
            FrontendMessage::Query { sql } => (sql, "simple", None),
            FrontendMessage::Parse { name, sql, .. } => (sql, "extended", Some(name)),
            _ => return Ok(None),
        };
        if self.discard {
            return Ok(None);
        }
        match self.barrier {
            Barrier::None => Ok(None),
            Barrier::Answered(n) => {
                w.write_all(out).await?;
                out.clear();
                self.progress.reach(n).await;
                if self.reload_catalog && !self.reread_catalog(w).await? {
                    // Extended-protocol messages after it await a Sync: a query of the
                    // gateway's own cannot go in between.
                    return self.refuse_pending(sql, protocol, stmt).await;
                }
                self.barrier = Barrier::None;
                Ok(None)
            }
            Barrier::UntilSync => self.refuse_pending(sql, protocol, stmt).await,
        }
    }

    /// Runs a simple Query under row limits (`@max_rows`) in a transaction the gateway controls,
    /// so that what a statement past its limit changed is undone before anything commits:
    /// outside a transaction block, in a block it opens (`BEGIN`) and ends itself (`COMMIT`,
    /// or `ROLLBACK` past a limit); inside the client's block, under a savepoint it releases
    /// (or rolls back to, then fails the block as any error would). Everything sent before is
    /// answered first, so the transaction status is known. The backend half watches the reply
    /// ([`Watch`]) and withholds its ReadyForQuery, which is sent here once the transaction is
    /// settled. In a failed block the Query goes as it is (the server refuses it). Returns the
    /// judgment to handle as usual, or `None` when it has been dealt with.
    async fn limited_query<W: AsyncWrite + Unpin>(
        &mut self,
        msg: &[u8],
        (d, copies, raise, limits): (DecisionRef, u32, Raise, Arc<[RowLimit]>),
        out: &mut BytesMut,
        w: &mut W,
    ) -> Result<Option<Judged>, SessionError> {
        if self.ext_open {
            // The server has not said whether extended-protocol messages before it opened a
            // transaction, and a Query would commit theirs: refused (fail closed).
            let mut error = BytesMut::new();
            backend::error(
                "42501",
                "parapet: a statement under a row limit (@max_rows) cannot follow extended-protocol messages before their Sync; send Sync first",
                d.index().map(|i| format!("parapet audit entry {i}")).as_deref(),
                false,
                &mut error,
            );
            return Ok(Some(Judged::Refuse(error.to_vec())));
        }
        w.write_all(out).await?;
        out.clear();
        self.progress.reach(self.sent.load(Ordering::Relaxed)).await;
        let status = self.progress.status.load(Ordering::SeqCst);
        if status == b'E' {
            return Ok(Some(Judged::Forward(d, copies, raise, None)));
        }
        // The unnamed statement and portal go, as for any Query.
        self.forget_unnamed();
        let in_block = status == b'T';
        let (open_tx, _opened) = tokio::sync::oneshot::channel();
        self.expect(Expect::Catalog(open_tx))?;
        frontend::query(
            if in_block {
                "SAVEPOINT parapet_limit"
            } else {
                "BEGIN"
            },
            out,
        );
        let (report_tx, report_rx) = tokio::sync::oneshot::channel();
        self.expect(Expect::Query {
            decision: Some(d.clone()),
            started: Instant::now(),
            copies: 0..0,
            limit: Some(LimitRun {
                limits,
                decision: Some(d),
                report: report_tx,
            }),
        })?;
        out.extend_from_slice(msg);
        w.write_all(out).await?;
        out.clear();
        let report = report_rx
            .await
            .map_err(|_| SessionError::Upstream("session relay stopped".into()))?;
        let failed = report.status == b'E';
        if in_block && report.over.is_none() && !failed {
            // RELEASE of the savepoint just made cannot fail, and leaves the block as it was:
            // the client is answered without waiting for it (its reply is the gateway's own).
            let (tx, _released) = tokio::sync::oneshot::channel();
            self.expect(Expect::Catalog(tx))?;
            frontend::query("RELEASE SAVEPOINT parapet_limit", out);
            w.write_all(out).await?;
            out.clear();
            let mut tail = BytesMut::new();
            backend::ready_for_query(b'T', &mut tail);
            let _ = self.notices.send(tail.to_vec());
            return Ok(None);
        }
        let end: Vec<String> = match (in_block, report.over.is_some(), failed) {
            (false, false, false) => vec!["COMMIT".into()],
            (false, _, _) => vec!["ROLLBACK".into()],
            // Released above (no error), or the client's own error failed the block, which
            // stays failed, as without the gateway.
            (true, false, _) => Vec::new(),
            // Undone at once (its locks released too), then the block fails as on any error
            // (a text that fails in the grammar; alone, as it fails the whole string it is in).
            (true, true, _) => vec![
                "ROLLBACK TO SAVEPOINT parapet_limit; RELEASE SAVEPOINT parapet_limit".into(),
                refusal_text().0,
            ],
        };
        let mut tail = BytesMut::new();
        let mut status = report.status;
        for q in end {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.expect(Expect::Catalog(tx))?;
            frontend::query(&q, out);
            w.write_all(out).await?;
            out.clear();
            let reply = rx
                .await
                .map_err(|_| SessionError::Upstream("session relay stopped".into()))?;
            if let (None, Some(e)) = (&report.over, &reply.error) {
                // The commit itself failed (a deferred constraint, say): the client sees why.
                let code = reply.sqlstate.as_deref().unwrap_or("XX000");
                backend::error(code, e, None, false, &mut tail);
            }
            status = reply.status;
        }
        backend::ready_for_query(status, &mut tail);
        let _ = self.notices.send(tail.to_vec());
        Ok(None)
    }

    /// Runs an Execute of a statement under a row limit: sent with a Flush, everything before
    /// it answered; the backend half watches the reply ([`Watch`]). Past the limit, the server
    /// is made to fail in its place (a Parse that fails in the grammar, under a name of the
    /// gateway's own), so the transaction — the client's block, or the implicit one that
    /// commits only at Sync — fails as it would on any error, and nothing is committed; the
    /// client sees the gateway's error and what follows up to Sync is skipped.
    async fn limited_execute<W: AsyncWrite + Unpin>(
        &mut self,
        msg: &[u8],
        portal: &str,
        out: &mut BytesMut,
        w: &mut W,
    ) -> Result<(), SessionError> {
        let Some(limit) = self.limited_portals.get(portal).cloned() else {
            return Ok(());
        };
        let (report_tx, report_rx) = tokio::sync::oneshot::channel();
        let run = LimitRun {
            limits: Arc::from(vec![RowLimit {
                statement: 0,
                ..limit
            }]),
            decision: None,
            report: report_tx,
        };
        self.execute(msg, portal, Some(run), out)?;
        frontend::flush(out);
        w.write_all(out).await?;
        out.clear();
        // No report: the server skipped it (an earlier error), so nothing ran.
        if let Ok(LimitReport {
            over: Some(error), ..
        }) = report_rx.await
        {
            let (text, nonce) = refusal_text();
            let name = format!("parapet_limit_{nonce}");
            self.expect(Expect::DenyParse {
                name: name.clone(),
                error,
                nonce,
            })?;
            frontend::parse(&name, &text, out);
            self.discard = true;
        }
        Ok(())
    }

    /// Whether this Bind or Execute may lead to a COPY FROM STDIN (of a statement parsed earlier).
    fn may_copy(&self, m: &FrontendMessage<'_>) -> bool {
        match m {
            FrontendMessage::Bind { statement, .. } => self.copy_stmts.contains(*statement),
            FrontendMessage::Execute { portal } => self.copy_portals.contains(*portal),
            _ => false,
        }
    }

    /// A message other than copy data while a COPY FROM STDIN may be running. Waits until the
    /// backend half knows whether the server entered copy-in mode, then does what the server
    /// does there: Sync and Flush are ignored (dropped here); any other message is a protocol
    /// violation that ends the session (the server closes the connection too). When the COPY
    /// never started, the window closes and the message is handled as usual. Returns whether to
    /// handle it.
    async fn in_copy(&mut self, tag: u8) -> Result<bool, SessionError> {
        let Some(win) = self.window.clone() else {
            return Ok(true);
        };
        if !self.copy.started(win.instance).await {
            // The statement failed before its COPY (a simple Query stops at its first error).
            self.window = None;
            return Ok(true);
        }
        if matches!(tag, b'S' | b'H') {
            return Ok(false);
        }
        Err(SessionError::CopyViolation(tag))
    }

    fn expect(&self, e: Expect) -> Result<(), SessionError> {
        if !matches!(e, Expect::Ticket(..)) {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.tx
            .send(e)
            .map_err(|_| SessionError::Upstream("session relay stopped".into()))
    }

    /// Opens a copy window for a forwarded statement that may start `n` COPY FROM STDIN.
    fn copies(&mut self, n: u32) -> Range<u64> {
        let start = self.next_copy;
        self.next_copy += u64::from(n);
        if n > 0 {
            self.window = Some(CopyWindow {
                instance: start,
                end: self.next_copy,
            });
        }
        start..self.next_copy
    }

    /// Forwards an Execute of `portal` (`limit`: watched under its row limit): the COPY it may
    /// start, and the barrier its statement raises.
    fn execute(
        &mut self,
        msg: &[u8],
        portal: &str,
        limit: Option<LimitRun>,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let n = u32::from(self.copy_portals.contains(portal));
        let copies = self.copies(n);
        self.ext_open = true;
        self.expect(Expect::Exec {
            portal: portal.to_string(),
            started: Instant::now(),
            copies,
            limit,
        })?;
        out.extend_from_slice(msg);
        if let Some(raise) = self.barrier_portals.get(portal) {
            self.barrier = Barrier::UntilSync;
            self.reload_catalog |= raise.catalog;
        }
        Ok(())
    }

    /// What a simple Query does to the server's unnamed statement and portal: drops them.
    fn forget_unnamed(&mut self) {
        self.copy_stmts.remove("");
        self.copy_portals.remove("");
        self.barrier_stmts.remove("");
        self.barrier_portals.remove("");
        self.limited_stmts.remove("");
        self.limited_portals.remove("");
    }

    /// Handles one client message (`msg`, decoded as `m`); returns true on Terminate. `judged` is
    /// the decision phase 1 made for a Query, Parse or FunctionCall (when absent, the statement
    /// is judged here).
    async fn handle(
        &mut self,
        msg: &[u8],
        m: FrontendMessage<'_>,
        judged: Option<Judged>,
        out: &mut BytesMut,
    ) -> Result<bool, SessionError> {
        if self.discard {
            // Skipped like the server skips after an error, unread.
            match m {
                FrontendMessage::Sync => {
                    self.discard = false;
                    self.ext_open = false;
                    self.expect(Expect::Sync)?;
                    out.extend_from_slice(msg);
                }
                FrontendMessage::Terminate => {
                    out.extend_from_slice(msg);
                    return Ok(true);
                }
                _ => {}
            }
            return Ok(false);
        }
        match m {
            FrontendMessage::Query { sql } => {
                let judged = match judged {
                    Some(j) => j,
                    None => {
                        let pre = self.judge_sql(sql, "simple", None).await?;
                        self.settle_pre(pre).await?
                    }
                };
                // A simple Query drops the unnamed statement and portal, as the server does.
                self.forget_unnamed();
                self.ext_open = false;
                match judged {
                    // Limits were dealt with before (`limited_query`): none apply here.
                    Judged::Forward(d, n, raise, _) => {
                        let copies = self.copies(n);
                        self.expect(Expect::Query {
                            decision: Some(d),
                            started: Instant::now(),
                            copies,
                            limit: None,
                        })?;
                        out.extend_from_slice(msg);
                        if raise.any() {
                            let n = self.sent.load(Ordering::Relaxed);
                            self.barrier = Barrier::Answered(n);
                            if raise.catalog {
                                self.reload_catalog = true;
                                self.progress.catalog_at.store(n, Ordering::SeqCst);
                            }
                        }
                    }
                    Judged::Refuse(error) => {
                        self.expect(Expect::DenySimple {
                            error,
                            replaced: false,
                        })?;
                        frontend::query(&refusal_text().0, out);
                    }
                }
            }
            FrontendMessage::Parse { name, sql, types } => {
                let judged = match judged {
                    Some(j) => j,
                    None => {
                        let pre = self.judge_sql(sql, "extended", Some(name)).await?;
                        self.settle_pre(pre).await?
                    }
                };
                self.ext_open = true;
                match judged {
                    Judged::Forward(d, n, raise, limits) => {
                        if n > 0 {
                            self.copy_stmts.insert(name.to_string());
                        } else if name.is_empty() {
                            self.copy_stmts.remove(name);
                        }
                        // A second Parse of a named statement fails on the server, so only the
                        // unnamed one is replaced here.
                        match limits.as_deref().and_then(|l| l.first()) {
                            Some(l) => {
                                self.limited_stmts.insert(name.to_string(), l.clone());
                            }
                            None if name.is_empty() => {
                                self.limited_stmts.remove(name);
                            }
                            None => {}
                        }
                        if raise.any() {
                            self.barrier_stmts.insert(name.to_string(), raise);
                        } else if name.is_empty() {
                            self.barrier_stmts.remove(name);
                        }
                        let types = if self.record_params {
                            crate::params::declared_types(types).into()
                        } else {
                            Arc::from([])
                        };
                        self.expect(Expect::Parse {
                            name: name.to_string(),
                            decision: Some(d),
                            types,
                        })?;
                        out.extend_from_slice(msg);
                    }
                    Judged::Refuse(error) => {
                        if name.is_empty() {
                            self.copy_stmts.remove(name);
                            self.barrier_stmts.remove(name);
                            self.limited_stmts.remove(name);
                        }
                        let (text, nonce) = refusal_text();
                        self.expect(Expect::DenyParse {
                            name: name.to_string(),
                            error,
                            nonce,
                        })?;
                        frontend::parse(name, &text, out);
                        self.discard = true;
                    }
                }
            }
            FrontendMessage::Bind {
                portal,
                statement,
                params,
            } => {
                if self.copy_stmts.contains(statement) {
                    self.copy_portals.insert(portal.to_string());
                } else if portal.is_empty() {
                    self.copy_portals.remove(portal);
                }
                if let Some(raise) = self.barrier_stmts.get(statement).copied() {
                    self.barrier_portals.insert(portal.to_string(), raise);
                } else if portal.is_empty() {
                    self.barrier_portals.remove(portal);
                }
                match self.limited_stmts.get(statement).cloned() {
                    Some(l) => {
                        self.limited_portals.insert(portal.to_string(), l);
                    }
                    None => {
                        self.limited_portals.remove(portal);
                    }
                }
                self.ext_open = true;
                let params = if self.record_params {
                    crate::params::capture(params).map(Arc::new)
                } else {
                    None
                };
                self.expect(Expect::Bind {
                    portal: portal.to_string(),
                    stmt: statement.to_string(),
                    params,
                })?;
                out.extend_from_slice(msg);
            }
            FrontendMessage::Execute { portal } => self.execute(msg, portal, None, out)?,
            FrontendMessage::Describe { statement } => {
                let statement = statement.filter(|_| self.record_params).map(str::to_string);
                self.ext_open = true;
                self.expect(Expect::Describe { statement })?;
                out.extend_from_slice(msg);
            }
            FrontendMessage::Close { statement, name } => {
                if statement {
                    self.copy_stmts.remove(name);
                    self.barrier_stmts.remove(name);
                    self.limited_stmts.remove(name);
                } else {
                    self.copy_portals.remove(name);
                    self.barrier_portals.remove(name);
                    self.limited_portals.remove(name);
                }
                self.ext_open = true;
                self.expect(Expect::Close {
                    statement,
                    name: name.to_string(),
                })?;
                out.extend_from_slice(msg);
            }
            FrontendMessage::Sync => {
                self.ext_open = false;
                self.expect(Expect::Sync)?;
                out.extend_from_slice(msg);
                if self.barrier == Barrier::UntilSync {
                    let n = self.sent.load(Ordering::Relaxed);
                    self.barrier = Barrier::Answered(n);
                    if self.reload_catalog {
                        self.progress.catalog_at.store(n, Ordering::SeqCst);
                    }
                }
            }
            FrontendMessage::Terminate => {
                out.extend_from_slice(msg);
                return Ok(true);
            }
            FrontendMessage::FunctionCall => {
                let error = match judged {
                    Some(Judged::Refuse(e)) => e,
                    // Never allowed; `Forward` cannot come back for a FunctionCall.
                    Some(Judged::Forward(..)) | None => {
                        let pre = self.judge_function();
                        match self.settle_pre(pre).await? {
                            Judged::Refuse(e) => e,
                            Judged::Forward(..) => log_failure("function call not refused"),
                        }
                    }
                };
                self.expect(Expect::DenySimple {
                    error,
                    replaced: false,
                })?;
                frontend::query(&refusal_text().0, out);
            }
            FrontendMessage::CopyDone => {
                // CopyDone ends this COPY; a simple Query may go on to its next one.
                if let Some(w) = &mut self.window {
                    w.instance += 1;
                    if w.instance >= w.end {
                        self.window = None;
                    }
                }
                out.extend_from_slice(msg);
            }
            FrontendMessage::CopyFail => {
                self.window = None;
                out.extend_from_slice(msg);
            }
            // Copy data, and Flush (which the server does not answer).
            FrontendMessage::CopyData | FrontendMessage::Flush => out.extend_from_slice(msg),
            FrontendMessage::Malformed(what) => return Err(malformed(what)),
            FrontendMessage::Unknown(other) => {
                return Err(SessionError::Protocol(format!(
                    "unexpected message type {:?} from the client",
                    other as char
                )))
            }
        }
        Ok(false)
    }

    /// Phase 1 for one message: decides a Query, Parse or FunctionCall and submits its decision
    /// event without waiting. `None` for messages that carry no statement.
    async fn prejudge(&self, m: &FrontendMessage<'_>) -> Result<Option<Pre>, SessionError> {
        match *m {
            FrontendMessage::Query { sql } => self.judge_sql(sql, "simple", None).await.map(Some),
            FrontendMessage::Parse { name, sql, .. } => {
                self.judge_sql(sql, "extended", Some(name)).await.map(Some)
            }
            FrontendMessage::FunctionCall => Ok(Some(self.judge_function())),
            FrontendMessage::Malformed(what) => Err(malformed(what)),
            _ => Ok(None),
        }
    }

    /// Judges `sql` (inline or on the judging pool, see `judge`) and submits the decision event
    /// (not yet waited for).
    async fn judge_sql(
        &self,
        sql: &str,
        protocol: &'static str,
        stmt: Option<&str>,
    ) -> Result<Pre, SessionError> {
        let d = crate::judge::decide(&self.shared.guard, sql, &self.ctx).await;
        self.stats.statement();
        if matches!(d.verdict, Verdict::Allow | Verdict::Monitor)
            && sql.len() <= 64 * 1024
            && sql.to_ascii_lowercase().contains("parapet.reason")
        {
            if let Some(reason) = crate::approvals::reason_setting(sql) {
                *self.reason.lock() = reason;
            }
        }
        self.submit(d, sql, protocol, stmt).await
    }

    /// Whether a judged statement will be held for its approval (`[review] wait`): nothing
    /// behind it is judged ahead, as it may run after all.
    fn holds(&self, pre: &Pre) -> bool {
        pre.held.is_some() && !self.shared.config.review.wait.is_zero()
    }

    /// The barrier an allowed statement raises: it may change how the server reads statements
    /// (a setting, or code that may set one: a function not built in), or the catalog (DDL;
    /// and the end of a transaction in which this session read its own catalog).
    fn raise(&self, d: &Decision) -> Raise {
        let builtin = Catalog::builtin();
        Raise {
            reading: crate::reading::may_change_reading(d, |f| {
                let bare = f.rsplit('.').next().unwrap_or(f);
                f.contains('.') || !builtin.knows_function(bare)
            }),
            catalog: d.statements.iter().any(|s| {
                if s.kind == "transaction" {
                    self.private_catalog
                } else {
                    s.may_change_catalog()
                }
            }),
        }
    }

    /// Submits the decision event of `sql` (not yet waited for). A `review` decision that an
    /// open approval or window covers is let through (the use recorded just before it; a
    /// single-use approval claimed in the fleet's state first, so that it runs at most once
    /// fleet-wide); any other `review` decision names the request it opens (or finds open).
    async fn submit(
        &self,
        mut d: Decision,
        sql: &str,
        protocol: &'static str,
        stmt: Option<&str>,
    ) -> Result<Pre, SessionError> {
        let mut approval = None;
        let mut held = None;
        if d.verdict == Verdict::Review {
            let sha = crate::approvals::text_hash(sql);
            let rules = crate::approvals::review_rules(&d);
            let (user, target) = (&self.info.user, &self.info.target);
            let mut admitted = self.shared.approvals.admit(user, target, &sha, &rules);
            if let Some(a) = admitted.take() {
                admitted = self.claim_use(a).await;
            }
            if let Some(a) = admitted {
                // Appended before the decision that names it, so durable with it.
                drop(
                    self.shared
                        .log
                        .submit(crate::approvals::used_event(self.info, &a, &sha)),
                );
                d.verdict = Verdict::Allow;
                approval = Some(a);
            } else {
                let open = self.shared.approvals.pending(user, target, &sha, &rules);
                let h = Held {
                    existing: open.is_some(),
                    id: open.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
                    sql: sql.to_string(),
                    protocol,
                    stmt: stmt.map(str::to_string),
                    sha,
                };
                approval = Some(crate::approvals::ApprovalRef {
                    id: h.id.clone(),
                    kind: crate::approvals::ApprovalUse::Request,
                });
                held = Some(h);
            }
        }
        let mut ev = DecisionEvent::new(
            self.info,
            protocol,
            self.shared.recorded_text(sql),
            &d,
            stmt,
        );
        ev.approval = approval;
        // A text too long for one entry goes in parts just before the decision.
        let ticket = submit_decision(&self.shared.log, ev);
        let allowed = matches!(d.verdict, Verdict::Allow | Verdict::Monitor);
        let copies = copies_from_stdin(&d);
        let limits: Limits = (!d.limits.is_empty()).then(|| Arc::from(d.limits.clone()));
        let raise = if allowed || held.is_some() {
            self.raise(&d)
        } else {
            Raise::default()
        };
        if allowed && self.shared.config.durability == Durability::BeforeReply {
            // Forwarded at once; the backend half holds the reply until the ticket resolves.
            let slot = Arc::new(OnceLock::new());
            self.expect(Expect::Ticket(ticket, slot.clone()))?;
            return Ok(Pre {
                allowed,
                copies,
                raise,
                limits,
                wait: PreWait::Ready(DecisionRef::Pending(slot)),
                decision: None,
                held: None,
            });
        }
        Ok(Pre {
            allowed,
            copies,
            raise,
            limits,
            wait: PreWait::Ticket(ticket),
            decision: (!allowed).then_some(d),
            held,
        })
    }

    /// Claims a single-use approval taken from the book in the fleet's state (a window needs
    /// no claim): `None` if another session used it first (anywhere in the fleet), or if the
    /// claim cannot be made (then the approval is given back: the statement does not run now).
    async fn claim_use(
        &self,
        a: crate::approvals::ApprovalRef,
    ) -> Option<crate::approvals::ApprovalRef> {
        if a.kind != crate::approvals::ApprovalUse::Once {
            return Some(a);
        }
        match self
            .shared
            .state
            .claim(&format!("use:{}", a.id), &self.info.session)
            .await
        {
            Ok(true) => Some(a),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(approval = %a.id, "cannot claim the approval's use: {e}");
                self.shared.approvals.unuse(&a.id);
                None
            }
        }
    }

    /// A statement held by `review` rules whose decision is durable: opens its approval request
    /// (durably) unless one was open already; then refuses it at once (`[review] wait = 0`),
    /// or tells the client it waits and holds it until it is approved (then runs it, under a
    /// new `allow` decision naming the approval), denied, expired or the wait is over.
    async fn hold(
        &self,
        h: Held,
        d: Decision,
        index: u64,
        (copies, raise, limits): (u32, Raise, Limits),
    ) -> Result<Judged, SessionError> {
        use crate::approvals::{ApprovalRef, NewRequest, WaitOutcome};
        if !h.existing {
            let session_reason = self.reason.lock().clone();
            let n = NewRequest {
                session: self.info,
                sql: &h.sql,
                record_text: self.shared.recorded_text(&h.sql).is_some(),
                decision: &d,
                decision_index: index,
                reason: crate::approvals::requester_reason(&h.sql, session_reason.as_deref()),
            };
            if let Err(e) = self.shared.approvals.open(self.shared, &h.id, &n).await {
                return Ok(Judged::Refuse(log_failure(&e.to_string())));
            }
        }
        let wait = self.shared.config.review.wait;
        if wait.is_zero() {
            return Ok(Judged::Refuse(review_refusal(&d, &h.id)));
        }
        let mut notice = BytesMut::new();
        backend::notice(
            &format!("waiting for approval {}", h.id),
            Some(&format!(
                "parapet: {}; the statement is held for up to {} s",
                blocked_by(&d),
                wait.as_secs()
            )),
            &mut notice,
        );
        let _ = self.notices.send(notice.to_vec());
        let deadline = tokio::time::Instant::now() + wait;
        let refuse = |message: String| {
            let mut out = BytesMut::new();
            backend::error(
                "42501",
                &message,
                Some(&format!("approval request {}", h.id)),
                false,
                &mut out,
            );
            Ok(Judged::Refuse(out.to_vec()))
        };
        match self.shared.approvals.wait(&h.id, deadline).await {
            WaitOutcome::Approved(kind) => {
                let a = ApprovalRef {
                    id: h.id.clone(),
                    kind,
                };
                let Some(a) = self.claim_use(a).await else {
                    return refuse(format!(
                        "parapet: approval request {} was used by another session (perhaps on another gateway), or its use cannot be recorded now; send the statement again",
                        h.id
                    ));
                };
                drop(
                    self.shared
                        .log
                        .submit(crate::approvals::used_event(self.info, &a, &h.sha)),
                );
                let mut d = d;
                d.verdict = Verdict::Allow;
                let mut ev = DecisionEvent::new(
                    self.info,
                    h.protocol,
                    self.shared.recorded_text(&h.sql),
                    &d,
                    h.stmt.as_deref(),
                );
                ev.approval = Some(a);
                let waited = Instant::now();
                let durable = submit_decision(&self.shared.log, ev).await;
                self.shared.commit_latency.record(waited.elapsed());
                Ok(match durable {
                    Ok(i) => Judged::Forward(DecisionRef::Index(i), copies, raise, limits),
                    Err(e) => Judged::Refuse(log_failure(&e.to_string())),
                })
            }
            WaitOutcome::Denied(r) => refuse(format!(
                "parapet: approval request {} was denied by {}: {}",
                h.id, r.approver, r.reason
            )),
            WaitOutcome::Expired => refuse(format!(
                "parapet: approval request {} expired before it was approved; send the statement again to ask anew",
                h.id
            )),
            WaitOutcome::TimedOut => refuse(format!(
                "parapet: {}; not approved within [review] wait ({} s); the request stays open: send the same statement again once it is approved",
                blocked_by(&d),
                wait.as_secs()
            )),
        }
    }

    /// The fastpath function call bypasses SQL, so it cannot be judged: it is refused, and the
    /// refusal is recorded like any other.
    fn judge_function(&self) -> Pre {
        let reason = "the fastpath function-call protocol cannot be checked; use SQL";
        let d = Decision {
            verdict: Verdict::Deny,
            rules: vec![RuleHit {
                id: "function-call".into(),
                mode: Mode::Enforce,
                reason: reason.into(),
            }],
            reason: reason.into(),
            policy_hash: self.shared.guard.policy_hash(),
            normalized: None,
            fingerprint: None,
            statements: Vec::new(),
            limits: Vec::new(),
        };
        let ev = DecisionEvent::new(self.info, "function", None, &d, None);
        Pre {
            allowed: false,
            copies: 0,
            raise: Raise::default(),
            limits: None,
            wait: PreWait::Ticket(submit_decision(&self.shared.log, ev)),
            decision: Some(d),
            held: None,
        }
    }

    /// Phase 2: waits until the decision is durable (unless `before_reply` lets an allowed
    /// statement go at once) and says whether to forward it. A decision that cannot be logged
    /// refuses its statement (fail closed).
    async fn settle_pre(&self, pre: Pre) -> Result<Judged, SessionError> {
        let ticket = match pre.wait {
            PreWait::Ready(d) => return Ok(Judged::Forward(d, pre.copies, pre.raise, pre.limits)),
            PreWait::Ticket(t) => t,
        };
        let waited = Instant::now();
        let durable = ticket.await;
        self.shared.commit_latency.record(waited.elapsed());
        Ok(match (durable, pre.decision) {
            (Err(e), _) => Judged::Refuse(log_failure(&e.to_string())),
            (Ok(index), Some(d)) => match pre.held {
                Some(h) => {
                    return self
                        .hold(h, d, index, (pre.copies, pre.raise, pre.limits))
                        .await
                }
                None => Judged::Refuse(refusal(&d, index)),
            },
            (Ok(index), None) => {
                Judged::Forward(DecisionRef::Index(index), pre.copies, pre.raise, pre.limits)
            }
        })
    }
}

/// A statement judged in phase 1 whose decision event may not be durable yet.
struct Pre {
    /// Allow or Monitor (the statement goes to the server once its decision is durable).
    allowed: bool,
    /// How many COPY FROM STDIN its statements may start.
    copies: u32,
    /// The barrier it raises.
    raise: Raise,
    /// The row limits it runs under.
    limits: Limits,
    wait: PreWait,
    /// The decision of a refused statement, to build its ErrorResponse.
    decision: Option<Decision>,
    /// A statement held by `review` rules: the approval request it opens or found open.
    held: Option<Held>,
}

/// A statement held by `review` rules, waiting for its decision to be durable.
struct Held {
    /// The approval request's id.
    id: String,
    /// The request was already open (the same text sent again while pending).
    existing: bool,
    sql: String,
    protocol: &'static str,
    stmt: Option<String>,
    /// SHA-256 of `sql`.
    sha: String,
}

enum PreWait {
    /// Not waited for here (`before_reply`, allowed).
    Ready(DecisionRef),
    /// Resolves when the decision event is durable.
    Ticket(AppendTicket),
}

/// The error for a message whose body does not decode.
fn malformed(what: &str) -> SessionError {
    SessionError::Protocol(format!("malformed {what} message"))
}

/// How many of a decision's statements are a COPY FROM STDIN (each may put the server in
/// copy-in mode, where it ignores Sync and Flush).
fn copies_from_stdin(d: &Decision) -> u32 {
    let n = d
        .statements
        .iter()
        .filter(|f| {
            f.kind == "copy" && f.copy_direction == "from" && !f.copy_server_file && !f.copy_program
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The ErrorResponse for a refused statement: `parapet: blocked by <rule id>: <reason>`.
fn refusal(d: &Decision, index: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    backend::error(
        "42501",
        &format!("parapet: {}", blocked_by(d)),
        Some(&format!("parapet audit entry {index}")),
        false,
        &mut out,
    );
    out.to_vec()
}

/// The ErrorResponse for a statement refused at once by `review` rules: DETAIL names the
/// approval request, HINT says what to do.
fn review_refusal(d: &Decision, id: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    backend::error_hint(
        "42501",
        &format!("parapet: {}", blocked_by(d)),
        &format!("approval request {id}"),
        &format!("an approver decides with `parapet approvals approve {id} --reason …` (or deny); once approved, send the same statement again"),
        &mut out,
    );
    out.to_vec()
}

/// Why a decision refuses: `blocked by <rule id>: <reason>` (for review, the reason says that
/// approval is required).
pub(crate) fn blocked_by(d: &Decision) -> String {
    let wanted = if d.verdict == Verdict::Review {
        Mode::Review
    } else {
        Mode::Enforce
    };
    let rule = d
        .rules
        .iter()
        .find(|r| r.mode == wanted)
        .or(d.rules.first());
    let id = rule.map(|r| r.id.as_str()).unwrap_or("parapet");
    let mut reason = rule
        .map(|r| r.reason.as_str())
        .filter(|r| !r.is_empty())
        .unwrap_or(d.reason.as_str())
        .to_string();
    if d.verdict == Verdict::Review {
        reason = format!("approval required: {reason}");
    }
    format!("blocked by {id}: {reason}")
}

/// The ErrorResponse for a statement refused because its decision could not be logged.
fn log_failure(err: &str) -> Vec<u8> {
    tracing::error!("audit log write failed, refusing statement: {err}");
    let mut out = BytesMut::new();
    backend::error(
        "58030",
        &format!("parapet: statement refused: the audit log cannot be written ({err}); nothing was sent to the database"),
        None,
        false,
        &mut out,
    );
    out.to_vec()
}

/// An outcome noted while relaying, not yet appended.
struct Outcome {
    time: time::OffsetDateTime,
    decision: Option<u64>,
    tag: Option<String>,
    rows: Option<u64>,
    sqlstate: Option<String>,
    error: Option<String>,
    duration_us: u64,
    /// The values bound to the portal executed.
    params: Option<Arc<PortalParams>>,
}

/// A prepared statement on the server: the decision that let it through, and its parameter
/// types (declared, or described by the server) when bound values are recorded.
#[derive(Debug)]
struct Prepared {
    decision: Option<DecisionRef>,
    types: Arc<[u32]>,
}

/// A portal on the server: its statement's decision, and its bound values when recorded.
#[derive(Debug)]
struct Portal {
    decision: Option<DecisionRef>,
    params: Option<Arc<PortalParams>>,
    /// Rows it has returned so far (a read fetched in parts counts against its row limit).
    returned: u64,
}

/// Server → client half.
struct Backend<'a> {
    shared: &'a Shared,
    info: &'a SessionInfo,
    rx: mpsc::UnboundedReceiver<Expect>,
    queue: VecDeque<Expect>,
    tickets: Vec<(AppendTicket, Arc<OnceLock<u64>>)>,
    /// Outcomes of the replies being relayed, appended to the log once those replies are written
    /// (the client does not wait for their JSON, hashing and queueing).
    outcomes: Vec<Outcome>,
    // Accumulated over the current simple Query.
    tag: Option<String>,
    rows: Option<u64>,
    sqlstate: Option<String>,
    error: Option<String>,
    /// The server's prepared statements, by name (`""`: the unnamed one), with the decision
    /// that let each through: changed only as the server confirms (ParseComplete, CloseComplete)
    /// or, for the unnamed one, as the server drops it (any Parse of it, any simple Query).
    stmts: HashMap<String, Prepared>,
    /// The server's portals with their statement's decision and bound values; they end with
    /// their transaction.
    portals: HashMap<String, Portal>,
    /// CopyInResponses seen for the Query at the front (a Query may run several COPYs).
    copies_seen: u64,
    /// COPY instances whose CopyInResponse is in the reply being relayed: the frontend learns
    /// of them once it is written (it may end the session on the strength of it).
    copies_started: Vec<u64>,
    /// The server is skipping client messages until Sync (after an error in an extended-query
    /// message): what the queue holds before the next Sync gets no answer.
    skipping: bool,
    copy: Arc<CopyTrack>,
    progress: Arc<Progress>,
    /// The reply to an [`Expect::Catalog`] being read.
    catalog_reply: Option<crate::upstream::Reply>,
    catalog_slot: Arc<CatalogSlot>,
    /// Messages from the frontend half for the client (NOTICEs), written between replies.
    notices: mpsc::UnboundedReceiver<Vec<u8>>,
    /// The reply being answered is to a statement under row limits.
    watch: Option<Watch>,
    /// The client's cancel key (the gateway's), to stop a read past its row limit.
    cancel_key: (i32, i32),
}

impl Backend<'_> {
    async fn run<R, W>(
        &mut self,
        mut rbuf: BytesMut,
        r: &mut R,
        w: &mut W,
    ) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let cap = self.shared.config.max_message_size;
        let mut out = BytesMut::with_capacity(64 * 1024);
        rbuf.reserve(64 * 1024);
        let mut client_open = true;
        loop {
            self.skip_ahead();
            let complete = frame(&rbuf, cap).ok().flatten().is_some();
            if !complete {
                // Expectations are taken in as they come, not only with the server's next reply:
                // the frontend may be waiting to learn that a COPY the server skipped is over.
                tokio::select! {
                    n = r.read_buf(&mut rbuf) => {
                        if n? == 0 {
                            self.relay(w, &mut out).await?;
                            return Ok(());
                        }
                    }
                    e = self.rx.recv(), if client_open => {
                        match e {
                            Some(e) => self.take(e),
                            None => client_open = false,
                        }
                        self.drain();
                        self.skip_ahead();
                        continue;
                    }
                    Some(n) = self.notices.recv() => {
                        // Between messages: nothing of a reply is pending in `out`.
                        w.write_all(&n).await?;
                        w.flush().await?;
                        continue;
                    }
                }
            }
            self.drain();
            self.skip_ahead();
            while let Some((tag, len)) =
                frame(&rbuf, cap).map_err(|e| SessionError::Upstream(e.to_string()))?
            {
                self.handle(tag, &rbuf[..len], &mut out).await?;
                rbuf.advance(len);
                if out.len() >= RELAY_CHUNK {
                    self.relay(w, &mut out).await?;
                }
            }
            if !out.is_empty() {
                self.relay(w, &mut out).await?;
            }
        }
    }

    /// Writes a reply to the client (once the decisions it answers are durable), then appends
    /// the outcomes it carries and tells the frontend of the COPYs it started.
    async fn relay<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        self.settle().await?;
        let res = w.write_all(out).await;
        self.submit_outcomes();
        res?;
        out.clear();
        for instance in self.copies_started.drain(..) {
            self.copy.start(instance);
        }
        Ok(())
    }

    /// Moves expectations from the channel into the queue (tickets aside).
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.take(e);
        }
    }

    fn take(&mut self, e: Expect) {
        match e {
            Expect::Ticket(t, slot) => self.tickets.push((t, slot)),
            other => self.queue.push_back(other),
        }
    }

    /// While the server skips to Sync, what comes before the Sync will get no answer: it is
    /// done with now (so a frontend waiting on a skipped COPY learns that it never started).
    fn skip_ahead(&mut self) {
        if !self.skipping {
            return;
        }
        while self
            .queue
            .front()
            .is_some_and(|e| !matches!(e, Expect::Sync))
        {
            self.pop();
        }
    }

    /// Takes the expectation at the front: it has been answered (or skipped by the server).
    fn pop(&mut self) -> Option<Expect> {
        let e = self.queue.pop_front()?;
        self.progress.advance();
        self.copy.finish(&e.copies());
        if matches!(e, Expect::Query { .. } | Expect::Exec { .. }) {
            self.copies_seen = 0;
        }
        Some(e)
    }

    /// Waits until every decision received so far is durable (`before_reply`).
    async fn settle(&mut self) -> Result<(), SessionError> {
        for (ticket, slot) in self.tickets.drain(..) {
            let waited = Instant::now();
            let durable = ticket.await;
            self.shared.commit_latency.record(waited.elapsed());
            let index = durable.map_err(|e| SessionError::Log(e.to_string()))?;
            let _ = slot.set(index);
        }
        Ok(())
    }

    /// Notes the outcome of a statement; it is appended by [`Backend::submit_outcomes`] once the
    /// reply carrying it has been written.
    async fn outcome(
        &mut self,
        (decision, params): (Option<DecisionRef>, Option<Arc<PortalParams>>),
        started: Instant,
        tag: Option<String>,
        rows: Option<u64>,
        sqlstate: Option<String>,
        error: Option<String>,
    ) -> Result<(), SessionError> {
        if matches!(decision, Some(DecisionRef::Pending(_))) {
            self.settle().await?;
        }
        self.outcomes.push(Outcome {
            time: time::OffsetDateTime::now_utc(),
            decision: decision.and_then(|d| d.index()),
            tag,
            rows,
            sqlstate,
            error,
            duration_us: started.elapsed().as_micros() as u64,
            params,
        });
        Ok(())
    }

    /// Appends the noted outcomes without waiting, lazily: they share the next decision's commit.
    fn submit_outcomes(&mut self) {
        for o in self.outcomes.drain(..) {
            let (params, params_omitted) = match o.params.as_deref().map(PortalParams::render) {
                Some((values, omitted)) => (Some(values), omitted),
                None => (None, None),
            };
            let ev = OutcomeEvent {
                kind: "outcome",
                time: rfc3339_micros(o.time),
                session: &self.info.session,
                decision: o.decision,
                tag: o.tag,
                rows: o.rows,
                sqlstate: o.sqlstate,
                error: o.error,
                duration_us: o.duration_us,
                params,
                params_omitted,
            };
            drop(self.shared.log.submit_lazy(to_bytes(&ev)));
        }
    }

    /// The decision of the statement a portal runs, if known.
    fn portal_decision(&self, portal: &str) -> (Option<DecisionRef>, Option<Arc<PortalParams>>) {
        self.portals
            .get(portal)
            .map_or((None, None), |p| (p.decision.clone(), p.params.clone()))
    }

    async fn handle(
        &mut self,
        tag: u8,
        msg: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let body = &msg[5..];
        if matches!(self.queue.front(), Some(Expect::Catalog(_))) && !matches!(tag, b'S' | b'A') {
            // The reply to the gateway's own catalog query, ParameterStatus and notifications
            // aside (those are the session's).
            let reply = self.catalog_reply.get_or_insert_with(Default::default);
            if reply.take(tag, body) {
                let reply = self.catalog_reply.take().unwrap_or_default();
                self.progress.status.store(reply.status, Ordering::SeqCst);
                if let Some(Expect::Catalog(tx)) = self.pop() {
                    let _ = tx.send(reply);
                }
            }
            return Ok(());
        }
        if self.watch.is_none() {
            let returned = match self.queue.front() {
                Some(Expect::Exec { portal, .. }) => {
                    self.portals.get(portal).map_or(0, |p| p.returned)
                }
                _ => 0,
            };
            if let Some(Expect::Query { limit, .. } | Expect::Exec { limit, .. }) =
                self.queue.front_mut()
            {
                if let Some(run) = limit.take() {
                    self.watch = Some(Watch {
                        run,
                        stmt: 0,
                        rows: returned,
                        held: BytesMut::new(),
                        over: None,
                    });
                }
            }
        }
        if self.watch.is_some() && self.watched(tag, body, msg, out).await? {
            return Ok(());
        }
        match tag {
            b'Z' => {
                // While skipping to Sync the server ignored everything before it, simple Queries
                // included; otherwise this answers the first Query or Sync.
                let skipping = std::mem::take(&mut self.skipping);
                while let Some(item) = self.pop() {
                    match item {
                        Expect::Sync => break,
                        Expect::Query {
                            decision, started, ..
                        } if !skipping => {
                            let (t, r, s, e) = (
                                self.tag.take(),
                                self.rows.take(),
                                self.sqlstate.take(),
                                self.error.take(),
                            );
                            self.outcome((decision, None), started, t, r, s, e).await?;
                            // A simple Query drops the unnamed statement and portal.
                            self.stmts.remove("");
                            self.portals.remove("");
                            break;
                        }
                        Expect::DenySimple { .. } if !skipping => {
                            self.stmts.remove("");
                            self.portals.remove("");
                            break;
                        }
                        // Skipped by the server: no effect on its state.
                        _ => {}
                    }
                }
                self.tag = None;
                self.rows = None;
                self.sqlstate = None;
                self.error = None;
                // Portals live until the end of their transaction.
                if body.first() == Some(&b'I') {
                    self.portals.clear();
                }
                self.progress
                    .status
                    .store(body.first().copied().unwrap_or(b'I'), Ordering::SeqCst);
                // A statement that may change the catalog is answered: other sessions wait for
                // the frontend half to read it again (announced before the client sees the answer).
                let at = self.progress.catalog_at.load(Ordering::SeqCst);
                if at != 0 && self.progress.answered() >= at {
                    self.progress.catalog_at.store(0, Ordering::SeqCst);
                    if body.first() == Some(&b'I')
                        && !self.progress.owed.swap(true, Ordering::SeqCst)
                    {
                        self.catalog_slot.begin_reread();
                    }
                }
                out.extend_from_slice(msg);
            }
            b'C' | b'I' | b's' => {
                let t = if tag == b'C' {
                    cstr(body).map(|(t, _)| t.to_string())
                } else {
                    None
                };
                match self.queue.front() {
                    Some(Expect::Query { .. }) => {
                        if let Some(n) = t.as_deref().and_then(tag_rows) {
                            self.rows = Some(self.rows.unwrap_or(0) + n);
                        }
                        self.tag = t;
                    }
                    Some(Expect::Exec { .. }) => {
                        if let Some(Expect::Exec {
                            portal, started, ..
                        }) = self.pop()
                        {
                            let rows = t.as_deref().and_then(tag_rows);
                            let t = if tag == b's' {
                                Some("PortalSuspended".to_string())
                            } else {
                                t
                            };
                            let decision = self.portal_decision(&portal);
                            self.outcome(decision, started, t, rows, None, None).await?;
                        }
                    }
                    _ => {}
                }
                out.extend_from_slice(msg);
            }
            b'1' => {
                if let Some(Expect::Parse { .. }) = self.queue.front() {
                    if let Some(Expect::Parse {
                        name,
                        decision,
                        types,
                    }) = self.pop()
                    {
                        self.stmts.insert(name, Prepared { decision, types });
                    }
                }
                out.extend_from_slice(msg);
            }
            b'2' => {
                if let Some(Expect::Bind { .. }) = self.queue.front() {
                    if let Some(Expect::Bind {
                        portal,
                        stmt,
                        params,
                    }) = self.pop()
                    {
                        let p = self.stmts.get(&stmt);
                        let portal_state = Portal {
                            returned: 0,
                            decision: p.and_then(|p| p.decision.clone()),
                            params: params.map(|params| {
                                Arc::new(PortalParams {
                                    params,
                                    types: p.map_or_else(|| Arc::from([]), |p| p.types.clone()),
                                })
                            }),
                        };
                        self.portals.insert(portal, portal_state);
                    }
                }
                out.extend_from_slice(msg);
            }
            b'3' => {
                if let Some(Expect::Close { .. }) = self.queue.front() {
                    if let Some(Expect::Close { statement, name }) = self.pop() {
                        if statement {
                            self.stmts.remove(&name);
                        } else {
                            self.portals.remove(&name);
                        }
                    }
                }
                out.extend_from_slice(msg);
            }
            b'T' | b'n' => {
                if let Some(Expect::Describe { .. }) = self.queue.front() {
                    self.pop();
                }
                out.extend_from_slice(msg);
            }
            b't' => {
                // ParameterDescription of a described statement: the types its values bind to.
                if let Some(Expect::Describe {
                    statement: Some(name),
                }) = self.queue.front()
                {
                    if let (Some(p), Some(types)) = (
                        self.stmts.get_mut(name),
                        crate::params::described_types(body),
                    ) {
                        p.types = types.into();
                    }
                }
                out.extend_from_slice(msg);
            }
            b'G' => {
                // CopyInResponse: the server is in copy-in mode for the statement at the front.
                if let Some(front) = self.queue.front() {
                    let copies = front.copies();
                    let instance = copies.start + self.copies_seen;
                    if instance < copies.end {
                        self.copies_started.push(instance);
                    }
                    self.copies_seen += 1;
                }
                out.extend_from_slice(msg);
            }
            b'E' => self.error_response(body, msg, out).await?,
            b'S' => {
                // ParameterStatus: a setting changed. If the guard can no longer read statements
                // as the server will, the session ends before anything else is relayed (fail
                // closed; nothing after the statement that changed it has been judged: it was a
                // barrier).
                if let Some(why) = cstr(body).and_then(|(name, r)| {
                    cstr(r).and_then(|(value, _)| crate::reading::unreadable_setting(name, value))
                }) {
                    return Err(SessionError::Unreadable(why));
                }
                out.extend_from_slice(msg);
            }
            _ => out.extend_from_slice(msg),
        }
        Ok(())
    }

    /// A message of the reply to a statement under row limits ([`Watch`]); true when it has been
    /// dealt with here (held, dropped, or replaced), false to handle it as usual.
    async fn watched(
        &mut self,
        tag: u8,
        body: &[u8],
        msg: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, SessionError> {
        let query = matches!(self.queue.front(), Some(Expect::Query { .. }));
        let Some(w) = self.watch.as_mut() else {
            return Ok(false);
        };
        match tag {
            // Settings and notifications are the session's, whatever happens to the statement.
            b'S' | b'A' => Ok(false),
            b'D' => {
                if w.over.is_some() {
                    return Ok(true);
                }
                let Some(l) = w.limit().cloned() else {
                    return Ok(false);
                };
                w.rows += 1;
                if l.write {
                    if w.rows > l.max_rows {
                        // Past the limit: the tag will refuse the write; its rows are dropped.
                        w.held.clear();
                    } else if w.held.len() + msg.len() > HELD_MAX_BYTES {
                        self.exceed(&l, Over::HeldBytes, query, out).await?;
                    } else {
                        w.held.extend_from_slice(msg);
                    }
                    return Ok(true);
                }
                if w.rows <= l.max_rows {
                    return Ok(false);
                }
                let rows = w.rows;
                self.exceed(&l, Over::Rows(rows), query, out).await?;
                Ok(true)
            }
            b'C' | b's' => {
                let limit = w.limit().cloned();
                let rows = w.rows;
                let held = std::mem::take(&mut w.held);
                let past = w.over.is_some();
                w.stmt += 1;
                w.rows = 0;
                if !past {
                    if let Some(l) = limit.filter(|l| l.write) {
                        // A write fetched in parts (PortalSuspended) has no count yet: it
                        // counts as past its limit (fail closed).
                        let count = match tag {
                            // Never fewer than the rows seen: those past the limit were
                            // dropped, so a smaller count must not pass the rest on.
                            b'C' => cstr(body)
                                .and_then(|(t, _)| tag_rows(t))
                                .map_or(rows, |c| c.max(rows)),
                            _ => u64::MAX,
                        };
                        if count > l.max_rows {
                            self.exceed(&l, Over::Rows(count), query, out).await?;
                        } else {
                            out.extend_from_slice(&held);
                        }
                    }
                }
                if query {
                    return Ok(self.watch.as_ref().is_some_and(|w| w.over.is_some()));
                }
                // The Execute is answered.
                let Some(w) = self.watch.take() else {
                    return Ok(false);
                };
                match w.over {
                    None => {
                        if tag == b's' {
                            if let Some(Expect::Exec { portal, .. }) = self.queue.front() {
                                if let Some(p) = self.portals.get_mut(portal) {
                                    p.returned = rows;
                                }
                            }
                        }
                        let _ = w.run.report.send(LimitReport {
                            over: None,
                            status: 0,
                        });
                        Ok(false)
                    }
                    Some(error) => {
                        self.exec_refused(&error).await?;
                        let _ = w.run.report.send(LimitReport {
                            over: Some(error),
                            status: 0,
                        });
                        Ok(true)
                    }
                }
            }
            b'E' => {
                w.held.clear();
                if query && w.over.is_some() {
                    // The statement stopped by the gateway's cancel, or a later one of the Query,
                    // run before the transaction is undone: the gateway's error was sent.
                    return Ok(true);
                }
                if let Some(error) = w.over.clone() {
                    // An Execute stopped by the gateway's cancel: the server fails it and skips
                    // to Sync, as it would for any error; the client sees the gateway's.
                    self.skipping = true;
                    self.watch = None;
                    self.exec_refused(&error).await?;
                    out.extend_from_slice(&error);
                    return Ok(true);
                }
                if !query {
                    // The Execute failed on its own: handled as usual; nothing to report.
                    self.watch = None;
                }
                Ok(false)
            }
            b'Z' => {
                let Some(w) = self.watch.take() else {
                    return Ok(false);
                };
                // Handled as usual (the outcome), but withheld: the frontend half ends the
                // transaction it opened and then sends the client its ReadyForQuery.
                let before = out.len();
                self.watch = None;
                Box::pin(self.handle(tag, msg, out)).await?;
                out.truncate(before);
                let _ = w.run.report.send(LimitReport {
                    over: w.over,
                    status: body.first().copied().unwrap_or(b'I'),
                });
                Ok(true)
            }
            _ => Ok(w.over.is_some()),
        }
    }

    /// The Execute at the front is answered by the gateway's `error` (past its row limit): its
    /// outcome says so.
    async fn exec_refused(&mut self, error: &[u8]) -> Result<(), SessionError> {
        if let Some(Expect::Exec {
            portal, started, ..
        }) = self.pop()
        {
            let decision = self.portal_decision(&portal);
            let message = backend::parse_error(error.get(5..).unwrap_or_default()).message;
            self.outcome(
                decision,
                started,
                None,
                None,
                Some("42501".into()),
                Some(message),
            )
            .await?;
        }
        Ok(())
    }

    /// A statement past its row limit: for a simple Query, the gateway's error goes to the
    /// client now (and is its outcome) and the rest of the reply is dropped; for an Execute,
    /// the error waits for its end.
    async fn exceed(
        &mut self,
        l: &RowLimit,
        over: Over,
        query: bool,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        self.settle().await?;
        let index = match self.queue.front() {
            Some(Expect::Exec { portal, .. }) => {
                self.portal_decision(portal).0.and_then(|d| d.index())
            }
            _ => self
                .watch
                .as_ref()
                .and_then(|w| w.run.decision.as_ref())
                .and_then(DecisionRef::index),
        };
        let (error, message) = over_limit(l, over, index);
        if query {
            out.extend_from_slice(&error);
            self.sqlstate = Some("42501".into());
            self.error = Some(message);
        }
        if let Some(w) = self.watch.as_mut() {
            w.held.clear();
            w.over = Some(error);
        }
        if !l.write {
            // Stop the server computing the rest of the result. Awaited (the server has
            // signalled its backend when it closes the connection), so that a cancel arriving
            // after the statement has ended finds the backend idle, where PostgreSQL ignores
            // it, and never a statement sent later.
            let target = self.shared.cancels.lock().get(&self.cancel_key).cloned();
            if let Some(t) = target {
                t.cancel().await;
            }
        }
        Ok(())
    }

    /// An ErrorResponse: it answers the request at the front of the queue.
    async fn error_response(
        &mut self,
        body: &[u8],
        msg: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        match self.queue.front_mut() {
            Some(Expect::DenySimple { error, replaced }) => {
                if *replaced {
                    out.extend_from_slice(msg);
                } else {
                    *replaced = true;
                    out.extend_from_slice(error);
                }
            }
            Some(Expect::DenyParse { .. }) => {
                self.skipping = true;
                if let Some(Expect::DenyParse { name, error, nonce }) = self.pop() {
                    if backend::parse_error(body).message.contains(&nonce) {
                        out.extend_from_slice(&error);
                    } else {
                        out.extend_from_slice(msg);
                    }
                    if name.is_empty() {
                        self.stmts.remove("");
                    }
                }
            }
            Some(Expect::Parse { .. }) => {
                self.skipping = true;
                // Parsing the unnamed statement drops the old one first, even when it fails.
                if let Some(Expect::Parse { name, .. }) = self.pop() {
                    if name.is_empty() {
                        self.stmts.remove("");
                    }
                }
                out.extend_from_slice(msg);
            }
            Some(Expect::Bind { .. } | Expect::Describe { .. } | Expect::Close { .. }) => {
                self.skipping = true;
                self.pop();
                out.extend_from_slice(msg);
            }
            Some(Expect::Query { .. }) => {
                let f = backend::parse_error(body);
                self.sqlstate = Some(f.code);
                self.error = Some(f.message);
                out.extend_from_slice(msg);
            }
            Some(Expect::Exec { .. }) => {
                self.skipping = true;
                let f = backend::parse_error(body);
                if let Some(Expect::Exec {
                    portal, started, ..
                }) = self.pop()
                {
                    let decision = self.portal_decision(&portal);
                    self.outcome(decision, started, None, None, Some(f.code), Some(f.message))
                        .await?;
                }
                out.extend_from_slice(msg);
            }
            _ => out.extend_from_slice(msg),
        }
        Ok(())
    }
}
