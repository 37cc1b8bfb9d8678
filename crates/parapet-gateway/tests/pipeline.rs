//! Pipelined clients: several statements in ONE write reach the gateway in one read, are judged
//! together (one wait for all their decisions) and must still be forwarded, refused and answered
//! exactly as if they had come one by one. Runs a real PostgreSQL (initdb in a temp dir on a free
//! port) and the gateway in-process; the client speaks the wire protocol on a raw socket so the
//! test controls what goes into each write.

use bytes::{BufMut, BytesMut};
use parapet_gateway::{
    Durability, Gateway, GatewayConfig, TargetConfig, UpstreamConfig, UserConfig, Verifier,
};
use parapet_guard::{Guard, PolicySource};
use parapet_log::{Log, LogReader};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PW: &str = "pipe-Pw-7";
const INSTALL: &str =
    "install the PostgreSQL server binaries: apt-get install postgresql postgresql-contrib";

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("/usr/lib/postgresql: {e}; {INSTALL}"))
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("initdb not found; {INSTALL}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A throw-away cluster (trust auth on 127.0.0.1), killed when dropped.
struct Cluster {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn start_cluster() -> Cluster {
    let bin = bindir();
    let dir = tempfile::tempdir().expect("tempdir");
    // PostgreSQL refuses to run as root: run it as the postgres user then.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let data = dir.path().join("data");
    let st = command(&bin.join("initdb"), root)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync"])
        .stdout(Stdio::null())
        .status()
        .expect("run initdb");
    assert!(st.success(), "initdb failed");
    let port = free_port();
    let child = command(&bin.join("postgres"), root)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-k"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    let cluster = Cluster {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return cluster;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("postgres did not start on port {port}");
}

struct Setup {
    _cluster: Cluster,
    _logdir: tempfile::TempDir,
    log_dir: PathBuf,
    /// The gateway's log handle (to know what it has acknowledged).
    log: Log,
    gw: SocketAddr,
}

async fn setup(durability: Durability) -> Setup {
    setup_with(durability, false).await
}

/// `unix`: the gateway reaches the server through its Unix-domain socket, with the directory
/// written the way a `postgres://` URL carries it (percent-encoded).
async fn setup_with(durability: Durability, unix: bool) -> Setup {
    let cluster = start_cluster();
    let host = if unix {
        cluster
            ._dir
            .path()
            .to_str()
            .expect("utf-8 temp dir")
            .replace('/', "%2F")
    } else {
        "127.0.0.1".to_string()
    };
    let logdir = tempfile::tempdir().expect("tempdir");
    let log_dir = logdir.path().join("log");
    let key = logdir.path().join("log.key");
    Log::init(&log_dir, "parapet.test/pipeline", &key).expect("log init");
    let log = Log::open(&log_dir, &key).expect("log open");
    let guard = Arc::new(
        Guard::load(&PolicySource {
            files: vec![],
            default_pack: true,
        })
        .expect("default pack"),
    );
    let target = TargetConfig {
        name: "main".into(),
        upstream: UpstreamConfig {
            host,
            port: cluster.port,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
        },
        environment: "production".into(),
    };
    let users = vec![UserConfig {
        name: "alice".into(),
        scram: Verifier::generate(PW),
        groups: vec!["eng".into()],
    }];
    let mut cfg = GatewayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), vec![target], users);
    cfg.durability = durability;
    cfg.reload_on_sighup = false;
    cfg.policy_poll = None;
    let gw = Gateway::bind(cfg, guard, log.clone()).await.expect("bind");
    let addr = gw.local_addr().expect("addr");
    tokio::spawn(gw.run(std::future::pending()));
    Setup {
        _cluster: cluster,
        _logdir: logdir,
        log_dir,
        log,
        gw: addr,
    }
}

/// A backend message: type and body.
type Msg = (u8, Vec<u8>);

struct Client {
    s: TcpStream,
    buf: BytesMut,
    /// BackendKeyData the gateway handed out (for CancelRequest).
    key: (i32, i32),
}

