"""What every training phase shares: the options they all read, the loop's own counters, resume
and save, one optimizer step, a clean stop on SIGTERM, and the run's skeleton (`Run`).

The loops themselves sit side by side in train_base.py (pretraining), train_chat.py (midtraining
and SFT) and train_rl.py (RL); each reads top to bottom and calls these pieces in the same order:

    compute = begin(opts)                              # device, dtype, distributed, run header
    run = start_run(opts, compute, phase, model, ...)  # optimizers, compile, resume, stop, run log
    while True:
        stopping = run.stop.requested(compute.device)  # loop head: evaluate, then save / end
        ...
        if run.boundary(step, last=last, stopping=stopping): break
        ...forward/backward...                         # the phase's own step
        grad_norm = run.optimizer_step(lrm, momentum)  # step tail
        run.end_step(step, loss, dt, ...)
    run.finish(section, data)                          # summary, report section, cleanup, exit 143
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from nanochat import checkpoint as ckpt
from nanochat.common import Compute, DeviceType, DType, compute_init, dist_initialized, print0
from nanochat.config import format_config, to_dict


@dataclass
class TrainOptions:
    """The options every training phase reads; each phase's options add their own."""

    # batch and horizon
    # An out-of-memory during the run halves the device batch and redoes the step (nanochat/batch_fit.py).
    device_batch_size: int | None = None  # sequences per forward pass per device (None = auto: the largest power of two whose step fits the GPU; 32 off CUDA)
    num_iterations: int | None = None  # optimizer steps (None = the phase's own horizon, see its options)
    # optimization (learning rates of the base run; later phases scale them by init_lr_frac)
    embedding_lr: float = 0.2  # AdamW lr of the token embedding (scaled by (width/768)^-0.5)
    unembedding_lr: float = 0.004  # AdamW lr of the lm_head (scaled like the embedding)
    matrix_lr: float = 0.02  # Muon lr of the block matrices
    scalar_lr: float = 0.5  # AdamW lr of scalar parameters, if the model has any
    weight_decay: float = 0.0  # decoupled weight decay
    warmdown_ratio: float = 0.2  # fraction of the run over which the LR decays linearly at the end
    final_lr_frac: float = 0.0  # LR at the end as a fraction of the initial LR
    grad_clip: float | None = None  # clip the global grad norm to this (None = no clipping)
    # compute
    device_type: DeviceType | None = None  # None = autodetect (cuda, then mps, then cpu)
    dtype: DType | None = None  # None = bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX), else fp32
    compile: bool | None = None  # torch.compile the model (None = on for CUDA; on CPU when it pays, see compile_default)
    seed: int = 42  # seeds model init, data order and every RNG
    # evaluation, checkpoints, logging
    eval_every: int | None = 250  # steps between validations, and one at the end (None = never)
    save_every: int | None = None  # steps between checkpoints (None = only the final one)
    keep_last: int | None = 2  # checkpoints kept, older ones deleted (None = keep all)
    resume: Literal["auto"] | int | None = None  # None = start fresh, auto = this phase's latest checkpoint, or a step
    model_tag: str | None = None  # checkpoint folder name (None = the phase's default)
    run: str | None = None  # wandb run name (None or 'dummy' = no wandb)
    stop_after: int | None = None  # exit right after this step's checkpoint, as a crash would (for resume tests)

    def __post_init__(self):
        for name in ("device_batch_size", "num_iterations", "eval_every", "save_every", "keep_last"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 (or none), got {value}")
        if isinstance(self.resume, int) and self.resume < 0:
            raise ValueError(f"--resume must be auto, a step number or none, got {self.resume}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"--grad_clip must be > 0 (or none for no clipping), got {self.grad_clip}")


def due(every: int | None, step: int, last: bool) -> bool:
    """Whether a periodic action (evaluation, samples) runs at this step: every N steps and at the end."""
    return every is not None and (last or step % every == 0)


@dataclass
class LoopState:
    """Everything of the loop itself that resume needs besides model, optimizers, loader and RNG."""

    step: int = 0
    smooth_loss: float = 0.0  # EMA of the training loss (debiased when printed)
    training_seconds: float = 0.0  # time spent in optimizer steps, across resumes
    min_val: float = float("inf")  # best validation figure so far (bpb for base, loss for chat)

    def advance(self, loss: float, dt: float) -> float:
        """Count one finished step; returns the debiased smoothed loss to print."""
        self.training_seconds += dt if self.step > 0 else 0.0  # the first step pays for compilation
        self.step += 1
        self.smooth_loss = 0.9 * self.smooth_loss + 0.1 * loss
        return self.smooth_loss / (1 - 0.9 ** self.step)

    def eta(self, total_steps: int) -> float:
        """Seconds left at the mean step time so far (nan until a step past the first is timed)."""
        if self.step <= 1:
            return float("nan")
        return self.training_seconds / (self.step - 1) * max(total_steps - self.step, 0)


# A run stopped by SIGTERM exits with the shell's code for "terminated by SIGTERM" after its checkpoint
# is safe: wrappers (speedrun.sh's stages) must not take a stopped run for a finished one.
STOPPED_EXIT_CODE = 143


class StopRequest:
    """SIGTERM (dev/launch.sh stop, a pod shutting down) asks the loop to stop at the next step
    boundary, after saving a checkpoint, instead of dying mid-step. All ranks agree on the step:
    the flag is max-reduced, so a signal that reached one rank stops them all together."""

    def __init__(self):
        self.signalled = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def requested(self, device: torch.device) -> bool:
        if not dist_initialized():
            return self.signalled
        flag = torch.tensor(int(self.signalled), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def checkpoint_boundary(step: int, *, last: bool, stopping: bool, save_every: int | None, stop_after: int | None,
                        save, also: bool = False) -> bool:
    """At the top of a step: save where the run asks for a checkpoint (the last step, a stop signal,
    every save_every steps, `also`); True when the loop must end here (last, stopped, --stop_after)."""
    if last or stopping or also or (save_every is not None and step % save_every == 0 and step > 0):
        save(step)
        if stopping:
            print0(f"stopped by signal: saved checkpoint step {step}")
            return True
        if step == stop_after:
            print0(f"stopping after step {step} as asked (--stop_after)")
            return True
    return last


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """A tensor summed over all ranks (a copy; the tensor itself unchanged outside torch.distributed)."""
    value = value.clone()
    if dist_initialized():
        dist.all_reduce(value)
    return value


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (the loss to log, not rank 0's share)."""
    return global_sum(value) / (dist.get_world_size() if dist_initialized() else 1)


# On a CPU the first torch.compile of a run costs a minute or two (67-106 s measured, up to 130 s with
# a cold cache, on 2 shared cores) and then saves part of every step: at depth 4, vocab 65,536, batch
# 4 x 512 (2.6e11 FLOPs per step) 3.1 s of 8.9 in bf16, so it pays after 22-42 steps. Counting the
# run's work in FLOPs (estimate_flops x tokens) keeps tiny models (tests, smoke runs) eager however
# many steps they take. Measured in dev/BENCHMARKS.md, "CPU defaults".
CPU_COMPILE_MIN_FLOPS = 1e13


def compile_default(choice: bool | None, device_type: str, *, work_flops: float | None = None,
                    dynamic: bool | None = False) -> bool:
    """Whether to torch.compile. An explicit --compile wins; None = on for CUDA; on a CPU, on for a
    fixed-shape run (base, mid) whose planned training FLOPs reach CPU_COMPILE_MIN_FLOPS (unknown: off;
    varying shapes, SFT and RL: off); off on MPS."""
    if choice is not None:
        return choice
    if device_type == "cuda":
        return True
    return (device_type == "cpu" and not dynamic and work_flops is not None
            and work_flops >= CPU_COMPILE_MIN_FLOPS)


def planned_flops(model, device_batch_size: int | None, num_iterations: int | None) -> float | None:
    """Training FLOPs of a run, at least: one device batch of full-length rows per step (gradient
    accumulation and more processes only add to it)."""
    if device_batch_size is None or num_iterations is None:
        return None
    return model.estimate_flops() * device_batch_size * model.config.sequence_len * num_iterations


def maybe_compile(model: torch.nn.Module, choice: bool | None, device_type: str, dynamic: bool | None = False,
                  work_flops: float | None = None):
    """The module to call in the loop; `model` itself stays uncompiled so its state_dict saves plainly."""
    if compile_default(choice, device_type, work_flops=work_flops, dynamic=dynamic):
        return torch.compile(model, dynamic=dynamic)
    return model


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise ValueError(f"training loss became {loss} at step {step}: lower the learning rates or use bf16/fp32")


def optimizer_step(model, optimizers, scaler, *, grad_clip: float | None, lr_multiplier: float,
                   muon_momentum: float) -> torch.Tensor:
    """Unscale (fp16), measure and optionally clip the grad norm, set the schedule, step, zero grads.

    Returns the local grad norm before clipping: the distributed optimizers average the gradients
    inside step(), so it is measured on this rank's gradients.
    """
    from nanochat.optim import set_lr_multiplier, set_muon_momentum

    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)
    # max_norm=inf measures without clipping: one code path for both cases
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    set_lr_multiplier(optimizers, lr_multiplier)
    set_muon_momentum(optimizers, muon_momentum)
    for opt in optimizers:
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
    if scaler is not None:
        scaler.update()
    model.zero_grad(set_to_none=True)
    return grad_norm


def resume_training(ckpt_dir: Path, resume: str | int | None, *, model, optimizers, loader, scaler,
                    model_config: dict, world_size: int, num_iterations: int | None) -> tuple[LoopState, int | None]:
    """Restore a run from its own latest (or chosen) checkpoint; (fresh state, None) when there is none.

    Exact when the world size matches: model, optimizers, loader position, loop counters, RNG.
    With another world size the optimizer state (momentum) starts fresh and the run says so.
    """
    resume_step = ckpt.find_resume(ckpt_dir, resume)
    if resume_step is None:
        return LoopState(), None
    saved_world = ckpt.read_meta(ckpt_dir, resume_step)["world_size"]
    exact = saved_world == world_size
    saved = ckpt.load_checkpoint(ckpt_dir, resume_step, device=next(model.parameters()).device, load_optimizer=exact)
    if saved.meta["model_config"] != model_config:
        raise ValueError(f"checkpoint {saved.path} has model config {saved.meta['model_config']}, this run "
                         f"{model_config}: resume with the same model settings, or start a new --model_tag")
    ckpt.check_model_state(model.state_dict(), saved.model_state, saved.path / ckpt.MODEL_FILE)  # one line, not a cast
    model.load_state_dict(saved.model_state)
    loader.load_state_dict(saved.meta["loader_states"])  # all ranks' states: handles a world size change
    loop = LoopState(**saved.meta["loop"])
    if exact:
        for opt, state in zip(optimizers, saved.optimizer_states, strict=True):
            opt.load_state_dict(state)
        ckpt.restore_rng(saved.rng)
    else:
        print0(f"warning: checkpoint saved by {saved_world} processes, this run has {world_size}: model and "
               "data position are restored, optimizer state (momentum) starts fresh, so the resume is not exact")
    if scaler is not None and saved.meta.get("grad_scaler"):
        scaler.load_state_dict(saved.meta["grad_scaler"])
    if num_iterations is not None and saved.meta.get("num_iterations") != num_iterations:
        print0(f"warning: the checkpoint planned {saved.meta.get('num_iterations')} steps, this run {num_iterations}; "
               "the LR schedule follows this run's horizon")
    print0(f"resumed from {saved.path} at step {loop.step}")
    return loop, resume_step


def save_training(ckpt_dir: Path, step: int, *, model, optimizers, loader, scaler, loop: LoopState,
                  model_config: dict, options: dict, num_iterations: int | None, keep_last: int | None,
                  extra_meta: dict | None = None) -> None:
    """A complete, atomically installed checkpoint of the run (see nanochat/checkpoint.py), then prune."""
    # A step is never saved over. A resumed run reaches the top of its loop at the step it resumed from,
    # with the state it just loaded from there: that step is already saved, so there is nothing to write.
    saved = ckpt.list_checkpoints(ckpt_dir)
    if step in saved and ckpt.read_meta(ckpt_dir, step).get("loop") == dataclasses.asdict(loop):
        return
    meta = {"model_config": model_config, "options": options, "num_iterations": num_iterations,
            "loop": dataclasses.asdict(loop), "grad_scaler": scaler.state_dict() if scaler else None,
            **(extra_meta or {})}
    ckpt.save_checkpoint(ckpt_dir, step, model_state=model.state_dict(),
                         optimizer_states=[o.state_dict() for o in optimizers], meta=meta,
                         loader_state=loader.state_dict())
    if not dist_initialized() or dist.get_rank() == 0:
        ckpt.prune_checkpoints(ckpt_dir, keep_last or 0, keep_step=step)
    print0(f"saved checkpoint step {step} to {ckpt_dir}")


# ---- the run's skeleton


def begin(opts: TrainOptions) -> Compute:
    """Device, precision and torch.distributed for this process, then the run header, printed once."""
    compute = compute_init(opts.device_type, opts.seed, opts.dtype, training=True)
    import platform

    print0(f"run: {compute.device_type} ({compute.device}), {compute.dtype}, {compute.dist.world_size} "
           f"process(es), torch {torch.__version__}, python {platform.python_version()}")
    print0(format_config(opts))
    return compute


@dataclass
class Run:
    """The live objects of one training run and the steps of the skeleton every loop shares."""

    opts: TrainOptions
    compute: Compute
    model: torch.nn.Module  # the plain module: its state_dict is what checkpoints hold
    fwd: Any  # what the loop calls: the compiled module, or the model itself
    optimizers: list
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    loader: Any  # anything with state_dict() / load_state_dict(): where the data stream is
    out_dir: Path
    model_config: dict
    num_iterations: int | None  # None: the loop ends by its data (midtraining's one pass)
    loop: LoopState
    resumed_from: int | None
    stop: StopRequest
    log: Any  # nanochat.run_log.RunLog
    extra_meta: dict = field(default_factory=dict)
    t_start: float = field(default_factory=time.time)
    backoffs: list = field(default_factory=list)  # out-of-memory back-offs: {"step", "device_batch_size"}

    def amp(self):
        return self.compute.autocast()

    def save(self, step: int) -> None:
        save_training(self.out_dir, step, model=self.model, optimizers=self.optimizers, loader=self.loader,
                      scaler=self.scaler, loop=self.loop, model_config=self.model_config,
                      options=to_dict(self.opts), num_iterations=self.num_iterations,
                      keep_last=self.opts.keep_last, extra_meta=self.extra_meta)

    def boundary(self, step: int, *, last: bool, stopping: bool, also: bool = False) -> bool:
        """The loop head's save/stop decision (checkpoint_boundary with this run's options)."""
        return checkpoint_boundary(step, last=last, stopping=stopping, save_every=self.opts.save_every,
                                   stop_after=self.opts.stop_after, save=self.save, also=also)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self, lr_multiplier: float, momentum: float) -> float:
        return optimizer_step(self.model, self.optimizers, self.scaler, grad_clip=self.opts.grad_clip,
                              lr_multiplier=lr_multiplier, muon_momentum=momentum).item()

    def backoff_logger(self, device_batch: int, grad_accum: int | None, redo: str):
        """The on_backoff of batch_fit.step_with_backoff for this run: one log line, the metrics record and
        self.backoffs (the report's oom_backoffs). grad_accum None: the phase has no fixed accumulation."""

        def on_backoff(step: int, new_micro: int) -> None:
            accum = ""
            if grad_accum is not None:
                chunks = device_batch // new_micro
                accum = f", accumulation {grad_accum * chunks // 2} -> {grad_accum * chunks}"
            print0(f"out of memory at step {step}: device batch {2 * new_micro} -> {new_micro}{accum}; redoing {redo}")
            self.backoffs.append({"step": step, "device_batch_size": new_micro})
            self.log.record(step, device_batch_size=new_micro)

        return on_backoff

    def end_step(self, step: int, loss: float, dt: float, **metrics) -> float:
        """Check the loss, count the step, record its metrics; returns the smoothed loss to print."""
        check_finite(loss, step)
        smoothed = self.loop.advance(loss, dt)
        self.log.record(step, loss=loss, dt=dt, **metrics)
        return smoothed

    def finish(self, section: str, data: dict, summary: dict) -> dict:
        """The run's tail: summary line, report section, cleanup; exit 143 if a signal stopped it."""
        from nanochat.common import compute_cleanup
        from nanochat.report import log_section
        from nanochat.run_log import format_duration

        summary = {"steps": self.loop.step, **summary, "training_time": format_duration(self.loop.training_seconds),
                   "wall_time": format_duration(time.time() - self.t_start)}
        if self.compute.device_type == "cuda":
            summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print0("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        ended_early = self.stop.signalled or (self.num_iterations is not None and self.loop.step < self.num_iterations)
        log_section(section, {**data, **summary, "stopped_early": ended_early})
        self.log.finish()
        compute_cleanup()
        if self.stop.signalled:
            raise SystemExit(STOPPED_EXIT_CODE)
        return summary


def start_run(opts: TrainOptions, compute: Compute, *, phase: str, tag: str, model, loader,
              num_iterations: int | None, lr_frac: float = 1.0, dynamic: bool | None = False,
              extra_meta: dict | None = None) -> Run:
    """Optimizers (the base learning rates x lr_frac), the compiled forward, resume from this phase's
    own checkpoints, the SIGTERM handler and the run log: everything a loop needs before its first step."""
    from nanochat.optim import build_optimizers
    from nanochat.run_log import RunLog

    ws = compute.dist.world_size
    optimizers = build_optimizers(model.parameter_groups(), model_dim=model.config.n_embd,
                                  matrix_lr=opts.matrix_lr * lr_frac, embedding_lr=opts.embedding_lr * lr_frac,
                                  unembedding_lr=opts.unembedding_lr * lr_frac, scalar_lr=opts.scalar_lr * lr_frac,
                                  weight_decay=opts.weight_decay, world_size=ws)
    scaler = torch.amp.GradScaler("cuda") if compute.dtype == "fp16" else None
    work = planned_flops(model, opts.device_batch_size, num_iterations)
    fwd = maybe_compile(model, opts.compile, compute.device_type, dynamic=dynamic, work_flops=work)
    how = "--compile" if opts.compile is not None else "auto" + (f", {work:.1e} planned FLOPs" if work else "")
    print0(f"compile: {'on' if fwd is not model else 'off'} ({how})")
    out_dir = ckpt.checkpoint_dir(phase, tag)
    model_config = dataclasses.asdict(model.config)
    loop, resumed_from = resume_training(out_dir, opts.resume, model=model, optimizers=optimizers, loader=loader,
                                         scaler=scaler, model_config=model_config, world_size=ws,
                                         num_iterations=num_iterations)
    project = "nanochat" if phase == "base" else f"nanochat-{phase}"
    log = RunLog(out_dir / "metrics.jsonl", enabled=compute.dist.is_master, wandb_run=opts.run, project=project,
                 config=to_dict(opts))
    return Run(opts, compute, model, fwd, optimizers, scaler, loader, out_dir, model_config, num_iterations, loop,
               resumed_from, StopRequest(), log, dict(extra_meta or {}))
