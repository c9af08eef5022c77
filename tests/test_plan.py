"""nanochat/plan.py: the batch arithmetic of every phase for any GPU count, and the estimate."""

import subprocess
import sys

import pytest

from nanochat.plan import device_batch_for_memory, make_plan, round_to_multiple
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
