//! A log sequenced in PostgreSQL (`PgSequencer`) and published to S3 (`S3Driver`), with a real
//! PostgreSQL cluster and a real Garage: a writer appends; a second writer takes the log over
//! (a new generation), replays what the first sequenced, and appends; the first, fenced, can
//! sequence nothing more; the bucket then verifies with every acknowledged entry at its index,
//! none twice.

mod common;
#[path = "../../parapet-log/tests/common/garage.rs"]
mod garage;

use common::env;
use parapet_log::driver::{Driver, S3Config, S3Driver};
use parapet_log::note::NoteSigner;
use parapet_log::sequencer::PgSequencer;
use parapet_log::tile::{bundle_path, for_each_bundle_entry, tile_width};
use parapet_log::verify::verify_source;
use parapet_log::Log;

async fn append(log: &Log, tag: &str, from: u64, n: u64) {
    let tickets: Vec<_> = (from..from + n)
        .map(|i| log.submit(format!("{tag} {i}").into_bytes()))
        .collect();
    for (k, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.expect("durable"), from + k as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_takes_over_and_fences_the_first() {
    let e = env();
    e.direct("CREATE DATABASE fleetlog");
    let url = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname=fleetlog",
        e.pg_port, e.pg_password
    );
    let g = garage::Garage::start("parapet-pg");
    // One test in this binary: nothing else reads the environment meanwhile.
    for (k, v) in g.aws_env() {
        std::env::set_var(k, v);
    }
    let config = S3Config {
        bucket: g.bucket.clone(),
        endpoint: Some(g.endpoint.clone()),
        region: g.region.clone(),
    };
    let signer = NoteSigner::generate("parapet.test/pg");
    let vkey = Log::init_with(&mut S3Driver::new(&config).unwrap(), &signer).unwrap();
    let vkey = parapet_log::note::NoteVerifier::parse(&vkey).unwrap();
    let open = || {
        Log::open_with(
            S3Driver::new(&config).unwrap(),
            PgSequencer::connect(&url).unwrap(),
            signer.clone(),
        )
        .unwrap()
    };

    let first = open();
    append(&first, "first", 0, 300).await;
    let second = open();
    assert_eq!(
        second.size(),
        300,
        "the takeover replays what the first sequenced"
    );
    let refused = first.append(b"first, fenced".to_vec()).await;
    assert!(
        refused.is_err(),
        "a fenced writer must not sequence: {refused:?}"
    );
    append(&second, "second", 300, 300).await;
    second.close().await.unwrap();
    drop(first);

    let st = S3Driver::new(&config).unwrap();
    let report = verify_source(&st, &vkey, None, &|_| {}).unwrap();
    assert_eq!(report.checkpoint.size, 600);
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    for i in 0..600u64.div_ceil(256) {
        let w = tile_width(0, i, 600);
        assert!(st.read_into(&bundle_path(i, w), &mut buf).unwrap());
        for_each_bundle_entry(&buf, w as usize, |_, e| {
            entries.push(String::from_utf8_lossy(e).into_owned());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    }
    for (i, e) in entries.iter().enumerate() {
        let want = if i < 300 { "first" } else { "second" };
        assert_eq!(e, &format!("{want} {i}"));
    }
}
