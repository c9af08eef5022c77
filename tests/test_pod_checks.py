"""What speedrun.sh and runpod_speedrun.sh check and print before any stage runs, with stand-ins on
PATH for the tools a pod has and this machine lacks: nvidia-smi (4 GPUs), runpodctl, and uv (so that
the set-up step records what it would install instead of installing it). The scripts themselves, the
real dev/gpus.sh and nanochat/plan.py run, and the real .venv's torch, except where a stand-in torch
package on PYTHONPATH plays a CUDA or Apple GPU and DRY_RUN=1 prints each stage's command instead
of running it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.plan import make_plan
from tests.conftest import REPO_ROOT

H100 = ("NVIDIA H100 80GB HBM3", 81_559)

NVIDIA_SMI = """#!/bin/sh
# 4 H100s, as `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits` prints them
case "$*" in
  *query-gpu*) for i in 0 1 2 3; do echo "$i, GPU-5e1f0c2$i-aaaa-bbbb, NVIDIA H100 80GB HBM3, 81559"; done ;;
  *) for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-5e1f0c2$i-aaaa-bbbb)"; done ;;
esac
"""
# torch as the scripts' one-line checks see it: FAKE_TORCH_GPUS CUDA devices, an Apple GPU with FAKE_TORCH_MPS=1
FAKE_TORCH = """import os
__version__ = "0.0+fake"


class cuda:
    is_available = staticmethod(lambda: int(os.environ.get("FAKE_TORCH_GPUS", "0")) > 0)
    device_count = staticmethod(lambda: int(os.environ.get("FAKE_TORCH_GPUS", "0")))


class backends:
    class mps:
        is_available = staticmethod(lambda: os.environ.get("FAKE_TORCH_MPS") == "1")
"""
RECORD = """#!/bin/sh
echo "$0 $*" >> "{log}"
"""


@pytest.fixture
def stubs(tmp_path):
    """A bin folder with nvidia-smi, uv and runpodctl stand-ins; uv and runpodctl record their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    (bin_dir / "nvidia-smi").write_text(NVIDIA_SMI)
    (bin_dir / "uv").write_text(RECORD.format(log=calls))
    (bin_dir / "runpodctl").write_text(RECORD.format(log=calls))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, calls


