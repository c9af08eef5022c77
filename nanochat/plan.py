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
# shards: karpathy/nanochat's speedrun.sh sizes its download as 20 tokens per parameter x 4.8
# characters per token / 250M characters per FineWeb-Edu shard, rounded up with a margin
# (d20: 216 needed, 240 fetched; its d32 run fetches 800)
TOKENS_PER_PARAM = 20
CHARS_PER_TOKEN = 4.8
CHARS_PER_SHARD = 250e6
SHARD_MARGIN = 1.1
# validation: a fraction of the training tokens spread over the run's evaluations, between a floor
# that still gives a usable bits-per-byte and the reference's 10 x 524,288 per evaluation
EVAL_FRACTION = 0.05
EVAL_TOKENS_FLOOR = 32_768
EVAL_TOKENS_CAP = 10 * 524_288


def device_batch_for_memory(mem_mb: int) -> int:
    """d20 at sequence 2048 holds 32 rows in ~80 GB; halve per halving of memory (accumulation keeps
    the step the same size, so the run trains the same)."""
    for floor_mb, batch in ((75_000, 32), (38_000, 16), (20_000, 8)):
        if mem_mb >= floor_mb:
            return batch
    return 4


def model_params(depth: int, vocab_size: int = 65536, aspect_ratio: int = 64, head_dim: int = 128) -> int:
    """Parameters of nanochat/gpt.py's model: 12 x width^2 per layer (attention 4, MLP 8) plus the
    untied embedding and head; width = depth x aspect_ratio rounded up to whole heads (d20: 560,988,160)."""
    width = -(-depth * aspect_ratio // head_dim) * head_dim
    return 12 * depth * width * width + 2 * vocab_size * width


def shards_for_depth(depth: int, vocab_size: int = 65536) -> int:
    """FineWeb-Edu training shards for a Chinchilla-sized run at this depth, a multiple of 10
    (d20: 240, d26: 460, d32: 800)."""
    chars = model_params(depth, vocab_size) * TOKENS_PER_PARAM * CHARS_PER_TOKEN
    return max(10, -(-int(chars * SHARD_MARGIN / CHARS_PER_SHARD) // 10) * 10)


def default_eval_tokens(train_tokens: int, evaluations: int) -> int:
    """Validation tokens per evaluation when --eval_tokens is not given: EVAL_FRACTION of the run's
    training tokens over its evaluations, within [EVAL_TOKENS_FLOOR, EVAL_TOKENS_CAP]. A 100-step
    run of 512-token steps validates 2 x 32,768 tokens instead of 2 x 5.2M; d20 keeps 5.2M."""
    share = int(EVAL_FRACTION * train_tokens / max(1, evaluations))
    return min(EVAL_TOKENS_CAP, max(EVAL_TOKENS_FLOOR, share))


def evaluation_count(num_iterations: int, eval_every: int | None) -> int:
    """Evaluations in a run: step 0, every eval_every steps, and the last step (nanochat.training.due)."""
    if eval_every is None:
        return 0
    return num_iterations // eval_every + (1 if num_iterations % eval_every else 0) + 1


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
    num_shards: int  # training shards the depth needs (NUM_SHARDS overrides it)

    @property
    def cost(self) -> float | None:
        return None if self.price_per_gpu_hour is None else self.hours * self.price_per_gpu_hour * self.gpus


def make_plan(gpus: int, gpu_name: str = "", gpu_mem_mb: int = 0, device_batch_size: int | None = None,
              depth: int = 20, vocab_size: int = 65536) -> Plan:
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
        num_shards=shards_for_depth(depth, vocab_size),
    )


def shell_assignments(plan: Plan) -> str:
    cost = "unknown" if plan.cost is None else f"${plan.cost:.0f}"
    values = {"DEVICE_BATCH_SIZE": plan.device_batch_size, "TOTAL_BATCH_SIZE": plan.total_batch_size,
              "SFT_EXAMPLES_PER_STEP": plan.sft_examples_per_step, "RL_EXAMPLES_PER_STEP": plan.rl_examples_per_step,
              "PLAN_HOURS": f"{plan.hours:.1f}", "PLAN_COST": cost,
              "PLAN_NUM_SHARDS": plan.num_shards}
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


@dataclass
class Options:
    gpus: int = 1  # GPUs in the run
    gpu_name: str | None = None  # as nvidia-smi names it (prices the run; None = unknown price)
    gpu_mem_mb: int = 0  # memory of the smallest GPU in MiB (sizes the device batch)
    device_batch_size: int | None = None  # force the device batch (None = sized to the memory)
    depth: int = 20  # model depth (sizes the shard download)
    vocab_size: int = 65536  # tokenizer vocabulary (sizes the shard download)


if __name__ == "__main__":
    from nanochat.common import run_main
    from nanochat.config import parse_args

    run_main(lambda o: print(shell_assignments(make_plan(o.gpus, o.gpu_name or "", o.gpu_mem_mb, o.device_batch_size,
                                                         o.depth, o.vocab_size))),
             parse_args(Options, prog="python -m nanochat.plan", description=__doc__))
