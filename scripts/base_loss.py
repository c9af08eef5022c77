"""Evaluate a base checkpoint: bits per byte on the train and validation splits, and samples.

    python -m scripts.base_loss                                   # latest base checkpoint
    python -m scripts.base_loss --model_tag=d4 --step=300 --source=embedded
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss # splits the batches across GPUs
"""

from __future__ import annotations

from dataclasses import dataclass

from nanochat.common import get_base_dir, print0, run_main, setup_logging
from nanochat.config import format_config, parse_args
from nanochat.report import SECTION_BASE_LOSS, log_section


@dataclass
class Options:
    source: str = ""  # data dir or source name ('' = FineWeb-Edu base_data)
    model_tag: str = ""  # checkpoint folder ('' = the most recently saved tag)
    step: int = -1  # checkpoint step (-1 = latest)
    device_batch_size: int = 32  # sequences per forward pass
    split_tokens: int = 20 * 524288  # tokens evaluated per split
    device_type: str = ""  # cuda | mps | cpu ('' = autodetect)
    dtype: str = ""  # bf16 | fp16 | fp32 ('' = bf16 on CUDA, fp32 elsewhere)
    max_new_tokens: int = 24  # length of each printed sample (0 = no samples)


def main(opts: Options) -> dict:
    import torch

    from nanochat.checkpoint import load_model
    from nanochat.common import autocast, compute_cleanup, compute_init, resolve_dtype
    from nanochat.dataloader import TokenLoader
    from nanochat.dataset import list_shards
    from nanochat.engine import SAMPLE_PROMPTS, greedy_continuation
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.tokenizer import Tokenizer

    compute = compute_init(opts.device_type)
    amp = autocast(compute.device_type, resolve_dtype(opts.dtype, compute.device_type))
    print0(format_config(opts))
    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    model, meta = load_model("base", None if opts.step < 0 else opts.step, tag=opts.model_tag or None,
                             device=compute.device)
    seq = model.config.sequence_len
    if model.config.vocab_size != tokenizer.n_vocab:
        raise ValueError(f"the checkpoint's vocabulary ({model.config.vocab_size}) is not the tokenizer's "
                         f"({tokenizer.n_vocab}): was the tokenizer retrained after this model?")
    token_bytes = torch.tensor(tokenizer.token_bytes_lengths(), dtype=torch.long, device=compute.device)
    steps = max(1, opts.split_tokens // (opts.device_batch_size * seq * compute.dist.world_size))
    results = {"step": meta["step"]}
    for split in ("train", "val"):
        shards = list_shards(split, opts.source or None)
        with TokenLoader(shards, tokenizer, opts.device_batch_size, seq, device=compute.device, loop=False) as batches:
            results[f"{split}_bpb"] = evaluate_bpb(model, batches, steps, token_bytes, amp)
        print0(f"{split} bpb: {results[f'{split}_bpb']:.4f}")
    samples = {}
    if compute.dist.is_master and opts.max_new_tokens > 0:
        for prompt in SAMPLE_PROMPTS:
            samples[prompt] = greedy_continuation(model, tokenizer, prompt, opts.max_new_tokens, amp)
            print0(f"sample: {prompt!r} -> {samples[prompt]!r}")
    log_section(SECTION_BASE_LOSS, {"model_tag": opts.model_tag or "(latest)", **results,
                                    "split_tokens": opts.split_tokens, "samples": samples})
    compute_cleanup()
    return results


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.base_loss", description=__doc__))
