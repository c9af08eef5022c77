"""scripts.tok_train and scripts.tok_eval as a user runs them: real processes, real files."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow


def run(args, base_dir, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(NANOCHAT_BASE_DIR=str(base_dir)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_then_eval_on_a_folder(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"doc{i:02d}.txt").write_text(f"Document {i}: the quick brown fox jumps over the lazy dog. " * 30)
    base = tmp_path / "base"
    train = run(["scripts.tok_train", "--vocab_size=400", f"--corpus={corpus}"], base)
    assert train.returncode == 0, train.stderr
    tok_dir = base / "tokenizer"
    assert (tok_dir / "tokenizer.json").is_file()
    meta = json.loads((tok_dir / "train_meta.json").read_text())
    assert meta["documents"] == 20 and meta["n_vocab"] <= 400
    assert "trained vocab" in train.stdout

    ev = run(["scripts.tok_eval", "--reference_timeout=2"], base)
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tok_dir / "eval.json").read_text())
    samples = {row["sample"]: row for row in result["rows"]}
    assert {"english", "korean", "code", "math"} <= set(samples)
    for row in samples.values():
        # a byte-level BPE never needs more tokens than bytes
        assert 0 < row["ours"] <= row["bytes"]
    # the fox sentence was in training, so English compresses better than Korean (bytes only there)
    assert samples["english"]["bytes"] / samples["english"]["ours"] > samples["korean"]["bytes"] / samples["korean"]["ours"]
    assert "english" in ev.stdout and "B/tok" in ev.stdout


def test_korean_mixed_tokenizer_then_eval_side_by_side(tmp_path):
    ko, en = tmp_path / "ko", tmp_path / "en"
    ko.mkdir()
    en.mkdir()
    from scripts.tok_eval import ENGLISH_SAMPLE, KOREAN_PROSE

    for i in range(6):  # tok_eval's own samples: this checks the plumbing, not generalisation
        (ko / f"ko{i}.txt").write_text(f"{i}번째 문서입니다. {KOREAN_PROSE}\n" * 5)
        (en / f"en{i}.txt").write_text(f"Document {i}: {ENGLISH_SAMPLE}\n" * 5)
    base = tmp_path / "base"
    train = run(["scripts.tok_train", "--vocab_size=500", f"--corpus={ko}", "--pattern=korean",
                 f"--mix_corpus={en}", "--mix_share=0.25"], base)
    assert train.returncode == 0, train.stderr
    meta = json.loads((base / "tokenizer" / "train_meta.json").read_text())
    ko_chars = sum(len(p.read_text()) for p in ko.iterdir())
    assert meta["characters_by_corpus"] == {str(ko): ko_chars, str(en): round(ko_chars / 3)}
    assert meta["options"]["pattern"] == "korean"
    saved = json.loads((base / "tokenizer" / "tokenizer.json").read_text())
    from nanochat.tokenizer import KOREAN_SPLIT_PATTERN
    assert saved["pattern"] == KOREAN_SPLIT_PATTERN

    english = run(["scripts.tok_train", "--vocab_size=500", f"--corpus={en}", f"--out_dir={tmp_path / 'en_tok'}"], base)
    assert english.returncode == 0, english.stderr
    ev = run(["scripts.tok_eval", "--reference_timeout=2", f"--baseline_dir={tmp_path / 'en_tok'}"], base)
    assert ev.returncode == 0, ev.stderr
    table = ev.stdout[ev.stdout.index("side by side"):].splitlines()
    assert table[1].split() == ["English", "Korean"]
    ours, baseline = table[2].split(), table[3].split()
    assert ours[0] == "ours" and baseline[0] == "baseline"
    # the Korean-trained tokenizer compresses Korean better than the English-only one, which
    # compresses English better
    assert float(ours[2]) > float(baseline[2]) and float(baseline[1]) > float(ours[1])
    languages = json.loads((base / "tokenizer" / "eval.json").read_text())["languages"]
    assert abs(languages["ours"]["Korean"] - float(ours[2])) < 0.006


def test_bad_flag_and_missing_tokenizer_fail_with_one_line(tmp_path):
    bad = run(["scripts.tok_train", "--vocabsize=100"], tmp_path)
    assert bad.returncode == 2 and "did you mean --vocab_size?" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    small = run(["scripts.tok_train", "--vocab_size=100"], tmp_path)
    assert small.returncode == 2 and "at least 266" in small.stderr
    missing = run(["scripts.tok_eval"], tmp_path / "nothing")
    assert missing.returncode != 0 and "python -m scripts.tok_train" in missing.stderr
