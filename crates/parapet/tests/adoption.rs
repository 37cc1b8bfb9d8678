//! From nothing to guarding a real database: `parapet init` against a real cluster with an
//! ordinary role, `parapet serve` with the config it wrote, psql through the gateway with the line
//! it printed (a statement that runs, one that is blocked), `parapet verify`; `parapet doctor`
//! passes on that set-up and fails, saying why, once the key's mode is loosened and once the
//! upstream is stopped. Also: init refuses to overwrite, and warns about a superuser upstream.

use parapet::pgcluster::{PgCluster, PgOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn parapet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(args)
        .output()
        .expect("run parapet")
}

/// A child process killed if the test ends without stopping it (a failed assert).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The value after `label:` on the line that has it.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{out}"))
}

/// A self-signed certificate for localhost that expires in `days`; (cert, key) files.
fn cert_expiring_in(dir: &Path, days: i64) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("cert params");
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let (c, k) = (
        dir.join(format!("cert-{days}.pem")),
        dir.join(format!("key-{days}.pem")),
    );
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k)
}

fn doctor(config: &Path) -> (bool, String) {
    let o = parapet(&["doctor", "--config", config.to_str().expect("utf-8")]);
    (o.status.success(), text(&o.stdout))
}

#[test]
fn init_serve_psql_verify_and_doctor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let pg_dir = tmp.path().join("pg");
    std::fs::create_dir(&pg_dir).expect("mkdir");
    let mut cluster = PgCluster::start(
        &pg_dir,
        &PgOptions {
            password: "su-pw".into(),
            no_fsync: true,
            max_connections: 50,
        },
    )
    .unwrap_or_else(|e| panic!("{e:#} (apt-get install postgresql)"));
    cluster
        .psql("postgres", "CREATE ROLE ordinary LOGIN PASSWORD 'ord-pw'")
        .expect("role");
    cluster
        .psql("postgres", "CREATE DATABASE shop OWNER ordinary")
        .expect("database");

    let dir = tmp.path().join("setup");
    let upstream = cluster.url_as("ordinary", "ord-pw", "shop");
    let gw_port = free_port();
    let listen = format!("127.0.0.1:{gw_port}");
    let d = dir.to_str().expect("utf-8");
    let o = parapet(&[
        "init",
        "--upstream",
        &upstream,
        "--dir",
        d,
        "--listen",
        &listen,
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "init failed: {out}{err}");
    assert!(err.contains("role \"ordinary\""), "{err}");
    assert!(!err.contains("SUPERUSER"), "{err}");
    let config = dir.join("parapet.toml");
    assert_eq!(
        field(&out, "start:"),
        format!("parapet serve --config {}", config.display())
    );
    for f in ["parapet.toml", "log.key"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // It never overwrites a set-up.
    let again = parapet(&["init", "--upstream", &upstream, "--dir", d]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    // A superuser upstream is named as such, with what to do.
    let su_dir = tmp.path().join("su");
    let su = parapet(&[
        "init",
        "--upstream",
        &cluster.url_as("postgres", "su-pw", "postgres"),
        "--dir",
        su_dir.to_str().expect("utf-8"),
    ]);
    assert!(su.status.success(), "{}", text(&su.stderr));
    assert!(
        text(&su.stderr).contains("is a SUPERUSER") && text(&su.stderr).contains("CREATE ROLE"),
        "{}",
        text(&su.stderr)
    );
    let (ok, report) = doctor(&su_dir.join("parapet.toml"));
    assert!(!ok && report.contains("✗ target \"main\""), "{report}");

    // Doctor passes on the fresh set-up.
    let (ok, report) = doctor(&config);
    assert!(ok, "{report}");
    assert!(report.lines().all(|l| l.starts_with('✓')), "{report}");
    // The TLS certificate's expiry: a year is fine, three days is a ✗.
    let plain = std::fs::read_to_string(&config).expect("config");
    for (days, good) in [(365, true), (3, false)] {
        let (c, k) = cert_expiring_in(tmp.path(), days);
        let with_tls = plain.replacen(
            &format!("postgres = \"{listen}\"\n"),
            &format!(
                "postgres = \"{listen}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
                c.display().to_string(),
                k.display().to_string()
            ),
            1,
        );
        assert_ne!(with_tls, plain);
        std::fs::write(&config, &with_tls).expect("write config");
        let (ok, report) = doctor(&config);
        assert_eq!(ok, good, "{report}");
        let line = report
            .lines()
            .find(|l| l.contains("TLS certificate"))
            .unwrap_or_else(|| panic!("no certificate line: {report}"));
        assert!(line.starts_with(if good { '✓' } else { '✗' }), "{line}");
    }
    std::fs::write(&config, &plain).expect("restore config");

    // The gateway, started as printed.
    let mut serve = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_parapet"))
            .args(["serve", "--config", config.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("serve.err")).expect("stderr file"))
            .spawn()
            .expect("serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", gw_port)).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // psql with the printed line: `PGPASSWORD='…' psql "…"`.
    let connect = field(&out, "connect:");
    let password = connect
        .strip_prefix("PGPASSWORD='")
        .and_then(|r| r.split_once('\''))
        .map(|(p, _)| p)
        .expect("PGPASSWORD in the connect line");
    let conninfo = connect
        .split_once("psql \"")
        .and_then(|(_, r)| r.strip_suffix('"'))
        .expect("psql \"…\" in the connect line");
    let psql = |sql: &str| {
        Command::new(cluster.bindir().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                conninfo,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .output()
            .expect("psql")
    };
    let o = psql("CREATE TABLE items (id int)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = psql("INSERT INTO items VALUES (1), (2)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = psql("SELECT count(*) FROM items");
    assert_eq!(text(&o.stdout).trim(), "2", "{}", text(&o.stderr));
    let o = psql("DELETE FROM items");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("blocked by parapet.delete-without-where"),
        "{}",
        text(&o.stderr)
    );
    // SAFETY: kill(2) on the child started here.
    assert_eq!(
        unsafe { libc::kill(serve.0.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = serve.0.try_wait().expect("wait") {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not on a terminal, the service logs JSON lines (for journald and log shippers).
    let logged = std::fs::read_to_string(tmp.path().join("serve.err")).expect("stderr");
    let listening = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "parapet gateway listening");
    assert!(
        listening.is_some_and(|v| v["level"] == "INFO" && v["timestamp"].is_string()),
        "{logged}"
    );
    // The printed verify command.
    let verify: Vec<&str> = field(&out, "verify:").split_whitespace().collect();
    assert_eq!(verify[..2], ["parapet", "verify"]);
    let o = parapet(&verify[1..]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Doctor: still fine; then a loose key mode; then the upstream down.
    let (ok, report) = doctor(&config);
    assert!(ok, "{report}");
    let key = dir.join("log.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, report) = doctor(&config);
    assert!(!ok, "{report}");
    assert!(
        report.contains("✗ signing key") && report.contains("chmod 600"),
        "{report}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    cluster.stop();
    let (ok, report) = doctor(&config);
    assert!(!ok, "{report}");
    assert!(
        report.lines().any(|l| l.starts_with("✗ target \"main\"")),
        "{report}"
    );
}
