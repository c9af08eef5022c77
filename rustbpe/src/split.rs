//! The pre-tokenizer: cuts text into pieces that BPE never merges across.
//!
//! Splitting dominates training time, so the two default patterns are run by a hand-written
//! scanner that reproduces fancy-regex's leftmost-first matching exactly; any other pattern
//! goes through fancy-regex itself. The scanner classifies characters with the Unicode tables
//! of regex-syntax, the parser fancy-regex compiles with, so the two cannot drift apart.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

use crate::Error;

/// nanochat's pattern: GPT-4's, but numbers split into groups of at most two digits, which
/// wastes fewer tokens on digit groups in a small vocabulary.
pub const SPLIT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// GPT-4's cl100k_base pattern (digit groups of up to three).
pub const GPT4_SPLIT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
/// Characters in none of the three classes; `[^\s\p{L}\p{N}]` in the pattern.
const OTHER: u8 = 0;

/// Class flags of every code point, as a two-level table: the high bits pick one of about 130
/// distinct 256-entry blocks. That keeps the table small enough (~40 KB) to stay in cache,
/// with no branch on the script of the text.
struct CharClasses {
    /// The flags of ASCII, read without decoding or indirection: most text is mostly ASCII.
    ascii: [u8; 128],
    block_of: Vec<u16>,
    blocks: Vec<[u8; 256]>,
    /// Case-insensitive sets for the contractions `'(?i:[sdmt]|ll|ve|re)`, indexed by
    /// `Contraction`; Unicode case folding adds e.g. U+017F (long s) to `s`.
    fold: [Vec<char>; 5],
}

enum Contraction {
    Sdmt = 0,
    L = 1,
    V = 2,
    R = 3,
    E = 4,
}

/// The code point ranges of a regex character class, as regex-syntax parses it.
fn class_ranges(class: &str) -> Vec<(char, char)> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(class)
        .unwrap_or_else(|e| panic!("built-in class {class} must parse: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c.ranges().iter().map(|r| (r.start(), r.end())).collect(),
        // a single-character class (a letter without case variants) comes back as a literal
        HirKind::Literal(lit) => {
            let c = std::str::from_utf8(&lit.0).ok().and_then(|s| s.chars().next());
            c.map(|c| vec![(c, c)]).unwrap_or_default()
        }
        other => panic!("built-in class {class} parsed to {other:?}"),
    }
}

fn fold_set(class: &str) -> Vec<char> {
    class_ranges(class).into_iter().flat_map(|(lo, hi)| lo..=hi).collect()
}

impl CharClasses {
    fn build() -> Self {
        const N: usize = 0x11_0000;
        let mut flags = vec![0u8; N];
        for (class, flag) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (lo, hi) in class_ranges(class) {
                for f in &mut flags[lo as usize..=hi as usize] {
                    *f |= flag;
                }
            }
        }
        let mut block_of = Vec::with_capacity(N / 256);
        let mut blocks: Vec<[u8; 256]> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for chunk in flags.chunks_exact(256) {
            let block: [u8; 256] = chunk.try_into().expect("chunks are 256 long");
            let id = *seen.entry(block).or_insert_with(|| {
                blocks.push(block);
                blocks.len() - 1
            });
            block_of.push(u16::try_from(id).expect("fewer than 65536 distinct blocks"));
        }
        let fold = [
            fold_set("(?i:[sdmt])"),
            fold_set("(?i:l)"),
            fold_set("(?i:v)"),
            fold_set("(?i:r)"),
            fold_set("(?i:e)"),
        ];
        let mut ascii = [0u8; 128];
        ascii.copy_from_slice(&flags[..128]);
        CharClasses { ascii, block_of, blocks, fold }
    }

    fn get() -> &'static CharClasses {
        static TABLE: OnceLock<CharClasses> = OnceLock::new();
        TABLE.get_or_init(CharClasses::build)
    }

    #[inline(always)]
    fn of(&self, c: u32) -> u8 {
        // `c` comes from decoding valid UTF-8, so it is below 0x110000
        let block = self.block_of[(c >> 8) as usize] as usize;
        self.blocks[block][(c & 0xff) as usize]
    }

    fn folds(&self, set: Contraction, c: u32) -> bool {
        self.fold[set as usize].iter().any(|&f| f as u32 == c)
    }
}

