"""ARC (allenai/ai2_arc), ARC-Easy or ARC-Challenge, as a categorical multiple-choice task in the
render_mc format. A few ARC rows label their choices 1-4 instead of A-D: those become letters by
position, with the answer key mapped the same way. Fetch first:
python -m tasks.sources --dataset=arc --split=ARC-Easy/test
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import Task
from tasks.mmlu import LETTERS, letter_matches, mc_conversation
from tasks.sources import read_rows, require

SUBSETS = ("ARC-Easy", "ARC-Challenge")


def letters_and_answer(labels: list[str], answer_key: str) -> tuple[list[str], str]:
    """Letters for the choices and the answer's letter; numeric labels become A, B, ... by position."""
    if answer_key not in labels:
        raise ValueError(f"answerKey {answer_key!r} is not one of the labels {labels}")
    if all(label.isalpha() for label in labels):
        return list(labels), answer_key
    letters = list(LETTERS[:len(labels)])
    return letters, letters[labels.index(answer_key)]


class ARC(Task):
    """One ARC subset ("ARC-Easy" | "ARC-Challenge") and split ("train" | "validation" | "test")."""

    eval_type = "categorical"

    def __init__(self, subset: str = "ARC-Easy", split: str = "test", *, paths: list[str | Path] | None = None,
                 **kwargs):
        if subset not in SUBSETS:
            raise ValueError(f"ARC subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        self.subset, self.split = subset, split
        files = [Path(p) for p in paths] if paths is not None else require("arc", f"{subset}/{split}")
        self.rows = read_rows(files, ["id", "question", "choices", "answerKey"])
        for row in self.rows:
            choices = row["choices"]
            if not isinstance(choices, dict) or len(choices.get("text") or []) != len(choices.get("label") or []):
                raise ValueError(f"ARC row {row.get('id')}: choices must be {{text: [...], label: [...]}} "
                                 f"of equal length, got {choices!r:.80}")
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        letters, answer = letters_and_answer(row["choices"]["label"], row["answerKey"])
        return mc_conversation(row["question"], row["choices"]["text"], answer, letters, id=row["id"])

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return letter_matches(conversation, completion)
