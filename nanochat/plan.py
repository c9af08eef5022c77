"""The run plan for a machine: the preset its accelerator's memory picks (depth, sequence, vocabulary,
compile, batch), the batch arithmetic of every phase for any GPU count, and the time and cost
estimate. speedrun.sh and runpod_speedrun.sh read it as shell assignments, so the table lives here once:

    eval "$(python3 -m nanochat.plan --gpus=8 --gpu_name='NVIDIA H100 80GB HBM3' --gpu_mem_mb=81559)"

Options given (DEPTH=12 bash speedrun.sh passes --depth=12) win over the preset's. It imports neither
torch nor anything outside the standard library: the pod's preflight runs it before the environment
is installed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

from nanochat.hardware import gpu_entry

SFT_EXAMPLES_PER_STEP = 32  # conversations per SFT step
SFT_DEVICE_BATCH = 4  # conversations per forward pass in SFT
RL_EXAMPLES_PER_STEP = 16  # prompts per RL step
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


# the time estimate: training FLOPs = FLOPs per token (nanochat/gpt.py's estimate_flops) x tokens
# (TOKENS_PER_PARAM x parameters, base_train's default horizon) at peak x MFU on every GPU, plus the
# other stages. Calibration: karpathy/nanochat's d20 on 8 H100s trains in ~21,400 steps of 0.485 s
# (~48% MFU, ~2.9 h) and its whole speedrun takes ~3 h 51 min, so the tokenizer, the downloads,
# midtraining, SFT and the evaluations add ~35% to pretraining.
OTHER_STAGES = 0.35
CPU_RUN_HOURS = 0.15  # speedrun.sh's CPU configuration, measured: 8m21s on 2 idle cores with AVX-512 BF16 (dev/BENCHMARKS.md)


@dataclass(frozen=True)
class Preset:
    name: str
    min_mem_mb: int  # the smallest GPU memory (MiB, as nvidia-smi reports it) that picks this preset
    depth: int
    max_seq_len: int
    vocab_size: int
    compile: bool | None  # None: the phases' own rule (on a CPU: base and mid compile when the run pays for it)
    total_batch_size: int | None  # target tokens per pretraining / midtraining step (None: one pass)
    mfu: float  # assumed model FLOPs utilisation of pretraining
    default_peak: float  # peak FLOP/s assumed per device when nanochat/hardware.py does not list it
    why: str
    device_batch_size: int | None = None  # None: auto, the largest that fits (nanochat/batch_fit.py)


# CUDA presets, largest memory first; 6-8GB also takes anything smaller. Depths are chosen so one GPU
# of the class finishes in about half a day or less (compute-optimal, 20 tokens per parameter);
# 80 GB and up keep upstream's d20 speedrun, sized for an 8-GPU node. Smaller models take smaller
# steps so that they still get thousands of optimizer steps.
PRESETS = (
    Preset("141GB", 130_000, 20, 2048, 65536, True, 524_288, 0.48, 989e12,
           "upstream's d20 speedrun as on 80 GB; the memory lets the auto batch take more rows per pass "
           "(and DEPTH=26 fits without halving it)"),
    Preset("80GB", 75_000, 20, 2048, 65536, True, 524_288, 0.48, 312e12,
           "upstream's d20 speedrun: ~4 h on 8 H100s at its measured ~48% MFU; one GPU takes 8 times as long"),
    Preset("40-48GB", 38_000, 12, 2048, 65536, True, 524_288, 0.40, 155e12,
           "d12 at full sequence and vocabulary: ~12 h on one A100 40GB, ~10 h on an L40S, 1.5 h on 8 "
           "A100s (d20 would take ~5 days on one)"),
    Preset("24GB", 20_000, 10, 2048, 32768, True, 262_144, 0.35, 71e12,
           "d10 with a 32K vocabulary (a 64K one would hold half the parameters): ~7 h on an RTX 4090, "
           "~16 h on a 3090"),
    Preset("12-16GB", 11_000, 8, 2048, 32768, True, 262_144, 0.35, 44e12,
           "d8 with a 32K vocabulary at full sequence: ~10 h on an RTX 4060 Ti 16GB (44 TFLOP/s), less on "
           "faster cards"),
    Preset("6-8GB", 0, 8, 1024, 16384, False, 131_072, 0.30, 24e12,
           "d8 at sequence 1024 with a 16K vocabulary fits 6 GB: ~9 h on an RTX 4060 Laptop GPU; compile off: "
           "no minutes-long compile per phase on a laptop CPU, no Triton needed, no recompiles for SFT's "
           "batch shapes (assumed ~15% slower: COMPILE=1 turns it on)"),
)
MPS_PRESET = Preset("MPS", 0, 4, 512, 8192, False, 32_768, 0.25, 7e12,
                    "Apple GPU: d4, sequence 512, 8K vocabulary, fp32 (the phases' default off CUDA), no "
                    "compile, one process; 7 TFLOP/s is an M2/M3 Pro-class GPU's fp32 rate")
CPU_PRESET = Preset("CPU", 0, 4, 256, 4096, None, None, 0.0, 0.0,
                    "no GPU: d4, sequence 256, 4K vocabulary for 300 base steps, a model that shows the "
                    "whole pipeline in minutes on 2 cores; compile auto: base training compiles when its "
                    "planned work pays for the compile (nanochat.training.compile_default)", device_batch_size=8)


def preset_for(device_type: str = "cuda", gpu_mem_mb: int = 0) -> Preset:
    """The preset of a device: CUDA by the memory of the smallest GPU, else MPS or CPU."""
    if device_type == "cpu":
        return CPU_PRESET
    if device_type == "mps":
        return MPS_PRESET
    return next(p for p in PRESETS if gpu_mem_mb >= p.min_mem_mb)


def model_width(depth: int, aspect_ratio: int = 64, head_dim: int = 128) -> int:
    """nanochat/gpt.py's sizing rule: depth x aspect_ratio rounded up to whole heads (d20: 1280)."""
    return -(-depth * aspect_ratio // head_dim) * head_dim


def flops_per_token(depth: int, vocab_size: int, max_seq_len: int) -> int:
    """Training FLOPs per token as GPT.estimate_flops counts them: 6 per matmul weight (12 x width^2
    per layer and the head; the embedding is a lookup) plus 12 x layers x width x sequence for attention."""
    width = model_width(depth)
    return 6 * (12 * depth * width * width + vocab_size * width) + 12 * depth * width * max_seq_len


def estimate_hours(depth: int, vocab_size: int, max_seq_len: int, peak: float, mfu: float, devices: int) -> float:
    """The whole run: Chinchilla-sized pretraining at peak x mfu on every device, plus OTHER_STAGES."""
    tokens = TOKENS_PER_PARAM * model_params(depth, vocab_size)
    seconds = flops_per_token(depth, vocab_size, max_seq_len) * tokens / (peak * mfu * devices)
    return seconds * (1 + OTHER_STAGES) / 3600


def rows_per_device(total_tokens: int, max_seq_len: int, devices: int) -> int:
    """The power of two nearest (by ratio) the rows each device gets of a step of about total_tokens:
    auto can then pick any power of two up to it, and accumulation fills the step exactly."""
    rows = max(1.0, total_tokens / (max_seq_len * devices))
    low = 1 << (int(rows).bit_length() - 1)
    return low if rows / low <= 2 * low / rows else 2 * low


def eval_batch_for_memory(gpu_mem_mb: int, max_seq_len: int, vocab_size: int) -> int:
    """Rows per pass of base_loss (which has no auto batch): a quarter of the memory for the fp32
    logits, a power of two in [1, 32] (d20 on 80 GB: 32, as upstream)."""
    rows = gpu_mem_mb * 2**20 // 4 // (max_seq_len * vocab_size * 4)
    return 1 << (min(max(rows, 1), 32).bit_length() - 1)


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
    device_type: str
    gpus: int  # processes: GPUs on CUDA, 1 on MPS and CPU
    gpu_name: str
    gpu_mem_mb: int
    preset: Preset
    depth: int
    max_seq_len: int
    vocab_size: int
    compile: bool | None  # None: the phases' own rule
    device_batch_size: int | None  # None: auto
    total_batch_size: int | None  # tokens per pretraining / midtraining step
    sft_examples_per_step: int
    rl_examples_per_step: int
    eval_device_batch_size: int  # base_loss's rows per pass
    peak_flops: float  # per device: the GPU table's, else the preset's assumption
    peak_listed: bool
    hours: float
    price_per_gpu_hour: float | None
    num_shards: int  # training shards the depth needs (NUM_SHARDS overrides it)
    overridden: tuple[str, ...] = field(default=())  # the options given instead of the preset's

    @property
    def cost(self) -> float | None:
        return None if self.price_per_gpu_hour is None else self.hours * self.price_per_gpu_hour * self.gpus

    def summary(self) -> str:
        """The one line speedrun.sh and runpod_speedrun.sh print before anything starts."""
        p = self.preset
        settings = (f"depth {self.depth}, seq {self.max_seq_len}, vocab {self.vocab_size}, "
                    f"compile {'auto' if self.compile is None else 'on' if self.compile else 'off'}, device batch "
                    f"{'auto' if self.device_batch_size is None else self.device_batch_size}")
        chosen = f"preset {p.name}" + (f" (overridden: {', '.join(self.overridden)})" if self.overridden else "")
        if self.device_type == "cpu":
            return f"CPU run: no GPU -> {chosen}: {settings}; ~{CPU_RUN_HOURS * 60:.0f} min on 2 cores (measured); why: {p.why}"
        hours = f"~{self.hours:.1f} h" if self.hours < 10 else f"~{self.hours:.0f} h"
        peak = (f"{self.peak_flops / 1e12:.0f} TFLOP/s peak" + ("" if self.peak_listed else " (assumed: not in the GPU table)")
                + f" x {p.mfu:.0%} MFU assumed, +{OTHER_STAGES:.0%} for the other stages")
        if self.device_type == "mps":
            return f"MPS run: Apple GPU -> {chosen}: {settings}; {hours} ({peak}); why: {p.why}"
        if self.cost is None:
            cost = f"cost unknown (no price for {self.gpu_name or 'an unnamed GPU'})"
        else:
            cost = f"~${self.cost:.0f} (at ${self.price_per_gpu_hour:.2f}/GPU-hour)"
        mem = f"{self.gpu_mem_mb / 1024:.0f} GB"
        return (f"GPU run: {self.gpus} x {self.gpu_name or 'GPU'} ({mem}) -> {chosen}: {settings}; {hours}, {cost} "
                f"[{peak}]; why: {p.why}")


def make_plan(gpus: int = 1, gpu_name: str = "", gpu_mem_mb: int = 0, device_batch_size: int | None = None,
              depth: int | None = None, vocab_size: int | None = None, max_seq_len: int | None = None,
              compile: bool | None = None, device_type: str = "cuda") -> Plan:
    """The preset of the device, with every option given winning over it. Any GPU count keeps each
    step near the preset's size by rounding the gradient accumulation."""
    if device_type == "cuda" and gpus < 1:
        raise ValueError(f"a GPU plan needs at least one GPU, got {gpus}")
    devices = gpus if device_type == "cuda" else 1
    preset = preset_for(device_type, gpu_mem_mb)
    given = {"depth": depth, "max_seq_len": max_seq_len, "vocab_size": vocab_size, "compile": compile,
             "device_batch_size": device_batch_size}
    chosen = {k: getattr(preset, k) if v is None else v for k, v in given.items()}
    seq, dbs = chosen["max_seq_len"], chosen["device_batch_size"]
    total = preset.total_batch_size
    if total is not None:
        total = (round_to_multiple(total, dbs * seq * devices) if dbs is not None
                 else rows_per_device(total, seq, devices) * seq * devices)
    entry = gpu_entry(gpu_name) if gpu_name and device_type == "cuda" else None
    peak = entry[1] if entry else preset.default_peak
    if device_type == "cpu":
        hours = CPU_RUN_HOURS
    else:
        hours = estimate_hours(chosen["depth"], chosen["vocab_size"], seq, peak, preset.mfu, devices)
    eval_batch = (dbs if dbs is not None else eval_batch_for_memory(gpu_mem_mb, seq, chosen["vocab_size"])
                  if device_type == "cuda" else 8)
    return Plan(
        device_type=device_type, gpus=devices, gpu_name=gpu_name, gpu_mem_mb=gpu_mem_mb, preset=preset,
        depth=chosen["depth"], max_seq_len=seq, vocab_size=chosen["vocab_size"], compile=chosen["compile"],
        device_batch_size=dbs, total_batch_size=total,
        sft_examples_per_step=round_to_multiple(SFT_EXAMPLES_PER_STEP, SFT_DEVICE_BATCH * devices),
        rl_examples_per_step=-(-RL_EXAMPLES_PER_STEP // devices) * devices,  # prompts must split evenly over GPUs
        eval_device_batch_size=eval_batch, peak_flops=peak, peak_listed=entry is not None, hours=hours,
        price_per_gpu_hour=entry[2] if entry else None,
        num_shards=shards_for_depth(chosen["depth"], chosen["vocab_size"]),
        overridden=tuple(k for k, v in given.items() if v is not None),
    )


def shell_assignments(plan: Plan) -> str:
    def none(v):
        return "none" if v is None else v

    cost = "unknown" if plan.cost is None else f"${plan.cost:.0f}"
    values = {"PLAN_PRESET": plan.preset.name, "DEPTH": plan.depth, "SEQ_LEN": plan.max_seq_len,
              "VOCAB_SIZE": plan.vocab_size, "COMPILE": str(plan.compile).lower(),
              "DEVICE_BATCH_SIZE": none(plan.device_batch_size), "TOTAL_BATCH_SIZE": none(plan.total_batch_size),
              "SFT_EXAMPLES_PER_STEP": plan.sft_examples_per_step, "RL_EXAMPLES_PER_STEP": plan.rl_examples_per_step,
              "EVAL_DEVICE_BATCH_SIZE": plan.eval_device_batch_size,
              "PLAN_HOURS": f"{plan.hours:.1f}", "PLAN_COST": cost, "PLAN_NUM_SHARDS": plan.num_shards,
              "PLAN_SUMMARY": plan.summary()}
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


@dataclass
class Options:
    device_type: Literal["cuda", "mps", "cpu"] = "cuda"  # the accelerator (mps and cpu: one process)
    gpus: int = 1  # GPUs in the run
    gpu_name: str | None = None  # as nvidia-smi names it (peak FLOP/s and price; None = unknown)
    gpu_mem_mb: int = 0  # memory of the smallest GPU in MiB (picks the preset)
    depth: int | None = None  # model depth (None = the preset's)
    max_seq_len: int | None = None  # context length (None = the preset's)
    vocab_size: int | None = None  # tokenizer vocabulary (None = the preset's)
    compile: bool | None = None  # torch.compile (None = the preset's)
    device_batch_size: int | None = None  # force the device batch (None = the preset's: auto)


if __name__ == "__main__":
    from nanochat.common import run_main
    from nanochat.config import parse_args

    run_main(lambda o: print(shell_assignments(make_plan(o.gpus, o.gpu_name or "", o.gpu_mem_mb, o.device_batch_size,
                                                         o.depth, o.vocab_size, o.max_seq_len, o.compile,
                                                         o.device_type))),
             parse_args(Options, prog="python -m nanochat.plan", description=__doc__))
