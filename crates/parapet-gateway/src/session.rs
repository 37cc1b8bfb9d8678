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

use crate::config::{Durability, StatementText};
use crate::error::SessionError;
use crate::events::{rfc3339_micros, to_bytes, DecisionEvent, OutcomeEvent, SessionInfo};
use crate::protocol::{backend, cstr, frame, frontend, tag_rows};
use crate::server::Shared;
use crate::upstream::Upstream;
use bytes::{Buf, BytesMut};
use parapet_guard::{Decision, Mode, RequestContext, RuleHit, Verdict};
use parapet_log::AppendTicket;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{tcp, TcpStream};
use tokio::sync::{mpsc, watch};

/// Sent upstream instead of a refused simple-protocol statement: it fails on the server (aborting
/// an open transaction block exactly as the refused statement's error would), and the backend
/// half replaces the server's error with the gateway's.
const DENY_SQL: &str = "DO $parapet$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'parapet: statement blocked'; END$parapet$";

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

/// What the server will answer next, in order.
#[derive(Debug)]
enum Expect {
    /// A forwarded simple Query; ends at ReadyForQuery.
    Query {
        decision: Option<DecisionRef>,
        started: Instant,
    },
    /// A refused simple Query (or FunctionCall); the first ErrorResponse before ReadyForQuery is replaced.
    DenySimple { error: Vec<u8>, replaced: bool },
    /// A forwarded Execute; ends at CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse.
    Exec {
        decision: Option<DecisionRef>,
        started: Instant,
    },
    /// A refused Parse; the server's error naming `deny_stmt` is replaced. Dropped at ReadyForQuery
    /// if the server was already skipping to Sync.
    DenyExt { error: Vec<u8> },
    /// A Sync; ends at ReadyForQuery.
    Sync,
    /// `before_reply`: a decision being made durable; reply bytes wait for it.
    Ticket(AppendTicket, Arc<OnceLock<u64>>),
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
    let deny_stmt = format!("parapet_blocked_{}", info.session);
    let mut front = Frontend {
        shared: &shared,
        info,
        ctx: RequestContext {
            user: info.user.clone(),
            groups: info.groups.clone(),
            target: info.target.clone(),
            environment: info.environment.clone(),
            client_addr: Some(info.client_addr.clone()),
            application_name: info.application_name.clone(),
        },
        tx,
        stmts: HashMap::new(),
        portals: HashMap::new(),
        discard: false,
        deny_stmt: &deny_stmt,
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
        deny_stmt: &deny_stmt,
    };
    let res = tokio::select! {
        r = front.run(&mut client_r, &mut up_w) => r,
        r = back.run(leftover, &mut up_r, &mut client_w) => r,
        _ = shutdown.changed() => Err(SessionError::Shutdown),
    };
    // Whichever half ended the session, no outcome already seen is left out of the log.
    back.submit_outcomes();
    let fatal = match &res {
        Ok(()) => None,
        Err(SessionError::Protocol(m)) => Some(("08P01", format!("protocol violation: {m}"))),
        Err(SessionError::Shutdown) => Some(("57P01", "parapet: the gateway is shutting down".to_string())),
        Err(SessionError::Log(m)) => Some((
            "58030",
            format!("parapet: the audit log cannot be written ({m}); the statement's result is withheld and the session is closed"),
        )),
        Err(SessionError::Upstream(m)) => Some(("08006", format!("parapet: lost the database connection: {m}"))),
        Err(SessionError::Io(_)) => None,
    };
    if let Some((code, msg)) = fatal {
        let mut out = BytesMut::new();
        backend::error(code, &msg, None, true, &mut out);
        let _ = client_w.write_all(&out).await;
        let _ = client_w.flush().await;
    }
    let _ = client_w.shutdown().await;
    match res {
        Err(SessionError::Shutdown) => Ok(()),
        other => other,
    }
}

/// Client → server half.
struct Frontend<'a> {
    shared: &'a Shared,
    info: &'a SessionInfo,
    ctx: RequestContext,
    tx: mpsc::UnboundedSender<Expect>,
    stmts: HashMap<String, Option<DecisionRef>>,
    portals: HashMap<String, Option<DecisionRef>>,
    /// After a refused Parse: drop messages until Sync, as the server does after an error.
    discard: bool,
    deny_stmt: &'a str,
}

