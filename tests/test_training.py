"""The loop mechanics every training phase shares (nanochat/training.py), with exact values."""

import json
import math

import pytest
import torch

from nanochat.training import (
    CPU_COMPILE_MIN_FLOPS,
    LoopState,
    checkpoint_boundary,
    compile_default,
    maybe_compile,
    optimizer_step,
    planned_flops,
    resume_training,
    save_training,
)


def test_loop_state_smooths_debiases_and_skips_the_first_step_time():
    loop = LoopState()
    assert loop.advance(2.0, dt=9.0) == pytest.approx(2.0)  # debiased EMA of one value is the value
    assert loop.training_seconds == 0.0  # the first step pays for compilation: not counted
    assert math.isnan(loop.eta(10))
    second = loop.advance(4.0, dt=1.0)
    assert second == pytest.approx((0.9 * 0.2 + 0.1 * 4.0) / (1 - 0.81))
    loop.advance(4.0, dt=3.0)
    assert loop.step == 3 and loop.training_seconds == 4.0
    assert loop.eta(7) == pytest.approx(2.0 * 4)  # mean 2 s over steps 2-3, 4 steps left
    assert loop.eta(2) == 0.0


@pytest.mark.parametrize("step,last,stopping,save_every,stop_after,also,saves,ends", [
    (0, False, False, None, None, False, False, False),   # nothing asked
    (0, False, False, 5, None, False, False, False),      # step 0 is never a periodic save
    (10, False, False, 5, None, False, True, False),      # periodic save
    (11, False, False, 5, None, False, False, False),
    (7, True, False, None, None, False, True, True),      # the last step
    (3, False, True, None, None, False, True, True),      # a stop signal saves and ends
    (4, False, False, 4, 4, False, True, True),           # --stop_after at a saved step ends
    (4, False, False, None, 4, False, False, False),      # --stop_after only acts where a save happens
    (0, False, False, None, None, True, True, False),     # an extra save (save_initial)
])
def test_checkpoint_boundary(step, last, stopping, save_every, stop_after, also, saves, ends):
    saved = []
    assert checkpoint_boundary(step, last=last, stopping=stopping, save_every=save_every, stop_after=stop_after,
                               save=saved.append, also=also) is ends
    assert saved == ([step] if saves else [])


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return model, opt


def test_optimizer_step_measures_clips_schedules_and_zeroes():
    model, opt = _model_and_optimizer()
    before = model.weight.detach().clone()
    model.weight.grad = torch.full_like(model.weight, 2.0)  # norm sqrt(6 x 4)
    norm = optimizer_step(model, [opt], None, grad_clip=0.0, lr_multiplier=0.5, muon_momentum=0.9)
    assert norm.item() == pytest.approx(math.sqrt(24))
    assert opt.param_groups[0]["lr"] == 0.25
    assert torch.allclose(model.weight, before - 0.25 * 2.0)
    assert model.weight.grad is None
    model.weight.grad = torch.full_like(model.weight, 2.0)
    before = model.weight.detach().clone()
    norm = optimizer_step(model, [opt], None, grad_clip=1.0, lr_multiplier=1.0, muon_momentum=0.9)
    assert norm.item() == pytest.approx(math.sqrt(24))  # reported before clipping
    step = (before - model.weight).norm().item()
    assert step == pytest.approx(0.5 * 1.0, rel=1e-5)  # clipped to norm 1, lr 0.5


class CountingLoader:
    def __init__(self):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, states):
        self.position = max(s["position"] for s in states if s)


def _save(ckpt_dir, step, model, opt, loader, loop, config=None, iterations=10):
    save_training(ckpt_dir, step, model=model, optimizers=[opt], loader=loader, scaler=None, loop=loop,
                  model_config=config or {"width": 3}, options={"x": 1}, num_iterations=iterations, keep_last=None)


