//! Witnesses: `cosignature/v1` against known answers (published vectors and an independent
//! computation from the spec's byte layout), and the tlog-witness checks of
//! `Witness::add_checkpoint` against a real log, status code by status code.

use parapet_log::checkpoint::Checkpoint;
use parapet_log::note::{parse_note, CosignatureSigner, CosignatureVerifier, NoteSigner};
use parapet_log::witness::{AddCheckpoint, Refusal, Witness};
use parapet_log::{Log, LogReader};
use std::path::Path;

fn kat() -> serde_json::Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cosignature.json"),
    )
    .expect("read cosignature.json");
    serde_json::from_str(&text).expect("parse cosignature.json")
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("{k} missing"))
}

#[test]
fn cosignature_matches_the_independent_known_answer() {
    let k = kat();
    let seed: [u8; 32] = hex::decode(s(&k, "seed_hex")).unwrap().try_into().unwrap();
    let signer = CosignatureSigner::from_seed(s(&k, "name"), seed);
    assert_eq!(signer.verifier().to_key_text(), s(&k, "vkey"));
    assert_eq!(signer.to_key_text(), s(&k, "skey"));
    assert_eq!(
        CosignatureSigner::parse(s(&k, "skey")).unwrap().verifier(),
        signer.verifier()
    );
    let ts = k["timestamp"].as_u64().unwrap();
    assert_eq!(
        parapet_log::note::cosignature_message(ts, s(&k, "body")),
        s(&k, "message").as_bytes()
    );
    let line = signer.cosign(s(&k, "body"), ts);
    assert_eq!(line, s(&k, "line"), "byte-identical cosignature line");
    // And it verifies as a signature line of the cosigned note.
    let v = CosignatureVerifier::parse(s(&k, "vkey")).unwrap();
    let note = format!("{}\n{line}", s(&k, "body"));
    let parsed = parse_note(note.as_bytes()).unwrap();
    assert_eq!(v.find(&parsed).unwrap().map(|(t, _)| t), Some(ts));
    // One changed byte of the body, or another timestamp, and it does not.
    let note = format!("{}\n{line}", s(&k, "body").replace("20852163", "20852164"));
    assert!(v.find(&parse_note(note.as_bytes()).unwrap()).is_err());
}

#[test]
fn published_vectors_parse_as_the_spec_says() {
    let k = kat();
    let p = &k["published"];
    // A native 0x04 verifier key from transparency-dev/formats: its key ID is ours.
    let v = CosignatureVerifier::parse(s(p, "vkey_0x04")).expect("0x04 vkey");
    assert_eq!(v.to_key_text(), s(p, "vkey_0x04"));
    assert_eq!(hex::encode(v.key_id()), "da77ade7");
    // A log's 0x01 note key is refused with a message that says what is expected.
    let e = CosignatureVerifier::parse(s(p, "vkey_0x01")).unwrap_err();
    assert!(e.to_string().contains("type 0x04"), "{e}");
    // Timestamps: 8 big-endian bytes after the key ID.
    let note = format!(
        "a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} w {}\n",
        s(p, "timestamp_sig")
    );
    let parsed = parse_note(note.as_bytes()).unwrap();
    let ts = u64::from_be_bytes(parsed.lines[0].rest[..8].try_into().unwrap());
    assert_eq!(ts, p["timestamp_sig_time"].as_u64().unwrap());
    // The spec's example: the witness line carries the spec's `time 1679315147`, and the log's
    // 68-byte line stays an ordinary note signature.
    let parsed = parse_note(s(p, "spec_example_note").as_bytes()).unwrap();
    assert_eq!(parsed.lines.len(), 2);
    assert_eq!(parsed.signatures.len(), 1);
    let w = &parsed.lines[1];
    assert_eq!(w.name, "witness.example.com/w1");
    assert_eq!(w.rest.len(), 8 + 64);
    assert_eq!(
        u64::from_be_bytes(w.rest[..8].try_into().unwrap()),
        p["spec_example_time"].as_u64().unwrap()
    );
}

#[test]
fn go_note_ed25519_keys_cosign_with_the_cosignature_key_id() {
    // transparency-dev's NewSignerForCosignatureV1 accepts a 0x01 key and uses the 0x04 key ID.
    let note_key = NoteSigner::generate("w.example/1");
    let c = CosignatureSigner::parse(&note_key.to_key_text()).unwrap();
    let note_vkey = note_key.verifier().to_key_text();
    let note_id = note_vkey.split('+').nth(1).unwrap();
    let cosig_vkey = c.verifier().to_key_text();
    assert_ne!(hex::encode(c.verifier().key_id()), note_id);
    // Same public key, type byte 0x04 instead of 0x01.
    let pk = |v: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(v.splitn(3, '+').nth(2).unwrap())
            .unwrap()
    };
    assert_eq!(pk(&note_vkey)[0], 0x01);
    assert_eq!(pk(&cosig_vkey)[0], 0x04);
    assert_eq!(pk(&note_vkey)[1..], pk(&cosig_vkey)[1..]);
}

