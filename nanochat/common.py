"""Shared plumbing: the base directory, rank-aware printing and logging, device detection.

Everything here is cheap to import: torch is imported inside the functions that need it, so
tokenizer and data tools start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BASE_DIR_ENV = "NANOCHAT_BASE_DIR"
DEFAULT_BASE_DIR = Path("~/.cache/nanochat")


def temp_path(path: str | os.PathLike) -> Path:
    """The one temp-name convention: a hidden sibling of `path` (same filesystem, so the rename is
    atomic) marked with the writer's pid, so two writers never share a temp file."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path to write `path` through; renamed over `path` on success, removed on failure.

    A reader sees the old file or the new one, never a half-written one.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them (a crash keeps one or the other)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data, **dump_kwargs) -> Path:
    """Write JSON atomically (see atomic_path)."""
    import json

    dump_kwargs.setdefault("indent", 2)
    return write_atomic(path, json.dumps(data, **dump_kwargs) + "\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool, busy_message: str = "", error: type[Exception] = ValueError):
    """Hold an exclusive flock on `path` (created if missing) for the block.

    wait=True blocks until the holder is done (printing busy_message once if it has to wait);
    wait=False raises error(busy_message) at once (a ValueError: scripts print it as one line). Where flock does not exist (Windows),
    the block runs unguarded: callers keep their files whole by renames, the lock only saves work.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise error(busy_message or f"{path} is locked by another process") from None
            if busy_message:
                print0(busy_message)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


class Throttle:
    """True at most once every `every` seconds: for progress lines that show a long loop is alive
    without flooding the log."""

    def __init__(self, every: float):
        import time

        self.every = every
        self.start = self.last = time.perf_counter()

    def ready(self) -> bool:
        import time

        now = time.perf_counter()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    @property
    def elapsed(self) -> float:
        import time

        return time.perf_counter() - self.start


def get_base_dir(create: bool = True) -> Path:
    """Where every artifact lives: $NANOCHAT_BASE_DIR, else ~/.cache/nanochat.

    A Korean run points NANOCHAT_BASE_DIR elsewhere (e.g. ~/.cache/nanochat_ko) so the two never mix.
    """
    raw = os.environ.get(BASE_DIR_ENV, "").strip()
    base = Path(raw).expanduser() if raw else DEFAULT_BASE_DIR.expanduser()
    if create:
        base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass(frozen=True)
class DistInfo:
    """The process's place in a torchrun job, read from the environment torchrun sets."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def get_dist_info() -> DistInfo:
    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

    info = DistInfo(env_int("RANK", 0), env_int("LOCAL_RANK", 0), env_int("WORLD_SIZE", 1))
    if not (0 <= info.rank < info.world_size):
        raise ValueError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    return info


def dist_initialized() -> bool:
    """True inside a started torch.distributed job (the one test for "are collectives needed")."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size): the values given, else the started torch.distributed job's,
    else the torchrun environment's (0 and 1 outside torchrun). The one place these defaults live."""
    if rank is None or world_size is None:
        if dist_initialized():
            import torch.distributed as dist

            found = (dist.get_rank(), dist.get_world_size())
        else:
            info = get_dist_info()
            found = (info.rank, info.world_size)
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only, so a torchrun job with 8 ranks prints each line once."""
    if get_dist_info().is_master:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


class _RankFormatter(logging.Formatter):
    def __init__(self, rank: int, world_size: int):
        prefix = f"[rank {rank}] " if world_size > 1 else ""
        super().__init__(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def setup_logging(level: int | str = logging.INFO, all_ranks: bool = False) -> None:
    """Configure the root logger once per process (scripts call this in main, never at import).

    Non-master ranks log warnings and errors only unless all_ranks is set, so that multi-GPU logs
    stay readable while a failure on any rank is still visible.
    """
    info = get_dist_info()
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RankFormatter(info.rank, info.world_size))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if (info.is_master or all_ranks) else max(level, logging.WARNING))


def autodetect_device_type() -> str:
    """'cuda' if a CUDA GPU is usable, else 'mps' on Apple silicon, else 'cpu'."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# The choices of --device_type and --dtype in every script's options (None = decided here).
DeviceType = Literal["cuda", "mps", "cpu"]
DType = Literal["bf16", "fp16", "fp32"]


def resolve_device_type(requested: str | None = None) -> str:
    """Validate a --device_type value (None = autodetect) against what this machine has.

    Fails with one line instead of torch's deep stack trace (e.g. 'invalid device ordinal').
    """
    requested = (requested or "").strip().lower()
    if requested in ("", "auto"):
        return autodetect_device_type()
    if requested not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device_type must be cuda, mps or cpu (or unset for auto), got {requested!r}")
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device_type=cuda was asked for but no CUDA GPU is visible: use --device_type=cpu")
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device_type=mps was asked for but MPS is not available: use --device_type=cpu")
    return requested


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX): without it, bf16 autocast on a
    CPU is emulated, slower than fp32, and not offered."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(dtype: str | None, device_type: str, *, training: bool = False) -> str:
    """None = auto: bf16 on CUDA (fp16 where the GPU lacks bf16); on a CPU, bf16 for training where
    bf16 is native (AVX-512 BF16 or AMX: cpu_has_bf16) and fp32 otherwise, and fp32 for evaluation
    and inference; fp32 on MPS.

    On such a CPU bf16 autocast trains faster than fp32 at the same loss per token (measured,
    dev/BENCHMARKS.md "CPU defaults"); inference keeps fp32 by default, its speed in bf16 unmeasured.
    --dtype=bf16 on a CPU without native bf16 is refused (emulated, slower than fp32).
    """
    dtype = (dtype or "").strip().lower()
    if dtype and dtype not in DTYPES:
        raise ValueError(f"dtype must be bf16, fp16 or fp32 (or unset for auto), got {dtype!r}")
    if device_type == "cpu" and (dtype == "bf16" or (not dtype and training)):
        if cpu_has_bf16():
            return "bf16"
        if dtype == "bf16":
            raise ValueError("dtype=bf16 on CPU needs native bf16 (AVX-512 BF16 or AMX), which this CPU lacks: "
                             "use --dtype=fp32")
        return "fp32"
    if device_type != "cuda":
        if dtype in ("bf16", "fp16"):
            raise ValueError(f"dtype={dtype} needs a CUDA GPU; on {device_type} use --dtype=fp32")
        return "fp32"
    if dtype:
        return dtype
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(device_type: str, dtype: str):
    """The mixed-precision context for forward passes; a no-op for fp32."""
    import torch

    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, DTYPES[dtype]))


