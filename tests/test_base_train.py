"""scripts.base_train as users run it: real processes, real files, CPU.

Exact resume (stop and resume, and a SIGKILL mid-run), 2-process gloo against 1 process with
the same global batch, and the one-line failures for bad setups.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import cpu_has_bf16
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tests.conftest import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow

SEQ = 32
TINY = ["--depth=1", "--aspect_ratio=64", "--head_dim=32", f"--max_seq_len={SEQ}", "--compile=false",
        "--eval_every=none", "--sample_every=none", "--device_type=cpu", "--warmdown_ratio=0.5"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A byte-level tokenizer and shards whose row groups each hold one document of exactly SEQ bytes,
    so every packed row is one row group: 1 process with 2 micro-batches and 2 ranks with 1 each see
    the same rows in the same steps."""
    root = tmp_path_factory.mktemp("base_train")
    base = root / "base"
    Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN).save(base / "tokenizer")
    data = root / "data"
    data.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    for shard in range(3):
        docs = []
        for i in range(64):
            k = shard * 64 + i
            text = " ".join(words[(k * 7 + j * 3) % len(words)] for j in range(12))
            docs.append((text + " " + str(k) * 40)[:SEQ])  # SEQ bytes + bos = one row of SEQ + 1 tokens
        pq.write_table(pa.table({"text": docs}), data / f"shard_{shard:05d}.parquet", row_group_size=1)
    return base, data


def run(args, base, launcher=None, timeout=300, wait=True):
    cmd = (launcher or [sys.executable]) + ["-m", "scripts.base_train", *args]
    kwargs = dict(cwd=REPO_ROOT, env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1"),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return subprocess.Popen(cmd, **kwargs)
    proc = subprocess.run(cmd, timeout=timeout, **kwargs)
    return proc


def losses(base, tag):
    records = {}
    for line in (base / "base_checkpoints" / tag / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            records[rec["step"]] = rec["loss"]  # a resumed step's later record wins
    return [records[s] for s in sorted(records)]


def test_stop_and_resume_continue_the_exact_loss_curve(workspace):
    base, data = workspace
    common = [*TINY, f"--corpus={data}", "--device_batch_size=2", "--total_batch_size=none", "--num_iterations=8"]
    # the straight run takes the default --dtype and --compile: bf16 on a CPU with native bf16, and
    # eager, the run's planned work being far below what pays for a compile on a CPU
    straight = run([*(a for a in common if a != "--compile=false"), "--model_tag=straight"], base)
    assert straight.returncode == 0, straight.stderr
    assert f"cpu (cpu), {'bf16' if cpu_has_bf16() else 'fp32'}," in straight.stdout
    assert "compile: off (auto, " in straight.stdout
    first = run([*common, "--model_tag=resumed", "--save_every=4", "--stop_after=4"], base)
    assert first.returncode == 0, first.stderr
    assert "compile: off (--compile)" in first.stdout
    assert "stopping after step 4" in first.stdout
    second = run([*common, "--model_tag=resumed", "--save_every=4", "--resume=auto"], base)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "at step 4" in second.stdout
    a, b = losses(base, "straight"), losses(base, "resumed")
    assert len(a) == len(b) == 8
    assert a == b  # bit-exact: deterministic CPU kernels (fp32 or bf16), same data position and optimizer state
    assert a[-1] < a[0]


def test_sigkill_mid_run_leaves_a_usable_checkpoint(workspace):
    base, data = workspace
    common = [*TINY, f"--corpus={data}", "--device_batch_size=2", "--total_batch_size=none", "--num_iterations=8"]
    if not (base / "base_checkpoints" / "straight").exists():
        assert run([*common, "--model_tag=straight"], base).returncode == 0
    proc = run([*common, "--model_tag=killed", "--save_every=1", "--keep_last=2"], base, wait=False)
    ckdir = base / "base_checkpoints" / "killed"
    deadline = time.time() + 240
    # any step from 3 on: with keep_last=2 step 3 itself is pruned two steps later, a window a poll can miss
    while time.time() < deadline and proc.poll() is None and not any(
            int(p.name[5:]) >= 3 for p in (ckdir.glob("step_*") if ckdir.is_dir() else [])):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # wherever it is: training, or in the middle of writing a checkpoint
    proc.wait()
    resumed = run([*common, "--model_tag=killed", "--save_every=1", "--keep_last=2", "--resume=auto"], base)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(base, "killed") == losses(base, "straight")
    steps = sorted(p.name for p in ckdir.iterdir() if p.name.startswith("step_"))
    assert steps == ["step_000007", "step_000008"]  # keep_last pruned the rest, no temp dirs remain
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".")]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(workspace):
    base, data = workspace
    # fp32: two processes and one with accumulation agree to rounding only in fp32 (bf16, the default
    # on a CPU with native bf16, rounds the two batch splits differently)
    common = [*TINY, f"--corpus={data}", f"--total_batch_size={2 * SEQ}", "--num_iterations=5", "--dtype=fp32"]
    single = run([*common, "--device_batch_size=1", "--model_tag=single"], base)
    assert single.returncode == 0, single.stderr
    assert "x 2 accumulation" in single.stdout
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = run([*common, "--device_batch_size=1", "--model_tag=ddp"], base, launcher=torchrun)
    assert ddp.returncode == 0, ddp.stderr
    assert "x 2 processes x 1 accumulation" in ddp.stdout
    one, two = losses(base, "single"), losses(base, "ddp")
    assert len(one) == len(two) == 5
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert one[-1] < one[0]


