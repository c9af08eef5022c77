"""Chat RL: the prompt cursor, advantages, batching and the policy-gradient loss on known values, and
scripts.chat_rl on a tiny random SFT checkpoint (CPU): a real run, resume equals straight, errors."""

import json
import math
import subprocess
import sys

import pytest
import torch

from nanochat.train_rl import (
    PromptCursor,
    RLOptions,
    Sample,
    collate,
    group_advantages,
    policy_gradient_loss,
    train_rl,
    trained_tokens,
)
from tasks.arithmetic import Arithmetic
from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env

# ---- pure parts


def test_advantage_is_reward_minus_its_prompts_mean():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    want = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [-0.75, -0.75, -0.75, 2.25]])
    torch.testing.assert_close(group_advantages(rewards), want)  # no std division: the 3.0 stays large


def test_cursor_deals_each_epoch_once_and_ranks_split_a_step():
    one = PromptCursor(10, seed=3)
    read = [i for _ in range(5) for _, i in one.take(2)]
    assert sorted(read) == list(range(10)) and read != list(range(10))  # a permutation, shuffled
    assert one.epochs == 1.0
    second_epoch = [i for _ in range(5) for _, i in one.take(2)]
    assert sorted(second_epoch) == list(range(10)) and second_epoch != read  # a new order per epoch

    ranks = [PromptCursor(10, seed=3) for _ in range(2)]
    step = [ranks[r].take(4, r, 2) for r in range(2)]
    assert sorted(step[0] + step[1]) == PromptCursor(10, seed=3).take(4)
    assert ranks[0].position == ranks[1].position == 4

    restored = PromptCursor(10, seed=3)
    restored.load_state_dict(json.loads(json.dumps([r.state_dict() for r in ranks])))  # as resume hands it
    assert restored.take(3) == PromptCursor(10, seed=3, position=4).take(3)


def test_collate_trains_only_sampled_tokens():
    # prompt 1 2 3; completion 4 5 6 7 where 5 6 were forced by the calculator (mask 0)
    a = Sample(ids=[1, 2, 3, 4, 5, 6, 7], trained=[0, 0, 0, 1, 0, 0, 1], reward=1.0, completion_len=4)
    b = Sample(ids=[1, 2, 8], trained=[0, 0, 1], reward=0.0, completion_len=1)
    x, y = collate([a, b], pad_id=0)
    assert x.tolist() == [[1, 2, 3, 4, 5, 6], [1, 2, 0, 0, 0, 0]]
    assert y.tolist() == [[-1, -1, 4, -1, -1, 7], [-1, 8, -1, -1, -1, -1]]
    assert trained_tokens([a, b]) == 3 == int((y >= 0).sum())


class PerPosition(torch.nn.Module):
    """A stand-in policy with its own logits at every (row, position), honouring GPT's contract for
    loss_reduction="none": per-token -logprob, 0 where the target is -1."""

    def __init__(self, B, T, V):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(B, T, V))

    def forward(self, inputs, targets, loss_reduction="none"):
        assert loss_reduction == "none"
        logp = self.logits.log_softmax(-1)  # (B, T, V)
        nll = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T)
        return nll.masked_fill(targets == -1, 0.0)


def test_loss_is_hand_computed_and_masked_tokens_get_no_gradient():
    V = 3
    model = PerPosition(2, 3, V)  # zero logits: every token has logprob -ln 3
    targets = torch.tensor([[2, -1, 1], [-1, 0, -1]])
    adv = torch.tensor([1.0, -0.5])
    loss = policy_gradient_loss(model, torch.zeros(2, 3, dtype=torch.long), targets, adv, num_tokens=3)
    # -(2 tokens x -ln3 x 1 + 1 token x -ln3 x -0.5) / 3 = 1.5 ln3 / 3
    assert loss.item() == pytest.approx(0.5 * math.log(3))
    loss.backward()
    grad = model.logits.grad.abs().sum(-1)  # (B, T)
    assert (grad[targets == -1] == 0).all() and (grad[targets >= 0] > 0).all()
    # d loss / d logit of the target token = adv x (p - 1) / n = adv x (1/3 - 1) / 3: it raises the
    # logprob of tokens with positive advantage and lowers it for negative ones
    assert model.logits.grad[0, 0, 2].item() == pytest.approx(1.0 * (1 / 3 - 1) / 3)
    assert model.logits.grad[1, 1, 0].item() == pytest.approx(-0.5 * (1 / 3 - 1) / 3)


def test_loss_with_the_real_model_matches_log_softmax(base_dir):
    from nanochat.checkpoint import load_model

    make_tiny_checkpoint(base_dir, phase="sft", tag="d1")
    model, _ = load_model("sft", None, tag="d1")
    torch.manual_seed(0)
    inputs = torch.randint(0, 256, (2, 10))
    targets = torch.randint(0, 256, (2, 10))
    targets[0, :4] = -1
    targets[1, 7:] = -1
    adv = torch.tensor([0.7, -1.3])
    n = int((targets >= 0).sum())
    got = policy_gradient_loss(model, inputs, targets, adv, n)
    with torch.no_grad():
        logp = model(inputs).log_softmax(-1)  # (B, T, V)
    want = sum(-logp[b, t, targets[b, t]] * adv[b] for b in range(2) for t in range(10) if targets[b, t] >= 0) / n
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)


# ---- the script

