//! Pathological statements through the real `parapet serve` process on a real PostgreSQL:
//! deep operator chains, parentheses, subqueries, CASE, arrays, JSON operators, nested calls and
//! nested PL/pgSQL; huge IN lists and multi-megabyte texts; a 1 MB identifier, invalid UTF-8 and
//! NUL bytes. After each one, another session must still be served and the process be alive.
//! No timing assertions: how promptly others are served is the benchmark's business.

mod common;

use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::Log;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A minimal raw-protocol client (so it can send bytes no driver sends).
struct Raw(TcpStream);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut params = Vec::new();
        params.extend_from_slice(&196_608i32.to_be_bytes());
        for p in ["user", "alice", "database", "main"] {
            params.extend_from_slice(p.as_bytes());
            params.push(0);
        }
        params.push(0);
        let mut startup = ((params.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&params);
        s.write_all(&startup).await.expect("startup");
        let mut raw = Raw(s);
        let mut scram = ScramSha256::new(ALICE_PW.as_bytes(), ChannelBinding::unsupported());
        loop {
            let (tag, body) = raw.read().await.expect("auth reply");
            match (
                tag,
                body.get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ) {
                (b'R', Some(10)) => {
                    let mut m = SCRAM_SHA_256.as_bytes().to_vec();
                    m.push(0);
                    m.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
                    m.extend_from_slice(scram.message());
                    raw.send(b'p', &m).await;
                }
                (b'R', Some(11)) => {
                    scram.update(&body[4..]).expect("scram continue");
                    let m = scram.message().to_vec();
                    raw.send(b'p', &m).await;
                }
                (b'R', Some(12)) => scram.finish(&body[4..]).expect("scram final"),
                (b'R', Some(0)) | (b'S', _) | (b'K', _) => {}
                (b'Z', _) => return raw,
                (t, _) => panic!(
                    "unexpected {:?} during login: {}",
                    t as char,
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.0.write_all(&m).await.expect("send");
    }

    /// Reads one message; `None` when the connection closed.
    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head).await.ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        self.0.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    }

    /// Sends a simple Query of raw bytes; returns the error messages it got before
    /// ReadyForQuery, or `None` when the connection closed first.
    async fn query(&mut self, sql: &[u8]) -> Option<Vec<String>> {
        let mut body = sql.to_vec();
        body.push(0);
        self.send(b'Q', &body).await;
        let mut errors = Vec::new();
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'E' => errors.push(String::from_utf8_lossy(&body).into_owned()),
                b'Z' => return Some(errors),
                _ => {}
            }
        }
    }
}

/// A running `parapet serve` with default limits (64 MiB statements, 1 GiB messages).
struct Served {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(name: &str) -> Served {
    let e = env();
    let dir = e.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Log::init(
        &dir.join("log"),
        "parapet.test/pathological",
        &dir.join("log.key"),
    )
    .unwrap();
    let port = parapet::pgcluster::free_port().unwrap();
    let config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\n\
         [listen]\npostgres = \"127.0.0.1:{port}\"\n\
         [[targets]]\nname = \"main\"\nupstream = \"postgres://postgres:{}@127.0.0.1:{}/app\"\nenvironment = \"production\"\n\
         {}\n[policy]\ndefault_pack = true\npoll_seconds = 0\n",
        e.pg_password,
        e.pg_port,
        parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()])
    );
    std::fs::write(dir.join("parapet.toml"), config).unwrap();
    let child = common::start_serve(&dir.join("parapet.toml"), port).await;
    Served {
        child,
        addr: ([127, 0, 0, 1], port).into(),
    }
}

impl Served {
    /// The process is alive and a fresh session runs a statement.
    async fn still_serves(&mut self, after: &str) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "the gateway process died after {after}"
        );
        let c = env().client(self.addr).await;
        let n: i32 = c
            .query_one("SELECT 42", &[])
            .await
            .unwrap_or_else(|e| panic!("another session is not served after {after}: {e}"))
            .get(0);
        assert_eq!(n, 42);
    }
}

fn chain(n: usize, op: &str, term: &str) -> String {
    vec![term; n].join(op)
}

