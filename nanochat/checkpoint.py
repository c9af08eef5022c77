"""Checkpoints: save, find, load and prune training state, crash-safe and without unpickling code.

One step lives in $NANOCHAT_BASE_DIR/<phase dir>/<tag>/step_<NNNNNN>/: model.safetensors, meta.json,
and per rank R optim_rank<R>.pt (the optimizers' state_dicts) and rng_rank<R>.pt (RNG states). It is
written under .step_<NNNNNN>.tmp and renamed when complete (nanochat/atomic_dir.py); a step that exists
complete is never saved over. meta.json lists every other file with its size and sha256 ("files").

A step counts (list_checkpoints, latest_step, find_resume, load_checkpoint) only when its meta.json is
there and every file it lists is present at the recorded size: a folder left by an interrupted copy
(`rsync -avP` sends meta.json first, as it sorts first) is skipped and the newest complete step is used.
Checksums are compared too when asked: verify=True, or NANOCHAT_VERIFY_CHECKPOINTS=1 for every load.
Steps saved before manifests existed count when the files their meta.json implies are present.
Loading validates what it reads and fails with one line naming the file and what to do.

    step = find_resume(ckpt_dir, cfg.resume)          # '' / 'auto' / N -> None or a step
    c = load_checkpoint(ckpt_dir, step)               # model, this rank's optimizer/rng/loader state
    save_checkpoint(ckpt_dir, step, model_state=raw_model.state_dict(), optimizer_states=[...],
                    meta={...}, loader_state=loader.state_dict()); prune_checkpoints(ckpt_dir, keep)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanochat import atomic_dir
from nanochat import step_files as sf
from nanochat.common import dist_initialized, get_base_dir, print0, rank_and_world
from nanochat.phases import PHASES, Phase  # noqa: F401 (re-exported: the phase names checkpoints use)

# the step's file names and readers, re-exported: callers know them as checkpoint.X
from nanochat.step_files import FORMAT, META_FILE, MODEL_FILE, check_model_state, optim_file, rng_file  # noqa: F401

VERIFY_ENV = "NANOCHAT_VERIFY_CHECKPOINTS"  # 1: every load also compares the files' sha256
# Keys save_checkpoint writes itself; a caller's meta may not set them (they describe this save).
RESERVED_META_KEYS = ("format", "step", "world_size", "saved_at", "has_optimizer", "has_rng", "loader_states",
                      "files")

_STEP_RE = re.compile(r"^step_(\d+)$")
# .tmp: being written (or left by a crashed writer); .old: a pruned or replaced step on its way out.
_TEMP_RE = re.compile(r"^\.step_(\d+)\.(tmp|old)$")

PathLike = str | os.PathLike


def _scratch_file(rank: int) -> str:
    # inside the temp dir only: a rank's loader state and file manifest; rank 0 folds them into meta.json
    return f"rank{rank}.json"


# ----------------------------------------------------------------------------------------------
# Where checkpoints are


def checkpoint_dir(phase: str, tag: str | None = None) -> Path:
    """$NANOCHAT_BASE_DIR/<phase dir>/<tag>. tag None picks the tag whose latest checkpoint is newest.

    With tag None and no checkpoint of that phase, raises FileNotFoundError naming the script to run.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: valid phases are {', '.join(PHASES)}")
    root = get_base_dir(create=False) / PHASES[phase].dirname
    if tag is not None:
        if not tag or tag in (".", "..") or "/" in tag or "\\" in tag or tag.startswith("."):
            raise ValueError(f"checkpoint tag must be a plain folder name (like d20), got {tag!r}")
        return root / tag
    found = _newest_tag(root)
    if found is None:
        raise FileNotFoundError(_missing_message(phase, root))
    return found


def _newest_tag(root: Path) -> Path | None:
    """The tag folder under root whose latest complete step was saved last (the run you just did)."""
    best, best_time = None, -1.0
    if root.is_dir():
        for d in root.iterdir():
            steps = list_checkpoints(d) if d.is_dir() and not d.name.startswith(".") else []
            if steps:
                saved = (d / sf.step_name(steps[-1]) / META_FILE).stat().st_mtime
                if saved > best_time:
                    best, best_time = d, saved
    return best