def test_resume_restores_everything_and_checks_the_model(tmp_path, capsys):
    ckpt_dir = tmp_path / "base_checkpoints" / "t"
    model, opt = _model_and_optimizer()
    model.weight.grad = torch.ones_like(model.weight)
    opt.step()
    loader = CountingLoader()
    loader.position = 17
    loop = LoopState(step=5, smooth_loss=1.5, training_seconds=2.0, min_val=0.7)
    _save(ckpt_dir, 5, model, opt, loader, loop)

    fresh, fresh_opt = _model_and_optimizer(seed=1)
    fresh_loader = CountingLoader()
    state, step = resume_training(ckpt_dir, "", model=fresh, optimizers=[fresh_opt], loader=fresh_loader,
                                  scaler=None, model_config={"width": 3}, world_size=1, num_iterations=10)
    assert (state, step) == (LoopState(), None)  # resume off
    state, step = resume_training(ckpt_dir, "auto", model=fresh, optimizers=[fresh_opt], loader=fresh_loader,
                                  scaler=None, model_config={"width": 3}, world_size=1, num_iterations=12)
    assert step == 5 and state == loop and fresh_loader.position == 17
    assert torch.equal(fresh.weight, model.weight)
    assert "planned 10 steps, this run 12" in capsys.readouterr().out
    with pytest.raises(ValueError, match="model config"):
        resume_training(ckpt_dir, "auto", model=fresh, optimizers=[fresh_opt], loader=fresh_loader, scaler=None,
                        model_config={"width": 4}, world_size=1, num_iterations=10)


def test_resume_with_another_world_size_keeps_model_and_data_and_says_so(tmp_path, capsys):
    ckpt_dir = tmp_path / "base_checkpoints" / "t"
    model, opt = _model_and_optimizer()
    loader = CountingLoader()
    loader.position = 3
    _save(ckpt_dir, 2, model, opt, loader, LoopState(step=2))
    # as if two processes had saved it: resuming with one restores model and data, not momentum
    meta_path = ckpt_dir / "step_000002" / "meta.json"
    m = json.loads(meta_path.read_text())
    m["world_size"] = 2
    m["loader_states"] = [{"position": 3}, {"position": 4}]
    meta_path.write_text(json.dumps(m))
    fresh, fresh_opt = _model_and_optimizer(seed=1)
    fresh_loader = CountingLoader()
    state, step = resume_training(ckpt_dir, "auto", model=fresh, optimizers=[fresh_opt], loader=fresh_loader,
                                  scaler=None, model_config={"width": 3}, world_size=1, num_iterations=10)
    assert step == 2 and state.step == 2 and fresh_loader.position == 4
    assert torch.equal(fresh.weight, model.weight)
    assert "saved by 2 processes, this run has 1" in capsys.readouterr().out


@pytest.mark.parametrize("choice, device, work, dynamic, compiled", [
    (None, "cuda", None, False, True),  # CUDA: always, unchanged
    (None, "cuda", 1.0, True, True),
    (None, "cpu", CPU_COMPILE_MIN_FLOPS, False, True),  # a CPU run with enough work to pay for compiling
    (None, "cpu", CPU_COMPILE_MIN_FLOPS / 2, False, False),  # tiny models, tests, smoke runs: eager
    (None, "cpu", None, False, False),  # length unknown
    (None, "cpu", CPU_COMPILE_MIN_FLOPS * 10, True, False),  # varying shapes (SFT, RL): eager on CPU
    (None, "mps", CPU_COMPILE_MIN_FLOPS * 10, False, False),
    (True, "cpu", 1.0, False, True),  # an explicit --compile always wins
    (False, "cuda", None, False, False),
])
def test_compile_default(choice, device, work, dynamic, compiled):
    assert compile_default(choice, device, work_flops=work, dynamic=dynamic) is compiled


def test_maybe_compile_follows_the_planned_work_of_the_run():
    from nanochat.gpt import GPT, GPTConfig

    model = GPT(GPTConfig.from_depth(1, 64, 16))
    flops = planned_flops(model, 2, 10)
    assert flops == model.estimate_flops() * 2 * 16 * 10
    assert planned_flops(model, None, 10) is None and planned_flops(model, 2, None) is None
    assert maybe_compile(model, None, "cpu", work_flops=flops) is model  # a tiny run stays eager
    # enough work: the compiled wrapper (torch.compile is lazy: nothing compiles until it is called)
    steps = math.ceil(CPU_COMPILE_MIN_FLOPS / planned_flops(model, 2, 1))
    wrapped = maybe_compile(model, None, "cpu", work_flops=planned_flops(model, 2, steps))
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule) and wrapped._orig_mod is model
