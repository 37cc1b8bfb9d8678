//! Test support shared by the gateway's integration tests: a throw-away PostgreSQL cluster
//! (initdb in a temp dir on a free port, killed on drop), the gateway in-process in front of it,
//! and a raw wire-protocol client, so each test controls exactly what goes into each write.
#![allow(dead_code)]

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

pub const PW: &str = "pipe-Pw-7";
pub const INSTALL: &str =
    "install the PostgreSQL server binaries: apt-get install postgresql postgresql-contrib";

pub fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("/usr/lib/postgresql: {e}; {INSTALL}"))
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("initdb not found; {INSTALL}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A throw-away cluster (trust auth on 127.0.0.1), killed when dropped.
pub struct Cluster {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

pub fn start_cluster() -> Cluster {
    start_cluster_with(|_| {}, &[])
}

/// A cluster whose data directory `prepare` may change after initdb (files it writes are given
/// to the server's OS user), started with extra `args`.
pub fn start_cluster_with(prepare: impl FnOnce(&Path), args: &[&str]) -> Cluster {
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
    prepare(&data);
    if root {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status()
            .expect("chown");
        assert!(st.success(), "chown of the data directory failed");
    }
    let port = free_port();
    let child = command(&bin.join("postgres"), root)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off"])
        .args(args)
        .arg("-k")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    let cluster = Cluster { child, port, dir };
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

pub struct Setup {
    pub cluster: Cluster,
    pub _logdir: tempfile::TempDir,
    pub log_dir: PathBuf,
    /// The gateway's log handle (to know what it has acknowledged).
    pub log: Log,
    pub gw: SocketAddr,
}

pub async fn setup(durability: Durability) -> Setup {
    setup_with(durability, false).await
}

/// `unix`: the gateway reaches the server through its Unix-domain socket, with the directory
/// written the way a `postgres://` URL carries it (percent-encoded).
pub async fn setup_with(durability: Durability, unix: bool) -> Setup {
    setup_config(durability, unix, |_| {}).await
}

/// [`setup_with`], with the gateway's configuration changed by `tweak` before it binds.
pub async fn setup_config(
    durability: Durability,
    unix: bool,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> Setup {
    setup_on(start_cluster(), durability, unix, tweak).await
}

/// [`setup_config`] in front of a cluster already started.
pub async fn setup_on(
    cluster: Cluster,
    durability: Durability,
    unix: bool,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> Setup {
    let host = if unix {
        cluster
            .dir
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
            modes: Default::default(),
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
            tls: Default::default(),
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
    tweak(&mut cfg);
    let gw = Gateway::bind(cfg, guard, log.clone()).await.expect("bind");
    let addr = gw.local_addr().expect("addr");
    tokio::spawn(gw.run(std::future::pending()));
    Setup {
        cluster,
        _logdir: logdir,
        log_dir,
        log,
        gw: addr,
    }
}

/// A backend message: type and body.
pub type Msg = (u8, Vec<u8>);

pub struct Client {
    pub s: TcpStream,
    pub buf: BytesMut,
    /// BackendKeyData the gateway handed out (for CancelRequest).
    pub key: (i32, i32),
}

impl Client {
    pub async fn read_msg(&mut self) -> Msg {
        self.try_read_msg()
            .await
            .expect("gateway closed the connection")
    }

    /// The next message, or `None` when the other side closed the connection.
    pub async fn try_read_msg(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let m = self.buf.split_to(total);
                    return Some((m[0], m[5..].to_vec()));
                }
            }
            // A reset after the peer's last message counts as closing too.
            match self.s.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
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

    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_to(addr, "alice", "main").await
    }

    /// Logs in as `user` to `database`: through the gateway (SCRAM with [`PW`]) or straight to
    /// the test cluster (trust).
    pub async fn connect_to(addr: SocketAddr, user: &str, database: &str) -> Client {
        Self::try_connect(addr, user, database)
            .await
            .unwrap_or_else(|e| panic!("login failed: {e}"))
    }

    /// [`Client::connect_to`], returning the server's ErrorResponse (SQLSTATE, message) when
    /// the login is refused.
    pub async fn try_connect(
        addr: SocketAddr,
        user: &str,
        database: &str,
    ) -> Result<Client, String> {
        Self::try_connect_with(addr, &[("user", user), ("database", database)]).await
    }

    /// [`Client::try_connect`] with these startup parameters (`user` and `database` among them).
    pub async fn try_connect_with(
        addr: SocketAddr,
        params: &[(&str, &str)],
    ) -> Result<Client, String> {
        let s = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client {
            s,
            buf: BytesMut::new(),
            key: (0, 0),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out).expect("startup");
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
                b'Z' => return Ok(c),
                b'E' => {
                    let f = parapet_gateway::protocol::backend::parse_error(&body);
                    return Err(format!("{} {}", f.code, f.message));
                }
                _ => {}
            }
        }
    }
}

pub fn query(sql: &str, out: &mut BytesMut) {
    frontend::query(sql, out).expect("query");
}

pub fn parse(name: &str, sql: &str, out: &mut BytesMut) {
    frontend::parse(name, sql, std::iter::empty(), out).expect("parse");
}

/// Bind of the unnamed portal to `stmt` (no parameters, text results).
pub fn bind(stmt: &str, out: &mut BytesMut) {
    out.put_u8(b'B');
    out.put_i32((4 + 1 + stmt.len() + 1 + 2 + 2 + 2) as i32);
    out.put_u8(0);
    out.put_slice(stmt.as_bytes());
    out.put_u8(0);
    out.put_i16(0);
    out.put_i16(0);
    out.put_i16(0);
}

/// Bind (unnamed portal, no parameters, text results), Execute, Sync.
pub fn bind_exec_sync(stmt: &str, out: &mut BytesMut) {
    bind(stmt, out);
    frontend::execute("", 0, out).expect("execute");
    frontend::sync(out);
}

/// The text of the first column of the first DataRow.
pub fn first_value(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'D')?;
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
    Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned())
}

/// SQLSTATE and message of the first ErrorResponse.
pub fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'E')?;
    let f = parapet_gateway::protocol::backend::parse_error(body);
    Some((f.code, f.message))
}

/// Decision events, once the log shows every entry acknowledged so far (tiles and checkpoint
/// are published within `parapet_log::PUBLISH_INTERVAL` of the acknowledgement).
pub fn decisions(s: &Setup) -> Vec<serde_json::Value> {
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
