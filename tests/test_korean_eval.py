"""Korean evaluation: KoBEST and KMMLU registered in tasks.sources and fetched from a local HTTP server
that serves generated files in their hub schemas (KoBEST: JSON lines per task and split; KMMLU: one
CSV per subject and split), KoBEST scored like CORE, KMMLU as a categorical chat task."""

import csv
import io
import json

import pytest
import torch

from nanochat.core_eval import evaluate_task
from nanochat.download import DownloadError
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tasks import sources
from tasks.kmmlu import KMMLU
from tasks.kobest import RANDOM_BASELINE, TASKS, evaluate_kobest, load_kobest, task_spec, to_mc
from tests.http_server import file_handler, start_server, stop_server

FAST = dict(retries=0, backoff=0.01, timeout=5)

KOBEST = {
    "boolq": [
        {"paragraph": "두아 리파는 잉글랜드의 싱어송라이터이다.", "question": "두아 리파는 영국인인가?", "label": 1},
        {"paragraph": "고양이는 포유류이다.", "question": "고양이는 파충류인가?", "label": 0},
        {"paragraph": "서울은 한국의 수도이다.", "question": "서울은 수도인가?", "label": 1},
    ],
    "copa": [
        {"premise": "물을 오래 끓였다.", "question": "결과", "alternative_1": "물의 양이 늘어났다.",
         "alternative_2": "물의 양이 줄어들었다.", "label": 1},
        {"premise": "바닥이 젖었다.", "question": "원인", "alternative_1": "비가 새었다.",
         "alternative_2": "해가 떴다.", "label": 0},
    ],
    "hellaswag": [
        {"context": "그는 냄비에 물을 붓고 불을 켰다.", "ending_1": "물이 끓기 시작했다.", "ending_2": "책을 덮었다.",
         "ending_3": "하늘을 날았다.", "ending_4": "신발을 샀다.", "label": 0},
        {"context": "아이가 공을 찼다.", "ending_1": "공이 녹았다.", "ending_2": "공이 멀리 날아갔다.",
         "ending_3": "공이 말을 했다.", "ending_4": "공이 잠들었다.", "label": 1},
        {"context": "비가 오기 시작했다.", "ending_1": "해가 쨍쨍했다.", "ending_2": "모래가 되었다.",
         "ending_3": "우산을 폈다.", "ending_4": "눈사람을 만들었다.", "label": 2},
        {"context": "시험이 끝났다.", "ending_1": "시험이 시작됐다.", "ending_2": "연필이 울었다.",
         "ending_3": "교실이 날았다.", "ending_4": "학생들이 집에 갔다.", "label": 3},
    ],
    "sentineg": [
        {"sentence": "이 영화는 정말 재미있었다.", "label": 1},
        {"sentence": "이 영화는 전혀 재미있지 않았다.", "label": 0},
    ],
    "wic": [
        {"word": "양분", "context_1": "토양에 [양분]이 풍부하다.", "context_2": "이익을 [양분]하였다.", "label": 0},
        {"word": "배", "context_1": "[배]가 고프다.", "context_2": "[배]를 타고 갔다.", "label": 0},
        {"word": "눈", "context_1": "[눈]이 내린다.", "context_2": "하얀 [눈]이 쌓였다.", "label": 1},
    ],
}


def jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def kmmlu_csv(subject: str, split: str) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["question", "answer", "A", "B", "C", "D", "Category", "Human Accuracy"])
    writer.writeheader()
    for i in range(2):
        writer.writerow({"question": f"{subject} 문제 {i}: 다음 중 옳은 것은?", "answer": str(i % 4 + 1),
                         "A": "가, 나", "B": "나", "C": "다", "D": "라", "Category": subject.lower(),
                         "Human Accuracy": "0.5"})
    return out.getvalue().encode()


FILES = {f"/datasets/skt/kobest_v1/resolve/main/{task}/{split}.jsonl": jsonl(rows)
         for task, rows in KOBEST.items() for split in ("train", "validation", "test")}
FILES.update({f"/datasets/HAERAE-HUB/KMMLU/resolve/main/data/{subject}-{split}.csv": kmmlu_csv(subject, split)
              for subject in sources.KMMLU_SUBJECTS for split in ("dev", "test")})


