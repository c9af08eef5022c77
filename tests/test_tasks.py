"""Tests for tasks/: rendering and loss masks of every task, slicing, mixtures, tool-call outputs,
answer checking, the JSONL loader's errors and the identity persona."""

import json
import re
from collections import Counter

import pytest

from nanochat.calculator import evaluate as calculate
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tasks.arithmetic import Arithmetic
from tasks.common import Task, TaskMixture, TaskSequence, extract_final_number, render_mc
from tasks.customjson import CustomJSON, CustomJSONError
from tasks.gsm8k import GSM8K, answer_to_parts
from tasks.identity import Identity
from tasks.spelling import SimpleSpelling, SpellingBee, is_eval_word, load_words, split_words

WORDS = ["strawberry", "banana", "mississippi", "apple", "rhythm", "queue", "bookkeeper"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


class Numbers(Task):
    """A tiny task whose example i says i, to check indexing and mixtures by value."""

    def __init__(self, n, tag="n", **kwargs):
        self.n, self.tag = n, tag
        super().__init__(**kwargs)

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"{self.tag}{index}"},
                             {"role": "assistant", "content": str(index)}]}


def _custom_file(tmp_path):
    path = tmp_path / "conv.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        [{"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": [{"type": "python", "text": "2+2"},
                                           {"type": "python_output", "text": "4"},
                                           {"type": "text", "text": "4"}]}],
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


# GSM8K-shaped rows written for these tests: annotations mid-sentence, at the start, back to back,
# with float division, a wrong stated result and an expression the calculator refuses
GSM8K_ROWS = [
    {"question": "Ana has 3 boxes of 12 eggs and uses 5. How many are left?",
     "answer": "She has 3*12 = <<3*12=36>>36 eggs.\nShe has 36-5 = <<36-5=31>>31 left.\n#### 31"},
    {"question": "Half of 9 cakes?", "answer": "<<9/2=4.5>>4.5 cakes.\n#### 4.5"},
    {"question": "A wrong note", "answer": "2+2 = <<2+2=5>>5 here.\n#### 5"},
    {"question": "Adjacent", "answer": "Sum <<1+2=3>><<3*4=12>>12 and x = <<x+1=2>>2.\n#### 1,200"},
]


def _gsm8k_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS), encoding="utf-8")
    return path


TASKS = {
    "arithmetic": lambda tmp: Arithmetic(size=60),
    "spellingbee": lambda tmp: SpellingBee(size=60),
    "simplespelling": lambda tmp: SimpleSpelling(size=60),
    "identity": lambda tmp: Identity(),
    "gsm8k": lambda tmp: GSM8K(_gsm8k_file(tmp)),
    "customjson": lambda tmp: CustomJSON(_custom_file(tmp)),
    "mixture": lambda tmp: TaskMixture([Arithmetic(size=20), SpellingBee(size=20, words=WORDS),
                                        Identity(size=20)], weights=[1, 2, 0.5]),
}


def _expected_trained(messages):
    """What the mask must select: every assistant text and python call (with its delimiters) and
    <|assistant_end|>; never user/system text or tool outputs."""
    out = []
    for m in messages:
        if m["role"] != "assistant":
            continue
        parts = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        for p in parts:
            if p["type"] == "text":
                out.append(p["text"])
            elif p["type"] == "python":
                out.append(f"<|python_start|>{p['text']}<|python_end|>")
        out.append("<|assistant_end|>")
    return "".join(out)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_render_and_mask(name, tok, tmp_path):
    task = TASKS[name](tmp_path)
    assert len(task) > 0
    for i in range(min(50, len(task))):
        conv = task[i]
        ids, mask = tok.render_conversation(conv, max_tokens=None)
        assert len(ids) == len(mask)
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        assert trained == _expected_trained(conv["messages"]), (name, i)
        untrained = tok.decode([t for t, m in zip(ids, mask) if not m])
        for m in conv["messages"]:
            if m["role"] in ("user", "system"):
                assert m["content"] in untrained
            elif isinstance(m["content"], list):
                for p in m["content"]:
                    if p["type"] == "python_output":
                        assert f"<|output_start|>{p['text']}<|output_end|>" in untrained


