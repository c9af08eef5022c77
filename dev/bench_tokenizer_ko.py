"""Korean tokenizer benchmark: split patterns, vocabulary sizes and the English share, offline.

    uv pip install konlpy                      # the Korean texts (laws and bills) in its wheel
    python dev/bench_tokenizer_ko.py           # about a minute on 2 cores
    python dev/bench_tokenizer_ko.py --vocab_sizes=4096 --shares=0.2

Every tokenizer is trained with nanochat's Rust trainer on the training side of `embedded-ko`
(the konlpy documents less the one held out, as `tok_train --corpus=embedded-ko` reads them) plus a
share of English prose and code from the embedded corpus (as `--mix_corpus=embedded --mix_share=S`
mixes them: the English characters are S of the whole). Bytes per token are measured on text no
tokenizer was trained on:

- ko-heldout: the held-out konlpy document (a bill; it shares the template of the training bills,
  so it flatters every tokenizer trained on them);
- ko-prose: tok_eval's Korean samples, varied everyday prose written for this project;
- ko-mixed: Korean technical prose with English names in it (code-switching), written here;
- en-docs: the validation documents of the embedded English corpus.

Table 1 compares split patterns (scripts/tok_train --pattern, plus two rejected candidates) at
several vocabulary sizes; "vocab" is what the trainer reached (it stops when no pair repeats, so
past that size more vocabulary means nothing with this data). Table 2 varies the English share at
one pattern and compares English with an English-only tokenizer of the same vocabulary trained on
the same number of characters, and on 2M characters. The first row of each table is the English
tokenizer (`tok_train` defaults, 2M characters of the embedded corpus) on the same samples.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanochat.config import parse_args  # noqa: E402
from nanochat.tokenizer import KOREAN_SPLIT_PATTERN, SPLIT_PATTERN, Tokenizer  # noqa: E402

# Candidates that were measured and not chosen (see the module docstring of nanochat/tokenizer.py):
# common particles cut off the end of a Hangul word ("학교에서" -> "학교", "에서"; also cuts "회의"
# into "회", "의", which is not a particle), and every Hangul syllable a piece of its own (at most
# 3 bytes of Hangul per token, so it can never reach 3 bytes per token on Korean).
_PARTICLES = "(?:에서|에게|께서|한테|부터|까지|보다|처럼|으로|이나|이랑|은|는|이|가|을|를|의|에|께|로|와|과|도|만|랑)"
_TAIL = r"|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
PATTERNS = {
    "default": SPLIT_PATTERN,
    "korean": KOREAN_SPLIT_PATTERN,
    "particles": (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{Hangul}+?(?=" + _PARTICLES + r"(?!\p{Hangul}))|"
                  + _PARTICLES + r"(?!\p{Hangul})|[^\r\n\p{L}\p{N}]?+\p{Hangul}+|[^\r\n\p{L}\p{N}]?+[^\P{L}\p{Hangul}]+"
                  + _TAIL),
    "syllable": r"'(?i:[sdmt]|ll|ve|re)| ?\p{Hangul}|[^\r\n\p{L}\p{N}]?+[^\P{L}\p{Hangul}]+" + _TAIL,
}
KO_MIXED = (
    "이 함수는 Python으로 작성했고, 소스는 GitHub에 올려 두었습니다. pandas의 DataFrame을 쓰면 CSV 파일을 "
    "한 줄로 읽을 수 있어요. API 서버는 FastAPI로 만들고 Docker 이미지로 배포했는데, 테스트는 pytest로 "
    "돌립니다. 모델은 PyTorch로 학습했고 GPU가 없으면 CPU에서도 천천히 돌아가요. 자세한 내용은 README를 "
    "참고하세요. JSON 형식의 설정 파일에서 batch_size와 learning_rate를 바꿀 수 있습니다."
)
DOC_CAP = 10_000  # tok_train's default --doc_cap
ENGLISH_CHARS = 2_000_000  # the English tokenizer's training text


@dataclass
class Options:
    vocab_sizes: str = "1024,2048,4096,8192,16384"  # table 1: comma-separated vocabulary sizes
    shares: str = "0,0.2,0.5,0.8"  # table 2: English shares of the mixed training text
    share: float = 0.2  # table 1: the English share every pattern is trained with
    table2_vocab_size: int = 4096  # table 2's vocabulary size
    num_threads: int | None = 1  # trainer threads (None = all cores)


def take(docs: list[str], max_chars: int) -> list[str]:
    """Documents capped at DOC_CAP characters, up to max_chars in all (the last one cut), as iter_texts does."""
    out, total = [], 0
    for doc in docs:
        doc = doc[:DOC_CAP]
        if total + len(doc) > max_chars:
            if max_chars > total:
                out.append(doc[: max_chars - total])
            break
        out.append(doc)
        total += len(doc)
    return out


def mixed(korean: list[str], english: list[str], share: float) -> list[str]:
    """All Korean training documents plus English for `share` of the characters (tok_train's rule
    when --corpus runs out before --max_chars)."""
    ko_chars = sum(len(d[:DOC_CAP]) for d in korean)
    return take(korean, ko_chars) + (take(english, round(ko_chars * share / (1 - share))) if share else [])


def bytes_per_token(tok: Tokenizer, text: str) -> float:
    return len(text.encode()) / max(len(tok.encode(text)), 1)


def measure(tok: Tokenizer, samples: dict[str, str]) -> dict[str, float]:
    return {name: bytes_per_token(tok, text) for name, text in samples.items()}


def train(docs: list[str], vocab_size: int, pattern: str, opts: Options) -> Tokenizer:
    return Tokenizer.train_from_iterator(docs, vocab_size, pattern=pattern, num_threads=opts.num_threads)


def row(label: str, vocab: int, ratios: dict[str, float]) -> str:
    return f"{label:<28}{vocab:>7}" + "".join(f"{v:>12.2f}" for v in ratios.values())


def main(opts: Options) -> None:
    from nanochat import embedded_corpus
    from nanochat.local_corpus import _hash_split
    from scripts.tok_eval import KOREAN_PROSE, KOREAN_SAMPLE

    logging.disable(logging.WARNING)  # "ran out of pairs" is expected here; the vocab column shows it
    docs = embedded_corpus.korean_documents()
    if not docs:
        raise SystemExit("error: the Korean texts come from the konlpy wheel: uv pip install konlpy")
    korean, heldout = _hash_split(docs)
    corpus = embedded_corpus.build_corpus()
    samples = {"ko-heldout": "\n\n".join(heldout), "ko-prose": KOREAN_SAMPLE + "\n\n" + KOREAN_PROSE,
               "ko-mixed": KO_MIXED, "en-docs": "\n\n".join(corpus.val)}
    ko_chars = sum(len(d[:DOC_CAP]) for d in korean)
    print(f"Korean training text: {len(korean)} konlpy documents, {ko_chars:,} characters, "
          f"{sum(len(d.encode()) for d in korean):,} bytes")
    print("held-out samples (bytes): " + ", ".join(f"{k} {len(v.encode()):,}" for k, v in samples.items()))
    header = f"{'tokenizer':<28}{'vocab':>7}" + "".join(f"{k:>12}" for k in samples)
    sizes = [int(v) for v in opts.vocab_sizes.split(",") if v.strip()]
    english_tok = {}

    def english(vocab_size: int) -> Tokenizer:
        if vocab_size not in english_tok:
            english_tok[vocab_size] = train(take(corpus.train, ENGLISH_CHARS), vocab_size, SPLIT_PATTERN, opts)
        return english_tok[vocab_size]

    t0 = time.perf_counter()
    print(f"\nTable 1: bytes per token by split pattern, trained on Korean + {opts.share:.0%} English")
    print(header)
    for vocab_size in sizes:
        en = english(vocab_size)
        print(row(f"english-only {vocab_size}", en.n_vocab, measure(en, samples)))
        for name, pattern in PATTERNS.items():
            tok = train(mixed(korean, corpus.train, opts.share), vocab_size, pattern, opts)
            print(row(f"{name} {vocab_size}", tok.n_vocab, measure(tok, samples)), flush=True)

    vocab_size = opts.table2_vocab_size
    print(f"\nTable 2: English share, pattern korean, vocab {vocab_size}; 'en loss' is en-docs against the "
          "English-only tokenizer trained on the same number of characters")
    print(header + f"{'en loss':>12}")
    en = english(vocab_size)
    print(row("english-only 2M chars", en.n_vocab, measure(en, samples)))
    for share in (float(s) for s in opts.shares.split(",") if s.strip()):
        docs_mixed = mixed(korean, corpus.train, share)
        total = sum(map(len, docs_mixed))
        tok = train(docs_mixed, vocab_size, KOREAN_SPLIT_PATTERN, opts)
        same = train(take(corpus.train, total), vocab_size, SPLIT_PATTERN, opts)
        ratios = measure(tok, samples)
        loss = 1 - ratios["en-docs"] / bytes_per_token(same, samples["en-docs"])
        print(row(f"korean share {share:g} ({total // 1000}K ch)", tok.n_vocab, ratios) + f"{loss:>12.1%}")
        print(row(f"  english-only {total // 1000}K ch", same.n_vocab, measure(same, samples)), flush=True)
    print(f"\n{time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main(parse_args(Options, prog="python dev/bench_tokenizer_ko.py", description=__doc__))
