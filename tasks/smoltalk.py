"""SmolTalk (HuggingFaceTB/smol-smoltalk): general chat conversations for midtraining and SFT.

A leading system message is kept (the tokenizer folds it into the first user turn); rows whose
roles do not alternate user/assistant, that end on a user turn, or that hold empty or non-text
content are skipped and counted in `skipped`. Fetch first: python -m tasks.sources --dataset=smoltalk
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import Task
from tasks.sources import read_rows, require


def clean_messages(messages: object) -> list[dict] | None:
    """The messages as [{"role", "content"}] if they form a valid conversation, else None."""
    if not isinstance(messages, list) or not messages:
        return None
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return None
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(content, str) or not content.strip():
            return None
        if role == "system" and i == 0:
            out.append({"role": role, "content": content})
            continue
        turn = len(out) - (out[0]["role"] == "system" if out else 0)
        if role != ("user" if turn % 2 == 0 else "assistant"):
            return None
        out.append({"role": role, "content": content})
    return out if out[-1]["role"] == "assistant" else None


class SmolTalk(Task):
    """Conversations of one SmolTalk split ("train" or "test"), validated when loaded."""

    eval_type = "generative"

    def __init__(self, split: str = "train", *, paths: list[str | Path] | None = None, **kwargs):
        self.split = split
        files = [Path(p) for p in paths] if paths is not None else require("smoltalk", split)
        self.conversations = []
        self.skipped = 0
        for row in read_rows(files, ["messages"]):
            messages = clean_messages(row.get("messages"))
            if messages is None:
                self.skipped += 1
            else:
                self.conversations.append(messages)
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return {"messages": [dict(m) for m in self.conversations[index]]}
