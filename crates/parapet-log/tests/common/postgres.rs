//! A throw-away PostgreSQL cluster for the log's tests: `initdb` in a temp dir, started and
//! restarted with `pg_ctl` on a free port (as the `postgres` OS user when run as root), stopped
//! on drop. Std and libc only. The server binaries are found in `$PARAPET_PG_BINDIR`, else the
//! newest `/usr/lib/postgresql/*/bin`; without them, [`Postgres::start`] panics with a hint.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How to get PostgreSQL when it is missing.
pub const PG_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl) not found: run \
    scripts/setup.sh (it installs postgresql 15), or set PARAPET_PG_BINDIR";

/// A running cluster.
pub struct Postgres {
    /// Its temp dir (data, socket, log).
    pub dir: PathBuf,
    /// The server binaries.
    pub bindir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    ids: Option<(u32, u32)>,
}

fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PARAPET_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let bin = e.path().join("bin");
            let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            if bin.join("pg_ctl").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, b)| b).unwrap_or_else(|| panic!("{PG_HINT}"))
}

/// The uid/gid of the `postgres` OS user when we are root (PostgreSQL refuses to run as root).
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("name");
    // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root without a `postgres` OS user to run PostgreSQL as; {PG_HINT}"
    );
    // SAFETY: pw is non-null.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

impl Postgres {
    /// Creates and starts a cluster (trust authentication, user `postgres`).
    pub fn start() -> Postgres {
        let bindir = bindir();
        let ids = run_as();
        let dir = std::env::temp_dir().join(format!(
            "parapet-logpg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's dir");
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = Postgres {
            dir,
            bindir,
            port,
            ids,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb ({e}); {PG_HINT}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.ctl("start");
        pg
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bindir.join(tool));
        if let Some((uid, gid)) = self.ids {
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs `pg_ctl ACTION` (start, restart, stop) and waits for it.
    pub fn ctl(&self, action: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "-o", &opts, "-l"])
            .arg(self.dir.join("postgres.log"))
            .arg(action)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl ({e}); {PG_HINT}"));
        assert!(
            out.status.success(),
            "pg_ctl {action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A key=value connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Runs `sql` with psql in database `db`; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .cmd("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql ({e}); {PG_HINT}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The cluster's dir.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
