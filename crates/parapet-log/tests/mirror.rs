//! The verified local mirror (`parapet_log::mirror`): a log followed from another directory,
//! from a real Garage bucket (through `S3Driver`) and over HTTP (Garage's website endpoint,
//! through `HttpSource`) into a local directory that `verify_log` and `LogReader` read as a log
//! directory; it advances with the source, and refuses — as an alarm, staying where it was — a
//! modified hash tile, a modified entry bundle, a rewritten old entry, a truncated or forked
//! checkpoint and a checkpoint signed by another key.

#[path = "common/garage.rs"]
mod garage;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use parapet_log::checkpoint::Checkpoint;
use parapet_log::driver::{Driver, LocalDir, S3Config, S3Driver};
use parapet_log::hash::empty_root;
use parapet_log::http_source::HttpSource;
use parapet_log::mirror::{Mirror, MirrorError};
use parapet_log::note::{NoteSigner, NoteVerifier};
use parapet_log::sequencer::DirJournal;
use parapet_log::verify::verify_log;
use parapet_log::{Log, LogReader};
use std::path::Path;
use std::time::Duration;

async fn append(log: &Log, from: usize, n: usize) {
    let mut tickets = Vec::new();
    for i in from..from + n {
        tickets.push(log.submit(format!("mirrored entry {i}").into_bytes()));
    }
    for (k, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.expect("durable"), (from + k) as u64);
    }
}

/// Every entry of the mirror in `dir` is the one appended at its index, and it verifies.
fn check_mirror(dir: &Path, vkey: &NoteVerifier, size: u64) {
    let report = verify_log(dir, vkey, None, &|_| {}).expect("the mirror verifies");
    assert_eq!(report.checkpoint.size, size);
    let r = LogReader::open(dir).unwrap();
    assert_eq!(r.size(), size);
    for item in r.entries(0, size) {
        let (i, e) = item.unwrap();
        assert_eq!(e, format!("mirrored entry {i}").into_bytes());
    }
}

