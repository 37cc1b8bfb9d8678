//! Function identity against a real PostgreSQL: a throw-away cluster (initdb in a temp dir on a
//! free port) where a superuser wires blocked functions into an operator, an aggregate, an
//! internal-language alias and SQL / PL/pgSQL wrappers directly (not through the gateway); the
//! rows of `LOAD_QUERY`, read by an ordinary role, make the catalog the guard decides with.
//! Needs the PostgreSQL server binaries and psql; a missing tool fails the test.

use parapet_guard::catalog::{Catalog, LOAD_QUERY};
use parapet_guard::{Guard, PolicySource, RequestContext, Verdict};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

const INSTALL: &str =
    "install the PostgreSQL server binaries and client: apt-get install postgresql postgresql-client";

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("/usr/lib/postgresql: {e}; {INSTALL}"))
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("psql").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("initdb and psql not found; {INSTALL}"))
}

/// A throw-away cluster, killed when dropped.
struct Cluster {
    child: Child,
    port: u16,
    bin: PathBuf,
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
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
        bin,
        _dir: dir,
    };
    for _ in 0..200 {
        if cluster.psql_try("postgres", "SELECT 1").is_some() {
            return cluster;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("postgres did not start on port {port}");
}

/// Field, record and NULL markers for psql's unaligned output.
const FS: &str = "\u{1f}";
const RS: &str = "\u{1e}";
const NULL: &str = "\u{2}";

impl Cluster {
    fn psql_try(&self, user: &str, sql: &str) -> Option<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user])
            .args(["-d", "postgres", "-F", FS, "-R", RS, "-P"])
            .arg(format!("null={NULL}"))
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("run psql: {e}; {INSTALL}"));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn psql(&self, user: &str, sql: &str) -> String {
        self.psql_try(user, sql)
            .unwrap_or_else(|| panic!("psql as {user} failed: {sql}"))
    }

    /// Rows of a query, as the gateway hands them to the guard (every column text).
    fn rows(&self, user: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        self.psql(user, sql)
            .trim_end_matches('\n')
            .split(RS)
            .filter(|r| !r.is_empty())
            .map(|r| {
                r.split(FS)
                    .map(|c| (c != NULL).then(|| c.to_string()))
                    .collect()
            })
            .collect()
    }
}

fn ctx(catalog: Option<Arc<Catalog>>) -> RequestContext {
    RequestContext {
        user: "alice".into(),
        target: "main".into(),
        catalog,
        ..RequestContext::default()
    }
}

