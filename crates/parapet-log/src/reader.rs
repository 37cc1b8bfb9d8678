//! Reading a log directory independently of any writer: the checkpoint, entries and proofs.
//! The reader does not check signatures or hashes; `verify` does.

use crate::checkpoint::Checkpoint;
use crate::driver::{read_checkpoint_file, LocalDir};
use crate::error::LogError;
use crate::hash::Hash;
use crate::proof::{consistency_proof, inclusion_proof};
use crate::tile::{for_each_bundle_entry, tile_width, BundleError, TILE_WIDTH};
use crate::tiles::{read_tile, TileNodes};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::path::{Path, PathBuf};

/// First line of an inclusion proof (C2SP tlog-proof).
pub const INCLUSION_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";
/// First line of a consistency proof (Parapet's format in the style of tlog-proof).
pub const CONSISTENCY_PROOF_HEADER: &str = "parapet.dev/tlog-consistency-proof@v1";

/// Reads a log directory (checkpoint and entries); independent of any writer.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    storage: LocalDir,
    note: Vec<u8>,
    checkpoint: Checkpoint,
}

impl LogReader {
    /// Opens the log in `dir` for reading (reads its current checkpoint once).
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        let note = read_checkpoint_file(dir)?;
        let what = format!("{}/checkpoint", dir.display());
        let parsed = crate::note::parse_note(&note).map_err(|r| LogError::malformed(&what, r))?;
        let checkpoint = Checkpoint::parse(parsed.text, &what)?;
        Ok(LogReader {
            dir: dir.to_path_buf(),
            storage: LocalDir::new(dir),
            note,
            checkpoint,
        })
    }

    /// Opens the log in `dir` for reading at signed checkpoint `note` (e.g. the cosigned
    /// checkpoint, which may be older than the latest): sizes and proofs are those of `note`'s
    /// tree, read from the log's tiles. The note is not checked beyond its syntax.
    pub fn open_at(dir: &Path, note: Vec<u8>, what: &str) -> Result<LogReader, LogError> {
        let parsed = crate::note::parse_note(&note).map_err(|r| LogError::malformed(what, r))?;
        let checkpoint = Checkpoint::parse(parsed.text, what)?;
        Ok(LogReader {
            dir: dir.to_path_buf(),
            storage: LocalDir::new(dir),
            note,
            checkpoint,
        })
    }

    /// Tree size of the latest checkpoint.
    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    /// The checkpoint that was read (unverified).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signed checkpoint note, verbatim.
    pub fn checkpoint_note(&self) -> &[u8] {
        &self.note
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Iterates entries with indices in `start..end` (`end` is clamped to [`LogReader::size`]).
    pub fn entries(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), LogError>> + '_ {
        EntryIter {
            reader: self,
            next: start,
            end: end.min(self.size()),
            bundle: Vec::new(),
            spans: Vec::new(),
            loaded: None,
            failed: false,
        }
    }

    /// Inclusion proof of entry `index` against the checkpoint.
    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>, LogError> {
        let mut nodes = TileNodes::new(&self.storage, self.size());
        inclusion_proof(&mut nodes, index, self.size())
    }

    /// Consistency proof from tree size `old` to the checkpoint.
    pub fn consistency_proof(&self, old: u64) -> Result<Vec<Hash>, LogError> {
        let mut nodes = TileNodes::new(&self.storage, self.size());
        consistency_proof(&mut nodes, old, self.size())
    }

    /// The inclusion proof of entry `index` in C2SP tlog-proof text format.
    pub fn inclusion_proof_text(&self, index: u64) -> Result<String, LogError> {
        let proof = self.inclusion_proof(index)?;
        Ok(proof_text(
            INCLUSION_PROOF_HEADER,
            &format!("index {index}"),
            &proof,
            &self.note,
        ))
    }

    /// The consistency proof from size `old` in Parapet's text format (see docs/log.md):
    /// header line, `old N`, the hashes, a blank line, the checkpoint.
    pub fn consistency_proof_text(&self, old: u64) -> Result<String, LogError> {
        let proof = self.consistency_proof(old)?;
        Ok(proof_text(
            CONSISTENCY_PROOF_HEADER,
            &format!("old {old}"),
            &proof,
            &self.note,
        ))
    }
}

