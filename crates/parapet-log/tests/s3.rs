//! The S3 storage driver against a real Garage (tests/common/garage.rs): a log created in a
//! bucket (`Log::init_with`), appended to through `Log::open_with(S3Driver, DirJournal)` past
//! several full tiles, reopened and appended to again; it verifies read from the bucket through
//! the driver and read over HTTP from Garage's website endpoint (`HttpSource`, as
//! `parapet verify --url` does), with the same size; an object changed in the bucket fails
//! verification, naming it; a full tile is written once (a different re-write is an alarm);
//! a second init and missing credentials are clear errors.

#[path = "common/garage.rs"]
mod garage;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use parapet_log::driver::{Driver, S3Config, S3Driver};
use parapet_log::http_source::HttpSource;
use parapet_log::note::NoteSigner;
use parapet_log::sequencer::DirJournal;
use parapet_log::verify::verify_source;
use parapet_log::Log;

async fn append(log: &Log, from: usize, n: usize) {
    let mut tickets = Vec::new();
    for i in from..from + n {
        tickets.push(log.submit(format!("s3 entry {i}").into_bytes()));
    }
    for (k, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.expect("durable"), (from + k) as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_in_a_garage_bucket_verifies_from_the_bucket_and_over_http() {
    let g = garage::Garage::start("parapet-s3");
    let config = S3Config {
        bucket: g.bucket.clone(),
        endpoint: Some(g.endpoint.clone()),
        region: g.region.clone(),
    };
    // No credentials: a clear error (this test binary holds one test: no other thread reads
    // the environment meanwhile).
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let err = S3Driver::new(&config).unwrap_err().to_string();
    assert!(
        err.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }

    let signer = NoteSigner::generate("parapet.test/s3");
    let vkey = Log::init_with(&mut S3Driver::new(&config).unwrap(), &signer).unwrap();
    let again = Log::init_with(&mut S3Driver::new(&config).unwrap(), &signer).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let vkey = parapet_log::note::NoteVerifier::parse(&vkey).unwrap();

    let journal_dir = tempfile::tempdir().unwrap();
    let open = || {
        Log::open_with(
            S3Driver::new(&config).unwrap(),
            DirJournal::new(journal_dir.path()),
            signer.clone(),
        )
        .unwrap()
    };
    let log = open();
    append(&log, 0, 700).await;
    log.close().await.unwrap();
    let log = open();
    assert_eq!(log.size(), 700);
    append(&log, 700, 100).await;
    log.close().await.unwrap();

    let from_bucket =
        verify_source(&S3Driver::new(&config).unwrap(), &vkey, None, &|_| {}).unwrap();
    assert_eq!(from_bucket.checkpoint.size, 800);
    let web = HttpSource::new(&g.web_url, None, None).unwrap();
    let over_http = verify_source(&web, &vkey, None, &|_| {}).unwrap();
    assert_eq!(over_http.checkpoint.size, 800);
    assert_eq!(over_http.checkpoint.root, from_bucket.checkpoint.root);
    // Every entry is where it was acknowledged.
    let mut bundle = Vec::new();
    assert!(S3Driver::new(&config)
        .unwrap()
        .read_into("tile/entries/001", &mut bundle)
        .unwrap());
    assert!(bundle.windows(12).any(|w| w == b"s3 entry 256"));

    // One byte changed in a full bundle in the bucket: verification fails and names it.
    let raw = AmazonS3Builder::new()
        .with_bucket_name(&g.bucket)
        .with_region(&g.region)
        .with_endpoint(&g.endpoint)
        .with_allow_http(true)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap();
    let key = ObjectPath::from("tile/entries/001");
    let mut bad = bundle.clone();
    bad[40] ^= 0x01;
    raw.put(&key, PutPayload::from(bad)).await.unwrap();
    let err = verify_source(&web, &vkey, None, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(in tile/entries/001) does not match hash"),
        "{err}"
    );
    raw.put(&key, PutPayload::from(bundle.clone()))
        .await
        .unwrap();
    verify_source(&web, &vkey, None, &|_| {}).unwrap();

    // A full tile is written once: the same bytes again are a no-op, different ones an alarm,
    // and the object keeps its bytes (Garage ignores If-None-Match: the driver checks first).
    let mut d = S3Driver::new(&config).unwrap();
    d.write("tile/entries/001", &bundle).unwrap();
    d.sync().unwrap();
    d.write("tile/entries/001", b"a forked bundle").unwrap();
    let alarm = d.sync().unwrap_err().to_string();
    assert!(
        alarm.contains("ALARM: full tile tile/entries/001 already exists with different bytes"),
        "{alarm}"
    );
    let mut now = Vec::new();
    assert!(d.read_into("tile/entries/001", &mut now).unwrap());
    assert_eq!(now, bundle);
    // A partial tile (here one beyond the log) is replaced as usual.
    d.write("tile/entries/009.p/1", b"partial one").unwrap();
    d.sync().unwrap();
    d.write("tile/entries/009.p/1", b"partial two").unwrap();
    d.sync().unwrap();
    assert!(d.read_into("tile/entries/009.p/1", &mut now).unwrap());
    assert_eq!(now, b"partial two");
    verify_source(&web, &vkey, None, &|_| {}).unwrap();
}
