"""dev/bench_train.py --reference_dir: a second process imports another nanochat checkout and takes its
timed rounds in turn with ours. The reference here is a stand-in package with the same interface
(GPT, GPTConfig, GPT.setup_optimizers), tiny so that its torch.compile stays short."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, subprocess_env

STAND_IN = '''
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    sequence_len: int = 16
    vocab_size: int = 64
    n_layer: int = 1
    n_head: int = 1
    n_kv_head: int = 1
    n_embd: int = 64


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, 8)
        self.lm_head = nn.Linear(8, config.vocab_size, bias=False)

    def init_weights(self):
        torch.nn.init.normal_(self.wte.weight)
        torch.nn.init.normal_(self.lm_head.weight, std=0.1)

    def setup_optimizers(self):
        print("stand-in reference: optimizers ready")  # on stdout, as the real one prints its lr scaling
        return [torch.optim.SGD(self.parameters(), lr=0.1)]

    def forward(self, idx, targets):
        logits = self.lm_head(self.wte(idx))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
'''


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, "dev/bench_train.py", *args], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_reference_takes_rounds_beside_ours(tmp_path):
    (tmp_path / "nanochat").mkdir()
    (tmp_path / "nanochat" / "__init__.py").write_text("")
    (tmp_path / "nanochat" / "gpt.py").write_text(STAND_IN)
    proc = bench("--depth=1", "--seq=16", "--vocabs=64", "--batches=2", "--modes=eager", "--steps=1",
                 "--rounds=2", "--warmup=1", f"--reference_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[3]: line.split() for line in proc.stdout.splitlines() if line.strip().startswith("64 ")}
    assert set(rows) == {"eager", "reference"}, proc.stdout
    # the stand-in has 64 x 8 x 2 parameters: its process imported it, ours imported ours
    assert rows["reference"][2] == "1,024" and rows["eager"][2] != "1,024"
    assert rows["reference"][7] == "1.00x"  # the ratio column is against the reference
    assert rows["eager"][7].endswith("x") and float(rows["eager"][7][:-1]) > 0
    assert "compile, fp32" in " ".join(rows["reference"]) and "eager, fp32" in " ".join(rows["eager"])
    assert "stand-in reference: optimizers ready" in proc.stderr  # printed, and kept out of the replies


def test_reference_dir_without_a_checkout_fails_in_one_line(tmp_path):
    proc = bench(f"--reference_dir={tmp_path}", timeout=120)
    assert proc.returncode != 0
    assert "has no nanochat/gpt.py" in proc.stderr
