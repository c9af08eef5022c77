"""dev/gpu_check.sh runs every section on a tiny CPU configuration, so the GPU check cannot rot."""

import json
import subprocess

import pytest

from tests.conftest import REPO_ROOT, subprocess_env


@pytest.mark.slow
def test_tiny_gpu_check_runs_every_section(tmp_path):
    out = subprocess.run(["bash", "dev/gpu_check.sh", "--tiny", f"--out_dir={tmp_path}"], cwd=REPO_ROOT,
                         env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["config"] == "tiny"
    for name in ("train", "autofit", "backoff", "sdpa", "loss", "decode", "serve", "core", "torchrun"):
        assert results[name]["ok"], (name, results[name])
    train = results["train"]["result"]
    assert [r["depth"] for r in train] == [1, 2] and all(r["tokens_per_s"] > 0 for r in train)
    assert {r["loss"] for r in results["loss"]["result"]} == {"fused", "checkpointed"}
    assert results["autofit"]["result"]["device_batch_size"] >= 1
    assert results["backoff"]["result"]["log"].startswith("out of memory at step 2: device batch 4 -> 2")
    assert [r["batch"] for r in results["decode"]["result"]] == [1, 8]
    assert results["serve"]["result"]["answered"] and results["serve"]["result"]["completion_tokens"] > 0
    assert results["torchrun"]["result"]["equal"] and results["torchrun"]["result"]["steps"] == 20
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("### GPU check") and "- torchrun: processes 1, backend gloo" in md


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    out = subprocess.run(["bash", "dev/gpu_check.sh", f"--out_dir={tmp_path}"], cwd=REPO_ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: no CUDA GPU is visible to torch: run on a GPU machine, or pass --tiny for the CPU code paths"]
