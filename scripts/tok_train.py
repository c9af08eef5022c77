"""Train the BPE tokenizer (Rust trainer, tiktoken encoder) and save it under the base dir.

    python -m scripts.tok_train                              # embedded offline corpus, vocab 65536
    python -m scripts.tok_train --vocab_size=4096            # small vocab for a CPU-sized model
    python -m scripts.tok_train --corpus=/path/to/shards     # a folder of parquet shards / .txt files

The tokenizer lands in $NANOCHAT_BASE_DIR/tokenizer/tokenizer.json (see nanochat/tokenizer.py for
the format) with train_meta.json beside it (what it was trained on, how long it took).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import get_base_dir, print0, run_main, setup_logging, write_json_atomic
from nanochat.config import format_config, parse_args, to_dict
from nanochat.report import SECTION_TOK_TRAIN, log_section
from nanochat.text_sources import iter_texts


@dataclass
class Options:
    vocab_size: int = 65536  # total vocabulary, the 9 special tokens included
    max_chars: int = 2_000_000_000  # stop reading the corpus after this many characters
    doc_cap: int | None = 10_000  # characters kept from the start of each document (None = whole documents)
    corpus: str = "embedded"  # embedded | embedded-ko | a corpus of nanochat.dataset | .parquet / .txt files or a folder
    num_threads: int | None = None  # trainer threads (None = all cores)
    out_dir: str | None = None  # where to write the tokenizer (None = $NANOCHAT_BASE_DIR/tokenizer)

    def __post_init__(self):
        if self.vocab_size < 256 + 9 + 1:
            raise ValueError(f"--vocab_size must be at least 266 (256 bytes + 9 special tokens + 1), got {self.vocab_size}")
        if self.max_chars <= 0:
            raise ValueError(f"--max_chars must be positive, got {self.max_chars}")
        if self.doc_cap is not None and self.doc_cap < 1:
            raise ValueError(f"--doc_cap must be >= 1 (or none for whole documents), got {self.doc_cap}")


def main(opts: Options) -> Path:
    from nanochat.tokenizer import Tokenizer

    print0(format_config(opts))
    out_dir = Path(opts.out_dir) if opts.out_dir else get_base_dir() / "tokenizer"
    counter = {"docs": 0, "chars": 0}

    def texts():
        for text in iter_texts(opts.corpus, max_chars=opts.max_chars, doc_cap=opts.doc_cap):
            counter["docs"] += 1
            counter["chars"] += len(text)
            yield text

    t0 = time.perf_counter()
    tokenizer = Tokenizer.train_from_iterator(
        texts(), opts.vocab_size, doc_cap=opts.doc_cap, num_threads=opts.num_threads
    )
    seconds = time.perf_counter() - t0
    if counter["docs"] == 0:
        raise SystemExit(f"error: corpus {opts.corpus!r} yielded no documents; nothing to train on")
    tokenizer.save(out_dir)
    meta = {
        "options": to_dict(opts),
        "documents": counter["docs"],
        "characters": counter["chars"],
        "seconds": round(seconds, 3),
        "n_vocab": tokenizer.n_vocab,
    }
    write_json_atomic(out_dir / "train_meta.json", meta)
    rate = counter["chars"] / max(seconds, 1e-9) / 1e6
    print0(
        f"trained vocab {tokenizer.n_vocab} on {counter['docs']:,} documents, {counter['chars']:,} chars "
        f"in {seconds:.1f}s, reading the source included ({rate:.2f} M chars/s)"
    )
    if tokenizer.n_vocab < opts.vocab_size:
        print0(f"note: the corpus ran out of pairs; vocabulary is {tokenizer.n_vocab}, not {opts.vocab_size}")
    print0(f"saved to {out_dir}")
    log_section(SECTION_TOK_TRAIN, {
        "vocab_size": tokenizer.n_vocab, "requested_vocab_size": opts.vocab_size, "corpus": opts.corpus,
        "doc_cap": opts.doc_cap, "documents": counter["docs"], "characters": counter["chars"],
        "train_seconds": round(seconds, 3), "M_chars_per_s": round(rate, 3),
    })
    return out_dir


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.tok_train", description=__doc__))
