//! Reading hash tiles of a published tree: a [`NodeSource`] over a [`TileSource`] (any
//! [`Driver`], or a log served over HTTP), used for crash recovery (rebuilding the right edge),
//! proofs and `verify`.

use crate::driver::Driver;
use crate::error::LogError;
use crate::hash::{fold_perfect, Hash, HASH_SIZE};
use crate::proof::NodeSource;
use crate::tile::{bundle_path, tile_path, tile_width, TILE_HEIGHT, TILE_WIDTH};
use std::collections::HashMap;
use std::io;

/// Where a published log is read from, by tlog-tiles relative path (`checkpoint`,
/// `tile/0/x001/234`, `tile/entries/005.p/20`): every storage [`Driver`] (a local directory, an
/// object store), or a log served over HTTP by the C2SP tlog-tiles read API
/// ([`crate::http_source::HttpSource`]). The verifier reads a log only through this trait.
pub trait TileSource {
    /// Human-readable location (for error messages).
    fn location(&self) -> String;
    /// Reads a whole file into `buf` (cleared first); `Ok(false)` if it does not exist.
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool>;
}

impl<D: Driver + ?Sized> TileSource for D {
    fn location(&self) -> String {
        Driver::location(self)
    }
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        Driver::read_into(self, path, buf)
    }
}

/// Reads tile `level`/`index` of width `width` into `buf`. If a partial tile is missing but the
/// full tile exists (the log grew and removed the partial), the full tile's prefix is used.
/// Returns the path that was read.
pub(crate) fn read_tile<S: TileSource + ?Sized>(
    st: &S,
    level: Option<u32>,
    index: u64,
    width: u64,
    buf: &mut Vec<u8>,
) -> Result<String, LogError> {
    let path = match level {
        Some(l) => tile_path(l, index, width),
        None => bundle_path(index, width),
    };
    let found = st
        .read_into(&path, buf)
        .map_err(|e| LogError::io(format!("{}: reading {path}", st.location()), e))?;
    if found {
        return Ok(path);
    }
    if width < TILE_WIDTH {
        let full = match level {
            Some(l) => tile_path(l, index, TILE_WIDTH),
            None => bundle_path(index, TILE_WIDTH),
        };
        let found = st
            .read_into(&full, buf)
            .map_err(|e| LogError::io(format!("{}: reading {full}", st.location()), e))?;
        if found {
            if level.is_some() {
                buf.truncate((width as usize) * HASH_SIZE);
            }
            return Ok(full);
        }
    }
    Err(LogError::Tampered(format!(
        "{path}: missing from {} (the log is incomplete)",
        st.location()
    )))
}

/// Parses a hash tile that must hold exactly `width` hashes.
pub(crate) fn parse_hashes(path: &str, data: &[u8], width: u64) -> Result<Vec<Hash>, LogError> {
    let want = width as usize * HASH_SIZE;
    if data.len() != want {
        return Err(LogError::Tampered(format!(
            "{path}: {} bytes, expected {want} ({width} hashes of 32 bytes)",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(HASH_SIZE)
        .map(|c| {
            let mut h = [0u8; HASH_SIZE];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// Complete-subtree hashes of the tree of `size` leaves, read from its hash tiles.
pub(crate) struct TileNodes<'a, S: TileSource + ?Sized> {
    storage: &'a S,
    size: u64,
    cache: HashMap<(u32, u64), Vec<Hash>>,
    buf: Vec<u8>,
}

impl<'a, S: TileSource + ?Sized> TileNodes<'a, S> {
    pub(crate) fn new(storage: &'a S, size: u64) -> Self {
        TileNodes {
            storage,
            size,
            cache: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// The hashes of tile `level`/`index` (as wide as the tree of `size` makes it).
    pub(crate) fn tile(&mut self, level: u32, index: u64) -> Result<&Vec<Hash>, LogError> {
        if !self.cache.contains_key(&(level, index)) {
            let width = tile_width(level, index, self.size);
            if width == 0 {
                return Err(LogError::OutOfRange(format!(
                    "tile {level}/{index} is beyond tree size {}",
                    self.size
                )));
            }
            let path = read_tile(self.storage, Some(level), index, width, &mut self.buf)?;
            let hashes = parse_hashes(&path, &self.buf, width)?;
            if self.cache.len() >= 64 {
                self.cache.clear();
            }
            self.cache.insert((level, index), hashes);
        }
        self.cache
            .get(&(level, index))
            .ok_or_else(|| LogError::OutOfRange(format!("tile {level}/{index} not loaded")))
    }
}

impl<S: TileSource + ?Sized> NodeSource for TileNodes<'_, S> {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, LogError> {
        let tile_level = level / TILE_HEIGHT;
        let r = level % TILE_HEIGHT;
        let start = index << r;
        let count = 1usize << r;
        let tile_index = start / TILE_WIDTH;
        let off = (start % TILE_WIDTH) as usize;
        let size = self.size;
        let tile = self.tile(tile_level, tile_index)?;
        if off + count > tile.len() {
            return Err(LogError::OutOfRange(format!(
                "node {level}/{index} is not complete in tree size {size}"
            )));
        }
        let mut v = tile[off..off + count].to_vec();
        Ok(fold_perfect(&mut v))
    }
}