def test_slicing_is_a_view():
    t = Numbers(10)
    assert len(t) == 10 and t[3]["messages"][1]["content"] == "3" and t[-1]["messages"][1]["content"] == "9"
    view = t[2:9:3]
    assert [c["messages"][1]["content"] for c in view] == ["2", "5", "8"]
    assert view[1:][0]["messages"][1]["content"] == "5"  # slicing a view narrows it further
    assert Numbers(10, start=4, stop=6)[1]["messages"][1]["content"] == "5"
    assert len(t) == 10  # the original is untouched
    with pytest.raises(IndexError):
        view[3]
    with pytest.raises(TypeError):
        t["a"]


def test_sequence_concatenates():
    seq = TaskSequence([Numbers(2, "a"), Numbers(3, "b")])
    assert [c["messages"][0]["content"] for c in seq] == ["a0", "a1", "b0", "b1", "b2"]
    assert seq.locate(3) == (1, 1)


def test_mixture_deterministic_and_proportional():
    tasks = [Numbers(100, "a"), Numbers(50, "b"), Numbers(40, "c")]
    mix = TaskMixture(tasks, weights=[1, 2, 0.5], seed=7)
    again = TaskMixture(tasks, weights=[1, 2, 0.5], seed=7)
    other = TaskMixture(tasks, weights=[1, 2, 0.5], seed=8)
    firsts = [c["messages"][0]["content"] for c in mix]
    assert firsts == [c["messages"][0]["content"] for c in again]
    assert firsts != [c["messages"][0]["content"] for c in other]
    assert len(mix) == 100 + 100 + 20
    counts = Counter(s[0] for s in firsts)
    assert counts == {"a": 100, "b": 100, "c": 20}
    # weight 2: every example exactly twice; weight 0.5: distinct examples, no repeats
    assert set(Counter(s for s in firsts if s[0] == "b").values()) == {2}
    assert len({s for s in firsts if s[0] == "c"}) == 20
    # shuffled, not blocks: the first 60 already hold every task
    assert {s[0] for s in firsts[:60]} == {"a", "b", "c"}
    assert [c["messages"][0]["content"] for c in mix[10:20]] == firsts[10:20]
    with pytest.raises(ValueError):
        TaskMixture(tasks, weights=[1, 2])


def test_render_mc():
    text = render_mc("What is 2 + 2?", ["A", "B"], ["3", "4"])
    assert text == ("Multiple choice question: What is 2 + 2?\n- A) 3\n- B) 4\n\n"
                    "Respond only with the letter of the correct answer.")
    with pytest.raises(ValueError):
        render_mc("q", ["A"], ["x", "y"])


@pytest.mark.parametrize("task", [Arithmetic(size=300, seed=3), SpellingBee(size=300, words_path=None)],
                         ids=["arithmetic", "spellingbee"])
def test_python_parts_match_calculator(task):
    for conv in task:
        parts = conv["messages"][-1]["content"]
        kinds = [p["type"] for p in parts]
        assert kinds == ["text", "python", "python_output", "text"]
        result = calculate(parts[1]["text"])
        assert parts[2]["text"] == result
        assert extract_final_number(parts[3]["text"]) == result


def test_spellingbee_counts_are_right():
    for conv in SpellingBee(size=200, words=WORDS):
        expr = conv["messages"][-1]["content"][1]["text"]
        word, letter = expr.split("'")[1], expr.split("'")[3]
        assert conv["messages"][-1]["content"][2]["text"] == str(word.count(letter))


@pytest.mark.parametrize("task", [Arithmetic(size=20), SpellingBee(size=20, words=WORDS)],
                         ids=["arithmetic", "spellingbee"])
def test_evaluate_final_number(task):
    for conv in task:
        answer = extract_final_number(conv["messages"][-1]["content"][-1]["text"])
        assert task.evaluate(conv, f"some working\n\n#### {answer}")
        assert task.evaluate(conv, f"#### {int(answer):,}")  # thousands separators are fine
        assert not task.evaluate(conv, f"#### {int(answer) + 1}")
        assert not task.evaluate(conv, answer)  # no "####": not an answer
        assert task.reward(conv, f"#### {answer}") == 1.0


