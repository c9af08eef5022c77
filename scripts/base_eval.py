"""Evaluate a checkpoint on the CORE metric (DCLM's 22 in-context tasks; see nanochat/core_eval.py) and,
with --tasks, on KoBEST (five Korean tasks scored the same way; see tasks/kobest.py).

    python -m scripts.base_eval --download_only                 # fetch + unpack the eval bundle only
    python -m scripts.base_eval                                 # latest base checkpoint, every row
    python -m scripts.base_eval --tasks='CORE|KoBEST'           # and KoBEST (python -m tasks.sources --dataset=kobest)
    python -m scripts.base_eval --skip_unavailable              # what is downloaded; the rest noted in the report
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
KoBEST adds a row per task (kobest_boolq, ...) and a KoBEST row. KoBEST is never downloaded here.

Missing data: a suite whose data is not here stops the run with one line naming the command that
fetches it (the CORE bundle is first fetched, as above). With --skip_unavailable nothing is fetched:
each suite whose data is missing is skipped, the report's section says so with that command, and the
run evaluates the rest and exits 0.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import DeviceType, DType, atomic_path, get_base_dir, print0, run_main, setup_logging
from nanochat.config import format_config, parse_args
from nanochat.phases import Phase
from nanochat.report import SECTION_BASE_EVAL, log_section

SUITES = ("CORE", "KoBEST")
# the command that fetches each suite's data (named in the error line and in the report's note)
FETCH_COMMANDS = {"CORE": "python -m scripts.base_eval --download_only",
                  "KoBEST": "python -m tasks.sources --dataset=kobest"}
KOBEST_SPLIT = "test"


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
    tasks: str = "CORE"  # suites: CORE, KoBEST, or both joined by '|' (CORE|KoBEST)
    skip_unavailable: bool = False  # skip a suite whose data is not downloaded (noted in the report) instead of failing

    def __post_init__(self):
        self.suite_names()  # an unknown suite fails here, before anything loads
        if self.max_problems is not None and self.max_problems < 1:
            raise ValueError(f"--max_problems must be a positive count (or none for all rows), got {self.max_problems}")
        if self.device_batch_size < 1:
            raise ValueError(f"--device_batch_size must be >= 1, got {self.device_batch_size}")

    def suite_names(self) -> list[str]:
        """The suites asked for, in canonical spelling and SUITES order (names match case-insensitively)."""
        canonical = {name.lower(): name for name in SUITES}
        asked = set()
        for raw in (part.strip() for part in self.tasks.split("|")):
            if raw.lower() not in canonical:
                raise ValueError(f"unknown suite {raw!r} in --tasks: choose from {', '.join(SUITES)}, or several "
                                 f"joined by '|' ({'|'.join(SUITES)})")
            asked.add(canonical[raw.lower()])
        return [name for name in SUITES if name in asked]


def csv_path(phase: str, tag: str, step: int) -> Path:
    name = f"{tag}_step{step:06d}.csv" if phase == "base" else f"{phase}_{tag}_step{step:06d}.csv"
    return get_base_dir() / "base_eval" / name


def kobest_label(task: str) -> str:
    """A KoBEST task's row label: prefixed, since CORE has a copa and a hellaswag of its own."""
    return f"kobest_{task}"


def task_rows(suite: str, results: dict) -> dict[str, dict]:
    """{row label: the task's results} of one suite's results."""
    if suite == "CORE":
        return results["tasks"]
    return {kobest_label(task): t for task, t in results["tasks"].items()}


def write_results_csv(path: Path, suites: dict[str, dict]) -> Path:
    """Per suite evaluated ({"CORE": evaluate_core's results, "KoBEST": evaluate_kobest's}) one row per
    task and a row with the suite's score; last, with CORE, a `Random baselines` row naming CORE's
    baselines table. Written to a temp name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["Task", "Accuracy", "Centered", "Random baseline", "Rows", "Cropped rows"])
        for suite, results in suites.items():
            for label, t in task_rows(suite, results).items():
                out.writerow([label, f"{t['accuracy']:.6f}", f"{t['centered']:.6f}", t["random_baseline"],
                              t["examples"], t["cropped"]])
            out.writerow([suite, "", f"{results[suite]:.6f}", "", "", ""])
        if "CORE" in suites:
            out.writerow(["Random baselines", "", "", suites["CORE"]["baselines"], "", ""])
    return path


def report_notes(opts: Options, suites: dict[str, dict], unavailable: dict[str, str]) -> list[str]:
    """The report's notes: CORE's baselines table and rows cropped per task (if any), KoBEST's split and
    shots, the suites not available and how to fetch them, the row cap."""
    from tasks.kobest import NUM_FEWSHOT

    def cropped(suite: str, what: str) -> str | None:
        counts = [f"{label} {t['cropped']}" for label, t in task_rows(suite, suites[suite]).items() if t["cropped"]]
        return f"{what} cropped on the left, rows per task: " + ", ".join(counts) if counts else None

    notes = []
    if "CORE" in suites:
        core = suites["CORE"]
        notes.append(f"random baselines: {core['baselines']}")
        notes.append(cropped("CORE", f"prompts longer than {core['max_seq_len']} tokens")
                     or "every prompt scored whole (none cropped)")
    if "KoBEST" in suites:
        notes.append(f"KoBEST: skt/kobest_v1 {suites['KoBEST']['split']} split, {NUM_FEWSHOT}-shot, scored like CORE")
        notes += filter(None, [cropped("KoBEST", "KoBEST prompts longer than the model's context")])
    notes += [f"{suite}: not available ({why})" for suite, why in unavailable.items()]
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


def check_kobest() -> None:
    """FileNotFoundError, one line naming the fetch command, unless every KoBEST task's split is here."""
    from tasks.kobest import TASKS
    from tasks.sources import override_env, require

    for task in TASKS:
        split = f"{task}/{KOBEST_SPLIT}"
        try:
            require("kobest", split)
        except FileNotFoundError:
            if os.environ.get(override_env("kobest", split), "").strip():
                raise  # the user's own path is wrong: require's message names it
            raise FileNotFoundError(f"KoBEST is not downloaded: {FETCH_COMMANDS['KoBEST']}") from None