fn alarm(r: Result<Option<u64>, MirrorError>) -> String {
    match r {
        Err(MirrorError::Alarm(m)) => m,
        other => panic!("expected an alarm, got {other:?}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_a_directory_and_refuses_every_kind_of_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let key = tmp.path().join("key");
    let vkey = Log::init(&src, "parapet.test/mirror", &key).unwrap();
    let vkey = NoteVerifier::parse(&vkey).unwrap();
    let signer = parapet_log::read_signing_key(&key).unwrap();
    let log = Log::open(&src, &key).unwrap();
    append(&log, 0, 700).await;
    log.close().await.unwrap();
    drop(log);

    let dst = tmp.path().join("mirror");
    let mut m = Mirror::open(LocalDir::new(&src), &dst, vkey.clone()).unwrap();
    assert_eq!(m.size(), 0);
    assert_eq!(m.step().unwrap(), Some(700));
    assert_eq!(m.step().unwrap(), None, "nothing new");
    check_mirror(&dst, &vkey, 700);

    // The source grows, past full tiles; the mirror follows. A reopened mirror goes on from its
    // own checkpoint.
    let log = Log::open(&src, &key).unwrap();
    append(&log, 700, 300).await;
    log.close().await.unwrap();
    drop(log);
    drop(m);
    let mut m = Mirror::open(LocalDir::new(&src), &dst, vkey.clone()).unwrap();
    assert_eq!(m.size(), 700);
    assert_eq!(m.step().unwrap(), Some(1000));
    check_mirror(&dst, &vkey, 1000);
    let mirrored = std::fs::read(dst.join("checkpoint")).unwrap();
    assert_eq!(mirrored, std::fs::read(src.join("checkpoint")).unwrap());

    // More entries, and one byte of a new full hash tile changed: an alarm naming the tile; the
    // mirror stays at 1000, and stays stopped.
    let log = Log::open(&src, &key).unwrap();
    append(&log, 1000, 300).await;
    log.close().await.unwrap();
    drop(log);
    let good_tile = std::fs::read(src.join("tile/0/004")).unwrap();
    let mut bad = good_tile.clone();
    bad[100] ^= 1;
    std::fs::write(src.join("tile/0/004"), &bad).unwrap();
    let a = alarm(m.step());
    assert!(
        a.contains("tile/0/004: this hash tile does not match"),
        "{a}"
    );
    assert_eq!(m.size(), 1000);
    assert_eq!(std::fs::read(dst.join("checkpoint")).unwrap(), mirrored);
    check_mirror(&dst, &vkey, 1000);
    std::fs::write(src.join("tile/0/004"), &good_tile).unwrap();
    assert!(matches!(m.step(), Err(MirrorError::Alarm(_))), "stopped");
    drop(m);

    // Restarted on the repaired source, it goes on.
    let mut m = Mirror::open(LocalDir::new(&src), &dst, vkey.clone()).unwrap();
    assert_eq!(m.step().unwrap(), Some(1300));
    check_mirror(&dst, &vkey, 1300);
    drop(m);

    // A modified entry in a bundle the mirror has not seen: its entries do not hash to the root.
    let fresh = tmp.path().join("fresh");
    let bundle = std::fs::read(src.join("tile/entries/002")).unwrap();
    let mut bad = bundle.clone();
    bad[10] ^= 1;
    std::fs::write(src.join("tile/entries/002"), &bad).unwrap();
    let mut m = Mirror::open(LocalDir::new(&src), &fresh, vkey.clone()).unwrap();
    let a = alarm(m.step());
    assert!(a.contains("do not hash to the root"), "{a}");
    assert!(!fresh.join("checkpoint").exists(), "nothing published");
    std::fs::write(src.join("tile/entries/002"), &bundle).unwrap();
    drop(m);

    // An old entry rewritten in the partial bundle the mirror holds (and every tile and the
    // checkpoint recomputed and re-signed with the log's key): the mirror notices the rewrite.
    let forged = tmp.path().join("forged");
    let forged_key = tmp.path().join("forged-key");
    {
        // Rebuild a log with the same key and one old entry changed (index 1290, which the
        // mirror holds in its partial bundle 005.p/20), then 10 more entries.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::copy(&key, &forged_key).unwrap();
        let mut d = LocalDir::new(&other);
        Log::init_with(&mut d, &signer).unwrap();
        drop(d);
        let log = Log::open_with(
            LocalDir::new(&other),
            DirJournal::new(&other),
            signer.clone(),
        )
        .unwrap();
        let mut tickets = Vec::new();
        for i in 0..1310usize {
            let e = if i == 1290 {
                "a rewritten entry".to_string()
            } else {
                format!("mirrored entry {i}")
            };
            tickets.push(log.submit(e.into_bytes()));
        }
        for t in tickets {
            t.await.unwrap();
        }
        log.close().await.unwrap();
        drop(log);
        std::fs::create_dir_all(&forged).unwrap();
        copy_dir(&other, &forged);
    }
    let mut m = Mirror::open(LocalDir::new(&forged), &dst, vkey.clone()).unwrap();
    let a = alarm(m.step());
    assert!(
        a.contains("tile/entries/005.p/30: this entry bundle holds other entries"),
        "{a}"
    );
    check_mirror(&dst, &vkey, 1300);
    drop(m);

    // Truncated, forked, and signed by another key: alarms, before any tile is read.
    let sign = |s: &NoteSigner, size: u64, root: [u8; 32]| {
        s.sign(
            &Checkpoint {
                origin: "parapet.test/mirror".into(),
                size,
                root,
                extensions: Vec::new(),
            }
            .to_text(),
        )
    };
    let fake = tmp.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    for (note, want) in [
        (
            sign(&signer, 1000, [7u8; 32]),
            "the log was truncated or replaced",
        ),
        (
            sign(&signer, 1300, empty_root()),
            "the log was forked or rewritten",
        ),
        (
            sign(
                &NoteSigner::generate("parapet.test/mirror"),
                1400,
                [7u8; 32],
            ),
            "checkpoint",
        ),
    ] {
        std::fs::write(fake.join("checkpoint"), note).unwrap();
        let mut m = Mirror::open(LocalDir::new(&fake), &dst, vkey.clone()).unwrap();
        let a = alarm(m.step());
        assert!(a.contains(want), "{a}");
        assert_eq!(m.size(), 1300);
    }
    check_mirror(&dst, &vkey, 1300);

    // An older checkpoint of the same log (a stale publication, e.g. after an integrator's
    // takeover): nothing to do, no alarm; the mirror keeps its tree and follows the next one.
    let old_root = mth(&(0..1000)
        .map(|i| parapet_log::entry_leaf_hash(format!("mirrored entry {i}").as_bytes()))
        .collect::<Vec<_>>());
    std::fs::write(fake.join("checkpoint"), sign(&signer, 1000, old_root)).unwrap();
    let mut m = Mirror::open(LocalDir::new(&fake), &dst, vkey.clone()).unwrap();
    assert_eq!(m.step().unwrap(), None, "a stale checkpoint is not news");
    assert_eq!(m.size(), 1300);
    drop(m);
    let mut m = Mirror::open(LocalDir::new(&src), &dst, vkey.clone()).unwrap();
    assert_eq!(
        m.step().unwrap(),
        None,
        "the source's current checkpoint is the mirror's"
    );
    drop(m);
    check_mirror(&dst, &vkey, 1300);

    // A mirror directory holding another log's checkpoint is refused at open.
    let other_vkey = NoteSigner::generate("parapet.test/mirror").verifier();
    let e = Mirror::open(LocalDir::new(&src), &dst, other_vkey)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds a checkpoint that is not this log's"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_a_garage_bucket_directly_and_over_http_and_refuses_a_tampered_tile() {
    let g = garage::Garage::start("parapet-mirror");
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }
    let config = S3Config {
        bucket: g.bucket.clone(),
        endpoint: Some(g.endpoint.clone()),
        region: g.region.clone(),
    };
    let signer = NoteSigner::generate("parapet.test/mirror-s3");
    let vkey = Log::init_with(&mut S3Driver::new(&config).unwrap(), &signer).unwrap();
    let vkey = NoteVerifier::parse(&vkey).unwrap();
    let journal = tempfile::tempdir().unwrap();
    let open = || {
        Log::open_with(
            S3Driver::new(&config).unwrap(),
            DirJournal::new(journal.path()),
            signer.clone(),
        )
        .unwrap()
    };

    let tmp = tempfile::tempdir().unwrap();
    let by_s3 = tmp.path().join("by-s3");
    let by_http = tmp.path().join("by-http");
    // The threaded mirror, reading the bucket through the S3 driver, starts on an empty log.
    let running = Mirror::open(S3Driver::new(&config).unwrap(), &by_s3, vkey.clone())
        .unwrap()
        .start(Duration::from_millis(200))
        .unwrap();
    let s = running.wait_checked(Duration::from_secs(30));
    assert_eq!(s.size, 0, "{s:?}");
    let web = || HttpSource::new(&g.web_url, None, None).unwrap();
    let mut over_http = Mirror::open(web(), &by_http, vkey.clone()).unwrap();
    assert_eq!(over_http.step().unwrap(), None, "size 0, as the mirror");

    let log = open();
    append(&log, 0, 600).await;
    log.close().await.unwrap();
    drop(log);
    let s = running.wait_for_size(600, Duration::from_secs(60));
    assert_eq!((s.size, s.alarm.as_deref()), (600, None), "{s:?}");
    check_mirror(&by_s3, &vkey, 600);
    assert_eq!(over_http.step().unwrap(), Some(600));
    check_mirror(&by_http, &vkey, 600);

    // While the log is written, the mirror follows it checkpoint by checkpoint.
    let log = open();
    for round in 0..5 {
        append(&log, 600 + round * 100, 100).await;
        over_http.step().unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    let s = running.wait_for_size(1100, Duration::from_secs(60));
    assert_eq!((s.size, s.alarm.as_deref()), (1100, None), "{s:?}");
    check_mirror(&by_s3, &vkey, 1100);
    assert_eq!(over_http.step().unwrap(), Some(1100));
    check_mirror(&by_http, &vkey, 1100);
    drop(running);

    // A new full hash tile changed in the bucket: refused over HTTP and through the driver.
    let log = open();
    append(&log, 1100, 200).await;
    log.close().await.unwrap();
    drop(log);
    let raw = AmazonS3Builder::new()
        .with_bucket_name(&g.bucket)
        .with_region(&g.region)
        .with_endpoint(&g.endpoint)
        .with_allow_http(true)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap();
    let key = ObjectPath::from("tile/0/004");
    let mut tile = Vec::new();
    assert!(S3Driver::new(&config)
        .unwrap()
        .read_into("tile/0/004", &mut tile)
        .unwrap());
    let mut bad = tile.clone();
    bad[31] ^= 0x80;
    raw.put(&key, PutPayload::from(bad)).await.unwrap();
    let a = alarm(over_http.step());
    assert!(
        a.contains("tile/0/004: this hash tile does not match"),
        "{a}"
    );
    assert_eq!(over_http.size(), 1100);
    check_mirror(&by_http, &vkey, 1100);
    let mut direct = Mirror::open(S3Driver::new(&config).unwrap(), &by_s3, vkey.clone()).unwrap();
    let a = alarm(direct.step());
    assert!(a.contains("tile/0/004"), "{a}");
    check_mirror(&by_s3, &vkey, 1100);

    // Repaired: a restarted mirror goes on.
    raw.put(&key, PutPayload::from(tile)).await.unwrap();
    let mut m = Mirror::open(web(), &by_http, vkey.clone()).unwrap();
    assert_eq!(m.step().unwrap(), Some(1300));
    check_mirror(&by_http, &vkey, 1300);
}

/// RFC 6962's Merkle tree hash of `leaves` (leaf hashes).
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            // The largest power of two below n.
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            parapet_log::hash::node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}
