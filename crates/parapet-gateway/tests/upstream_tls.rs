//! TLS from the gateway to the server, as libpq's `sslmode`: a real PostgreSQL with `ssl=on`
//! that accepts only TLS connections (`hostssl`), a certificate from a test CA, and targets in
//! each mode. The session's own backend reports whether it is encrypted (`pg_stat_ssl`).

mod common;

use common::*;
use parapet_gateway::{Durability, SslMode, TargetConfig, UpstreamConfig, UpstreamTls};
use std::path::{Path, PathBuf};

/// A CA and a server certificate it signed for `names`, as PEM: (ca, cert, key).
fn certificates(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn target(name: &str, port: u16, host: &str, mode: SslMode, root: Option<&Path>) -> TargetConfig {
    TargetConfig {
        name: name.into(),
        upstream: UpstreamConfig {
            host: host.into(),
            port,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            tls: UpstreamTls {
                mode,
                root_cert: root.map(Path::to_path_buf),
            },
        },
        environment: "production".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_follows_sslmode() {
    let (ca, cert, key) = certificates(&["localhost"]);
    let (other_ca, _, _) = certificates(&["localhost"]);
    let cluster = start_cluster_with(
        |data| {
            std::fs::write(data.join("server.crt"), &cert).expect("cert");
            std::fs::write(data.join("server.key"), &key).expect("key");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod key");
            // TLS connections only, over TCP.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("hba");
        },
        &["-c", "ssl=on"],
    );
    let port = cluster.port;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file: PathBuf = dir.path().join("ca.pem");
    let other_file: PathBuf = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, &ca).expect("ca");
    std::fs::write(&other_file, &other_ca).expect("ca");
    let s = setup_on(cluster, Durability::BeforeForward, false, |c| {
        c.targets = vec![
            target(
                "full",
                port,
                "localhost",
                SslMode::VerifyFull,
                Some(&ca_file),
            ),
            target("ca", port, "127.0.0.1", SslMode::VerifyCa, Some(&ca_file)),
            target("require", port, "127.0.0.1", SslMode::Require, None),
            target("prefer", port, "127.0.0.1", SslMode::Prefer, None),
            target(
                "wrong-ca",
                port,
                "localhost",
                SslMode::VerifyFull,
                Some(&other_file),
            ),
            target(
                "wrong-name",
                port,
                "127.0.0.1",
                SslMode::VerifyFull,
                Some(&ca_file),
            ),
            target("plain", port, "127.0.0.1", SslMode::Disable, None),
        ];
    })
    .await;
    for name in ["full", "ca", "require", "prefer"] {
        let mut c = Client::connect_to(s.gw, "alice", name).await;
        let mut out = bytes::BytesMut::new();
        query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &mut out,
        );
        tokio::io::AsyncWriteExt::write_all(&mut c.s, &out)
            .await
            .expect("write");
        let r = c.until_ready().await;
        assert_eq!(
            first_value(&r).as_deref(),
            Some("t"),
            "target {name}: {r:?}"
        );
    }
    for (name, why) in [
        ("wrong-ca", "TLS"),
        ("wrong-name", "TLS"),
        ("plain", "refused the gateway"),
    ] {
        let err = Client::try_connect(s.gw, "alice", name)
            .await
            .err()
            .unwrap_or_else(|| panic!("target {name} must not connect"));
        assert!(
            err.starts_with("08006") && err.contains(why),
            "{name}: {err}"
        );
    }
}
