"""One flag vocabulary: every options class of every script, walked, with one name per concept.

Fails on a known synonym (a second name for a concept that has one), on a name whose meaning
differs between scripts (different kinds of value), and on "unset" spelled as a sentinel (-1 or
'') instead of `X | None`.
"""

import dataclasses
import importlib
import importlib.util
import re
import sys
import types
import typing
from pathlib import Path

import pytest

from nanochat.config import _options
from tests.conftest import REPO_ROOT

# the one name of each concept, and the names it once also had
SYNONYMS = {
    "max_tokens": "max_new_tokens",
    "max_per_task": "max_problems",
    "eval_examples": "max_problems",
    "batch_size": "device_batch_size",
    "split_tokens": "eval_tokens",
    "tag": "model_tag",
    "output_dir": "out_dir",
    "task_name": "tasks",
    "task": "tasks",
    "data": "corpus",
    "dataset_path": "corpus",
}
PHASES = {"base", "mid", "sft", "rl"}


def _modules():
    for folder in ("scripts", "nanochat", "tasks"):
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            if path.name != "__init__.py":
                yield importlib.import_module(f"{folder}.{path.stem}")
    for path in sorted((REPO_ROOT / "dev").glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"dev_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        yield module


def options_classes() -> dict[str, type]:
    found = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and name.endswith("Options")
                    and obj.__module__ == module.__name__):
                found[f"{module.__name__}.{name}"] = obj
    return found


def kind(t) -> tuple:
    """A value kind that ignores None (unset) and which choices a Literal offers."""
    args = [a for a in typing.get_args(t) if a is not type(None)] if typing.get_origin(t) in (
        typing.Union, types.UnionType) else [t]
    out = []
    for a in args:
        if typing.get_origin(a) is typing.Literal:
            out.append(("choice", type(typing.get_args(a)[0]).__name__))
        else:
            out.append(getattr(a, "__name__", str(a)))
    return tuple(sorted(map(str, out)))


CLASSES = options_classes()


def test_every_script_is_walked():
    """The options class every script parses is among those walked (scripts may import theirs)."""
    parsed = 0
    for path in sorted((REPO_ROOT / "scripts").glob("*.py")):
        match = re.search(r"parse_args\((\w+)", path.read_text())
        if match:
            cls = getattr(importlib.import_module(f"scripts.{path.stem}"), match.group(1))
            assert cls in CLASSES.values(), f"scripts/{path.name} parses {cls}, which the walk missed"
            parsed += 1
    assert parsed >= 12
    assert {"BaseOptions", "MidOptions", "SFTOptions", "RLOptions"} <= {n.split(".")[-1] for n in CLASSES}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_no_synonyms_and_no_sentinels(name):
    for opt in _options(CLASSES[name]).values():
        assert opt.name not in SYNONYMS, f"{name}: --{opt.name} is spelled --{SYNONYMS[opt.name]} everywhere else"
        is_int = opt.kind is int or int in typing.get_args(opt.kind)
        assert not (is_int and opt.default == -1), f"{name}: --{opt.name} spells 'unset' as -1: use int | None"
        assert opt.default != "", f"{name}: --{opt.name} spells 'unset' as '': use str | None"


def test_one_name_one_meaning():
    seen: dict[str, dict[tuple, list[str]]] = {}
    for cls_name, cls in CLASSES.items():
        for opt in _options(cls).values():
            seen.setdefault(opt.name, {}).setdefault(kind(opt.kind), []).append(cls_name)
    clashes = {n: k for n, k in seen.items() if len(k) > 1}
    assert not clashes, f"one name, several kinds of value: {clashes}"
    for cls_name, cls in CLASSES.items():
        hints = typing.get_type_hints(cls)
        if "source" in hints:  # --source is always a checkpoint phase
            choices = {a for t in [hints["source"], *typing.get_args(hints["source"])]
                       if typing.get_origin(t) is typing.Literal for a in typing.get_args(t)}
            assert choices and choices <= PHASES, f"{cls_name}: --source must name phases, has {choices}"


def test_walker_would_catch_a_clash():
    @dataclasses.dataclass
    class AOptions:
        source: str = "embedded"  # a corpus under the phase's name
        steps: int = -1

    assert kind(typing.get_type_hints(AOptions)["source"]) != kind(typing.Literal["base", "sft"])
    assert _options(AOptions)["steps"].default == -1


def test_repo_root_is_this_checkout():
    assert (REPO_ROOT / "scripts" / "base_train.py").is_file() and Path(__file__).parent.parent == REPO_ROOT
