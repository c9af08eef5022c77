"""Dataloader throughput: tokens/s that TokenLoader delivers on this machine, beside what training eats.

    python dev/bench_dataloader.py                    # 20 MB of text, 10 s per configuration
    python dev/bench_dataloader.py --mb=5 --seconds=3 # quick look

The text is prose from the local Python install (nanochat.embedded_corpus, document lengths much
like FineWeb-Edu's), written as parquet shards of 1,024-document row groups in a temp dir. Two
tokenizers: byte-level (256 ids, the most tokens per byte) and a realistic one: the trained tokenizer
in $NANOCHAT_BASE_DIR/tokenizer if there is one, else a 4,096-id BPE trained here on the same text.
For each tokenizer and batch shape the loader runs (one rank, CPU tensors, endless epochs) for
--seconds after one warm-up batch; "encode only" is the tokenizer's batch encode of the whole text
in the loader's chunks of 128 documents with the same thread count (best of 2): the ceiling against
which the loader's reading, conversion and packing overhead shows. Packing figures: extra <|bos|> share and mid-document share, with that share's floor (the
tokens past the first row of every document longer than a row, which no packing can keep whole).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from nanochat.common import get_base_dir  # noqa: E402
from nanochat.config import format_config, parse_args  # noqa: E402
from nanochat.dataloader import TokenLoader  # noqa: E402
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer  # noqa: E402

H100_D20_TOKENS_PER_S = 135_000  # karpathy/nanochat's d20 speedrun log: 1.07-1.09M tokens/s on 8xH100, ~135k per GPU
SHAPES = ((8, 1024), (32, 2048))


@dataclass
class Options:
    mb: float = 20.0  # megabytes of text to generate
    seconds: float = 10.0  # timed run per tokenizer and batch shape
    threads: int | None = None  # tokenizer threads (None = the loader's default: all cores, at most 8)
    buffer_docs: int = 64  # the loader's best-fit buffer
    vocab_size: int = 4096  # of the tokenizer trained here when $NANOCHAT_BASE_DIR/tokenizer has none


def write_shards(directory: str, max_bytes: int) -> tuple[list[str], list[str]]:
    from nanochat.embedded_corpus import iter_documents

    docs = list(iter_documents("prose", max_bytes=max_bytes))
    paths = []
    per_shard = 2048  # two row groups per shard, so the run crosses shard boundaries
    for i in range(0, len(docs), per_shard):
        path = os.path.join(directory, f"shard_{i // per_shard:05d}.parquet")
        pq.write_table(pa.table({"text": docs[i:i + per_shard]}), path, row_group_size=1024, compression="zstd")
        paths.append(path)
    return paths, docs


def realistic_tokenizer(docs: list[str], vocab_size: int) -> tuple[Tokenizer, str]:
    directory = get_base_dir(create=False) / "tokenizer"
    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.load(directory)
        print(f"realistic tokenizer: {directory} ({tok.n_vocab} ids)")
        return tok, f"trained-{tok.n_vocab}"
    t0 = time.perf_counter()
    tok = Tokenizer.train_from_iterator(iter(docs), vocab_size)
    print(f"realistic tokenizer: {tok.n_vocab} ids, trained here in {time.perf_counter() - t0:.1f} s")
    return tok, f"bpe-{tok.n_vocab}"


def measure(paths, tok, B, T, opts) -> dict:
    threads = opts.threads
    with TokenLoader(paths, tok, B, T, rank=0, world_size=1, buffer_docs=opts.buffer_docs,
                     tokenizer_threads=threads) as loader:
        next(loader)  # warm-up: the first fill of the buffer and the queue
        start = loader.packing_stats()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < opts.seconds:
            next(loader)
            n += 1
        elapsed = time.perf_counter() - t0
        stats = loader.packing_stats()
        epochs = loader.epoch
    rows = stats["tokens"] - start["tokens"]
    return {"tok_s": n * B * T / elapsed, "batches": n, "epochs": epochs,
            "bos": (stats["extra_bos"] - start["extra_bos"]) / rows,
            "mid": (stats["remainder_tokens"] - start["remainder_tokens"]) / rows}


def main(opts: Options) -> None:
    print(format_config(opts))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other work skews the figures)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths, docs = write_shards(tmp, int(opts.mb * 1e6))
        n_bytes = sum(len(d.encode()) for d in docs)
        print(f"text: {len(docs)} documents, {n_bytes / 1e6:.1f} MB, {len(paths)} shards "
              f"(built in {time.perf_counter() - t0:.1f} s)")
        byte_tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
        real_tok, real_name = realistic_tokenizer(docs, opts.vocab_size)
        threads = opts.threads or max(1, min(8, os.cpu_count() or 1))
        lines = []
        for name, tok in (("byte-level", byte_tok), (real_name, real_tok)):
            lengths, best = None, float("inf")
            for _ in range(2):  # best of 2, in the loader's chunks of 128 documents
                t0 = time.perf_counter()
                lengths = np.array([len(ids) for k in range(0, len(docs), 128)
                                    for ids in tok.encode(docs[k:k + 128], prepend="<|bos|>", num_threads=threads)])
                best = min(best, time.perf_counter() - t0)
            encode_s = lengths.sum() / best
            print(f"\n{name}: {lengths.sum() / 1e6:.1f} M tokens, {n_bytes / lengths.sum():.2f} bytes/token; "
                  f"encode only ({threads} threads): {encode_s:,.0f} tokens/s")
            for B, T in SHAPES:
                r = measure(paths, tok, B, T, opts)
                floor = np.maximum(0, lengths - (T + 1)).sum() / lengths.sum()
                line = (f"{name:<12} {B:>2} x {T:<4}  {r['tok_s']:>12,.0f}  {r['tok_s'] / encode_s:>6.0%}  "
                        f"{r['tok_s'] / H100_D20_TOKENS_PER_S:>7.1f}x  {r['bos']:>8.3%}  {r['mid']:>6.1%} ({floor:.1%})")
                print(line, f" [{r['batches']} batches, reached epoch {r['epochs']}]")
                lines.append(line)
    print("\ntokenizer    B x T         loader tok/s  of enc  vs H100  xtra bos  mid-doc (floor)")
    print("\n".join(lines))
    print(f"reference: d20 on one H100 consumes ~{H100_D20_TOKENS_PER_S:,} tokens/s (8xH100: 1.07-1.09M)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(parse_args(Options, description=__doc__))
