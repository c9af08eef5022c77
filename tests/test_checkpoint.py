"""Checkpoints: exact round trip, completeness, pruning, resume choice, safe loading, crashes, 2 ranks."""

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from nanochat import atomic_dir
from nanochat import checkpoint as ck
from nanochat.common import get_base_dir
from tests.conftest import REPO_ROOT, subprocess_env


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) * self.scale


def make(seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)


def train(model, opt, first_step, n):
    """n optimizer steps on batches fixed by the step number, so two runs see the same data."""
    for step in range(first_step, first_step + n):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def save(d, step, model=None, opt=None, **kw):
    model = model if model is not None else make(step)[0]
    kw.setdefault("meta", {"model_config": {"depth": 2}})
    kw.setdefault("rng", False)
    return ck.save_checkpoint(d, step, model_state=model.state_dict(),
                              optimizer_states=[opt.state_dict()] if opt is not None else None, **kw)


def restamp(step_dir):
    """Rewrite meta.json's manifest to the files as they are now (a forged or hand-edited step)."""
    meta = json.loads((step_dir / "meta.json").read_text())
    meta["files"] = atomic_dir.manifest(step_dir, meta["files"])
    (step_dir / "meta.json").write_text(json.dumps(meta))


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def test_round_trip_is_exact(base_dir):
    d = ck.checkpoint_dir("base", "d2")
    assert d == base_dir / "base_checkpoints" / "d2"
    model, opt = make()
    train(model, opt, 0, 3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save(d, 3, model, opt, rng=True)
    expected_draws = draws()
    train(model, opt, 3, 4)  # the uninterrupted run

    loaded = ck.load_checkpoint("base", tag="d2")
    assert loaded.step == 3 and loaded.path == path
    fresh, fresh_opt = make(seed=99)
    fresh.load_state_dict(loaded.model_state)
    fresh_opt.load_state_dict(loaded.optimizer_states[0])
    train(fresh, fresh_opt, 3, 4)  # the resumed run
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    ck.restore_rng(loaded.rng)
    assert draws() == expected_draws


def test_model_tensors_bit_identical_with_dtypes_views_and_tied_weights(tmp_path):
    big = torch.randn(6, 10)
    state = {"bf16": torch.randn(4, 4).to(torch.bfloat16), "i64": torch.arange(5),
             "t": big.t(), "slice": big[2:4], "emb": big, "head": big}  # head tied to emb
    ck.save_checkpoint(tmp_path, 1, model_state=state, optimizer_states=None, meta={}, rng=False)
    loaded = ck.load_checkpoint(tmp_path, load_optimizer=False).model_state
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)


def test_meta_json_and_files(base_dir):
    d = ck.checkpoint_dir("sft", "d2")
    model, opt = make()
    train(model, opt, 0, 1)
    meta = {"model_config": {"depth": 2, "vocab": 64}, "train_config": {"lr": 0.01, "tag": None},
            "metrics": {"val_bpb": 1.25, "loss": float("nan")}}
    path = save(d, 12, model, opt, meta=meta, rng=True, loader_state={"shard": 3, "row": 17})
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "optim_rank0.pt", "rng_rank0.pt"]
    saved = json.loads((path / "meta.json").read_text())
    assert saved["format"] == ck.FORMAT and saved["phase"] == "sft" and saved["step"] == 12
    assert saved["world_size"] == 1 and saved["has_optimizer"] and saved["has_rng"]
    assert saved["model_config"] == meta["model_config"] and saved["train_config"] == meta["train_config"]
    assert saved["loader_states"] == [{"shard": 3, "row": 17}]
    assert np.isnan(saved["metrics"]["loss"]) and saved["metrics"]["val_bpb"] == 1.25
    assert time.time() - time.mktime(time.strptime(saved["saved_at"], "%Y-%m-%dT%H:%M:%SZ")) < 86400 * 2
    assert ck.load_checkpoint(d).loader_state == {"shard": 3, "row": 17}


