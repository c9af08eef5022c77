"""KoAlpaca v1.1 (GitHub Beomi/KoAlpaca, KoAlpaca_v1.1.jsonl): Korean instruction / answer pairs
as single-turn conversations. An `input` field, where a row has a non-empty one, is appended to
the instruction. Fetch first: python -m tasks.sources --dataset=koalpaca --split=train
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import Task
from tasks.sources import read_rows, require


def convert(row: dict) -> dict | None:
    """One KoAlpaca row as a conversation, or None if its instruction or output is empty."""
    instruction, output = row.get("instruction"), row.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str) \
            or not instruction.strip() or not output.strip():
        return None
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction.rstrip()}\n\n{extra.strip()}"
    return {"messages": [{"role": "user", "content": instruction.strip()},
                         {"role": "assistant", "content": output.strip()}]}


class KoAlpaca(Task):
    """The KoAlpaca v1.1 rows; rows with an empty instruction or output are skipped and counted."""

    eval_type = "generative"

    def __init__(self, *, paths: list[str | Path] | None = None, **kwargs):
        files = [Path(p) for p in paths] if paths is not None else require("koalpaca", "train")
        converted = [convert(row) for row in read_rows(files)]
        self.conversations = [c for c in converted if c is not None]
        self.skipped = len(converted) - len(self.conversations)
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        c = self.conversations[index]
        return {"messages": [dict(m) for m in c["messages"]]}