def check_suites(opts: Options, compute) -> tuple[list[str], dict[str, str]]:
    """(the suites whose data is here, {suite: why not} of the others). Without --skip_unavailable a
    missing suite raises FileNotFoundError (the CORE bundle is fetched first); with it nothing is
    fetched and a missing suite is only reported."""
    from nanochat.core_eval import ensure_bundle

    ready, unavailable = [], {}
    for suite in opts.suite_names():
        try:
            if suite == "KoBEST":
                check_kobest()
            elif opts.skip_unavailable:
                ensure_bundle(download=False)
            else:
                fetch_bundle(compute)
        except FileNotFoundError as e:
            if not opts.skip_unavailable:
                raise
            unavailable[suite] = str(e).splitlines()[0]
            print0(f"{suite}: not available ({unavailable[suite]}); skipped")
            continue
        ready.append(suite)
    return ready, unavailable


def section_data(checkpoint: str | None, asked: list[str], suites: dict[str, dict]) -> dict:
    """The report section's data: each suite asked for has its score row (None when not evaluated)."""
    data: dict = {} if checkpoint is None else {"checkpoint": checkpoint}
    if "CORE" in asked:
        core = suites.get("CORE")
        data["CORE"] = core and core["CORE"]
        if core:
            data["random baselines"] = core["baselines"]
            data["tasks"] = {label: {"accuracy": t["accuracy"], "centered": t["centered"], "cropped": t["cropped"]}
                             for label, t in core["tasks"].items()}
    if "KoBEST" in asked:
        kobest = suites.get("KoBEST")
        data["KoBEST"] = kobest and kobest["KoBEST"]
        if kobest:
            data["KoBEST tasks"] = {label: {"accuracy": t["accuracy"], "centered": t["centered"]}
                                   for label, t in task_rows("KoBEST", kobest).items()}
    return data


def main(opts: Options) -> dict:
    from nanochat.checkpoint import checkpoint_dir, load_model_and_tokenizer
    from nanochat.common import compute_cleanup, compute_init
    from nanochat.core_eval import bundle_dir, ensure_bundle, evaluate_core
    from tasks.kobest import evaluate_kobest

    if opts.download_only:
        path = ensure_bundle()
        print0(f"eval bundle: {path}")
        return {"bundle": str(path)}
    compute = compute_init(opts.device_type, dtype=opts.dtype)
    amp = compute.autocast()
    print0(format_config(opts))
    # the data before the model: a missing suite is reported before seconds of checkpoint loading
    ready, unavailable = check_suites(opts, compute)
    out: dict = {"unavailable": unavailable, "csv": None}
    suites: dict[str, dict] = {}
    checkpoint = None
    if ready:
        ckpt_dir = checkpoint_dir(opts.source, opts.model_tag)
        model, tokenizer, meta = load_model_and_tokenizer(ckpt_dir, opts.step, device=compute.device)
        checkpoint = f"{ckpt_dir.name} step {meta['step']}"
        print0(f"model: {ckpt_dir} step {meta['step']}, suites: {', '.join(ready)}")
        if "CORE" in ready:
            print0(f"eval bundle: {bundle_dir()}")
            suites["CORE"] = evaluate_core(model, tokenizer, bundle_dir(), max_problems=opts.max_problems,
                                           batch_size=opts.device_batch_size, autocast=amp)
        if "KoBEST" in ready:
            suites["KoBEST"] = evaluate_kobest(model, tokenizer, split=KOBEST_SPLIT, max_problems=opts.max_problems,
                                               batch_size=opts.device_batch_size, autocast=amp)
        path = csv_path(opts.source, ckpt_dir.name, meta["step"])
        if compute.dist.is_master:
            write_results_csv(path, suites)
            print0(f"results: {path}")
        out["csv"] = str(path)
    compute_cleanup()
    data = section_data(checkpoint, opts.suite_names(), suites)
    if opts.source == "base":  # the report's CORE column is the base model's
        log_section(SECTION_BASE_EVAL, data, notes=report_notes(opts, suites, unavailable))
    out.update({key: value for key, value in data.items() if key in ("CORE", "KoBEST", "tasks")})
    if "CORE" in suites:
        out["baselines"] = suites["CORE"]["baselines"]
    if "KoBEST" in suites:
        out["kobest_tasks"] = data["KoBEST tasks"]
    return out


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.base_eval", description=__doc__))
