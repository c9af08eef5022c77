"""dev/launch.sh as users run it: checks, dry runs, a --test run, and a stop that saves a checkpoint.

The runs are CPU base_train runs of a 1-layer model on a byte-level tokenizer and tiny parquet shards
(the approach of tests/test_base_train.py), so a step takes milliseconds and the launcher's own
machinery (background session, pid files, logs, SIGTERM to the ranks) is what is exercised.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tests.conftest import REPO_ROOT

LAUNCH = REPO_ROOT / "dev" / "launch.sh"
TINY = ["--depth=1", "--aspect_ratio=64", "--head_dim=32", "--max_seq_len=32", "--compile=false",
        "--device_batch_size=2", "--total_batch_size=none", "--warmdown_ratio=0.5"]


def launch(base: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(LAUNCH), *args], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A base dir with a byte-level tokenizer, and a folder of three small parquet shards."""
    root = tmp_path_factory.mktemp("launch")
    base = root / "base"
    Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN).save(base / "tokenizer")
    data = root / "data"
    data.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for shard in range(3):
        docs = [" ".join(words[(k * 7 + j * 3) % len(words)] for j in range(12)) for k in range(shard * 64, shard * 64 + 64)]
        pq.write_table(pa.table({"text": docs}), data / f"shard_{shard:05d}.parquet", row_group_size=8)
    return base, data


def test_bad_usage_exits_2_without_starting_anything(tmp_path):
    assert launch(tmp_path).returncode == 2
    proc = launch(tmp_path, "no_such_script", "--test")
    assert proc.returncode == 2 and "no script scripts/no_such_script.py" in proc.stderr and "base_train" in proc.stderr
    proc = launch(tmp_path, "base_train")
    assert proc.returncode == 2 and "--test" in proc.stderr and "--train" in proc.stderr
    proc = launch(tmp_path, "base_train", "--test", "depth=4")
    assert proc.returncode == 2 and "--key=value" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_dry_run_prints_the_command_and_config_and_runs_nothing(tmp_path):
    proc = launch(tmp_path, "base_train", "--dry-run", "--gpus", "0", "--depth=4")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"env NANOCHAT_BASE_DIR={tmp_path} CUDA_VISIBLE_DEVICES= " in out
    assert "python -m scripts.base_train --device_type=cpu --resume=auto --depth=4" in out
    assert "torch.distributed.run" not in out
    assert "depth                   = 4" in out  # the resolved config
    assert "FAIL tokenizer" in out and "dry run: nothing started" in out  # an empty base dir
    assert not (tmp_path / "logs").exists()

    proc = launch(tmp_path, "base_train", "--test", "--dry-run", "--gpus", "2")
    assert proc.returncode == 0, proc.stderr
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 --log-dir" in proc.stdout
    assert "--num_iterations=10 --eval_every=5 --eval_tokens=65536 --sample_every=10" in proc.stdout
    assert "--eval_batches" not in proc.stdout  # only options base_train has
    assert not (tmp_path / "logs").exists()


def test_a_failed_check_launches_nothing(tmp_path):
    proc = launch(tmp_path, "base_train", "--train", "--gpus", "0", *TINY)
    assert proc.returncode == 1
    assert "FAIL tokenizer" in proc.stdout and "not launched" in proc.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_test_mode_runs_ten_steps_in_a_scratch_base_dir(setup):
    base, data = setup
    proc = launch(base, "base_train", "--test", "--gpus", "0", "--foreground", "--name=smoke", *TINY,
                  f"--corpus={data}", "--eval_tokens=128", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 00010/00010" in proc.stdout and "the setup works" in proc.stdout
    assert not (base / "base_checkpoints").exists()  # the real base dir got no checkpoint
    scratch = base / "logs" / "smoke" / "base"
    assert (scratch / "tokenizer").is_symlink() and not (scratch / "base_checkpoints").exists()
    status = launch(base, "status")
    assert "smoke" in status.stdout and "finished" in status.stdout


@pytest.mark.slow
def test_stop_saves_a_loadable_checkpoint(setup, monkeypatch):
    from nanochat.checkpoint import latest_step, load_model

    base, data = setup
    proc = launch(base, "base_train", "--train", "--gpus", "0", "--name=long", *TINY, f"--corpus={data}",
                  "--model_tag=stopped", "--eval_every=none", "--sample_every=none", "--num_iterations=100000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = base / "logs" / "long"
    assert "tail -f" in proc.stdout and str(run_dir / "console.log") in proc.stdout
    try:
        deadline = time.time() + 180
        while "step 00002" not in (run_dir / "console.log").read_text():
            assert time.time() < deadline, (run_dir / "console.log").read_text()
            assert (run_dir / "exit_code").exists() is False, (run_dir / "console.log").read_text()
            time.sleep(0.2)
        assert "running" in launch(base, "status").stdout
        stop = launch(base, "stop", "long", "--timeout=120", timeout=180)
        assert stop.returncode == 0, stop.stdout + stop.stderr + (run_dir / "console.log").read_text()
        assert "stopped by signal: saved checkpoint step" in stop.stdout
    finally:
        child = run_dir / "child.pid"
        if child.exists() and not (run_dir / "exit_code").exists():
            try:
                os.killpg(int(child.read_text()), signal.SIGKILL)  # the run this test started, if it hangs
            except ProcessLookupError:
                pass
    assert (run_dir / "exit_code").read_text().strip() == "143"  # stopped, not finished: 128 + SIGTERM
    assert "stopped (checkpoint saved)" in launch(base, "status").stdout
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    step = latest_step("base", "stopped")
    assert step is not None and step >= 2
    model, meta = load_model("base", tag="stopped")
    assert meta["step"] == step and meta["model_config"]["n_layer"] == 1
