"""MMLU (cais/mmlu) as a categorical multiple-choice task: `all` (test / validation / dev) for
evaluation, `auxiliary_train` for midtraining. The prompt is tasks.common.render_mc; the reference
answer is the letter alone. Fetch first: python -m tasks.sources --dataset=mmlu --split=<split>
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import Task, render_mc
from tasks.sources import read_rows, require

LETTERS = "ABCDEFGHIJ"


def mc_conversation(question: str, choices: list[str], answer: str, letters: list[str], **extra) -> dict:
    """A multiple-choice conversation: render_mc prompt, the letter as the reply, letters kept for
    categorical evaluation (comparing the letters' logits)."""
    return {"messages": [{"role": "user", "content": render_mc(question, letters, choices)},
                         {"role": "assistant", "content": answer}],
            "letters": list(letters), **extra}


def letter_matches(conversation: dict, completion: str) -> bool:
    """Whether the completion is the reference letter ("B", " B", "B." and "B)" all count)."""
    given = completion.strip().rstrip(".)").strip()
    return given == conversation["messages"][-1]["content"]


class MMLU(Task):
    """One MMLU subset and split: subset "all" with split test|validation|dev, or "auxiliary_train"."""

    eval_type = "categorical"

    def __init__(self, subset: str = "all", split: str = "test", *, paths: list[str | Path] | None = None,
                 **kwargs):
        if subset not in ("all", "auxiliary_train"):
            raise ValueError(f"MMLU subset must be 'all' or 'auxiliary_train', got {subset!r}")
        if subset == "auxiliary_train":
            split = "auxiliary_train"
        elif split == "auxiliary_train":
            raise ValueError("MMLU auxiliary_train is its own subset: MMLU(subset='auxiliary_train')")
        self.subset, self.split = subset, split
        files = [Path(p) for p in paths] if paths is not None else require("mmlu", split)
        self.rows = []
        for i, row in enumerate(read_rows(files)):
            if "question" not in row and isinstance(row.get("train"), dict):
                row = row["train"]  # the auxiliary_train config nests each row in a `train` struct
            choices, answer = row.get("choices"), row.get("answer")
            if not isinstance(choices, list) or not isinstance(answer, int) or not 0 <= answer < len(choices) \
                    or len(choices) > len(LETTERS):
                raise ValueError(f"MMLU {split} row {i}: needs a 'choices' list and an int 'answer' index, "
                                 f"got {choices!r:.80} / {answer!r}")
            self.rows.append(row)
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        letters = list(LETTERS[:len(row["choices"])])
        return mc_conversation(row["question"], [str(c) for c in row["choices"]], letters[row["answer"]], letters,
                               subject=row.get("subject", ""))

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return letter_matches(conversation, completion)
