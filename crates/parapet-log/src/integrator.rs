//! The integrator: turns sequenced entries into the tree's state, and that state into tiles,
//! entry bundles and the numbers of a checkpoint (size, root). Third of the log's four roles
//! (queue → sequencer → integrator → storage driver; see `docs/log.md`, "Architecture").
//!
//! It owns the right edge of the tree (the compact range: one hash per level), at most one
//! partial tile per tile level and one partial bundle, and the tiles completed since they were
//! last written. It computes; where the bytes go is the [`Driver`] driver's business, which
//! entries come (and that they are durable) the sequencer's. C2SP tlog-tiles layout, tile height
//! 8: see [`crate::tile`].

use crate::checkpoint::Checkpoint;
use crate::driver::Driver;
use crate::error::LogError;
use crate::hash::{node_hash, Hash};
use crate::proof::NodeSource;
use crate::queue::MAX_BATCH_ENTRIES;
use crate::tile::{
    bundle_path, for_each_bundle_entry, nodes_at_tile_level, push_bundle_entry, tile_levels,
    tile_path, TILE_WIDTH,
};
use crate::tiles::{parse_hashes, read_tile, TileNodes};
use std::io;

/// The integrator role. What an implementation must guarantee:
/// - entries are integrated at consecutive indices, in the order given (the sequencer's order),
///   and [`Integrator::root`] is the RFC 9162 root of the tree of [`Integrator::size`] entries;
/// - the tiles and bundles it writes are exactly those of C2SP tlog-tiles for that tree, and a
///   full tile or bundle is written once, with the bytes it will always have (a re-write after a
///   crash or a takeover writes the same bytes);
/// - it writes every tile a checkpoint covers before that checkpoint is published: the writer
///   stages the checkpoint only after [`Integrator::write_partials`].
///
/// It does not decide who may publish: the writer asks the sequencer first
/// ([`crate::sequencer::Sequencer::fence`]), so that with several processes only the holder of
/// the integration lock, of the current generation, writes tiles and checkpoints.
pub(crate) trait Integrator {
    /// Entries integrated.
    fn size(&self) -> u64;
    /// Root hash of the integrated tree.
    fn root(&self) -> Hash;
    /// Integrates `entry` (whose leaf hash is `leaf`) at index [`Integrator::size`]. Tiles and
    /// bundles that become full are kept for [`Integrator::write_full`].
    fn append(&mut self, entry: &[u8], leaf: Hash) -> io::Result<()>;
    /// Bytes of completed tiles and bundles not yet written.
    fn pending_bytes(&self) -> usize;
    /// Writes the tiles and bundles that became full since the last call.
    fn write_full(&mut self, st: &mut dyn Driver) -> io::Result<()>;
    /// Writes the full tiles not yet written and the partial tiles and bundle changed since the
    /// last call: afterwards storage holds every tile of the current tree.
    fn write_partials(&mut self, st: &mut dyn Driver) -> io::Result<()>;
    /// Takes the partial tiles (`.p` directories) superseded by full ones since the last call:
    /// removable once nothing needs the older trees they belong to.
    fn take_superseded(&mut self) -> Vec<String>;
}

/// The right edge of the tree plus the partial tiles and bundle.
#[derive(Debug, Default, Clone)]
pub(crate) struct TreeState {
    size: u64,
    range: Vec<Hash>,
    levels: Vec<Vec<Hash>>,
    dirty: Vec<bool>,
    bundle: Vec<u8>,
    bundle_count: u64,
    bundle_dirty: bool,
    /// `.p` directories of tiles completed in this batch (removed after the checkpoint).
    completed: Vec<String>,
    /// Per tile level: whether a partial of the level's current tile may be on disk (so that its
    /// `.p` directory has to be removed once the tile is full). A bulk batch completes thousands
    /// of tiles that never had a partial; removing their `.p` cost four failing system calls
    /// each.
    partial_written: Vec<bool>,
    /// The same for the current entry bundle.
    bundle_partial_written: bool,
    /// Full tiles and bundles completed but not yet written (path, content).
    full: Vec<(String, Vec<u8>)>,
}

fn hashes_bytes(h: &[Hash]) -> &[u8] {
    h.as_flattened()
}

