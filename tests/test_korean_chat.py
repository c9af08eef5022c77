"""Korean chat data: KoAlpaca v1.1 / v1.0 in their published schemas fetched from a local HTTP
server, Korean identity conversations (registers, particles, persona), Korean arithmetic, and the
Korean mixtures with their held-out sides."""

import json
import re
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tasks import sources
from tasks.arithmetic_ko import ArithmeticKo
from tasks.identity import Identity, fill, particle
from tasks.koalpaca import KoAlpaca
from tasks.mixtures import PRESETS, build_mixture, chat_mixture, describe, parse_spec
from tests.http_server import file_handler, start_server, stop_server

FAST = dict(retries=0, backoff=0.01, timeout=5)
HANGUL = re.compile(r"[가-힣]")

# v1.1: JSON lines with exactly instruction, output, url
V11_LINES = [
    json.dumps({"instruction": "양파는 어떻게 보관하나요?", "output": "서늘하고 통풍이 잘 되는 곳에 두세요.",
                "url": "https://kin.naver.com/qna/detail.naver?d1id=8&docId=1"}, ensure_ascii=False),
    json.dumps({"instruction": "  ", "output": "질문이 비어 있음", "url": ""}, ensure_ascii=False),  # empty
    '{"instruction": "잘린 줄", "output": ',  # malformed: not JSON
    json.dumps({"instruction": "숫자 출력", "output": 42, "url": ""}, ensure_ascii=False),  # malformed: not a str
    json.dumps(["not", "an", "object"]),  # malformed
    json.dumps({"instruction": "하늘은 왜 파란가요?", "output": "", "url": ""}, ensure_ascii=False),  # empty
    json.dumps({"instruction": "김치는 언제 먹나요?", "output": "보통 밥과 함께 먹어요.", "url": "https://x/2"},
               ensure_ascii=False),
]
# v1.0: one JSON array of instruction, input, output
V10_ROWS = [
    {"instruction": "다음 문장을 영어로 번역하세요.", "input": "오늘은 날씨가 좋다.", "output": "The weather is nice today."},
    {"instruction": "건강을 유지하는 세 가지 방법을 알려 주세요.", "input": "", "output": "운동, 수면, 균형 잡힌 식사입니다."},
    {"instruction": "", "input": "입력만 있음", "output": "출력"},  # empty instruction
    {"instruction": "빈 출력", "input": "", "output": None},  # empty output
]
FILES = {
    "/Beomi/KoAlpaca/main/KoAlpaca_v1.1.jsonl": ("\n".join(V11_LINES) + "\n").encode(),
    "/Beomi/KoAlpaca/main/ko_alpaca_data.json": json.dumps(V10_ROWS, ensure_ascii=False, indent=4).encode(),
}


@pytest.fixture(scope="module")
def server():
    requests: list[str] = []
    httpd, base = start_server(file_handler(FILES, requests))
    yield base, requests
    stop_server(httpd)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    url, requests = server
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv(sources.override_env("koalpaca", "train"), f"{url}/Beomi/KoAlpaca/main/KoAlpaca_v1.1.jsonl")
    monkeypatch.setenv(sources.override_env("koalpaca", "v1.0"), f"{url}/Beomi/KoAlpaca/main/ko_alpaca_data.json")
    requests.clear()
    return requests


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def test_registry_points_at_both_releases():
    v11, v10 = sources.get_source("koalpaca", "train"), sources.get_source("koalpaca", "v1.0")
    assert v11.files[0].endswith("/Beomi/KoAlpaca/main/KoAlpaca_v1.1.jsonl")
    assert v10.files[0].endswith("/Beomi/KoAlpaca/main/ko_alpaca_data.json")
    assert v10.columns == (("instruction", "input", "output"),)


