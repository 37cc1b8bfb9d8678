//! The `parapet log` and `parapet verify` commands, run as real processes: the exact interface,
//! proofs, and tamper detection (change, drop, reorder, append a byte in bundles, hash tiles and
//! the checkpoint → `verify` fails and names what is wrong).

use parapet_log::checkpoint::Checkpoint;
use parapet_log::hash::leaf_hash;
use parapet_log::note::NoteVerifier;
use parapet_log::proof::{verify_consistency, verify_inclusion};
use parapet_log::ProofText;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn parapet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_parapet"))
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = parapet();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn parapet");
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            si.write_all(data).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A log of 1300 entries (5 full bundles, one partial; hash tiles at levels 0 and 1).
fn make_log(tmp: &Path) -> (PathBuf, PathBuf, String, Vec<Vec<u8>>) {
    let dir = tmp.join("log");
    let key = tmp.join("log.key");
    let o = run(
        &[
            "log",
            "init",
            "--dir",
            s(&dir),
            "--origin",
            "example.com/audit",
            "--key",
            s(&key),
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let vkey = out.lines().last().unwrap().to_string();
    NoteVerifier::parse(&vkey).expect("last line of init is the verifier key");
    let entries: Vec<Vec<u8>> = (0..1300)
        .map(|i| format!("{{\"event\":{i},\"pad\":\"{}\"}}", "p".repeat(i % 50)).into_bytes())
        .collect();
    let mut input = Vec::new();
    for e in &entries[..1000] {
        input.extend_from_slice(e);
        input.push(b'\n');
    }
    let o = run(
        &["log", "append", "--dir", s(&dir), "--key", s(&key)],
        Some(&input),
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::copy(dir.join("checkpoint"), tmp.join("old-checkpoint")).unwrap();
    let mut input = Vec::new();
    for e in &entries[1000..] {
        input.extend_from_slice(e);
        input.push(b'\n');
    }
    let o = run(
        &["log", "append", "--dir", s(&dir), "--key", s(&key)],
        Some(&input),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("appended 300 entries (indices 1000..1300)"),
        "{}",
        text(&o)
    );
    (dir, key, vkey, entries)
}

fn verify(dir: &Path, vkey: &str, old: Option<&Path>) -> Output {
    let mut args = vec!["verify", "--dir", s(dir), "--vkey", vkey];
    if let Some(o) = old {
        args.extend(["--old", s(o)]);
    }
    run(&args, None)
}

#[test]
fn init_append_verify_and_proofs() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, vkey, entries) = make_log(tmp.path());
    let o = verify(&dir, &vkey, Some(&tmp.path().join("old-checkpoint")));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(out.lines().count(), 1, "one-line summary: {out}");
    assert!(out.contains("1300 entries"), "{out}");
    assert!(
        out.contains("consistent with the old checkpoint of size 1000"),
        "{out}"
    );
    // --vkey also accepts a file.
    std::fs::write(tmp.path().join("vkey"), format!("{vkey}\n")).unwrap();
    let o = verify(&dir, s(&tmp.path().join("vkey")), None);
    assert!(o.status.success(), "{}", text(&o));
    // Another key does not verify the log.
    let o = run(
        &[
            "log",
            "init",
            "--dir",
            s(&tmp.path().join("l2")),
            "--origin",
            "example.com/audit",
            "--key",
            s(&tmp.path().join("k2")),
        ],
        None,
    );
    let other = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let o = verify(&dir, &other, None);
    assert!(!o.status.success());
    assert!(text(&o).contains("checkpoint"), "{}", text(&o));
    // init refuses to overwrite the key or the log.
    let before = std::fs::read(&key).unwrap();
    let o = run(
        &[
            "log",
            "init",
            "--dir",
            s(&tmp.path().join("l3")),
            "--origin",
            "x.example/y",
            "--key",
            s(&key),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let v = NoteVerifier::parse(&vkey).unwrap();
    // Inclusion proofs (C2SP tlog-proof) verify against the checkpoint they carry.
    for i in [0u64, 255, 256, 999, 1299] {
        let o = run(
            &[
                "log",
                "proof",
                "inclusion",
                "--dir",
                s(&dir),
                "--index",
                &i.to_string(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        let t = String::from_utf8(o.stdout).unwrap();
        assert!(t.starts_with("c2sp.org/tlog-proof@v1\nindex "), "{t}");
        let p = ProofText::parse(&t).unwrap();
        let cp = Checkpoint::parse(v.open(p.checkpoint.as_bytes(), "cp").unwrap(), "cp").unwrap();
        verify_inclusion(
            i,
            cp.size,
            &leaf_hash(&entries[i as usize]),
            &p.hashes,
            &cp.root,
        )
        .unwrap();
    }
    let o = run(
        &[
            "log",
            "proof",
            "inclusion",
            "--dir",
            s(&dir),
            "--index",
            "1300",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not in the log"), "{}", text(&o));
    // Consistency proof from the old checkpoint.
    let old_note = std::fs::read(tmp.path().join("old-checkpoint")).unwrap();
    let old = Checkpoint::parse(v.open(&old_note, "old").unwrap(), "old").unwrap();
    let o = run(
        &[
            "log",
            "proof",
            "consistency",
            "--dir",
            s(&dir),
            "--old",
            "1000",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let p = ProofText::parse(&String::from_utf8(o.stdout).unwrap()).unwrap();
    assert_eq!(p.number, 1000);
    let cp = Checkpoint::parse(v.open(p.checkpoint.as_bytes(), "cp").unwrap(), "cp").unwrap();
    verify_consistency(1000, cp.size, &old.root, &cp.root, &p.hashes).unwrap();
}

#[test]
fn oversized_line_is_refused_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, key, vkey, _) = make_log(tmp.path());
    let mut input = b"a\nb\n".to_vec();
    input.extend(vec![b'x'; 70_000]);
    input.extend_from_slice(b"\nc\n");
    let o = run(
        &["log", "append", "--dir", s(&dir), "--key", s(&key)],
        Some(&input),
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("65535"), "{}", text(&o));
    assert!(text(&o).contains("line 3"), "{}", text(&o));
    let o = verify(&dir, &vkey, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1302 entries"), "{}", text(&o));
}

#[derive(Clone, Copy, Debug)]
enum Tamper {
    ChangeByte,
    DropByte,
    Reorder,
    AppendByte,
}

fn tamper(path: &Path, how: Tamper, unit: usize) {
    let mut b = std::fs::read(path).unwrap();
    match how {
        Tamper::ChangeByte => {
            let i = b.len() / 2;
            b[i] ^= 0x20;
        }
        Tamper::DropByte => {
            b.remove(b.len() / 2);
        }
        Tamper::AppendByte => b.push(b'\n'),
        Tamper::Reorder => {
            // Swap the first two units (hashes, entries or lines).
            if unit == 0 {
                // Entry bundle: swap the first two entries.
                let l0 = u16::from_be_bytes([b[0], b[1]]) as usize + 2;
                let l1 = u16::from_be_bytes([b[l0], b[l0 + 1]]) as usize + 2;
                let (e0, e1) = (b[..l0].to_vec(), b[l0..l0 + l1].to_vec());
                let mut out = e1;
                out.extend(e0);
                out.extend_from_slice(&b[l0 + l1..]);
                b = out;
            } else if unit == 32 {
                let (h0, h1) = (b[..32].to_vec(), b[32..64].to_vec());
                b[..32].copy_from_slice(&h1);
                b[32..64].copy_from_slice(&h0);
            } else {
                let t = String::from_utf8(b).unwrap();
                let mut lines: Vec<&str> = t.split('\n').collect();
                lines.swap(1, 2);
                b = lines.join("\n").into_bytes();
            }
        }
    }
    std::fs::write(path, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

#[test]
fn tampering_with_any_file_is_detected_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _key, vkey, _) = make_log(tmp.path());
    // (file, unit for reorder: 0 = bundle entries, 32 = hashes, 1 = lines)
    let targets = [
        ("tile/entries/002", 0usize),
        ("tile/entries/005.p/20", 0),
        ("tile/0/003", 32),
        ("tile/0/005.p/20", 32),
        ("tile/1/000.p/5", 32),
        ("checkpoint", 1),
    ];
    let mut n = 0;
    for (file, unit) in targets {
        for how in [
            Tamper::ChangeByte,
            Tamper::DropByte,
            Tamper::Reorder,
            Tamper::AppendByte,
        ] {
            let copy = tmp.path().join(format!("t{n}"));
            n += 1;
            copy_dir(&dir, &copy);
            tamper(&copy.join(file), how, unit);
            let o = verify(&copy, &vkey, None);
            let t = text(&o);
            assert!(!o.status.success(), "{file} {how:?} not detected: {t}");
            assert!(
                t.contains(file),
                "{file} {how:?}: message does not name the file: {t}"
            );
            assert!(t.contains("verification FAILED"), "{t}");
        }
    }
    // A missing tile is named too.
    let copy = tmp.path().join("missing");
    copy_dir(&dir, &copy);
    std::fs::remove_file(copy.join("tile/0/001")).unwrap();
    let o = verify(&copy, &vkey, None);
    assert!(!o.status.success());
    assert!(text(&o).contains("tile/0/001"), "{}", text(&o));
    // A checkpoint from a forked history (same key, different entries) is refused as --old.
    let (a, b) = (tmp.path().join("fork-a"), tmp.path().join("fork-b"));
    copy_dir(&dir, &a);
    copy_dir(&dir, &b);
    let key = tmp.path().join("log.key");
    for (d, line) in [(&a, &b"honest\n"[..]), (&b, &b"forged\n"[..])] {
        let o = run(
            &["log", "append", "--dir", s(d), "--key", s(&key)],
            Some(line),
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = verify(&b, &vkey, Some(&a.join("checkpoint")));
    assert!(!o.status.success());
    assert!(text(&o).contains("not a prefix"), "{}", text(&o));
    // Not a checkpoint at all.
    let o = verify(&dir, &vkey, Some(&dir.join("tile/0/000")));
    assert!(!o.status.success());
    assert!(text(&o).contains("old checkpoint"), "{}", text(&o));
}
