//! C2SP tlog-tiles addressing: tile and entry-bundle paths, tile widths, and the bundle format.

/// Tile height: each tile spans 8 tree levels.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Largest entry the log accepts: entry bundles store each length as a big-endian u16.
pub const MAX_ENTRY_SIZE: usize = u16::MAX as usize;

/// Encodes a tile index as C2SP path elements: `1234067` → `x001/x234/067`.
pub fn index_path(index: u64) -> String {
    let digits = index.to_string();
    let pad = (3 - digits.len() % 3) % 3;
    let padded = format!("{}{}", "0".repeat(pad), digits);
    let groups: Vec<&str> = padded
        .as_bytes()
        .chunks(3)
        .map(|c| std::str::from_utf8(c).unwrap_or("000"))
        .collect();
    let mut out = String::with_capacity(padded.len() + 2 * groups.len());
    for (i, g) in groups.iter().enumerate() {
        if i + 1 < groups.len() {
            out.push('x');
            out.push_str(g);
            out.push('/');
        } else {
            out.push_str(g);
        }
    }
    out
}

fn with_width(base: String, width: u64) -> String {
    if width >= TILE_WIDTH {
        base
    } else {
        format!("{base}.p/{width}")
    }
}

/// Path of the hash tile at `level`, `index` with `width` hashes (256 = full tile).
pub fn tile_path(level: u32, index: u64, width: u64) -> String {
    with_width(format!("tile/{level}/{}", index_path(index)), width)
}

/// Path of the entry bundle `index` holding `width` entries (256 = full bundle).
pub fn bundle_path(index: u64, width: u64) -> String {
    with_width(format!("tile/entries/{}", index_path(index)), width)
}

/// Number of complete nodes at tree level `8 * level` in a tree of `size` leaves.
pub fn nodes_at_tile_level(level: u32, size: u64) -> u64 {
    let shift = TILE_HEIGHT * level;
    if shift >= 64 {
        0
    } else {
        size >> shift
    }
}

/// Width of tile `index` at tile `level` in a tree of `size` leaves (0 if it does not exist).
/// Level 0 widths are also the widths of the entry bundles.
pub fn tile_width(level: u32, index: u64, size: u64) -> u64 {
    let nodes = nodes_at_tile_level(level, size);
    let start = index.saturating_mul(TILE_WIDTH);
    if nodes <= start {
        0
    } else {
        (nodes - start).min(TILE_WIDTH)
    }
}

/// Number of tiles (full or partial) at tile `level` in a tree of `size` leaves.
pub fn tile_count(level: u32, size: u64) -> u64 {
    nodes_at_tile_level(level, size).div_ceil(TILE_WIDTH)
}

/// Number of tile levels that hold at least one hash in a tree of `size` leaves.
pub fn tile_levels(size: u64) -> u32 {
    let mut l = 0;
    while nodes_at_tile_level(l, size) > 0 {
        l += 1;
    }
    l
}

/// Appends `entry` to an entry bundle: big-endian u16 length, then the bytes.
/// The caller has checked `entry.len() <= MAX_ENTRY_SIZE`.
pub fn push_bundle_entry(bundle: &mut Vec<u8>, entry: &[u8]) {
    let len = entry.len().min(MAX_ENTRY_SIZE) as u16;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(&entry[..len as usize]);
}

/// Why an entry bundle could not be split into entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// Entry `0` (position in the bundle) is cut short.
    Truncated(usize),
    /// The bundle holds more bytes after its last expected entry.
    TrailingBytes(usize),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleError::Truncated(i) => write!(f, "entry {i} of the bundle is truncated"),
            BundleError::TrailingBytes(n) => {
                write!(
                    f,
                    "{n} unexpected byte(s) after the last entry of the bundle"
                )
            }
        }
    }
}

/// Splits a bundle that must hold exactly `count` entries, calling `f(position, entry)` for each.
/// Stops at the first error `f` returns.
pub fn for_each_bundle_entry<E>(
    bundle: &[u8],
    count: usize,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<Result<(), E>, BundleError> {
    let mut pos = 0usize;
    for i in 0..count {
        if pos + 2 > bundle.len() {
            return Err(BundleError::Truncated(i));
        }
        let len = u16::from_be_bytes([bundle[pos], bundle[pos + 1]]) as usize;
        pos += 2;
        if pos + len > bundle.len() {
            return Err(BundleError::Truncated(i));
        }
        if let Err(e) = f(i, &bundle[pos..pos + len]) {
            return Ok(Err(e));
        }
        pos += len;
    }
    if pos != bundle.len() {
        return Err(BundleError::TrailingBytes(bundle.len() - pos));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_tlog_tiles() {
        assert_eq!(tile_path(0, 0, 256), "tile/0/000");
        assert_eq!(tile_path(0, 4, 180), "tile/0/004.p/180");
        assert_eq!(tile_path(0, 1000, 256), "tile/0/x001/000");
        assert_eq!(tile_path(3, 1_234_067, 256), "tile/3/x001/x234/067");
        assert_eq!(tile_path(3, 1_234_067, 17), "tile/3/x001/x234/067.p/17");
        assert_eq!(bundle_path(4200, 17), "tile/entries/x004/200.p/17");
        assert_eq!(bundle_path(42, 256), "tile/entries/042");
    }

    #[test]
    fn widths() {
        assert_eq!(tile_width(0, 0, 300), 256);
        assert_eq!(tile_width(0, 1, 300), 44);
        assert_eq!(tile_width(0, 2, 300), 0);
        assert_eq!(tile_width(1, 0, 300), 1);
        assert_eq!(tile_width(2, 0, 300), 0);
        assert_eq!(tile_levels(300), 2);
        assert_eq!(tile_levels(0), 0);
        assert_eq!(tile_count(0, 512), 2);
    }

    #[test]
    fn bundle_roundtrip_and_errors() {
        let mut b = Vec::new();
        push_bundle_entry(&mut b, b"ab");
        push_bundle_entry(&mut b, b"");
        let mut got = Vec::new();
        for_each_bundle_entry::<()>(&b, 2, |i, e| {
            got.push((i, e.to_vec()));
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(got, vec![(0, b"ab".to_vec()), (1, vec![])]);
        assert_eq!(
            for_each_bundle_entry::<()>(&b[..3], 2, |_, _| Ok(())),
            Err(BundleError::Truncated(0))
        );
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(
            for_each_bundle_entry::<()>(&longer, 2, |_, _| Ok(())),
            Err(BundleError::TrailingBytes(1))
        );
    }
}
