"""LR and momentum schedules: exact values at the edges, and the LR never rises after warmup."""

import pytest

from nanochat.schedule import lr_multiplier, muon_momentum


def test_flat_then_linear_warmdown_to_zero():
    n = 100
    lrs = [lr_multiplier(s, n) for s in range(n)]
    assert lrs[:80] == [1.0] * 80
    assert lrs[80] == pytest.approx(1.0) and lrs[99] == pytest.approx(0.05)
    assert all(b < a for a, b in zip(lrs[80:], lrs[81:]))  # strictly decreasing in the warmdown


@pytest.mark.parametrize("warmup,warmdown,final", [(0.0, 0.2, 0.0), (0.05, 0.5, 0.1), (0.1, 0.9, 0.0), (0.0, 1.0, 0.3)])
def test_never_rises_after_warmup_and_ends_near_final(warmup, warmdown, final):
    n = 237
    lrs = [lr_multiplier(s, n, warmup_ratio=warmup, warmdown_ratio=warmdown, final_lr_frac=final) for s in range(n)]
    w = round(warmup * n)
    assert all(b > a for a, b in zip(lrs[:w], lrs[1:w]))  # warmup rises
    assert all(b <= a for a, b in zip(lrs[w:], lrs[w + 1 :]))  # then never rises
    assert max(lrs) == pytest.approx(1.0)
    assert final <= lrs[-1] <= final + (1 - final) / max(round(warmdown * n), 1) + 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_iterations must be positive"):
        lr_multiplier(0, 0)
    with pytest.raises(ValueError, match="warmup_ratio \\+ warmdown_ratio"):
        lr_multiplier(0, 10, warmup_ratio=0.6, warmdown_ratio=0.6)
    with pytest.raises(ValueError, match="final_lr_frac"):
        lr_multiplier(0, 10, final_lr_frac=2.0)


def test_muon_momentum_warms_from_085_to_095():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95) and muon_momentum(10_000) == pytest.approx(0.95)
