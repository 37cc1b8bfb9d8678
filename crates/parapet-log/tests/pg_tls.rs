//! TLS to the PostgreSQL of a fleet's log, with a real PostgreSQL that accepts only TLS
//! connections (`hostssl`, `ssl=on`) and a certificate from a test CA: the sequencer and the
//! fleet's connections use TLS and check the certificate; an unknown CA and `sslmode=disable`
//! are refused.

#[path = "common/postgres.rs"]
mod postgres;

use postgres::Postgres;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// A CA and a server certificate it signed for `localhost`, as PEM: (ca, cert, key).
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn the_fleets_postgres_connections_use_checked_tls() {
    let (ca, cert, key) = certificates();
    let pg = Postgres::start();
    let data = pg.path().join("data");
    let owner = std::fs::metadata(&data).expect("data dir").uid();
    let gid = std::fs::metadata(&data).expect("data dir").gid();
    for (name, text, mode) in [("server.crt", &cert, 0o644), ("server.key", &key, 0o600)] {
        let p = data.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::os::unix::fs::chown(&p, Some(owner), Some(gid)).expect("chown");
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .expect("hba");
    let conf = data.join("postgresql.conf");
    let mut c = std::fs::read_to_string(&conf).expect("conf");
    c.push_str("\nssl = on\n");
    std::fs::write(&conf, c).expect("conf");
    pg.ctl("restart");

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("ca");
    let (other_ca, _, _) = certificates();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, &other_ca).expect("ca");
    let base = format!("postgres://postgres@localhost:{}/postgres", pg.port);

    // The sequencer connects (TLS, certificate checked against the CA given) and works.
    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    );
    let seq = parapet_log::sequencer::PgSequencer::connect(&url).expect("sequencer over TLS");
    assert!(seq.generation() >= 1);
    // And the server saw TLS: nothing else may connect here (hostnossl … reject).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let encrypted: bool = rt.block_on(async {
        let (u, tls) = parapet_log::pg_tls::prepare(&url).expect("tls");
        let (client, conn) = tokio_postgres::connect(&u, tls).await.expect("connect");
        tokio::spawn(conn);
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0)
    });
    assert!(encrypted);

    // The fleet's connection reaches the server (its tables are missing here: a server error,
    // not a connection error).
    let e = parapet_log::fleet_sizes(&url).expect_err("no fleet tables");
    assert!(e.to_string().contains("parapet_fleet"), "{e}");

    // A certificate from another CA, or the system's CAs, is refused; so is no TLS at all.
    for (what, url) in [
        (
            "another CA",
            format!(
                "{base}?sslmode=require&sslrootcert={}",
                other_file.display()
            ),
        ),
        ("the system's CAs", format!("{base}?sslmode=require")),
        ("the default (prefer)", base.clone()),
    ] {
        let e = parapet_log::sequencer::PgSequencer::connect(&url)
            .expect_err(&format!("{what}: refused"));
        assert!(e.to_string().contains("certificate"), "{what}: {e}");
    }
    let e = parapet_log::sequencer::PgSequencer::connect(&format!("{base}?sslmode=disable"))
        .expect_err("no TLS: refused by the server");
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
}
