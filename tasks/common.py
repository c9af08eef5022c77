"""The shared Task interface: a sized, sliceable sequence of conversations, plus ways to combine
tasks (TaskMixture, TaskSequence) and the one multiple-choice format every MC dataset renders in.

A conversation is {"messages": [{"role": ..., "content": ...}, ...]} as nanochat.tokenizer
renders it; tasks only produce conversations and score completions, they never tokenize.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence

EVAL_TYPES = ("categorical", "generative")


class Task:
    """Base class. Subclasses implement `num_examples()` and `get_example(index)`, set `eval_type`,
    and override `evaluate` (and `reward` where RL uses one).

    Indexing goes through a `range` of underlying indices, so `task[10:100:2]` is a view that
    shares the subclass's data (a shallow copy with a narrower range), never a copy of it.
    """

    eval_type = "generative"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        self._start, self._stop, self._step = start, stop, step
        self._indices_cache: range | None = None

    # ---- subclass hooks

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def evaluate(self, conversation: dict, completion: str) -> bool | float:
        """Whether `completion` (the assistant's generated reply, as text) answers `conversation`."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluate()")

    def reward(self, conversation: dict, completion: str) -> float:
        """A scalar reward for RL; by default 1.0 for a correct answer, else 0.0."""
        return float(self.evaluate(conversation, completion))

    # ---- sequence protocol

    @property
    def _indices(self) -> range:
        # built lazily so that subclasses may set up their data after calling super().__init__
        if self._indices_cache is None:
            self._indices_cache = range(self.num_examples())[self._start:self._stop:self._step]
        return self._indices_cache

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, key: int | slice):
        if isinstance(key, slice):
            view = copy.copy(self)
            view._indices_cache = self._indices[key]
            return view
        if not isinstance(key, int):
            raise TypeError(f"{type(self).__name__} indices must be int or slice, got {type(key).__name__}")
        return self.get_example(self._indices[key])  # range raises IndexError for us

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class TaskSequence(Task):
    """The tasks one after another, in order (e.g. to evaluate several tasks in one pass)."""

    def __init__(self, tasks: Sequence[Task], **kwargs):
        if not tasks:
            raise ValueError("TaskSequence needs at least one task")
        self.tasks = list(tasks)
        self._offsets = [0]
        for t in self.tasks:
            self._offsets.append(self._offsets[-1] + len(t))
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return self._offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(task number, index within that task) of an underlying index."""
        for k in range(len(self.tasks)):
            if index < self._offsets[k + 1]:
                return k, index - self._offsets[k]
        raise IndexError(index)

    def get_example(self, index: int) -> dict:
        k, i = self.locate(index)
        return self.tasks[k][i]

    def evaluate(self, conversation: dict, completion: str) -> bool | float:
        raise NotImplementedError("evaluate through the task an example came from: see locate()")


class TaskMixture(Task):
    """All examples of several tasks, shuffled together with a fixed seed (same seed, same order).

    weights (one per task, default 1 each) say how many passes over each task the mixture holds:
    the integer part is the number of full copies of every example, the fractional part a further
    share of the task's examples picked with the seed. So 3 means each example three times (use it to
    upweight a small task such as identity), 0.25 a quarter of the task once, 1.5 every example once
    plus a random half again. The mixture therefore has sum(round(w * len(task))) examples.
    """

    def __init__(self, tasks: Sequence[Task], weights: Sequence[float] | None = None, seed: int = 0,
                 **kwargs):
        if not tasks:
            raise ValueError("TaskMixture needs at least one task")
        weights = [1] * len(tasks) if weights is None else list(weights)
        if len(weights) != len(tasks):
            raise ValueError(f"TaskMixture got {len(tasks)} tasks but {len(weights)} weights")
        if any(not isinstance(w, (int, float)) or w < 0 for w in weights):
            raise ValueError(f"TaskMixture weights must be numbers >= 0, got {weights}")
        self.tasks, self.weights, self.seed = list(tasks), weights, seed
        rng = random.Random(seed)
        pairs: list[tuple[int, int]] = []
        for k, (task, w) in enumerate(zip(self.tasks, weights)):
            full = int(w)
            pairs.extend((k, i) for _ in range(full) for i in range(len(task)))
            extra = round((w - full) * len(task))
            pairs.extend((k, i) for i in sorted(rng.sample(range(len(task)), extra)))
        rng.shuffle(pairs)
        self._pairs = pairs
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self._pairs)

    def locate(self, index: int) -> tuple[int, int]:
        """(task number, index within that task) of an underlying index."""
        return self._pairs[index]

    def get_example(self, index: int) -> dict:
        k, i = self._pairs[index]
        return self.tasks[k][i]

    def evaluate(self, conversation: dict, completion: str) -> bool | float:
        raise NotImplementedError("evaluate through the task an example came from: see locate()")


# ---- multiple choice

MC_INSTRUCTION = "Respond only with the letter of the correct answer."


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """The one multiple-choice prompt format (ARC, MMLU, ...); the expected reply is the letter alone:

        Multiple choice question: What is 2 + 2?
        - A) 3
        - B) 4

        Respond only with the letter of the correct answer.

    The letter comes *after* "- " and before ")" so that each letter is its own token in a BPE
    vocabulary, which is what lets categorical evaluation compare the letters' logits.
    """
    if len(letters) != len(choices) or not choices:
        raise ValueError(f"render_mc needs one letter per choice, got {len(letters)} letters "
                         f"and {len(choices)} choices")
    lines = [f"Multiple choice question: {question.strip()}"]
    lines += [f"- {letter}) {choice}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\n" + MC_INSTRUCTION


# ---- final answers

_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def extract_final_number(text: str) -> str | None:
    """The number after the last "####" in text, commas removed ("#### 1,234" -> "1234"), else None."""
    found = _FINAL.findall(text)
    return found[-1].replace(",", "") if found else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two number strings ("42" == "42.0"); False if either is missing or bad."""
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def assistant_text(conversation: dict) -> str:
    """The text of the last assistant message, with list-of-parts content joined."""
    content = conversation["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content)