def test_bad_arguments_fail_before_anything_is_written(tmp_path):
    model, opt = make()
    with pytest.raises(ValueError, match="may not set"):
        save(tmp_path, 1, meta={"step": 5})
    with pytest.raises(TypeError, match="meta must be JSON"):
        save(tmp_path, 1, meta={"x": object()})
    with pytest.raises(TypeError, match=r"optimizer_states\[0\]\['extra'\].*weights_only"):
        ck.save_checkpoint(tmp_path, 1, model_state=model.state_dict(), meta={},
                           optimizer_states=[{**opt.state_dict(), "extra": object()}])
    with pytest.raises(ValueError, match="torch.compile'd module: pass the uncompiled"):
        ck.save_checkpoint(tmp_path, 1, model_state={"_orig_mod.fc1.weight": torch.ones(2)},
                           optimizer_states=None, meta={})
    with pytest.raises(ValueError, match="non-negative int"):
        save(tmp_path, -1)
    assert list(tmp_path.iterdir()) == []


def test_numpy_scalars_in_optimizer_state_are_stored_plain(tmp_path):
    model, opt = make()
    state = opt.state_dict()
    state["param_groups"][0]["lr"] = np.float64(0.5)
    state["param_groups"][0]["muon_steps"] = np.int64(5)
    ck.save_checkpoint(tmp_path, 1, model_state=model.state_dict(), optimizer_states=[state], meta={})
    group = ck.load_checkpoint(tmp_path).optimizer_states[0]["param_groups"][0]
    assert type(group["lr"]) is float and group["lr"] == 0.5 and type(group["muon_steps"]) is int


def test_latest_is_highest_complete_step(base_dir):
    d = ck.checkpoint_dir("base", "d2")
    assert ck.latest_step("base", "d2") is None and ck.list_checkpoints("base") == []
    for step in (1, 5, 3):
        save(d, step)
    (d / ".step_000009.tmp").mkdir()  # a save still running, or killed
    (d / ".step_000009.tmp" / "model.safetensors").write_bytes(b"partial")
    (d / "step_000010").mkdir()  # a half-copied folder without meta.json
    assert ck.list_checkpoints(d) == [1, 3, 5]
    assert ck.list_checkpoints("base", "d2") == [1, 3, 5]
    assert ck.latest_step("base") == 5  # tag None: the tag holding the newest checkpoint
    assert ck.load_checkpoint("base").step == 5
    assert ck.load_checkpoint(d, 3).step == 3

    save(ck.checkpoint_dir("base", "d4"), 2)
    assert ck.checkpoint_dir("base") == base_dir / "base_checkpoints" / "d4"
    with pytest.raises(ValueError, match="valid phases are base, mid, sft, rl"):
        ck.checkpoint_dir("pretrain", "d2")
    with pytest.raises(ValueError, match="plain folder name"):
        ck.checkpoint_dir("base", "../x")


def test_missing_checkpoint_says_what_to_train(base_dir):
    with pytest.raises(FileNotFoundError, match=r"no base checkpoint in .*d9: train one with python -m scripts.base_train"):
        ck.load_checkpoint("base", tag="d9")
    with pytest.raises(FileNotFoundError, match=r"no sft checkpoint in .*chatsft_checkpoints: train one with python -m scripts.chat_sft"):
        ck.load_checkpoint("sft")
    with pytest.raises(FileNotFoundError, match=r"no mid checkpoint .*scripts.mid_train"):
        ck.checkpoint_dir("mid")
    save(ck.checkpoint_dir("rl", "d2"), 4)
    with pytest.raises(FileNotFoundError, match="no complete step 5 in .*; available steps: 4"):
        ck.load_checkpoint("rl", 5)


def test_prune_keeps_newest_and_cleans_dead_temp_dirs(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step)
    for stale in (".step_000002.tmp", ".step_000003.old", ".step_000007.tmp"):
        (tmp_path / stale).mkdir()
    removed = ck.prune_checkpoints(tmp_path, 0)
    assert sorted(p.name for p in removed) == [".step_000002.tmp", ".step_000003.old"]
    assert ck.list_checkpoints(tmp_path) == [1, 2, 3, 4, 5]  # keep_last 0 keeps every step
    save(tmp_path, 6)
    (tmp_path / ".step_000002.tmp").mkdir()
    ck.prune_checkpoints(tmp_path, 2, keep_step=2)
    assert ck.list_checkpoints(tmp_path) == [2, 5, 6]  # keep_step survives, complete or temp
    names = sorted(p.name for p in tmp_path.iterdir())
    # a temp dir above the newest step may belong to a live or later save: left alone
    assert names == [".step_000002.tmp", ".step_000007.tmp", "step_000002", "step_000005", "step_000006"]
    (tmp_path / ".step_000005.old").mkdir()  # a dead prune's leftover, for a step pruned now
    ck.prune_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step_000007.tmp", "step_000006"]
    assert ck.load_checkpoint(tmp_path).step == 6


