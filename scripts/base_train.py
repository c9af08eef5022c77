"""Pretrain the base model on parquet text shards.

    python -m scripts.base_train --depth=4 --max_seq_len=256 --device_batch_size=4 --total_batch_size=-1 \\
        --num_iterations=200 --source=embedded                                  # tiny CPU run
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train --depth=20   # d20 on one 8-GPU node
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        -m scripts.base_train --depth=26                                       # several nodes
    python -m scripts.base_train --depth=20 --resume=auto                       # continue after a crash

Checkpoints: $NANOCHAT_BASE_DIR/base_checkpoints/<model_tag>/step_NNNNNN/ (see nanochat/checkpoint.py),
with metrics.jsonl beside them. Resume is exact: model, optimizers, schedule position, the data
loader's position and RNG states are restored, so the loss curve continues as if never stopped.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from nanochat.common import get_base_dir, print0, run_main, setup_logging
from nanochat.config import format_config, parse_args, to_dict
from nanochat.report import SECTION_BASE_TRAIN, log_section


@dataclass
class Options:
    # model
    depth: int = 20  # transformer layers; width = depth x aspect_ratio, heads follow the width
    aspect_ratio: int = 64  # width per layer of depth
    head_dim: int = 128  # attention head size
    n_kv_head: int = 0  # key/value heads for GQA (0 = as many as query heads)
    max_seq_len: int = 2048  # context length in tokens
    # data
    source: str = ""  # data dir or source name of python -m nanochat.dataset ('' = FineWeb-Edu base_data)
    # batch
    device_batch_size: int = 32  # sequences per forward pass per device; lower it on out-of-memory
    total_batch_size: int = 524288  # tokens per optimizer step (-1 = one forward pass on every device)
    # horizon: the first of these that is set wins
    num_iterations: int = -1  # optimizer steps (-1 = derive from target_flops or target_param_data_ratio)
    target_flops: float = -1.0  # total training FLOPs (-1 = unused)
    target_param_data_ratio: float = 20.0  # tokens per parameter (Chinchilla); -1 = unused
    # optimization
    embedding_lr: float = 0.2  # AdamW lr of the token embedding (scaled by (width/768)^-0.5)
    unembedding_lr: float = 0.004  # AdamW lr of the lm_head (scaled like the embedding)
    matrix_lr: float = 0.02  # Muon lr of the block matrices
    scalar_lr: float = 0.5  # AdamW lr of scalar parameters, if the model has any
    weight_decay: float = 0.0  # decoupled weight decay
    warmup_ratio: float = 0.0  # fraction of steps of linear LR warmup
    warmdown_ratio: float = 0.2  # fraction of steps of linear LR decay at the end
    final_lr_frac: float = 0.0  # LR at the end as a fraction of the initial LR
    grad_clip: float = 0.0  # clip the global grad norm to this (0 = off)
    # compute
    device_type: str = ""  # cuda | mps | cpu ('' = autodetect)
    dtype: str = ""  # bf16 | fp16 | fp32 ('' = bf16 on CUDA, fp32 elsewhere)
    compile: str = "auto"  # torch.compile the model: auto (on for CUDA) | true | false
    seed: int = 42  # seeds model init and every RNG
    # evaluation, sampling, checkpoints
    eval_every: int = 250  # steps between validation bpb evaluations (-1 = never, not even at the end)
    eval_tokens: int = 10 * 524288  # validation tokens per evaluation
    sample_every: int = 2000  # steps between printed samples (-1 = never)
    save_every: int = -1  # steps between checkpoints (-1 = only the final one)
    save_initial: bool = False  # also save the freshly initialised model (step 0)
    keep_last: int = 2  # checkpoints kept (older ones are deleted; 0 = keep all)
    resume: str = ""  # '' = start fresh, auto = latest checkpoint if any, or a step number
    model_tag: str = ""  # checkpoint folder name ('' = d<depth>)
    run: str = "dummy"  # wandb run name ('dummy' = no wandb)
    stop_after: int = -1  # exit right after this step's checkpoint, as a crash would (-1 = off; for resume tests)

    def __post_init__(self):
        for name in ("depth", "aspect_ratio", "head_dim", "max_seq_len", "device_batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.total_batch_size == 0 or self.total_batch_size < -1:
            raise ValueError(f"--total_batch_size must be positive or -1, got {self.total_batch_size}")
        if self.compile not in ("auto", "true", "false"):
            raise ValueError(f"--compile must be auto, true or false, got {self.compile!r}")
        if self.num_iterations <= 0 and self.target_flops <= 0 and self.target_param_data_ratio <= 0:
            raise ValueError("set one of --num_iterations, --target_flops or --target_param_data_ratio")


def batch_plan(opts: Options, world_size: int) -> tuple[int, int]:
    """(total tokens per step, gradient accumulation steps); a total that does not divide fails clearly."""
    per_pass = opts.device_batch_size * opts.max_seq_len * world_size
    total = per_pass if opts.total_batch_size == -1 else opts.total_batch_size
    if total % per_pass:
        raise ValueError(
            f"--total_batch_size={total} is not a multiple of device_batch_size x max_seq_len x processes = "
            f"{opts.device_batch_size} x {opts.max_seq_len} x {world_size} = {per_pass}; change one of them"
        )
    return total, total // per_pass


def horizon(opts: Options, num_params: int, flops_per_token: int, total_batch: int) -> tuple[int, str]:
    if opts.num_iterations > 0:
        return opts.num_iterations, "--num_iterations"
    if opts.target_flops > 0:
        return max(1, round(opts.target_flops / (flops_per_token * total_batch))), "--target_flops"
    steps = max(1, int(opts.target_param_data_ratio * num_params) // total_batch)
    return steps, f"--target_param_data_ratio={opts.target_param_data_ratio:g}"


def main(opts: Options) -> dict:
    import torch

    from nanochat import checkpoint as ckpt
    from nanochat.common import autocast, compute_cleanup, compute_init, resolve_dtype
    from nanochat.dataloader import TokenLoader
    from nanochat.dataset import list_shards
    from nanochat.engine import SAMPLE_PROMPTS, greedy_continuation
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.hardware import mfu, peak_flops
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.optim import build_optimizers
    from nanochat.run_log import RunLog, format_duration, train_line
    from nanochat.schedule import lr_multiplier, muon_momentum
    from nanochat.tokenizer import Tokenizer
    from nanochat.training import (
        STOPPED_EXIT_CODE,
        StopRequest,
        check_finite,
        checkpoint_boundary,
        global_mean,
        maybe_compile,
        oom_error,
        optimizer_step,
        resume_training,
        save_training,
    )

    compute = compute_init(opts.device_type, opts.seed)
    device, info = compute.device, compute.dist
    dtype = resolve_dtype(opts.dtype, compute.device_type)
    amp = autocast(compute.device_type, dtype)
    print0(format_config(opts))

    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    source = opts.source or None
    train_shards, val_shards = list_shards("train", source), list_shards("val", source)

    config = GPTConfig.from_depth(opts.depth, tokenizer.n_vocab, opts.max_seq_len, opts.aspect_ratio, opts.head_dim,
                                  opts.n_kv_head or None)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    num_params, flops_per_token = model.num_params(), model.estimate_flops()
    total_batch, grad_accum = batch_plan(opts, info.world_size)
    num_iterations, horizon_from = horizon(opts, num_params, flops_per_token, total_batch)
    print0(f"model: {num_params:,} parameters, {flops_per_token:.3e} FLOPs/token, config {dataclasses.asdict(config)}")
    print0(f"batch: {total_batch:,} tokens/step = {opts.device_batch_size} x {opts.max_seq_len} x {info.world_size} "
           f"processes x {grad_accum} accumulation; {num_iterations:,} steps from {horizon_from} "
           f"({num_iterations * total_batch:,} tokens, {num_iterations * total_batch * flops_per_token:.2e} FLOPs)")

    optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd, matrix_lr=opts.matrix_lr,
                                  embedding_lr=opts.embedding_lr, unembedding_lr=opts.unembedding_lr,
                                  scalar_lr=opts.scalar_lr, weight_decay=opts.weight_decay, world_size=info.world_size)
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    fwd = maybe_compile(model, opts.compile, compute.device_type)

    tag = opts.model_tag or f"d{opts.depth}"
    ckpt_dir = ckpt.checkpoint_dir("base", tag)
    model_config = dataclasses.asdict(config)
    loader = TokenLoader(train_shards, tokenizer, opts.device_batch_size, opts.max_seq_len, device=device)
    loop, resume_step = resume_training(ckpt_dir, opts.resume, model=model, optimizers=optimizers, loader=loader,
                                        scaler=scaler, model_config=model_config, world_size=info.world_size,
                                        num_iterations=num_iterations)
    stop = StopRequest()

    token_bytes = torch.tensor(tokenizer.token_bytes_lengths(), dtype=torch.long, device=device)
    log = RunLog(ckpt_dir / "metrics.jsonl", enabled=info.is_master, wandb_run=opts.run, config=to_dict(opts))
    peak = peak_flops(compute.device_type, device)
    eval_steps = max(1, opts.eval_tokens // (opts.device_batch_size * opts.max_seq_len * info.world_size))

    def save(step: int) -> None:
        save_training(ckpt_dir, step, model=model, optimizers=optimizers, loader=loader, scaler=scaler, loop=loop,
                      model_config=model_config, options=to_dict(opts), num_iterations=num_iterations,
                      keep_last=opts.keep_last)

    val_bpb = None
    t_start = time.time()
    while True:
        step = loop.step
        last = step == num_iterations
        stopping = stop.requested(device)  # a stop skips the evaluation: it should be quick
        if opts.eval_every > 0 and not stopping and (last or step % opts.eval_every == 0):
            with TokenLoader(val_shards, tokenizer, opts.device_batch_size, opts.max_seq_len, device=device,
                             loop=False) as val_loader:
                val_bpb = evaluate_bpb(fwd, val_loader, eval_steps, token_bytes, amp)
            loop.min_val = min(loop.min_val, val_bpb)
            print0(f"step {step:05d} | validation bpb {val_bpb:.4f}")
            log.record(step, val_bpb=val_bpb)
        if info.is_master and not stopping and opts.sample_every > 0 and (last or step % opts.sample_every == 0) and step > 0:
            for prompt in SAMPLE_PROMPTS:
                print0(f"sample: {prompt!r} -> {greedy_continuation(model, tokenizer, prompt, 16, amp)!r}")
        if checkpoint_boundary(step, last=last, stopping=stopping, save_every=opts.save_every,
                               stop_after=opts.stop_after, save=save,
                               also=opts.save_initial and step == 0 and resume_step is None):
            break

        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        try:
            for _ in range(grad_accum):
                x, y = next(loader)
                with amp:
                    loss = fwd(x, y)
                loss_sum += loss.detach()
                loss = loss / grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
        except torch.OutOfMemoryError:
            raise oom_error(opts.device_batch_size) from None
        lrm = lr_multiplier(step, num_iterations, warmup_ratio=opts.warmup_ratio, warmdown_ratio=opts.warmdown_ratio,
                            final_lr_frac=opts.final_lr_frac)
        grad_norm = optimizer_step(model, optimizers, scaler, grad_clip=opts.grad_clip, lr_multiplier=lrm,
                                   muon_momentum=muon_momentum(step)).item()
        train_loss = (global_mean(loss_sum) / grad_accum).item()  # .item() syncs, so dt below is the real step time
        check_finite(train_loss, step)
        dt = time.perf_counter() - t0

        debiased = loop.advance(train_loss, dt)
        tok_per_s = total_batch / dt
        step_mfu = mfu(flops_per_token, tok_per_s, peak, info.world_size)
        print0(train_line(loop.step, num_iterations, debiased, lrm, grad_norm, dt, tok_per_s, step_mfu,
                          loop.eta(num_iterations)))
        log.record(step, loss=train_loss, lrm=lrm, grad_norm=grad_norm, dt=dt, tok_per_s=tok_per_s, mfu=step_mfu)

    summary = {"steps": loop.step, "val_bpb": val_bpb, "min_val_bpb": loop.min_val,
               "training_time": format_duration(loop.training_seconds), "wall_time": format_duration(time.time() - t_start),
               "parameters": num_params, "tokens": loop.step * total_batch}
    if compute.device_type == "cuda":
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print0("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    log_section(SECTION_BASE_TRAIN, {"model_tag": tag, "depth": opts.depth, "max_seq_len": opts.max_seq_len,
                                     "total_batch_size": total_batch, "num_iterations": num_iterations,
                                     "flops_per_token": flops_per_token, **summary,
                                     "stopped_early": loop.step < num_iterations})
    loader.close()
    log.finish()
    compute_cleanup()
    if stop.signalled:
        raise SystemExit(STOPPED_EXIT_CODE)
    return summary


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.base_train", description=__doc__))
