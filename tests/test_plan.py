"""nanochat/plan.py: the batch arithmetic of every phase for any GPU count, and the estimate."""

import subprocess
import sys

import pytest

from nanochat.plan import (
    EVAL_TOKENS_CAP,
    EVAL_TOKENS_FLOOR,
    default_eval_tokens,
    device_batch_for_memory,
    evaluation_count,
    make_plan,
    model_params,
    round_to_multiple,
    shards_for_depth,
)
from tests.conftest import REPO_ROOT, subprocess_env


@pytest.mark.parametrize("gpus,total,sft,rl", [
    (8, 524_288, 32, 16),   # the reference's own numbers
    (3, 589_824, 36, 18),   # 3 x 32 x 2048 x 3 accumulation steps; SFT 12 x 3; RL prompts split evenly
    (1, 524_288, 32, 16),
    (6, 393_216, 24, 18),   # accumulation 1 is nearer 524,288 than 2 (786,432)
])
def test_any_gpu_count_keeps_the_steps_near_the_reference(gpus, total, sft, rl):
    plan = make_plan(gpus, "NVIDIA H100 80GB HBM3", 81_559)
    assert (plan.device_batch_size, plan.total_batch_size) == (32, total)
    assert total % (32 * 2048 * gpus) == 0
    assert (plan.sft_examples_per_step, plan.rl_examples_per_step) == (sft, rl)
    assert plan.hours == pytest.approx(32 / gpus)
    assert plan.cost == pytest.approx(32 / gpus * gpus * 3.0)


def test_memory_sizes_the_device_batch_and_unknown_gpus_have_no_price():
    assert [device_batch_for_memory(m) for m in (143_771, 81_559, 40_960, 24_564, 8_188)] == [32, 32, 16, 8, 4]
    plan = make_plan(2, "Mystery GPU", 24_564)
    assert plan.device_batch_size == 8 and plan.cost is None
    assert make_plan(1, device_batch_size=2).device_batch_size == 2
    assert round_to_multiple(10, 4) == 12 and round_to_multiple(1, 8) == 8
    with pytest.raises(ValueError, match="at least one GPU"):
        make_plan(0)


def test_shell_assignments_without_torch():
    """The pod's preflight runs this with the system python before anything is installed."""
    code = ("import sys, runpy; sys.argv = ['plan', '--gpus=3', '--gpu_name=NVIDIA H200', '--gpu_mem_mb=143771']; "
            "runpy.run_module('nanochat.plan', run_name='__main__'); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    values = dict(line.split("=", 1) for line in out.stdout.split())
    assert values["TOTAL_BATCH_SIZE"] == "589824" and values["RL_EXAMPLES_PER_STEP"] == "18"
    assert values["PLAN_COST"] == "'$122'" and values["PLAN_HOURS"] == "10.7"  # 32 GPU-hours at $3.8
    assert values["PLAN_NUM_SHARDS"] == "240"  # d20 unless --depth says otherwise


def test_model_params_is_the_models_own_count():
    import torch

    from nanochat.gpt import GPT, GPTConfig

    for depth, vocab in ((2, 256), (3, 1000)):
        with torch.device("meta"):
            model = GPT(GPTConfig.from_depth(depth, vocab, 64, 64, 128, None))
        assert model_params(depth, vocab) == model.num_params()
    assert model_params(20) == 560_988_160  # the README's 561M


def test_shards_follow_the_depth():
    """Upstream's arithmetic: d20 needs ~216 shards and fetches 240; its d32 run fetches 800."""
    assert [shards_for_depth(d) for d in (20, 26, 32)] == [240, 460, 800]
    assert shards_for_depth(4) == 20 and shards_for_depth(32) > shards_for_depth(26) > shards_for_depth(20)
    assert make_plan(8, depth=32).num_shards == 800 and make_plan(8).num_shards == 240


@pytest.mark.parametrize("steps,every", [(100, 250), (10, 5), (300, 100), (7, 3), (1, 1), (21400, 250)])
def test_evaluation_count_matches_the_loops_schedule(steps, every):
    from nanochat.training import due

    assert evaluation_count(steps, every) == sum(due(every, s, s == steps) for s in range(steps + 1))
    assert evaluation_count(steps, None) == 0


def test_validation_follows_the_run_size():
    """A 100-step d4 run of 512-token steps (a deployment guide's laptop run) validated 2 x 5.2M tokens
    for 51,200 trained; now 2 x the floor. d20's 11.2B tokens keep the reference's 5.2M."""
    short = default_eval_tokens(100 * 512, evaluation_count(100, 250))
    assert short == EVAL_TOKENS_FLOOR and 2 * short < 2 * 51_200
    assert default_eval_tokens(21_400 * 524_288, evaluation_count(21_400, 250)) == EVAL_TOKENS_CAP == 10 * 524_288
    middle = default_eval_tokens(2_000 * 65_536, evaluation_count(2_000, 250))  # 131M tokens, 9 evaluations
    assert middle == int(0.05 * 2_000 * 65_536 / 9)
    total_eval = middle * 9
    assert total_eval == pytest.approx(0.05 * 2_000 * 65_536, rel=1e-5)  # 5% of the training tokens
