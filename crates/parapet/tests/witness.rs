//! Witnessed checkpoints with real processes: three `parapet witness serve` processes with
//! their own keys cosign the checkpoints of a real `parapet serve` under pgbench, and
//! `parapet verify --min-witnesses 2` passes; a witness killed with `kill -9` mid-run keeps its
//! state; rewriting the log — truncating it and re-signing, or changing an old entry and
//! recomputing everything — makes the witnesses refuse, the log say so, and `verify
//! --min-witnesses 2` fail.

mod common;

use common::{env, tool, ALICE_PW};
use parapet_gateway::Verifier;
use parapet_log::note::{parse_note, CosignatureVerifier};
use parapet_log::{Log, LogReader, COSIGNED_CHECKPOINT};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_parapet");

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then waits for the exit.
    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process {} did not stop on SIGTERM", self.0.id());
    }

    /// `kill -9`.
    fn kill9(mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("wait");
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on port {port}");
}

/// One witness: its key, verifier key, state directory and port.
struct W {
    key: PathBuf,
    vkey: String,
    state: PathBuf,
    port: u16,
    stderr: PathBuf,
}

impl W {
    /// `parapet witness init`.
    fn init(dir: &Path, name: &str) -> W {
        let key = dir.join(format!("{}.key", name.replace('/', "_")));
        let out = Command::new(BIN)
            .args(["witness", "init", "--key"])
            .arg(&key)
            .args(["--name", name])
            .output()
            .expect("run parapet witness init");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let vkey = stdout.lines().last().unwrap().to_string();
        assert!(
            CosignatureVerifier::parse(&vkey).is_ok(),
            "the last line is the cosignature/v1 vkey: {stdout}"
        );
        W {
            key,
            vkey,
            state: dir.join(format!("{}.state", name.replace('/', "_"))),
            port: parapet::pgcluster::free_port().unwrap(),
            stderr: dir.join(format!("{}.stderr", name.replace('/', "_"))),
        }
    }

    /// `parapet witness serve` for the log of `log_vkey_file`.
    fn serve(&self, log_vkey_file: &Path) -> Proc {
        self.serve_with(log_vkey_file, &[])
    }

