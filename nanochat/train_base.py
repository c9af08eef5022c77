"""The pretraining loop (scripts.base_train): a fresh model on parquet text shards, validated in bits
per byte, saved to base_checkpoints/<tag>/ with exact resume. The loops of the later phases sit
beside it (train_chat.py, train_rl.py); what they share is in training.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nanochat.common import get_base_dir, print0
from nanochat.training import TrainOptions, due


@dataclass
class BaseOptions(TrainOptions):
    # An out-of-memory during the run halves the device batch and redoes the step; accumulation keeps
    # the tokens per step either way (nanochat/batch_fit.py).
    device_batch_size: int | None = None  # sequences per forward pass per device (None = auto: the largest power of two whose step fits the GPU; 32 off CUDA)
    # model
    depth: int = 20  # transformer layers; width = depth x aspect_ratio, heads follow the width
    aspect_ratio: int = 64  # width per layer of depth
    head_dim: int = 128  # attention head size
    n_kv_head: int | None = None  # key/value heads for GQA (None = as many as query heads)
    max_seq_len: int = 2048  # context length in tokens
    # data
    corpus: str | None = None  # a corpus of python -m nanochat.dataset or a data dir (None = FineWeb-Edu shards)
    # batch and horizon: the first of num_iterations, target_flops, target_param_data_ratio that is set wins
    total_batch_size: int | None = 524288  # tokens per optimizer step (None = one forward pass on every device)
    target_flops: float | None = None  # total training FLOPs
    target_param_data_ratio: float | None = 20.0  # tokens per parameter (Chinchilla)
    warmup_ratio: float = 0.0  # fraction of steps of linear LR warmup
    # evaluation, samples
    eval_tokens: int | None = None  # validation tokens per evaluation (None = 5% of the run's tokens, 32K..5.2M)
    sample_every: int | None = 2000  # steps between printed samples (None = never)
    save_initial: bool = False  # also save the freshly initialised model (step 0)

    def __post_init__(self):
        super().__post_init__()
        for name in ("depth", "aspect_ratio", "head_dim", "max_seq_len", "eval_tokens", "total_batch_size",
                     "n_kv_head", "sample_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.num_iterations is None and not self.target_flops and not self.target_param_data_ratio:
            raise ValueError("set one of --num_iterations, --target_flops or --target_param_data_ratio")


def rows_per_pass(opts: BaseOptions, world_size: int) -> int | None:
    """Rows each device computes per optimizer step (None: --total_batch_size=none, one pass)."""
    if opts.total_batch_size is None:
        return None
    per_row = opts.max_seq_len * world_size
    if opts.total_batch_size % per_row:
        raise ValueError(f"--total_batch_size={opts.total_batch_size} is not a multiple of max_seq_len x processes = "
                         f"{opts.max_seq_len} x {world_size} = {per_row}; change one of them")
    return opts.total_batch_size // per_row


def batch_plan(opts: BaseOptions, world_size: int, device_batch: int | None = None) -> tuple[int, int]:
    """(total tokens per step, gradient accumulation steps); a total that does not divide fails clearly.
    device_batch: the resolved device batch (the option itself unless it is None, auto)."""
    device_batch = opts.device_batch_size if device_batch is None else device_batch
    per_pass = device_batch * opts.max_seq_len * world_size
    total = per_pass if opts.total_batch_size is None else opts.total_batch_size
    if total % per_pass:
        raise ValueError(
            f"--total_batch_size={total} is not a multiple of device_batch_size x max_seq_len x processes = "
            f"{device_batch} x {opts.max_seq_len} x {world_size} = {per_pass}; change one of them"
        )
    return total, total // per_pass


def auto_device_batch(opts: BaseOptions, compute, model) -> int:
    """--device_batch_size=none (auto): see batch_fit.auto_device_batch; a power of two that divides
    the rows of a step, so accumulation fills the step."""
    from nanochat import batch_fit

    return batch_fit.auto_device_batch(compute, model, opts.max_seq_len, rows_per_pass(opts, compute.dist.world_size),
                                       non_cuda=batch_fit.AUTO_NON_CUDA)


def horizon(opts: BaseOptions, num_params: int, flops_per_token: int, total_batch: int) -> tuple[int, str]:
    if opts.num_iterations is not None:
        return opts.num_iterations, "--num_iterations"
    if opts.target_flops:
        return max(1, round(opts.target_flops / (flops_per_token * total_batch))), "--target_flops"
    steps = max(1, int(opts.target_param_data_ratio * num_params) // total_batch)
    return steps, f"--target_param_data_ratio={opts.target_param_data_ratio:g}"


def train_base(opts: BaseOptions) -> dict:
    """Pretrain with these options; returns the run's summary."""
    import dataclasses
    import functools

    import torch

    from nanochat.batch_fit import OOMInjector, step_with_backoff
    from nanochat.dataloader import TokenLoader
    from nanochat.dataset import list_shards
    from nanochat.engine import SAMPLE_PROMPTS, greedy_continuation
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.hardware import mfu, peak_flops
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.plan import default_eval_tokens, evaluation_count
    from nanochat.report import SECTION_BASE_TRAIN
    from nanochat.run_log import train_line
    from nanochat.schedule import lr_multiplier, muon_momentum
    from nanochat.tokenizer import Tokenizer
    from nanochat.training import begin, global_mean, start_run

    compute = begin(opts)
    device, info = compute.device, compute.dist
    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    train_shards, val_shards = list_shards("train", opts.corpus), list_shards("val", opts.corpus)

    config = GPTConfig.from_depth(opts.depth, tokenizer.n_vocab, opts.max_seq_len, opts.aspect_ratio, opts.head_dim,
                                  opts.n_kv_head)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    num_params, flops_per_token = model.num_params(), model.estimate_flops()
    if opts.device_batch_size is None:  # resolved once: the checkpoint's options record the batch that ran
        opts = dataclasses.replace(opts, device_batch_size=auto_device_batch(opts, compute, model))
    B = opts.device_batch_size
    total_batch, grad_accum = batch_plan(opts, info.world_size, B)
    num_iterations, horizon_from = horizon(opts, num_params, flops_per_token, total_batch)
    print0(f"model: {num_params:,} parameters, {flops_per_token:.3e} FLOPs/token, config {dataclasses.asdict(config)}")
    print0(f"batch: {total_batch:,} tokens/step = {B} x {opts.max_seq_len} x {info.world_size} "
           f"processes x {grad_accum} accumulation; {num_iterations:,} steps from {horizon_from} "
           f"({num_iterations * total_batch:,} tokens, {num_iterations * total_batch * flops_per_token:.2e} FLOPs)")

    tag = opts.model_tag or f"d{opts.depth}"
    # the loader always yields B rows; after an out-of-memory they run in smaller micro-batches
    loader = TokenLoader(train_shards, tokenizer, B, opts.max_seq_len, device=device)
    run = start_run(opts, compute, phase="base", tag=tag, model=model, loader=loader, num_iterations=num_iterations)
    token_bytes = torch.tensor(tokenizer.token_bytes_lengths(), dtype=torch.long, device=device)
    peak = peak_flops(compute.device_type, device)
    eval_tokens = opts.eval_tokens or default_eval_tokens(num_iterations * total_batch,
                                                         evaluation_count(num_iterations, opts.eval_every))
    eval_steps = max(1, eval_tokens // (opts.device_batch_size * opts.max_seq_len * info.world_size))
    if opts.eval_every is not None:
        print0(f"validation: {eval_steps * opts.device_batch_size * opts.max_seq_len * info.world_size:,} tokens "
               f"per evaluation{'' if opts.eval_tokens else ' (--eval_tokens=none: sized to the run)'}")

    micro, inject = B, OOMInjector()
    on_backoff = run.backoff_logger(B, grad_accum, "the step on the same rows")

    def run_step(batches, step: int, micro: int) -> torch.Tensor:
        """Forward and backward of the step's rows in micro-batches; the local mean loss (detached)."""
        n = grad_accum * (B // micro)  # micro-batches of equal size: the step's loss is the mean of their means
        loss_sum = torch.zeros((), device=device)
        for x, y in batches:
            for xs, ys in zip(x.split(micro), y.split(micro)):
                with run.amp():
                    loss = run.fwd(xs, ys)
                loss_sum += loss.detach()
                run.backward(loss / n)
                inject.check(step)
        return loss_sum / n

    val_bpb = None
    while True:
        step = run.loop.step
        last = step == num_iterations
        stopping = run.stop.requested(device)  # a stop skips the evaluation: it should be quick
        if due(opts.eval_every, step, last) and not stopping:
            eval_steps = max(1, eval_tokens // (micro * opts.max_seq_len * info.world_size))  # after a back-off too
            with TokenLoader(val_shards, tokenizer, micro, opts.max_seq_len, device=device,
                             loop=False) as val_loader:
                val_bpb = evaluate_bpb(run.fwd, val_loader, eval_steps, token_bytes, run.amp())
            run.loop.min_val = min(run.loop.min_val, val_bpb)
            print0(f"step {step:05d} | validation bpb {val_bpb:.4f}")
            run.log.record(step, val_bpb=val_bpb)
        if info.is_master and not stopping and due(opts.sample_every, step, last) and step > 0:
            for prompt in SAMPLE_PROMPTS:
                print0(f"sample: {prompt!r} -> {greedy_continuation(model, tokenizer, prompt, 16, run.amp())!r}")
        if run.boundary(step, last=last, stopping=stopping,
                        also=opts.save_initial and step == 0 and run.resumed_from is None):
            break

        t0 = time.perf_counter()
        batches = [next(loader) for _ in range(grad_accum)]  # fetched once: a redone step reads the same rows
        try:
            step_loss, micro = step_with_backoff(functools.partial(run_step, batches, step), micro, step=step,
                                                 model=model, on_backoff=on_backoff)
        except torch.OutOfMemoryError:
            raise ValueError("out of GPU memory even at a device batch of 1: use a smaller model or a shorter "
                             "--max_seq_len") from None
        lrm = lr_multiplier(step, num_iterations, warmup_ratio=opts.warmup_ratio, warmdown_ratio=opts.warmdown_ratio,
                            final_lr_frac=opts.final_lr_frac)
        grad_norm = run.optimizer_step(lrm, muon_momentum(step))
        train_loss = global_mean(step_loss).item()  # .item() syncs, so dt below is the real step time
        dt = time.perf_counter() - t0
        tok_per_s = total_batch / dt
        step_mfu = mfu(flops_per_token, tok_per_s, peak, info.world_size)
        smoothed = run.end_step(step, train_loss, dt, lrm=lrm, grad_norm=grad_norm, tok_per_s=tok_per_s, mfu=step_mfu)
        print0(train_line(run.loop.step, num_iterations, smoothed, lrm, grad_norm, dt, tok_per_s, step_mfu,
                          run.loop.eta(num_iterations)))

    loader.close()
    return run.finish(SECTION_BASE_TRAIN, {
        "model_tag": tag, "depth": opts.depth, "max_seq_len": opts.max_seq_len, "total_batch_size": total_batch,
        "device_batch_size": B, "device_batch_size_final": micro, "oom_backoffs": run.backoffs,
        "num_iterations": num_iterations, "flops_per_token": flops_per_token,
    }, {"val_bpb": val_bpb, "min_val_bpb": run.loop.min_val, "parameters": num_params,
        "tokens": run.loop.step * total_batch})