fn nest(n: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// Every deep statement shape, at depths PostgreSQL 15 runs and far beyond.
fn deep_statements() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for n in [2_000, 5_000, 20_000, 100_000] {
        v.push((
            format!("{n}-term + chain"),
            format!("SELECT {}", chain(n, "+", "1")),
        ));
        v.push((
            format!("{n}-term || chain"),
            format!("SELECT {}", chain(n, "||", "'a'")),
        ));
        v.push((
            format!("{n} parentheses"),
            format!("SELECT {}", nest(n, "(", "1", ")")),
        ));
        v.push((
            format!("{n} nested calls"),
            format!("SELECT {}", nest(n, "abs(", "1", ")")),
        ));
        v.push((
            format!("{n} JSON ->"),
            format!("SELECT '{{}}'::jsonb{}", "->'a'".repeat(n)),
        ));
    }
    for n in [500, 2_000, 10_000] {
        v.push((
            format!("{n} nested subqueries"),
            format!("SELECT {}", nest(n, "(SELECT ", "1", ")")),
        ));
        v.push((
            format!("{n} nested CASE"),
            format!("SELECT {}", nest(n, "CASE WHEN true THEN ", "1", " END")),
        ));
        v.push((
            format!("{n} nested ARRAY"),
            format!("SELECT {}", nest(n, "ARRAY[", "1", "]")),
        ));
        v.push((
            format!("{n} nested IF in DO"),
            format!(
                "DO $$ BEGIN {} END $$",
                nest(n, "IF true THEN ", "NULL;", " END IF;")
            ),
        ));
        v.push((
            format!("{n} nested blocks in DO"),
            format!("DO $$ {} $$", nest(n, "BEGIN ", "NULL;", " END;")),
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_never_stop_the_gateway() {
    let mut gw = serve("pathological-deep").await;
    let mut raw = Raw::connect(gw.addr).await;
    for (what, sql) in deep_statements() {
        // Allowed and run, refused by the guard or failed on the server: any answer will do,
        // as long as it is an answer on a connection that stays open.
        let answer = raw.query(sql.as_bytes()).await;
        assert!(answer.is_some(), "the connection closed on {what}");
        gw.still_serves(&what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_texts_identifiers_and_bad_bytes_never_stop_the_gateway() {
    let mut gw = serve("pathological-huge").await;
    let in_list = format!(
        "SELECT 1 WHERE 1 IN ({})",
        (0..300_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let many = "SELECT 1;".repeat(150_000);
    let values = format!(
        "SELECT * FROM (VALUES {}) v(a, b)",
        (0..100_000)
            .map(|i| format!("({i}, 'row {i}')"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let ident = format!("SELECT 1 AS \"{}\"", "i".repeat(1 << 20));
    let bare_ident = format!("SELECT {}", "i".repeat(1 << 20));
    let string = format!("SELECT '{}'", "s".repeat(4 << 20));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a 300,000-element IN list", in_list.into_bytes()),
        ("150,000 statements in one message", many.into_bytes()),
        ("a 100,000-row VALUES", values.into_bytes()),
        ("a 1 MB quoted identifier", ident.into_bytes()),
        ("a 1 MB bare identifier", bare_ident.into_bytes()),
        ("a 4 MB string literal", string.into_bytes()),
        ("invalid UTF-8", b"SELECT '\xff\xfe\xc3('".to_vec()),
        (
            "invalid UTF-8 in an identifier",
            b"SELECT 1 AS \xc0\xaf".to_vec(),
        ),
        ("a lone continuation byte", b"SELECT \x80".to_vec()),
    ];
    for (what, sql) in cases {
        let mut raw = Raw::connect(gw.addr).await;
        // A refusal or a server error is fine; the connection may also be closed (a message the
        // gateway cannot read), but only that one.
        let _ = raw.query(&sql).await;
        gw.still_serves(what).await;
    }
    // A NUL byte inside a Query: the statement is what precedes it; whatever happens to this
    // connection, the others carry on.
    let mut raw = Raw::connect(gw.addr).await;
    let mut body = b"SELECT 1\0; DROP TABLE nope".to_vec();
    body.push(0);
    raw.send(b'Q', &body).await;
    let _ = raw.read().await;
    gw.still_serves("a NUL byte inside a Query").await;
    // Several sessions at once sending multi-megabyte texts, while another is served.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            let text = format!("SELECT {i};").repeat(150_000);
            raw.query(text.as_bytes()).await
        }));
    }
    gw.still_serves("concurrent multi-megabyte texts (while they run)")
        .await;
    for t in tasks {
        let _ = t.await.expect("task");
    }
    gw.still_serves("concurrent multi-megabyte texts").await;
}
