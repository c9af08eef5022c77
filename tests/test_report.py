"""nanochat.report (header, sections, summary table, plots), scripts.plot, and the phase scripts' sections."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanochat import report
from tests.conftest import REPO_ROOT, subprocess_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


def resumed_run(path: Path) -> Path:
    """Steps 0-9, then a resume from step 6 that redoes 6-9 (new values) and goes on to 14."""
    first = [{"step": s, "loss": 10.0 - s * 0.1, "lrm": 1.0, "grad_norm": 2.0, "dt": 0.5, "tok_per_s": 1000.0}
             for s in range(10)]
    first += [{"step": 0, "val_bpb": 3.0}, {"step": 5, "val_bpb": 2.5}]
    second = [{"step": s, "loss": 100.0 + s, "lrm": 0.5, "grad_norm": 1.0, "dt": 0.4, "tok_per_s": 1200.0}
              for s in range(6, 15)]
    second += [{"step": 10, "val_bpb": 2.0}]
    write_metrics(path, first)
    return write_metrics(path, second)


def summary_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in report.SUMMARY_ROWS:
            rows[cells[0]] = cells[1:]
    return rows


def test_reset_writes_header_with_commit_and_clears_old_files(base_dir):
    report.log_section(report.SECTION_TOK_TRAIN, {"vocab_size": 300})
    (base_dir / "report" / "plots").mkdir()
    (base_dir / "report" / "plots" / "old.png").write_bytes(PNG_MAGIC)

    out = report.reset()
    assert sorted(p.name for p in out.iterdir()) == ["header.json", "header.md"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    commit = head.stdout.strip()[:12] if head.returncode == 0 else "unknown"
    header_md = (out / "header.md").read_text()
    assert f"- Commit: {commit} (" in header_md
    header = json.loads((out / "header.json").read_text())
    assert abs(header["started_at"] - time.time()) < 120
    assert header["code"]["files"] > 10 and header["code"]["lines"] > 1000
    assert "- GPUs: " in header_md and "- Python " in header_md


def test_git_info_and_code_stats_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # git must not find a parent repo
    proj = tmp_path / "proj"
    (proj / ".venv").mkdir(parents=True)
    (proj / "a.py").write_text("x = 1\ny = 2\n")
    (proj / "b.rs").write_text("fn main() {}")  # no final newline: still one line
    (proj / "notes.txt").write_text("not code\n")
    (proj / ".venv" / "dep.py").write_text("ignored = True\n")
    assert report.git_info(proj) == {"commit": "unknown", "branch": "unknown", "dirty": None, "message": ""}
    stats = report.code_stats(proj)
    assert stats == {"files": 2, "lines": 3, "characters": 24, "approx_tokens": 6, "source": "directory walk"}


def test_sections_appear_in_fixed_order_whatever_the_writing_order(base_dir):
    report.log_section("Zeta extra", {"x": 1})
    for name in reversed(report.SECTIONS):
        report.log_section(name, {"value": 1.5})
    report.log_section("Alpha extra", {"x": 2})
    report.log_section(report.SECTION_BASE_TRAIN, {"value": 2.5})  # rewriting replaces, keeps its place
    report.log_section("Zeta extra", {"x": 3})

    out = base_dir / "report"
    stems = sorted(p.stem for p in out.glob("*.json"))
    assert len(stems) == len(report.SECTIONS) + 2
    assert "03-base-model-training" in stems and all((out / f"{s}.md").is_file() for s in stems)
    text = report.build_report(out)
    order = [text.index(f"## {name}\n") for name in (*report.SECTIONS, "Zeta extra", "Alpha extra")]
    assert order == sorted(order)
    assert text.count("## Base model training\n") == 1 and "- value: 2.5000" in text
    assert "- x: 3" in text and "- x: 1\n" not in text


def test_generate_without_sections_or_header_renders_dashes(base_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = report.generate()
    text = path.read_text()
    rows = summary_rows(text)
    assert list(rows) == list(report.SUMMARY_ROWS)
    assert all(cells == ["-", "-", "-", "-"] for cells in rows.values())
    assert "Total wall clock time: -" in text and "Estimated cost: -" in text
    assert "## Plots" not in text
    assert (tmp_path / "report.md").read_text() == text


def test_generate_fills_the_table_wall_clock_and_cost(base_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "hardware_info", lambda: {
        "platform": "test", "cpu_model": "cpu", "cpu_count": 2, "memory_gib": 8.0,
        "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}] * 8, "hourly_cost": 24.0})
    out = report.reset()
    report.log_section(report.SECTION_BASE_EVAL, {"CORE": 0.2219, "tasks": {"hellaswag": 0.3, "arc": None}})
    chat = {"ARC-Easy": 0.3561, "ARC-Challenge": 0.2875, "MMLU": 0.3111, "GSM8K": 0.025, "HumanEval": 0.0671,
            "SpellingBee": None, "ChatCORE": 0.073}
    report.log_section(report.CHAT_EVAL_SECTIONS["mid"], chat)
    report.log_section(report.CHAT_EVAL_SECTIONS["sft"], {**chat, "MMLU": 0.3151, "SpellingBee": 0.9})
    report.log_section(report.CHAT_EVAL_SECTIONS["rl"], {"GSM8K": 0.0758, "HumanEval": "n/a"})
    # the run began exactly two hours before its last section (however slowly this machine wrote them)
    last = max(json.loads(p.read_text())["time"] for p in out.glob("*.json") if p.name != "header.json")
    header = json.loads((out / "header.json").read_text())
    header["started_at"] = last - 2 * 3600
    (out / "header.json").write_text(json.dumps(header))
    monkeypatch.chdir(tmp_path)
    text = report.generate().read_text()

    assert "8 x NVIDIA H100 80GB HBM3 (79.2 GiB)" in text and "$24.00/h" in text
    assert summary_rows(text) == {
        "CORE": ["0.2219", "-", "-", "-"],
        "ARC-Easy": ["-", "0.3561", "0.3561", "-"],
        "ARC-Challenge": ["-", "0.2875", "0.2875", "-"],
        "MMLU": ["-", "0.3111", "0.3151", "-"],
        "GSM8K": ["-", "0.0250", "0.0250", "0.0758"],
        "HumanEval": ["-", "0.0671", "0.0671", "-"],  # a string is not a score
        "SpellingBee": ["-", "-", "0.9000", "-"],
        "ChatCORE": ["-", "0.0730", "0.0730", "-"],
    }
    assert "- Total wall clock time: 2h00m (reset to the last section)" in text
    assert "- Estimated cost: $48.00 (at $24.00/h)" in text
    # nested data reads as sub-bullets
    assert "- tasks:\n  - hellaswag: 0.3000\n  - arc: -" in text


def test_korean_rows_only_when_a_section_has_them(base_dir):
    chat = {"ARC-Easy": 0.3, "ChatCORE": 0.1}
    report.log_section(report.SECTION_BASE_EVAL, {"CORE": 0.2})
    report.log_section(report.CHAT_EVAL_SECTIONS["sft"], chat)
    english = report.build_report(base_dir / "report")
    assert not any(name in english for name in report.KOREAN_SUMMARY_ROWS)  # an English run: no empty Korean rows

    report.log_section(report.SECTION_BASE_EVAL, {"CORE": 0.2, "KoBEST": 0.05})
    report.log_section(report.CHAT_EVAL_SECTIONS["mid"], {"KMMLU": 0.31, "ChatCORE-ko": None},
                       notes=["KMMLU: the note of its section"])
    report.log_section(report.CHAT_EVAL_SECTIONS["rl"], {**chat, "KMMLU": 0.28, "ChatCORE-ko": 0.04})
    lines = report.summary_table({record["name"]: record for _, _, record in report.read_sections(base_dir / "report")[0]})
    assert lines[-4:] == ["| ChatCORE | - | - | 0.1000 | 0.1000 |", "| KoBEST | 0.0500 | - | - | - |",
                          "| KMMLU | - | 0.3100 | - | 0.2800 |", "| ChatCORE-ko | - | - | - | 0.0400 |"]
    assert "Notes:\n- KMMLU: the note of its section" in report.build_report(base_dir / "report")


def test_nested_data_renders_as_a_table_and_odd_values_survive(base_dir):
    import numpy as np

    report.log_section("Custom", {"bytes_per_token": {"english": {"ours": 4.8, "gpt2": 4.5},
                                                       "korean": {"ours": 1.2, "gpt2": None}},
                                  "path": base_dir, "sample": "a\nb", "empty": {}, "items": [1, 2],
                                  "score": np.float32(0.25)},
                       notes=["gpt4 encoding not available"])
    text = (base_dir / "report" / "50-custom.md").read_text()
    assert "|  | ours | gpt2 |\n|---|---|---|\n| english | 4.8000 | 4.5000 |\n| korean | 1.2000 | - |" in text
    assert f"- path: {base_dir}" in text and "- sample: a\\nb" in text and "- items: 1, 2" in text
    assert "- score: 0.2500" in text and "Notes:\n- gpt4 encoding not available" in text
    data = json.loads((base_dir / "report" / "50-custom.json").read_text())["data"]
    assert data["path"] == str(base_dir)


def test_nonzero_rank_writes_nothing(base_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    report.log_section(report.SECTION_BASE_TRAIN, {"loss": 1.0})
    report.reset()
    assert not (base_dir / "report").exists()
    monkeypatch.setenv("RANK", "0")
    report.log_section(report.SECTION_BASE_TRAIN, {"loss": 1.0})
    assert (base_dir / "report" / "03-base-model-training.json").is_file()


def test_resumed_run_is_one_continuous_series(tmp_path):
    from nanochat.run_log import read_metrics

    series = report.metric_series(read_metrics(resumed_run(tmp_path / "metrics.jsonl")))
    steps, loss = series["loss"]
    assert steps == list(range(15))  # each step once, in order, no gap at the resume point
    assert loss[:6] == pytest.approx([10.0 - s * 0.1 for s in range(6)])
    assert loss[6:] == [100.0 + s for s in range(6, 15)]  # the resumed run's values win
    assert series["val_bpb"] == ([0, 5, 10], [3.0, 2.5, 2.0])
    assert series["lrm"][1] == [1.0] * 6 + [0.5] * 9


def test_plots_are_pngs_and_absent_metrics_are_skipped(base_dir, tmp_path):
    full = report.plot_metrics(resumed_run(tmp_path / "metrics.jsonl"), tmp_path / "plots", "base-d4")
    assert [p.name for p in full] == ["base-d4-loss.png", "base-d4-grad_norm.png", "base-d4-lrm.png",
                                      "base-d4-throughput.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in full)
    only_loss = write_metrics(tmp_path / "sft" / "metrics.jsonl", [{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)])
    assert [p.name for p in report.plot_metrics(only_loss, tmp_path / "plots", "sft-x")] == ["sft-x-loss.png"]


def test_generate_embeds_the_newest_runs_plots_and_the_cwd_copy_links_them(base_dir, tmp_path, monkeypatch):
    import os

    old = write_metrics(base_dir / "base_checkpoints" / "d2" / "metrics.jsonl", [{"step": 0, "loss": 5.0}])
    os.utime(old, (time.time() - 100, time.time() - 100))
    resumed_run(base_dir / "base_checkpoints" / "d4" / "metrics.jsonl")
    write_metrics(base_dir / "mid_checkpoints" / "d4" / "metrics.jsonl", [{"step": 0, "loss": 2.0}, {"step": 1}])
    torn = base_dir / "chatsft_checkpoints" / "d4" / "metrics.jsonl"  # a writer killed mid-line
    torn.parent.mkdir(parents=True)
    torn.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo\n')
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    text = report.generate().read_text()

    assert "### base (d4)" in text and "d2" not in text
    assert "![base-d4-loss](plots/base-d4-loss.png)" in text and "![mid-d4-loss](plots/mid-d4-loss.png)" in text
    assert "sft: could not plot" in text  # a damaged file costs its plots, not the report
    assert (base_dir / "report" / "plots" / "base-d4-throughput.png").read_bytes().startswith(PNG_MAGIC)
    copy = (cwd / "report.md").read_text()
    links = [line[line.index("](") + 2:-1] for line in copy.splitlines() if line.startswith("![")]
    assert len(links) == 5 and all((cwd / link).is_file() for link in links)


def test_tokenizer_scripts_write_their_sections(base_dir, tmp_path, monkeypatch):
    from scripts import tok_eval, tok_train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}: the quick brown fox jumps over the lazy dog. " * 20)
    tok_train.main(tok_train.Options(vocab_size=300, corpus=str(corpus), num_threads=1))
    # the large local samples and the downloaded GPT-2/4 encodings are beside the point here
    monkeypatch.setattr(tok_eval, "local_samples", lambda max_chars: {"english": tok_eval.ENGLISH_SAMPLE})
    monkeypatch.setattr(tok_eval, "load_reference_encodings", lambda timeout: ({}, {"gpt2": "offline"}))
    tok_eval.evaluate(tok_eval.Options())

    out = base_dir / "report"
    train = json.loads((out / "01-tokenizer-training.json").read_text())["data"]
    assert train["documents"] == 5 and train["vocab_size"] <= 300 and train["characters"] > 5000
    ev = json.loads((out / "02-tokenizer-evaluation.json").read_text())
    english = ev["data"]["bytes_per_token"]["english"]
    assert english["bytes"] == len(tok_eval.ENGLISH_SAMPLE.encode()) and 1.0 <= english["ours B/tok"] < 10
    assert ev["notes"] == ["gpt2 encoding not available (offline)"]
    assert "| english |" in (out / "02-tokenizer-evaluation.md").read_text()


def test_base_loss_writes_its_section(base_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanochat.engine import SAMPLE_PROMPTS
    from scripts import base_loss
    from tests.conftest import make_tiny_checkpoint

    make_tiny_checkpoint(base_dir, phase="base", tag="d1")
    data = tmp_path / "shards"
    data.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"text": [f"shard {i} document {j}: some text to score. " * 10 for j in range(8)]}),
                       data / f"shard_{i:05d}.parquet")
    results = base_loss.main(base_loss.Options(corpus=str(data), device_batch_size=2, eval_tokens=256,
                                               device_type="cpu", max_new_tokens=2))
    section = json.loads((base_dir / "report" / "04-base-model-loss.json").read_text())["data"]
    assert section["train_bpb"] == pytest.approx(results["train_bpb"]) and section["step"] == 1
    assert section["val_bpb"] == pytest.approx(results["val_bpb"])
    assert list(section["samples"]) == list(SAMPLE_PROMPTS)


@pytest.mark.slow
def test_command_lines(base_dir, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env=subprocess_env(NANOCHAT_BASE_DIR=str(base_dir)))

    bad = run("nanochat.report", "publish")
    assert bad.returncode == 2 and "reset|generate" in bad.stderr
    nothing = run("scripts.plot", "--source=base")
    assert nothing.returncode == 1 and len(nothing.stderr.strip().splitlines()) == 1
    assert "no metrics.jsonl for phase base" in nothing.stderr

    assert run("nanochat.report", "reset").returncode == 0
    assert (base_dir / "report" / "header.md").is_file()
    resumed_run(base_dir / "base_checkpoints" / "d4" / "metrics.jsonl")
    plot = run("scripts.plot", "--source=base", "--model_tag=d4", f"--out_dir={tmp_path / 'pngs'}")
    assert plot.returncode == 0, plot.stderr
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [
        "base-d4-grad_norm.png", "base-d4-loss.png", "base-d4-lrm.png", "base-d4-throughput.png"]
    gen = run("nanochat.report", "generate")
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "report.md").read_text().startswith("# nanochat training report")
    assert "| CORE | - | - | - | - |" in (base_dir / "report" / "report.md").read_text()
