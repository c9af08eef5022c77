"""Shared test fixtures: the repository root and an isolated NANOCHAT_BASE_DIR per test."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def base_dir(tmp_path, monkeypatch):
    """A fresh NANOCHAT_BASE_DIR for every test, so none reads or writes the user's ~/.cache/nanochat."""
    path = tmp_path / "nanochat_base"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(path))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for running project modules in a child process from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def make_tiny_checkpoint(base: Path, phase: str = "sft", tag: str = "d1", seed: int = 0) -> Path:
    """A byte-level tokenizer and a tiny random GPT saved as a `phase` checkpoint under `base`."""
    import dataclasses

    import torch

    from nanochat.checkpoint import checkpoint_dir, save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    tokenizer = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    tokenizer.save(base / "tokenizer")
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=128, vocab_size=tokenizer.n_vocab, n_layer=1, n_embd=64, n_head=2, n_kv_head=2)
    model = GPT(config)
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    try:
        out = checkpoint_dir(phase, tag)
        save_checkpoint(out, 1, model_state=model.state_dict(), optimizer_states=None,
                        meta={"model_config": dataclasses.asdict(config)}, rng=False, rank=0, world_size=1)
    finally:
        if old is None:
            del os.environ["NANOCHAT_BASE_DIR"]
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old
    return out
