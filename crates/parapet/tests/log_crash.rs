//! Crash tests: a real `parapet` process appends under load (32 concurrent appenders, each
//! printing every acknowledged index) and is killed with SIGKILL at random moments, 24 times.
//! After every kill the log must verify and hold every acknowledged entry at its index.
//! A bulk `parapet log append` is killed the same way.

use parapet_log::LogReader;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_parapet")
}

/// Small deterministic PRNG (xorshift) seeded from the clock; the seed is printed for replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn verify_ok(dir: &Path, vkey: &str) -> String {
    let o = Command::new(bin())
        .args(["verify", "--dir", dir.to_str().unwrap(), "--vkey", vkey])
        .output()
        .unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "verify failed after a crash: {t}");
    t
}

fn init(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let dir = tmp.join("log");
    let key = tmp.join("key");
    let o = Command::new(bin())
        .args([
            "log",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--origin",
            "example.com/crash",
            "--key",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let vkey = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    (dir, key, vkey)
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, vkey) = init(tmp.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut last_size = 0;
    for round in 0..24 {
        let mut child = Command::new(bin())
            .args([
                "log",
                "torture",
                "--dir",
                dir.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ])
            .args(["--tasks", "32", "--tag", &format!("r{round}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut r = BufReader::new(out);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // Only complete lines are acknowledgements.
                if let Some(l) = line.strip_suffix('\n') {
                    let (i, e) = l.split_once(' ').unwrap();
                    got.push((i.parse::<u64>().unwrap(), e.to_string()));
                }
                line.clear();
            }
            got
        });
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(got);

        // What the killed writer left verifies as it is; reopening the log (as the next run
        // does) publishes the journal's acknowledged batches not yet in the tiles.
        verify_ok(&dir, &vkey);
        drop(parapet_log::Log::open(&dir, &key).expect("recover the log"));
        verify_ok(&dir, &vkey);
        let r = LogReader::open(&dir).unwrap();
        assert!(r.size() >= last_size, "the log shrank");
        last_size = r.size();
        let entries: Vec<Vec<u8>> = r.entries(0, r.size()).map(|e| e.unwrap().1).collect();
        for (i, e) in &acked {
            assert!(
                (*i as usize) < entries.len(),
                "round {round}: acknowledged index {i} missing (log size {})",
                entries.len()
            );
            assert_eq!(
                entries[*i as usize],
                e.as_bytes(),
                "round {round}: index {i}"
            );
        }
    }
    assert!(
        acked.len() > 24,
        "the load generator acknowledged too little: {}",
        acked.len()
    );
    eprintln!(
        "{} acknowledged entries checked, final size {last_size}",
        acked.len()
    );
}

#[test]
fn sigkill_during_bulk_append_leaves_a_verifiable_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, vkey) = init(tmp.path());
    // Short lines: each 32,768-line batch goes through the journal. Long lines: each batch is
    // over 1 MiB and skips it (its tiles are synced and its checkpoint published by the flusher
    // while the next batch is integrated).
    let lines = |pad: usize| {
        let mut input = Vec::new();
        for i in 0..400_000 {
            writeln!(input, "bulk line {i:08}{}", "x".repeat(pad)).unwrap();
        }
        input
    };
    let (short, long) = (lines(0), lines(48));
    let mut sizes = Vec::new();
    for (input, delay) in [(&short, 30u64), (&short, 120), (&short, 250)]
        .into_iter()
        .chain([(&long, 60u64), (&long, 200), (&long, 400)])
    {
        let mut child = Command::new(bin())
            .args([
                "log",
                "append",
                "--dir",
                dir.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.clone();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = feeder.join();
        verify_ok(&dir, &vkey);
        let r = LogReader::open(&dir).unwrap();
        sizes.push(r.size());
        // Every published entry is a complete line of some run, in order within a run.
        for (_, e) in r.entries(0, r.size()).map(|e| e.unwrap()) {
            assert!(
                e.starts_with(b"bulk line "),
                "{}",
                String::from_utf8_lossy(&e)
            );
        }
    }
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    eprintln!("log sizes after each kill: {sizes:?}");
}
