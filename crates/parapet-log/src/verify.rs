//! Offline verification of a whole log: the checkpoint signature, every entry against its leaf
//! hash, every hash tile against the tiles below it, the root against the checkpoint, and
//! optionally consistency with an older checkpoint. Reports the first bad entry or tile. The
//! log is read through a [`TileSource`]: a local directory ([`verify_log`]) or a log served over
//! HTTP ([`crate::http_source::HttpSource`], [`verify_source`]), with the same checks.
//!
//! Level-0 work (reading bundles, hashing entries) dominates and runs on two threads; each keeps
//! its buffers, so there is no per-entry allocation.

use crate::checkpoint::Checkpoint;
use crate::driver::{LocalDir, CHECKPOINT};
use crate::error::LogError;
use crate::hash::{fold_perfect, leaf_hash, Hash, HASH_SIZE};
use crate::note::NoteVerifier;
use crate::proof::{consistency_proof, root_hash, verify_consistency};
use crate::tile::{
    bundle_path, for_each_bundle_entry, nodes_at_tile_level, tile_count, tile_levels, tile_path,
    tile_width, TILE_WIDTH,
};
use crate::tiles::{read_tile, TileNodes, TileSource};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a successful verification checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The verified checkpoint.
    pub checkpoint: Checkpoint,
    /// Total bytes of entries hashed.
    pub entry_bytes: u64,
    /// Hash tiles checked.
    pub tiles: u64,
    /// Size of the older checkpoint proven consistent, if one was given.
    pub old_size: Option<u64>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OK: log {} verified: {} entries ({} bytes), {} hash tiles, root {}",
            self.checkpoint.origin,
            self.checkpoint.size,
            self.entry_bytes,
            self.tiles,
            B64.encode(self.checkpoint.root)
        )?;
        if let Some(old) = self.old_size {
            write!(f, "; consistent with the old checkpoint of size {old}")?;
        }
        Ok(())
    }
}

struct Level0 {
    roots: Vec<(u64, Hash)>,
    bytes: u64,
    error: Option<(u64, LogError)>,
}

fn check_level0_tile<S: TileSource + ?Sized>(
    st: &S,
    size: u64,
    i: u64,
    bundle: &mut Vec<u8>,
    tile: &mut Vec<u8>,
    out: &mut Level0,
) -> Result<(), LogError> {
    let w = tile_width(0, i, size);
    let bpath = read_tile(st, None, i, w, bundle)?;
    let tpath = read_tile(st, Some(0), i, w, tile)?;
    let want = w as usize * HASH_SIZE;
    if tile.len() != want {
        return Err(LogError::Tampered(format!(
            "{tpath}: {} bytes, expected {want} ({w} hashes of 32 bytes)",
            tile.len()
        )));
    }
    let full_fallback = w < TILE_WIDTH && bpath == bundle_path(i, TILE_WIDTH);
    let mut bytes = 0u64;
    let r = for_each_bundle_entry(bundle, w as usize, |k, e| {
        bytes += e.len() as u64;
        let h = leaf_hash(e);
        if h[..] != tile[k * HASH_SIZE..(k + 1) * HASH_SIZE] {
            return Err(LogError::Tampered(format!(
                "entry {} (in {bpath}) does not match hash {k} of {tpath}: the entry or the hash tile was modified",
                i * TILE_WIDTH + k as u64
            )));
        }
        Ok(())
    });
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(crate::tile::BundleError::TrailingBytes(_)) if full_fallback => {}
        Err(e) => {
            return Err(LogError::Tampered(format!(
                "{bpath}: malformed entry bundle: {e} (entries {}..{} were expected)",
                i * TILE_WIDTH,
                i * TILE_WIDTH + w
            )))
        }
    }
    out.bytes += bytes;
    if w == TILE_WIDTH {
        let mut hs: Vec<Hash> = tile
            .chunks_exact(HASH_SIZE)
            .map(|c| {
                let mut h = [0u8; HASH_SIZE];
                h.copy_from_slice(c);
                h
            })
            .collect();
        out.roots.push((i, fold_perfect(&mut hs)));
    }
    Ok(())
}

