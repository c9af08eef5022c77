"""KMMLU (HAERAE-HUB/KMMLU; Son et al. 2024, arXiv:2402.11548): 45 subjects of Korean exam questions with
four choices, as a categorical multiple-choice task for chat evaluation, in the same format as MMLU
(tasks/mmlu.py: the render_mc prompt, the letter as the reference answer, the letters' logits compared).

The hub's files are CSVs, data/<Subject>-<split>.csv, with columns question, A, B, C, D, answer (1-4
for A-D; the harness's target is answer - 1), Category and Human Accuracy. Splits: dev (5 per subject)
and test. Fetch first: python -m tasks.sources --dataset=kmmlu --split=test
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import Task
from tasks.mmlu import letter_matches, mc_conversation
from tasks.sources import KMMLU_SUBJECTS, read_rows, require

LETTERS = ["A", "B", "C", "D"]


def _answer(value: object) -> int:
    """The 0-based index of KMMLU's 1-4 answer (an int in parquet, a string in the CSVs)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 4:
        raise ValueError(f"answer must be 1-4, got {value!r}")
    return int(text) - 1


class KMMLU(Task):
    """The questions of KMMLU's `split` (test | dev), all subjects or those named in `subjects`."""

    eval_type = "categorical"

    def __init__(self, split: str = "test", subjects: tuple[str, ...] | None = None, *,
                 paths: list[str | Path] | None = None, **kwargs):
        if split not in ("test", "dev"):
            raise ValueError(f"KMMLU split must be test or dev, got {split!r}")
        unknown = sorted(set(subjects or ()) - set(KMMLU_SUBJECTS))
        if unknown:
            raise ValueError(f"unknown KMMLU subject(s) {', '.join(unknown)}; subjects: {', '.join(KMMLU_SUBJECTS)}")
        files = [Path(p) for p in paths] if paths is not None else require("kmmlu", split)
        if subjects and paths is None:  # the registry's files are named <Subject>-<split>.csv
            files = [f for f in files if f.name.rsplit("-", 1)[0] in subjects]
        self.rows = []
        for i, row in enumerate(read_rows(files)):
            try:
                choices = [str(row[letter]).strip() for letter in LETTERS]
                answer = _answer(row["answer"])
                question = str(row["question"]).strip()
            except (KeyError, ValueError) as e:
                raise ValueError(f"KMMLU {split} row {i + 1}: {e} (columns: question, A, B, C, D, answer)") from None
            self.rows.append({"question": question, "choices": choices, "answer": answer,
                              "category": str(row.get("Category") or "")})
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return mc_conversation(row["question"], row["choices"], LETTERS[row["answer"]], LETTERS,
                               subject=row["category"])

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return letter_matches(conversation, completion)
