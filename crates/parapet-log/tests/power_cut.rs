//! Power-loss tests. `kill -9` (tests/log_crash.rs in the binary crate) keeps the page cache, so
//! it cannot show what survives a power cut. Here a storage driver keeps two layers: what has
//! been made durable (synced files, the journal) and what has only been written. A "power cut"
//! keeps the durable layer alone; the log is reopened on it and must hold every acknowledged
//! entry and verify.

use parapet_log::driver::{Driver, CHECKPOINT};
use parapet_log::note::NoteVerifier;
use parapet_log::sequencer::{PendingSync, Sequencer};
use parapet_log::verify::verify_log;
use parapet_log::{read_signing_key, Log, LogReader};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TMP_CHECKPOINT: &str = ".tmp-checkpoint";

/// The two layers of a simulated disk. `None` in `written` is a removal not yet durable.
#[derive(Clone, Default)]
struct Disk {
    durable: BTreeMap<String, Vec<u8>>,
    written: BTreeMap<String, Option<Vec<u8>>>,
    journal: Vec<Vec<u8>>,
    syncs: u64,
    journal_clears: u64,
}

impl Disk {
    fn get(&self, path: &str) -> Option<&Vec<u8>> {
        match self.written.get(path) {
            Some(w) => w.as_ref(),
            None => self.durable.get(path),
        }
    }

    /// Removes `path` and everything under it (`tile/0/000.p` is a directory).
    fn remove(&mut self, path: &str) {
        // Keys under `path/` sort between "path/" and "path0" ('0' follows '/').
        let (under, after) = (format!("{path}/"), format!("{path}0"));
        let mut keys: Vec<String> = self
            .durable
            .range(under.clone()..after.clone())
            .map(|(k, _)| k.clone())
            .chain(self.written.range(under..after).map(|(k, _)| k.clone()))
            .collect();
        keys.push(path.to_string());
        for k in keys {
            self.written.insert(k, None);
        }
    }

    /// What survives a power cut: the durable layer and the journal.
    fn after_power_cut(&self) -> Disk {
        Disk {
            durable: self.durable.clone(),
            journal: self.journal.clone(),
            ..Disk::default()
        }
    }

    /// Writes the durable layer out as a directory (for `verify_log` and `LogReader`).
    fn materialize(&self, dir: &Path) {
        for (p, data) in &self.durable {
            let full = dir.join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, data).unwrap();
        }
    }
}

#[derive(Clone)]
struct SimDisk(Arc<Mutex<Disk>>);

