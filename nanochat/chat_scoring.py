"""Scoring a chat model on tasks, and ChatCORE: the library under scripts.chat_eval (and the RL loop).

Categorical tasks (multiple choice) take one forward pass per batch of prompts; the answer is the
allowed letter with the highest logit where the reply would start. Generative tasks sample replies
through the Engine (calculator tool on); a problem passes when any of its num_samples replies
passes task.evaluate (pass@k). Tasks are duck-typed (tasks.common.Task: len, [i], eval_type,
evaluate), so this module never imports tasks/.

Letters: B rows (prompts), T padded prompt length, V vocab size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nanochat.common import Throttle, dist_initialized, print0

# The chat tasks' chance accuracies: a guess among four choices is right a quarter of the time, a
# generated answer practically never by chance.
BASELINES: dict[str, float] = {
    "ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0,
    "KMMLU": 0.25,
}
CHATCORE_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")
# The Korean ChatCORE (ChatCORE-ko): the same mean of centered accuracies over the Korean tasks
KOREAN_TASKS = ("KMMLU",)


@dataclass
class Counts:
    """Problems solved and problems seen (by one rank, or by all after all_reduce_counts)."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None


def problem_indices(num_examples: int, max_problems: int | None = None, rank: int = 0, world_size: int = 1) -> range:
    """This rank's problems: the first max_problems (None = all), dealt round-robin over the ranks."""
    n = num_examples if max_problems is None else min(num_examples, max_problems)
    return range(rank, n, world_size)


def all_reduce_counts(counts: Counts, device: torch.device | str = "cpu") -> Counts:
    """The counts summed over every rank (unchanged outside torch.distributed). device: cuda under NCCL."""
    if not dist_initialized():
        return counts
    t = torch.tensor([counts.correct, counts.total], dtype=torch.long, device=device)  # (2,)
    dist.all_reduce(t)
    return Counts(*(int(v) for v in t.tolist()))


class Progress:
    """Throttled progress lines with running accuracy and ETA, for one rank's share of a task.

    A line every `every` seconds, so a 14k-problem MMLU run shows it is alive without flooding the
    log; none at the end, where the caller prints the result over all ranks.
    """

    def __init__(self, name: str, total: int, *, every: float = 10.0, log: Callable[[str], None] = print0):
        self.name, self.total, self.log = name, total, log
        self.throttle = Throttle(every)

    def update(self, counts: Counts) -> None:
        if not self.throttle.ready():
            return
        elapsed = self.throttle.elapsed
        eta = elapsed / counts.total * (self.total - counts.total) if counts.total else float("nan")
        acc = "n/a" if counts.accuracy is None else f"{counts.accuracy:.4f}"
        self.log(f"{self.name}: {counts.total}/{self.total} | accuracy {acc} "
                 f"({counts.correct}/{counts.total}) | {elapsed:.0f}s, eta {eta:.0f}s")


# ---- categorical


def letter_token_ids(tokenizer, letters: Sequence[str]) -> list[int]:
    """The token id of each answer letter. render_mc writes each letter as its own token, and the
    reply is the letter alone, so the reply's first token decides the answer."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(letter)
        if len(encoded) != 1:
            raise ValueError(f"answer letter {letter!r} encodes to {len(encoded)} tokens; categorical "
                             "evaluation compares one token per letter")
        ids.append(encoded[0])
    return ids


@torch.no_grad()
def letter_logits(model, tokenizer, conversations: Sequence[dict], autocast=None) -> list[torch.Tensor]:
    """Per conversation, the logits of its allowed letters (conversation["letters"]) at the first
    position of the reply, from one forward pass over the right-padded prompts."""
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    # Right padding keeps every real token at its own position (rotary), and causal attention keeps
    # the pad from every real position, so a padded row reads exactly as it would alone. Any valid id
    # does as the pad: the logits after a row's end are never read.
    ids = torch.full((len(prompts), longest), tokenizer.bos_token_id, dtype=torch.long)  # (B, T)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    with autocast if autocast is not None else contextlib.nullcontext():
        logits = model(ids.to(device))  # (B, T, V)
    last = torch.tensor([len(p) - 1 for p in prompts], device=device)  # (B,)
    final = logits[torch.arange(len(prompts), device=device), last].float()  # (B, V)
    return [row[letter_token_ids(tokenizer, c["letters"])].cpu() for row, c in zip(final, conversations)]


def predict_letters(model, tokenizer, conversations: Sequence[dict], autocast=None) -> list[str]:
    """The letter each conversation's reply would start with, choosing only among its letters."""
    return [c["letters"][int(scores.argmax())]
            for c, scores in zip(conversations, letter_logits(model, tokenizer, conversations, autocast))]


