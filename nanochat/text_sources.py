"""Where training text comes from, as one iterator of documents (str) for any source name.

Sources: `embedded` (English prose and code built from the local Python install, see
embedded_corpus.py), `embedded-ko` (the Korean texts shipped in the konlpy wheel), any source name
or data dir of `python -m nanochat.dataset` (its training shards only: never the validation shard),
a single .parquet / .txt file, or a folder of .txt files (one document each).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

EMBEDDED_SOURCES = ("embedded", "embedded-ko")


class SourceError(ValueError):
    """A source that cannot be read; the message says what to run or pass instead."""


def _parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise SourceError(f"{path} is not a readable parquet file ({e}); delete it and download it again") from e
    if "text" not in pf.schema_arrow.names:
        raise SourceError(f"{path} has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for i in range(pf.num_row_groups):
        yield from pf.read_row_group(i, columns=["text"]).column("text").to_pylist()


def _files_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".parquet", ".txt"))
    if not files:
        raise SourceError(f"{path} holds no .parquet or .txt files")
    return files


def _embedded_texts(source: str) -> Iterator[str]:
    from nanochat import embedded_corpus

    if source == "embedded":
        yield from embedded_corpus.build_corpus().train
        return
    docs = embedded_corpus.korean_documents()
    if not docs:
        raise SourceError("embedded-ko needs the Korean texts of the konlpy wheel: uv pip install konlpy")
    yield from docs


def iter_texts(source: str, *, max_chars: int | None = None, doc_cap: int = 0) -> Iterator[str]:
    """Yield documents from `source` until max_chars characters (counted after doc_cap) are reached.

    Empty and whitespace-only documents are skipped: they carry nothing to learn.
    """
    if source in EMBEDDED_SOURCES:
        stream = _embedded_texts(source)
    else:
        path = Path(source).expanduser()
        if path.is_file() or (path.is_dir() and any(path.rglob("*.txt"))):
            files = _files_in(path)
        else:  # a dataset source name or data dir: its training shards, so validation text stays unseen
            from nanochat.dataset import list_shards

            files = list_shards("train", source)

        def from_files() -> Iterator[str]:
            for f in files:
                if f.suffix == ".parquet":
                    yield from _parquet_texts(f)
                else:
                    yield f.read_text(encoding="utf-8", errors="replace")

        stream = from_files()
    total = 0
    for text in stream:
        if text is None or not text.strip():
            continue
        if doc_cap > 0:
            text = text[:doc_cap]
        if max_chars is not None and total + len(text) > max_chars:
            remaining = max_chars - total
            if remaining > 0:
                yield text[:remaining]
            return
        total += len(text)
        yield text