fn proof_text(header: &str, line: &str, proof: &[Hash], note: &[u8]) -> String {
    let mut s = format!("{header}\n{line}\n");
    for h in proof {
        s.push_str(&B64.encode(h));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&String::from_utf8_lossy(note));
    s
}

/// A parsed proof text: the number after `index`/`old`, the hashes, and the checkpoint note.
#[derive(Debug, Clone)]
pub struct ProofText {
    /// The entry index (inclusion) or old tree size (consistency).
    pub number: u64,
    /// The proof hashes.
    pub hashes: Vec<Hash>,
    /// The signed checkpoint, verbatim.
    pub checkpoint: String,
}

impl ProofText {
    /// Parses a proof printed by [`LogReader::inclusion_proof_text`] (or any C2SP tlog-proof;
    /// an `extra` line is skipped) or [`LogReader::consistency_proof_text`].
    pub fn parse(text: &str) -> Result<ProofText, LogError> {
        let bad = |r: &str| LogError::malformed("proof", r.to_string());
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let header = lines.next().unwrap_or_default();
        let key = match header {
            INCLUSION_PROOF_HEADER => "index ",
            CONSISTENCY_PROOF_HEADER => "old ",
            _ => return Err(bad("unknown header line")),
        };
        let mut line = lines.next().ok_or_else(|| bad("missing index line"))?;
        if key == "index " && line.starts_with("extra ") {
            line = lines.next().ok_or_else(|| bad("missing index line"))?;
        }
        let number = line
            .strip_prefix(key)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("bad index/old line"))?;
        let mut hashes = Vec::new();
        for l in lines {
            let raw = B64.decode(l).map_err(|_| bad("hash line is not base64"))?;
            hashes.push(raw.try_into().map_err(|_| bad("hash is not 32 bytes"))?);
        }
        Ok(ProofText {
            number,
            hashes,
            checkpoint: checkpoint.to_string(),
        })
    }
}

/// Iterator over a range of entries (see [`LogReader::entries`]).
pub struct EntryIter<'a> {
    reader: &'a LogReader,
    next: u64,
    end: u64,
    bundle: Vec<u8>,
    spans: Vec<(usize, usize)>,
    loaded: Option<u64>,
    failed: bool,
}

impl EntryIter<'_> {
    fn load(&mut self, index: u64) -> Result<(), LogError> {
        let size = self.reader.size();
        let width = tile_width(0, index, size);
        let path = read_tile(&self.reader.storage, None, index, width, &mut self.bundle)?;
        self.spans.clear();
        let mut pos = 0usize;
        let spans = &mut self.spans;
        let r = for_each_bundle_entry::<()>(&self.bundle, width as usize, |_, e| {
            spans.push((pos + 2, pos + 2 + e.len()));
            pos += 2 + e.len();
            Ok(())
        });
        match r {
            Ok(_) => {}
            Err(BundleError::TrailingBytes(_)) if width < TILE_WIDTH => {}
            Err(e) => return Err(LogError::Tampered(format!("{path}: {e}"))),
        }
        self.loaded = Some(index);
        Ok(())
    }
}

impl Iterator for EntryIter<'_> {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.end {
            return None;
        }
        let i = self.next;
        let b = i / TILE_WIDTH;
        if self.loaded != Some(b) {
            if let Err(e) = self.load(b) {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let (s, e) = self.spans[(i % TILE_WIDTH) as usize];
        self.next += 1;
        Some(Ok((i, self.bundle[s..e].to_vec())))
    }
}