impl Client {
    async fn read_msg(&mut self) -> Msg {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let m = self.buf.split_to(total);
                    return (m[0], m[5..].to_vec());
                }
            }
            let n = self.s.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "gateway closed the connection");
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self.read_msg().await;
            let done = m.0 == b'Z';
            v.push(m);
            if done {
                return v;
            }
        }
    }

    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client {
            s,
            buf: BytesMut::new(),
            key: (0, 0),
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", "alice"), ("database", "main")], &mut out)
            .expect("startup");
        c.s.write_all(&out).await.expect("write");
        let mut scram = ScramSha256::new(PW.as_bytes(), ChannelBinding::unsupported());
        loop {
            let (tag, body) = c.read_msg().await;
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        10 => frontend::sasl_initial_response(
                            "SCRAM-SHA-256",
                            scram.message(),
                            &mut out,
                        )
                        .expect("sasl"),
                        11 => {
                            scram.update(&body[4..]).expect("scram continue");
                            frontend::sasl_response(scram.message(), &mut out).expect("sasl");
                        }
                        12 => {
                            scram.finish(&body[4..]).expect("scram final");
                            continue;
                        }
                        other => panic!("unexpected authentication request {other}"),
                    }
                    c.s.write_all(&out).await.expect("write");
                }
                b'K' => {
                    c.key = (
                        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    )
                }
                b'Z' => return c,
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }
}

fn query(sql: &str, out: &mut BytesMut) {
    frontend::query(sql, out).expect("query");
}

fn parse(name: &str, sql: &str, out: &mut BytesMut) {
    frontend::parse(name, sql, std::iter::empty(), out).expect("parse");
}

/// Bind (unnamed portal, no parameters, text results), Execute, Sync.
fn bind_exec_sync(stmt: &str, out: &mut BytesMut) {
    out.put_u8(b'B');
    out.put_i32((4 + 1 + stmt.len() + 1 + 2 + 2 + 2) as i32);
    out.put_u8(0);
    out.put_slice(stmt.as_bytes());
    out.put_u8(0);
    out.put_i16(0);
    out.put_i16(0);
    out.put_i16(0);
    frontend::execute("", 0, out).expect("execute");
    frontend::sync(out);
}

/// The text of the first column of the first DataRow.
fn first_value(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'D')?;
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
    Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned())
}

/// SQLSTATE and message of the first ErrorResponse.
fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'E')?;
    let f = parapet_gateway::protocol::backend::parse_error(body);
    Some((f.code, f.message))
}

/// Decision events, once the log shows every entry acknowledged so far (tiles and checkpoint
/// are published within `parapet_log::PUBLISH_INTERVAL` of the acknowledgement).
fn decisions(s: &Setup) -> Vec<serde_json::Value> {
    let want = s.log.size();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = LogReader::open(&s.log_dir).expect("open log");
        if r.size() >= want {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "log not published");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    r.entries(0, r.size())
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.expect("entry").1).expect("json"))
        .filter(|v| v["type"] == "decision")
        .collect()
}

async fn pipelined_simple_queries(s: Setup) {
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    query("SELECT 'one'", &mut out);
    query("DROP TABLE pipeline_nothing", &mut out);
    query("SELECT 'three'", &mut out);
    c.s.write_all(&out).await.expect("write");
    let r1 = c.until_ready().await;
    let r2 = c.until_ready().await;
    let r3 = c.until_ready().await;
    assert_eq!(first_value(&r1).as_deref(), Some("one"));
    let (code, msg) = first_error(&r2).expect("the DROP is refused");
    assert_eq!(code, "42501");
    assert!(
        msg.starts_with("parapet: blocked by parapet.drop:"),
        "{msg}"
    );
    assert_eq!(first_value(&r3).as_deref(), Some("three"));
    // The session is still usable, and every statement's decision is in the log, in order.
    let mut out = BytesMut::new();
    query("SELECT 'four'", &mut out);
    c.s.write_all(&out).await.expect("write");
    assert_eq!(first_value(&c.until_ready().await).as_deref(), Some("four"));
    // The session's last four decisions (a caller may have run statements before).
    let all = decisions(&s);
    let sqls: Vec<_> = all[all.len().saturating_sub(4)..]
        .iter()
        .map(|d| {
            (
                d["sql"].as_str().unwrap_or("").to_string(),
                d["decision"].clone(),
            )
        })
        .collect();
    assert_eq!(
        sqls,
        vec![
            ("SELECT 'one'".to_string(), serde_json::json!("allow")),
            (
                "DROP TABLE pipeline_nothing".into(),
                serde_json::json!("deny")
            ),
            ("SELECT 'three'".into(), serde_json::json!("allow")),
            ("SELECT 'four'".into(), serde_json::json!("allow")),
        ]
    );
}

