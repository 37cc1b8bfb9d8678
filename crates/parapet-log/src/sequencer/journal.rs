//! [`DirJournal`]: the sequencer of a log in a local directory. A batch is sequenced (its
//! indices assigned durably) by one record appended to the write-ahead journal file [`JOURNAL`]
//! and one `fdatasync`; the file's format is described at [`JournalFile`].

use super::{PendingSync, Sequencer};
use crate::driver::dir::sync_dir;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of [`DirJournal`]'s write-ahead journal at the root of a log (not part of tlog-tiles;
/// verifiers ignore it).
pub const JOURNAL: &str = "journal";

/// The records in the journal of the log directory `dir`, oldest first, read without changing
/// anything (for verifiers; a writer reads them with [`Sequencer::records`]).
pub fn read_journal(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    match JournalFile::open_read_only(dir)? {
        Some(mut j) => j.records(),
        None => Ok(Vec::new()),
    }
}

/// [`DirJournal`]'s write-ahead journal: one file, zero-filled ahead of use so that appending a
/// record and `fdatasync` change no file metadata (one disk write and one flush per batch).
///
/// Layout: a 4 KiB header block (`JOURNAL_MAGIC`, generation u64 BE, SHA-256 of both), then
/// records, each `RECORD_MAGIC`, generation u64 BE, payload length u32 BE, payload, SHA-256 of
/// all of that. Clearing bumps the generation in the header; records of older generations left in
/// the file no longer count. Reading stops at the first record that is torn, of another
/// generation, or fails its checksum. No crate offers such a journal over one plain file with
/// this cost profile, hence hand-written.
#[derive(Debug)]
pub(crate) struct JournalFile {
    /// Shared with the writer's flusher thread, which syncs it (see [`PendingSync`]).
    file: Arc<File>,
    generation: u64,
    /// Where the next record goes.
    pos: u64,
    /// Bytes of the file known to be allocated and written (zeros or records).
    len: u64,
    /// Start and checksum of the last record written.
    last: Option<(u64, [u8; 32])>,
}

const JOURNAL_MAGIC: &[u8; 8] = b"PPJNL\x00\x00\x01";
const RECORD_MAGIC: &[u8; 4] = b"PPJR";
const JOURNAL_HEADER: u64 = 4096;
const JOURNAL_GROW: u64 = 4 << 20;
const RECORD_OVERHEAD: usize = 4 + 8 + 4 + 32;

/// The generation in the journal header of `file` (`len` bytes long), or `None` if the header
/// is missing or damaged.
fn read_generation(file: &File, len: u64) -> Option<u64> {
    let mut head = [0u8; 48];
    let valid = len >= JOURNAL_HEADER
        && file.read_exact_at(&mut head, 0).is_ok()
        && &head[..8] == JOURNAL_MAGIC
        && Sha256::digest(&head[..16])[..] == head[16..48];
    valid.then(|| u64::from_be_bytes(head[8..16].try_into().unwrap_or([0; 8])))
}

impl JournalFile {
    fn open(root: &Path) -> io::Result<JournalFile> {
        let path = root.join(JOURNAL);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let mut j = JournalFile {
            file: Arc::new(file),
            generation: 0,
            pos: JOURNAL_HEADER,
            len,
            last: None,
        };
        if let Some(generation) = read_generation(&j.file, len) {
            j.generation = generation;
            // Position after the records already there (they stay until cleared).
            j.records()?;
        } else {
            // New (or unusable) journal: start generation 1 with no records.
            j.len = 0;
            j.file.set_len(0)?;
            j.grow(JOURNAL_HEADER)?;
            j.write_header(1)?;
            if !existed {
                sync_dir(root)?;
            }
        }
        Ok(j)
    }

