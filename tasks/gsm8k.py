"""GSM8K grade-school math, with the answers' calculator annotations turned into tool calls.

A GSM8K answer reads "She sold 48/2 = <<48/2=24>>24 clips ...\n#### 72". Each <<expr=result>>
becomes a python part (expr) and a python_output part (what nanochat.calculator really returns),
so the model learns to call the tool; the final answer stays after "####". Loaded from a local
JSONL or parquet file with `question` and `answer` columns (openai/gsm8k's schema).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nanochat.calculator import CalcError
from nanochat.calculator import evaluate as calculate
from tasks.common import Task, assistant_text, extract_final_number, numbers_equal

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


def _agrees(output: str, stated: str) -> bool:
    # the calculator prints 48/2 as "24.0" and rounds floats to 10 significant digits, while the
    # annotation says "24" or gives more digits: compare as numbers with a relative tolerance
    try:
        a, b = float(output), float(stated.replace(",", ""))
    except ValueError:
        return output.strip() == stated.strip()
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def answer_to_parts(answer: str) -> list[dict]:
    """The assistant parts of a GSM8K answer.

    An annotation whose expression the calculator refuses, or whose result disagrees with the
    annotation's (a few GSM8K annotations are wrong), is dropped rather than converted: the model is
    never shown a tool call whose output contradicts the text around it. The answer's text itself
    (which repeats each result after ">>") is kept whole either way.
    """
    parts: list[dict] = []

    def text(t: str) -> None:
        if not t:
            return  # the tokenizer refuses empty text parts; adjacent text parts are merged
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += t
        else:
            parts.append({"type": "text", "text": t})

    pos = 0
    for m in _ANNOTATION.finditer(answer):
        text(answer[pos:m.start()])
        pos = m.end()
        expr, stated = m.group(1).strip(), m.group(2)
        try:
            output = calculate(expr) if expr else None
        except CalcError:
            output = None
        if output is not None and _agrees(output, stated):
            parts += [{"type": "python", "text": expr}, {"type": "python_output", "text": output}]
    text(answer[pos:])
    return parts


def convert(question: str, answer: str) -> dict:
    """One GSM8K row as a conversation."""
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer_to_parts(answer)}]}


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # imported here: only parquet inputs need it

        rows = pq.read_table(path, columns=["question", "answer"]).to_pylist()
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) \
                or not isinstance(row.get("answer"), str):
            raise ValueError(f"{path}: row {i + 1} needs str 'question' and 'answer' fields")
    return rows


class GSM8K(Task):
    """GSM8K rows from a local .jsonl or .parquet file, converted when read."""

    eval_type = "generative"

    def __init__(self, path: str | Path, **kwargs):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GSM8K file {self.path} not found: pass a local .jsonl or .parquet "
                                    "with 'question' and 'answer' columns (openai/gsm8k)")
        self.rows = _read_rows(self.path)
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return convert(row["question"], row["answer"])

    def evaluate(self, conversation: dict, completion: str) -> bool:
        expected = extract_final_number(assistant_text(conversation))
        return numbers_equal(extract_final_number(completion), expected)

    def reward(self, conversation: dict, completion: str) -> float:
        # binary for now: partial credit (e.g. for a well-formed tool call) would be easy to game
        return float(self.evaluate(conversation, completion))


def load_gsm8k(split: str = "train", **kwargs) -> GSM8K:
    """GSM8K from the chat-data registry (split "train" | "test"); FileNotFoundError with the fetch
    command if it is not downloaded (python -m tasks.sources --dataset=gsm8k --split=<split>)."""
    from tasks.sources import require  # the registry is only needed by this loader

    (path,) = require("gsm8k", split)
    return GSM8K(path, **kwargs)
