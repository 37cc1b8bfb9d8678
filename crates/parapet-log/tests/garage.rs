//! The test harness's Garage (tests/common/garage.rs): a real single-node Garage starts on free
//! ports with a layout, a bucket and a key, its S3 API refuses an unsigned request, and its
//! website endpoint serves the bucket (404 for an object that is not there); without the binary,
//! the harness says how to install it.

#[path = "common/garage.rs"]
mod garage;

use std::io::{Read, Write};
use std::net::TcpStream;

/// Status code of `GET path` with `Host: host` to `addr`.
fn status(addr: &str, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (code, answer)
}

#[test]
fn a_single_node_garage_starts_with_a_bucket_and_a_key() {
    // No binary: the install hint (one test in this binary: nothing else reads GARAGE_BIN).
    std::env::set_var("GARAGE_BIN", "/nonexistent/garage");
    let missing = std::panic::catch_unwind(|| garage::Garage::start("nothing")).err();
    std::env::remove_var("GARAGE_BIN");
    let msg = missing
        .as_ref()
        .and_then(|p| p.downcast_ref::<String>())
        .expect("Garage::start must panic without a binary");
    assert!(msg.contains("run scripts/setup.sh"), "{msg}");

    let g = garage::Garage::start("parapet-log");
    assert!(g.key_id.starts_with("GK"), "{}", g.key_id);
    assert!(!g.secret.is_empty());
    let info = g.cli(&["bucket", "info", "parapet-log"]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{text}");
    assert!(
        text.contains(&g.key_id),
        "the key is not allowed on the bucket:\n{text}"
    );
    let s3 = g.endpoint.trim_start_matches("http://").to_string();
    let (code, answer) = status(&s3, &s3, "/parapet-log/checkpoint");
    assert_eq!(
        code, 403,
        "an unsigned S3 request must be refused: {answer}"
    );
    let web = g
        .web_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let port = web.rsplit(':').next().expect("port");
    let (code, answer) = status(&format!("127.0.0.1:{port}"), &web, "/checkpoint");
    assert_eq!(
        code, 404,
        "the website endpoint must serve the bucket: {answer}"
    );
}