    /// Opens the journal of `root` for reading only; `None` if there is none (or no valid header).
    fn open_read_only(root: &Path) -> io::Result<Option<JournalFile>> {
        let file = match File::open(root.join(JOURNAL)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        Ok(read_generation(&file, len).map(|generation| JournalFile {
            file: Arc::new(file),
            generation,
            pos: JOURNAL_HEADER,
            len,
            last: None,
        }))
    }

    /// Extends the file with zeros to at least `want` bytes and syncs it (size change).
    fn grow(&mut self, want: u64) -> io::Result<()> {
        if want <= self.len {
            return Ok(());
        }
        // Double (up to JOURNAL_GROW at a time) so small logs keep a small journal.
        let step = self.len.clamp(1 << 20, JOURNAL_GROW);
        let new_len = want.div_ceil(step) * step;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.len;
        while at < new_len {
            let n = (new_len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.len = new_len;
        Ok(())
    }

    fn write_header(&mut self, generation: u64) -> io::Result<()> {
        let mut head = Vec::with_capacity(48);
        head.extend_from_slice(JOURNAL_MAGIC);
        head.extend_from_slice(&generation.to_be_bytes());
        let sum = Sha256::digest(&head);
        head.extend_from_slice(&sum);
        self.file.write_all_at(&head, 0)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.pos = JOURNAL_HEADER;
        self.last = None;
        Ok(())
    }

    /// Writes a record without syncing it; returns the sync to run (on any thread).
    fn write(&mut self, payload: &[u8]) -> io::Result<PendingSync> {
        let start = self.pos;
        self.pos = self.write_record(payload)?;
        let file = self.file.clone();
        Ok(PendingSync::new(start, move || file.sync_data()))
    }

    /// Withdraws the record at `at` and those after it (see [`Sequencer::withdraw_from`]):
    /// overwrites its magic, so reading stops before it, makes that durable, and writes the next
    /// record in its place.
    fn withdraw_from(&mut self, at: u64) -> io::Result<()> {
        if at < JOURNAL_HEADER || at >= self.pos {
            return Ok(());
        }
        self.erase_from(at)
    }

    /// Overwrites the magic of the record at `at` (reading stops there), makes that durable, and
    /// moves the write position there.
    fn erase_from(&mut self, at: u64) -> io::Result<()> {
        self.file.write_all_at(&[0u8; 4], at)?;
        self.file.sync_data()?;
        self.pos = at;
        self.last = None;
        Ok(())
    }

    /// Frames `payload` as a record: magic, generation, length, payload, SHA-256 of all that.
    fn frame(&self, payload: &[u8]) -> io::Result<(Vec<u8>, [u8; 32])> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("journal record over 4 GiB"))?;
        let mut rec = Vec::with_capacity(payload.len() + RECORD_OVERHEAD);
        rec.extend_from_slice(RECORD_MAGIC);
        rec.extend_from_slice(&self.generation.to_be_bytes());
        rec.extend_from_slice(&len.to_be_bytes());
        rec.extend_from_slice(payload);
        let sum: [u8; 32] = Sha256::digest(&rec).into();
        rec.extend_from_slice(&sum);
        Ok((rec, sum))
    }

    /// Writes `payload` as a record at the write position (not yet synced); returns where it
    /// ends.
    fn write_record(&mut self, payload: &[u8]) -> io::Result<u64> {
        let (rec, sum) = self.frame(payload)?;
        let end = self.pos + rec.len() as u64;
        // Remembered before writing: a write that fails half-way can still be withdrawn.
        self.last = Some((self.pos, sum));
        self.grow(end)?;
        self.file.write_all_at(&rec, self.pos)?;
        Ok(end)
    }

    fn records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut pos = JOURNAL_HEADER;
        let mut head = [0u8; 16];
        loop {
            if pos + RECORD_OVERHEAD as u64 > self.len
                || self.file.read_exact_at(&mut head, pos).is_err()
                || &head[..4] != RECORD_MAGIC
                || head[4..12] != self.generation.to_be_bytes()
            {
                break;
            }
            let n = u32::from_be_bytes(head[12..16].try_into().unwrap_or([0; 4])) as u64;
            let total = 16 + n + 32;
            if pos + total > self.len {
                break;
            }
            let mut rec = vec![0u8; total as usize];
            self.file.read_exact_at(&mut rec, pos)?;
            let body = &rec[..16 + n as usize];
            if Sha256::digest(body)[..] != rec[16 + n as usize..] {
                break;
            }
            out.push(body[16..].to_vec());
            pos += total;
        }
        self.pos = pos;
        Ok(out)
    }

    /// If the last record written is `payload`'s, overwrites its magic (so reading stops before
    /// it), makes that durable, and writes the next record in its place.
    fn discard_last(&mut self, payload: &[u8]) -> io::Result<()> {
        let (_, sum) = self.frame(payload)?;
        match self.last {
            Some((at, last)) if last == sum => self.erase_from(at),
            _ => Ok(()),
        }
    }

    fn clear(&mut self) -> io::Result<()> {
        if self.pos == JOURNAL_HEADER {
            return Ok(());
        }
        self.write_header(self.generation + 1)
    }
}

/// The sequencer of a log in a local directory: the write-ahead journal file [`JOURNAL`] at its
/// root, opened on first use.
#[derive(Debug)]
pub struct DirJournal {
    root: PathBuf,
    journal: Option<JournalFile>,
}

impl DirJournal {
    /// The journal of the log directory `root` (which must exist).
    pub fn new(root: &Path) -> DirJournal {
        DirJournal {
            root: root.to_path_buf(),
            journal: None,
        }
    }

    fn journal(&mut self) -> io::Result<&mut JournalFile> {
        if self.journal.is_none() {
            self.journal = Some(JournalFile::open(&self.root)?);
        }
        match self.journal.as_mut() {
            Some(j) => Ok(j),
            None => Err(io::Error::other("internal error: journal not open")),
        }
    }
}

impl Sequencer for DirJournal {
    fn sequence(&mut self, record: &[u8]) -> io::Result<Option<PendingSync>> {
        self.journal()?.write(record).map(Some)
    }

    fn withdraw_from(&mut self, mark: u64) -> io::Result<()> {
        self.journal()?.withdraw_from(mark)
    }

    fn discard_last(&mut self, record: &[u8]) -> io::Result<()> {
        self.journal()?.discard_last(record)
    }

    fn records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.journal()?.records()
    }

    fn clear(&mut self) -> io::Result<()> {
        self.journal()?.clear()
    }

    fn end_mark(&self) -> u64 {
        // Before the journal is opened nothing was sequenced: 0 lies before every record.
        self.journal.as_ref().map_or(0, |j| j.pos)
    }
}
