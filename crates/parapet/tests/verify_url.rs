//! `parapet verify --url`: a log verified over HTTP(S) as its console serves it, with a real
//! PostgreSQL, a real `parapet serve` (with its console) and the real `parapet verify`: it passes
//! and agrees with `--dir` on the size; `--old` proves consistency; a tampered byte served is
//! found; a missing or wrong token is a clear 401; `https://` with the server's CA.

mod common;

use common::http::{free_port, get};
use common::{env, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::Log;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A `parapet serve` with its console and an auditor token, killed on drop.
struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the config of `dir` (a console on `console`, over TLS with `tls` = (cert, key)) and
/// starts `parapet serve`; waits until both listeners accept.
async fn serve(
    dir: &Path,
    port: u16,
    console: SocketAddr,
    token: &str,
    tls: Option<(&Path, &Path)>,
) -> Serve {
    let e = env();
    let upstream = format!(
        "postgres://postgres:{}@127.0.0.1:{}/app",
        e.pg_password, e.pg_port
    );
    let user = parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()]);
    let block = parapet::cli::console::token_block(
        "audit",
        parapet::config::ConsoleRole::Auditor,
        &parapet::console::auth::digest(token),
        None,
    );
    let tls = match tls {
        Some((c, k)) => format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            c.display(),
            k.display()
        ),
        None => String::new(),
    };
    let config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\n[listen]\npostgres = \"127.0.0.1:{port}\"\n\
         [[targets]]\nname = \"main\"\nupstream = \"{upstream}\"\n{user}\n\
         [policy]\nfiles = []\ndefault_pack = true\npoll_seconds = 0\n\
         [console]\nlisten = \"{console}\"\n{tls}{block}"
    );
    std::fs::write(dir.join("parapet.toml"), config).unwrap();
    let child = common::start_serve(&dir.join("parapet.toml"), port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(console).is_err() {
        assert!(Instant::now() < deadline, "the console did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Serve { child }
}

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parapet"))
        .arg("verify")
        .args(args)
        .output()
        .expect("run parapet verify")
}

/// Runs `parapet verify ARGS`, asserts that it passes, returns (size, stdout).
fn verified_size(args: &[&str]) -> (u64, String) {
    let out = verify(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "parapet verify {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = stdout
        .split(" verified: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {stdout:?}"));
    (size, stdout)
}

/// Asserts that `parapet verify ARGS` fails; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = verify(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "parapet verify {args:?} passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Runs statements through the gateway until `n` decisions were logged after the last one
/// that ends (a refused DELETE, whose error names its audit entry); returns that entry's
/// index. Every statement's decision is durable before the statement runs.
async fn statements(c: &tokio_postgres::Client, n: usize, tag: &str) -> u64 {
    for i in 0..n {
        c.simple_query(&format!("SELECT {i} AS {tag}"))
            .await
            .expect("allowed");
    }
    let err = c
        .simple_query(&format!("DELETE FROM ledger_{tag}"))
        .await
        .expect_err("refused by the default pack");
    let detail = err
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_else(|| panic!("no DETAIL in {err:?}"))
        .to_string();
    common::audit_index(&detail)
}

/// Waits (up to 10 s) until the log in `dir` has published at least `size` entries.
fn published(dir: &Path, size: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = parapet_log::LogReader::open(dir)
            .map(|r| r.size())
            .unwrap_or(0);
        if now >= size {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log published {now} of {size} entries within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_over_http_from_the_console() {
    let e = env();
    let dir: PathBuf = e.dir.join("verify-url");
    std::fs::create_dir_all(&dir).unwrap();
    let log_dir = dir.join("log");
    let vkey = Log::init(&log_dir, "parapet.test/verify-url", &dir.join("log.key")).unwrap();
    let token = parapet::console::auth::generate();
    let port = free_port();
    let console: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let site = serve(&dir, port, console, &token, None).await;
    let url = format!("http://{console}/log/");
    let dir_arg = log_dir.to_str().unwrap();

    let conninfo = format!(
        "host=127.0.0.1 port={port} user=alice password={ALICE_PW} dbname=main sslmode=disable"
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect through the gateway");
    tokio::spawn(conn);

    // A first stretch of statements; its checkpoint, as served, is the "old" one.
    let last = statements(&c, 20, "first").await;
    published(&log_dir, last + 1);
    let old = get(console, "/log/checkpoint", Some(&token));
    assert_eq!(old.status, 200);
    let old_file = dir.join("old.checkpoint");
    std::fs::write(&old_file, &old.body).unwrap();
    let old_file = old_file.to_str().unwrap();

    // Enough statements for full tiles (256 entries), then an idle gateway.
    let last = statements(&c, 300, "second").await;
    published(&log_dir, last + 1);
    let (by_url, out) = verified_size(&["--url", &url, "--vkey", &vkey, "--token", &token]);
    let (by_dir, _) = verified_size(&["--dir", dir_arg, "--vkey", &vkey]);
    assert_eq!(by_url, by_dir, "{out}");
    assert!(by_url > last && by_url > 256, "{out}");

    // --old: the earlier checkpoint is a prefix of the log served now.
    let (_, out) = verified_size(&[
        "--url", &url, "--vkey", &vkey, "--token", &token, "--old", old_file,
    ]);
    assert!(
        out.contains("consistent with the old checkpoint of size"),
        "{out}"
    );

    // No token, a wrong token: a clear 401 naming the URL.
    let err = fails(&["--url", &url, "--vkey", &vkey]);
    assert!(
        err.contains(&format!("GET {url}checkpoint: HTTP 401"))
            && err.contains("give it with --token"),
        "{err}"
    );
    let err = fails(&["--url", &url, "--vkey", &vkey, "--token", "pt_wrong"]);
    assert!(
        err.contains(&format!("GET {url}checkpoint: HTTP 401"))
            && err.contains("the token was refused"),
        "{err}"
    );
    // Nothing served there: a 404 for the checkpoint is "not a log".
    let err = fails(&[
        "--url",
        &format!("http://{console}/nolog/"),
        "--vkey",
        &vkey,
        "--token",
        &token,
    ]);
    assert!(err.contains("is not a log"), "{err}");

    // One byte of an entry in a full bundle, as served: verification fails and names it.
    let bundle = log_dir.join("tile/entries/000");
    let clean = std::fs::read(&bundle).expect("a full entry bundle");
    let mut bad = clean.clone();
    bad[100] ^= 0x01;
    std::fs::write(&bundle, &bad).unwrap();
    let err = fails(&["--url", &url, "--vkey", &vkey, "--token", &token]);
    assert!(
        err.contains("verification FAILED for")
            && err.contains("(in tile/entries/000) does not match hash"),
        "{err}"
    );
    std::fs::write(&bundle, &clean).unwrap();
    // And a byte of a served hash tile.
    let tile = log_dir.join("tile/0/000");
    let clean = std::fs::read(&tile).expect("a full hash tile");
    let mut bad = clean.clone();
    bad[7 * 32] ^= 0x80;
    std::fs::write(&tile, &bad).unwrap();
    let err = fails(&["--url", &url, "--vkey", &vkey, "--token", &token]);
    assert!(err.contains("entry 7 (in tile/entries/000)"), "{err}");
    std::fs::write(&tile, &clean).unwrap();
    verified_size(&["--url", &url, "--vkey", &vkey, "--token", &token]);
    drop(c);
    drop(site);

    // The console over HTTPS: checked against the CA given with --ca-file.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("console.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("console.key"), leaf_key.serialize_pem()).unwrap();
    let (cert, key) = (dir.join("console.crt"), dir.join("console.key"));
    let console: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _site = serve(&dir, port, console, &token, Some((&cert, &key))).await;
    let url = format!("https://localhost:{}/log/", console.port());
    let ca = dir.join("ca.pem");
    let (by_https, _) = verified_size(&[
        "--url",
        &url,
        "--vkey",
        &vkey,
        "--token",
        &token,
        "--ca-file",
        ca.to_str().unwrap(),
    ]);
    let (by_dir, _) = verified_size(&["--dir", dir_arg, "--vkey", &vkey]);
    assert_eq!(by_https, by_dir);
    // Without the CA, the certificate is refused.
    let err = fails(&["--url", &url, "--vkey", &vkey, "--token", &token]);
    assert!(err.contains("TLS failed"), "{err}");
}
