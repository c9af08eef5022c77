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
