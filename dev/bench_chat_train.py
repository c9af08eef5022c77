"""Throughput of the chat phases' training steps and the padding cost of SFT batches.

    python dev/bench_chat_train.py                       # CPU: depth 4, seq 256 (speedrun's CPU config)
    python dev/bench_chat_train.py --depth=20 --seq=2048 --mid_batch=32 --device=cuda   # on a GPU

Mid packs conversations into full rows; SFT pads whole conversations per batch. Side by side:
SFT padded to each batch's longest conversation (what chat_sft does) against padding every batch
to the full context (the simple alternative), the same conversations in both.
The model is freshly initialised (throughput does not depend on the weights); the tokenizer is
trained here on the offline mixture's own text so token counts are realistic.
"""

from __future__ import annotations

import argparse
import time

import torch

from nanochat.chat_data import PackedChatLoader, PaddedChatLoader
from nanochat.gpt import GPT, GPTConfig
from nanochat.optim import build_optimizers
from nanochat.tokenizer import Tokenizer
from tasks.mixtures import build_mixture


def conversation_texts(task, n):
    for i in range(min(n, len(task))):
        for m in task[i]["messages"]:
            c = m["content"]
            yield c if isinstance(c, str) else "".join(p["text"] for p in c)


def time_steps(model, optimizers, loader, steps, device, sum_loss):
    """(seconds per step, positions per step, real targets per step) over `steps` after one warm-up."""
    def one():
        x, y = next(loader)
        loss = model(x, y, loss_reduction="sum" if sum_loss else "mean")
        loss = loss / max(int((y >= 0).sum()), 1) if sum_loss else loss
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return x.numel(), int((y >= 0).sum())

    one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    positions = targets = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        p, t = one()
        positions += p
        targets += t
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return dt, positions / steps, targets / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--mid_batch", type=int, default=8)
    ap.add_argument("--sft_batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    mid, _ = build_mixture("mid-offline")
    sft, _ = build_mixture("sft-offline")
    tok = Tokenizer.train_from_iterator(conversation_texts(mid, 20000), args.vocab)
    config = GPTConfig.from_depth(args.depth, tok.n_vocab, args.seq)
    model = GPT(config).to(device)
    model.init_weights()
    optimizers = build_optimizers(model.parameter_groups(), model_dim=config.n_embd, world_size=1)
    print(f"model: depth {args.depth}, {model.num_params():,} parameters, seq {args.seq}, vocab {tok.n_vocab}, "
          f"device {device}, torch threads {torch.get_num_threads()}")

    loader = PackedChatLoader(mid, tok, args.mid_batch, args.seq, device=device, rank=0, world_size=1)
    dt, pos, tgt = time_steps(model, optimizers, loader, args.steps, device, sum_loss=False)
    print(f"mid  (packed, B={args.mid_batch}):          {pos / dt:9,.0f} tok/s computed, {tgt / dt:9,.0f} "
          f"assistant targets/s, {dt * 1000:6.0f} ms/step, padding 0%")

    rows = []
    for label, multiple in (("per-batch longest (chat_sft)", 1), ("full context (naive)", args.seq)):
        loader = PaddedChatLoader(sft, tok, args.sft_batch, args.seq, device=device, pad_multiple=multiple,
                                  rank=0, world_size=1)
        dt, pos, tgt = time_steps(model, optimizers, loader, args.steps, device, sum_loss=True)
        rows.append((label, dt, pos, tgt, loader.efficiency))
        print(f"sft  ({label}, B={args.sft_batch}): {pos / dt:9,.0f} tok/s computed, {tgt / dt:9,.0f} "
              f"assistant targets/s, {dt * 1000:6.0f} ms/step, efficiency {100 * loader.efficiency:5.1f}% "
              "(real tokens / computed positions)")
    (_, dt_a, _, tgt_a, _), (_, dt_b, _, tgt_b, _) = rows
    print(f"sft: per-batch padding trains {(tgt_a / dt_a) / (tgt_b / dt_b):.2f}x the assistant tokens per second "
          "of full-context padding")


if __name__ == "__main__":
    main()
