"""The files of one checkpoint step: their names, meta.json's fields, and reading each one safely.

Every reader validates what it reads and raises one line naming the file and what to do: ValueError for
a damaged file (meta.json that is not JSON or has fields of the wrong type, a safetensors file whose
header or offsets are broken, tensors that do not fit the model_config, a torch archive that does not
unpickle as tensors and plain containers). Nothing here unpickles code: torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from nanochat import atomic_dir

FORMAT = "nanochat-checkpoint/1"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
# Fields every meta.json has, and their types (bool is checked exactly: True is not a world size)
META_FIELDS = {"format": str, "step": int, "world_size": int, "has_optimizer": bool, "has_rng": bool}
_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def optim_file(rank: int) -> str:
    return f"optim_rank{rank}.pt"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


# ---- writing (into the step's temp dir, which atomic_dir installs)


def write_torch(path: Path, obj) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def write_model(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    atomic_dir.fsync_path(path)


# ---- reading and validating


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def damaged(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path} {problem}; copy that step again, or delete {path.parent} to use an older step")


def parse_meta(step_dir: Path) -> dict:
    """meta.json of a step folder, checked field by field; ValueError naming the file otherwise."""
    path = step_dir / META_FILE
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"no complete checkpoint at {step_dir}") from None
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser's stack
        raise damaged(path, f"is not valid JSON ({one_line(e)[:200]})") from None
    problem = meta_problem(meta, step_dir.name)
    if problem:
        raise damaged(path, problem)
    return meta


def meta_problem(meta: object, folder: str) -> str | None:
    if not isinstance(meta, dict):
        return f"holds a {type(meta).__name__}, not an object"
    if meta.get("format") != FORMAT:
        return f"has format {meta.get('format')!r:.60}, this code reads {FORMAT!r}"
    for key, kind in META_FIELDS.items():
        if type(meta.get(key)) is not kind:
            return f"has {key} = {meta.get(key)!r:.60}, which is not {_KIND_NAMES[kind]}"
    if meta["world_size"] < 1 or step_name(meta['step']) != folder:
        return f"has world_size {meta['world_size']} and step {meta['step']}, which do not fit folder {folder}"
    states = meta.get("loader_states")
    if states is not None and not (isinstance(states, list) and len(states) == meta["world_size"]):
        return f"has loader_states that are not a list of {meta['world_size']} (one per rank)"
    if "model_config" in meta and not isinstance(meta["model_config"], dict):
        return "has a model_config that is not an object"
    files = meta.get("files")
    if files is not None and (not isinstance(files, dict) or MODEL_FILE not in files or not all(
            plain_name(name) and isinstance(e, dict) and type(e.get("size")) is int and e["size"] >= 0
            and isinstance(e.get("sha256"), str) for name, e in files.items())):
        return f"has a 'files' manifest that is not {{file name: {{size, sha256}}}} including {MODEL_FILE}"
    return None


def plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def listed_files(meta: dict) -> dict[str, dict]:
    """The files a step must hold: its manifest, or for steps saved before manifests, the ones its
    flags imply (sizes unknown, so only their presence is checked)."""
    if "files" in meta:
        return meta["files"]
    names = [MODEL_FILE] + [f(r) for r in range(meta["world_size"])
                            for f, on in ((optim_file, meta["has_optimizer"]), (rng_file, meta["has_rng"])) if on]
    return {name: {"size": None} for name in names}


def load_torch(path: Path, device: str | torch.device):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from a checkpoint that should have it")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise damaged(path, "is not a torch.save archive (damaged or truncated)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only met something other than tensors and plain containers (forged, or damaged bytes
        # that happen to unpickle as such): never run it
        reason = re.search(r"WeightsUnpickler error: (.*?)(\n\n|$)", str(e), re.S)
        reason = one_line(reason.group(1) if reason else e)[:200]
        raise damaged(path, f"is damaged or holds objects other than tensors and plain containers ({reason}); refusing "
                            f"to load it (checkpoints are read with torch.load(weights_only=True) only)") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, RuntimeError) and "PytorchStreamReader" not in str(e):
            raise  # e.g. out of memory on the device: not the file's fault
        raise damaged(path, f"cannot be read ({one_line(e)[:200]})") from None  # a damaged archive member


def load_safetensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:  # bad header, offsets past the end, unknown dtype...
        raise damaged(path, f"is not a readable safetensors file ({one_line(e)[:200]})") from None


def check_model_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path) -> None:
    """ValueError naming `path` unless `state` has `expected`'s keys and shapes, and floating-point
    tensors where it has them (load_state_dict would silently cast int8 weights to float)."""
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    problem = f"lacks tensors {missing[:3]}" if missing else f"has unexpected tensors {extra[:3]}" if extra else None
    for key, want in expected.items():
        got = state.get(key)
        if problem is None and got.shape != want.shape:
            problem = f"has {key} of shape {tuple(got.shape)}, the model needs {tuple(want.shape)}"
        elif problem is None and got.dtype.is_floating_point != want.dtype.is_floating_point:
            problem = f"has {key} as {got.dtype}, the model needs {want.dtype}"
    if problem:
        raise damaged(path, f"does not match the model_config in {META_FILE}: it {problem}")