def test_simplespelling():
    task = SimpleSpelling(size=30, words=WORDS)
    for conv in task:
        reply = conv["messages"][-1]["content"]
        word = reply.split(":")[0]
        assert word in conv["messages"][0]["content"] and reply == f"{word}:{','.join(word)}"
        assert task.evaluate(conv, reply) and task.evaluate(conv, ", ".join(word))
        assert not task.evaluate(conv, f"{word}:{','.join(word[:-1])}")


def test_words(tmp_path):
    words = load_words()
    assert len(words) > 500 and words == sorted(set(words)) and all(w.isalpha() and w.islower() for w in words)
    path = tmp_path / "words_alpha.txt"
    path.write_text("Zebra\napple\n\nx-ray\napple\n", encoding="utf-8")
    assert load_words(path) == ["apple", "zebra"]
    assert SpellingBee(size=5, words_path=path)[0]["messages"][0]["content"]
    with pytest.raises(FileNotFoundError, match="words_alpha"):
        load_words(tmp_path / "missing.txt")


def test_word_split_is_disjoint_fixed_and_a_tenth():
    words = load_words()
    train, held = split_words(words, "train"), split_words(words, "eval")
    assert sorted(train + held) == words and not set(train) & set(held)
    assert 0.07 < len(held) / len(words) < 0.13
    # a word's side depends on the word alone, so it is the same in any list that holds it
    assert split_words(["zz" + w for w in held[:50]] + held[:50], "eval")[-50:] == held[:50]
    assert all(is_eval_word(w) for w in SpellingBee(size=300, split="eval").words)
    with pytest.raises(ValueError, match="has no eval words"):
        SpellingBee(size=5, words=[w for w in WORDS if not is_eval_word(w)], split="eval")


def spelled_word(conversation) -> str:
    """The word a spelling conversation's reply spells out, read from the rendered reply text."""
    reply = conversation["messages"][-1]["content"]
    if isinstance(reply, str):  # SimpleSpelling: "word:w,o,r,d"
        return reply.split(":")[0]
    return re.match(r"Let me spell '([a-z]+)' out", reply[0]["text"]).group(1)  # SpellingBee


def served_word_list(tmp_path, monkeypatch, words):
    """words_alpha.txt served over HTTP on 127.0.0.1 and fetched through the tasks.sources registry."""
    from http.server import BaseHTTPRequestHandler

    from tasks import sources
    from tests.http_server import start_server, stop_server

    body = "".join(w + "\r\n" for w in words).encode()  # CRLF, as dwyl/english-words ships it

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/words_alpha.txt" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd, url = start_server(Handler)
    try:
        monkeypatch.setenv("NANOCHAT_SOURCE_WORDS_ALPHA", f"{url}/words_alpha.txt")
        (path,) = sources.fetch("words", "alpha", retries=0, timeout=10)
    finally:
        stop_server(httpd)
    return path


@pytest.mark.parametrize("word_list", ["built-in", "served"])
def test_no_evaluation_word_is_trained_on(word_list, tmp_path, monkeypatch, capsys):
    """The spelling parts of the mid and SFT mixtures never spell a word chat_eval's SpellingBee asks about."""
    import random as stdlib_random

    from scripts.chat_eval import load_task
    from tasks.mixtures import build_mixture

    served = None
    if word_list == "served":
        rng = stdlib_random.Random(0)
        served = sorted({"".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 9))) for _ in range(3000)})
        path = served_word_list(tmp_path, monkeypatch, served)
        assert path.read_bytes().count(b"\r\n") == len(served)
    evaluation = load_task("SpellingBee")
    eval_words = {spelled_word(c) for c in evaluation}
    train, val = build_mixture("simplespelling:10,spellingbee:10")  # the spelling parts of the mid preset
    trained = {spelled_word(c) for task in train.tasks for c in task}
    assert len(evaluation) == 256 and len(trained) > 200
    assert not eval_words & trained  # the point: with upstream's one shared list, 20 of 256 are seen
    assert not {spelled_word(c) for task in val.tasks for c in task} & trained  # validation: unseen words too
    out = capsys.readouterr().out
    if served is None:
        assert evaluation.word_list.startswith("built-in (Python ")
        assert eval_words | trained <= set(load_words())
    else:
        assert evaluation.word_list.startswith(f"words_alpha.txt ({path}, {len(served):,} words)")
        assert eval_words | trained <= set(served)
        assert len(evaluation.words) == sum(map(is_eval_word, served))
    assert f"SpellingBee: word list {evaluation.word_list}" in out


