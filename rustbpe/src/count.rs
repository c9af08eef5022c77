//! Counting pre-tokens: a batch of documents is split and counted in parallel, and the counts
//! are folded into one table of unique pieces that lives across batches.
//!
//! Short pieces are keyed by their bytes packed into an integer, long ones live in one arena of
//! bytes, so a few million unique pieces cost tens of megabytes, not one heap string each.

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use rayon::prelude::*;
use std::hash::BuildHasher;

use crate::split::Splitter;
use crate::Error;

/// Pieces up to this many bytes (nearly all of them) are counted as a packed `Short` key: the
/// bytes in the low end, the length in the top byte. Hashing and comparing two integers is
/// several times cheaper than hashing and comparing a short string.
const SHORT: usize = 15;

/// A u128 split in two halves: a u128 would align map entries to 16 bytes, wasting a quarter
/// of each entry and so of the cache.
type Short = (u64, u64);

/// `text[i..j]` (at most SHORT bytes) as a packed key.
#[inline(always)]
fn pack_at(text: &[u8], i: usize, j: usize) -> Short {
    let len = j - i;
    let word = match text.get(i..i + 16) {
        // one unaligned load; the bytes past the piece are masked off below
        Some(window) => u128::from_le_bytes(window.try_into().expect("window is 16 bytes")),
        None => {
            let mut buf = [0u8; 16];
            buf[..len].copy_from_slice(&text[i..j]);
            u128::from_le_bytes(buf)
        }
    };
    let key = (word & ((1u128 << (8 * len)) - 1)) | ((len as u128) << 120);
    (key as u64, (key >> 64) as u64)
}

fn pack(piece: &[u8]) -> Short {
    pack_at(piece, 0, piece.len())
}

fn unpack(&(low, high): &Short) -> ([u8; 16], usize) {
    let key = u128::from(low) | (u128::from(high) << 64);
    (key.to_le_bytes(), (key >> 120) as usize)
}

/// The counts of one batch (or part of one), borrowing long pieces from the documents.
#[derive(Default)]
struct BatchCounts<'a> {
    short: HashMap<Short, u64>,
    long: HashMap<&'a [u8], u64>,
}

impl<'a> BatchCounts<'a> {
    fn add_doc(mut self, doc: &'a str, splitter: &Splitter) -> Result<Self, Error> {
        let text = doc.as_bytes();
        splitter.for_each_span(doc, |i, j| {
            if j - i <= SHORT {
                *self.short.entry(pack_at(text, i, j)).or_insert(0) += 1;
            } else {
                *self.long.entry(&text[i..j]).or_insert(0) += 1;
            }
        })?;
        Ok(self)
    }

    fn merge(self, other: Self) -> Self {
        let (mut big, small) =
            if self.short.len() >= other.short.len() { (self, other) } else { (other, self) };
        for (key, n) in small.short {
            *big.short.entry(key).or_insert(0) += n;
        }
        for (piece, n) in small.long {
            *big.long.entry(piece).or_insert(0) += n;
        }
        big
    }
}

struct LongEntry {
    offset: usize,
    len: usize,
    count: u64,
}

/// Unique pieces and how often each occurred.
#[derive(Default)]
pub struct PieceCounts {
    short: HashMap<Short, u64>,
    /// Pieces longer than SHORT: their bytes back to back in `arena`, found through `long`.
    arena: Vec<u8>,
    long: HashTable<LongEntry>,
    hasher: DefaultHashBuilder,
}

impl PieceCounts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn add(&mut self, piece: &[u8], count: u64) {
        if piece.len() <= SHORT {
            *self.short.entry(pack(piece)).or_insert(0) += count;
            return;
        }
        let hash = self.hasher.hash_one(piece);
        let arena = &self.arena;
        let found = self.long.find_mut(hash, |e| &arena[e.offset..e.offset + e.len] == piece);
        if let Some(entry) = found {
            entry.count += count;
            return;
        }
        let entry = LongEntry { offset: self.arena.len(), len: piece.len(), count };
        self.arena.extend_from_slice(piece);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.long.insert_unique(hash, entry, |e| hasher.hash_one(&arena[e.offset..e.offset + e.len]));
    }

    /// Splits and counts `docs` on the current rayon pool and adds the counts to the table.
    pub fn add_batch<S: AsRef<str> + Sync>(&mut self, docs: &[S], splitter: &Splitter) -> Result<(), Error> {
        // Per-task maps borrow long pieces from the documents, so counting allocates nothing
        // per piece; only pieces new to the table are copied into it.
        let batch = docs
            .par_iter()
            .try_fold(BatchCounts::default, |counts, doc| counts.add_doc(doc.as_ref(), splitter))
            .try_reduce(BatchCounts::default, |a, b| Ok(a.merge(b)))?;
        for (key, n) in batch.short {
            *self.short.entry(key).or_insert(0) += n;
        }
        for (piece, n) in batch.long {
            self.add(piece, n);
        }
        Ok(())
    }

    /// Calls `f` with each piece and its count, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], u64)) {
        for (key, &n) in &self.short {
            let (bytes, len) = unpack(key);
            f(&bytes[..len], n);
        }
        for e in &self.long {
            f(&self.arena[e.offset..e.offset + e.len], e.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::SPLIT_PATTERN;

    fn sorted(c: &PieceCounts) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        c.for_each(|p, n| v.push((String::from_utf8(p.to_vec()).unwrap(), n)));
        v.sort();
        v
    }

    #[test]
    fn counts_pieces_across_batches() {
        let splitter = Splitter::new(SPLIT_PATTERN).unwrap();
        let mut c = PieceCounts::new();
        let long = "x".repeat(40);
        c.add_batch(&["a b a", "", &long, "0123456789abcdef"], &splitter).unwrap();
        c.add_batch(&[String::from(" b"), long.clone()], &splitter).unwrap();
        let want = [
            (" a".into(), 1),
            (" b".into(), 2),
            ("01".into(), 1),
            ("23".into(), 1),
            ("45".into(), 1),
            ("67".into(), 1),
            ("89".into(), 1),
            ("a".into(), 1),
            ("abcdef".into(), 1),
            (long, 2),
        ];
        assert_eq!(sorted(&c), want);
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn packed_keys_round_trip() {
        for piece in [&b""[..], b"a", b"\xff\x00", b"0123456789abcde"] {
            let (bytes, len) = unpack(&pack(piece));
            assert_eq!(&bytes[..len], piece);
        }
        // the fast path reads past the piece; the result must not depend on what follows
        let text = b"abcdefghijklmnopqrstuvwxyz";
        assert_eq!(pack_at(text, 1, 4), pack(b"bcd"));
        assert_eq!(pack_at(text, 20, 26), pack(b"uvwxyz"));
        assert_ne!(pack(b"a"), pack(b"a\0"));
    }

    #[test]
    fn many_unique_pieces_survive_growth() {
        let mut c = PieceCounts::new();
        for i in 0..50_000u32 {
            c.add(i.to_string().as_bytes(), 1);
            c.add(format!("a long piece number {i}").as_bytes(), 1);
            c.add(b"same", 2);
        }
        assert_eq!(c.len(), 100_001);
        let mut seen = Vec::new();
        c.for_each(|p, n| seen.push((p.to_vec(), n)));
        assert!(seen.contains(&(b"same".to_vec(), 100_000)));
        assert!(seen.contains(&(b"49999".to_vec(), 1)));
        assert!(seen.contains(&(b"a long piece number 49999".to_vec(), 1)));
    }
}
