"""Evaluate a checkpoint on the CORE metric (DCLM's 22 in-context tasks; see nanochat/core_eval.py).

    python -m scripts.base_eval --download_only                 # fetch + unpack the eval bundle only
    python -m scripts.base_eval                                 # latest base checkpoint, every row
    python -m scripts.base_eval --max_problems=500              # quick estimate: 500 rows per task
    python -m scripts.base_eval --source=mid --model_tag=d20 --step=800
    torchrun --standalone --nproc_per_node=8 -m scripts.base_eval   # rows dealt over the GPUs
    python -m scripts.base_eval --device_type=cpu --max_problems=16 --device_batch_size=8   # tiny CPU run

The bundle lives in $NANOCHAT_BASE_DIR/eval_bundle and is fetched on first use from the URL in
core_eval.EVAL_BUNDLE (or $NANOCHAT_EVAL_BUNDLE_URL: a mirror, or a local eval_bundle.zip). Results go
to $NANOCHAT_BASE_DIR/base_eval/<tag>_step<NNNNNN>.csv (other phases: <phase>_<tag>_step<NNNNNN>.csv):
per task the accuracy, centered accuracy, random baseline, rows and rows cropped (0 unless a prompt
is longer than the model's rotary tables), then CORE, then which random baselines the bundle holds
(DCLM's 2024 file, as upstream nanochat, or the tasks where it differs). The report says the same.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import DeviceType, DType, atomic_path, get_base_dir, print0, run_main, setup_logging
from nanochat.config import format_config, parse_args
from nanochat.phases import Phase
from nanochat.report import SECTION_BASE_EVAL, log_section


@dataclass
class Options:
    source: Phase = "base"  # which phase's checkpoint
    model_tag: str | None = None  # checkpoint folder (None = the most recently saved tag)
    step: int | None = None  # checkpoint step (None = latest)
    max_problems: int | None = None  # rows evaluated per task (None = all; e.g. 500 for a quick estimate)
    device_batch_size: int = 32  # sequences per forward pass (1 = one at a time; 8 is fastest on a CPU)
    device_type: DeviceType | None = None  # None = autodetect
    dtype: DType | None = None  # None = bf16 on CUDA, fp32 elsewhere
    download_only: bool = False  # fetch and unpack the eval bundle into $NANOCHAT_BASE_DIR, then exit

    def __post_init__(self):
        if self.max_problems is not None and self.max_problems < 1:
            raise ValueError(f"--max_problems must be a positive count (or none for all rows), got {self.max_problems}")
        if self.device_batch_size < 1:
            raise ValueError(f"--device_batch_size must be >= 1, got {self.device_batch_size}")


def csv_path(phase: str, tag: str, step: int) -> Path:
    name = f"{tag}_step{step:06d}.csv" if phase == "base" else f"{phase}_{tag}_step{step:06d}.csv"
    return get_base_dir() / "base_eval" / name


def write_results_csv(path: Path, results: dict) -> Path:
    """One row per task, a CORE row and a last `Random baselines` row naming the baselines' table;
    written to a temp name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["Task", "Accuracy", "Centered", "Random baseline", "Rows", "Cropped rows"])
        for label, t in results["tasks"].items():
            out.writerow([label, f"{t['accuracy']:.6f}", f"{t['centered']:.6f}", t["random_baseline"], t["examples"],
                          t["cropped"]])
        out.writerow(["CORE", "", f"{results['CORE']:.6f}", "", "", ""])
        out.writerow(["Random baselines", "", "", results["baselines"], "", ""])
    return path


def report_notes(opts: Options, results: dict) -> list[str]:
    """The report's notes: the baselines' table, rows cropped per task (if any), the row cap."""
    notes = [f"random baselines: {results['baselines']}"]
    cropped = {label: t["cropped"] for label, t in results["tasks"].items() if t["cropped"]}
    if cropped:
        notes.append(f"prompts longer than {results['max_seq_len']} tokens cropped on the left, rows per task: "
                     + ", ".join(f"{label} {n}" for label, n in cropped.items()))
    else:
        notes.append("every prompt scored whole (none cropped)")
    if opts.max_problems is not None:
        notes.append(f"at most {opts.max_problems} rows per task")
    return notes


def fetch_bundle(compute) -> Path:
    """Rank 0 fetches the bundle if missing; every rank learns whether it worked, so none waits forever
    at a collective after rank 0 failed."""
    import torch

    from nanochat.core_eval import bundle_dir, ensure_bundle

    error = None
    if compute.dist.is_master:
        try:
            ensure_bundle()
        except (FileNotFoundError, ValueError) as e:
            error = e
    if compute.dist.is_distributed:
        failed = torch.tensor([error is not None], dtype=torch.long, device=compute.device)  # (1,)
        torch.distributed.all_reduce(failed)
        if failed.item() and error is None:
            raise FileNotFoundError("rank 0 could not fetch the CORE eval bundle (see its error line)")
    if error is not None:
        raise error
    return bundle_dir()


def main(opts: Options) -> dict:
    from nanochat.checkpoint import checkpoint_dir, load_model_and_tokenizer
    from nanochat.common import compute_cleanup, compute_init
    from nanochat.core_eval import ensure_bundle, evaluate_core

    if opts.download_only:
        path = ensure_bundle()
        print0(f"eval bundle: {path}")
        return {"bundle": str(path)}
    compute = compute_init(opts.device_type, dtype=opts.dtype)
    amp = compute.autocast()
    print0(format_config(opts))
    bundle = fetch_bundle(compute)
    ckpt_dir = checkpoint_dir(opts.source, opts.model_tag)
    model, tokenizer, meta = load_model_and_tokenizer(ckpt_dir, opts.step, device=compute.device)
    print0(f"model: {ckpt_dir} step {meta['step']}, eval bundle: {bundle}")
    results = evaluate_core(model, tokenizer, bundle, max_problems=opts.max_problems,
                            batch_size=opts.device_batch_size, autocast=amp)
    path = csv_path(opts.source, ckpt_dir.name, meta["step"])
    if compute.dist.is_master:
        write_results_csv(path, results)
        print0(f"results: {path}")
    compute_cleanup()
    tasks = {label: {"accuracy": t["accuracy"], "centered": t["centered"], "cropped": t["cropped"]}
             for label, t in results["tasks"].items()}
    if opts.source == "base":  # the report's CORE column is the base model's
        log_section(SECTION_BASE_EVAL, {"checkpoint": f"{ckpt_dir.name} step {meta['step']}", "CORE": results["CORE"],
                                        "random baselines": results["baselines"], "tasks": tasks},
                    notes=report_notes(opts, results))
    return {"CORE": results["CORE"], "baselines": results["baselines"], "tasks": tasks, "csv": str(path)}


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.base_eval", description=__doc__))
