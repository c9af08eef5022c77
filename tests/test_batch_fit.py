"""batch_fit: the auto device batch and the out-of-memory back-off, with out-of-memory errors raised
on purpose (CI has no GPU to run out of). The end-to-end check, a pretraining run whose step 3 runs
out of memory against a straight run at the smaller batch, is in test_base_train.py."""

import pytest
import torch

from nanochat import batch_fit
from nanochat.batch_fit import OOMInjector, fit_device_batch, largest_power_of_two_dividing, step_with_backoff


def oom_above(limit: int, tried: list[int]):
    def try_step(b: int) -> None:
        tried.append(b)
        if b > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory at {b}")

    return try_step


def test_fit_halves_from_the_top_until_a_step_runs():
    tried = []
    assert fit_device_batch(oom_above(8, tried), 64, log=lambda _: None) == 8
    assert tried == [64, 32, 16, 8]


def test_fit_starts_at_the_largest_power_of_two_under_the_cap():
    tried = []
    assert fit_device_batch(oom_above(100, tried), 48, log=lambda _: None) == 32
    assert tried == [32]


def test_fit_keeps_the_memory_margin():
    """A step that runs but peaks over the budget counts as not fitting: the run needs headroom."""
    peak = {"bytes": 0}

    def try_step(b: int) -> None:
        peak["bytes"] = 100 * b

    lines = []
    assert fit_device_batch(try_step, 16, budget_bytes=450, peak_bytes=lambda: peak["bytes"],
                            reset_peak=lambda: peak.update(bytes=0), log=lines.append) == 4
    assert len(lines) == 2 and "over the" in lines[0]


def test_fit_fails_in_one_line_when_nothing_fits():
    with pytest.raises(ValueError, match="not even --device_batch_size=1"):
        fit_device_batch(oom_above(0, []), 4, log=lambda _: None)


def test_largest_power_of_two_dividing():
    assert largest_power_of_two_dividing(48) == 16
    assert largest_power_of_two_dividing(256) == 256
    assert largest_power_of_two_dividing(256, cap=32) == 32
    assert largest_power_of_two_dividing(7) == 1
    with pytest.raises(ValueError):
        largest_power_of_two_dividing(0)


def test_backoff_halves_and_redoes_the_step_with_the_gradients_of_a_clean_run():
    """The failed attempt's partial gradient is dropped: the redone step's gradient is the one a
    straight run at the smaller micro-batch gets."""
    torch.manual_seed(0)
    w = torch.nn.Linear(4, 1, bias=False)
    rows = torch.randn(8, 4)

    def run_step(micro: int) -> float:
        chunks = rows.split(micro)
        for i, chunk in enumerate(chunks):
            (w(chunk).square().mean() / len(chunks)).backward()
            if micro > 2 and i == 0:
                raise torch.OutOfMemoryError("injected")
        return micro

    events = []
    result, micro = step_with_backoff(run_step, 8, step=5, model=w, on_backoff=lambda s, m: events.append((s, m)))
    assert (result, micro) == (2, 2)
    assert events == [(5, 4), (5, 2)]
    backed_off = w.weight.grad.clone()
    w.zero_grad(set_to_none=True)
    run_step(2)
    torch.testing.assert_close(backed_off, w.weight.grad)


def test_backoff_at_one_row_reraises():
    def run_step(micro: int):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(torch.OutOfMemoryError):
        step_with_backoff(run_step, 1, step=0, model=torch.nn.Linear(1, 1))


def test_injector_fires_once_per_listed_step(monkeypatch):
    monkeypatch.setenv(batch_fit.TEST_OOM_ENV, "3, 7")
    inject = OOMInjector()
    inject.check(2)
    with pytest.raises(torch.OutOfMemoryError, match="step 3"):
        inject.check(3)
    inject.check(3)  # the redone step runs
    with pytest.raises(torch.OutOfMemoryError):
        inject.check(7)
    with pytest.raises(ValueError, match="comma-separated step numbers"):
        OOMInjector("three")


def test_probe_step_runs_a_full_step_and_leaves_the_weights():
    """The auto fit's trial steps (forward, backward, optimizer step at lr 0) change nothing."""
    from nanochat.batch_fit import probe_step
    from nanochat.common import Compute, DistInfo
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_kv_head=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try_step = probe_step(model, Compute("cpu", torch.device("cpu"), DistInfo()), 16)
    tried = []

    def limited(b: int) -> None:
        tried.append(b)
        try_step(b)
        if b > 2:
            raise torch.OutOfMemoryError("injected")

    assert fit_device_batch(limited, 8, model=model, log=lambda _: None) == 2
    assert tried == [8, 4, 2]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_auto_off_cuda_is_the_phase_default_within_a_step():
    """Without a GPU to probe, auto is each phase's fixed default, lowered to divide a step's rows."""
    from nanochat.batch_fit import auto_device_batch
    from nanochat.common import Compute, DistInfo
    from nanochat.train_chat import MidOptions, SFTOptions
    from nanochat.train_chat import auto_device_batch as chat_auto

    cpu = Compute("cpu", torch.device("cpu"), DistInfo())
    assert auto_device_batch(cpu, None, 64, 256, non_cuda=32) == 32
    assert auto_device_batch(cpu, None, 64, 12, non_cuda=32) == 4
    assert auto_device_batch(cpu, None, 64, None, non_cuda=8) == 8
    assert chat_auto(SFTOptions(), cpu, None, 64) == 4
    assert chat_auto(SFTOptions(target_examples_per_step=2), cpu, None, 64) == 2
    assert chat_auto(MidOptions(total_batch_size=8 * 64), cpu, None, 64) == 8
    assert chat_auto(MidOptions(), cpu, None, 2048) == 32