def test_find_resume(tmp_path):
    assert ck.find_resume(tmp_path, "") is None
    assert ck.find_resume(tmp_path, "auto") is None  # nothing yet: start fresh
    save(tmp_path, 1)
    save(tmp_path, 3)
    assert ck.find_resume(tmp_path, "auto") == 3
    assert ck.find_resume(tmp_path, "1") == 1 and ck.find_resume(tmp_path, 3) == 3
    with pytest.raises(FileNotFoundError, match="resume=2: no complete step 2 in .*; available steps: 1, 3"):
        ck.find_resume(tmp_path, "2")
    with pytest.raises(FileNotFoundError, match="available steps: none"):
        ck.find_resume(tmp_path / "empty", "2")
    with pytest.raises(ValueError, match="'auto' or a step number"):
        ck.find_resume(tmp_path, "latest")


class Payload:
    """Unpickling this would run code: it must never happen on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["optim_rank0.pt", "rng_rank0.pt"])
def test_load_refuses_pickled_objects(tmp_path, victim):
    model, opt = make()
    path = save(tmp_path, 1, model, opt, rng=True)
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": Payload(str(marker))}, path / victim)
    restamp(path)  # as a forger would: sizes and checksums that match the forged file
    with pytest.raises(ValueError, match="refusing to load"):
        ck.load_checkpoint(tmp_path)
    assert not marker.exists()
    assert ck.load_checkpoint(tmp_path, load_optimizer=False).step == 1  # model-only never reads them


def test_a_complete_step_is_never_saved_over(tmp_path):
    first = make(1)[0]
    save(tmp_path, 2, first)
    with pytest.raises(ValueError, match=r"step_000002 already holds a complete checkpoint .*--resume=auto"):
        save(tmp_path, 2, make(2)[0])
    loaded = ck.load_checkpoint(tmp_path).model_state
    assert all(torch.equal(loaded[k], v) for k, v in first.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["step_000002"]
    # an incomplete folder of that step (an interrupted copy) is no checkpoint: a save replaces it
    elsewhere = save(tmp_path / "pod", 3, first)
    (tmp_path / "step_000003").mkdir()
    (tmp_path / "step_000003" / "meta.json").write_bytes((elsewhere / "meta.json").read_bytes())
    shutil.rmtree(tmp_path / "pod")
    assert ck.list_checkpoints(tmp_path) == [2]
    save(tmp_path, 3, first)
    assert ck.list_checkpoints(tmp_path) == [2, 3] and sorted(p.name for p in tmp_path.iterdir()) == [
        "step_000002", "step_000003"]


def test_barrier_protocol_single_process(tmp_path):
    calls = []
    save(tmp_path, 1, barrier=lambda: calls.append(sorted(p.name for p in tmp_path.iterdir())))
    # after prepare: only the temp dir; after the per-rank files: still temp; after the rename: the step
    assert calls == [[".step_000001.tmp"], [".step_000001.tmp"], ["step_000001"]]


CRASH_CHILD = """
import sys, torch
from nanochat.checkpoint import save_checkpoint
# 256 MB of weights and 256 MB of optimizer state: writing them takes long enough to be killed mid-way
big = {f"w{i}": torch.full((1024, 1024), float(i)) for i in range(64)}
optim = [{"state": {i: {"exp_avg": torch.ones(1024, 1024)} for i in range(64)}, "param_groups": []}]
save_checkpoint(sys.argv[1], 2, model_state=big, optimizer_states=optim, meta={})
"""


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    model, opt = make()
    save(tmp_path, 1, model, opt, rng=True)
    temp = tmp_path / ".step_000002.tmp"
    child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(tmp_path)], cwd=REPO_ROOT,
                             env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        # wait until the child is inside the write (its first per-rank file exists), then kill -9
        while not (temp / "optim_rank0.pt").exists():
            assert child.poll() is None, child.communicate()[0].decode()
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert temp.is_dir() and not (tmp_path / "step_000002").exists()
    assert ck.list_checkpoints(tmp_path) == [1] and ck.find_resume(tmp_path, "auto") == 1
    loaded = ck.load_checkpoint(tmp_path)
    assert all(torch.equal(loaded.model_state[k], v) for k, v in model.state_dict().items())

    save(tmp_path, 2, model, opt)  # the resumed run saves the same step again: the stale temp goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001", "step_000002"]
    assert ck.load_checkpoint(tmp_path).step == 2


def two_rank_worker(rank, world_size, ckpt_dir, init_file):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model, opt = make()
        train(model, opt, 100 * rank, 2)  # ranks see different data, so their optimizer states differ
        ck.save_checkpoint(ckpt_dir, 7, model_state=model.state_dict() if rank == 0 else None,
                           optimizer_states=[opt.state_dict()], meta={"note": "two"} if rank == 0 else None,
                           loader_state={"rank": rank, "row": 10 * rank})
        loaded = ck.load_checkpoint(ckpt_dir)  # rank and world size from the environment
        mine = opt.state_dict()["state"]
        theirs = loaded.optimizer_states[0]["state"]
        assert mine.keys() == theirs.keys()
        for i in mine:
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(mine[i][name], theirs[i][name]), (rank, i, name)
        assert loaded.loader_state == {"rank": rank, "row": 10 * rank} and loaded.rng is not None
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_one_complete_step(tmp_path):
    ckpt_dir = tmp_path / "mid_checkpoints" / "d2"
    # fork, not spawn: the ranks start in milliseconds instead of importing torch again each
    ctx = torch.multiprocessing.start_processes(two_rank_worker, args=(2, str(ckpt_dir), str(tmp_path / "store")),
                                                nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):  # re-raises a rank's failure
            assert time.monotonic() < deadline, "two-rank save hung (a barrier never completed)"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    path = ckpt_dir / "step_000007"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step_000007"]
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "optim_rank0.pt",
                                                      "optim_rank1.pt", "rng_rank0.pt", "rng_rank1.pt"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["phase"] == "mid" and meta["note"] == "two"
    assert meta["loader_states"] == [{"rank": 0, "row": 0}, {"rank": 1, "row": 10}]
    one = ck.load_checkpoint(ckpt_dir, rank=1, world_size=2)
    zero = ck.load_checkpoint(ckpt_dir, rank=0, world_size=2)
    assert not torch.equal(one.optimizer_states[0]["state"][0]["exp_avg"], zero.optimizer_states[0]["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="saved by 2 ranks but this run has 1: .*load_optimizer=False"):
        ck.load_checkpoint(ckpt_dir)
    model_only = ck.load_checkpoint(ckpt_dir, load_optimizer=False)
    assert model_only.optimizer_states is None and len(model_only.meta["loader_states"]) == 2


# ---- interrupted copies: a step counts only when every file its meta.json lists is there at its size


def gpt_steps(d, steps):
    """A tiny GPT saved (with optimizer, RNG, loader state) as the given steps in d; a byte-level
    tokenizer in the base dir, so that scripts can chat with it."""
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN).save(get_base_dir() / "tokenizer")
    config = GPTConfig(sequence_len=32, vocab_size=265, n_layer=1, n_embd=32, n_head=2, n_kv_head=2)
    for step in steps:
        torch.manual_seed(step)
        model = GPT(config)
        model.init_weights()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ck.save_checkpoint(d, step, model_state=model.state_dict(), optimizer_states=[opt.state_dict()],
                           meta={"model_config": dataclasses.asdict(config)}, loader_state={"row": step})
    return d


def interrupted_copy(src, dst, files_done, partial_bytes=0):
    """What an interrupted `rsync -avP` leaves: files in sorted order (meta.json sorts first), each via a
    temp name then renamed, and with --partial the one it was cut in kept, truncated, under its name."""
    dst.mkdir(parents=True)
    names = sorted(p.name for p in src.iterdir())
    for name in names[:files_done]:
        shutil.copy2(src / name, dst / f".{name}.tmp")
        os.replace(dst / f".{name}.tmp", dst / name)
    if partial_bytes:
        (dst / names[files_done]).write_bytes((src / names[files_done]).read_bytes()[:partial_bytes])
    return names


@pytest.mark.parametrize("files_done,partial", [(1, 0), (1, 100), (2, 0), (3, 50)],
                         ids=["meta-only", "model-cut", "optim-missing", "rng-cut"])
def test_interrupted_copy_falls_back_to_the_newest_complete_step(base_dir, capsys, files_done, partial):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1, 2])
    # the newer step was saved on another machine, and only part of it was copied here
    other = gpt_steps(base_dir / "pod" / "d1", [3]) / "step_000003"
    names = interrupted_copy(other, d / "step_000003", files_done, partial)
    assert names == ["meta.json", "model.safetensors", "optim_rank0.pt", "rng_rank0.pt"]
    missing = names[files_done]
    assert ck.list_checkpoints(d) == [1, 2] and ck.list_checkpoints("sft") == [1, 2]
    capsys.readouterr()
    assert ck.find_resume(d, "auto") == 2
    assert f"warning: skipping {d / 'step_000003'}: {missing}" in capsys.readouterr().out
    model, meta = ck.load_model("sft")
    assert meta["step"] == 2
    assert ck.load_checkpoint("sft").loader_state == {"row": 2}
    with pytest.raises(FileNotFoundError, match=rf"no complete step 3 in .*\(step_000003: {missing} .*steps: 1, 2$"):
        ck.load_checkpoint(d, 3)
    with pytest.raises(FileNotFoundError, match=rf"resume=3: no complete step 3 .*{missing}"):
        ck.find_resume(d, "3")
    for name in names[files_done:]:  # rsync run again finishes the copy
        shutil.copy2(other / name, d / "step_000003" / name)
    assert ck.list_checkpoints(d) == [1, 2, 3] and ck.load_model("sft")[1]["step"] == 3


def test_only_incomplete_steps_says_why(base_dir):
    d = ck.checkpoint_dir("sft", "d1")
    other = gpt_steps(base_dir / "pod" / "d1", [3]) / "step_000003"
    interrupted_copy(other, d / "step_000003", 1)
    with pytest.raises(FileNotFoundError, match=r"no sft checkpoint in .*d1: train one with python -m scripts.chat_sft "
                                                r"\(step_000003 is incomplete: model.safetensors is missing\)"):
        ck.load_model("sft", tag="d1")


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_real_rsync_that_stopped_after_meta_json(base_dir):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1])
    src = gpt_steps(base_dir / "pod" / "d1", [2]) / "step_000002"
    # --max-size lets through only files no larger than meta.json: the folder an rsync cut short leaves
    meta_size = (src / "meta.json").stat().st_size
    subprocess.run(["rsync", "-a", f"--max-size={meta_size}b", f"{src}/", f"{d / 'step_000002'}/"], check=True)
    assert sorted(p.name for p in (d / "step_000002").iterdir()) == ["meta.json"]
    assert ck.find_resume(d, "auto") == 1 and ck.load_model("sft")[1]["step"] == 1
    with pytest.raises(FileNotFoundError, match=r"step_000002: model.safetensors is missing"):
        ck.load_model(d, 2)
    subprocess.run(["rsync", "-a", f"{src}/", f"{d / 'step_000002'}/"], check=True)  # the copy completes
    assert ck.find_resume(d, "auto") == 2 and ck.load_model("sft")[1]["step"] == 2


# ---- damaged files: one line naming the file and what to do, never a traceback


def rewrite_model(step_dir, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(step_dir / "model.safetensors"))
    change(state)
    save_file(state, str(step_dir / "model.safetensors"))


def edit_meta(change):
    def apply(step_dir):
        meta = json.loads((step_dir / "meta.json").read_text())
        change(meta)
        (step_dir / "meta.json").write_text(json.dumps(meta))
    return apply


def overwrite(name, data, at=0):
    def apply(step_dir):
        with open(step_dir / name, "r+b") as f:
            f.seek(at if at >= 0 else (step_dir / name).stat().st_size + at)
            f.write(data)
    return apply


def break_first_tensor(name):
    """Overwrite the zip signature of the first tensor's member: the archive's index still looks fine."""
    def apply(step_dir):
        data = bytearray((step_dir / name).read_bytes())
        at = data.rfind(b"PK\x03\x04", 0, data.find(b"/data/0"))
        data[at:at + 4] = b"XXXX"
        (step_dir / name).write_bytes(bytes(data))
    return apply


def first_weight(state):
    return next(k for k in sorted(state) if k.endswith("weight"))


# (id, how to damage the step folder, restamp the manifest after, file named in the error, message)
DAMAGE = [
    ("model-header-size", overwrite("model.safetensors", b"\xff" * 8), False, "model.safetensors",
     "not a readable safetensors file"),
    ("model-header-json", overwrite("model.safetensors", b"#garbage", 8), False, "model.safetensors",
     "not a readable safetensors file"),
    ("model-truncated", lambda d: os.truncate(d / "model.safetensors", 300), True, "model.safetensors",
     "not a readable safetensors file"),
    ("model-int8", lambda d: rewrite_model(d, lambda s: s.update({(k := first_weight(s)): s[k].to(torch.int8)})),
     True, "model.safetensors", r"as torch.int8, the model needs torch.float32"),
    ("model-shape", lambda d: rewrite_model(d, lambda s: s.update({(k := first_weight(s)): s[k][:1]})),
     True, "model.safetensors", "of shape"),
    ("model-missing-key", lambda d: rewrite_model(d, lambda s: s.pop(first_weight(s))), True,
     "model.safetensors", "lacks tensors"),
    ("model-extra-key", lambda d: rewrite_model(d, lambda s: s.update(extra=torch.ones(2))), True,
     "model.safetensors", r"unexpected tensors \['extra'\]"),
    ("meta-not-json", lambda d: (d / "meta.json").write_text('{"format": "nanochat-'), False, "meta.json",
     "is not valid JSON"),
    ("meta-not-utf8", lambda d: (d / "meta.json").write_bytes(b"\xff\xfe\xfa{"), False, "meta.json",
     "is not valid JSON"),
    ("meta-deeply-nested", lambda d: (d / "meta.json").write_text("[" * 100_000 + "]" * 100_000), False,
     "meta.json", "is not valid JSON .*recursion"),
    ("meta-a-list", lambda d: (d / "meta.json").write_text("[1, 2]"), False, "meta.json", "holds a list"),
    ("meta-world-size-str", edit_meta(lambda m: m.update(world_size="two")), False, "meta.json",
     "has world_size = 'two', which is not an integer"),
    ("meta-missing-field", edit_meta(lambda m: m.pop("has_rng")), False, "meta.json", "has has_rng = None"),
    ("meta-format", edit_meta(lambda m: m.update(format="other/2")), False, "meta.json", "has format 'other/2'"),
    ("meta-step", edit_meta(lambda m: m.update(step=9)), False, "meta.json", "do not fit folder step_000002"),
    ("meta-loader-states", edit_meta(lambda m: m.update(loader_states=[{}, {}])), False, "meta.json",
     "loader_states that are not a list of 1"),
    ("meta-files", edit_meta(lambda m: m.update(files={"../escape": {"size": 1, "sha256": ""}})), False,
     "meta.json", "'files' manifest"),
    ("meta-model-config", edit_meta(lambda m: m["model_config"].update(n_head="x")), False, "meta.json",
     "no usable model_config .*n_head must be a positive integer"),
    ("meta-no-model-config", edit_meta(lambda m: m.pop("model_config")), False, "meta.json",
     "no usable model_config"),
    ("optim-garbage", overwrite("optim_rank0.pt", b"garbage!"), False, "optim_rank0.pt",
     "is damaged or holds objects other than tensors"),
    ("optim-truncated", lambda d: os.truncate(d / "optim_rank0.pt", 500), True, "optim_rank0.pt",
     "not a torch.save archive"),
    ("optim-member-header", break_first_tensor("optim_rank0.pt"), False, "optim_rank0.pt",
     "cannot be read .*PytorchStreamReader failed reading file"),
    ("rng-damaged-member", overwrite("rng_rank0.pt", b"\x00" * 64, 200), False, "rng_rank0.pt",
     "is damaged or holds objects other than tensors"),
]


def load_for(name, d):
    """What reads the damaged file: a resume for optimizer and RNG files, chat for the rest."""
    return (lambda: ck.load_checkpoint(d)) if name.endswith(".pt") else (lambda: ck.load_model("sft"))


@pytest.mark.parametrize("damage,restamped,name,message", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_damaged_step_fails_in_one_line_naming_the_file(base_dir, damage, restamped, name, message):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1, 2])
    damage(d / "step_000002")
    if restamped:  # damage that changes a size would make the step incomplete: keep the manifest in step
        restamp(d / "step_000002")
    with pytest.raises(ValueError) as info:
        load_for(name, d)()
    text = str(info.value)
    assert "\n" not in text and str(d / "step_000002" / name) in text, text
    assert re.search(message, text), text
    assert text.endswith(f"copy that step again, or delete {d / 'step_000002'} to use an older step"), text
    shutil.rmtree(d / "step_000002")  # doing what it says works
    assert load_for(name, d)() is not None


def run_script(script, *args):
    return subprocess.run([sys.executable, "-m", script, *args, "--device_type=cpu"], cwd=REPO_ROOT,
                          env=subprocess_env(NANOCHAT_BASE_DIR=str(get_base_dir())), capture_output=True, text=True,
                          timeout=300)


def set_tokenizer_pattern(pattern):
    path = get_base_dir() / "tokenizer" / "tokenizer.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pattern": pattern}))
    return path


# (id, damage to step 1 of the only checkpoint, scripts to run, file the error names, what it says)
CLI_DAMAGE = [
    ("meta-world-size-str", edit_meta(lambda m: m.update(world_size="two")), ("scripts.chat_cli", "scripts.chat_web"),
     "step_000001/meta.json", "world_size = 'two'"),
    ("model-int8", {c[0]: c[1] for c in DAMAGE}["model-int8"], ("scripts.chat_cli",),
     "step_000001/model.safetensors", "torch.int8"),
    ("tokenizer-backtracking", lambda d: set_tokenizer_pattern(r"(?:a|a)*(?!x)b|[\s\S]"), ("scripts.chat_cli",),
     "tokenizer/tokenizer.json", "needs unbounded backtracking"),
]


@pytest.mark.parametrize("damage,scripts,name,message", [c[1:] for c in CLI_DAMAGE], ids=[c[0] for c in CLI_DAMAGE])
def test_damaged_files_fail_in_one_line_through_chat_cli_and_chat_web(base_dir, damage, scripts, name, message):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1])
    damage(d / "step_000001")
    if "model" in name:
        restamp(d / "step_000001")
    for script in scripts:
        proc = run_script(script, *(["-p", "hi"] if script == "scripts.chat_cli" else ["--port=0"]))
        assert proc.returncode == 1, (script, proc.stdout, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stdout, proc.stderr
        assert name in lines[0] and message in lines[0], lines[0]


def test_chat_cli_answers_from_the_newest_complete_step(base_dir):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1])
    interrupted_copy(gpt_steps(base_dir / "pod" / "d1", [2]) / "step_000002", d / "step_000002", 1)
    proc = run_script("scripts.chat_cli", "-p", "hi", "--temperature=0", "--max_new_tokens=4")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"warning: skipping {d / 'step_000002'}: model.safetensors is missing" in proc.stdout


def test_resume_reports_a_damaged_meta_json_in_one_line(base_dir):
    from nanochat.training import resume_training

    d = gpt_steps(ck.checkpoint_dir("base", "d1"), [1, 2])
    edit_meta(lambda m: m.update(world_size="two"))(d / "step_000002")
    with pytest.raises(ValueError, match=r"step_000002/meta.json has world_size = 'two', which is not an integer; copy"):
        resume_training(d, "auto", model=None, optimizers=[], loader=None, scaler=None, model_config={},
                        world_size=1, num_iterations=None)


def test_a_changed_byte_is_caught_when_verifying(base_dir, capsys, monkeypatch):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1, 2])
    overwrite("model.safetensors", b"\x7f", at=-1)(d / "step_000002")  # same size: only a checksum sees it
    assert ck.load_model("sft")[1]["step"] == 2  # stat-only checks cannot tell
    capsys.readouterr()
    assert ck.load_model("sft", verify=True)[1]["step"] == 1
    assert "model.safetensors does not match its recorded sha256" in capsys.readouterr().out
    assert ck.list_checkpoints(d, verify=True) == [1] and ck.list_checkpoints(d) == [1, 2]
    with pytest.raises(FileNotFoundError, match=r"no complete step 2 .*does not match its recorded sha256"):
        ck.load_checkpoint(d, 2, verify=True)
    monkeypatch.setenv("NANOCHAT_VERIFY_CHECKPOINTS", "1")
    assert ck.find_resume(d, "auto") == 1 and ck.load_checkpoint(d).step == 1


def test_steps_saved_before_manifests_still_load(base_dir):
    d = gpt_steps(ck.checkpoint_dir("sft", "d1"), [1, 2])
    for step in (1, 2):
        edit_meta(lambda m: m.pop("files"))(d / f"step_{step:06d}")
    assert ck.list_checkpoints(d) == [1, 2] and ck.load_checkpoint(d).optimizer_states is not None
    (d / "step_000002" / "rng_rank0.pt").unlink()  # without sizes, the files its flags imply must be there
    assert ck.list_checkpoints(d) == [1] and ck.load_model("sft")[1]["step"] == 1