/// Verifies the log in `dir` against verifier key `vkey`; with `old` (a signed checkpoint), also
/// proves that it is a prefix of the current tree. `progress` is called with the number of
/// entries checked so far (from worker threads).
pub fn verify_log(
    dir: &Path,
    vkey: &NoteVerifier,
    old: Option<&[u8]>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, LogError> {
    verify_source(&LocalDir::new(dir), vkey, old, progress)
}

/// Reads the checkpoint of `st`; a missing one means `st` holds no log.
fn read_checkpoint<S: TileSource + ?Sized>(st: &S) -> Result<Vec<u8>, LogError> {
    let mut note = Vec::new();
    let found = st
        .read_into(CHECKPOINT, &mut note)
        .map_err(|e| LogError::io(format!("{}: reading {CHECKPOINT}", st.location()), e))?;
    if !found {
        return Err(LogError::NotALog { dir: st.location() });
    }
    Ok(note)
}

/// [`verify_log`] of the log read from `st` (a directory, an object store, or a log served over
/// HTTP): the same checks, the same errors.
pub fn verify_source<S: TileSource + Sync + ?Sized>(
    st: &S,
    vkey: &NoteVerifier,
    old: Option<&[u8]>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, LogError> {
    let note = read_checkpoint(st)?;
    let text = vkey.open(&note, "checkpoint")?;
    let cp = Checkpoint::parse(text, "checkpoint")?;
    let n = cp.size;

    // Level 0: entries against leaf hashes, on two threads (interleaved tiles).
    let tiles0 = tile_count(0, n);
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .clamp(1, 4) as u64;
    let threads = threads.min(tiles0.max(1));
    let first_bad = AtomicU64::new(u64::MAX);
    let done = AtomicU64::new(0);
    let results: Vec<Level0> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (first_bad, done) = (&first_bad, &done);
                s.spawn(move || {
                    let mut out = Level0 {
                        roots: Vec::new(),
                        bytes: 0,
                        error: None,
                    };
                    let (mut bundle, mut tile) = (Vec::new(), Vec::new());
                    let mut i = t;
                    while i < tiles0 && i < first_bad.load(Ordering::Relaxed) {
                        if let Err(e) =
                            check_level0_tile(st, n, i, &mut bundle, &mut tile, &mut out)
                        {
                            first_bad.fetch_min(i, Ordering::Relaxed);
                            out.error = Some((i, e));
                            break;
                        }
                        let d = done.fetch_add(tile_width(0, i, n), Ordering::Relaxed);
                        progress(d + tile_width(0, i, n));
                        i += threads;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Level0 {
                    roots: Vec::new(),
                    bytes: 0,
                    error: Some((0, LogError::Tampered("verifier thread panicked".into()))),
                })
            })
            .collect()
    });
    let mut bytes = 0;
    let mut roots: Vec<(u64, Hash)> = Vec::new();
    let mut worst: Option<(u64, LogError)> = None;
    for r in results {
        bytes += r.bytes;
        roots.extend(r.roots);
        if let Some((i, e)) = r.error {
            if worst.as_ref().is_none_or(|(j, _)| i < *j) {
                worst = Some((i, e));
            }
        }
    }
    if let Some((_, e)) = worst {
        return Err(e);
    }
    roots.sort_unstable_by_key(|(i, _)| *i);
    let mut below: Vec<Hash> = roots.into_iter().map(|(_, h)| h).collect();
    let mut tiles = tiles0;

    // Higher levels: each hash must equal the root of the full tile below it.
    let mut buf = Vec::new();
    for level in 1..tile_levels(n) {
        let nodes = nodes_at_tile_level(level, n);
        debug_assert_eq!(nodes as usize, below.len());
        let mut next = Vec::new();
        for i in 0..tile_count(level, n) {
            let w = tile_width(level, i, n);
            let path = read_tile(st, Some(level), i, w, &mut buf)?;
            let want = w as usize * HASH_SIZE;
            if buf.len() != want {
                return Err(LogError::Tampered(format!(
                    "{path}: {} bytes, expected {want} ({w} hashes of 32 bytes)",
                    buf.len()
                )));
            }
            let mut hs = Vec::with_capacity(w as usize);
            for (k, c) in buf.chunks_exact(HASH_SIZE).enumerate() {
                let j = (i * TILE_WIDTH) as usize + k;
                if below.get(j).map(|h| &h[..]) != Some(c) {
                    return Err(LogError::Tampered(format!(
                        "{path}: hash {k} does not match the root of {} below it: one of the two tiles was modified",
                        tile_path(level - 1, j as u64, TILE_WIDTH)
                    )));
                }
                let mut h = [0u8; HASH_SIZE];
                h.copy_from_slice(c);
                hs.push(h);
            }
            tiles += 1;
            if w == TILE_WIDTH {
                next.push(fold_perfect(&mut hs));
            }
        }
        below = next;
    }

    // The root of the verified tiles must be the checkpoint's.
    let mut nodes = TileNodes::new(st, n);
    let root = root_hash(&mut nodes, n)?;
    if root != cp.root {
        return Err(LogError::Tampered(format!(
            "checkpoint: root hash {} does not match the root computed from the tiles ({}): \
             the checkpoint or a right-edge partial tile was replaced",
            B64.encode(cp.root),
            B64.encode(root)
        )));
    }

    let old_size = match old {
        None => None,
        Some(old_note) => {
            let text = vkey.open(old_note, "old checkpoint")?;
            let ocp = Checkpoint::parse(text, "old checkpoint")?;
            if ocp.origin != cp.origin {
                return Err(LogError::Tampered(format!(
                    "old checkpoint is for log {:?}, not {:?}",
                    ocp.origin, cp.origin
                )));
            }
            if ocp.size > n {
                return Err(LogError::Tampered(format!(
                    "old checkpoint has size {} but the log now has only {n} entries: the log was truncated",
                    ocp.size
                )));
            }
            let proof = consistency_proof(&mut nodes, ocp.size, n)?;
            verify_consistency(ocp.size, n, &ocp.root, &cp.root, &proof).map_err(|e| {
                LogError::Tampered(format!(
                    "old checkpoint (size {}) is not a prefix of the current log (size {n}): the log was rewritten ({e})",
                    ocp.size
                ))
            })?;
            Some(ocp.size)
        }
    };
    Ok(VerifyReport {
        checkpoint: cp,
        entry_bytes: bytes,
        tiles,
        old_size,
    })
}