def run(script: str, bin_dir: Path, timeout: int = 180, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NANOCHAT_BASE_DIR", "WANDB_RUN",
                                                      "NANOCHAT_EXTRAS", "NPROC_PER_NODE", "NANOCHAT_LANG")}
    full["PATH"] = f"{bin_dir}:{full['PATH']}"
    full.update(env)
    return subprocess.run(["bash", script], cwd=REPO_ROOT, env=full, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("visible,expected", [
    (None, "0 1 2 3"),
    ("", ""),
    ("-1", ""),
    ("2,0", "2 0"),               # CUDA's order, not the machine's
    ("1,7,3", "1"),               # everything from the first entry that names no GPU is ignored
    ("GPU-5e1f0c23", "3"),        # a unique UUID prefix
    ("GPU-5e1f0c2", ""),          # an ambiguous one names none
])
def test_visible_gpus_follow_cuda_visible_devices(stubs, visible, expected):
    bin_dir, _ = stubs
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    out = subprocess.run(["bash", "-c", "source dev/gpus.sh; visible_gpu_rows | cut -d, -f1 | tr '\\n' ' '; "
                          "echo; visible_gpu_count"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    rows, count = out.stdout.splitlines()
    assert rows.split() == expected.split()
    assert int(count) == len(expected.split())


def test_speedrun_refuses_a_gpu_machine_whose_torch_cannot_use_cuda(stubs, tmp_path):
    """This machine's torch sees no CUDA device; with nvidia-smi listing GPUs that must stop the run
    in one line before any stage, never train d20 on the CPU."""
    bin_dir, calls = stubs
    base = tmp_path / "base"
    proc = run("speedrun.sh", bin_dir, NANOCHAT_BASE_DIR=str(base), CUDA_VISIBLE_DEVICES="1,3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: nvidia-smi lists 2 GPU(s) but torch"), proc.stderr
    assert "cannot use CUDA" in errors[0] and "CPU_RUN=1" in errors[0]
    assert not (base / "stages").exists()  # no stage ran
    assert "pip install" in calls.read_text()  # the set-up step ran first (through the uv stand-in)


def test_speedrun_with_a_wandb_run_installs_the_extra_or_refuses_at_once(stubs, tmp_path):
    """WANDB_RUN=name asks the set-up for the wandb extra; where it still does not import (here the
    uv stand-in installs nothing) the run stops in one line with the install command, before the
    data and tokenizer stages, instead of a traceback from the first training phase."""
    bin_dir, calls = stubs
    base = tmp_path / "base"
    proc = run("speedrun.sh", bin_dir, NANOCHAT_BASE_DIR=str(base), WANDB_RUN="h100_speedrun_01", CPU_RUN="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: WANDB_RUN=h100_speedrun_01 logs to wandb, which does not import: .venv/bin/python -m pip install wandb "
        "(or uv pip install -e '.[wandb]'), or unset WANDB_RUN"]
    installs = [line for line in calls.read_text().splitlines() if " pip install " in line]
    assert installs and installs[-1].endswith(",wandb]")
    assert not (base / "stages").exists()
    # 'dummy' (nakochat's default) means no wandb: nothing extra is installed
    calls.unlink()
    proc = run("speedrun.sh", bin_dir, NANOCHAT_BASE_DIR=str(base), WANDB_RUN="dummy", NPROC_PER_NODE="9")
    assert [line for line in calls.read_text().splitlines() if " pip install " in line][-1].endswith(" -e .[dev]")
    assert proc.returncode == 1 and proc.stderr.startswith("error: nvidia-smi lists 4 GPU(s)")


def test_runpod_preflight_counts_visible_gpus_and_sizes_shards_by_depth(stubs, tmp_path):
    bin_dir, _ = stubs
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = run("runpod_speedrun.sh", bin_dir, WORKSPACE=str(ws), CUDA_VISIBLE_DEVICES="3,1", DEPTH="32")
    out = proc.stdout + proc.stderr
    assert "GPUs:    2 x NVIDIA H100 80GB HBM3 (79 GiB each)" in out
    # the preset with DEPTH winning, its estimate, and the shards d32 needs (d20 needs 240; d32 as upstream's run1000)
    assert f"plan:    {make_plan(2, *H100, depth=32).summary()}\n" in out
    assert "plan:    GPU run: 2 x NVIDIA H100 80GB HBM3 (80 GB) -> preset 80GB (overridden: depth): depth 32," in out
    assert "data:    800 FineWeb-Edu shards" in out
    assert proc.returncode == 1  # then refused: too little disk for 800 shards here, or (past it) no CUDA torch
    last = proc.stderr.strip().splitlines()[-1]
    assert ("800 shards + checkpoints" in last) or ("nvidia-smi lists 2 GPU(s) but torch" in last), proc.stderr

    proc = run("runpod_speedrun.sh", bin_dir, WORKSPACE=str(ws), NPROC_PER_NODE="8")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: NPROC_PER_NODE=8: 4 GPU(s) are visible (CUDA_VISIBLE_DEVICES=unset); set 1 to 4"]


@pytest.fixture
def fake_torch(tmp_path):
    folder = tmp_path / "fake_torch"
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text(FAKE_TORCH)
    return str(folder)


def stage_commands(out: str) -> dict[str, str]:
    """DRY_RUN=1's '== stage: command' lines."""
    return dict(line[3:].split(": ", 1) for line in out.splitlines() if line.startswith("== ") and ": " in line)


def dry_run(bin_dir: Path, base: Path, fake_torch: str, **env: str) -> subprocess.CompletedProcess:
    proc = run("speedrun.sh", bin_dir, NANOCHAT_BASE_DIR=str(base), PYTHONPATH=fake_torch, DRY_RUN="1",
               NANOCHAT_OFFLINE="1", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list((base / "stages").glob("*.done"))  # nothing ran
    return proc


def test_speedrun_sizes_the_run_by_the_smallest_gpu_and_prints_it_first(stubs, tmp_path, fake_torch):
    """An RTX 4090 beside a 6 GB laptop GPU: the 6-8GB preset (the smaller card must fit), printed
    with its estimate before the first stage, and every training stage gets its flags."""
    bin_dir, _ = stubs
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n"
                                        "echo '0, GPU-aa, NVIDIA GeForce RTX 4090, 24564'\n"
                                        "echo '1, GPU-bb, NVIDIA GeForce RTX 4050 Laptop GPU, 6141'\n")
    proc = dry_run(bin_dir, tmp_path / "base", fake_torch, FAKE_TORCH_GPUS="2")
    lines = proc.stdout.splitlines()
    plan = make_plan(2, "NVIDIA GeForce RTX 4050 Laptop GPU", 6141)
    assert lines[0] == plan.summary()
    assert lines[0].startswith("GPU run: 2 x NVIDIA GeForce RTX 4050 Laptop GPU (6 GB) -> preset 6-8GB: depth 8, "
                               "seq 1024, vocab 16384, compile off, device batch auto; ~5.5 h, cost unknown")
    assert lines.index(lines[0]) < lines.index("== data: data")
    cmd = stage_commands(proc.stdout)
    assert cmd["tokenizer"].endswith("-m scripts.tok_train --vocab_size=16384 --corpus=embedded")
    launch = ".venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m "
    assert cmd["base-train"].startswith(launch + "scripts.base_train ")
    assert cmd["base-train"].endswith(" --depth=8 --run=none --save_every=1000 --max_seq_len=1024 --compile=false "
                                      "--device_batch_size=none --total_batch_size=131072")
    assert cmd["base-loss"].endswith("--device_batch_size=16")  # base_loss has no auto batch
    assert cmd["mid-train"].endswith("--max_seq_len=1024 --compile=false --device_batch_size=none "
                                     "--total_batch_size=131072")
    assert cmd["sft-train"].endswith("--target_examples_per_step=32 --max_seq_len=1024 --compile=false")


def test_speedrun_overrides_win_over_the_preset(stubs, tmp_path, fake_torch):
    bin_dir, _ = stubs  # 4 H100s
    proc = dry_run(bin_dir, tmp_path / "base", fake_torch, FAKE_TORCH_GPUS="4", DEPTH="6", SEQ_LEN="512",
                   VOCAB_SIZE="8192", COMPILE="0", DEVICE_BATCH_SIZE="4", RUN_RL="1")
    plan = make_plan(4, *H100, device_batch_size=4, depth=6, vocab_size=8192, max_seq_len=512, compile=False)
    assert proc.stdout.splitlines()[0] == plan.summary()
    assert "preset 80GB (overridden: depth, max_seq_len, vocab_size, compile, device_batch_size): depth 6, seq 512, " \
           "vocab 8192, compile off, device batch 4;" in plan.summary()
    cmd = stage_commands(proc.stdout)
    assert cmd["tokenizer"].endswith("--vocab_size=8192 --corpus=embedded")
    assert cmd["base-train"].endswith(f"--depth=6 --run=none --save_every=1000 --max_seq_len=512 --compile=false "
                                      f"--device_batch_size=4 --total_batch_size={plan.total_batch_size}")
    assert cmd["base-loss"].endswith("--device_batch_size=4")
    assert cmd["rl-train"].endswith("--examples_per_step=16 --max_seq_len=512 --compile=false")
    # without overrides: upstream's d20 on the H100s, its estimate at the table's price
    line = dry_run(bin_dir, tmp_path / "base2", fake_torch, FAKE_TORCH_GPUS="4").stdout.splitlines()[0]
    assert line.startswith("GPU run: 4 x NVIDIA H100 80GB HBM3 (80 GB) -> preset 80GB: depth 20, seq 2048, vocab 65536, "
                           "compile on, device batch auto; ~7.7 h, ~$93 (at $3.00/GPU-hour)")


def test_speedrun_on_an_apple_gpu_runs_the_mps_preset_in_one_process(stubs, tmp_path, fake_torch):
    bin_dir, _ = stubs
    (bin_dir / "nvidia-smi").unlink()
    (bin_dir / "uname").write_text("#!/bin/sh\necho Darwin\n")  # speedrun asks torch about MPS on a Mac only
    (bin_dir / "uname").chmod(0o755)
    proc = dry_run(bin_dir, tmp_path / "base", fake_torch, FAKE_TORCH_MPS="1")
    assert proc.stdout.splitlines()[0] == make_plan(device_type="mps").summary()
    assert proc.stdout.startswith("MPS run: Apple GPU -> preset MPS: depth 4, seq 512, vocab 8192, compile off")
    cmd = stage_commands(proc.stdout)
    assert cmd["base-train"].startswith(".venv/bin/python -m scripts.base_train ")  # no torchrun
    assert cmd["base-train"].endswith("--depth=4 --run=none --save_every=1000 --max_seq_len=512 --compile=false "
                                      "--device_batch_size=none --total_batch_size=32768")
    # CPU_RUN=1 keeps the CPU configuration, from the same table
    proc = dry_run(bin_dir, tmp_path / "base2", fake_torch, FAKE_TORCH_MPS="1", CPU_RUN="1")
    assert proc.stdout.splitlines()[0] == make_plan(device_type="cpu").summary()
    assert "--depth=4 --max_seq_len=256 --device_batch_size=8" in stage_commands(proc.stdout)["base-train"]


@pytest.mark.parametrize("env,message", [
    ({"AUTO_STOP": "yes"}, "error: AUTO_STOP=yes: use stop (or 1)"),
    ({"MAX_HOURS": "4h"}, "error: MAX_HOURS=4h: give the wall-clock limit in hours, like 4 or 0.5"),
    ({"MAX_HOURS": "0"}, "error: MAX_HOURS=0: give the wall-clock limit in hours"),
])
def test_runpod_refuses_bad_stop_settings_before_anything(stubs, tmp_path, env, message):
    bin_dir, calls = stubs
    proc = run("runpod_speedrun.sh", bin_dir, WORKSPACE=str(tmp_path), **env)
    assert proc.returncode == 1 and proc.stderr.startswith(message), proc.stderr
    assert not (tmp_path / "speedrun.log").exists() and not calls.exists()


def test_pyproject_offers_the_gpu_and_cpu_extras_that_setup_guides_use():
    """`uv sync --extra gpu` (karpathy/nanochat's set-up, copied by deployment guides) needs the extra."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("gpu", "cpu"):
        assert any(req.startswith("torch") for req in extras[name]), name
    assert extras["wandb"] == ["wandb>=0.17"]
    readme = (REPO_ROOT / "README.md").read_text()
    assert "uv sync --extra gpu" in readme and "uv sync --extra cpu" in readme


def test_a_wandb_run_name_without_wandb_is_one_line(monkeypatch, tmp_path):
    """Scripts given --run=NAME directly (torchrun ... --run=h100_speedrun_01) say what to install."""
    from nanochat.run_log import RunLog

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed: import raises ImportError
    with pytest.raises(ValueError, match=r"^--run=h100_speedrun_01 logs to wandb, which is not installed: "
                                         r"uv pip install -e '\.\[wandb\]' \(or --run=dummy\)$"):
        RunLog(tmp_path / "metrics.jsonl", enabled=True, wandb_run="h100_speedrun_01")
    RunLog(tmp_path / "metrics.jsonl", enabled=True, wandb_run="dummy")  # no wandb wanted: fine


def test_max_hours_stops_the_pod_by_default(stubs, tmp_path):
    """A time limit is a budget: without AUTO_STOP the pod is stopped (not removed) when it is reached,
    whatever stage is running (here one of the first, 1.8 s in); the backup comes first."""
    bin_dir, calls = stubs
    (bin_dir / "nvidia-smi").unlink()
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = run("runpod_speedrun.sh", bin_dir, WORKSPACE=str(ws), ALLOW_CPU="1", NANOCHAT_OFFLINE="1",
               MAX_HOURS="0.0005", RUNPOD_POD_ID="pod9", timeout=300)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert "== MAX_HOURS=0.0005 reached: stopping the running stage" in proc.stdout
    assert "stopped by SIGTERM" in proc.stdout
    assert list((ws / "backups").glob("*.tar.gz"))
    assert calls.read_text().splitlines()[-1].endswith("runpodctl stop pod pod9")
    assert not (ws / "nanochat_final_report.md").exists()


LANG_ERROR = "error: NANOCHAT_LANG=fr: use en (the default, English) or ko (the Korean run)"


@pytest.mark.parametrize("script", ["speedrun.sh", "runpod_speedrun.sh", "dev/runcpu.sh", "dev/launch.sh",
                                    "runpod_storage.sh"])
def test_a_language_other_than_en_or_ko_is_one_line_before_anything(stubs, tmp_path, script):
    bin_dir, calls = stubs
    base = tmp_path / "base"
    proc = run(script, bin_dir, NANOCHAT_LANG="fr", NANOCHAT_BASE_DIR=str(base), WORKSPACE=str(tmp_path), timeout=60)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [LANG_ERROR], proc.stderr
    assert not base.exists() and not calls.exists()  # no set-up, no folder


def english_run(base: Path) -> None:
    """What an English speedrun leaves: its tokenizer's train_meta.json (the default pattern)."""
    (base / "tokenizer").mkdir(parents=True)
    (base / "tokenizer" / "train_meta.json").write_text(
        '{\n "options": {\n  "corpus": "embedded",\n  "pattern": "default",\n  "mix_corpus": null\n }\n}\n')


def korean_run(base: Path) -> None:
    base.mkdir(parents=True)
    (base / "language").write_text("ko\n")


def old_english_run(base: Path) -> None:
    """A speedrun from before the language was recorded, stopped before its tokenizer: English then."""
    (base / "stages").mkdir(parents=True)
    (base / "stages" / "data.done").write_text("3\n")


@pytest.mark.parametrize("make,lang,held", [(english_run, "ko", "en"), (old_english_run, "ko", "en"),
                                            (korean_run, "en", "ko"), (korean_run, None, "ko")])
@pytest.mark.parametrize("script", ["speedrun.sh", "runpod_speedrun.sh", "dev/runcpu.sh"])
def test_a_base_dir_of_the_other_language_is_refused_in_one_line(stubs, tmp_path, make, lang, held, script):
    """Never Korean checkpoints on an English tokenizer (or English shards beside Korean ones): the
    language a base dir holds is refused before the set-up, naming both languages."""
    bin_dir, calls = stubs
    base = tmp_path / "base"
    make(base)
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    env = {"NANOCHAT_LANG": lang} if lang else {}
    proc = run(script, bin_dir, NANOCHAT_BASE_DIR=str(base), WORKSPACE=str(tmp_path), timeout=60, **env)
    mine = lang or "en"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: NANOCHAT_BASE_DIR={base} holds a NANOCHAT_LANG={held} run and this is a NANOCHAT_LANG={mine} one: "
        "their artifacts must not mix: unset NANOCHAT_BASE_DIR (each language has its own default) or point it at "
        "a fresh directory"], proc.stderr
    assert not calls.exists() and sorted(p.relative_to(base) for p in base.rglob("*")) == before


def test_a_korean_base_dir_passes_the_language_check_and_records_it(stubs, tmp_path):
    """The same language goes on to the next checks (here: nvidia-smi lists GPUs this torch cannot
    use), with the ko extra asked of the set-up; the default base dirs are one per language."""
    bin_dir, calls = stubs
    base = tmp_path / "base"
    korean_run(base)
    proc = run("speedrun.sh", bin_dir, NANOCHAT_LANG="ko", NANOCHAT_BASE_DIR=str(base))
    assert proc.returncode == 1 and proc.stderr.startswith("error: nvidia-smi lists 4 GPU(s)"), proc.stderr
    assert [line for line in calls.read_text().splitlines() if " pip install " in line][-1].endswith(" -e .[dev,ko]")
    out = subprocess.run(["bash", "-c", "source dev/lang.sh; lang_check; echo $NANOCHAT_LANG; "
                          "lang_base_dir /w/nanochat_artifacts; lang_base_dir ~/.cache/nanochat_cpu"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                         env={"PATH": os.environ["PATH"], "HOME": "/h", "NANOCHAT_LANG": "ko"})
    assert out.stdout.split() == ["ko", "/w/nanochat_artifacts_ko", "/h/.cache/nanochat_cpu_ko"]
    out = subprocess.run(["bash", "-c", "source dev/lang.sh; lang_check; echo $NANOCHAT_LANG; lang_base_dir /x"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert out.stdout.split() == ["en", "/x"]
