"""The training log: one fixed console line per step, metrics appended as JSON lines, optional wandb.

metrics.jsonl sits beside the checkpoints, so a resumed run appends to the same curve (a reader
keeps the last record of each step) and the report can plot it. wandb is off unless a run name
other than 'dummy' is given; then it is imported lazily.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class RunLog:
    """Rank 0 writes; other ranks get a log that does nothing (callers need no if-chains)."""

    def __init__(self, metrics_path: Path | None, *, enabled: bool, wandb_run: str = "dummy", project: str = "nanochat",
                 config: dict | None = None):
        self.enabled = enabled
        self.path = Path(metrics_path) if (metrics_path and enabled) else None
        self._wandb = None
        if enabled and wandb_run and wandb_run != "dummy":
            try:
                import wandb
            except ImportError:
                raise ValueError(f"--run={wandb_run} logs to wandb, which is not installed: uv pip install -e '.[wandb]' "
                                 "(or --run=dummy)") from None

            self._wandb = wandb.init(project=project, name=wandb_run, config=config or {}, resume="allow")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        clean = {k: v for k, v in metrics.items() if v is not None}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **clean}) + "\n")
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> dict[int, dict]:
    """step -> merged record (later records of a step win, as after a resume)."""
    out: dict[int, dict] = {}
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(rec["step"], {}).update(rec)
    return out


def train_line(step: int, total: int, loss: float, lr_mult: float, grad_norm: float | None, dt: float,
               tok_per_s: float, mfu: float | None, eta_s: float) -> str:
    gn = f"{grad_norm:.3f}" if grad_norm is not None else "-"
    mf = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
    return (f"step {step:05d}/{total:05d} ({100 * step / max(total, 1):.1f}%) | loss {loss:.6f} | lrm {lr_mult:.3f} | "
            f"grad norm {gn} | dt {dt * 1000:.0f}ms | tok/s {tok_per_s:,.0f} | mfu {mf} | eta {format_duration(eta_s)}")
