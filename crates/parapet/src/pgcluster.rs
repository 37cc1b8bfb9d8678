//! Throw-away PostgreSQL clusters (initdb + postgres in a directory, on a free port), used by
//! `parapet quickstart`, the integration tests and the benchmark script's helpers.
//!
//! When running as root the server runs as the `postgres` OS user (PostgreSQL refuses root).
//! The server process is started with `PR_SET_PDEATHSIG = SIGKILL` so it cannot outlive the
//! thread that started it, even if that process is killed; [`PgCluster::stop`] (also on drop)
//! shuts it down cleanly and removes nothing but what it created.

use anyhow::{bail, Context};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install the PostgreSQL server binaries.
pub const INSTALL_HINT: &str = "install it with: apt-get install postgresql postgresql-contrib";

/// Finds the newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `postgres`.
pub fn bindir() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("PARAPET_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let bin = e.path().join("bin");
            let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            if bin.join("initdb").exists()
                && bin.join("postgres").exists()
                && best.as_ref().is_none_or(|(b, _)| v > *b)
            {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, b)| b).with_context(|| {
        format!("no PostgreSQL server binaries found in /usr/lib/postgresql/*/bin; {INSTALL_HINT}")
    })
}

/// The uid/gid of the `postgres` OS user when we are root (PostgreSQL refuses to run as root).
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").context("user name")?;
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd record, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root but there is no `postgres` OS user to run PostgreSQL as; {INSTALL_HINT}");
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

fn command(bin: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin);
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    c
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// A running throw-away cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
    child: Option<Child>,
    ids: Option<(u32, u32)>,
    password: String,
}

/// Options for [`PgCluster::start`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Password of the `postgres` superuser (TCP logins use SCRAM-SHA-256).
    pub password: String,
    /// Run with `fsync=off` (tests).
    pub no_fsync: bool,
    /// `max_connections`.
    pub max_connections: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            password: "postgres".into(),
            no_fsync: true,
            max_connections: 200,
        }
    }
}

impl PgCluster {
    /// Creates a cluster in `dir` (which must exist; made owned by `postgres` when root) and starts it.
    pub fn start(dir: &Path, opts: &PgOptions) -> anyhow::Result<PgCluster> {
        let bindir = bindir()?;
        let ids = run_as()?;
        if let Some((uid, gid)) = ids {
            chown(dir, uid, gid)?;
        }
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &opts.password).context("cannot write the password file")?;
        if let Some((uid, gid)) = ids {
            chown(&pwfile, uid, gid)?;
        }
        let out = command(&bindir.join("initdb"), ids)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run initdb; {INSTALL_HINT}"))?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut cmd = command(&bindir.join("postgres"), ids);
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("max_connections={}", opts.max_connections))
            .args(["-c", "shared_buffers=128MB"]);
        if opts.no_fsync {
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        let log = std::fs::File::create(dir.join("postgres.log"))
            .context("cannot create postgres.log")?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start postgres; {INSTALL_HINT}"))?;
        let mut c = PgCluster {
            dir: dir.to_path_buf(),
            port,
            bindir,
            child: Some(child),
            ids,
            password: opts.password.clone(),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                    bail!("postgres exited ({st}) during start-up:\n{log}");
                }
            }
            let ok = Command::new(self.bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .with_context(|| format!("cannot run pg_isready; {INSTALL_HINT}"))?
                .success();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not become ready within 60 s (see {})",
                    self.dir.join("postgres.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Superuser password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// `postgres://<user>:<password>@127.0.0.1:<port>/<db>` (`user` and `password` must not need
    /// percent-encoding).
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// libpq connection string for direct access as the superuser.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={db}",
            self.port, self.password
        )
    }

    /// Runs `psql` directly against the cluster and returns its stdout (fails on error).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.conninfo(db),
                "-c",
                sql,
            ])
            .output()
            .with_context(|| format!("cannot run psql; {INSTALL_HINT}"))?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Fast shutdown; waits for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = self.ids;
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {} to the postgres user", p.display()))
}
