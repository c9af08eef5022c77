"""dev/launch.sh as users run it: checks, dry runs, a --test run, and a stop that saves a checkpoint.

The runs are CPU base_train runs of a 1-layer model on a byte-level tokenizer and tiny parquet shards
(the approach of tests/test_base_train.py), so a step takes milliseconds and the launcher's own
machinery (background session, pid files, logs, SIGTERM to the ranks) is what is exercised.
"""

import os
import signal
import subprocess
import sys
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
    proc = launch(tmp_path, "no_such_script", "--test")
    assert proc.returncode == 2 and "no script scripts/no_such_script.py" in proc.stderr and "base_train" in proc.stderr
    proc = launch(tmp_path, "base_train", "--test", "depth=4")
    assert proc.returncode == 2 and "--key=value" in proc.stderr
    proc = launch(tmp_path, "--test", "--max-steps")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --max-steps needs a value: --max-steps VALUE"
    assert not (tmp_path / "logs").exists()


def test_no_arguments_is_a_base_train_test_and_checks_first(tmp_path):
    """As the launchers people come from: no arguments = a short test run (here refused by its checks)."""
    for args in ((), ("base_train",), ("--gpus", "0")):
        proc = launch(tmp_path, *args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "(base_train --test," in proc.stdout and "--num_iterations=10" in proc.stdout
        assert "FAIL tokenizer" in proc.stdout and "not launched" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_trainer_style_spellings_map_to_the_options(tmp_path):
    """The spellings of seed-style launchers, values after a space, each shown with what it became."""
    data = tmp_path / "data"
    proc = launch(tmp_path / "base", "--train", "--dry-run", "--num-gpus", "0", "--max-steps", "50", "--batch-size", "8",
                  "--max-seq-length", "256", "--save-steps", "20", "--fp16", "--no-compile", "--no-save-initial",
                  "--dataset-path", str(data), "--depth", "4", "--warmdown_ratio", "0.3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for mapping in ("--max-steps 50 -> --num_iterations=50", "--batch-size 8 -> --device_batch_size=8",
                    "--max-seq-length 256 -> --max_seq_len=256", "--save-steps 20 -> --save_every=20",
                    "--fp16 -> --dtype=fp16", "--no-compile -> --compile=false", "--num-gpus 0 -> --gpus 0",
                    "--no-save-initial -> --save_initial=false", f"--dataset-path {data} -> --corpus={data}"):
        assert f"option:  {mapping}" in out, mapping
    assert ("-m scripts.base_train --device_type=cpu --resume=auto --num_iterations=50 --device_batch_size=8 "
            f"--max_seq_len=256 --save_every=20 --dtype=fp16 --compile=false --save_initial=false --corpus={data} "
            "--depth=4 --warmdown_ratio=0.3") in out
    for resolved in ("num_iterations          = 50", "dtype                   = 'fp16'", "depth                   = 4",
                     "warmdown_ratio          = 0.3", "save_initial            = False"):
        assert resolved in out, resolved

    proc = launch(tmp_path, "--train", "--learning-rate", "5e-5")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "--matrix_lr" in proc.stderr and "--embedding_lr" in proc.stderr and "--init_lr_frac" in proc.stderr

    # --max_steps typed the project's way gets the right pointer, not the nearest spelling (--max_seq_len)
    proc = launch(tmp_path, "--train", "--dry-run", "--gpus", "0", "--max_steps=50")
    assert "FAIL options: unknown option --max_steps: the number of optimizer steps is --num_iterations" in proc.stdout
    help_text = launch(tmp_path, "--help").stdout
    for spelling in ("--max-steps N", "--batch-size N", "--learning-rate X", "--max-seq-length N", "--save-steps N",
                     "--fp16", "--fp32", "--no-compile", "--num-gpus N", "--no-save-initial", "--dataset-path P",
                     "--output-dir D", "--logs-dir DIR", "--verbose", "--foreground", "--dry-run"):
        assert spelling in help_text, spelling


def test_output_dir_logs_dir_and_wandb_preflight(tmp_path):
    out_dir, logs_dir = tmp_path / "out", tmp_path / "mylogs"
    proc = launch(tmp_path / "base", "--dry-run", "--gpus", "0", "--output-dir", str(out_dir), "--logs-dir",
                  str(logs_dir), "--run", "h100_speedrun_01")
    assert proc.returncode == 0, proc.stderr
    assert f"env NANOCHAT_BASE_DIR={logs_dir}/base_train_" in proc.stdout  # a test: the scratch dir, under the logs
    assert f"FAIL tokenizer: none at {out_dir}/tokenizer/tokenizer.json" in proc.stdout
    assert f"logs:    {logs_dir}/base_train_" in proc.stdout
    env_has_wandb = subprocess.run([sys.executable, "-c", "import wandb"], capture_output=True).returncode == 0
    if not env_has_wandb:
        assert ("FAIL wandb: --run=h100_speedrun_01 logs to wandb, which is not installed: uv pip install -e '.[wandb]'"
                in proc.stdout)
    assert "wandb" not in launch(tmp_path / "base", "--dry-run", "--gpus", "0", "--run=dummy").stdout


def test_dry_run_prints_the_command_and_config_and_runs_nothing(tmp_path):
    proc = launch(tmp_path, "base_train", "--train", "--dry-run", "--gpus", "0", "--depth=4")
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


def korean_dry_run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "NANOCHAT_BASE_DIR"}
    full.update(HOME=str(home), NANOCHAT_LANG="ko", **env)
    return subprocess.run(["bash", str(LAUNCH), *args, "--train", "--dry-run", "--gpus", "0"], env=full,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script,options", [
    ("tok_train", "--corpus=ko --pattern=korean --mix_corpus=fineweb-edu --mix_share=0.2"),
    ("base_train", "--corpus=ko --resume=auto"),
    ("base_loss", "--device_type=cpu --corpus=ko"),
    ("mid_train", "--tasks=mid-ko --identity_name=나노챗 --resume=auto"),
    ("chat_sft", "--tasks=sft-ko --identity_name=나노챗 --resume=auto"),
    ("base_eval", "--tasks=CORE|KoBEST"),
    ("chat_eval", "--tasks=all|korean"),
])
def test_korean_runs_get_the_korean_base_dir_and_defaults(tmp_path, script, options):
    """NANOCHAT_LANG=ko: ~/.cache/nanochat_ko, and the Korean run's options where the script has them."""
    proc = korean_dry_run(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    assert f"lang:    ko (base dir {tmp_path}/.cache/nanochat_ko;" in proc.stdout
    checked = next(line for line in proc.stdout.splitlines() if line.startswith("  OK   options: "))
    assert options in checked, checked


def test_korean_defaults_give_way_to_the_options_given(tmp_path):
    proc = korean_dry_run(tmp_path, "tok_train", "--corpus=embedded-ko")  # offline: the English mix offline too
    checked = next(line for line in proc.stdout.splitlines() if line.startswith("  OK   options: "))
    assert "--corpus=ko" not in checked and "--corpus=embedded-ko" in checked and "--mix_corpus=embedded " in checked
    proc = korean_dry_run(tmp_path, "chat_sft", "--tasks=koalpaca", "--identity_name=Bori")
    checked = next(line for line in proc.stdout.splitlines() if line.startswith("  OK   options: "))
    assert "sft-ko" not in checked and "나노챗" not in checked and "--tasks=koalpaca --identity_name=Bori" in checked
    english = launch(tmp_path, "chat_sft", "--train", "--dry-run", "--gpus", "0")
    assert "lang:" not in english.stdout and "sft-ko" not in english.stdout


def test_a_base_dir_of_the_other_language_is_refused(tmp_path):
    (tmp_path / "language").write_text("en\n")
    proc = korean_dry_run(tmp_path, "base_train", NANOCHAT_BASE_DIR=str(tmp_path))
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"error: NANOCHAT_BASE_DIR={tmp_path} holds a NANOCHAT_LANG=en run and this is a NANOCHAT_LANG=ko one: "
        "their artifacts must not mix: unset NANOCHAT_BASE_DIR (each language has its own default) or point it at "
        "a fresh directory"], proc.stderr
    assert "checks:" not in proc.stdout


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
def test_options_alone_start_a_background_test_and_show_its_first_seconds(setup):
    """Seed-style: no script name, no mode: base_train --test in the background, its log shown for a few seconds."""
    base, data = setup
    t0 = time.time()
    proc = launch(base, "--gpus", "0", "--name=bg", *TINY, f"--corpus={data}", "--eval_tokens", "none",
                  "--max-steps", "3", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.time() - t0 >= 3  # it stayed to show the log (at most 5 s of it, less if the run ended)
    shown = proc.stdout.split("log, first 5s:\n", 1)[1]
    assert "starting: env NANOCHAT_BASE_DIR=" in shown and "--num_iterations=3" in shown
    assert "started bg in the background" in proc.stdout
    run_dir = base / "logs" / "bg"
    deadline = time.time() + 240
    while not (run_dir / "exit_code").exists():
        assert time.time() < deadline, (run_dir / "console.log").read_text()
        time.sleep(0.2)
    assert (run_dir / "exit_code").read_text().strip() == "0", (run_dir / "console.log").read_text()
    log = (run_dir / "console.log").read_text()
    assert "step 00003/00003" in log
    # 3 steps of 64 tokens: validation is sized to the run (the floor), not 10 x 524,288 tokens
    assert "validation: 32,768 tokens per evaluation (--eval_tokens=none: sized to the run)" in log


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
