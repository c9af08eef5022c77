"""The loop of the two chat phases: midtraining (scripts.mid_train) and SFT (scripts.chat_sft).

Both start from an earlier phase's checkpoint, train on conversations the script hands in (tasks/,
built by the script) with the base run's optimizers at a fraction of its learning rates, validate
on the held-out conversations (mean loss per assistant token), save to their own phase folder and
resume from it exactly. They differ only by their batching (a `Batching`, built by
packed_batching or padded_batching):

- mid: conversations packed into (B, T) rows; the step is total_batch_size tokens and its loss the
  mean of the micro-batches' means; the run lasts --num_iterations steps or, by default, one pass
  over the mixture, with the LR following the fraction of the data read (it holds, then decays,
  without knowing the step count upfront).
- sft: whole conversations padded per batch; the step is target_examples_per_step conversations
  and its loss the mean over every assistant token of the step on all ranks, so a long
  conversation weighs by its tokens wherever it lands; horizon num_epochs passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nanochat.common import print0
from nanochat.training import TrainOptions, due

SAMPLE_QUESTIONS = ("Hello! Who are you?", "What is 123 times 45?")


@dataclass
class FinetuneOptions(TrainOptions):
    """What every phase that starts from an earlier checkpoint reads (mid, SFT, RL)."""

    source: Literal["base", "mid", "sft"] = "base"  # the checkpoint to start from
    step: int | None = None  # its step (None = latest)
    max_seq_len: int | None = None  # tokens per row / longest sequence (None = the model's context)
    init_lr_frac: float = 1.0  # multiplier on all the learning rates of the base run
    momentum_warmup: int = 300  # steps over which Muon's momentum warms from 0.85 to 0.95 (0 = 0.95 at once)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.init_lr_frac <= 10:
            raise ValueError(f"--init_lr_frac must be in (0, 10], got {self.init_lr_frac}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ValueError(f"--max_seq_len must be >= 1 (or none for the model's context), got {self.max_seq_len}")


@dataclass
class ChatOptions(FinetuneOptions):
    """Midtraining and SFT: a task mixture, the persona of the identity conversations, validation batches."""

    tasks: str | None = None  # name[:weight],... of tasks/mixtures.py, or a preset (None = the phase's preset)
    offline: bool = False  # use the phase's offline preset: identity, spelling, arithmetic, HumanEval (no downloads)
    identity_name: str = "nanochat"  # the model's name in the identity conversations
    identity_creator: str = "its users"  # who the identity conversations say made it
    eval_every: int | None = 150  # steps between validation losses, and one at the end (None = never)
    eval_batches: int = 100  # validation batches per evaluation (per process)

    def __post_init__(self):
        super().__post_init__()
        if self.eval_batches < 1:
            raise ValueError(f"--eval_batches must be >= 1, got {self.eval_batches}")


@dataclass
class MidOptions(ChatOptions):
    source: Literal["base", "mid"] = "base"  # the checkpoint to start from: base (or mid, to midtrain again)
    total_batch_size: int | None = 524288  # tokens per optimizer step (None = one forward pass on every device)
    num_iterations: int | None = None  # optimizer steps (None = one pass over the mixture)

    def __post_init__(self):
        super().__post_init__()
        if self.total_batch_size is not None and self.total_batch_size < 1:
            raise ValueError(f"--total_batch_size must be >= 1 (or none), got {self.total_batch_size}")


@dataclass
class SFTOptions(ChatOptions):
    source: Literal["base", "mid"] = "mid"  # the checkpoint to start from: mid (or base, to skip midtraining)
    device_batch_size: int | None = None  # conversations per forward pass per device (None = auto; 4 off CUDA)
    target_examples_per_step: int = 32  # conversations per optimizer step (gradient accumulation fills it)
    num_epochs: float = 1.0  # passes over the mixture (when --num_iterations is none)
    num_iterations: int | None = None  # optimizer steps (None = num_epochs x mixture / target_examples_per_step)
    init_lr_frac: float = 0.02  # multiplier on the base learning rates: SFT nudges, it does not retrain
    warmdown_ratio: float = 1.0  # linear decay over the whole run
    momentum_warmup: int = 0  # Muon momentum at 0.95 from the start
    eval_every: int | None = 100  # steps between validation losses, and one at the end (None = never)
    pad_multiple: int = 1  # round each batch's length up to this (fewer shapes for torch.compile; 1 = tight)

    def __post_init__(self):
        super().__post_init__()
        if self.target_examples_per_step < 1 or self.num_epochs <= 0 or self.pad_multiple < 1:
            raise ValueError("--target_examples_per_step and --pad_multiple must be >= 1 and --num_epochs > 0")


def load_previous(opts: FinetuneOptions, device):
    """(model, tokenizer, its meta, its tag, sequence length) of the checkpoint the phase starts from;
    a missing checkpoint is one line naming the script that makes it."""
    from nanochat import checkpoint as ckpt
    from nanochat.common import get_base_dir

    label = ckpt.PHASES[opts.source].label
    try:
        src_dir = ckpt.checkpoint_dir(opts.source, opts.model_tag)
        steps = ckpt.list_checkpoints(src_dir)
    except FileNotFoundError:
        steps = []
    if not steps or (opts.step is not None and opts.step not in steps):
        where = get_base_dir(create=False) / ckpt.PHASES[opts.source].dirname / (opts.model_tag or "")
        step = "" if opts.step is None else f" at step {opts.step}"
        raise FileNotFoundError(f"train the {label} first: python -m {ckpt.PHASES[opts.source].producer} "
                                f"(no checkpoint{step} in {where})")
    model, tokenizer, meta = ckpt.load_model_and_tokenizer(src_dir, opts.step, device=device)
    model.train()
    T = model.config.sequence_len if opts.max_seq_len is None else opts.max_seq_len
    if not 1 <= T <= model.config.sequence_len:
        raise ValueError(f"--max_seq_len={opts.max_seq_len}: the model's context is {model.config.sequence_len} tokens")
    warn_if_larger(opts, T, meta)
    return model, tokenizer, meta, src_dir.name, T


def warn_if_larger(opts: FinetuneOptions, seq_len: int, prev: dict) -> None:
    """The previous run's batch fitted its GPU; a bigger one here may not (the memory is mostly activations)."""
    prev_opts = prev.get("options") or {}
    if opts.device_batch_size is None:
        return  # auto fits the GPU by itself
    prev_b, prev_t = prev_opts.get("device_batch_size"), prev_opts.get("max_seq_len")
    if not isinstance(prev_b, int) or not isinstance(prev_t, int) or prev_t <= 0:
        return
    if opts.device_batch_size * seq_len > prev_b * prev_t:
        print0(f"warning: --device_batch_size={opts.device_batch_size} x {seq_len} tokens is more than the "
               f"{opts.source} run's {prev_b} x {prev_t}: it may not fit in GPU memory; lower it on out-of-memory")


