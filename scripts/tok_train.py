"""Train the BPE tokenizer (Rust trainer, tiktoken encoder) and save it under the base dir.

    python -m scripts.tok_train                              # embedded offline corpus, vocab 65536
    python -m scripts.tok_train --vocab_size=4096            # small vocab for a CPU-sized model
    python -m scripts.tok_train --corpus=/path/to/shards     # a folder of parquet shards / .txt files
    python -m scripts.tok_train --corpus=embedded-ko --pattern=korean --mix_corpus=embedded --mix_share=0.2
                                                             # Korean, with a fifth English prose and code

A mixed run reads --corpus first, up to (1 - mix_share) x max_chars characters, then --mix_corpus for
exactly mix_share of all characters read (fewer if --corpus ran out first, so the share holds; the
order is irrelevant to BPE, whose merges depend only on the counts of the pieces).

The tokenizer lands in $NANOCHAT_BASE_DIR/tokenizer/tokenizer.json (see nanochat/tokenizer.py for
the format) with train_meta.json beside it (what it was trained on, how long it took).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nanochat.common import get_base_dir, print0, run_main, setup_logging, write_json_atomic
from nanochat.config import format_config, parse_args, to_dict
from nanochat.report import SECTION_TOK_TRAIN, log_section
from nanochat.text_sources import iter_texts


@dataclass
class Options:
    vocab_size: int = 65536  # total vocabulary, the 9 special tokens included
    max_chars: int = 2_000_000_000  # stop reading the corpus after this many characters
    doc_cap: int | None = 10_000  # characters kept from the start of each document (None = whole documents)
    corpus: str = "embedded"  # embedded | embedded-ko | a corpus of nanochat.dataset | .parquet / .txt / .jsonl files or a folder
    pattern: Literal["default", "korean"] = "default"  # split pattern: GPT-4 style, or korean (Hangul runs apart from other letters)
    mix_corpus: str | None = None  # a second corpus mixed in, same kinds as --corpus (None = --corpus alone)
    mix_share: float = 0.2  # share of all characters read that come from --mix_corpus (when one is given)
    num_threads: int | None = None  # trainer threads (None = all cores)
    out_dir: str | None = None  # where to write the tokenizer (None = $NANOCHAT_BASE_DIR/tokenizer)
    text_field: str | None = None  # .jsonl corpora: the field holding each document (None = $NANOCHAT_TEXT_FIELD or text)

    def __post_init__(self):
        if self.vocab_size < 256 + 9 + 1:
            raise ValueError(f"--vocab_size must be at least 266 (256 bytes + 9 special tokens + 1), got {self.vocab_size}")
        if self.max_chars <= 0:
            raise ValueError(f"--max_chars must be positive, got {self.max_chars}")
        if self.doc_cap is not None and self.doc_cap < 1:
            raise ValueError(f"--doc_cap must be >= 1 (or none for whole documents), got {self.doc_cap}")
        if not 0 < self.mix_share < 1:
            raise ValueError(f"--mix_share must be between 0 and 1 (exclusive), got {self.mix_share}")
        if self.mix_corpus is not None and self.mix_corpus == self.corpus:
            raise ValueError("--mix_corpus names the same corpus as --corpus; give another one, or none")


@dataclass
class Counts:
    """What the trainer was given: documents and characters in all, characters per corpus."""

    docs: int = 0
    chars: int = 0
    by_corpus: dict[str, int] = field(default_factory=dict)

    def count(self, texts: Iterator[str], corpus: str) -> Iterator[str]:
        self.by_corpus.setdefault(corpus, 0)
        for text in texts:
            self.docs += 1
            self.chars += len(text)
            self.by_corpus[corpus] += len(text)
            yield text


def training_texts(opts: Options, counts: Counts) -> Iterator[str]:
    """The documents to train on: --corpus alone, or --corpus then --mix_corpus at --mix_share of the characters."""

    def read(corpus: str, budget: int) -> Iterator[str]:
        texts = iter_texts(corpus, max_chars=budget, doc_cap=opts.doc_cap, text_field=opts.text_field)
        return counts.count(texts, corpus)

    if opts.mix_corpus is None:
        yield from read(opts.corpus, opts.max_chars)
        return
    main_budget = round(opts.max_chars * (1 - opts.mix_share))
    yield from read(opts.corpus, main_budget)
    main = counts.by_corpus[opts.corpus]
    if main == 0:
        return  # main() reports the empty corpus
    # --corpus ran out before its budget: scale the mix down so that it stays mix_share of the whole
    mix_budget = opts.max_chars - main_budget if main == main_budget else round(main * opts.mix_share / (1 - opts.mix_share))
    yield from read(opts.mix_corpus, mix_budget)
    if counts.by_corpus[opts.mix_corpus] < mix_budget:
        print0(f"warning: --mix_corpus {opts.mix_corpus} gave {counts.by_corpus[opts.mix_corpus]:,} characters of the "
               f"{mix_budget:,} wanted; its share is {counts.by_corpus[opts.mix_corpus] / counts.chars:.3f}, "
               f"not {opts.mix_share}")


def main(opts: Options) -> Path:
    from nanochat.tokenizer import PATTERNS, Tokenizer

    print0(format_config(opts))
    out_dir = Path(opts.out_dir) if opts.out_dir else get_base_dir() / "tokenizer"
    counts = Counts()
    t0 = time.perf_counter()
    tokenizer = Tokenizer.train_from_iterator(
        training_texts(opts, counts), opts.vocab_size, pattern=PATTERNS[opts.pattern], doc_cap=opts.doc_cap,
        num_threads=opts.num_threads
    )
    seconds = time.perf_counter() - t0
    counter = {"docs": counts.docs, "chars": counts.chars}
    if counter["docs"] == 0:
        raise SystemExit(f"error: corpus {opts.corpus!r} yielded no documents; nothing to train on")
    tokenizer.save(out_dir)
    meta = {
        "options": to_dict(opts),
        "documents": counter["docs"],
        "characters": counter["chars"],
        "seconds": round(seconds, 3),
        "characters_by_corpus": counts.by_corpus,
        "n_vocab": tokenizer.n_vocab,
    }
    write_json_atomic(out_dir / "train_meta.json", meta)
    rate = counter["chars"] / max(seconds, 1e-9) / 1e6
    print0(
        f"trained vocab {tokenizer.n_vocab} on {counter['docs']:,} documents, {counter['chars']:,} chars "
        f"in {seconds:.1f}s, reading the source included ({rate:.2f} M chars/s)"
    )
    if opts.mix_corpus is not None:
        print0("characters by corpus: " + ", ".join(
            f"{name} {n:,} ({n / max(counts.chars, 1):.1%})" for name, n in counts.by_corpus.items()))
    if tokenizer.n_vocab < opts.vocab_size:
        print0(f"note: the corpus ran out of pairs; vocabulary is {tokenizer.n_vocab}, not {opts.vocab_size}")
    print0(f"saved to {out_dir}")
    log_section(SECTION_TOK_TRAIN, {
        "vocab_size": tokenizer.n_vocab, "requested_vocab_size": opts.vocab_size, "corpus": opts.corpus,
        "pattern": opts.pattern, "characters_by_corpus": counts.by_corpus,
        "doc_cap": opts.doc_cap, "documents": counter["docs"], "characters": counter["chars"],
        "train_seconds": round(seconds, 3), "M_chars_per_s": round(rate, 3),
    })
    return out_dir


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.tok_train", description=__doc__))