/// Decodes the character starting at byte `i` of valid UTF-8; returns it and its length.
#[inline(always)]
fn decode(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = s[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xe0 {
        (((b0 & 0x1f) << 6) | (s[i + 1] as u32 & 0x3f), 2)
    } else if b0 < 0xf0 {
        (((b0 & 0x0f) << 12) | ((s[i + 1] as u32 & 0x3f) << 6) | (s[i + 2] as u32 & 0x3f), 3)
    } else {
        let c = ((b0 & 0x07) << 18)
            | ((s[i + 1] as u32 & 0x3f) << 12)
            | ((s[i + 2] as u32 & 0x3f) << 6)
            | (s[i + 3] as u32 & 0x3f);
        (c, 4)
    }
}

/// The hand-written matcher for SPLIT_PATTERN / GPT4_SPLIT_PATTERN.
///
/// Every character starts a match of some alternative (letters, numbers, whitespace, and
/// "other" each have one that takes a lone character), so pieces tile the text and each call
/// of `piece_end` only has to decide where the match starting at `i` ends, trying the seven
/// alternatives in order as a backtracking engine would.
#[derive(Clone, Copy, Debug)]
pub struct Scanner {
    max_digits: usize,
}

impl Scanner {
    pub fn new(max_digits: usize) -> Self {
        CharClasses::get();
        Scanner { max_digits }
    }

    #[inline(always)]
    fn class_at(t: &CharClasses, s: &[u8], i: usize) -> (u8, usize) {
        let b = s[i];
        if b < 0x80 {
            return (t.ascii[b as usize], 1);
        }
        let (c, n) = decode(s, i);
        (t.of(c), n)
    }

    /// End of the run of characters whose class is exactly `class`, starting at `i`.
    #[inline(always)]
    fn run_end(t: &CharClasses, s: &[u8], mut i: usize, class: u8) -> usize {
        while i < s.len() {
            let b = s[i];
            if b < 0x80 {
                if t.ascii[b as usize] != class {
                    break;
                }
                i += 1;
                continue;
            }
            let (c, n) = decode(s, i);
            if t.of(c) != class {
                break;
            }
            i += n;
        }
        i
    }

    /// Alternative 1, `'(?i:[sdmt]|ll|ve|re)`, given that `s[i]` is an apostrophe.
    fn contraction_end(t: &CharClasses, s: &[u8], i: usize) -> Option<usize> {
        let j = i + 1;
        if j >= s.len() {
            return None;
        }
        let (c1, n1) = decode(s, j);
        if t.folds(Contraction::Sdmt, c1) {
            return Some(j + n1);
        }
        let k = j + n1;
        if k >= s.len() {
            return None;
        }
        let (c2, n2) = decode(s, k);
        let pair_matches = (t.folds(Contraction::L, c1) && t.folds(Contraction::L, c2))
            || (t.folds(Contraction::V, c1) && t.folds(Contraction::E, c2))
            || (t.folds(Contraction::R, c1) && t.folds(Contraction::E, c2));
        pair_matches.then_some(k + n2)
    }

    /// Byte offset where the piece starting at `i` (< s.len()) ends.
    #[inline]
    fn piece_end(&self, t: &CharClasses, s: &[u8], i: usize) -> usize {
        let len = s.len();
        let (c, n) = decode(s, i);
        let class = if c < 0x80 { t.ascii[c as usize] } else { t.of(c) };
        let j = i + n;
        if c == u32::from(b'\'') {
            if let Some(end) = Self::contraction_end(t, s, i) {
                return end;
            }
        }
        // 2: [^\r\n\p{L}\p{N}]?+\p{L}+ ; the possessive prefix never has to give back a
        // character, because a prefix character is never a letter itself.
        if class == LETTER {
            return Self::run_end(t, s, j, LETTER);
        }
        if class != NUMBER && c != u32::from(b'\r') && c != u32::from(b'\n') && j < len {
            let (next, m) = Self::class_at(t, s, j);
            if next == LETTER {
                return Self::run_end(t, s, j + m, LETTER);
            }
        }
        // 3: \p{N}{1,max}
        if class == NUMBER {
            let mut end = j;
            for _ in 1..self.max_digits {
                if end >= len {
                    break;
                }
                let (cl, m) = Self::class_at(t, s, end);
                if cl != NUMBER {
                    break;
                }
                end += m;
            }
            return end;
        }
        // 4: ` ?[^\s\p{L}\p{N}]++[\r\n]*`
        let other_start = if class == OTHER {
            Some(i)
        } else if c == u32::from(b' ') && j < len && Self::class_at(t, s, j).0 == OTHER {
            Some(j)
        } else {
            None
        };
        if let Some(start) = other_start {
            let mut end = Self::run_end(t, s, start, OTHER);
            while end < len && (s[end] == b'\r' || s[end] == b'\n') {
                end += 1;
            }
            return end;
        }
        // Only whitespace is left. 5: `\s*[\r\n]` ends after the run's last line break;
        // 6: `\s+(?!\S)` leaves the run's last character to prefix the next piece, unless the
        // run ends the text; 7: `\s+` takes a lone whitespace character.
        debug_assert_eq!(class, SPACE);
        let mut end = i;
        let mut last_start = i;
        let mut after_break = None;
        while end < len {
            let (cl, m) = Self::class_at(t, s, end);
            if cl != SPACE {
                break;
            }
            if s[end] == b'\r' || s[end] == b'\n' {
                after_break = Some(end + 1);
            }
            last_start = end;
            end += m;
        }
        if let Some(b) = after_break {
            b
        } else if end == len || last_start == i {
            end
        } else {
            last_start
        }
    }

    /// Calls `f` with the byte range of each piece of `text`, in order.
    #[inline]
    pub fn for_each_span(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        let t = CharClasses::get();
        let s = text.as_bytes();
        let mut i = 0;
        while i < s.len() {
            let end = self.piece_end(t, s, i);
            f(i, end);
            i = end;
        }
    }
}

/// A pre-tokenizer: the scanner for the two built-in patterns, fancy-regex for anything else.
#[derive(Debug)]
pub enum Splitter {
    Scanner(Scanner),
    Regex(Box<fancy_regex::Regex>),
}

impl Splitter {
    pub fn new(pattern: &str) -> Result<Self, Error> {
        match pattern {
            SPLIT_PATTERN => Ok(Splitter::Scanner(Scanner::new(2))),
            GPT4_SPLIT_PATTERN => Ok(Splitter::Scanner(Scanner::new(3))),
            _ => Self::regex(pattern),
        }
    }

    /// Always the regex engine, whatever the pattern; the reference the scanner is tested against.
    pub fn regex(pattern: &str) -> Result<Self, Error> {
        fancy_regex::Regex::new(pattern)
            .map(|r| Splitter::Regex(Box::new(r)))
            .map_err(|e| Error::InvalidPattern(e.to_string()))
    }

    /// Calls `f` with the byte range of each match of the pattern in `text`, in order; text
    /// between matches (which the built-in patterns never leave) is dropped, as `regex.findall`
    /// and tiktoken do.
    #[inline]
    pub fn for_each_span(&self, text: &str, mut f: impl FnMut(usize, usize)) -> Result<(), Error> {
        match self {
            Splitter::Scanner(s) => {
                s.for_each_span(text, f);
                Ok(())
            }
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| Error::PatternFailed(e.to_string()))?;
                    f(m.start(), m.end());
                }
                Ok(())
            }
        }
    }

    /// Calls `f` with each piece of `text`, in order.
    pub fn for_each<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) -> Result<(), Error> {
        self.for_each_span(text, |i, j| f(&text[i..j]))
    }

    pub fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>, Error> {
        let mut out = Vec::new();
        self.for_each(text, |p| out.push(p))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a tiny deterministic generator, so the test needs no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Characters chosen to sit on every edge of the pattern: each class, the case-folded
    /// contraction letters, whitespace inside and outside `[\r\n]`, letters and numbers
    /// outside ASCII, combining marks (\p{M}, so "other"), surrogate-free astral characters.
    const NASTY: &[&str] = &[
        "a",
        "b",
        "s",
        "t",
        "d",
        "m",
        "l",
        "v",
        "e",
        "r",
        "S",
        "T",
        "D",
        "M",
        "L",
        "V",
        "E",
        "R",
        "x",
        "Z",
        "0",
        "1",
        "7",
        "9",
        "'",
        "'",
        "'",
        "\u{2019}",
        "ſ",
        "\u{212a}",
        "K",
        "k",
        " ",
        " ",
        " ",
        " ",
        "\t",
        "\r",
        "\n",
        "\n",
        "\r\n",
        "\x0b",
        "\x0c",
        "\u{85}",
        "\u{a0}",
        "\u{2028}",
        "\u{2029}",
        "\u{3000}",
        "\u{1680}",
        "\u{200b}",
        "\u{feff}",
        ".",
        ",",
        "!",
        "?",
        "-",
        "_",
        "(",
        ")",
        "#",
        "\"",
        "$",
        "@",
        "\\",
        "/",
        "*",
        "=",
        "한",
        "국",
        "어",
        "\u{1100}",
        "\u{3131}",
        "中",
        "文",
        "日",
        "😀",
        "👍",
        "🏽",
        "\u{200d}",
        "\u{301}",
        "\u{308}",
        "é",
        "\u{665}",
        "\u{966}",
        "²",
        "½",
        "Ⅻ",
        "\u{2460}",
        "ß",
        "İ",
        "ǅ",
        "Ω",
        "\u{1d400}",
        "\u{10400}",
        "\u{e000}",
        "\u{fffd}",
        "\0",
        "\x1f",
        "\x7f",
    ];

    fn random_text(rng: &mut Rng) -> String {
        let len = rng.below(24);
        (0..len).map(|_| NASTY[rng.below(NASTY.len())]).collect()
    }

    fn assert_same(fast: &Splitter, slow: &Splitter, text: &str) {
        let got = fast.split(text).unwrap();
        let want = slow.split(text).unwrap();
        assert_eq!(got, want, "pieces differ on {text:?}");
    }

    fn differential(pattern: &str, seed: u64) {
        let fast = Splitter::new(pattern).unwrap();
        assert!(matches!(fast, Splitter::Scanner(_)));
        let slow = Splitter::regex(pattern).unwrap();
        let mut rng = Rng(seed);
        for _ in 0..40_000 {
            assert_same(&fast, &slow, &random_text(&mut rng));
        }
        for text in SAMPLES {
            assert_same(&fast, &slow, text);
        }
    }

    const SAMPLES: &[&str] = &[
        "",
        "Hello, world! It's 2024 and we're testing 12345 numbers.\n\n  Indented   spaces\t\ttabs\r\n",
        "def f(x):\n    return x**2  # square\n\n\nclass A:\n    pass\n",
        "I'LL see you're fine, they'VE said; DON'T 'Sup 'ſ 'ſt '",
        "한국어 텍스트입니다. 안녕하세요!! 2024년 12월 😀😀 👍🏽 테스트\n",
        "日本語と中文の混在テキスト、句読点。数字１２３と٣٤٥ and ²³ Ⅻ ½",
        "trailing spaces   ",
        "   leading spaces",
        "\n\n\n",
        " \n \n ",
        "a\u{a0}b\u{3000}c\u{2028}d\u{85}e",
        "...!!!???\n\r\n",
        "e\u{301}te\u{301} cafe\u{301}",
    ];

    #[test]
    fn scanner_matches_fancy_regex_nanochat_pattern() {
        differential(SPLIT_PATTERN, 1);
    }

    #[test]
    fn scanner_matches_fancy_regex_gpt4_pattern() {
        differential(GPT4_SPLIT_PATTERN, 2);
    }

    #[test]
    fn scanner_matches_on_long_texts() {
        // long runs exercise the loops that short strings barely enter
        let mut rng = Rng(3);
        for pattern in [SPLIT_PATTERN, GPT4_SPLIT_PATTERN] {
            let (fast, slow) = (Splitter::new(pattern).unwrap(), Splitter::regex(pattern).unwrap());
            for _ in 0..200 {
                let text: String = (0..rng.below(2000)).map(|_| NASTY[rng.below(NASTY.len())]).collect();
                assert_same(&fast, &slow, &text);
            }
        }
    }

    #[test]
    fn class_tables_agree_with_fancy_regex_on_every_code_point() {
        let t = CharClasses::get();
        let classes = [(r"^\p{L}$", LETTER), (r"^\p{N}$", NUMBER), (r"^\s$", SPACE)];
        let regexes: Vec<_> =
            classes.iter().map(|(p, f)| (fancy_regex::Regex::new(p).unwrap(), *f)).collect();
        let mut buf = [0u8; 4];
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let text = c.encode_utf8(&mut buf);
            for (re, flag) in &regexes {
                let ours = t.of(c as u32) & flag != 0;
                assert_eq!(ours, re.is_match(text).unwrap(), "U+{:04X} and class {flag}", c as u32);
            }
        }
    }

    #[test]
    fn known_pieces() {
        let s = Splitter::new(SPLIT_PATTERN).unwrap();
        assert_eq!(
            s.split("Hello world's 12345  x\n\n y").unwrap(),
            ["Hello", " world", "'s", " ", "12", "34", "5", " ", " x", "\n\n", " y"]
        );
        let g = Splitter::new(GPT4_SPLIT_PATTERN).unwrap();
        assert_eq!(g.split("12345").unwrap(), ["123", "45"]);
        assert_eq!(s.split("'ſ 'LL").unwrap(), ["'ſ", " '", "LL"]);
    }

    #[test]
    fn other_patterns_use_the_regex_engine() {
        let s = Splitter::new(r"\w+").unwrap();
        assert!(matches!(s, Splitter::Regex(_)));
        assert_eq!(s.split("ab, cd").unwrap(), ["ab", "cd"]);
        assert!(matches!(Splitter::new("(unclosed"), Err(Error::InvalidPattern(_))));
    }
}
