//! Shared harness of the gateway integration tests: ONE throw-away PostgreSQL cluster per test
//! binary (initdb in a temp dir, free port, fsync off), a fresh audit log, and gateways started
//! in-process through the library. The postgres process cannot outlive the test binary: it is
//! started with PDEATHSIG=SIGKILL from a thread that lives as long as the process, and an atexit
//! handler stops it and removes the directory.
#![allow(dead_code)]

pub mod browser;
pub mod http;

use parapet::pgcluster::{PgCluster, PgOptions, INSTALL_HINT};
use parapet_gateway::{
    Durability, Gateway, GatewayConfig, TargetConfig, TlsSettings, UserConfig, Verifier,
};
use parapet_guard::{Guard, PolicySource};
use parapet_log::{Log, LogReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// Password of the test user `alice` (groups `eng`).
pub const ALICE_PW: &str = "alice-Pw-42";

/// What the harness started.
pub struct Env {
    /// Cluster directory root (temp).
    pub dir: PathBuf,
    /// PostgreSQL port (direct access, user postgres).
    pub pg_port: u16,
    /// Superuser password.
    pub pg_password: String,
    /// PostgreSQL binaries.
    pub bindir: PathBuf,
    /// Gateway (before_forward, TLS offered, 1 MiB message cap).
    pub gw: SocketAddr,
    /// Gateway in before_reply mode.
    pub gw_reply: SocketAddr,
    /// Gateway that requires TLS.
    pub gw_tls_only: SocketAddr,
    /// Audit log directory shared by the gateways.
    pub log_dir: PathBuf,
    /// Verifier key of the log.
    pub vkey: String,
    /// The gateways' log handle (to know what it has acknowledged).
    pub log: Log,
}

/// A reader of the log in `dir` once it shows every entry `log` had acknowledged when called
/// (tiles and checkpoint are published within `parapet_log::PUBLISH_INTERVAL` of the
/// acknowledgement).
pub fn caught_up_reader(log: &Log, dir: &std::path::Path) -> LogReader {
    let want = log.size();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = LogReader::open(dir).expect("open log reader");
        if r.size() >= want {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log published {} of {want} acknowledged entries within 10 s",
            r.size()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

static ENV: OnceLock<Env> = OnceLock::new();
static CLEANUP: Mutex<Option<(i32, PathBuf)>> = Mutex::new(None);

extern "C" fn cleanup() {
    if let Ok(mut g) = CLEANUP.lock() {
        if let Some((pid, dir)) = g.take() {
            // SAFETY: signalling the postmaster we started.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
            }
            for _ in 0..100 {
                // SAFETY: probing whether the process still exists.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Requires a tool on PATH or in the PostgreSQL bindir; panics with an install hint.
pub fn tool(name: &str) -> PathBuf {
    let bindir = parapet::pgcluster::bindir().unwrap_or_else(|e| panic!("{e}"));
    let p = bindir.join(name);
    if p.exists() {
        return p;
    }
    match Command::new("which").arg(name).output() {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => panic!("{name} not found; {INSTALL_HINT}"),
    }
}

fn self_signed(dir: &Path) -> TlsSettings {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let c = dir.join("server.crt");
    let k = dir.join("server.key");
    std::fs::write(&c, cert.cert.pem()).expect("write cert");
    std::fs::write(&k, cert.key_pair.serialize_pem()).expect("write key");
    TlsSettings { cert: c, key: k }
}

/// Starts (once) the cluster, the log and the gateways; returns them.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("parapet-test-env".into())
            .spawn(move || {
                let tmp = tempfile::Builder::new()
                    .prefix("parapet-gwtest-")
                    .tempdir()
                    .expect("tempdir")
                    .keep();
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711))
                    .expect("chmod");
                let pg_dir = tmp.join("pg");
                std::fs::create_dir(&pg_dir).expect("mkdir");
                let cluster = PgCluster::start(&pg_dir, &PgOptions::default())
                    .unwrap_or_else(|e| panic!("{e:#}"));
                *CLEANUP.lock().expect("lock") =
                    Some((cluster.pid().expect("pid") as i32, tmp.clone()));
                // SAFETY: registering a plain extern "C" function.
                unsafe {
                    libc::atexit(cleanup);
                }
                cluster
                    .psql("postgres", "CREATE DATABASE app")
                    .expect("create db");
                let log_dir = tmp.join("log");
                let key = tmp.join("log.key");
                let vkey = Log::init(&log_dir, "parapet.test/gateway", &key).expect("log init");
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
                    upstream: parapet::config::parse_upstream(&cluster.url("app")).expect("url"),
                    environment: "production".into(),
                };
                let users = vec![UserConfig {
                    name: "alice".into(),
                    scram: Verifier::generate(ALICE_PW),
                    groups: vec!["eng".into()],
                }];
                let tls = self_signed(&tmp);
                let any = SocketAddr::from(([127, 0, 0, 1], 0));
                let mut c1 = GatewayConfig::new(any, vec![target.clone()], users.clone());
                c1.tls = Some(tls.clone());
                c1.max_message_size = 1 << 20;
                c1.reload_on_sighup = false;
                let mut c2 = c1.clone();
                c2.durability = Durability::BeforeReply;
                let mut c3 = c1.clone();
                c3.require_tls = true;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("rt");
                rt.block_on(async move {
                    let g1 = Gateway::bind(c1, guard.clone(), log.clone())
                        .await
                        .expect("bind");
                    let g2 = Gateway::bind(c2, guard.clone(), log.clone())
                        .await
                        .expect("bind");
                    let g3 = Gateway::bind(c3, guard.clone(), log.clone())
                        .await
                        .expect("bind");
                    let env = Env {
                        dir: tmp.clone(),
                        pg_port: cluster.port(),
                        pg_password: cluster.password().to_string(),
                        bindir: cluster.bindir().to_path_buf(),
                        gw: g1.local_addr().expect("addr"),
                        gw_reply: g2.local_addr().expect("addr"),
                        gw_tls_only: g3.local_addr().expect("addr"),
                        log: log.clone(),
                        log_dir,
                        vkey,
                    };
                    tokio::spawn(g2.run(std::future::pending()));
                    tokio::spawn(g3.run(std::future::pending()));
                    tx.send(env).expect("send env");
                    let _ = g1.run(std::future::pending()).await;
                    drop(cluster);
                });
            })
            .expect("spawn env thread");
        rx.recv()
            .expect("test environment failed to start (see panic above)")
    })
}

