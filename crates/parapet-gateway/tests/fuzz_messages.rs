//! Property-based fuzzing of the gateway's decoders through the real gateway on a real server:
//! random and mutated startup packets, SASL messages, and frontend messages of every type
//! (valid ones with bytes flipped, cut or lengthened, and random ones), sent before and after
//! logging in. Whatever a connection sends, it gets at most an error and a closed connection;
//! the gateway keeps serving everyone else, which a fresh session checks after every case.
//! Seeded, so a failure names the seed that reproduces it (`PARAPET_FUZZ_CASES`, default 150).

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use parapet_gateway::Durability;
use postgres_protocol::message::frontend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid frontend message of a random type.
fn valid_message(rng: &mut StdRng, out: &mut BytesMut) {
    match rng.gen_range(0..12) {
        0 => query("SELECT 1", out),
        1 => parse("s", "SELECT $1::int", out),
        2 => {
            out.put_u8(b'B');
            out.put_i32(4 + 2 + 2 + 2 + 2 + 2);
            out.put_u8(0);
            out.put_u8(0);
            out.put_i16(0);
            out.put_i16(0);
            out.put_i16(0);
        }
        3 => frontend::execute("", 0, out).expect("execute"),
        4 => frontend::describe(b'S', "s", out).expect("describe"),
        5 => frontend::close(b'P', "", out).expect("close"),
        6 => frontend::sync(out),
        7 => frontend::flush(out),
        8 => frontend::copy_done(out),
        9 => {
            out.put_u8(b'd');
            out.put_i32(4 + 3);
            out.put_slice(b"1\n\\");
        }
        10 => {
            // FunctionCall: refused, whatever it holds.
            out.put_u8(b'F');
            out.put_i32(4 + 4 + 2 + 2 + 2);
            out.put_i32(1);
            out.put_i16(0);
            out.put_i16(0);
            out.put_i16(0);
        }
        _ => query("SELECT 'a'; SELECT 'b'", out),
    }
}

/// Changes `msg` at random: flips bytes, cuts it, lengthens it, or rewrites its length word.
fn mutate(rng: &mut StdRng, msg: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..4) {
        if msg.is_empty() {
            msg.push(rng.gen());
        }
        match rng.gen_range(0..5) {
            0 => {
                let i = rng.gen_range(0..msg.len());
                msg[i] = rng.gen();
            }
            1 => msg.truncate(rng.gen_range(0..msg.len())),
            2 => msg.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
            3 if msg.len() >= 5 => {
                let len: i32 = match rng.gen_range(0..4) {
                    0 => -1,
                    1 => 3,
                    2 => i32::MAX,
                    _ => rng.gen_range(0..100_000),
                };
                msg[1..5].copy_from_slice(&len.to_be_bytes());
            }
            _ => {
                let i = rng.gen_range(0..msg.len());
                msg.insert(i, 0);
            }
        }
    }
}

/// Sends `bytes` and reads what comes back until the gateway closes or goes quiet.
async fn throw(gw: std::net::SocketAddr, prefix: &[u8], bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(gw).await else {
        return;
    };
    let _ = s.write_all(prefix).await;
    let _ = s.write_all(bytes).await;
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// A logged-in session, whose socket then gets random bytes.
async fn throw_after_login(gw: std::net::SocketAddr, bytes: &[u8]) {
    let mut c = Client::connect(gw).await;
    let _ = c.s.write_all(bytes).await;
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), c.s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_messages_never_stop_the_gateway() {
    let s = setup(Durability::BeforeForward).await;
    let cases: u64 = std::env::var("PARAPET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut witness = Client::connect(s.gw).await;
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        match seed % 4 {
            // A startup packet: valid parameters, mutated.
            0 => {
                let mut out = BytesMut::new();
                frontend::startup_message([("user", "alice"), ("database", "main")], &mut out)
                    .expect("startup");
                let mut msg = out.to_vec();
                // The startup packet has no type byte: mutate its length word too.
                msg.insert(0, b'x');
                mutate(&mut rng, &mut msg);
                msg.remove(0);
                throw(s.gw, &[], &msg).await;
            }
            // A startup packet, then mutated SASL messages.
            1 => {
                let mut out = BytesMut::new();
                frontend::startup_message([("user", "alice"), ("database", "main")], &mut out)
                    .expect("startup");
                let mut sasl = BytesMut::new();
                frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdef", &mut sasl)
                    .expect("sasl");
                let mut msg = sasl.to_vec();
                mutate(&mut rng, &mut msg);
                throw(s.gw, &out, &msg).await;
            }
            // After login: valid messages, one of them mutated, or plain random bytes.
            _ => {
                let mut out = BytesMut::new();
                for _ in 0..rng.gen_range(1..6) {
                    valid_message(&mut rng, &mut out);
                }
                let mut bytes = out.to_vec();
                if rng.gen_bool(0.8) {
                    mutate(&mut rng, &mut bytes);
                } else {
                    bytes = (0..rng.gen_range(1..512)).map(|_| rng.gen()).collect();
                }
                throw_after_login(s.gw, &bytes).await;
            }
        }
        // Everyone else is still served: an open session and a new one.
        let mut out = BytesMut::new();
        query("SELECT 'still here'", &mut out);
        witness.s.write_all(&out).await.expect("write");
        let r = tokio::time::timeout(Duration::from_secs(20), witness.until_ready())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: an open session was not served"));
        assert_eq!(
            first_value(&r).as_deref(),
            Some("still here"),
            "seed {seed}"
        );
        let mut fresh = tokio::time::timeout(Duration::from_secs(20), Client::connect(s.gw))
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: a new session could not log in"));
        fresh.s.write_all(&out).await.expect("write");
        let r = fresh.until_ready().await;
        assert_eq!(
            first_value(&r).as_deref(),
            Some("still here"),
            "seed {seed}"
        );
    }
    // The statements judged meanwhile were logged (the log took every decision).
    assert!(
        decisions(&s).len() as u64 >= cases,
        "{}",
        decisions(&s).len()
    );
}
