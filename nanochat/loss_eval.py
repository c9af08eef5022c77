"""Validation loss in bits per byte: comparable across tokenizers and vocabulary sizes.

bpb = (sum of per-token cross-entropy in nats over tokens that stand for text) / (ln 2 x the
UTF-8 bytes those tokens decode to). Special tokens (<|bos|> ...) decode to no text, so both
their loss and their bytes are left out; masked targets (-1) too. Summed over all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches: Iterator, steps: int, token_bytes: torch.Tensor, autocast=None) -> float:
    """Bits per byte of `model` over `steps` batches (inputs, targets) drawn from `batches`.

    token_bytes: (V,) int tensor of each token's UTF-8 byte length (0 for special tokens), on the
    model's device. Every rank must call this with the same `steps` (collective at the end).
    """
    import contextlib

    device = token_bytes.device
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            try:
                x, y = next(batches)
            except StopIteration:
                break
            with autocast if autocast is not None else contextlib.nullcontext():
                loss = model(x, y, loss_reduction="none")  # (B, T) nats, 0 where y == -1
            y = y.reshape(-1)
            nbytes = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)  # (B*T,)
            counted = nbytes > 0
            total_nats += loss.reshape(-1)[counted].double().sum()
            total_bytes += nbytes.sum()
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    n = total_bytes.item()
    if n == 0:
        raise ValueError("validation saw no text bytes: the validation shard is empty or too small for one batch")
    return total_nats.item() / (math.log(2) * n)