impl Env {
    /// libpq conninfo through a gateway as alice.
    pub fn gw_conninfo(&self, addr: SocketAddr) -> String {
        format!(
            "host=127.0.0.1 port={} user=alice password={ALICE_PW} dbname=main sslmode=disable",
            addr.port()
        )
    }

    /// libpq conninfo directly to PostgreSQL (database `app`).
    pub fn direct_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=app sslmode=disable",
            self.pg_port, self.pg_password
        )
    }

    /// Runs psql with `conninfo`, feeding `stdin`; returns (success, stdout, stderr).
    pub fn psql(&self, conninfo: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new(tool("psql"))
            .args(["-X", "-A", "-t", "-d", conninfo])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("psql output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// Runs SQL directly (as postgres) and returns psql's unaligned output.
    pub fn direct(&self, sql: &str) -> String {
        let (ok, out, err) = self.psql(
            &self.direct_conninfo(),
            &["-v", "ON_ERROR_STOP=1", "-c", sql],
            "",
        );
        assert!(ok, "direct psql failed: {err}");
        out
    }

    /// Connects with tokio-postgres through `addr` as alice.
    pub async fn client(&self, addr: SocketAddr) -> tokio_postgres::Client {
        self.client_pw(addr, ALICE_PW)
            .await
            .expect("connect through the gateway")
    }

    /// Connects with tokio-postgres through `addr` as alice with `password`.
    pub async fn client_pw(
        &self,
        addr: SocketAddr,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(addr.port())
            .user("alice")
            .password(password)
            .dbname("main")
            .application_name("gwtest")
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Every log entry as JSON, from index `from`.
    pub fn events(&self, from: u64) -> Vec<(u64, serde_json::Value)> {
        let r = caught_up_reader(&self.log, &self.log_dir);
        r.entries(from, r.size())
            .map(|e| {
                let (i, b) = e.expect("read entry");
                (i, serde_json::from_slice(&b).expect("entry is JSON"))
            })
            .collect()
    }

    /// The decision event at `index`.
    pub fn entry(&self, index: u64) -> serde_json::Value {
        let r = caught_up_reader(&self.log, &self.log_dir);
        let (_, b) = r
            .entries(index, index + 1)
            .next()
            .expect("entry exists")
            .expect("read entry");
        serde_json::from_slice(&b).expect("entry is JSON")
    }
}

/// Extracts N from a DETAIL `parapet audit entry N`.
pub fn audit_index(detail: &str) -> u64 {
    detail
        .strip_prefix("parapet audit entry ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("DETAIL {detail:?} does not carry the audit entry index"))
}

/// Starts the real `parapet serve --config CONFIG` (output discarded) and waits (up to 10 s)
/// until it listens on `port`.
pub async fn start_serve(config: &std::path::Path, port: u16) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start parapet serve");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("parapet serve did not start listening on port {port}");
}

/// Runs the real `parapet verify` on `log_dir` and asserts that it passes.
pub fn assert_verifies(log_dir: &std::path::Path, vkey: &str) -> String {
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(["verify", "--dir"])
        .arg(log_dir)
        .args(["--vkey", vkey])
        .output()
        .expect("run parapet verify");
    assert!(
        verify.status.success(),
        "parapet verify failed: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    String::from_utf8_lossy(&verify.stderr).into_owned()
}