def test_out_of_memory_halves_the_batch_and_redoes_the_step(workspace):
    """An out-of-memory at step 3 (injected: CI has no GPU) halves the device batch and redoes the
    step on the same rows: the loss curve is a straight run's at the smaller batch, no step lost."""
    base, data = workspace
    # fp32: the halved batch with accumulation equals the straight run to rounding only in fp32
    common = [*TINY, f"--corpus={data}", f"--total_batch_size={4 * SEQ}", "--num_iterations=6", "--dtype=fp32"]
    straight = run([*common, "--device_batch_size=2", "--model_tag=oom_straight"], base)
    assert straight.returncode == 0, straight.stderr
    env_run = subprocess.run([sys.executable, "-m", "scripts.base_train", *common, "--device_batch_size=4",
                              "--model_tag=oom_backoff"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                             env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1",
                                                NANOCHAT_TEST_OOM_AT_STEP="3"))
    assert env_run.returncode == 0, env_run.stderr
    assert "out of memory at step 3: device batch 4 -> 2, accumulation 1 -> 2" in env_run.stdout
    a, b = losses(base, "oom_straight"), losses(base, "oom_backoff")
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    records = [json.loads(line) for line in (base / "base_checkpoints" / "oom_backoff" / "metrics.jsonl")
               .read_text().splitlines()]
    assert [(r["step"], r["device_batch_size"]) for r in records if "device_batch_size" in r] == [(3, 2)]


@pytest.mark.skipif(not cpu_has_bf16(), reason="no native bf16 on this CPU")
def test_bf16_run_on_cpu_trains_like_fp32(workspace):
    """--dtype=bf16, a GPU run's precision, end to end on a CPU with native bf16: training steps,
    validation and the checkpoint, with losses close to an fp32 run's."""
    base, data = workspace
    tiny = [a for a in TINY if not a.startswith("--eval_every")]
    common = [*tiny, f"--corpus={data}", "--device_batch_size=2", "--total_batch_size=none", "--num_iterations=6",
              "--eval_every=3", "--eval_tokens=128"]
    curves = {}
    for dtype in ("fp32", "bf16"):
        proc = run([*common, f"--dtype={dtype}", f"--model_tag=dtype_{dtype}"], base)
        assert proc.returncode == 0, proc.stderr
        assert f"cpu (cpu), {dtype}" in proc.stdout
        curves[dtype] = losses(base, f"dtype_{dtype}")
    assert curves["bf16"][-1] < curves["bf16"][0]
    assert curves["bf16"] == pytest.approx(curves["fp32"], abs=0.1)


def test_auto_device_batch_on_cpu_takes_the_rows_of_a_step(workspace):
    base, data = workspace
    proc = run([*TINY, f"--corpus={data}", f"--total_batch_size={4 * SEQ}", "--num_iterations=1",
                "--device_batch_size=none", "--model_tag=auto"], base)
    assert proc.returncode == 0, proc.stderr
    assert f"= 4 x {SEQ} x 1 processes x 1 accumulation" in proc.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--device_batch_size=3", "--total_batch_size=100"], "--total_batch_size=100 is not a multiple of"),
        (["--model_dim=512"], "width follows --depth"),
        (["--dtype=fp16"], "needs a CUDA GPU"),
        (["--device_type=cuda"], "no CUDA GPU is visible"),
        (["--corpus=/nonexistent/shards"], "no training shards"),
    ],
)
def test_bad_setups_fail_with_one_line(workspace, args, needle):
    base, data = workspace
    extra = [] if any(a.startswith("--corpus") for a in args) else [f"--corpus={data}"]
    tiny = [a for a in TINY if not (a.startswith("--device_type") and any(b.startswith("--device_type") for b in args))]
    proc = run([*tiny, "--num_iterations=1", *extra, *args], base, timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_tokenizer_names_the_command(tmp_path, workspace):
    _, data = workspace
    proc = run([*TINY, "--num_iterations=1", f"--corpus={data}"], tmp_path / "empty_base", timeout=120)
    assert proc.returncode != 0 and "python -m scripts.tok_train" in proc.stderr