def test_generated_tasks_are_deterministic():
    assert Arithmetic(size=5, seed=1)[4] == Arithmetic(size=50, seed=1)[4]
    assert Arithmetic(size=5, seed=1)[4] != Arithmetic(size=5, seed=2)[4]
    assert SpellingBee(size=9)[7] == SpellingBee(size=9)[7:][0]
    assert Identity(seed=5)[11] == Identity(seed=5)[11]


def test_identity_uses_name_and_creator():
    task = Identity(size=300, name="Bora", creator="Team Kim")
    assert len(task) == 300
    replies = [m["content"] for c in task for m in c["messages"] if m["role"] == "assistant"]
    joined = "\n".join(replies)
    assert "Bora" in joined and "Team Kim" in joined and "nanochat" not in joined
    assert any("\uac00" <= ch <= "\ud7a3" for ch in joined)  # some Korean
    assert any(len(c["messages"]) >= 4 for c in task)  # some multi-turn
    assert len({json.dumps(c, ensure_ascii=False) for c in task}) > 150  # varied
    with pytest.raises(ValueError):
        Identity(name="")


def test_customjson_loads_both_forms(tmp_path):
    task = CustomJSON(_custom_file(tmp_path))
    assert len(task) == 2
    assert task[0]["messages"][0]["role"] == "system"
    assert task[1]["messages"][1]["content"][0] == {"type": "python", "text": "2+2"}


@pytest.mark.parametrize("bad, match", [
    ("{not json", "not valid JSON"),
    ('{"msgs": []}', "expected"),
    ('[{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]', "unknown role"),
    ('[{"role": "assistant", "content": "hi"}]', "'user' was expected"),
    ('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "code", "text": "1"}]}]',
     "unknown type"),
    ("42", "got int"),
])
def test_customjson_errors_name_the_line(tmp_path, bad, match):
    path = tmp_path / "bad.jsonl"
    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    path.write_text(f"{good}\n\n{bad}\n{good}\n", encoding="utf-8")
    with pytest.raises(CustomJSONError, match=match) as info:
        CustomJSON(path)
    assert f"{path}:3:" in str(info.value)


def test_gsm8k_round_trips_annotations():
    for row in GSM8K_ROWS:
        parts = answer_to_parts(row["answer"])
        # the text parts are exactly the answer with its annotations removed ...
        stripped = re.sub(r"<<[^<>]*>>", "", row["answer"])
        assert "".join(p["text"] for p in parts if p["type"] == "text") == stripped
        # ... and every python call is an annotation whose stated result the calculator reproduces
        annotations = re.findall(r"<<([^<>=]*)=([^<>]*)>>", row["answer"])
        calls = [(p["text"], q["text"]) for p, q in zip(parts, parts[1:]) if p["type"] == "python"]
        assert all(q["type"] == "python_output" for p, q in zip(parts, parts[1:]) if p["type"] == "python")
        for expr, out in calls:
            assert out == calculate(expr)
            assert any(expr == a and float(out) == float(r) for a, r in annotations)
    kinds = [[p["type"] for p in answer_to_parts(r["answer"])] for r in GSM8K_ROWS]
    assert kinds[0] == ["text", "python", "python_output", "text", "python", "python_output", "text"]
    assert kinds[1] == ["python", "python_output", "text"]  # starts with a tool call
    assert kinds[2] == ["text"]  # 2+2=5 is wrong: no tool call taught
    assert kinds[3] == ["text", "python", "python_output", "python", "python_output", "text"]  # x refused
    assert answer_to_parts(GSM8K_ROWS[1]["answer"])[1]["text"] == "4.5"


def test_gsm8k_load_and_evaluate(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS), path)
    task = GSM8K(path)
    assert len(task) == 4 and task[0] == GSM8K(_gsm8k_file(tmp_path))[0]
    assert task.evaluate(task[0], "I think\n#### 31") and not task.evaluate(task[0], "#### 30")
    assert task.evaluate(task[3], "#### 1200") and task.reward(task[1], "#### 4.5") == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="row 2"):
        GSM8K(bad)
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        GSM8K(tmp_path / "none.jsonl")
