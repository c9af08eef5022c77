"""Chat training: the conversation loaders, the task mixtures, the hold-then-decay schedule, and
scripts.mid_train / scripts.chat_sft as users run them (real processes, a tiny base checkpoint, CPU)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanochat.chat_data import PackedChatLoader, PaddedChatLoader
from nanochat.schedule import hold_then_decay, lr_multiplier
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tasks.arithmetic import Arithmetic
from tasks.common import TaskMixture
from tasks.identity import Identity
from tasks.mixtures import PRESETS, build_mixture, describe, parse_spec
from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def small_task():
    return TaskMixture([Identity(size=12), Arithmetic(size=12)], seed=3)


def stream_of(task, tok, positions, max_tokens):
    ids, mask = [], []
    for p in positions:
        i, m = tok.render_conversation(task[p % len(task)], max_tokens=max_tokens)
        ids += i
        mask += m
    return ids, mask


# ---- loaders

def test_packed_rows_are_the_stream_with_masked_targets(tok):
    task, B, T = small_task(), 2, 16
    loader = PackedChatLoader(task, tok, B, T, rank=0, world_size=1)
    ids, mask = stream_of(task, tok, range(len(task)), T + 1)
    targets = []
    for k in range(6):
        x, y = next(loader)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.long
        chunk = slice(k * B * T, (k + 1) * B * T + 1)  # consecutive batches share one boundary token
        want_x = ids[chunk][:-1]
        want_y = [t if m else -1 for t, m in zip(ids[chunk][1:], mask[chunk][1:])]
        assert x.reshape(-1).tolist() == want_x
        assert y.reshape(-1).tolist() == want_y
        targets += want_y
    assert -1 in targets and max(targets) >= 0  # user text is masked, assistant text trained


def test_ranks_take_interleaved_conversations(tok):
    task, T = small_task(), 8
    for rank in range(2):
        loader = PackedChatLoader(task, tok, 1, T, rank=rank, world_size=2)
        x, _ = next(loader)
        ids, _ = stream_of(task, tok, range(rank, len(task), 2), T + 1)
        assert x.reshape(-1).tolist() == ids[:T]


@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_state_dict_resumes_the_same_batches(tok, kind):
    task = small_task()

    def make():
        if kind == "packed":
            return PackedChatLoader(task, tok, 2, 16, rank=0, world_size=1)
        return PaddedChatLoader(task, tok, 3, 64, rank=0, world_size=1)

    a = make()
    for _ in range(5):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # it must survive the checkpoint's JSON
    expected = [next(a) for _ in range(10)]  # runs past the end of the task: the stream wraps into epoch 2
    b = make()
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(b) for _ in range(10))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert a.epochs > 1.0 and b.epochs == a.epochs


def test_world_size_change_restarts_at_the_earliest_unread_position(tok):
    task = small_task()
    states = []
    for rank in range(2):
        loader = PaddedChatLoader(task, tok, 1, 64, rank=rank, world_size=2)
        for _ in range(3 - rank):  # rank 0 read positions 0, 2, 4; rank 1 read 1, 3: next unread is 5
            next(loader)
        states.append(loader.state_dict())
    one = PaddedChatLoader(task, tok, 1, 64, rank=0, world_size=1)
    one.load_state_dict(states)
    x, _ = next(one)
    want, _ = stream_of(task, tok, [5], 65)
    assert x[0, :len(want) - 1].tolist() == want[:-1]
    with pytest.raises(ValueError, match="rank 0 of 2"):
        PaddedChatLoader(task, tok, 1, 64, rank=0, world_size=1).load_state_dict(states[0])


def test_padded_batches_ignore_padding_and_count_it(tok):
    task = small_task()
    loader = PaddedChatLoader(task, tok, 4, 400, loop=False, pad_multiple=8, rank=0, world_size=1)
    real = total = 0
    batches = list(loader)
    assert sum(x.shape[0] for x, _ in batches) == len(task)  # one pass, the last batch partial
    for k, (x, y) in enumerate(batches):
        assert x.shape[1] % 8 == 0
        for row in range(x.shape[0]):
            ids, mask = tok.render_conversation(task[k * 4 + row], max_tokens=401)
            n = len(ids) - 1
            assert x[row, :n].tolist() == ids[:-1]
            assert y[row, :n].tolist() == [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
            assert (y[row, n:] == -1).all()  # padding is never a target
            real += n
        total += x.numel()
    assert loader.efficiency == pytest.approx(real / total) and 0 < loader.efficiency < 1


def test_padded_rows_are_cut_to_max_seq_len(tok):
    loader = PaddedChatLoader(small_task(), tok, 4, 24, rank=0, world_size=1)
    x, y = next(loader)
    assert x.shape == (4, 24)


# ---- mixtures

def test_spec_parsing_and_errors():
    assert parse_spec("identity, arithmetic:2,my.jsonl:0.5") == [("identity", 1.0), ("arithmetic", 2.0),
                                                                 ("my.jsonl", 0.5)]
    assert parse_spec("mid") == parse_spec(PRESETS["mid"])
    with pytest.raises(ValueError, match="unknown task 'smoltak'.*smoltalk"):
        parse_spec("smoltak")
    with pytest.raises(ValueError, match="must be a weight"):
        parse_spec("identity:lots")
    with pytest.raises(ValueError, match="empty"):
        parse_spec(" , ")


def test_offline_presets_build_without_downloads():
    for preset in ("mid-offline", "sft-offline"):
        train, val = build_mixture(preset)
        assert len(train) > 0 and len(val) > 0
        kinds = {type(t).__name__ for t in train.tasks}
        assert kinds == {"Identity", "SimpleSpelling", "SpellingBee", "Arithmetic", "HumanEval"}
    train, val = build_mixture("humaneval")
    train_ids = {c["task_id"] for c in train}
    val_ids = {c["task_id"] for c in val}
    assert train_ids and val_ids and not train_ids & val_ids  # held-out problems are not trained on


def test_weights_set_the_share_of_each_task():
    train, _ = build_mixture("identity:2,arithmetic:0.1", seed=5)
    assert describe(train) == f"{600 + 500:,} conversations: Identity 600, Arithmetic 500"
    again, _ = build_mixture("identity:2,arithmetic:0.1", seed=5)
    assert [again.locate(i) for i in range(len(again))] == [train.locate(i) for i in range(len(train))]


def test_custom_jsonl_holds_out_its_tail(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val = build_mixture(f"{path}:1")
    assert len(train) == 38 and len(val) == 2
    assert {c["messages"][0]["content"] for c in val} == {"q38", "q39"}


def test_missing_dataset_names_the_fetch_command():
    with pytest.raises(FileNotFoundError, match="python -m tasks.sources --dataset=smoltalk"):
        build_mixture("smoltalk")


# ---- schedule

@pytest.mark.parametrize("warmdown, final", [(0.2, 0.0), (1.0, 0.0), (0.5, 0.1), (0.0, 0.0)])
def test_chat_schedules_never_rise(warmdown, final):
    by_progress = [hold_then_decay(p / 1000, warmdown_ratio=warmdown, final_lr_frac=final) for p in range(1101)]
    by_step = [lr_multiplier(s, 137, warmdown_ratio=warmdown, final_lr_frac=final) for s in range(137)]
    for series in (by_progress, by_step):
        assert all(b <= a + 1e-12 for a, b in zip(series, series[1:]))
        assert series[0] == 1.0
    assert by_progress[-1] == pytest.approx(final if warmdown > 0 else 1.0)
    if warmdown > 0:
        assert by_step[-1] < 1.0


# ---- the scripts

# fp32: these runs compare losses across batch splits and process counts, equal to rounding only in
# fp32 (training's default on a CPU with native bf16 is bf16, tested in tests/test_base_train.py)
TINY = ["--offline", "--device_type=cpu", "--compile=false", "--dtype=fp32", "--max_seq_len=64", "--eval_batches=4"]
MID = ["--device_batch_size=4", "--total_batch_size=none"]
SFT = ["--device_batch_size=2", "--target_examples_per_step=4"]


def run(script, args, base, wait=True):
    cmd = [sys.executable, "-m", f"scripts.{script}", *TINY, *args]
    kwargs = dict(cwd=REPO_ROOT, env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1"),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return subprocess.Popen(cmd, **kwargs)
    proc = subprocess.run(cmd, timeout=300, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def metrics(path):
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def model_tensors(ckpt_dir, step):
    from safetensors.torch import load_file
    return load_file(str(ckpt_dir / f"step_{step:06d}" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("phase, script, args", [("mid", "mid_train", MID), ("sft", "chat_sft", SFT)])
def test_tiny_run_lowers_val_loss_and_resume_equals_straight(tmp_path, phase, script, args):
    from nanochat.checkpoint import PHASES

    bases = {}
    for name in ("straight", "resumed"):
        bases[name] = tmp_path / name
        make_tiny_checkpoint(bases[name], phase="base", tag="d1")
    if phase == "sft":  # SFT starts from mid by default; this one from base
        args = [*args, "--source=base", "--init_lr_frac=1.0"]  # the random tiny model needs full LRs to move
    common = [*args, "--num_iterations=12", "--eval_every=6", "--save_every=6", "--keep_last=none"]
    straight = run(script, common, bases["straight"])
    assert "sample: 'Hello! Who are you?'" in straight.stdout
    first = run(script, [*common, "--stop_after=6"], bases["resumed"])
    assert "stopping after step 6" in first.stdout
    second = run(script, [*common, "--resume=auto"], bases["resumed"])
    assert "resumed from" in second.stdout

    dirs = {k: b / PHASES[phase].dirname / "d1" for k, b in bases.items()}
    m_straight, m_resumed = metrics(dirs["straight"] / "metrics.jsonl"), metrics(dirs["resumed"] / "metrics.jsonl")
    assert m_straight[12]["val_loss"] < m_straight[0]["val_loss"] - 0.1  # it learned something
    for step in range(12):
        assert m_resumed[step]["loss"] == pytest.approx(m_straight[step]["loss"], rel=1e-6, abs=1e-7), step
    a, b = model_tensors(dirs["straight"], 12), model_tensors(dirs["resumed"], 12)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    meta = json.loads((dirs["resumed"] / "step_000012" / "meta.json").read_text())
    assert meta["source"] == {"phase": "base", "tag": "d1", "step": 1}


@pytest.mark.slow
@pytest.mark.parametrize("script, dirname, batch, oom_step", [
    # midtraining's loss is the mean of the micro-batches' means, which depends on how rows are grouped:
    # only a back-off at step 0 gives exactly the straight run at the smaller batch
    ("mid_train", "mid_checkpoints", ["--total_batch_size=512"], 0),  # 8 rows of 64 a step
    # SFT's is the mean over all the step's assistant tokens: exact whenever the back-off happens
    ("chat_sft", "chatsft_checkpoints", ["--target_examples_per_step=8", "--source=base", "--init_lr_frac=1.0"], 2),
])
def test_out_of_memory_halves_the_batch_and_redoes_the_step(tmp_path, script, dirname, batch, oom_step):
    """An out-of-memory (injected: CI has no GPU) halves the device batch and redoes the step on the
    same rows: the losses are a straight run's at the smaller batch."""
    curves = {}
    for name, device_batch, oom in (("straight", 2, ""), ("backoff", 4, str(oom_step))):
        base = tmp_path / name
        make_tiny_checkpoint(base, phase="base", tag="d1")
        cmd = [sys.executable, "-m", f"scripts.{script}", *TINY, *batch, f"--device_batch_size={device_batch}",
               "--num_iterations=5", "--eval_every=none"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                              env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1",
                                                 NANOCHAT_TEST_OOM_AT_STEP=oom))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert (f"out of memory at step {oom_step}: device batch 4 -> 2" in proc.stdout) == bool(oom)
        records = metrics(base / dirname / "d1" / "metrics.jsonl")
        curves[name] = [records[s]["loss"] for s in range(5)]
    assert curves["backoff"] == pytest.approx(curves["straight"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_missing_previous_phase_is_one_line(tmp_path):
    base = tmp_path / "empty"
    make_tiny_checkpoint(base, phase="rl", tag="d1")  # a tokenizer, but no base or mid checkpoint
    for script, label, producer in (("mid_train", "base model", "scripts.base_train"),
                                    ("chat_sft", "midtrained model", "scripts.mid_train")):
        proc = subprocess.run([sys.executable, "-m", f"scripts.{script}", *TINY], cwd=REPO_ROOT, timeout=120,
                              env=subprocess_env(NANOCHAT_BASE_DIR=str(base)), capture_output=True, text=True)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: train the {label} first: python -m {producer}")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_a_step_boundary(base_dir):
    base = base_dir
    make_tiny_checkpoint(base, phase="base", tag="d1")
    proc = run("mid_train", [*MID, "--num_iterations=100000", "--eval_every=none"], base, wait=False)
    deadline = time.time() + 120
    seen = ""
    while "step 00003/" not in seen and time.time() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]  # not 0: a wrapper must not take it for a finished run
    assert "stopped by signal: saved checkpoint step" in out
    from nanochat.checkpoint import latest_step, load_model

    step = latest_step("mid", "d1")
    assert step is not None and step >= 3
    model, meta = load_model("mid", step, tag="d1")
    assert meta["loop"]["step"] == step


def test_bigger_batch_than_the_previous_run_warns(capsys):
    from nanochat.train_chat import ChatOptions, warn_if_larger

    opts = ChatOptions(device_batch_size=64)
    warn_if_larger(opts, 2048, {"options": {"device_batch_size": 32, "max_seq_len": 2048}})
    assert "may not fit in GPU memory" in capsys.readouterr().out
    warn_if_larger(ChatOptions(device_batch_size=32), 2048, {"options": {"device_batch_size": 32, "max_seq_len": 2048}})
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_chat_phases_under_torchrun_gloo(tmp_path):
    """Same conversations per step either way (rank r takes r, r+2, ...; one process takes them in two
    micro-batches): the step's loss is the mean over all its assistant tokens, so the curves agree."""
    base = tmp_path / "base"
    make_tiny_checkpoint(base, phase="base", tag="d1")
    common = ["--source=base", "--init_lr_frac=1.0", "--device_batch_size=2", "--target_examples_per_step=4",
              "--num_iterations=4", "--eval_every=none"]
    single = run("chat_sft", common, base)
    assert "2 x 1 processes x 2 accumulation" in single.stdout
    one = metrics(base / "chatsft_checkpoints" / "d1" / "metrics.jsonl")
    (base / "chatsft_checkpoints").rename(base / "single")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "scripts.chat_sft", *TINY, *common]
    ddp = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    assert "2 x 2 processes x 1 accumulation" in ddp.stdout
    two = metrics(base / "chatsft_checkpoints" / "d1" / "metrics.jsonl")
    assert [two[s]["loss"] for s in range(4)] == pytest.approx([one[s]["loss"] for s in range(4)], rel=1e-5)
    assert one[3]["loss"] != one[0]["loss"]
    # midtraining under torchrun too: ranks read interleaved conversations, so only the run itself is compared
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "scripts.mid_train", *TINY, *MID, "--num_iterations=3", "--eval_every=3"]
    mid = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert mid.returncode == 0, mid.stdout[-2000:] + mid.stderr[-2000:]
    assert "x 2 processes x 1 accumulation" in mid.stdout and "step 00003 | validation loss" in mid.stdout
