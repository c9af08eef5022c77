"""Evaluate the trained tokenizer: compression (bytes per token) on English, Korean, code and math.

    python -m scripts.tok_eval
    python -m scripts.tok_eval --baseline_dir=~/.cache/nanochat/tokenizer   # another tokenizer beside ours

Then English and Korean side by side, per tokenizer (all English samples together, all Korean ones
together). korean-heldout is the konlpy document that `embedded-ko` leaves out of training (and that
nanochat.dataset validates on), so a tokenizer trained with --corpus=embedded-ko has not seen it.

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
# Varied Korean prose (news, explanation, conversation in polite and casual speech, a recipe), written
# for this project: the konlpy texts are laws and bills, so their held-out document flatters any
# tokenizer trained on them (shared templates); this one does not.
KOREAN_PROSE = (
    "지난주 서울 시내의 한 도서관에서 어린이를 위한 과학 강연이 열렸다. 강연을 맡은 연구원은 별이 어떻게 "
    "태어나고 사라지는지를 그림과 함께 설명했고, 아이들은 끝날 때까지 손을 들어 질문을 이어 갔다.\n\n"
    "물은 섭씨 100도에서 끓지만, 높은 산 위에서는 기압이 낮아서 더 낮은 온도에서 끓는다. 그래서 산에서 "
    "밥을 지으면 쌀이 잘 익지 않는 경우가 많다. 압력솥은 이 원리를 거꾸로 이용한 도구이다.\n\n"
    "\"혹시 이 근처에 우체국이 있나요?\" \"네, 저 신호등을 건너서 오른쪽으로 조금만 가시면 보여요.\" "
    "\"감사합니다. 오늘 안에 소포를 꼭 보내야 해서요.\"\n\n"
    "야, 내일 시간 있어? 저녁에 같이 영화 보러 가자. 네가 보고 싶다던 그 영화, 이번 주까지만 한대. "
    "표는 내가 미리 예매해 둘게.\n\n"
    "김치찌개를 끓이려면 먼저 돼지고기를 냄비에 볶다가 잘 익은 김치를 넣고 함께 볶는다. 물을 붓고 "
    "끓어오르면 두부와 대파를 넣고, 마지막으로 간을 본 뒤 불을 끈다.\n\n"
    "회사는 올해 하반기에 새로운 서비스를 출시할 계획이라고 밝혔다. 다만 구체적인 가격과 출시 날짜는 "
    "아직 정해지지 않았으며, 다음 달 설명회에서 자세한 내용을 공개할 예정이다."
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
    baseline_dir: str | None = None  # a second tokenizer measured beside ours, e.g. the English one (None = none)


LANGUAGES = {"English": ("english", "english-docs"), "Korean": ("korean", "korean-prose", "korean-heldout")}


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

    samples = {"english": ENGLISH_SAMPLE, "korean": KOREAN_SAMPLE, "korean-prose": KOREAN_PROSE, "code": CODE_SAMPLE,
               "math": MATH_SAMPLE}
    try:
        from nanochat import embedded_corpus

        val = "\n\n".join(embedded_corpus.build_corpus().val)
        if val:
            samples["english-docs"] = val[:max_chars]
        from nanochat.local_corpus import _hash_split

        docs = embedded_corpus.korean_documents()
        if docs:  # the validation side of embedded-ko: never trained on
            samples["korean-heldout"] = "\n\n".join(_hash_split(docs)[1])[:max_chars]
    except Exception as e:  # the inline samples still give a useful evaluation
        print0(f"note: local document samples unavailable ({e})")
    import json.decoder

    samples["code-stdlib"] = inspect.getsource(json.decoder)[:max_chars]
    return samples


class _Ordinary:
    """A nanochat Tokenizer behind the encode_ordinary of tiktoken's encodings."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode_ordinary(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)


def side_by_side(rows: list[dict], labels: list[str]) -> dict[str, dict[str, float]]:
    """{tokenizer: {language: bytes per token over that language's samples}}, printed as one table."""
    table: dict[str, dict[str, float]] = {}
    for lab in labels:
        table[lab] = {}
        for language, names in LANGUAGES.items():
            picked = [row for row in rows if row["sample"] in names]
            n_tokens = sum(row[lab] for row in picked)
            table[lab][language] = round(sum(row["bytes"] for row in picked) / max(n_tokens, 1), 3)
    print0("bytes per token, side by side:")
    print0(f"{'':<15}" + "".join(f"{language:>12}" for language in LANGUAGES))
    for lab, ratios in table.items():
        print0(f"{lab:<15}" + "".join(f"{ratios[language]:>12.2f}" for language in LANGUAGES))
    return table


def evaluate(opts: Options) -> dict:
    from nanochat.tokenizer import Tokenizer

    tok_dir = Path(opts.tokenizer_dir) if opts.tokenizer_dir else get_base_dir() / "tokenizer"
    tokenizer = Tokenizer.load(tok_dir)
    references, missing = load_reference_encodings(opts.reference_timeout)
    if opts.baseline_dir is not None:
        baseline = Tokenizer.load(Path(opts.baseline_dir).expanduser())
        references = {"baseline": _Ordinary(baseline), **references}
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
    header = f"{'sample':<15}{'bytes':>11}" + "".join(f"{lab + ' tok':>15}{lab + ' B/tok':>15}" for lab in labels)
    print0(f"tokenizer: {tok_dir} (vocab {tokenizer.n_vocab})")
    print0(header)
    for row in rows:
        line = f"{row['sample']:<15}{row['bytes']:>11,}"
        for lab in labels:
            line += f"{row[lab]:>15,}{row['bytes'] / max(row[lab], 1):>15.2f}"
        print0(line)
    languages = side_by_side(rows, labels)
    result = {"tokenizer_dir": str(tok_dir), "n_vocab": tokenizer.n_vocab, "rows": rows, "missing": missing,
              "languages": languages}
    write_json_atomic(tok_dir / "eval.json", result)
    ratios = {row["sample"]: {"bytes": row["bytes"], **{f"{lab} B/tok": round(row["bytes"] / max(row[lab], 1), 3)
                                                         for lab in labels}} for row in rows}
    log_section(SECTION_TOK_EVAL, {"tokenizer": str(tok_dir), "vocab_size": tokenizer.n_vocab, "bytes_per_token": ratios,
                                   "languages": languages},
                notes=[f"{label} encoding not available ({why})" for label, why in missing.items()])
    return result


if __name__ == "__main__":
    setup_logging()
    run_main(evaluate, parse_args(Options, prog="python -m scripts.tok_eval", description=__doc__))