/// What [`verify_witnessed`] found: how far the verified log is covered by a checkpoint that a
/// quorum of witnesses cosigned.
#[derive(Debug, Clone)]
pub struct WitnessReport {
    /// Size of the verified tree.
    pub log_size: u64,
    /// Size of the largest checkpoint, consistent with the verified tree, that carries at
    /// least `min_witnesses` valid cosignatures (0 if there is none).
    pub witnessed_size: u64,
    /// The quorum asked for.
    pub min_witnesses: usize,
    /// Witnesses with a valid cosignature on that checkpoint (or, without a quorum, on the
    /// best cosigned checkpoint found), with their timestamps.
    pub cosigners: Vec<(String, u64)>,
    /// Cosignature lines by a given witness key that do not verify.
    pub invalid: Vec<String>,
}

impl WitnessReport {
    /// Whether the whole verified tree is witnessed by the quorum.
    pub fn complete(&self) -> bool {
        self.witnessed_size == self.log_size && self.cosigners.len() >= self.min_witnesses
    }

    /// Entries not covered by a checkpoint with a quorum of cosignatures.
    pub fn unwitnessed(&self) -> u64 {
        if self.cosigners.len() >= self.min_witnesses {
            self.log_size - self.witnessed_size
        } else {
            self.log_size
        }
    }
}

/// After [`verify_log`] passed on `dir` (giving `report`): finds the checkpoint with at least
/// `min` valid `cosignature/v1` cosignatures by the `witnesses` keys — the log's `checkpoint`
/// itself or [`crate::COSIGNED_CHECKPOINT`] — that is signed by the log's key `vkey` and whose
/// root is the root of the verified tree at its size (so it is a prefix of the verified log).
/// A cosigned checkpoint that fails these checks is an error (the log was rewritten); a lack
/// of cosignatures is not (see [`WitnessReport::complete`]).
pub fn verify_witnessed(
    dir: &Path,
    vkey: &NoteVerifier,
    report: &VerifyReport,
    witnesses: &[crate::note::CosignatureVerifier],
    min: usize,
) -> Result<WitnessReport, LogError> {
    verify_witnessed_source(&LocalDir::new(dir), vkey, report, witnesses, min)
}