def eval_categorical(model, tokenizer, task, *, batch_size: int = 8, max_problems: int | None = None, rank: int = 0,
                     world_size: int = 1, autocast=None, progress: Progress | None = None) -> Counts:
    """This rank's Counts on a multiple-choice task; each predicted letter is scored by task.evaluate."""
    mine = problem_indices(len(task), max_problems, rank, world_size)
    counts = Counts()
    for start in range(0, len(mine), batch_size):
        conversations = [task[i] for i in mine[start : start + batch_size]]
        letters = predict_letters(model, tokenizer, conversations, autocast)
        for conversation, letter in zip(conversations, letters):
            counts.correct += bool(task.evaluate(conversation, letter))
            counts.total += 1
        if progress is not None:
            progress.update(counts)
    return counts


# ---- generative


def completion_text(tokenizer, ids: Sequence[int]) -> str:
    """The reply as prose: its text parts joined, up to the first stop token.

    Tool calls and their outputs are left out: they are the calculator's business, and pasted into
    the prose they would corrupt it (GSM8K's "48/2 = <call><output>24 clips" reads "48/2 = 24 clips",
    and HumanEval's code stays code).
    """
    return "".join(p["text"] for p in tokenizer.parse_assistant(ids) if p["type"] == "text")


def sample_completions(engine, conversation: dict, *, num_samples: int = 1, max_new_tokens: int = 512,
                       temperature: float = 0.0, top_k: int | None = 50, seed: int = 42) -> list[str]:
    """num_samples replies to the conversation (its reference answer, if any, left out)."""
    prompt = engine.tokenizer.render_for_completion(conversation)
    results, _masks = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_new_tokens,
                                            temperature=temperature, top_k=top_k or None, seed=seed)
    return [completion_text(engine.tokenizer, r) for r in results]


def passes(task, conversation: dict, completions: Sequence[str]) -> bool:
    """pass@k: solved when any of the k completions is right. Stops at the first that is, which
    spares HumanEval's sandbox runs for the rest."""
    return any(bool(task.evaluate(conversation, c)) for c in completions)


def eval_generative(engine, task, *, num_samples: int = 1, max_new_tokens: int = 512,
                    temperature: float = 0.0, top_k: int | None = 50, max_problems: int | None = None, rank: int = 0,
                    world_size: int = 1, seed: int = 42, progress: Progress | None = None) -> Counts:
    """This rank's Counts on a generative task (pass@num_samples)."""
    counts = Counts()
    for i in problem_indices(len(task), max_problems, rank, world_size):
        conversation = task[i]
        # the seed follows the problem, not the rank, so results do not depend on the number of GPUs
        completions = sample_completions(engine, conversation, num_samples=num_samples,
                                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                         seed=seed + i)
        counts.correct += passes(task, conversation, completions)
        counts.total += 1
        if progress is not None:
            progress.update(counts)
    return counts


# ---- ChatCORE


def centered_accuracy(accuracy: float, baseline: float) -> float:
    """0 at chance, 1 at perfect: (accuracy - baseline) / (1 - baseline)."""
    return (accuracy - baseline) / (1.0 - baseline)


def chatcore(accuracies: Mapping[str, float | None],
             tasks: Sequence[str] = CHATCORE_TASKS) -> tuple[float | None, list[str]]:
    """(mean centered accuracy over `tasks`, []) or (None, the tasks that have no accuracy). The
    default tasks make ChatCORE; KOREAN_TASKS make ChatCORE-ko."""
    missing = [name for name in tasks if accuracies.get(name) is None]
    if missing:
        return None, missing
    scores = [centered_accuracy(accuracies[name], BASELINES[name]) for name in tasks]
    return sum(scores) / len(scores), []