def test_koalpaca_v11_jsonl_skips_and_counts_bad_rows(env, tok, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--dataset=koalpaca --split=train"):
        KoAlpaca()
    # fetching refuses a file with a line that is not JSON (what a cut download looks like) ...
    with pytest.raises(sources.DownloadError, match="not valid JSON"):
        sources.fetch("koalpaca", "train", **FAST)
    # ... but the task reads such a file, placed by hand, row by row
    mine = tmp_path / "KoAlpaca_v1.1.jsonl"
    mine.write_bytes(FILES["/Beomi/KoAlpaca/main/KoAlpaca_v1.1.jsonl"])
    task = KoAlpaca(paths=sources.require("koalpaca", "train", url=str(mine)))
    assert len(task) == 2 and (task.skipped_empty, task.skipped_malformed, task.skipped) == (2, 3, 5)
    assert "KoAlpaca v1.1: 2 conversations; skipped 2 empty and 3 malformed rows" in capsys.readouterr().out
    assert task[0] == {"messages": [{"role": "user", "content": "양파는 어떻게 보관하나요?"},
                                    {"role": "assistant", "content": "서늘하고 통풍이 잘 되는 곳에 두세요."}]}
    assert "kin.naver.com" not in json.dumps(task[0])  # the url is provenance, not conversation
    ids, mask = tok.render_conversation(task[1], max_tokens=None)
    assert tok.decode([t for t, m in zip(ids, mask) if m and t < 256]) == "보통 밥과 함께 먹어요."


def test_koalpaca_v11_clean_file_through_fetch(env, monkeypatch, server):
    url, _ = server
    clean = "\n".join(line for i, line in enumerate(V11_LINES) if i not in (2, 3, 4)) + "\n"
    FILES["/clean/KoAlpaca_v1.1.jsonl"] = clean.encode()
    monkeypatch.setenv(sources.override_env("koalpaca", "train"), f"{url}/clean/KoAlpaca_v1.1.jsonl")
    paths = sources.fetch("koalpaca", "train", **FAST)
    assert env == ["/clean/KoAlpaca_v1.1.jsonl"]
    task = KoAlpaca()
    assert [p.name for p in paths] == ["KoAlpaca_v1.1.jsonl"]
    assert len(task) == 2 and task.skipped_empty == 2 and task.skipped_malformed == 0


def test_koalpaca_v10_json_array_through_fetch(env, tok):
    paths = sources.fetch("koalpaca", "v1.0", **FAST)
    assert env == ["/Beomi/KoAlpaca/main/ko_alpaca_data.json"] and paths[0].name == "ko_alpaca_data.json"
    task = KoAlpaca("v1.0")
    assert len(task) == 2 and (task.skipped_empty, task.skipped_malformed) == (2, 0)
    assert task[0]["messages"][0]["content"] == "다음 문장을 영어로 번역하세요.\n\n오늘은 날씨가 좋다."
    assert task[1]["messages"][0]["content"] == "건강을 유지하는 세 가지 방법을 알려 주세요."  # empty input: nothing added
    assert task[1]["messages"][1]["content"] == "운동, 수면, 균형 잡힌 식사입니다."
    with pytest.raises(ValueError, match="version must be one of v1.1, v1.0"):
        KoAlpaca("v2")


def test_koalpaca_parquet_copy_and_broken_array(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(V11_LINES[0]), json.loads(V11_LINES[1])]), path)
    task = KoAlpaca(paths=[path])
    assert len(task) == 1 and task.skipped_empty == 1
    broken = tmp_path / "ko_alpaca_data.json"
    broken.write_text('[{"instruction": "a", "output": "b"},', encoding="utf-8")
    with pytest.raises(ValueError, match=r"not valid JSON .*--split=v1.0"):
        KoAlpaca("v1.0", paths=[broken])


@pytest.mark.parametrize("word,pair,expected", [
    ("나노챗", ("이", "가"), "이"), ("하나", ("이", "가"), "가"), ("나노챗", ("이에요", "예요"), "이에요"),
    ("하나", ("이야", "야"), "야"), ("서울", ("으로", "로"), "로"), ("부산", ("으로", "로"), "으로"),
    ("학교", ("으로", "로"), "로"), ("nanochat", ("은", "는"), "은"), ("Bora", ("을", "를"), "를"),
    ("Team Kim", ("이", "가"), "이"), ("Hal", ("으로", "로"), "로"), ("GPT-4", ("이", "가"), "가"),
    ("3", ("이", "가"), "이"), ("2", ("이", "가"), "가"),
])
def test_particle_follows_the_last_sound(word, pair, expected):
    assert particle(word, *pair) == expected


def test_fill_puts_word_and_particle():
    assert fill("{name:이에요/예요}, {creator:이/가} 만들었어요", name="하나", creator="한빛연구소") == \
        "하나예요, 한빛연구소가 만들었어요"


def _korean(task):
    return [c for c in task if HANGUL.search(c["messages"][0]["content"])]