impl Driver for SimDisk {
    fn location(&self) -> String {
        "simulated disk".into()
    }
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        buf.clear();
        match self.0.lock().unwrap().get(path) {
            Some(d) => {
                buf.extend_from_slice(d);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn write(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .written
            .insert(path.into(), Some(data.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        for (k, v) in std::mem::take(&mut d.written) {
            match v {
                Some(v) => d.durable.insert(k, v),
                None => d.durable.remove(&k),
            };
        }
        d.syncs += 1;
        Ok(())
    }
    fn stage_checkpoint(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write(TMP_CHECKPOINT, data)
    }
    fn publish_checkpoint(&mut self) -> std::io::Result<()> {
        // Rename plus directory fsync: durable at once (the staged file was synced before).
        let mut d = self.0.lock().unwrap();
        let staged = d.get(TMP_CHECKPOINT).cloned().expect("staged checkpoint");
        d.written.insert(TMP_CHECKPOINT.into(), None);
        d.durable.remove(TMP_CHECKPOINT);
        d.durable.insert(CHECKPOINT.into(), staged);
        d.written.remove(CHECKPOINT);
        Ok(())
    }
    fn publish_checkpoint_unsynced(&mut self) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        let staged = d.get(TMP_CHECKPOINT).cloned().expect("staged checkpoint");
        d.written.insert(TMP_CHECKPOINT.into(), None);
        d.written.insert(CHECKPOINT.into(), Some(staged));
        Ok(())
    }
    fn remove(&mut self, path: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().remove(path);
        Ok(())
    }
}

/// The simulated disk's journal: a record is durable as soon as it is written.
impl Sequencer for SimDisk {
    fn sequence(&mut self, record: &[u8]) -> std::io::Result<Option<PendingSync>> {
        self.0.lock().unwrap().journal.push(record.to_vec());
        Ok(Some(PendingSync::done(0)))
    }
    fn withdraw_from(&mut self, _mark: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn discard_last(&mut self, _record: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn records(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        Ok(self.0.lock().unwrap().journal.clone())
    }
    fn clear(&mut self) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.journal.clear();
        d.journal_clears += 1;
        Ok(())
    }
    fn end_mark(&self) -> u64 {
        0
    }
}

fn entry(task: usize, seq: usize) -> Vec<u8> {
    format!(
        "{{\"task\":{task},\"seq\":{seq},\"pad\":\"{}\"}}",
        "p".repeat(seq % 300)
    )
    .into_bytes()
}

/// Appends from many tasks, cuts the power at several moments (before and after the periodic
/// full sync), and checks that the log reopened on what survived holds every acknowledged entry
/// at its index and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_a_power_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("init");
    let key = tmp.path().join("key");
    let vkey = Log::init(&real, "example.com/power", &key).unwrap();
    let v = NoteVerifier::parse(&vkey).unwrap();
    let mut disk = Disk::default();
    disk.durable.insert(
        CHECKPOINT.into(),
        std::fs::read(real.join(CHECKPOINT)).unwrap(),
    );
    // Cut times in ms; the later ones fall after a full sync (FULL_SYNC_INTERVAL is 1 s).
    let mut acked_total: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (round, cut_ms) in [150u64, 1300, 40, 2200].into_iter().enumerate() {
        let sim = SimDisk(Arc::new(Mutex::new(disk.clone())));
        let log =
            Log::open_with(sim.clone(), sim.clone(), read_signing_key(&key).unwrap()).unwrap();
        let start_size = log.size();
        assert!(start_size >= acked_total.len() as u64);
        let acked = Arc::new(Mutex::new(Vec::<(u64, Vec<u8>)>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let (log, acked, stop) = (log.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let e = entry(round * 100 + t, seq);
                    match log.append(e.clone()).await {
                        Ok(i) => acked.lock().unwrap().push((i, e)),
                        Err(_) => break,
                    }
                    seq += 1;
                    // Pace the load (the simulated disk is far faster than a real one).
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(cut_ms)).await;
        // Power cut: first what was acknowledged, then what the disk holds.
        let acked_now = acked.lock().unwrap().clone();
        let survived = sim.0.lock().unwrap().after_power_cut();
        let (syncs, clears) = {
            let d = sim.0.lock().unwrap();
            (d.syncs, d.journal_clears)
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        drop(log);
        assert!(
            acked_now.len() > 50,
            "round {round}: only {} appends in {cut_ms} ms",
            acked_now.len()
        );
        if cut_ms > 1100 {
            assert!(
                clears >= 1 && syncs >= 1,
                "round {round}: no full sync happened before the cut"
            );
        }
        for (i, e) in acked_now {
            acked_total.insert(i, e);
        }
        // Reopen on what survived: recovery replays the journal.
        let sim = SimDisk(Arc::new(Mutex::new(survived)));
        let log =
            Log::open_with(sim.clone(), sim.clone(), read_signing_key(&key).unwrap()).unwrap();
        let size = log.size();
        log.close().await.unwrap();
        let max_acked = acked_total.keys().next_back().copied().unwrap_or(0);
        assert!(
            size > max_acked,
            "round {round}: reopened size {size} lost acknowledged entry {max_acked}"
        );
        let d = sim.0.lock().unwrap().clone();
        assert!(d.journal.is_empty(), "recovery leaves the journal cleared");
        assert!(
            d.written.values().all(Option::is_none),
            "recovery and close leave every file synced (only garbage removals may be pending)"
        );
        // Materialised on tmpfs when there is one: creating thousands of small files is slow on
        // some disks, and this copy needs no durability.
        let shm = Path::new("/dev/shm");
        let scratch = match shm.is_dir() {
            true => tempfile::tempdir_in(shm).unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        let dir = scratch.path().join(format!("round{round}"));
        d.materialize(&dir);
        let rep = verify_log(&dir, &v, None, &|_| {}).unwrap();
        assert_eq!(rep.checkpoint.size, size);
        let r = LogReader::open(&dir).unwrap();
        let all: Vec<Vec<u8>> = r.entries(0, size).map(|e| e.unwrap().1).collect();
        for (i, e) in &acked_total {
            assert_eq!(&all[*i as usize], e, "round {round}: entry {i} differs");
        }
        disk = d;
    }
}
