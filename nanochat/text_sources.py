"""Where training text comes from, as one iterator of documents (str) for any source name.

Sources: `embedded` (English prose and code built from the local Python install, see
embedded_corpus.py), `embedded-ko` (the Korean texts shipped in the konlpy wheel), any source name
or data dir of `python -m nanochat.dataset` (its training shards only: never the validation shard),
a single .parquet / .txt / .jsonl file, or a folder of .txt files (one document each) and .jsonl files.

JSON lines: each line is an object whose `text` field is one document. Another field name comes from
the `text_field` argument, else the environment variable NANOCHAT_TEXT_FIELD (read by tok_train,
nanochat.dataset and, through the shards that builds, base_train). Lines that are not JSON objects or
lack the field are skipped and counted in one warning line per file; a file in which no line has the
field is an error naming the keys it does have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from nanochat.common import print0

EMBEDDED_SOURCES = ("embedded", "embedded-ko")
TEXT_FIELD_ENV = "NANOCHAT_TEXT_FIELD"
DEFAULT_TEXT_FIELD = "text"
PLAIN_SUFFIXES = (".parquet", ".txt", ".jsonl")  # what a folder of the user's own files may hold


class SourceError(ValueError):
    """A source that cannot be read; the message says what to run or pass instead."""


def resolve_text_field(text_field: str | None = None) -> str:
    """The JSON field that holds a document: the argument, else $NANOCHAT_TEXT_FIELD, else `text`."""
    return text_field or os.environ.get(TEXT_FIELD_ENV, "").strip() or DEFAULT_TEXT_FIELD


def jsonl_files(path: str | os.PathLike) -> list[Path]:
    """The .jsonl file itself, or the .jsonl files of a folder (sorted; none: [])."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path] if path.suffix == ".jsonl" else []
    if path.is_dir():
        return sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    return []


def is_jsonl_corpus(path: str | os.PathLike) -> bool:
    """A .jsonl file, or a folder of .jsonl files without .parquet / .arrow shards (a shard folder
    with a stray .jsonl in it stays a shard folder)."""
    path = Path(path).expanduser()
    if not jsonl_files(path):
        return False
    return path.is_file() or not any(p.suffix in (".parquet", ".arrow") for p in path.rglob("*"))


def jsonl_texts(path: Path, text_field: str | None = None) -> Iterator[str]:
    """The `text_field` string of each line of a JSON-lines file, in order.

    Blank lines are ignored; lines that are not JSON objects, or whose field is missing or not a
    string, are skipped and counted (one warning line at the end). SourceError when no line has it.
    """
    field = resolve_text_field(text_field)
    found, malformed, missing = 0, 0, 0
    keys: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                malformed += 1
                continue
            if not isinstance(row, dict):
                malformed += 1
                continue
            value = row.get(field)
            if not isinstance(value, str):
                missing += 1
                if len(keys) < 50:  # enough to name what the file holds, bounded on a huge file
                    keys.update(map(str, row))
                continue
            found += 1
            yield value
    if not found:
        seen = ", ".join(sorted(keys)[:20]) or "none"
        raise SourceError(f"{path}: no line has a string field {field!r} ({missing} JSON object(s), {malformed} "
                          f"malformed line(s); keys seen: {seen}); set {TEXT_FIELD_ENV} to the field that holds the text")
    if malformed or missing:
        print0(f"warning: {path}: skipped {malformed} malformed line(s) and {missing} without a string "
               f"{field!r} field; read {found} document(s)")


def _parquet_texts(path: Path, *, downloaded: bool = False) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        # only a shard the project downloaded may be thrown away: a user's own file is theirs to check
        remedy = "delete it and download it again" if downloaded else "check that it is a complete parquet file"
        raise SourceError(f"{path} is not a readable parquet file ({e}); {remedy}") from e
    if "text" not in pf.schema_arrow.names:
        raise SourceError(f"{path} has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for i in range(pf.num_row_groups):
        yield from pf.read_row_group(i, columns=["text"]).column("text").to_pylist()


def _files_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in PLAIN_SUFFIXES)
    if not files:
        raise SourceError(f"{path} holds no .parquet, .txt or .jsonl files")
    return files


def _embedded_texts(source: str) -> Iterator[str]:
    from nanochat import embedded_corpus

    if source == "embedded":
        yield from embedded_corpus.build_corpus().train
        return
    docs = embedded_corpus.korean_documents()
    if not docs:
        raise SourceError("embedded-ko needs the Korean texts of the konlpy wheel: uv pip install konlpy")
    from nanochat.local_corpus import _hash_split

    # its training side only, as for `embedded`: the held-out document is the one nanochat.dataset
    # validates on and tok_eval measures as korean-heldout
    yield from _hash_split(docs)[0]


def iter_texts(source: str, *, max_chars: int | None = None, doc_cap: int | None = None,
               text_field: str | None = None) -> Iterator[str]:
    """Yield documents from `source` until max_chars characters (counted after doc_cap) are reached.

    Empty and whitespace-only documents are skipped: they carry nothing to learn. text_field: the
    JSON field of .jsonl files (None: resolve_text_field()).
    """
    if source in EMBEDDED_SOURCES:
        stream = _embedded_texts(source)
    else:
        path = Path(source).expanduser()
        own = path.is_file() or (path.is_dir() and any(path.rglob("*.txt"))) or is_jsonl_corpus(path)
        if own:
            files = _files_in(path)
        else:  # a dataset source name or data dir: its training shards, so validation text stays unseen
            from nanochat.dataset import list_shards

            files = list_shards("train", source)

        def from_files() -> Iterator[str]:
            for f in files:
                if f.suffix == ".parquet":
                    yield from _parquet_texts(f, downloaded=not own)
                elif f.suffix == ".jsonl":
                    yield from jsonl_texts(f, text_field)
                else:
                    yield f.read_text(encoding="utf-8", errors="replace")

        stream = from_files()
    total = 0
    for text in stream:
        if text is None or not text.strip():
            continue
        if doc_cap:
            text = text[:doc_cap]
        if max_chars is not None and total + len(text) > max_chars:
            remaining = max_chars - total
            if remaining > 0:
                yield text[:remaining]
            return
        total += len(text)
        yield text