@dataclass
class Batching:
    """How a chat phase turns conversations into optimizer steps: the one thing mid and SFT differ by."""

    phase: Literal["mid", "sft"]
    section: str  # its report section
    make_loader: Callable  # (task, loop: bool) -> a loader of (inputs, targets) with state_dict/epochs
    grad_accum: int  # micro-batches per optimizer step on each rank
    num_iterations: int | None  # None: one pass over the data, the LR following the fraction read
    token_mean: bool  # the step's loss: the mean over all its trained tokens (else the mean of batch means)
    dynamic: bool  # lengths vary per batch: compile with dynamic shapes instead of recompiling per length
    describe: str  # one line for the log


def packed_batching(opts: MidOptions, tokenizer, T: int, world_size: int, device, num_conversations: int) -> Batching:
    """Midtraining: rendered conversations as one stream cut into full (B, T) rows."""
    from nanochat.chat_data import PackedChatLoader
    from nanochat.report import SECTION_MID_TRAIN

    per_pass = opts.device_batch_size * T * world_size
    total = per_pass if opts.total_batch_size is None else opts.total_batch_size
    if total % per_pass:
        raise ValueError(f"--total_batch_size={total} is not a multiple of device_batch_size x max_seq_len x "
                         f"processes = {per_pass}; change one of them")
    grad_accum = total // per_pass
    n = opts.num_iterations
    return Batching("mid", SECTION_MID_TRAIN, lambda task, loop: PackedChatLoader(task, tokenizer, opts.device_batch_size, T,
                                                               device=device, loop=loop),
                    grad_accum, n, token_mean=False, dynamic=False,
                    describe=f"{total:,} tokens/step = {opts.device_batch_size} x {T} x {world_size} processes x "
                             f"{grad_accum} accumulation; " + (f"{n:,} steps" if n else "one pass over the mixture"))