impl TreeState {
    fn push_hash(&mut self, tl: usize, h: Hash, new_size: u64) {
        if self.levels.len() <= tl {
            self.levels.resize_with(tl + 1, Vec::new);
            self.dirty.resize(tl + 1, false);
            self.partial_written.resize(tl + 1, false);
        }
        self.levels[tl].push(h);
        self.dirty[tl] = true;
        if self.levels[tl].len() as u64 == TILE_WIDTH {
            let index = nodes_at_tile_level(tl as u32, new_size) / TILE_WIDTH - 1;
            let path = tile_path(tl as u32, index, TILE_WIDTH);
            self.full
                .push((path.clone(), hashes_bytes(&self.levels[tl]).to_vec()));
            if std::mem::take(&mut self.partial_written[tl]) {
                self.completed.push(format!("{path}.p"));
            }
            self.levels[tl].clear();
            self.dirty[tl] = false;
        }
    }

    /// The entries of the current partial bundle (each with its u16 length), as published.
    pub(crate) fn partial_bundle(&self) -> &[u8] {
        &self.bundle
    }

    /// Rebuilds the state of the published tree of checkpoint `cp` from storage.
    pub(crate) fn load<S: Driver + ?Sized>(st: &S, cp: &Checkpoint) -> Result<TreeState, LogError> {
        let n = cp.size;
        let mut nodes = TileNodes::new(st, n);
        let mut range = Vec::new();
        for l in (0..64u32).rev() {
            if (n >> l) & 1 == 1 {
                range.push(nodes.node(l, (n >> l) - 1)?);
            }
        }
        let levels_n = tile_levels(n) as usize;
        let mut levels = Vec::with_capacity(levels_n);
        let mut buf = Vec::new();
        for tl in 0..levels_n {
            let nodes_here = nodes_at_tile_level(tl as u32, n);
            let width = nodes_here % TILE_WIDTH;
            if width == 0 {
                levels.push(Vec::new());
            } else {
                let path = read_tile(
                    st,
                    Some(tl as u32),
                    nodes_here / TILE_WIDTH,
                    width,
                    &mut buf,
                )?;
                levels.push(parse_hashes(&path, &buf, width)?);
            }
        }
        let bundle_count = n % TILE_WIDTH;
        let mut bundle = Vec::new();
        if bundle_count > 0 {
            let path = read_tile(st, None, n / TILE_WIDTH, bundle_count, &mut bundle)?;
            let mut end = 0usize;
            let parsed = for_each_bundle_entry::<()>(&bundle, bundle_count as usize, |_, e| {
                end += 2 + e.len();
                Ok(())
            });
            match parsed {
                Ok(_) => {}
                Err(crate::tile::BundleError::TrailingBytes(_))
                    if path == bundle_path(n / TILE_WIDTH, TILE_WIDTH) => {}
                Err(e) => return Err(LogError::Tampered(format!("{path}: {e}"))),
            }
            bundle.truncate(end);
        }
        let state = TreeState {
            size: n,
            range,
            dirty: vec![false; levels.len()],
            // What an earlier run wrote is unknown: assume the current tiles have partials.
            partial_written: vec![true; levels.len()],
            bundle_partial_written: true,
            levels,
            bundle,
            bundle_count,
            bundle_dirty: false,
            completed: Vec::new(),
            full: Vec::new(),
        };
        if state.root() != cp.root {
            return Err(LogError::Tampered(format!(
                "{}: the hash tiles do not match the checkpoint's root hash; run `parapet verify` to find the damaged tile",
                st.location()
            )));
        }
        Ok(state)
    }
}

impl Integrator for TreeState {
    fn size(&self) -> u64 {
        self.size
    }

    /// Root hash of the current tree.
    fn root(&self) -> Hash {
        let mut it = self.range.iter().rev();
        match it.next() {
            None => crate::hash::empty_root(),
            Some(last) => it.fold(*last, |r, h| node_hash(h, &r)),
        }
    }

