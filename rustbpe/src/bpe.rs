//! Byte-level BPE training over counted pieces.
//!
//! Each unique piece is a word of byte ids with a count. A pair's count is the sum over words
//! of count x (adjacent positions holding the pair), overlaps included ("aaa" holds (a, a)
//! twice). Each step merges the pair with the highest count, ties going to the smallest
//! (left, right), and stops at the target vocabulary or when no pair is left.
//!
//! Counts are kept up to date incrementally: a merge rewrites only the words that hold the
//! pair (each pair remembers the words it was seen in) and adjusts the counts of the pairs
//! around each occurrence. The best pair comes from a priority queue whose stale entries are
//! refreshed when they surface. That is exact because counts of existing pairs only go down,
//! and a pair with the new token never counts more than the pair just merged: so the best
//! count never rises, which also lets the queue keep small counts in plain buckets.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashMap;
use smallvec::SmallVec;

/// A token pair packed as `left << 32 | right`, so that integer order is (left, right) order.
type Pair = u64;

fn pack(left: u32, right: u32) -> Pair {
    (u64::from(left) << 32) | u64::from(right)
}

fn unpack(pair: Pair) -> (u32, u32) {
    ((pair >> 32) as u32, pair as u32)
}

#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

struct Word {
    start: usize,
    len: usize,
    count: i64,
}

#[derive(Default)]
struct PairStats {
    count: i64,
    /// Words that held the pair when it was counted; some may have lost it since. Most pairs
    /// are seen in a few words only, and inline storage spares them an allocation each.
    words: SmallVec<[u32; 4]>,
}

/// The unique pieces as words of token ids, ready to train on.
#[derive(Default)]
pub struct Words {
    /// Symbols of all words back to back; a word shrinks in place as it is merged.
    syms: Vec<u32>,
    words: Vec<Word>,
}

impl Words {
    /// Copies `pieces` (unique pre-tokens and their counts) into words of byte ids, so that
    /// the table they came from can be freed before training.
    pub fn new<'a>(pieces: impl IntoIterator<Item = (&'a [u8], u64)>) -> Self {
        let mut words = Words::default();
        for (piece, count) in pieces {
            words.push(piece, count);
        }
        words
    }

    pub fn push(&mut self, piece: &[u8], count: u64) {
        // a one-byte piece holds no pair and can never change
        if piece.len() < 2 || count == 0 {
            return;
        }
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.words.push(Word { start: self.syms.len(), len: piece.len(), count });
        self.syms.extend(piece.iter().map(|&b| u32::from(b)));
    }
}

/// Pairs by count: pops the highest count, the smallest pair among equal counts. Entries may
/// be stale (the pair's count has dropped since); the caller checks and pushes them again.
///
/// Counts below SMALL wait unordered in one bucket per count, and a bucket is ordered only
/// when the best count comes down to it. Most pairs have small counts and are never merged,
/// so they never pay for a place in a heap of hundreds of thousands.
struct Queue {
    /// Counts of at least SMALL, with `Reverse` so that equal counts pop the smallest pair.
    large: BinaryHeap<(i64, Reverse<Pair>)>,
    /// `buckets[c]`: pairs pushed with count c, for 0 < c < SMALL.
    buckets: Vec<Vec<Pair>>,
    /// The bucket being popped, ordered, and its count; SMALL before the first.
    current: BinaryHeap<Reverse<Pair>>,
    current_count: i64,
}

const SMALL: i64 = 1024;

impl Queue {
    fn new() -> Self {
        Queue {
            large: BinaryHeap::new(),
            buckets: vec![Vec::new(); SMALL as usize],
            current: BinaryHeap::new(),
            current_count: SMALL,
        }
    }

    fn push(&mut self, count: i64, pair: Pair) {
        // The best count never rises, so nothing lands above the bucket being popped; were it
        // to, the large heap, always popped first, would still hand it out in order.
        debug_assert!(count <= self.current_count || self.current_count == SMALL);
        if count >= SMALL || count > self.current_count {
            self.large.push((count, Reverse(pair)));
        } else if count == self.current_count {
            self.current.push(Reverse(pair));
        } else if count > 0 {
            self.buckets[count as usize].push(pair);
        }
    }