def _phase_of(ckpt_dir: Path) -> str | None:
    for name, phase in PHASES.items():
        if ckpt_dir.parent.name == phase.dirname:
            return name
    return None


def _missing_message(phase: str | None, where: Path) -> str:
    if phase is None:
        return f"no checkpoint in {where}"
    return f"no {phase} checkpoint in {where}: train one with python -m {PHASES[phase].producer}"


def _resolve(phase_or_dir: PathLike, tag: str | None) -> tuple[Path, bool]:
    """(directory, exists-as-a-tag) for a phase name or a checkpoint directory path."""
    if isinstance(phase_or_dir, str) and phase_or_dir in PHASES:
        if tag is not None:
            return checkpoint_dir(phase_or_dir, tag), True
        root = get_base_dir(create=False) / PHASES[phase_or_dir].dirname
        found = _newest_tag(root)
        return (found, True) if found is not None else (root, False)
    if tag is not None:
        raise ValueError(f"tag={tag!r} goes with a phase name ({', '.join(PHASES)}), not a directory path")
    return Path(phase_or_dir), True


def _step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every step_N folder, complete or not, ascending."""
    found = [(int(m.group(1)), d) for d in ckpt_dir.iterdir() if (m := _STEP_RE.match(d.name))] \
        if ckpt_dir.is_dir() else []
    return sorted(found)


def _step_problem(step_dir: Path, verify: bool = False) -> str | None:
    """Why a step folder is not a complete checkpoint (yet), or None when it is one.

    A meta.json that cannot be read counts as complete here, so that loading the step names the damage
    instead of silently using an older step.
    """
    if not (step_dir / META_FILE).is_file():
        return f"{META_FILE} is missing"
    try:
        meta = sf.parse_meta(step_dir)
    except ValueError:
        return None
    return atomic_dir.check_manifest(step_dir, sf.listed_files(meta), verify)


def _verify_requested(verify: bool | None) -> bool:
    return os.environ.get(VERIFY_ENV, "").strip() not in ("", "0") if verify is None else verify


def list_checkpoints(phase_or_dir: PathLike, tag: str | None = None, *, verify: bool = False) -> list[int]:
    """Complete steps, ascending: meta.json and every file it lists at its recorded size (verify: and
    sha256). Temp dirs of unfinished saves and folders of interrupted copies are never listed."""
    ckpt_dir, ok = _resolve(phase_or_dir, tag)
    return [s for s, d in _step_dirs(ckpt_dir) if _step_problem(d, verify) is None] if ok else []


def latest_step(phase_or_dir: PathLike, tag: str | None = None, *, verify: bool | None = None) -> int | None:
    """The highest complete step, or None when there is none (verify None: NANOCHAT_VERIFY_CHECKPOINTS)."""
    ckpt_dir, ok = _resolve(phase_or_dir, tag)
    verify = _verify_requested(verify)
    for step, d in reversed(_step_dirs(ckpt_dir) if ok else []):
        problem = _step_problem(d, verify)
        if problem is None:
            return step
        print0(f"warning: skipping {d}: {problem} (an interrupted copy?); looking at older steps")
    return None


def _require_complete(ckpt_dir: Path, ok: bool, step: int, verify: bool, prefix: str = "") -> int:
    """step, or FileNotFoundError saying what its folder lacks (if there is one) and which steps there are."""
    folder = ckpt_dir / sf.step_name(step)
    problem = _step_problem(folder, verify) if ok else f"{ckpt_dir} does not exist"
    if problem is None:
        return step
    steps = list_checkpoints(ckpt_dir) if ok else []
    why = f" ({folder.name}: {problem})" if folder.is_dir() else ""
    raise FileNotFoundError(f"{prefix}no complete step {step} in {ckpt_dir}{why}; available steps: "
                            f"{', '.join(map(str, steps)) or 'none'}")


def find_resume(phase_or_dir: PathLike, resume: str | int | None, *, tag: str | None = None,
                verify: bool | None = None) -> int | None:
    """Which step a --resume value means: '' = off (None), 'auto' = latest if any (else None), or N.

    A step number must name a complete checkpoint; otherwise FileNotFoundError lists those there are.
    """
    value = "" if resume is None else str(resume).strip()
    if value == "":
        return None
    if value == "auto":
        return latest_step(phase_or_dir, tag, verify=verify)
    if not value.isdigit():
        raise ValueError(f"resume must be '' (off), 'auto' or a step number, got {resume!r}")
    ckpt_dir, ok = _resolve(phase_or_dir, tag)
    return _require_complete(ckpt_dir, ok, int(value), _verify_requested(verify), prefix=f"resume={value}: ")


# ----------------------------------------------------------------------------------------------
# RNG


def capture_rng() -> dict:
    """This process's RNG states (python random, numpy global, torch CPU, CUDA/MPS when in use)."""
    version, internal, gauss_next = random.getstate()
    algorithm, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        # tensors rather than a 625-element tuple of Python ints: smaller and weights_only-safe
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"algorithm": str(algorithm), "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    # only when CUDA is already initialised: asking earlier would start a CUDA context on a CPU run
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: Mapping) -> None:
    """Put back what capture_rng() returned, so the next random draws repeat the saved run's."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["algorithm"], npst["key"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # a process sees every GPU of the node; restore those that exist on both machines
        for index, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, index)
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


# ----------------------------------------------------------------------------------------------
# Turning live state into something safe to write


def _cpu_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    t = t.cpu().contiguous() if t.device.type != "cpu" else t.contiguous()
    # a view of a larger storage would drag the whole storage into the file
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def _model_tensors(model_state: Mapping) -> dict[str, torch.Tensor]:
    if not isinstance(model_state, Mapping):
        raise TypeError(f"model_state must be a dict of tensors (model.state_dict()), got {type(model_state).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model_state.items():
        if not isinstance(key, str):
            raise TypeError(f"model_state key {key!r} is not a string")
        if key.startswith("_orig_mod.") or "._orig_mod." in key:
            # we refuse rather than strip: a checkpoint's keys are the plain module's, always
            raise ValueError(f"model_state key {key!r} comes from a torch.compile'd module: pass the "
                             f"uncompiled model's state_dict() (the module you handed to torch.compile)")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"model_state[{key!r}] is a {type(value).__name__}, not a tensor")
        t = _cpu_tensor(value)
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            # tied weights (e.g. embedding = head) share storage; safetensors refuses shared tensors,
            # so store a copy; load_state_dict writes both keys into the one tied parameter
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


_PLAIN = (type(None), bool, int, float, str)


def _plain(obj, where: str):
    """obj with every tensor moved to CPU; TypeError naming the path of anything weights_only rejects.

    Checked at save time so that an unloadable optimizer state fails now, not at resume hours later.
    """
    if isinstance(obj, torch.Tensor):
        return _cpu_tensor(obj)
    if type(obj) in _PLAIN:
        return obj
    if isinstance(obj, np.generic) and isinstance(obj.item(), _PLAIN):
        return obj.item()  # e.g. an lr computed with numpy: numpy scalars need unpickling code
    if isinstance(obj, (bool, int, float, str)):
        # subclasses (IntEnum, np.float64) pickle as their class; store the plain value
        return next(t for t in (bool, int, float, str) if isinstance(obj, t))(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; only str and int keys can be saved")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if type(obj) in (list, tuple):  # not namedtuples: weights_only cannot rebuild their class
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: only tensors, numbers, "
                    f"strings, None and lists/tuples/dicts of them can be saved (torch.load weights_only)")


def _json_bytes(obj, where: str) -> bytes:
    try:
        # NaN/inf stay allowed: a diverged run's metrics must not make its checkpoint unsaveable
        return json.dumps(obj, indent=1).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where} must be JSON-serialisable (plain dicts, lists, numbers, strings): {e}") from None


# ----------------------------------------------------------------------------------------------
# Save


def _default_barrier() -> Callable[[], None]:
    return torch.distributed.barrier if dist_initialized() else (lambda: None)


def save_checkpoint(
    ckpt_dir: PathLike,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor] | None,
    optimizer_states: list[dict] | None,
    meta: dict | None,
    loader_state: dict | None = None,
    rng: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    barrier: Callable[[], None] | None = None,
) -> Path:
    """Write step `step` under ckpt_dir atomically and return its directory. Every rank calls this.

    model_state: the uncompiled module's state_dict() (keys with torch.compile's `_orig_mod.` are
        refused); only rank 0's is written, other ranks may pass None.
    optimizer_states: this rank's optimizers' state_dicts (sharded optimizers differ per rank), or None.
    meta: JSON-able dict for meta.json (model_config, train_config, metrics, phase, git commit...);
        read on rank 0 only. RESERVED_META_KEYS are written by this function and may not be passed.
    loader_state: this rank's JSON-able dataloader state; meta.json gets the list of every rank's.
    rng: save this rank's RNG states (capture_rng) for an exact resume.
    rank, world_size: default to the running job's (common.rank_and_world).
    barrier: defaults to torch.distributed.barrier when initialised, else a no-op.

    Protocol: every rank checks that step_N is not a complete step already (a step is never saved
    over; an incomplete folder, e.g. an interrupted copy, is replaced), rank 0 makes the temp dir
    .step_N.tmp (removing one left by a crash), barrier, each rank writes, fsyncs and hashes its
    optim/rng files, barrier, rank 0 writes the model and meta.json (last, with the manifest of every
    file), renames the dir to step_N, barrier. All ranks must see one shared filesystem.
    """
    ckpt_dir = Path(ckpt_dir)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    rank, world_size = rank_and_world(rank, world_size)
    barrier = barrier or _default_barrier()
    final = ckpt_dir / sf.step_name(step)
    temp = atomic_dir.temp_path(final)
    if final.is_dir() and _step_problem(final) is None:
        raise ValueError(f"{final} already holds a complete checkpoint and a step is never saved over: resume "
                         f"from it (--resume=auto), save under another --model_tag, or delete that folder")

    # Validate and convert before anything is written: a bad argument fails with its own message
    # and leaves no files (the other ranks then stop at the barrier's timeout, as on any rank error).
    optim = None if optimizer_states is None else _plain(list(optimizer_states), "optimizer_states")
    if loader_state is not None:
        _json_bytes(loader_state, "loader_state")
    if rank == 0:
        if model_state is None or meta is None:
            raise ValueError("rank 0 must pass model_state and meta")
        clash = [k for k in RESERVED_META_KEYS if k in meta]
        if clash:
            raise ValueError(f"meta may not set {clash}: save_checkpoint writes these itself")
        tensors = _model_tensors(model_state)
        phase = meta.get("phase", _phase_of(ckpt_dir))
        head = {"format": FORMAT, "phase": phase, "step": step, "world_size": world_size,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "has_optimizer": optim is not None, "has_rng": bool(rng)}
        meta_out = {**head, **{k: v for k, v in meta.items() if k != "phase"}}
        _json_bytes(meta_out, "meta")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if temp.exists():
            shutil.rmtree(temp)  # a crashed save of this same step
        temp.mkdir()
    barrier()

    mine = ([optim_file(rank)] if optim is not None else []) + ([rng_file(rank)] if rng else [])
    if optim is not None:
        sf.write_torch(temp / optim_file(rank), optim)
    if rng:
        sf.write_torch(temp / rng_file(rank), capture_rng())
    # each rank hashes its own files, in parallel, while they are still in the page cache
    scratch = {"loader_state": loader_state, "files": atomic_dir.manifest(temp, mine)}
    atomic_dir.write_bytes(temp / _scratch_file(rank), _json_bytes(scratch, "loader_state"))
    barrier()

    if rank == 0:
        _finish(temp, final, world_size, meta_out, tensors)
    barrier()
    return final


def _finish(temp: Path, final: Path, world_size: int, meta_out: dict, tensors: dict) -> None:
    """Rank 0, once every rank has written: fold in their manifests and loader states, write the model
    and meta.json, install the folder."""
    files, loader_states = {}, []
    for r in range(world_size):
        path = temp / _scratch_file(r)
        scratch = json.loads(path.read_bytes()) if path.is_file() else {"files": {}, "loader_state": None}
        expected = (([optim_file(r)] if meta_out["has_optimizer"] else [])
                    + ([rng_file(r)] if meta_out["has_rng"] else []))
        if sorted(scratch["files"]) != sorted(expected):
            raise RuntimeError(f"rank {r} did not write {expected} into {temp}: every rank must call "
                               f"save_checkpoint with the same optimizer/rng choices on a shared filesystem")
        files.update(scratch["files"])
        loader_states.append(scratch["loader_state"])
        path.unlink(missing_ok=True)
    if any(s is not None for s in loader_states):
        meta_out["loader_states"] = loader_states
    sf.write_model(temp / MODEL_FILE, tensors)
    meta_out["files"] = {**atomic_dir.manifest(temp, [MODEL_FILE]), **files}
    # meta.json last: a copy that has it but not every file it lists at its size is incomplete
    atomic_dir.write_bytes(temp / META_FILE, _json_bytes(meta_out, "meta"))
    if final.exists():
        atomic_dir.remove(final)  # not a checkpoint (checked above): e.g. the folder of an interrupted copy
    atomic_dir.install(temp, final)


# ----------------------------------------------------------------------------------------------
# Load


@dataclass
class Checkpoint:
    """One loaded step, as seen by one rank."""

    path: Path  # the step directory
    step: int
    meta: dict  # meta.json: model_config, train_config, metrics, loader_states (all ranks), ...
    model_state: dict[str, torch.Tensor]
    optimizer_states: list[dict] | None  # this rank's; None for model-only loads or none saved
    rng: dict | None  # this rank's RNG states for restore_rng; None for model-only loads
    loader_state: dict | None  # this rank's dataloader state; None for model-only loads


def read_meta(ckpt_dir: PathLike, step: int) -> dict:
    """meta.json of one complete step, checked, without touching the tensors (e.g. to compare world sizes)."""
    return sf.parse_meta(Path(ckpt_dir) / sf.step_name(step))


def _pick_step(ckpt_dir: Path, ok: bool, phase: str | None, step: int | None, verify: bool) -> int:
    if step is not None:
        return _require_complete(ckpt_dir, ok, step, verify)
    found = latest_step(ckpt_dir, verify=verify) if ok else None
    if found is None:
        partial = _step_dirs(ckpt_dir)[-1:] if ok else []
        why = "".join(f" ({d.name} is incomplete: {_step_problem(d, verify)})" for _, d in partial)
        raise FileNotFoundError(_missing_message(phase, ckpt_dir) + why)
    return found


def load_checkpoint(
    phase_or_dir: PathLike,
    step: int | None = None,
    *,
    tag: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    load_optimizer: bool = True,
    device: str | torch.device = "cpu",
    verify: bool | None = None,
) -> Checkpoint:
    """Load a complete step (None = latest) for this rank: a phase name (+ tag) or a checkpoint dir.

    load_optimizer=True (resuming) also loads this rank's optimizer states, RNG and loader state, and
    requires the saved world size, since optimizer states are sharded per rank. load_optimizer=False
    is the model-only load (fine-tuning from it, inference, a different world size): model and meta.
    verify: also compare every file's sha256 with meta.json (None: NANOCHAT_VERIFY_CHECKPOINTS=1).
    A damaged file raises ValueError naming it; a missing or incomplete step FileNotFoundError.
    """
    ckpt_dir, ok = _resolve(phase_or_dir, tag)
    phase = phase_or_dir if isinstance(phase_or_dir, str) and phase_or_dir in PHASES else _phase_of(ckpt_dir)
    step = _pick_step(ckpt_dir, ok, phase, step, _verify_requested(verify))
    path = ckpt_dir / sf.step_name(step)
    meta = sf.parse_meta(path)
    model_state = sf.load_safetensors(path / MODEL_FILE, device)
    optimizer_states = rng = loader_state = None
    if load_optimizer:
        rank, world_size = rank_and_world(rank, world_size)
        saved = meta["world_size"]
        if saved != world_size:
            raise ValueError(f"{path} was saved by {saved} ranks but this run has {world_size}: optimizer "
                             f"states are sharded per rank, so resume with {saved} processes, or load "
                             f"model-only (load_optimizer=False) and start the optimizers fresh")
        if meta["has_optimizer"]:
            optimizer_states = sf.load_torch(path / optim_file(rank), device)
        if meta["has_rng"]:
            rng = sf.load_torch(path / rng_file(rank), "cpu")  # RNG states are CPU byte tensors
        if meta.get("loader_states"):
            loader_state = meta["loader_states"][rank]
    return Checkpoint(path, step, meta, model_state, optimizer_states, rng, loader_state)


# ----------------------------------------------------------------------------------------------
# Prune


def prune_checkpoints(ckpt_dir: PathLike, keep_last: int, *, keep_step: int | None = None) -> list[Path]:
    """Keep the newest keep_last complete steps (<= 0: all) and remove older ones; returns what went.

    Also removes temp dirs of dead saves at or below the newest complete step. keep_step (the step
    just written, or being written) is never removed, complete or temp. Call on rank 0 only, after
    save_checkpoint has returned, and never while another run writes into the same directory.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    steps = list_checkpoints(ckpt_dir)
    doomed = []
    if steps:
        for d in sorted(ckpt_dir.iterdir()):
            m = _TEMP_RE.match(d.name)
            if m and int(m.group(1)) <= steps[-1] and int(m.group(1)) != keep_step and d.is_dir():
                doomed.append(d)
    # temp dirs first: removing step N goes through the name .step_N.old, which must be free by then
    doomed += [ckpt_dir / sf.step_name(s) for s in (steps[:-keep_last] if keep_last > 0 else []) if s != keep_step]
    for d in doomed:
        atomic_dir.remove(d)
    return doomed