def padded_batching(opts: SFTOptions, tokenizer, T: int, world_size: int, device, num_conversations: int) -> Batching:
    """SFT: whole conversations padded to the batch's longest."""
    from nanochat.chat_data import PaddedChatLoader
    from nanochat.report import SECTION_CHAT_SFT

    per_pass = opts.device_batch_size * world_size
    if opts.target_examples_per_step % per_pass:
        raise ValueError(f"--target_examples_per_step={opts.target_examples_per_step} is not a multiple of "
                         f"device_batch_size x processes = {per_pass}; change one of them")
    grad_accum = opts.target_examples_per_step // per_pass
    n = opts.num_iterations or max(1, int(opts.num_epochs * num_conversations) // opts.target_examples_per_step)
    return Batching("sft", SECTION_CHAT_SFT, lambda task, loop: PaddedChatLoader(task, tokenizer, opts.device_batch_size, T,
                                                               device=device, loop=loop,
                                                               pad_multiple=opts.pad_multiple),
                    grad_accum, n, token_mean=True, dynamic=True,
                    describe=f"{opts.target_examples_per_step} conversations/step = {opts.device_batch_size} x "
                             f"{world_size} processes x {grad_accum} accumulation; {n:,} steps "
                             f"({opts.num_epochs:g} epochs)")


def auto_device_batch(opts: ChatOptions, compute, model, T: int) -> int:
    """--device_batch_size=none: batch_fit.auto_device_batch over this rank's rows (mid) or
    conversations (SFT) per step; off CUDA the phase's fixed default (mid 32, SFT 4)."""
    from nanochat import batch_fit

    ws = compute.dist.world_size
    if isinstance(opts, SFTOptions):
        rows, non_cuda = (opts.target_examples_per_step // ws if opts.target_examples_per_step % ws == 0 else None), 4
    else:
        total = opts.total_batch_size
        rows, non_cuda = (total // (T * ws) if total is not None and total % (T * ws) == 0 else None), 32
    return batch_fit.auto_device_batch(compute, model, T, rows, non_cuda=non_cuda)


def train_chat(opts: ChatOptions, train_tasks, val_tasks, make_batching: Callable[..., Batching], *,
               task_names: str = "") -> dict:
    """Run midtraining (packed_batching) or SFT (padded_batching) on these conversations; returns a summary.

    train_tasks / val_tasks: sliceable sequences of conversations (tasks.common.Task and mixtures).
    """
    import dataclasses
    import functools

    import torch
    import torch.distributed as dist

    from nanochat.batch_fit import OOMInjector, step_with_backoff
    from nanochat.common import dist_initialized
    from nanochat.hardware import mfu, peak_flops
    from nanochat.loss_eval import evaluate_loss
    from nanochat.run_log import train_line
    from nanochat.schedule import hold_then_decay, lr_multiplier, muon_momentum
    from nanochat.training import begin, global_sum, start_run

    compute = begin(opts)
    device, ws = compute.device, compute.dist.world_size
    model, tokenizer, prev_meta, tag, T = load_previous(opts, device)
    print0(f"train: {len(train_tasks):,} conversations, validation: {len(val_tasks):,}")
    if opts.device_batch_size is None:
        opts = dataclasses.replace(opts, device_batch_size=auto_device_batch(opts, compute, model, T))
    batching = make_batching(opts, tokenizer, T, ws, device, len(train_tasks))
    print0(f"batch: {batching.describe}")
    num_iterations = batching.num_iterations

    loader = batching.make_loader(train_tasks, True)
    run = start_run(opts, compute, phase=batching.phase, tag=tag, model=model, loader=loader,
                    num_iterations=num_iterations, lr_frac=opts.init_lr_frac, dynamic=batching.dynamic,
                    extra_meta={"source": {"phase": opts.source, "tag": tag, "step": prev_meta.get("step")}})
    peak = peak_flops(compute.device_type, device)
    flops_per_token = model.estimate_flops()

    def data_progress() -> float:
        """Passes over the mixture so far, the furthest rank's (all ranks must agree on the LR and the end)."""
        p = torch.tensor(loader.epochs, dtype=torch.float64, device=device)
        if dist_initialized():
            dist.all_reduce(p, op=dist.ReduceOp.MAX)
        return p.item()

    # the loaders always yield device_batch_size rows; after an out-of-memory they run in smaller micro-batches
    B, micro, inject = opts.device_batch_size, opts.device_batch_size, OOMInjector()
    on_backoff = run.backoff_logger(B, batching.grad_accum, "the step on the same rows")

    def run_step(batches, n_targets, step: int, micro: int):
        """Forward and backward of the step's rows in micro-batches: (this rank's loss share, positions)."""
        n = batching.grad_accum * (B // micro)
        loss_sum = torch.zeros((), device=device)
        positions = torch.zeros((), device=device)  # input positions computed (padding included)
        for x, y in batches:
            for xs, ys in zip(x.split(micro), y.split(micro)):
                with run.amp():
                    if batching.token_mean:
                        loss = run.fwd(xs, ys, loss_reduction="sum")
                        share, scaled = loss.detach() / n_targets, loss * ws / n_targets
                    else:
                        # the mean over this micro-batch's assistant tokens; a straight run at this
                        # micro-batch size (packed rows are one stream whatever the batch) computes the same
                        loss = run.fwd(xs, ys)
                        share = scaled = loss / n
                loss_sum += share.detach()
                run.backward(scaled)
                positions += xs.numel()
                inject.check(step)
        return loss_sum, positions

    val_loss = None
    while True:
        step = run.loop.step
        progress = data_progress()
        last = step == num_iterations if num_iterations else (progress >= 1.0 and step > 0)
        stopping = run.stop.requested(device)
        if due(opts.eval_every, step, last) and not stopping:
            val_loss = evaluate_loss(run.fwd, batching.make_loader(val_tasks, False), opts.eval_batches, run.amp())
            run.loop.min_val = min(run.loop.min_val, val_loss)
            print0(f"step {step:05d} | validation loss {val_loss:.4f}")
            run.log.record(step, val_loss=val_loss)
        if run.boundary(step, last=last, stopping=stopping):
            break

        t0 = time.perf_counter()
        batches = [next(loader) for _ in range(batching.grad_accum)]  # fetched once: a redone step reads the same rows
        if batching.token_mean:
            # the mean over all the step's assistant tokens on all ranks; the distributed optimizers
            # average gradients over ranks, so each rank scales its sum by world_size
            n_targets = global_sum(sum((y >= 0).sum() for _, y in batches).float()).clamp_(min=1)
        else:
            n_targets = None
        try:
            (loss_sum, positions), micro = step_with_backoff(
                functools.partial(run_step, batches, n_targets, step), micro, step=step, model=model,
                on_backoff=on_backoff)
        except torch.OutOfMemoryError:
            raise ValueError("out of GPU memory even at a device batch of 1: use a smaller model or a shorter "
                             "--max_seq_len") from None
        if num_iterations:
            lrm = lr_multiplier(step, num_iterations, warmdown_ratio=opts.warmdown_ratio,
                                final_lr_frac=opts.final_lr_frac)
        else:
            lrm = hold_then_decay(progress, warmdown_ratio=opts.warmdown_ratio, final_lr_frac=opts.final_lr_frac)
        grad_norm = run.optimizer_step(lrm, muon_momentum(step, opts.momentum_warmup))
        positions = global_sum(positions)
        # per-rank shares of a token mean add up to the step's mean; per-rank means are averaged
        train_loss = global_sum(loss_sum).item() / (1 if batching.token_mean else ws)
        dt = time.perf_counter() - t0
        tok_per_s = positions.item() / dt
        step_mfu = mfu(flops_per_token, tok_per_s, peak, ws)
        # padded batches know their padding efficiency; None (packed rows) is left out of the log
        smoothed = run.end_step(step, train_loss, dt, lrm=lrm, grad_norm=grad_norm, tok_per_s=tok_per_s,
                                mfu=step_mfu, epochs=loader.epochs, padding_efficiency=getattr(loader, "efficiency", None))
        # ETA of a one-pass run from this rank's progress: no collective just for a log line
        total_steps = num_iterations or max(run.loop.step, round(run.loop.step / max(loader.epochs, 1e-9)))
        print0(train_line(run.loop.step, total_steps, smoothed, lrm, grad_norm, dt, tok_per_s, step_mfu,
                          run.loop.eta(total_steps)))

    if compute.dist.is_master and not run.stop.signalled:
        _print_samples(model, tokenizer, run.amp())
    summary = {"val_loss": val_loss, "min_val_loss": run.loop.min_val, "epochs": round(loader.epochs, 4),
               "checkpoint": str(run.out_dir), "device_batch_size_final": micro, "oom_backoffs": run.backoffs}
    if hasattr(loader, "efficiency"):
        summary["padding_efficiency"] = round(loader.efficiency, 4)
    return run.finish(batching.section, {"source": f"{opts.source}/{tag}", "tasks": task_names,
                                "conversations": len(train_tasks), "num_iterations": num_iterations or "one pass"},
                      summary)


def _print_samples(model, tokenizer, amp) -> None:
    """Greedy replies to a couple of questions: the quickest look at what the phase taught."""
    from nanochat.engine import Engine

    model.eval()
    engine = Engine(model, tokenizer)
    for question in SAMPLE_QUESTIONS:
        ids = tokenizer.render_for_completion({"messages": [{"role": "user", "content": question}]})
        with amp:
            (out,), _ = engine.generate_batch(ids, max_tokens=48, temperature=0.0)
        print0(f"sample: {question!r} -> {tokenizer.decode(out)!r}")
