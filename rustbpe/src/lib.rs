//! rustbpe: the byte-level BPE tokenizer trainer of nanochat.
//!
//! The pure-Rust core (splitting, counting, merging) is usable and tested without Python;
//! the `python` feature adds the PyO3 module `nanochat.rustbpe` (see `python.rs`).

pub mod bpe;
pub mod count;
pub mod split;

#[cfg(feature = "python")]
mod python;

use std::fmt;

pub use split::{Splitter, GPT4_SPLIT_PATTERN, SPLIT_PATTERN};

/// What can go wrong on the way from arguments to merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The split pattern does not compile.
    InvalidPattern(String),
    /// The regex engine gave up on a text (e.g. its backtracking limit).
    PatternFailed(String),
    /// The worker thread pool could not be started.
    ThreadPool(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidPattern(e) => write!(f, "invalid split pattern: {e}"),
            Error::PatternFailed(e) => {
                write!(f, "the split pattern failed on a text ({e}); simplify the pattern")
            }
            Error::ThreadPool(e) => write!(f, "could not start the worker threads: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Token bytes of every token, in id order: the 256 single bytes, then one per merge.
pub fn token_bytes(merges: &[(u32, u32)]) -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for &(left, right) in merges {
        // merges only refer to earlier tokens, so both halves exist
        let mut bytes = tokens[left as usize].clone();
        bytes.extend_from_slice(&tokens[right as usize]);
        tokens.push(bytes);
    }
    tokens
}
