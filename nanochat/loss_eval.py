"""Validation losses: bits per byte for pretraining (comparable across tokenizers and vocabulary
sizes), and mean nats per trained-on token for the chat phases (evaluate_loss).

bpb = (sum of per-token cross-entropy in nats over tokens that stand for text) / (ln 2 x the
UTF-8 bytes those tokens decode to). Special tokens (<|bos|> ...) decode to no text, so both
their loss and their bytes are left out; masked targets (-1) too. Summed over all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist

from nanochat.common import dist_initialized


def _sum_over_batches(model, batches: Iterator, steps: int, autocast, weigh) -> tuple[float, int]:
    """(sum of weighed nats, sum of counts) over up to `steps` batches, summed over all ranks.

    weigh(losses (N,), targets (N,)) -> (nats, count) tensors; losses are 0 where the target is -1.
    """
    import contextlib

    totals = None
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
            nats, count = weigh(loss.reshape(-1).double(), y.reshape(-1))
            if totals is None:
                totals = torch.zeros(2, dtype=torch.float64, device=y.device)
            totals[0] += nats
            totals[1] += count
    finally:
        model.train(was_training)
    if dist_initialized():
        if totals is None:  # this rank got no batch: it must still take part in the collective
            totals = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
        dist.all_reduce(totals)
    if totals is None:
        return 0.0, 0
    return totals[0].item(), int(totals[1].item())


@torch.no_grad()
def evaluate_bpb(model, batches: Iterator, steps: int, token_bytes: torch.Tensor, autocast=None) -> float:
    """Bits per byte of `model` over `steps` batches (inputs, targets) drawn from `batches`.

    token_bytes: (V,) int tensor of each token's UTF-8 byte length (0 for special tokens), on the
    model's device. Every rank must call this with the same `steps` (collective at the end).
    """
    def weigh(loss, y):
        nbytes = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)  # (N,)
        return loss[nbytes > 0].sum(), nbytes.sum()

    nats, n = _sum_over_batches(model, batches, steps, autocast, weigh)
    if n == 0:
        raise ValueError("validation saw no text bytes: the validation shard is empty or too small for one batch")
    return nats / (math.log(2) * n)


@torch.no_grad()
def evaluate_loss(model, batches: Iterator, steps: int, autocast=None) -> float:
    """Mean cross-entropy (nats) per trained-on target (target != -1) over `steps` batches: the chat
    phases' validation loss, where only the assistant's tokens count. Collective like evaluate_bpb."""
    nats, n = _sum_over_batches(model, batches, steps, autocast, lambda loss, y: (loss.sum(), (y >= 0).sum()))
    if n == 0:
        raise ValueError("validation saw no trained-on tokens: the validation mixture is empty or all masked")
    return nats / n