TINY = ["--offline", "--device_type=cpu", "--compile=false", "--examples_per_step=2", "--num_samples=2",
        "--max_new_tokens=16", "--device_batch_size=2", "--max_problems=2"]


def run(args, base):
    return subprocess.run([sys.executable, "-m", "scripts.chat_rl", *TINY, *args], cwd=REPO_ROOT, timeout=120,
                          env=subprocess_env(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)


def metrics(path):
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


@pytest.mark.slow
def test_tiny_offline_run_logs_rewards_and_saves(base_dir):
    make_tiny_checkpoint(base_dir, phase="sft", tag="d1")
    proc = run(["--num_iterations=2", "--eval_every=2"], base_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "step 00002/00002 | reward" in proc.stdout and "eta" in proc.stdout
    out = base_dir / "chatrl_checkpoints" / "d1"
    m = metrics(out / "metrics.jsonl")
    for step in (0, 1):
        assert {"reward", "completion_len", "loss", "lrm", "grad_norm", "dt"} <= m[step].keys()
        assert 0 < m[step]["completion_len"] <= 16
    assert m[0]["lrm"] == 1.0 and m[1]["lrm"] == 0.5  # linear decay to 0 over the run
    assert "val_pass_rate" in m[0] and "val_pass_rate" in m[2]
    meta = json.loads((out / "step_000002" / "meta.json").read_text())
    assert meta["loader_states"] == [{"position": 4}]  # 2 steps x 2 prompts
    assert meta["source"] == {"phase": "sft", "tag": "d1", "step": 1}
    section = json.loads(next((base_dir / "report").glob("*chat-rl*.json")).read_text())
    assert section["data"]["steps"] == 2 and "eval_pass_rate" in section["data"]


def test_missing_sft_checkpoint_is_one_line(base_dir):
    make_tiny_checkpoint(base_dir, phase="base", tag="d1")  # a tokenizer, no SFT model
    proc = run([], base_dir)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train the SFT model first: python -m scripts.chat_sft")


class Vowels(Arithmetic):
    """The arithmetic prompts with a reward a random tiny model already earns unevenly (its share of
    vowels), so advantages and updates are non-zero and resume has something to get wrong."""

    def reward(self, conversation, completion):
        return sum(c in "aeiou" for c in completion) / max(1, len(completion))


@pytest.mark.slow
def test_resume_equals_straight(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    tasks = (Vowels(size=50, seed=0), Arithmetic(size=4, seed=1))
    common = dict(offline=True, device_type="cpu", compile=False, examples_per_step=2, num_samples=3,
                  max_new_tokens=12, device_batch_size=4, max_problems=2, num_iterations=4, eval_every=2,
                  save_every=2, keep_last=None, init_lr_frac=1.0)
    dirs = {}
    for name in ("straight", "resumed"):
        base = tmp_path / name
        make_tiny_checkpoint(base, phase="sft", tag="d1")
        monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
        if name == "straight":
            train_rl(RLOptions(**common), *tasks)
        else:
            assert train_rl(RLOptions(**common, stop_after=2), *tasks)["steps"] == 2
            assert train_rl(RLOptions(**common, resume="auto"), *tasks)["steps"] == 4
        dirs[name] = base / "chatrl_checkpoints" / "d1"
    straight, resumed = metrics(dirs["straight"] / "metrics.jsonl"), metrics(dirs["resumed"] / "metrics.jsonl")
    assert any(straight[s]["loss"] != 0 for s in range(4)) and straight[0]["grad_norm"] > 0
    for step in range(4):
        for key in ("loss", "reward", "completion_len", "grad_norm"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-7), (step, key)
    a = load_file(str(dirs["straight"] / "step_000004" / "model.safetensors"))
    b = load_file(str(dirs["resumed"] / "step_000004" / "model.safetensors"))
    start = load_file(str(tmp_path / "straight" / "chatsft_checkpoints" / "d1" / "step_000001" / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the run did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_redoes_the_loss(tmp_path, monkeypatch):
    """An out-of-memory at step 1 (injected: CI has no GPU) halves the device batch and redoes the
    step's loss on the same rollouts: the run equals a straight one at the smaller batch."""
    tasks = (Vowels(size=50, seed=0), Arithmetic(size=4, seed=1))
    # fp32: the halved batch equals the straight run to rounding only in fp32 (the CPU default can be bf16)
    common = dict(offline=True, device_type="cpu", compile=False, dtype="fp32", examples_per_step=2, num_samples=3,
                  max_new_tokens=12, max_problems=2, num_iterations=3, eval_every=None, init_lr_frac=1.0)
    curves = {}
    for name, device_batch, oom in (("straight", 2, ""), ("backoff", 4, "1")):
        base = tmp_path / name
        make_tiny_checkpoint(base, phase="sft", tag="d1")
        monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
        monkeypatch.setenv("NANOCHAT_TEST_OOM_AT_STEP", oom)
        summary = train_rl(RLOptions(**common, device_batch_size=device_batch), *tasks)
        assert summary["steps"] == 3
        records = metrics(base / "chatrl_checkpoints" / "d1" / "metrics.jsonl")
        curves[name] = [(records[s]["loss"], records[s]["reward"], records[s]["grad_norm"]) for s in range(3)]
        if oom:
            assert records[1]["device_batch_size"] == 2
    assert any(loss != 0 for loss, _, _ in curves["straight"])
    for a, b in zip(curves["backoff"], curves["straight"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
