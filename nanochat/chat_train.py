"""The training loop of the two chat phases: midtraining (scripts.mid_train) and SFT (scripts.chat_sft).

Both start from the previous phase's checkpoint, train on a task mixture (tasks/mixtures.py) with
the base run's optimizers at a fraction of its learning rates, validate on the held-out side of
the same tasks (mean loss per assistant token), save to their own phase folder and resume from it
exactly. They differ in batching and horizon:

- mid: conversations packed into (B, T) rows; the step is total_batch_size tokens; the run lasts
  --num_iterations steps, or (-1) one pass over the mixture, with the LR schedule following the
  fraction of the data read, so it holds and then decays without knowing the step count upfront.
- sft: whole conversations padded per batch; the step is target_examples_per_step conversations
  (gradient accumulation) and the loss is the mean over every assistant token of the step, so a
  long conversation weighs by its tokens wherever it lands; horizon num_epochs passes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from nanochat.common import get_base_dir, print0
from nanochat.config import format_config, to_dict
from nanochat.report import SECTION_CHAT_SFT, SECTION_MID_TRAIN, log_section

SAMPLE_QUESTIONS = ("Hello! Who are you?", "What is 123 times 45?")
PREVIOUS = {"base": "base model", "mid": "midtrained model", "sft": "SFT model"}


@dataclass
class ChatOptions:
    # starting point
    source: str = "base"  # phase whose checkpoint to start from: base | mid
    model_tag: str = ""  # its checkpoint folder ('' = the most recently saved); also this run's folder
    step: int = -1  # its step (-1 = latest)
    # data
    tasks: str = ""  # name[:weight],... of tasks/mixtures.py, or a preset ('' = this phase's preset)
    offline: bool = False  # use the offline preset: identity, spelling, arithmetic, HumanEval (no downloads)
    identity_name: str = "nanochat"  # the model's name in the identity conversations
    identity_creator: str = "its users"  # who the identity conversations say made it
    max_seq_len: int = -1  # tokens per row / longest conversation kept (-1 = the model's context)
    device_batch_size: int = 32  # rows (mid) or conversations (sft) per forward pass per device
    num_iterations: int = -1  # optimizer steps (-1 = from the data: see the phase's options)
    # optimization: the base run's learning rates times init_lr_frac
    embedding_lr: float = 0.2  # AdamW lr of the token embedding
    unembedding_lr: float = 0.004  # AdamW lr of the lm_head
    matrix_lr: float = 0.02  # Muon lr of the block matrices
    scalar_lr: float = 0.5  # AdamW lr of scalar parameters, if the model has any
    init_lr_frac: float = 1.0  # multiplier on all the learning rates above
    weight_decay: float = 0.0  # decoupled weight decay
    warmdown_ratio: float = 0.2  # the LR holds, then decays linearly over this last fraction of the run
    final_lr_frac: float = 0.0  # LR at the end as a fraction of the initial LR
    momentum_warmup: int = 300  # steps over which Muon's momentum warms from 0.85 to 0.95 (0 = 0.95 at once)
    grad_clip: float = 0.0  # clip the global grad norm to this (0 = off)
    # compute
    device_type: str = ""  # cuda | mps | cpu ('' = autodetect)
    dtype: str = ""  # bf16 | fp16 | fp32 ('' = bf16 on CUDA, fp32 elsewhere)
    compile: str = "auto"  # torch.compile the model: auto (on for CUDA) | true | false
    seed: int = 42  # seeds the mixture order and every RNG
    # evaluation, checkpoints
    eval_every: int = 150  # steps between validation losses (-1 = never, not even at the end)
    eval_batches: int = 100  # validation batches per evaluation (per process)
    save_every: int = -1  # steps between checkpoints (-1 = only the final one)
    keep_last: int = 2  # checkpoints kept (0 = keep all)
    resume: str = ""  # '' = start fresh, auto = latest checkpoint of this phase if any, or a step number
    run: str = "dummy"  # wandb run name ('dummy' = no wandb)
    stop_after: int = -1  # exit right after this step's checkpoint, as a crash would (-1 = off; for resume tests)

    def validate(self) -> None:
        for name in ("device_batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.source not in PREVIOUS:
            raise ValueError(f"--source must be one of {', '.join(PREVIOUS)}, got {self.source!r}")
        if self.compile not in ("auto", "true", "false"):
            raise ValueError(f"--compile must be auto, true or false, got {self.compile!r}")
        if not 0 < self.init_lr_frac <= 10:
            raise ValueError(f"--init_lr_frac must be in (0, 10], got {self.init_lr_frac}")


def load_previous(opts: ChatOptions, device):
    """(model, its meta, its tag); a missing checkpoint is one line naming the script that makes it."""
    from nanochat import checkpoint as ckpt

    label = PREVIOUS[opts.source]
    try:
        src_dir = ckpt.checkpoint_dir(opts.source, opts.model_tag or None)
        model, meta = ckpt.load_model(src_dir, None if opts.step < 0 else opts.step, device=device)
    except FileNotFoundError:
        where = get_base_dir(create=False) / ckpt.PHASES[opts.source].dirname / (opts.model_tag or "")
        step = "" if opts.step < 0 else f" at step {opts.step}"
        raise FileNotFoundError(f"train the {label} first: python -m {ckpt.PHASES[opts.source].producer} "
                                f"(no checkpoint{step} in {where})") from None
    return model, meta, src_dir.name


def warn_if_larger(opts: ChatOptions, seq_len: int, prev: dict) -> None:
    """The previous run's batch fitted its GPU; a bigger one here may not (the memory is mostly activations)."""
    prev_opts = prev.get("options") or {}
    prev_b, prev_t = prev_opts.get("device_batch_size"), prev_opts.get("max_seq_len")
    if not isinstance(prev_b, int) or not isinstance(prev_t, int) or prev_t <= 0:
        return
    if opts.device_batch_size * seq_len > prev_b * prev_t:
        print0(f"warning: --device_batch_size={opts.device_batch_size} x {seq_len} tokens is more than the "
               f"{opts.source} run's {prev_b} x {prev_t}: it may not fit in GPU memory; lower it on out-of-memory")