def test_korean_identity_is_varied_in_both_registers():
    task = Identity(300, name="나노챗", creator="한빛연구소", korean_share=1.0)
    convs = list(task)
    assert len(_korean(task)) == 300
    users = [m["content"] for c in convs for m in c["messages"] if m["role"] == "user"]
    replies = [m["content"] for c in convs for m in c["messages"] if m["role"] == "assistant"]
    assert len(set(users)) >= 40 and len(set(replies)) >= 35
    assert len({json.dumps(c, ensure_ascii=False) for c in convs}) > 200
    # polite and casual questions, each answered in its own register
    casual = [c for c in convs if c["messages"][0]["content"] in ("안녕", "너 누구야?", "이름이 뭐야?", "너 뭐 할 수 있어?")]
    polite = [c for c in convs if c["messages"][0]["content"] in ("안녕하세요!", "당신은 누구인가요?", "무엇을 할 수 있나요?")]
    assert casual and polite
    polite_end = re.compile(r"(요|니다)[.!?]?$")  # 해요체 and 합쇼체 end so; 반말 never does
    assert all(not polite_end.search(m["content"]) for c in casual for m in c["messages"] if m["role"] == "assistant")
    assert all(polite_end.search(m["content"]) for c in polite for m in c["messages"] if m["role"] == "assistant")
    # greetings, limits, multi-turn, thank-yous
    firsts = {c["messages"][0]["content"] for c in convs}
    assert {"안녕하세요!", "안녕"} & firsts
    assert any("인터넷" in r for r in replies) and any("틀릴" in r or "틀린" in r for r in replies)
    assert sum(len(c["messages"]) >= 4 for c in convs) > 60
    assert any(c["messages"][-2]["content"] in ("고마워!", "감사합니다.") for c in convs)
    # the persona, with the particles its last sound takes
    joined = "\n".join(replies)
    assert "나노챗이에요" in joined or "나노챗이야" in joined
    assert "한빛연구소가" in joined and "나노챗예요" not in joined and "나노챗야" not in joined


def test_korean_identity_particles_after_a_vowel_and_the_default_creator():
    replies = "\n".join(m["content"] for c in Identity(300, name="하나", korean_share=1.0)
                        for m in c["messages"] if m["role"] == "assistant")
    assert "하나예요" in replies or "하나야" in replies
    assert "하나이에요" not in replies and "하나이야" not in replies
    assert "its users" not in replies and "사용자들이" in replies


def test_korean_share():
    assert len(_korean(Identity(400, korean_share=0.0))) == 0
    share = len(_korean(Identity(400, korean_share=0.9))) / 400
    assert 0.85 < share < 0.95
    assert 0.15 < len(_korean(Identity(400))) / 400 < 0.35  # the English default keeps a quarter
    with pytest.raises(ValueError, match="korean_share"):
        Identity(korean_share=1.5)


def test_korean_arithmetic_calls_the_calculator_and_scores(tok):
    task = ArithmeticKo(50, seed=2)
    assert task[7] == ArithmeticKo(8, seed=2)[7] and task[7] != ArithmeticKo(8, seed=3)[7]
    from nanochat.calculator import evaluate as calculate

    for conv in task:
        question, answer = conv["messages"][0]["content"], conv["messages"][1]["content"]
        assert HANGUL.search(question) and "{" not in question
        expr, result, ending = answer[1]["text"], answer[2]["text"], answer[3]["text"]
        assert calculate(expr) == result and ending.endswith(f"#### {result}")
        assert task.evaluate(conv, ending) and not task.evaluate(conv, "#### -1")
        tok.render_conversation(conv, max_tokens=None)


def test_korean_presets_parse_and_offline_ones_build_with_held_out_sides(tok):
    for name in ("mid-ko", "sft-ko", "mid-ko-offline", "sft-ko-offline"):
        assert parse_spec(name) == parse_spec(PRESETS[name])
    for preset in ("mid-ko-offline", "sft-ko-offline"):
        train, val = build_mixture(preset)
        kinds = {type(t).__name__ for t in train.tasks}
        assert {"Identity", "ArithmeticKo"} <= kinds and len(val) > 0
        korean = sum(bool(HANGUL.search(train[i]["messages"][0]["content"])) for i in range(0, len(train), 7))
        assert korean > 0.25 * len(range(0, len(train), 7))
        for i in range(0, len(train), 97):
            tok.render_conversation(train[i], max_tokens=None)
    # held out: the Korean identity and arithmetic of validation are not those of training
    train, val = build_mixture("identity-ko,arithmetic-ko")
    train_qs = {json.dumps(c, ensure_ascii=False) for c in train}
    assert sum(json.dumps(c, ensure_ascii=False) in train_qs for c in val) < 0.2 * len(val)
    assert describe(train) == "5,300 conversations: Identity 300, ArithmeticKo 5,000"


def test_korean_presets_need_koalpaca_and_offline_switches(env, capsys):
    with pytest.raises(FileNotFoundError, match="--dataset=koalpaca --split=train"):
        build_mixture("sft-ko")
    opts = SimpleNamespace(tasks="sft-ko", offline=True, identity_name="나노챗", identity_creator="한빛연구소", seed=0)
    train, _, spec = chat_mixture(opts, "sft")
    assert spec == PRESETS["sft-ko-offline"]
    replies = "\n".join(m["content"] if isinstance(m["content"], str) else "" for c in train.tasks[0]
                        for m in c["messages"])
    assert "나노챗" in replies and "한빛연구소" in replies
