"""Base dir, rank-aware printing and logging, device resolution."""

import logging

import pytest

from nanochat import common


def test_base_dir_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "ko"))
    assert common.get_base_dir() == tmp_path / "ko" and (tmp_path / "ko").is_dir()
    monkeypatch.delenv("NANOCHAT_BASE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert common.get_base_dir(create=False) == tmp_path / ".cache" / "nanochat"


def test_dist_info(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert common.get_dist_info() == common.DistInfo(0, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    info = common.get_dist_info()
    assert info.is_distributed and not info.is_master and info.local_rank == 1
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        common.get_dist_info()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="not an integer"):
        common.get_dist_info()


def test_print0_only_on_rank0(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    common.print0("hidden")
    monkeypatch.setenv("RANK", "0")
    common.print0("shown")
    assert capsys.readouterr().out == "shown\n"


def test_logging_rank_prefix_and_quiet_workers(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    common.setup_logging("INFO")
    log = logging.getLogger("nanochat.test")
    log.info("quiet on workers")
    log.warning("loud everywhere")
    err = capsys.readouterr().err
    assert "quiet on workers" not in err
    assert "[rank 1] WARNING nanochat.test: loud everywhere" in err


def test_device_resolution():
    assert common.resolve_device_type("cpu") == "cpu"
    assert common.resolve_device_type("") in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="must be cuda, mps or cpu"):
        common.resolve_device_type("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            common.resolve_device_type("cuda")


def test_dtype_resolution():
    assert common.resolve_dtype("", "cpu") == "fp32"  # evaluation and inference: fp32 on every CPU
    assert common.resolve_dtype("fp32", "cpu") == "fp32"
    assert common.resolve_dtype("fp32", "cpu", training=True) == "fp32"  # asked for: kept
    # training's automatic choice: bf16 where the CPU has it natively, fp32 elsewhere
    assert common.resolve_dtype(None, "cpu", training=True) == ("bf16" if common.cpu_has_bf16() else "fp32")
    assert common.resolve_dtype(None, "mps", training=True) == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        common.resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="must be bf16, fp16 or fp32"):
        common.resolve_dtype("fp8", "cuda")
    assert common.resolve_dtype("fp16", "cuda") == "fp16"


def test_compute_init_single_process_cpu(monkeypatch):
    import torch

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    c = common.compute_init("cpu", seed=7)
    assert c.device_type == "cpu" and c.device == torch.device("cpu") and not c.dist.is_distributed
    a = torch.rand(3)
    common.compute_init("cpu", seed=7)
    assert torch.equal(a, torch.rand(3))  # seeded
    with common.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    assert c.dtype == "fp32"  # evaluation and inference
    trained = common.compute_init("cpu", seed=7, training=True)
    assert trained.dtype == ("bf16" if common.cpu_has_bf16() else "fp32")
    with trained.autocast():
        assert torch.is_autocast_enabled("cpu") == (trained.dtype == "bf16")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from nanochat.common import atomic_path, write_atomic, write_json_atomic

    target = tmp_path / "f.json"
    write_json_atomic(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == '{\n  "a": 1\n}\n'  # the old file survives a failed write
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temp file left


def test_file_lock_refuses_or_waits(tmp_path):
    import subprocess
    import sys

    from nanochat.common import file_lock

    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.readline()",
                               str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="busy here"):
            with file_lock(lock, wait=False, busy_message="busy here"):
                pass
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    with file_lock(lock, wait=False):  # free again once the holder is gone
        pass


def test_rank_and_world_defaults(monkeypatch):
    from nanochat.common import rank_and_world

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    assert rank_and_world(2, 4) == (2, 4)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert rank_and_world() == (3, 8) and rank_and_world(world_size=16) == (3, 16)
    with pytest.raises(ValueError, match="outside world_size"):
        rank_and_world(4, 2)
