"""Decode speed: our Engine (KV cache) vs full recompute vs HF transformers' generate.

    uv pip install transformers                  # the competitor (bench-only)
    python dev/bench_engine.py                   # depth 4 (d4 shape), vocab 65536, CPU fp32
    python dev/bench_engine.py --depth=12 --new_tokens=32

All three run greedy decoding of the same number of new tokens, batch 1, on randomly initialised
models of the same shape: ours from GPTConfig.from_depth, HF's GPT2LMHeadModel with the same
layers, width, heads, vocabulary and context (GPT-2's architecture: learned positions, GELU MLP,
biases, tied head, so parameter counts differ slightly; the table prints both). Reported:
decode tokens/s after the first token, and time to first token (prefill + one step) for a
prompt of --prompt_tokens (default 1024) tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--prompt_tokens", type=int, default=1024)
    p.add_argument("--new_tokens", type=int, default=64)
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from nanochat.engine import Engine
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    torch.manual_seed(0)
    seq = a.prompt_tokens + a.new_tokens + 8
    config = GPTConfig.from_depth(a.depth, a.vocab, seq)
    model = GPT(config).eval()
    # the engine needs a tokenizer only for stop tokens and tool calls: a byte-level one, ids mapped below
    tokenizer = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    prompt = torch.randint(0, 256, (a.prompt_tokens,)).tolist()  # ordinary ids: never a stop token
    engine = Engine(model, tokenizer)
    n = a.new_tokens
    print(f"depth {a.depth} (width {config.n_embd}, {config.n_head} heads), vocab {a.vocab}, prompt {a.prompt_tokens} "
          f"tokens, {n} new tokens, batch 1, {torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'} fp32\n")
    rows = []

    # ours, KV cache: first token = prefill + one sample; the rest is decode
    def ours():
        it = engine.generate(prompt, max_tokens=n, temperature=0.0)
        _, first = timed(lambda: next(it))
        out, rest = timed(lambda: sum(1 for _ in it))
        return first, rest / max(out, 1)

    ours()  # warm-up (allocator, kernels)
    first, per_tok = ours()
    rows.append(("nanochat Engine (KV cache)", model.num_params(), first, 1 / per_tok))

    # ours, full recompute of the whole sequence for every new token
    @torch.no_grad()
    def recompute():
        x = torch.tensor([prompt])
        times = []
        for _ in range(min(n, 16)):  # fewer steps: each one re-reads the whole prefix
            t0 = time.perf_counter()
            nxt = model(x)[:, -1].argmax(-1, keepdim=True)
            x = torch.cat([x, nxt], dim=1)
            times.append(time.perf_counter() - t0)
        return times[0], sum(times[1:]) / max(len(times) - 1, 1)

    first, per_tok = recompute()
    rows.append(("nanochat, full recompute", model.num_params(), first, 1 / per_tok))

    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print("transformers is not installed: uv pip install transformers (comparison skipped)")
    else:
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=a.vocab, n_positions=seq, n_embd=config.n_embd, n_layer=a.depth,
                                        n_head=config.n_head)).eval()
        ids = torch.tensor([prompt])

        @torch.no_grad()
        def hf_run(k):
            return hf.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False, use_cache=True,
                               pad_token_id=0, eos_token_id=None)

        hf_run(2)  # warm-up
        _, first = timed(lambda: hf_run(1))
        _, total = timed(lambda: hf_run(n))
        rows.append(("HF transformers generate", sum(p.numel() for p in hf.parameters()), first,
                     (n - 1) / max(total - first, 1e-9)))

    print(f"{'decoder':<28}{'params':>13}{'first token':>13}{'decode tok/s':>14}")
    for name, params, first, tps in rows:
        print(f"{name:<28}{params:>13,}{first * 1000:>11.0f}ms{tps:>14.1f}")


if __name__ == "__main__":
    main()