@pytest.fixture(scope="module")
def server():
    requests: list[str] = []
    httpd, base = start_server(file_handler(FILES, requests))
    yield base, requests
    stop_server(httpd)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    url, requests = server
    monkeypatch.setenv("NANOCHAT_HF_ENDPOINT", url)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    requests.clear()
    return requests


class Bigram(torch.nn.Module):
    """Fixed random logits for the next token given the current one: deterministic, and no two
    continuations cost exactly the same."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))

    def forward(self, idx):
        return self.table[idx]


def test_registry_has_every_kobest_task_and_kmmlu_subject():
    assert sources.splits("kobest") == [f"{t}/{s}" for t in TASKS for s in ("train", "validation", "test")]
    assert len(sources.KMMLU_SUBJECTS) == 45 and sources.splits("kmmlu") == ["dev", "test"]
    src = sources.get_source("kmmlu", "test")
    assert src.urls()[0].endswith("/datasets/HAERAE-HUB/KMMLU/resolve/main/data/Accounting-test.csv")
    assert src.urls()[-1].endswith("/data/Math-test.csv") and len(src.files) == 45


def test_kobest_rows_as_core_multiple_choice():
    assert to_mc("boolq", KOBEST["boolq"][0]) == {
        "query": "두아 리파는 잉글랜드의 싱어송라이터이다. 질문: 두아 리파는 영국인인가? 답변:",
        "choices": ["아니오", "예"], "gold": 1}
    assert to_mc("copa", KOBEST["copa"][0]) == {"query": "물을 오래 끓였다. 그래서",
                                                "choices": ["물의 양이 늘어났다.", "물의 양이 줄어들었다."], "gold": 1}
    assert to_mc("copa", KOBEST["copa"][1])["query"] == "바닥이 젖었다. 왜냐하면"
    assert to_mc("hellaswag", KOBEST["hellaswag"][3])["choices"][3] == "학생들이 집에 갔다."
    assert to_mc("sentineg", KOBEST["sentineg"][0]) == {"query": "문장: 이 영화는 정말 재미있었다. 긍부정:",
                                                        "choices": ["부정", "긍정"], "gold": 1}
    # the subject particle follows the word's last sound: 양분이, 배가
    assert to_mc("wic", KOBEST["wic"][0])["query"].endswith("두 문장에서 양분이 같은 뜻으로 쓰였나?")
    assert to_mc("wic", KOBEST["wic"][1])["query"].endswith("두 문장에서 배가 같은 뜻으로 쓰였나?")
    with pytest.raises(ValueError, match="label must be an int in 0..3"):
        to_mc("hellaswag", {**KOBEST["hellaswag"][0], "label": 4})
    with pytest.raises(ValueError, match="원인 or 결과"):
        to_mc("copa", {**KOBEST["copa"][0], "question": "이유"})


def test_kobest_fetched_and_scored_like_core(env):
    for task in TASKS:
        sources.fetch("kobest", f"{task}/test", **FAST)
    assert sorted(env) == sorted(f"/datasets/skt/kobest_v1/resolve/main/{t}/test.jsonl" for t in TASKS)
    assert load_kobest("copa")[1]["gold"] == 0
    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    model = Bigram(tok.n_vocab)
    logs = []
    results = evaluate_kobest(model, tok, num_fewshot=2, log=logs.append)
    centered = {}
    for task, r in results["tasks"].items():
        # the rows, prompts and shots go through CORE's own scorer: the same accuracy as asking it directly
        direct = evaluate_task(model, tok, task_spec(task, 2), load_kobest(task), log=logs.append)
        assert r["examples"] == len(KOBEST[task]) == direct.total and r["accuracy"] == direct.accuracy
        b = RANDOM_BASELINE[task] / 100
        centered[task] = (direct.accuracy - b) / (1 - b)
        assert r["centered"] == pytest.approx(centered[task]) and r["random_baseline"] == RANDOM_BASELINE[task]
    assert results["KoBEST"] == pytest.approx(sum(centered.values()) / 5)
    assert len({round(r["accuracy"], 6) for r in results["tasks"].values()}) > 1  # not one constant answer
    assert logs[-1].startswith("KoBEST: ")


def test_kobest_missing_and_bad_files(env, tmp_path):
    with pytest.raises(FileNotFoundError, match="--dataset=kobest --split=boolq/validation"):
        load_kobest("boolq", "validation")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"premise": "x", "question": "결과", "label": 0}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="KoBEST copa test row 1: missing alternative_1, alternative_2"):
        load_kobest("copa", paths=[bad])
    with pytest.raises(DownloadError, match="alternative_1"):
        sources.fetch("kobest", "copa/test", url=str(bad), **FAST)


def test_kmmlu_fetched_from_csv_and_asked_like_mmlu(env):
    paths = sources.fetch("kmmlu", "test", **FAST)
    assert len(paths) == 45 and len(env) == 45 and paths[0].name == "Accounting-test.csv"
    task = KMMLU()
    assert len(task) == 90
    first = task[0]
    assert first["letters"] == ["A", "B", "C", "D"] and first["messages"][-1]["content"] == "A"
    assert task[1]["messages"][-1]["content"] == "B"  # answer "2" is B
    assert "Accounting 문제 0: 다음 중 옳은 것은?" in first["messages"][0]["content"]
    assert "- A) 가, 나" in first["messages"][0]["content"]  # a comma inside a quoted CSV field survives
    assert task.evaluate(first, " A.") and not task.evaluate(first, "B")
    assert len(KMMLU(subjects=("Math", "Korean-History"))) == 4
    with pytest.raises(ValueError, match="unknown KMMLU subject"):
        KMMLU(subjects=("Cooking",))


def test_kmmlu_bad_csv_is_one_clear_error(env, tmp_path):
    bad = tmp_path / "math.csv"
    bad.write_text("question,A,B\nq,a,b\n", encoding="utf-8")
    with pytest.raises(DownloadError, match=r"CSV lacks the columns .*'answer'.*NANOCHAT_SOURCE_KMMLU_TEST"):
        sources.fetch("kmmlu", "test", url=str(bad), **FAST)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("question,answer,A,B,C,D,Category\nq,5,a,b,c,d,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="KMMLU test row 1: answer must be 1-4, got '5'"):
        KMMLU(paths=[wrong])


# ---- the scripts: base_eval --tasks=KoBEST and chat_eval -a korean on a tiny checkpoint, the report's rows


BASE_EVAL = ["--device_type=cpu", "--device_batch_size=8", "--max_problems=2"]
KMMLU_FETCH = "python -m tasks.sources --dataset=kmmlu --split=test"


@pytest.fixture
def served(server, base_dir, monkeypatch):
    """The hub served locally; no CORE bundle fetch can reach the network (its URL is a missing file)."""
    url, _ = server
    monkeypatch.setenv("NANOCHAT_HF_ENDPOINT", url)
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", str(base_dir / "no_such_bundle.zip"))
    return base_dir


def run_script(module: str, argv: list[str]):
    """The script's main through run_main and parse_args, as `python -m` runs it (in this process)."""
    import importlib

    from nanochat.common import run_main
    from nanochat.config import parse_args

    script = importlib.import_module(module)
    return run_main(script.main, parse_args(script.Options, argv, aliases={"-i": "source", "-a": "tasks"}))