    /// Appends one entry (whose leaf hash is `leaf`). Tiles that become full are kept for
    /// [`TreeState::write_full`].
    fn append(&mut self, entry: &[u8], leaf: Hash) -> io::Result<()> {
        let index = self.size;
        let new_size = index + 1;
        push_bundle_entry(&mut self.bundle, entry);
        self.bundle_count += 1;
        self.bundle_dirty = true;
        if self.bundle_count == TILE_WIDTH {
            let path = bundle_path(index / TILE_WIDTH, TILE_WIDTH);
            let cap = self.bundle.capacity();
            let data = std::mem::replace(&mut self.bundle, Vec::with_capacity(cap));
            self.full.push((path.clone(), data));
            if std::mem::take(&mut self.bundle_partial_written) {
                self.completed.push(format!("{path}.p"));
            }
            self.bundle_count = 0;
            self.bundle_dirty = false;
        }
        self.push_hash(0, leaf, new_size);
        let mut h = leaf;
        let mut level = 0u32;
        let mut s = index;
        while s & 1 == 1 {
            let left = self
                .range
                .pop()
                .ok_or_else(|| io::Error::other("internal error: compact range too short"))?;
            h = node_hash(&left, &h);
            level += 1;
            s >>= 1;
            if level % crate::tile::TILE_HEIGHT == 0 {
                self.push_hash((level / crate::tile::TILE_HEIGHT) as usize, h, new_size);
            }
        }
        self.range.push(h);
        self.size = new_size;
        Ok(())
    }

    /// Bytes of completed tiles not yet written.
    fn pending_bytes(&self) -> usize {
        self.full.iter().map(|(_, d)| d.len()).sum()
    }

    /// Writes the tiles and bundles that became full since the last call.
    fn write_full(&mut self, st: &mut dyn Driver) -> io::Result<()> {
        for (path, data) in std::mem::take(&mut self.full) {
            st.write(&path, &data)?;
        }
        Ok(())
    }

    /// Writes the full tiles not yet written and the partial tiles and bundle changed since the
    /// last call.
    fn write_partials(&mut self, st: &mut dyn Driver) -> io::Result<()> {
        self.write_full(st)?;
        if self.bundle_dirty && self.bundle_count > 0 {
            let path = bundle_path(self.size / TILE_WIDTH, self.bundle_count);
            self.bundle_partial_written = true;
            st.write(&path, &self.bundle)?;
        }
        self.bundle_dirty = false;
        for tl in 0..self.levels.len() {
            if self.dirty[tl] && !self.levels[tl].is_empty() {
                let index = nodes_at_tile_level(tl as u32, self.size) / TILE_WIDTH;
                let path = tile_path(tl as u32, index, self.levels[tl].len() as u64);
                self.partial_written[tl] = true;
                st.write(&path, hashes_bytes(&self.levels[tl]))?;
            }
            self.dirty[tl] = false;
        }
        Ok(())
    }

    fn take_superseded(&mut self) -> Vec<String> {
        std::mem::take(&mut self.completed)
    }
}

/// Removes what an interrupted batch may have left beyond the published tree of `size` leaves:
/// temporary files, unpublished full tiles and bundles, and partial tiles wider than published.
pub(crate) fn remove_garbage(st: &mut dyn Driver, size: u64) -> io::Result<()> {
    let max_tiles = (MAX_BATCH_ENTRIES as u64) / TILE_WIDTH + 2;
    let top = tile_levels(size + MAX_BATCH_ENTRIES as u64) + 1;
    let mut levels: Vec<Option<u32>> = vec![None];
    levels.extend((0..top).map(Some));
    for level in levels {
        let nodes = nodes_at_tile_level(level.unwrap_or(0), size);
        let cur = nodes / TILE_WIDTH;
        let width = nodes % TILE_WIDTH;
        let path = |i: u64, w: u64| match level {
            Some(l) => tile_path(l, i, w),
            None => bundle_path(i, w),
        };
        for i in [cur, cur + max_tiles] {
            let full = path(i, TILE_WIDTH);
            let dir = full.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            st.remove_temp_files(dir)?;
            st.remove_temp_files(&format!("{full}.p"))?;
        }
        for i in cur..cur + max_tiles {
            st.remove(&path(i, TILE_WIDTH))?;
            if i > cur {
                st.remove(&format!("{}.p", path(i, TILE_WIDTH)))?;
            }
        }
        for w in width + 1..TILE_WIDTH {
            st.remove(&path(cur, w))?;
        }
    }
    st.remove_temp_files("")?;
    Ok(())
}
