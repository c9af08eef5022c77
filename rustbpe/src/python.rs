//! The Python module `nanochat.rustbpe`: converts arguments, pulls texts from the Python
//! iterator in buffered batches, and releases the GIL around splitting, counting and merging.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::count::PieceCounts;
use crate::split::{Splitter, GPT4_SPLIT_PATTERN, SPLIT_PATTERN};
use crate::{bpe, token_bytes, Error};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::InvalidPattern(_) | Error::PatternFailed(_) => PyValueError::new_err(e.to_string()),
            Error::ThreadPool(_) => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

/// The UTF-8 bytes of a str, following the rule tiktoken's encoder uses for strings that are
/// not valid Unicode: surrogate pairs are joined and each lone surrogate becomes U+FFFD.
///
/// The text is encoded to a temporary bytes object rather than read with `to_str`, which
/// would leave a UTF-8 copy cached on every non-ASCII str for as long as the str lives: the
/// whole corpus over again when it is a list.
fn utf8_of<'py>(s: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
    match s.encode_utf8() {
        Ok(utf8) => Ok(utf8),
        Err(_) => s
            .call_method1("encode", ("utf-16", "surrogatepass"))?
            .call_method1("decode", ("utf-16", "replace"))?
            .cast_into::<PyString>()?
            .encode_utf8(),
    }
}

fn kind_of(item: &Bound<'_, PyAny>) -> String {
    item.get_type().name().map_or_else(|_| "?".to_owned(), |name| name.to_string())
}

/// Item `index` of the texts, as training reads it: checked, encoded, capped.
fn text_of(item: &Bound<'_, PyAny>, index: u64, doc_cap: usize) -> PyResult<String> {
    let Ok(s) = item.cast::<PyString>() else {
        let kind = kind_of(item);
        return Err(PyTypeError::new_err(format!(
            "texts must yield str, but item {index} is of type {kind}"
        )));
    };
    let utf8 = utf8_of(s)?;
    let text = std::str::from_utf8(utf8.as_bytes())
        .map_err(|e| PyValueError::new_err(format!("item {index} did not encode to valid UTF-8: {e}")))?;
    Ok(truncate_chars(text, doc_cap).to_owned())
}

/// The first `cap` characters of `text` (all of it when `cap` is 0).
fn truncate_chars(text: &str, cap: usize) -> &str {
    if cap == 0 || text.len() <= cap {
        return text;
    }
    match text.char_indices().nth(cap) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn non_negative(name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {value}")))
}

/// The result of `train`: merges in order (merge i creates token 256 + i) and the pattern.
#[pyclass(frozen, module = "nanochat.rustbpe")]
struct Trained {
    #[pyo3(get)]
    merges: Vec<(u32, u32)>,
    #[pyo3(get)]
    pattern: String,
    docs: u64,
    bytes: u64,
    unique_pieces: usize,
    count_seconds: f64,
    merge_seconds: f64,
}

#[pymethods]
impl Trained {
    /// All tokens as (bytes, rank), ordered by rank: the 256 single bytes, then one per merge.
    /// `dict(trained.mergeable_ranks())` is what `tiktoken.Encoding` takes.
    fn mergeable_ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, usize)> {
        token_bytes(&self.merges)
            .iter()
            .enumerate()
            .map(|(rank, bytes)| (PyBytes::new(py, bytes), rank))
            .collect()
    }

    /// Training statistics: docs and bytes counted (after doc_cap), unique pieces, and the
    /// seconds spent reading+counting and merging.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("docs", self.docs)?;
        d.set_item("bytes", self.bytes)?;
        d.set_item("unique_pieces", self.unique_pieces)?;
        d.set_item("count_seconds", self.count_seconds)?;
        d.set_item("merge_seconds", self.merge_seconds)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("Trained(vocab_size={}, merges={})", 256 + self.merges.len(), self.merges.len())
    }
}

