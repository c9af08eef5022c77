"""nanochat/plan.py: the batch arithmetic of every phase for any GPU count, and the estimate."""

import subprocess
import sys

import pytest

from nanochat.plan import (
    CPU_RUN_HOURS,
    EVAL_TOKENS_CAP,
    EVAL_TOKENS_FLOOR,
    OTHER_STAGES,
    PRESETS,
    default_eval_tokens,
    estimate_hours,
    evaluation_count,
    flops_per_token,
    make_plan,
    model_params,
    preset_for,
    round_to_multiple,
    rows_per_device,
    shards_for_depth,
    shell_assignments,
)
from tests.conftest import REPO_ROOT, subprocess_env

H100 = ("NVIDIA H100 80GB HBM3", 81_559)


@pytest.mark.parametrize("mem_mb,name,depth,seq,vocab,compile_", [
    # memory as nvidia-smi reports it (MiB) for cards of each class
    (4_096, "6-8GB", 8, 1024, 16384, False),      # below the smallest class: its preset, the smallest
    (6_141, "6-8GB", 8, 1024, 16384, False),      # RTX 4050 Laptop GPU
    (8_188, "6-8GB", 8, 1024, 16384, False),      # RTX 4060 (Laptop)
    (12_282, "12-16GB", 8, 2048, 32768, True),    # RTX 3060 / 4070
    (16_376, "12-16GB", 8, 2048, 32768, True),    # RTX 4060 Ti 16GB / 4080
    (24_564, "24GB", 10, 2048, 32768, True),      # RTX 3090 / 4090
    (40_960, "40-48GB", 12, 2048, 65536, True),   # A100 40GB
    (46_068, "40-48GB", 12, 2048, 65536, True),   # L40S
    (49_140, "40-48GB", 12, 2048, 65536, True),   # RTX A6000
    (81_559, "80GB", 20, 2048, 65536, True),      # H100 / A100 80GB
    (143_771, "141GB", 20, 2048, 65536, True),    # H200
])
def test_the_smallest_gpus_memory_picks_the_preset(mem_mb, name, depth, seq, vocab, compile_):
    plan = make_plan(2, "", mem_mb)
    assert plan.preset is preset_for("cuda", mem_mb) and plan.preset.name == name
    assert (plan.depth, plan.max_seq_len, plan.vocab_size, plan.compile) == (depth, seq, vocab, compile_)
    assert plan.device_batch_size is None and plan.overridden == ()  # auto: nanochat/batch_fit.py
    assert plan.num_shards == shards_for_depth(depth, vocab)
    assert plan.total_batch_size % (seq * 2) == 0 and plan.preset.why
    values = dict(line.split("=", 1) for line in shell_assignments(plan).splitlines())
    assert values["DEVICE_BATCH_SIZE"] == "none" and values["COMPILE"] == str(compile_).lower()
    assert values["DEPTH"] == str(depth) and values["SEQ_LEN"] == str(seq) and values["PLAN_PRESET"] == name


def test_presets_are_ordered_and_cover_every_memory():
    floors = [p.min_mem_mb for p in PRESETS]
    assert floors == sorted(floors, reverse=True) and floors[-1] == 0
    assert [p.depth for p in PRESETS] == sorted(p.depth for p in PRESETS)[::-1]  # more memory, no smaller model
    assert preset_for("mps").name == "MPS" and preset_for("cpu").name == "CPU"


@pytest.mark.parametrize("gpus,name,mem_mb,hours", [
    # the times each preset's "why" promises, from the estimate itself
    (1, "NVIDIA GeForce RTX 4060 Laptop GPU", 8_188, 9),
    (1, "NVIDIA GeForce RTX 4060 Ti", 16_380, 10),
    (1, "NVIDIA GeForce RTX 4090", 24_564, 7),
    (1, "NVIDIA GeForce RTX 3090", 24_576, 16),
    (1, "NVIDIA A100-SXM4-40GB", 40_960, 12),
    (1, "NVIDIA L40S", 46_068, 10),
    (8, "NVIDIA A100-SXM4-40GB", 40_960, 1.5),
    (8, *H100, 4),
])
def test_each_preset_finishes_in_the_time_its_why_says(gpus, name, mem_mb, hours):
    plan = make_plan(gpus, name, mem_mb)
    assert plan.peak_listed
    assert plan.hours == pytest.approx(hours, rel=0.15)
    assert (f"~{hours:g} h" in plan.preset.why) or (f"{hours:g} h on" in plan.preset.why)


