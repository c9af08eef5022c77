"""KoBEST (skt/kobest_v1; Jang et al. 2022, arXiv:2204.04541) scored like CORE: the Korean base-model metric.

Five tasks (BoolQ, COPA, HellaSwag, SentiNeg, WiC), each turned into CORE's multiple_choice rows
{"query", "choices", "gold"} and scored by nanochat.core_eval: few-shot prompts, the choice whose
continuation has the lowest mean loss wins, the accuracy centered on the task's chance level, and
KoBEST = the mean of the centered accuracies. The prompts follow EleutherAI's harness for KoBEST
(yes/no as 예/아니오, COPA's connector 왜냐하면 for a cause and 그래서 for an effect, SentiNeg's
긍정/부정); the chance levels are 50% for the two-way tasks and 25% for HellaSwag's four endings.

    python -m tasks.sources --dataset=kobest          # the 5 tasks' train / validation / test files
    results = evaluate_kobest(model, tokenizer, split="test", max_problems=500)
    results["KoBEST"], results["tasks"]["copa"]["centered"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nanochat.common import print0
from nanochat.core_eval import TaskSpec, centered_accuracy, context_limit, core_metric, evaluate_task
from tasks.identity import particle
from tasks.sources import KOBEST_COLUMNS, read_rows, require

TASKS = tuple(KOBEST_COLUMNS)
RANDOM_BASELINE = {"boolq": 50.0, "copa": 50.0, "hellaswag": 25.0, "sentineg": 50.0, "wic": 50.0}  # percent
NUM_FEWSHOT = 5  # boolq's paragraphs are long: 5 shots keep its prompts near 2K tokens
YES_NO = ["아니오", "예"]  # label 0, 1
CONNECTORS = {"원인": "왜냐하면", "결과": "그래서"}  # COPA asks for a cause or an effect


def _label(row: dict, n: int) -> int:
    label = row.get("label")
    label = int(label) if isinstance(label, (int, str)) and str(label).strip().isdigit() else -1
    if not 0 <= label < n:
        raise ValueError(f"label must be an int in 0..{n - 1}, got {row.get('label')!r}")
    return label


def to_mc(task: str, row: dict) -> dict:
    """One KoBEST row as a CORE multiple_choice row; ValueError naming what is wrong with it."""
    missing = [k for k in KOBEST_COLUMNS[task] if k not in row]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if task == "boolq":
        return {"query": f"{row['paragraph'].strip()} 질문: {row['question'].strip()} 답변:", "choices": YES_NO,
                "gold": _label(row, 2)}
    if task == "copa":
        connector = CONNECTORS.get(str(row["question"]).strip())
        if connector is None:
            raise ValueError(f"question must be 원인 or 결과, got {row['question']!r}")
        return {"query": f"{row['premise'].strip()} {connector}",
                "choices": [row["alternative_1"].strip(), row["alternative_2"].strip()], "gold": _label(row, 2)}
    if task == "hellaswag":
        return {"query": row["context"].strip(), "choices": [row[f"ending_{i}"].strip() for i in range(1, 5)],
                "gold": _label(row, 4)}
    if task == "sentineg":
        return {"query": f"문장: {row['sentence'].strip()} 긍부정:", "choices": ["부정", "긍정"], "gold": _label(row, 2)}
    if task == "wic":
        word = row["word"].strip()
        return {"query": f"문장1: {row['context_1'].strip()} 문장2: {row['context_2'].strip()} "
                         f"두 문장에서 {word}{particle(word, '이', '가')} 같은 뜻으로 쓰였나?",
                "choices": YES_NO, "gold": _label(row, 2)}
    raise ValueError(f"unknown KoBEST task {task!r}; tasks: {', '.join(TASKS)}")


def load_kobest(task: str, split: str = "test", *, paths: list[str | Path] | None = None) -> list[dict]:
    """The multiple_choice rows of one task and split (train | validation | test), in file order."""
    if task not in TASKS:
        raise ValueError(f"unknown KoBEST task {task!r}; tasks: {', '.join(TASKS)}")
    files = [Path(p) for p in paths] if paths is not None else require("kobest", f"{task}/{split}")
    rows = []
    for i, row in enumerate(read_rows(files)):
        try:
            rows.append(to_mc(task, row))
        except (ValueError, AttributeError) as e:
            raise ValueError(f"KoBEST {task} {split} row {i + 1}: {e}") from None
    return rows


def task_spec(task: str, num_fewshot: int = NUM_FEWSHOT) -> TaskSpec:
    return TaskSpec(f"kobest_{task}", "multiple_choice", f"kobest/{task}", num_fewshot, " ", RANDOM_BASELINE[task])


def evaluate_kobest(model, tokenizer, *, split: str = "test", tasks: tuple[str, ...] = TASKS,
                    max_problems: int | None = None, num_fewshot: int = NUM_FEWSHOT, batch_size: int = 32,
                    max_seq_len: int | None = None, autocast=None, paths: dict[str, list[Path]] | None = None,
                    log: Callable[[str], None] = print0) -> dict:
    """{"KoBEST": mean centered accuracy, "tasks": {task: {"accuracy", "centered", "examples", "cropped",
    "random_baseline", "seconds"}}}; paths: {task: files} instead of the registry's (tests, local copies)."""
    if max_seq_len is None:
        max_seq_len = context_limit(model)
    results = {}
    for task in tasks:
        rows = load_kobest(task, split, paths=(paths or {}).get(task))
        spec = task_spec(task, num_fewshot)
        r = evaluate_task(model, tokenizer, spec, rows, max_problems=max_problems, batch_size=batch_size,
                          max_seq_len=max_seq_len, autocast=autocast, log=log)
        centered = centered_accuracy(r.accuracy, spec.random_baseline)
        results[task] = {"accuracy": r.accuracy, "centered": centered, "examples": r.total, "cropped": r.cropped,
                         "random_baseline": spec.random_baseline, "seconds": r.seconds}
        log(f"kobest {task:<10} accuracy {r.accuracy:.4f}  centered {centered:+.4f}  ({r.total} rows, "
            f"{num_fewshot}-shot)")
    score = core_metric([t["centered"] for t in results.values()])
    log(f"KoBEST: {score:.4f}")
    return {"KoBEST": score, "split": split, "tasks": results}
