"""The device batch that fits the GPU by itself (--device_batch_size=none, auto), and the out-of-memory
back-off of a training step.

Neither changes what a run computes: the batch per optimizer step is fixed by the options, and
gradient accumulation absorbs the device batch. A step's rows are fetched once and run in
micro-batches of the current device batch, so halving it after an out-of-memory redoes the same
step on the same rows (the mean of equal-size micro-batch means is the mean over the rows).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import TypeVar

import torch

from nanochat.common import print0

# A fitted batch's peak must stay under this fraction of the GPU's memory: the allocator's
# fragmentation, evaluation batches and the odd longer step need room the probe did not see.
MEMORY_BUDGET = 0.90
# On a device without an out-of-memory to probe (CPU, MPS), auto means this many rows (the
# pretraining script's old default; each phase passes its own), or fewer where a step has fewer.
AUTO_NON_CUDA = 32
# With no rows per step to divide (one forward pass per step), the fit starts from this many rows.
AUTO_MAX_ROWS = 1024
# Test hook: comma-separated steps at which the step raises torch.OutOfMemoryError once, after its
# first micro-batch's backward (so a partial gradient must be discarded), even on CPU.
TEST_OOM_ENV = "NANOCHAT_TEST_OOM_AT_STEP"

T = TypeVar("T")


def largest_power_of_two_dividing(n: int, cap: int | None = None) -> int:
    """The largest power of two that divides n (and is <= cap): a device batch that splits n rows evenly."""
    if n < 1:
        raise ValueError(f"need a positive row count, got {n}")
    b = n & -n  # lowest set bit
    while cap is not None and b > max(cap, 1):
        b //= 2
    return b


def free_memory(model: torch.nn.Module | None = None) -> None:
    """Drop gradients and cached blocks after an out-of-memory; call it outside the `except` block,
    whose traceback still references the failed step's tensors."""
    if model is not None:
        model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fit_device_batch(try_step: Callable[[int], object], max_batch: int, *, budget_bytes: int | None = None,
                     peak_bytes: Callable[[], int] | None = None, reset_peak: Callable[[], None] | None = None,
                     model: torch.nn.Module | None = None, log: Callable[[str], None] = print0) -> int:
    """The largest power of two <= max_batch at which try_step(b), one full training step, runs
    without an out-of-memory and (where budget_bytes is given) peaks under budget_bytes.

    Tries from the top down, halving: the first batch that fits is the answer, and every try above
    it fails fast. Raises ValueError when not even a batch of 1 fits.
    """
    b = 1 << (max(max_batch, 1).bit_length() - 1)  # the largest power of two <= max_batch
    while True:
        reason = None
        if reset_peak is not None:
            reset_peak()
        try:
            try_step(b)
        except torch.OutOfMemoryError:
            reason = "out of memory"
        free_memory(model)
        if reason is None and budget_bytes is not None and peak_bytes is not None:
            peak = peak_bytes()
            if peak > budget_bytes:
                reason = f"peak {peak / 2**30:.1f} GiB is over the {budget_bytes / 2**30:.1f} GiB budget"
        if reason is None:
            return b
        if b == 1:
            raise ValueError(f"not even --device_batch_size=1 fits this GPU ({reason}): use a smaller model "
                             "or a shorter --max_seq_len")
        log(f"device batch {b}: {reason}; trying {b // 2}")
        b //= 2


def probe_step(model, compute, seq_len: int):
    """try_step(b) for fit_device_batch: one full training step of b random rows of seq_len tokens
    (forward, backward, optimizer step), the weights left as they were."""
    from nanochat.optim import build_optimizers, set_lr_multiplier

    V, device = model.config.vocab_size, compute.device

    def try_step(b: int) -> None:
        # per-rank optimizers (world_size=1: no collectives, so a rank that runs out of memory cannot
        # leave the others waiting; they hold the full optimizer state, more than the sharded one)
        # at learning rate 0: the step allocates all its state and leaves the weights as they are
        optimizers = build_optimizers(model.parameter_groups(), model_dim=model.config.n_embd)
        set_lr_multiplier(optimizers, 0.0)
        x = torch.randint(0, V, (b, seq_len), device=device)
        with compute.autocast():
            loss = model(x, x)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    return try_step


def auto_device_batch(compute, model, seq_len: int, rows_per_step: int | None, *, non_cuda: int) -> int:
    """The device batch of --device_batch_size=none (auto), a power of two dividing rows_per_step (this
    rank's rows or conversations per optimizer step; None = no limit, up to AUTO_MAX_ROWS).

    On CUDA: the largest whose full step at seq_len (the run's longest rows) fits MEMORY_BUDGET of the
    GPU, probed with the uncompiled model (which needs at least the compiled one's memory), the
    minimum over ranks. Elsewhere: non_cuda, the phase's fixed default.
    """
    cap = AUTO_MAX_ROWS if rows_per_step is None else largest_power_of_two_dividing(rows_per_step)
    if compute.device_type != "cuda":
        return min(cap, largest_power_of_two_dividing(non_cuda))
    device = compute.device
    fitted = fit_device_batch(probe_step(model, compute, seq_len), cap, model=model, **cuda_fit(device))
    if compute.dist.is_distributed:
        import torch.distributed as dist

        agreed = torch.tensor(fitted, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        fitted = int(agreed.item())
    print0(f"device batch: {fitted} (auto: the largest power of two <= {cap} whose step fits "
           f"{MEMORY_BUDGET:.0%} of the GPU's memory)")
    return fitted


def cuda_fit(device: torch.device) -> dict:
    """fit_device_batch's memory arguments for a CUDA device: the budget and its peak counters."""
    total = torch.cuda.get_device_properties(device).total_memory
    return {"budget_bytes": int(MEMORY_BUDGET * total),
            "peak_bytes": lambda: torch.cuda.max_memory_allocated(device),
            "reset_peak": lambda: torch.cuda.reset_peak_memory_stats(device)}


def step_with_backoff(run_step: Callable[[int], T], micro: int, *, step: int, model: torch.nn.Module,
                      on_backoff: Callable[[int, int], None] | None = None) -> tuple[T, int]:
    """run_step(micro) for one training step; on an out-of-memory, discard the partial gradients, halve
    the micro-batch and run the same step again. Returns (its result, the micro-batch it ran at).

    run_step must redo the step from its already fetched rows: nothing is consumed twice.
    A micro-batch of 1 that still runs out of memory re-raises.
    """
    while True:
        try:
            return run_step(micro), micro
        except torch.OutOfMemoryError:
            if micro == 1:
                raise
        free_memory(model)
        micro //= 2
        if on_backoff is not None:
            on_backoff(step, micro)


class OOMInjector:
    """The test hook of TEST_OOM_ENV: `check(step)` raises torch.OutOfMemoryError once at each listed step."""

    def __init__(self, spec: str | None = None):
        spec = os.environ.get(TEST_OOM_ENV, "") if spec is None else spec
        try:
            self.pending = {int(s) for s in spec.split(",") if s.strip()}
        except ValueError:
            raise ValueError(f"{TEST_OOM_ENV}={spec!r}: expected comma-separated step numbers") from None

    def check(self, step: int) -> None:
        if step in self.pending:
            self.pending.discard(step)
            raise torch.OutOfMemoryError(f"injected out of memory at step {step} ({TEST_OOM_ENV})")