    /// [`W::serve`] with more arguments.
    fn serve_with(&self, log_vkey_file: &Path, extra: &[&std::ffi::OsStr]) -> Proc {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let child = Command::new(BIN)
            .args(["witness", "serve", "--key"])
            .arg(&self.key)
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--state"])
            .arg(&self.state)
            .arg("--log")
            .arg(log_vkey_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start parapet witness serve");
        let p = Proc(child);
        wait_port(self.port, "parapet witness serve");
        p
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Sends `method path` with `body` as a plain HTTP/1.1 request; returns the status, the header
/// block (lower-cased) and the body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server may answer (413) before reading everything.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp[9..12].parse().unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (status, head.to_lowercase(), body.to_string())
}

/// POSTs `body` to `/add-checkpoint`; returns the status and the body.
fn add_checkpoint(port: u16, body: &[u8]) -> (u16, String) {
    let (status, _, body) = http(port, "POST", "/add-checkpoint", body);
    (status, body)
}

/// A log, three witnesses (not yet started) and a `parapet serve` configuration using them.
struct Setup {
    dir: PathBuf,
    log_dir: PathBuf,
    log_key: PathBuf,
    vkey: String,
    vkey_file: PathBuf,
    witnesses: Vec<W>,
    port: u16,
    config: PathBuf,
    /// The console of `parapet serve` (log health shows the witnesses).
    console_port: u16,
    console_token: String,
}

fn setup(name: &str) -> Setup {
    let e = env();
    let dir = e.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log_dir = dir.join("log");
    let log_key = dir.join("log.key");
    let vkey = Log::init(&log_dir, &format!("parapet.test/{name}"), &log_key).unwrap();
    let vkey_file = dir.join("log.vkey");
    std::fs::write(&vkey_file, format!("{vkey}\n")).unwrap();
    let witnesses: Vec<W> = (1..=3)
        .map(|i| W::init(&dir, &format!("witness.test/{name}/w{i}")))
        .collect();
    let port = parapet::pgcluster::free_port().unwrap();
    let console_port = parapet::pgcluster::free_port().unwrap();
    let console_token = parapet::console::auth::generate();
    let mut config = format!(
        "[log]\ndir = \"log\"\nkey = \"log.key\"\nmin_witnesses = 2\n{}\
         [listen]\npostgres = \"127.0.0.1:{port}\"\n\
         [[targets]]\nname = \"main\"\nupstream = \"postgres://postgres:{}@127.0.0.1:{}/app\"\n\
         {}\n[policy]\ndefault_pack = true\n\n[console]\nlisten = \"127.0.0.1:{console_port}\"\n\n{}",
        witnesses
            .iter()
            .map(|w| format!(
                "[[log.witnesses]]\nname = \"{}\"\nurl = \"{}\"\nvkey = \"{}\"\n",
                w.vkey.split('+').next().unwrap(),
                w.url(),
                w.vkey
            ))
            .collect::<String>(),
        e.pg_password,
        e.pg_port,
        parapet::cli::user::snippet("alice", &Verifier::generate(ALICE_PW), &["eng".into()]),
        parapet::cli::console::token_block(
            "auditor",
            parapet::config::ConsoleRole::Auditor,
            &parapet::console::auth::digest(&console_token),
            None
        )
    );
    // `[[log.witnesses]]` must come before the next table header: keep [log] together.
    config = config.replace("\n\n[listen]", "\n[listen]");
    let config_path = dir.join("parapet.toml");
    std::fs::write(&config_path, config).unwrap();
    Setup {
        dir,
        log_dir,
        log_key,
        vkey,
        vkey_file,
        witnesses,
        port,
        config: config_path,
        console_port,
        console_token,
    }
}

impl Setup {
    fn start_witnesses(&self) -> Vec<Proc> {
        self.witnesses
            .iter()
            .map(|w| w.serve(&self.vkey_file))
            .collect()
    }

    /// `parapet serve` with its stderr appended to `serve.stderr`.
    fn serve(&self) -> Proc {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.stderr"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start parapet serve");
        let p = Proc(child);
        wait_port(self.port, "parapet serve");
        p
    }

    fn serve_stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.stderr")).unwrap_or_default()
    }

