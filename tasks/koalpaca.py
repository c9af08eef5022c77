"""KoAlpaca (github.com/Beomi/KoAlpaca): Korean instruction / answer pairs as single-turn conversations.

Two releases, in their published schemas:
- v1.1, `KoAlpaca_v1.1.jsonl`: JSON lines {"instruction", "output", "url"} (Naver KnowledgeiN
  questions with generated answers; `url` is the question's page and is not part of the conversation).
  Fetch: python -m tasks.sources --dataset=koalpaca --split=train
- v1.0, `ko_alpaca_data.json`: one JSON array of {"instruction", "input", "output"} (Stanford Alpaca
  translated). A non-empty `input` is appended to the instruction after a blank line.
  Fetch: python -m tasks.sources --dataset=koalpaca --split=v1.0
The hub's parquet copies (e.g. beomi/KoAlpaca-v1.1a, the same columns) read the same way.

Rows are never fatal: a line that is not JSON, a row that is not an object, or a field that is not a
string is skipped as malformed; a missing or blank instruction or output as empty. Both are counted
(`skipped_malformed`, `skipped_empty`) and said in one line when the task is built. (Fetching is
stricter: tasks.sources refuses a download with a line that is not JSON, which is what a cut
transfer looks like, and fetches it again; a file placed by hand is read as it is.)
"""

from __future__ import annotations

import json
from pathlib import Path

from nanochat.common import print0
from tasks.common import Task
from tasks.sources import is_parquet, require

SPLITS = {"v1.1": "train", "v1.0": "v1.0"}  # release -> split of `koalpaca` in tasks.sources
MALFORMED = object()  # a row that cannot be read (as opposed to one that is empty)


def read_file(path: Path) -> tuple[list[dict], int]:
    """(rows that are JSON objects, number of malformed lines or entries) of one KoAlpaca file."""
    if is_parquet(path):
        import pyarrow.parquet as pq  # imported here: slow to import, only parquet needs it

        return pq.read_table(path).to_pylist(), 0
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):  # v1.0: one JSON array
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fetch it again: "
                             "python -m tasks.sources --dataset=koalpaca --split=v1.0") from None
    else:
        entries = []
        for line in text.splitlines():
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    entries.append(MALFORMED)
    rows = [e for e in entries if isinstance(e, dict)]
    return rows, len(entries) - len(rows)


def convert(row: dict) -> dict | None | object:
    """One row as a conversation; None if its instruction or output is missing or blank, MALFORMED
    if a field is not a string."""
    fields = [row.get(k) for k in ("instruction", "output", "input")]
    if any(v is not None and not isinstance(v, str) for v in fields):
        return MALFORMED
    instruction, output, extra = fields
    if not instruction or not output or not instruction.strip() or not output.strip():
        return None
    if extra and extra.strip():
        instruction = f"{instruction.rstrip()}\n\n{extra.strip()}"
    return {"messages": [{"role": "user", "content": instruction.strip()},
                         {"role": "assistant", "content": output.strip()}]}


class KoAlpaca(Task):
    """The rows of one KoAlpaca release (v1.1 or v1.0) that make a conversation; others skipped and counted."""

    eval_type = "generative"

    def __init__(self, version: str = "v1.1", *, paths: list[str | Path] | None = None, **kwargs):
        if version not in SPLITS:
            raise ValueError(f"KoAlpaca version must be one of {', '.join(SPLITS)}, got {version!r}")
        files = [Path(p) for p in paths] if paths is not None else require("koalpaca", SPLITS[version])
        self.conversations: list[dict] = []
        self.skipped_empty = self.skipped_malformed = 0
        for path in files:
            rows, malformed = read_file(path)
            self.skipped_malformed += malformed
            for row in rows:
                c = convert(row)
                if c is MALFORMED:
                    self.skipped_malformed += 1
                elif c is None:
                    self.skipped_empty += 1
                else:
                    self.conversations.append(c)
        self.skipped = self.skipped_empty + self.skipped_malformed
        if self.skipped:
            print0(f"KoAlpaca {version}: {len(self.conversations):,} conversations; skipped {self.skipped_empty} "
                   f"empty and {self.skipped_malformed} malformed rows")
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        c = self.conversations[index]
        return {"messages": [dict(m) for m in c["messages"]]}
