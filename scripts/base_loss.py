"""Evaluate a base checkpoint: bits per byte on the train and validation splits, and samples.

    python -m scripts.base_loss                                   # latest base checkpoint
    python -m scripts.base_loss --model_tag=d4 --step=300 --corpus=embedded
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss # splits the batches across GPUs
"""

from __future__ import annotations

from dataclasses import dataclass

from nanochat.common import DeviceType, DType, print0, run_main, setup_logging
from nanochat.config import format_config, parse_args
from nanochat.report import SECTION_BASE_LOSS, log_section


@dataclass
class Options:
    corpus: str | None = None  # a corpus of python -m nanochat.dataset or a data dir (None = FineWeb-Edu shards)
    model_tag: str | None = None  # checkpoint folder (None = the most recently saved tag)
    step: int | None = None  # checkpoint step (None = latest)
    device_batch_size: int = 32  # sequences per forward pass
    eval_tokens: int = 20 * 524288  # tokens evaluated per split
    device_type: DeviceType | None = None  # None = autodetect
    dtype: DType | None = None  # None = bf16 on CUDA, fp32 elsewhere
    max_new_tokens: int = 24  # length of each printed sample (0 = no samples)


def main(opts: Options) -> dict:
    import torch

    from nanochat.checkpoint import load_model_and_tokenizer
    from nanochat.common import compute_cleanup, compute_init
    from nanochat.dataloader import TokenLoader
    from nanochat.dataset import list_shards
    from nanochat.engine import SAMPLE_PROMPTS, greedy_continuation
    from nanochat.loss_eval import evaluate_bpb

    compute = compute_init(opts.device_type, dtype=opts.dtype)
    amp = compute.autocast()
    print0(format_config(opts))
    model, tokenizer, meta = load_model_and_tokenizer("base", opts.step, tag=opts.model_tag, device=compute.device)
    seq = model.config.sequence_len
    token_bytes = torch.tensor(tokenizer.token_bytes_lengths(), dtype=torch.long, device=compute.device)
    steps = max(1, opts.eval_tokens // (opts.device_batch_size * seq * compute.dist.world_size))
    results = {"step": meta["step"]}
    for split in ("train", "val"):
        shards = list_shards(split, opts.corpus)
        with TokenLoader(shards, tokenizer, opts.device_batch_size, seq, device=compute.device, loop=False) as batches:
            results[f"{split}_bpb"] = evaluate_bpb(model, batches, steps, token_bytes, amp)
        print0(f"{split} bpb: {results[f'{split}_bpb']:.4f}")
    samples = {}
    if compute.dist.is_master and opts.max_new_tokens > 0:
        for prompt in SAMPLE_PROMPTS:
            samples[prompt] = greedy_continuation(model, tokenizer, prompt, opts.max_new_tokens, compute.autocast())
            print0(f"sample: {prompt!r} -> {samples[prompt]!r}")
    log_section(SECTION_BASE_LOSS, {"model_tag": opts.model_tag or "(latest)", **results,
                                    "eval_tokens": opts.eval_tokens, "samples": samples})
    compute_cleanup()
    return results


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.base_loss", description=__doc__))
