"""Shard files: the one on-disk form of pretraining text, and the checks that guard it.

A shard is a parquet file with one `text` column, zstd, row groups of ROW_GROUP_DOCS documents
(the FineWeb-Edu layout). Arrow IPC files (FineWeb-2 Korean) are converted to that form on arrival.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from nanochat.common import temp_path
from nanochat.download import DownloadError, validate_parquet

ROW_GROUP_DOCS = 1024  # documents per row group: the FineWeb-Edu layout, so loaders see one form everywhere
LFS_POINTER = b"version https://git-lfs"  # how a Git LFS pointer file starts (~130 bytes of text)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def reject_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise DownloadError(f"{path}: got a Git LFS pointer ({path.stat().st_size} bytes) instead of the data; "
                            "the URL must serve the file itself (/resolve/, not /raw/)")


def check_parquet_shard(path: str | os.PathLike) -> int:
    """download_file validator: a parquet file with a `text` column and >= 1 row (footer read only)."""
    reject_lfs_pointer(Path(path))
    return validate_parquet(path)


def arrow_batches(path: Path) -> Iterator:
    """Record batches of an Arrow IPC file in either format: the stream format first (what HF
    `datasets` writes), falling back to the random-access file format."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
            return
        yield from reader


def text_column(batch, path: Path):
    import pyarrow as pa

    if "text" not in batch.schema.names:
        raise DownloadError(f"{path}: Arrow data lacks a text column (has {batch.schema.names}); wrong source?")
    column = batch.column("text")
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DownloadError(f"{path}: the text column holds {kind}, not strings; wrong source?")
    return column


def check_arrow_shard(path: str | os.PathLike) -> int:
    """download_file validator: read the whole Arrow file (the stream format has no footer, so only a
    full read catches a cut) and count its documents. Returns the row count; raises DownloadError."""
    import pyarrow as pa

    path = Path(path)
    reject_lfs_pointer(path)
    try:
        rows = sum(len(text_column(batch, path)) for batch in arrow_batches(path))
    except (pa.ArrowException, OSError, ValueError) as e:
        reason = str(e).replace("\n", " ")
        raise DownloadError(f"{path}: not a readable Arrow IPC file ({reason}); delete it and download again") from e
    if rows == 0:
        raise DownloadError(f"{path}: Arrow file holds no documents; wrong source?")
    return rows


def write_text_parquet(path: str | os.PathLike, chunks: Iterable) -> int:
    """Write documents to `path` atomically as one `text` column, row groups of ROW_GROUP_DOCS, zstd.

    chunks: lists of str or pyarrow string arrays, in order. Null, empty and whitespace-only
    documents are dropped. Returns the number of documents written; raises DownloadError for none.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = temp_path(path)
    schema = pa.schema([("text", pa.string())])
    pending, held, rows = [], 0, 0

    def emit(writer, arrays, n):
        merged = pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
        writer.write_table(pa.table({"text": merged.slice(0, n)}, schema=schema), row_group_size=ROW_GROUP_DOCS)
        return merged.slice(n)

    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for chunk in chunks:
                array = chunk.cast(pa.string()) if isinstance(chunk, pa.Array) else pa.array(chunk, pa.string())
                keep = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(array), ""), False)
                array = array.filter(keep)
                pending.append(array)
                held += len(array)
                if held >= ROW_GROUP_DOCS:  # only whole row groups, so their size never follows batch sizes
                    full = held // ROW_GROUP_DOCS * ROW_GROUP_DOCS
                    rest = emit(writer, pending, full)
                    pending, held, rows = [rest], len(rest), rows + full
            if held:
                emit(writer, pending, held)
                rows += held
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if rows == 0:
        tmp.unlink()
        raise DownloadError(f"{path}: no non-empty documents to write")
    os.replace(tmp, path)
    return rows


def convert_arrow_to_parquet(src: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Rewrite an Arrow IPC file (stream or file format) as a parquet shard; returns the documents kept."""
    src = Path(src)
    return write_text_parquet(dest, (text_column(b, src) for b in arrow_batches(src)))