async fn pipelined_extended_with_a_refused_parse(durability: Durability) {
    let s = setup(durability).await;
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    // 1: fine. 2: refused Parse, then a Parse PostgreSQL would skip (error before Sync) and a
    // Bind/Execute of the refused statement. 3: the skipped statement must not exist.
    // 4: fine again.
    parse("s1", "SELECT 'one'", &mut out);
    bind_exec_sync("s1", &mut out);
    parse("s2", "DROP TABLE pipeline_nothing", &mut out);
    parse("skipped", "SELECT 'skipped'", &mut out);
    bind_exec_sync("s2", &mut out);
    bind_exec_sync("skipped", &mut out);
    parse("s4", "SELECT 'four'", &mut out);
    bind_exec_sync("s4", &mut out);
    c.s.write_all(&out).await.expect("write");
    let r1 = c.until_ready().await;
    let r2 = c.until_ready().await;
    let r3 = c.until_ready().await;
    let r4 = c.until_ready().await;
    assert_eq!(first_value(&r1).as_deref(), Some("one"));
    let (code, msg) = first_error(&r2).expect("the DROP is refused");
    assert_eq!(code, "42501");
    assert!(
        msg.starts_with("parapet: blocked by parapet.drop:"),
        "{msg}"
    );
    assert_eq!(r2.iter().filter(|m| m.0 == b'E').count(), 1, "{r2:?}");
    let (code, msg) = first_error(&r3).expect("skipped statement does not exist");
    assert_eq!(code, "26000", "{msg}");
    assert_eq!(first_value(&r4).as_deref(), Some("four"));
    let sqls: Vec<_> = decisions(&s)
        .iter()
        .map(|d| d["sql"].as_str().unwrap_or("").to_string())
        .collect();
    // The skipped Parse was neither judged nor logged, like the server never ran it.
    assert_eq!(
        sqls,
        vec![
            "SELECT 'one'",
            "DROP TABLE pipeline_nothing",
            "SELECT 'four'"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_simple_queries_before_forward() {
    pipelined_simple_queries(setup(Durability::BeforeForward).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_simple_queries_before_reply() {
    pipelined_simple_queries(setup(Durability::BeforeReply).await).await;
}

/// The same session behaviour when the upstream is the server's Unix-domain socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_over_unix_socket() {
    let s = setup_with(Durability::BeforeForward, true).await;
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    query("SELECT inet_server_addr() IS NULL", &mut out);
    c.s.write_all(&out).await.expect("write");
    // inet_server_addr() is NULL exactly when the server sees a Unix-socket connection.
    assert_eq!(first_value(&c.until_ready().await).as_deref(), Some("t"));

    // A cancel request reaches the backend through the socket too.
    let mut out = BytesMut::new();
    query("SELECT pg_sleep(60)", &mut out);
    c.s.write_all(&out).await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut cancel = TcpStream::connect(s.gw).await.expect("connect");
    let mut out = BytesMut::new();
    frontend::cancel_request(c.key.0, c.key.1, &mut out);
    cancel.write_all(&out).await.expect("write cancel");
    let reply = tokio::time::timeout(std::time::Duration::from_secs(20), c.until_ready())
        .await
        .expect("the sleeping statement was cancelled");
    let (code, msg) = first_error(&reply).expect("cancel error");
    assert_eq!(code, "57014", "{msg}");

    pipelined_simple_queries(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_before_forward() {
    pipelined_extended_with_a_refused_parse(Durability::BeforeForward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_before_reply() {
    pipelined_extended_with_a_refused_parse(Durability::BeforeReply).await;
}