    /// `parapet verify --witness ×3 --min-witnesses k`: (success, stdout + stderr).
    fn verify(&self, k: usize) -> (bool, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(["verify", "--dir"])
            .arg(&self.log_dir)
            .args(["--vkey", &self.vkey]);
        for w in &self.witnesses {
            cmd.args(["--witness", &w.vkey]);
        }
        let out = cmd
            .args(["--min-witnesses", &k.to_string()])
            .output()
            .expect("run parapet verify");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Waits (up to 20 s) until `verify --min-witnesses k` passes.
    fn wait_verified(&self, k: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out) = self.verify(k);
            if ok {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "verify --min-witnesses {k} did not pass within 20 s: {out}\nserve: {}",
                self.serve_stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `n` statements through the gateway, one psql session.
    fn statements(&self, n: usize) {
        let e = env();
        let sql: String = (0..n).map(|i| format!("SELECT {i};\n")).collect();
        let (ok, _, err) = e.psql(
            &format!(
                "host=127.0.0.1 port={} user=alice password={ALICE_PW} dbname=main sslmode=disable",
                self.port
            ),
            &["-v", "ON_ERROR_STOP=1"],
            &sql,
        );
        assert!(ok, "statements through the gateway failed: {err}");
    }

    fn cosigned(&self) -> Option<(u64, usize)> {
        let note = std::fs::read(self.log_dir.join(COSIGNED_CHECKPOINT)).ok()?;
        let parsed = parse_note(&note).unwrap();
        let cp = parapet_log::checkpoint::Checkpoint::parse(parsed.text, "cosigned").unwrap();
        let n = self
            .witnesses
            .iter()
            .filter(|w| {
                CosignatureVerifier::parse(&w.vkey)
                    .unwrap()
                    .find(&parsed)
                    .unwrap()
                    .is_some()
            })
            .count();
        Some((cp.size, n))
    }
}

fn pgbench(args: &[&str], port: u16, user: &str, password: &str, db: &str) -> String {
    let out = Command::new(tool("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?}: {text}");
    text
}

#[test]
fn three_witnesses_cosign_a_gateway_under_pgbench_and_one_survives_kill_9() {
    let started = Instant::now();
    let e = env();
    let s = setup("pgbench");
    let mut procs = s.start_witnesses();
    let gw = s.serve();
    pgbench(
        &["-i", "-s", "1", "-q"],
        e.pg_port,
        "postgres",
        &e.pg_password,
        "app",
    );

    // The load: TPC-B through the gateway for 6 s, on another thread.
    let port = s.port;
    let load = std::thread::spawn(move || {
        pgbench(
            &["-M", "prepared", "-c", "4", "-j", "2", "-T", "6", "-n"],
            port,
            "alice",
            ALICE_PW,
            "main",
        )
    });
    // Cosigned checkpoints appear and grow while the load runs.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        if let Some((size, n)) = s.cosigned() {
            assert!(
                n >= 2,
                "a published cosigned checkpoint has {n} cosignatures"
            );
            if seen.last() != Some(&size) {
                seen.push(size);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // kill -9 witness 2 mid-run; what it cosigned last is in its state, durably.
    let w2 = procs.remove(1);
    w2.kill9();
    let cosigned_by_w2 = {
        let note = std::fs::read(s.log_dir.join(COSIGNED_CHECKPOINT)).unwrap();
        let parsed = parse_note(&note).unwrap();
        let v = CosignatureVerifier::parse(&s.witnesses[1].vkey).unwrap();
        v.find(&parsed).unwrap().map(|_| {
            parapet_log::checkpoint::Checkpoint::parse(parsed.text, "c")
                .unwrap()
                .size
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // While it is down the others keep cosigning (quorum 2 of 3).
    let before_restart = s.cosigned().unwrap().0;
    let w2 = s.witnesses[1].serve(&s.vkey_file);
    // Restarted, it remembers: asked with old size 0, it answers 409 with a size at least the
    // one it cosigned before the kill.
    let (status, body) = add_checkpoint(
        s.witnesses[1].port,
        &parapet_log::witness::AddCheckpoint::encode(
            0,
            &[],
            LogReader::open(&s.log_dir).unwrap().checkpoint_note(),
        ),
    );
    assert_eq!(status, 409, "{body}");
    let remembered: u64 = body.trim_end().parse().unwrap();
    if let Some(c) = cosigned_by_w2 {
        assert!(
            remembered >= c,
            "w2 remembers {remembered} < {c} it cosigned before kill -9"
        );
    }
    assert!(remembered > 0);
    procs.insert(1, w2);

    let out = load.join().expect("pgbench thread");
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let tx: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.parse().ok())
        .expect("pgbench transaction count");
    assert!(tx > 50, "the load ran ({tx} transactions)");
    assert!(
        seen.len() >= 2,
        "cosigned checkpoints did not advance under load: {seen:?}"
    );
    let after = s.cosigned().unwrap().0;
    assert!(after >= before_restart);

    // Idle: every entry gets cosigned by all three (w2 resumed from its state), and verify
    // passes with a quorum of 2, and of 3.
    let ok = s.wait_verified(2);
    assert!(ok.contains("witnessed: cosigned by"), "{ok}");
    let ok3 = s.wait_verified(3);
    assert!(
        ok3.contains("cosigned by 3 of the 3 given witnesses"),
        "{ok3}"
    );
    let size = LogReader::open(&s.log_dir).unwrap().size();
    assert_eq!(s.cosigned(), Some((size, 3)));

    // A receipt for an entry from the middle of the load carries the cosigned checkpoint, and
    // checks offline: inclusion proof against its root, log signature, 3 cosignatures.
    let index = size / 2;
    let out = Command::new(BIN)
        .args(["log", "proof", "inclusion", "--dir"])
        .arg(&s.log_dir)
        .args(["--index", &index.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let receipt_text = String::from_utf8(out.stdout).unwrap();
    let receipt = parapet_log::ProofText::parse(&receipt_text).unwrap();
    assert_eq!(receipt.number, index);
    let log_vkey = parapet_log::note::NoteVerifier::parse(&s.vkey).unwrap();
    let text = log_vkey
        .open(receipt.checkpoint.as_bytes(), "receipt")
        .unwrap();
    let cp = parapet_log::checkpoint::Checkpoint::parse(text, "receipt").unwrap();
    let entry = LogReader::open(&s.log_dir)
        .unwrap()
        .entries(index, index + 1)
        .next()
        .unwrap()
        .unwrap()
        .1;
    parapet_log::proof::verify_inclusion(
        index,
        cp.size,
        &parapet_log::entry_leaf_hash(&entry),
        &receipt.hashes,
        &cp.root,
    )
    .unwrap();
    let parsed = parse_note(receipt.checkpoint.as_bytes()).unwrap();
    for w in &s.witnesses {
        let v = CosignatureVerifier::parse(&w.vkey).unwrap();
        assert!(
            v.find(&parsed).unwrap().is_some(),
            "receipt lacks {}",
            w.vkey
        );
    }
    // `parapet log proof check` does the same from the receipt and the entry's bytes alone.
    std::fs::write(s.dir.join("receipt"), &receipt_text).unwrap();
    std::fs::write(s.dir.join("entry"), &entry).unwrap();
    let check = |entry: &Path, k: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["log", "proof", "check", "--vkey", &s.vkey, "--entry"])
            .arg(entry)
            .arg("--receipt")
            .arg(s.dir.join("receipt"));
        for w in &s.witnesses {
            cmd.args(["--witness", &w.vkey]);
        }
        let out = cmd.args(["--min-witnesses", k]).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = check(&s.dir.join("entry"), "3");
    assert!(
        ok && out.contains(&format!(
            "OK: entry {index} is in log parapet.test/pgbench at tree size {size}, cosigned by"
        )),
        "{out}"
    );
    let mut other = entry.clone();
    other.push(b' ');
    std::fs::write(s.dir.join("other-entry"), &other).unwrap();
    let (ok, out) = check(&s.dir.join("other-entry"), "2");
    assert!(
        !ok && out.contains("receipt check FAILED: the entry is not entry"),
        "{out}"
    );

    gw.stop();
    for p in procs {
        p.stop();
    }
    eprintln!("pgbench test: {:?}", started.elapsed());
}

/// Replaces the log directory's `checkpoint` with one re-signed by the log's key.
fn resign(log_dir: &Path, key: &Path) {
    let signer = parapet_log::read_signing_key(key).unwrap();
    let note = std::fs::read(log_dir.join("checkpoint")).unwrap();
    let text = parse_note(&note).unwrap().text.to_string();
    std::fs::write(log_dir.join("checkpoint"), signer.sign(&text)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_truncated_and_re_signed_log_is_refused_by_the_witnesses() {
    let s = setup("truncate");
    let procs = s.start_witnesses();
    let gw = s.serve();
    s.statements(20);
    s.wait_verified(3);
    gw.stop();
    let old_size = LogReader::open(&s.log_dir).unwrap().size();
    assert_eq!(
        s.cosigned(),
        Some((old_size, 3)),
        "the gateway appended entries after they were cosigned (on shutdown?)"
    );
    let snapshot = s.dir.join("snapshot");
    copy_dir(&s.log_dir, &snapshot);

    let gw = s.serve();
    s.statements(40);
    s.wait_verified(3);
    gw.stop();
    let full_size = LogReader::open(&s.log_dir).unwrap().size();
    assert!(full_size > old_size + 40);

    // The operator truncates the log to its older size and re-signs it with the log's key
    // (the old cosigned checkpoint, genuinely cosigned, comes along).
    std::fs::remove_dir_all(&s.log_dir).unwrap();
    std::fs::rename(&snapshot, &s.log_dir).unwrap();
    let _ = std::fs::remove_file(s.log_dir.join("journal"));
    resign(&s.log_dir, &s.log_key);
    std::fs::write(s.dir.join("serve.stderr"), "").unwrap();
    let gw = s.serve();
    s.statements(10);

    // The witnesses have seen a larger tree: they answer 409 with it; the log says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.serve_stderr().contains("REFUSED") {
        assert!(
            Instant::now() < deadline,
            "no warning: {}",
            s.serve_stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let size = LogReader::open(&s.log_dir).unwrap().size();
    assert!(size > old_size && size < full_size);
    let said = s.serve_stderr();
    assert!(
        said.contains(&format!(
            "the witness has cosigned size {full_size} but the log has only "
        )) && said.contains(" entries: the log was truncated or replaced"),
        "{said}"
    );
    // One warning per witness, not one a second as the log grows.
    assert_eq!(said.matches("REFUSED").count(), 3, "{said}");
    // The console's log health shows it: every witness refused, and the last cosigned size.
    let health = common::http::get(
        std::net::SocketAddr::from(([127, 0, 0, 1], s.console_port)),
        "/api/health",
        Some(&s.console_token),
    )
    .json();
    let w = &health["witnessing"];
    assert_eq!(w["cosigned_size"].as_u64(), Some(old_size), "{health}");
    assert!(
        w["witnesses"]
            .as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|x| x["refused"] == true)),
        "{health}"
    );
    for w in &s.witnesses {
        assert!(said.contains(w.vkey.split('+').next().unwrap()), "{said}");
    }
    // Nothing new was cosigned, and verify with a quorum fails, saying how far the log is
    // witnessed; without witnesses it passes (the truncation is otherwise invisible).
    assert_eq!(s.cosigned().map(|c| c.0), Some(old_size));
    let (ok, out) = s.verify(2);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("the log is unwitnessed beyond entry {old_size}"))
            && out.contains(&format!("{} of its {size} entries", size - old_size)),
        "{out}"
    );
    common::assert_verifies(&s.log_dir, &s.vkey);
    gw.stop();
    for p in procs {
        p.stop();
    }
}

#[test]
fn a_log_with_a_rewritten_old_entry_is_refused_by_the_witnesses() {
    let s = setup("rewrite");
    let procs = s.start_witnesses();
    let policy = parapet_log::WitnessPolicy::new(
        s.witnesses
            .iter()
            .map(|w| {
                parapet_log::WitnessEndpoint::new(
                    w.vkey.split('+').next().unwrap(),
                    &w.url(),
                    &w.vkey,
                )
                .unwrap()
            })
            .collect(),
        2,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let append = |log: &Log, from: usize, n: usize, edit: Option<usize>| {
        rt.block_on(async {
            for i in from..from + n {
                let e = if Some(i) == edit {
                    format!("entry {i} (rewritten)")
                } else {
                    format!("entry {i}")
                };
                log.append(e.into_bytes()).await.unwrap();
            }
        })
    };
    let wait_cosigned = |log: &Log, size: u64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = log.witness_status().unwrap();
            if st.cosigned_size == size {
                return st;
            }
            assert!(Instant::now() < deadline, "not cosigned at {size}: {st:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // The log, witnessed: 300 entries (more than a tile), cosigned by all three.
    let log = Log::open(&s.log_dir, &s.log_key).unwrap();
    log.start_witnessing(policy.clone()).unwrap();
    append(&log, 0, 300, None);
    let st = wait_cosigned(&log, 300);
    assert!(st.cosigned_age().unwrap() < Duration::from_secs(60));
    drop(log);
    s.wait_verified(2);

    // The operator changes entry 5 and recomputes everything: a fresh log with the same key
    // and origin (tiles, hashes, re-signed checkpoint), then moves it into place.
    let forged = s.dir.join("forged");
    let throwaway = s.dir.join("throwaway.key");
    Log::init(&forged, "parapet.test/rewrite", &throwaway).unwrap();
    resign(&forged, &s.log_key);
    let log = Log::open(&forged, &s.log_key).unwrap();
    append(&log, 0, 300, Some(5));
    drop(log);
    std::fs::rename(&s.log_dir, s.dir.join("original")).unwrap();
    std::fs::rename(&forged, &s.log_dir).unwrap();
    // It verifies on its own: only the witnesses can tell.
    common::assert_verifies(&s.log_dir, &s.vkey);

    // Running on it, the log keeps appending; the witnesses refuse every checkpoint.
    let log = Log::open(&s.log_dir, &s.log_key).unwrap();
    log.start_witnessing(policy).unwrap();
    append(&log, 300, 10, None);
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        let st = log.witness_status().unwrap();
        // (The first round may see the forged checkpoint of size 300: a 409 on the same size.)
        if st.log_size == 310
            && st
                .witnesses
                .iter()
                .all(|w| w.refused && w.error.as_deref().is_some_and(|e| e.contains("(422)")))
        {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "witnesses did not refuse: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st.cosigned_size, 0, "{st:?}");
    assert_eq!(st.log_size, 310);
    for w in &st.witnesses {
        let err = w.error.as_deref().unwrap_or_default();
        assert!(
            err.contains("refuses (422)") && err.contains("not a consistent extension"),
            "{err}"
        );
    }
    for w in &s.witnesses {
        assert!(
            w.stderr().contains("refused to cosign: 422"),
            "{}",
            w.stderr()
        );
    }
    drop(log);
    let (ok, out) = s.verify(2);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the log is unwitnessed beyond entry 0: 310 of its 310 entries"),
        "{out}"
    );
    for p in procs {
        p.stop();
    }
}

#[test]
fn the_witness_process_speaks_tlog_witness_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vkey = Log::init(&dir.join("log"), "parapet.test/http", &dir.join("log.key")).unwrap();
    std::fs::write(dir.join("log.vkey"), &vkey).unwrap();
    let w = W::init(dir, "witness.test/http");
    // init refuses to overwrite the key, and a name with a space.
    let again = Command::new(BIN)
        .args(["witness", "init", "--key"])
        .arg(&w.key)
        .args(["--name", "x"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = Command::new(BIN)
        .args(["witness", "init", "--key"])
        .arg(dir.join("other.key"))
        .args(["--name", "a b"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid key name"));

    let mut append = Command::new(BIN)
        .args(["log", "append", "--dir"])
        .arg(dir.join("log"))
        .arg("--key")
        .arg(dir.join("log.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    append
        .stdin
        .take()
        .unwrap()
        .write_all(b"a\nb\nc\nd\ne\n")
        .unwrap();
    assert!(append.wait().unwrap().success());
    let p = w.serve(&dir.join("log.vkey"));
    let note = std::fs::read(dir.join("log").join("checkpoint")).unwrap();
    let body = parapet_log::witness::AddCheckpoint::encode(0, &[], &note);
    assert_eq!(http(w.port, "GET", "/add-checkpoint", b"").0, 405);
    assert_eq!(http(w.port, "POST", "/other", &body).0, 404);
    assert_eq!(
        http(w.port, "POST", "/add-checkpoint", &vec![b'x'; 100_000]).0,
        413
    );
    assert_eq!(add_checkpoint(w.port, b"old zero\n\n").0, 400);
    let (status, text) = add_checkpoint(w.port, &body);
    assert_eq!(status, 200, "{text}");
    let cosigned = format!("{}{text}", String::from_utf8_lossy(&note));
    let v = CosignatureVerifier::parse(&w.vkey).unwrap();
    assert!(v
        .find(&parse_note(cosigned.as_bytes()).unwrap())
        .unwrap()
        .is_some());
    let (status, head, text) = http(w.port, "POST", "/add-checkpoint", &body);
    assert_eq!((status, text.as_str()), (409, "5\n"), "{head}");
    assert!(head.contains("content-type: text/x.tlog.size"), "{head}");
    // A checkpoint of another log: 404.
    let other = parapet_log::note::NoteSigner::generate("parapet.test/other");
    let foreign =
        other.sign("parapet.test/other\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n");
    assert_eq!(
        add_checkpoint(
            w.port,
            &parapet_log::witness::AddCheckpoint::encode(0, &[], foreign.as_bytes())
        )
        .0,
        404
    );
    p.stop();

    // verify's witness arguments say what is missing.
    let verify = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["verify", "--dir"])
            .arg(dir.join("log"))
            .args(["--vkey", &vkey])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = verify(&["--min-witnesses", "1"]);
    assert!(
        !ok && err.contains("give each with --witness VKEY"),
        "{err}"
    );
    let (ok, err) = verify(&["--witness", &w.vkey, "--min-witnesses", "2"]);
    assert!(
        !ok && err.contains("more than the 1 --witness keys"),
        "{err}"
    );
    let (ok, err) = verify(&["--witness", &vkey]);
    assert!(!ok && err.contains("type 0x04"), "{err}");
    // The witness cosigned, but no cosigned checkpoint was published (no witness client).
    let (ok, err) = verify(&["--witness", &w.vkey]);
    assert!(
        !ok && err
            .contains("unwitnessed beyond entry 0: 5 of its 5 entries (indices 0..5) lack 1 valid"),
        "{err}"
    );
    // Publishing the note with the witness's line makes it pass.
    std::fs::write(dir.join("log").join(COSIGNED_CHECKPOINT), &cosigned).unwrap();
    let (ok, err) = verify(&["--witness", &w.vkey]);
    assert!(ok, "{err}");
    // A cosignature that does not verify (one base64 character of its signature changed) does
    // not count, and is reported.
    let mut chars: Vec<char> = cosigned.chars().collect();
    let at = chars.len() - 12;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let broken: String = chars.into_iter().collect();
    std::fs::write(dir.join("log").join(COSIGNED_CHECKPOINT), &broken).unwrap();
    let (ok, err) = verify(&["--witness", &w.vkey]);
    assert!(
        !ok && err.contains(
            "invalid cosignatures: checkpoint.cosigned: cosignature by witness.test/http"
        ),
        "{err}"
    );
}

#[test]
fn a_witness_killed_with_kill_9_again_and_again_never_forgets_what_it_cosigned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log_dir = dir.join("log");
    let vkey = Log::init(&log_dir, "parapet.test/kill9", &dir.join("log.key")).unwrap();
    std::fs::write(dir.join("log.vkey"), &vkey).unwrap();
    let w = W::init(dir, "witness.test/kill9");
    let mut p = w.serve(&dir.join("log.vkey"));
    let log = Log::open(&log_dir, &dir.join("log.key")).unwrap();
    log.start_witnessing(
        parapet_log::WitnessPolicy::new(
            vec![
                parapet_log::WitnessEndpoint::new("witness.test/kill9", &w.url(), &w.vkey).unwrap(),
            ],
            1,
        )
        .unwrap(),
    )
    .unwrap();
    // Appends all along, on their own thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    log.append(format!("entry {i}").into_bytes()).await.unwrap();
                    i += 1;
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
    };
    let mut kills = 0;
    let mut max_seen = 0;
    for round in 0..8u64 {
        // Kill at varying moments of the one-second cosigning cycle.
        std::thread::sleep(Duration::from_millis(700 + 97 * round % 600));
        // What the log knows the witness cosigned: it learned it from a 200, sent after the
        // witness stored the checkpoint.
        let known = log.witness_status().unwrap().witnesses[0]
            .cosigned_size
            .unwrap_or(0);
        p.kill9();
        kills += 1;
        p = w.serve(&dir.join("log.vkey"));
        let (status, body) = add_checkpoint(
            w.port,
            &parapet_log::witness::AddCheckpoint::encode(
                0,
                &[],
                LogReader::open(&log_dir).unwrap().checkpoint_note(),
            ),
        );
        let remembered: u64 = match status {
            409 => body.trim_end().parse().unwrap(),
            // Its state was empty and this request was cosigned.
            200 => 0,
            s => panic!("unexpected {s}: {body}"),
        };
        assert!(
            remembered >= known && remembered >= max_seen,
            "after kill -9 #{kills} the witness remembers {remembered}, but it had cosigned {known} (max seen {max_seen})"
        );
        max_seen = max_seen.max(remembered);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    appender.join().unwrap();
    assert!(max_seen > 0, "the witness cosigned nothing");
    // Once idle, the witness cosigns the whole log again.
    let size = log.size();
    let deadline = Instant::now() + Duration::from_secs(15);
    while log.witness_status().unwrap().cosigned_size != size {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            log.witness_status().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(log);
    let out = Command::new(BIN)
        .args(["verify", "--dir"])
        .arg(&log_dir)
        .args(["--vkey", &vkey, "--witness", &w.vkey])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    p.stop();
}

#[test]
fn an_https_witness_cosigns_over_tls_checked_against_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log_dir = dir.join("log");
    let vkey = Log::init(&log_dir, "parapet.test/tls", &dir.join("log.key")).unwrap();
    std::fs::write(dir.join("log.vkey"), &vkey).unwrap();
    // A CA and a certificate for localhost signed by it.
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
    std::fs::write(dir.join("w.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("w.key"), leaf_key.serialize_pem()).unwrap();

    let w = W::init(dir, "witness.test/tls");
    let p = w.serve_with(
        &dir.join("log.vkey"),
        &[
            "--tls-cert".as_ref(),
            dir.join("w.crt").as_os_str(),
            "--tls-key".as_ref(),
            dir.join("w.key").as_os_str(),
        ],
    );
    let url = format!("https://localhost:{}", w.port);
    let endpoint = || parapet_log::WitnessEndpoint::new("witness.test/tls", &url, &w.vkey).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wait_status = |log: &Log, done: &dyn Fn(&parapet_log::WitnessStatus) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = log.witness_status().unwrap();
            if done(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{st:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Trusting the witness's CA: cosigned over TLS.
    let log = Log::open(&log_dir, &dir.join("log.key")).unwrap();
    log.start_witnessing(
        parapet_log::WitnessPolicy::new(
            vec![endpoint().with_ca_file(&dir.join("ca.pem")).unwrap()],
            1,
        )
        .unwrap(),
    )
    .unwrap();
    rt.block_on(async {
        for i in 0..10 {
            log.append(format!("entry {i}").into_bytes()).await.unwrap();
        }
    });
    wait_status(&log, &|st| st.cosigned_size == 10);
    drop(log);

    // With the system's CAs only, the certificate is refused and nothing is cosigned.
    let log = Log::open(&log_dir, &dir.join("log.key")).unwrap();
    log.start_witnessing(parapet_log::WitnessPolicy::new(vec![endpoint()], 1).unwrap())
        .unwrap();
    rt.block_on(async {
        log.append(b"entry 10".to_vec()).await.unwrap();
    });
    let st = wait_status(&log, &|st| st.witnesses[0].error.is_some());
    let e = st.witnesses[0].error.as_deref().unwrap();
    assert!(
        e.contains("TLS with localhost") && e.contains("certificate"),
        "{e}"
    );
    assert_eq!(st.cosigned_size, 10);
    drop(log);
    p.stop();
}
