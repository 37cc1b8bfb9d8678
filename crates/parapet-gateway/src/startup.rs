//! Connection start: SSLRequest/TLS, GSSENCRequest, CancelRequest, StartupMessage, client SCRAM
//! authentication, target selection and the upstream login; then hands over to the proxy.

use crate::authlog::{AuthFailure, FIELD_LIMIT};
use crate::error::SessionError;
use crate::events::{json_prefix, now_rfc3339, SessionInfo};
use crate::protocol::{self, backend, cstr};
use crate::scram::{ServerExchange, Verifier};
use crate::session;
use crate::shared::{Shared, UserSlot};
use crate::upstream::Upstream;
use bytes::{BufMut, BytesMut};
use rand::Rng;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Runs one step of logging in, failing when the client is past `[listen] auth_timeout_seconds`.
async fn by<T, E>(
    deadline: Instant,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, SessionError>
where
    SessionError: From<E>,
{
    match tokio::time::timeout_at(deadline, step).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SessionError::AuthTimeout),
    }
}

/// Reads one untyped startup-phase packet (`int32 len`, `int32 code`, body). `None` on clean EOF.
async fn read_startup<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Option<(i32, Vec<u8>)>, SessionError> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    if len < 8 || len as usize > protocol::MAX_STARTUP_PACKET {
        return Err(SessionError::Protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    body.drain(..4);
    Ok(Some((code, body)))
}

/// Reads one typed message during authentication (small: capped at 64 KiB). `None` on EOF.
async fn read_typed<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Option<(u8, Vec<u8>)>, SessionError> {
    let mut head = [0u8; 5];
    match s.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if !(4..=65_536).contains(&len) {
        return Err(SessionError::Protocol(format!(
            "invalid message length {len} during authentication"
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok(Some((head[0], body)))
}

async fn send_fatal<S: AsyncWrite + Unpin>(
    s: &mut S,
    code: &str,
    msg: &str,
) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    backend::error(code, msg, None, true, &mut out);
    s.write_all(&out).await?;
    s.flush().await?;
    Ok(())
}

/// Handles one accepted TCP connection from start to end.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + shared.config.auth_timeout;
    let result = async {
        loop {
            let Some((code, body)) = by(deadline, read_startup(&mut tcp)).await? else {
                return Ok(());
            };
            match code {
                protocol::SSL_REQUEST => match &shared.tls {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await?;
                        let mut tls = by(deadline, acceptor.accept(tcp)).await?;
                        let Some((code, body)) = by(deadline, read_startup(&mut tls)).await? else {
                            return Ok(());
                        };
                        return startup(&shared, tls, peer, code, body, true, deadline, shutdown)
                            .await;
                    }
                    None => tcp.write_all(b"N").await?,
                },
                protocol::GSSENC_REQUEST => tcp.write_all(b"N").await?,
                _ => {
                    return startup(&shared, tcp, peer, code, body, false, deadline, shutdown).await
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => {}
        Err(SessionError::Io(e)) => tracing::debug!(%peer, "connection ended: {e}"),
        Err(SessionError::AuthTimeout) => {
            tracing::info!(%peer, "connection closed: not logged in within [listen] auth_timeout_seconds")
        }
        Err(e) => tracing::warn!(%peer, "connection closed: {e}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn startup<S>(
    shared: &Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    code: i32,
    body: Vec<u8>,
    tls: bool,
    deadline: Instant,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError>
where
    S: session::ClientStream,
{
    if code == protocol::CANCEL_REQUEST {
        if body.len() >= 8 {
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            shared.cancel(pid, secret).await;
        }
        return Ok(());
    }
    let Some(start) = negotiate(&mut stream, code, &body).await? else {
        return Ok(());
    };
    let Some((user_cfg, mut out)) =
        authenticate(shared, &mut stream, peer, tls, deadline, &start).await?
    else {
        return Ok(());
    };
    // A locked user is refused once authenticated (the lock is not told to strangers). In a
    // fleet the lock table in PostgreSQL decides; when it cannot be asked, the login is refused
    // (58030, as when the audit log cannot be written: the same fail-closed answer for the
    // fleet's PostgreSQL being unreachable).
    let locked = match shared.state.lock_of(&start.user).await {
        Ok(l) => l.map(|l| l.reason),
        Err(e) => {
            stream.write_all(&out).await?;
            tracing::error!(user = %start.user, "login refused: cannot check the user's lock: {e}");
            shared.event(
                json!({"type":"login_refused","time":now_rfc3339(),"user":start.user,
                "client_addr":peer.ip().to_string(),"target":start.database,
                "reason":format!("cannot check whether the user is locked: {e}")}),
            );
            send_fatal(
                &mut stream,
                "58030",
                &format!(
                    "parapet: cannot check whether user {} is locked, so the login is refused: {e}; try again once the fleet's PostgreSQL is reachable",
                    start.user
                ),
            )
            .await?;
            return Ok(());
        }
    };
    if let Some(reason) = locked {
        stream.write_all(&out).await?;
        shared.event(json!({"type":"login_refused","time":now_rfc3339(),"user":start.user,
            "client_addr":peer.ip().to_string(),"target":start.database,"reason":format!("user locked: {reason}")}));
        send_fatal(
            &mut stream,
            "28000",
            &format!("parapet: user {} is locked: {reason}", start.user),
        )
        .await?;
        return Ok(());
    }
    let (key, session_id) = {
        let mut rng = rand::thread_rng();
        let key: (i32, i32) = (rng.gen_range(1..i32::MAX), rng.gen());
        (key, format!("{:016x}", rng.gen::<u64>()))
    };
    let client_addr = peer.ip().to_string();
    // Startup parameters are settings on the server: judged before they reach it.
    if let Some(t) = shared.targets.get(&start.database) {
        let info = SessionInfo {
            session: session_id.clone(),
            user: start.user.clone(),
            groups: user_cfg.groups.clone(),
            target: t.name.clone(),
            environment: t.environment.clone(),
            client_addr: client_addr.clone(),
            application_name: start.application_name.clone(),
        };
        if let Some(refusal) = judge_parameters(shared, &info, &start.params).await {
            stream.write_all(&out).await?;
            stream.write_all(&refusal).await?;
            stream.flush().await?;
            return Ok(());
        }
    }
    let Some((target, user_slot, mut upstream)) =
        connect_target(shared, &mut stream, deadline, &start, &mut out).await?
    else {
        return Ok(());
    };
    // The server's own defaults (a role's or database's settings) count as much as the client's.
    if let Some(why) = upstream_unreadable(&upstream.parameter_status) {
        stream.write_all(&out).await?;
        send_fatal(&mut stream, "0A000", &why).await?;
        return Ok(());
    }
    // A superuser upstream turns any gap in the guardrails into a takeover: say so, once.
    if reported(&upstream.parameter_status).any(|(n, v)| n == "is_superuser" && v == "on")
        && shared.superuser_warned.lock().insert(target.name.clone())
    {
        tracing::warn!(
            target = %target.name,
            "the upstream role of target {:?} is a superuser: whatever gets past the guardrails can take over the server; use a role without SUPERUSER (docs/config.md, \"The upstream role\")",
            target.name
        );
    }
    // The target's catalog, before the client may send anything to judge.
    let slot = shared
        .catalogs
        .get(&target.name)
        .cloned()
        .unwrap_or_default();
    let catalog = match slot
        .for_login(
            &mut upstream.stream,
            &mut upstream.leftover,
            shared.config.max_message_size,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            stream.write_all(&out).await?;
            let msg = format!(
                "parapet: cannot read the catalog of target \"{}\" ({e}); the gateway judges no statement without it. Check that the upstream role can read pg_catalog",
                target.name
            );
            send_fatal(&mut stream, "08006", &msg).await?;
            return Ok(());
        }
    };
    let Startup {
        user,
        application_name,
        ..
    } = start;
    backend::authentication(0, b"", &mut out);
    out.extend_from_slice(&upstream.parameter_status);
    backend::backend_key_data(key.0, key.1, &mut out);
    backend::ready_for_query(b'I', &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let info = SessionInfo {
        session: session_id,
        user: user.clone(),
        groups: user_cfg.groups.clone(),
        target: target.name.clone(),
        environment: target.environment.clone(),
        client_addr,
        application_name,
    };
    shared.event(json!({"type":"session_start","time":now_rfc3339(),"session":info.session,"user":info.user,
        "groups":info.groups,"target":info.target,"environment":info.environment,"client_addr":info.client_addr,
        "client_port":peer.port(),"application_name":info.application_name,"tls":tls}));
    shared.register_cancel(key, &target.upstream, upstream.key);
    let stats = std::sync::Arc::new(crate::control::SessionStats::default());
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(None);
    shared.live.lock().insert(
        info.session.clone(),
        crate::control::LiveSession {
            summary: crate::control::SessionSummary {
                id: info.session.clone(),
                user: info.user.clone(),
                groups: info.groups.clone(),
                client_addr: info.client_addr.clone(),
                application_name: info.application_name.clone(),
                target: info.target.clone(),
                started: now_rfc3339(),
                statements: 0,
                last_statement: None,
            },
            stats: stats.clone(),
            kill: kill_tx,
            cancel_key: key,
        },
    );
    // Locked between the check above and now: it ends at once.
    if let Some(reason) = shared
        .state
        .known_locks()
        .remove(&info.user)
        .map(|l| l.reason)
    {
        if let Some(s) = shared.live.lock().get(&info.session) {
            let _ = s.kill.send(Some(format!(
                "parapet: terminating connection: user {} is locked: {reason}",
                info.user
            )));
        }
    }
    let started = std::time::Instant::now();
    let res = session::run(
        shared.clone(),
        &info,
        stream,
        upstream,
        (slot, catalog),
        (stats, kill_rx, key),
        shutdown,
    )
    .await;
    shared.live.lock().remove(&info.session);
    shared.unregister_cancel(key);
    drop(user_slot);
    let mut end = json!({"type":"session_end","time":now_rfc3339(),"session":info.session,
        "duration_ms":started.elapsed().as_millis() as u64});
    if let Err(e) = &res {
        end["error"] = json!(e.to_string());
    }
    shared.event(end);
    res
}

/// What the client asked for in its StartupMessage.
struct Startup {
    /// Every parameter, in order (forwarded upstream but for user, database and replication).
    params: Vec<(String, String)>,
    user: String,
    /// The target's name (the database name; the user name when none is given).
    database: String,
    application_name: String,
}

/// Negotiation: the protocol version and the startup parameters, with NegotiateProtocolVersion
/// for a newer minor version or protocol options. `None` when the client was answered already.
async fn negotiate<S>(
    stream: &mut S,
    code: i32,
    body: &[u8],
) -> Result<Option<Startup>, SessionError>
where
    S: AsyncWrite + Unpin,
{
    if code >> 16 != 3 {
        send_fatal(
            stream,
            "08P01",
            &format!(
                "unsupported frontend protocol {}.{}: the gateway speaks 3.0",
                code >> 16,
                code & 0xffff
            ),
        )
        .await?;
        return Err(SessionError::Protocol(format!(
            "unsupported protocol version {code:#x}"
        )));
    }
    // Startup parameters.
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rest = body;
    while let Some((k, r)) = cstr(rest) {
        if k.is_empty() {
            break;
        }
        let Some((v, r2)) = cstr(r) else { break };
        params.push((k.to_string(), v.to_string()));
        rest = r2;
    }
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if code & 0xffff != 0 || !unknown.is_empty() {
        // NegotiateProtocolVersion: we speak 3.0 and no protocol options.
        let mut out = BytesMut::new();
        out.put_u8(b'v');
        let len_at = out.len();
        out.put_i32(0);
        out.put_i32(protocol::PROTOCOL_V3);
        out.put_i32(unknown.len() as i32);
        for u in &unknown {
            out.put_slice(u.as_bytes());
            out.put_u8(0);
        }
        let len = (out.len() - len_at) as i32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        stream.write_all(&out).await?;
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
    };
    let Some(user) = get("user") else {
        send_fatal(
            stream,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await?;
        return Ok(None);
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let application_name = get("application_name").unwrap_or_default();

    Ok(Some(Startup {
        params,
        user,
        database,
        application_name,
    }))
}

/// Authentication: TLS if required, then SCRAM-SHA-256 (SCRAM-SHA-256-PLUS over TLS) against the
/// user's verifier. On success, the user and the reply so far (AuthenticationSASLFinal), which is
/// sent with AuthenticationOk once the target is reached. `None` when the login was refused (the
/// client was told, the failure recorded).
async fn authenticate<'a, S>(
    shared: &'a Arc<Shared>,
    stream: &mut S,
    peer: SocketAddr,
    tls: bool,
    deadline: Instant,
    start: &Startup,
) -> Result<Option<(&'a crate::config::UserConfig, BytesMut)>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Startup {
        user,
        database,
        application_name,
        ..
    } = start;
    // Truncated, and counted rather than recorded past a rate (see `authlog`).
    let fail = |reason: String| {
        shared.auth_failures.record(
            &shared.log,
            &AuthFailure {
                user,
                client_addr: peer.ip(),
                target: database,
                tls,
                application_name,
                reason: &reason,
            },
        );
    };

    if shared.config.require_tls && !tls {
        fail("TLS required".into());
        send_fatal(
            stream,
            "28000",
            "parapet: this gateway requires TLS (connect with sslmode=require)",
        )
        .await?;
        return Ok(None);
    }

    // SCRAM-SHA-256.
    let known = shared.users.get(user.as_str());
    let verifier = known
        .map(|(_, v)| v.clone())
        .unwrap_or_else(Verifier::impossible);
    // Channel binding is offered over TLS when the certificate allows it.
    let binding = if tls {
        shared.tls_binding.as_deref()
    } else {
        None
    };
    let mut out = BytesMut::new();
    backend::authentication(10, crate::scram::mechanisms(binding.is_some()), &mut out);
    stream.write_all(&out).await?;
    out.clear();
    let Some((tag, msg)) = by(deadline, read_typed(stream)).await? else {
        return Ok(None); // Client went away (e.g. psql asking for the password).
    };
    if tag != b'p' {
        return Err(SessionError::Protocol(format!(
            "expected SASLInitialResponse, got {:?}",
            tag as char
        )));
    }
    let Some((mech, r)) = cstr(&msg) else {
        return Err(SessionError::Protocol(
            "malformed SASLInitialResponse".into(),
        ));
    };
    let offered = mech == "SCRAM-SHA-256" || (mech == "SCRAM-SHA-256-PLUS" && binding.is_some());
    if !offered || r.len() < 4 {
        send_fatal(
            stream,
            "28000",
            "parapet: only SCRAM-SHA-256 authentication is supported",
        )
        .await?;
        fail(format!("unsupported mechanism {mech:?}"));
        return Ok(None);
    }
    let (exchange, server_first) = match ServerExchange::start(verifier, mech, binding, &r[4..]) {
        Ok(x) => x,
        Err(e) => {
            send_fatal(stream, "08P01", &format!("invalid SCRAM exchange: {e}")).await?;
            fail(e);
            return Ok(None);
        }
    };
    backend::authentication(11, server_first.as_bytes(), &mut out);
    stream.write_all(&out).await?;
    out.clear();
    let Some((tag, msg)) = by(deadline, read_typed(stream)).await? else {
        return Ok(None);
    };
    if tag != b'p' {
        return Err(SessionError::Protocol(format!(
            "expected SASLResponse, got {:?}",
            tag as char
        )));
    }
    let server_final = match exchange.finish(&msg) {
        Ok(f) if known.is_some() => f,
        res => {
            let reason = match (res, known) {
                (_, None) => "unknown user".to_string(),
                (Err(e), _) => e,
                (Ok(_), _) => "password authentication failed".to_string(),
            };
            tracing::info!(
                %peer,
                user = json_prefix(user, FIELD_LIMIT),
                "authentication failed: {}",
                json_prefix(&reason, FIELD_LIMIT)
            );
            fail(reason);
            send_fatal(
                stream,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await?;
            return Ok(None);
        }
    };
    backend::authentication(12, server_final.as_bytes(), &mut out);

    let (user_cfg, _) = known.ok_or_else(|| SessionError::Protocol("user vanished".into()))?;
    Ok(Some((user_cfg, out)))
}

/// Connecting to the target: the target named, a session slot of the user's, and the upstream
/// login with the gateway's own credentials. `None` when refused (the client was told).
async fn connect_target<'a, S>(
    shared: &'a Arc<Shared>,
    stream: &mut S,
    deadline: Instant,
    start: &Startup,
    out: &mut BytesMut,
) -> Result<Option<(&'a crate::config::TargetConfig, UserSlot, Upstream)>, SessionError>
where
    S: AsyncWrite + Unpin,
{
    let Startup {
        params,
        user,
        database,
        ..
    } = start;
    // Target.
    let Some(target) = shared.targets.get(database) else {
        let names: Vec<&str> = shared
            .config
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        stream.write_all(out).await?;
        send_fatal(
            stream,
            "3D000",
            &format!(
                "parapet: no target named \"{database}\" (known targets: {})",
                names.join(", ")
            ),
        )
        .await?;
        return Ok(None);
    };
    let Some(user_slot) = shared.user_slot(user) else {
        stream.write_all(out).await?;
        send_fatal(
            stream,
            "53300",
            &format!(
                "too many connections for user \"{user}\" (parapet: [listen] max_connections_per_user is {})",
                shared.config.max_connections_per_user
            ),
        )
        .await?;
        return Ok(None);
    };
    let upstream_tls = shared
        .upstream_tls
        .get(&target.name)
        .and_then(Option::as_ref);
    let connecting = crate::upstream::connect(
        &target.upstream,
        upstream_tls,
        params,
        shared.config.max_message_size,
    );
    let upstream = match by(deadline, async { Ok::<_, SessionError>(connecting.await) }).await? {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(target = %target.name, "upstream login failed: {e}");
            stream.write_all(out).await?;
            send_fatal(
                stream,
                "08006",
                &format!("parapet: cannot reach target \"{}\": {e}", target.name),
            )
            .await?;
            return Ok(None);
        }
    };
    Ok(Some((target, user_slot, upstream)))
}

/// The startup parameters the server applies as settings, as (name, value): every forwarded
/// parameter but the protocol's own, and each setting in `options` (in the forms the server
/// accepts: `-c name=value`, `-cname=value`, `--name=value`, split on white space with
/// backslash escapes). Names are folded to lower case and `-` to `_`, as the server does. `Err`
/// names an `options` switch that is not a setting (the server takes others too, such as `-d`
/// or `-B`; none is let through unjudged).
fn parameter_settings(params: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let set = |name: &str, value: &str| {
        (
            name.to_ascii_lowercase().replace('-', "_"),
            value.to_string(),
        )
    };
    let mut sets = Vec::new();
    for (k, v) in params {
        if matches!(k.as_str(), "user" | "database" | "replication") || k.starts_with("_pq_.") {
            continue;
        }
        if k != "options" {
            sets.push(set(k, v));
            continue;
        }
        // pg_split_opts: white space separates, a backslash takes the next character as is.
        let mut words = Vec::new();
        let mut word = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => word.extend(chars.next()),
                c if c.is_whitespace() => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        let mut words = words.into_iter();
        while let Some(w) = words.next() {
            let setting = if w == "-c" {
                words.next().ok_or_else(|| w.clone())?
            } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
                rest.to_string()
            } else {
                return Err(w);
            };
            let (name, value) = setting.split_once('=').ok_or_else(|| setting.clone())?;
            sets.push(set(name, value));
        }
    }
    Ok(sets)
}

/// Judges the startup parameters as the `SET`s they are and logs the decision (durably) before
/// the upstream login, as for any statement. Returns the FATAL ErrorResponse that refuses the
/// login when the policies refuse them, when a setting would make the server read statements
/// otherwise than the guard does (a client encoding other than UTF-8 or SQL_ASCII,
/// `standard_conforming_strings` off), when `options` holds a switch that is not a setting, or
/// when the decision cannot be logged.
async fn judge_parameters(
    shared: &Shared,
    info: &SessionInfo,
    params: &[(String, String)],
) -> Option<Vec<u8>> {
    let fatal = |code: &str, msg: &str, detail: Option<&str>| {
        let mut out = BytesMut::new();
        backend::error(code, msg, detail, true, &mut out);
        Some(out.to_vec())
    };
    let settings = match parameter_settings(params) {
        Ok(s) => s,
        Err(word) => {
            return fatal(
                "42501",
                &format!(
                    "parapet: startup option {:?} is not a setting the gateway can judge; pass settings as -c name=value",
                    json_prefix(&word, FIELD_LIMIT)
                ),
                None,
            )
        }
    };
    if settings.is_empty() {
        return None;
    }
    if let Some(why) = settings
        .iter()
        .find_map(|(name, value)| crate::reading::unreadable_setting(name, value))
    {
        return fatal("0A000", &why, None);
    }
    // As SQL: `SET "name" = 'value'`, each part of a dotted name quoted.
    let sql = settings
        .iter()
        .map(|(name, value)| {
            let name: Vec<String> = name
                .split('.')
                .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
                .collect();
            format!("SET {} = '{}'", name.join("."), value.replace('\'', "''"))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let d = crate::judge::decide(&shared.guard, &sql, &info.request_context()).await;
    let text = shared.recorded_text(&sql);
    let ev = crate::events::DecisionEvent::new(info, "startup", text, &d, None);
    let index = match crate::events::submit_decision(&shared.log, ev).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("audit log write failed, refusing a login: {e}");
            return fatal(
                "58030",
                &format!("parapet: login refused: the audit log cannot be written ({e})"),
                None,
            );
        }
    };
    if matches!(
        d.verdict,
        parapet_guard::Verdict::Allow | parapet_guard::Verdict::Monitor
    ) {
        return None;
    }
    fatal(
        "42501",
        &format!(
            "parapet: startup parameters refused: {}",
            crate::session::blocked_by(&d)
        ),
        Some(&format!("parapet audit entry {index}")),
    )
}

/// The first setting among the server's ParameterStatus messages (as received at login) that
/// the guard cannot read statements under (see [`crate::reading::unreadable_setting`]).
fn upstream_unreadable(parameter_status: &[u8]) -> Option<String> {
    reported(parameter_status)
        .find_map(|(name, value)| crate::reading::unreadable_setting(name, value))
}

/// The (name, value) pairs of the server's ParameterStatus messages.
fn reported(parameter_status: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = parameter_status;
    std::iter::from_fn(move || loop {
        let Ok(Some((tag, len))) = protocol::frame(rest, rest.len().max(5)) else {
            return None;
        };
        let body = &rest[5..len];
        rest = &rest[len..];
        if tag == b'S' {
            if let Some((name, (value, _))) = cstr(body).and_then(|(n, r)| Some((n, cstr(r)?))) {
                return Some((name, value));
            }
        }
    })
}