def test_d20_on_8_h100s_is_upstreams_four_hours_and_hundred_dollars():
    """karpathy/nanochat's README: d20 on an 8 x H100 node in ~4 hours for ~$100 (~$24/hour)."""
    plan = make_plan(8, *H100)
    assert plan.preset.name == "80GB" and plan.depth == 20
    assert 3.5 <= plan.hours <= 4.5
    assert plan.cost == pytest.approx(plan.hours * 3.0 * 8)  # the table's H100 price
    assert 80 <= plan.cost <= 110
    # the pretraining part: 3.49 GFLOP/token x 11.2B tokens at 48% of 8 x 989 TFLOP/s is ~2.9 h
    assert flops_per_token(20, 65536, 2048) == 6 * (12 * 20 * 1280**2 + 65536 * 1280) + 12 * 20 * 1280 * 2048
    assert plan.hours / (1 + OTHER_STAGES) == pytest.approx(2.87, abs=0.05)
    line = plan.summary()
    assert line.startswith("GPU run: 8 x NVIDIA H100 80GB HBM3 (80 GB) -> preset 80GB: depth 20, seq 2048, "
                           "vocab 65536, compile on, device batch auto; ~3.9 h, ~$93 (at $3.00/GPU-hour)")
    assert "48% MFU assumed" in line and "why: upstream's d20 speedrun" in line


def test_unknown_gpu_has_no_cost_but_a_time_from_its_memory_class():
    plan = make_plan(2, "Mystery GPU", 24_564)
    assert plan.cost is None and plan.price_per_gpu_hour is None and not plan.peak_listed
    assert plan.peak_flops == plan.preset.default_peak  # the class's stated assumption
    assert plan.hours == pytest.approx(estimate_hours(10, 32768, 2048, plan.preset.default_peak, 0.35, 2))
    assert "cost unknown (no price for Mystery GPU)" in plan.summary() and "assumed" in plan.summary()
    values = dict(line.split("=", 1) for line in shell_assignments(plan).splitlines())
    assert values["PLAN_COST"] == "unknown" and float(values["PLAN_HOURS"]) > 0
    # a listed card without an hourly price (a laptop's): time from its own peak, cost unknown
    laptop = make_plan(1, "NVIDIA GeForce RTX 4050 Laptop GPU", 6_141)
    assert laptop.peak_listed and laptop.peak_flops == 24e12 and laptop.cost is None


def test_options_given_win_over_the_preset():
    plan = make_plan(1, "NVIDIA GeForce RTX 4090", 24_564, device_batch_size=4, depth=12, vocab_size=65536,
                     max_seq_len=1024, compile=False)
    assert (plan.depth, plan.vocab_size, plan.max_seq_len, plan.compile, plan.device_batch_size) == (12, 65536, 1024,
                                                                                                    False, 4)
    assert plan.overridden == ("depth", "max_seq_len", "vocab_size", "compile", "device_batch_size")
    assert "preset 24GB (overridden: depth, max_seq_len, vocab_size, compile, device_batch_size)" in plan.summary()
    assert plan.total_batch_size == 262_144 and plan.total_batch_size % (4 * 1024) == 0
    assert plan.eval_device_batch_size == 4  # base_loss takes the given batch
    assert plan.num_shards == shards_for_depth(12, 65536)
    assert plan.hours > make_plan(1, "NVIDIA GeForce RTX 4090", 24_564).hours  # the estimate follows the model
    assert make_plan(1, "", 81_559, device_batch_size=24).total_batch_size == 24 * 2048 * 11  # nearest multiple
    with pytest.raises(ValueError, match="at least one GPU"):
        make_plan(0)


