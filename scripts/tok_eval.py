"""Evaluate the trained tokenizer: compression (bytes per token) on English, Korean, code and math.

    python -m scripts.tok_eval

Compares with GPT-2 and GPT-4 (cl100k) encodings only where tiktoken can load them (they are
downloaded on first use and cached); offline it says so and goes on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import get_base_dir, print0, run_main, setup_logging, write_json_atomic
from nanochat.config import parse_args
from nanochat.report import SECTION_TOK_EVAL, log_section

# Short samples written for this project; the larger English/Korean/code samples are read from the
# local install at run time (embedded corpus validation documents, konlpy texts, stdlib source).
ENGLISH_SAMPLE = (
    "The tide came in slowly that evening, and the fishermen pulled their boats higher onto the sand. "
    "Nobody expected the storm the radio had promised; the sky stayed a calm, washed-out blue until well "
    "after nine o'clock, when the first gusts rattled the shutters of the harbour office."
)
KOREAN_SAMPLE = (
    "오늘 아침에는 비가 조금 내렸지만, 오후가 되자 하늘이 맑게 개었다. 우리는 강가를 따라 천천히 걸으며 "
    "지난 여름에 함께 읽었던 책 이야기를 나누었다. 작은 모델도 한국어를 잘 배울 수 있을까?"
)
CODE_SAMPLE = '''def moving_average(values, window=3):
    """Return the running mean of `values` over `window` items."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    total, out = 0.0, []
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
'''
MATH_SAMPLE = (
    "Let f(x) = 3x^2 - 12x + 7. Then f'(x) = 6x - 12, so the minimum is at x = 2 and f(2) = -5. "
    "Check: 3*4 - 24 + 7 = -5. In LaTeX: \\int_0^1 x^2 \\, dx = \\frac{1}{3}, and "
    "\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}; for n = 100 that is 5050. 17 * 23 = 391, 2^10 = 1024."
)


@dataclass
class Options:
    tokenizer_dir: str | None = None  # tokenizer to evaluate (None = $NANOCHAT_BASE_DIR/tokenizer)
    max_doc_chars: int = 2_000_000  # characters of each large local sample to measure
    reference_timeout: float = 15.0  # seconds to wait for tiktoken to load GPT-2/GPT-4 before skipping them


def load_reference_encodings(timeout: float) -> tuple[dict, dict]:
    """GPT-2 and cl100k encodings where tiktoken can load them; {name: reason} for the rest.

    Loading runs in a daemon thread so a network that swallows packets cannot hang the script.
    """
    import tiktoken

    loaded, missing = {}, {}
    for label, name in (("gpt2", "gpt2"), ("gpt4", "cl100k_base")):
        result: dict = {}

        def load(name=name, result=result):
            try:
                result["enc"] = tiktoken.get_encoding(name)
            except Exception as e:  # offline: connection errors of several kinds
                result["err"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        thread.join(timeout)
        if "enc" in result:
            loaded[label] = result["enc"]
        else:
            missing[label] = result.get("err", f"no answer within {timeout:.0f}s")
    return loaded, missing


def local_samples(max_chars: int) -> dict[str, str]:
    """Samples from the local install: bigger than the inline ones, never committed to the repo."""
    import inspect

    samples = {"english": ENGLISH_SAMPLE, "korean": KOREAN_SAMPLE, "code": CODE_SAMPLE, "math": MATH_SAMPLE}
    try:
        from nanochat import embedded_corpus

        val = "\n\n".join(embedded_corpus.build_corpus().val)
        if val:
            samples["english-docs"] = val[:max_chars]
        ko = "\n\n".join(embedded_corpus.korean_documents())
        if ko:
            samples["korean-konlpy"] = ko[:max_chars]
    except Exception as e:  # the inline samples still give a useful evaluation
        print0(f"note: local document samples unavailable ({e})")
    import json.decoder

    samples["code-stdlib"] = inspect.getsource(json.decoder)[:max_chars]
    return samples


def evaluate(opts: Options) -> dict:
    from nanochat.tokenizer import Tokenizer

    tok_dir = Path(opts.tokenizer_dir) if opts.tokenizer_dir else get_base_dir() / "tokenizer"
    tokenizer = Tokenizer.load(tok_dir)
    references, missing = load_reference_encodings(opts.reference_timeout)
    for label, why in missing.items():
        print0(f"note: {label} encoding not available ({why}); comparing with ours only")
    samples = local_samples(opts.max_doc_chars)

    rows = []
    for name, text in samples.items():
        n_bytes = len(text.encode("utf-8"))
        row = {"sample": name, "bytes": n_bytes, "ours": len(tokenizer.encode(text))}
        for label, enc in references.items():
            row[label] = len(enc.encode_ordinary(text))
        rows.append(row)

    labels = ["ours", *references]
    header = f"{'sample':<15}{'bytes':>11}" + "".join(f"{lab + ' tok':>12}{lab + ' B/tok':>12}" for lab in labels)
    print0(f"tokenizer: {tok_dir} (vocab {tokenizer.n_vocab})")
    print0(header)
    for row in rows:
        line = f"{row['sample']:<15}{row['bytes']:>11,}"
        for lab in labels:
            line += f"{row[lab]:>12,}{row['bytes'] / max(row[lab], 1):>12.2f}"
        print0(line)
    result = {"tokenizer_dir": str(tok_dir), "n_vocab": tokenizer.n_vocab, "rows": rows, "missing": missing}
    write_json_atomic(tok_dir / "eval.json", result)
    ratios = {row["sample"]: {"bytes": row["bytes"], **{f"{lab} B/tok": round(row["bytes"] / max(row[lab], 1), 3)
                                                         for lab in labels}} for row in rows}
    log_section(SECTION_TOK_EVAL, {"tokenizer": str(tok_dir), "vocab_size": tokenizer.n_vocab, "bytes_per_token": ratios},
                notes=[f"{label} encoding not available ({why})" for label, why in missing.items()])
    return result


if __name__ == "__main__":
    setup_logging()
    run_main(evaluate, parse_args(Options, prog="python -m scripts.tok_eval", description=__doc__))
