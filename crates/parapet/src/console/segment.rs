//! Immutable segment files of the console's search index (see [`super::index`]). A segment
//! covers a run of consecutive events `[start, start + count)`: a sorted dictionary of terms in
//! blocks of 64, each term's postings (the events holding it, delta- and varint-coded), every
//! event's time (as an order-keeping number, delta-coded, in blocks of 1,024 with their earliest
//! and latest), the times not in the log's own form as text, and a footer with a checksum.
//! Segments are written once (to a temporary name, then renamed) and merged into larger ones;
//! they are derived from the log, so a torn one is deleted and its events indexed again.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PPSEG01\n";
const END: &[u8; 8] = b"PPSEGEND";
/// Ten numbers, the checksum and [`END`].
const FOOTER: u64 = 12 * 8;
/// Terms per dictionary block.
const BLOCK_TERMS: usize = 64;
/// Events per time block.
pub const TIME_BLOCK: u64 = 1024;
/// The time key of an event whose time is not in the log's own form (kept as text instead).
pub const ODD: u64 = u64::MAX;

/// A fast hasher for the writer's term table (FxHash's mixing).
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A running checksum of a byte stream, the same however the stream is cut into writes.
#[derive(Default)]
struct Sum {
    h: u64,
    word: [u8; 8],
    n: usize,
}

