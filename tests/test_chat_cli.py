"""scripts.chat_cli as a user runs it: one-shot and interactive, on a tiny saved checkpoint."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env

pytestmark = pytest.mark.slow


def run(args, base, stdin=None):
    return subprocess.run([sys.executable, "-m", "scripts.chat_cli", *args], input=stdin, cwd=REPO_ROOT,
                          env=subprocess_env(NANOCHAT_BASE_DIR=str(base)), capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_cli")
    make_tiny_checkpoint(path, "sft")
    return path


def test_one_shot_prompt_answers_and_exits(base):
    args = ["-p", "Why is the sky blue?", "--temperature=0", "--max_new_tokens=12", "--device_type=cpu"]
    first, second = run(args, base), run(args, base)
    assert first.returncode == 0, first.stderr
    answer = first.stdout.rstrip("\n")
    assert answer and len(answer.encode("utf-8", "replace")) <= 12 * 30  # some text, bounded by max_tokens
    assert first.stdout == second.stdout  # greedy is deterministic


def test_interactive_keeps_conversation_and_understands_clear_and_quit(base):
    stdin = "hello\nhow are you\nclear\nagain\nquit\n"
    proc = run(["--temperature=0", "--max_new_tokens=6", "--device_type=cpu"], base, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Assistant: ") == 3
    assert "(conversation cleared)" in proc.stdout
    # after 'clear' the same greedy model sees a fresh one-message conversation: same as a one-shot run
    one_shot = run(["-p", "again", "--temperature=0", "--max_new_tokens=6", "--device_type=cpu"], base)
    after_clear = proc.stdout.split("(conversation cleared)")[1].split("Assistant: ")[1].split("\nYou:")[0]
    assert after_clear.strip("\n") == one_shot.stdout.strip("\n")


def test_missing_checkpoint_names_the_phase_to_train(tmp_path):
    proc = run(["-p", "hi", "--source=mid"], tmp_path)
    assert proc.returncode == 1
    assert "python -m scripts.mid_train" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_option_is_one_line(base):
    proc = run(["--source=gpt4"], base)
    assert proc.returncode == 2 and "--source must be one of base, mid, sft, rl" in proc.stderr