/// The splitter for `pattern`, compiled once for a run of calls with the same pattern: a
/// custom pattern costs about a millisecond to compile, more than splitting a short text.
fn cached_splitter(pattern: &str) -> Result<Arc<Splitter>, Error> {
    static LAST: Mutex<Option<(String, Arc<Splitter>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((p, splitter)) = last.as_ref() {
        if p == pattern {
            return Ok(Arc::clone(splitter));
        }
    }
    let splitter = Arc::new(Splitter::new(pattern)?);
    *last = Some((pattern.to_owned(), Arc::clone(&splitter)));
    Ok(splitter)
}

/// Split `text` into pre-tokens with `pattern` (default SPLIT_PATTERN), as training does.
#[pyfunction]
#[pyo3(signature = (text, pattern=None))]
fn split(text: &Bound<'_, PyAny>, pattern: Option<&str>) -> PyResult<Vec<String>> {
    let splitter = cached_splitter(pattern.unwrap_or(SPLIT_PATTERN))?;
    let Ok(s) = text.cast::<PyString>() else {
        return Err(PyTypeError::new_err(format!("split() takes a str, got {}", kind_of(text))));
    };
    let utf8 = utf8_of(s)?;
    let text = std::str::from_utf8(utf8.as_bytes())
        .map_err(|e| PyValueError::new_err(format!("text did not encode to valid UTF-8: {e}")))?;
    Ok(splitter.split(text)?.into_iter().map(str::to_owned).collect())
}

/// Train a byte-level BPE tokenizer on an iterable of str.
///
/// Texts are pulled `buffer_size` at a time; each batch is split with `pattern` (default
/// SPLIT_PATTERN) and counted on `num_threads` threads (0: all cores) without the GIL, so only
/// the unique pieces and their counts are kept. `doc_cap` > 0 keeps only the first `doc_cap`
/// characters of each text. A str with lone surrogates is read as
/// `text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")`.
///
/// `vocab_size` counts the 256 byte tokens plus the merges (no special tokens). Each step
/// merges the adjacent pair with the highest count (overlaps count: "aaa" holds (a, a) twice);
/// ties go to the smallest (left_id, right_id). Training stops early, with fewer merges, when
/// no pair is left.
#[pyfunction]
#[pyo3(signature = (texts, vocab_size, pattern=None, *, buffer_size=8192, doc_cap=0, num_threads=0))]
fn train(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    vocab_size: i64,
    pattern: Option<&str>,
    buffer_size: i64,
    doc_cap: i64,
    num_threads: i64,
) -> PyResult<Trained> {
    if vocab_size < 256 {
        return Err(PyValueError::new_err(format!(
            "vocab_size must be at least 256 (the byte tokens), got {vocab_size}"
        )));
    }
    if buffer_size < 1 {
        return Err(PyValueError::new_err(format!("buffer_size must be >= 1, got {buffer_size}")));
    }
    let vocab_size = usize::try_from(vocab_size).unwrap_or(usize::MAX);
    let buffer_size = non_negative("buffer_size", buffer_size)?;
    let doc_cap = non_negative("doc_cap", doc_cap)?;
    let num_threads = non_negative("num_threads", num_threads)?;
    let pattern = pattern.unwrap_or(SPLIT_PATTERN).to_owned();
    let splitter = Splitter::new(&pattern)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(num_threads)
        .build()
        .map_err(|e| Error::ThreadPool(e.to_string()))?;

    let start = Instant::now();
    let mut counts = PieceCounts::new();
    let (mut docs, mut bytes) = (0u64, 0u64);
    let mut batch: Vec<String> = Vec::with_capacity(buffer_size.min(1 << 16));
    let mut iter = texts.try_iter()?;
    let mut exhausted = false;
    while !exhausted {
        batch.clear();
        while batch.len() < buffer_size {
            match iter.next() {
                Some(item) => {
                    let text = text_of(&item?, docs, doc_cap)?;
                    docs += 1;
                    bytes += text.len() as u64;
                    batch.push(text);
                }
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            py.detach(|| pool.install(|| counts.add_batch(&batch, &splitter)))?;
        }
        // a list iterator runs no Python code, so Ctrl-C would otherwise wait for the end
        py.check_signals()?;
    }
    drop(batch);
    let unique_pieces = counts.len();
    let count_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let merges = py.detach(|| {
        let mut words = bpe::Words::default();
        counts.for_each(|piece, n| words.push(piece, n));
        drop(counts);
        pool.install(|| bpe::train_words(words, vocab_size))
    });
    let merge_seconds = start.elapsed().as_secs_f64();
    Ok(Trained { merges, pattern, docs, bytes, unique_pieces, count_seconds, merge_seconds })
}

#[pymodule]
fn rustbpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SPLIT_PATTERN", SPLIT_PATTERN)?;
    m.add("GPT4_SPLIT_PATTERN", GPT4_SPLIT_PATTERN)?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_class::<Trained>()?;
    Ok(())
}