    fn pop(&mut self) -> Option<(i64, Pair)> {
        if let Some((count, Reverse(pair))) = self.large.pop() {
            return Some((count, pair));
        }
        loop {
            if let Some(Reverse(pair)) = self.current.pop() {
                return Some((self.current_count, pair));
            }
            let next = (1..self.current_count).rev().find(|&c| !self.buckets[c as usize].is_empty())?;
            let bucket = std::mem::take(&mut self.buckets[next as usize]);
            self.current = bucket.into_iter().map(Reverse).collect();
            self.current_count = next;
        }
    }
}

/// What merging some words takes from existing pairs and the pairs it creates (all holding
/// the new token). Gathered in these small maps, which stay in cache, and applied to the big
/// pair table once per merge rather than once per occurrence.
#[derive(Default)]
struct Delta {
    lost: HashMap<Pair, i64>,
    created: HashMap<Pair, PairStats>,
}

impl Delta {
    fn lose(&mut self, pair: Pair, by: i64) {
        *self.lost.entry(pair).or_insert(0) += by;
    }

    fn gain(&mut self, pair: Pair, by: i64, word: u32) {
        let stats = self.created.entry(pair).or_default();
        stats.count = stats.count.saturating_add(by);
        // a word is rewritten in one go, so this keeps each list duplicate-free
        if stats.words.last() != Some(&word) {
            stats.words.push(word);
        }
    }
}

/// Replaces the non-overlapping occurrences of (a, b) in `word` (word number `w`, seen `count`
/// times), left to right, by `z`, and returns the new length. The counts of the neighbouring
/// pairs move: x a b y becomes x z y, so (x, a) and (b, y) lose the word's count and (x, z),
/// (z, y) gain it. Two occurrences back to back (a b a b) share the middle pair, which is
/// handled once, by the right one.
fn merge_word(word: &mut [u32], count: i64, w: u32, (a, b): (u32, u32), z: u32, delta: &mut Delta) -> usize {
    let end = word.len();
    let (mut read, mut write) = (0, 0);
    while read < end {
        let s = word[read];
        if !(s == a && read + 1 < end && word[read + 1] == b) {
            word[write] = s;
            read += 1;
            write += 1;
            continue;
        }
        if write > 0 {
            let x = word[write - 1];
            if x == z {
                // the previous occurrence ended right here: its (b, a) becomes (z, z)
                delta.lose(pack(b, a), count);
                delta.gain(pack(z, z), count, w);
            } else {
                delta.lose(pack(x, a), count);
                delta.gain(pack(x, z), count, w);
            }
        }
        if read + 2 < end {
            let y = word[read + 2];
            let next_is_occurrence = y == a && read + 3 < end && word[read + 3] == b;
            if !next_is_occurrence {
                delta.lose(pack(b, y), count);
                delta.gain(pack(z, y), count, w);
            }
        }
        word[write] = z;
        read += 2;
        write += 1;
    }
    write
}

struct Trainer {
    syms: Vec<u32>,
    words: Vec<Word>,
    pairs: HashMap<Pair, PairStats>,
    queue: Queue,
    delta: Delta,
}

impl Trainer {
    fn new(Words { syms, words }: Words) -> Self {
        let mut pairs: HashMap<Pair, PairStats> = HashMap::new();
        for (w, word) in words.iter().enumerate() {
            let w = u32::try_from(w).expect("fewer than 2^32 unique pieces");
            for adjacent in syms[word.start..word.start + word.len].windows(2) {
                let stats = pairs.entry(pack(adjacent[0], adjacent[1])).or_default();
                stats.count = stats.count.saturating_add(word.count);
                // words are visited one at a time, so this keeps each list duplicate-free
                if stats.words.last() != Some(&w) {
                    stats.words.push(w);
                }
            }
        }
        let mut queue = Queue::new();
        for (&pair, stats) in &pairs {
            queue.push(stats.count, pair);
        }
        Trainer { syms, words, pairs, queue, delta: Delta::default() }
    }

