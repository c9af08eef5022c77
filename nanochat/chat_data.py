"""Batches of rendered conversations for the chat phases, with the loss mask applied to the targets.

Both loaders walk one Task (usually a TaskMixture) as an endless stream: global position p is
example p mod len(task) of epoch p // len(task), and rank r of W takes positions r, r+W, r+2W, ...
Their whole state is that position (plus the packing buffer), so resume is exact.

- PackedChatLoader (midtraining): conversations concatenated into one token stream and cut into
  (B, T) rows, like pretraining; no padding, every position computes. A conversation may span
  two rows (its tail then trains without its beginning in context, as pretraining documents do).
- PaddedChatLoader (SFT): B whole conversations per batch, right-padded to the longest one; the
  padding targets are -1 (ignored by the loss) and the loader counts how much of the batch was
  padding (`efficiency`).

Targets are -1 wherever the mask says "not trained on": user and system text, tool outputs,
padding. The mask of target t is the mask of token t + 1, the token being predicted.
"""

from __future__ import annotations

import torch

from nanochat.common import get_dist_info


class _Stream:
    """This rank's walk through the task: the next global position is round * world_size + rank."""

    def __init__(self, task, tokenizer, max_tokens: int, rank: int | None, world_size: int | None):
        info = get_dist_info()
        self.rank = info.rank if rank is None else rank
        self.world_size = info.world_size if world_size is None else world_size
        if len(task) == 0:
            raise ValueError("the chat task mixture is empty: check --tasks and the datasets behind it")
        self.task, self.tokenizer, self.max_tokens = task, tokenizer, max_tokens
        self.round = 0

    @property
    def position(self) -> int:
        return self.round * self.world_size + self.rank

    @property
    def epochs(self) -> float:
        """How far through the task this rank has read, in passes (0.5 = half of the first pass)."""
        return self.position / len(self.task)

    def next(self, loop: bool) -> tuple[list[int], list[int]] | None:
        """The next conversation's (ids, mask), or None when not looping and the first pass is over."""
        p = self.position
        if not loop and p >= len(self.task):
            return None
        self.round += 1
        return self.tokenizer.render_conversation(self.task[p % len(self.task)], max_tokens=self.max_tokens)

    def state(self) -> dict:
        return {"round": self.round, "rank": self.rank, "world_size": self.world_size}

    def restore(self, state: dict | list[dict]) -> dict:
        """Set the position from this rank's state or the list of every old rank's; returns the state used."""
        if isinstance(state, (list, tuple)):
            if len(state) == self.world_size:
                state = state[self.rank]
            else:
                # another world size: restart every rank at the earliest position some old rank had not
                # reached, so nothing is skipped (a few conversations are seen twice)
                earliest = min(s["round"] * s["world_size"] + s["rank"] for s in state)
                self.round = earliest // self.world_size
                return {}
        if not isinstance(state, dict) or not isinstance(state.get("round"), int):
            raise ValueError(f"not a chat loader state: {str(state)[:200]}")
        if state.get("world_size") != self.world_size or state.get("rank") != self.rank:
            raise ValueError(f"the loader state belongs to rank {state.get('rank')} of {state.get('world_size')}, "
                             f"this loader is rank {self.rank} of {self.world_size}")
        self.round = state["round"]
        return state


def _masked_targets(ids: list[int], mask: list[int]) -> list[int]:
    """Targets for inputs ids[:-1]: ids[1:], with -1 where the predicted token is not trained on."""
    return [t if m else -1 for t, m in zip(ids[1:], mask[1:])]


def _to_device(rows: list[list[int]], device) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.long)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class PackedChatLoader:
    """(inputs, targets) of shape (B, T) from the rendered conversations packed end to end."""

    def __init__(self, task, tokenizer, batch_size: int, seq_len: int, *, device="cpu", loop: bool = True,
                 rank: int | None = None, world_size: int | None = None):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        self.B, self.T, self.device, self.loop = batch_size, seq_len, device, loop
        # one conversation never needs more than a row plus the token it predicts
        self.stream = _Stream(task, tokenizer, seq_len + 1, rank, world_size)
        self.ids: list[int] = []
        self.mask: list[int] = []

    @property
    def epochs(self) -> float:
        return self.stream.epochs

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        need = self.B * self.T + 1
        while len(self.ids) < need:
            item = self.stream.next(self.loop)
            if item is None:
                raise StopIteration
            self.ids += item[0]
            self.mask += item[1]
        ids, mask = self.ids[:need], self.mask[:need]
        # the last token is kept: it is the first input of the next batch, as in one long stream
        self.ids, self.mask = self.ids[need - 1:], self.mask[need - 1:]
        targets = _masked_targets(ids, mask)
        x = _to_device([ids[i * self.T:(i + 1) * self.T] for i in range(self.B)], self.device)  # (B, T)
        y = _to_device([targets[i * self.T:(i + 1) * self.T] for i in range(self.B)], self.device)  # (B, T)
        return x, y

    def state_dict(self) -> dict:
        return {**self.stream.state(), "ids": list(self.ids), "mask": list(self.mask)}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        used = self.stream.restore(state)
        self.ids, self.mask = list(used.get("ids", [])), list(used.get("mask", []))


class PaddedChatLoader:
    """(inputs, targets) of shape (B, L): B whole conversations, L the longest one's length - 1
    (rounded up to pad_multiple, which bounds how many shapes torch.compile sees)."""

    def __init__(self, task, tokenizer, batch_size: int, max_seq_len: int, *, device="cpu", loop: bool = True,
                 pad_multiple: int = 1, rank: int | None = None, world_size: int | None = None):
        if batch_size < 1 or max_seq_len < 1 or pad_multiple < 1:
            raise ValueError(f"batch_size, max_seq_len and pad_multiple must be >= 1, got {batch_size}, "
                             f"{max_seq_len}, {pad_multiple}")
        self.B, self.T, self.device, self.loop, self.pad_multiple = batch_size, max_seq_len, device, loop, pad_multiple
        self.stream = _Stream(task, tokenizer, max_seq_len + 1, rank, world_size)
        self.pad_id = tokenizer.encode_special("<|assistant_end|>")  # any real id: its targets are -1
        self.real_tokens = 0  # input positions holding a conversation token, since the start
        self.total_tokens = 0  # all input positions, padding included

    @property
    def epochs(self) -> float:
        return self.stream.epochs

    @property
    def efficiency(self) -> float:
        """Share of the computed positions that were conversation tokens, not padding."""
        return self.real_tokens / self.total_tokens if self.total_tokens else 1.0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        convs = []
        while len(convs) < self.B:
            item = self.stream.next(self.loop)
            if item is None:
                break
            if len(item[0]) >= 2:  # a one-token conversation predicts nothing
                convs.append(item)
        if not convs:
            raise StopIteration
        width = max(len(ids) for ids, _ in convs) - 1
        width = min(-(-width // self.pad_multiple) * self.pad_multiple, self.T)
        xs, ys = [], []
        for ids, mask in convs:
            n = len(ids) - 1
            xs.append(ids[:-1] + [self.pad_id] * (width - n))
            ys.append(_masked_targets(ids, mask) + [-1] * (width - n))
            self.real_tokens += n
        self.total_tokens += len(convs) * width
        return _to_device(xs, self.device), _to_device(ys, self.device)  # (B, L), (B, L)

    def state_dict(self) -> dict:
        return {**self.stream.state(), "real_tokens": self.real_tokens, "total_tokens": self.total_tokens}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        used = self.stream.restore(state)
        self.real_tokens, self.total_tokens = used.get("real_tokens", 0), used.get("total_tokens", 0)