def summary_cells(text: str) -> dict[str, list[str]]:
    """The summary table's rows: metric -> [BASE, MID, SFT, RL] cells."""
    table = text.split("## Summary", 1)[1].split("\n\n")[1]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in table.splitlines()[2:])}


def section(base, slug: str) -> dict:
    (path,) = base.glob(f"report/*-{slug}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def test_base_eval_kobest_rows_in_csv_and_report_with_core_skipped_then_present(served):
    from nanochat.report import generate
    from tests.conftest import make_tiny_checkpoint
    from tests.test_core_eval import write_bundle

    base = served
    make_tiny_checkpoint(base, "base", "d1")
    for task in TASKS:
        sources.fetch("kobest", f"{task}/test", **FAST)
    out = run_script("scripts.base_eval", [*BASE_EVAL, "--tasks=core|kobest", "--skip_unavailable"])
    assert out["CORE"] is None and set(out["unavailable"]) == {"CORE"}
    rows = list(csv.DictReader(open(out["csv"], encoding="utf-8")))
    assert [r["Task"] for r in rows] == [f"kobest_{t}" for t in TASKS] + ["KoBEST"]  # no CORE rows, no baselines row
    for r in rows[:-1]:
        b = float(r["Random baseline"]) / 100
        assert r["Rows"] == "2" and float(r["Centered"]) == pytest.approx((float(r["Accuracy"]) - b) / (1 - b), abs=1e-5)
    kobest = sum(float(r["Centered"]) for r in rows[:-1]) / 5
    assert float(rows[-1]["Centered"]) == pytest.approx(kobest, abs=1e-5) and out["KoBEST"] == pytest.approx(kobest)
    record = section(base, "base-model-evaluation")
    assert record["data"]["CORE"] is None and record["data"]["KoBEST"] == out["KoBEST"]
    assert set(record["data"]["KoBEST tasks"]) == {f"kobest_{t}" for t in TASKS}
    assert ("CORE: not available (no CORE eval bundle at " in record["notes"][1]
            and record["notes"][1].endswith("fetch it with python -m scripts.base_eval --download_only)"))
    text = generate(copy_to_cwd=False).read_text(encoding="utf-8")
    cells = summary_cells(text)
    assert cells["CORE"] == ["-"] * 4 and cells["KoBEST"] == [f"{out['KoBEST']:.4f}", "-", "-", "-"]
    assert "KMMLU" not in cells and "ChatCORE-ko" not in cells  # no chat section has them

    write_bundle(base)  # CORE now downloaded: both suites, one CSV
    both = run_script("scripts.base_eval", [*BASE_EVAL, "--tasks=CORE|KoBEST"])
    rows = [r["Task"] for r in csv.DictReader(open(both["csv"], encoding="utf-8"))]
    assert rows == ["mc", "schema", "lm", "CORE", *(f"kobest_{t}" for t in TASKS), "KoBEST", "Random baselines"]
    assert both["KoBEST"] == pytest.approx(out["KoBEST"]) and both["CORE"] is not None and both["unavailable"] == {}
    assert not any("not available" in n for n in section(base, "base-model-evaluation")["notes"])


def test_chat_eval_korean_scores_kmmlu_and_chatcore_ko(served):
    from nanochat.chat_scoring import eval_categorical
    from nanochat.checkpoint import load_model
    from nanochat.report import generate
    from tests.conftest import make_tiny_checkpoint

    base = served
    make_tiny_checkpoint(base, "sft", "d1")
    sources.fetch("kmmlu", "test", **FAST)
    results = run_script("scripts.chat_eval", ["-i", "sft", "-a", "korean", "--device_type=cpu", "--max_problems=8",
                                               "--device_batch_size=4"])
    model, _ = load_model("sft")
    want = eval_categorical(model, Tokenizer.load(base / "tokenizer"), KMMLU(), max_problems=8)
    assert results["KMMLU"] == want.accuracy and want.total == 8
    assert results["ChatCORE-ko"] == pytest.approx((want.accuracy - 0.25) / 0.75)  # centered on chance, 1 in 4
    record = section(base, "chat-evaluation-sft")
    assert list(record["data"]) == ["KMMLU", "ChatCORE-ko", "checkpoint"]  # no English rows in a Korean run
    cells = summary_cells(generate(copy_to_cwd=False).read_text(encoding="utf-8"))
    assert cells["KMMLU"] == ["-", "-", f"{want.accuracy:.4f}", "-"]
    assert cells["ChatCORE-ko"] == ["-", "-", f"{results['ChatCORE-ko']:.4f}", "-"]
    assert "KoBEST" not in cells and cells["ChatCORE"] == ["-"] * 4


def test_chat_eval_skips_missing_kmmlu_with_a_note(served):
    from nanochat.report import generate
    from tests.conftest import make_tiny_checkpoint

    base = served
    make_tiny_checkpoint(base, "sft", "d1")
    alone = run_script("scripts.chat_eval", ["-a", "korean", "--skip_unavailable", "--device_type=cpu"])
    assert alone["KMMLU"] is None and alone["step"] is None  # nothing to evaluate: no checkpoint loaded
    results = run_script("scripts.chat_eval", ["-a", "SpellingBee|korean", "--skip_unavailable", "--device_type=cpu",
                                               "--max_problems=2", "--max_new_tokens=4"])
    assert results["unavailable"] == {"KMMLU": f"not available offline: {KMMLU_FETCH}"}
    assert results["SpellingBee"] in (0.0, 0.5, 1.0) and results["step"] == 1
    assert results["KMMLU"] is None and results["ChatCORE-ko"] is None and results["ChatCORE"] is None
    record = section(base, "chat-evaluation-sft")
    assert f"KMMLU: not available offline: {KMMLU_FETCH}" in record["notes"]
    assert record["data"]["KMMLU"] is None and "ChatCORE-ko" in record["data"]
    text = generate(copy_to_cwd=False).read_text(encoding="utf-8")
    cells = summary_cells(text)
    assert cells["KMMLU"] == ["-"] * 4 and cells["ChatCORE-ko"] == ["-"] * 4
    assert cells["SpellingBee"][2] == f"{results['SpellingBee']:.4f}"
    assert f"- KMMLU: not available offline: {KMMLU_FETCH}" in text  # the section's note, in report.md


@pytest.mark.slow
def test_missing_suites_fail_in_one_line(served):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env

    make_tiny_checkpoint(served, "base", "d1")
    make_tiny_checkpoint(served, "sft", "d1")

    def run(*argv):
        proc = subprocess.run([sys.executable, "-m", *argv, "--device_type=cpu"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=180, env=subprocess_env(NANOCHAT_BASE_DIR=str(served)))
        return proc.returncode, proc.stderr.strip().splitlines()

    assert run("scripts.base_eval", "--tasks=CORE|KoBEST", "--skip_unavailable") == (0, [])
    assert run("scripts.base_eval", "--tasks=KoBEST") == (
        1, ["error: KoBEST is not downloaded: python -m tasks.sources --dataset=kobest"])
    code, lines = run("scripts.base_eval", "--tasks=CORE|KMMLU")
    assert code == 2 and lines == ["error: unknown suite 'KMMLU' in --tasks: choose from CORE, KoBEST, or several "
                                   "joined by '|' (CORE|KoBEST)"]
    code, lines = run("scripts.chat_eval", "-a", "korean")
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: kmmlu test is not downloaded")
    assert f"run {KMMLU_FETCH} (or --skip_unavailable to evaluate the other tasks)" in lines[0]
    code, lines = run("scripts.chat_eval", "-a", "MMLU|korean")
    assert code == 1 and lines == [f"error: MMLU, KMMLU are not downloaded: python -m tasks.sources --dataset=mmlu "
                                   f"--split=test; {KMMLU_FETCH} (or --skip_unavailable to evaluate the other tasks)"]


def test_report_notes_count_cropped_rows_per_suite():
    from scripts.base_eval import Options, report_notes

    def task(cropped):
        return {"accuracy": 0.5, "centered": 0.0, "random_baseline": 25.0, "examples": 10, "cropped": cropped}

    suites = {"CORE": {"baselines": "b.csv", "max_seq_len": 128, "tasks": {"arc": task(2), "piqa": task(0)}},
              "KoBEST": {"split": "test", "tasks": {"copa": task(0), "wic": task(3)}}}
    notes = report_notes(Options(tasks="CORE|KoBEST"), suites, {})
    assert notes[:2] == ["random baselines: b.csv", "prompts longer than 128 tokens cropped on the left, rows per task: arc 2"]
    assert notes[-1] == "KoBEST prompts longer than the model's context cropped on the left, rows per task: kobest_wic 3"
    suites["KoBEST"]["tasks"]["wic"]["cropped"] = 0  # nothing cropped: no KoBEST cropping note at all
    assert not any("KoBEST prompts" in n for n in report_notes(Options(tasks="CORE|KoBEST"), suites, {}))
