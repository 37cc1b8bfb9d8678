//! Pipelined clients: several statements in ONE write reach the gateway in one read, are judged
//! together (one wait for all their decisions) and must still be forwarded, refused and answered
//! exactly as if they had come one by one. Runs a real PostgreSQL (initdb in a temp dir on a free
//! port) and the gateway in-process; the client speaks the wire protocol on a raw socket so the
//! test controls what goes into each write.

mod common;

use bytes::BytesMut;
use common::*;
use parapet_gateway::Durability;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn pipelined_simple_queries(s: Setup) {
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    query("SELECT 'one'", &mut out);
    query("DROP TABLE pipeline_nothing", &mut out);
    query("SELECT 'three'", &mut out);
    c.s.write_all(&out).await.expect("write");
    let r1 = c.until_ready().await;
    let r2 = c.until_ready().await;
    let r3 = c.until_ready().await;
    assert_eq!(first_value(&r1).as_deref(), Some("one"));
    let (code, msg) = first_error(&r2).expect("the DROP is refused");
    assert_eq!(code, "42501");
    assert!(
        msg.starts_with("parapet: blocked by parapet.drop:"),
        "{msg}"
    );
    assert_eq!(first_value(&r3).as_deref(), Some("three"));
    // The session is still usable, and every statement's decision is in the log, in order.
    let mut out = BytesMut::new();
    query("SELECT 'four'", &mut out);
    c.s.write_all(&out).await.expect("write");
    assert_eq!(first_value(&c.until_ready().await).as_deref(), Some("four"));
    // The session's last four decisions (a caller may have run statements before).
    let all = decisions(&s);
    let sqls: Vec<_> = all[all.len().saturating_sub(4)..]
        .iter()
        .map(|d| {
            (
                d["sql"].as_str().unwrap_or("").to_string(),
                d["decision"].clone(),
            )
        })
        .collect();
    assert_eq!(
        sqls,
        vec![
            ("SELECT 'one'".to_string(), serde_json::json!("allow")),
            (
                "DROP TABLE pipeline_nothing".into(),
                serde_json::json!("deny")
            ),
            ("SELECT 'three'".into(), serde_json::json!("allow")),
            ("SELECT 'four'".into(), serde_json::json!("allow")),
        ]
    );
}

async fn pipelined_extended_with_a_refused_parse(durability: Durability) {
    let s = setup(durability).await;
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    // 1: fine. 2: refused Parse, then a Parse PostgreSQL would skip (error before Sync) and a
    // Bind/Execute of the refused statement. 3: the skipped statement must not exist.
    // 4: fine again.
    parse("s1", "SELECT 'one'", &mut out);
    bind_exec_sync("s1", &mut out);
    parse("s2", "DROP TABLE pipeline_nothing", &mut out);
    parse("skipped", "SELECT 'skipped'", &mut out);
    bind_exec_sync("s2", &mut out);
    bind_exec_sync("skipped", &mut out);
    parse("s4", "SELECT 'four'", &mut out);
    bind_exec_sync("s4", &mut out);
    c.s.write_all(&out).await.expect("write");
    let r1 = c.until_ready().await;
    let r2 = c.until_ready().await;
    let r3 = c.until_ready().await;
    let r4 = c.until_ready().await;
    assert_eq!(first_value(&r1).as_deref(), Some("one"));
    let (code, msg) = first_error(&r2).expect("the DROP is refused");
    assert_eq!(code, "42501");
    assert!(
        msg.starts_with("parapet: blocked by parapet.drop:"),
        "{msg}"
    );
    assert_eq!(r2.iter().filter(|m| m.0 == b'E').count(), 1, "{r2:?}");
    let (code, msg) = first_error(&r3).expect("skipped statement does not exist");
    assert_eq!(code, "26000", "{msg}");
    assert_eq!(first_value(&r4).as_deref(), Some("four"));
    let sqls: Vec<_> = decisions(&s)
        .iter()
        .map(|d| d["sql"].as_str().unwrap_or("").to_string())
        .collect();
    // The skipped Parse was neither judged nor logged, like the server never ran it.
    assert_eq!(
        sqls,
        vec![
            "SELECT 'one'",
            "DROP TABLE pipeline_nothing",
            "SELECT 'four'"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_simple_queries_before_forward() {
    pipelined_simple_queries(setup(Durability::BeforeForward).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_simple_queries_before_reply() {
    pipelined_simple_queries(setup(Durability::BeforeReply).await).await;
}

/// The same session behaviour when the upstream is the server's Unix-domain socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_over_unix_socket() {
    let s = setup_with(Durability::BeforeForward, true).await;
    let mut c = Client::connect(s.gw).await;
    let mut out = BytesMut::new();
    query("SELECT inet_server_addr() IS NULL", &mut out);
    c.s.write_all(&out).await.expect("write");
    // inet_server_addr() is NULL exactly when the server sees a Unix-socket connection.
    assert_eq!(first_value(&c.until_ready().await).as_deref(), Some("t"));

    // A cancel request reaches the backend through the socket too.
    let mut out = BytesMut::new();
    query("SELECT pg_sleep(60)", &mut out);
    c.s.write_all(&out).await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut cancel = TcpStream::connect(s.gw).await.expect("connect");
    let mut out = BytesMut::new();
    frontend::cancel_request(c.key.0, c.key.1, &mut out);
    cancel.write_all(&out).await.expect("write cancel");
    let reply = tokio::time::timeout(std::time::Duration::from_secs(20), c.until_ready())
        .await
        .expect("the sleeping statement was cancelled");
    let (code, msg) = first_error(&reply).expect("cancel error");
    assert_eq!(code, "57014", "{msg}");

    pipelined_simple_queries(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_before_forward() {
    pipelined_extended_with_a_refused_parse(Durability::BeforeForward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_before_reply() {
    pipelined_extended_with_a_refused_parse(Durability::BeforeReply).await;
}