    /// The pair to merge next, or None when no pair has a positive count.
    fn pop_best(&mut self) -> Option<Pair> {
        while let Some((count, pair)) = self.queue.pop() {
            let current = self.pairs.get(&pair).map_or(0, |s| s.count);
            debug_assert!(current <= count, "counts of existing pairs only go down");
            if current == count && current > 0 {
                return Some(pair);
            }
            if current > 0 {
                self.queue.push(current, pair);
            } else {
                self.pairs.remove(&pair);
            }
        }
        None
    }

    fn merge(&mut self, pair: Pair, z: u32) {
        let stats = self.pairs.remove(&pair).unwrap_or_default();
        let Trainer { syms, words, delta, .. } = self;
        let list = &stats.words;
        for (k, &w) in list.iter().enumerate() {
            // The words are scattered over memory and a merge touches each one briefly, so
            // waiting on memory dominates; fetch the next words' entries and symbols early.
            if let Some(&ahead) = list.get(k + 16) {
                prefetch(&words[ahead as usize]);
            }
            if let Some(&ahead) = list.get(k + 8) {
                prefetch(syms.as_ptr().wrapping_add(words[ahead as usize].start));
            }
            let Word { start, len, count } = words[w as usize];
            words[w as usize].len =
                merge_word(&mut syms[start..start + len], count, w, unpack(pair), z, delta);
        }
        for (pair, by) in self.delta.lost.drain() {
            // the merged pair itself was already removed, so its occurrences are skipped here
            if let Some(stats) = self.pairs.get_mut(&pair) {
                stats.count -= by;
            }
        }
        for (pair, stats) in self.delta.created.drain() {
            self.queue.push(stats.count, pair);
            self.pairs.insert(pair, stats);
        }
    }
}

/// Learns merges from `pieces` (unique pre-tokens with their counts) until the vocabulary,
/// 256 byte tokens plus one per merge, reaches `vocab_size`, or no pair is left. Merge `i`
/// creates token `256 + i`. The result does not depend on the order of `pieces`.
pub fn train<'a>(pieces: impl IntoIterator<Item = (&'a [u8], u64)>, vocab_size: usize) -> Vec<(u32, u32)> {
    train_words(Words::new(pieces), vocab_size)
}