def train_chat(opts: ChatOptions, phase: str) -> dict:
    """Run midtraining (phase 'mid') or SFT (phase 'sft') with these options; returns a summary."""
    import torch
    import torch.distributed as dist

    from nanochat import checkpoint as ckpt
    from nanochat.chat_data import PackedChatLoader, PaddedChatLoader
    from nanochat.common import autocast, compute_cleanup, compute_init, resolve_dtype
    from nanochat.hardware import mfu, peak_flops
    from nanochat.loss_eval import evaluate_loss
    from nanochat.optim import build_optimizers
    from nanochat.run_log import RunLog, format_duration, train_line
    from nanochat.schedule import hold_then_decay, lr_multiplier, muon_momentum
    from nanochat.tokenizer import Tokenizer
    from nanochat.training import (
        STOPPED_EXIT_CODE,
        StopRequest,
        check_finite,
        checkpoint_boundary,
        maybe_compile,
        oom_error,
        optimizer_step,
        resume_training,
        save_training,
    )
    from tasks.mixtures import PRESETS, Persona, build_mixture, describe

    opts.validate()
    compute = compute_init(opts.device_type, opts.seed)
    device, info = compute.device, compute.dist
    dtype = resolve_dtype(opts.dtype, compute.device_type)
    amp = autocast(compute.device_type, dtype)
    print0(format_config(opts))

    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    model, prev_meta, tag = load_previous(opts, device)
    model.train()
    config = model.config
    model_config = dataclasses.asdict(config)
    if config.vocab_size != tokenizer.n_vocab:
        raise ValueError(f"the {opts.source} checkpoint's vocabulary ({config.vocab_size}) is not the tokenizer's "
                         f"({tokenizer.n_vocab}): was the tokenizer retrained after this model?")
    T = config.sequence_len if opts.max_seq_len < 0 else opts.max_seq_len
    if not 1 <= T <= config.sequence_len:
        raise ValueError(f"--max_seq_len={opts.max_seq_len}: the model's context is {config.sequence_len} tokens")
    warn_if_larger(opts, T, prev_meta)

    spec = opts.tasks or phase + ("-offline" if opts.offline else "")
    persona = Persona(opts.identity_name, opts.identity_creator)
    train_tasks, val_tasks = build_mixture(spec, persona=persona, seed=opts.seed)
    print0(f"tasks: {PRESETS.get(spec, spec)}")
    print0(f"train mixture: {describe(train_tasks)}")
    print0(f"validation mixture: {len(val_tasks):,} conversations")

    ws = info.world_size
    if phase == "mid":
        per_pass = opts.device_batch_size * T * ws
        total = per_pass if opts.total_batch_size == -1 else opts.total_batch_size
        if total % per_pass:
            raise ValueError(f"--total_batch_size={total} is not a multiple of device_batch_size x max_seq_len x "
                             f"processes = {per_pass}; change one of them")
        grad_accum = total // per_pass
        num_iterations = opts.num_iterations if opts.num_iterations > 0 else None
        print0(f"batch: {total:,} tokens/step = {opts.device_batch_size} x {T} x {ws} processes x {grad_accum} "
               f"accumulation; " + (f"{num_iterations:,} steps" if num_iterations else "one pass over the mixture"))
    else:
        per_pass = opts.device_batch_size * ws
        if opts.target_examples_per_step % per_pass:
            raise ValueError(f"--target_examples_per_step={opts.target_examples_per_step} is not a multiple of "
                             f"device_batch_size x processes = {per_pass}; change one of them")
        grad_accum = opts.target_examples_per_step // per_pass
        num_iterations = opts.num_iterations if opts.num_iterations > 0 else \
            max(1, int(opts.num_epochs * len(train_tasks)) // opts.target_examples_per_step)
        print0(f"batch: {opts.target_examples_per_step} conversations/step = {opts.device_batch_size} x {ws} "
               f"processes x {grad_accum} accumulation; {num_iterations:,} steps ({opts.num_epochs:g} epochs)")

    lr_frac = opts.init_lr_frac
    optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd, matrix_lr=opts.matrix_lr * lr_frac,
                                  embedding_lr=opts.embedding_lr * lr_frac, unembedding_lr=opts.unembedding_lr * lr_frac,
                                  scalar_lr=opts.scalar_lr * lr_frac, weight_decay=opts.weight_decay, world_size=ws)
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    # SFT batches vary in length: dynamic shapes instead of one recompilation per length
    fwd = maybe_compile(model, opts.compile, compute.device_type, dynamic=phase == "sft")

    def make_loader(task, loop: bool):
        if phase == "mid":
            return PackedChatLoader(task, tokenizer, opts.device_batch_size, T, device=device, loop=loop)
        return PaddedChatLoader(task, tokenizer, opts.device_batch_size, T, device=device, loop=loop,
                                pad_multiple=opts.pad_multiple)

    out_dir = ckpt.checkpoint_dir(phase, tag)
    loader = make_loader(train_tasks, loop=True)
    loop, resume_step = resume_training(out_dir, opts.resume, model=model, optimizers=optimizers, loader=loader,
                                        scaler=scaler, model_config=model_config, world_size=ws,
                                        num_iterations=num_iterations)
    stop = StopRequest()
    log = RunLog(out_dir / "metrics.jsonl", enabled=info.is_master, wandb_run=opts.run, project=f"nanochat-{phase}",
                 config=to_dict(opts))
    peak = peak_flops(compute.device_type, device)
    flops_per_token = model.estimate_flops()
    source_meta = {"source": {"phase": opts.source, "tag": tag, "step": prev_meta.get("step")}}

    def save(step: int) -> None:
        save_training(out_dir, step, model=model, optimizers=optimizers, loader=loader, scaler=scaler, loop=loop,
                      model_config=model_config, options=to_dict(opts), num_iterations=num_iterations,
                      keep_last=opts.keep_last, extra_meta=source_meta)

    def data_progress() -> float:
        """Passes over the mixture so far, the furthest rank's (all ranks must agree on the LR and the end)."""
        p = torch.tensor(loader.epochs, dtype=torch.float64, device=device)
        if info.is_distributed:
            dist.all_reduce(p, op=dist.ReduceOp.MAX)
        return p.item()

    val_loss = None
    t_start = time.time()
    while True:
        step = loop.step
        progress = data_progress()
        last = step == num_iterations if num_iterations else (progress >= 1.0 and step > 0)
        stopping = stop.requested(device)
        if opts.eval_every > 0 and not stopping and (last or step % opts.eval_every == 0):
            val_loss = evaluate_loss(fwd, make_loader(val_tasks, loop=False), opts.eval_batches, amp)
            loop.min_val = min(loop.min_val, val_loss)
            print0(f"step {step:05d} | validation loss {val_loss:.4f}")
            log.record(step, val_loss=val_loss)
        if checkpoint_boundary(step, last=last, stopping=stopping, save_every=opts.save_every,
                               stop_after=opts.stop_after, save=save):
            break

        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        positions = torch.zeros((), device=device)  # input positions computed (padding included)
        try:
            batches = [next(loader) for _ in range(grad_accum)]
            if phase == "mid":
                for x, y in batches:
                    with amp:
                        loss = fwd(x, y)  # mean over this batch's assistant tokens
                    loss_sum += loss.detach() / grad_accum
                    (scaler.scale(loss / grad_accum) if scaler else loss / grad_accum).backward()
                    positions += x.numel()
            else:
                # the step's loss is the mean over all its assistant tokens on all ranks; the distributed
                # optimizers average gradients over ranks, so each rank scales its sum by world_size
                n_targets = sum((y >= 0).sum() for _, y in batches).float()
                if info.is_distributed:
                    dist.all_reduce(n_targets)
                n_targets.clamp_(min=1)
                for x, y in batches:
                    with amp:
                        loss = fwd(x, y, loss_reduction="sum")
                    loss_sum += loss.detach() / n_targets
                    scaled = loss * ws / n_targets
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    positions += x.numel()
        except torch.OutOfMemoryError:
            raise oom_error(opts.device_batch_size) from None
        if num_iterations:
            lrm = lr_multiplier(step, num_iterations, warmdown_ratio=opts.warmdown_ratio,
                                final_lr_frac=opts.final_lr_frac)
        else:
            lrm = hold_then_decay(progress, warmdown_ratio=opts.warmdown_ratio, final_lr_frac=opts.final_lr_frac)
        momentum = muon_momentum(step, opts.momentum_warmup)
        grad_norm = optimizer_step(model, optimizers, scaler, grad_clip=opts.grad_clip, lr_multiplier=lrm,
                                   muon_momentum=momentum).item()
        if info.is_distributed:
            dist.all_reduce(positions)
            dist.all_reduce(loss_sum)
            if phase == "mid":
                loss_sum /= ws  # per-rank means -> their mean (sft's per-rank shares already sum to the mean)
        train_loss = loss_sum.item()
        check_finite(train_loss, step)
        dt = time.perf_counter() - t0

        debiased = loop.advance(train_loss, dt)
        tok_per_s = positions.item() / dt
        step_mfu = mfu(flops_per_token, tok_per_s, peak, ws)
        # ETA of a one-pass run from this rank's progress: no collective just for a log line
        total_steps = num_iterations or max(loop.step, round(loop.step / max(loader.epochs, 1e-9)))
        print0(train_line(loop.step, total_steps, debiased, lrm, grad_norm, dt, tok_per_s, step_mfu,
                          loop.eta(total_steps)))
        extra = {"epochs": loader.epochs}
        if phase == "sft":
            extra["padding_efficiency"] = loader.efficiency
        log.record(step, loss=train_loss, lrm=lrm, grad_norm=grad_norm, dt=dt, tok_per_s=tok_per_s, mfu=step_mfu,
                   **extra)

    summary = {"steps": loop.step, "val_loss": val_loss, "min_val_loss": loop.min_val,
               "training_time": format_duration(loop.training_seconds),
               "wall_time": format_duration(time.time() - t_start), "epochs": round(loader.epochs, 4),
               "checkpoint": str(out_dir)}
    if phase == "sft":
        summary["padding_efficiency"] = round(loader.efficiency, 4)
    if compute.device_type == "cuda":
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print0("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    log_section(SECTION_MID_TRAIN if phase == "mid" else SECTION_CHAT_SFT,
                {"source": f"{opts.source}/{tag}", "tasks": PRESETS.get(spec, spec), "conversations": len(train_tasks),
                 "num_iterations": num_iterations or "one pass", **summary, "stopped_early": stop.signalled})
    if info.is_master and not stop.signalled:
        _print_samples(model, tokenizer, amp)
    log.finish()
    compute_cleanup()
    if stop.signalled:
        raise SystemExit(STOPPED_EXIT_CODE)
    return summary


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