/// [`verify_witnessed`] of the log read from `st`, after [`verify_source`] passed on it.
pub fn verify_witnessed_source<S: TileSource + ?Sized>(
    st: &S,
    vkey: &NoteVerifier,
    report: &VerifyReport,
    witnesses: &[crate::note::CosignatureVerifier],
    min: usize,
) -> Result<WitnessReport, LogError> {
    let n = report.checkpoint.size;
    let mut nodes = TileNodes::new(st, n);
    let mut candidates = vec![(read_checkpoint(st)?, CHECKPOINT.to_string())];
    let mut cosigned = Vec::new();
    let found = st
        .read_into(crate::COSIGNED_CHECKPOINT, &mut cosigned)
        .map_err(|e| {
            LogError::io(
                format!("{}: reading {}", st.location(), crate::COSIGNED_CHECKPOINT),
                e,
            )
        })?;
    if found {
        candidates.push((cosigned, crate::COSIGNED_CHECKPOINT.to_string()));
    }
    let mut best = WitnessReport {
        log_size: n,
        witnessed_size: 0,
        min_witnesses: min,
        cosigners: Vec::new(),
        invalid: Vec::new(),
    };
    for (note, what) in candidates {
        let parsed = crate::note::parse_note(&note).map_err(|r| LogError::malformed(&what, r))?;
        let mut cosigners = Vec::new();
        let mut invalid = Vec::new();
        for w in witnesses {
            if cosigners.iter().any(|(name, _)| name == w.name()) {
                continue;
            }
            match w.find(&parsed) {
                Ok(Some((ts, _))) => cosigners.push((w.name().to_string(), ts)),
                Ok(None) => {}
                Err(e) => invalid.push(format!("{what}: {e}")),
            }
        }
        if cosigners.is_empty() && invalid.is_empty() {
            continue;
        }
        let text = vkey.open(&note, &what)?;
        let cp = Checkpoint::parse(text, &what)?;
        if cp.origin != report.checkpoint.origin {
            return Err(LogError::Tampered(format!(
                "{what} is for log {:?}, not {:?}",
                cp.origin, report.checkpoint.origin
            )));
        }
        if cp.size > n {
            return Err(LogError::Tampered(format!(
                "{what} was cosigned at size {} but the log has only {n} entries: the log was truncated",
                cp.size
            )));
        }
        let root = root_hash(&mut nodes, cp.size)?;
        if root != cp.root {
            return Err(LogError::Tampered(format!(
                "{what} (size {}, cosigned by {}) is not a prefix of the verified log: its root \
                 hash differs from the log's at that size: the log was rewritten",
                cp.size,
                cosigners
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let better = match (cosigners.len() >= min, best.cosigners.len() >= min) {
            (true, false) => true,
            (true, true) => cp.size > best.witnessed_size,
            (false, false) => cosigners.len() > best.cosigners.len(),
            (false, true) => false,
        };
        best.invalid.extend(invalid);
        if better {
            best.witnessed_size = cp.size;
            best.cosigners = cosigners;
        }
    }
    if best.cosigners.len() < min {
        best.witnessed_size = 0;
    }
    Ok(best)
}

/// What [`verify_receipt`] checked.
#[derive(Debug, Clone)]
pub struct ReceiptReport {
    /// The entry's index.
    pub index: u64,
    /// The checkpoint the receipt embeds (signed by the log's key).
    pub checkpoint: Checkpoint,
    /// Witnesses with a valid cosignature on it, with their timestamps.
    pub cosigners: Vec<(String, u64)>,
}

/// Checks a receipt — a C2SP tlog-proof as printed by `parapet log proof inclusion` — offline:
/// the embedded checkpoint is signed by the log's key `vkey`, carries at least `min` valid
/// cosignatures by distinct `witnesses`, and the inclusion proof proves that `entry` is at the
/// receipt's index in the tree of that checkpoint.
pub fn verify_receipt(
    receipt: &str,
    entry: &[u8],
    vkey: &NoteVerifier,
    witnesses: &[crate::note::CosignatureVerifier],
    min: usize,
) -> Result<ReceiptReport, LogError> {
    if !receipt.starts_with(&format!("{}\n", crate::INCLUSION_PROOF_HEADER)) {
        return Err(LogError::malformed(
            "receipt",
            format!(
                "it does not start with {:?} (print one with `parapet log proof inclusion`)",
                crate::INCLUSION_PROOF_HEADER
            ),
        ));
    }
    let p = crate::ProofText::parse(receipt)?;
    let text = vkey.open(p.checkpoint.as_bytes(), "receipt's checkpoint")?;
    let cp = Checkpoint::parse(text, "receipt's checkpoint")?;
    crate::proof::verify_inclusion(p.number, cp.size, &leaf_hash(entry), &p.hashes, &cp.root)
        .map_err(|e| {
            LogError::Tampered(format!(
                "the entry is not entry {} of the receipt's checkpoint (size {}): {e}",
                p.number, cp.size
            ))
        })?;
    let parsed = crate::note::parse_note(p.checkpoint.as_bytes())
        .map_err(|r| LogError::malformed("receipt's checkpoint", r))?;
    let mut cosigners: Vec<(String, u64)> = Vec::new();
    let mut invalid = Vec::new();
    for w in witnesses {
        if cosigners.iter().any(|(n, _)| n == w.name()) {
            continue;
        }
        match w.find(&parsed) {
            Ok(Some((ts, _))) => cosigners.push((w.name().to_string(), ts)),
            Ok(None) => {}
            Err(e) => invalid.push(e),
        }
    }
    if cosigners.len() < min {
        return Err(LogError::Tampered(format!(
            "the receipt's checkpoint (size {}) carries {} valid cosignature(s) by the given \
             witnesses, {min} required{}{}",
            cp.size,
            cosigners.len(),
            if invalid.is_empty() {
                ""
            } else {
                "; invalid: "
            },
            invalid.join("; ")
        )));
    }
    Ok(ReceiptReport {
        index: p.number,
        checkpoint: cp,
        cosigners,
    })
}