/// `train` on pieces already copied into `Words`.
pub fn train_words(words: Words, vocab_size: usize) -> Vec<(u32, u32)> {
    let wanted = vocab_size.saturating_sub(256).min(u32::MAX as usize - 256);
    let mut merges = Vec::new();
    if wanted == 0 {
        return merges;
    }
    let mut trainer = Trainer::new(words);
    while merges.len() < wanted {
        let Some(pair) = trainer.pop_best() else { break };
        let z = 256 + merges.len() as u32;
        trainer.merge(pair, z);
        merges.push(unpack(pair));
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train_on(pieces: &[(&str, u64)], vocab_size: usize) -> Vec<(u32, u32)> {
        train(pieces.iter().map(|&(p, c)| (p.as_bytes(), c)), vocab_size)
    }

    const A: u32 = b'a' as u32;
    const B: u32 = b'b' as u32;
    const C: u32 = b'c' as u32;

    /// A slow, obviously-correct trainer: recount every pair from scratch at every step.
    fn naive(pieces: &[(Vec<u8>, u64)], vocab_size: usize) -> Vec<(u32, u32)> {
        let mut words: Vec<(Vec<u32>, u64)> =
            pieces.iter().map(|(p, c)| (p.iter().map(|&b| u32::from(b)).collect(), *c)).collect();
        let mut merges = Vec::new();
        while 256 + merges.len() < vocab_size {
            let mut counts = std::collections::BTreeMap::new();
            for (w, c) in &words {
                for pair in w.windows(2) {
                    *counts.entry((pair[0], pair[1])).or_insert(0u64) += c;
                }
            }
            // the BTreeMap iterates pairs in increasing order, so the first maximum wins ties
            let mut best: Option<((u32, u32), u64)> = None;
            for (&pair, &count) in &counts {
                if count > best.map_or(0, |(_, c)| c) {
                    best = Some((pair, count));
                }
            }
            let Some(((a, b), _)) = best else { break };
            let z = 256 + merges.len() as u32;
            for (w, _) in &mut words {
                let mut out = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        out.push(z);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                *w = out;
            }
            merges.push((a, b));
        }
        merges
    }

    #[test]
    fn hand_computed_merges() {
        // "aaab" x2: (a,a) 2x2=4, (a,b) 2 ; "ab" x3: (a,b) 3 -> (a,b) total 5 wins
        // after ab=256: "aa"+256 -> (a,a) 2, (a,256) 2 ; "ab"->[256]
        // tie at 2 between (97,97) and (97,256): smallest is (97,97) -> 257
        // then "aaab" is [257, 256] -> (257,256) 2
        let merges = train_on(&[("aaab", 2), ("ab", 3)], 300);
        assert_eq!(merges, [(A, B), (A, A), (257, 256)]);
    }

    #[test]
    fn overlapping_pairs_count_twice_but_merge_left_to_right() {
        // "aaa": (a,a) counted twice; merged to [aa, a]; then (aa, a) once
        assert_eq!(train_on(&[("aaa", 1)], 260), [(A, A), (256, A)]);
        // "aaaa" -> [aa, aa] -> (aa, aa)
        assert_eq!(train_on(&[("aaaa", 1)], 260), [(A, A), (256, 256)]);
    }

    #[test]
    fn ties_go_to_the_smallest_pair() {
        // (b,c) and (a,b) both 1: (a,b)=(97,98) < (98,99)
        assert_eq!(train_on(&[("bc", 1), ("ab", 1)], 257), [(A, B)]);
        // the left id decides before the right id
        assert_eq!(train_on(&[("ca", 1), ("bc", 1)], 257), [(B, C)]);
    }

    #[test]
    fn stops_early_when_pairs_run_out() {
        assert_eq!(train_on(&[("abc", 1)], 100_000), [(A, B), (256, C)]);
        assert!(train_on(&[], 1000).is_empty());
        assert!(train_on(&[("a", 5), ("", 1)], 1000).is_empty());
        assert!(train_on(&[("abc", 1)], 256).is_empty());
        assert!(train_on(&[("abc", 1)], 0).is_empty());
    }

    #[test]
    fn matches_naive_trainer_on_random_words() {
        let mut state = 7u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let alphabet = 2 + (round % 5) as u64;
            let pieces: Vec<(Vec<u8>, u64)> = (0..40)
                .map(|_| {
                    let len = (next() % 9) as usize;
                    let word = (0..len).map(|_| b'a' + (next() % alphabet) as u8).collect();
                    // some counts above the queue's SMALL, so both of its halves are used
                    let count = if next() % 4 == 0 { 200 + next() % 3000 } else { 1 + next() % 5 };
                    (word, count)
                })
                .collect();
            let vocab = 256 + (next() % 80) as usize;
            let fast = train(pieces.iter().map(|(p, c)| (p.as_slice(), *c)), vocab);
            assert_eq!(fast, naive(&pieces, vocab), "round {round}");
        }
    }

    #[test]
    fn matches_naive_trainer_on_many_words() {
        // thousands of words per early merge, as in real corpora
        let mut state = 11u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: Vec<(Vec<u8>, u64)> = (0..16_000)
            .map(|_| {
                let len = 2 + (next() % 9) as usize;
                let word = (0..len).map(|_| b'a' + (next() % 3) as u8).collect();
                (word, 1 + next() % 50)
            })
            .collect();
        let fast = train(pieces.iter().map(|(p, c)| (p.as_slice(), *c)), 400);
        assert_eq!(fast, naive(&pieces, 400));
    }
}
