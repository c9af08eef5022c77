"""The mechanics every training phase shares (base_train, mid_train, chat_sft): the loop's own
counters, resume from and save to the phase's checkpoints, one optimizer step, a clean stop on
SIGTERM at a step boundary, and the out-of-memory message. The phases differ in data and horizon.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nanochat import checkpoint as ckpt
from nanochat.common import print0


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
        if not (dist.is_available() and dist.is_initialized()):
            return self.signalled
        flag = torch.tensor(int(self.signalled), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def checkpoint_boundary(step: int, *, last: bool, stopping: bool, save_every: int, stop_after: int, save,
                        also: bool = False) -> bool:
    """At the top of a step: save where the run asks for a checkpoint (the last step, a stop signal,
    every save_every steps, `also`); True when the loop must end here (last, stopped, --stop_after)."""
    if last or stopping or also or (save_every > 0 and step % save_every == 0 and step > 0):
        save(step)
        if stopping:
            print0(f"stopped by signal: saved checkpoint step {step}")
            return True
        if step == stop_after:
            print0(f"stopping after step {step} as asked (--stop_after)")
            return True
    return last


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (the loss to log, not rank 0's share)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def maybe_compile(model: torch.nn.Module, choice: str, device_type: str, dynamic: bool | None = False):
    """The module to call in the loop; `model` itself stays uncompiled so its state_dict saves plainly."""
    if choice == "true" or (choice == "auto" and device_type == "cuda"):
        return torch.compile(model, dynamic=dynamic)
    return model


def oom_error(device_batch_size: int) -> ValueError:
    return ValueError(f"out of GPU memory at --device_batch_size={device_batch_size}: halve it (gradient "
                      "accumulation keeps the batch per optimizer step, so the run trains the same)")


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise ValueError(f"training loss became {loss} at step {step}: lower the learning rates or use bf16/fp32")


def optimizer_step(model, optimizers, scaler, *, grad_clip: float, lr_multiplier: float,
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
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
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


def resume_training(ckpt_dir: Path, resume: str, *, model, optimizers, loader, scaler, model_config: dict,
                    world_size: int, num_iterations: int | None) -> tuple[LoopState, int | None]:
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
                  model_config: dict, options: dict, num_iterations: int | None, keep_last: int,
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
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        ckpt.prune_checkpoints(ckpt_dir, keep_last, keep_step=step)
    print0(f"saved checkpoint step {step} to {ckpt_dir}")