@pytest.mark.parametrize("gpus,total,sft,rl", [
    (8, 524_288, 32, 16),   # the reference's own numbers
    (3, 393_216, 36, 18),   # 64 rows per GPU (85 would not halve evenly); SFT 12 x 3; RL prompts split evenly
    (1, 524_288, 32, 16),
    (6, 393_216, 24, 18),   # 32 rows per GPU is nearer 42.7 than 64
])
def test_any_gpu_count_keeps_the_steps_near_the_preset(gpus, total, sft, rl):
    plan = make_plan(gpus, *H100)
    assert plan.total_batch_size == total
    rows = total // (2048 * gpus)
    assert rows & (rows - 1) == 0  # a power of two per GPU: auto may pick any power of two up to it
    assert (plan.sft_examples_per_step, plan.rl_examples_per_step) == (sft, rl)
    assert plan.hours * gpus == pytest.approx(make_plan(1, *H100).hours)
    assert plan.cost == pytest.approx(make_plan(1, *H100).cost)
    assert [rows_per_device(t, 2048, g) for t, g in ((524_288, 5), (100, 1))] == [64, 1]
    assert round_to_multiple(10, 4) == 12 and round_to_multiple(1, 8) == 8


def test_base_loss_batch_follows_memory():
    assert make_plan(8, *H100).eval_device_batch_size == 32  # upstream's
    assert make_plan(1, "NVIDIA GeForce RTX 4050 Laptop GPU", 6_141).eval_device_batch_size == 16
    assert make_plan(1, "", 24_564, depth=20, vocab_size=65536).eval_device_batch_size == 8


def test_mps_and_cpu_plans():
    mps = make_plan(device_type="mps")
    assert (mps.gpus, mps.depth, mps.max_seq_len, mps.vocab_size, mps.compile) == (1, 4, 512, 8192, False)
    assert mps.device_batch_size is None and mps.cost is None and mps.hours > 0
    assert mps.summary().startswith("MPS run: Apple GPU -> preset MPS: depth 4, seq 512, vocab 8192, compile off")
    cpu = make_plan(device_type="cpu", depth=3)
    assert (cpu.depth, cpu.max_seq_len, cpu.vocab_size, cpu.hours) == (3, 256, 4096, CPU_RUN_HOURS)
    assert cpu.summary().startswith("CPU run: no GPU -> preset CPU (overridden: depth): depth 3, seq 256")
    # the CPU leaves compile to base_train's rule (compile when the planned work pays for it)
    assert cpu.compile is None and "compile auto" in cpu.summary()
    assert dict(line.split("=", 1) for line in shell_assignments(cpu).splitlines())["COMPILE"] == "none"


def test_shell_assignments_without_torch():
    """The pod's preflight runs this with the system python before anything is installed."""
    code = ("import sys, runpy; sys.argv = ['plan', '--gpus=3', '--gpu_name=NVIDIA H200', '--gpu_mem_mb=143771', "
            "'--depth=', '--compile=none']; "
            "runpy.run_module('nanochat.plan', run_name='__main__', alter_sys=True); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    values = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert values["PLAN_PRESET"] == "141GB" and values["DEPTH"] == "20"  # empty options: the preset's
    assert values["TOTAL_BATCH_SIZE"] == "393216" and values["RL_EXAMPLES_PER_STEP"] == "18"
    assert values["PLAN_COST"] == "'$118'" and values["PLAN_HOURS"] == "10.3"  # 8 x H200's 3.9 h x 8 / 3 at $3.8
    assert values["PLAN_NUM_SHARDS"] == "240"
    assert values["PLAN_SUMMARY"].startswith("'GPU run: 3 x NVIDIA H200 (140 GB) -> preset 141GB: depth 20")


def test_model_params_and_flops_are_the_models_own_count():
    import torch

    from nanochat.gpt import GPT, GPTConfig

    for depth, vocab, seq in ((2, 256, 64), (3, 1000, 128)):
        with torch.device("meta"):
            model = GPT(GPTConfig.from_depth(depth, vocab, seq, 64, 128, None))
        assert model_params(depth, vocab) == model.num_params()
        assert flops_per_token(depth, vocab, seq) == model.estimate_flops()
    assert model_params(20) == 560_988_160  # the README's 561M


def test_shards_follow_the_depth():
    """Upstream's arithmetic: d20 needs ~216 shards and fetches 240; its d32 run fetches 800."""
    assert [shards_for_depth(d) for d in (20, 26, 32)] == [240, 460, 800]
    assert shards_for_depth(4) == 20 and shards_for_depth(32) > shards_for_depth(26) > shards_for_depth(20)
    assert make_plan(8, *H100, depth=32).num_shards == 800 and make_plan(8, *H100).num_shards == 240


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