enum Judged {
    Forward(DecisionRef),
    Refuse(Vec<u8>),
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
        // The complete messages of one read: type, length, and the judgment made in phase 1.
        let mut steps: Vec<(u8, usize, Option<Pre>)> = Vec::new();
        loop {
            if r.read_buf(&mut rbuf).await? == 0 {
                return Ok(());
            }
            // Phase 1: frame every complete message of this read and, for each statement, decide
            // and submit its decision event, without waiting. A client that pipelines several
            // statements in one write thus waits for one log commit, not one per statement.
            steps.clear();
            let mut pos = 0;
            let mut discard = self.discard;
            while let Some((tag, len)) =
                frame(&rbuf[pos..], cap).map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                let msg = &rbuf[pos..pos + len];
                let pre = if discard {
                    // Skipped like the server skips after an error: not judged, not logged.
                    if tag == b'S' {
                        discard = false;
                    }
                    None
                } else {
                    let pre = self.prejudge(tag, msg).await?;
                    if tag == b'P' && pre.as_ref().is_some_and(|p| !p.allowed) {
                        discard = true;
                    }
                    pre
                };
                steps.push((tag, len, pre));
                pos += len;
                if tag == b'X' {
                    break;
                }
            }
            // Phase 2: wait for the decisions to be durable (before_forward), then forward in
            // order — the same bytes and expectations as handling each message on its own.
            let mut off = 0;
            for (tag, len, pre) in steps.drain(..) {
                let judged = match pre {
                    Some(p) => Some(self.settle_pre(p).await?),
                    None => None,
                };
                let terminate = self
                    .handle(tag, &rbuf[off..off + len], judged, &mut out)
                    .await?;
                off += len;
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

    fn expect(&self, e: Expect) -> Result<(), SessionError> {
        self.tx
            .send(e)
            .map_err(|_| SessionError::Upstream("session relay stopped".into()))
    }

    /// Handles one client message; returns true on Terminate. `judged` is the decision phase 1
    /// made for a Query, Parse or FunctionCall (when absent, the statement is judged here).
    async fn handle(
        &mut self,
        tag: u8,
        msg: &[u8],
        judged: Option<Judged>,
        out: &mut BytesMut,
    ) -> Result<bool, SessionError> {
        let body = &msg[5..];
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        if self.discard {
            match tag {
                b'S' => {
                    self.discard = false;
                    self.expect(Expect::Sync)?;
                    out.extend_from_slice(msg);
                }
                b'X' => {
                    out.extend_from_slice(msg);
                    return Ok(true);
                }
                _ => {}
            }
            return Ok(false);
        }
        match tag {
            b'Q' => {
                let judged = match judged {
                    Some(j) => j,
                    None => {
                        let (sql, _) = cstr(body).ok_or_else(|| bad("Query"))?;
                        let pre = self.judge_sql(sql, "simple", None).await?;
                        self.settle_pre(pre).await?
                    }
                };
                match judged {
                    Judged::Forward(d) => {
                        self.expect(Expect::Query {
                            decision: Some(d),
                            started: Instant::now(),
                        })?;
                        out.extend_from_slice(msg);
                    }
                    Judged::Refuse(error) => {
                        self.expect(Expect::DenySimple {
                            error,
                            replaced: false,
                        })?;
                        frontend::query(DENY_SQL, out);
                    }
                }
            }
            b'P' => {
                let (name, rest) = cstr(body).ok_or_else(|| bad("Parse"))?;
                let judged = match judged {
                    Some(j) => j,
                    None => {
                        let (sql, _) = cstr(rest).ok_or_else(|| bad("Parse"))?;
                        let pre = self.judge_sql(sql, "extended", Some(name)).await?;
                        self.settle_pre(pre).await?
                    }
                };
                match judged {
                    Judged::Forward(d) => {
                        if let Some(slot) = self.stmts.get_mut(name) {
                            *slot = Some(d);
                        } else {
                            self.stmts.insert(name.to_string(), Some(d));
                        }
                        out.extend_from_slice(msg);
                    }
                    Judged::Refuse(error) => {
                        self.expect(Expect::DenyExt { error })?;
                        frontend::bind_missing(self.deny_stmt, out);
                        self.discard = true;
                    }
                }
            }
            b'B' => {
                let (portal, rest) = cstr(body).ok_or_else(|| bad("Bind"))?;
                let (stmt, _) = cstr(rest).ok_or_else(|| bad("Bind"))?;
                let d = self.stmts.get(stmt).cloned().flatten();
                if let Some(slot) = self.portals.get_mut(portal) {
                    *slot = d;
                } else {
                    self.portals.insert(portal.to_string(), d);
                }
                out.extend_from_slice(msg);
            }
            b'E' => {
                let (portal, _) = cstr(body).ok_or_else(|| bad("Execute"))?;
                let decision = self.portals.get(portal).cloned().flatten();
                self.expect(Expect::Exec {
                    decision,
                    started: Instant::now(),
                })?;
                out.extend_from_slice(msg);
            }
            b'S' => {
                self.expect(Expect::Sync)?;
                out.extend_from_slice(msg);
            }
            b'C' => {
                if let Some((&kind, rest)) = body.split_first() {
                    if let Some((name, _)) = cstr(rest) {
                        if kind == b'S' && !name.is_empty() {
                            self.stmts.remove(name);
                        } else if kind == b'P' && !name.is_empty() {
                            self.portals.remove(name);
                        }
                    }
                }
                out.extend_from_slice(msg);
            }
            b'X' => {
                out.extend_from_slice(msg);
                return Ok(true);
            }
            b'F' => {
                let error = match judged {
                    Some(Judged::Refuse(e)) => e,
                    // Never allowed; `Forward` cannot come back for a FunctionCall.
                    Some(Judged::Forward(_)) | None => {
                        let pre = self.judge_function();
                        match self.settle_pre(pre).await? {
                            Judged::Refuse(e) => e,
                            Judged::Forward(_) => log_failure("function call not refused"),
                        }
                    }
                };
                self.expect(Expect::DenySimple {
                    error,
                    replaced: false,
                })?;
                frontend::query(DENY_SQL, out);
            }
            b'D' | b'H' | b'd' | b'c' | b'f' => out.extend_from_slice(msg),
            other => {
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
    async fn prejudge(&self, tag: u8, msg: &[u8]) -> Result<Option<Pre>, SessionError> {
        let body = &msg[5..];
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        match tag {
            b'Q' => {
                let (sql, _) = cstr(body).ok_or_else(|| bad("Query"))?;
                self.judge_sql(sql, "simple", None).await.map(Some)
            }
            b'P' => {
                let (name, rest) = cstr(body).ok_or_else(|| bad("Parse"))?;
                let (sql, _) = cstr(rest).ok_or_else(|| bad("Parse"))?;
                self.judge_sql(sql, "extended", Some(name)).await.map(Some)
            }
            b'F' => Ok(Some(self.judge_function())),
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
        let text = match self.shared.config.statement_text {
            StatementText::Full => Some(sql),
            StatementText::Normalized => None,
        };
        let ev = DecisionEvent::new(self.info, protocol, text, &d, stmt);
        let ticket = self.shared.log.submit(to_bytes(&ev));
        let allowed = matches!(d.verdict, Verdict::Allow | Verdict::Monitor);
        if allowed && self.shared.config.durability == Durability::BeforeReply {
            // Forwarded at once; the backend half holds the reply until the ticket resolves.
            let slot = Arc::new(OnceLock::new());
            self.expect(Expect::Ticket(ticket, slot.clone()))?;
            return Ok(Pre {
                allowed,
                wait: PreWait::Ready(DecisionRef::Pending(slot)),
                decision: None,
            });
        }
        Ok(Pre {
            allowed,
            wait: PreWait::Ticket(ticket),
            decision: (!allowed).then_some(d),
        })
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
        };
        let ev = DecisionEvent::new(self.info, "function", None, &d, None);
        Pre {
            allowed: false,
            wait: PreWait::Ticket(self.shared.log.submit(to_bytes(&ev))),
            decision: Some(d),
        }
    }

    /// Phase 2: waits until the decision is durable (unless `before_reply` lets an allowed
    /// statement go at once) and says whether to forward it. A decision that cannot be logged
    /// refuses its statement (fail closed).
    async fn settle_pre(&self, pre: Pre) -> Result<Judged, SessionError> {
        let ticket = match pre.wait {
            PreWait::Ready(d) => return Ok(Judged::Forward(d)),
            PreWait::Ticket(t) => t,
        };
        Ok(match (ticket.await, pre.decision) {
            (Err(e), _) => Judged::Refuse(log_failure(&e.to_string())),
            (Ok(index), Some(d)) => Judged::Refuse(refusal(&d, index)),
            (Ok(index), None) => Judged::Forward(DecisionRef::Index(index)),
        })
    }
}

/// A statement judged in phase 1 whose decision event may not be durable yet.
struct Pre {
    /// Allow or Monitor (the statement goes to the server once its decision is durable).
    allowed: bool,
    wait: PreWait,
    /// The decision of a refused statement, to build its ErrorResponse.
    decision: Option<Decision>,
}

enum PreWait {
    /// Not waited for here (`before_reply`, allowed).
    Ready(DecisionRef),
    /// Resolves when the decision event is durable.
    Ticket(AppendTicket),
}

/// The ErrorResponse for a refused statement: `parapet: blocked by <rule id>: <reason>`.
fn refusal(d: &Decision, index: u64) -> Vec<u8> {
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
    let mut out = BytesMut::new();
    backend::error(
        "42501",
        &format!("parapet: blocked by {id}: {reason}"),
        Some(&format!("parapet audit entry {index}")),
        false,
        &mut out,
    );
    out.to_vec()
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
    deny_stmt: &'a str,
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
        loop {
            let complete = frame(&rbuf, cap).ok().flatten().is_some();
            if !complete && r.read_buf(&mut rbuf).await? == 0 {
                self.settle().await?;
                let res = w.write_all(&out).await;
                self.submit_outcomes();
                res?;
                return Ok(());
            }
            self.drain();
            while let Some((tag, len)) =
                frame(&rbuf, cap).map_err(|e| SessionError::Upstream(e.to_string()))?
            {
                self.handle(tag, &rbuf[..len], &mut out).await?;
                rbuf.advance(len);
                if out.len() >= RELAY_CHUNK {
                    self.settle().await?;
                    let res = w.write_all(&out).await;
                    self.submit_outcomes();
                    res?;
                    out.clear();
                }
            }
            if !out.is_empty() {
                self.settle().await?;
                let res = w.write_all(&out).await;
                self.submit_outcomes();
                res?;
                out.clear();
            }
        }
    }

    /// Moves expectations from the channel into the queue (tickets aside).
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            match e {
                Expect::Ticket(t, slot) => self.tickets.push((t, slot)),
                other => self.queue.push_back(other),
            }
        }
    }

    /// Waits until every decision received so far is durable (`before_reply`).
    async fn settle(&mut self) -> Result<(), SessionError> {
        for (ticket, slot) in self.tickets.drain(..) {
            let index = ticket.await.map_err(|e| SessionError::Log(e.to_string()))?;
            let _ = slot.set(index);
        }
        Ok(())
    }

    /// Notes the outcome of a statement; it is appended by [`Backend::submit_outcomes`] once the
    /// reply carrying it has been written.
    async fn outcome(
        &mut self,
        decision: Option<DecisionRef>,
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
        });
        Ok(())
    }

    /// Appends the noted outcomes without waiting, lazily: they share the next decision's commit.
    fn submit_outcomes(&mut self) {
        for o in self.outcomes.drain(..) {
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
            };
            drop(self.shared.log.submit_lazy(to_bytes(&ev)));
        }
    }

    async fn handle(
        &mut self,
        tag: u8,
        msg: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let body = &msg[5..];
        match tag {
            b'Z' => {
                while let Some(item) = self.queue.pop_front() {
                    match item {
                        Expect::Query { decision, started } => {
                            let (t, r, s, e) = (
                                self.tag.take(),
                                self.rows.take(),
                                self.sqlstate.take(),
                                self.error.take(),
                            );
                            self.outcome(decision, started, t, r, s, e).await?;
                            break;
                        }
                        Expect::DenySimple { .. } | Expect::Sync => break,
                        _ => {} // Skipped by the server after an error.
                    }
                }
                self.tag = None;
                self.rows = None;
                self.sqlstate = None;
                self.error = None;
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
                        if let Some(Expect::Exec { decision, started }) = self.queue.pop_front() {
                            let rows = t.as_deref().and_then(tag_rows);
                            let t = if tag == b's' {
                                Some("PortalSuspended".to_string())
                            } else {
                                t
                            };
                            self.outcome(decision, started, t, rows, None, None).await?;
                        }
                    }
                    _ => {}
                }
                out.extend_from_slice(msg);
            }
            b'E' => match self.queue.front_mut() {
                Some(Expect::DenySimple { error, replaced }) if !*replaced => {
                    *replaced = true;
                    out.extend_from_slice(error);
                }
                Some(Expect::DenyExt { .. }) => {
                    let f = backend::parse_error(body);
                    if f.message.contains(self.deny_stmt) {
                        if let Some(Expect::DenyExt { error }) = self.queue.pop_front() {
                            out.extend_from_slice(&error);
                        }
                    } else {
                        out.extend_from_slice(msg);
                    }
                }
                Some(Expect::Query { .. }) => {
                    let f = backend::parse_error(body);
                    self.sqlstate = Some(f.code);
                    self.error = Some(f.message);
                    out.extend_from_slice(msg);
                }
                Some(Expect::Exec { .. }) => {
                    let f = backend::parse_error(body);
                    if let Some(Expect::Exec { decision, started }) = self.queue.pop_front() {
                        self.outcome(decision, started, None, None, Some(f.code), Some(f.message))
                            .await?;
                    }
                    out.extend_from_slice(msg);
                }
                _ => out.extend_from_slice(msg),
            },
            _ => out.extend_from_slice(msg),
        }
        Ok(())
    }
}