def torch_dtype(dtype: str):
    """The torch dtype of a resolved --dtype name (what a KV cache or bf16 weights are stored in)."""
    import torch

    return getattr(torch, DTYPES[dtype])


@dataclass(frozen=True)
class Compute:
    """What compute_init decided: the device this rank uses, its precision and its place in the job."""

    device_type: str
    device: object  # torch.device
    dist: DistInfo
    dtype: str = "fp32"  # bf16 | fp16 | fp32, resolved

    def autocast(self):
        """A fresh mixed-precision context for this run's forward passes."""
        return autocast(self.device_type, self.dtype)


def compute_init(device_type: str | None = None, seed: int = 42, dtype: str | None = None, *,
                 training: bool = False) -> Compute:
    """Pick the device and precision, start torch.distributed under torchrun (NCCL on CUDA, gloo
    on CPU), seed. The one place that decides device, dtype and autocast (`training`: the automatic
    dtype of a training run, see resolve_dtype).

    Fails with one line when torchrun starts more processes than there are GPUs, instead of
    CUDA's 'invalid device ordinal' deep inside the first allocation.
    """
    import random

    import torch

    info = get_dist_info()
    device_type = resolve_device_type(device_type)
    dtype = resolve_dtype(dtype, device_type, training=training)  # a bad --dtype fails before any process group starts
    if device_type == "cuda":
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise ValueError(
                f"local rank {info.local_rank} has no GPU: only {count} visible; launch with "
                f"torchrun --nproc_per_node={count} (or fewer)"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device(device_type)
    if info.is_distributed and device_type == "mps":
        raise ValueError("multi-process runs need CUDA (NCCL) or CPU (gloo); MPS supports one process")
    if info.is_distributed and not torch.distributed.is_initialized():
        import datetime

        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device_type == "cuda" else {}
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is a dependency, but seeding must not be the reason a run dies
        pass
    return Compute(device_type, device, info, dtype)


def compute_cleanup() -> None:
    import torch

    if dist_initialized():
        torch.distributed.destroy_process_group()


def run_main(main, *args, errors: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)):
    """Call a script's main; an expected user-facing error becomes one 'error: ...' line and exit 1.

    Set NANOCHAT_DEBUG=1 to get the full traceback instead.
    """
    try:
        return main(*args)
    except errors as e:
        if os.environ.get("NANOCHAT_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
