//! A throw-away single-node Garage (S3-compatible object store) for tests: a config file in a temp
//! dir, free ports, `garage server` started as a child (killed on drop, and by the kernel if the
//! test process dies), a layout of one node assigned and applied, one bucket, one access key
//! allowed on it, and the bucket served by Garage's website endpoint (under the host name
//! `localhost`). Std only, so that any crate's tests can include it (`#[path]`).
//!
//! The binary is `$GARAGE_BIN`, else `garage` on PATH, else `~/.cargo/bin/garage`;
//! `scripts/setup.sh --tests` installs it. Without it, [`Garage::start`] panics with that hint.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How to get Garage when it is missing.
pub const GARAGE_HINT: &str = "Garage (the S3-compatible object store of the object-storage \
    tests) is not installed: run scripts/setup.sh --tests (it builds Garage 2.5.0 once with `cargo install \
    garage --version 2.5.0 --locked`), or set GARAGE_BIN to a garage binary";

/// A running single-node Garage with one bucket and one key.
pub struct Garage {
    /// Its temp dir (config, metadata, data, log).
    pub dir: PathBuf,
    /// The garage binary.
    pub bin: PathBuf,
    /// S3 API endpoint, e.g. `http://127.0.0.1:39000`.
    pub endpoint: String,
    /// Region Garage answers to.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Access key ID (`AWS_ACCESS_KEY_ID`).
    pub key_id: String,
    /// Secret key (`AWS_SECRET_ACCESS_KEY`).
    pub secret: String,
    /// Website endpoint serving the bucket publicly: `http://localhost:PORT/` (Garage picks the
    /// bucket by the Host header; the bucket has the global alias `localhost` too).
    pub web_url: String,
    /// Admin API address.
    pub admin: SocketAddr,
    child: Option<Child>,
    _tmp: Option<TempDirGuard>,
}

/// Removes the temp dir on drop.
struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The garage binary, or `None`.
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("garage");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let p = home.join("bin").join("garage");
    p.is_file().then_some(p)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// 32 random bytes as hex (the cluster's RPC secret).
fn random_hex32() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut s = String::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

impl Garage {
    /// Starts a node in a new temp dir with bucket `bucket`; panics (with [`GARAGE_HINT`] if the
    /// binary is missing) when it cannot.
    pub fn start(bucket: &str) -> Garage {
        let bin = garage_bin().unwrap_or_else(|| panic!("{GARAGE_HINT}"));
        let dir = std::env::temp_dir().join(format!(
            "parapet-garage-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("garage temp dir");
        let guard = TempDirGuard(dir.clone());
        let (rpc, s3, web, admin) = (free_port(), free_port(), free_port(), free_port());
        let region = "us-east-1".to_string();
        let config = format!(
            "metadata_dir = \"{meta}\"\n\
             data_dir = \"{data}\"\n\
             db_engine = \"lmdb\"\n\
             metadata_fsync = false\n\
             data_fsync = false\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\
             [s3_api]\n\
             s3_region = \"{region}\"\n\
             api_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             [s3_web]\n\
             bind_addr = \"127.0.0.1:{web}\"\n\
             root_domain = \".web.garage.localhost\"\n\
             index = \"index.html\"\n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin}\"\n",
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = random_hex32(),
        );
        let cfg = dir.join("garage.toml");
        std::fs::write(&cfg, config).expect("write garage.toml");
        let log = std::fs::File::create(dir.join("garage.log")).expect("garage.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&cfg)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start garage server");
        let mut g = Garage {
            dir,
            bin,
            endpoint: format!("http://127.0.0.1:{s3}"),
            region,
            bucket: bucket.to_string(),
            key_id: String::new(),
            secret: String::new(),
            web_url: format!("http://localhost:{web}/"),
            admin: ([127, 0, 0, 1], admin).into(),
            child: Some(child),
            _tmp: Some(guard),
        };
        g.set_up(s3, web);
        g
    }

    /// Runs `garage -c CONFIG ARGS` once.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(args)
            .env("RUST_LOG", "garage=warn")
            .output()
            .expect("run the garage CLI")
    }

    /// Runs `garage ARGS` until it succeeds (the node may still be starting), up to 30 s;
    /// returns its stdout.
    pub fn cli_ok(&mut self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "garage server exited ({status}); its log:\n{}",
                    self.server_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} kept failing: {}{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's output so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }

    fn set_up(&mut self, s3: u16, web: u16) {
        let id = self.cli_ok(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap_or_default().to_string();
        assert!(!id.is_empty(), "garage node id printed nothing");
        self.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        self.cli_ok(&["layout", "apply", "--version", "1"]);
        let bucket = self.bucket.clone();
        self.cli_ok(&["bucket", "create", &bucket]);
        let key = self.cli_ok(&["key", "create", "parapet-test-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name:?} in the output of garage key create:\n{key}"))
        };
        self.key_id = field("Key ID:");
        self.secret = field("Secret key:");
        self.cli_ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &bucket,
            "--key",
            "parapet-test-key",
        ]);
        self.cli_ok(&["bucket", "website", "--allow", &bucket]);
        self.cli_ok(&["bucket", "alias", &bucket, "localhost"]);
        for port in [s3, web] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "garage is not listening on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `kill -9` of the server (the data stays in its dir).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The environment an S3 client reads its credentials from.
    pub fn aws_env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }
}
