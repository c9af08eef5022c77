"""Learning-rate and momentum schedules as pure functions of the step, so resume needs only the step.

Pretraining: optional linear warmup, a flat stretch, then a linear warmdown to final_lr_frac over
the last warmdown_ratio of the run (karpathy/nanochat's base_train: no warmup, decay to 0 over the last 20%).
Chat phases use the same function with their own ratios: it holds, then decays; it never rises
after the warmup, which is tested because a wrong sign here once went unnoticed in the reference.
"""

from __future__ import annotations


def lr_multiplier(
    step: int,
    num_iterations: int,
    *,
    warmup_ratio: float = 0.0,
    warmdown_ratio: float = 0.2,
    final_lr_frac: float = 0.0,
) -> float:
    """Multiplier on each parameter group's initial lr at optimizer step `step` (0-based)."""
    if num_iterations <= 0:
        raise ValueError(f"num_iterations must be positive, got {num_iterations}")
    for name, value in (("warmup_ratio", warmup_ratio), ("warmdown_ratio", warmdown_ratio)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    if warmup_ratio + warmdown_ratio > 1.0:
        raise ValueError(f"warmup_ratio + warmdown_ratio must be <= 1, got {warmup_ratio} + {warmdown_ratio}")
    if not 0.0 <= final_lr_frac <= 1.0:
        raise ValueError(f"final_lr_frac must be within [0, 1], got {final_lr_frac}")
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step < num_iterations - warmdown:
        return 1.0
    # progress 1 -> 0 across the warmdown; the last step lands exactly on final_lr_frac's side
    progress = (num_iterations - step) / warmdown
    return progress * 1.0 + (1.0 - progress) * final_lr_frac


def hold_then_decay(progress: float, *, warmdown_ratio: float = 0.2, final_lr_frac: float = 0.0) -> float:
    """Multiplier for a run whose horizon is a fraction of the data (midtraining's one pass): 1.0 until
    1 - warmdown_ratio of the way, then linear down to final_lr_frac at progress 1 (and after)."""
    if not 0.0 <= warmdown_ratio <= 1.0:
        raise ValueError(f"warmdown_ratio must be within [0, 1], got {warmdown_ratio}")
    if not 0.0 <= final_lr_frac <= 1.0:
        raise ValueError(f"final_lr_frac must be within [0, 1], got {final_lr_frac}")
    progress = min(max(progress, 0.0), 1.0)
    if warmdown_ratio == 0.0 or progress < 1.0 - warmdown_ratio:
        return 1.0
    left = (1.0 - progress) / warmdown_ratio  # 1 at the start of the decay, 0 at the end
    return left + (1.0 - left) * final_lr_frac


def muon_momentum(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Muon momentum warmed linearly from `start` to `end` over the first warmup_steps (karpathy/nanochat's base_train: 0.85 -> 0.95 over 300 steps)."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end
