"""runpod_speedrun.sh end to end on CPU with a tiny configuration: a run killed midway resumes and
completes, a run after completion skips every stage, and the final report lands on the volume.
Also the preflight refusals (no GPU, unwritable workspace), AUTO_STOP without runpodctl, and MAX_HOURS:
the running training phase saves a checkpoint, a backup is written and the pod removed."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = {"ALLOW_CPU": "1", "NANOCHAT_OFFLINE": "1", "DEPTH": "1", "SEQ_LEN": "64", "VOCAB_SIZE": "300",
        "BASE_STEPS": "150", "MID_STEPS": "3", "SFT_STEPS": "3", "EVAL_PROBLEMS": "2", "OMP_NUM_THREADS": "1"}


def env_for(workspace, **extra):
    env = {k: v for k, v in os.environ.items() if k != "NANOCHAT_BASE_DIR"}  # the script derives it
    env.update(TINY, WORKSPACE=str(workspace), PATH="/usr/bin:/bin:" + os.environ.get("PATH", ""))
    env.update(extra)
    return env


def start(workspace, **extra):
    return subprocess.Popen(["bash", "runpod_speedrun.sh"], cwd=REPO_ROOT, env=env_for(workspace, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_killed_run_resumes_then_a_rerun_skips_everything(tmp_path):
    ws = tmp_path / "workspace"
    ws.mkdir()
    stages = ws / "nanochat_artifacts" / "stages"
    proc = start(ws)
    log = ws / "speedrun.log"
    deadline = time.time() + 600
    # kill the whole run (as a lost pod would) once base training is past its step-100 checkpoint
    while time.time() < deadline:
        text = log.read_text() if log.exists() else ""
        if "step 00105/" in text:
            break
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (stages / "tokenizer.done").exists() and not (stages / "base-train.done").exists()

    proc = start(ws)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    assert "tokenizer: complete in an earlier run, skipped" in out
    assert "== base-train (" in out and "resumed from" in out  # the interrupted stage continued from step 100
    for stage in ("base-train", "base-loss", "base-eval", "mid-train", "mid-eval", "sft-train", "sft-eval"):
        assert (stages / f"{stage}.done").exists(), stage
    report = (ws / "nanochat_final_report.md").read_text()
    assert "| CORE" in report and "ChatCORE" in report
    assert "not available offline" in report
    assert "Midtraining" in report and "Chat SFT" in report
    assert "stage durations" in out
    assert "in a browser: .venv/bin/python -m scripts.chat_web, then open http://127.0.0.1:8000/" in out
    links = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert links and all((ws / link).is_file() for link in links)  # the plots resolve from the volume's copy

    again = start(ws, AUTO_BACKUP="1", AUTO_STOP="1", RUNPOD_POD_ID="abc123")
    out2, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out2[-3000:]
    assert "runpodctl is not installed" in out2
    assert "then open https://abc123-8000.proxy.runpod.net/ (the pod must expose HTTP port 8000" in out2
    assert list((ws / "backups").glob("*.tar.gz")) and list((ws / "backups").glob("*.tar.gz.sha256"))
    assert "== base-train (" not in out2 and "base-train: complete in an earlier run, skipped" in out2
    assert "sft-eval: complete in an earlier run, skipped" in out2
    assert (ws / "nanochat_final_report.md").exists()


def test_refuses_without_gpu_or_workspace(tmp_path):
    proc = subprocess.run(["bash", "runpod_speedrun.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=env_for(tmp_path, ALLOW_CPU="0"))
    assert proc.returncode == 1
    assert "error: no GPU is visible" in proc.stderr and "ALLOW_CPU=1" in proc.stderr
    assert not (tmp_path / "nanochat_artifacts" / "stages").exists()  # refused before anything ran
    proc = subprocess.run(["bash", "runpod_speedrun.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=env_for(tmp_path / "missing"))
    assert proc.returncode == 1 and "is not a writable directory" in proc.stderr


def test_max_hours_saves_backs_up_and_removes_the_pod(tmp_path):
    """MAX_HOURS=0.02 (72 s) on a run of 100,000 base steps: the limit lands in base training, which
    saves and exits; then the backup, then `runpodctl remove pod` (AUTO_STOP=remove). A uv stand-in
    keeps the set-up (tested by the other runs) from eating the budget; runpodctl is a stand-in too."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in ("uv", "runpodctl"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> "{calls}"\n')
        (bin_dir / tool).chmod(0o755)
    env = env_for(ws, BASE_STEPS="100000", MAX_HOURS="0.02", AUTO_STOP="remove", RUNPOD_POD_ID="pod123")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    t0 = time.time()
    proc = subprocess.run(["bash", "runpod_speedrun.sh"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=400)
    out = proc.stdout
    assert proc.returncode == 143, out[-4000:]  # stopped, not finished
    assert 72 <= time.time() - t0 < 300
    assert "== MAX_HOURS=0.02 reached: stopping the running stage" in out
    assert "error: stage 'base-train' stopped by SIGTERM" in out, out[-4000:]
    assert "stopped by signal: saved checkpoint step" in out
    stages = ws / "nanochat_artifacts" / "stages"
    assert (stages / "tokenizer.done").exists() and not (stages / "base-train.done").exists()
    saved = sorted((ws / "nanochat_artifacts" / "base_checkpoints" / "d1").glob("step_*"))
    assert saved, "no checkpoint"
    backups = list((ws / "backups").glob("*.tar.gz"))
    assert len(backups) == 1 and backups[0].with_name(backups[0].name + ".sha256").exists()
    assert calls.read_text().splitlines()[-1] == "runpodctl remove pod pod123"
    assert "removing pod pod123 (AUTO_STOP=remove)" in out
    assert (ws / "speedrun.log").read_text().count("MAX_HOURS=0.02 reached") == 1