impl Sum {
    fn update(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.n == 0 && b.len() >= 8 {
                let (w, rest) = b.split_at(8);
                self.mix(u64::from_le_bytes(w.try_into().unwrap_or_default()));
                b = rest;
                continue;
            }
            let take = (8 - self.n).min(b.len());
            self.word[self.n..self.n + take].copy_from_slice(&b[..take]);
            self.n += take;
            b = &b[take..];
            if self.n == 8 {
                self.n = 0;
                self.mix(u64::from_le_bytes(self.word));
            }
        }
    }
    fn mix(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn value(&self) -> u64 {
        let mut w = [0u8; 8];
        w[..self.n].copy_from_slice(&self.word[..self.n]);
        (self.h ^ u64::from_le_bytes(w) ^ self.n as u64).wrapping_mul(0xff51_afd7_ed55_8ccd)
    }
}

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*pos`, advancing it.
fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        if shift > 63 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
        shift += 7;
    }
}

fn corrupt(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("index segment is damaged ({what}); run `parapet index rebuild`"),
    )
}

/// The time key of `t`: a number in the order of the text for times in the log's own form
/// (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, fields in range), [`ODD`] for any other text.
pub fn time_key(t: &str) -> u64 {
    let b = t.as_bytes();
    if b.len() != 27
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[26] != b'Z'
    {
        return ODD;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        b[from..to].iter().try_fold(0u64, |a, &c| {
            c.is_ascii_digit().then(|| a * 10 + u64::from(c - b'0'))
        })
    };
    let fields = [
        (num(0, 4), 10_000),
        (num(5, 7), 13),
        (num(8, 10), 32),
        (num(11, 13), 24),
        (num(14, 16), 60),
        (num(17, 19), 61),
        (num(20, 26), 1_000_000),
    ];
    let mut key = 0u64;
    for (v, radix) in fields {
        match v {
            Some(v) if v < radix => key = key * radix + v,
            _ => return ODD,
        }
    }
    key
}

/// The text of a time key made by [`time_key`].
pub fn key_text(mut k: u64) -> String {
    let mut f = [0u64; 7];
    for (i, radix) in [1_000_000, 61, 60, 24, 32, 13].into_iter().enumerate() {
        f[6 - i] = k % radix;
        k /= radix;
    }
    f[0] = k;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        f[0], f[1], f[2], f[3], f[4], f[5], f[6]
    )
}

/// A segment's file name: its first event and the one after its last.
pub fn file_name(start: u64, end: u64) -> String {
    format!("{start:020}-{end:020}.seg")
}

/// The range of a segment's file name, if it is one.
pub fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".seg")?.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < b).then_some((a, b))
}

/// The events of a segment being built in memory: each term's postings and each event's time.
pub struct Builder {
    start: u64,
    n: u32,
    ids: HashMap<Box<[u8]>, u32, BuildHasherDefault<Fx>>,
    /// Per term id: the last event (local, plus one) it was added for.
    last: Vec<u32>,
    /// (term id, local event) in the order added.
    pairs: Vec<(u32, u32)>,
    times: Vec<u64>,
    odd: Vec<(u32, String)>,
    key: Vec<u8>,
}

impl Builder {
    /// An empty segment starting at event `start`.
    pub fn new(start: u64) -> Builder {
        Builder {
            start,
            n: 0,
            ids: HashMap::default(),
            last: Vec::new(),
            pairs: Vec::new(),
            times: Vec::new(),
            odd: Vec::new(),
            key: Vec::new(),
        }
    }

    /// Events added.
    pub fn len(&self) -> u64 {
        u64::from(self.n)
    }

    /// Whether no event was added.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Starts the next event, with its time (`None`: it has none).
    pub fn event(&mut self, time: Option<&str>) {
        let local = self.n;
        self.n += 1;
        let key = time.map_or(ODD, time_key);
        if key == ODD {
            self.odd.push((local, time.unwrap_or_default().to_string()));
        }
        self.times.push(key);
    }

    /// Adds term `kind` + `value` to the current event.
    pub fn term(&mut self, kind: u8, value: &[u8]) {
        self.key.clear();
        self.key.push(kind);
        self.key.extend_from_slice(value);
        self.add_key();
    }

    /// Adds the words of `text` (split at ASCII characters other than letters and digits, ASCII
    /// letters in lower case) as terms `w` + word.
    pub fn words(&mut self, text: &str) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && b[i].is_ascii() && !b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            self.key.clear();
            self.key.push(b'w');
            while i < b.len() && (b[i].is_ascii_alphanumeric() || !b[i].is_ascii()) {
                self.key.push(b[i].to_ascii_lowercase());
                i += 1;
            }
            self.add_key();
        }
    }

    fn add_key(&mut self) {
        let Some(local) = self.n.checked_sub(1) else {
            return;
        };
        let id = match self.ids.get(self.key.as_slice()) {
            Some(&id) => id,
            None => {
                let id = self.last.len() as u32;
                self.ids.insert(self.key.as_slice().into(), id);
                self.last.push(0);
                id
            }
        };
        let seen = &mut self.last[id as usize];
        if *seen != local + 1 {
            *seen = local + 1;
            self.pairs.push((id, local));
        }
    }

    /// Writes the segment into `dir` (nothing when empty) and returns its path.
    pub fn write(self, dir: &Path) -> std::io::Result<Option<PathBuf>> {
        if self.n == 0 {
            return Ok(None);
        }
        let mut terms: Vec<(&[u8], u32)> = self.ids.iter().map(|(k, &id)| (&**k, id)).collect();
        terms.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Postings grouped by term id, events in order (a counting sort of the pairs).
        let mut first = vec![0usize; self.last.len() + 1];
        for &(id, _) in &self.pairs {
            first[id as usize + 1] += 1;
        }
        for i in 1..first.len() {
            first[i] += first[i - 1];
        }
        let mut at = first.clone();
        let mut locals = vec![0u32; self.pairs.len()];
        for &(id, local) in &self.pairs {
            locals[at[id as usize]] = local;
            at[id as usize] += 1;
        }
        let mut w = Writer::create(dir, self.start, u64::from(self.n))?;
        for (term, id) in terms {
            w.term(term, &locals[first[id as usize]..first[id as usize + 1]])?;
        }
        w.finish(&self.times, &self.odd).map(Some)
    }
}

/// Writes a segment file (terms in order, then times) through a temporary name.
struct Writer {
    file: BufWriter<File>,
    sum: Sum,
    pos: u64,
    tmp: PathBuf,
    path: PathBuf,
    start: u64,
    count: u64,
    entries: Vec<u8>,
    postings: Vec<u8>,
    block_terms: usize,
    block_first: Vec<u8>,
    index: Vec<u8>,
}

impl Writer {
    fn create(dir: &Path, start: u64, count: u64) -> std::io::Result<Writer> {
        let name = file_name(start, start + count);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut w = Writer {
            file: BufWriter::with_capacity(1 << 16, File::create(&tmp)?),
            sum: Sum::default(),
            pos: 0,
            tmp,
            path: dir.join(name),
            start,
            count,
            entries: Vec::new(),
            postings: Vec::new(),
            block_terms: 0,
            block_first: Vec::new(),
            index: Vec::new(),
        };
        w.put(MAGIC)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.sum.update(b);
        self.pos += b.len() as u64;
        self.file.write_all(b)
    }

    /// Adds a term (in ascending order) with its postings (ascending local events).
    fn term(&mut self, term: &[u8], postings: &[u32]) -> std::io::Result<()> {
        if self.block_terms == 0 {
            self.block_first.clear();
            self.block_first.extend_from_slice(term);
        }
        let before = self.postings.len();
        let mut prev = 0u32;
        for (i, &p) in postings.iter().enumerate() {
            put_varint(
                &mut self.postings,
                u64::from(if i == 0 { p } else { p - prev }),
            );
            prev = p;
        }
        put_varint(&mut self.entries, term.len() as u64);
        self.entries.extend_from_slice(term);
        put_varint(&mut self.entries, postings.len() as u64);
        put_varint(&mut self.entries, (self.postings.len() - before) as u64);
        self.block_terms += 1;
        if self.block_terms == BLOCK_TERMS {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> std::io::Result<()> {
        if self.block_terms == 0 {
            return Ok(());
        }
        put_varint(&mut self.index, self.block_first.len() as u64);
        self.index.extend_from_slice(&self.block_first);
        put_varint(&mut self.index, self.pos);
        put_varint(&mut self.index, self.entries.len() as u64);
        let (entries, postings) = (
            std::mem::take(&mut self.entries),
            std::mem::take(&mut self.postings),
        );
        self.put(&entries)?;
        self.put(&postings)?;
        (self.entries, self.postings) = (entries, postings);
        self.entries.clear();
        self.postings.clear();
        self.block_terms = 0;
        Ok(())
    }

    /// Writes the times and the footer and gives the file its name.
    fn finish(mut self, times: &[u64], odd: &[(u32, String)]) -> std::io::Result<PathBuf> {
        self.end_block()?;
        let index_off = self.pos;
        let index = std::mem::take(&mut self.index);
        self.put(&index)?;
        let times_off = self.pos;
        let mut enc = Vec::with_capacity(times.len() * 3);
        let mut blocks = Vec::new();
        for chunk in times.chunks(TIME_BLOCK as usize) {
            let (mut lo, mut hi, mut odd_in) = (u64::MAX, 0u64, 0u64);
            let off = enc.len() as u64;
            let mut prev = 0u64;
            for &k in chunk {
                if k == ODD {
                    odd_in = 1;
                } else {
                    lo = lo.min(k);
                    hi = hi.max(k);
                }
                // Zigzag of the difference from the previous key of the block.
                let d = k.wrapping_sub(prev) as i64;
                put_varint(&mut enc, ((d << 1) ^ (d >> 63)) as u64);
                prev = k;
            }
            for v in [lo, hi, off, odd_in] {
                blocks.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.put(&enc)?;
        let tblocks_off = self.pos;
        self.put(&blocks)?;
        let odd_off = self.pos;
        let mut o = Vec::new();
        for (local, text) in odd {
            put_varint(&mut o, u64::from(*local));
            put_varint(&mut o, text.len() as u64);
            o.extend_from_slice(text.as_bytes());
        }
        self.put(&o)?;
        let mut footer = Vec::with_capacity(FOOTER as usize);
        for v in [
            self.start,
            self.count,
            index_off,
            index.len() as u64,
            times_off,
            tblocks_off,
            odd_off,
            o.len() as u64,
            0,
            0,
        ] {
            footer.extend_from_slice(&v.to_le_bytes());
        }
        self.put(&footer)?;
        let sum = self.sum.value();
        self.file.write_all(&sum.to_le_bytes())?;
        self.file.write_all(END)?;
        self.file.flush()?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(self.path)
    }
}

/// The first term of a dictionary block, where the block starts and how long its entries are.
struct BlockRef {
    first: Box<[u8]>,
    off: u64,
    entries_len: u64,
}

/// A time block: the earliest and latest time key in it (of times in the log's form), where
/// its keys start, and whether it has an event with another time.
#[derive(Clone, Copy)]
pub struct TimeBlock {
    /// Earliest key (`u64::MAX` when none).
    pub lo: u64,
    /// Latest key.
    pub hi: u64,
    off: u64,
    /// Whether some event of the block has a time not in the log's form, or none.
    pub odd: bool,
}

/// A segment opened for reading.
pub struct Segment {
    file: File,
    size: u64,
    /// The first event.
    pub start: u64,
    /// Events it covers.
    pub count: u64,
    /// The dictionary's index, read when a term is first looked up.
    blocks: std::cell::OnceCell<Vec<BlockRef>>,
    index_off: u64,
    index_len: u64,
    times_off: u64,
    tblocks_off: u64,
    odd_off: u64,
    odd_len: u64,
}

/// Reads `len` bytes at `off` of a file of `size` bytes (a damaged length is an error, never a
/// huge allocation).
fn read_at(file: &File, size: u64, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
    if off.checked_add(len).is_none_or(|end| end > size) {
        return Err(corrupt("out of bounds"));
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| corrupt("length"))?];
    file.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

/// Decodes a posting list (`count` events) into `out`.
fn decode(b: &[u8], count: u64, out: &mut Vec<u32>) -> std::io::Result<()> {
    // Every posting takes a byte at least.
    if count > b.len() as u64 {
        return Err(corrupt("postings"));
    }
    out.reserve(count as usize);
    let mut pos = 0;
    let mut prev = 0u32;
    for i in 0..count {
        let d = get_varint(b, &mut pos).ok_or_else(|| corrupt("postings"))? as u32;
        prev = if i == 0 { d } else { prev.wrapping_add(d) };
        out.push(prev);
    }
    Ok(())
}

/// A dictionary entry: term, count, postings offset within its block's postings, postings length.
type Entry<'a> = (&'a [u8], u64, u64, u64);

/// Reads a dictionary block's entries: (term, count, postings offset within the block's
/// postings, postings length).
fn entries(b: &[u8]) -> std::io::Result<Vec<Entry<'_>>> {
    let mut out = Vec::with_capacity(BLOCK_TERMS);
    let (mut pos, mut acc) = (0, 0u64);
    let bad = || corrupt("dictionary");
    while pos < b.len() {
        let len = get_varint(b, &mut pos).ok_or_else(bad)? as usize;
        let term = b.get(pos..pos + len).ok_or_else(bad)?;
        pos += len;
        let count = get_varint(b, &mut pos).ok_or_else(bad)?;
        let plen = get_varint(b, &mut pos).ok_or_else(bad)?;
        out.push((term, count, acc, plen));
        acc += plen;
    }
    Ok(out)
}

impl Segment {
    /// Opens the segment at `path` (its footer and dictionary index).
    pub fn open(path: &Path) -> std::io::Result<Segment> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < FOOTER + 8 {
            return Err(corrupt("short"));
        }
        let footer = read_at(&file, len, len - FOOTER, FOOTER)?;
        if &footer[88..96] != END {
            return Err(corrupt("no end mark"));
        }
        let n =
            |i: usize| u64::from_le_bytes(footer[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (start, count, index_off, index_len) = (n(0), n(1), n(2), n(3));
        let (times_off, tblocks_off, odd_off, odd_len) = (n(4), n(5), n(6), n(7));
        let in_order = [
            MAGIC.len() as u64,
            index_off,
            index_off.saturating_add(index_len),
            times_off,
            tblocks_off,
            odd_off,
            odd_off.saturating_add(odd_len),
        ]
        .windows(2)
        .all(|w| w[0] <= w[1]);
        if !in_order || odd_off.saturating_add(odd_len) != len - FOOTER {
            return Err(corrupt("layout"));
        }
        Ok(Segment {
            file,
            size: len,
            start,
            count,
            blocks: std::cell::OnceCell::new(),
            index_off,
            index_len,
            times_off,
            tblocks_off,
            odd_off,
            odd_len,
        })
    }

    /// The dictionary's index (read once).
    fn blocks(&self) -> std::io::Result<&[BlockRef]> {
        if let Some(b) = self.blocks.get() {
            return Ok(b);
        }
        let raw = read_at(&self.file, self.size, self.index_off, self.index_len)?;
        let mut blocks = Vec::new();
        let mut pos = 0;
        let bad = || corrupt("dictionary index");
        while pos < raw.len() {
            let l = get_varint(&raw, &mut pos).ok_or_else(bad)? as usize;
            let first = raw.get(pos..pos + l).ok_or_else(bad)?.into();
            pos += l;
            let off = get_varint(&raw, &mut pos).ok_or_else(bad)?;
            let entries_len = get_varint(&raw, &mut pos).ok_or_else(bad)?;
            blocks.push(BlockRef {
                first,
                off,
                entries_len,
            });
        }
        Ok(self.blocks.get_or_init(|| blocks))
    }

    /// Whether the file at `path` is whole: its checksum holds and its footer names `range`.
    pub fn verify(path: &Path, range: (u64, u64)) -> bool {
        let check = || -> std::io::Result<bool> {
            let mut f = File::open(path)?;
            let len = f.metadata()?.len();
            if len < FOOTER + 8 {
                return Ok(false);
            }
            let body = len - 16;
            let mut sum = Sum::default();
            let mut buf = vec![0u8; 1 << 20];
            let mut left = body;
            while left > 0 {
                let take = left.min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..take])?;
                sum.update(&buf[..take]);
                left -= take as u64;
            }
            let mut tail = [0u8; 16];
            f.read_exact(&mut tail)?;
            let seg = Segment::open(path)?;
            Ok(tail[..8] == sum.value().to_le_bytes()
                && &tail[8..] == END
                && (seg.start, seg.start + seg.count) == range)
        };
        check().unwrap_or(false)
    }

    /// The block that would hold `term`.
    fn block_of(blocks: &[BlockRef], term: &[u8]) -> Option<usize> {
        blocks.partition_point(|b| &*b.first <= term).checked_sub(1)
    }

    fn block_entries(&self, b: &BlockRef) -> std::io::Result<Vec<u8>> {
        read_at(&self.file, self.size, b.off, b.entries_len)
    }

    /// The events (local, ascending) holding `term`.
    pub fn postings(&self, term: &[u8]) -> std::io::Result<Vec<u32>> {
        let mut out = Vec::new();
        let blocks = self.blocks()?;
        let Some(b) = Segment::block_of(blocks, term) else {
            return Ok(out);
        };
        let blk = &blocks[b];
        let raw = self.block_entries(blk)?;
        if let Some(&(_, count, at, plen)) = entries(&raw)?.iter().find(|e| e.0 == term) {
            let bytes = read_at(
                &self.file,
                self.size,
                blk.off.saturating_add(blk.entries_len).saturating_add(at),
                plen,
            )?;
            decode(&bytes, count, &mut out)?;
        }
        Ok(out)
    }

    /// The events (local, ascending, once each) holding a term that starts with `prefix`.
    pub fn prefixed(&self, prefix: &[u8]) -> std::io::Result<Vec<u32>> {
        let mut out = Vec::new();
        let blocks = self.blocks()?;
        let mut b = Segment::block_of(blocks, prefix).unwrap_or(0);
        let mut lists = 0;
        'blocks: while b < blocks.len() {
            let blk = &blocks[b];
            let raw = self.block_entries(blk)?;
            for (term, count, at, plen) in entries(&raw)? {
                if term.starts_with(prefix) {
                    let bytes = read_at(
                        &self.file,
                        self.size,
                        blk.off.saturating_add(blk.entries_len).saturating_add(at),
                        plen,
                    )?;
                    decode(&bytes, count, &mut out)?;
                    lists += 1;
                } else if term > prefix {
                    break 'blocks;
                }
            }
            b += 1;
        }
        if lists > 1 {
            out.sort_unstable();
            out.dedup();
        }
        Ok(out)
    }

    /// The time blocks.
    pub fn time_blocks(&self) -> std::io::Result<Vec<TimeBlock>> {
        let raw = read_at(
            &self.file,
            self.size,
            self.tblocks_off,
            self.odd_off.saturating_sub(self.tblocks_off),
        )?;
        Ok(raw
            .chunks_exact(32)
            .map(|c| {
                let n = |i: usize| {
                    u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap_or_default())
                };
                TimeBlock {
                    lo: n(0),
                    hi: n(1),
                    off: n(2),
                    odd: n(3) != 0,
                }
            })
            .collect())
    }

    /// The time keys of block `b` of `blocks` (from [`Segment::time_blocks`]).
    pub fn block_times(&self, blocks: &[TimeBlock], b: usize) -> std::io::Result<Vec<u64>> {
        let from = blocks[b].off;
        let to = blocks
            .get(b + 1)
            .map_or(self.tblocks_off - self.times_off, |n| n.off);
        let raw = read_at(
            &self.file,
            self.size,
            self.times_off.saturating_add(from),
            to.saturating_sub(from),
        )?;
        let n = self
            .count
            .saturating_sub(b as u64 * TIME_BLOCK)
            .min(TIME_BLOCK);
        let mut out = Vec::with_capacity(n as usize);
        let (mut pos, mut prev) = (0, 0u64);
        for _ in 0..n {
            let z = get_varint(&raw, &mut pos).ok_or_else(|| corrupt("times"))?;
            let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
            prev = prev.wrapping_add(d as u64);
            out.push(prev);
        }
        Ok(out)
    }

    /// The events whose time is not in the log's form, with it as text (`""`: none).
    pub fn odd_times(&self) -> std::io::Result<Vec<(u32, String)>> {
        let raw = read_at(&self.file, self.size, self.odd_off, self.odd_len)?;
        let (mut out, mut pos) = (Vec::new(), 0);
        let bad = || corrupt("odd times");
        while pos < raw.len() {
            let local = get_varint(&raw, &mut pos).ok_or_else(bad)? as u32;
            let len = get_varint(&raw, &mut pos).ok_or_else(bad)? as usize;
            let text = raw.get(pos..pos + len).ok_or_else(bad)?;
            pos += len;
            out.push((local, String::from_utf8_lossy(text).into_owned()));
        }
        Ok(out)
    }

    /// Every term with its postings, in term order, read sequentially (for merging).
    fn terms(&self) -> std::io::Result<TermCursor<'_>> {
        // A clone of the handle: its offset is shared, but the segment itself reads with pread.
        let mut f = self.file.try_clone()?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(MAGIC.len() as u64))?;
        Ok(TermCursor {
            blocks: self.blocks()?,
            r: BufReader::with_capacity(1 << 16, f),
            block: 0,
            pending: Vec::new(),
        })
    }
}

/// Reads a segment's terms and postings in order.
struct TermCursor<'a> {
    blocks: &'a [BlockRef],
    r: BufReader<File>,
    block: usize,
    /// The current block's entries not yet read: (term, count, postings length), reversed.
    pending: Vec<(Vec<u8>, u64, u64)>,
}

impl TermCursor<'_> {
    fn next(&mut self) -> std::io::Result<Option<(Vec<u8>, Vec<u32>)>> {
        if self.pending.is_empty() {
            if self.block >= self.blocks.len() {
                return Ok(None);
            }
            let len = self.blocks[self.block].entries_len;
            let mut raw = Vec::new();
            (&mut self.r).take(len).read_to_end(&mut raw)?;
            if raw.len() as u64 != len {
                return Err(corrupt("short dictionary"));
            }
            self.pending = entries(&raw)?
                .into_iter()
                .rev()
                .map(|(t, c, _, p)| (t.to_vec(), c, p))
                .collect();
            self.block += 1;
        }
        let Some((term, count, plen)) = self.pending.pop() else {
            return Ok(None);
        };
        let mut raw = Vec::new();
        (&mut self.r).take(plen).read_to_end(&mut raw)?;
        if raw.len() as u64 != plen {
            return Err(corrupt("short postings"));
        }
        let mut out = Vec::new();
        decode(&raw, count, &mut out)?;
        Ok(Some((term, out)))
    }
}

/// Merges consecutive segments (in order, each starting where the one before ends) into one
/// file in `dir`, and returns its path. The inputs are left in place.
/// `stop` stops it (an `Interrupted` error) between terms.
pub fn merge(
    dir: &Path,
    inputs: &[Segment],
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<PathBuf> {
    let start = inputs.first().map_or(0, |s| s.start);
    let count: u64 = inputs.iter().map(|s| s.count).sum();
    let w = Writer::create(dir, start, count)?;
    let tmp = w.tmp.clone();
    let res = merge_into(w, inputs, stop);
    if res.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    res
}

fn merge_into(
    mut w: Writer,
    inputs: &[Segment],
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<PathBuf> {
    let start = inputs.first().map_or(0, |s| s.start);
    let count: u64 = inputs.iter().map(|s| s.count).sum();
    let mut cursors = inputs
        .iter()
        .map(Segment::terms)
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut heads = cursors
        .iter_mut()
        .map(TermCursor::next)
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut postings = Vec::new();
    while let Some(min) = heads.iter().flatten().map(|(t, _)| t).min().cloned() {
        postings.clear();
        for (i, head) in heads.iter_mut().enumerate() {
            if head.as_ref().is_some_and(|(t, _)| *t == min) {
                let shift = (inputs[i].start - start) as u32;
                if let Some((_, p)) = head.take() {
                    postings.extend(p.iter().map(|l| l + shift));
                }
                *head = cursors[i].next()?;
            }
        }
        w.term(&min, &postings)?;
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the merge was stopped",
            ));
        }
    }
    let mut times = Vec::with_capacity(count as usize);
    let mut odd = Vec::new();
    for s in inputs {
        let blocks = s.time_blocks()?;
        for b in 0..blocks.len() {
            times.extend(s.block_times(&blocks, b)?);
        }
        let shift = (s.start - start) as u32;
        odd.extend(s.odd_times()?.into_iter().map(|(l, t)| (l + shift, t)));
    }
    w.finish(&times, &odd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_keep_the_order_of_the_text() {
        let times = [
            "0000-01-01T00:00:00.000000Z",
            "2026-01-31T23:59:60.999999Z",
            "2026-02-01T00:00:00.000000Z",
            "2026-02-01T00:00:00.000001Z",
            "2026-12-06T11:25:37.123456Z",
            "9999-12-31T23:59:60.999999Z",
        ];
        for w in times.windows(2) {
            assert!(time_key(w[0]) < time_key(w[1]), "{w:?}");
        }
        for t in times {
            assert_eq!(key_text(time_key(t)), t);
        }
        for odd in [
            "",
            "2026-13-01T00:00:00.000000Z",
            "2026-01-01T00:00:00Z",
            "x",
        ] {
            assert_eq!(time_key(odd), ODD, "{odd}");
        }
    }

    /// A damaged file is refused by its checksum; read anyway (a search does not check the sum),
    /// any damaged byte gives an error or wrong postings, never a panic or a huge allocation.
    #[test]
    fn damaged_segments_never_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Builder::new(100);
        for i in 0..40u32 {
            let time = format!("2026-01-01T00:00:{:02}.000000Z", i % 60);
            b.event(if i % 7 == 3 {
                Some("odd")
            } else {
                Some(time.as_str())
            });
            b.term(b'u', if i % 2 == 0 { b"alice" } else { b"bob" });
            b.words(&format!("SELECT kilo{} FROM t{}", i % 5, i));
        }
        let path = b.write(dir.path()).expect("write").expect("path");
        assert!(Segment::verify(&path, (100, 140)));
        let seg = Segment::open(&path).expect("open");
        let alice: Vec<u32> = (0..40).step_by(2).collect();
        assert_eq!(seg.postings(b"ualice").expect("postings"), alice);
        assert_eq!(seg.prefixed(b"wkilo").expect("prefix").len(), 40);
        assert_eq!(seg.odd_times().expect("odd").len(), 6);
        let good = std::fs::read(&path).expect("read");
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                std::fs::write(&path, &bad).expect("write");
                assert!(!Segment::verify(&path, (100, 140)), "byte {i}");
                if let Ok(seg) = Segment::open(&path) {
                    let _ = seg.postings(b"ualice");
                    let _ = seg.prefixed(b"wk");
                    let _ = seg.odd_times();
                    if let Ok(blocks) = seg.time_blocks() {
                        for n in 0..blocks.len() {
                            let _ = seg.block_times(&blocks, n);
                        }
                    }
                    let _ = seg.terms().and_then(|mut c| {
                        while c.next()?.is_some() {}
                        Ok(())
                    });
                }
            }
        }
    }

    #[test]
    fn checksums_do_not_depend_on_how_bytes_are_written() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = Sum::default();
        a.update(&data);
        let mut b = Sum::default();
        for c in data.chunks(3) {
            b.update(c);
        }
        assert_eq!(a.value(), b.value());
        let mut c = Sum::default();
        c.update(&data[..999]);
        assert_ne!(a.value(), c.value());
    }
}
