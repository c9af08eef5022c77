"""The run plan for a machine: device batch size, the batch arithmetic of every phase for any GPU
count, and the time and cost estimate. speedrun.sh and runpod_speedrun.sh read it as shell
assignments, so the numbers live here once:

    eval "$(python3 -m nanochat.plan --gpus=8 --gpu_name='NVIDIA H100 80GB HBM3' --gpu_mem_mb=81559)"

It imports neither torch nor anything outside the standard library: the pod's preflight runs it
before the environment is installed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from nanochat.hardware import gpu_entry

BASE_TOKENS_PER_STEP = 524_288  # karpathy/nanochat's pretraining step: 32 rows x 2048 x 8 GPUs
SFT_EXAMPLES_PER_STEP = 32  # conversations per SFT step
SFT_DEVICE_BATCH = 4  # conversations per forward pass in SFT
RL_EXAMPLES_PER_STEP = 16  # prompts per RL step
SEQ_LEN = 2048
REFERENCE_HOURS = 4.0  # karpathy/nanochat's d20 speedrun on 8 H100s (its README: ~4 hours)
REFERENCE_GPUS = 8


def device_batch_for_memory(mem_mb: int) -> int:
    """d20 at sequence 2048 holds 32 rows in ~80 GB; halve per halving of memory (accumulation keeps
    the step the same size, so the run trains the same)."""
    for floor_mb, batch in ((75_000, 32), (38_000, 16), (20_000, 8)):
        if mem_mb >= floor_mb:
            return batch
    return 4


def round_to_multiple(target: int, unit: int) -> int:
    """The multiple of `unit` nearest `target` (at least one unit): what accumulation can reach."""
    return max(1, (target + unit // 2) // unit) * unit


@dataclass(frozen=True)
class Plan:
    gpus: int
    device_batch_size: int
    total_batch_size: int  # tokens per pretraining / midtraining step
    sft_examples_per_step: int
    rl_examples_per_step: int
    hours: float
    price_per_gpu_hour: float | None

    @property
    def cost(self) -> float | None:
        return None if self.price_per_gpu_hour is None else self.hours * self.price_per_gpu_hour * self.gpus


def make_plan(gpus: int, gpu_name: str = "", gpu_mem_mb: int = 0, device_batch_size: int | None = None) -> Plan:
    """Any GPU count keeps each step near the reference's size by rounding the gradient accumulation."""
    if gpus < 1:
        raise ValueError(f"a GPU plan needs at least one GPU, got {gpus}")
    dbs = device_batch_size or device_batch_for_memory(gpu_mem_mb)
    entry = gpu_entry(gpu_name) if gpu_name else None
    return Plan(
        gpus=gpus,
        device_batch_size=dbs,
        total_batch_size=round_to_multiple(BASE_TOKENS_PER_STEP, dbs * SEQ_LEN * gpus),
        sft_examples_per_step=round_to_multiple(SFT_EXAMPLES_PER_STEP, SFT_DEVICE_BATCH * gpus),
        rl_examples_per_step=-(-RL_EXAMPLES_PER_STEP // gpus) * gpus,  # prompts must split evenly over GPUs
        hours=REFERENCE_HOURS * REFERENCE_GPUS / gpus,
        price_per_gpu_hour=entry[2] if entry else None,
    )


def shell_assignments(plan: Plan) -> str:
    cost = "unknown" if plan.cost is None else f"${plan.cost:.0f}"
    values = {"DEVICE_BATCH_SIZE": plan.device_batch_size, "TOTAL_BATCH_SIZE": plan.total_batch_size,
              "SFT_EXAMPLES_PER_STEP": plan.sft_examples_per_step, "RL_EXAMPLES_PER_STEP": plan.rl_examples_per_step,
              "PLAN_HOURS": f"{plan.hours:.1f}", "PLAN_COST": cost}
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


@dataclass
class Options:
    gpus: int = 1  # GPUs in the run
    gpu_name: str | None = None  # as nvidia-smi names it (prices the run; None = unknown price)
    gpu_mem_mb: int = 0  # memory of the smallest GPU in MiB (sizes the device batch)
    device_batch_size: int | None = None  # force the device batch (None = sized to the memory)


if __name__ == "__main__":
    from nanochat.common import run_main
    from nanochat.config import parse_args

    run_main(lambda o: print(shell_assignments(make_plan(o.gpus, o.gpu_name or "", o.gpu_mem_mb, o.device_batch_size))),
             parse_args(Options, prog="python -m nanochat.plan", description=__doc__))
