"""Exact values of the validation losses: bits per byte (base) and the chat loss per assistant token."""

import math

import pytest
import torch

from nanochat.loss_eval import evaluate_bpb, evaluate_loss


class FixedLoss(torch.nn.Module):
    """A stand-in model whose per-token loss is the input id / 10 (0 where the target is -1)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.modes = []

    def forward(self, x, y, loss_reduction="mean"):
        assert loss_reduction == "none"
        self.modes.append(self.training)
        return torch.where(y >= 0, x.double() / 10, 0.0)


def batches(*pairs):
    return iter([(torch.tensor(x), torch.tensor(y)) for x, y in pairs])


def test_bpb_counts_text_bytes_only():
    # vocabulary of 5: token 0 is special (0 bytes), others 1..4 bytes
    token_bytes = torch.tensor([0, 1, 2, 3, 4])
    x = [[1, 2, 3], [4, 5, 6]]
    y = [[1, 0, 4], [-1, 2, 3]]  # a special target (0) and a masked one (-1) are left out
    model = FixedLoss()
    bpb = evaluate_bpb(model, batches((x, y)), steps=5, token_bytes=token_bytes)
    nats = 0.1 + 0.3 + 0.5 + 0.6  # inputs 1, 3, 5, 6 at the counted targets 1, 4, 2, 3
    nbytes = 1 + 4 + 2 + 3
    assert bpb == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-12)
    assert model.modes == [False] and model.training  # evaluated in eval mode, training mode restored


def test_bpb_stops_at_steps_and_fails_without_bytes():
    token_bytes = torch.tensor([0, 1, 1])
    one = ([[1]], [[1]])
    two = ([[2]], [[2]])
    assert evaluate_bpb(FixedLoss(), batches(one, two), steps=1, token_bytes=token_bytes) == \
        pytest.approx(0.1 / math.log(2))
    with pytest.raises(ValueError, match="no text bytes"):
        evaluate_bpb(FixedLoss(), batches(([[1]], [[0]])), steps=3, token_bytes=token_bytes)


def test_chat_loss_is_the_mean_over_trained_tokens():
    x = [[1, 2, 3, 4]]
    y = [[-1, 7, -1, 7]]
    loss = evaluate_loss(FixedLoss(), batches((x, y), (x, y)), steps=2)
    assert loss == pytest.approx((0.2 + 0.4) / 2)
    with pytest.raises(ValueError, match="no trained-on tokens"):
        evaluate_loss(FixedLoss(), batches(([[1]], [[-1]])), steps=1)
