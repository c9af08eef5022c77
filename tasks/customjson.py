"""Conversations from a JSONL file of your own: one conversation per line, either
{"messages": [{"role": ..., "content": ...}, ...]} or the bare list of messages. Blank lines are
skipped. Every line is checked when the file is loaded, and an error names the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanochat.tokenizer import ROLES, check_conversation
from tasks.common import Task


class CustomJSONError(ValueError):
    """A line of the JSONL file that is not a valid conversation."""


def load_conversations(path: str | Path) -> list[dict]:
    """Every conversation in the file, normalized to {"messages": [...]}; raises CustomJSONError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {path} not found")
    conversations = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise CustomJSONError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if isinstance(data, list):
                data = {"messages": data}
            if not isinstance(data, dict) or "messages" not in data:
                raise CustomJSONError(f"{where}: expected {{\"messages\": [...]}} or a list of messages, "
                                      f"got {type(data).__name__}")
            # the tokenizer's own validation, so that a file accepted here always renders
            try:
                check_conversation(data)
            except ValueError as e:
                raise CustomJSONError(f"{where}: {e} (roles: {', '.join(ROLES)})") from None
            conversations.append({"messages": data["messages"]})
    return conversations


class CustomJSON(Task):
    """The conversations of a JSONL file, read and validated when the task is created."""

    eval_type = "generative"

    def __init__(self, path: str | Path, **kwargs):
        self.path = Path(path)
        self.conversations = load_conversations(self.path)
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