def load_model(phase_or_dir: PathLike, step: int | None = None, *, tag: str | None = None,
               device: str | torch.device = "cpu", verify: bool | None = None):
    """Rebuild the model a checkpoint was saved from (its meta's model_config) and load its weights.

    Returns (model in eval mode, meta). Model-only: works for any world size.
    """
    from nanochat.gpt import GPT, GPTConfig

    saved = load_checkpoint(phase_or_dir, step, tag=tag, load_optimizer=False, device=device, verify=verify)
    try:
        config = GPTConfig(**saved.meta["model_config"])
    except (KeyError, TypeError, ValueError) as e:  # missing, an unknown field, a bad value
        raise sf.damaged(saved.path / META_FILE, f"has no usable model_config ({sf.one_line(e)[:200]})") from None
    with torch.device("meta"):
        model = GPT(config)
    check_model_state(model.state_dict(), saved.model_state, saved.path / MODEL_FILE)
    model.to_empty(device=device)
    model.init_weights()  # fills the rotary tables, which are not part of the saved state
    model.load_state_dict(saved.model_state)
    model.eval()
    return model, saved.meta


def load_model_and_tokenizer(phase_or_dir: PathLike, step: int | None = None, *, tag: str | None = None,
                             device: str | torch.device = "cpu"):
    """(model, tokenizer, meta) of a checkpoint and the tokenizer in the base dir, checked to belong
    together: the one place that catches a tokenizer retrained after the model was trained."""
    from nanochat.tokenizer import Tokenizer

    model, meta = load_model(phase_or_dir, step, tag=tag, device=device)
    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    if model.config.vocab_size != tokenizer.n_vocab:
        raise ValueError(f"the checkpoint's vocabulary ({model.config.vocab_size}) is not the tokenizer's "
                         f"({tokenizer.n_vocab}): was the tokenizer retrained after this model?")
    return model, tokenizer, meta