struct Fixture {
    dir: std::path::PathBuf,
    log: Log,
    log_vkey: String,
    witness: Witness,
    wvkey: CosignatureVerifier,
    // Last: removed after the log is closed.
    _tmp: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log_vkey = Log::init(&dir, "witness.test/log", &tmp.path().join("log.key")).unwrap();
    let log = Log::open(&dir, &tmp.path().join("log.key")).unwrap();
    let signer = CosignatureSigner::generate("witness.test/w1");
    let wvkey = signer.verifier();
    let witness = Witness::open(
        signer,
        vec![parapet_log::note::NoteVerifier::parse(&log_vkey).unwrap()],
        &tmp.path().join("state"),
    )
    .unwrap();
    Fixture {
        dir,
        log,
        log_vkey,
        witness,
        wvkey,
        _tmp: tmp,
    }
}

fn append(f: &Fixture, n: usize) -> LogReader {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..n {
            f.log
                .append(format!("entry {i}").into_bytes())
                .await
                .unwrap();
        }
    });
    let want = f.log.size();
    loop {
        let r = LogReader::open(&f.dir).unwrap();
        if r.size() == want {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn request(r: &LogReader, old: u64) -> Vec<u8> {
    AddCheckpoint::encode(old, &r.consistency_proof(old).unwrap(), r.checkpoint_note())
}

#[test]
fn witness_cosigns_consistent_extensions_and_refuses_everything_else() {
    let f = fixture();
    let r10 = append(&f, 10);
    // First contact: old 0, empty proof.
    let line = f.witness.add_checkpoint(&request(&r10, 0), 1000).unwrap();
    let note = format!("{}{line}", String::from_utf8_lossy(r10.checkpoint_note()));
    let (ts, _) = f
        .wvkey
        .find(&parse_note(note.as_bytes()).unwrap())
        .unwrap()
        .expect("a cosignature by the witness");
    assert_eq!(ts, 1000);
    assert_eq!(
        f.witness.latest("witness.test/log").unwrap().unwrap().size,
        10
    );

    // Asking again with old 0: 409 with the size cosigned, as text/x.tlog.size.
    let e = f
        .witness
        .add_checkpoint(&request(&r10, 0), 1001)
        .unwrap_err();
    assert_eq!((e.status(), e.body()), (409, "10\n".to_string()));
    assert_eq!(e.content_type(), "text/x.tlog.size");

    // The same checkpoint again (old = size): cosigned again.
    f.witness.add_checkpoint(&request(&r10, 10), 1002).unwrap();

    let r37 = append(&f, 27);
    // A consistency proof that does not verify: 422, state unchanged.
    let mut bad = r37.consistency_proof(10).unwrap();
    bad[0][0] ^= 1;
    let e = f
        .witness
        .add_checkpoint(
            &AddCheckpoint::encode(10, &bad, r37.checkpoint_note()),
            1003,
        )
        .unwrap_err();
    assert_eq!(e.status(), 422, "{e}");
    assert_eq!(
        f.witness.latest("witness.test/log").unwrap().unwrap().size,
        10
    );
    // old > size: 400.
    let e = f
        .witness
        .add_checkpoint(&AddCheckpoint::encode(38, &[], r37.checkpoint_note()), 1003)
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    // The right proof: cosigned, state moves to 37.
    f.witness.add_checkpoint(&request(&r37, 10), 1004).unwrap();
    assert_eq!(
        f.witness.latest("witness.test/log").unwrap().unwrap().size,
        37
    );
    // An older checkpoint (rollback to 10) is refused: 409 naming 37.
    let e = f
        .witness
        .add_checkpoint(&request(&r10, 10), 1005)
        .unwrap_err();
    assert_eq!((e.status(), e.body()), (409, "37\n".to_string()));

    // The same size with another root, signed by the log's key: 409 (a fork).
    let key = parapet_log::read_signing_key(&f._tmp.path().join("log.key")).unwrap();
    let mut forged = Checkpoint::parse(
        parse_note(r37.checkpoint_note()).unwrap().text,
        "checkpoint",
    )
    .unwrap();
    forged.root[0] ^= 1;
    let forged_note = key.sign(&forged.to_text());
    let e = f
        .witness
        .add_checkpoint(
            &AddCheckpoint::encode(37, &[], forged_note.as_bytes()),
            1006,
        )
        .unwrap_err();
    assert!(matches!(e, Refusal::Conflict { size: 37, .. }), "{e}");

    // Another key for the same origin: 403. An unknown origin: 404.
    let other = NoteSigner::generate("witness.test/log");
    let e = f
        .witness
        .add_checkpoint(
            &AddCheckpoint::encode(37, &[], other.sign(&forged.to_text()).as_bytes()),
            1007,
        )
        .unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    let stranger = NoteSigner::generate("elsewhere.test/log");
    forged.origin = "elsewhere.test/log".into();
    let e = f
        .witness
        .add_checkpoint(
            &AddCheckpoint::encode(0, &[], stranger.sign(&forged.to_text()).as_bytes()),
            1008,
        )
        .unwrap_err();
    assert_eq!(e.status(), 404, "{e}");

    // Malformed bodies: 400.
    for body in [
        &b"old 01\n\n"[..],
        b"old x\n\n",
        b"new 0\n\n",
        b"old 0\nnot base64!\n\n",
        b"old 0",
    ] {
        let e = f.witness.add_checkpoint(body, 1009).unwrap_err();
        assert_eq!(e.status(), 400, "{:?}: {e}", String::from_utf8_lossy(body));
    }
    let mut long = b"old 1\n".to_vec();
    for _ in 0..64 {
        long.extend_from_slice(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
    }
    long.push(b'\n');
    long.extend_from_slice(r37.checkpoint_note());
    let e = f.witness.add_checkpoint(&long, 1010).unwrap_err();
    assert!(e.body().contains("more than 63"), "{e}");
    let _ = &f.log_vkey;
}

#[test]
fn witness_state_survives_reopening_and_is_locked() {
    let f = fixture();
    let r = append(&f, 5);
    f.witness.add_checkpoint(&request(&r, 0), 1).unwrap();
    let state = f._tmp.path().join("state");
    let log_key = parapet_log::note::NoteVerifier::parse(&f.log_vkey).unwrap();
    let second = Witness::open(
        CosignatureSigner::generate("witness.test/w2"),
        vec![log_key.clone()],
        &state,
    );
    assert!(second
        .unwrap_err()
        .to_string()
        .contains("another witness process uses this state directory"),);
    let Fixture { witness, .. } = f;
    drop(witness);
    let again = Witness::open(
        CosignatureSigner::generate("witness.test/w1"),
        vec![log_key],
        &state,
    )
    .unwrap();
    assert_eq!(again.latest("witness.test/log").unwrap().unwrap().size, 5);
}

#[test]
fn witnesses_that_are_down_or_hang_never_delay_an_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    Log::init(&dir, "witness.test/down", &tmp.path().join("log.key")).unwrap();
    let log = Log::open(&dir, &tmp.path().join("log.key")).unwrap();
    // w1: nothing listens (connection refused). w2: accepts and never answers.
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hole.incoming() {
            held.push(c);
        }
    });
    let endpoint = |name: &str, port: u16| {
        let v = CosignatureSigner::generate(name).verifier().to_key_text();
        parapet_log::WitnessEndpoint::new(name, &format!("http://127.0.0.1:{port}"), &v).unwrap()
    };
    log.start_witnessing(
        parapet_log::WitnessPolicy::new(
            vec![
                endpoint("w1.test", refused_port),
                endpoint("w2.test", hole_port),
            ],
            1,
        )
        .unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    rt.block_on(async {
        for i in 0..300 {
            let t = std::time::Instant::now();
            log.append(format!("entry {i}").into_bytes()).await.unwrap();
            slowest = slowest.max(t.elapsed());
        }
    });
    // Appends run at disk speed while the witness client is stuck on the hung witness.
    assert!(
        slowest < std::time::Duration::from_millis(500),
        "an append took {slowest:?}"
    );
    assert_eq!(log.size(), 300);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let st = loop {
        let st = log.witness_status().unwrap();
        if st.witnesses[0].error.is_some() && st.witnesses[1].error.is_some() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let e1 = st.witnesses[0].error.as_deref().unwrap();
    let e2 = st.witnesses[1].error.as_deref().unwrap();
    assert!(e1.contains("cannot connect"), "{e1}");
    assert!(e2.contains("no answer within 5 s"), "{e2}");
    assert!(!st.witnesses[0].refused && !st.witnesses[1].refused);
    assert_eq!((st.cosigned_size, st.cosigned_at), (0, None));
    assert!(!dir.join(parapet_log::COSIGNED_CHECKPOINT).exists());
    // Closing does not hang on the witness either: one last round, bounded by its timeout.
    let t = std::time::Instant::now();
    drop(log);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "closing took {:?}",
        t.elapsed()
    );
    eprintln!("witnesses down: test took {:?}", started.elapsed());
}