const SETUP: &str = r#"
CREATE ROLE plain LOGIN;
CREATE OPERATOR public.<<< (FUNCTION = pg_read_file, RIGHTARG = text);
CREATE FUNCTION public.rd(text) RETURNS text LANGUAGE internal AS 'pg_read_file_all';
CREATE FUNCTION public.wrapper(p text) RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file(p) $$;
CREATE FUNCTION public.wrap2(p text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN public.wrapper(p); END $$;
CREATE AGGREGATE public.readall(bigint, bigint) (SFUNC = pg_read_file, STYPE = text, INITCOND = 'PG_VERSION');
CREATE FUNCTION public.kill(int) RETURNS boolean LANGUAGE sql AS $$ SELECT pg_terminate_backend($1) $$;
CREATE FUNCTION public.pg_read_file_x(text) RETURNS text LANGUAGE sql AS $$ SELECT upper($1) $$;
CREATE FUNCTION public.shout(text) RETURNS text LANGUAGE sql AS $$ SELECT upper($1) || '!' $$;
CREATE OPERATOR public.!!! (FUNCTION = public.shout, RIGHTARG = text);
"#;

#[test]
fn a_real_catalog_reveals_aliases_operators_aggregates_and_wrappers() {
    let c = start_cluster();
    c.psql("postgres", SETUP);
    // The attacks work on the server itself (superuser), so the guard must see them.
    let version = c.psql("postgres", "SELECT <<< 'PG_VERSION'");
    assert!(version.trim().starts_with("1"), "{version:?}");
    let agg = c.psql("postgres", "SELECT public.readall(0, 2)");
    assert!(!agg.trim().is_empty(), "{agg:?}");

    let rows = c.rows("plain", LOAD_QUERY);
    assert!(rows.iter().all(|r| r.len() == 11), "{rows:?}");
    let catalog = Arc::new(Catalog::from_rows(rows).expect("catalog rows"));
    assert_ne!(catalog.id(), Catalog::builtin().id());
    let guard = Guard::load(&PolicySource {
        files: vec![],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("default pack");
    let target = ctx(Some(catalog.clone()));
    let builtin = ctx(None);
    let judge = |sql: &str, ctx: &RequestContext| {
        let d = guard.decide(sql, ctx);
        (
            d.verdict,
            d.rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        )
    };
    for (sql, rule) in [
        ("SELECT <<< '/etc/passwd'", "parapet.server-file-functions"),
        (
            "SELECT 'a' OPERATOR(public.<<<) 'b'",
            "parapet.server-file-functions",
        ),
        ("SELECT rd('x')", "parapet.server-file-functions"),
        (
            "SELECT public.wrapper('x')",
            "parapet.server-file-functions",
        ),
        ("SELECT wrap2('x')", "parapet.server-file-functions"),
        ("SELECT readall(0, 10)", "parapet.server-file-functions"),
        ("SELECT kill(42)", "parapet.session-control"),
        (
            "SELECT pg_read_file_old('x', 0, 10)",
            "parapet.server-file-functions",
        ),
    ] {
        let (v, rules) = judge(sql, &target);
        assert_eq!(v, Verdict::Deny, "{sql}: {rules:?}");
        assert!(rules.iter().any(|r| r == rule), "{sql}: {rules:?}");
    }
    for sql in [
        "SELECT pg_read_file_x('a')",
        "SELECT !!! 'a'",
        "SELECT shout('a')",
        "SELECT length('a')",
        "SELECT 1 + 2, 'a' || 'b', '1'::int",
    ] {
        let (v, rules) = judge(sql, &target);
        assert_eq!(v, Verdict::Allow, "{sql}: {rules:?}");
    }
    // Without the target's catalog, objects made in the database are unknown; built-in aliases
    // are still known.
    for sql in [
        "SELECT <<< '/etc/passwd'",
        "SELECT rd('x')",
        "SELECT wrapper('x')",
    ] {
        assert_eq!(judge(sql, &builtin).0, Verdict::Allow, "{sql}");
    }
    assert_eq!(
        judge("SELECT pg_read_file_old('x', 0, 10)", &builtin).0,
        Verdict::Deny
    );
    // The built-in data knows every built-in function of this server.
    let names = c.rows(
        "plain",
        "SELECT DISTINCT proname FROM pg_proc WHERE oid < 16384",
    );
    let b = Catalog::builtin();
    let missing: Vec<&str> = names
        .iter()
        .filter_map(|r| r.first().and_then(|c| c.as_deref()))
        .filter(|n| !b.knows_function(n))
        .collect();
    assert!(names.len() > 2000 && missing.is_empty(), "{missing:?}");
}

/// `@max_rows` rules, decided with a real target's catalog: a statement is limited only when its
/// command tag counts every row it changes; triggers, rules and cascading foreign keys (on the
/// table, or on a partition or child of it) and functions of the target's own make it uncountable,
/// so it is denied.
#[test]
fn row_limits_refuse_what_the_command_tag_does_not_count() {
    let c = start_cluster();
    c.psql(
        "postgres",
        r#"
CREATE ROLE plain LOGIN;
CREATE TABLE plain_t (id int PRIMARY KEY, v int);
CREATE TABLE audited (id int PRIMARY KEY, v int);
CREATE TABLE audit_trail (id int);
CREATE FUNCTION public.note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit_trail VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER audited_note AFTER UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION public.note();
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int, parent_id int REFERENCES parent (id) ON DELETE CASCADE);
CREATE TABLE restricted_parent (id int PRIMARY KEY);
CREATE TABLE restricted_child (id int, parent_id int REFERENCES restricted_parent (id));
CREATE TABLE ruled (id int);
CREATE RULE ruled_copy AS ON INSERT TO ruled DO ALSO INSERT INTO audit_trail VALUES (NEW.id);
CREATE TABLE parted (id int, v int) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
CREATE TRIGGER parted_note AFTER UPDATE ON parted_1 FOR EACH ROW EXECUTE FUNCTION public.note();
CREATE FUNCTION public.bump() RETURNS int LANGUAGE sql AS $$ UPDATE plain_t SET v = v + 1 RETURNING 1 $$;
"#,
    );
    let rows = c.rows("plain", LOAD_QUERY);
    assert!(rows.iter().all(|r| r.len() == 11), "{rows:?}");
    let catalog = Arc::new(Catalog::from_rows(rows).expect("catalog rows"));
    for (table, cause) in [
        ("public.audited", "trigger audited_note"),
        ("public.parent", "foreign key action"),
        ("public.ruled", "rule ruled_copy"),
        ("public.parted", "trigger parted_note"),
        ("public.parted_1", "trigger parted_note"),
    ] {
        let why = catalog.write_effect(table);
        assert!(
            why.as_deref().is_some_and(|w| w.contains(cause)),
            "{table}: {why:?}"
        );
    }
    for table in [
        "public.plain_t",
        "public.restricted_parent",
        "public.child",
        "public.audit_trail",
    ] {
        assert_eq!(catalog.write_effect(table), None, "{table}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("limits.cedar");
    std::fs::write(
        &rules,
        r#"
@id("team.small-writes")
@reason("writes change at most 10 rows")
@max_rows("10")
forbid (principal, action, resource)
when { context.kinds.containsAny(["update", "delete", "insert", "merge"]) };

@id("team.smaller-deletes")
@reason("deletes change at most 5 rows")
@max_rows("5")
forbid (principal, action, resource)
when { context.kind == "delete" };

@id("team.small-reads")
@reason("reads return at most 1_000 rows")
@max_rows("1_000")
forbid (principal, action, resource)
when { context.kind == "select" && context.read_names.contains("public.plain_t") };
"#,
    )
    .expect("write rules");
    let guard = Guard::load(&PolicySource {
        files: vec![rules],
        default_pack: true,
        modes: Default::default(),
    })
    .expect("rules load");
    let target = ctx(Some(catalog));
    let limited = |sql: &str| {
        let d = guard.decide(sql, &target);
        assert_eq!(d.verdict, Verdict::Allow, "{sql}: {d:?}");
        let l = d
            .max_rows()
            .unwrap_or_else(|| panic!("{sql}: no limit: {d:?}"));
        (l.max_rows, l.rule.clone(), l.write)
    };
    assert_eq!(
        limited("UPDATE plain_t SET v = 1 WHERE id < 50"),
        (10, "team.small-writes".to_string(), true)
    );
    // The smallest limit wins.
    assert_eq!(
        limited("DELETE FROM plain_t WHERE id > 3"),
        (5, "team.smaller-deletes".to_string(), true)
    );
    assert_eq!(
        limited("DELETE FROM restricted_parent WHERE id > 0"),
        (5, "team.smaller-deletes".to_string(), true)
    );
    assert_eq!(
        limited("SELECT * FROM plain_t"),
        (1000, "team.small-reads".to_string(), false)
    );
    assert_eq!(
        limited("INSERT INTO plain_t SELECT g, g FROM generate_series(1, 5) g"),
        (10, "team.small-writes".to_string(), true)
    );
    let d = guard.decide("SELECT 1", &target);
    assert!(d.limits.is_empty(), "{d:?}");

    for (sql, why) in [
        ("UPDATE audited SET v = 2 WHERE id > 0", "trigger audited_note"),
        ("DELETE FROM parent WHERE id = 1", "foreign key action"),
        ("INSERT INTO ruled VALUES (1)", "rule ruled_copy"),
        ("UPDATE parted SET v = 1 WHERE id > 0", "trigger parted_note"),
        (
            "WITH gone AS (DELETE FROM audit_trail WHERE id > 0 RETURNING id) UPDATE plain_t SET v = 0 WHERE id IN (SELECT id FROM gone)",
            "nests a data-modifying statement",
        ),
        (
            "WITH x AS (UPDATE plain_t SET v = 3 WHERE id > 1 RETURNING id) UPDATE plain_t SET v = 4 WHERE id = 1",
            "nests a data-modifying statement",
        ),
        ("UPDATE plain_t SET v = public.bump() WHERE id > 0", "public.bump"),
        ("SELECT public.bump() FROM plain_t", "public.bump"),
        (
            "UPDATE plain_t SET v = 1 WHERE id = 1; COMMIT",
            "transaction control",
        ),
        ("EXPLAIN ANALYZE UPDATE plain_t SET v = 1 WHERE id > 0", "has no row count"),
    ] {
        let d = guard.decide(sql, &target);
        assert_eq!(d.verdict, Verdict::Deny, "{sql}: {d:?}");
        assert!(d.limits.is_empty(), "{sql}: {d:?}");
        assert!(
            d.reason.contains(why) && d.reason.contains("count"),
            "{sql}: {}",
            d.reason
        );
    }
}
