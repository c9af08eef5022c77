"""NANOCHAT_LANG=ko bash dev/runcpu.sh end to end, offline on CPU with a tiny model: the Korean run
goes to its own base dir, trains the Korean tokenizer (konlpy texts with a fifth English), the base
model on embedded-ko, midtraining and SFT on the Korean offline presets with the name 나노챗, writes
a report card with the Korean rows (KoBEST and KMMLU noted as not available offline, with the command
that fetches each), and the model answers a Korean prompt. The refusals (a language other than en
or ko, a base dir of the other language) are fast tests in tests/test_pod_checks.py."""

import json
import os
import subprocess

import pytest

from tasks.mixtures import PRESETS
from tests.conftest import REPO_ROOT
from tests.test_runpod_speedrun import TINY

pytestmark = pytest.mark.slow

# runpod's tiny run, with a vocabulary the Korean text fills (1,024, dev/runcpu.sh's) and fewer base steps
KO_TINY = {**TINY, "VOCAB_SIZE": "1024", "BASE_STEPS": "60", "NANOCHAT_LANG": "ko"}


def checkpoint_options(base, folder):
    metas = sorted((base / folder).glob("*/step_*/meta.json"))
    assert metas, f"no checkpoint in {base / folder}"
    return json.loads(metas[-1].read_text())["options"]


def test_korean_cpu_run_end_to_end(tmp_path):
    base = tmp_path / "nanochat_ko"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NANOCHAT_EXTRAS", "WANDB_RUN")}
    env.update(KO_TINY, NANOCHAT_BASE_DIR=str(base))
    proc = subprocess.run(["bash", "dev/runcpu.sh"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]

    # its own base dir, Korean only: no English shards beside the Korean ones
    assert (base / "language").read_text().strip() == "ko"
    assert (base / "base_data_embedded-ko" / "manifest.json").is_file()
    assert not (base / "base_data").exists() and not (base / "base_data_embedded").exists()

    # the Korean tokenizer: konlpy texts with a fifth English (the embedded corpus, read in memory)
    meta = json.loads((base / "tokenizer" / "train_meta.json").read_text())
    opts = meta["options"]
    assert (opts["corpus"], opts["pattern"], opts["mix_corpus"], opts["mix_share"]) == (
        "embedded-ko", "korean", "embedded", 0.2)
    chars = meta["characters_by_corpus"]
    assert set(chars) == {"embedded-ko", "embedded"}
    assert abs(chars["embedded"] / sum(chars.values()) - 0.2) < 0.01

    # base on embedded-ko; mid and SFT on the Korean offline presets, as 나노챗
    assert checkpoint_options(base, "base_checkpoints")["corpus"] == "embedded-ko"
    for folder in ("mid_checkpoints", "chatsft_checkpoints"):
        assert checkpoint_options(base, folder)["identity_name"] == "나노챗", folder
    report = (base / "report" / "report.md").read_text()
    assert f"- tasks: {PRESETS['mid-ko-offline']}\n" in report
    assert f"- tasks: {PRESETS['sft-ko-offline']}\n" in report
    assert "identity-ko" in PRESETS["mid-ko-offline"] and "identity-ko" in PRESETS["sft-ko-offline"]

    # the report card: tok_eval's English and Korean side by side, the Korean rows, and what was not here
    assert "|  | English | Korean |" in report
    for row in ("KoBEST", "KMMLU", "ChatCORE-ko"):
        assert f"| {row} |" in report, row
    assert "KoBEST: not available (KoBEST is not downloaded: python -m tasks.sources --dataset=kobest)" in report
    assert "KMMLU: not available offline: python -m tasks.sources --dataset=kmmlu" in report
    assert "CORE: not available" in report and "python -m scripts.base_eval --download_only" in report
    assert "talk to it: .venv/bin/python -m scripts.chat_cli -p '하늘은 왜 파란가요?'" in out

    # and it answers a Korean prompt in the terminal
    chat = subprocess.run([".venv/bin/python", "-m", "scripts.chat_cli", "-p", "안녕하세요, 이름이 뭐예요?",
                           "--max_new_tokens=16", "--temperature=0"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip() and "Traceback" not in chat.stderr
