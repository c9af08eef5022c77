"""Corpora built on this machine rather than downloaded: the embedded ones (English from the local
Python install, Korean from the konlpy wheel) and JSON-lines files, written as the same parquet
shards and manifest as a downloaded corpus (nanochat.dataset calls build_local_corpus).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from nanochat.common import print0
from nanochat.dataset import (
    MANIFEST,
    DatasetError,
    DataSource,
    _new_manifest,
    _record,
    _write_json,
    shard_name,
)
from nanochat.shards import write_text_parquet


def _embedded_documents(name: str) -> tuple[list[str], list[str], dict]:
    """(train documents, validation documents, provenance) of an embedded source."""
    from nanochat import embedded_corpus

    if name == "embedded":
        try:
            corpus = embedded_corpus.build_corpus()
        except embedded_corpus.CorpusTooSmallError as e:
            raise DatasetError(str(e)) from None
        return corpus.train, corpus.val, {"builder": "nanochat.embedded_corpus.build_corpus()",
                                         "sources": corpus.sources}
    docs = embedded_corpus.korean_documents()
    if not docs:
        raise DatasetError("--corpus=embedded-ko needs the Korean texts shipped in the konlpy wheel: "
                           "uv pip install konlpy (Java is not needed)")
    try:
        import importlib.metadata
        version = importlib.metadata.version("konlpy")
    except Exception:  # metadata missing or broken: provenance only, not worth failing over
        version = ""
    provenance = {"builder": "nanochat.embedded_corpus.korean_documents()",
                  "sources": [{"source": "konlpy/data/corpus (kolaw, kobill)", "version": version,
                               "license": "GPL v3 (konlpy wheel metadata)", "documents": len(docs)}]}
    return (*_hash_split(docs), provenance)


def _jsonl_documents(src: DataSource, text_field: str | None) -> tuple[list[str], list[str], dict]:
    """(train, validation, provenance) of a JSON-lines corpus; the whole text is held in memory."""
    from nanochat.text_sources import iter_texts, resolve_text_field

    docs = list(iter_texts(src.folder, text_field=text_field))
    return (*_hash_split(docs), {"builder": "nanochat.text_sources.iter_texts()",
                                 "text_field": resolve_text_field(text_field),
                                 "sources": [{"source": src.folder, "documents": len(docs)}]})


def _hash_split(docs: list[str]) -> tuple[list[str], list[str]]:
    """(train, validation): a fixed tenth (at least one) chosen by content hash, so the split never
    depends on file order."""
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].encode()).digest())
    val_ids = set(ranked[: max(1, len(docs) // 10)])
    return [d for i, d in enumerate(docs) if i not in val_ids], [d for i, d in enumerate(docs) if i in val_ids]


def _group_documents(docs: Iterable[str], max_chars: int | None, shard_chars: int) -> list[list[str]]:
    """Consecutive documents in shards of about shard_chars characters; max_chars caps the total."""
    shards, current, size, total = [], [], 0, 0
    for doc in docs:
        if not doc or not doc.strip():
            continue
        if max_chars and total + len(doc) > max_chars and (shards or current):
            break
        current.append(doc)
        size += len(doc)
        total += len(doc)
        if size >= shard_chars:
            shards.append(current)
            current, size = [], 0
    if current:
        shards.append(current)
    return shards


def build_local_corpus(src: DataSource, out: Path, num_shards: int | None, max_chars: int | None,
                       shard_chars: int, text_field: str | None = None) -> list[Path]:
    """Write the embedded corpus as shards. The validation shard's index follows the whole corpus,
    not -n, and the data dir ends up holding exactly this run's shards (stale ones are removed)."""
    if shard_chars < 1 or (max_chars is not None and max_chars < 1):
        raise DatasetError(f"--shard_chars and --max_chars must be >= 1, got {shard_chars}, {max_chars}")
    train, val, provenance = _jsonl_documents(src, text_field) if src.kind == "jsonl" else _embedded_documents(src.name)
    groups = _group_documents(train, max_chars, shard_chars)
    val = [d for d in val if d and d.strip()]
    if not groups or not val:
        raise DatasetError(f"{src.name}: the corpus has {len(groups)} training shard(s) and {len(val)} validation "
                           "document(s); both must be non-empty")
    src = replace(src, num_total_shards=len(groups) + 1)
    n_train = len(groups) if num_shards is None else min(num_shards, len(groups))
    wanted = {i: groups[i] for i in range(n_train)} | {src.val_index: val}
    manifest = _new_manifest(src, out, "sha256 of the shards as built")
    manifest.update(provenance=provenance, max_chars=max_chars, shard_chars=shard_chars)
    print0(f"{src.name}: writing {n_train} training shard(s) + validation {shard_name(src.val_index)} in {out}")
    for i, docs in wanted.items():
        path = out / shard_name(i)
        rows = write_text_parquet(path, [docs])
        manifest["shards"][path.name] = _record(path, index=i, documents=rows, chars=sum(map(len, docs)))
    keep = {shard_name(i) for i in wanted}
    for stale in out.glob("shard_*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    _write_json(out / MANIFEST, manifest)
    return [out / shard_name(i) for i in sorted(wanted)]
